"""Safe loading of Ultralytics YOLO ``.pt`` checkpoints.

Ultralytics checkpoints pickle whole ``nn.Module`` objects (``DetectionModel`` & co.), so a plain
``torch.load(weights_only=True)`` refuses them, and ``weights_only=False`` runs arbitrary pickle code.
This module loads them with ``weights_only=True`` plus a narrow allowlist.

Important property of torch's weights_only unpickler (torch/_weights_only_unpickler.py): any allowlisted
global may also be *called* by the pickle (REDUCE opcode => ``obj(*args)`` with attacker-chosen args).
Allowlisting ``DetectionModel`` directly therefore lets a pickle run ``DetectionModel(cfg)`` ->
``parse_model`` -> ``eval(cfg["activation"])`` = arbitrary code execution (verified: tests/test_checkpoints.py).
Model classes are therefore registered through ``_NewOnly`` stand-ins: they support exactly what a genuine
pickled module needs (NEWOBJ = ``cls.__new__(cls)``, then BUILD = ``__setstate__(state)``) and refuse
constructor calls.

Public API:
    safe_load_checkpoint(path, trust=False) -> dict
    model_from_checkpoint(ckpt, path) -> nn.Module   # post-processing equivalent to YOLO(path).model
    CheckpointError / UnsafeCheckpointError            # one-line, user-facing messages
"""

from __future__ import annotations

import contextlib
import importlib
import pathlib
import pickle
import pkgutil
import re
import zipfile
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from edgesearch.common.errors import InputError

TRUST_FLAG = "--trust-checkpoint"

# Where nn.Module subclasses may come from: every submodule of these packages, plus these exact modules.
_MODULE_PACKAGES = ("torch.nn.modules", "ultralytics.nn.modules")
_MODULE_FILES = ("ultralytics.nn.tasks",)

# Method names a checkpoint may fetch through pickle's getattr reduce (see _restricted_getattr).
_GETATTR_NAMES = frozenset({"forward", "forward_fuse"})


class CheckpointError(InputError):
    """A checkpoint could not be loaded; the message is a single user-facing line."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint references a global outside the safe-load allowlist."""


# --------------------------------------------------------------------------------------------------------------------
# Allowlist construction
# --------------------------------------------------------------------------------------------------------------------
class _NewOnly:
    """Stand-in for a model class in the unpickler's allowlist.

    torch's weights_only unpickler handles an allowlisted ``cls`` as follows:
      NEWOBJ -> ``cls.__new__(cls, *args)``   (how pickle rebuilds normal objects: no __init__ runs)
      BUILD  -> ``inst.__setstate__(state)`` if ``type(inst)`` is allowlisted (nn.Module.__setstate__ = dict update)
      REDUCE -> ``cls(*args)``                (constructor call with attacker-controlled args: refused here)
    ``__new__`` is an instance attribute so ``stand_in.__new__(stand_in, *args)`` builds a real ``cls`` object.
    """

    def __init__(self, cls: type, name: str):
        self.cls, self.name = cls, name
        # an instance attribute shadowing object.__new__ (see above): set past the class's method
        setattr(self, "__new__", lambda _stand_in, *args: cls.__new__(cls, *args))

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError(f"checkpoint tries to call constructor {self.name}(...), which is never allowed")

    def __repr__(self):
        return f"<safe-load stand-in for {self.name}>"


def _iter_module_classes():
    """Yield (pickle_name, cls) for every nn.Module subclass defined in the allowed packages/modules."""
    modnames = list(_MODULE_FILES)
    for pkg_name in _MODULE_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        modnames.append(pkg_name)
        modnames += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg_name + ".")]
    for modname in modnames:
        mod = importlib.import_module(modname)
        for obj in vars(mod).values():
            # Keep only classes *defined* here (pickle names a class by __module__.__qualname__).
            if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == modname:
                yield f"{obj.__module__}.{obj.__qualname__}", obj


