"""Integer kernels for TVM Relax: what integer_model.py's custom ops become, and how they are scheduled.

TVM 0.27 has the pieces but not the path: its Relax frontends import quantize / dequantize as float
arithmetic, FoldConstant turns dequantized int8 weights back into fp32 constants, and nothing
rewrites a fake-quantized graph into integer ops (Relay's FakeQuantizationToInteger has no Relax
counterpart). So the integer ops are torch custom ops (integer_model.py), and `convert_map` gives
the frontend their Relax form:

  quantize_u8   an elementwise TE kernel (x * 1/scale, round half to even, + zero-point, clamp,
                uint8): FuseOps fuses it into the producer's epilogue, so a conv feeding an int8
                conv writes uint8 (requantize + activation fused), 1 byte per activation.
  int8_conv2d   one TE kernel with three stages:
                  pack   the uint8 input to [N, C/ci, H+2p, W+2p, ci] (ci input channels adjacent,
                         the padding filled with the zero-point, so a padded pixel is a real 0;
                         on Arm shifted by -128 to int8: NEON's dot product is signed x signed)
                  conv   int32 accumulators [N, OC/oi, OH, OW, oi] += act x weight, the weights
                         packed at build time as [OC/oi, C/ci, KH, KW, oi, ci] int8 constants
                  out    fp32 NCHW: (acc - zero-point x sum(w)) x (act scale x weight scale[oc])
                         + bias[oc]; the activation (SiLU) and the next layer's quantize_u8 are
                         fused after it by FuseOps.
                It is annotated output-elementwise-fusable (what a conv is to FuseOps).

Per target family (chosen from the TVM target):
  x86   oi=16, ci=4, uint8 x int8: the inner 16x4 tile is tensorized with `dot_16x4_vnni`
        (vpdpbusd) when the target has AVX-512 VNNI, plain vectorized loops otherwise.
  arm   oi=4, ci=4, int8 x int8: tensorized with `dot_4x4_i8i8s32_neon` (smull/saddlp/addp,
        which the Cortex-A72 has; sdot needs Armv8.2 dotprod).
  cuda  oi=4, ci=4, int8 x int8: `schedule_integer_conv_cuda`, the 4-byte dot products with __dp4a
        (CUDA has no uchar4 x char4 __dp4a, hence int8 codes as on Arm).

`schedule_integer_conv` is the tuning-free schedule for the CPU families (tvm_schedule.py calls it
for every kernel holding an `es_int8_conv` block): output channels by oi x `OC_TILES`, output
pixels by up to `X_TILE`, the accumulator tile in registers (unrolled), the reduction over input
channel blocks and the kernel window outside it, the epilogue per tile, vectorized along W.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
import tvm
from tvm import relax, te, tirx

from edgesearch.runners.hardware import tensor_intrinsics
from edgesearch.runners.hardware.tir_blocks import inline_all

PACK, CONV, OUT = "es_int8_pack", "es_int8_conv", "es_int8_out"
OUT_ELEMWISE_FUSABLE = 4  # relax OpPatternKind::kOutEWiseFusable


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    oi: int  # output channels per innermost tile (the intrinsic's output lanes)
    ci: int  # input channels per reduction step (the intrinsic's dot length)
    act_dtype: str  # "uint8", or "int8" with the codes shifted by -128
    oc_tiles: int  # oi-blocks of output channels per register tile
    x_tile: int  # output pixels per register tile (at most)

    @property
    def act_offset(self) -> int:
        return 128 if self.act_dtype == "int8" else 0


FAMILIES = {
    "x86": Family("x86", oi=16, ci=4, act_dtype="uint8", oc_tiles=2, x_tile=8),
    "arm": Family("arm", oi=4, ci=4, act_dtype="int8", oc_tiles=4, x_tile=4),
    "cuda": Family("cuda", oi=4, ci=4, act_dtype="int8", oc_tiles=1, x_tile=1),
}


def family_of(target) -> Family:
    """The kernel family of a TVM target (dict or Target)."""
    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    if target.kind.name == "cuda":
        return FAMILIES["cuda"]
    triple = str(target.attrs.get("mtriple", "") or "")
    return FAMILIES["arm"] if triple.startswith(("aarch64", "arm")) else FAMILIES["x86"]


# --------------------------------------------------------------------------- TE definitions


def quantize_te(x: te.Tensor, scale: float, zero_point: int) -> te.Tensor:
    inverse = tirx.const(np.float32(1.0) / np.float32(scale), "float32")  # as torch: x * (1 / scale)
    zp = tirx.const(float(zero_point), "float32")
    return te.compute(x.shape, lambda *i: tirx.max(tirx.min(te.nearbyint(x(*i) * inverse) + zp,
                                                            tirx.const(255.0, "float32")),
                                                   tirx.const(0.0, "float32")).astype("uint8"),
                      name="es_quantize_u8")


def dequantize_te(q: te.Tensor, scale: float, zero_point: int) -> te.Tensor:
    return te.compute(q.shape, lambda *i: (q(*i).astype("float32") - tirx.const(float(zero_point), "float32"))
                      * tirx.const(np.float32(scale), "float32"), name="es_dequantize_u8")


def conv_te(q: te.Tensor, weight: te.Tensor, correction: te.Tensor, multiplier: te.Tensor, bias: te.Tensor, *,
            family: Family, zero_point: int, stride: tuple[int, int], padding: tuple[int, int],
            out_channels: int) -> te.Tensor:
    """The three stages of the module docstring. q: uint8 NCHW; weight: packed int8 constant."""
    n, channels, height, width = (int(v) for v in q.shape)
    oc_blocks, ic_blocks, kh, kw, oi, ci = (int(v) for v in weight.shape)
    (sh, sw), (ph, pw) = stride, padding
    out_h, out_w = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    pad_value = tirx.const(zero_point - family.act_offset, family.act_dtype)

    def pack(b, block, y, x, c):
        channel = block * ci + c
        inside = tirx.all(channel < channels, y >= ph, y < height + ph, x >= pw, x < width + pw)
        value = q[b, tirx.min(channel, channels - 1), y - ph, x - pw]
        if family.act_offset:
            value = (value.astype("int32") - family.act_offset).astype(family.act_dtype)
        return tirx.if_then_else(inside, value, pad_value)

    packed = te.compute((n, ic_blocks, height + 2 * ph, width + 2 * pw, ci), pack, name=PACK)
    r_block, r_y, r_x, r_c = (te.reduce_axis((0, ic_blocks), "r_block"), te.reduce_axis((0, kh), "r_y"),
                              te.reduce_axis((0, kw), "r_x"), te.reduce_axis((0, ci), "r_c"))
    accumulated = te.compute(
        (n, oc_blocks, out_h, out_w, oi),
        lambda b, o, y, x, lane: te.sum(packed[b, r_block, y * sh + r_y, x * sw + r_x, r_c].astype("int32")
                                        * weight[o, r_block, r_y, r_x, lane, r_c].astype("int32"),
                                        axis=[r_block, r_y, r_x, r_c]),
        name=CONV)
    return te.compute(
        (n, out_channels, out_h, out_w),
        lambda b, o, y, x: (accumulated[b, o // oi, y, x, o % oi] - correction[o]).astype("float32") * multiplier[o]
        + bias[o], name=OUT)


def pack_weight(weight: np.ndarray, family: Family) -> np.ndarray:
    """int8 [OC, C, KH, KW] -> [OC/oi, C/ci, KH, KW, oi, ci], zero-padded to whole blocks."""
    oc, c, kh, kw = weight.shape
    oc_blocks, ic_blocks = -(-oc // family.oi), -(-c // family.ci)
    padded = np.zeros((oc_blocks * family.oi, ic_blocks * family.ci, kh, kw), np.int8)
    padded[:oc, :c] = weight
    return np.ascontiguousarray(padded.reshape(oc_blocks, family.oi, ic_blocks, family.ci, kh, kw)
                                .transpose(0, 2, 4, 5, 1, 3))


def epilogue_constants(weight: np.ndarray, weight_scale: np.ndarray, bias: np.ndarray, act_scale: float,
                       zero_point: int, family: Family) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int32 correction, fp32 multiplier, fp32 bias) per output channel. The padded input holds
    the zero-point, so every window sums (code - offset) x w over the full kernel and
    (zero_point - offset) x sum(w) is a constant per channel, subtracted in int32 (exact)."""
    weight_sums = weight.reshape(weight.shape[0], -1).astype(np.int64).sum(axis=1)
    correction = ((zero_point - family.act_offset) * weight_sums).astype(np.int32)
    multiplier = (np.float32(act_scale) * weight_scale.astype(np.float32)).astype(np.float32)
    return correction, multiplier, bias.astype(np.float32)


