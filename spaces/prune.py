"""Structured pruning of ultralytics YOLOs: remove whole channels, with every layer coupled to them.

Which layers share channels is found by torch-pruning's DepGraph (Fang et al., CVPR 2023): it runs
the model once under autograd and, for a conv's output channels, collects everything that must lose
the same channels - the conv's BatchNorm, the convs joined to it by residual adds, the slices of the
concats it feeds, the depthwise convs that pass them through, and the input channels of every conv
that reads them. Such a set is a *pruning group*; DepGraph also does the slicing. Ultralytics
specifics handled here:

  - C2f / C3k2 / C2PSA split cv1's output into two equal halves (`chunk` / `split`) and read the
    second half twice (concat and bottlenecks); DepGraph maps channels through that split wrongly
    (torch-pruning issue #147; its own YOLOv8 example rewrites C2f for this reason). So while
    analysing and pruning, each such cv1 is held as two convs, one per half, and the block runs an
    equivalent forward; afterwards the halves are merged back into the original conv, the block's
    `c` is updated and its class forward is back. Both halves take cv1's ratio, so they stay equal.
  - Attention (C2PSA) reshapes channels into heads; DepGraph cannot map that (on YOLO11 its index
    mapping grows until memory runs out). While analysing, an Attention shows only `proj(pe(x))`,
    and every group reaching its qkv/proj/pe is refused: attention is left alone.
  - Detect's last box/cls convs and the DFL conv keep their output channels (they are the
    predictions); their inputs can be pruned.
  - Anything not known to be traced correctly is refused: groups through reshape/split/slice ops,
    and convs in blocks whose forward is not one of `_KNOWN_FORWARDS` (Segment, Pose, RepNCSPELAN4...).

One conv per group carries the group's prune_ratio knob: the first producer in module order (both
halves of a split cv1 share cv1's knob); the other members follow it. Channels are ranked by one
score per channel summed over the group: "l1" is the L1 norm of all the group's weights of that
channel (filters of the producing convs and input slices of the consuming convs: DepGraph's group
L1), "bn" the sum of |gamma| over the group's BatchNorms (network slimming).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import types

import torch
import torch_pruning as tp
from torch import nn
from ultralytics.nn.modules.block import C2PSA, C3, SPPF, Attention, Bottleneck, C2f
from ultralytics.nn.modules.conv import Concat, Conv
from ultralytics.nn.modules.head import Detect

from edgesearch.common.errors import InputError

# how a group's channels are ranked (Torch-Pruning's importances): "l1" / "l2" the group's weight
# magnitude, "bn" its BatchNorm scales, "taylor" |weight x gradient| summed over the group (first-order
# Taylor: the loss change of removing a channel; needs the gradients of a loss in every weight's .grad)
IMPORTANCES = ("l1", "l2", "bn", "taylor")
TRACE_IMGSZ = 64  # input size of the tracing forward pass (a multiple of the largest stride, 32)
# top-level blocks whose channel flow DepGraph follows exactly (C2f and C2PSA once split, see above)
_KNOWN_FORWARDS = {Conv.forward, Concat.forward, nn.Upsample.forward, SPPF.forward, C2f.forward, C3.forward,
                   Bottleneck.forward, C2PSA.forward, Detect.forward}
# graph ops whose channel index mapping is not trusted: a group through one is refused
_UNTRUSTED_OPS = {tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.RESHAPE, tp.ops.OPTYPE.SLICE, tp.ops.OPTYPE.UNBIND,
                  tp.ops.OPTYPE.EXPAND}


@dataclasses.dataclass(frozen=True)
class PruningGroup:
    """Convs whose channels are removed together, named as in `model.named_modules()`."""

    knob: str  # the conv that carries the group's prune_ratio
    producers: tuple[str, ...]  # convs that lose output channels
    consumers: tuple[str, ...]  # convs that lose input channels (and keep their outputs)
    channels: int  # channels the ratio applies to (per half for a split cv1)
    halves: bool = False  # a split cv1: each half is its own group, both pruned by the ratio

    def describe(self) -> str:
        halves = " (both halves of the split, pruned equally)" if self.halves else ""
        return f"out: {', '.join(self.producers)}{halves}; in: {', '.join(self.consumers) or '-'}"

    @property
    def layers(self) -> tuple[str, ...]:
        """Every conv whose weight shape changes when this group is pruned."""
        return self.producers + self.consumers


def prunable_pairs(model: nn.Module) -> dict[str, str]:
    """{conv carrying a group's prune_ratio: a short description of the group}, in module order.
    A conv that is not a key cannot carry a prune_ratio (its channels follow another conv's, or
    must stay)."""
    return {knob: group.describe() for knob, group in prunable_groups(model).items()}


def prunable_groups(model: nn.Module) -> dict[str, PruningGroup]:
    """{knob conv name: its PruningGroup}, in module order; cached per architecture (the trace
    takes about a second)."""
    key = _architecture_key(model)
    if key is None or key not in _GROUPS_CACHE:
        analysed = copy.deepcopy(model)  # the analysis rewrites blocks for a while
        with _analysable(analysed) as halves:
            found = _find_groups(analysed, halves)
        groups = {knob: _public_view(knob, parts) for knob, parts in found.items()}
        if key is None:
            return groups
        _GROUPS_CACHE[key] = groups
        while len(_GROUPS_CACHE) > 8:  # a process sees a few architectures at most
            _GROUPS_CACHE.pop(next(iter(_GROUPS_CACHE)))
    return dict(_GROUPS_CACHE[key])  # a copy: callers may edit theirs


_GROUPS_CACHE: dict[tuple, dict[str, PruningGroup]] = {}


def prune_output_channels(model: nn.Module, ratios: dict[str, float], importance: str = "l1") -> None:
    """Remove the least important `ratio` of each named group's channels, in place.

    Keys are knob convs (see `prunable_pairs`); every member of a group loses the same channels.
    Call it on the unfused model: BatchNorms are sliced too and give the "bn" importance."""
    if importance not in IMPORTANCES:
        raise InputError(f"pruning importance must be one of {', '.join(IMPORTANCES)}, not {importance!r}")
    ratios = {name: float(ratio) for name, ratio in ratios.items() if ratio > 0}
    too_large = next((name for name, ratio in ratios.items() if ratio >= 1), None)
    if too_large:
        raise InputError(f"prune ratio of {too_large} must be in [0, 1), not {ratios[too_large]}")
    if not ratios:
        return
    if importance == "bn" and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise InputError('"bn" pruning importance needs the unfused model: this one has no BatchNorm')
    if importance == "taylor" and all(m.weight.grad is None for m in model.modules() if isinstance(m, nn.Conv2d)):
        raise InputError('"taylor" pruning importance needs the gradients of a loss in the conv weights\' .grad')
    scorer = _importance(importance)
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    with _analysable(model) as halves:
        found = _find_groups(model, halves)
        refused = next((name for name in ratios if name not in found), None)
        if refused:
            raise InputError(f"{refused} cannot be pruned: it is not the knob conv of a prunable group "
                             "(its channels follow another conv's, or must stay)")
        # rank every group on the unpruned weights first, so pruning one does not bias another's ranking
        plan = [(group, _weakest(scorer(group.all_channels), ratios[name]))
                for name in ratios for group in found[name]]
        for group, idxs in plan:
            if idxs:
                group.prune(idxs)
    for name, parameter in model.named_parameters():  # sliced parameters are new ones, trainable
        parameter.requires_grad_(name not in frozen)


def ranking_for(gradients: dict[str, torch.Tensor] | None) -> str:
    """The importance a cut ranks channels by: "taylor" where a loss's gradients are given (it recovers
    best: bench/results/pruning_importance.md), else "l1" (for uses where only the pruned shapes matter)."""
    return "l1" if gradients is None else "taylor"


def removed_channels(model: nn.Module, changes: list[tuple[str, float]],
                     gradients: dict[str, torch.Tensor] | None = None,
                     ) -> dict[tuple[str, float], dict[str, tuple[list[int], list[int]]]]:
    """What `prune_output_channels(model, {knob: ratio})` would remove, for each (knob, ratio) of
    `changes` on its own, from one trace for all of them: {(knob, ratio): {conv name: (its output
    channels removed, its input channels removed)}}, indices into the unpruned convs (a split cv1's
    second half counted after its first). `model` is left untouched; zeroing these channels of its
    fused copy computes what the pruned model computes (runners/accuracy/sensitivity.py). Channels
    are ranked as spaces.apply.apply_candidate ranks them (ranking_for)."""
    scorer = _importance(ranking_for(gradients))
    analysed = copy.deepcopy(model)
    if gradients is not None:
        attach_gradients(analysed, gradients)
    result: dict[tuple[str, float], dict[str, tuple[list[int], list[int]]]] = {}
    with _analysable(analysed) as halves:
        found = _find_groups(analysed, halves)
        names = _original_conv_names(analysed, halves)
        offsets = {pair[1].conv: pair[0].conv.out_channels for pair in halves.values()}  # the second half's start
        for knob, ratio in changes:
            if knob not in found:
                raise InputError(f"{knob} cannot be pruned: it is not the knob conv of a prunable group")
            removed: dict[str, tuple[set[int], set[int]]] = {}
            for group in found[knob]:
                idxs = _weakest(scorer(group.all_channels), float(ratio))
                if not idxs:
                    continue
                root = group.all_channels[0].dep
                for dep, mapped in group.graph.get_pruning_group(root.target.module, root.handler, idxs):
                    module = dep.target.module
                    if not isinstance(module, nn.Conv2d):
                        continue
                    plain = [int(getattr(i, "idx", i)) for i in mapped]
                    outputs, inputs = removed.setdefault(names[module], (set(), set()))
                    if group.graph.is_out_channel_pruning_fn(dep.handler):
                        outputs.update(i + offsets.get(module, 0) for i in plain)
                    else:
                        inputs.update(plain)
            result[(knob, ratio)] = {name: (sorted(outputs), sorted(inputs))
                                     for name, (outputs, inputs) in removed.items()}
    return result


def attach_gradients(model: nn.Module, gradients: dict[str, torch.Tensor]) -> None:
    """Put `gradients` ({parameter name: gradient}, of the same model's unpruned parameters) into
    the parameters' .grad, for the "taylor" importance."""
    for name, parameter in model.named_parameters():
        parameter.grad = gradients[name].clone() if name in gradients else None


def copy_gradients(source: nn.Module, target: nn.Module) -> None:
    """Give `target`, a deepcopy of `source`, its gradients (deepcopy leaves .grad behind)."""
    for copied, original in zip(target.parameters(), source.parameters(), strict=True):
        copied.grad = None if original.grad is None else original.grad.clone()


def removed_count(channels: int, ratio: float) -> int:
    """Channels a ratio removes from a group: int(channels * ratio), keeping at least one."""
    return min(int(channels * ratio), channels - 1)


def ratios_in_steps(model: nn.Module, ratios: dict[str, float], cuts: int) -> list[dict[str, float]]:
    """The ratios of `cuts` successive `prune_output_channels` calls that together leave each group
    exactly the channels one call with `ratios` leaves (same widths, same FLOPs). Each cut removes
    about the same share of what is left: a geometric path from the group's width to the final one.
    A cut that removes nothing from a group leaves it out (it may be empty)."""
    groups = prunable_groups(model)
    refused = next((name for name in ratios if name not in groups), None)
    if refused:
        raise InputError(f"{refused} cannot be pruned: it is not the knob conv of a prunable group")
    paths = {name: _kept_after_each_cut(groups[name].channels, ratio, cuts)
             for name, ratio in ratios.items() if ratio > 0}
    now = {name: groups[name].channels for name in paths}
    steps = []
    for cut in range(cuts):
        steps.append({name: _ratio_leaving(now[name], kept[cut]) for name, kept in paths.items() if kept[cut] < now[name]})
        now = {name: kept[cut] for name, kept in paths.items()}
    return steps


def _kept_after_each_cut(channels: int, ratio: float, cuts: int) -> list[int]:
    """A group's channels after each of `cuts` cuts: a geometric path to what one cut at `ratio` keeps."""
    final = channels - removed_count(channels, ratio)
    return [max(final, round(channels * (final / channels) ** ((cut + 1) / cuts))) for cut in range(cuts)]


def _ratio_leaving(channels: int, kept: int) -> float:
    """The prune ratio that leaves `kept` of `channels` (removed_count floors; the nudge beats rounding)."""
    ratio = (channels - kept + 1e-6) / channels
    assert removed_count(channels, ratio) == channels - kept
    return ratio


def _weakest(scores: torch.Tensor, ratio: float) -> list[int]:
    """Indices of the lowest-scoring channels a ratio removes."""
    return sorted(torch.argsort(scores, stable=True)[:removed_count(len(scores), ratio)].tolist())


def _importance(name: str) -> tp.importance.Importance:
    if name == "bn":
        return tp.importance.BNScaleImportance(group_reduction="sum", normalizer=None)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None,
                                                  target_types=[nn.modules.conv._ConvNd])
    return tp.importance.GroupMagnitudeImportance(p=2 if name == "l2" else 1, group_reduction="sum", normalizer=None,
                                                  target_types=[nn.modules.conv._ConvNd])


