"""The one group model: which layers form a dependency group, where removing one of its channels
acts (its removal sites), what a channel costs, and the score table the pruner reads.

A group is torch-pruning's list of coupled layer slices. Scoring and pruning both list groups here
(`iter_groups`, `pruner_groups`), detect the classifier and attention here, and name a group here
(`group_key`). A group's **removal sites** are the tensors that become zero when one of its channels
is removed; AGF and Taylor are read there and summed over the sites, in loss units:

- conv → norm → act: the norm output (element by element what a ReLU passes on);
- a residual stream: every *write* into it (stem norm output, each block's last norm output; ViT:
  patch embedding + positional term, each attention and MLP output projection);
- an internal group with one producer and no norm (MLP hidden neuron, attention head, plain conv
  chain): the input of its consumer (fc2 input, proj input), i.e. after the activation;
- never a frozen layer (option-A shortcut) and never a pure read (pre-norm LayerNorm, the classifier).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from agfprune.core.errors import ModelError, NumericalError
from agfprune.core.layer_types import NORM_TYPES, WEIGHT_TYPES, channels_last, is_frozen

ROOT_MODULE_TYPES: tuple[type, ...] = WEIGHT_TYPES
SIDES = ("out", "in")


# ---- the graph, the classifier and attention ----------------------------------------------------

def build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """A DependencyGraph traced in eval mode (tracing in train mode would move BatchNorm statistics)."""
    import warnings

    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    finally:
        model.train(was_training)


def classifier_modules(model: nn.Module) -> list[nn.Module]:
    """The output layer(s): never pruned (their outputs are the classes)."""
    found: list[nn.Module] = []
    config = getattr(model, "pretrained_cfg", None) or {}
    names = config.get("classifier")
    for name in ([names] if isinstance(names, str) else list(names or [])):
        try:
            found.append(model.get_submodule(name))
        except AttributeError:
            pass
    if hasattr(model, "get_classifier"):
        classifier = model.get_classifier()
        if isinstance(classifier, nn.Module) and not isinstance(classifier, nn.Identity) and classifier not in found:
            found.append(classifier)
    if not any(any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in c.modules()) for c in found):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if linears:
            found.append(linears[-1])
    return found


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """{qkv layer: number of heads} for timm-style attention blocks (what tp pruners take as num_heads);
    which modules count as attention is decided once, in `vit.attention_modules`."""
    from agfprune.core.pruning.vit import attention_modules

    return {attention.qkv: int(attention.num_heads) for attention in attention_modules(model).values()}


def _reroot_attention(graph: Any, group: Any, num_heads: dict[nn.Module, int],
                      root_module_types: Sequence[type] = ROOT_MODULE_TYPES) -> Any:
    """Root an attention group at the projection's input features, as torch-pruning's pruners do
    (one score per head feature); None when the group has no such consumer."""
    is_attention = False
    downstream = None
    for dep, idxs in group:
        if dep.source.module in num_heads and graph.is_out_channel_pruning_fn(dep.handler):
            is_attention = True
        if isinstance(dep.target.module, tuple(root_module_types)) and graph.is_in_channel_pruning_fn(dep.handler):
            downstream, downstream_idxs = dep, idxs
    if is_attention and downstream is not None:
        return graph.get_pruning_group(downstream.target.module, downstream.handler, downstream_idxs)
    return None


def is_attention_group(graph: Any, group: Any, num_heads: dict[nn.Module, int]) -> bool:
    """Whether the group removes output features of a qkv layer (the pruner then re-roots it)."""
    return any(graph.is_out_channel_pruning_fn(dep.handler) and dep.target.module in num_heads for dep, _ in group)


def iter_groups(graph: Any, ignored_layers: Sequence[nn.Module] = (),
                num_heads: dict[nn.Module, int] | None = None,
                root_module_types: Sequence[type] = ROOT_MODULE_TYPES) -> Iterator[Any]:
    """Every prunable group, attention groups re-rooted exactly as torch-pruning's pruners do."""
    num_heads = num_heads or {}
    for group in graph.get_all_groups(ignored_layers=list(ignored_layers), root_module_types=tuple(root_module_types)):
        if is_attention_group(graph, group, num_heads):
            group = _reroot_attention(graph, group, num_heads, root_module_types)
            if group is None:
                continue
        yield group


