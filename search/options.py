"""Per-layer option tables: every option a layer can take, priced on every objective.

An option is one value per knob for one layer. Its prices, from the sensitivity pass
(runners/accuracy/sensitivity.py) and the hardware cost basis (runners/hardware/cost_basis.py):

  omega           predicted increase of the detection loss: the weight option's, plus the measured
                  loss of int8 activations, plus each structural change's (prune ratio, kernel, rank)
                  one-shot loss x the pricer's structural_scale (what of a cut's loss the design's
                  own fine-tune leaves, fitted on the scored designs: search/moves.py)
  weight_bytes    exact packed bytes of the layer's own conv(s) at that option (spaces/packing.py)
  activation_bytes  the layer's share of the planned activation memory: the base's planned bytes
                  x this conv's input elements x (1 byte int8, 2 fp16, else 4) / (4 x all conv inputs), so a
                  design's predicted SRAM is a sum over its layers (an estimate: each trial measures
                  the plan of its own build, integer layers included, runners/hardware/scores.py)
  latency_ms      the layer's latency share in the precision it computes in on the device (int8
                  for int8 inputs and <= 8-bit weights, fp16 for activation_bits 16, where the
                  profile computes in them; else fp32), changed by its structural changes in
                  proportion to the FLOPs they remove (estimated, see cost_basis.py)
  flops           the layer's FLOPs plus what the option alone changes in the model's (its cut's
                  consumers included), counted on pruned shapes where the pricer has a counter
                  (search/flops_count.py; the search's), else each change's measured delta, summed

Prices add over layers, plus, with a counter, the interactions of pairs of layers whose cuts remove
the same channels (FLOPs and latency: search/allocate.py takes them), with two approximations, both
on the safe side: a pruning group's change is priced on the conv carrying its knob (its FLOPs and
loss cover the whole group, but only that conv's weight bytes shrink), and activation bytes do not
shrink with pruning.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from edgesearch.search.flops_count import FlopsCounter, Interaction, structure_key
from edgesearch.spaces.apply import option_weight_shapes
from edgesearch.spaces.candidate import LayerKnobs
from edgesearch.spaces.knobs import CHANGE_KNOBS, STRUCTURAL_KNOBS, weight_option_key
from edgesearch.spaces.packing import packed_size
from edgesearch.spaces.quantize import kept_weights

PRICES = ("omega", "weight_bytes", "activation_bytes", "latency_ms")
DEFAULTS = LayerKnobs()
ACTIVATION_BYTES = {8: 1, 16: 2, 32: 4}  # bytes per element of a conv's input at each activation_bits
CHANGE_FLOOR = 1e-3  # least omega of a structural or activation change, as a share of the base's loss


@dataclasses.dataclass(frozen=True)
class Option:
    knobs: LayerKnobs
    omega: float
    weight_bytes: int
    activation_bytes: float
    latency_ms: float
    structural_loss: float = 0.0  # the one-shot loss of its structural changes (in omega x structural_scale)
    # the layer's FLOPs and the model's change under this option alone (its cut's consumers included);
    # what adjacent cuts remove twice is the pricer's interactions (search/flops_count.py)
    flops: float = 0.0

    def price(self, name: str) -> float:
        return getattr(self, name)


class OptionPricer:
    """Prices any knobs of any searchable layer (recipes included, whatever the space allows)."""

    def __init__(self, sensitivity: dict, basis: dict, structural_scale: float = 1.0,
                 counter: FlopsCounter | None = None):
        """`counter`: counts FLOPs on pruned shapes, for the options' FLOPs and latency changes and
        the interactions of adjacent cuts; without, each change's measured delta_flops, summed."""
        self.sensitivity, self.basis, self.counter = sensitivity, basis, counter
        # the sensitivity pass prices a structural change as a one-shot cut; a fine-tune recovers
        # much of it, so omega counts this share of that loss (1: as measured on the base)
        self.structural_scale = structural_scale
        # A change measured as free (the loss can fall: the first-order term) is still a change: each
        # costs at least this much, so equal predictions favour designs that change fewer layers,
        # instead of piling up dozens of "free" changes whose losses do not add as measured.
        self.change_floor = CHANGE_FLOOR * sensitivity["base_loss"]
        self._bytes_per_input_element = basis["activation_bytes"] / (4 * basis["input_elements"])

    def layers(self) -> list[str]:
        return list(self.sensitivity["layers"])

    def price(self, layer: str, knobs: LayerKnobs) -> Option:
        info = self.sensitivity["layers"][layer]
        cost = self.basis["layers"][layer]
        try:
            omega = info["weight_options"][weight_option_key(knobs)]["omega"]
        except KeyError:
            raise KeyError(f"{layer}: the sensitivity pass did not price weight option {weight_option_key(knobs)}") from None
        omega = max(0.0, omega)
        # the conv's share in the precision it computes in on this device (fp32 where the basis has no other)
        precision = knobs.compute_precision(self.basis.get("compute_precisions", ("fp32", "int8")))
        latency = cost.get("latency_ms" if precision == "fp32" else f"latency_ms_{precision}", cost["latency_ms"])
        per_flop = latency / cost["flops"] if cost["flops"] else 0.0
        pruned_out = None
        structural_loss = 0.0
        flops = cost["flops"]
        for knob in CHANGE_KNOBS:  # each priced by the measured loss of that one change
            value = getattr(knobs, knob)
            if value == getattr(DEFAULTS, knob):
                continue
            change = info["changes"][knob][str(value)]
            loss = max(0.0, change["delta_loss"])
            if knob in STRUCTURAL_KNOBS:  # the shape changes: the fine-tune recovers part of it
                structural_loss += loss
                loss *= self.structural_scale
            omega += loss + self.change_floor
            if self.counter is None:
                latency += change["delta_flops"] * per_flop  # the layer's share of time, less what the change removes
                flops += change["delta_flops"]
            if knob == "prune_ratio":
                pruned_out = change["out_channels"]
        if self.counter is not None:
            flops += self.counter.change(layer, structure_key(knobs))
            latency += self.counter.change_ms(layer, structure_key(knobs), per_flop)
        shape = tuple(info["shape"])
        shapes = option_weight_shapes(shape, knobs, groups=info.get("groups", 1), pruned_out_channels=pruned_out)
        weight_bytes = sum(
            packed_size(s, knobs.stored(), kept=kept_weights(math.prod(s), knobs.sparsity), has_bias=i == len(shapes) - 1
                        and info.get("bias", True))
            for i, s in enumerate(shapes))
        act_bytes = ACTIVATION_BYTES[knobs.activation_bits] * cost["input_elements"] * self._bytes_per_input_element
        if self.counter is None:  # each change alone, clipped at nothing left
            latency, flops = max(0.0, latency), max(0.0, flops)
        # with a counter a cut's change may exceed its own layer's share (its consumers shrink too): kept
        # whole, so that options and interactions add up to the design's count
        return Option(knobs, omega, weight_bytes, act_bytes, latency, structural_loss, flops)

    def interactions(self, tables: dict[str, list[Option]]) -> list[Interaction]:
        """What the tables' structural choices change in FLOPs and latency two at a time, beyond
        their options' own prices (none without a counter)."""
        if self.counter is None:
            return []
        return self.counter.interactions({layer: list(dict.fromkeys(structure_key(o.knobs) for o in options))
                                          for layer, options in tables.items()})

    def design(self, layers: dict[str, LayerKnobs]) -> dict[str, float]:
        """Summed prices of a design, with its layers' interactions; layers it does not name keep
        their defaults (float, unchanged). With a counter, "flops" is the design's counted FLOPs."""
        totals = dict.fromkeys((*PRICES, "structural_loss", "flops"), 0.0)
        for layer in self.layers():
            option = self.price(layer, layers.get(layer, DEFAULTS))
            for name in totals:
                totals[name] += option.price(name)
        if self.counter is not None:
            chosen = {layer: [structure_key(knobs)] for layer, knobs in layers.items() if layer in self.sensitivity["layers"]}
            totals["latency_ms"] += sum(i.latency_ms for i in self.counter.interactions(chosen))
            totals["flops"] = self.counter.count(layers)
        totals["latency_ms"] += self.basis["fixed_ms"]
        totals["sram_bytes"] = totals["weight_bytes"] + totals["activation_bytes"]
        return totals