# ------------------------------------------------------------------------------ frontend


def exported_values(exported) -> dict[str, np.ndarray]:
    """Placeholder name -> value for the parameters, buffers and constants of an ExportedProgram."""
    kinds = torch.export.graph_signature.InputKind
    values = {}
    for spec in exported.graph_signature.input_specs:
        if spec.kind in (kinds.PARAMETER, kinds.BUFFER):
            values[spec.arg.name] = exported.state_dict[spec.target]
        elif spec.kind == kinds.CONSTANT_TENSOR:
            values[spec.arg.name] = exported.constants[spec.target]
    return {name: value.detach().cpu().numpy() for name, value in values.items()}


def convert_map(exported, target) -> dict:
    """custom_convert_map for from_exported_program: integer_model's ops as integer TE kernels for
    `target`'s family (module docstring)."""
    family = family_of(target)
    values = exported_values(exported)

    def value(node) -> np.ndarray:
        return values[node.name]

    def quantize(node, importer):
        x, scale, zero_point = node.args
        return importer.block_builder.emit_te(quantize_te, importer.env[x], float(scale), int(zero_point),
                                              primfunc_name_hint="es_quantize_u8")

    def dequantize(node, importer):
        q, scale, zero_point = node.args
        return importer.block_builder.emit_te(dequantize_te, importer.env[q], float(scale), int(zero_point),
                                              primfunc_name_hint="es_dequantize_u8")

    def conv(node, importer):
        q, weight, weight_scale, bias, act_scale, zero_point, stride, padding = node.args
        weight = value(weight)
        correction, multiplier, bias = epilogue_constants(weight, value(weight_scale), value(bias), act_scale,
                                                          zero_point, family)
        constants = [relax.const(a) for a in (pack_weight(weight, family), correction, multiplier, bias)]
        kernel = functools.partial(conv_te, family=family, zero_point=int(zero_point), stride=tuple(stride),
                                   padding=tuple(padding), out_channels=weight.shape[0])
        return importer.block_builder.emit_te(kernel, importer.env[q], *constants, primfunc_name_hint="es_int8_conv2d",
                                              primfunc_attrs={"op_pattern": OUT_ELEMWISE_FUSABLE})

    return {"quantize_u8.default": quantize, "dequantize_u8.default": dequantize, "int8_conv2d.default": conv}


