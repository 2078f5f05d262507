"""Keep a pruned model's width attributes true, so that it stays a normal timm model.

torch-pruning reshapes layers but not the plain attributes a model keeps about its widths:
timm's `reset_classifier`, `forward_head`, `forward_intermediates` and feature extraction read
`num_features`, `head_hidden_size`, `embed_dim`, `feature_info[i]['num_chs']` and the head's
`in_features`/`num_features`. One traced forward pass measures the real widths and writes them back;
it runs after pruning and after loading a pruned checkpoint (the only two ways a pruned model appears).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


def _channels(tensor: Any) -> int | None:
    """Channel width of a feature tensor: NCHW -> dim 1, tokens (N, L, C) or pooled (N, C) -> last."""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() < 2:
        return None
    return int(tensor.shape[1] if tensor.dim() == 4 else tensor.shape[-1])


def _classifier_in_width(layer: Any) -> int | None:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels
    return None


def _feature_modules(model: nn.Module) -> list[tuple[dict[str, Any], nn.Module]]:
    """timm's feature_info entries (list-of-dicts form) with the modules they name."""
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list):
        return []
    found = []
    for entry in info:
        name = entry.get("module") if isinstance(entry, dict) else None
        if not isinstance(name, str) or "num_chs" not in entry:
            continue
        try:
            found.append((entry, model.get_submodule(name)))
        except AttributeError:
            continue
    return found


def _heads(model: nn.Module) -> list[nn.Module]:
    """timm head modules (ClassifierHead, NormMlpClassifierHead) that remember their input width."""
    return [m for m in model.modules() if m is not model and not isinstance(m, (nn.Linear, nn.Conv2d))
            and isinstance(getattr(m, "in_features", None), int) and hasattr(m, "fc")]


@torch.no_grad()
def sync_width_attributes(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, int]:
    """Rewrite width attributes from one forward pass at `input_size` (C, H, W); returns what was set.

    A model without timm's `forward_features`/`forward_head` split is left alone (nothing reads such
    attributes from it).
    """
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        return {}
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    feature_widths: dict[int, int] = {}
    head_inputs: dict[int, int] = {}
    hooks = []
    for index, (_entry, module) in enumerate(_feature_modules(model)):
        def store(_m, _i, output, index=index) -> None:
            width = _channels(output[0] if isinstance(output, (tuple, list)) else output)
            if width is not None:
                feature_widths[index] = width
        hooks.append(module.register_forward_hook(store))
    heads = _heads(model)
    for index, head in enumerate(heads):
        def store_input(_m, inputs, index=index) -> None:
            width = _channels(inputs[0]) if inputs else None
            if width is not None:
                head_inputs[index] = width
        hooks.append(head.register_forward_pre_hook(store_input))
    was_training = model.training
    model.eval()
    try:
        example = torch.zeros(1, *input_size, device=device, dtype=dtype)
        features = model.forward_features(example)
        pre_logits = model.forward_head(features, pre_logits=True)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    changed: dict[str, int] = {}

    def assign(owner: Any, attr: str, value: int | None, label: str) -> None:
        if value is not None and isinstance(getattr(owner, attr, None), int) and getattr(owner, attr) != value:
            setattr(owner, attr, value)
            changed[label] = value

    num_features = _channels(features)
    assign(model, "num_features", num_features, "num_features")
    assign(model, "embed_dim", num_features, "embed_dim")  # ViTs: embed_dim is the token width
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_hidden = _classifier_in_width(classifier) or _channels(pre_logits)
    assign(model, "head_hidden_size", head_hidden, "head_hidden_size")
    for index, head in enumerate(heads):
        assign(head, "in_features", head_inputs.get(index), f"{type(head).__name__}.in_features")
        fc_width = _classifier_in_width(getattr(head, "fc", None))
        assign(head, "num_features", fc_width, f"{type(head).__name__}.num_features")
    for index, (entry, _module) in enumerate(_feature_modules(model)):
        width = feature_widths.get(index)
        if width is not None and entry["num_chs"] != width:
            entry["num_chs"] = width
            changed[f"feature_info.{entry['module']}"] = width
    return changed