# ---- names ----------------------------------------------------------------------------------------

_NAMES: "weakref.WeakKeyDictionary[Any, dict[nn.Module, str]]" = weakref.WeakKeyDictionary()


def graph_of(group: Any) -> Any:
    """The DependencyGraph a group came from.

    The one private torch-pruning access left in agfprune: a `tp.Group` keeps its graph only as
    `_DG`, and torch-pruning calls an Importance with the group alone (`importance(group)`), so our
    metrics, which are Importances, cannot be handed the graph any other way when the pruner calls
    them. Our own code passes the graph explicitly where it has it (`pruner_groups`, `ScoreTable`).
    """
    return getattr(group, "_DG", None)


def module_names(graph: Any) -> dict[nn.Module, str]:
    """module -> qualified name in the traced model (cached per graph)."""
    if graph is None:
        return {}
    names = _NAMES.get(graph)
    if names is None:
        model = getattr(graph, "model", None)
        names = {module: name for name, module in model.named_modules()} if model is not None else {}
        _NAMES[graph] = names
    return names


def module_name(group: Any, module: nn.Module) -> str:
    return module_names(graph_of(group)).get(module) or type(module).__name__


def is_out_side(group: Any, dep: Any) -> bool:
    graph = graph_of(group)
    if graph is not None:
        return bool(graph.is_out_channel_pruning_fn(dep.handler))
    return "out" in getattr(dep.handler, "__name__", "")


def group_key(group: Any) -> str:
    """A stable id of a group: the root layer's module name plus `:out` or `:in`."""
    dep = group[0].dep
    return f"{module_name(group, dep.target.module)}:{'out' if is_out_side(group, dep) else 'in'}"


@dataclass
class LayerSlice:
    """One layer's part of a group: which channels (`idxs`) map onto which root channels."""

    module: nn.Module
    name: str
    side: str  # "out": output channels/features of the layer; "in": its input channels
    idxs: list[int]
    root_idxs: list[int | None]


def layer_slices(group: Any) -> list[LayerSlice]:
    """The Conv/Linear/norm slices of a group (operators and bare parameters are skipped)."""
    slices = []
    for index, (dep, idxs) in enumerate(group):
        module = dep.target.module
        if not isinstance(module, WEIGHT_TYPES + NORM_TYPES):
            continue
        side = "out" if is_out_side(group, dep) else "in"
        if isinstance(module, NORM_TYPES) and side != "out":
            continue
        slices.append(LayerSlice(module, module_name(group, module), side, [int(i) for i in idxs],
                                 list(group[index].root_idxs)))
    return slices


def group_layers(group: Any) -> list[str]:
    """`name:out` / `name:in` of every Conv/Linear/norm layer slice in the group, in group order."""
    return [f"{item.name}:{item.side}" for item in layer_slices(group)]


# ---- removal sites ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    """A tensor calibration taps: the output ("out") or input ("in") of the named module."""

    module: str
    side: str
    channels: int
    channels_last: bool

    @property
    def key(self) -> str:
        return f"{self.module}:{self.side}"


@dataclass
class SiteSlice:
    """A removal site of one group, with the group's channel mapping onto it."""

    site: Site
    idxs: list[int]
    root_idxs: list[int | None]


def embedding_site(model: nn.Module) -> tuple[str, Site] | None:
    """timm ViTs write patch embedding + positional term (+ class token) into the stream before the
    first block: that sum, the first block's input, is the site of the patch-embedding producer."""
    patch_embed = getattr(model, "patch_embed", None)
    proj = getattr(patch_embed, "proj", None)
    blocks = getattr(model, "blocks", None)
    if not isinstance(proj, WEIGHT_TYPES) or not isinstance(getattr(model, "pos_embed", None), nn.Parameter):
        return None
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        return None
    channels = proj.out_channels if isinstance(proj, nn.modules.conv._ConvNd) else proj.out_features
    return "patch_embed.proj", Site("blocks.0", "in", int(channels), True)


