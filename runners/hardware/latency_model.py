"""Calibrated latency estimates that state their error (issue 17, item 2).

A device profile's latency, when no device is reached, is estimated from the work a network does
(network_work) with a model fitted to measured latencies of whole networks (the profile YAML's
`latency_model.points`: public figures for the devices, builds measured here for x86-host):

    latency = host_ms
            + sum over convs   max(FLOPs / (peak[p] * eff_p * u ** util_exp), bytes / (bandwidth * eff_mem))
            + sum over non-conv ops   bytes / (bandwidth * eff_mem)   (+ their few matmul FLOPs at fp32)
            + kernels * overhead_ms

  p        the conv's compute precision (fp32 / fp16 / int8), its peak from the profile
  eff_p    compute efficiency per precision class; eff_mem the memory efficiency
  u        the share of the vector unit the runtime's schedule gives the conv's shape, where it is
           known (`schedule: tvm-cpu`, tvm_cpu_utilization: edgesearch's own fixed TVM schedule);
           1 otherwise. util_exp says how much of that shows in the time (fitted)
  bytes    a conv reads its weights and input and writes its output at its precision's bytes
           (fp32 4, fp16 2, int8 1; an int8 conv's output at `int8_output_bytes`, the runtime's
           epilogue): weights stored in fewer bits are dequantized at load, so they save memory,
           not time
  kernels  as the runtime launches them: conv (or linear) + bias/BN + activation fused into one,
           plus each non-conv op that moves data (concat, upsample, max-pool, global pooling, split,
           add, an SE block's scaling multiply, the Detect head's decode: softmax, transposes,
           arithmetic); views and precision casts launch nothing, a channel shuffle (transpose then
           contiguous copy) is one kernel, an adaptive pooling to the size it already has none
  overhead per-kernel launch / dispatch cost (a Jetson's A57 host queuing ~100 kernels; a CPU
           runtime's per-op scheduling), host_ms a per-inference constant (rarely freed). With
           `launch_overlap: true` (a GPU whose host queues kernels while it runs) the launches
           overlap the device's work: latency = host_ms + max(device work, kernels * overhead_ms)

The parameters a profile frees are listed in its YAML (`free`, at most points - 2 of them); the
rest keep their value (`fixed`, else 1 for an efficiency, 0 for an overhead; an efficiency of a
precision no point exercises is tied to that of the profile's own precision, `means.precision`).
They are fitted with scipy.optimize.least_squares in log space (log of each parameter, residuals
log(estimate / measured)), from several starts. Leave-one-out: each point is predicted by a refit
without it; the median and the 90th percentile of |estimate / measured - 1| are the stated error,
and the label of every estimate carries "± p90". A profile with fewer than MIN_POINTS fitted points
is "uncalibrated": its estimate is still returned (fitted with at most points - 2 parameters, or
the plain roofline with whatever the YAML fixes from measurements), labelled so, without an error.

A point names its network by an ultralytics model YAML (yolov8n.yaml, search/yolov8-tiny.yaml) or a
torchvision classifier (`torchvision:resnet18`, with an optional `num_classes` for its head): public
figures for a device are mostly of classifiers. Both are traced on torch's meta device (shapes only);
a BatchNorm after a conv is that conv's epilogue (no kernel, no bytes), as a runtime folds it.

A user's own device timings (search calibrate, search/calibrate.py) refit only REFIT_FREE: one
factor scaling every efficiency (clocks, power mode, runtime version) and the per-kernel overhead;
everything else keeps the shipped fit. The refit lives in cache_root()/calibration/<profile>.json
and calibration_for() prefers it, naming it in the label.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from edgesearch.common.cache import cache_root
from edgesearch.common.errors import InputError
from edgesearch.common.files import write_text_atomically

WORK_VERSION = 3  # bump when network_work counts differently: cached point works are recounted
FIT_VERSION = 3  # bump when the model form or the fit changes: cached shipped fits are refitted
MIN_POINTS = 6  # fewer fitted points: "uncalibrated"
PRECISIONS = ("fp32", "fp16", "int8")
PRECISION_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
EFFICIENCIES = tuple(f"eff_{p}" for p in PRECISIONS) + ("eff_mem",)
# util_exp: how strongly a conv's time follows the vector utilization its shape gets from the runtime's
# schedule (ModelOptions.schedule; 1 = in proportion, 0 = not at all); no effect without a schedule
PARAMETERS = EFFICIENCIES + ("overhead_ms", "host_ms", "util_exp")
DEFAULTS = {**{name: 1.0 for name in EFFICIENCIES}, "overhead_ms": 0.0, "host_ms": 0.0, "util_exp": 1.0}
# log-space bounds of the fit: efficiencies relative to the profile's peaks, overheads in ms
BOUNDS = {**{name: (1e-3, 10.0) for name in EFFICIENCIES}, "overhead_ms": (1e-6, 10.0), "host_ms": (1e-6, 1e3),
          "util_exp": (1e-2, 3.0), "scale": (1e-2, 1e2)}
# what `search calibrate` may change with a user's >= 5 timings: every efficiency by one factor, and the
# per-kernel overhead. Memory efficiency relative to compute, the per-precision ratios and host_ms
# keep the shipped fit (5 points cannot separate them).
REFIT_FREE = ("scale", "overhead_ms")
REFIT_MIN_POINTS = 5
# model YAMLs named by a relative path (search/yolov8-tiny.yaml) are relative to the folder that holds
# search/: the repository in a checkout, site-packages/edgesearch/ installed (the YAML is package data)
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------- the work


@dataclasses.dataclass
class ConvWork:
    name: str
    flops: int
    weight_elements: int
    input_elements: int
    output_elements: int
    precision: str
    groups: int = 1
    # the shape, for a runtime whose efficiency depends on it (ModelOptions.schedule); 0 = not recorded
    in_channels: int = 0
    out_channels: int = 0
    out_height: int = 0
    out_width: int = 0
    kernel: int = 0  # kh * kw
    stride: int = 0


@dataclasses.dataclass
class OpWork:
    """Non-conv ops of one kind, summed: `kind` is the aten op (prefixed `detect.` inside the head)."""
    kind: str
    kernels: int = 0
    elements: dict = dataclasses.field(default_factory=dict)  # {precision: elements read + written}
    flops: int = 0  # matmuls (attention): 2 x MACs


@dataclasses.dataclass
class NetworkWork:
    imgsz: int
    convs: list[ConvWork]
    ops: list[OpWork]
    version: int = WORK_VERSION

    @property
    def flops(self) -> int:
        return sum(c.flops for c in self.convs) + sum(o.flops for o in self.ops)

    @property
    def kernels(self) -> int:
        return len(self.convs) + sum(o.kernels for o in self.ops)

    def to_json(self) -> dict:
        return {"version": self.version, "imgsz": self.imgsz,
                "convs": [dataclasses.astuple(c) for c in self.convs],
                "ops": [dataclasses.asdict(o) for o in self.ops]}

    @classmethod
    def from_json(cls, raw: dict) -> NetworkWork:
        try:
            return cls(imgsz=int(raw["imgsz"]), convs=[ConvWork(*row) for row in raw["convs"]],
                       ops=[OpWork(**op) for op in raw["ops"]], version=int(raw.get("version", 0)))
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"network work record is malformed ({error})") from None


# aten ops that launch nothing: views, precision casts (fp16 rounding, fake quantization: a real
# runtime computes in the precision instead) and creation ops
_NO_KERNEL = {"view", "_unsafe_view", "reshape", "_reshape_alias", "unsqueeze", "squeeze", "expand", "slice",
              "select", "alias", "detach", "as_strided", "t", "unflatten", "flatten", "lift_fresh", "_to_copy", "to",
              "fake_quantize_per_tensor_affine", "fake_quantize_per_channel_affine",
              "fake_quantize_per_tensor_affine_cachemask", "fake_quantize_per_channel_affine_cachemask",
              "_fake_quantize_per_tensor_affine_cachemask_tensor_qparams", "quantize_per_tensor", "dequantize",
              "round", "empty", "empty_like", "zeros", "zeros_like", "ones", "full", "new_full", "new_zeros",
              "new_empty", "arange", "_local_scalar_dense", "unbind"}
# ops whose output holds no activation values even when an activation is an argument (its shape, device,
# dtype): e.g. the Detect head's anchor grid, built by feats.new_full(...), which a runtime folds into a constant
_CREATION = {"new_full", "new_zeros", "new_ones", "new_empty", "empty_like", "zeros_like", "ones_like", "full_like",
             "arange", "_local_scalar_dense"}
# elementwise epilogues a runtime fuses into the conv (or linear) that produced their input
_FUSED_EPILOGUE = {"silu", "silu_", "relu", "relu_", "sigmoid", "sigmoid_", "hardswish", "hardswish_", "leaky_relu",
                   "leaky_relu_", "gelu", "hardsigmoid", "hardsigmoid_", "mish", "mish_", "clamp", "clamp_",
                   "hardtanh", "hardtanh_", "_native_batch_norm_legit_no_training", "native_batch_norm",
                   "batch_norm", "_native_batch_norm_legit"}
_ACTIVATION, _CONV_OUTPUT = "_edgesearch_activation", "_edgesearch_conv_output"
_TRANSPOSED = "_edgesearch_transposed"  # the output of a counted transpose: its contiguous copy is that same kernel
_ADAPTIVE_POOL = {"_adaptive_avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"}


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops that act on activations (tensors derived from the input image), outside
    convs and linears, as kernels a runtime launches (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = {"conv": 0, "detect": 0}
        self.precision = "fp32"  # of the conv that ran last: the precision its consumers move data in
        self.ops: dict[str, OpWork] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in _tensors((args, kwargs or {})) if getattr(t, _ACTIVATION, False)]
        name = func.overloadpacket.__name__
        if not inputs or name in _CREATION:
            return out
        # a conv's output stays one through its fused epilogue and through views and casts of it
        conv_output = name == "convolution" or (
            (name in _FUSED_EPILOGUE or name in _NO_KERNEL) and getattr(inputs[0], _CONV_OUTPUT, False))
        for tensor in _tensors(out):
            setattr(tensor, _ACTIVATION, True)
            if conv_output:
                setattr(tensor, _CONV_OUTPUT, True)
        if self.depth["conv"] or conv_output or name in _NO_KERNEL:
            return out
        # a channel shuffle (view, transpose, contiguous, view) moves the data once: the transpose is counted,
        # the copy that makes it contiguous is the same pass; an adaptive pooling to the size its input
        # already has (VGG's 7x7 pool of a 7x7 map) is an identity a runtime drops
        if (name == "clone" and getattr(inputs[0], _TRANSPOSED, False)) or (
                name in _ADAPTIVE_POOL and isinstance(out, torch.Tensor) and out.shape == inputs[0].shape):
            return out
        if name == "transpose":
            for tensor in _tensors(out):
                setattr(tensor, _TRANSPOSED, True)
        kind = ("detect." if self.depth["detect"] else "") + name
        op = self.ops.setdefault(kind, OpWork(kind))
        op.kernels += 1
        moved = sum(t.numel() for t in inputs) + sum(t.numel() for t in _tensors(out))
        op.elements[self.precision] = op.elements.get(self.precision, 0) + moved
        if name in ("bmm", "mm", "addmm", "baddbmm"):  # (..., M, K) @ (..., K, N): 2 x M x K x N per batch
            a, b = [t for t in _tensors(args) if t.dim() >= 2][-2:]
            op.flops += 2 * a.numel() * b.shape[-1]
        return out


def _lookup(precisions: dict[str, str], name: str) -> str:
    """A conv's precision by its name, or by its parent's (a factorized conv X is X.0 and X.1)."""
    while name:
        if name in precisions:
            return precisions[name]
        name = name.rpartition(".")[0]
    return "fp32"


def network_work(model: nn.Module, imgsz: int, precisions: dict[str, str] | None = None) -> NetworkWork:
    """The work of one forward pass of `model` on a (1, 3, imgsz, imgsz) input: per conv / linear its
    FLOPs (2 x MACs), weight, input and output elements and compute precision (from `precisions`,
    {conv name: fp32 | fp16 | int8}, by name or the name of its parent; fp32 where absent), and the
    non-conv ops as kernels and elements moved. The model runs in eval mode on a zero image (or on
    torch's meta device, when its parameters live there: shapes only, nothing computed)."""
    precisions = precisions or {}
    convs: list[ConvWork] = []
    counter = _OpCounter()
    handles = []

    def enter(kind):
        def hook(module, args):
            counter.depth[kind] += 1
        return hook

    def leave(kind, name=None):
        def hook(module, args, output):
            counter.depth[kind] -= 1
            if name is None:
                return
            if isinstance(output, torch.Tensor):  # a linear's output, like a conv's, takes its bias and activation in the same kernel
                setattr(output, _CONV_OUTPUT, True)
            out_elems = output.numel() // output.shape[0]
            if isinstance(module, nn.Conv2d):
                macs = out_elems * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
            else:
                macs = out_elems * module.in_features
            precision = _lookup(precisions, name)
            counter.precision = precision
            if isinstance(module, nn.Conv2d):
                shape = dict(in_channels=module.in_channels, out_channels=module.out_channels,
                             out_height=output.shape[2], out_width=output.shape[3],
                             kernel=module.kernel_size[0] * module.kernel_size[1], stride=module.stride[0])
            else:
                shape = dict(in_channels=module.in_features, out_channels=module.out_features)
            convs.append(ConvWork(name, 2 * macs, module.weight.numel(), args[0].numel() // args[0].shape[0],
                                  out_elems, precision, getattr(module, "groups", 1), **shape))
        return hook

    from ultralytics.nn.modules.head import Detect

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_pre_hook(enter("conv"), prepend=True))
            handles.append(module.register_forward_hook(leave("conv", name), always_call=True))
        elif isinstance(module, Detect):
            handles.append(module.register_forward_pre_hook(enter("detect"), prepend=True))
            handles.append(module.register_forward_hook(leave("detect"), always_call=True))
    device = next(model.parameters()).device
    image = torch.zeros(1, 3, imgsz, imgsz, device=device)
    setattr(image, _ACTIVATION, True)
    was_training = model.training
    try:
        with torch.no_grad(), counter:
            model.eval()(image)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return NetworkWork(imgsz=imgsz, convs=convs, ops=sorted(counter.ops.values(), key=lambda o: o.kind))