def has_integer_ops(exported) -> bool:
    return any(node.op == "call_function" and str(node.target).startswith("edgesearch.")
               for node in exported.graph.nodes)


# ------------------------------------------------------------------------------ schedules


def is_integer_conv(sch) -> bool:
    try:
        sch.get_sblock(CONV)
        return True
    except Exception:  # noqa: BLE001  (TVM raises when the block is absent)
        return False


def _intrinsic(family: Family, target) -> str | None:
    """The tensor intrinsic for the inner oi x ci tile, or None (plain loops)."""
    from tvm.target import codegen

    if family.name == "x86" and codegen.target_has_features("avx512vnni", target):
        return tensor_intrinsics.vnni_intrinsic()
    if family.name == "arm":
        return tensor_intrinsics.neon_intrinsic()
    return None


def _largest_divisor(n: int, cap: int) -> int:
    return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)


def schedule_integer_conv(sch, target) -> None:
    """The CPU schedule of the module docstring."""
    family = family_of(target)
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
    if len(outputs) != 1:
        raise ValueError("integer conv kernel with several outputs")
    inline_all(sch, {PACK, CONV} | outputs)  # the epilogue chain becomes one block
    (output_name,) = outputs
    conv, pack, output = sch.get_sblock(CONV), sch.get_sblock(PACK), sch.get_sblock(output_name)

    b, o, y, x, lane, r_block, r_y, r_x, r_c = sch.get_loops(conv)
    oc_blocks, width = int(sch.get(o).extent), int(sch.get(x).extent)
    o_outer, o_inner = sch.split(o, [None, _largest_divisor(oc_blocks, family.oc_tiles)])
    x_outer, x_inner = sch.split(x, [None, _largest_divisor(width, family.x_tile)])
    sch.reorder(b, o_outer, y, x_outer, r_block, r_y, r_x, o_inner, x_inner, lane, r_c)
    sch.reverse_compute_at(output, x_outer)
    sch.parallel(sch.fuse(b, o_outer, y))
    init = sch.decompose_reduction(conv, r_block)
    intrinsic = _intrinsic(family, target)
    if intrinsic is not None:
        sch.tensorize(lane, intrinsic)
    sch.unroll(o_inner)
    sch.unroll(x_inner)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(output)[-1])
    pack_loops = sch.get_loops(pack)
    sch.parallel(sch.fuse(*pack_loops[:3]))


