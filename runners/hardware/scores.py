"""Hardware scores of a transformed model: TVM build, latency, SRAM footprint.

Pipeline (build.py): the model's integer form (integer_model.integer_copy) -> torch.export ->
TVM Relax, handed to the run's measurer (measure.py): built and timed here (fixed schedule of
tvm_schedule.py, or MetaSchedule tuning), cross-built and timed on the device over RPC, or
estimated by the profile's calibrated latency model (latency_model.py) with its error band.
SRAM footprint = packed weight bytes (at the candidate's bit-widths) + peak activation bytes from
TVM's static memory planning of that build.

Precision decides the build: a conv with int8 activations and weights of 8 bits or fewer runs as
an integer kernel (uint8 x int8 -> int32, integer_kernels.py), every other conv in fp32. So latency
depends on the architecture (pruning, kernel sizes, low rank) and on which convs run integer;
below 8 bits, weights are widened to int8 for compute (int8 kernel latency, packed size). The
scores count the integer convs (`integer_layers`) and `latency_source` names them.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import numpy as np
import tvm
from torch import nn
from tvm import relax

from edgesearch.runners.costs import layer_costs
from edgesearch.runners.hardware.build import build_local, export_for_tvm, plan_memory_only, tvm_threads
from edgesearch.runners.hardware.build_cache import KEPT_ORIGIN, REBUILT_ORIGIN, BuildCache, graph_key
from edgesearch.runners.hardware.integer_kernels import kernel_description
from edgesearch.runners.hardware.integer_model import IntegerSummary, integer_copy
from edgesearch.runners.hardware.measure import SHARED_NOTE, BuiltDesign, Measurer, measurer_for, timed_here
from edgesearch.runners.hardware.precision import conv_precisions, describe
from edgesearch.runners.hardware.profiles import HardwareProfile
from edgesearch.runners.hardware.turns import timing_turn, work_step
from edgesearch.spaces.apply import weight_bytes

REMEASURED_SOURCE = ("measured: TVM llvm build, fixed CPU schedule, {precision}, {threads} threads, re-timed interleaved "
                     "with {designs} other final design(s) ({rounds} rounds x {repeat} repeats)")
REMEASURED_METHOD = "re-measured on this machine, interleaved: fixed schedule, {threads} threads"
PLANNED_SOURCE = "planned: TVM static memory planning of this build ({precision})"
PLANNED_GENERIC_SOURCE = ("planned: TVM static memory planning of this model ({precision}) for a generic llvm target "
                          "(not the profile's own build; GPU plans may differ)")


def precision(summary: IntegerSummary, target) -> str:
    """What the build computes in, for the labels: fp32, or how many convs run integer and how."""
    convs = summary.integer_layers + summary.fake_quant_float_layers + summary.float_layers + summary.half_layers
    parts = []
    if summary.integer_layers:
        parts.append(f"{summary.integer_layers} of {convs} convs as int8 kernels ({kernel_description(target)})")
    if summary.half_layers:
        parts.append(f"{summary.half_layers} of {convs} convs in fp16")
    return ", ".join(parts) + ", the rest fp32" if parts else "fp32"


def integer_scores(summary: IntegerSummary) -> dict:
    return {"integer_layers": summary.integer_layers,
            "integer_exact_weight_layers": summary.exact_weight_layers,
            "integer_requantized_weight_layers": summary.requantized_weight_layers}


@dataclasses.dataclass(frozen=True)
class KeptBuild:
    """A design's library as its trial built it (build_cache.BuildCache.library), to time again."""
    path: Path
    precision: str  # what the build computes in (precision())


