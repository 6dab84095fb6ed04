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

from edgesearch.common.cache import cache_root
from edgesearch.runners.accuracy import inherited as inherited_weights
from edgesearch.runners.accuracy.channel_ranking import gradients_if_pruned
from edgesearch.runners.accuracy.finetune import (
    FINETUNE_LR,
    STRUCTURAL_LR,
    FinetuneLosses,
    calibration_batches,
    finetune,
    validate,
)
from edgesearch.runners.accuracy.splits import search_and_holdout
from edgesearch.runners.accuracy.structure_recovery import recover_structure
from edgesearch.runners.checkpoints import load_detection_model
from edgesearch.runners.device import CPU, describe, resolve_device, running_on, to_device
from edgesearch.runners.hardware.build_cache import BUILDS_DIR, BuildCache
from edgesearch.runners.hardware.measure import MeasurementPlan, decide_measurement, measurer_for
from edgesearch.runners.hardware.profiles import load_profile
from edgesearch.runners.hardware.scores import KeptBuild, hardware_scores, remeasure_interleaved
from edgesearch.runners.hardware.turns import running_trial, work_step
from edgesearch.spaces.activations import calibrate
from edgesearch.spaces.apply import apply_candidate, finish_candidate, packed_layer_bytes
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
    # the run's id: designs whose built graph was timed before in the run reuse that figure
    # (hardware/build_cache.py, in this node's cache); empty: every design is built and timed
    build_cache: str = ""
    # successive halving (search/halving.py): after rung_steps of the fine-tune (0: no rung) a design
    # goes on only if its mAP50-95 there reaches promotion_bar (None: it always goes on)
    rung_steps: int = 0
    promotion_bar: float | None = None
    # the recovery stage's share of finetune_iters (search/recovery.py): a structural design's longer
    # schedule, recorded in its training record
    recovery_steps: int = 0
    # the recovery's pruned channels are cut in this many steps, ranked again before each
    # (runners/accuracy/structure_recovery.py); 1: at once
    cuts: int = 1
    # the fine-tune's learning rate (AdamW); None: by the design (design_lr)
    lr: float | None = None
    # the run's id under which trials keep their fine-tuned weights on their node, for children to
    # start from (runners/accuracy/inherited.py); empty: nothing kept
    kept_weights: str = ""
    keep_as: str = ""  # this trial's number: its weights are kept under it
    # a child of a scored design with the same structure: start from that trial's (`parent`) kept
    # weights, which had `parent_steps` from the base, and fine-tune `child_iters` steps instead of
    # finetune_iters. Where they are not on this node, the design trains from the base as any other.
    parent: str = ""
    parent_steps: int = 0
    child_iters: int = 0


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
    config = dataclasses.replace(config, lr=design_lr(config, candidate))
    with search_and_holdout(Path(config.data_yaml)) as (search_data, holdout_data, holdout_split, holdout_how):
        rung = Rung(config, lambda m: validate(m, search_data, imgsz=config.imgsz, device=device)["map50_95"])
        _, model, calibrated, losses, finetune_s = build_design(config, candidate, rung.check if rung.steps else None)
        to_device(model, device)  # baked on the CPU; validated on the device
        accuracy, validate_s = _timed(lambda: validate(model, search_data, imgsz=config.imgsz, device=device))
        holdout = validate(model, holdout_data, imgsz=config.imgsz, split=holdout_split, device=device)
    to_device(model, CPU)  # TVM builds from the CPU copy
    stage_devices = {**losses.devices, "validation": accuracy.pop("device"), "holdout": holdout["device"]}
    profile = load_profile(config.profile)
    hardware, hardware_s = _timed(lambda: hardware_scores(model, profile, config.imgsz,
                                                          measurer=run_measurer(config, profile),
                                                          library_path=config.library_path or None,
                                                          cache=run_build_cache(config)))
    return {
        **accuracy,
        # scored on images no choice of the search used (splits.py): what the search selects on is `map50_95`
        "holdout_map50_95": holdout["map50_95"],
        "holdout_map50": holdout["map50"],
        "holdout_source": f"held out: {holdout_how}",
        **hardware,
        # each searchable layer's packed bytes, for the report (search/report_inputs.packed_layers)
        "packed_layers": packed_layer_bytes(model, list(candidate["layers"])) if candidate else None,
        "finetune_iters": config.child_iters if losses.inherited else config.finetune_iters,
        "distilled": config.distill,
        "training": training_record(config, losses.stopped_at, rung, inherited=losses.inherited,
                                    cuts_at=losses.cuts_at),
        "rung_map50_95": rung.map50_95,  # after the rung's steps (successive halving), where checked
        "device": describe(device),  # where the model ran (builds and timing: the CPU, or the profile's device)
        "stage_devices": stage_devices,  # what each stage's model parameters and inputs were on, as seen
        "activation_quantizers": calibrated,
        "finetune_final_loss": losses[-1] if losses else None,
        "finetune_s": finetune_s,
        "validate_s": validate_s,
        "hardware_s": hardware_s,
        "eval_s": time.perf_counter() - started,
    }


