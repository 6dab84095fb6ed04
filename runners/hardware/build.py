"""The TVM build pipeline every hardware figure uses: PyTorch model -> Relax -> compiled module.

    export_for_tvm(model, imgsz, target)   torch.export -> Relax (from_exported_program), weights
                                           embedded as constants; integer_model.py's custom ops
                                           become integer kernels for the target's family
                                           (integer_kernels.convert_map)
    relax_pipeline(target, ...)            TVM's CPU pipeline with edgesearch's fixed schedule
    build_local / plan_memory_only         compile for this machine / plan activation memory only
    measure_latency_local                  TVM's time evaluator

scores.py (the scores), cross_build.py (device libraries), tuning.py (MetaSchedule) and
layer_table.py (per-block timings) build on this module; it imports none of them.

A float build exports `float_copy(model)` (activation fake-quant removed); an integer build
exports `integer_model.integer_copy(model)` (int8 convs as integer ops, see integer_model.py).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time

import numpy as np
import torch
import tvm
from torch import nn
from tvm import relax, topi
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.relax.frontend.torch import from_exported_program
from ultralytics.nn.modules.head import Detect

from edgesearch.runners.hardware import integer_kernels
from edgesearch.runners.hardware.tvm_schedule import cpu_schedule_pass
from edgesearch.spaces.activations import remove_input_quantizers

GENERIC_TARGET = {"kind": "llvm"}


def set_export_mode(model: nn.Module) -> None:
    """What ultralytics' exporter sets on the head: a single concatenated output tensor."""
    for module in model.modules():
        if isinstance(module, Detect):
            # ultralytics declares Detect.format = None (unannotated): mypy takes its type to be None
            module.export, module.format, module.dynamic = True, "onnx", False  # type: ignore[assignment]
            module.shape = None  # drop anchors cached for another input size


def relax_module(module: nn.Module, example_inputs: tuple, target: dict | None = None):
    """torch.export -> Relax with weights embedded as constants: the one frontend every build uses.
    Integer ops (integer_model.py) become integer kernels laid out for `target`'s family."""
    with torch.no_grad():
        exported = torch.export.export(module.eval(), example_inputs)
    custom = {}
    if integer_kernels.has_integer_ops(exported):
        custom.update(integer_kernels.convert_map(exported, target or GENERIC_TARGET))
    if has_half_convs(exported):
        custom.update({"conv2d.default": _half_aware_conv2d, "convolution.default": _half_aware_conv2d})
    return from_exported_program(exported, keep_params_as_input=False, unwrap_unit_return_tuple=True,
                                 custom_convert_map=custom or None)


def has_half_convs(exported) -> bool:
    """Whether the graph has convs on fp16 inputs (integer_model.HalfConv2d: fp16 compute)."""
    return any(node.op == "call_function" and "conv" in str(node.target)
               and getattr(node.args[0].meta.get("val"), "dtype", None) == torch.float16
               for node in exported.graph.nodes)


def _half_aware_conv2d(node, importer):
    """aten.conv2d / aten.convolution as TVM's frontend imports them, except on fp16 inputs: the
    frontend fixes every conv's out_dtype to float32 (fp32 arithmetic on half inputs); an fp16 conv
    keeps float16, so the target computes in half precision, as an fp16 engine (TensorRT) does."""
    general = "convolution" in str(node.target)  # aten.convolution: (x, w, b, stride, padding, dilation, transposed, _, groups)
    args = importer.retrieve_args(node)
    x, weight = args[0], args[1]
    if str(x.ty.dtype) != "float16":
        return importer._convolution(node) if general else importer._conv2d(node)
    bias = args[2] if len(args) > 2 else None
    stride, padding, dilation = list(args[3:6]) + [1, 0, 1][len(args[3:6]):]
    groups_at = 8 if general else 6
    groups = args[groups_at] if len(args) > groups_at else 1
    conv = importer.block_builder.emit(relax.op.nn.conv2d(
        x, weight, strides=stride, padding=padding, dilation=dilation, groups=groups, data_layout="NCHW",
        kernel_layout="OIHW", out_dtype="float16"))
    if bias is None:
        return conv
    return importer.block_builder.emit(relax.op.add(conv, relax.op.reshape(bias, (1, -1, 1, 1))))


def tvm_threads() -> int:
    """TVM's thread-pool size as its runtime reports it (evaluate.py asks for one before the first run)."""
    return tvm.runtime.num_threads()


