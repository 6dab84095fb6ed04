"""Scoring one candidate end to end: apply -> short fine-tune -> mAP -> hardware scores.

`score_candidate` takes and returns plain data, so it runs the same in-process (`search eval`)
and as a Ray task (`search run`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from pathlib import Path

import torch

from edgesearch.runners.accuracy.finetune import calibration_batches, finetune, validate
from edgesearch.runners.accuracy.splits import search_and_holdout
from edgesearch.runners.checkpoints import load_detection_model
from edgesearch.runners.device import CPU, describe, resolve_device, running_on, to_device
from edgesearch.runners.hardware.measure import MeasurementPlan, decide_measurement, measurer_for
from edgesearch.runners.hardware.profiles import load_profile
from edgesearch.runners.hardware.scores import hardware_scores, remeasure_interleaved
from edgesearch.runners.hardware.turns import running_trial
from edgesearch.spaces.activations import calibrate
from edgesearch.spaces.apply import apply_candidate
from edgesearch.spaces.candidate import Candidate
from edgesearch.spaces.packing import bake_fake_quant


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    checkpoint: str
    data_yaml: str
    profile: str
    imgsz: int
    finetune_iters: int
    batch: int = 16
    threads: int = 2
    seed: int = 0
    trust_checkpoint: bool = False
    tune_trials: int = 0  # > 0: MetaSchedule-tune the local build, database in tuning_db
    tuning_db: str = ""
    distill: bool = False  # fine-tune with knowledge distillation from the base model
    calibration_batches: int = 8  # train batches that set int8 activation ranges
    library_path: str = ""  # also write the deployable library for the profile here
    # a run's one decision about latency (measure.MeasurementPlan as a dict); empty: decided per call
    measurement: dict | None = None
    # where calibration, fine-tune and validation run (runners/device.py): auto | cpu | cuda[:N]; a Ray
    # trial gets the GPU Ray assigned it (search/execution.py). TVM builds stay on the CPU.
    device: str = "auto"


def run_measurer(config: EvalSettings, profile):
    """The measurer of this trial: the run's plan, else decided now (search eval)."""
    plan = MeasurementPlan.from_settings(config.measurement) or decide_measurement(profile)
    return measurer_for(profile, plan, tune_trials=config.tune_trials, tuning_db=config.tuning_db)


def score_candidate(settings: dict, candidate: dict | None) -> dict:
    """All scores of one candidate (None = the base model unchanged)."""
    config = EvalSettings(**settings)
    torch.set_num_threads(config.threads)
    # TVM's thread pool starts with half the cores on x86 (and `import ultralytics` sets
    # OMP_NUM_THREADS=1, which TVM also honours): say how many threads to use before its first run
    os.environ["TVM_NUM_THREADS"] = str(config.threads)
    with running_trial():  # other trials on this machine see it while they are timed (turns.py)
        return _score(config, candidate)


def _score(config: EvalSettings, candidate: dict | None) -> dict:
    started = time.perf_counter()
    device = resolve_device(config.device)
    _, model, calibrated, losses, finetune_s = build_design(config, candidate)
    to_device(model, device)  # baked on the CPU; validated on the device
    with search_and_holdout(Path(config.data_yaml)) as (search_data, holdout_data, holdout_split, holdout_how):
        accuracy, validate_s = _timed(lambda: validate(model, search_data, imgsz=config.imgsz, device=device))
        holdout = validate(model, holdout_data, imgsz=config.imgsz, split=holdout_split, device=device)
    to_device(model, CPU)  # TVM builds from the CPU copy
    stage_devices = {**losses.devices, "validation": accuracy.pop("device"), "holdout": holdout["device"]}
    profile = load_profile(config.profile)
    hardware, hardware_s = _timed(lambda: hardware_scores(model, profile, config.imgsz,
                                                          measurer=run_measurer(config, profile),
                                                          library_path=config.library_path or None))
    return {
        **accuracy,
        # scored on images no choice of the search used (splits.py): what the search selects on is `map50_95`
        "holdout_map50_95": holdout["map50_95"],
        "holdout_map50": holdout["map50"],
        "holdout_source": f"held out: {holdout_how}",
        **hardware,
        "finetune_iters": config.finetune_iters,
        "distilled": config.distill,
        "device": describe(device),  # where the model ran (builds and timing: the CPU, or the profile's device)
        "stage_devices": stage_devices,  # what each stage's model parameters and inputs were on, as seen
        "activation_quantizers": calibrated,
        "finetune_final_loss": losses[-1] if losses else None,
        "finetune_s": finetune_s,
        "validate_s": validate_s,
        "hardware_s": hardware_s,
        "eval_s": time.perf_counter() - started,
    }


def build_design(config: EvalSettings, candidate: dict | None):
    """(base, design, calibrated quantizers, fine-tune losses, fine-tune seconds): the candidate
    applied to the base, calibrated, fine-tuned and baked - the model a trial scores and deploys.
    Calibration and fine-tune run on config.device (runners/device.py); the candidate is applied
    and the weights packed on the CPU, where both models are returned. The losses' `devices` say
    where calibration, fine-tune and teacher ran."""
    device = resolve_device(config.device)
    base = load_detection_model(config.checkpoint, trust=config.trust_checkpoint)
    design = Candidate.from_json(candidate) if candidate else Candidate({})
    model = to_device(apply_candidate(base, design), device)
    batches = calibration_batches(Path(config.data_yaml), imgsz=config.imgsz, batch=config.batch,
                                  count=config.calibration_batches, stride=int(getattr(model, "stride").max()))
    with running_on(model, device) as calibrating:
        calibrated = calibrate(model, (images.to(device) for images in batches))
    teacher = (base if device == CPU else copy.deepcopy(base)) if config.distill else None  # base stays on the CPU
    losses, finetune_s = _timed(lambda: finetune(model, Path(config.data_yaml), iterations=config.finetune_iters,
                                                 imgsz=config.imgsz, batch=config.batch, seed=config.seed,
                                                 teacher=teacher, device=device))
    losses.devices = {"calibration": calibrating.describe(), **losses.devices}
    to_device(model, CPU)  # packing reads the weights on the CPU
    bake_fake_quant(model)  # from here on the model holds exactly the quantized weights
    return base, model, calibrated, losses, finetune_s


def remeasure_designs(settings: dict, candidates: dict[str, dict | None]) -> dict[str, dict]:
    """Latency of the final designs (name -> candidate JSON, None = the base) re-timed together,
    interleaved (hardware/scores.remeasure_interleaved). A build's speed depends on the architecture and
    on which convs run as integer kernels, not on weight values or activation ranges, so the
    designs are rebuilt from the candidates without fine-tuning: int8 activation ranges are
    calibrated on one random batch and the weights baked at their knobs (as a trial bakes them)."""
    config = EvalSettings(**settings)
    os.environ["TVM_NUM_THREADS"] = str(config.threads)
    base = load_detection_model(config.checkpoint, trust=config.trust_checkpoint)
    models = {}
    for name, candidate in candidates.items():
        model = apply_candidate(base, Candidate.from_json(candidate) if candidate else Candidate({}))
        calibrate(model, [torch.rand(2, 3, config.imgsz, config.imgsz, generator=torch.Generator().manual_seed(0))])
        bake_fake_quant(model)
        models[name] = model
    return remeasure_interleaved(models, load_profile(config.profile), config.imgsz)


def _timed(work):
    """(result, seconds) of calling `work`."""
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started
