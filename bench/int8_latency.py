"""Integer TVM builds against fp32 and ONNX Runtime, on x86-host: latency and mAP50-95 of each.

The default base YOLOv8n with every searchable conv at 8-bit symmetric per-filter weights and int8
activations (post-training: ranges calibrated on `--calibration-batches` train batches, no
fine-tune; the Detect head's decoding stays float), scored four ways:

  tvm_int8   TVM integer build (hardware_scores' build: integer_model.integer_copy, VNNI kernels)
  tvm_fp32   TVM fp32 build of the same weights (activation fake-quant removed)
  ort_int8   ONNX Runtime INT8: onnxruntime.quantization.quantize_static, QDQ, per-channel int8
             weights, uint8 activations calibrated (MinMax) on the same train batches, the same
             convs quantized, the Detect head's non-conv ops excluded (float)
  ort_fp32   ONNX Runtime FP32 of the fp32 model

Each is timed in every round, in a shuffled order (`--rounds` x `--repeats` samples, each the mean
of `--number` runs; 2 threads), and its mAP50-95 is computed on the val split by ultralytics'
DetectionValidator running that very engine (TVM's VM, ORT's session) image by image; `pytorch`
is the fake-quantized PyTorch model, the reference the integer build must match (within 0.005).
A per-block table (each top-level block built and timed alone, fp32 vs integer, interleaved)
shows where the integer build gains and where it does not.

    .venv/bin/python bench/int8_latency.py [--checkpoint best.pt] [--quick] [--no-map]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import random
import statistics
import sys
import tempfile
from pathlib import Path

from edgesearch.search.cli_env import apply_process_env

apply_process_env()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import tvm  # noqa: E402
from tvm import relax  # noqa: E402

from edgesearch.common.files import write_text_atomically  # noqa: E402
from edgesearch.runners.accuracy.finetune import calibration_batches, validate  # noqa: E402
from edgesearch.runners.hardware.build import build_local, export_for_tvm, float_copy, set_export_mode  # noqa: E402
from edgesearch.runners.hardware.integer_model import integer_copy  # noqa: E402
from edgesearch.runners.hardware.layer_table import build_block, describe_blocks  # noqa: E402
from edgesearch.runners.hardware.profiles import load_profile  # noqa: E402
from edgesearch.search.resolve import resolve_inputs  # noqa: E402
from edgesearch.spaces.activations import calibrate  # noqa: E402
from edgesearch.spaces.apply import apply_candidate, uniform_candidate  # noqa: E402
from edgesearch.spaces.candidate import LayerKnobs  # noqa: E402
from edgesearch.spaces.packing import bake_fake_quant  # noqa: E402
from timers import ort_session, ort_timer, summarize, tvm_timer  # noqa: E402  (bench/timers.py)

PROFILE = "x86-host"
INT8 = LayerKnobs(weight_bits=8, scheme="symmetric", granularity="filter", activation_bits=8)
ENGINES = ("tvm_int8", "tvm_fp32", "ort_int8", "ort_fp32")
RATIOS = [("TVM fp32 / TVM int8", "tvm_fp32", "tvm_int8"), ("ORT int8 / TVM int8", "ort_int8", "tvm_int8"),
          ("ORT fp32 / ORT int8", "ort_fp32", "ort_int8"), ("ORT fp32 / TVM fp32", "ort_fp32", "tvm_fp32")]


# ------------------------------------------------------------------------------ engines


def tvm_engine(executable):
    """(timer input -> run, batch forward) of a TVM executable built for one 1x3xHxW image."""
    vm = relax.VirtualMachine(executable, tvm.cpu())

    def forward(images: torch.Tensor) -> torch.Tensor:
        outs = [vm["main"](tvm.runtime.tensor(image[None].float().contiguous().numpy(), tvm.cpu())).numpy()
                for image in images]
        return torch.from_numpy(np.concatenate(outs))

    return vm, forward


def onnx_bytes(model: torch.nn.Module, imgsz: int) -> bytes:
    set_export_mode(model)
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), (torch.zeros(1, 3, imgsz, imgsz),), buffer, dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["output0"])
    return buffer.getvalue()


def ort_int8_bytes(fp32_onnx: bytes, batches: list[torch.Tensor], conv_count: int) -> tuple[bytes, int]:
    """quantize_static of the fp32 ONNX model (module docstring); returns (model, quantized convs)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    graph = onnx.load_from_string(fp32_onnx).graph
    head = [n.name for n in graph.node if n.name.startswith("/model.22/") and n.op_type != "Conv"]
    dfl = [n.name for n in graph.node if "/dfl/" in n.name]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"images": image[None].numpy()} for batch in batches for image in batch])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(fp32_onnx)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=head + dfl)
        quantized = target.read_bytes()
    convs = sum(1 for n in onnx.load_from_string(quantized).graph.node if n.op_type == "Conv")
    dequantized = {n.output[0] for n in onnx.load_from_string(quantized).graph.node if n.op_type == "DequantizeLinear"}
    int8_convs = sum(1 for n in onnx.load_from_string(quantized).graph.node
                     if n.op_type == "Conv" and n.input[0] in dequantized)
    assert convs == conv_count
    return quantized, int8_convs