def float_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` as the fp32 build computes it: without activation fake-quant."""
    model = copy.deepcopy(model)
    remove_input_quantizers(model)
    return model


def export_for_tvm(model: nn.Module, imgsz: int, target: dict | None = None):
    """A Relax IRModule of the model's inference graph (one output tensor); `target` decides the
    weight layout of integer kernels, if the model has any."""
    set_export_mode(model)
    return relax_module(model, (torch.zeros(1, 3, imgsz, imgsz),), target)


def _fast_sigmoid(bb, call):
    return bb.call_te(lambda x: 1.0 / (1.0 + topi.fast_exp(-x)), call.args[0], primfunc_name_hint="fast_sigmoid")


def _fast_softmax(bb, call):
    return bb.call_te(topi.nn.fast_softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="fast_softmax")


# Sigmoid (every SiLU) and the head's softmax legalize to `exp`, which LLVM lowers to one libm call
# per element even in vectorized loops: SiLU epilogues cost more than some convs (a 1x1 conv at
# 32x32: 0.6 ms, most of it exp). TOPI's fast_exp (range reduction + polynomial, vectorizes)
# instead; its relative error is ~1e-7, below fp32 accumulation noise.
FAST_MATH_LEGALIZATION = {"relax.sigmoid": _fast_sigmoid, "relax.nn.softmax": _fast_softmax}


def relax_pipeline(target, *, schedule: bool, capture: dict, database=None):
    """TVM's CPU pipeline (library dispatch, legalize, fuse, lower, plan memory, finalize) with two
    changes: edgesearch's tuning-free schedule after fusion, sigmoid and softmax legalized with fast_exp
    (FAST_MATH_LEGALIZATION), and no FoldConstant (it compiled and ran every constant subgraph:
    +1.5-3 s per YOLOv8n build, no latency gain). The module right after
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
            passes = [*cpu.library_dispatch_passes(target), relax.transform.LegalizeOps(FAST_MATH_LEGALIZATION),
                      relax.transform.AnnotateTIROpPattern()]
            if database is not None:
                passes.append(relax.transform.FoldConstant())
            passes += [relax.transform.FuseOps(), relax.transform.FuseTIR()]
            if database is not None:
                passes += [relax.transform.MetaScheduleApplyDatabase(), count_tuned]
            if schedule:
                passes.append(cpu_schedule_pass(capture.setdefault("unscheduled", []), target,
                                                capture.setdefault("serial", [])))
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
    """Compile for this machine: (executable, {build_s, activation_bytes, unscheduled_kernels, serial_blocks})."""
    capture: dict = {}
    target = tvm.target.Target(target)
    start = time.perf_counter()
    executable = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target, schedule=True, capture=capture))
    return executable, {
        "build_s": time.perf_counter() - start,
        "activation_bytes": planned_activation_bytes(capture["planned"]),
        "unscheduled_kernels": capture["unscheduled"],
        "serial_blocks": capture["serial"],
    }


def plan_memory_only(mod) -> int:
    """Activation bytes from memory planning alone, without code generation (tuned builds and
    device profiles). Planned for a generic llvm target: the plan does not depend on kernel
    schedules (a test checks it); for GPU targets it may differ (not checked)."""
    capture: dict = {}
    target = tvm.target.Target(GENERIC_TARGET)
    relax_pipeline(target, schedule=False, capture=capture)(mod)
    return planned_activation_bytes(capture["planned"])


def measure_latency_local(executable, imgsz: int, *, repeat: int = 20, min_repeat_ms: int = 50) -> dict:
    """Median and spread of the compiled module's latency on this machine (TVM time evaluator).
    `executable`: as built (linked here, seconds of CPU) or already linked (a loaded library)."""
    device = tvm.cpu()
    vm = relax.VirtualMachine(executable, device)
    data = tvm.runtime.tensor(np.zeros((1, 3, imgsz, imgsz), dtype="float32"), device)
    timer = vm.time_evaluator("main", device, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    times_ms = [t * 1e3 for t in timer(data).results]
    return {"latency_ms": statistics.median(times_ms), "latency_spread_ms": max(times_ms) - min(times_ms)}


def module_sources(executable, kind: str, source_format: str) -> list[str]:
    """The code of every module of `kind` (llvm, cuda) an executable carries, e.g. its assembly
    ("asm") or CUDA source ("cuda"): what tests and checks read to see which instructions it uses."""
    pending, sources = [executable.mod], []
    while pending:
        module = pending.pop()
        if module.kind == kind:
            sources.append(module.inspect_source(source_format))
        pending.extend(module.imports)
    return sources
