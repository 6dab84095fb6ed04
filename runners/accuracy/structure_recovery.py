"""The recovery stage's first phase: a structural design trained in float, unfused, cut in steps.

A one-shot cut recovered as a trial fine-tunes (fused, from the start) comes back slowly: uniform 60 %
channel pruning (5.83x fewer FLOPs) of the default model scored 0.654 mAP50-95 after 480 steps and
stalled at 0.76-0.78, 0.90 of an equally trained fp32 control (bench/results/pruning_long.md,
pruning_longer.md). Trained unfused, its BatchNorms training with the convs, the same cut scores
0.695-0.762 after 480 steps and 0.776-0.815 after 1440 (0.90-0.96 of the control trained the same way;
progressive_pruning.md, three seeds). Cutting in steps, the channels ranked again before each cut on
the model as it then is (Torch-Pruning's YOLOv8 example), adds little beyond that: 0.804-0.815 after
1440 steps (0.93-0.95). So the recovery stage trains a design's structure first: its channels are cut
in `cuts` steps spread over the first CUT_SPAN of its schedule (cut_steps), its kernels cropped after
the first cut, and the model trains unfused, in float, for the recovery's steps. Then the rest of its
knobs are applied (spaces.apply.finish_candidate: BatchNorms fused, ranks lowered, quantizers
attached) and its own fine-tune adapts it to them, as any trial's does.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from edgesearch.runners.accuracy.channel_ranking import loss_gradients
from edgesearch.runners.accuracy.finetune import FinetuneLosses, finetune
from edgesearch.runners.device import CPU, to_device
from edgesearch.runners.hardware.turns import work_step
from edgesearch.spaces.apply import crop_kernels, prune_ratios, validate_candidate
from edgesearch.spaces.candidate import Candidate
from edgesearch.spaces.prune import attach_gradients, prune_output_channels, ratios_in_steps

CUT_SPAN = 1 / 3  # the share of the whole schedule the cuts spread over (the benchmark's last cut: 480 of 1440)


def cut_steps(schedule: int, phase: int, cuts: int) -> list[int]:
    """The steps at which `cuts` cuts come in a schedule of `schedule` steps whose first `phase`
    steps train the structure: the first at 0, the last at about CUT_SPAN of the schedule (within
    the phase). One cut, or a phase too short to spread them: [0]."""
    every = int(min(schedule * CUT_SPAN, phase)) // (cuts - 1) if cuts > 1 else 0
    return [cut * every for cut in range(cuts)] if every else [0]


def recover_structure(base: nn.Module, candidate: Candidate, data_yaml: str | Path, *,
                      base_gradients: dict | None, steps: int, schedule: int, cuts: int, imgsz: int, batch: int,
                      lr: float, seed: int, teacher: nn.Module | None,
                      device: torch.device) -> tuple[nn.Module, FinetuneLosses, list[int]]:
    """(a copy of `base` with the candidate's channels and kernels, trained `steps` steps unfused and in
    float; the losses of those steps; the steps its channels were cut at, [] where it prunes none).
    `base_gradients` (channel_ranking.pruning_gradients, where it prunes) rank the first cut, as a
    one-shot cut ranks; each later cut ranks on the model's own gradients then. `schedule`: the whole
    fine-tune's steps, which place the cuts (cut_steps). Training is `finetune` with the given
    settings, from seed + the steps done before it. The model comes back on the CPU."""
    validate_candidate(base, candidate)
    ratios = prune_ratios(candidate)
    at = cut_steps(schedule, steps, cuts) if ratios else []
    model, losses, done = copy.deepcopy(base), FinetuneLosses(), 0
    losses.devices = {}
    for cut, (step, ratios_now) in enumerate(zip(at, ratios_in_steps(base, ratios, len(at)) if at else [],
                                                 strict=True)):
        _train(model, losses, data_yaml, step - done, imgsz=imgsz, batch=batch, lr=lr, seed=seed + done,
               teacher=teacher, device=device)
        done = step
        to_device(model, CPU)  # designs are cut on the CPU (channel_ranking.py)
        gradients = base_gradients if cut == 0 else loss_gradients(model, data_yaml, imgsz=imgsz)
        with work_step():  # DepGraph's cut: seconds of CPU (turns.py)
            attach_gradients(model, gradients or {})
            prune_output_channels(model, ratios_now, importance="taylor")
            model.zero_grad(set_to_none=True)
            if cut == 0:  # kernels cropped after the first cut, which ranks on the base's uncropped gradients
                crop_kernels(model, candidate)
    if not at:
        crop_kernels(model, candidate)
    _train(model, losses, data_yaml, steps - done, imgsz=imgsz, batch=batch, lr=lr, seed=seed + done,
           teacher=teacher, device=device)
    to_device(model, CPU)
    return model, losses, at


def _train(model: nn.Module, losses: FinetuneLosses, data_yaml: str | Path, steps: int, **settings) -> None:
    """`steps` fine-tune steps of `model` (none: nothing), their losses added to `losses`."""
    if steps <= 0:
        return
    trained = finetune(model, Path(data_yaml), iterations=steps, **settings)
    losses.extend(trained)
    losses.devices = trained.devices
