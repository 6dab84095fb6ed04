"""A tuning-free CPU schedule for the TIR kernels TVM Relax produces from a CNN.

Relax's LegalizeOps emits naive loop nests (no parallel loops, no vectors) and the default CPU
pipeline leaves them so: dlight's CPU rules cover only GEMV and reductions, not convolutions. An
untuned YOLOv8n build therefore ran ~40x slower than ONNX Runtime here. This pass gives every
kernel a simple fixed schedule instead:

  - a fused NCHW conv2d (+ its elementwise epilogue): output channels tiled by `OC_TILE` and
    unrolled as a register tile, output rows vectorized along W (or along the flattened H*W for
    1x1 stride-1 convs, which are GEMMs), the outer loops parallel, padding kept as its own
    parallel stage, the epilogue computed per tile;
  - every other kernel: intermediates inlined, leading spatial loops fused and parallel.

  - an integer conv (integer_kernels.py): that module's schedule for the target's family
    (VNNI / NEON dot-product tensorization).

A kernel the rule cannot handle keeps its naive (correct, slow) loops and is listed in
`unscheduled`. MetaSchedule tuning would search these choices; this fixed rule needs no search.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.s_tir import Schedule

from edgesearch.runners.hardware import integer_kernels
from edgesearch.runners.hardware.tir_blocks import inline_all, iter_kinds, root_blocks

VECTOR_LANES = 16  # fp32 lanes of one AVX-512 register
OC_TILE = 8  # output channels per register tile


def _extent(sch, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _largest_divisor(n: int, cap: int) -> int:
    return next(d for d in range(min(n, cap), 0, -1) if n % d == 0)


def _output_names(sch) -> set[str]:
    return {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}


def _parallel_spatial(sch, block, max_fused: int | None = None) -> None:
    """Fuse the leading spatial loops of a block and run them in parallel."""
    loops = sch.get_loops(block)
    spatial = len(iter_kinds(sch, block)) - len(iter_kinds(sch, block).lstrip("S"))
    spatial = min(spatial, len(loops), max_fused or len(loops))
    if spatial:
        sch.parallel(sch.fuse(*loops[:spatial]) if spatial > 1 else loops[0])


def _vectorize_innermost(sch, block) -> None:
    """Vectorize a spatial block's innermost loop when it is short and not the parallel one: the
    upsample / concat / requantize kernels between convs ran scalar (0.3 ms for a 49k-element
    resize + concat + quantize)."""
    if "R" in iter_kinds(sch, block):
        return
    loops = sch.get_loops(block)
    extent = _extent(sch, loops[-1]) if len(loops) > 1 else None
    if extent is None or extent > 4 * VECTOR_LANES:
        return
    try:
        sch.vectorize(loops[-1])
    except Exception:  # noqa: BLE001  (left scalar: still correct)
        pass


def _is_pointwise_stride1(sch, conv) -> bool:
    """1x1 kernel, stride 1, no padding: the data input has the output's spatial shape."""
    block = sch.get(conv)
    out_shape = [int(v) for v in block.writes[0].source.shape]
    if [int(iv.dom.extent) for iv in block.iter_vars[5:]] != [1, 1]:
        return False
    in_channels = int(block.iter_vars[4].dom.extent)
    for region in block.reads:
        shape = [int(v) for v in region.source.shape]
        if len(shape) == 4 and shape[2:] == out_shape[2:] and shape[1] == in_channels:
            return True
    return False


