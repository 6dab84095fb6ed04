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
            model.eval()(torch.zeros(input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return costs


def roofline_latency_ms(costs: list[LayerCost], peak_ops_per_s: float, bandwidth_bytes_per_s: float,
                        weight_bytes: int, activation_dtype_bytes: int = 4) -> float:
    """Sum over layers of max(compute time, memory time): weights read once (at their packed
    size, spread over layers by element count), activations read and written once."""
    total_weight_elems = sum(c.weight_elements for c in costs) or 1
    latency_s = 0.0
    for c in costs:
        traffic = (weight_bytes * c.weight_elements / total_weight_elems
                   + (c.input_elements + c.output_elements) * activation_dtype_bytes)
        latency_s += max(c.flops / peak_ops_per_s, traffic / bandwidth_bytes_per_s)
    return latency_s * 1e3
