"""The integer form of a baked model: which convs run as int8 kernels, with which integer weights.

A conv runs as an integer kernel when it reads int8 activations (`activation_bits` 8: a calibrated
spaces.activations.InputQuantizer, fixed scale and zero-point) and its weights are quantized to
8 bits or fewer (its packing's header), and it is an ordinary conv (groups 1, dilation 1, zero
padding). `integer_copy` replaces each such nn.Conv2d with `IntegerConv2d`:

    q = quantize_u8(x, act_scale, zero_point)          uint8, per tensor, as the fake-quant rounds
    y = int8_conv2d(q, weight_int8, weight_scale, bias) int32 accumulation, per-output-channel scale

Both are torch custom ops (`edgesearch::...`): their PyTorch implementations compute what the
fake-quantized model computes (dequantized input x dequantized weights, in float), so the copy
runs in PyTorch as the reference, and the TVM frontend maps them to integer kernels
(integer_kernels.py). A conv that takes int8 activations but cannot run integer (float weights,
grouped) keeps its float conv after `fake_quant_u8` of its input, as in the PyTorch model.

Integer weights are int8 per output channel, symmetric (zero-point 0). Where the layer's own grid
is exactly that - symmetric or affine codes at `tensor` or `filter` granularity, whose code minus
zero-point fits int8 - the integer weights are the layer's codes and scales, and the kernel
computes exactly what the baked model holds. Otherwise (PWLQ, k-means, `channel` / `kernel` /
`group` granularity, or an 8-bit affine filter whose codes span more than int8) the baked weights
are requantized per output channel, symmetric int8 (scale max|w| / 127): an extra rounding of at
most half a step per weight, counted in `requantized_weight_layers`.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from edgesearch.spaces.activations import HalfPrecision, InputQuantizer
from edgesearch.spaces.packing import read_layer

INT8_LIMIT = 127


# ------------------------------------------------------------------------------- custom ops


@torch.library.custom_op("edgesearch::quantize_u8", mutates_args=())
def quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """uint8 codes of x, rounded as torch.fake_quantize_per_tensor_affine rounds: nearest-even
    of x * (1/scale) in float32, plus the zero-point, clamped to 0..255."""
    inverse = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32)
    return (torch.round(x * inverse) + zero_point).clamp(0, 255).to(torch.uint8)


@quantize_u8.register_fake
def _(x, scale, zero_point):
    return torch.empty_like(x, dtype=torch.uint8)


@torch.library.custom_op("edgesearch::dequantize_u8", mutates_args=())
def dequantize_u8(q: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    return (q.to(torch.float32) - zero_point) * torch.tensor(scale, dtype=torch.float32)


@dequantize_u8.register_fake
def _(q, scale, zero_point):
    return torch.empty_like(q, dtype=torch.float32)


@torch.library.custom_op("edgesearch::int8_conv2d", mutates_args=())
def int8_conv2d(q: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor,
                act_scale: float, zero_point: int, stride: list[int], padding: list[int]) -> torch.Tensor:
    """conv2d of uint8 activations (scale, zero-point per tensor) and int8 weights (scale per
    output channel), plus float bias. Here computed in float on the dequantized values: what the
    fake-quantized model computes; TVM computes it with integer arithmetic."""
    x = dequantize_u8(q, act_scale, zero_point)
    w = weight.to(torch.float32) * weight_scale.reshape(-1, 1, 1, 1)
    return F.conv2d(x, w, bias, stride, padding)


@int8_conv2d.register_fake
def _(q, weight, weight_scale, bias, act_scale, zero_point, stride, padding):
    n, _, h, w = q.shape
    kh, kw = weight.shape[2:]
    oh = (h + 2 * padding[0] - kh) // stride[0] + 1
    ow = (w + 2 * padding[1] - kw) // stride[1] + 1
    return q.new_empty((n, weight.shape[0], oh, ow), dtype=torch.float32)


# ------------------------------------------------------------------------------- modules


class IntegerConv2d(nn.Module):
    """A conv computed as uint8 x int8 -> int32 (see the module docstring)."""

    def __init__(self, conv: nn.Conv2d, quantizer: InputQuantizer, weight: torch.Tensor, weight_scale: torch.Tensor):
        super().__init__()
        self.register_buffer("weight_int8", weight.to(torch.int8))
        self.register_buffer("weight_scale", weight_scale.to(torch.float32))
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.to(torch.float32).clone())
        self.act_scale, self.zero_point = float(quantizer.scale), int(quantizer.zero_point)
        self.stride, self.padding = list(conv.stride), list(conv.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = quantize_u8(x, self.act_scale, self.zero_point)
        return int8_conv2d(q, self.weight_int8, self.weight_scale, self.bias, self.act_scale, self.zero_point,
                           self.stride, self.padding)


class HalfConv2d(nn.Module):
    """A conv computed in half precision (activation_bits 16) for a target with fp16 arithmetic:
    fp16 input, weights and bias, fp16 output cast back to fp32 for its float neighbours (an fp16
    engine such as TensorRT keeps fp16 between such layers; the casts cost a little here)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = copy.deepcopy(conv).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.half()).float()


class FakeQuantU8(nn.Module):
    """The fake-quant of a float conv's int8 input (quantize, then dequantize)."""

    def __init__(self, quantizer: InputQuantizer):
        super().__init__()
        self.scale, self.zero_point = float(quantizer.scale), int(quantizer.zero_point)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dequantize_u8(quantize_u8(x, self.scale, self.zero_point), self.scale, self.zero_point)


# ------------------------------------------------------------------------------- weights


