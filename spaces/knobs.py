"""The knob table: every per-layer knob defined once.

Each row says what a knob is called, its default ("no change"), which values it takes, how it
is priced (a `weight` knob is part of the layer's weight option, priced by the sensitivity pass's
HAWQ term and packed by packing.py; a `change` knob changes the layer's structure or precision and
is priced by measuring that one change), its short name for `--uniform`, and how it is shown.
Everything else reads this table: LayerKnobs (candidate.py) and its checks, the space YAML
(space.py), the option pricer and the sensitivity keys (weight_option_key), `--uniform`, and the
report's knob list (search/report_inputs.py hands it to the page).

Adding a knob: a row here, a field of the same name in candidate.LayerKnobs (its default from
DEFAULTS), and the transform that applies it in apply.py (and packing.py if it changes storage).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from edgesearch.spaces.granularity import GRANULARITIES

FLOAT_BITS = 32  # weight_bits 32: left in float; 16: stored as fp16
SCHEMES = ("affine", "symmetric", "pwlq", "kmeans")  # the packed header stores positions in this tuple
KERNEL_SIZES = ("keep", 5, 3, 1)
ACTIVATION_BITS = (8, 16, 32)  # 8: uint8 input, int8 compute; 16: fp16 compute; 32: float (activations.py)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return _is_int(value) or isinstance(value, float)


def _one_of(values: tuple, what: str) -> Callable[[object], str | None]:
    def check(value):
        return None if value in values and type(value) is not bool else f"must be {what}, not {value!r}"
    return check


def _integer_in(values, what: str) -> Callable[[object], str | None]:
    def check(value):
        if not _is_int(value):  # 4.0 == 4 and "4" would pass a range check and fail after the fine-tune
            return f"must be an integer, not {value!r}"
        return None if value in values else f"must be {what}, not {value!r}"
    return check


def _ratio(low_open: bool, high_open: bool, what: str) -> Callable[[object], str | None]:
    def check(value):
        if not _is_number(value):
            return f"must be a number, not {value!r}"
        low_ok = value > 0 if low_open else value >= 0
        high_ok = value < 1 if high_open else value <= 1
        return None if low_ok and high_ok else f"must be in {what}, not {value!r}"
    return check


def _kernel(value) -> str | None:
    if not (value == "keep" or _is_int(value)):
        return f"must be 'keep' or an integer, not {value!r}"
    return None if value in KERNEL_SIZES else f"must be one of {KERNEL_SIZES}, not {value!r}"


@dataclasses.dataclass(frozen=True)
class Knob:
    name: str
    default: object  # "no change": the base's own layer
    kind: str  # "weight": part of the weight option (HAWQ-priced, packed); "change": measured one at a time
    check: Callable[[object], str | None]  # why a value is refused, or None
    label: str  # the report's column
    alias: str  # its name in `--uniform`
    doc: str
    ratio: bool = False  # a share in [0, 1]: stored as float in spaces
    # changes the layer's shape (channels, kernel, rank): what a one-shot cut loses needs a longer
    # schedule to win back (search/recovery.py)
    structural: bool = False


KNOBS: tuple[Knob, ...] = (
    Knob("weight_bits", FLOAT_BITS, "weight", _integer_in((*range(2, 9), 16, FLOAT_BITS), "2-8, 16 or 32"),
         "weight bits", "bits", "2-8: quantized codes; 16: fp16 storage; 32: left in float"),
    Knob("scheme", "affine", "weight", _one_of(SCHEMES, f"one of {', '.join(SCHEMES)}"), "scheme", "scheme",
         "affine, symmetric, pwlq (piece-wise linear) or kmeans (shared centroids)"),
    Knob("granularity", "filter", "weight", _one_of(GRANULARITIES, f"one of {', '.join(GRANULARITIES)}"),
         "granularity", "granularity", "which weights share one set of quantization parameters"),
    Knob("prune_ratio", 0.0, "change", _ratio(False, True, "[0, 1)"), "prune ratio", "prune",
         "structured: share of output channels removed (coupled channels together)", ratio=True, structural=True),
    Knob("kernel_size", "keep", "change", _kernel, "kernel", "kernel", "keep, 5, 3, 1: centre crop of the kernel",
         structural=True),
    Knob("group_size", 16, "weight", _integer_in(range(1, 4097), "an integer in 1..4096"), "group size", "group",
         "G of the `group` granularity: input channels per parameter set"),
    Knob("sparsity", 0.0, "weight", _ratio(False, True, "[0, 1)"), "sparsity", "sparsity",
         "unstructured magnitude pruning: share of weights set to zero", ratio=True),
    Knob("rank_ratio", 1.0, "change", _ratio(True, False, "(0, 1]"), "rank ratio", "rank",
         "< 1: factorized by SVD into two convs keeping this share of the rank", ratio=True,
         structural=True),
    Knob("activation_bits", FLOAT_BITS, "change", _integer_in(ACTIVATION_BITS, "8, 16 or 32"), "compute", "act",
         "8: input as uint8, int8 compute; 16: fp16 compute; 32: float"),
)
KNOB = {knob.name: knob for knob in KNOBS}
DEFAULTS: dict[str, Any] = {knob.name: knob.default for knob in KNOBS}  # one value type per knob
WEIGHT_KNOBS = tuple(knob.name for knob in KNOBS if knob.kind == "weight")
CHANGE_KNOBS = tuple(knob.name for knob in KNOBS if knob.kind == "change")
STRUCTURAL_KNOBS = tuple(knob.name for knob in KNOBS if knob.structural)
ALIASES = {knob.alias: knob.name for knob in KNOBS if knob.alias != knob.name}


def problem(name: str, value) -> str | None:
    """Why `value` is refused for knob `name` ("<knob> must be ..."), or None."""
    why = KNOB[name].check(value)
    return f"{name} {why}" if why else None


def weight_option_key(knobs) -> str:
    """The key of a layer's weight option in the sensitivity table, `bits|scheme|granularity|group|sparsity`
    (`knobs`: a LayerKnobs or a dict, missing knobs at their defaults). Float weights ignore scheme,
    granularity and group size (the packing does), so those take their defaults; numbers as Python writes them."""
    values = {name: (knobs.get(name, DEFAULTS[name]) if isinstance(knobs, dict) else getattr(knobs, name))
              for name in WEIGHT_KNOBS}
    if values["weight_bits"] >= 16:
        values.update(scheme=DEFAULTS["scheme"], granularity=DEFAULTS["granularity"],
                      group_size=DEFAULTS["group_size"])
    for name in WEIGHT_KNOBS:
        if KNOB[name].ratio:
            values[name] = float(values[name])
    return "|".join(str(values[name]) for name in WEIGHT_KNOBS)


def report_knobs() -> list[list[str]]:
    """[[name, label], ...] in table order: the per-layer columns a report shows."""
    return [[knob.name, knob.label] for knob in KNOBS if knob.name != "group_size"]
