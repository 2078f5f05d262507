"""The torch-pruning pruner agfprune drives: which layers it leaves alone, the input it traces with,
how it is built from the options and per-layer ratios, and one pruning step with a ScoreTable.
"""

from __future__ import annotations

import fnmatch
import warnings

import torch
import torch.nn as nn
import torch_pruning as tp

from agfprune.core.errors import ModelError, UsageError, first_line
from agfprune.core.pruning import vit
from agfprune.core.pruning.groups import ScoreTable, classifier_modules
from agfprune.core.pruning.options import PruneOptions
from agfprune.core.pruning.record import ChannelTracker


def ignored_modules(model: nn.Module, patterns: list[str]) -> list[nn.Module]:
    """Classifier plus every module whose name matches one of the --ignore glob patterns."""
    ignored = classifier_modules(model)
    names = [name for name, _ in model.named_modules() if name]
    for pattern in patterns:
        matched = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            example = ", ".join(names[:4])
            raise UsageError(f"--ignore {pattern!r} matches no module (names look like: {example}, ...)")
        ignored.extend(model.get_submodule(name) for name in matched)
    return ignored


def example_input_size(model: nn.Module, fallback: tuple[int, ...]) -> tuple[int, ...]:
    """The input size a model was built for (timm ViTs fix theirs at construction)."""
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None and not getattr(patch_embed, "dynamic_img_size", False):
        size = tuple(img_size) if isinstance(img_size, (tuple, list)) else (img_size, img_size)
        return (fallback[0], int(size[0]), int(size[1]))
    return tuple(fallback)


def build_pruner(model: nn.Module, example: torch.Tensor, options: PruneOptions, channel_ratio: float,
                 layer_ratios: dict[nn.Module, float] | None = None) -> tuple[tp.pruner.BasePruner, dict[nn.Module, int]]:
    """A torch-pruning pruner on `model`. How many channels each group loses comes from the scores:
    `layer_ratios` (see `layer_ratios`) gives every member of a group its group's ratio through
    torch-pruning's `pruning_ratio_dict`; without it (a pruner that only lists and scores groups)
    every group gets `channel_ratio`."""
    ignored = ignored_modules(model, options.ignore)
    heads = vit.head_counts(model, ignored)
    if options.removes_heads and not heads:
        raise UsageError("--prune-heads/--head-ratio: this model has no prunable attention heads "
                         "(timm-style attention with a fused qkv layer); drop the option")
    try:
        with warnings.catch_warnings():
            # cls_token/pos_embed/layer-scale gammas: pruning their last dimension is what we want
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            pruner = _make_pruner(model, example, options, channel_ratio, ignored, heads, layer_ratios)
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
        raise ModelError(f"cannot trace the model's dependency graph ({first_line(exc)})") from None
    return pruner, heads


def _make_pruner(model: nn.Module, example: torch.Tensor, options: PruneOptions, channel_ratio: float,
                 ignored: list[nn.Module], heads: dict[nn.Module, int],
                 layer_ratios: dict[nn.Module, float] | None) -> tp.pruner.BasePruner:
    # the placeholder importance is replaced by a ScoreTable before every step
    return tp.pruner.BasePruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(),
        pruning_ratio=channel_ratio, max_pruning_ratio=1.0, iterative_steps=options.steps,
        # one module per key: each gets its own ranking scope; a group is ranked in its members' scope
        pruning_ratio_dict=dict(layer_ratios or {}),
        ignored_layers=ignored, round_to=options.round_to,
        # fresh dicts: torch-pruning mutates these and its defaults are shared between instances
        in_channel_groups={}, out_channel_groups={}, num_heads=dict(heads),
        prune_num_heads=options.removes_heads and bool(heads), prune_head_dims=not options.removes_heads,
        head_pruning_ratio=options.head_ratio_for(channel_ratio) or 0.0,
    )


def prune_step(pruner: tp.pruner.BasePruner, table: ScoreTable, step: int, steps: int,
                heads: dict[nn.Module, int], head_ratio: float | None, tracker: ChannelTracker | None) -> None:
    pruner.importance = table.for_graph(pruner.DG)
    if heads and head_ratio is not None:
        vit.set_head_step_ratio(pruner, heads, head_ratio, step, steps)
    for group in pruner.step(interactive=True):  # the pruner counts its steps: this is step `step`
        if tracker is not None:
            tracker.apply(pruner.DG, group)
        group.prune()
    vit.sync_attention(pruner.model, pruner.num_heads)
