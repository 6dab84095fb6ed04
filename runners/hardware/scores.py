"""Hardware scores of a transformed model: TVM build, latency, SRAM footprint.

Pipeline: torch.export -> TVM Relax (from_exported_program, weights embedded as constants) ->
tvm.compile for the profile's target, with the fixed schedule of tvm_schedule.py or, on request,
MetaSchedule tuning (tuning.py). Latency is measured with TVM's time evaluator when the
profile is this machine; for remote profiles without a reachable device it is a roofline estimate
from the profile's peak rates, and says so. SRAM footprint = packed weight bytes (at the
candidate's bit-widths) + peak activation bytes from TVM's static memory planning.

The build computes in fp32 whatever the weight bit-widths: quantized weights change the stored
size (and on integer hardware the speed), not this build's arithmetic. Latency therefore depends
on the architecture (pruning, kernel sizes, low rank), never on bit-widths. Where layers take int8
activations, the planned fp32 activation bytes are scaled by the int8 share of conv-input bytes,
and `activation_bytes_source` says that figure is estimated.
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import tvm
from torch import nn
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.relax.frontend.torch import from_exported_program
from ultralytics.nn.modules.head import Detect

from edgesearch.runners.hardware.costs import layer_costs, roofline_latency_ms
from edgesearch.runners.hardware.profiles import HardwareProfile
from edgesearch.runners.hardware.rpc_runner import device_unavailable_reason, measure_latency_rpc
from edgesearch.runners.hardware.tuning import tune_and_build
from edgesearch.runners.hardware.turns import timing_turn
from edgesearch.runners.hardware.tvm_schedule import cpu_schedule_pass
from edgesearch.spaces.activations import activation_byte_share, remove_input_quantizers
from edgesearch.spaces.apply import weight_bytes

ACTIVATION_DTYPE_BYTES = 4  # activations stay fp32 in this build
LOCAL_SOURCE = "measured: TVM llvm build, fixed CPU schedule (no tuning), fp32, {threads} threads, time evaluator median"
TUNED_SOURCE = ("measured: TVM llvm build tuned by MetaSchedule (budget {trials} trials), fp32, {threads} threads, "
                "time evaluator median")
SHARED_NOTE = "; {others} other trial(s) ran on this machine while it was timed (trials take turns to be timed)"
ESTIMATED_SOURCE = "estimated: roofline from profile peak fp32 rate and bandwidth (no device reachable)"
REMEASURED_SOURCE = ("measured: TVM llvm build, fixed CPU schedule, fp32, {threads} threads, re-timed interleaved "
                     "with the other {designs} final designs ({rounds} rounds x {repeat} repeats)")
PLANNED_SOURCE = "planned: TVM static memory planning of the fp32 build"
PLANNED_GENERIC_SOURCE = ("planned: TVM static memory planning of the fp32 model for a generic llvm target "
                          "(not the profile's own build; GPU plans may differ)")
INT8_SHARE_SOURCE = ("estimated: TVM-planned fp32 activation bytes x {share:.3f}, the byte share of conv inputs "
                     "once int8 layers read 1-byte activations")


def set_export_mode(model: nn.Module) -> None:
    """What ultralytics' exporter sets on the head: a single concatenated output tensor."""
    for module in model.modules():
        if isinstance(module, Detect):
            module.export, module.format, module.dynamic = True, "onnx", False
            module.shape = None  # drop anchors cached for another input size


def relax_module(module: nn.Module, example_inputs: tuple):
    """torch.export -> Relax with weights embedded as constants: the one frontend every build uses."""
    with torch.no_grad():
        exported = torch.export.export(module.eval(), example_inputs)
    return from_exported_program(exported, keep_params_as_input=False, unwrap_unit_return_tuple=True)


def _tvm_threads() -> int:
    """TVM's thread-pool size as its runtime reports it (evaluate.py asks for one before the first run)."""
    return tvm.runtime.num_threads()