def kernel_description(target) -> str:
    """How the integer kernels compute on `target`, for latency labels."""
    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    family = family_of(target)
    if family.name == "cuda":
        return "CUDA dp4a"
    from tvm.target import codegen

    if family.name == "x86" and codegen.target_has_features("avx512vnni", target):
        return "AVX-512 VNNI vpdpbusd"
    if family.name == "arm":
        return "NEON int8 dot product (smull/saddlp)"
    return "int8 loops without a dot-product instruction"


CUDA_THREADS = 128


def _bind_flat(sch, block, threads: int = CUDA_THREADS) -> None:
    """All spatial loops of a block fused and spread over CUDA blocks x `threads` threads."""
    loops = sch.get_loops(block)
    block_x, thread_x = sch.split(sch.fuse(*loops), [None, threads])
    sch.bind(block_x, "blockIdx.x")
    sch.bind(thread_x, "threadIdx.x")


def schedule_integer_conv_cuda(sch) -> None:
    """The CUDA schedule: three launches, one per stage. pack and the epilogue (with whatever
    FuseOps fused after it) one thread per element; conv one thread per int32 accumulator (kept
    in a register), its reduction over input-channel blocks and the kernel window serial, each
    4-channel step one __dp4a on 4-byte operands read from global memory. No shared-memory
    tiling: a correct, compilable, dp4a kernel, not a tuned one."""
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
    if len(outputs) != 1:
        raise ValueError("integer conv kernel with several outputs")
    inline_all(sch, {PACK, CONV} | outputs)
    (output_name,) = outputs
    conv = sch.get_sblock(CONV)
    accumulator = sch.cache_write(conv, 0, "local")
    b, o, y, x, lane, r_block, r_y, r_x, r_c = sch.get_loops(conv)
    spatial = sch.fuse(b, o, y, x, lane)
    # threads dividing the accumulator count: a ragged last block would put a predicate on the
    # conv block, and tensorize cannot match a predicated block
    block_x, thread_x = sch.split(spatial, [None, _largest_divisor(int(sch.get(spatial).extent), CUDA_THREADS)])
    sch.bind(block_x, "blockIdx.x")
    sch.bind(thread_x, "threadIdx.x")
    sch.reverse_compute_at(accumulator, thread_x)
    sch.decompose_reduction(conv, r_block)
    sch.tensorize(r_c, tensor_intrinsics.dp4a_intrinsic())
    _bind_flat(sch, sch.get_sblock(PACK))
    _bind_flat(sch, sch.get_sblock(output_name))


def cuda_schedule_pass():
    """A module pass giving every integer conv kernel `schedule_integer_conv_cuda` (marked
    scheduled, so dlight's rules leave it alone)."""
    from tvm.s_tir import Schedule

    @tvm.transform.module_pass(opt_level=0, name="EdgesearchIntegerCUDASchedule")
    def schedule_all(mod, ctx):
        updates = {}
        for var, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc):
                sch = Schedule(func)
                if is_integer_conv(sch):
                    # Relax's TE kernels index in int64 and the dp4a description in int32:
                    # tensorize cannot match them (IterVar dtype check), so narrow first
                    narrowed = tirx.transform.ForceNarrowIndexToInt32()(tvm.IRModule({"main": func}))
                    sch = Schedule(narrowed["main"])
                    schedule_integer_conv_cuda(sch)
                    updates[var] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        for var, func in updates.items():
            mod[var] = func
        return mod

    return schedule_all
