"""What build reuse saves (issue 18, item 3): a trial's hardware scoring with and without the run's
build cache, on a named sequence of designs as a search meets them (parents before their
weight-only children), and the front's re-measure from kept libraries against rebuilding.

Each round scores the sequence twice, interleaved design by design on this machine: today's path
(every design built and timed) and the cached path (a fresh cache per round, filled in sequence
order, as one run fills it). Seconds are `hardware_scores` wall time, the `hardware_s` of a trial;
the designs are the default base with the knobs below, calibrated on one random batch and baked
(no fine-tune: a build's speed does not depend on weight values). Then the re-measure: the same
designs timed interleaved from the libraries the cached path kept, against rebuilding them.

    .venv/bin/python bench/build_reuse.py [--rounds 2] [--out bench/results/build_reuse]

writes <out>.json and <out>.md. A shared machine: compare the two paths' ratios, not the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from edgesearch.search.cli_env import apply_process_env

apply_process_env()
os.environ.setdefault("TVM_NUM_THREADS", "1")  # as a trial of the default search (two in flight on 2 cores)

import torch  # noqa: E402

from edgesearch.common.files import write_text_atomically  # noqa: E402
from edgesearch.runners.hardware.build_cache import BuildCache  # noqa: E402
from edgesearch.runners.hardware.scores import KeptBuild, hardware_scores, remeasure_interleaved  # noqa: E402
from edgesearch.search.presets import PRESETS  # noqa: E402
from edgesearch.search.resolve import resolve_inputs  # noqa: E402
from edgesearch.spaces.activations import calibrate  # noqa: E402
from edgesearch.spaces.apply import apply_candidate  # noqa: E402
from edgesearch.spaces.candidate import Candidate, LayerKnobs  # noqa: E402
from edgesearch.spaces.packing import bake_fake_quant  # noqa: E402

INT8 = {"weight_bits": 8, "scheme": "symmetric", "granularity": "filter", "activation_bits": 8}


def designs(layers: list[str], prunable: list[str]) -> dict[str, dict[str, dict]]:
    """name -> {layer: knobs}: parents first, then children that change weights only (same graph)
    or structure / integer convs (a new graph)."""
    some, few = layers[::3], prunable[:3]
    int8 = {name: INT8 for name in layers}
    pruned = {name: {"prune_ratio": 0.25} for name in few}
    return {
        "base": {},
        "4-bit affine weights (float compute: the base's graph)": {name: {"weight_bits": 4} for name in layers},
        "int8 weights + activations": int8,
        "  child: 6-bit weights on a third of its layers": {**int8, **{n: {**INT8, "weight_bits": 6} for n in some}},
        "  child: k-means 4-bit + 50 % sparsity on a third": {
            **int8, **{n: {**INT8, "weight_bits": 4, "scheme": "kmeans", "granularity": "tensor", "sparsity": 0.5}
                       for n in some}},
        "  child: first layer's activations back to fp32 (new graph)": {**int8, layers[0]: {}},
        "3 layers pruned 25 %": pruned,
        "  child: 6-bit weights on its pruned layers": {n: {**knobs, "weight_bits": 6} for n, knobs in pruned.items()},
    }


def baked(base, layer_knobs: dict[str, dict], imgsz: int):
    candidate = Candidate({name: LayerKnobs(**knobs) for name, knobs in layer_knobs.items()})
    model = apply_candidate(base, candidate)
    calibrate(model, [torch.rand(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))])
    bake_fake_quant(model)
    return model


def timed(work):
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: the default preset's cached base)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="bench/results/build_reuse")
    args = parser.parse_args(argv)

    inputs = resolve_inputs(profile="x86-host", space="yolov8", model=args.model, data=None, preset="default")
    imgsz, profile = PRESETS["default"].imgsz, inputs.profile
    torch.set_num_threads(int(os.environ["TVM_NUM_THREADS"]))
    models = {name: baked(inputs.base_model, knobs, imgsz) for name, knobs in designs(
        list(inputs.resolved), [name for name, layer in inputs.resolved.items()
                                if 0.25 in layer.choices.get("prune_ratio", ())]).items()}
    rows: dict[str, dict] = {name: {"today_s": [], "cached_s": [], "reused": []} for name in models}
    with tempfile.TemporaryDirectory() as folder:
        cache = None
        for _ in range(args.rounds):
            cache = BuildCache(Path(folder), uuid.uuid4().hex)  # one run's cache, filled in sequence order
            for name, model in models.items():  # interleaved: today's path, then the cached one
                _, today_s = timed(lambda m=model: hardware_scores(m, profile, imgsz))
                scores, cached_s = timed(lambda m=model, c=cache: hardware_scores(m, profile, imgsz, cache=c))
                rows[name]["today_s"].append(today_s)
                rows[name]["cached_s"].append(cached_s)
                rows[name]["reused"].append(scores["build_reused"])
                rows[name]["build_key"] = scores["build_key"]
        assert cache is not None
        kept = {name: KeptBuild(*cache.library(row["build_key"])) for name, row in rows.items()}
        (_, from_libraries_s) = timed(lambda: remeasure_interleaved(kept, profile, imgsz, rounds=2, repeat=3))
        (_, rebuilt_s) = timed(lambda: remeasure_interleaved(models, profile, imgsz, rounds=2, repeat=3))

    results = [{"design": name.strip(), "reused": all(row["reused"]),
                "today_s": statistics.median(row["today_s"]), "cached_s": statistics.median(row["cached_s"]),
                "today_samples_s": row["today_s"], "cached_samples_s": row["cached_s"]} for name, row in rows.items()]
    today, cached = sum(r["today_s"] for r in results), sum(r["cached_s"] for r in results)
    hits = sum(r["reused"] for r in results)
    lines = ["| design | graph timed before in the run | today's path, s | cached path, s | ratio |",
             "|---|---|---:|---:|---:|"]
    for (name, _), r in zip(rows.items(), results, strict=True):
        lines.append(f"| {name.replace('  ', '&nbsp;&nbsp;')} | {'yes: reused' if r['reused'] else 'no: built'} | "
                     f"{r['today_s']:.1f} | {r['cached_s']:.1f} | {r['today_s'] / r['cached_s']:.2f}x |")
    lines.append(f"| **the sequence** | {hits} of {len(results)} | {today:.1f} | {cached:.1f} | {today / cached:.2f}x |")
    header = (f"Hardware scoring of {len(results)} designs of the default base (x86-host, {imgsz} px, "
              f"{os.environ['TVM_NUM_THREADS']} TVM thread), medians of {args.rounds} interleaved rounds "
              "(`hardware_scores` wall time; a miss also keeps its library, which today's path does not):")
    remeasure = (f"Re-measure of the {len(results)} designs (2 rounds x 3 repeats): from the kept libraries "
                 f"{from_libraries_s:.1f} s, rebuilding them {rebuilt_s:.1f} s ({rebuilt_s / from_libraries_s:.1f}x).")
    text = header + "\n\n" + "\n".join(lines) + "\n\n" + remeasure + "\n"
    write_text_atomically(Path(args.out + ".json"), json.dumps(
        {"imgsz": imgsz, "rounds": args.rounds, "results": results, "remeasure_from_libraries_s": from_libraries_s,
         "remeasure_rebuilt_s": rebuilt_s}, indent=2))
    write_text_atomically(Path(args.out + ".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
