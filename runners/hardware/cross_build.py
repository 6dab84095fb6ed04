"""A deployable shared library of a model for a hardware profile, built on this machine.

    Relax IRModule (build.export_for_tvm) -> tvm.compile for profile.target (+ profile.host)
    -> executable.export_library(out_path), linked by the g++ that targets the library's CPU.

- llvm targets use edgesearch's CPU pipeline (build.relax_pipeline: the fixed CPU schedule).
- cuda targets use TVM's CUDA pipeline (dlight's default GPU schedules; integer convs get
  integer_kernels.py's dp4a schedule); the host code (kernel
  launches, the Relax VM's functions) is compiled for `profile.host`.
- Where the library's CPU is not this machine's (an `mtriple` such as aarch64-linux-gnu), Debian's
  cross compiler `<triple>-g++` links it (package g++-<triple>).

CUDA kernels: apache-tvm 0.27 compiles CUDA kernels to binary code only when its CUDA runtime
plugin loads, and that needs the NVIDIA driver (libcuda.so.1). Without it (this machine), the
library carries the kernels as CUDA C++ source, which the TVM runtime on the device compiles when it
loads the library (tvm_callback_cuda_compile: NVRTC or nvcc there). So that a build for a GPU the
kernels cannot be compiled for fails here and not on the device, the kernels are compiled once here
with NVRTC for the profile's `arch`, and the binary is discarded. We always ask for the source form
(TVM_COMPILE_FORCE_FALLBACK), even on a machine with a GPU: there TVM would compile for the local
GPU's architecture, not the profile's.

Anything this machine cannot build raises TargetNotBuildable with a one-line reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import tvm
from tvm import relax
from tvm.relax.backend.cuda import pipeline as cuda_backend
from tvm.s_tir import dlight
from tvm.support import cc

from edgesearch.runners.hardware import integer_kernels
from edgesearch.runners.hardware.build import module_sources, relax_pipeline
from edgesearch.runners.hardware.profiles import HardwareProfile
from edgesearch.spaces.errors import InputError

KERNEL_CHECK_FORMAT = "cubin"  # machine code for one GPU: proves the arch is supported, not just parsed


class TargetNotBuildable(InputError):
    """This machine cannot build the profile's target; the message says why and, where it can, what
    to install. An InputError so the CLI prints it as one line: the fix is in the user's hands
    (install a package, or pick another profile), not in edgesearch's code."""


def build_library(mod, profile: HardwareProfile, out_path: str | Path, *, check_kernels: bool = True) -> dict:
    """Compile `mod` for the profile and write the shared library to `out_path` (atomically).

    Returns {path, size_bytes, build_s, compile_s, export_s, compiler, target, ...}: for llvm targets
    also `unscheduled_kernels` (kernels left without edgesearch's CPU schedule); for cuda targets
    `device_code` (what the library carries) and `kernel_check` (NVRTC's compile for the arch, unless
    `check_kernels` is False)."""
    target = tvm.target.Target(profile.target, host=profile.host)
    kind = target.kind.name
    if kind not in ("llvm", "cuda"):
        raise TargetNotBuildable(f"profile {profile.name}: build_library builds llvm and cuda targets, not {kind!r}")
    cpu_target = target if kind == "llvm" else target.host  # the CPU that runs the library's own code
    compiler = linker_for(cpu_target)  # before compiling: a missing compiler fails in milliseconds
    if kind == "cuda":
        cuda_ready(profile)

    start = time.perf_counter()
    info: dict
    if kind == "llvm":
        executable, info = _compile_cpu(mod, target)
    else:
        executable, info = _compile_cuda(mod, target)
    compile_s = time.perf_counter() - start
    if kind == "cuda" and check_kernels:
        info["kernel_check"] = check_cuda_kernels(_cuda_source(executable), profile)
    export_start = time.perf_counter()
    path = export_atomically(executable, Path(out_path), compiler)
    export_s = time.perf_counter() - export_start
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "build_s": time.perf_counter() - start,
        "compile_s": compile_s,
        "export_s": export_s,
        "compiler": compiler or cc.get_cc(),  # None: TVM's default linker for this machine (g++ here)
        "target": str(target),
        **info,
    }


# --- which compiler links the library ---------------------------------------------------------

def linker_for(cpu_target) -> str | None:
    """The cross g++ for a CPU target of another architecture, None for this machine's own.

    Raises TargetNotBuildable when that cross compiler is not installed."""
    triple = str(cpu_target.attrs.get("mtriple", "") or "")
    if not triple or triple.split("-")[0] == platform.machine():
        return None
    debian_triple = triple.replace("-unknown-", "-")  # LLVM's aarch64-unknown-linux-gnu is Debian's aarch64-linux-gnu
    compiler = f"{debian_triple}-g++"
    if shutil.which(compiler) is None:
        raise TargetNotBuildable(f"{compiler} not found (needed to link the {triple} library); "
                                 f"apt-get install g++-{debian_triple}")
    return compiler


# --- compiling ----------------------------------------------------------------------------------

def _compile_cpu(mod, target) -> tuple[object, dict]:
    capture: dict = {}
    executable = tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target, schedule=True, capture=capture))
    return executable, {"unscheduled_kernels": len(capture["unscheduled"])}


