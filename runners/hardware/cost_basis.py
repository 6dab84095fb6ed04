"""What the per-layer option tables need from the hardware side, for the base model on a profile.

Per searchable conv: its FLOPs, its input's element count (int8 activations shrink those bytes),
and its share of the latency in each precision the profile computes in: `latency_ms` as an fp32
kernel, `latency_ms_fp16` in half precision, `latency_ms_int8` as an integer kernel (what it costs
with activation_bits 8 and weight_bits <= 8, integer_model.py):
  x86-host (measured profiles): the per-block TVM timings of the profile's layer table
      (layer_table.py: each top-level block built and timed alone), a block's time shared among
      its convs by FLOPs. `latency_ms` from the fp32 blocks of the base; `latency_ms_int8` from
      the integer blocks of the base with every conv at 8-bit symmetric per-filter weights and
      int8 activations (ranges calibrated on one random batch: the speed does not depend on
      them). Blocks without convs (upsample, concat) are `fixed_ms` (fp32 table).
  device profiles: each conv's share of the profile's calibrated latency model (latency_model.py)
      with every conv in one precision, once per precision the profile computes in.
Both are estimates per layer, and say so; a design's real latency comes from its full build.
Plus the base's activation bytes after TVM's static memory planning (what the SRAM figure of a
trial starts from, scores.py).
"""

from __future__ import annotations

import os
from collections import defaultdict

import torch

from edgesearch.runners.checkpoints import load_detection_model
from edgesearch.runners.costs import layer_costs
from edgesearch.runners.hardware.build import export_for_tvm, float_copy, plan_memory_only
from edgesearch.runners.hardware.latency_model import calibration_for, estimate, network_work
from edgesearch.runners.hardware.layer_table import per_layer_latency
from edgesearch.runners.hardware.measure import timed_here
from edgesearch.runners.hardware.profiles import load_profile
from edgesearch.spaces.activations import calibrate
from edgesearch.spaces.apply import apply_candidate, conv_layers
from edgesearch.spaces.candidate import Candidate, LayerKnobs
from edgesearch.spaces.packing import bake_fake_quant

VERSION = 4  # bump when the basis changes: cached bases from older code are recomputed (4: at the trials' threads)


def cost_basis(settings: dict) -> dict:
    """settings: checkpoint, trust_checkpoint, profile, imgsz, threads. Plain data out."""
    torch.set_num_threads(settings["threads"])
    os.environ["TVM_NUM_THREADS"] = str(settings["threads"])
    profile = load_profile(settings["profile"])
    imgsz = settings["imgsz"]
    fused = apply_candidate(load_detection_model(settings["checkpoint"], trust=settings["trust_checkpoint"]),
                            Candidate({}))
    costs = {c.name: c for c in layer_costs(fused, (1, 3, imgsz, imgsz))}
    layers = {name: {"flops": c.flops, "input_elements": c.input_elements} for name, c in costs.items()}
    fixed_ms = 0.0
    if timed_here(profile):
        table = per_layer_latency(fused, profile, imgsz)
        int8_table = per_layer_latency(all_int8(fused, imgsz), profile, imgsz, integer=True)
        fixed_ms = _share_blocks(table, layers, "latency_ms")
        _share_blocks(int8_table, layers, "latency_ms_int8")
        source = ("estimated: per-block TVM timings of the profile's layer table (measured, "
                  f"{table['measured_blocks'] + int8_table['measured_blocks']} timed now, "
                  f"{table['cached_blocks'] + int8_table['cached_blocks']} cached; fp32 blocks for latency_ms, "
                  "integer blocks for latency_ms_int8), shared among a block's convs by FLOPs")
    else:
        calibration = calibration_for(profile)
        for precision in profile.compute_precisions:  # every conv in one precision: each conv's share
            result = estimate(network_work(fused, imgsz, dict.fromkeys(costs, precision)), profile, calibration)
            for name in layers:
                layers[name][latency_key(precision)] = result["per_layer_ms"][name]
            if precision == "fp32":
                fixed_ms = result["fixed_ms"]
        source = (f"estimated: {profile.name}'s calibrated latency model ({calibration.describe()}), each conv's "
                  f"share with every conv in {' / '.join(profile.compute_precisions)}")
    return {
        "profile": profile.name,
        "imgsz": imgsz,
        "threads": settings["threads"],  # on a measured profile the blocks' timings are at this many threads
        "compute_precisions": list(profile.compute_precisions),
        "layers": layers,
        "fixed_ms": fixed_ms,
        "latency_ms": fixed_ms + sum(layer["latency_ms"] for layer in layers.values()),
        "latency_source": source,
        "activation_bytes": plan_memory_only(export_for_tvm(float_copy(fused), imgsz)),
        "input_elements": sum(layer["input_elements"] for layer in layers.values()),
    }


def latency_key(precision: str) -> str:
    """The basis' key of a conv's latency share in `precision`: latency_ms (fp32), latency_ms_fp16, latency_ms_int8."""
    return "latency_ms" if precision == "fp32" else f"latency_ms_{precision}"


def all_int8(fused, imgsz: int):
    """The base with every conv but DFL's fixed decoding table at 8-bit symmetric per-filter weights
    and int8 activations, calibrated on one random batch and baked: its integer blocks time what
    an int8 option costs."""
    knobs = LayerKnobs(weight_bits=8, scheme="symmetric", granularity="filter", activation_bits=8)
    model = apply_candidate(fused, Candidate({name: knobs for name in conv_layers(fused) if ".dfl." not in name}))
    calibrate(model, [torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))])
    bake_fake_quant(model)
    return model


def _share_blocks(table: dict, layers: dict, key: str) -> float:
    """Share each block's time among its convs by FLOPs into layers[conv][key]; returns the time
    of blocks without convs."""
    convs_of_block = defaultdict(list)
    for name in layers:
        convs_of_block[int(name.split(".")[1])].append(name)
    fixed_ms = 0.0
    for block in table["blocks"]:
        members = convs_of_block.get(block["index"], [])
        flops = sum(layers[n]["flops"] for n in members)
        if not flops:
            fixed_ms += block["latency_ms"]
        for name in members:
            layers[name][key] = block["latency_ms"] * layers[name]["flops"] / flops
    return fixed_ms
