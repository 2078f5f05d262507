"""The one registry helper behind metrics, routing signals and export formats."""

import pytest

from agfprune.core.errors import UsageError
from agfprune.core.export import FORMATS
from agfprune.core.metrics import METRICS
from agfprune.core.registry import Registry
from agfprune.core.routing.signals import ALL_SIGNALS, DYNAMIC_SIGNALS, SIGNALS


def test_names_lookup_and_the_owners_error() -> None:
    colours = Registry("colour", "--colour {name!r}: expected one of {valid}")
    colours.register("red", 1)
    colours.decorator("blue", wrap=lambda value: value * 10)(2)
    assert colours.names() == ["red", "blue"] and dict(colours) == {"red": 1, "blue": 20}
    assert colours.lookup("blue") == 20 and colours.check("red") == "red"
    with pytest.raises(UsageError, match=r"^--colour 'green': expected one of red, blue$"):
        colours.lookup("green")
    colours.register("red", 1)  # the same entry again (a re-imported module) is fine
    with pytest.raises(ValueError, match="colour 'red' registered twice"):
        colours.register("red", 3)


def test_discovery_runs_once_before_the_first_read_and_sorting_and_chains() -> None:
    calls = []
    found = Registry("thing", "{name} {valid}", sort=True, discover=lambda: calls.append(found.register("b", 2)))
    found.register("a", 1)
    assert calls == [] and found.names() == ["a", "b"] and list(found) == ["a", "b"] and calls == [2]
    assert "b" in found and len(found) == 2 and calls == [2]
    later = Registry("thing", "{name} {valid}")
    later.register("c", 3)
    both = Registry("thing", "unknown {name!r} ({valid})", chain=(found, later))
    assert both.names() == ["a", "b", "c"] and both["c"] == 3 and "a" in both and "z" not in both
    with pytest.raises(UsageError, match=r"^unknown 'z' \(a, b, c\)$"):
        both.check("z")
    with pytest.raises(ValueError):
        both.register("d", 4)


def test_the_three_registries_use_it() -> None:
    assert METRICS.names()[0] == "agf" and FORMATS.names() == ["onnx", "torchscript", "safetensors"]
    assert {name: entry.suffix for name, entry in FORMATS.items()} == {
        "onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
    assert ALL_SIGNALS.names() == sorted(SIGNALS) + sorted(DYNAMIC_SIGNALS)