def cuda_pipeline(target):
    """TVM's CUDA pipeline (tvm.relax.backend.cuda) without FoldConstant, as in build.relax_pipeline:
    it compiles and runs every constant subgraph, for no gain here. dlight's default GPU rules bind
    every kernel to GPU threads (Fallback covers what the others do not), so no kernel is left serial."""
    @tvm.transform.module_pass(opt_level=0, name="EdgesearchCUDAPipeline")
    def pipeline(mod, ctx):
        with target:
            passes = [
                *cuda_backend.library_dispatch_passes(target),
                relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FuseOps(), relax.transform.FuseTIR(),
                integer_kernels.cuda_schedule_pass(),  # integer convs: dp4a (integer_kernels.py)
                dlight.ApplyDefaultSchedule(dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(),
                                            dlight.gpu.GeneralReduction(), dlight.gpu.Fallback()),
                *cuda_backend.dataflow_lower_passes(target),
                *cuda_backend.finalize_passes(target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def _compile_cuda(mod, target) -> tuple[object, dict]:
    with _environment(TVM_COMPILE_FORCE_FALLBACK="1"):  # kernels as source on every machine (module doc)
        executable = tvm.compile(mod, target=target, relax_pipeline=cuda_pipeline(target))
    return executable, {"device_code": "CUDA C++ source, compiled by the TVM runtime on the device when it loads the library"}


def _cuda_source(executable) -> str:
    """The CUDA C++ source of the executable's kernels (its one cuda module)."""
    sources = module_sources(executable, "cuda", "cuda")
    if len(sources) != 1 or not sources[0]:
        raise RuntimeError(f"expected one cuda module carrying CUDA source, found {len(sources)}")
    return sources[0]


# --- CUDA kernels: can they be compiled for the profile's GPU? --------------------------------

def cuda_ready(profile: HardwareProfile) -> None:
    """Fail fast, before the build, if this TVM has no CUDA codegen or NVRTC here cannot compile for
    the profile's arch (a one-kernel probe: its error is NVRTC's own)."""
    if tvm.get_global_func("target.build.cuda", allow_missing=True) is None:
        raise TargetNotBuildable(f"profile {profile.name}: this TVM build has no CUDA codegen "
                                 f"(USE_CUDA={tvm.support.libinfo().get('USE_CUDA')}, no target.build.cuda)")
    check_cuda_kernels('extern "C" __global__ void edgesearch_probe(float* x) { x[0] = 1.0f; }', profile)


def check_cuda_kernels(source: str, profile: HardwareProfile) -> dict:
    """Compile CUDA source with NVRTC for the profile's `arch` (machine code, then discarded)."""
    arch = str(profile.target.get("arch", ""))
    if not arch.startswith("sm_"):
        raise TargetNotBuildable(f"profile {profile.name}: tvm.target needs an arch such as sm_87 to check its CUDA kernels")
    try:
        from cuda.bindings import nvrtc
        from tvm.support import nvcc
    except ImportError:
        raise TargetNotBuildable("cuda-bindings is not installed (NVRTC compiles the CUDA kernels); "
                                 "pip install cuda-bindings") from None
    _, major, minor = nvrtc.nvrtcVersion()
    _, supported = nvrtc.nvrtcGetSupportedArchs()
    start = time.perf_counter()
    try:
        with _environment(CUDA_PATH=cuda_toolkit_root()):
            binary = nvcc.compile_cuda(source, target_format=KERNEL_CHECK_FORMAT, arch=arch, compiler="nvrtc")
    except RuntimeError as error:
        if arch.removeprefix("sm_").rstrip("af") not in {str(number) for number in supported}:  # sm_90a -> 90
            problem = f"cannot compile CUDA kernels for {arch} (it supports sm_{min(supported)}..sm_{max(supported)})"
        else:
            problem = f"failed to compile the CUDA kernels for {arch}"
        raise TargetNotBuildable(f"profile {profile.name}: NVRTC {major}.{minor} {problem}: {_first_errors(error)}") from None
    return {"compiler": f"NVRTC {major}.{minor}", "arch": arch, "format": KERNEL_CHECK_FORMAT,
            "bytes": len(binary), "seconds": time.perf_counter() - start}


def _first_errors(error: Exception, keep: int = 3) -> str:
    """The compiler's error lines, on one line (its log also holds every warning of every kernel)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()] or lines[:1]
    return "; ".join(errors[:keep])


def cuda_toolkit_root() -> str:
    """The CUDA toolkit whose headers NVRTC compiles against (cuda_runtime.h, CCCL's cuda/std).
    TVM looks next to `nvcc` on PATH, which misses where nvcc is a wrapper script outside the
    toolkit (/usr/local/bin/nvcc here execs /usr/local/cuda-13.0/bin/nvcc): look in the usual places."""
    candidates = [os.environ.get("CUDA_PATH", ""), "/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True)]
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")):
            return root
    raise TargetNotBuildable("no CUDA toolkit headers found (cuda_runtime.h in $CUDA_PATH or /usr/local/cuda*/include); "
                             "NVRTC needs them to compile the CUDA kernels")


# --- writing the library ------------------------------------------------------------------------

def export_atomically(executable, out_path: Path, compiler: str | None = None) -> Path:
    """export_library into a temporary file beside `out_path`, then rename: a reader never sees a
    half-written library, and a failed link leaves nothing behind."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".so")
    os.close(handle)
    try:
        fcompile = cc.cross_compiler(compiler) if compiler else None
        executable.export_library(temp_name, fcompile=fcompile)
        os.chmod(temp_name, 0o755)  # mkstemp made it private; a library is normally world-readable
        os.replace(temp_name, out_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    return out_path


@contextlib.contextmanager
def _environment(**variables: str):
    """Set environment variables for the duration of a block (TVM reads these from the environment)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
