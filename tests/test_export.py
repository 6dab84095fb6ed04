"""`search export` (runners/export.py): a design as the device's runtime takes it, checked against
edgesearch's own score of the same design, with ONNX Runtime and ultralytics running the files."""

import contextlib
import io
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import run_in_process

# structural pruning, int8 activations with sub-8-bit / PWLQ / 8-bit affine weights, 6-bit and k-means
# + sparse float layers, a kernel crop, a low-rank int8 pair and one fp16 conv
DESIGN = {"layers": {
    "model.1.conv": {"weight_bits": 4, "activation_bits": 8, "prune_ratio": 0.25},  # 4-bit grid held as int8
    "model.3.conv": {"weight_bits": 8, "activation_bits": 8},  # 8-bit affine: requantized symmetric int8
    "model.5.conv": {"weight_bits": 4, "scheme": "pwlq", "activation_bits": 8},
    "model.6.cv1.conv": {"prune_ratio": 0.5, "weight_bits": 6},
    "model.7.conv": {"activation_bits": 16},
    "model.9.cv1.conv": {"weight_bits": 6, "scheme": "kmeans", "sparsity": 0.3},
    "model.16.conv": {"kernel_size": 1},
    "model.19.conv": {"rank_ratio": 0.25, "weight_bits": 8, "scheme": "symmetric", "activation_bits": 8},
}}
INT8_CONVS = {"model.1.conv", "model.3.conv", "model.5.conv", "model.19.conv.0", "model.19.conv.1"}
FP16_CONVS = {"model.7.conv"}
EXPORTS = {"onnx": ("onnx", "x86-host"), "pt": ("pt", "x86-host"), "nano": ("onnx", "jetson-nano"),
           "ncnn": ("ncnn", "x86-host")}
MAP_TOLERANCE = 0.01


def _cli(*args: str) -> SimpleNamespace:
    """`search ...` as search.cli.main in this process (module-scoped: no capsys)."""
    from edgesearch.search.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture(scope="module")
def exported(tmp_path_factory, smoke_inputs):
    """The design exported as ONNX, .pt and NCNN for x86-host and as ONNX for jetson-nano, each through
    the CLI (each re-runs the design's fine-tune)."""
    folder = tmp_path_factory.mktemp("export")
    candidate = folder / "design.json"
    candidate.write_text(json.dumps(DESIGN))
    runs = {}
    for key, (fmt, profile) in EXPORTS.items():
        out = folder / key / ("design_ncnn_model" if fmt == "ncnn" else f"design.{fmt}")
        result = _cli("export", "--preset", "smoke", "--candidate", str(candidate), "--format", fmt,
                      "--profile", profile, "--out", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        design_id = re.search(r"design id ([0-9a-f]+)", result.stdout).group(1)
        runs[key] = SimpleNamespace(path=out, stdout=result.stdout, design_id=design_id, profile=profile)
    return runs


@pytest.fixture(scope="module")
def score(smoke_inputs):
    """edgesearch's own score of the design, with the settings `search eval` (and so the export) uses."""
    from edgesearch.runners.evaluate import score_candidate
    from edgesearch.search.presets import PRESETS
    from edgesearch.search.resolve import eval_settings

    preset = PRESETS["smoke"]
    settings = eval_settings(smoke_inputs, imgsz=preset.imgsz, finetune_iters=preset.finetune_iters,
                             batch=preset.batch, threads=os.cpu_count() or 1, seed=0)
    scores = score_candidate(settings, DESIGN)
    # a trained design (an untrained one scores ~0), so that agreement within MAP_TOLERANCE means something: the
    # same code scored 0.057 on the CI machine and 0.038 on another 2-core host (the smoke base trains differently)
    assert scores["map50_95"] > 0.03
    return scores


def _search_map(path: Path, smoke_inputs) -> float:
    """mAP50-95 of an exported file on the images the search scores on, by the validator edgesearch uses
    (ultralytics' DetectionValidator; AutoBackend runs a .onnx in ONNX Runtime, a .pt in ultralytics)."""
    from edgesearch.runners.accuracy.finetune import validate
    from edgesearch.runners.accuracy.splits import search_and_holdout

    with search_and_holdout(smoke_inputs.data_yaml) as (search_data, *_):
        return validate(str(path), search_data, imgsz=64)["map50_95"]


def _onnx(path: Path):
    import onnx

    return onnx.load(str(path))


def test_onnx_export_scores_in_onnx_runtime_as_edgesearch_scored_the_design(exported, score, smoke_inputs):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported["onnx"].path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 64, 64]
    assert session.get_outputs()[0].shape[:2] == [1, 4 + len(smoke_inputs.base_model.names)]
    onnx_map = _search_map(exported["onnx"].path, smoke_inputs)
    # jetson-nano's: fp16 where chosen; its int8-activation layers compute in float (the Nano has no int8)
    nano_map = _search_map(exported["nano"].path, smoke_inputs)
    print(f"mAP50-95 on the search images: edgesearch {score['map50_95']:.4f}, ONNX Runtime {onnx_map:.4f} "
          f"(x86-host), {nano_map:.4f} (jetson-nano)")
    assert abs(onnx_map - score["map50_95"]) <= MAP_TOLERANCE
    assert abs(nano_map - score["map50_95"]) <= MAP_TOLERANCE