def ort_engine(model_bytes: bytes, threads: int):
    """(session, forward over a batch of images one by one) for timing and for mAP."""
    session = ort_session(model_bytes, threads)

    def forward(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([session.run(None, {"images": image[None].float().numpy()})[0]
                                                for image in images]))

    return session, forward


def map_with(forward, model: torch.nn.Module, data_yaml: Path, imgsz: int) -> float:
    """mAP50-95 of the val split with `forward` computing the model's (export-mode) output."""
    model = copy.deepcopy(model)
    set_export_mode(model)
    model.forward = lambda images, *args, **kwargs: forward(images)
    return validate(model, data_yaml, imgsz=imgsz)["map50_95"]


# ------------------------------------------------------------------------------ per block


def block_timers(model, imgsz: int, profile, number: int, repeat: int) -> list[dict]:
    """Per top-level block: fp32 and integer builds of it, each with a timer."""
    rows = []
    fp32_blocks = describe_blocks(model, imgsz)
    int8_blocks = describe_blocks(model, imgsz, integer=True)
    for fp32, int8 in zip(fp32_blocks, int8_blocks, strict=True):
        timers = {}
        for form, block in (("fp32", fp32), ("int8", int8)):
            executable, _ = build_block(block, profile)
            timers[form] = tvm_timer(relax.VirtualMachine(executable, tvm.cpu()), block.input_shapes, number, repeat)
        rows.append({"index": fp32.index, "type": fp32.type, "input_shapes": fp32.input_shapes, "timers": timers,
                     "samples": {"fp32": [], "int8": []}})
    return rows


# ------------------------------------------------------------------------------ report


