"""Hardware scores of a transformed model: TVM build, latency, SRAM footprint.

Pipeline: torch.export -> TVM Relax (from_exported_program, weights embedded as constants) ->
tvm.compile for the profile's target. Latency is measured with TVM's time evaluator when the
profile is this machine; for remote profiles without a reachable device it is a roofline estimate
from the profile's peak rates, and says so. SRAM footprint = packed weight bytes (at the
candidate's bit-widths) + peak activation bytes from TVM's static memory planning.

The build computes in fp32 whatever the weight bit-widths: quantized weights change the stored
size (and on integer hardware the speed), not this build's arithmetic. Latency therefore depends
on the architecture (pruning, kernel sizes), never on bit-widths.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from torch import nn

from edgesearch.runners.costs import layer_costs, roofline_latency_ms
from edgesearch.runners.profiles import HardwareProfile
from edgesearch.spaces.apply import weight_bytes
from edgesearch.spaces.candidate import Candidate

ACTIVATION_DTYPE_BYTES = 4  # activations stay fp32 in this build


def export_for_tvm(model: nn.Module, imgsz: int):
    """A Relax IRModule of the model's inference graph (one output tensor)."""
    import tvm  # noqa: F401  (imported lazily: heavy)
    from tvm.relax.frontend.torch import from_exported_program

    from ultralytics.nn.modules.head import Detect

    for module in model.modules():  # what ultralytics' exporter sets: a single concatenated output
        if isinstance(module, Detect):
            module.export, module.format, module.dynamic = True, "onnx", False
    example = torch.zeros(1, 3, imgsz, imgsz)
    with torch.no_grad():
        exported = torch.export.export(model.eval(), (example,))
    return from_exported_program(exported, keep_params_as_input=False, unwrap_unit_return_tuple=True)


def planned_activation_bytes(mod, target) -> int:
    """Bytes of intermediate storage after TVM's static memory planning (the activation peak)."""
    import tvm
    from tvm import relax

    lowered = tvm.ir.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
    ])(mod)
    total = 0

    @relax.expr_functor.visitor
    class StorageCounter(relax.PyExprVisitor):
        def visit_call_(self, call):
            nonlocal total
            if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.memory.alloc_storage":
                total += int(call.args[0].values[0])
            super().visit_call_(call)

    with tvm.target.Target(target):
        StorageCounter().visit_expr(lowered["main"])
    return total


def measure_latency_local(mod, target: dict, imgsz: int, *, repeat: int = 10, min_repeat_ms: int = 100) -> dict:
    """Median and spread of the compiled module's latency on this machine (TVM time evaluator)."""
    import tvm
    from tvm import relax

    start = time.perf_counter()
    executable = tvm.compile(mod, target=tvm.target.Target(target))
    build_s = time.perf_counter() - start
    device = tvm.cpu()
    vm = relax.VirtualMachine(executable, device)
    data = tvm.runtime.tensor(np.zeros((1, 3, imgsz, imgsz), dtype="float32"), device)
    timer = vm.time_evaluator("main", device, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    times_ms = [t * 1e3 for t in timer(data).results]
    return {
        "latency_ms": statistics.median(times_ms),
        "latency_spread_ms": max(times_ms) - min(times_ms),
        "build_s": build_s,
    }


def hardware_scores(model: nn.Module, candidate: Candidate, profile: HardwareProfile, imgsz: int) -> dict:
    """Latency (with its source), SRAM footprint and sizes of a transformed (baked) model."""
    costs = layer_costs(model, (1, 3, imgsz, imgsz))
    packed = weight_bytes(model, candidate)
    mod = export_for_tvm(model, imgsz)
    activations = planned_activation_bytes(mod, profile.target)
    scores = {
        "weight_bytes": packed,
        "activation_bytes": activations,
        "sram_bytes": packed + activations,
        "fits_sram": packed + activations <= profile.sram_bytes,
        "params": sum(p.numel() for p in model.parameters()),
        "flops": sum(c.flops for c in costs),
    }
    if profile.measurement == "local":
        measured = measure_latency_local(mod, profile.target, imgsz)
        scores.update(measured, latency_source="measured: TVM llvm build (untuned, fp32), time evaluator median")
    else:
        scores["latency_ms"] = roofline_latency_ms(costs, profile.peak_ops_per_s["fp32"],
                                                   profile.memory_bandwidth_bytes_per_s, packed, ACTIVATION_DTYPE_BYTES)
        scores["latency_source"] = "estimated: roofline from profile peak fp32 rate and bandwidth (no device reachable)"
    return scores
