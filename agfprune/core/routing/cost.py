"""The two costs of a router, kept apart and labelled, because they answer different questions.

- cascade (honest, what a deployment pays): the light expert runs on every input and the heavy
  one on the fraction f it passes on: C_light + f * C_heavy.
- mixture (what the paper reports): as if each input ran exactly one expert:
  f * C_heavy + (1 - f) * C_light. It ignores the light pass wasted on the inputs sent onwards.

Routing pays (cascade cheaper than heavy alone) only when f < 1 - C_light / C_heavy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class RoutingCost:
    """Both costs at heavy fraction f, in one unit (MACs per image, or ms per batch)."""

    unit: str
    light: float
    heavy: float
    heavy_fraction: float
    cascade: float
    mixture: float
    cascade_vs_heavy: float
    mixture_vs_heavy: float
    break_even_fraction: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cascade_cost(light: float, heavy: float, heavy_fraction: float) -> float:
    """Honest cost: the light expert always runs, the heavy one on fraction f."""
    return light + heavy_fraction * heavy


def mixture_cost(light: float, heavy: float, heavy_fraction: float) -> float:
    """The paper's cost: each input is charged one expert only."""
    return heavy_fraction * heavy + (1.0 - heavy_fraction) * light


def break_even_fraction(light: float, heavy: float) -> float:
    """Largest heavy fraction at which the cascade is still cheaper than the heavy expert alone."""
    return 1.0 - light / heavy if heavy > 0 else 0.0


def routing_cost(unit: str, light: float, heavy: float, heavy_fraction: float) -> RoutingCost:
    """Both labelled costs at fraction f, with their ratios to running the heavy expert alone."""
    cascade = cascade_cost(light, heavy, heavy_fraction)
    mixture = mixture_cost(light, heavy, heavy_fraction)
    return RoutingCost(
        unit=unit, light=light, heavy=heavy, heavy_fraction=heavy_fraction,
        cascade=cascade, mixture=mixture,
        cascade_vs_heavy=cascade / heavy if heavy > 0 else float("nan"),
        mixture_vs_heavy=mixture / heavy if heavy > 0 else float("nan"),
        break_even_fraction=break_even_fraction(light, heavy),
    )
