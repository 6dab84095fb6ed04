"""Where models run: `--device auto|cpu|cuda[:N]`, and a record of where each stage's model and
inputs actually were.

One choice per process (`resolve_device`): `auto` is the first CUDA GPU torch sees, else the CPU.
A Ray trial uses the GPU Ray assigned it (`trial_device_spec`: Ray sets CUDA_VISIBLE_DEVICES, so
it is cuda:0 inside the task); `cuda:N` applies to stages that run in the process itself. Models
are loaded and transformed on the CPU (spaces/ builds masks and layouts there) and moved for the
stages that run them: calibration, fine-tune, validation, sensitivity, shadow. TVM builds and the
packing of weights stay CPU work (`to_device(model, "cpu")` first).

`running_on(model, device)` is how a stage runs a model: each forward pass is watched (the devices
of the model's parameters and of its tensor inputs, as they were, not as asked), and on a
non-CPU device the forward allocates the tensors it creates without naming a device on that
device (torch.device as a context manager): spaces' weight quantizers build their set layouts
and k-means starts with plain `torch.ones` / `torch.linspace`, which would otherwise land on the
CPU beside CUDA weights. Only the forward is scoped: data loading (ultralytics' collate, pinned
memory) and the optimizer's CPU step counters must keep their own devices.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch
from torch import nn

from edgesearch.common.errors import InputError

SPEC = re.compile(r"auto|cpu|cuda(:\d+)?")
CPU = torch.device("cpu")


def check_spec(spec: str) -> str:
    """`spec` if it is auto, cpu, cuda or cuda:N; else one line of InputError."""
    if not isinstance(spec, str) or not SPEC.fullmatch(spec):
        raise InputError(f"--device {spec!r}: give auto, cpu, cuda or cuda:N (e.g. cuda:1)")
    return spec


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device `spec` names on this machine: auto = cuda:0 where torch sees a CUDA GPU,
    else cpu. A CUDA device this machine lacks is one line of InputError."""
    check_spec(spec)
    if spec == "cpu":
        return CPU
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        return torch.device("cuda", 0) if count else CPU
    index = int(spec.split(":", 1)[1]) if ":" in spec else 0
    if not count:
        raise InputError(f"--device {spec}: torch sees no CUDA GPU on this machine (torch {torch.__version__}, "
                         f"built for CUDA {torch.version.cuda or 'none'}); use --device cpu or auto")
    if index >= count:
        raise InputError(f"--device {spec}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def describe(device: torch.device) -> str:
    """'cpu', or 'cuda:0 (NVIDIA H200)': the device and, for a GPU, its name."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def trial_device_spec(spec: str, gpu_ids: list[str], ray_sets_visible: bool = True) -> str:
    """The device spec of a Ray trial given the GPU ids Ray assigned it (ray.get_gpu_ids()). Ray
    makes the assigned GPUs the only visible ones, so the first is cuda:0 (`ray_sets_visible`
    False: Ray was told not to, RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES, and the id is the index).
    cpu stays cpu; without an assigned GPU, auto means the CPU (never a GPU another trial holds);
    with one, auto means it where torch sees CUDA (a node started with logical GPUs only, `ray
    start --num-gpus N` on a machine without CUDA, falls back to the CPU) and cuda[:N] means it."""
    check_spec(spec)
    if spec == "cpu" or (spec == "auto" and not gpu_ids):
        return "cpu"
    if not gpu_ids:
        return spec  # asked for CUDA without a GPU from Ray: as on one machine (refused where there is none)
    index = 0 if ray_sets_visible else int(gpu_ids[0])
    if spec == "auto":
        return f"cuda:{index}" if torch.cuda.is_available() and torch.cuda.device_count() > index else "cpu"
    return f"cuda:{index}"


def trainer_device(device: torch.device) -> str:
    """ultralytics' own spelling of a device for its trainer and validator: 'cpu' or the GPU index."""
    return "cpu" if device.type == "cpu" else str(device.index or 0)


def to_device(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move `model` in place, with the tensors its modules keep as plain attributes (a fake
    quantizer's last fit, a Detect head's strides), and drop ultralytics' cached loss (built for
    the device the model was on; rebuilt on first use)."""
    model.to(device)
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.device != torch.device(device):
                setattr(module, name, value.to(device))
    if hasattr(model, "criterion"):
        setattr(model, "criterion", None)
    return model


def batch_to(batch: dict, device: torch.device) -> dict:
    """A batch dict (ultralytics' loader) with every tensor moved to `device`."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class DeviceWatch:
    """Where a model's forward passes ran: the devices of its parameters and of its tensor inputs,
    as a forward pre-hook saw them."""

    def __init__(self) -> None:
        self.parameters: set[str] = set()
        self.inputs: set[str] = set()
        self.calls = 0

    def see(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1
        self.parameters.update(str(p.device) for p in module.parameters())
        self.inputs.update(str(a.device) for a in args if isinstance(a, torch.Tensor))

    def describe(self) -> str:
        """'cpu' / 'cuda:0' where parameters and inputs were on one device; else both sets; 'not run'
        if no forward pass happened."""
        if not self.calls:
            return "not run"
        parameters, inputs = ",".join(sorted(self.parameters)) or "none", ",".join(sorted(self.inputs)) or "none"
        return parameters if parameters == inputs else f"parameters {parameters}, inputs {inputs}"


@contextlib.contextmanager
def running_on(model: nn.Module, device: torch.device) -> Iterator[DeviceWatch]:
    """Watch `model`'s forward passes while inside, and scope their new tensors to `device`
    (module docstring). The model is not moved here: see to_device."""
    watch = DeviceWatch()
    scopes: list = []

    def before(module, args):
        watch.see(module, args)
        if device.type != "cpu":
            scope = torch.device(device)
            scope.__enter__()
            scopes.append(scope)

    def after(module, args, output):
        if scopes:
            scopes.pop().__exit__(None, None, None)

    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after, always_call=True)]
    try:
        yield watch
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def exact_float32(device: torch.device):
    """No TF32 in CUDA convolutions while inside (torch allows it there by default): loss
    differences of a few 1e-4 decide a sensitivity ranking, and TF32 rounds to 10 mantissa bits."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
