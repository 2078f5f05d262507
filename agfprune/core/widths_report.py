"""What pruning did to each layer: dense vs pruned widths (and heads per attention), as rows, a one-line
summary and a bar chart. Read from the pruned model and a freshly built base, so it works for any
pruned checkpoint, however it was made."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


def _width(module: nn.Module) -> int | None:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


def width_rows(base: nn.Module, pruned: nn.Module) -> list[dict[str, Any]]:
    """One row per conv/linear layer (output width) and per attention (heads), in model order."""
    from agfprune.core.pruning.vit import attention_modules

    base_modules = dict(base.named_modules())
    rows: list[dict[str, Any]] = []
    heads = attention_modules(pruned)
    for name, module in pruned.named_modules():
        if name in heads and name in base_modules:
            rows.append({"layer": name, "kind": "heads", "before": int(base_modules[name].num_heads),
                         "after": int(module.num_heads)})
            continue
        after = _width(module)
        original = base_modules.get(name)
        before = _width(original) if original is not None else None
        if after is None or before is None:
            continue
        rows.append({"layer": name, "kind": type(module).__name__, "before": before, "after": after})
    for row in rows:
        row["kept"] = round(row["after"] / row["before"], 4) if row["before"] else 1.0
    return rows


def base_of(loaded: Any) -> nn.Module:
    """The dense architecture a pruned LoadedModel was made from, built on the meta device (no weights)."""
    from agfprune.core.models import create_model

    with torch.device("meta"):
        return create_model(loaded.arch, **loaded.timm_kwargs)


def summarize_widths(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How many layers got narrower, the kept fraction's range, and heads removed (for ViTs)."""
    layers = [r for r in rows if r["kind"] != "heads"]
    narrower = [r for r in layers if r["after"] < r["before"]]
    kept = [r["kept"] for r in narrower] or [1.0]
    thinnest = min(narrower, key=lambda r: r["kept"]) if narrower else None
    heads = [r for r in rows if r["kind"] == "heads"]
    summary: dict[str, Any] = {"layers": len(layers), "layers_narrower": len(narrower),
                               "kept_median": round(statistics.median(kept), 4), "kept_min": round(min(kept), 4),
                               "thinnest_layer": thinnest["layer"] if thinnest else None}
    if heads:
        summary["heads_before"] = sum(r["before"] for r in heads)
        summary["heads_after"] = sum(r["after"] for r in heads)
    return summary


def describe_widths(summary: dict[str, Any]) -> str:
    """'19 of 21 layers narrower, kept 50% (median), 25% at least (layer3.0.conv1)' (+ heads)."""
    if not summary["layers_narrower"]:
        text = f"no layer narrower ({summary['layers']} layers)"
    else:
        text = (f"{summary['layers_narrower']} of {summary['layers']} layers narrower, kept "
                f"{100 * summary['kept_median']:.0f}% (median), {100 * summary['kept_min']:.0f}% at least "
                f"({summary['thinnest_layer']})")
    if "heads_before" in summary:
        text += f"; attention heads {summary['heads_before']} -> {summary['heads_after']}"
    return text


def plot_widths(rows: list[dict[str, Any]], path: str | Path, title: str) -> None:
    """Dense vs pruned width per layer (bars), heads per attention on a second panel; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agfprune.core.atomic import atomic_path

    layers = [r for r in rows if r["kind"] != "heads"]
    heads = [r for r in rows if r["kind"] == "heads"]
    panels = [(layers, "output width (channels / features)")] + ([(heads, "attention heads")] if heads else [])
    figure, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.18 * len(layers) + 2), 3.6 * len(panels)),
                                squeeze=False)
    for axis, (items, label) in zip(axes[:, 0], panels):
        positions = range(len(items))
        axis.bar(positions, [r["before"] for r in items], color="#c8c8c8", label="dense")
        axis.bar(positions, [r["after"] for r in items], color="#1f77b4", label="pruned")
        axis.set_xticks(list(positions))
        axis.set_xticklabels([r["layer"] for r in items], rotation=90, fontsize=6)
        axis.set_ylabel(label)
        axis.legend(fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(title)
    figure.tight_layout()
    with atomic_path(Path(path), suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
