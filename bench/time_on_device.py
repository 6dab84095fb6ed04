"""Time exported designs on the device itself and write the rows `search calibrate` reads.

Runs on the device (e.g. a Raspberry Pi 4) with nothing but Python 3, numpy and onnxruntime
(`pip install onnxruntime numpy`): no edgesearch, no TVM, no torch. Copy this file and the .onnx
files `search export --format onnx --profile P` wrote to the device, then

    python3 time_on_device.py d1.onnx d2.onnx d3.onnx d4.onnx d5.onnx --threads 4 --out timings.csv

Each file's design id and profile come from the metadata the export stamped into it
(edgesearch_design_id, edgesearch_profile). The files are timed in interleaved rounds (a round runs
each file `--runs` times, after `--warmup` untimed runs), so a slow drift of the board (heat, other
processes) touches every design alike; a file's latency is the median over all its runs of one
forward pass (batch 1, a random image in [0, 1]: latency does not depend on the values), in ms.
Writes (or appends to) the CSV: design_id,profile,runtime,latency_ms, one row per file. Then, on the
machine that exported the designs:

    search calibrate --profile raspberry-pi-4 --timings timings.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

COLUMNS = ("design_id", "profile", "runtime", "latency_ms")


def session(path: str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def feed_of(sess: ort.InferenceSession) -> dict:
    (inp,) = sess.get_inputs()
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    return {inp.name: np.random.default_rng(0).random(shape, dtype=np.float32)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", nargs="+", help="ONNX files written by `search export --format onnx`")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over all files")
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each file per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs of each file first")
    parser.add_argument("--runtime", help="what the CSV's runtime column says (default: onnxruntime <version> CPU "
                                          "<threads> threads)")
    parser.add_argument("--out", default="timings.csv", help="CSV to write, or append to when it exists")
    args = parser.parse_args(argv)
    runtime = args.runtime or f"onnxruntime {ort.__version__} CPU {args.threads} threads"
    sessions, feeds, identity = {}, {}, {}
    for path in args.onnx:
        sess = session(path, args.threads)
        meta = sess.get_modelmeta().custom_metadata_map
        if "edgesearch_design_id" not in meta:
            print(f"{path}: no edgesearch_design_id in its metadata; export it with `search export --format onnx`",
                  file=sys.stderr)
            return 2
        sessions[path], feeds[path] = sess, feed_of(sess)
        identity[path] = (meta["edgesearch_design_id"], meta.get("edgesearch_profile", ""))
        for _ in range(args.warmup):
            sess.run(None, feeds[path])
    samples = {path: [] for path in sessions}
    for round_index in range(args.rounds):
        for path, sess in sessions.items():
            for _ in range(args.runs):
                started = time.perf_counter()
                sess.run(None, feeds[path])
                samples[path].append((time.perf_counter() - started) * 1e3)
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    exists = os.path.exists(args.out)
    with open(args.out, "a", newline="") as handle:
        writer = csv.writer(handle)
        if not exists:
            writer.writerow(COLUMNS)
        for path in sessions:
            design, profile = identity[path]
            median = statistics.median(samples[path])
            writer.writerow([design, profile, runtime, f"{median:.3f}"])
            print(f"{path}: design {design} ({profile}) {median:.2f} ms median of {len(samples[path])} runs "
                  f"(min {min(samples[path]):.2f}, max {max(samples[path]):.2f})")
    print(f"wrote {args.out}; next: search calibrate --profile {identity[next(iter(sessions))][1] or 'P'} "
          f"--timings {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
