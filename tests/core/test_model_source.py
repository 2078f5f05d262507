"""The model fields every loading request shares (ModelSource): checked once, before any loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from agfprune.core.calibration_run import CalibrateRequest
from agfprune.core.errors import UsageError
from agfprune.core.evaluate import EvalRequest
from agfprune.core.model_source import ModelSource
from agfprune.core.pruning import PruneOptions, PruneRequest


def _requests(tmp_path: Path, **source):
    # an unknown model name: any attempt to load would fail with a ModelError, not a UsageError
    source = {"model": "no_such_model", **source}
    return [CalibrateRequest(data="synthetic:8", out=tmp_path / "calib.safetensors", **source),
            EvalRequest(data="synthetic:8", **source),
            PruneRequest(out=tmp_path / "pruned.safetensors", options=PruneOptions(ratio=0.5), **source)]


@pytest.mark.parametrize("source, message", [({"img_size": 0}, "--img-size 0: must be positive"),
                                             ({"std": (0.2, 0.0, 0.2)}, "--std values must be positive")])
def test_every_request_refuses_bad_overrides_before_loading(tmp_path: Path, source: dict, message: str) -> None:
    for request in _requests(tmp_path, **source):
        assert isinstance(request, ModelSource)
        with pytest.raises(UsageError, match=message):
            request.validate()
    assert not list(tmp_path.iterdir())


def test_overrides_replace_only_what_was_given() -> None:
    config = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "crop_pct": 1.0}
    assert ModelSource().source_data_config(config) == config
    changed = ModelSource(img_size=16, std=(1, 2, 3)).source_data_config(config)
    assert changed == {**config, "input_size": (3, 16, 16), "std": (1.0, 2.0, 3.0)}
    with pytest.raises(UsageError, match="--mean: expected 3 values, got 2"):
        ModelSource(mean=(0.1, 0.2)).source_data_config(config)