def _restricted_getattr(obj, name):
    """Replacement for ``builtins.getattr``, which pickle uses for two legitimate Ultralytics cases.

    - fused models: ``m.forward = m.forward_fuse`` pickles a bound method as ``getattr(m, 'forward_fuse')``;
    - older Segment/Pose/OBB heads: ``self.detect = Detect.forward`` pickles ``getattr(Detect, 'forward')``
      (a nested qualname under pickle protocol 2).
    Only those method names on allowlisted model classes/instances are served; everything else is refused.
    """
    if name in _GETATTR_NAMES:
        if isinstance(obj, _NewOnly):  # class reference -> plain function, e.g. Detect.forward
            fn = getattr(obj.cls, name, None)
        elif type(obj) in _model_classes():  # instance -> method bound to the class's own definition
            fn = getattr(type(obj), name, None)
            fn = fn.__get__(obj) if fn is not None else None
        else:
            fn = None
        if callable(fn):
            return fn
    raise pickle.UnpicklingError(f"checkpoint uses getattr(<{type(obj).__name__}>, {name!r}), which is not allowed")


@lru_cache(maxsize=1)
def _model_classes() -> frozenset:
    return frozenset(cls for _, cls in _iter_module_classes())


@lru_cache(maxsize=1)
def _registry() -> dict:
    """Build {pickle global name: object handed to the unpickler}. Computed once per process."""
    import numpy as np
    from ultralytics.utils import IterableSimpleNamespace

    reg: dict[str, object] = {}  # stand-ins, data-only classes and guarded callables
    stand_ins = {}
    for name, cls in _iter_module_classes():
        stand_ins[cls] = reg[name] = _NewOnly(cls, name)

    # Renamed/re-exported names of the same classes (no new capability, only aliases):
    import ultralytics.nn.modules as unm
    from ultralytics.nn.tasks import DetectionModel

    for attr in getattr(unm, "__all__", ()):  # very old ckpts: classes pickled as ultralytics.nn.modules.<Name>
        cls = getattr(unm, attr, None)
        if cls in stand_ins:
            reg.setdefault(f"ultralytics.nn.modules.{attr}", stand_ins[cls])
    reg["ultralytics.nn.modules.block.Silence"] = stand_ins[nn.Identity]  # YOLOv9e (class removed, == Identity)
    reg["ultralytics.nn.tasks.YOLOv10DetectionModel"] = stand_ins[DetectionModel]  # YOLOv10 (merged upstream)

    # Data-only classes. REDUCE-calling them is harmless (they only store the given values).
    reg["ultralytics.utils.IterableSimpleNamespace"] = IterableSimpleNamespace  # model.args in unstripped ckpts
    reg["ultralytics.yolo.utils.IterableSimpleNamespace"] = IterableSimpleNamespace  # same, pre-8.0.44 path
    # pathlib: older train_args held Path objects. Pure path construction, no filesystem access.
    for mod in ("pathlib", "pathlib._local"):  # Python 3.13 pickles pathlib classes under pathlib._local
        reg[f"{mod}.PosixPath"] = pathlib.PosixPath
        reg[f"{mod}.WindowsPath"] = pathlib.PureWindowsPath  # WindowsPath cannot be instantiated on POSIX

    # numpy scalars: pre-8.3 metrics (train_metrics, best_fitness) were np.float64. Object dtype is refused, so
    # only raw-bytes numeric scalars can be built.
    np_scalar = np.float64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar

    def _numpy_scalar(dtype, *args):
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise pickle.UnpicklingError("checkpoint contains a numpy object scalar, which is not allowed")
        return np_scalar(dtype, *args)

    reg["numpy.core.multiarray.scalar"] = reg["numpy._core.multiarray.scalar"] = _numpy_scalar
    reg["numpy.dtype"] = np.dtype

    reg["builtins.getattr"] = _restricted_getattr
    return reg