def _site_of(module: nn.Module, name: str, side: str) -> Site:
    if side == "in":
        channels = module.in_channels if isinstance(module, nn.modules.conv._ConvNd) else module.in_features
        return Site(name, "in", int(channels), isinstance(module, nn.Linear))
    if isinstance(module, nn.modules.conv._ConvNd):
        channels = module.out_channels
    elif isinstance(module, nn.Linear):
        channels = module.out_features
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        channels = module.num_features
    elif isinstance(module, nn.GroupNorm):
        channels = module.num_channels
    else:
        channels = int(module.normalized_shape[-1])
    return Site(name, "out", int(channels), channels_last(module))


def removal_sites(group: Any) -> list[SiteSlice]:
    """The tensors that become zero when one of the group's channels is removed (module docstring)."""
    graph = graph_of(group)
    slices = layer_slices(group)
    out_norms = {item.module: item for item in slices if item.side == "out" and isinstance(item.module, NORM_TYPES)}
    producers = [item for item in slices if item.side == "out" and isinstance(item.module, WEIGHT_TYPES)
                 and not is_frozen(item.module)]
    model = getattr(graph, "model", None)
    embedding = embedding_site(model) if model is not None else None
    chains: list[SiteSlice] = []
    plain: list[LayerSlice] = []  # producers whose output is not normalised
    for producer in producers:
        node = graph.module2node.get(producer.module) if graph is not None else None
        followers = [output.module for output in getattr(node, "outputs", [])]
        if len(followers) == 1 and followers[0] in out_norms:
            norm = out_norms[followers[0]]
            chains.append(SiteSlice(_site_of(norm.module, norm.name, "out"), norm.idxs, norm.root_idxs))
        elif embedding is not None and producer.name == embedding[0]:
            chains.append(SiteSlice(embedding[1], producer.idxs, producer.root_idxs))
        else:
            chains.append(SiteSlice(_site_of(producer.module, producer.name, "out"), producer.idxs,
                                    producer.root_idxs))
            plain.append(producer)
    if len(chains) == 1 and len(plain) == 1:
        # one producer, no norm: what is removed is what its consumer reads, after the activation
        consumer = next((item for item in slices if item.side == "in" and isinstance(item.module, WEIGHT_TYPES)
                         and item.module is not plain[0].module), None)
        if consumer is not None:
            return [SiteSlice(_site_of(consumer.module, consumer.name, "in"), consumer.idxs, consumer.root_idxs)]
    return chains


def model_sites(model: nn.Module, example_inputs: torch.Tensor) -> list[Site]:
    """Every removal site of every prunable group (classifier ignored): what calibration taps."""
    graph = build_graph(model, example_inputs)
    found: dict[str, Site] = {}
    for group in iter_groups(graph, classifier_modules(model), attention_heads(model)):
        for item in removal_sites(group):
            found.setdefault(item.site.key, item.site)
    return sorted(found.values(), key=lambda site: site.key)


# ---- what a channel costs ---------------------------------------------------------------------------

COST_MEASURES = ("params", "macs")


def output_positions(model: nn.Module, example_inputs: torch.Tensor) -> dict[nn.Module, int]:
    """Spatial positions (or tokens) of each Conv/Linear output for one example input."""
    positions: dict[nn.Module, int] = {}
    handles = []

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.ndim >= 2:
            channels = output.shape[-1] if isinstance(module, nn.Linear) else output.shape[1]
            positions[module] = max(1, output.numel() // max(1, output.shape[0] * channels))

    for module in model.modules():
        if isinstance(module, WEIGHT_TYPES):
            handles.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_inputs[:1])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return positions


