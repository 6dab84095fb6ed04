"""Per-layer compute and traffic of a model, counted with forward hooks on one input.

Used for the `params` / `flops` scores and for roofline latency estimates. Counts convs and
linears (where all but a sliver of a CNN detector's arithmetic is); FLOPs = 2 x MACs.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn


@dataclasses.dataclass
class LayerCost:
    name: str
    flops: int
    weight_elements: int
    input_elements: int
    output_elements: int


def layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCost]:
    costs: list[LayerCost] = []

    def hook(name):
        def record(module, inputs, output):
            out_elems = output.numel() // output.shape[0]
            if isinstance(module, nn.Conv2d):
                macs = out_elems * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
            else:
                macs = out_elems * module.in_features
            costs.append(LayerCost(name, 2 * macs, module.weight.numel(), inputs[0].numel() // inputs[0].shape[0], out_elems))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(input_shape, device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return costs


def layer_roofline_s(cost: LayerCost, ops_per_s: float, bandwidth_bytes_per_s: float, weight_bytes: float,
                     input_bytes_per_element: int, output_bytes_per_element: int = 4) -> float:
    """max(compute time, memory time) of one layer: weights read once at `weight_bytes`, the
    input read and the output written once."""
    traffic = (weight_bytes + cost.input_elements * input_bytes_per_element
               + cost.output_elements * output_bytes_per_element)
    return max(cost.flops / ops_per_s, traffic / bandwidth_bytes_per_s)


def roofline_latency_ms(costs: list[LayerCost], peak_ops_per_s: dict[str, float], bandwidth_bytes_per_s: float,
                        layer_weight_bytes: dict[str, int], integer: frozenset[str] | set[str] = frozenset()) -> float:
    """Sum over layers of their roofline (layer_roofline_s): weights at their packed bytes
    (`layer_weight_bytes`, by layer name), activations at fp32, except that an `integer` layer
    computes at the int8 peak and reads its input at 1 byte per element (its output stays 4:
    the fp32 epilogue; a requantizing producer would write 1, which this ignores)."""
    latency_s = 0.0
    for c in costs:
        runs_int8 = c.name in integer
        latency_s += layer_roofline_s(c, peak_ops_per_s["int8" if runs_int8 else "fp32"], bandwidth_bytes_per_s,
                                      layer_weight_bytes[c.name], 1 if runs_int8 else 4)
    return latency_s * 1e3