def model_work(model_name: str, imgsz: int, precision: str, num_classes: int | None = None) -> NetworkWork:
    """The work of an architecture named by an ultralytics model YAML (e.g. yolov8n.yaml, yolo11s.yaml)
    or a path relative to the package root (search/yolov8-tiny.yaml, also installed), or by
    `torchvision:<name>` (a torchvision classifier, e.g. torchvision:resnet18, its head of
    `num_classes` outputs, else its default), fused as every runtime runs it,
    with every conv (and linear) at `precision` except, for int8, the ones an integer kernel does not take
    (grouped convs, DFL's fixed decoding conv: they stay fp32, as in cost_basis.all_int8). No
    weights are read: the shapes are traced on torch's meta device. Cached in
    cache_root()/calibration/work/ (one trace per architecture, head and input size)."""
    work = _traced_work(model_name, imgsz, num_classes)
    convs = [dataclasses.replace(c, precision="fp32" if precision == "int8" and (c.groups != 1 or ".dfl." in f"{c.name}.")
                                 else precision) for c in work.convs]
    ops = [dataclasses.replace(o, elements={precision: sum(o.elements.values())}) for o in work.ops]
    return NetworkWork(imgsz=imgsz, convs=convs, ops=ops)


_TRACED: dict = {}
TORCHVISION = "torchvision:"  # a point's model named as torchvision:<name> (torchvision.models.get_model)