def test_int8_is_qdq_where_the_profile_computes_int8_and_nowhere_on_jetson_nano(exported, smoke_inputs):
    from onnx import TensorProto, numpy_helper

    from edgesearch.spaces.apply import conv_layers
    from edgesearch.spaces.prune import removed_count

    graph = _onnx(exported["onnx"].path).graph
    ops = [node.op_type for node in graph.node]
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    int8_weights = {init.name.removesuffix(".weight_int8") for init in graph.initializer
                    if init.data_type == TensorProto.INT8 and init.name.endswith(".weight_int8")}
    assert int8_weights == INT8_CONVS  # stored as int8, one DequantizeLinear each
    assert ops.count("QuantizeLinear") == len(INT8_CONVS)  # each int8 conv's input
    assert ops.count("DequantizeLinear") == 2 * len(INT8_CONVS)
    # the structure is the design's: pruned output channels gone, the crop and the low-rank pair plain convs
    base = conv_layers(smoke_inputs.base_model)
    channels = base["model.1.conv"].out_channels
    assert weights["model.1.conv.weight_int8"].shape[0] == channels - removed_count(channels, 0.25)
    assert weights["model.16.conv.weight"].shape[2:] == (1, 1)
    assert weights["model.19.conv.0.weight_int8"].shape[0] < base["model.19.conv"].out_channels
    assert ops.count("Cast") == 0  # no fp16 on x86-host: the fp16 conv computes in fp32 there

    nano = _onnx(exported["nano"].path).graph
    nano_ops = [node.op_type for node in nano.node]
    assert "QuantizeLinear" not in nano_ops and "DequantizeLinear" not in nano_ops
    assert nano_ops.count("Cast") == 2 * len(FP16_CONVS)  # into and out of each fp16 conv
    assert sum(init.data_type == TensorProto.FLOAT16 for init in nano.initializer) == 2 * len(FP16_CONVS)


def test_the_export_carries_ultralytics_metadata_and_is_recorded_by_design_id(exported, smoke_inputs):
    from ultralytics.nn.autobackend import AutoBackend

    from edgesearch.common.cache import cache_root
    from edgesearch.runners.hardware.latency_model import NetworkWork
    from edgesearch.spaces.candidate import Candidate

    onnx_run = exported["onnx"]
    backend = AutoBackend(str(onnx_run.path))  # ultralytics reads its own keys
    assert backend.names == smoke_inputs.base_model.names
    assert backend.stride == 32 and list(backend.imgsz) == [64, 64] and backend.task == "detect"
    assert re.fullmatch(r"[0-9a-f]{12}", onnx_run.design_id)
    assert backend.metadata["edgesearch_design_id"] == onnx_run.design_id
    assert "int8" in backend.metadata["edgesearch_design"]
    assert "memory saving is the packing's" in backend.metadata["edgesearch_notes"]
    assert "memory saving is the packing's" in onnx_run.stdout  # and the command says so

    assert exported["pt"].design_id == onnx_run.design_id  # one design, one fine-tune
    assert exported["nano"].design_id != onnx_run.design_id  # another profile's export differs
    record = json.loads((cache_root() / "exports" / f"{onnx_run.design_id}.json").read_text())
    assert record["design_id"] == onnx_run.design_id and record["profile"] == "x86-host" and record["imgsz"] == 64
    assert record["candidate"] == Candidate.from_json(DESIGN).to_json()
    assert {f["path"] for f in record["files"]} == {str(exported["onnx"].path), str(exported["pt"].path)}
    work = NetworkWork.from_json(record["network_work"])  # what `search calibrate` prices the design by
    assert work.imgsz == 64 and len(work.convs) == len(record["precisions"]) == 65
    assert {c.name for c in work.convs if c.precision == "int8"} == INT8_CONVS


