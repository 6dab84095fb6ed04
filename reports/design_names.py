"""A design's name: what it does to the model, in one short line, e.g.
`int8 weights + activations on 61 layers, pruned 25 % on 1 layer`.

The report titles designs by this name; how the search found a design (recipe, seed, the move's
string) is its origin, shown beside it. Layers are grouped by what was done to them, the largest
group first: precision (weights and compute together), then sparsity, pruning, kernel and rank,
each only where it differs from the knob's default. The name is plain text: the page escapes it.
"""

from __future__ import annotations

from collections import Counter

from .design_data import KNOB_DEFAULTS, same_value

UNCHANGED = "unchanged (fp32, as the base)"
MAX_PARTS = 4  # groups named before "and N more changes"
SCHEME_WORDS = {"kmeans": "k-means", "pwlq": "PWLQ"}  # affine and symmetric read as plain integers


# the structural knobs, in the order a name lists groups of equal size, and how the values a design
# gives them read (a span where its layers differ: `pruned 25-50 %`)
STRUCTURE = (
    ("sparsity", lambda values: f"{_span(values, 100)} % sparse"),
    ("prune_ratio", lambda values: f"pruned {_span(values, 100)} %"),
    ("kernel_size", lambda values: "kernel cropped to " + "/".join(f"{k}×{k}" for k in _distinct(values))),
    ("rank_ratio", lambda values: f"rank {_span(values)}"),
)


def design_name(candidate: dict | None, max_parts: int = MAX_PARTS) -> str:
    """The design's name from its candidate JSON ({"layers": {layer: {knob: value}}}; knobs a layer
    does not name at their defaults)."""
    layers = [dict(KNOB_DEFAULTS, **knobs) for knobs in ((candidate or {}).get("layers") or {}).values()]
    precisions: Counter[tuple[str, str]] = Counter()  # (weight bits, activation bits) -> layers
    schemes: dict[tuple[str, str], set[str]] = {}  # the schemes of each precision's quantized weights
    structure: dict[str, list] = {knob: [] for knob, _ in STRUCTURE}  # knob -> the values it takes
    for knobs in layers:
        precision = (str(knobs["weight_bits"]), str(knobs["activation_bits"]))
        if precision != ("32", "32"):
            precisions[precision] += 1
            schemes.setdefault(precision, set()).add(str(knobs["scheme"]))
        for knob in structure:
            if not same_value(knobs[knob], KNOB_DEFAULTS[knob]):
                structure[knob].append(knobs[knob])
    groups = [(count, -1, _precision(*precision, schemes[precision])) for precision, count in precisions.items()]
    groups += [(len(structure[knob]), order, text(structure[knob]))
               for order, (knob, text) in enumerate(STRUCTURE) if structure[knob]]
    if not groups:
        return UNCHANGED
    groups.sort(key=lambda group: (-group[0], group[1], group[2]))  # largest first; precision before structure
    parts = [f"{text} on {count} layer{'s' * (count != 1)}" for count, _, text in groups[:max_parts]]
    if len(groups) > max_parts:
        more = len(groups) - max_parts
        parts.append(f"and {more} more change{'s' * (more != 1)}")
    return ", ".join(parts)


def _precision(bits: str, compute: str, schemes: set[str]) -> str:
    """What a layer's weights are stored in and what it computes in, e.g. `4-bit k-means weights +
    int8 activations` (a scheme is named where every layer of the group shares a codebook or
    piecewise one)."""
    scheme = SCHEME_WORDS.get(next(iter(schemes))) if len(schemes) == 1 else None
    if bits in ("32", "16"):
        weights = "" if bits == "32" or compute == "16" else "fp16 weights"  # fp16 compute keeps weights in fp16
    else:
        weights = f"{bits}-bit {scheme} weights" if scheme else "int8 weights" if bits == "8" else f"{bits}-bit weights"
    if compute == "8":
        return "int8 weights + activations" if weights == "int8 weights" else " + ".join(filter(None, (weights, "int8 activations")))
    if compute == "16":
        return " + ".join(filter(None, (weights, "fp16 compute")))
    return weights if compute == "32" else " + ".join(filter(None, (weights, f"{compute}-bit activations")))


def _distinct(values: list) -> list[str]:
    """The values as they read (0.5, not 0.50000), smallest first; as text where they are not numbers
    (a study.db may hold anything)."""
    try:
        return [f"{number:g}" for number in sorted({float(v) for v in values})]
    except (TypeError, ValueError):
        return sorted({str(v) for v in values})


def _span(values: list, scale: float = 1) -> str:
    """`25` or `25-50` (values × scale)."""
    try:
        numbers = sorted(scale * float(v) for v in values)
    except (TypeError, ValueError):
        return "/".join(_distinct(values))
    low, high = (f"{n:.3g}" for n in (numbers[0], numbers[-1]))
    return low if low == high else f"{low}-{high}"
