"""Per-layer latency table: affordable latency for many candidates, cached per hardware profile.

A full TVM build per candidate costs seconds to minutes (more with tuning). Most candidates share
most of their blocks with designs already seen, so instead each top-level block of the YOLO
(`model.model[i]`: Conv, C2f, SPPF, Upsample, Concat, Detect) is built and timed alone, once, and
its latency is stored under a signature of what decides it in this build: the block's module
structure (types, conv channels / kernel sizes / strides / groups, parameter shapes; an integer
conv is an IntegerConv2d, integer_model.py) and its input shapes - never weight values or
quantization scales. `integer=True` times the blocks of the model's integer form (convs with int8
activations and <=8-bit weights as int8 kernels); the default times the fp32 form. A candidate's latency is the sum over its blocks; only blocks with a
signature not yet in the table are built and timed.

The sum is an estimate, and says so: a full build fuses across block boundaries and pays no
per-block call overhead (bench/hardware_fidelity.py measures the gap). Final designs should be
re-measured as full builds.

The cache is one JSON file per profile in <cache>/layer_latency/ (EDGESEARCH_CACHE or
~/.cache/edgesearch), with one section per build pipeline (TVM version, target, thread count,
schedule, and the code that builds): entries are only reused under the pipeline that measured
them, and sections from older code are dropped on the next write.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import tvm
from torch import nn
from tvm import relax

from edgesearch.common.cache import cache_root
from edgesearch.common.errors import InputError
from edgesearch.runners.hardware import build, integer_kernels, integer_model, tensor_intrinsics, tuning, tvm_schedule
from edgesearch.runners.hardware.integer_model import integer_copy
from edgesearch.runners.hardware.profiles import HardwareProfile
from edgesearch.runners.hardware.turns import timing_turn
from edgesearch.spaces.quantize import strip_fake_quant

# Attributes that do not describe a block's computation: its position in the model graph ("i",
# "f"; the input shapes are recorded instead), ultralytics' bookkeeping ("type"; "np" is the
# parameter count at construction, stale after pruning - parameter shapes are recorded instead),
# and Detect's anchor-grid cache ("shape", set by whichever forward ran last).
# The integer modules' activation scale and zero-point are values, not structure.
NON_STRUCTURAL_ATTRIBUTES = frozenset({"i", "f", "np", "type", "shape", "act_scale", "zero_point", "scale"})
FIXED_SCHEDULE = "fixed schedule"
NOISY_SPREAD = 0.5  # a block timing whose max - min exceeds half its median is taken again
MEASURE_ATTEMPTS = 3
# New blocks are timed in this many interleaved rounds (every new block once per round): a machine
# disturbed at one moment slows one round of each block, not every run of one block. Timed one block
# after the other, YOLOv5nu's int8 C3 block (0.13 ms) was once stored at 42 ms (10 runs of >= 20 ms,
# all slow, so the spread check passed), and every design of that run was priced with it.
ROUNDS = 3


# ------------------------------------------------------------------------- blocks and inputs


def top_level_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of an ultralytics DetectionModel, in execution order."""
    blocks = getattr(model, "model", None)
    if not isinstance(blocks, nn.Sequential) or not all(hasattr(block, "f") for block in blocks):
        raise InputError("per-layer latency needs an ultralytics DetectionModel (model.model: blocks with .f)")
    return list(blocks)


def capture_block_inputs(model: nn.Module, imgsz: int) -> list[list[torch.Tensor]]:
    """Each block's inputs during one forward pass on a 1x3ximgszximgsz image (forward pre-hooks).
    A block reading several earlier outputs (Concat, Detect) gets them as a list."""
    captured: list[list[torch.Tensor]] = []

    def record(module, args):
        value = args[0]
        tensors = value if isinstance(value, (list, tuple)) else [value]
        captured.append([t.detach().clone() for t in tensors])

    handles = [block.register_forward_pre_hook(record) for block in top_level_blocks(model)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, imgsz, imgsz))
    finally:
        for handle in handles:
            handle.remove()
    return captured