def _torchvision_model(model_name: str, num_classes: int | None) -> nn.Module:
    """A torchvision classifier built on torch's meta device (shapes only, no weights), in eval mode;
    GoogLeNet / Inception v3 without their training-only auxiliary heads."""
    import torchvision

    name = model_name[len(TORCHVISION):]
    known = set(torchvision.models.list_models(module=torchvision.models))
    if name not in known:
        raise InputError(f"{model_name}: torchvision has no classifier {name!r} (it has e.g. "
                         f"{', '.join(sorted(known)[:8])}, ...)")
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": int(num_classes)}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    with torch.device("meta"):
        return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def _traced_work(model_name: str, imgsz: int, num_classes: int | None = None) -> NetworkWork:
    path = ROOT / model_name
    text = path.read_text() if path.is_file() else model_name
    torchvision_model = model_name.startswith(TORCHVISION)
    if torchvision_model:
        import torchvision

        version, stem = torchvision.__version__, model_name[len(TORCHVISION):] + (f"-{num_classes}c" if num_classes else "")
        identity: list = [WORK_VERSION, "torchvision", version, model_name, num_classes, imgsz]
    else:
        import ultralytics

        stem = Path(model_name).stem
        identity = [WORK_VERSION, ultralytics.__version__, text, imgsz]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:12]
    if key in _TRACED:
        return _TRACED[key]
    cached = cache_root() / "calibration" / "work" / f"{stem}-{imgsz}-{key}.json"
    work = None
    if cached.is_file():
        with contextlib.suppress(ValueError, InputError, OSError):
            work = NetworkWork.from_json(json.loads(cached.read_text()))
    if work is None and torchvision_model:
        # eval mode: a BatchNorm after a conv is counted as that conv's epilogue (network_work), as folded
        work = network_work(_torchvision_model(model_name, num_classes), imgsz)
        write_text_atomically(cached, json.dumps(work.to_json()))
    if work is None:
        from ultralytics.nn.modules.head import Detect
        from ultralytics.nn.tasks import DetectionModel
        from ultralytics.utils import LOGGER

        level = LOGGER.level
        LOGGER.setLevel("ERROR")  # "no model scale passed" for a one-scale YAML
        try:
            # built on torch's meta device (shapes, no numbers: 3x faster for the large YOLOs); the head's
            # bias initialisation needs numbers and does not change a shape, so it is skipped
            with torch.device("meta"), mock.patch.object(Detect, "bias_init", lambda self: None):
                model = DetectionModel(str(path) if path.is_file() else model_name, verbose=False).eval()
        finally:
            LOGGER.setLevel(level)
        model.fuse(verbose=False)
        head = getattr(model, "model")[-1]  # Detect
        # its strides, which the anchor grid reads as numbers, from the sizes of the maps it receives
        head.stride = torch.ones(head.nl)
        sizes: list[int] = []
        handle = head.register_forward_pre_hook(lambda module, args: sizes.extend(x.shape[-1] for x in args[0]))
        with torch.no_grad():
            model(torch.zeros(1, 3, 256, 256, device="meta"))
        handle.remove()
        head.stride = torch.tensor([256.0 / size for size in sizes[:head.nl]])
        work = network_work(model, imgsz)
        write_text_atomically(cached, json.dumps(work.to_json()))
    _TRACED[key] = work
    return work