def test_pt_export_holds_only_torch_and_ultralytics_classes_and_validates_alike(exported, score, smoke_inputs):
    import onnx
    import torch
    from onnx import numpy_helper
    from ultralytics import YOLO

    from edgesearch.runners.checkpoints import load_detection_model, safe_load_checkpoint

    pt = exported["pt"].path
    referenced = torch.serialization.get_unsafe_globals_in_checkpoint(str(pt))
    assert all(name.startswith(("torch.nn.modules.", "ultralytics.nn.")) or name == "builtins.getattr"
               for name in referenced), referenced
    checkpoint = safe_load_checkpoint(pt)  # edgesearch's allowlist, no --trust-checkpoint
    assert checkpoint["edgesearch"]["edgesearch_design_id"] == exported["pt"].design_id
    assert "activation precision" in checkpoint["edgesearch"]["edgesearch_notes"]
    assert "activation precision" in exported["pt"].stdout
    model = load_detection_model(pt)

    pt_map = _search_map(pt, smoke_inputs)  # ultralytics opens the .pt itself
    print(f"mAP50-95 on the search images: edgesearch {score['map50_95']:.4f}, ultralytics .pt {pt_map:.4f}")
    assert abs(pt_map - score["map50_95"]) <= MAP_TOLERANCE

    # the same fine-tune gave the same weights: the ONNX export's fp32 convs, bit for bit
    state = model.state_dict()
    graph = _onnx(exported["onnx"].path).graph
    float_weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer
                     if init.data_type == onnx.TensorProto.FLOAT and init.name in state}
    assert len(float_weights) > 40
    for name, value in float_weights.items():
        assert torch.equal(torch.from_numpy(value.copy()), state[name]), name

    # ultralytics' own exporter takes it from there (NCNN, TFLite and TensorRT go the same way)
    exported_file = YOLO(str(pt)).export(format="onnx", imgsz=64, simplify=False)
    assert Path(exported_file).stat().st_size > 0


def test_ncnn_export_runs_in_ncnn_as_the_pt_validates_and_is_timed_by_the_device_script(exported, smoke_inputs,
                                                                                        tmp_path):
    """The NCNN folder (the Pi profile's runtime) computes every conv in float: another design id than
    the ONNX's int8 QDQ, recorded with fp32 work, and ultralytics' NCNN backend scores it as the .pt
    (float on the same weights). bench/time_on_device.py times it and writes the calibration rows."""
    import csv
    import subprocess
    import sys

    import yaml

    from edgesearch.common.cache import cache_root

    ncnn_run, onnx_run = exported["ncnn"], exported["onnx"]
    folder = ncnn_run.path
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.yaml", "model.ncnn.bin", "model.ncnn.param"]
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no scratch folder left behind
    metadata = yaml.safe_load((folder / "metadata.yaml").read_text())
    assert metadata["edgesearch_design_id"] == ncnn_run.design_id != onnx_run.design_id
    assert metadata["stride"] == 32 and metadata["imgsz"] == [64, 64] and metadata["names"]
    assert "ncnn2int8" in metadata["edgesearch_notes"] and "ncnn2int8" in ncnn_run.stdout
    record = json.loads((cache_root() / "exports" / f"{ncnn_run.design_id}.json").read_text())
    assert set(record["precisions"].values()) == {"fp32"}  # what a refit from its timings prices
    assert [f["path"] for f in record["files"]] == [str(folder)]

    ncnn_map, pt_map = _search_map(folder, smoke_inputs), _search_map(exported["pt"].path, smoke_inputs)
    print(f"mAP50-95 on the search images: ultralytics .pt {pt_map:.4f}, NCNN {ncnn_map:.4f}")
    assert abs(ncnn_map - pt_map) <= MAP_TOLERANCE

    script = Path(__file__).resolve().parents[1] / "bench" / "time_on_device.py"
    timings = tmp_path / "timings.csv"
    quick = ["--threads", "1", "--rounds", "1", "--runs", "2", "--warmup", "1", "--out", str(timings)]
    for export in (folder, onnx_run.path):
        done = subprocess.run([sys.executable, str(script), str(export), *quick], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader(timings.open()))
    assert [(r["design_id"], r["profile"], r["runtime"].split()[0]) for r in rows] == [
        (ncnn_run.design_id, "x86-host", "ncnn"), (onnx_run.design_id, "x86-host", "onnxruntime")]
    assert all(float(r["latency_ms"]) > 0 for r in rows)
    mixed = subprocess.run([sys.executable, str(script), str(folder), str(onnx_run.path), *quick],
                           capture_output=True, text=True)
    assert mixed.returncode == 2 and "several runtimes" in mixed.stderr


