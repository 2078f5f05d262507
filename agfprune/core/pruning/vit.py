"""Attention heads of timm ViTs: what torch-pruning needs to know, and what must follow pruning.

timm's Attention reshapes qkv output with its own `num_heads` and `head_dim` and scales by
`scale` on the non-fused path (the fused path uses head_dim ** -0.5 implicitly); after qkv/proj
lose channels those attributes must describe the new widths, or the forward breaks or silently
computes something else.
"""

from __future__ import annotations

import torch.nn as nn

from agfprune.core.errors import ModelError


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Multi-head self-attention blocks with a fused qkv Linear (timm's Attention and lookalikes)."""
    found = {}
    for name, module in model.named_modules():
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, nn.Linear) and isinstance(getattr(module, "num_heads", None), int) \
                and hasattr(module, "head_dim"):
            found[name] = module
    return found


def check_supported(name: str, attention: nn.Module) -> None:
    """Refuse attention variants whose extra per-head layers torch-pruning cannot follow."""
    for part in ("q_norm", "k_norm", "norm"):
        layer = getattr(attention, part, None)
        if layer is not None and not isinstance(layer, nn.Identity):
            raise ModelError(f"attention {name} uses {part} ({type(layer).__name__}), which pruning cannot "
                             "keep consistent; use --ignore '{name}.*' to keep this attention dense")
    if getattr(attention, "gate", None) is not None:
        raise ModelError(f"attention {name} is gated; gated attention cannot be pruned yet "
                         f"(use --ignore '{name}.*')")
    if attention.qkv.out_features != 3 * attention.num_heads * attention.head_dim:
        raise ModelError(f"attention {name}: qkv width {attention.qkv.out_features} is not "
                         f"3 x {attention.num_heads} heads x {attention.head_dim}")


def head_counts(model: nn.Module, ignored: list[nn.Module]) -> dict[nn.Module, int]:
    """torch-pruning's `num_heads` argument: qkv Linear -> number of heads (a fresh dict)."""
    counts: dict[nn.Module, int] = {}
    for name, attention in attention_modules(model).items():
        if attention.qkv in ignored:
            continue
        check_supported(name, attention)
        counts[attention.qkv] = attention.num_heads
    return counts


def heads_to_remove(heads: int, ratio: float) -> int:
    """Heads removed from one attention at `ratio`, always leaving at least one."""
    return max(0, min(heads - 1, round(ratio * heads)))


def set_head_step_ratio(pruner, initial_heads: dict[nn.Module, int], ratio: float, step: int,
                        steps: int) -> None:
    """Tell the pruner how many heads to drop at `step` (1-based) so that `ratio` of the heads
    are gone after `steps`; torch-pruning applies ceil(r * current_heads), so pass r exactly."""
    for qkv, heads in initial_heads.items():
        total = heads_to_remove(heads, ratio)
        removed_before = round(total * (step - 1) / steps)
        now = round(total * step / steps) - removed_before
        current = pruner.num_heads[qkv]
        value = (now - 0.5) / current if now > 0 else 0.0
        schedule = [0.0] * (steps + 1)
        schedule[step] = value
        pruner.head_pruning_ratio_dict[qkv] = schedule


def sync_attention(model: nn.Module, pruner_heads: dict[nn.Module, int]) -> None:
    """Rewrite num_heads, head_dim, attn_dim and scale from the pruned qkv/proj widths."""
    for name, attention in attention_modules(model).items():
        heads = pruner_heads.get(attention.qkv, attention.num_heads)
        width = attention.qkv.out_features
        if heads < 1 or width % (3 * heads):
            raise ModelError(f"attention {name}: pruned qkv width {width} does not split into 3 x {heads} heads")
        attention.num_heads = heads
        attention.head_dim = width // (3 * heads)
        if hasattr(attention, "attn_dim"):
            attention.attn_dim = heads * attention.head_dim
        if hasattr(attention, "scale"):
            attention.scale = attention.head_dim ** -0.5
        proj = getattr(attention, "proj", None)
        if isinstance(proj, nn.Linear) and proj.in_features != heads * attention.head_dim:
            raise ModelError(f"attention {name}: proj takes {proj.in_features} features but the heads "
                             f"give {heads * attention.head_dim}")