FLOAT_MOOT = ("scheme", "granularity", "group_size")  # knobs that mean nothing for float weights


def layer_options(pricer: OptionPricer, layer: str, choices: dict[str, list]) -> list[Option]:
    """The options of `choices` that no other option of the layer beats on every price, sorted by
    weight bytes (fewest first)."""
    knobs = list(choices)
    options = {}
    for values in itertools.product(*(choices[k] for k in knobs)):
        candidate = LayerKnobs(**dict(zip(knobs, values, strict=True)))
        if not candidate.quantized:
            candidate = dataclasses.replace(candidate, **{knob: getattr(DEFAULTS, knob) for knob in FLOAT_MOOT})
        if candidate not in options:
            options[candidate] = pricer.price(layer, candidate)
    return non_dominated(list(options.values()))


def in_space(knobs: LayerKnobs, choices: dict[str, list]) -> bool:
    """Whether a layer's knobs are among its `choices` (a recipe's need not be: a recipe is what it is)."""
    return all(getattr(knobs, knob) in values for knob, values in choices.items()
               if knobs.quantized or knob not in FLOAT_MOOT)


def non_dominated(options: list[Option]) -> list[Option]:
    """Options not dominated on (omega, weight bytes, activation bytes, latency), by weight bytes."""
    prices = np.array([[o.price(p) for p in PRICES] for o in options])
    order = np.lexsort(prices.T[::-1])  # by omega, then bytes, ...: a dominator comes first
    kept: list[int] = []
    for index in order:
        row = prices[index]
        if kept and np.any(np.all(prices[kept] <= row, axis=1)):
            continue
        kept.append(index)
    return sorted((options[i] for i in kept), key=lambda o: (o.weight_bytes, o.omega))