# --- finding the groups -----------------------------------------------------------------------------

@dataclasses.dataclass
class _FoundGroup:
    """One DepGraph group, over all channels of its root conv, and its convs' names."""

    graph: tp.DependencyGraph
    all_channels: tp.dependency.Group  # what the importance scores
    producers: list[str]
    consumers: list[str]

    def prune(self, idxs: list[int]) -> None:
        root = self.all_channels[0].dep
        self.graph.get_pruning_group(root.target.module, root.handler, idxs).prune()


def _find_groups(model: nn.Module, halves: dict[str, tuple[Conv, Conv]]) -> dict[str, list[_FoundGroup]]:
    """{knob name: its DepGraph groups (two for a split cv1)} for every prunable group, in module order.
    `model` must be inside `_analysable`."""
    graph = _dependency_graph(model)
    names = _original_conv_names(model, halves)
    order = {name: index for index, name in enumerate(dict.fromkeys(names.values()))}
    keep_outputs, left_alone = _convs_keeping_outputs(model), _convs_left_alone(model)
    found: dict[str, list[_FoundGroup]] = {}
    refused: set[str] = set()
    for group in graph.get_all_groups(root_module_types=[nn.Conv2d]):
        convs = [(dep.target.module, graph.is_out_channel_pruning_fn(dep.handler)) for dep, _ in group
                 if isinstance(dep.target.module, nn.Conv2d)]
        producers = sorted({names[conv] for conv, cuts_output in convs if cuts_output}, key=order.__getitem__)
        consumers = sorted({names[conv] for conv, _ in convs} - set(producers), key=order.__getitem__)
        knob = producers[0]
        if _refused(group, convs, keep_outputs, left_alone):
            refused.add(knob)
        else:
            found.setdefault(knob, []).append(_FoundGroup(graph, group, producers, consumers))
    split_knobs = {f"{name}.conv" for name in halves}
    # a split cv1 is pruned only if both halves can be: they must stay equal
    return {knob: found[knob] for knob in sorted(found, key=order.__getitem__)
            if knob not in refused and len(found[knob]) == (2 if knob in split_knobs else 1)}