class BlockCall(nn.Module):
    """One block called as DetectionModel calls it: a list of tensors when it reads several
    earlier outputs (`.f` is a list), else the tensor. torch.export wants plain tensor arguments."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.takes_list = not isinstance(block.f, int)

    def forward(self, *inputs: torch.Tensor):
        return self.block(list(inputs) if self.takes_list else inputs[0])


def export_block(block: nn.Module, inputs: list[torch.Tensor], target: dict | None = None):
    """A Relax IRModule of one block, through the same torch.export frontend as the full build
    (`target` lays out integer kernels' weights)."""
    return build.relax_module(BlockCall(block), tuple(inputs), target)


# ------------------------------------------------------------------------------- signatures


def _plain(value):
    """`value` if it is a JSON-able scalar or a (nested) tuple/list of them, else None."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        return items if all(v is not None or o is None for v, o in zip(items, value, strict=True)) else None
    return None


def _module_description(module: nn.Module) -> dict:
    """Class, plain hyper-parameters (channels, kernel size, stride, groups, flags) and the shapes
    of its own parameters and buffers - no values."""
    attributes = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key in NON_STRUCTURAL_ATTRIBUTES:
            continue
        plain = _plain(value)
        if plain is not None or value is None:
            attributes[key] = plain
    tensors = {name: list(t.shape) for name, t in [*module.named_parameters(recurse=False),
                                                   *module.named_buffers(recurse=False)]}
    return {"class": f"{type(module).__module__}.{type(module).__qualname__}", "attributes": attributes,
            "tensors": tensors}


def block_signature(block: nn.Module, input_shapes: list[list[int]]) -> str:
    """A short hash of everything that decides the block's fp32 latency (see module docstring)."""
    description = {
        "modules": {name: _module_description(module) for name, module in block.named_modules()},
        "inputs": input_shapes,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass
class Block:
    index: int
    module: nn.Module  # in export mode, without fake quantization
    inputs: list[torch.Tensor]  # as captured in one forward pass
    type: str
    input_shapes: list[list[int]]
    signature: str


def describe_blocks(model: nn.Module, imgsz: int, *, integer: bool = False) -> list[Block]:
    """The model's top-level blocks with their inputs at imgsz and their signatures, in the fp32
    form or (`integer`) the integer form of a baked model. Works on a copy: the caller's model is
    not modified."""
    if integer:
        model = integer_copy(model)[0].eval()
    else:
        model = build.float_copy(model).eval()
        strip_fake_quant(model)  # the fp32 build's speed does not depend on bit-widths
    build.set_export_mode(model)
    blocks, block_inputs = [], capture_block_inputs(model, imgsz)
    for index, (module, inputs) in enumerate(zip(top_level_blocks(model), block_inputs, strict=True)):
        shapes = [list(t.shape) for t in inputs]
        blocks.append(Block(index, module, inputs, type(module).__name__, shapes, block_signature(module, shapes)))
    return blocks


# ------------------------------------------------------------------------------------ cache


def table_path(profile: HardwareProfile) -> Path:
    return cache_root() / "layer_latency" / f"{profile.name}.json"


@functools.cache
def build_code_hash() -> str:
    """Hash of the code that builds: build.py's pipeline, the integer kernels, the fixed schedule,
    the tuning driver.
    Read once per process, so it describes the code this process runs even if the files are
    edited meanwhile."""
    digest = hashlib.sha256()
    for module in (build, integer_kernels, integer_model, tensor_intrinsics, tvm_schedule, tuning):
        source = module.__file__
        assert source is not None  # each is loaded from a file
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:16]


def build_pipeline(profile: HardwareProfile, schedule: str, integer: bool = False) -> dict:
    """What the cached latencies hold for: a change to any of these makes them stale."""
    return {
        "tvm": tvm.__version__,
        "target": profile.target,
        "threads": int(tvm.get_global_func("runtime.NumThreads")()),
        "schedule": schedule,
        "precision": "integer where the model allows" if integer else "fp32",
        "pipeline_code": build_code_hash(),
        # how entries were timed: those timed one block after the other may hold a disturbed moment (ROUNDS)
        "timing": f"new blocks in {ROUNDS} interleaved rounds",
    }


def _pipeline_key(pipeline: dict) -> str:
    return hashlib.sha256(json.dumps(pipeline, sort_keys=True).encode()).hexdigest()[:12]


def _read_sections(path: Path) -> dict:
    """{pipeline key: {"pipeline": ..., "blocks": {signature: entry}}}; empty if missing or unreadable."""
    try:
        stored = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    sections = stored.get("pipelines") if isinstance(stored, dict) else None
    return sections if isinstance(sections, dict) else {}


def load_table(path: Path, pipeline: dict) -> dict:
    """{signature: entry} measured under this pipeline (empty if none)."""
    section = _read_sections(path).get(_pipeline_key(pipeline))
    return section["blocks"] if isinstance(section, dict) and isinstance(section.get("blocks"), dict) else {}


def save_entries(path: Path, pipeline: dict, entries: dict) -> None:
    """Merge `entries` into this pipeline's section of the table file. Sections for other schedules
    or thread counts stay; sections built by other code or TVM versions, or timed another way (stale),
    are dropped.
    Atomic (temp file + os.replace), and under a lock so that concurrent trials on the same
    profile do not drop each other's entries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sections = {key: section for key, section in _read_sections(path).items()  # re-read: others may have written
                    if isinstance(section, dict) and _same_code(section.get("pipeline"), pipeline)}
        key = _pipeline_key(pipeline)
        blocks = {**sections.get(key, {}).get("blocks", {}), **entries}
        sections[key] = {"pipeline": pipeline, "blocks": blocks}
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"pipelines": sections}, indent=1, sort_keys=True))
        os.replace(temporary, path)


def _same_code(stored: dict | None, current: dict) -> bool:
    return isinstance(stored, dict) and all(stored.get(k) == current.get(k) for k in ("tvm", "pipeline_code", "timing"))


# ---------------------------------------------------------------------------------- measuring


def time_executables(executables: dict[str, tuple[object, list[torch.Tensor]]], *, repeat: int, min_repeat_ms: int,
                     rounds: int = ROUNDS, attempts: int = MEASURE_ATTEMPTS) -> dict[str, dict]:
    """{key: median and spread (max - min) of about `repeat` time-evaluator runs, each at least
    min_repeat_ms long} of several (executable, inputs), timed in `rounds` interleaved rounds.

    A table entry is reused by every later candidate, so one disturbed measurement would skew them
    all: one untimed warm-up pass each first (the first runs of a fresh build are slower: page faults,
    cold caches); the rounds interleave the executables (ROUNDS), and an executable whose spread
    exceeds NOISY_SPREAD x its median (another process took the cores) is timed again, up to
    `attempts` times, keeping the quietest measurement."""
    device = tvm.cpu()
    timers, arguments = {}, {}
    per_round = max(1, -(-repeat // rounds))
    for key, (executable, inputs) in executables.items():
        vm = relax.VirtualMachine(executable, device)
        arguments[key] = [tvm.runtime.tensor(np.zeros(tuple(t.shape), dtype="float32"), device) for t in inputs]
        vm.time_evaluator("main", device, number=1, repeat=1, min_repeat_ms=min_repeat_ms)(*arguments[key])  # warm-up
        timers[key] = vm.time_evaluator("main", device, number=1, repeat=per_round, min_repeat_ms=min_repeat_ms)
    measurements: dict[str, list[dict]] = {key: [] for key in timers}
    pending = list(timers)
    while pending:
        times: dict[str, list[float]] = {key: [] for key in pending}
        for _ in range(rounds):
            for key in pending:
                times[key] += [t * 1e3 for t in timers[key](*arguments[key]).results]
        for key, times_ms in times.items():
            measurements[key].append({"latency_ms": statistics.median(times_ms),
                                      "latency_spread_ms": max(times_ms) - min(times_ms)})
        pending = [key for key in pending if len(measurements[key]) < attempts
                   and measurements[key][-1]["latency_spread_ms"] > NOISY_SPREAD * measurements[key][-1]["latency_ms"]]
    return {key: {**min(taken, key=lambda m: m["latency_spread_ms"]), "attempts": len(taken), "rounds": rounds}
            for key, taken in measurements.items()}


def build_block(block: Block, profile: HardwareProfile, *, tune_trials: int = 0,
                tuning_db: Path | None = None) -> tuple[object, dict]:
    """Compile one block alone, as the full build compiles a model: (executable, {build_s, and for
    the fixed schedule unscheduled_kernels (kernels left with naive loops)})."""
    mod = export_block(block.module, block.inputs, profile.target)
    started = time.perf_counter()
    if tune_trials > 0:
        if tuning_db is None:
            raise ValueError("tuning (tune_trials > 0) needs a tuning database")
        executable, _ = tuning.tune_and_build(mod, profile.target, tuning_db, tune_trials)
        return executable, {"build_s": time.perf_counter() - started}
    executable, built = build.build_local(mod, profile.target)
    return executable, {"build_s": time.perf_counter() - started,
                        "unscheduled_kernels": len(built["unscheduled_kernels"])}


def measure_blocks(blocks: list[Block], profile: HardwareProfile, *, repeat: int, min_repeat_ms: int,
                   tune_trials: int, tuning_db: Path | None) -> dict[str, dict]:
    """{signature: entry} of blocks of distinct signatures: each built alone (fixed schedule, or
    MetaSchedule-tuned), then all timed together in interleaved rounds (time_executables)."""
    built = {block.signature: (block, *build_block(block, profile, tune_trials=tune_trials, tuning_db=tuning_db))
             for block in blocks}
    with timing_turn():  # other trials' work on this machine (another search's, say) pauses while blocks are timed
        timings = time_executables({signature: (executable, block.inputs) for signature, (block, executable, _)
                                    in built.items()}, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return {signature: {"type": block.type, "input_shapes": block.input_shapes, **timings[signature], **build}
            for signature, (block, _, build) in built.items()}


def per_layer_latency(model: nn.Module, profile: HardwareProfile, imgsz: int, *, repeat: int = 10,
                      min_repeat_ms: int = 20, tune_trials: int = 0, tuning_db: str | Path | None = None,
                      integer: bool = False) -> dict:
    """Latency of `model` at imgsz as the sum of its blocks' latencies, each from the profile's
    table or, if its signature is new, built and timed now (and added to the table).

    Returns {latency_ms, latency_spread_ms (sum of per-block spreads: a pessimistic bound),
    latency_source, blocks: [{index, name, type, signature, input_shapes, latency_ms,
    latency_spread_ms, cached}], measured_blocks, cached_blocks, table}. The model is not modified.
    `tune_trials` > 0 builds blocks with MetaSchedule (database `tuning_db`) instead of the fixed schedule.
    `integer`: time the blocks of the model's integer form (a baked model with calibrated int8
    activations); its entries sit in their own section of the table."""
    from edgesearch.runners.hardware.measure import timed_here  # measure loads TVM's build pipeline

    if not timed_here(profile):
        raise InputError(f"per-layer latency is measured on this machine; profile {profile.name} is not timed here")
    if tune_trials > 0 and not tuning_db:
        raise InputError("per-layer latency with tuning needs a tuning database folder (tuning_db)")
    schedule = f"MetaSchedule-tuned, {tune_trials} trials" if tune_trials > 0 else FIXED_SCHEDULE
    pipeline = build_pipeline(profile, schedule, integer)
    path = table_path(profile)
    table = load_table(path, pipeline)
    blocks = describe_blocks(model, imgsz, integer=integer)
    new: dict[str, Block] = {}  # the first block of each signature the table lacks
    for block in blocks:
        if block.signature not in table:
            new.setdefault(block.signature, block)
    if new:  # new structures: built, timed together, stored
        entries = measure_blocks(list(new.values()), profile, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                 tune_trials=tune_trials, tuning_db=Path(tuning_db) if tuning_db else None)
        save_entries(path, pipeline, entries)
        table.update(entries)
    measured = len(new)
    rows = []
    for block in blocks:
        entry = table[block.signature]
        rows.append({"index": block.index, "name": f"model.{block.index}", "type": block.type,
                     "signature": block.signature, "input_shapes": block.input_shapes,
                     "latency_ms": entry["latency_ms"], "latency_spread_ms": entry["latency_spread_ms"],
                     "cached": new.get(block.signature) is not block})
    return {
        "latency_ms": sum(row["latency_ms"] for row in rows),
        "latency_spread_ms": sum(row["latency_spread_ms"] for row in rows),
        "latency_source": (f"estimated: sum of per-layer measured latencies ({len(rows)} blocks, {schedule}, "
                           f"{'integer convs as int8 kernels' if integer else 'fp32'})"),
        "blocks": rows,
        "measured_blocks": measured,
        "cached_blocks": len(rows) - measured,
        "table": str(path),
    }