def design_lr(config: EvalSettings, candidate: dict | None) -> float:
    """The fine-tune's learning rate: the settings', else STRUCTURAL_LR for a design that changes
    structure and FINETUNE_LR for any other (finetune.py says why)."""
    if config.lr is not None:
        return config.lr
    return STRUCTURAL_LR if candidate and Candidate.from_json(candidate).changes_structure() else FINETUNE_LR


class Rung:
    """Successive halving inside one trial: after `rung_steps` of the fine-tune the design is
    validated on the search's images, and goes on to the full schedule only if it reaches the
    `promotion_bar` the driver set for it (search/halving.py; None: always goes on, its mAP at the
    rung kept to learn what the rest of a fine-tune adds)."""

    def __init__(self, config: EvalSettings, map_of):
        self.steps = config.rung_steps if 0 < config.rung_steps < config.finetune_iters else 0
        self.bar, self.map_of = config.promotion_bar, map_of
        self.map50_95: float | None = None

    def check(self, model) -> bool:
        self.map50_95 = self.map_of(model)
        return self.bar is None or self.map50_95 >= self.bar


def training_record(config: EvalSettings, stopped_at: int | None = None, rung: Rung | None = None,
                    inherited: bool = False, cuts_at: tuple[int, ...] = ()) -> dict:
    """How the scored weights were trained: the one record designs are compared by (a design is set
    against a recipe or the fp32 control only when their records match). Fields: `start` (whose
    weights training began from), `steps_from_base` (all fine-tune steps since the base, inherited
    ones included), `inherited_steps` (of those, taken over with the start weights), `distilled`,
    `recovery_steps` (a structural design's extra schedule, trained first: structure_recovery.py),
    `lr` (the fine-tune's learning rate), `stopped_early` (successive halving stopped it at a rung:
    fewer steps than the run's schedule), `cuts_at` (a recovery's: the steps its channels were cut
    at, from the losses' `cuts_at`), and `label`, the record in words. `inherited`: it started from
    trial #config.parent's kept weights (config.parent_steps from the base) and had
    config.child_iters more."""
    if inherited:
        return _inherited_record(config)
    steps = stopped_at or config.finetune_iters
    recovery, lr = min(config.recovery_steps, steps), config.lr or FINETUNE_LR
    cuts = list(cuts_at) if recovery else []
    record = {"start": "base", "steps_from_base": steps, "inherited_steps": 0,
              "distilled": bool(config.distill and steps), "recovery_steps": recovery,
              "lr": lr if steps else None, "stopped_early": stopped_at is not None,
              **({"cuts_at": cuts} if cuts else {})}
    label = "the base's weights, no fine-tune"
    if steps:
        parts = [f"{steps} fine-tune steps from the base"]
        if recovery:
            cut = f", channels cut at step{'s' * (len(cuts) > 1)} {', '.join(map(str, cuts))}" if cuts else ""
            parts = [f"{parts[0]}: {recovery} of recovery first (float, BatchNorm unfused{cut}), "
                     f"then {steps - recovery}"]
        parts += ["distilled from the base"] if record["distilled"] else []
        parts += [f"learning rate {lr:g}"] if lr != FINETUNE_LR else []
        label = ", ".join(parts)
    if stopped_at is not None and rung is not None and rung.map50_95 is not None and rung.bar is not None:
        label += (f" (stopped at {stopped_at} of {config.finetune_iters}: mAP50-95 {rung.map50_95:.3f} there, "
                  f"below the {rung.bar:.3f} it needed to reach the front)")
    return {**record, "label": label}


