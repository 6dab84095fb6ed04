"""Hardware scores of a transformed model: TVM build, latency, SRAM footprint.

Pipeline (build.py): the model's integer form (integer_model.integer_copy) -> torch.export ->
TVM Relax -> tvm.compile for the profile's target, with the fixed schedule of tvm_schedule.py or,
on request, MetaSchedule tuning (tuning.py). Latency is measured with TVM's time evaluator when
the profile is this machine; for remote profiles without a reachable device it is a roofline
estimate from the profile's peak rates, and says so. SRAM footprint = packed weight bytes (at the
candidate's bit-widths) + peak activation bytes from TVM's static memory planning of that build.

Precision decides the build: a conv with int8 activations and weights of 8 bits or fewer runs as
an integer kernel (uint8 x int8 -> int32, integer_kernels.py), every other conv in fp32. So latency
depends on the architecture (pruning, kernel sizes, low rank) and on which convs run integer;
below 8 bits, weights are widened to int8 for compute (int8 kernel latency, packed size). The
scores count the integer convs (`integer_layers`) and `latency_source` names them.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import numpy as np
import tvm
from torch import nn
from tvm import relax

from edgesearch.runners.hardware.build import (
    build_local,
    export_for_tvm,
    measure_latency_local,
    plan_memory_only,
    tvm_threads,
)
from edgesearch.runners.costs import layer_costs, roofline_latency_ms
from edgesearch.runners.hardware.integer_kernels import kernel_description
from edgesearch.runners.hardware.integer_model import IntegerSummary, integer_copy
from edgesearch.runners.hardware.profiles import HardwareProfile
from edgesearch.runners.hardware.rpc_runner import device_unavailable_reason, measure_latency_rpc
from edgesearch.runners.hardware.tuning import tune_and_build
from edgesearch.runners.hardware.turns import timing_turn
from edgesearch.spaces.apply import conv_layers, weight_bytes
from edgesearch.spaces.packing import module_packing

LOCAL_SOURCE = ("measured: TVM llvm build, fixed CPU schedule (no tuning), {precision}, {threads} threads, "
                "time evaluator median")
SHARED_NOTE = "; {others} other trial(s) ran on this machine while it was timed (trials take turns to be timed)"
TUNED_SOURCE = ("measured: TVM llvm build tuned by MetaSchedule (budget {trials} trials), {precision}, {threads} threads, "
                "time evaluator median")
ESTIMATED_SOURCE = ("estimated: per-layer roofline from the profile's peak rates ({integer} integer convs at its int8 "
                    "peak, the rest at its fp32 peak) and bandwidth (weights at their packed bytes, int8 conv inputs "
                    "at 1 byte, other activations at 4)")
REMEASURED_SOURCE = ("measured: TVM llvm build, fixed CPU schedule, {precision}, {threads} threads, re-timed interleaved "
                     "with {designs} other final design(s) ({rounds} rounds x {repeat} repeats)")
# How a latency was obtained, without the per-design parts of its label (precision, how many other
# trials ran meanwhile): two figures with the same method can be divided into a speed-up.
LOCAL_METHOD = "measured on this machine: fixed schedule, {threads} threads"
TUNED_METHOD = "measured on this machine: MetaSchedule-tuned, {threads} threads"
REMEASURED_METHOD = "re-measured on this machine, interleaved: fixed schedule, {threads} threads"
RPC_METHOD = "measured on {device} over TVM RPC"
ESTIMATED_METHOD = "estimated: roofline of {device}"
PLANNED_SOURCE = "planned: TVM static memory planning of this build ({precision})"
PLANNED_GENERIC_SOURCE = ("planned: TVM static memory planning of this model ({precision}) for a generic llvm target "
                          "(not the profile's own build; GPU plans may differ)")


def precision(summary: IntegerSummary, target) -> str:
    """What the build computes in, for the labels: fp32, or how many convs run integer and how."""
    convs = summary.integer_layers + summary.fake_quant_float_layers + summary.float_layers
    if not summary.integer_layers:
        return "fp32"
    return (f"{summary.integer_layers} of {convs} convs as int8 kernels ({kernel_description(target)}), "
            "the rest fp32")


def integer_scores(summary: IntegerSummary) -> dict:
    return {"integer_layers": summary.integer_layers,
            "integer_exact_weight_layers": summary.exact_weight_layers,
            "integer_requantized_weight_layers": summary.requantized_weight_layers}


def naive_note(build: dict) -> str:
    """What the label must say when a build left kernels naive or blocks serial. The fixed schedule
    lists them; a tuned build (tuning.tune_and_build) counts its naive kernels and has no serial list."""
    def count(key: str) -> int:
        value = build.get(key) or 0
        return value if isinstance(value, int) else len(value)

    naive, serial = count("unscheduled_kernels"), count("serial_blocks")
    if not naive and not serial:
        return ""
    return (f"; NOT FULLY SCHEDULED: {naive} kernel(s) left as naive loops, {serial} block(s) left serial "
            "(slower than a scheduled build)")


def latency_mode(profile: HardwareProfile) -> tuple[str, str | None]:
    """("measured" | "estimated", why no device) for an RPC profile, decided once per search: one
    objective holds one kind of figure, never measured trials beside silently estimated ones."""
    unavailable = device_unavailable_reason(profile)
    return ("estimated", unavailable) if unavailable else ("measured", None)


def _remote_latency(mod, profile: HardwareProfile, imgsz: int, model: nn.Module, summary: IntegerSummary,
                    library_path: str | None, mode: str | None, mode_why: str = "") -> dict:
    """Measured over RPC when the profile's device is registered with its tracker, else estimated.
    With `mode` decided for the run (latency_mode), a trial keeps to it: "estimated" never asks the
    device, and "measured" fails when the device cannot be reached instead of estimating."""
    from edgesearch.runners.hardware.cross_build import build_library  # it builds on build.relax_pipeline

    unavailable = (f"the run estimates every trial; at its start: {mode_why or 'no device'}" if mode == "estimated"
                   else device_unavailable_reason(profile))
    if mode == "measured" and unavailable:
        raise RuntimeError(f"{profile.name} could not be measured, as this run measures every trial: {unavailable}")
    result: dict = {}
    if unavailable is None or library_path:
        with tempfile.TemporaryDirectory() as folder:
            library = Path(library_path or Path(folder) / "model.so")
            built = build_library(mod, profile, library, check_kernels=False)
            result.update(build_s=built["build_s"], library_bytes=built["size_bytes"])
            if unavailable is None:
                return {**result, **measure_latency_rpc(library, profile, (1, 3, imgsz, imgsz)),
                        "latency_method": RPC_METHOD.format(device=profile.name)}
    layer_bytes = {name: len(module_packing(conv)) for name, conv in conv_layers(model).items()}
    estimate = roofline_latency_ms(layer_costs(model, (1, 3, imgsz, imgsz)), profile.peak_ops_per_s,
                                   profile.memory_bandwidth_bytes_per_s, layer_bytes, set(summary.names))
    source = ESTIMATED_SOURCE.format(integer=summary.integer_layers)
    return {**result, "latency_ms": estimate, "latency_source": f"{source} (no device reachable: {unavailable})",
            "latency_method": ESTIMATED_METHOD.format(device=profile.name)}


def remeasure_interleaved(models: dict[str, nn.Module], profile: HardwareProfile, imgsz: int, *,
                          rounds: int = 8, repeat: int = 5) -> dict[str, dict]:
    """Latency of several designs timed in interleaved rounds on this machine (build each once,
    then round after round time every design in turn), so slow drifts of a shared machine hit all
    designs alike. Median and spread over all rounds; ratios between designs are the robust part."""
    if profile.measurement != "local":
        raise ValueError(f"profile {profile.name} is not measured on this machine")
    vms, precisions = {}, {}
    for name, model in models.items():
        build_model, summary = integer_copy(model)
        executable, _ = build_local(export_for_tvm(build_model, imgsz, profile.target), profile.target)
        vms[name] = relax.VirtualMachine(executable, tvm.cpu())
        precisions[name] = precision(summary, profile.target)
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
                   + SHARED_NOTE.format(others=turn["others"]),
                   "latency_method": REMEASURED_METHOD.format(threads=tvm_threads())}
            for name, ms in times.items()}


def hardware_scores(model: nn.Module, profile: HardwareProfile, imgsz: int, *, tune_trials: int = 0,
                    tuning_db: str | None = None, library_path: str | None = None,
                    latency_mode: str | None = None, latency_mode_why: str = "") -> dict:
    """Latency (with its source), SRAM footprint and sizes of a transformed (baked) model.

    The build is the model's integer form (module docstring). x86-host: built here and timed with
    the time evaluator (`tune_trials` > 0: MetaSchedule-tuned, database in `tuning_db`; else the
    fixed schedule). RPC profiles: when the tracker has the device, the model is cross-built for it
    (cross_build.py) and timed over TVM RPC; otherwise the latency is a roofline estimate that says
    why no device was used; `latency_mode` (a run's decision, see latency_mode) keeps every trial of
    a search to one kind. `library_path` also writes the deployable library there (built even
    when no device is reachable)."""
    costs = layer_costs(model, (1, 3, imgsz, imgsz))
    packed = weight_bytes(model)
    build_model, summary = integer_copy(model)
    mod = export_for_tvm(build_model, imgsz, profile.target)
    computes_in = precision(summary, profile.target)
    latency: dict
    if profile.measurement == "rpc":
        activations = plan_memory_only(mod)
        latency = _remote_latency(mod, profile, imgsz, model, summary, library_path, latency_mode, latency_mode_why)
    elif tune_trials > 0:
        executable, build = tune_and_build(mod, profile.target, Path(tuning_db), tune_trials)
        activations = plan_memory_only(mod)  # planning does not depend on the kernels' schedules
        with timing_turn() as turn:
            latency = {**measure_latency_local(executable, imgsz), **build}
        latency["latency_source"] = (TUNED_SOURCE.format(trials=tune_trials, precision=computes_in,
                                                         threads=tvm_threads())
                                     + SHARED_NOTE.format(others=turn["others"]) + naive_note(build))
        latency["latency_method"] = TUNED_METHOD.format(threads=tvm_threads())
    else:
        executable, build = build_local(mod, profile.target)
        activations = build["activation_bytes"]
        with timing_turn() as turn:
            latency = {**measure_latency_local(executable, imgsz), "build_s": build["build_s"],
                       "unscheduled_kernels": len(build["unscheduled_kernels"]),
                       "serial_blocks": len(build["serial_blocks"])}
        latency["latency_source"] = (LOCAL_SOURCE.format(precision=computes_in, threads=tvm_threads())
                                     + SHARED_NOTE.format(others=turn["others"]) + naive_note(build))
        latency["latency_method"] = LOCAL_METHOD.format(threads=tvm_threads())
    if library_path and profile.measurement != "rpc":
        from edgesearch.runners.hardware.cross_build import export_atomically

        latency["library_bytes"] = export_atomically(executable, Path(library_path)).stat().st_size
    # the fixed-schedule local build plans its own memory; tuned and remote ones are planned generically
    planned = PLANNED_SOURCE if profile.measurement == "local" and tune_trials <= 0 else PLANNED_GENERIC_SOURCE
    return {
        "weight_bytes": packed,
        "activation_bytes": activations,
        "activation_bytes_source": planned.format(precision=computes_in),
        "sram_bytes": packed + activations,
        "fits_sram": packed + activations <= profile.sram_bytes,
        "params": sum(p.numel() for p in model.parameters()),
        "flops": sum(c.flops for c in costs),
        **integer_scores(summary),
        **latency,
    }
