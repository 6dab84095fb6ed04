"""The base's convs and the channels each prune cut removes from them: what counting a design's
FLOPs on its pruned shapes needs (search/flops_count.py), without building the design.

The sensitivity pass measures each cut alone; its FLOPs change includes the consumers' input
channels, so summing cuts counts twice what adjacent cuts both remove. This table lets the search
count the overlap. Plain data, from one DepGraph trace (spaces.prune.removed_channels: the same
channel counts the pass and apply_candidate remove) and one forward pass with hooks.
"""

from __future__ import annotations

from torch import nn

from edgesearch.runners.costs import layer_costs
from edgesearch.spaces.apply import apply_candidate, conv_layers
from edgesearch.spaces.candidate import Candidate
from edgesearch.spaces.prune import removed_channels


def conv_shapes(base: nn.Module, cuts: list[tuple[str, float]], imgsz: int) -> dict:
    """{"convs": {conv: {"shape": weight shape, "groups", "positions": output pixels}},
    "cuts": [{"layer", "ratio", "removed": {conv: [output channels removed, input channels removed]}}]}
    of the fused base at `imgsz`, for each (knob layer, prune ratio) of `cuts`."""
    fused = apply_candidate(base, Candidate({}))
    convs = conv_layers(fused)
    costs = {cost.name: cost for cost in layer_costs(fused, (1, 3, imgsz, imgsz))}
    removed = removed_channels(base, cuts) if cuts else {}
    return {
        "imgsz": imgsz,
        "convs": {name: {"shape": list(conv.weight.shape), "groups": conv.groups,
                         "positions": costs[name].output_elements // conv.out_channels}
                  for name, conv in convs.items() if name in costs},
        "cuts": [{"layer": layer, "ratio": ratio,
                  "removed": {conv: [len(outputs), len(inputs)] for conv, (outputs, inputs) in group.items()}}
                 for (layer, ratio), group in removed.items()],
    }