@lru_cache(maxsize=1)
def _safe_globals_entries() -> list:
    """Entries for torch.serialization.safe_globals: (object, pickle name) pairs."""
    import numpy as np

    entries = [(obj, name) for name, obj in _registry().items()]
    # BUILD checks ``type(inst)`` against the allowlist, so the real classes must be present too. They are
    # registered under names containing a newline, which a GLOBAL opcode can never spell (it reads module and
    # name with readline), so a pickle can never obtain the real, callable class object.
    entries += [(cls, f"{cls.__module__}.{cls.__qualname__}\n<build-only>") for cls in _model_classes()]
    # numpy >= 1.25 dtypes are instances of per-type classes (numpy.dtypes.Float64DType...), BUILD-ed after
    # numpy.dtype(...) returns; they never appear as GLOBALs, so register them under unreachable names too.
    for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_):
        dt_cls = type(np.dtype(t))
        if dt_cls is not np.dtype:
            entries.append((dt_cls, f"{dt_cls.__module__}.{dt_cls.__qualname__}\n<build-only>"))
    return entries


@contextlib.contextmanager
def _exclusive_safe_globals(entries):
    """Make ``entries`` the *only* user allowlist for the duration of the load.

    ``torch.serialization.safe_globals`` merely adds to the process-wide set. If anything else in the process
    registered a real model class (e.g. ultralytics' own ``ULTRALYTICS_SAFE_LOAD``/``torch_safe_load(safe_only=True)``
    does ``add_safe_globals([DetectionModel, ...])`` permanently), the real class and our stand-in share a name
    and set iteration order decides which one the unpickler sees -> constructor calls (RCE) could get through.
    Not thread-safe (neither is torch's own context manager): do not run other torch.load calls concurrently.
    """
    previous = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(entries)
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(previous)


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------
def _unsafe_msg(path, detail) -> str:
    return (
        f"refusing to load {path}: {detail}; unpickling it could run arbitrary code. "
        f"Pass {TRUST_FLAG} only if you trust this file"
    )


def safe_load_checkpoint(path, trust: bool = False) -> dict:
    """Load an Ultralytics checkpoint dict.

    Args:
        path: path to a ``.pt`` checkpoint.
        trust: True -> plain ``torch.load(weights_only=False)`` (full pickle, user opted in via TRUST_FLAG).
               False -> ``weights_only=True`` with the allowlist above.

    Returns:
        The checkpoint dict (contains an nn.Module under 'ema' or 'model').

    Raises:
        CheckpointError (one-line message) for missing/corrupt/non-Ultralytics files,
        UnsafeCheckpointError if a global outside the allowlist is referenced.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not p.is_file():
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")

    is_zip = zipfile.is_zipfile(p)
    if is_zip and _is_torchscript(p):  # torch.load would silently dispatch to torch.jit.load
        raise CheckpointError(f"{path} is a TorchScript archive, not an Ultralytics .pt checkpoint")

    if trust:
        ckpt = _torch_load(p, weights_only=False)
    else:
        # Pre-flight: list every global the pickle references without executing it (pickletools scan), so the
        # user gets the offending name(s) before anything is unpickled. Only possible for zip-format files; the
        # weights_only unpickler below is the actual enforcement either way.
        if is_zip:
            try:
                referenced = torch.serialization.get_unsafe_globals_in_checkpoint(p)
            except Exception:  # damaged archive: let torch.load produce (and us map) the error
                referenced = []
            bad = [g for g in referenced if g not in _registry()]
            if bad:
                names = ", ".join(f"'{g}'" for g in bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
                raise UnsafeCheckpointError(_unsafe_msg(path, f"it references {names}, not on the safe-load allowlist"))
        with _exclusive_safe_globals(_safe_globals_entries()):
            ckpt = _torch_load(p, weights_only=True)

    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not an Ultralytics checkpoint (top level is {type(ckpt).__name__}, not dict)")
    if not isinstance(ckpt.get("ema") or ckpt.get("model"), nn.Module):
        raise CheckpointError(f"{path} is not an Ultralytics checkpoint: no model under 'ema' or 'model'")
    return ckpt


def _is_torchscript(p: Path) -> bool:
    try:
        with zipfile.ZipFile(p) as z:
            return any(n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _torch_load(p: Path, weights_only: bool):
    """torch.load with every failure mapped to a one-line CheckpointError / UnsafeCheckpointError."""
    try:
        return torch.load(p, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        reason = _unpickler_reason(e)
        m = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", str(e))
        if m:  # torch's own refusal names the global (builtins are printed without the 'builtins.' prefix)
            raise UnsafeCheckpointError(_unsafe_msg(p, f"it references '{m.group(1)}', not on the safe-load allowlist")) from None
        if weights_only and _REFUSAL.search(reason):  # refused by the allowlist machinery (ours or torch's)
            raise UnsafeCheckpointError(_unsafe_msg(p, f"the weights-only unpickler refused it ({reason})")) from None
        raise CheckpointError(f"{p} is not a valid PyTorch checkpoint (corrupt or not a .pt file): {reason}") from None
    except ModuleNotFoundError as e:  # trust=True only: pickle references a module that is not installed
        raise CheckpointError(f"{p} needs Python module '{e.name}', which is not installed") from None
    except Exception as e:  # noqa: BLE001 - anything else is a damaged/foreign file; keep the message to one line
        msg = str(e)
        if "TorchScript" in msg:
            raise CheckpointError(f"{p} is a TorchScript archive, not an Ultralytics .pt checkpoint") from None
        if isinstance(e, OSError) and e.errno is not None:
            raise CheckpointError(f"cannot read checkpoint {p}: {e.strerror}") from None
        raise CheckpointError(f"{p} is not a valid PyTorch checkpoint (truncated or corrupt): {_first(e)}") from None


# Phrases of weights_only refusals (torch._weights_only_unpickler and this module), as opposed to corruption
# ("Unsupported operand", "invalid load key", ...).
_REFUSAL = re.compile(r"GLOBAL|constructor|getattr|Can only|unrecognized function|persistent_load|not allowed")


def _unpickler_reason(e: BaseException) -> str:
    """torch wraps the real reason in a multi-line 'Weights only load failed...' text; return just the reason."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")
    lines = [ln.strip().removeprefix("WeightsUnpickler error:").strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(boilerplate)]
    return lines[0][:200] if lines else type(e).__name__


