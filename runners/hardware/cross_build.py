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

Two NVRTCs: the locked one (CUDA 13, through cuda-bindings, TVM's own NVRTC path) compiles sm_75 and
newer only; CUDA 13 dropped Maxwell, Pascal and Volta. For those GPUs (the Jetson Nano's sm_53, TX2's
sm_62, Xavier's sm_72) the kernels are checked with NVRTC 12.9 and CUDA 12.9's headers, from the wheels
nvidia-cuda-nvrtc-cu12, nvidia-cuda-runtime-cu12 and nvidia-cuda-cccl-cu12 (requirements.lock),
loaded with ctypes: cuda-bindings 12 cannot be installed beside torch, which requires cuda-bindings 13,
and the two libraries (libnvrtc.so.12, libnvrtc.so.13) load side by side in one process. NVRTC 12
needs CUDA 12's headers: with CUDA 13's it fails in cuda_fp8.hpp (double4_16a is undefined).
With these wheels installed, `import torch` itself preloads libnvrtc.so.12 and libcudart.so.12
(torch's _preload_cuda_deps looks in nvidia/cuda_nvrtc/ and nvidia/cuda_runtime/ before
nvidia/cu13/), RTLD_LOCAL beside CUDA 13's: seen harmless here (NVRTC 13 still compiles sm_87).

Anything this machine cannot build raises TargetNotBuildable with a one-line reason;
`why_not_buildable(profile)` asks the same before a run (no model is built), and `refusal(profile)`
turns its answer into the line a user reads, with what to do instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import glob
import importlib.metadata
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tvm
from tvm import relax
from tvm.relax.backend.cuda import pipeline as cuda_backend
from tvm.s_tir import dlight
from tvm.support import cc

from edgesearch.common.errors import InputError
from edgesearch.runners.hardware import integer_kernels
from edgesearch.runners.hardware.build import module_sources, relax_pipeline
from edgesearch.runners.hardware.profiles import HardwareProfile

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
    compiler = check_buildable(profile)  # before compiling: a missing compiler fails in well under a second

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


# --- can this machine build for the profile? ---------------------------------------------------

def check_buildable(profile: HardwareProfile) -> str | None:
    """What build_library checks before compiling: TVM generates code for the target kind, the
    cross g++ that links the library is installed, and for CUDA an installed NVRTC compiles a probe
    kernel for the profile's arch. Returns the linker (linker_for); raises TargetNotBuildable."""
    target = tvm.target.Target(profile.target, host=profile.host)
    kind = target.kind.name
    if kind not in ("llvm", "cuda"):
        raise TargetNotBuildable(f"profile {profile.name}: build_library builds llvm and cuda targets, not {kind!r}")
    if tvm.get_global_func("target.build.llvm", allow_missing=True) is None:  # the CPU code of either kind
        raise TargetNotBuildable(f"profile {profile.name}: this TVM build has no LLVM code generator "
                                 "(target.build.llvm)")
    cpu_target = target if kind == "llvm" else target.host  # the CPU that runs the library's own code
    compiler = linker_for(cpu_target) if cpu_target is not None else None
    if kind == "cuda":
        cuda_ready(profile)
    return compiler


def why_not_buildable(profile: HardwareProfile) -> str | None:
    """None when this machine can build the profile's deployable library (build_library) and check
    its CUDA kernels; else why not, as one line without the profile's name, e.g. "this machine's
    NVRTC 13.0 (sm_75..sm_121) cannot compile CUDA kernels for sm_53 (nvrtc: error: ...); NVRTC 12,
    which can (sm_50..sm_72), is not installed: `make install` installs ...". The same checks as
    build_library makes before compiling (check_buildable); no model is built: for a CUDA profile
    one probe kernel is compiled (about 0.1-0.5 s), else milliseconds. Ask once per run."""
    try:
        check_buildable(profile)
    except TargetNotBuildable as error:
        return str(error).removeprefix(f"profile {profile.name}: ")
    return None


# what a user can do instead, by the device's deployment runtime: the calibrated estimate needs no
# build, and an exported design is timed with the runtime the device deploys with
DEVICE_RUNTIME = {"cuda": "TensorRT (trtexec)", "llvm": "ONNX Runtime"}


def refusal(profile: HardwareProfile) -> str | None:
    """why_not_buildable as the line a user reads: "<profile>: <why>; <what to do instead>", or None."""
    reason = why_not_buildable(profile)
    if reason is None:
        return None
    runtime = DEVICE_RUNTIME.get(str(profile.target.get("kind")), "its runtime")
    return (f"{profile.name}: {reason}; latency can only be estimated here (calibrated; --estimate-latency), "
            f"or export a design (`search export --format onnx`) and time it with {runtime} on the device")


# --- which compiler links the library ---------------------------------------------------------

# the triples of Debian's cross g++ packages (g++-<triple>) a library may be linked with
CROSS_TRIPLES = frozenset({"aarch64-linux-gnu", "arm-linux-gnueabihf", "arm-linux-gnueabi", "x86_64-linux-gnu",
                           "i686-linux-gnu", "riscv64-linux-gnu", "powerpc64le-linux-gnu"})


def linker_for(cpu_target) -> str | None:
    """The cross g++ for a CPU target of another architecture, None for this machine's own.

    Raises TargetNotBuildable when that cross compiler is not installed."""
    triple = str(cpu_target.attrs.get("mtriple", "") or "")
    if not triple or triple.split("-")[0] == platform.machine():
        return None
    debian_triple = triple.replace("-unknown-", "-")  # LLVM's aarch64-unknown-linux-gnu is Debian's aarch64-linux-gnu
    if debian_triple not in CROSS_TRIPLES:  # a profile is data: it never names the program that runs
        raise TargetNotBuildable(f"mtriple {triple!r} is not one edgesearch links libraries for "
                                 f"(known: {', '.join(sorted(CROSS_TRIPLES))})")
    compiler = f"{debian_triple}-g++"  # a bare name from the list above, looked up on PATH only
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

# One kernel in half precision: it needs the fp16 header (cuda_fp16.h) that fp16 models' kernels include.
PROBE_KERNEL = """#include <cuda_fp16.h>
extern "C" __global__ void edgesearch_probe(float* x) {
  x[0] = __half2float(__hfma(__float2half(x[1]), __float2half(x[2]), __float2half(x[3])));
}
"""


def cuda_ready(profile: HardwareProfile) -> None:
    """Fail fast, before the build, if this TVM has no CUDA codegen or no NVRTC here compiles for
    the profile's arch (a one-kernel probe: its error is NVRTC's own)."""
    if tvm.get_global_func("target.build.cuda", allow_missing=True) is None:
        raise TargetNotBuildable(f"profile {profile.name}: this TVM build has no CUDA codegen "
                                 f"(USE_CUDA={tvm.support.libinfo().get('USE_CUDA')}, no target.build.cuda)")
    check_cuda_kernels(PROBE_KERNEL, profile)


@dataclasses.dataclass(frozen=True)
class Nvrtc:
    """An NVRTC this machine has: its version, the GPUs it compiles for (sm numbers) and
    compile(CUDA source, "sm_XX") -> cubin, raising RuntimeError with NVRTC's log."""
    version: tuple[int, int]
    archs: tuple[int, ...]
    compile: Callable[[str, str], bytes]

    @property
    def name(self) -> str:
        return f"NVRTC {self.version[0]}.{self.version[1]}"

    def span(self) -> str:
        return f"sm_{min(self.archs)}..sm_{max(self.archs)}"

    def supports(self, arch: str) -> bool:
        return _sm_number(arch) in self.archs


def _sm_number(arch: str) -> int | None:
    digits = arch.removeprefix("sm_").rstrip("af")  # sm_90a -> 90
    return int(digits) if digits.isdigit() else None


@functools.cache
def _locked_nvrtc() -> Nvrtc | None:
    """requirements.lock's NVRTC through cuda-bindings, compiling as TVM does (tvm.support.nvcc)."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        return None
    _, major, minor = nvrtc.nvrtcVersion()
    _, supported = nvrtc.nvrtcGetSupportedArchs()

    def compile_cuda(source: str, arch: str) -> bytes:
        from tvm.support import nvcc

        with _environment(CUDA_PATH=cuda_toolkit_root()):
            return bytes(nvcc.compile_cuda(source, target_format=KERNEL_CHECK_FORMAT, arch=arch, compiler="nvrtc"))

    return Nvrtc((major, minor), tuple(supported), compile_cuda)


# NVRTC 12 and CUDA 12's headers for the GPUs CUDA 13 dropped: (distribution, path in site-packages)
LEGACY_NVRTC_LIBRARY = ("nvidia-cuda-nvrtc-cu12", "nvidia/cuda_nvrtc/lib/libnvrtc.so.12")
LEGACY_NVRTC_HEADERS = (("nvidia-cuda-runtime-cu12", "nvidia/cuda_runtime/include"),  # cuda_fp16.h, vector types
                        ("nvidia-cuda-cccl-cu12", "nvidia/cuda_cccl/include"))  # libcu++: cuda/std/cstdint
LEGACY_ARCHS = "sm_50..sm_72"  # what NVRTC 12.9 compiles and NVRTC 13 does not (Maxwell, Pascal, Volta)

# What tvm.support.nvcc._compile_cuda_nvrtc (apache-tvm 0.27) puts before the kernels and passes to
# NVRTC, less the include paths of the CUDA 13 toolkit and ptxas' performance and diagnostic options:
# the same program, compiled by the same front end settings.
TVM_NVRTC_PREAMBLE = """#include <cuda/std/cstdint>
using cuda::std::uint8_t;
using cuda::std::uint16_t;
using cuda::std::uint32_t;
using cuda::std::uint64_t;
using cuda::std::int8_t;
using cuda::std::int16_t;
using cuda::std::int32_t;
using cuda::std::int64_t;
#ifndef __asm__
#define __asm__ asm
#endif
#ifndef __volatile__
#define __volatile__ volatile
#endif
#include <cuda/std/limits>
#ifndef INFINITY
#define INFINITY (::cuda::std::numeric_limits<float>::infinity())
#endif
"""
TVM_NVRTC_OPTIONS = ("-default-device", "--device-int128",
                     "-D__NV_SILENCE_DEPRECATION_BEGIN=", "-D__NV_SILENCE_DEPRECATION_END=",
                     "-D__NV_SILENCE_HOST_DEPRECATION_BEGIN=", "-D__NV_SILENCE_HOST_DEPRECATION_END=",
                     "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                     "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                     "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
                     "--use_fast_math")


def _installed_file(distribution: str, relative: str) -> Path | None:
    """A file or folder an installed distribution put in site-packages, or None."""
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.exists() else None


def legacy_nvrtc_missing() -> list[str]:
    """The NVRTC 12 wheels (distribution names) that are not installed."""
    return [name for name, relative in (LEGACY_NVRTC_LIBRARY, *LEGACY_NVRTC_HEADERS)
            if _installed_file(name, relative) is None]


@functools.cache
def legacy_nvrtc() -> Nvrtc | None:
    """NVRTC 12 with CUDA 12's headers, from requirements.lock's *-cu12 wheels, or None."""
    if legacy_nvrtc_missing():
        return None
    path = _installed_file(*LEGACY_NVRTC_LIBRARY)
    try:
        library = ctypes.CDLL(str(path))  # it finds its builtins library, which lies beside it
    except OSError as error:
        raise TargetNotBuildable(f"NVRTC 12 ({path}) does not load: {error}") from None
    _declare_nvrtc(library)
    major, minor, count = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    _nvrtc_call(library, library.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)))
    _nvrtc_call(library, library.nvrtcGetNumSupportedArchs(ctypes.byref(count)))
    archs = (ctypes.c_int * count.value)()
    _nvrtc_call(library, library.nvrtcGetSupportedArchs(archs))
    includes = [f"-I{_installed_file(*wheel)}" for wheel in LEGACY_NVRTC_HEADERS]

    def compile_cuda(source: str, arch: str) -> bytes:
        kept = (line for line in source.splitlines() if line.strip() != "#include <cuda.h>")  # host-only, as TVM
        code = TVM_NVRTC_PREAMBLE + "\n".join(kept)
        return _nvrtc_cubin(library, code, [f"--gpu-architecture={arch}", *includes, *TVM_NVRTC_OPTIONS])

    return Nvrtc((major.value, minor.value), tuple(archs), compile_cuda)


def _declare_nvrtc(library) -> None:
    """ctypes signatures of the NVRTC C API calls used here (nvrtc.h)."""
    handle, size_p, int_p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_int)
    library.nvrtcGetErrorString.restype = ctypes.c_char_p
    library.nvrtcGetErrorString.argtypes = [ctypes.c_int]
    for name, argtypes in {
        "nvrtcVersion": [int_p, int_p], "nvrtcGetNumSupportedArchs": [int_p], "nvrtcGetSupportedArchs": [int_p],
        "nvrtcCreateProgram": [ctypes.POINTER(handle), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
                               ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)],
        "nvrtcCompileProgram": [handle, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
        "nvrtcGetProgramLogSize": [handle, size_p], "nvrtcGetProgramLog": [handle, ctypes.c_char_p],
        "nvrtcGetCUBINSize": [handle, size_p], "nvrtcGetCUBIN": [handle, ctypes.c_char_p],
        "nvrtcDestroyProgram": [ctypes.POINTER(handle)],
    }.items():
        getattr(library, name).restype, getattr(library, name).argtypes = ctypes.c_int, argtypes


def _nvrtc_call(library, result: int) -> None:
    if result != 0:
        raise RuntimeError(f"NVRTC: {library.nvrtcGetErrorString(result).decode()}")


def _nvrtc_cubin(library, code: str, options: list[str]) -> bytes:
    """Compile a program with a ctypes-loaded NVRTC; RuntimeError with its log if it fails."""
    program = ctypes.c_void_p()
    _nvrtc_call(library, library.nvrtcCreateProgram(ctypes.byref(program), code.encode(), b"tvm_kernels.cu",
                                                    0, None, None))
    try:
        encoded = (ctypes.c_char_p * len(options))(*(option.encode() for option in options))
        result = library.nvrtcCompileProgram(program, len(options), encoded)
        if result != 0:
            size = ctypes.c_size_t()
            _nvrtc_call(library, library.nvrtcGetProgramLogSize(program, ctypes.byref(size)))
            log = ctypes.create_string_buffer(size.value)
            _nvrtc_call(library, library.nvrtcGetProgramLog(program, log))
            raise RuntimeError(f"NVRTC compilation failed:\n{log.value.decode(errors='replace')}")
        size = ctypes.c_size_t()
        _nvrtc_call(library, library.nvrtcGetCUBINSize(program, ctypes.byref(size)))
        cubin = ctypes.create_string_buffer(size.value)
        _nvrtc_call(library, library.nvrtcGetCUBIN(program, cubin))
        return cubin.raw
    finally:
        library.nvrtcDestroyProgram(ctypes.byref(program))


def check_cuda_kernels(source: str, profile: HardwareProfile) -> dict:
    """Compile CUDA source for the profile's `arch` (machine code, then discarded) with the first
    NVRTC here that compiles for it: the locked NVRTC 13, else NVRTC 12 (module doc)."""
    arch = str(profile.target.get("arch", ""))
    if not arch.startswith("sm_") or _sm_number(arch) is None:
        raise TargetNotBuildable(f"profile {profile.name}: tvm.target needs an arch such as sm_87 to check its CUDA kernels")
    compilers = []
    for load in (_locked_nvrtc, legacy_nvrtc):  # NVRTC 12 is loaded only for a GPU that NVRTC 13 does not know
        compiler = load()
        if compiler is not None:
            compilers.append(compiler)
            if compiler.supports(arch):
                break
    if not compilers:
        raise TargetNotBuildable("cuda-bindings is not installed (NVRTC compiles the CUDA kernels); "
                                 "pip install cuda-bindings")
    nvrtc = compilers[-1] if compilers[-1].supports(arch) else compilers[0]
    start = time.perf_counter()
    try:
        binary = nvrtc.compile(source, arch)
    except RuntimeError as error:
        if nvrtc.supports(arch):
            problem = f"{nvrtc.name} failed to compile the CUDA kernels for {arch}: {_first_errors(error)}"
        else:
            problem = _no_nvrtc_for(arch, compilers, _first_errors(error))
        raise TargetNotBuildable(f"profile {profile.name}: {problem}") from None
    return {"compiler": nvrtc.name, "arch": arch, "format": KERNEL_CHECK_FORMAT,
            "bytes": len(binary), "seconds": time.perf_counter() - start}


def _no_nvrtc_for(arch: str, compilers: list[Nvrtc], detail: str) -> str:
    """Why no NVRTC here compiles for `arch` (`detail`: the locked one's own error), and where NVRTC
    12 would and is missing, how to install it."""
    names = [f"{compiler.name} ({compiler.span()})" for compiler in compilers]
    which = f"this machine's {names[0]} cannot" if len(names) == 1 else f"neither {' nor '.join(names)} here can"
    reason = f"{which} compile CUDA kernels for {arch} ({detail})"
    missing = legacy_nvrtc_missing()
    if missing and 50 <= (_sm_number(arch) or 0) < 75:  # the GPUs CUDA 13 dropped: NVRTC 12 would do
        reason += (f"; NVRTC 12, which can ({LEGACY_ARCHS}), is not installed: `make install` installs "
                   f"{', '.join(missing)} from requirements.lock")
    return reason


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
