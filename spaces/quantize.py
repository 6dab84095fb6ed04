"""Weight quantization: fake-quant with a straight-through estimator, and packed sizes.

Granularity says which weights share one set of quantization parameters. For a conv weight of
shape [out, in, kh, kw] (the YOLOv7 quantization study's layer / filter / channel comparison):
  tensor  - one set for the whole layer
  filter  - one set per output channel (per filter)
  channel - one set per input channel, shared across all filters
Schemes: `affine` maps [min, max] (widened to include 0) onto 0..2^b-1 with a zero-point;
`symmetric` maps [-max|w|, max|w|] onto -(2^(b-1)-1)..2^(b-1)-1 with no zero-point.
Scales and zero-points are stored in fp16, so the fake-quant rounds them through fp16 too: the
float weights it produces are exactly what the packed format decodes to.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgesearch.spaces.candidate import FLOAT_BITS, LayerKnobs

IMPLEMENTED_SCHEMES = ("affine", "symmetric")
IMPLEMENTED_GRANULARITIES = ("tensor", "filter", "channel")
PARAM_BYTES = 2  # each scale / zero-point is stored as fp16
BIAS_BYTES = 4  # biases stay fp32 (they become int32 accumulators on integer hardware)


def _reduce_dims(granularity: str, ndim: int) -> tuple[int, ...]:
    """Dims that one parameter set spans (all others index the sets)."""
    if granularity == "tensor":
        return tuple(range(ndim))
    if granularity == "filter":
        return tuple(range(1, ndim))
    if granularity == "channel":
        return (0, *range(2, ndim))
    raise NotImplementedError(f"granularity {granularity!r} is not implemented (have {IMPLEMENTED_GRANULARITIES})")


def parameter_sets(weight_shape: torch.Size | tuple, granularity: str) -> int:
    dims = _reduce_dims(granularity, len(weight_shape))
    return math.prod(size for d, size in enumerate(weight_shape) if d not in dims)


def _fp16_round(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def fake_quantize(weight: torch.Tensor, bits: int, scheme: str, granularity: str) -> torch.Tensor:
    """The weight after quantize -> dequantize (no gradient tricks here)."""
    if bits >= FLOAT_BITS:
        return weight
    if bits == 16:
        return weight.half().to(weight.dtype)
    dims = _reduce_dims(granularity, weight.ndim)
    w = weight.float()
    if scheme == "affine":
        levels = 2**bits - 1
        low = w.amin(dim=dims, keepdim=True).clamp(max=0)
        high = w.amax(dim=dims, keepdim=True).clamp(min=0)
        scale = _fp16_round(((high - low) / levels).clamp(min=1e-8))
        zero_point = torch.round(-low / scale).clamp(0, levels)
        q = torch.clamp(torch.round(w / scale) + zero_point, 0, levels)
        return ((q - zero_point) * scale).to(weight.dtype)
    if scheme == "symmetric":
        limit = 2 ** (bits - 1) - 1
        scale = _fp16_round((w.abs().amax(dim=dims, keepdim=True) / limit).clamp(min=1e-8))
        return (torch.clamp(torch.round(w / scale), -limit, limit) * scale).to(weight.dtype)
    raise NotImplementedError(f"scheme {scheme!r} is not implemented (have {IMPLEMENTED_SCHEMES})")


class FakeQuantWeight(nn.Module):
    """Parametrization: the layer sees quantized weights; gradients pass straight through (STE)."""

    def __init__(self, knobs: LayerKnobs):
        super().__init__()
        self.bits, self.scheme, self.granularity = knobs.weight_bits, knobs.scheme, knobs.granularity

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        quantized = fake_quantize(weight, self.bits, self.scheme, self.granularity)
        return weight + (quantized - weight).detach()


def attach_fake_quant(conv: nn.Conv2d, knobs: LayerKnobs) -> None:
    if knobs.quantized or knobs.weight_bits == 16:
        parametrize.register_parametrization(conv, "weight", FakeQuantWeight(knobs))


def bake_fake_quant(model: nn.Module) -> None:
    """Replace every fake-quant parametrization by the quantized weights it produces."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def packed_weight_bytes(weight_shape: tuple, knobs: LayerKnobs, has_bias: bool) -> int:
    """Bytes to store one layer: b-bit indices packed densely, fp16 scales (and zero-points), fp32 bias."""
    numel = math.prod(weight_shape)
    bias = weight_shape[0] * BIAS_BYTES if has_bias else 0
    if knobs.weight_bits >= 16:
        return numel * knobs.weight_bits // 8 + bias
    sets = parameter_sets(weight_shape, knobs.granularity)
    per_set = PARAM_BYTES * (2 if knobs.scheme == "affine" else 1)
    return math.ceil(numel * knobs.weight_bits / 8) + sets * per_set + bias
