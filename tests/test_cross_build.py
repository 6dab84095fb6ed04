"""Cross-builds: a deployable library for each device profile, or one line saying why not."""

import dataclasses
import importlib.metadata
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from conftest import assert_detections_match
from edgesearch.runners.hardware import cross_build
from edgesearch.runners.hardware.build import export_for_tvm
from edgesearch.runners.hardware.cross_build import TargetNotBuildable, build_library, refusal, why_not_buildable
from edgesearch.runners.hardware.integer_model import integer_copy
from edgesearch.runners.hardware.profiles import available_profiles, load_profile
from test_integer import assert_matches_up_to_code_flips

ELF_64_BIT, ELF_LITTLE_ENDIAN, ELF_SHARED_OBJECT, ELF_AARCH64 = 2, 1, 3, 183


def elf_header(path) -> tuple[int, int, int, int]:
    """(class, data encoding, e_type, e_machine) of an ELF file."""
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    e_type, e_machine = struct.unpack_from("<HH", head, 16)
    return head[4], head[5], e_type, e_machine


@pytest.fixture(scope="module")
def tiny_relax(fused_tiny):
    """The tiny YOLO exported to Relax at 64x64."""
    return export_for_tvm(fused_tiny, 64)


@pytest.fixture(scope="module")
def rpi4_library(tiny_relax, tmp_path_factory):
    """(build result, folder) of the tiny YOLO built for raspberry-pi-4, alone in its folder."""
    folder = tmp_path_factory.mktemp("rpi4")
    return build_library(tiny_relax, load_profile("raspberry-pi-4"), folder / "rpi4.so"), folder


def test_raspberry_pi_4_library_is_an_aarch64_shared_object(rpi4_library):
    result, folder = rpi4_library
    out = folder / "rpi4.so"
    assert result["path"] == str(out) and result["compiler"] == "aarch64-linux-gnu-g++"
    assert result["unscheduled_kernels"] == 0  # edgesearch's CPU schedule covers the aarch64 build too
    assert out.stat().st_size == result["size_bytes"] > 0
    assert elf_header(out) == (ELF_64_BIT, ELF_LITTLE_ENDIAN, ELF_SHARED_OBJECT, ELF_AARCH64)
    assert b"__tvm_ffi__library_bin" in out.read_bytes()  # the packed Relax VM executable the runtime loads
    assert [p.name for p in folder.iterdir()] == ["rpi4.so"]  # no temporary file left beside it


# A minimal deployment: load the library with the TVM runtime, run main() on a float32 input file.
RUNNER_SOURCE = r"""
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <vector>
namespace ffi = tvm::ffi;
struct CPUAlloc {
  void AllocData(DLTensor* t) { t->data = std::malloc(ffi::GetDataSize(*t)); }
  void FreeData(DLTensor* t) { std::free(t->data); }
};
int main(int argc, char** argv) {  // run_vm LIB INPUT.f32 N C H W OUTPUT.f32
  if (argc != 8) return 2;
  ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
  ffi::Module vm = (*lib->GetFunction("vm_load_executable", true))().cast<ffi::Module>();
  (*vm->GetFunction("vm_initialization", true))(static_cast<int>(kDLCPU), 0, 2 /* pooled allocator */);
  std::vector<int64_t> shape = {atol(argv[3]), atol(argv[4]), atol(argv[5]), atol(argv[6])};
  ffi::Tensor input = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                               DLDataType{kDLFloat, 32, 1}, DLDevice{kDLCPU, 0});
  std::ifstream(argv[2], std::ios::binary).read(static_cast<char*>(input.data_ptr()), ffi::GetDataSize(input));
  ffi::Tensor out = (*vm->GetFunction("main", true))(input).cast<ffi::Tensor>();
  std::ofstream(argv[7], std::ios::binary).write(static_cast<const char*>(out.data_ptr()), ffi::GetDataSize(out));
  return 0;
}
"""


def aarch64_tvm_runtime(folder):
    """libtvm_ffi.so and libtvm_runtime.so for aarch64, from PyPI's aarch64 wheels of the installed
    apache-tvm / apache-tvm-ffi versions (what a Raspberry Pi would pip install), plus tvm-ffi's headers."""
    packages = [f"{name}=={importlib.metadata.version(name)}" for name in ("apache-tvm", "apache-tvm-ffi")]
    download = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                               "--platform", "manylinux_2_28_aarch64", "--dest", str(folder), *packages],
                              capture_output=True, text=True, check=False)
    assert download.returncode == 0, f"pip download of the aarch64 TVM wheels failed: {download.stderr[-500:]}"
    wanted = ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so", "tvm_ffi/include/")
    for wheel in folder.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(folder, [n for n in archive.namelist() if n.startswith(wanted)])
    return folder