def _grid_int8(layer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(int8 weights, per-output-channel scale, exact per channel) from the layer's own grid, where
    its parameter sets are whole output channels (or the whole tensor) of a uniform grid."""
    quantized = layer.quantized
    if quantized is None or quantized.scheme not in ("symmetric", "affine") or layer.granularity not in ("tensor", "filter"):
        return None
    layout = quantized.layout
    if quantized.scheme == "symmetric":
        offset = torch.full((layout.sets, 1), float(2 ** (quantized.bits - 1) - 1))
    else:
        offset = quantized.params["zero_point"]
    codes = layout.merge(quantized.codes.float() - offset)  # integer-valued, weight-shaped
    scale = layout.merge(quantized.params["scale"].expand(-1, layout.row_length).contiguous())
    if quantized.mask is not None:
        codes = codes * quantized.mask
    out_channels = layer.shape[0]
    codes, scale = codes.reshape(out_channels, -1), scale.reshape(out_channels, -1)[:, 0]
    exact = ((codes >= -INT8_LIMIT - 1) & (codes <= INT8_LIMIT)).all(dim=1)
    return codes.clamp(-INT8_LIMIT - 1, INT8_LIMIT).reshape(layer.shape), scale, exact


def integer_weights(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(int8 weights, per-output-channel fp32 scale, exact): see the module docstring. Output
    channels the layer's grid cannot give exactly are requantized symmetric int8."""
    weight = conv.weight.detach().float()
    flat = weight.reshape(weight.shape[0], -1)
    requantized_scale = (flat.abs().amax(dim=1) / INT8_LIMIT).clamp(min=torch.finfo(torch.float32).tiny)
    requantized = torch.round(flat / requantized_scale[:, None]).clamp(-INT8_LIMIT, INT8_LIMIT)
    packed = getattr(conv, "packed_layer", None)
    grid = _grid_int8(read_layer(packed)) if packed is not None else None
    if grid is None:
        return requantized.reshape(weight.shape), requantized_scale, False
    codes, scale, exact = grid
    codes = codes.reshape(flat.shape)
    # the grid is the baked weight only where code x scale reproduces it (fp32, as unpack_layer decodes)
    exact = exact & (codes * scale[:, None] == flat).all(dim=1)
    chosen = torch.where(exact[:, None], codes, requantized)
    chosen_scale = torch.where(exact, scale, requantized_scale)
    return chosen.reshape(weight.shape), chosen_scale, bool(exact.all())


# ------------------------------------------------------------------------------- the model


@dataclasses.dataclass
class IntegerSummary:
    integer_layers: int = 0  # convs running as int8 kernels
    exact_weight_layers: int = 0  # ... whose int8 weights are the layer's own grid
    requantized_weight_layers: int = 0  # ... whose weights were requantized per output channel
    fake_quant_float_layers: int = 0  # float convs reading fake-quantized int8 activations
    float_layers: int = 0  # convs in float with float inputs
    half_layers: int = 0  # convs computed in fp16 (HalfConv2d)
    names: list[str] = dataclasses.field(default_factory=list)  # the integer convs


def weight_bits(conv: nn.Module) -> int:
    """The conv's weight bit-width from its packing (32 when it has none: float)."""
    packed = getattr(conv, "packed_layer", None)
    return read_layer(packed).bits if packed is not None else 32


def runs_integer(conv: nn.Module) -> bool:
    quantizer = getattr(conv, "input_quantizer", None)
    return (isinstance(conv, nn.Conv2d) and isinstance(quantizer, InputQuantizer) and not quantizer.calibrating
            and weight_bits(conv) <= 8 and conv.groups == 1 and tuple(conv.dilation) == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def integer_copy(model: nn.Module, half: bool = False, integer: bool = True) -> tuple[nn.Module, IntegerSummary]:
    """A copy of a baked model with every eligible conv as IntegerConv2d (module docstring), the
    other int8-input convs behind FakeQuantU8, and no activation fake-quant hooks left. `half`
    (the target computes in fp16): fp16-compute convs become HalfConv2d, else plain fp32 convs.
    `integer` False (a target without int8 arithmetic): int8-input convs stay float convs behind
    FakeQuantU8, as they would run there."""
    model = copy.deepcopy(model)
    summary = IntegerSummary()
    replacements: dict[str, nn.Module] = {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Conv2d):
            continue
        quantizer = getattr(module, "input_quantizer", None)
        runs_int8 = integer and runs_integer(module)
        if quantizer is not None:  # the fake-quant hook goes: the replacement quantizes instead
            getattr(module, "input_quantizer_hook").remove()
            del module.input_quantizer, module.input_quantizer_hook
        if isinstance(quantizer, HalfPrecision):
            getattr(module, "output_rounding_hook").remove()
            del module.output_rounding_hook
            quantizer = None
            if half:  # a target that computes fp16 (CUDA): a half-precision kernel; else built in fp32
                replacements[name] = HalfConv2d(module)
                summary.half_layers += 1
                continue
        if runs_int8:
            assert isinstance(quantizer, InputQuantizer)  # runs_integer: its input is quantized to uint8
            weight, scale, exact = integer_weights(module)
            replacements[name] = IntegerConv2d(module, quantizer, weight, scale)
            summary.integer_layers += 1
            summary.exact_weight_layers += exact
            summary.requantized_weight_layers += not exact
            summary.names.append(name)
        elif quantizer is not None:
            replacements[name] = nn.Sequential(FakeQuantU8(quantizer), module)
            summary.fake_quant_float_layers += 1
        else:
            summary.float_layers += 1
    for name, replacement in replacements.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)
    return model, summary