def _inherited_record(config: EvalSettings) -> dict:
    steps, lr = config.child_iters, config.lr or FINETUNE_LR
    label = (f"{steps} fine-tune steps from #{config.parent}'s weights ({config.parent_steps} from the base before, "
             f"{config.parent_steps + steps} in all)")
    label += ", distilled from the base" if config.distill else ""
    label += f", learning rate {lr:g}" if lr != FINETUNE_LR else ""
    return {"start": f"#{config.parent}", "steps_from_base": config.parent_steps + steps,
            "inherited_steps": config.parent_steps, "distilled": config.distill, "recovery_steps": 0, "lr": lr,
            "stopped_early": False, "label": label}


def build_design(config: EvalSettings, candidate: dict | None, rung_check=None):
    """(base, design, calibrated quantizers, fine-tune losses, fine-tune seconds): the candidate
    applied to the base, calibrated, fine-tuned and baked - the model a trial scores and deploys.
    Calibration and fine-tune run on config.device (runners/device.py); the candidate is applied
    and the weights packed on the CPU, where both models are returned. The losses' `devices` say
    where calibration, fine-tune and teacher ran. `rung_check(model)`: successive halving's check
    after config.rung_steps (Rung.check); the losses' `stopped_at` says if it stopped the fine-tune.
    With config.recovery_steps, those steps come first and train the design's structure
    (structure_recovery.py); the losses' `cuts_at` says when its channels were cut."""
    device = resolve_device(config.device)
    base = load_detection_model(config.checkpoint, trust=config.trust_checkpoint)
    design = Candidate.from_json(candidate) if candidate else Candidate({})
    teacher = (base if device == CPU else copy.deepcopy(base)) if config.distill else None  # base stays on the CPU
    lr, recovery = design_lr(config, candidate), min(config.recovery_steps, config.finetune_iters)
    with work_step():  # DepGraph's cuts are seconds of CPU: a timing on this machine pauses them (turns.py)
        # a pruned design loses the channels the base's loss gradients rank lowest (channel_ranking.py)
        gradients = gradients_if_pruned(design, base, config.checkpoint, config.data_yaml, imgsz=config.imgsz)
    (model, recovery_losses, cuts_at), shaped_s = _timed(lambda: _shaped_design(
        config, base, design, gradients, recovery=recovery, lr=lr, teacher=teacher, device=device))
    inherited = bool(config.parent and config.kept_weights and config.child_iters > 0 and not recovery) \
        and inherited_weights.start_from(model, inherited_weights.weights_path(kept_weights_folder(config), config.parent))
    to_device(model, device)
    batches = calibration_batches(Path(config.data_yaml), imgsz=config.imgsz, batch=config.batch,
                                  count=config.calibration_batches, stride=int(getattr(model, "stride").max()))
    with running_on(model, device) as calibrating, work_step():
        calibrated = calibrate(model, (images.to(device) for images in batches))
    # a child sees other batches than its parent's first steps; after a recovery, other than the recovery's
    first = config.parent_steps if inherited else recovery
    losses, finetune_s = _timed(lambda: finetune(model, Path(config.data_yaml),
                                                 iterations=config.child_iters if inherited else
                                                 config.finetune_iters - recovery,
                                                 imgsz=config.imgsz, batch=config.batch, lr=lr,
                                                 seed=config.seed + first, teacher=teacher, device=device,
                                                 rung=(config.rung_steps, rung_check)
                                                 if rung_check and not inherited and not recovery else None))
    losses[:0] = recovery_losses
    losses.devices = {"calibration": calibrating.describe(), **recovery_losses.devices, **losses.devices}
    losses.inherited, losses.cuts_at = inherited, tuple(cuts_at)
    to_device(model, CPU)  # packing reads the weights on the CPU
    if config.kept_weights and config.keep_as and not inherited and losses.stopped_at is None \
            and not config.recovery_steps:  # a design trained from the base with the whole schedule: for its children
        inherited_weights.keep(model, inherited_weights.weights_path(kept_weights_folder(config), config.keep_as))
    with work_step():
        bake_fake_quant(model)  # from here on the model holds exactly the quantized weights
    return base, model, calibrated, losses, (shaped_s if recovery else 0.0) + finetune_s  # a recovery's steps too