def float_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` as the fp32 build computes it: without activation fake-quant."""
    model = copy.deepcopy(model)
    remove_input_quantizers(model)
    return model


def export_for_tvm(model: nn.Module, imgsz: int):
    """A Relax IRModule of the model's inference graph (one output tensor)."""
    set_export_mode(model)
    return relax_module(model, (torch.zeros(1, 3, imgsz, imgsz),))


def relax_pipeline(target, *, schedule: bool, capture: dict, database=None):
    """TVM's CPU pipeline (library dispatch, legalize, fuse, lower, plan memory, finalize) with two
    changes: edgesearch's tuning-free schedule after fusion, and no FoldConstant (it compiled and ran
    every constant subgraph: +1.5-3 s per YOLOv8n build, no latency gain). The module right after
    static memory planning is kept in `capture["planned"]` for the activation count. With a
    MetaSchedule `database`, kernels found there get their tuned schedule and the rest the fixed
    one (constants folded first, as tuning.py extracted the tasks, so the kernels match)."""
    @tvm.transform.module_pass(opt_level=0, name="KeepPlannedModule")
    def keep_planned(mod, ctx):
        capture["planned"] = mod
        return mod

    @tvm.transform.module_pass(opt_level=0, name="CountTunedKernels")
    def count_tuned(mod, ctx):
        capture["tuned_kernels"] = sum(1 for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
                                       and f.attrs and f.attrs.get("tirx.is_scheduled", 0))
        return mod

    @tvm.transform.module_pass(opt_level=0, name="EdgesearchPipeline")
    def pipeline(mod, ctx):
        with target, database if database is not None else contextlib.nullcontext():
            passes = [*cpu.library_dispatch_passes(target), relax.transform.LegalizeOps(),
                      relax.transform.AnnotateTIROpPattern()]
            if database is not None:
                passes.append(relax.transform.FoldConstant())
            passes += [relax.transform.FuseOps(), relax.transform.FuseTIR()]
            if database is not None:
                passes += [relax.transform.MetaScheduleApplyDatabase(), count_tuned]
            if schedule:
                passes.append(cpu_schedule_pass(capture.setdefault("unscheduled", [])))
            plan, *finalize = cpu.finalize_passes(target)  # the first one is StaticPlanBlockMemory
            passes += [*cpu.dataflow_lower_passes(target), plan, keep_planned, *finalize]
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def planned_activation_bytes(planned_mod) -> int:
    """Activation memory after TVM's static memory planning: the planned storage pools plus the
    tensors left unplanned (the function's output). Weights and the input are not included."""
    storage_ops = (tvm.ir.Op.get("relax.memory.alloc_storage"), tvm.ir.Op.get("relax.vm.alloc_storage"))
    tensor_op = tvm.ir.Op.get("relax.builtin.alloc_tensor")
    total = 0

    def visit(expr):
        nonlocal total
        if isinstance(expr, relax.Call) and any(expr.op.same_as(op) for op in storage_ops):
            total += int(expr.args[0].values[0])
        elif isinstance(expr, relax.Call) and expr.op.same_as(tensor_op):
            dtype = tvm.DataType(expr.args[1].value)
            elements = 1
            for dim in expr.args[0].values:
                elements *= int(dim)
            total += elements * (dtype.bits * dtype.lanes + 7) // 8

    relax.analysis.post_order_visit(planned_mod["main"], visit)
    return total


def build_local(mod, target: dict) -> tuple[object, dict]:
    """Compile for this machine: (executable, {build_s, activation_bytes, unscheduled_kernels})."""
    capture: dict = {}
    target = tvm.target.Target(target)
    start = time.perf_counter()
    executable = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target, schedule=True, capture=capture))
    return executable, {
        "build_s": time.perf_counter() - start,
        "activation_bytes": planned_activation_bytes(capture["planned"]),
        "unscheduled_kernels": capture["unscheduled"],
    }


def plan_memory_only(mod) -> int:
    """Activation bytes from memory planning alone, without code generation (tuned builds and
    device profiles). Planned for a generic llvm target: the plan does not depend on kernel
    schedules (a test checks it); for GPU targets it may differ (not checked)."""
    capture: dict = {}
    target = tvm.target.Target({"kind": "llvm"})
    relax_pipeline(target, schedule=False, capture=capture)(mod)
    return planned_activation_bytes(capture["planned"])


def measure_latency_local(executable, imgsz: int, *, repeat: int = 20, min_repeat_ms: int = 50) -> dict:
    """Median and spread of the compiled module's latency on this machine (TVM time evaluator)."""
    device = tvm.cpu()
    vm = relax.VirtualMachine(executable, device)
    data = tvm.runtime.tensor(np.zeros((1, 3, imgsz, imgsz), dtype="float32"), device)
    timer = vm.time_evaluator("main", device, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    times_ms = [t * 1e3 for t in timer(data).results]
    return {"latency_ms": statistics.median(times_ms), "latency_spread_ms": max(times_ms) - min(times_ms)}


def _remote_latency(mod, profile: HardwareProfile, imgsz: int, costs, packed: int, library_path: str | None) -> dict:
    """Measured over RPC when the profile's device is registered with its tracker, else estimated."""
    from edgesearch.runners.hardware.cross_build import build_library  # it builds on relax_pipeline above

    unavailable = device_unavailable_reason(profile)
    result: dict = {}
    if unavailable is None or library_path:
        with tempfile.TemporaryDirectory() as folder:
            library = Path(library_path or Path(folder) / "model.so")
            built = build_library(mod, profile, library, check_kernels=False)
            result.update(build_s=built["build_s"], library_bytes=built["size_bytes"])
            if unavailable is None:
                return {**result, **measure_latency_rpc(library, profile, (1, 3, imgsz, imgsz))}
    estimate = roofline_latency_ms(costs, profile.peak_ops_per_s["fp32"], profile.memory_bandwidth_bytes_per_s,
                                   packed, ACTIVATION_DTYPE_BYTES)
    return {**result, "latency_ms": estimate, "latency_source": f"{ESTIMATED_SOURCE}: {unavailable}"}


def remeasure_interleaved(models: dict[str, nn.Module], profile: HardwareProfile, imgsz: int, *,
                          rounds: int = 8, repeat: int = 5) -> dict[str, dict]:
    """Latency of several designs timed in interleaved rounds on this machine (build each once,
    then round after round time every design in turn), so slow drifts of a shared machine hit all
    designs alike. Median and spread over all rounds; ratios between designs are the robust part."""
    if profile.measurement != "local":
        raise ValueError(f"profile {profile.name} is not measured on this machine")
    vms = {}
    for name, model in models.items():
        executable, _ = build_local(export_for_tvm(float_copy(model), imgsz), profile.target)
        vms[name] = relax.VirtualMachine(executable, tvm.cpu())
    data = tvm.runtime.tensor(np.zeros((1, 3, imgsz, imgsz), dtype="float32"), tvm.cpu())
    times: dict[str, list[float]] = {name: [] for name in vms}
    for _ in range(rounds):
        for name, vm in vms.items():
            timer = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat, min_repeat_ms=10)
            times[name] += [t * 1e3 for t in timer(data).results]
    source = REMEASURED_SOURCE.format(threads=_tvm_threads(), designs=len(vms),
                                      rounds=rounds, repeat=repeat)
    return {name: {"latency_ms": statistics.median(ms), "latency_spread_ms": max(ms) - min(ms), "latency_source": source}
            for name, ms in times.items()}


def hardware_scores(model: nn.Module, profile: HardwareProfile, imgsz: int, *, tune_trials: int = 0,
                    tuning_db: str | None = None, library_path: str | None = None) -> dict:
    """Latency (with its source), SRAM footprint and sizes of a transformed (baked) model.

    x86-host: built here and timed with the time evaluator (`tune_trials` > 0: MetaSchedule-tuned,
    database in `tuning_db`; else the fixed schedule). RPC profiles: when the tracker has the
    device, the model is cross-built for it (cross_build.py) and timed over TVM RPC; otherwise the
    latency is a roofline estimate that says why no device was used. `library_path` also writes
    the deployable library there (built even when no device is reachable)."""
    costs = layer_costs(model, (1, 3, imgsz, imgsz))
    packed = weight_bytes(model)
    byte_share = activation_byte_share(model, torch.zeros(1, 3, imgsz, imgsz))
    mod = export_for_tvm(float_copy(model), imgsz)
    latency: dict
    if profile.measurement == "rpc":
        activations = plan_memory_only(mod)
        latency = _remote_latency(mod, profile, imgsz, costs, packed, library_path)
    elif tune_trials > 0:
        executable, build = tune_and_build(mod, profile.target, Path(tuning_db), tune_trials)
        activations = plan_memory_only(mod)  # planning does not depend on the kernels' schedules
        with timing_turn() as turn:
            latency = {**measure_latency_local(executable, imgsz), **build}
        latency["latency_source"] = (TUNED_SOURCE.format(trials=tune_trials, threads=_tvm_threads())
                                     + SHARED_NOTE.format(others=turn["others"]))
    else:
        executable, build = build_local(mod, profile.target)
        activations = build["activation_bytes"]
        with timing_turn() as turn:
            latency = {**measure_latency_local(executable, imgsz), "build_s": build["build_s"],
                       "unscheduled_kernels": len(build["unscheduled_kernels"])}
        latency["latency_source"] = LOCAL_SOURCE.format(threads=_tvm_threads()) + SHARED_NOTE.format(
            others=turn["others"])
    if library_path and profile.measurement != "rpc":
        from edgesearch.runners.hardware.cross_build import export_atomically

        latency["library_bytes"] = export_atomically(executable, Path(library_path)).stat().st_size
    activation_source = PLANNED_SOURCE if profile.measurement == "local" else PLANNED_GENERIC_SOURCE
    if byte_share < 1.0:
        activations = math.ceil(activations * byte_share)
        activation_source = INT8_SHARE_SOURCE.format(share=byte_share)
    return {
        "weight_bytes": packed,
        "activation_bytes": activations,
        "activation_bytes_source": activation_source,
        "sram_bytes": packed + activations,
        "fits_sram": packed + activations <= profile.sram_bytes,
        "params": sum(p.numel() for p in model.parameters()),
        "flops": sum(c.flops for c in costs),
        **latency,
    }
