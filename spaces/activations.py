"""Activation precision knob: what a conv computes in, through what its input is rounded to.

`activation_bits: 16` makes the conv compute in half precision, as an fp16 engine (TensorRT on a
Jetson) runs it: its input, its weights (spaces/candidate.py: `stored`) and its output rounded to
fp16. On a host without fp16 arithmetic the products are accumulated in fp32: an emulation, said
so in the scores, that rounds exactly where fp16 storage rounds but not inside the accumulation.


`activation_bits: 8` on a layer fake-quantizes the activation entering that conv (what an int8
conv kernel reads) with one affine scale and zero-point for the whole tensor, observed with
PyTorch's MinMaxObserver over calibration batches and then fixed; fine-tuning passes gradients
straight through (torch.fake_quantize_per_tensor_affine). Only conv inputs are quantized: the
Detect head's decoding (DFL softmax, sigmoid, the concat of boxes and class scores) stays in
float, because one scale shared by box coordinates (up to the image size) and class scores (0-1)
rounds every score to zero - measured on YOLOv8n with ONNX Runtime: mAP50-95 0.000 when that
concat was quantized, 0.560 (of 0.593) with the head's non-conv ops kept in float.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.ao.quantization.observer import MinMaxObserver


class InputQuantizer(nn.Module):
    """Observes min/max while calibrating; afterwards fake-quantizes to uint8 with fixed params."""

    scale: torch.Tensor  # buffers
    zero_point: torch.Tensor

    def __init__(self):
        super().__init__()
        self.observer = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.calibrating = True

    def freeze(self) -> None:
        if not torch.isfinite(self.observer.min_val):  # no calibration batch reached this layer
            raise RuntimeError("an int8 activation quantizer saw no calibration data")
        scale, zero_point = self.observer.calculate_qparams()
        self.scale.copy_(scale.reshape(()))
        self.zero_point.copy_(zero_point.reshape(()))
        self.calibrating = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observer(x.detach())
            return x
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, 255)


class HalfPrecision(nn.Module):
    """A conv's input rounded to fp16 (its output too, by a forward hook: see attach_input_quantizer).
    Nothing to calibrate; gradients pass through the casts unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.half().float()


def _quantize_input(conv: nn.Module, args: tuple) -> tuple:
    return (getattr(conv, "input_quantizer")(args[0]), *args[1:])


def _round_output_to_half(conv: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.half().float()


def attach_input_quantizer(conv: nn.Module, bits: int = 8) -> None:
    """bits 8: the conv's input as calibrated uint8; bits 16: input and output rounded to fp16."""
    if bits == 16:
        conv.input_quantizer = HalfPrecision()
        setattr(conv, "output_rounding_hook", conv.register_forward_hook(_round_output_to_half))
    else:
        conv.input_quantizer = InputQuantizer()
    setattr(conv, "input_quantizer_hook", conv.register_forward_pre_hook(_quantize_input))


def half_precision(conv: nn.Module) -> bool:
    """Whether the conv computes in fp16 (activation_bits 16)."""
    return isinstance(getattr(conv, "input_quantizer", None), HalfPrecision)


def input_quantizers(model: nn.Module) -> list[InputQuantizer]:
    return [m for m in model.modules() if isinstance(m, InputQuantizer)]


@torch.no_grad()
def calibrate(model: nn.Module, batches) -> int:
    """Observe activation ranges on `batches` (image tensors), then fix every quantizer's
    parameters. Returns the number of quantizers calibrated."""
    quantizers = input_quantizers(model)
    if not quantizers:
        return 0
    was_training = model.training
    model.eval()
    for quantizer in quantizers:
        quantizer.calibrating = True
    for images in batches:
        model(images)
    for quantizer in quantizers:
        quantizer.freeze()
    model.train(was_training)
    return len(quantizers)


def remove_input_quantizers(model: nn.Module) -> None:
    """Drop activation fake-quant and fp16 rounding (for a float build of the same weights)."""
    for module in model.modules():
        if hasattr(module, "input_quantizer_hook"):
            getattr(module, "input_quantizer_hook").remove()
            del module.input_quantizer, module.input_quantizer_hook
        if hasattr(module, "output_rounding_hook"):
            getattr(module, "output_rounding_hook").remove()
            del module.output_rounding_hook

