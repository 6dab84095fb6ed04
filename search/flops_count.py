"""A design's FLOPs counted on its pruned shapes, and what the option tables need to add up to it.

The option tables price each layer's option alone: a prune cut removes its own output channels and
its consumers' input channels. Where a producer and its consumer are both cut, the consumer's
overlap (the channels both cuts remove, p x q of its FLOPs) was counted twice: the floor's
fewest-FLOPs seed was priced at 5.43x fewer FLOPs and counted 3.67x.

Here a conv's FLOPs are 2 x output pixels x the weights it keeps, each conv's channels less what
every chosen cut removes from it (runners/conv_shapes.py), its kernel and rank as its own option
leaves them (spaces.apply.option_weight_shapes). `Interaction`s are the second-order terms: what two
layers' structural choices change together, beyond the sum of each alone. Options plus interactions
count any design exactly except where three layers' choices meet in one conv (a conv whose outputs
a group carried by another layer prunes, fed by a third layer's cut), which `count` still counts.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections import defaultdict

from edgesearch.spaces.apply import option_weight_shapes
from edgesearch.spaces.candidate import LayerKnobs
from edgesearch.spaces.knobs import STRUCTURAL_KNOBS

DEFAULTS = LayerKnobs()


def structure_key(knobs: LayerKnobs) -> tuple:
    """The part of a layer's option that changes its FLOPs (its structural knobs)."""
    return tuple(getattr(knobs, knob) for knob in STRUCTURAL_KNOBS)


DEFAULT_STRUCTURE = structure_key(DEFAULTS)


def _knobs_of(key: tuple) -> dict:
    """{structural knob: value} of a structure_key."""
    return dict(zip(STRUCTURAL_KNOBS, key, strict=True))


@dataclasses.dataclass(frozen=True)
class Interaction:
    """Two layers' structural choices, and the FLOPs (and the estimated ms) they change together
    beyond the sum of each alone: positive where both remove the same channels."""

    first: tuple[str, tuple]  # (layer, structure_key of its option)
    second: tuple[str, tuple]
    flops: float
    latency_ms: float

    def price(self, name: str) -> float:
        return getattr(self, name, 0.0)


class FlopsCounter:
    def __init__(self, shapes: dict, ms_per_flop: dict[str, float] | None = None):
        """`shapes`: runners/conv_shapes.conv_shapes' table; `ms_per_flop`: per conv, the ms per
        FLOP its changes from other layers' cuts are priced at (its share in its fastest precision
        over its FLOPs: its own layer's option decides the precision, so this errs on the safe side)."""
        self.convs = shapes["convs"]
        self.cuts = {(cut["layer"], float(cut["ratio"])): cut["removed"] for cut in shapes["cuts"]}
        self.ms_per_flop = ms_per_flop or {}
        self.base = self.count({})

    @functools.cache  # noqa: B019 - one counter per search
    def _touched(self, layer: str, key: tuple) -> frozenset[str]:
        """The convs whose FLOPs a layer's structural choice changes."""
        ratio = _knobs_of(key)["prune_ratio"]
        convs = set(self.cuts.get((layer, float(ratio)), {})) if ratio else set()
        return frozenset(convs | ({layer} if key != DEFAULT_STRUCTURE else set()))

    def _conv_flops(self, conv: str, chosen: dict[str, tuple]) -> float:
        """One conv's FLOPs under `chosen` ({layer: structure_key}, other layers unchanged)."""
        info = self.convs[conv]
        out_channels, in_per_group, *kernel = info["shape"]
        removed_out = removed_in = 0
        for layer, key in chosen.items():
            ratio = _knobs_of(key)["prune_ratio"]
            if ratio:
                out, inp = self.cuts[(layer, float(ratio))].get(conv, (0, 0))
                removed_out, removed_in = removed_out + out, removed_in + inp
        if info["groups"] == 1:  # grouped convs keep their channels per group (as the sensitivity pass counts)
            in_per_group -= removed_in
        own = _knobs_of(chosen.get(conv, DEFAULT_STRUCTURE))
        knobs = LayerKnobs(**{**own, "prune_ratio": 0.0})  # its outputs are cut above, by whichever layer carries them
        shapes = option_weight_shapes((out_channels - removed_out, in_per_group, *kernel), knobs, groups=info["groups"])
        return 2.0 * info["positions"] * sum(math.prod(shape) for shape in shapes)

    def count(self, layers: dict[str, LayerKnobs]) -> float:
        """A design's FLOPs over every conv of the model (layers it does not name unchanged)."""
        chosen = {layer: structure_key(knobs) for layer, knobs in layers.items()
                  if structure_key(knobs) != DEFAULT_STRUCTURE}
        return sum(self._conv_flops(conv, chosen) for conv in self.convs)

    @functools.cache  # noqa: B019 - one counter per search, a few thousand keys
    def change(self, layer: str, key: tuple) -> float:
        """What one layer's structural choice changes in the model's FLOPs, alone."""
        return sum(self._conv_flops(conv, {layer: key}) - self._conv_flops(conv, {})
                   for conv in self._touched(layer, key))

    def change_ms(self, layer: str, key: tuple, own_ms_per_flop: float) -> float:
        """The estimated latency change of that choice: its own conv at `own_ms_per_flop` (the
        precision it computes in), every other conv it touches at that conv's ms_per_flop."""
        total = 0.0
        for conv in self._touched(layer, key):
            delta = self._conv_flops(conv, {layer: key}) - self._conv_flops(conv, {})
            total += delta * (own_ms_per_flop if conv == layer else self.ms_per_flop.get(conv, 0.0))
        return total

    def interactions(self, keys: dict[str, list[tuple]]) -> list[Interaction]:
        """The second-order terms between the structural choices `keys` ({layer: its keys}) of
        layers that touch a conv in common."""
        touching = defaultdict(set)  # conv -> layers some choice of which changes it
        for layer, layer_keys in keys.items():
            for key in layer_keys:
                for conv in self._touched(layer, key):
                    touching[conv].add(layer)
        pairs = {tuple(sorted(pair)) for layers in touching.values() for pair in itertools.combinations(layers, 2)}
        found = []
        for first, second in sorted(pairs):
            for a, b in itertools.product(keys[first], keys[second]):
                flops, ms = self._together(first, a, second, b)
                if flops:
                    found.append(Interaction((first, a), (second, b), flops, ms))
        return found

    @functools.cache  # noqa: B019 - designs are priced again and again (moves)
    def _together(self, first: str, a: tuple, second: str, b: tuple) -> tuple[float, float]:
        """(FLOPs, ms) two layers' choices change together beyond each alone, on the convs both touch."""
        if a == DEFAULT_STRUCTURE or b == DEFAULT_STRUCTURE:
            return 0.0, 0.0
        flops = ms = 0.0
        for conv in self._touched(first, a) & self._touched(second, b):
            together = (self._conv_flops(conv, {first: a, second: b}) - self._conv_flops(conv, {first: a})
                        - self._conv_flops(conv, {second: b}) + self._conv_flops(conv, {}))
            flops += together
            ms += together * self.ms_per_flop.get(conv, 0.0)
        return flops, ms
