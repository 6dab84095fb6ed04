"""What the per-layer option tables need from the hardware side, for the base model on a profile.

Per searchable conv: its FLOPs, its input's element count (int8 activations shrink those bytes),
and its share of the latency:
  x86-host (measured profiles): the per-block TVM timings of the profile's layer table
      (layer_table.py: each top-level block built and timed alone), a block's time shared among
      its convs by FLOPs. Blocks without convs (upsample, concat) are `fixed_ms`.
  device profiles: a per-conv roofline from the profile's fp32 peak and bandwidth.
Both are estimates per layer, and say so; a design's real latency comes from its full build.
Plus the base's activation bytes after TVM's static memory planning (what the SRAM figure of a
trial starts from, scores.py).
"""

from __future__ import annotations

import os
from collections import defaultdict

import torch

from edgesearch.runners.checkpoints import load_detection_model
from edgesearch.runners.hardware.costs import layer_costs
from edgesearch.runners.hardware.build import export_for_tvm, float_copy, plan_memory_only
from edgesearch.runners.hardware.layer_table import per_layer_latency
from edgesearch.runners.hardware.profiles import load_profile
from edgesearch.spaces.apply import apply_candidate
from edgesearch.spaces.candidate import Candidate

ACTIVATION_DTYPE_BYTES = 4


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
    if profile.measurement == "local":
        table = per_layer_latency(fused, profile, imgsz)
        convs_of_block = defaultdict(list)
        for name in layers:
            convs_of_block[int(name.split(".")[1])].append(name)
        for block in table["blocks"]:
            members = convs_of_block.get(block["index"], [])
            flops = sum(layers[n]["flops"] for n in members)
            if not flops:
                fixed_ms += block["latency_ms"]
            for name in members:
                layers[name]["latency_ms"] = block["latency_ms"] * layers[name]["flops"] / flops
        source = ("estimated: per-block TVM timings of the profile's layer table (measured, "
                  f"{table['measured_blocks']} timed now, {table['cached_blocks']} cached), shared among a block's "
                  "convs by FLOPs")
    else:
        peak, bandwidth = profile.peak_ops_per_s["fp32"], profile.memory_bandwidth_bytes_per_s
        for name, c in costs.items():
            traffic = (c.weight_elements + c.input_elements + c.output_elements) * ACTIVATION_DTYPE_BYTES
            layers[name]["latency_ms"] = max(c.flops / peak, traffic / bandwidth) * 1e3
        source = f"estimated: per-conv roofline from {profile.name}'s fp32 peak and bandwidth"
    return {
        "profile": profile.name,
        "imgsz": imgsz,
        "layers": layers,
        "fixed_ms": fixed_ms,
        "latency_ms": fixed_ms + sum(layer["latency_ms"] for layer in layers.values()),
        "latency_source": source,
        "activation_bytes": plan_memory_only(export_for_tvm(float_copy(fused), imgsz)),
        "input_elements": sum(layer["input_elements"] for layer in layers.values()),
    }
