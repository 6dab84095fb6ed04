"""A design space: which layers are searchable and which choices each knob has, per layer.

A space is a YAML file in this folder (one per model family). Format:

    family: yolov8                       # free text, shown by `search spaces`
    description: ...
    layers:                              # searchable layers: Conv2d modules matched by name
      include: ["model.*"]               # fnmatch patterns over module names
      exclude: ["*.dfl.conv"]
    knobs:                               # choices for every searchable layer
      weight_bits: [4, 6, 8, 32]         # 2-8, 16, or 32 (= left in float)
      scheme: [affine]                   # affine | symmetric | pwlq | kmeans
      granularity: [filter]              # tensor | filter | channel | kernel | group
      prune_ratio: [0.0, 0.25, 0.5]      # fraction of output channels removed
      kernel_size: [keep]                # keep | 5 | 3 | 1: centre crop of the kernel, same output shape
      rank_ratio: [1.0]                  # < 1: SVD into two convs keeping this share of the rank
      activation_bits: [32, 16, 8]       # 8: input as uint8 (int8 compute); 16: fp16 compute; kept only
                                         # where the profile computes in that precision
      group_size: [16]                   # G for granularity `group` (input channels per set)
      sparsity: [0.0, 0.5]               # unstructured magnitude pruning: fraction of zero weights
                                         # a knob left out keeps its default (float, unpruned, ...)
    groups:                              # optional overrides; first matching group wins
      - match: ["model.0.conv"]
        weight_bits: [8, 32]

Resolving a space against a model gives each layer its own choices. A knob a layer cannot take
is fixed there, with the reason recorded: prune_ratio is fixed to 0 where the layer's output
channels follow another layer's knob (coupled channels, see prune.py) or must stay (the head's
outputs, attention); kernel sizes and rank ratios a conv cannot take are dropped.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from pathlib import Path

from torch import nn

from edgesearch.common.errors import InputError
from edgesearch.common.named_yaml import names_in, read_named_yaml
from edgesearch.spaces.candidate import LayerKnobs
from edgesearch.spaces.kernel_size import why_not_shrinkable
from edgesearch.spaces.knobs import DEFAULTS, KNOB, KNOBS as KNOB_TABLE
from edgesearch.spaces.low_rank import is_worth_it
from edgesearch.spaces.prune import prunable_groups, removed_count

SPACES_DIR = Path(__file__).parent
KNOBS = tuple(knob.name for knob in KNOB_TABLE)
ACTIVATION_PRECISION = {8: "int8", 16: "fp16", 32: "fp32"}  # what a conv computes in at each activation_bits
DEFAULT_CHOICES = {name: [default] for name, default in DEFAULTS.items()}


@dataclasses.dataclass
class LayerChoices:
    choices: dict[str, list]  # knob -> allowed values (one value = fixed)
    notes: list[str] = dataclasses.field(default_factory=list)  # why a knob is fixed


@dataclasses.dataclass
class Space:
    name: str
    family: str
    description: str
    include: list[str]
    exclude: list[str]
    knobs: dict[str, list]
    groups: list[dict]
    source: str = ""  # the YAML it was read from

    def matches(self, layer: str) -> bool:
        return any(fnmatch.fnmatchcase(layer, p) for p in self.include) and not any(
            fnmatch.fnmatchcase(layer, p) for p in self.exclude
        )

    def choices_for(self, layer: str) -> dict[str, list]:
        choices = dict(self.knobs)
        for group in self.groups:
            if any(fnmatch.fnmatchcase(layer, p) for p in group["match"]):
                choices.update({k: v for k, v in group.items() if k in KNOBS})
                break
        return choices

    def resolve(self, model: nn.Module, compute_precisions: tuple[str, ...] = ("fp32", "fp16", "int8"),
                device: str = "the device", channel_multiple: int = 1) -> dict[str, LayerChoices]:
        """Per-layer choices for every searchable Conv2d of `model`, for a device that computes in
        `compute_precisions`: activation precisions it does not compute in are dropped (int8
        activations on a device without int8 arithmetic would only round, never speed up), and
        prune ratios are snapped so that a pruned group keeps a multiple of `channel_multiple`
        channels (the device's kernel block: snapped_prune_ratios)."""
        groups = prunable_groups(model)
        follows = {member: knob for knob, group in groups.items() for member in group.producers if member != knob}
        resolved: dict[str, LayerChoices] = {}
        for name, module in model.named_modules():
            if not (isinstance(module, nn.Conv2d) and self.matches(name)):
                continue
            layer = LayerChoices(self.choices_for(name))
            if name not in groups and layer.choices["prune_ratio"] != [0.0]:
                layer.choices["prune_ratio"] = [0.0]
                why = f"its channels follow {follows[name]}" if name in follows else "its output channels must stay"
                layer.notes.append(f"prune_ratio fixed to 0: {why} (coupled channels)")
            elif name in groups and channel_multiple > 1:
                _snap_prune_ratios(layer, groups[name].channels, channel_multiple, device)
            _keep_possible(layer, "kernel_size", lambda k, module=module: k == "keep" or why_not_shrinkable(module, k) is None,
                           "kernel sizes this conv cannot shrink to")
            _keep_possible(layer, "rank_ratio", lambda r, module=module: r == 1.0 or is_worth_it(module, r),
                           "rank ratios that would not make this conv smaller")
            _keep_possible(layer, "activation_bits",
                           lambda bits: bits == 32 or ACTIVATION_PRECISION[bits] in compute_precisions,
                           f"{device} does not compute in them")
            resolved[name] = layer
        if not resolved:
            raise InputError(f"space {self.name!r} matches no Conv2d layer of this model")
        return resolved


def snapped_prune_ratios(ratios: list[float], channels: int, multiple: int) -> dict[float, float | None]:
    """{ratio: the ratio that keeps the nearest multiple of `multiple` channels (at least one block;
    ties keep more), or None where that keeps every channel (the cut would be lost to padding)}.
    A snapped ratio removes exactly channels - kept channels (prune.removed_count)."""
    snapped: dict[float, float | None] = {}
    for ratio in ratios:
        if ratio == 0:
            snapped[ratio] = ratio
            continue
        kept = channels - removed_count(channels, ratio)
        kept = min(channels, max(multiple, multiple * math.floor(kept / multiple + 0.5)))
        if kept == channels:
            snapped[ratio] = None
            continue
        exact = (channels - kept) / channels
        while removed_count(channels, exact) < channels - kept:  # float rounding below the integer
            exact = math.nextafter(exact, 1.0)
        snapped[ratio] = exact
    return snapped


def _snap_prune_ratios(layer: LayerChoices, channels: int, multiple: int, device: str) -> None:
    """Snap a prunable layer's ratios to whole blocks of `multiple` channels (snapped_prune_ratios),
    dropping those the block would undo and duplicates, saying so in its notes."""
    snapped = snapped_prune_ratios(layer.choices["prune_ratio"], channels, multiple)
    kept = list(dict.fromkeys(ratio for ratio in snapped.values() if ratio is not None))
    if kept != layer.choices["prune_ratio"]:
        layer.choices["prune_ratio"] = kept
        changes = ", ".join(f"{ratio:g} -> {'dropped' if new is None else f'{new:.3g}'}"
                            for ratio, new in snapped.items() if new != ratio)
        layer.notes.append(f"prune_ratio: {changes} (kept channels a multiple of {multiple} of its {channels}, "
                           f"the block {device}'s kernels compute in)")


def _keep_possible(layer: LayerChoices, knob: str, possible, what: str) -> None:
    """Drop the choices a layer cannot take, saying so in its notes."""
    dropped = [value for value in layer.choices[knob] if not possible(value)]
    if dropped:
        layer.choices[knob] = [value for value in layer.choices[knob] if possible(value)] or [
            DEFAULT_CHOICES[knob][0]]
        layer.notes.append(f"{knob}: dropped {dropped} ({what})")


def _check_choices(where: str, knob: str, values) -> list:
    if not isinstance(values, list) or not values:
        raise InputError(f"{where}: {knob} must be a non-empty list of choices")
    for value in values:
        LayerKnobs.from_dict({knob: value}, f"{where}: ")  # range and type checks
    return [float(v) for v in values] if KNOB[knob].ratio else list(values)


def load_space(name_or_path: str | Path) -> Space:
    """A space by name (a YAML in spaces/) or by path; invalid spaces raise InputError."""
    path, raw = read_named_yaml(name_or_path, SPACES_DIR, "space")
    where = f"space {path.name}"
    unknown = set(raw) - {"family", "description", "layers", "knobs", "groups"}
    if unknown:
        raise InputError(f"{where}: unknown key(s) {sorted(unknown)}")
    layers, knobs = raw.get("layers") or {}, raw.get("knobs") or {}
    if not isinstance(layers, dict) or not isinstance(knobs, dict):
        raise InputError(f"{where}: `layers` and `knobs` must be mappings")
    for key in ("include", "exclude"):
        patterns = layers.get(key, [])
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise InputError(f"{where}: layers.{key} must be a list of name patterns")
    if set(knobs) - set(KNOBS):
        raise InputError(f"{where}: unknown knob(s) {sorted(set(knobs) - set(KNOBS))}; knobs are {list(KNOBS)}")
    knobs = {**DEFAULT_CHOICES, **knobs}  # a knob the space does not list keeps its default
    groups = raw.get("groups") or []
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or not isinstance(group.get("match"), list):
            raise InputError(f"{where}: groups[{i}] needs a `match` list of patterns")
        if set(group) - {"match", "name", *KNOBS}:
            raise InputError(f"{where}: groups[{i}] has unknown key(s) {sorted(set(group) - {'match', 'name', *KNOBS})}")
        for knob in set(group) & set(KNOBS):
            group[knob] = _check_choices(f"{where} groups[{i}]", knob, group[knob])
    return Space(
        name=path.stem,
        family=str(raw.get("family", path.stem)),
        description=str(raw.get("description", "")).strip(),
        include=list(layers.get("include", ["*"])),
        exclude=list(layers.get("exclude", [])),
        knobs={knob: _check_choices(where, knob, values) for knob, values in knobs.items()},
        groups=groups,
        source=str(path.resolve()),
    )


def available_spaces() -> list[str]:
    return names_in(SPACES_DIR)