def channel_cost(group: Any, measure: str, positions: dict[nn.Module, int]) -> float:
    """Parameters (or MACs) that removing one channel of the group frees, to first order: one row of
    each producer, one column of each consumer, two norm parameters; frozen layers count too (they
    shrink as well). A layer sliced on both sides (depthwise conv) counts once."""
    total = 0.0
    seen: set[int] = set()
    for item in layer_slices(group):
        module = item.module
        if id(module) in seen:
            continue
        seen.add(id(module))
        weight = getattr(module, "weight", None)
        if isinstance(module, NORM_TYPES):
            total += 2.0 if measure == "params" else float(positions.get(module, 0))
            continue
        if weight is None:
            continue
        if item.side == "out":
            per_channel = weight[0].numel() if not getattr(module, "transposed", False) else weight[:, 0].numel()
            bias = 1 if getattr(module, "bias", None) is not None else 0
            value = per_channel + bias if measure == "params" else per_channel * positions.get(module, 1)
        else:
            if isinstance(module, nn.Linear):
                per_channel = weight.shape[0]
            else:
                per_channel = (weight.shape[0] // int(getattr(module, "groups", 1))) * weight[0, 0].numel()
            value = per_channel if measure == "params" else per_channel * positions.get(module, 1)
        total += float(value)
    return max(total, 1.0)


# ---- groups as the pruner sees them, and the score table ------------------------------------------

@dataclass
class GroupInfo:
    """One prunable group: the name it is recorded under, its members and its channel units."""

    name: str
    members: list[str]
    channels: int        # length of the score vector (the root's prunable indices)
    channel_groups: int  # >1 for grouped convs / attention heads: scores are averaged per unit
    unit_cost: dict[str, float] | None = None  # params/MACs one unit frees (cost-aware allocation)

    @property
    def units(self) -> int:
        return self.channels // self.channel_groups


def out_members(graph: tp.DependencyGraph, group) -> list[str]:
    """Names of the modules whose output channels the group removes (the group's identity)."""
    names: list[str] = []
    lookup = module_names(graph)
    for dep, _ in group:
        if dep.target.type == tp.ops.OPTYPE.PARAMETER:
            continue
        if graph.is_out_channel_pruning_fn(dep.handler):
            name = lookup.get(dep.target.module)
            if name is not None and name not in names:
                names.append(name)
    return names


def _has_one_channel_layer(graph: tp.DependencyGraph, group: Any, pruner: tp.pruner.BasePruner) -> bool:
    """The groups a pruner step leaves alone: a layer already at one channel, or below what
    `max_pruning_ratio` allows (torch-pruning's check, from the pruner's public attributes)."""
    floor = 1.0 - pruner.max_pruning_ratio
    for dep, _ in group:
        if dep.target.type == tp.ops.OPTYPE.PARAMETER:
            continue
        module = dep.target.module
        if graph.is_out_channel_pruning_fn(dep.handler):
            channels, initial = graph.get_out_channels(module), pruner.layer_init_out_ch.get(module)
        elif graph.is_in_channel_pruning_fn(dep.handler):
            channels, initial = graph.get_in_channels(module), pruner.layer_init_in_ch.get(module)
        else:
            continue
        if channels is None:
            continue
        if channels == 1 or (initial is not None and channels < initial * floor):
            return True
    return False


def channel_groups(pruner: tp.pruner.BasePruner, group: Any) -> int:
    """Channel units of a group (grouped convs, group norms): the largest grouping of any member."""
    graph = pruner.DG
    found = [(pruner.out_channel_groups if graph.is_out_channel_pruning_fn(dep.handler)
              else pruner.in_channel_groups).get(dep.target.module) for dep, _ in group]
    found = [value for value in found if value is not None]
    return max(found) if found else 1


def pruner_groups(pruner: tp.pruner.BasePruner) -> Iterator[tuple[GroupInfo, object]]:
    """The groups the pruner's next step will score, in its order and with its re-rooting."""
    graph = pruner.DG
    for group in graph.get_all_groups(ignored_layers=pruner.ignored_layers,
                                      root_module_types=pruner.root_module_types):
        if _has_one_channel_layer(graph, group, pruner):
            continue
        if is_attention_group(graph, group, pruner.num_heads):
            group = _reroot_attention(graph, group, pruner.num_heads, pruner.root_module_types)
            if group is None:
                continue
        members = out_members(graph, group)
        if not members:
            continue
        root = group[0].dep.target.module
        channels = (graph.get_out_channels(root) if graph.is_out_channel_pruning_fn(group[0].dep.handler)
                    else graph.get_in_channels(root))
        yield GroupInfo(members[0], members, int(channels), channel_groups(pruner, group)), group


class ScoreTable(tp.importance.Importance):
    """A torch-pruning Importance that answers from precomputed per-group scores, by layer name."""

    def __init__(self, scores: dict[str, torch.Tensor], groups: dict[str, GroupInfo],
                 graph: tp.DependencyGraph | None = None) -> None:
        self.scores = scores
        self.groups = groups
        self.graph = graph  # the graph of the pruner that asks (names its groups' layers)
        self._by_member = {member: name for name, info in groups.items() for member in info.members}

    def for_graph(self, graph: tp.DependencyGraph) -> "ScoreTable":
        """The same scores, answering a pruner on `graph`."""
        return ScoreTable(self.scores, self.groups, graph)

    def lookup(self, members: list[str]) -> torch.Tensor | None:
        for member in members:
            name = self._by_member.get(member)
            if name is not None:
                return self.scores[name]
        return None

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:  # noqa: D102 - tp.Importance protocol
        return self.lookup(out_members(self.graph if self.graph is not None else graph_of(group), group))

    def unit_scores(self, name: str) -> torch.Tensor:
        """Scores per prunable unit: channel groups (heads, conv groups) averaged, as tp does."""
        info, scores = self.groups[name], self.scores[name]
        return scores.view(info.channel_groups, -1).mean(0) if info.channel_groups > 1 else scores

    def add_costs(self, pruner: tp.pruner.BasePruner, example_inputs: torch.Tensor) -> None:
        """Record what one unit of each group frees (params and MACs), for cost-aware allocation."""
        positions = output_positions(pruner.model, example_inputs)
        for info, group in pruner_groups(pruner):
            if info.name in self.groups:
                self.groups[info.name].unit_cost = {
                    measure: channel_cost(group, measure, positions) * info.channel_groups
                    for measure in COST_MEASURES}


@torch.no_grad()
def score_groups(pruner: tp.pruner.BasePruner, importance: tp.importance.Importance) -> ScoreTable:
    """Call `importance` once on every group the pruner will consider; check lengths and values."""
    scores: dict[str, torch.Tensor] = {}
    groups: dict[str, GroupInfo] = {}
    for info, group in pruner_groups(pruner):
        values = importance(group)
        if values is None:
            continue
        values = torch.as_tensor(values).detach().float().cpu().reshape(-1)
        if values.numel() != info.channels:
            raise ModelError(f"the metric gave {values.numel()} scores for group {info.name}, "
                             f"which has {info.channels} channels")
        if not torch.isfinite(values).all():
            raise NumericalError(f"the metric gave NaN/Inf scores for group {info.name}")
        scores[info.name] = values
        groups[info.name] = info
    if not scores:
        raise ModelError("the model has no prunable groups (everything is ignored or the classifier)")
    return ScoreTable(scores, groups)


def table_from_named_scores(pruner: tp.pruner.BasePruner, named: dict[str, torch.Tensor],
                            source: str) -> ScoreTable:
    """A ScoreTable from stored scores (a scores.json: keys are `group_key`s, `root:out|in`; plain
    member layer names are accepted too); refuses scores that do not fit this model's groups."""
    scores: dict[str, torch.Tensor] = {}
    groups: dict[str, GroupInfo] = {}
    missing: list[str] = []
    for info, group in pruner_groups(pruner):
        candidates = [group_key(group)] + info.members + [f"{m}:out" for m in info.members]
        key = next((k for k in candidates if k in named), None)
        if key is None:
            missing.append(candidates[0])
            continue
        values = torch.as_tensor(named[key]).float().reshape(-1)
        if values.numel() != info.channels:
            raise ModelError(f"{source}: group {key} has {values.numel()} scores but this model's group "
                             f"has {info.channels} channels; the scores are for another model")
        if not torch.isfinite(values).all():
            raise ModelError(f"{source}: group {key} has missing or non-finite scores")
        scores[info.name] = values
        groups[info.name] = info
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ModelError(f"{source}: no scores for {len(missing)} of this model's groups ({shown}); "
                         "the scores are for another model")
    if not scores:
        raise ModelError("the model has no prunable groups (everything is ignored or the classifier)")
    return ScoreTable(scores, groups)