def _first(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0].split('. ')[0][:160]}" if s else type(e).__name__


# --------------------------------------------------------------------------------------------------------------------
# Model post-processing (mirrors ultralytics.nn.tasks.load_checkpoint, ultralytics 8.4.x)
# --------------------------------------------------------------------------------------------------------------------
def model_from_checkpoint(ckpt: dict, path=None, device="cpu", fuse: bool = False) -> nn.Module:
    """Turn a loaded checkpoint into the FP32 eval-mode model ``YOLO(path).model`` would hold.

    Steps copied from ultralytics.nn.tasks.load_checkpoint (formerly attempt_load_one_weight).
    """
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import guess_model_task

    if ckpt.get("modelopt"):
        # A ModelOpt QAT checkpoint: ultralytics would restore its fake-quant through restore_qat, which
        # pip-installs nvidia-modelopt unless offline mode is set. No load path may install anything, and
        # edgesearch quantizes from the float model itself.
        raise CheckpointError(f"{path or 'checkpoint'} is a ModelOpt quantization-aware checkpoint; "
                              "give edgesearch the float model it was trained from")
    model = (ckpt.get("ema") or ckpt["model"]).float()  # trainer ckpts: model=None, ema=module; stripped: reverse
    model.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}
    model.pt_path = str(path) if path is not None else None
    model.task = getattr(model, "task", None) or guess_model_task(model)
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    model = (model.fuse(verbose=False) if fuse and hasattr(model, "fuse") else model).eval().to(device)
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = True
        elif isinstance(m, nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None  # torch 1.11 compat
    return model


def load_detection_model(path, trust: bool = False) -> nn.Module:
    """The fp32 eval-mode detection model of an ultralytics checkpoint, loaded safely."""
    from ultralytics.nn.modules.head import Detect

    ckpt = safe_load_checkpoint(path, trust=trust)
    model = model_from_checkpoint(ckpt, path)
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or not len(layers):  # e.g. a bare nn.Linear under "model"
        raise CheckpointError(f"{path} holds a {type(model).__name__}, not an ultralytics detection model")
    if not isinstance(layers[-1], Detect) or getattr(model, "task", "detect") != "detect":
        raise CheckpointError(f"{path} is a {getattr(model, 'task', 'non-detection')} model, not a detection model")
    return model
