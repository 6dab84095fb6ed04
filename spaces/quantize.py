"""Weight quantization: four schemes at any granularity, and fake-quant for fine-tuning.

A layer's weight is cut into parameter sets by its granularity (granularity.py); each set is
quantized on its own with b-bit codes and a few fp16 parameters:

  affine    - [min, max] (widened to include 0) onto codes 0..2^b-1; params: scale, zero_point.
  symmetric - [-max|w|, max|w|] onto -(2^(b-1)-1)..2^(b-1)-1, no zero-point; params: scale.
  pwlq      - piece-wise linear (Fang et al., 2020): a breakpoint p splits [0, max|w|] into a dense
              centre [-p, p] and two tails; half the codes cover the centre uniformly, half the tails.
              Each weight takes the nearest level of either piece. p is chosen per set from a grid
              to minimise the squared error; the grid includes the p at which PWLQ's levels are
              exactly symmetric-uniform, so PWLQ is never worse than `symmetric` (up to fp16
              rounding of its parameters). params: max, breakpoint.
  kmeans    - weight sharing (Tome et al., 2016; Han et al., 2016): 2^b centroids per set (fewer
              when a set has fewer weights) from
              Lloyd's algorithm (two deterministic starts, the better kept), codes are centroid
              indices; params: the codebook.

All parameters are stored in fp16, so quantization rounds them through fp16 first: the float
weights that fake-quant produces are bit for bit what the packed format (packing.py) decodes to.
An optional mask (unstructured pruning) zeroes weights; masked weights take no part in any
parameter and are not stored.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgesearch.spaces.candidate import FLOAT_BITS, LayerKnobs
from edgesearch.spaces.granularity import SetLayout

SCHEME_PARAMS = {  # stored per parameter set, in this order; kmeans stores its whole codebook
    "affine": ("scale", "zero_point"),
    "symmetric": ("scale",),
    "pwlq": ("max", "breakpoint"),
    "kmeans": ("codebook",),
}
SMALLEST_FP16 = 2.0**-24  # keeps scales non-zero after fp16 rounding
PWLQ_BREAKPOINT_GRID = 32
PWLQ_LOCAL_STEPS = (1.0, 0.9, 0.95, 1.05, 1.1)  # warm-started search: breakpoint ratios near the last one
KMEANS_ITERATIONS = 12


@dataclasses.dataclass
class QuantizedWeight:
    """Codes and parameters of one quantized layer weight."""

    layout: SetLayout
    bits: int
    scheme: str
    codes: torch.Tensor  # int64 [sets, row_length]
    params: dict[str, torch.Tensor]  # float32 holding fp16-exact values, [sets, n]
    mask: torch.Tensor | None = None  # bool, weight-shaped; False = pruned (zero, not stored)


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def _positive_fp16(x: torch.Tensor) -> torch.Tensor:
    return _fp16(x.clamp(min=SMALLEST_FP16))


def _row_min_max(rows: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    low = rows.masked_fill(~valid, float("inf")).amin(dim=1, keepdim=True)
    high = rows.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
    empty = ~valid.any(dim=1, keepdim=True)
    return low.masked_fill(empty, 0.0), high.masked_fill(empty, 0.0)


# ---- affine and symmetric ----------------------------------------------------------------------

def _encode_affine(rows, valid, bits, fit=None):
    levels = 2**bits - 1
    low, high = _row_min_max(rows, valid)
    scale = _positive_fp16((high.clamp(min=0) - low.clamp(max=0)) / levels)
    zero_point = torch.round(-low.clamp(max=0) / scale).clamp(0, levels)
    codes = torch.clamp(torch.round(rows / scale) + zero_point, 0, levels)
    return codes.long(), {"scale": scale, "zero_point": zero_point}


def _decode_affine(codes, params, bits):
    return (codes.float() - params["zero_point"]) * params["scale"]


def _encode_symmetric(rows, valid, bits, fit=None):
    limit = 2 ** (bits - 1) - 1
    low, high = _row_min_max(rows, valid)
    scale = _positive_fp16(torch.maximum(low.abs(), high.abs()) / limit)
    codes = torch.clamp(torch.round(rows / scale), -limit, limit) + limit
    return codes.long(), {"scale": scale}


def _decode_symmetric(codes, params, bits):
    return (codes.float() - (2 ** (bits - 1) - 1)) * params["scale"]


# ---- piece-wise linear (PWLQ) -------------------------------------------------------------------
# Code layout at b bits: codes 0..2C are the centre levels i*centre_step, i in -C..C, with
# C = 2^(b-2) - 1; codes 2^(b-1) + s*T + (j-1) are the tail levels +-(p + j*tail_step), j in 1..T,
# with T = 2^(b-2) levels per sign (s = 1 for negative).

def _pwlq_sizes(bits):
    return 2 ** (bits - 2) - 1, 2 ** (bits - 2)  # centre levels per side, tail levels per side


def _pwlq_encode_at(rows, largest, breakpoint, bits):
    centre_levels, tail_levels = _pwlq_sizes(bits)
    centre_step = breakpoint / max(centre_levels, 1)
    tail_step = ((largest - breakpoint) / tail_levels).clamp(min=SMALLEST_FP16)
    i = torch.clamp(torch.round(rows / centre_step.clamp(min=SMALLEST_FP16)), -centre_levels, centre_levels)
    j = torch.clamp(torch.round((rows.abs() - breakpoint) / tail_step), 1, tail_levels)
    centre_value = i * centre_step
    tail_value = torch.sign(rows) * (breakpoint + j * tail_step)
    use_tail = (rows - tail_value).abs() < (rows - centre_value).abs()
    negative = (rows < 0).long()
    tail_codes = 2 ** (bits - 1) + negative * tail_levels + (j.long() - 1)
    return torch.where(use_tail, tail_codes, i.long() + centre_levels)


def _decode_pwlq(codes, params, bits):
    centre_levels, tail_levels = _pwlq_sizes(bits)
    largest, breakpoint = params["max"], params["breakpoint"]
    centre_step = breakpoint / max(centre_levels, 1)
    tail_step = ((largest - breakpoint) / tail_levels).clamp(min=SMALLEST_FP16)
    tail = codes >= 2 ** (bits - 1)
    offset = codes - 2 ** (bits - 1)
    sign = 1.0 - 2.0 * (offset >= tail_levels).float()
    tail_value = sign * (breakpoint + ((offset % tail_levels) + 1).float() * tail_step)
    return torch.where(tail, tail_value, (codes - centre_levels).float() * centre_step)


def _encode_pwlq(rows, valid, bits, fit=None):
    """`fit`: breakpoint / max per set found before: only ratios near it are tried (see FakeQuantWeight)."""
    low, high = _row_min_max(rows, valid)
    largest = _positive_fp16(torch.maximum(low.abs(), high.abs()))
    centre_levels, tail_levels = _pwlq_sizes(bits)
    uniform_ratio = centre_levels / (centre_levels + tail_levels)  # PWLQ levels == symmetric levels
    if fit is not None:
        ratios = [(fit * step).clamp(0.01, 0.99) for step in PWLQ_LOCAL_STEPS]
    else:
        ratios = sorted({*torch.linspace(0.02, 0.98, PWLQ_BREAKPOINT_GRID).tolist(), uniform_ratio})
    # every candidate breakpoint at once, [ratios, sets, 1]; the first of equal errors wins
    ratios = torch.stack([torch.as_tensor(r, dtype=rows.dtype).expand_as(largest) for r in ratios])
    breakpoints = torch.minimum(_fp16(largest * ratios), largest)
    codes = _pwlq_encode_at(rows, largest, breakpoints, bits)
    values = _decode_pwlq(codes, {"max": largest, "breakpoint": breakpoints}, bits)
    errors = ((values - rows) ** 2 * valid).sum(dim=2, keepdim=True)
    best = errors.argmin(dim=0, keepdim=True)
    best_codes = codes.gather(0, best.expand(1, *codes.shape[1:]))[0]
    best_breakpoint = breakpoints.gather(0, best)[0]
    return best_codes, {"max": largest, "breakpoint": best_breakpoint}


# ---- k-means weight sharing ---------------------------------------------------------------------

def _nearest_centroid(rows, codebook):
    """Index of the nearest centroid of each entry (codebook sorted ascending per row)."""
    midpoints = ((codebook[:, 1:] + codebook[:, :-1]) / 2).contiguous()
    return torch.searchsorted(midpoints, rows.contiguous())


def kmeans_clusters(bits: int, set_size: int) -> int:
    """Centroids per set: 2^b, but never more than the set has weights (more could not be used)."""
    return min(2**bits, set_size)


def _lloyd(rows, weights, codebook, iterations=KMEANS_ITERATIONS):
    for _ in range(iterations):
        codes = _nearest_centroid(rows, codebook)
        sums = torch.zeros_like(codebook).scatter_add_(1, codes, rows * weights)
        members = torch.zeros_like(codebook).scatter_add_(1, codes, weights)
        codebook = torch.where(members > 0, sums / members.clamp(min=1), codebook).sort(dim=1).values
    codebook = _fp16(codebook).sort(dim=1).values
    codes = _nearest_centroid(rows, codebook)
    error = ((codebook.gather(1, codes) - rows) ** 2 * weights).sum(dim=1, keepdim=True)
    return codes, codebook, error


def _encode_kmeans(rows, valid, bits, fit=None):
    # Lloyd's algorithm from two starts, keeping the better per set: linear over [min, max]
    # (Deep Compression's choice: it keeps centroids on the rare large weights) and quantiles
    # (exact when a set has no more distinct weights than centroids). Deterministic.
    clusters, weights = kmeans_clusters(bits, rows.shape[1]), valid.float()
    if fit is not None:  # warm start from a codebook found before: one Lloyd step tracks the weights
        codes, codebook, _ = _lloyd(rows, weights, fit, iterations=1)
        return codes, {"codebook": codebook}
    low, high = _row_min_max(rows, valid)
    linear = low + (high - low) * torch.linspace(0, 1, clusters)
    ordered = rows.masked_fill(~valid, float("inf")).sort(dim=1).values
    counts = valid.sum(dim=1, keepdim=True)
    picks = ((torch.arange(clusters) + 0.5) / clusters * counts).long().clamp(max=rows.shape[1] - 1)
    quantiles = torch.where(counts > 0, ordered.gather(1, picks), torch.zeros(1))
    codes, codebook, error = _lloyd(rows, weights, linear)
    other_codes, other_codebook, other_error = _lloyd(rows, weights, quantiles)
    better = other_error < error
    return torch.where(better, other_codes, codes), {"codebook": torch.where(better, other_codebook, codebook)}


def _decode_kmeans(codes, params, bits):
    return params["codebook"].gather(1, codes)


ENCODERS = {"affine": _encode_affine, "symmetric": _encode_symmetric, "pwlq": _encode_pwlq,
            "kmeans": _encode_kmeans}
DECODERS = {"affine": _decode_affine, "symmetric": _decode_symmetric, "pwlq": _decode_pwlq,
            "kmeans": _decode_kmeans}


# ---- whole layers -------------------------------------------------------------------------------

def quantize_weight(weight: torch.Tensor, knobs: LayerKnobs, mask: torch.Tensor | None = None,
                    fit: torch.Tensor | None = None) -> QuantizedWeight:
    """Codes and fp16 parameters of a weight at the knobs' bits, scheme and granularity.
    `fit` (pwlq, kmeans) reuses a search result instead of searching again: see `fitted`."""
    if not knobs.quantized:
        raise ValueError(f"{knobs.weight_bits}-bit weights are stored in float, not quantized")
    layout = SetLayout(tuple(weight.shape), knobs.granularity, knobs.group_size)
    valid = layout.valid if mask is None else layout.valid & layout.split(mask.bool())
    with torch.no_grad():
        codes, params = ENCODERS[knobs.scheme](layout.split(weight.detach().float()), valid, knobs.weight_bits, fit)
    return QuantizedWeight(layout, knobs.weight_bits, knobs.scheme, codes, params, mask)


def squared_errors(weight: torch.Tensor, options: list[LayerKnobs], *, max_elements: int | None = None,
                   seed: int = 0) -> dict[LayerKnobs, float]:
    """||W - Q(W)||^2 of each option (pruned weights count as set to zero), with the weight split,
    masked and laid out once per (sparsity, granularity) instead of once per option.

    `max_elements`: PWLQ and k-means search per set (breakpoints, Lloyd's iterations) and cost
    10-100x a uniform quantizer; where a layout has more entries than this, their error is
    estimated on a fixed random sample of its sets (and, for few long sets, of each set's
    entries), scaled to the whole layer. Exact (equal to fake_quantize's error) without it."""
    weight = weight.detach().float()
    generator = torch.Generator().manual_seed(seed)
    errors: dict[LayerKnobs, float] = {}
    by_sparsity: dict[float, list[LayerKnobs]] = {}
    for knobs in options:
        by_sparsity.setdefault(knobs.sparsity, []).append(knobs)
    for sparsity, group in by_sparsity.items():
        mask = magnitude_mask(weight, sparsity)
        kept = weight if mask is None else weight * mask
        pruned_error = float((weight - kept).pow(2).sum())
        layouts: dict[tuple, tuple] = {}
        for knobs in group:
            if knobs.weight_bits >= FLOAT_BITS:
                errors[knobs] = pruned_error
                continue
            if knobs.weight_bits == 16:
                errors[knobs] = pruned_error + float((kept.half().float() - kept).pow(2).sum())
                continue
            key = (knobs.granularity, knobs.group_size, knobs.scheme in ("pwlq", "kmeans"))
            if key not in layouts:
                layouts[key] = _error_rows(weight, mask, knobs, max_elements if key[2] else None, generator)
            rows, valid, scale = layouts[key]
            codes, params = ENCODERS[knobs.scheme](rows, valid, knobs.weight_bits, None)
            values = DECODERS[knobs.scheme](codes, params, knobs.weight_bits)
            errors[knobs] = pruned_error + scale * float(((values - rows) ** 2 * valid).sum())
    return errors


def _error_rows(weight, mask, knobs, max_elements, generator):
    """(rows, valid, scale): the layout's rows, or a sample of them, and the factor from the
    sample's kept entries to the layer's."""
    layout = SetLayout(tuple(weight.shape), knobs.granularity, knobs.group_size)
    rows = layout.split(weight)
    valid = layout.valid if mask is None else layout.valid & layout.split(mask.bool())
    if max_elements is None or rows.numel() <= max_elements:
        return rows, valid, 1.0
    total = valid.sum()
    sets = max(1, max_elements // rows.shape[1])
    if sets < rows.shape[0]:
        picked = torch.randperm(rows.shape[0], generator=generator)[:sets]
        rows, valid = rows[picked], valid[picked]
    if rows.numel() > max_elements:  # few long sets (tensor granularity): sample entries too, keeping
        # each row's extremes so that ranges (affine, PWLQ's max, k-means' linear start) stay the layer's
        extremes = torch.cat([rows.masked_fill(~valid, float("inf")).argmin(1),
                              rows.masked_fill(~valid, float("-inf")).argmax(1)])
        picked = torch.randperm(rows.shape[1], generator=generator)[:max(1, max_elements // rows.shape[0])]
        picked = torch.unique(torch.cat([picked, extremes]))
        rows, valid = rows[:, picked], valid[:, picked]
    return rows, valid, float(total) / max(1, int(valid.sum()))


def fitted(quantized: QuantizedWeight) -> torch.Tensor | None:
    """What the costly search found (pwlq: breakpoint / max; kmeans: the codebook), to pass back
    as `fit` while the weights change little."""
    if quantized.scheme == "pwlq":
        return quantized.params["breakpoint"] / quantized.params["max"]
    if quantized.scheme == "kmeans":
        return quantized.params["codebook"]
    return None


def dequantize(quantized: QuantizedWeight) -> torch.Tensor:
    rows = DECODERS[quantized.scheme](quantized.codes, quantized.params, quantized.bits)
    weight = quantized.layout.merge(rows)
    return weight if quantized.mask is None else weight * quantized.mask


def fake_quantize(weight: torch.Tensor, knobs: LayerKnobs, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The weight after quantize -> dequantize (no gradient tricks here)."""
    if knobs.weight_bits >= FLOAT_BITS:
        return weight if mask is None else weight * mask
    if knobs.weight_bits == 16:
        half = weight.half().to(weight.dtype)
        return half if mask is None else half * mask
    return dequantize(quantize_weight(weight, knobs, mask)).to(weight.dtype)


def kept_weights(numel: int, sparsity: float) -> int:
    """Weights left after unstructured pruning at `sparsity`."""
    return numel - int(round(sparsity * numel))


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor | None:
    """Unstructured magnitude pruning (seed 003): keep all but the smallest `sparsity` fraction."""
    pruned = weight.numel() - kept_weights(weight.numel(), sparsity)
    if pruned == 0:
        return None
    order = weight.detach().abs().flatten().argsort(stable=True)
    mask = torch.ones(weight.numel(), dtype=torch.bool)
    mask[order[:pruned]] = False
    return mask.reshape(weight.shape)


class FakeQuantWeight(nn.Module):
    """Parametrization: the layer sees pruned + quantized weights; gradients pass straight
    through (STE). The pruning mask is fixed when the knobs are applied.

    PWLQ's breakpoint search and k-means' clustering cost 10-100x a uniform quantizer, so while
    training they start from the last step's result (`fit`): k-means takes one Lloyd step from the
    last codebook, PWLQ tries only breakpoints near the last ones. Packing a trained layer starts
    from the same `fit`, so the deployed grid is the one the fine-tune trained against. Measured on
    the default base, 4-bit, 60 steps: a codebook frozen for 10 steps cost up to 14 mAP points, and
    PWLQ breakpoints frozen for 10 steps 4.5 points (group granularity)."""

    mask: torch.Tensor | None  # a buffer
    fit: torch.Tensor | None

    def __init__(self, knobs: LayerKnobs, mask: torch.Tensor | None):
        super().__init__()
        self.knobs = knobs
        self.register_buffer("mask", mask)
        self.fit = None  # set by the first training step

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.knobs.quantized or self.knobs.scheme not in ("pwlq", "kmeans"):
            quantized = fake_quantize(weight, self.knobs, self.mask)
        elif not self.training:  # what packing gives (packing.module_packing starts from the same fit)
            quantized = dequantize(quantize_weight(weight, self.knobs, self.mask, fit=self.fit)).to(weight.dtype)
        else:
            found = quantize_weight(weight, self.knobs, self.mask, fit=self.fit)
            self.fit = fitted(found)
            quantized = dequantize(found).to(weight.dtype)
        if not self.training:
            return quantized  # exactly the quantized values (w + (q - w) can be off by an ulp)
        return weight + (quantized - weight).detach()


def attach_fake_quant(conv: nn.Conv2d, knobs: LayerKnobs) -> None:
    if knobs.weight_bits < FLOAT_BITS or knobs.sparsity > 0:
        mask = magnitude_mask(conv.weight, knobs.sparsity)
        parametrize.register_parametrization(conv, "weight", FakeQuantWeight(knobs, mask))


def strip_fake_quant(model: nn.Module) -> None:
    """Drop every fake-quant parametrization, keeping the float weights (for architecture-only
    work such as timing a float build, whose speed does not depend on the weight values)."""
    for module in model.modules():
        if layer_quantizer(module) is not None:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


def layer_quantizer(module: nn.Module) -> FakeQuantWeight | None:
    if parametrize.is_parametrized(module, "weight"):
        return next(p for p in weight_parametrizations(module) if isinstance(p, FakeQuantWeight))
    return None


def weight_parametrizations(module: nn.Module) -> parametrize.ParametrizationList:
    """The parametrizations torch keeps for a parametrized module's weight (with the weight
    itself, unparametrized, as `.original`)."""
    return getattr(module, "parametrizations")["weight"]