# ------------------------------------------------------------------------------ the estimate


SCHEDULES = ("", "tvm-cpu")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """What a profile's runtime does that is known, not fitted (YAML latency_model keys)."""
    int8_output_bytes: int = 1  # an int8 conv's output: 1 when the runtime requantizes (TensorRT), 4 for an fp32 epilogue (TVM here)
    launch_overlap: bool = False  # True: kernels are queued while the GPU runs (latency = max(GPU, launches)); False: added
    schedule: str = ""  # "tvm-cpu": edgesearch's fixed TVM CPU schedule, whose vector use depends on shapes (tvm_cpu_utilization)

    @classmethod
    def from_section(cls, section: dict) -> ModelOptions:
        schedule = str(section.get("schedule", ""))
        if schedule not in SCHEDULES:
            raise InputError(f"latency_model.schedule must be one of {SCHEDULES}, not {schedule!r}")
        return cls(int8_output_bytes=int(section.get("int8_output_bytes", 1)),
                   launch_overlap=bool(section.get("launch_overlap", False)), schedule=schedule)


def _vector_instructions(lanes: int, register: int) -> int:
    """Instructions LLVM needs for one `lanes`-wide vector: power-of-two pieces of at most `register`."""
    count = 0
    while lanes > 0:
        lanes -= min(register, 1 << (lanes.bit_length() - 1))
        count += 1
    return count