@pytest.mark.parametrize("change, fragment", [
    ({"candidate": "missing.json"}, "does not exist"),
    ({"format": "tflite"}, "--format must be one of onnx, pt, ncnn"),
    ({"out": "design.pt"}, "--format onnx writes a .onnx file"),
    ({"format": "ncnn", "out": "design_ncnn"}, "ends in _ncnn_model"),
    ({"layers": {"model.10.m.0.attn.qkv.conv": {"weight_bits": 4}}}, "not a Conv2d of this model"),  # YOLO11's
])
def test_bad_export_input_is_refused_in_one_line_and_nothing_is_written(tmp_path, capsys, smoke_inputs, change,
                                                                        fragment):
    from edgesearch.runners.export import exports_dir

    candidate = tmp_path / "design.json"
    candidate.write_text(json.dumps({"layers": change.get("layers", DESIGN["layers"])}))
    out = tmp_path / change.get("out", "design.onnx")
    recorded = set(exports_dir().glob("*.json")) if exports_dir().exists() else set()
    result = run_in_process(capsys, "export", "--preset", "smoke", "--candidate",
                            str(tmp_path / change.get("candidate", "design.json")),
                            "--format", change.get("format", "onnx"), "--out", str(out))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("search: error:")]
    assert len(lines) == 1 and fragment in lines[0], result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["design.json"]
    assert (set(exports_dir().glob("*.json")) if exports_dir().exists() else set()) == recorded


def test_the_reports_take_away_offers_an_export_command_the_cli_accepts(tmp_path):
    """Each design of a report gets a `search export` line beside its `search eval` line, with the
    run's inputs and fine-tune (the same weights the search scored)."""
    import html
    import shlex

    from edgesearch.reports.pareto_report import write_report
    from edgesearch.search.cli import build_parser
    from test_report import BASE, RUN, hand_trials

    run = dict(RUN, imgsz=96, finetune_iters=7, seed=3, distill=True)
    page = write_report(tmp_path, run=run, base=BASE, trials=hand_trials())["index.html"].read_text()
    commands = [html.unescape(c) for c in re.findall(r"<code class='export-command'>(.*?)</code>", page)]
    assert commands and len(commands) == page.count("<li id='take-")
    args = build_parser().parse_args(shlex.split(commands[0])[1:])
    assert (args.command, args.format, args.profile) == ("export", "onnx", RUN["profile_file"])
    assert (args.imgsz, args.finetune_iters, args.seed, args.distill) == (96, 7, 3, True)
    assert json.loads(Path(args.candidate).read_text())["layers"]  # the design file beside the page
    # a profile whose runtime takes NCNN (raspberry-pi-4) is offered an NCNN folder the command accepts
    page = write_report(tmp_path / "pi", run=dict(run, export_format="ncnn"), base=BASE,
                        trials=hand_trials())["index.html"].read_text()
    command = html.unescape(re.findall(r"<code class='export-command'>(.*?)</code>", page)[0])
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.format == "ncnn" and args.out.endswith("_ncnn_model") and "--format ncnn</code>" in page
    assert args.recover_steps == 0
    # a design of the recovery stage is exported with its longer schedule (its weights)
    trials = hand_trials()
    for t in trials:
        if t["scores"]:
            t["scores"]["training"] = {"steps_from_base": 11, "recovery_steps": 4, "label": "recovered"}
    page = write_report(tmp_path / "recovered", run=run, base=BASE, trials=trials)["index.html"].read_text()
    commands = [html.unescape(c) for c in re.findall(r"<pre>(search eval .*?)</pre>", page)[:1]
                + re.findall(r"<code class='export-command'>(.*?)</code>", page)[:1]]
    for kind, command in zip(("eval", "export"), commands, strict=True):
        args = build_parser().parse_args(shlex.split(command)[1:])
        assert (args.command, args.finetune_iters, args.recover_steps) == (kind, 7, 4), command