def run_under_qemu(library_path, x: torch.Tensor, folder) -> np.ndarray:
    """main(x) of an aarch64 library, run by a minimal C++ runner with the aarch64 TVM runtime under
    qemu-aarch64 (user-mode emulation); the output as float32, flat."""
    for tool, package in (("qemu-aarch64", "qemu-user"), ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found; apt-get install {package}")
    runtime = aarch64_tvm_runtime(folder)
    runner = folder / "run_vm"
    (folder / "run_vm.cc").write_text(RUNNER_SOURCE)
    subprocess.run(["aarch64-linux-gnu-g++", "-std=c++17", "-O1", f"-I{runtime / 'tvm_ffi/include'}", str(folder / "run_vm.cc"),
                    "-o", str(runner), f"-L{runtime / 'tvm_ffi/lib'}", f"-L{runtime / 'tvm/lib'}",
                    "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi"], check=True)
    x.numpy().tofile(folder / "in.f32")
    env = {"LD_LIBRARY_PATH": f"{runtime / 'tvm_ffi/lib'}:{runtime / 'tvm/lib'}"}
    run = subprocess.run(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(runner), str(library_path),
                          str(folder / "in.f32"), *(str(d) for d in x.shape), str(folder / "out.f32")],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return np.fromfile(folder / "out.f32", dtype=np.float32)


def test_raspberry_pi_4_library_runs_on_aarch64_and_matches_pytorch(rpi4_library, fused_tiny, tmp_path):
    """The library loads and runs with the aarch64 TVM runtime, under qemu-aarch64 (user-mode emulation)."""
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out = run_under_qemu(rpi4_library[0]["path"], x, tmp_path)
    with torch.no_grad():
        reference = fused_tiny(x).numpy()
    out = out.reshape(reference.shape)
    assert_detections_match(out, reference)


def test_raspberry_pi_4_integer_library_uses_neon_int8_and_matches_pytorch(int8_tiny, tmp_path):
    """Every conv as an int8 kernel (NEON smull/saddlp dot products), run under qemu: it matches
    the fake-quantized PyTorch model as the x86 integer build does (tolerance: test_integer.py)."""
    model, layers = int8_tiny
    integer, summary = integer_copy(model)
    assert summary.integer_layers == len(layers)
    profile = load_profile("raspberry-pi-4")
    result = build_library(export_for_tvm(integer, 64, profile.target), profile, tmp_path / "int8.so")
    assert result["unscheduled_kernels"] == 0
    disassembly = subprocess.run(["aarch64-linux-gnu-objdump", "-d", result["path"]], capture_output=True, text=True,
                                 check=True).stdout
    assert "smull" in disassembly and "saddlp" in disassembly  # TVM's dot_4x4_i8i8s32_neon
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    out = run_under_qemu(result["path"], x, tmp_path)
    with torch.no_grad():
        reference = model(x).numpy()
    assert_matches_up_to_code_flips(out.reshape(reference.shape), reference)


def test_jetson_orin_nano_integer_kernels_use_dp4a_and_compile_for_sm_87(int8_tiny, tmp_path):
    model, _ = int8_tiny
    profile = load_profile("jetson-orin-nano")
    result = build_library(export_for_tvm(integer_copy(model)[0], 64, profile.target), profile, tmp_path / "int8.so")
    assert b"__dp4a" in (tmp_path / "int8.so").read_bytes()  # the integer convs' 4-byte dot products
    assert result["kernel_check"]["arch"] == "sm_87" and result["kernel_check"]["bytes"] > 0  # NVRTC compiled them


def test_jetson_orin_nano_library_carries_cuda_kernels_that_compile_for_sm_87(tiny_relax, tmp_path):
    out = tmp_path / "orin.so"
    result = build_library(tiny_relax, load_profile("jetson-orin-nano"), out)
    assert elf_header(out)[3] == ELF_AARCH64  # host code for the Cortex-A78AE
    library = out.read_bytes()
    assert library.count(b'extern "C" __global__') >= 10  # the kernels, as CUDA source for the device to compile
    check = result["kernel_check"]
    assert check["compiler"].startswith("NVRTC") and check["arch"] == "sm_87" and check["bytes"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["orin.so"]


def test_jetson_nano_fp16_kernels_compile_for_sm_53_with_nvrtc_12(fused_tiny, tmp_path):
    """NVRTC 13 (locked) has no sm_53: the Nano's kernels are checked with NVRTC 12.9 and CUDA 12.9's
    headers (requirements.lock's *-cu12 wheels). A design computing in fp16 (activation_bits 16 on
    every searchable conv), in the build form the product gives it (integer_copy(half=True): fp16
    convs in fp16 out): the kernels include cuda_fp16.h and compute on half tensors (native on sm_53)."""
    from conftest import quantized_model

    model, layers = quantized_model(fused_tiny, "act=16")
    build_form, summary = integer_copy(model, half=True, integer=False)
    assert summary.half_layers == len(layers)
    fp16 = export_for_tvm(build_form, 64, load_profile("jetson-nano").target)
    assert str(fp16).count('out_dtype="float16"') == len(layers)  # the convs compute in half precision
    out = tmp_path / "nano.so"
    result = build_library(fp16, load_profile("jetson-nano"), out)
    assert elf_header(out)[3] == ELF_AARCH64  # host code for the Cortex-A57
    library = out.read_bytes()
    assert library.count(b'extern "C" __global__') >= 10 and b"#include <cuda_fp16.h>" in library
    assert b"half* __restrict__" in library  # kernels that read and write fp16 tensors
    check = result["kernel_check"]
    assert check["compiler"] == "NVRTC 12.9" and check["arch"] == "sm_53" and check["bytes"] > 0


def test_every_shipped_profile_is_buildable_here():
    """make install provides what each profile needs: the aarch64 g++, NVRTC 13 and NVRTC 12."""
    assert {name: why_not_buildable(load_profile(name)) for name in available_profiles()} == \
        {name: None for name in available_profiles()}


def test_gpu_no_nvrtc_here_compiles_for_is_refused_up_front_with_what_to_do(tiny_relax, tmp_path):
    nano = load_profile("jetson-nano")
    tk1 = dataclasses.replace(nano, name="jetson-tk1", target={**nano.target, "arch": "sm_32"})
    line = refusal(tk1)
    assert "\n" not in line
    assert line.startswith("jetson-tk1: neither NVRTC 13.0 (sm_75..sm_121) nor NVRTC 12.9 (sm_50..")
    # NVRTC's own error, quoted
    assert "can compile CUDA kernels for sm_32 (nvrtc: error: invalid value for --gpu-architecture" in line
    assert line.endswith("or export a design (`search export --format onnx`) and time it with TensorRT (trtexec) "
                         "on the device")
    assert line == f"jetson-tk1: {why_not_buildable(tk1)}; latency can only be estimated here (calibrated; " \
                   "--estimate-latency), or export a design (`search export --format onnx`) and time it with " \
                   "TensorRT (trtexec) on the device"
    with pytest.raises(TargetNotBuildable, match="can compile CUDA kernels for sm_32"):
        build_library(tiny_relax, tk1, tmp_path / "tk1.so")  # refused before compiling: nothing written
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def without_nvrtc_12(monkeypatch):
    """This machine as if requirements.lock's NVRTC 12 wheel were not installed."""
    monkeypatch.setattr(cross_build, "LEGACY_NVRTC_LIBRARY", ("nvidia-cuda-nvrtc-cu12-absent", "libnvrtc.so.12"))
    cross_build.legacy_nvrtc.cache_clear()
    yield
    cross_build.legacy_nvrtc.cache_clear()


def test_without_nvrtc_12_the_nano_is_refused_saying_what_to_install(without_nvrtc_12):
    assert refusal(load_profile("jetson-orin-nano")) is None  # sm_87: NVRTC 13 compiles it
    line = refusal(load_profile("jetson-nano"))
    assert line.startswith("jetson-nano: this machine's NVRTC 13.0 (sm_75..sm_121) cannot compile CUDA kernels for "
                           "sm_53 (nvrtc: error: invalid value for --gpu-architecture")
    assert ("; NVRTC 12, which can (sm_50..sm_72), is not installed: `make install` installs "
            "nvidia-cuda-nvrtc-cu12-absent") in line
    assert " from requirements.lock; latency can only be estimated here (calibrated; --estimate-latency)" in line


def test_missing_cross_compiler_names_the_package_to_install(tiny_relax, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no compiler on it
    with pytest.raises(TargetNotBuildable) as error:
        build_library(tiny_relax, load_profile("raspberry-pi-4"), tmp_path / "rpi4.so")
    assert str(error.value) == ("aarch64-linux-gnu-g++ not found (needed to link the aarch64-linux-gnu library); "
                                "apt-get install g++-aarch64-linux-gnu")
    assert refusal(load_profile("raspberry-pi-4")) == (
        f"raspberry-pi-4: {error.value}; latency can only be estimated here (calibrated; --estimate-latency), "
        "or export a design (`search export --format onnx`) and time it with ONNX Runtime on the device")


def test_target_kind_without_a_build_path_is_refused(tiny_relax, tmp_path):
    vulkan = dataclasses.replace(load_profile("raspberry-pi-4"), target={"kind": "vulkan"})
    with pytest.raises(TargetNotBuildable, match="builds llvm and cuda targets, not 'vulkan'"):
        build_library(tiny_relax, vulkan, tmp_path / "x.so")
    assert why_not_buildable(vulkan) == "build_library builds llvm and cuda targets, not 'vulkan'"