def remeasure_interleaved(designs: dict[str, nn.Module | KeptBuild], profile: HardwareProfile, imgsz: int, *,
                          rounds: int = 8, repeat: int = 5) -> dict[str, dict]:
    """Latency of several designs timed in interleaved rounds on this machine (each built once, or
    loaded from the library its trial kept; then round after round every design timed in turn), so
    slow drifts of a shared machine hit all designs alike. Median and spread over all rounds;
    ratios between designs are the robust part."""
    if not timed_here(profile):
        raise ValueError(f"profile {profile.name} is not measured on this machine")
    vms, precisions, origins = {}, {}, {}
    for name, design in designs.items():
        if isinstance(design, KeptBuild):
            executable, precisions[name] = tvm.runtime.load_module(str(design.path)), design.precision
            origins[name] = KEPT_ORIGIN
        else:
            build_model, summary = integer_copy(design)
            executable, _ = build_local(export_for_tvm(build_model, imgsz, profile.target), profile.target)
            precisions[name], origins[name] = precision(summary, profile.target), REBUILT_ORIGIN
        vms[name] = relax.VirtualMachine(executable, tvm.cpu())
    data = tvm.runtime.tensor(np.zeros((1, 3, imgsz, imgsz), dtype="float32"), tvm.cpu())
    times: dict[str, list[float]] = {name: [] for name in vms}
    with timing_turn() as turn:  # no trial of this machine is timed meanwhile
        for _ in range(rounds):
            for name, vm in vms.items():
                timer = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat, min_repeat_ms=10)
                times[name] += [t * 1e3 for t in timer(data).results]
    return {name: {"latency_ms": statistics.median(ms), "latency_spread_ms": max(ms) - min(ms),
                   "latency_source": REMEASURED_SOURCE.format(precision=precisions[name], threads=tvm_threads(),
                                                              designs=len(vms) - 1, rounds=rounds, repeat=repeat)
                   + f"; {origins[name]}" + SHARED_NOTE.format(others=turn["others"]),
                   "latency_method": REMEASURED_METHOD.format(threads=tvm_threads()),
                   "build_origin": origins[name]}
            for name, ms in times.items()}


def _measured(design: BuiltDesign, measurer: Measurer, cache: BuildCache | None) -> dict:
    """The measurer's latency fields for `design`, or those kept for its built graph; `build_key`
    and `build_reused` say which. Estimates are not kept (they cost no build), nor a build whose
    library the caller wants written."""
    if cache is None or not measurer.reusable or design.library_path:
        return measurer.latency(design)
    key = graph_key(design.module, f"{measurer.profile.name} {measurer.profile.target} {measurer.describe()} "
                                   f"threads {tvm_threads()}")
    kept = cache.get(key)
    if kept is not None:
        return {**kept, "build_key": key, "build_reused": True}
    keep_library = timed_here(measurer.profile)  # for the front's re-measure on this machine
    fields = measurer.latency(dataclasses.replace(design, library_path=str(cache.library_path(key)))
                              if keep_library else design)
    cache.put(key, fields, design.precision_label)
    return {**fields, "build_key": key, "build_reused": False}


def hardware_scores(model: nn.Module, profile: HardwareProfile, imgsz: int, *, measurer: Measurer | None = None,
                    library_path: str | None = None, cache: BuildCache | None = None) -> dict:
    """Latency (with its source), memory footprint and sizes of a transformed (baked) model.

    The build is the model's integer form (module docstring); its latency comes from the run's
    `measurer` (measure.py: timed here, over RPC, or estimated; default: decided now for the
    profile). `library_path` also writes the deployable library there. With a run's `cache`
    (build_cache.py), a design whose built graph was timed before in the run reuses that figure."""
    measurer = measurer or measurer_for(profile)
    costs = layer_costs(model, (1, 3, imgsz, imgsz))
    packed = weight_bytes(model)
    with work_step():  # torch.export and the integer copy are seconds of CPU: a timing pauses them (turns.py)
        build_model, summary = integer_copy(model, half=profile.computes("fp16"), integer=profile.computes("int8"))
        module = export_for_tvm(build_model, imgsz, profile.target)
    computes_in = precision(summary, profile.target)
    precisions = conv_precisions(model, profile.compute_precisions)
    latency = _measured(BuiltDesign(model, module, imgsz, computes_in, precisions, library_path), measurer, cache)
    # the fixed-schedule local build plans its own memory; tuned, remote and estimated ones are planned generically
    activations = latency.pop("activation_bytes", None)
    planned = PLANNED_SOURCE if activations is not None else PLANNED_GENERIC_SOURCE
    if activations is None:
        with work_step():
            activations = plan_memory_only(module)  # planning does not depend on the kernels' schedules
    return {
        "weight_bytes": packed,
        "activation_bytes": activations,
        "activation_bytes_source": planned.format(precision=computes_in),
        "sram_bytes": packed + activations,
        "fits_sram": packed + activations <= profile.sram_bytes,
        "params": sum(p.numel() for p in model.parameters()),
        "flops": sum(c.flops for c in costs),
        "compute_precision": describe(precisions),
        **integer_scores(summary),
        **latency,
    }