def markdown(report: dict) -> str:
    engines = report["engines"]
    lines = [f"### Integer builds: {PROFILE}, imgsz {report['imgsz']}, {report['rounds']} interleaved rounds x "
             f"{report['repeats']} samples (mean of {report['number']} runs each), {report['threads']} threads", "",
             "| engine | latency ms: median [min - max] | mAP50-95 | what |", "|---|---:|---:|---|"]
    for name in ENGINES:
        entry = engines[name]
        figure = "-" if entry.get("map50_95") is None else f"{entry['map50_95']:.4f}"
        lines.append(f"| {name} | {entry['median_ms']:.2f} [{entry['min_ms']:.2f} - {entry['max_ms']:.2f}] | {figure} "
                     f"| {entry['what']} |")
    if report.get("pytorch_map50_95") is not None:
        lines.append(f"| pytorch | - | {report['pytorch_map50_95']:.4f} | the fake-quantized PyTorch model "
                     "(reference for tvm_int8) |")
    lines += ["", "| ratio of medians | value |", "|---|---:|"]
    lines += [f"| {label} | {value:.2f} |" for label, value in report["ratios"].items()]
    targets = report["targets"]
    lines += ["", f"Targets: TVM int8 >= 1.8x faster than TVM fp32: {targets['tvm_speedup']}; "
                  f"TVM int8 no slower than ORT int8: {targets['vs_ort_int8']}; "
                  f"TVM int8 mAP within 0.005 of PyTorch: {targets['map_match']}."]
    if report.get("blocks"):
        lines += ["", "Per block (each built and timed alone, interleaved), ms medians:", "",
                  "| block | type | input | fp32 | int8 | fp32 / int8 |", "|---:|---|---|---:|---:|---:|"]
        for row in report["blocks"]:
            lines.append(f"| {row['index']} | {row['type']} | {row['input_shapes']} | {row['fp32_ms']:.3f} | "
                         f"{row['int8_ms']:.3f} | {row['fp32_ms'] / row['int8_ms']:.2f} |")
        total_fp32 = sum(r["fp32_ms"] for r in report["blocks"])
        total_int8 = sum(r["int8_ms"] for r in report["blocks"])
        lines.append(f"| sum | | | {total_fp32:.3f} | {total_int8:.3f} | {total_fp32 / total_int8:.2f} |")
    lines += ["", f"Integer build: {report['integer']}; ORT int8 convs: {report['ort_int8_convs']}. "
                  f"Load average {report['load_before']} before, {report['load_after']} after."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="base model .pt (default: the default preset's cached base YOLO)")
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--number", type=int, default=5)
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--no-map", action="store_true", help="skip the mAP50-95 figures (latency only)")
    parser.add_argument("--no-blocks", action="store_true", help="skip the per-block table")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 samples")
    parser.add_argument("--out", default="bench/int8_latency", help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.repeats, args.number = 3, 3, 3

    profile = load_profile(PROFILE)
    os.environ["TVM_NUM_THREADS"] = str(profile.threads)
    torch.set_num_threads(profile.threads)
    load_before = os.getloadavg()[0]
    inputs = resolve_inputs(profile=PROFILE, space="yolov8", model=args.checkpoint, data=None, preset="default")
    base = inputs.base_model
    model = apply_candidate(base, uniform_candidate(base, INT8, list(inputs.resolved)))
    batches = list(calibration_batches(inputs.data_yaml, imgsz=args.imgsz, batch=16, count=args.calibration_batches,
                                       stride=int(model.stride.max())))
    calibrate(model, batches)
    bake_fake_quant(model)
    model.eval()

    integer_model, summary = integer_copy(model)
    fp32_model = float_copy(model)
    tvm_int8, _ = tvm_engine(build_local(export_for_tvm(integer_model, args.imgsz, profile.target), profile.target)[0])
    tvm_fp32, _ = tvm_engine(build_local(export_for_tvm(fp32_model, args.imgsz, profile.target), profile.target)[0])
    fp32_onnx = onnx_bytes(copy.deepcopy(fp32_model), args.imgsz)
    conv_count = sum(1 for m in fp32_model.modules() if isinstance(m, torch.nn.Conv2d))
    int8_onnx, ort_int8_convs = ort_int8_bytes(fp32_onnx, batches, conv_count)
    sessions = {"ort_int8": ort_engine(int8_onnx, profile.threads), "ort_fp32": ort_engine(fp32_onnx, profile.threads)}
    shape = [(1, 3, args.imgsz, args.imgsz)]
    timers = {"tvm_int8": tvm_timer(tvm_int8, shape, args.number, args.repeats),
              "tvm_fp32": tvm_timer(tvm_fp32, shape, args.number, args.repeats),
              **{name: ort_timer(s, args.imgsz, args.number, args.repeats) for name, (s, _) in sessions.items()}}
    blocks = [] if args.no_blocks else block_timers(model, args.imgsz, profile, args.number, args.repeats)

    samples = {name: [] for name in timers}
    order = list(timers)
    shuffle = random.Random(0)
    for round_index in range(args.rounds):
        shuffle.shuffle(order)
        for name in order:
            samples[name] += timers[name]()
        for row in blocks:
            for form in shuffle.sample(["fp32", "int8"], 2):
                row["samples"][form] += row["timers"][form]()
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    whats = {"tvm_int8": f"TVM, {summary.integer_layers} convs as int8 kernels (AVX-512 VNNI), rest fp32",
             "tvm_fp32": "TVM, fp32, fixed schedule", "ort_int8": "ONNX Runtime, QDQ int8 (quantize_static)",
             "ort_fp32": "ONNX Runtime, fp32"}
    engines = {name: {**summarize(values), "samples_ms": values, "what": whats[name]} for name, values in samples.items()}
    pytorch_map = None
    if not args.no_map:
        pytorch_map = validate(model, inputs.data_yaml, imgsz=args.imgsz)["map50_95"]
        forwards = {"tvm_int8": tvm_engine(build_local(export_for_tvm(integer_model, args.imgsz, profile.target),
                                                       profile.target)[0])[1],
                    "tvm_fp32": tvm_engine(build_local(export_for_tvm(fp32_model, args.imgsz, profile.target),
                                                       profile.target)[0])[1],
                    **{name: forward for name, (_, forward) in sessions.items()}}
        for name, forward in forwards.items():
            engines[name]["map50_95"] = map_with(forward, model, inputs.data_yaml, args.imgsz)
            print(f"{name}: mAP50-95 {engines[name]['map50_95']:.4f}", flush=True)
    ratios = {label: engines[a]["median_ms"] / engines[b]["median_ms"] for label, a, b in RATIOS}
    map_gap = (None if pytorch_map is None else abs(engines["tvm_int8"]["map50_95"] - pytorch_map))
    report = {
        "profile": PROFILE, "imgsz": args.imgsz, "rounds": args.rounds, "repeats": args.repeats,
        "number": args.number, "threads": profile.threads, "checkpoint": str(inputs.checkpoint),
        "tvm": tvm.__version__, "onnxruntime": ort.__version__, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "integer": (f"{summary.integer_layers} integer convs ({summary.exact_weight_layers} with their own int8 grid, "
                    f"{summary.requantized_weight_layers} requantized), {summary.float_layers} float"),
        "ort_int8_convs": f"{ort_int8_convs} of {conv_count} convs read dequantized int8 inputs",
        "engines": engines, "pytorch_map50_95": pytorch_map, "ratios": ratios,
        "targets": {"tvm_speedup": f"{'met' if ratios['TVM fp32 / TVM int8'] >= 1.8 else 'not met'} "
                                   f"({ratios['TVM fp32 / TVM int8']:.2f}x)",
                    "vs_ort_int8": f"{'met' if ratios['ORT int8 / TVM int8'] >= 1.0 else 'not met'} "
                                   f"({ratios['ORT int8 / TVM int8']:.2f}x)",
                    "map_match": "not measured" if map_gap is None else
                    f"{'met' if map_gap <= 0.005 else 'not met'} (gap {map_gap:.4f})"},
        "blocks": [{"index": r["index"], "type": r["type"], "input_shapes": r["input_shapes"],
                    "fp32_ms": statistics.median(r["samples"]["fp32"]), "int8_ms": statistics.median(r["samples"]["int8"])}
                   for r in blocks],
    }
    write_text_atomically(Path(f"{args.out}.json"), json.dumps(report, indent=2))
    text = markdown(report)
    print(text)
    write_text_atomically(Path(f"{args.out}.md"), text)
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
