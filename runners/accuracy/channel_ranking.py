"""What ranks the channels a pruned design removes: the base's detection-loss gradients.

Pruning removes the channels whose loss would change least: the first-order Taylor importance
(|weight x gradient| summed over each group, Torch-Pruning's GroupTaylorImportance; Molchanov et al.
2019). On the default model it recovered better than weight magnitude at every length measured
(bench/results/pruning_importance.md). It needs the gradient of a loss on data: the mean detection
loss of the base, in eval mode, over RANKING_BATCHES fixed batches of RANKING_BATCH train images
(the same images every time, finetune.loss_batches), so that every trial, the sensitivity pass and an
export prune a design's layers by the same channels. They are computed on the CPU, where designs are
cut, in one thread: the sums then run in one order in every process, whatever its thread count, so a
near-tie between two channels cannot fall one way in the driver and the other in a trial.

Computed once per process for a base, data and input size (Ray reuses its worker processes across
trials).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from edgesearch.runners.accuracy.finetune import detection_loss, loss_batches
from edgesearch.spaces.candidate import Candidate

RANKING_BATCHES, RANKING_BATCH = 8, 16  # 128 train images the gradients are summed over
_GRADIENTS: dict[tuple, dict[str, torch.Tensor]] = {}  # per process: (checkpoint, data, imgsz) -> gradients


def pruning_gradients(base: nn.Module, checkpoint: str, data_yaml: str | Path, *,
                      imgsz: int) -> dict[str, torch.Tensor]:
    """{parameter name: gradient of the detection loss} of `base` (loaded from `checkpoint`, the
    cache's key with the data and input size), for spaces.apply.apply_candidate. `base` is left as
    it was."""
    key = (str(checkpoint), str(data_yaml), imgsz)
    if key not in _GRADIENTS:
        _GRADIENTS[key] = loss_gradients(base, data_yaml, imgsz=imgsz)
    return _GRADIENTS[key]


def loss_gradients(model: nn.Module, data_yaml: str | Path, *, imgsz: int) -> dict[str, torch.Tensor]:
    """{parameter name: gradient of the detection loss over the ranking batches} of `model` as it is
    now, uncached (pruning_gradients caches the base's); `model` is left as it was."""
    model = copy.deepcopy(model).cpu()
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    batches = loss_batches(Path(data_yaml), imgsz=imgsz, batch=RANKING_BATCH, count=RANKING_BATCHES,
                           stride=int(getattr(model, "stride").max()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        detection_loss(model, batches, grad=True).backward()
    finally:
        torch.set_num_threads(threads)
    return {name: parameter.grad.detach().clone() for name, parameter in model.named_parameters()
            if parameter.grad is not None}


def gradients_if_pruned(candidate: Candidate, base: nn.Module, checkpoint: str, data_yaml: str | Path, *,
                        imgsz: int) -> dict[str, torch.Tensor] | None:
    """The ranking gradients where `candidate` prunes channels; None (nothing to compute) where not."""
    if not any(knobs.prune_ratio > 0 for knobs in candidate.layers.values()):
        return None
    return pruning_gradients(base, checkpoint, data_yaml, imgsz=imgsz)