def _refused(group, convs: list[tuple[nn.Conv2d, bool]], keep_outputs: set, left_alone: set) -> bool:
    """Whether a group would cut a kept output, touch a conv left alone, pass an op whose channel
    mapping is not trusted, or has a single channel (nothing to remove)."""
    return (any(conv in keep_outputs for conv, cuts_output in convs if cuts_output)
            or any(conv in left_alone for conv, _ in convs)
            or any(dep.target.type in _UNTRUSTED_OPS for dep, _ in group)
            or len(group[0].idxs) < 2)


def _public_view(knob: str, groups: list[_FoundGroup]) -> PruningGroup:
    """A knob's group(s) as names only (the DepGraph objects die with the analysed copy)."""
    producers = dict.fromkeys(name for group in groups for name in group.producers)
    consumers = dict.fromkeys(name for group in groups for name in group.consumers if name not in producers)
    return PruningGroup(knob, tuple(producers), tuple(consumers), len(groups[0].all_channels[0].idxs),
                        halves=len(groups) == 2)


def _dependency_graph(model: nn.Module) -> tp.DependencyGraph:
    """DepGraph of `model`, traced with one forward pass (parameters need grad for it, for a while)."""
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    example = torch.zeros(1, first_conv.in_channels, TRACE_IMGSZ, TRACE_IMGSZ, device=first_conv.weight.device)
    was_training = model.training
    needs_grad = {parameter: parameter.requires_grad for parameter in model.parameters()}
    for parameter in needs_grad:
        parameter.requires_grad_(True)
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example, output_transform=_predictions,
                                                         verbose=False)
    finally:
        for parameter, flag in needs_grad.items():
            parameter.requires_grad_(flag)
        model.train(was_training)  # the trace runs in eval mode