def tvm_cpu_utilization(conv: ConvWork) -> float:
    """The share of the vector unit a conv uses under edgesearch's fixed TVM CPU schedule
    (runners/hardware/tvm_schedule.py, integer_kernels.py), known from its shape, not fitted:
      fp32: the output row is vectorized along W by 16, 8 or 4 lanes (whichever divides W), else by W
            itself (<= 32) or a divisor; a 1x1 stride-1 conv is a GEMM over H*W when 16, 32 or 8 lanes
            tile it. A vector of L lanes costs as many 16-lane instructions as its power-of-two pieces:
            at 160 px YOLOv8's 20x20 maps run 4-lane vectors, a quarter of the unit;
      int8: VNNI tiles 16 output channels by 4 input channels: padding to those multiples is wasted.
    1.0 where the shape was not recorded."""
    from edgesearch.runners.hardware.tvm_schedule import VECTOR_LANES

    if not conv.out_width:
        return 1.0
    if conv.precision == "int8":
        oc, ic = conv.out_channels, conv.in_channels // max(conv.groups, 1)
        return (oc / (-(-oc // 16) * 16)) * (ic / (-(-ic // 4) * 4))
    height, width = conv.out_height, conv.out_width
    lanes = None
    if conv.kernel == 1 and conv.stride == 1:
        options = [c for c in (VECTOR_LANES, 2 * VECTOR_LANES, VECTOR_LANES // 2, 8)
                   if (height * width) % c == 0 and (c % width == 0 or width % c == 0)]
        lanes = options[0] if options else None
    if lanes is None:
        lanes = next((c for c in (VECTOR_LANES, VECTOR_LANES // 2, VECTOR_LANES // 4) if width % c == 0), None)
        if lanes is None:
            lanes = width if width <= 2 * VECTOR_LANES else next(d for d in range(2 * VECTOR_LANES, 0, -1)
                                                                    if width % d == 0)
    return min(1.0, lanes / _vector_instructions(lanes, VECTOR_LANES) / VECTOR_LANES)


class _Features:
    """A work as arrays, so that a fit evaluates many parameter vectors quickly."""

    def __init__(self, work: NetworkWork, options: ModelOptions):
        index = {p: i for i, p in enumerate(PRECISIONS)}
        out_bytes = {**PRECISION_BYTES, "int8": options.int8_output_bytes}
        self.overlap = options.launch_overlap
        self.names = [c.name for c in work.convs]
        self.flops = np.array([c.flops for c in work.convs], dtype=float)
        self.utilization = np.array([tvm_cpu_utilization(c) if options.schedule == "tvm-cpu" else 1.0
                                     for c in work.convs], dtype=float)
        self.precision = np.array([index.get(c.precision, 0) for c in work.convs], dtype=int)
        self.bytes = np.array([(c.weight_elements + c.input_elements) * PRECISION_BYTES.get(c.precision, 4)
                               + c.output_elements * out_bytes.get(c.precision, 4) for c in work.convs], dtype=float)
        self.op_bytes = float(sum(n * out_bytes.get(p, 4) for o in work.ops for p, n in o.elements.items()))
        self.op_flops = float(sum(o.flops for o in work.ops))
        self.kernels = float(work.kernels)


def _peaks(profile) -> np.ndarray:
    peaks = profile.peak_ops_per_s
    return np.array([float(peaks.get(p, peaks["fp32"])) for p in PRECISIONS])


def _conv_ms(features: _Features, params: dict, peaks: np.ndarray, bandwidth: float) -> np.ndarray:
    """Each conv's roofline with the efficiencies: max(compute, memory), in ms."""
    eff = np.array([params[f"eff_{p}"] for p in PRECISIONS])
    compute = features.flops / (peaks[features.precision] * eff[features.precision]
                                * features.utilization ** params["util_exp"])
    memory = features.bytes / (bandwidth * params["eff_mem"])
    return np.maximum(compute, memory) * 1e3


def _parts_ms(features: _Features, params: dict, peaks: np.ndarray, bandwidth: float) -> tuple[np.ndarray, float, float]:
    """(per-conv ms, non-conv ops ms, launches ms) of one work."""
    ops = (features.op_bytes / (bandwidth * params["eff_mem"]) + features.op_flops / (peaks[0] * params["eff_fp32"])) * 1e3
    return _conv_ms(features, params, peaks, bandwidth), ops, features.kernels * params["overhead_ms"]


def _total_ms(features: _Features, params: dict, peaks: np.ndarray, bandwidth: float) -> float:
    return _sum_of_parts(features, params, *_parts_ms(features, params, peaks, bandwidth))


def _device_ms(convs: np.ndarray, ops: float) -> float:
    """The device's own work: its convs and its non-conv ops."""
    return float(convs.sum()) + ops


def _sum_of_parts(features: _Features, params: dict, convs: np.ndarray, ops: float, launches: float) -> float:
    """The latency of the parts: launches overlap the device's work where the profile says so, else add to it."""
    device = _device_ms(convs, ops)
    return (max(device, launches) if features.overlap else device + launches) + params["host_ms"]


# ------------------------------------------------------------------------------ calibration


@dataclasses.dataclass
class Calibration:
    """Fitted parameters of a profile's latency model and how far to trust them."""
    profile: str
    means: str  # what latency means: runtime, precision, what is timed
    params: dict
    free: list[str]
    points: list[dict]  # {model | design_id, imgsz, precision, runtime, latency_ms, estimate_ms, loo_ms, fit, source}
    loo_median_pct: float | None
    loo_p90_pct: float | None
    calibrated: bool
    source: str  # where it came from: the profile YAML or a user refit in the cache
    options: dict = dataclasses.field(default_factory=dict)  # ModelOptions as a dict
    created: str = ""

    @property
    def fitted_points(self) -> list[dict]:
        return [p for p in self.points if p.get("fit", True)]

    @property
    def model_options(self) -> ModelOptions:
        return ModelOptions(**self.options)

    def describe(self) -> str:
        """What an estimate of this calibration is, without per-design parts: two estimates with the
        same description can be divided into a speed-up."""
        n = len(self.fitted_points)
        if not self.calibrated:
            return (f"{self.means}; UNCALIBRATED latency model of {self.profile} ({n} fitted points, fewer than "
                    f"{MIN_POINTS}: no error stated; {self.source})")
        return (f"{self.means}; latency model of {self.profile} calibrated on {n} points (leave-one-out "
                f"median error {self.loo_median_pct:.0f} %, ± {self.loo_p90_pct:.0f} % at p90; {self.source})")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict) -> Calibration:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


def _expand(theta: np.ndarray, free: list[str], base: dict, tied: dict) -> dict:
    """Parameters from the free ones' logs `theta`: `base` for the rest, a refit's "scale" applied to
    every efficiency of `base`, and each `tied` {efficiency: the one it follows} copied last."""
    params = dict(base)
    values = dict(zip(free, np.exp(theta), strict=True))
    if "scale" in values:  # a user refit: one factor on every efficiency of the shipped fit
        for name in EFFICIENCIES:
            params[name] = base[name] * values["scale"]
    params.update({k: float(v) for k, v in values.items() if k != "scale"})
    for name, leader in tied.items():
        params[name] = params[leader]
    return params


def fit(features: list[_Features], measured_ms: list[float], profile, free: list[str], base: dict,
        tied: dict | None = None, warm: dict | None = None) -> dict:
    """Parameters minimising the squared log errors of `features` against `measured_ms`
    (scipy.optimize.least_squares over the logs of the `free` parameters, from several starts: the
    max() of the roofline makes the cost piecewise smooth); `base` gives the others, `tied`
    {efficiency: leader} makes an efficiency follow another. `warm`: a nearby solution (a
    leave-one-out refit starts from the full fit, and from one default start)."""
    from scipy.optimize import least_squares

    tied = tied or {}
    peaks, bandwidth = _peaks(profile), profile.memory_bandwidth_bytes_per_s
    target = np.log(np.asarray(measured_ms, dtype=float))
    if not free:
        return _expand(np.zeros(0), [], base, tied)

    def residuals(theta):
        params = _expand(theta, free, base, tied)
        return np.log([_total_ms(f, params, peaks, bandwidth) for f in features]) - target

    lower = np.log([BOUNDS[name][0] for name in free])
    upper = np.log([BOUNDS[name][1] for name in free])
    starts = {"eff": (0.05, 0.5), "overhead_ms": (1e-3, 0.05), "host_ms": (0.01, 1.0), "scale": (0.5, 2.0),
              "util_exp": (0.3, 1.0)}
    corners = [np.log([starts["eff" if name.startswith("eff_") else name][(corner >> i) & 1 if i < 3 else 0]
                       for i, name in enumerate(free)])
               for corner in range(2 ** min(len(free), 3))]  # the first three parameters from a low and a high start
    if warm is not None:
        corners = [np.log([warm.get(name, 1.0) for name in free]), corners[0]]
    best = None
    for x0 in corners:
        result = least_squares(residuals, np.clip(x0, lower, upper), bounds=(lower, upper), method="trf",
                               diff_step=1e-4)
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None  # at least one start
    return _expand(best.x, free, base, tied)


def _loo(features, measured, profile, free, base, tied, warm=None) -> tuple[list[float], float | None, float | None]:
    """Each point's estimate by a fit without it (started from `warm`, the full fit, when given),
    and the median and 90th percentile of |estimate / measured - 1| in %."""
    peaks, bandwidth = _peaks(profile), profile.memory_bandwidth_bytes_per_s
    predicted = []
    for i in range(len(features)):
        rest = [j for j in range(len(features)) if j != i]
        params = fit([features[j] for j in rest], [measured[j] for j in rest], profile, free, base, tied, warm)
        predicted.append(_total_ms(features[i], params, peaks, bandwidth))
    errors = [abs(p / m - 1) * 100 for p, m in zip(predicted, measured, strict=True)]
    if not errors:
        return predicted, None, None
    return predicted, float(np.median(errors)), float(np.percentile(errors, 90))


def _latency_section(profile) -> dict:
    section = getattr(profile, "latency_model", None)
    source = getattr(profile, "source", "")
    if section is None and source:
        import yaml

        section = (yaml.safe_load(Path(profile.source).read_text()) or {}).get("latency_model")
    return section or {}


def _parse_points(section: dict, where: str) -> list[dict]:
    points = []
    for i, raw in enumerate(section.get("points") or []):
        try:
            point: dict[str, Any] = {"model": str(raw["model"]), "imgsz": int(raw["imgsz"]), "precision": str(raw["precision"]),
                     "runtime": str(raw.get("runtime", "")), "power_mode": str(raw.get("power_mode", "")),
                     "latency_ms": float(raw["latency_ms"]), "source": str(raw.get("source", "")),
                     "fit": bool(raw.get("fit", True))}
            if raw.get("num_classes") is not None:  # a torchvision classifier's head
                point["num_classes"] = int(raw["num_classes"])
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{where}: latency_model.points[{i}] needs model, imgsz, precision and latency_ms "
                             f"({error})") from None
        if "num_classes" in point and not (point["model"].startswith(TORCHVISION) and point["num_classes"] > 0):
            raise InputError(f"{where}: latency_model.points[{i}]: num_classes is a positive head size of a "
                             f"{TORCHVISION}<name> model")
        if point["precision"] not in PRECISIONS or not point["latency_ms"] > 0:
            raise InputError(f"{where}: latency_model.points[{i}]: precision must be one of {', '.join(PRECISIONS)} "
                             "and latency_ms positive")
        points.append(point)
    return points


def calibrate_profile(profile) -> Calibration:
    """The shipped calibration of `profile`: its YAML's latency_model points fitted (module docstring)."""
    section = _latency_section(profile)
    where = f"profile {Path(profile.source).name if profile.source else profile.name}"
    means = section.get("means") or {}
    precision = str(means.get("precision", "fp32"))
    label = str(means.get("label") or f"{profile.name} latency ({precision})")
    options = ModelOptions.from_section(section)
    fixed = section.get("fixed") or {}
    free = list(section.get("free") or [])
    unknown = (set(free) | set(fixed)) - set(PARAMETERS)
    if unknown or precision not in PRECISIONS:
        raise InputError(f"{where}: latency_model names unknown parameter(s) or precision "
                         f"{sorted(unknown) or precision}; parameters are {', '.join(PARAMETERS)}")
    points = _parse_points(section, where)
    fitted = [p for p in points if p["fit"]]
    calibrated = len(fitted) >= MIN_POINTS
    free = free[:max(0, len(fitted) - 2)]  # at most points - 2 free parameters, in the YAML's order
    base = {**DEFAULTS, **{k: float(v) for k, v in fixed.items()}}
    # an efficiency neither fitted nor fixed follows the one of the profile's own precision
    leader = f"eff_{precision}"
    tied = {name: leader for name in EFFICIENCIES[:3] if name not in (leader, *free, *fixed)}
    features = {id(p): _Features(model_work(p["model"], p["imgsz"], p["precision"], p.get("num_classes")), options)
                for p in points}
    measured = [p["latency_ms"] for p in fitted]
    params = fit([features[id(p)] for p in fitted], measured, profile, free, base, tied)
    loo: Sequence[float | None] = [None] * len(fitted)
    median: float | None = None
    p90: float | None = None
    if calibrated:
        loo, median, p90 = _loo([features[id(p)] for p in fitted], measured, profile, free, base, tied, params)
    loo_of = dict(zip((id(p) for p in fitted), loo, strict=True))
    peaks, bandwidth = _peaks(profile), profile.memory_bandwidth_bytes_per_s
    for p in points:
        p["estimate_ms"] = _total_ms(features[id(p)], params, peaks, bandwidth)
        p["loo_ms"] = loo_of.get(id(p))
    return Calibration(profile=profile.name, means=label, params=params, free=free, points=points,
                       loo_median_pct=median, loo_p90_pct=p90, calibrated=calibrated,
                       source=f"{len(fitted)} points shipped in {where}", options=dataclasses.asdict(options))


def refit_path(profile_name: str) -> Path:
    return cache_root() / "calibration" / f"{profile_name}.json"


_MEMO: dict = {}


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def shipped_calibration(profile) -> Calibration:
    """calibrate_profile, memoized in this process and on disk (keyed by the YAML's latency model,
    the profile's rates and this module's model version)."""
    import ultralytics

    section = _latency_section(profile)
    models = sorted({str(p.get("model")) for p in section.get("points") or [] if isinstance(p, dict)})
    texts = [(ROOT / m).read_text() if (ROOT / m).is_file() else m for m in models]  # a repository YAML's content
    identity = [WORK_VERSION, FIT_VERSION, ultralytics.__version__, profile.name, section, texts,
                profile.peak_ops_per_s, profile.memory_bandwidth_bytes_per_s]
    if any(m.startswith(TORCHVISION) for m in models):  # their architectures are torchvision's code
        import torchvision

        identity.append(torchvision.__version__)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    key = digest.hexdigest()[:16]
    if key in _MEMO:
        return _MEMO[key]
    path = cache_root() / "calibration" / "fits" / f"{profile.name}-{key}.json"
    calibration = None
    if path.is_file():
        with contextlib.suppress(ValueError, TypeError, OSError):
            calibration = Calibration.from_json(json.loads(path.read_text()))
    if calibration is None:
        calibration = calibrate_profile(profile)
        write_text_atomically(path, json.dumps(calibration.to_json()))
    _MEMO[key] = calibration
    return calibration


def calibration_for(profile) -> Calibration:
    """The calibration estimates of `profile` use: the user's refit in the cache when there is one
    (search calibrate), else the fit of the profile's shipped points."""
    from edgesearch.runners.hardware.profiles import HardwareProfile, load_profile

    if not isinstance(profile, HardwareProfile):
        profile = load_profile(profile)
    path = refit_path(profile.name)
    if not path.is_file():
        return shipped_calibration(profile)
    stamp = (str(path), _mtime(path))
    if stamp not in _MEMO:
        try:
            calibration = Calibration.from_json(json.loads(path.read_text()))
        except (ValueError, TypeError) as error:
            raise InputError(f"the calibration refit {path} is unreadable ({error}): delete it or run "
                             "`search calibrate` again") from None
        if calibration.profile != profile.name:
            raise InputError(f"the calibration refit {path} is for profile {calibration.profile!r}, not "
                             f"{profile.name!r}: delete it or run `search calibrate` again")
        _MEMO[stamp] = calibration
    return _MEMO[stamp]


def estimate(work: NetworkWork, profile, calibration: Calibration | None = None) -> dict:
    """The calibrated latency of `work` on `profile`: latency_ms, latency_error_pct (± the p90 of the
    leave-one-out errors; None when uncalibrated), latency_source (the full label), per_layer_ms
    {conv name: ms} and fixed_ms (the rest: non-conv ops, kernel launches, host_ms; the launches
    count when they do not overlap the GPU's work)."""
    calibration = calibration or calibration_for(profile)
    params = {**DEFAULTS, **calibration.params}
    features = _Features(work, calibration.model_options)
    peaks, bandwidth = _peaks(profile), profile.memory_bandwidth_bytes_per_s
    per_conv, ops_ms, launches_ms = _parts_ms(features, params, peaks, bandwidth)
    total = _sum_of_parts(features, params, per_conv, ops_ms, launches_ms)
    error = calibration.loo_p90_pct if calibration.calibrated else None
    precisions = ", ".join(sorted({c.precision for c in work.convs})) or "no convs"
    band = f"± {error:.0f} %" if error is not None else "UNCALIBRATED, error unknown"
    source = (f"estimated ({band}): {calibration.describe()}; this design: {len(work.convs)} convs ({precisions}), "
              f"{work.kernels} kernels, {work.flops / 1e9:.2f} GFLOPs at {work.imgsz} px")
    device_ms = _device_ms(per_conv, ops_ms)
    if features.overlap and launches_ms > device_ms:  # only fewer kernels make such a design faster
        source += (f"; launch-bound: queuing its {work.kernels} kernels takes {launches_ms:.2f} ms, the GPU's work "
                   f"{device_ms:.2f} ms")
    return {"latency_ms": total, "latency_error_pct": error, "latency_source": source,
            "per_layer_ms": dict(zip(features.names, (float(v) for v in per_conv), strict=True)),
            "fixed_ms": total - float(per_conv.sum())}


def refit(profile, works: list[NetworkWork], measured_ms: list[float], rows: list[dict], *, where: str) -> Calibration:
    """A user's refit: REFIT_FREE fitted to `measured_ms` on top of the shipped calibration (never on a
    previous refit), with its own leave-one-out error; `rows` (design ids, runtimes) are kept in its
    points."""
    if len(works) < REFIT_MIN_POINTS:
        raise InputError(f"a refit needs at least {REFIT_MIN_POINTS} timed designs, got {len(works)}")
    shipped = shipped_calibration(profile)
    base = {**DEFAULTS, **shipped.params}  # the scale moves every efficiency, keeping their ratios
    features = [_Features(w, shipped.model_options) for w in works]
    free = list(REFIT_FREE)
    params = fit(features, measured_ms, profile, free, base)
    warm = {"scale": params["eff_fp32"] / base["eff_fp32"], "overhead_ms": params["overhead_ms"]}
    loo, median, p90 = _loo(features, measured_ms, profile, free, base, {}, warm)
    peaks, bandwidth = _peaks(profile), profile.memory_bandwidth_bytes_per_s
    points = [{**row, "imgsz": w.imgsz, "latency_ms": m, "estimate_ms": _total_ms(f, params, peaks, bandwidth),
               "shipped_estimate_ms": _total_ms(f, base, peaks, bandwidth), "loo_ms": loo_ms, "fit": True}
              for row, w, m, f, loo_ms in zip(rows, works, measured_ms, features, loo, strict=True)]
    runtimes = ", ".join(sorted({str(row.get("runtime", "")) for row in rows}))
    scale = params["eff_fp32"] / base["eff_fp32"]
    return Calibration(profile=profile.name, means=f"{runtimes} on your {profile.name}, batch 1",
                       params=params, free=free, points=points, loo_median_pct=median, loo_p90_pct=p90,
                       calibrated=True,
                       source=(f"your refit of {len(works)} timings from {where} (efficiencies x {scale:.2f} and "
                               f"per-kernel overhead {params['overhead_ms']:.3f} ms refitted; the rest as shipped: "
                               f"{shipped.means})"),
                       options=shipped.options,
                       created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))




def store_refit(calibration: Calibration) -> Path:
    """Write a refit to cache_root()/calibration/<profile>.json atomically (never the shipped YAML)."""
    path = refit_path(calibration.profile)
    write_text_atomically(path, json.dumps(calibration.to_json(), indent=1))
    return path
