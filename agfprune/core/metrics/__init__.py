"""Metrics registry: every structure-importance criterion is a name and one small file here.

Adding a metric = adding a module in this package that decorates a `Metric` subclass with
`@register_metric("name")`; modules are discovered automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from agfprune.core.registry import Registry

if TYPE_CHECKING:
    from agfprune.core.calibration import CalibrationStats
    from agfprune.core.metrics.base import Metric

M = TypeVar("M", bound=type)
_PREFERRED = ("agf", "taylor", "magnitude", "bn_scale", "wanda", "ria", "snip", "random")


def _discover() -> None:
    found = {info.name for info in pkgutil.iter_modules(__path__) if info.name not in ("base",)}
    for module in [m for m in _PREFERRED if m in found] + sorted(found - set(_PREFERRED)):
        importlib.import_module(f"{__name__}.{module}")


METRICS: Registry[type] = Registry("metric", "unknown metric {name!r}; valid metrics: {valid}", discover=_discover)


def register_metric(name: str) -> Callable[[M], M]:
    """Class decorator: make a Metric subclass available under `name`."""

    def decorate(cls: M) -> M:
        METRICS.register(name, cls)
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return decorate


def metric_names() -> list[str]:
    """Registered metric names, AGF first."""
    return METRICS.names()


def metric_class(name: str) -> type:
    """The class registered under `name`; UsageError listing the valid names otherwise."""
    return METRICS.lookup(name)


def get_metric(name: str, stats: CalibrationStats | None = None, seed: int = 0,
               group_reduction: str | None = None, normalizer: str | None = None) -> Metric:
    """An Importance instance for `name`, ready to call on torch-pruning groups (None: the metric's
    own default reduction and normaliser)."""
    return metric_class(name)(stats=stats, seed=seed, group_reduction=group_reduction,
                              normalizer=normalizer)


__all__ = ["METRICS", "get_metric", "metric_class", "metric_names", "register_metric"]