def _shaped_design(config: EvalSettings, base, design: Candidate, gradients, *, recovery: int, lr: float,
                   teacher, device) -> tuple[torch.nn.Module, FinetuneLosses, list[int]]:
    """(the design with every knob applied, ready to calibrate; the losses of a recovery's steps; the
    steps its channels were cut at, [] where it prunes none): cut at once (apply_candidate), or with
    `recovery` steps, its structure trained first (structure_recovery.py)."""
    if recovery:
        model, losses, cuts_at = recover_structure(
            base, design, config.data_yaml, base_gradients=gradients, steps=recovery, schedule=config.finetune_iters,
            cuts=config.cuts, imgsz=config.imgsz, batch=config.batch, lr=lr, seed=config.seed, teacher=teacher,
            device=device)
        with work_step():
            return finish_candidate(model, design), losses, cuts_at
    with work_step():  # DepGraph's cut: seconds of CPU (turns.py)
        model = apply_candidate(base, design, gradients)
    losses = FinetuneLosses()
    losses.devices = {}
    return model, losses, [0] if gradients else []


def remeasure_designs(settings: dict, candidates: dict[str, dict | None],
                      build_keys: dict[str, str] | None = None) -> dict[str, dict]:
    """Latency of the final designs (name -> candidate JSON, None = the base) re-timed together,
    interleaved (hardware/scores.remeasure_interleaved), each from the library its trial kept on this
    node (`build_keys`: name -> build_key of its scores) where there is one. A design without one is
    rebuilt from its candidate without fine-tuning: a build's speed depends on the architecture and on
    which convs run as integer kernels, not on weight values or activation ranges, so int8 activation
    ranges are calibrated on one random batch and the weights baked at their knobs (as a trial bakes them)."""
    config = EvalSettings(**settings)
    os.environ["TVM_NUM_THREADS"] = str(config.threads)
    cache, build_keys = run_build_cache(config), build_keys or {}
    kept = {name: cache.library(build_keys[name]) for name in candidates if cache and build_keys.get(name)}
    designs: dict = {name: KeptBuild(*library) for name, library in kept.items() if library}
    base = None
    for name, candidate in candidates.items():
        if name in designs:
            continue
        base = base or load_detection_model(config.checkpoint, trust=config.trust_checkpoint)
        model = apply_candidate(base, Candidate.from_json(candidate) if candidate else Candidate({}))
        calibrate(model, [torch.rand(2, 3, config.imgsz, config.imgsz, generator=torch.Generator().manual_seed(0))])
        bake_fake_quant(model)
        designs[name] = model
    return remeasure_interleaved(designs, load_profile(config.profile), config.imgsz)


def kept_weights_folder(config: EvalSettings) -> Path:
    """Where this node keeps the run's fine-tuned weights: beside its kept builds (build_cache.py),
    trimmed with them."""
    return BuildCache(cache_root() / BUILDS_DIR, config.kept_weights).folder  # which checks the run id


def run_build_cache(config: EvalSettings) -> BuildCache | None:
    """This node's kept builds of the run (build_cache.py); None outside a search run."""
    return BuildCache(cache_root() / BUILDS_DIR, config.build_cache) if config.build_cache else None


def _timed(work):
    """(result, seconds) of calling `work`."""
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started