def _predictions(output):
    """An eval forward returns (predictions, raw head outputs): trace from the predictions."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _original_conv_names(model: nn.Module, halves: dict[str, tuple[Conv, Conv]]) -> dict[nn.Conv2d, str]:
    """Conv2d -> its name in the unsplit model, in module order; both half convs get cv1's name."""
    half_names = {half.conv: f"{name}.conv" for name, pair in halves.items() for half in pair}
    return {m: half_names.get(m, n) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _convs_keeping_outputs(model: nn.Module) -> set[nn.Conv2d]:
    """Detect's prediction convs: their output channels are the boxes (DFL bins) and classes."""
    keep: set[nn.Conv2d] = set()
    for head in (m for m in model.modules() if isinstance(m, Detect)):
        for branches in (getattr(head, name, None) for name in ("cv2", "cv3", "one2one_cv2", "one2one_cv3")):
            for branch in branches or []:
                keep.update(m for m in branch[-1].modules() if isinstance(m, nn.Conv2d))
        keep.update(m for m in head.dfl.modules() if isinstance(m, nn.Conv2d))
    return keep


def _convs_left_alone(model: nn.Module) -> set[nn.Conv2d]:
    """Convs no group may touch: attention's, and those in blocks not known to trace correctly."""
    alone: set[nn.Conv2d] = set()
    for attention in (m for m in model.modules() if isinstance(m, Attention)):
        alone.update(m for m in attention.modules() if isinstance(m, nn.Conv2d))
    layers = getattr(model, "model", None)
    for block in layers if isinstance(layers, nn.Sequential) else []:  # ultralytics' top-level blocks
        # Detect subclasses (Segment, Pose, ...) have extra heads with their own output contracts
        known = type(block).forward in _KNOWN_FORWARDS and (type(block) is Detect or not isinstance(block, Detect))
        if not known:
            alone.update(m for m in block.modules() if isinstance(m, nn.Conv2d))
    return alone


def _architecture_key(model: nn.Module) -> tuple | None:
    """What the groups depend on: the ultralytics model definition (wiring, shortcuts) plus module
    names, types and weight shapes (pruning changes those), not weight values. None (do not cache)
    for a model without a definition: its wiring cannot be told from its modules."""
    definition = getattr(model, "yaml", None)
    if not isinstance(definition, dict):
        return None
    shapes = tuple((name, type(m).__name__, _weight_shape(m)) for name, m in model.named_modules())
    return repr(sorted(definition.items(), key=str)), shapes


def _weight_shape(module: nn.Module) -> tuple[int, ...] | None:
    weight = getattr(module, "weight", None)
    return tuple(weight.shape) if isinstance(weight, torch.Tensor) else None


# --- what DepGraph is shown: split cv1s as two convs, attention without its reshapes ---------------

class _Halves(nn.Module):
    """A split block's cv1 as two ultralytics Convs, one per half of its output channels."""

    def __init__(self, conv: Conv, half: int):
        super().__init__()
        self.first, self.second = copy.deepcopy(conv), copy.deepcopy(conv)
        copy_gradients(conv, self.first)  # "taylor" ranks each half on its gradients
        copy_gradients(conv, self.second)
        _drop_output_channels(self.first, range(half, 2 * half))
        _drop_output_channels(self.second, range(half))

    def merge_into(self, conv: Conv) -> None:
        """Make `conv` hold both halves again (the same module object: its attributes stay)."""
        conv.conv.weight = _joined(self.first.conv, self.second.conv, "weight")
        if conv.conv.bias is not None:
            conv.conv.bias = _joined(self.first.conv, self.second.conv, "bias")
        conv.conv.out_channels = self.first.conv.out_channels + self.second.conv.out_channels
        conv.conv.in_channels = self.first.conv.in_channels  # its input may have been pruned too
        if isinstance(getattr(conv, "bn", None), nn.BatchNorm2d):  # fusing Conv+BN deletes `bn`
            conv.bn.weight = _joined(self.first.bn, self.second.bn, "weight")
            conv.bn.bias = _joined(self.first.bn, self.second.bn, "bias")
            conv.bn.running_mean = torch.cat([self.first.bn.running_mean, self.second.bn.running_mean])
            conv.bn.running_var = torch.cat([self.first.bn.running_var, self.second.bn.running_var])
            conv.bn.num_features = conv.conv.out_channels


def _joined(first: nn.Module, second: nn.Module, attr: str) -> nn.Parameter:
    return nn.Parameter(torch.cat([getattr(first, attr).data, getattr(second, attr).data]))


def _drop_output_channels(conv: Conv, idxs) -> None:
    tp.prune_conv_out_channels(conv.conv, list(idxs))
    if isinstance(getattr(conv, "bn", None), nn.BatchNorm2d):
        tp.prune_batchnorm_out_channels(conv.bn, list(idxs))


def _c2f_forward_on_halves(self, x):
    """C2f.forward (also C3k2's) with cv1's halves from two convs: the same result."""
    y = [self.cv1.first(x), self.cv1.second(x)]
    y.extend(m(y[-1]) for m in self.m)
    return self.cv2(torch.cat(y, 1))


def _c2psa_forward_on_halves(self, x):
    """C2PSA.forward with cv1's halves from two convs: the same result."""
    a, b = self.cv1.first(x), self.cv1.second(x)
    return self.cv2(torch.cat((a, self.m(b)), 1))


_SPLIT_FORWARDS = {C2f.forward: _c2f_forward_on_halves, C2PSA.forward: _c2psa_forward_on_halves}


def _attention_shown_to_depgraph(self, x):
    """Attention's input read by a conv and its output made by one, without the head reshapes.
    Only for tracing: every group reaching these convs is refused anyway."""
    return self.proj(self.pe(x))


@contextlib.contextmanager
def _analysable(model: nn.Module):
    """Within: every C2f-like block's cv1 is a _Halves used by the block's forward, and every
    Attention runs `_attention_shown_to_depgraph`. Yields {cv1 name: (first half, second half)}.
    On exit each cv1 is one conv again (holding whatever channels its halves kept), the block's `c`
    is the new half width, and all forwards are the classes' own again."""
    split: dict[nn.Module, tuple[Conv, _Halves]] = {}  # block: (its cv1, the halves standing in)
    halves: dict[str, tuple[Conv, Conv]] = {}
    for name, block in list(model.named_modules()):
        if type(block).forward in _SPLIT_FORWARDS and _splits_cv1_in_halves(block):
            pair = _Halves(block.cv1, block.c)
            split[block] = (block.cv1, pair)
            halves[f"{name}.cv1"] = (pair.first, pair.second)
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    replaced_forwards = {m: vars(m).get("forward") for m in [*split, *attentions]}  # restored on exit
    for block, (_, pair) in split.items():
        block.cv1 = pair
        setattr(block, "forward", types.MethodType(_SPLIT_FORWARDS[type(block).forward], block))
    for attention in attentions:
        setattr(attention, "forward", types.MethodType(_attention_shown_to_depgraph, attention))
    try:
        yield halves
    finally:
        unequal = []  # restore every block first, then complain: a raise here would hide the original error
        for block, (cv1, pair) in split.items():
            if pair.first.conv.out_channels != pair.second.conv.out_channels:
                unequal.append(type(block).__name__)
            pair.merge_into(cv1)
            block.cv1, block.c = cv1, pair.first.conv.out_channels
        for module, forward in replaced_forwards.items():
            del module.forward  # back to the class's forward, or to the instance's own if it had one
            if forward is not None:
                module.forward = forward
        if unequal:
            raise RuntimeError(f"the halves of a cv1 became unequal in {', '.join(unequal)}")


def _splits_cv1_in_halves(block: nn.Module) -> bool:
    cv1 = getattr(block, "cv1", None)
    return isinstance(cv1, Conv) and isinstance(cv1.conv, nn.Conv2d) and cv1.conv.out_channels == 2 * getattr(block, "c")
