"""TVM's int8 dot-product tensor intrinsics, loaded cheaply and fixed where they no longer compile.

Two problems with using them as shipped in apache-tvm 0.27.0.post1:

1. Cost: `import tvm.s_tir.tensor_intrin` parses several hundred TVMScript functions (CUDA, Arm
   SME, Hexagon, ...) and took 15-70 s here. The integer build needs one or two intrinsics, so
   `load_tvm_intrinsics` executes only the file that defines them (0.2 s), registered in
   sys.modules under its own name so that a later full import (MetaSchedule does one) reuses it
   instead of registering everything twice.
2. CUDA `dp4a_s8s8s32` declares its operands in shared memory and the accumulator in registers;
   the integer conv reads its 4-byte operands straight from global memory (each is used once per
   thread), so `dp4a_intrinsic` registers the same computation (TVM's `__dp4a` call) over
   global operands.
3. x86 `dot_16x4_vnni` passes its operands to `llvm.x86.avx512.vpdpbusd.512` as <16 x i32>; since
   LLVM 20 (TVM 0.27 links LLVM 22) the intrinsic takes <64 x i8>, and LLVM rejects the call
   ("Call parameter type does not match function signature"). `vnni_intrinsic` re-registers it,
   with TVM's own description and the operands reinterpreted as bytes, under the same name
   (override), so MetaSchedule's VNNI rules use the fixed one too.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

VNNI = "dot_16x4_vnni"  # uint8[4] x int8[16, 4] -> int32[16]: one vpdpbusd
NEON = "dot_4x4_i8i8s32_neon"  # int8[4] x int8[4, 4] -> int32[4]: smull + saddlp + addp (no sdot needed)
DP4A = "edgesearch_dp4a_s8s8s32"  # int8[4] . int8[4] -> int32: one __dp4a (CUDA sm_61+)


def load_tvm_intrinsics(name: str):
    """tvm.s_tir.tensor_intrin.<name>, executing only that file (and dot_product_common, which
    the Arm file imports) rather than the whole package."""
    import tvm.s_tir

    folder = Path(tvm.s_tir.__file__).parent / "tensor_intrin"
    for module_name in ("dot_product_common", name):
        full = f"tvm.s_tir.tensor_intrin.{module_name}"
        if full in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(full, folder / f"{module_name}.py")
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {folder / f'{module_name}.py'}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[full]
            raise
    return sys.modules[f"tvm.s_tir.tensor_intrin.{name}"]


_FIXED_VNNI = False


def vnni_intrinsic() -> str:
    """The name of a working VNNI intrinsic (TVM's description, byte-typed operands; module doc)."""
    global _FIXED_VNNI
    if _FIXED_VNNI:
        return VNNI
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T
    from tvm.target.codegen import llvm_version_major

    x86 = load_tvm_intrinsics("x86")
    if llvm_version_major() < 20:  # the shipped implementation is right for older LLVM
        _FIXED_VNNI = True
        return VNNI

    @T.prim_func(s_tir=True)
    def vnni_bytes(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
                   C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64"),
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16",
            )

    TensorIntrin.register(VNNI, x86.dot_product_16x4_u8i8i32_desc, vnni_bytes, override=True)
    _FIXED_VNNI = True
    return VNNI


def neon_intrinsic() -> str:
    load_tvm_intrinsics("arm_cpu")
    return NEON


_DP4A_REGISTERED = False


def dp4a_intrinsic() -> str:
    """int8[4] . int8[4] + int32 with `__dp4a`, operands in global memory (module doc). Signed x
    signed: CUDA's __dp4a has no mixed uchar4 x char4 overload."""
    global _DP4A_REGISTERED
    if _DP4A_REGISTERED:
        return DP4A
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "int8", offset_factor=1, align=4), B: T.Buffer((4,), "int8", offset_factor=1, align=4),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            for i in range(0, 4):
                with T.sblock("update"):
                    vi = T.axis.remap("R", [i])
                    C[0] = C[0] + T.cast(A[vi], "int32") * T.cast(B[vi], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "int8", offset_factor=1, align=4), B: T.Buffer((4,), "int8", offset_factor=1, align=4),
             C: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[0], A[0:4], B[0:4])
            T.writes(C[0])
            C[0] += T.call_pure_extern("__dp4a", A.vload([0], "int8x4"), B.vload([0], "int8x4"), T.int32(0),
                                       dtype="int32")

    TensorIntrin.register(DP4A, desc, impl, override=True)
    _DP4A_REGISTERED = True
    return DP4A
