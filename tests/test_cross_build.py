"""Cross-builds: a deployable library for each device profile, or one line saying why not."""

import copy
import dataclasses
import struct

import pytest

from edgesearch.runners.cross_build import TargetNotBuildable, build_library
from edgesearch.runners.hardware import export_for_tvm
from edgesearch.runners.profiles import load_profile
from edgesearch.spaces.apply import apply_candidate
from edgesearch.spaces.candidate import Candidate

ELF_64_BIT, ELF_LITTLE_ENDIAN, ELF_SHARED_OBJECT, ELF_AARCH64 = 2, 1, 3, 183


def elf_header(path) -> tuple[int, int, int, int]:
    """(class, data encoding, e_type, e_machine) of an ELF file."""
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    e_type, e_machine = struct.unpack_from("<HH", head, 16)
    return head[4], head[5], e_type, e_machine


@pytest.fixture(scope="module")
def tiny_relax(tiny_model):
    """The tiny YOLO as scored (fused), exported to Relax at 64x64."""
    return export_for_tvm(apply_candidate(copy.deepcopy(tiny_model), Candidate({})), 64)


def test_raspberry_pi_4_library_is_an_aarch64_shared_object(tiny_relax, tmp_path):
    out = tmp_path / "rpi4.so"
    result = build_library(tiny_relax, load_profile("raspberry-pi-4"), out)
    assert result["path"] == str(out) and result["compiler"] == "aarch64-linux-gnu-g++"
    assert result["unscheduled_kernels"] == 0  # edgesearch's CPU schedule covers the aarch64 build too
    assert out.stat().st_size == result["size_bytes"] > 0
    assert elf_header(out) == (ELF_64_BIT, ELF_LITTLE_ENDIAN, ELF_SHARED_OBJECT, ELF_AARCH64)
    assert b"__tvm_ffi__library_bin" in out.read_bytes()  # the packed Relax VM executable the runtime loads
    assert [p.name for p in tmp_path.iterdir()] == ["rpi4.so"]  # no temporary file left beside it


def test_jetson_orin_nano_library_carries_cuda_kernels_that_compile_for_sm_87(tiny_relax, tmp_path):
    out = tmp_path / "orin.so"
    result = build_library(tiny_relax, load_profile("jetson-orin-nano"), out)
    assert elf_header(out)[3] == ELF_AARCH64  # host code for the Cortex-A78AE
    library = out.read_bytes()
    assert library.count(b'extern "C" __global__') >= 10  # the kernels, as CUDA source for the device to compile
    check = result["kernel_check"]
    assert check["compiler"].startswith("NVRTC") and check["arch"] == "sm_87" and check["bytes"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["orin.so"]


def test_jetson_nano_sm_53_is_refused_with_nvrtcs_own_reason(tiny_relax, tmp_path):
    with pytest.raises(TargetNotBuildable) as error:
        build_library(tiny_relax, load_profile("jetson-nano"), tmp_path / "nano.so")
    message = str(error.value)
    assert "\n" not in message
    assert "cannot compile CUDA kernels for sm_53" in message
    assert "invalid value for --gpu-architecture" in message  # quoted from NVRTC, not paraphrased
    assert list(tmp_path.iterdir()) == []


def test_missing_cross_compiler_names_the_package_to_install(tiny_relax, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no compiler on it
    with pytest.raises(TargetNotBuildable) as error:
        build_library(tiny_relax, load_profile("raspberry-pi-4"), tmp_path / "rpi4.so")
    assert str(error.value) == ("aarch64-linux-gnu-g++ not found (needed to link the aarch64-linux-gnu library); "
                                "apt-get install g++-aarch64-linux-gnu")


def test_target_kind_without_a_build_path_is_refused(tiny_relax, tmp_path):
    vulkan = dataclasses.replace(load_profile("raspberry-pi-4"), target={"kind": "vulkan"})
    with pytest.raises(TargetNotBuildable, match="builds llvm and cuda targets, not 'vulkan'"):
        build_library(tiny_relax, vulkan, tmp_path / "x.so")
