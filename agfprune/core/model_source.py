"""Where a command's model comes from, and how its inputs are prepared: one set of fields for every
request that loads a model (--model/--checkpoint/--pretrained, --img-size/--mean/--std).

Requests inherit these fields (keyword-only, so a request's own required fields may come first),
check them with `validate_source` inside their `validate`, before anything is loaded, and load
through `load_source` / `source_data_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(kw_only=True)
class ModelSource:
    """A timm name and/or an agfprune checkpoint (or timm's pretrained weights), and the data-config
    overrides applied to it (None: keep the model's own)."""

    model: str | None = None
    checkpoint: str | Path | None = None
    pretrained: bool = False
    img_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def data_overrides(self) -> Any:
        """The --img-size/--mean/--std overrides as a `data.DataOverrides`."""
        from agfprune.core.data import DataOverrides

        return DataOverrides(self.img_size, self.mean, self.std)

    def validate_source(self) -> None:
        """UsageError on overrides that are wrong whatever the model (the channel count of --mean/--std
        is checked against the model's data config once it is loaded)."""
        self.data_overrides.validate()

    def load_source(self, device: Any) -> Any:
        """The LoadedModel, on `device`."""
        from agfprune.core.models import load_model

        return load_model(self.model, self.checkpoint, pretrained=self.pretrained, device=device)

    def source_data_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """`config` (a model's data config) with the overrides applied."""
        return self.data_overrides.apply(config)
