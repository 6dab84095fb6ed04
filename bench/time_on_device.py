"""Time exported designs on the device itself and write the rows `search calibrate` reads.

Runs on the device (e.g. a Raspberry Pi 4) with nothing but Python 3, numpy and the runtime: no
edgesearch, no TVM, no torch. Copy this file and the exports to the device, then

    python3 time_on_device.py d1_ncnn_model d2_ncnn_model ... --threads 4 --out timings.csv   # NCNN
    python3 time_on_device.py d1.onnx d2.onnx ... --threads 4 --out timings.csv               # ONNX Runtime

NCNN folders (`search export --format ncnn`) need `pip install ncnn pyyaml numpy`; ONNX files
(`search export --format onnx`) need `pip install onnxruntime numpy`. One runtime per file of
timings: a calibration means one runtime. Each export's design id and profile come from the
metadata the export stamped into it (edgesearch_design_id, edgesearch_profile: the ONNX metadata,
the NCNN folder's metadata.yaml). The exports are timed in interleaved rounds (a round runs each
export `--runs` times, after `--warmup` untimed runs), so a slow drift of the board (heat, other
processes) touches every design alike; an export's latency is the median over all its runs of one
forward pass (batch 1, a random image in [0, 1]: latency does not depend on the values), in ms.
Writes (or appends to) the CSV: design_id,profile,runtime,latency_ms, one row per export. Then, on
the machine that exported the designs:

    search calibrate --profile raspberry-pi-4 --timings timings.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

COLUMNS = ("design_id", "profile", "runtime", "latency_ms")
NCNN_SUFFIX = "_ncnn_model"


class OnnxRuntimeExport:
    """An ONNX export in ONNX Runtime's CPU provider, all graph optimizations, sequential."""

    def __init__(self, path: str, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        (inp,) = self.session.get_inputs()
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        self.feed = {inp.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.runtime = f"onnxruntime {ort.__version__} CPU {threads} threads"

    def run(self) -> None:
        self.session.run(None, self.feed)


class NcnnExport:
    """An NCNN folder in ncnn's default options (as ultralytics runs it), CPU, `threads` threads."""

    def __init__(self, path: str, threads: int):
        import ncnn
        import yaml

        folder = Path(path)
        self.ncnn, self.net = ncnn, ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = threads
        self.net.load_param(str(folder / "model.ncnn.param"))
        self.net.load_model(str(folder / "model.ncnn.bin"))
        self.metadata = yaml.safe_load((folder / "metadata.yaml").read_text())
        size = self.metadata.get("imgsz", [640, 640])
        self.image = np.random.default_rng(0).random((3, *size), dtype=np.float32)
        self.runtime = f"ncnn {ncnn.__version__} CPU {threads} threads"

    def run(self) -> None:
        with self.net.create_extractor() as extractor:
            extractor.input(self.net.input_names()[0], self.ncnn.Mat(self.image))
            for name in self.net.output_names():
                extractor.extract(name)


def open_export(path: str, threads: int):
    if Path(path).is_dir() and Path(path).name.endswith(NCNN_SUFFIX):
        return NcnnExport(path, threads)
    if path.endswith(".onnx"):
        return OnnxRuntimeExport(path, threads)
    raise ValueError(f"{path}: neither an .onnx file nor a folder ending in {NCNN_SUFFIX}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", help="ONNX files or *_ncnn_model folders written by `search export`")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the runtime's CPU threads")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over all exports")
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each export per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs of each export first")
    parser.add_argument("--runtime", help="what the CSV's runtime column says (default: the runtime, its version "
                                          "and threads, e.g. 'ncnn 1.0.20261020 CPU 4 threads')")
    parser.add_argument("--out", default="timings.csv", help="CSV to write, or append to when it exists")
    args = parser.parse_args(argv)
    exports = {}
    for path in args.exports:
        try:
            export = open_export(path, args.threads)
        except (ValueError, OSError) as error:
            print(f"time_on_device: {error}", file=sys.stderr)
            return 2
        if "edgesearch_design_id" not in export.metadata:
            print(f"{path}: no edgesearch_design_id in its metadata; export it with `search export`", file=sys.stderr)
            return 2
        exports[path] = export
        for _ in range(args.warmup):
            export.run()
    runtimes = {export.runtime.split()[0] for export in exports.values()}
    if len(runtimes) > 1:
        print(f"time_on_device: several runtimes ({', '.join(sorted(runtimes))}); time each in its own file",
              file=sys.stderr)
        return 2
    samples: dict[str, list[float]] = {path: [] for path in exports}
    for round_index in range(args.rounds):
        for path, export in exports.items():
            for _ in range(args.runs):
                started = time.perf_counter()
                export.run()
                samples[path].append((time.perf_counter() - started) * 1e3)
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    exists = os.path.exists(args.out)
    with open(args.out, "a", newline="") as handle:
        writer = csv.writer(handle)
        if not exists:
            writer.writerow(COLUMNS)
        for path, export in exports.items():
            design, profile = export.metadata["edgesearch_design_id"], export.metadata.get("edgesearch_profile", "")
            median = statistics.median(samples[path])
            writer.writerow([design, profile, args.runtime or export.runtime, f"{median:.3f}"])
            print(f"{path}: design {design} ({profile}) {median:.2f} ms median of {len(samples[path])} runs "
                  f"(min {min(samples[path]):.2f}, max {max(samples[path]):.2f})")
    profile = next(iter(exports.values())).metadata.get("edgesearch_profile") or "P"
    print(f"wrote {args.out}; next: search calibrate --profile {profile} --timings {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