def _schedule_conv(sch, conv) -> None:
    conv_name = sch.get(conv).name_hint
    keep = {conv_name} | _output_names(sch)
    for block in root_blocks(sch):  # a padding stage that really pads stays a stage of its own
        name = sch.get(block).name_hint
        if name.startswith("pad_temp"):
            src, dst = sch.get(block).reads[0].source.shape, sch.get(block).writes[0].source.shape
            if [int(a) for a in src] != [int(a) for a in dst]:
                keep.add(name)
    inline_all(sch, keep)
    conv = sch.get_sblock(conv_name)
    consumers = list(sch.get_consumers(conv))
    if len(consumers) > 1:
        raise ValueError("conv with several consumers")
    epilogue = consumers[0] if consumers else sch.cache_write(conv, 0, "global")
    conv = sch.get_sblock(conv_name)
    for block in root_blocks(sch):
        if sch.get(block).name_hint not in (conv_name, sch.get(epilogue).name_hint):
            _parallel_spatial(sch, block, max_fused=2)

    n, f, y, x, rc, ry, rx = sch.get_loops(conv)
    channels, height, width = _extent(sch, f), _extent(sch, y), _extent(sch, x)
    if channels is None or height is None or width is None:
        raise ValueError("conv with a dynamic extent")
    f_outer, f_inner = sch.split(f, [None, _largest_divisor(channels, OC_TILE)])
    lanes = None
    if _is_pointwise_stride1(sch, conv) and height and width:  # a GEMM over H*W
        options = [c for c in (VECTOR_LANES, 2 * VECTOR_LANES, VECTOR_LANES // 2, 8)
                   if (height * width) % c == 0 and (c % width == 0 or width % c == 0)]
        if options:
            x_outer, x_inner = sch.split(sch.fuse(y, x), [None, options[0]])
            sch.reorder(n, f_outer, x_outer, rc, ry, rx, f_inner, x_inner)
            parallel = sch.fuse(n, f_outer)
            lanes = options[0]
    if lanes is None:
        # power-of-two vectors: 20-lane vectors ran 3x slower than 16-lane ones with LLVM
        lanes = next((c for c in (VECTOR_LANES, VECTOR_LANES // 2, VECTOR_LANES // 4) if width % c == 0), None)
        if lanes is None:
            lanes = width if width <= 2 * VECTOR_LANES else _largest_divisor(width, 2 * VECTOR_LANES)
        x_outer, x_inner = sch.split(x, [None, lanes])
        sch.reorder(n, f_outer, y, x_outer, rc, ry, rx, f_inner, x_inner)
        parallel = sch.fuse(n, f_outer, y)
    sch.reverse_compute_at(epilogue, x_outer)
    sch.parallel(parallel)
    sch.unroll(f_inner)
    sch.vectorize(x_inner)  # before decompose_reduction, which would make it illegal
    sch.decompose_reduction(conv, rc)
    epilogue_loops = sch.get_loops(epilogue)
    if not sch.get(epilogue_loops[-1]).same_as(sch.get(x_outer)):
        sch.vectorize(epilogue_loops[-1])


def schedule_kernel(func: tirx.PrimFunc, target=None, serial: list[str] | None = None) -> tirx.PrimFunc | None:
    """The scheduled kernel, or None where the rule does not apply (the caller keeps it naive).
    Blocks whose loops could not be made parallel (still correct, slower) go to `serial`."""
    sch = Schedule(func)
    try:
        if integer_kernels.is_integer_conv(sch):
            integer_kernels.schedule_integer_conv(sch, target or tvm.target.Target.current())
            return sch.mod["main"]
        blocks = root_blocks(sch)
        convs = [b for b in blocks if "conv2d" in sch.get(b).name_hint and iter_kinds(sch, b) == "SSSSRRR"]
        if len(convs) == 1:
            _schedule_conv(sch, convs[0])
        else:
            inline_all(sch, _output_names(sch))
            for block in root_blocks(sch):
                try:
                    _parallel_spatial(sch, block)
                except Exception:  # noqa: BLE001  (left serial: still correct, and counted)
                    if serial is not None:
                        serial.append(sch.get(block).name_hint)
                _vectorize_innermost(sch, block)
        return sch.mod["main"]
    except Exception:  # noqa: BLE001  (any failure of the rule: keep the naive kernel, which is correct)
        return None


def cpu_schedule_pass(unscheduled: list[str], target=None, serial: list[str] | None = None):
    """A module pass scheduling every unscheduled kernel; names it could not schedule go to `unscheduled`,
    kernel:block names of blocks left serial to `serial`."""

    @tvm.transform.module_pass(opt_level=0, name="EdgesearchCPUSchedule")
    def schedule_all(mod, ctx):
        updates = {}
        for var, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and not (func.attrs and func.attrs.get("tirx.is_scheduled", 0)):
                left_serial: list[str] = []
                scheduled = schedule_kernel(func, target, left_serial)
                if serial is not None:
                    serial.extend(f"{var.name_hint}:{block}" for block in left_serial)
                if scheduled is None:
                    unscheduled.append(var.name_hint)
                else:
                    updates[var] = scheduled.with_attr("tirx.is_scheduled", True)
        for var, func in updates.items():
            mod[var] = func
        return mod

    return schedule_all
