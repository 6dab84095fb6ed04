"""A design as its device's runtime takes it: an ONNX graph, an ultralytics `.pt` checkpoint or an NCNN model.

`export_design` re-runs the design's fine-tune exactly as a trial does (runners.evaluate.build_design
with `search eval`'s settings: the same seed and thread count give the same weights bit for bit) and
writes the baked model:

  - structure as the search scored it: pruned layers physically smaller, kernel crops and low-rank
    pairs plain convs (spaces.apply made them so), the fine-tuned weights, baked (spaces.packing);
  - ONNX (torch.onnx.export's TorchScript exporter, as ultralytics' exporter calls it, the Detect head
    in export mode: one (1, 4 + classes, anchors) output), each conv at its compute precision on the
    profile (runners/hardware/precision.py on the profile's `compute_precisions`):
      int8: QDQ, the form TensorRT and ONNX Runtime build int8 kernels from: the input through
            QuantizeLinear/DequantizeLinear, uint8 per tensor with the calibrated scale and zero-point
            (spaces.activations.InputQuantizer); the weights stored int8 per output channel, symmetric,
            through DequantizeLinear (integer_model.integer_weights: the layer's own grid where it is
            that, else requantized, as the int8 build computes); bias and output float;
      fp16: Cast to fp16, the conv with fp16 weights and bias, Cast back to fp32;
      fp32: the baked weights.
    A conv with int8 activations that does not compute in int8 (float weights, or a profile without
    int8 such as jetson-nano) is exported float: that is how the device computes it.
  - `.pt`: ultralytics' checkpoint dict holding only torch and ultralytics classes (no fake-quant,
    hooks or edgesearch modules), so ultralytics' `YOLO(...)`, its exporter (NCNN, TFLite, TensorRT)
    and edgesearch's safe loader (runners/checkpoints.py) all open it. A plain `.pt` cannot carry
    activation precision: its int8 and fp16 convs compute in float on the quantized weight values.
  - NCNN (the Raspberry Pi profile's runtime): a `<name>_ncnn_model` folder as ultralytics' own NCNN
    export writes it (pnnx traces the model, the Detect head in export mode: model.ncnn.param,
    model.ncnn.bin, metadata.yaml), so ultralytics' AutoBackend and plain `ncnn` run it. Every conv
    computes in float there: NCNN's int8 comes from its own calibration tools (ncnn2table, ncnn2int8),
    which this export does not run. Such an export is another design id (it computes other work than
    the ONNX of the same design), recorded with fp32 precisions, so a refit prices what was timed.

Weights stored narrower than their compute precision (sub-8-bit codes, PWLQ, k-means, sparse) are
dequantized to it: no runtime here reads the packed format, so their memory saving is the packing's
(what the search's footprint counts), not the runtime's. The export, its metadata and the command
say so.

Each export is stamped with a design id and recorded in `cache_root()/exports/<id>.json` (design,
profile, input size, files, the network's work for the latency model) so that `search calibrate`
can price the designs a user timed on the device.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgesearch.common.cache import cache_root
from edgesearch.common.errors import InputError
from edgesearch.common.files import atomic_write, file_sha256
from edgesearch.runners.evaluate import EvalSettings, build_design
from edgesearch.runners.hardware.build import set_export_mode
from edgesearch.runners.hardware.integer_model import integer_weights
from edgesearch.runners.hardware.precision import conv_precisions, describe
from edgesearch.runners.hardware.profiles import EXPORT_FORMATS, load_profile
from edgesearch.spaces.activations import InputQuantizer, remove_input_quantizers
from edgesearch.spaces.apply import conv_layers, replace_module
from edgesearch.spaces.packing import read_layer

NCNN_SUFFIX = "_ncnn_model"  # ultralytics' AutoBackend recognises an NCNN folder by this ending
# the lowest opset with per-channel DequantizeLinear (int8 weights), so the oldest runtime in the
# profiles (TensorRT 8.2 of a Jetson Nano's last JetPack, 4.6) parses it
ONNX_OPSET = 13
DESIGN_ID_CHARS = 12
EXPORTS_DIR = "exports"  # under cache_root(): one <design id>.json per exported design
WEIGHTS_NOTE = ("weights stored below their compute precision in the packing (sub-8-bit codes, PWLQ, k-means, "
                "sparse, fp16 on an fp32 conv) are dequantized to it here: their memory saving is the packing's, "
                "not the runtime's")
COMPUTE_BITS = {"int8": 8, "fp16": 16, "fp32": 32}
NCNN_FLOAT_NOTE = ("NCNN computes every conv in float here: its int8 needs NCNN's own calibration (ncnn2table, "
                   "ncnn2int8), which this export does not run; for int8 on the device export --format onnx (QDQ) "
                   "for ONNX Runtime")
PT_ACTIVATIONS_NOTE = ("a .pt cannot carry activation precision: its int8 and fp16 convs compute in float on the "
                       "quantized weight values (export --format onnx for QDQ int8 and fp16)")


@dataclasses.dataclass
class ExportResult:
    path: Path
    design_id: str
    format: str
    profile: str
    precisions: dict[str, str]  # conv name -> fp32 | fp16 | int8, as the export computes
    dequantized_layers: list[str]  # convs whose stored weights are narrower than their compute precision
    notes: list[str]  # what the export cannot carry, in words (also in its metadata)
    record: Path  # cache_root()/exports/<design id>.json
    metadata: dict  # what the file carries (ultralytics' keys + edgesearch's)


# ------------------------------------------------------------------------------- identity


def finetune_settings(config: EvalSettings) -> dict:
    """What decides the fine-tuned weights besides the candidate, the base and the input size. The
    recovery stage's learning rate and cuts in steps count only where set, so that the ids of other
    exports stay what they were."""
    settings: dict[str, float | int | bool] = {
        "finetune_iters": config.finetune_iters, "seed": config.seed, "distill": config.distill,
        "batch": config.batch, "calibration_batches": config.calibration_batches}
    if config.lr is not None:
        settings["lr"] = config.lr
    if config.cuts > 1:
        settings["cuts"] = config.cuts
    return settings


def design_id(candidate: dict | None, checkpoint_sha256: str, imgsz: int, finetune: dict, profile: str,
              float_only: bool = False) -> str:
    """12 hex chars of the sha256 of the canonical candidate JSON, the base checkpoint's sha256, the
    input size, the fine-tune settings and the profile (its export differs: QDQ or float, fp16 or not);
    `float_only` for an export that computes every conv in float whatever the profile (NCNN)."""
    identity = {"candidate": candidate or {"layers": {}}, "base_sha256": checkpoint_sha256, "imgsz": imgsz,
                "finetune": finetune, "profile": profile}
    if float_only:  # only then, so that the ids of ONNX and .pt exports stay what they were
        identity["float_only"] = True
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:DESIGN_ID_CHARS]


# ------------------------------------------------------------------------------- the export


def check_request(fmt: str, out: Path) -> None:
    """Refuse a format or output path the export cannot write, before any slow work."""
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt!r} (TFLite, TensorRT: "
                         "export --format pt, then ultralytics' `yolo export model=design.pt format=...`)")
    if fmt == "ncnn":
        if not out.name.endswith(NCNN_SUFFIX):
            raise InputError(f"--out {out}: --format ncnn writes a folder whose name ends in {NCNN_SUFFIX} "
                             "(ultralytics finds NCNN models by it)")
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file; --format ncnn writes a folder")
        return
    if out.suffix != f".{fmt}":
        raise InputError(f"--out {out}: --format {fmt} writes a .{fmt} file (ultralytics reads the format from "
                         "the suffix)")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name ending in .{fmt}")


def export_design(settings: dict, candidate: dict | None, fmt: str, out: str | Path) -> ExportResult:
    """Fine-tune the design as `search eval` does and write it to `out` as `fmt` (module docstring)."""
    config = EvalSettings(**settings)
    out = Path(out).resolve()
    check_request(fmt, out)
    profile = load_profile(config.profile)
    torch.set_num_threads(config.threads)  # as score_candidate: the thread count is part of what sets the weights
    base, model, _, _, _ = build_design(config, candidate)
    model.eval()
    precisions = conv_precisions(model, profile.compute_precisions)
    float_only = fmt == "ncnn" and any(p != "fp32" for p in precisions.values())
    if fmt == "ncnn":  # what the NCNN export computes in (module docstring)
        precisions = dict.fromkeys(precisions, "fp32")
    dequantized = dequantized_layers(model, precisions)
    finetune = finetune_settings(config)
    identity = design_id(candidate, file_sha256(config.checkpoint), config.imgsz, finetune, profile.name,
                         float_only=float_only)
    notes = [WEIGHTS_NOTE] if dequantized else []
    if fmt == "pt" and any(p != "fp32" for p in precisions.values()):
        notes.append(PT_ACTIVATIONS_NOTE)
    if float_only:
        notes.append(NCNN_FLOAT_NOTE)
    work = _network_work(model, config.imgsz, precisions)  # before any file: a failure writes nothing
    summary = describe_design(model, candidate, precisions, dequantized, profile.name)
    metadata = ultralytics_metadata(model, config, fmt)
    metadata.update({"edgesearch_design_id": identity, "edgesearch_design": summary,
                     "edgesearch_profile": profile.name, "edgesearch_notes": " | ".join(notes) or "none"})
    if fmt == "onnx":
        write_onnx(model, precisions, config.imgsz, metadata, out)
    elif fmt == "ncnn":
        write_ncnn(model, config.imgsz, metadata, out)
    else:
        write_pt(model, base, config, metadata, precisions, out)
    record = record_export(identity, profile.name, config, candidate, finetune, work, precisions, out, fmt)
    return ExportResult(out, identity, fmt, profile.name, precisions, dequantized, notes, record, metadata)


def dequantized_layers(model: nn.Module, precisions: dict[str, str]) -> list[str]:
    """Convs whose packing stores weights narrower than the runtime reads them: sub-8-bit codes
    (int8 compute reads them as int8), PWLQ / k-means grids, sparse masks, a quantized grid or
    fp16 values on a float conv of more bits."""
    names = []
    for name, conv in conv_layers(model).items():
        packed = getattr(conv, "packed_layer", None)
        if packed is None:
            continue
        layer = read_layer(packed)
        narrower = layer.bits < COMPUTE_BITS[precisions[name]]
        if narrower or layer.mask is not None or (layer.quantized is not None and layer.scheme in ("pwlq", "kmeans")):
            names.append(name)
    return names


def describe_design(model: nn.Module, candidate: dict | None, precisions: dict[str, str], dequantized: list[str],
                    profile: str) -> str:
    """One line: what the design changed and what the export computes in."""
    layers = (candidate or {}).get("layers", {})
    pruned = sum(1 for k in layers.values() if k.get("prune_ratio", 0) > 0)
    cropped = sum(1 for k in layers.values() if k.get("kernel_size", "keep") != "keep")
    low_rank = sum(1 for k in layers.values() if k.get("rank_ratio", 1.0) < 1)
    parts = [f"{len(layers)} layers changed" if layers else "the base unchanged"]
    parts += [f"{n} {what}" for n, what in ((pruned, "pruned"), (cropped, "kernel-cropped"), (low_rank, "low-rank"))
              if n]
    params = sum(p.numel() for p in model.parameters())
    text = f"{'; '.join(parts)}; {params / 1e6:.3f} M parameters; on {profile}: {describe(precisions)}"
    convs = conv_layers(model)
    requantized = sum(1 for name, p in precisions.items() if p == "int8" and not integer_weights(convs[name])[2])
    if requantized:
        text += f"; {requantized} int8 layers' weights requantized to symmetric int8 per channel (as the build does)"
    if dequantized:
        text += f"; {len(dequantized)} layers' weights dequantized from their packing"
    return text


def ultralytics_metadata(model: nn.Module, config: EvalSettings, fmt: str) -> dict:
    """The keys ultralytics' own exporter writes (engine/exporter.py), so AutoBackend reads the export."""
    from ultralytics import __version__

    # an ultralytics DetectionModel: its yaml, stride, names and layers are attributes torch's typing does not know
    yaml_cfg, layers = getattr(model, "yaml"), getattr(model, "model")
    pretty = Path(yaml_cfg.get("yaml_file", "model")).stem.replace("yolo", "YOLO")
    return {
        "description": f"Ultralytics {pretty} model trained on {config.data_yaml}, compressed by edgesearch",
        "author": "Ultralytics (model), edgesearch (export)",
        "date": datetime.datetime.now().astimezone().isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "stride": int(max(getattr(model, "stride"))),
        "task": "detect",
        "head": type(layers[-1]).__name__,
        "batch": 1,
        "imgsz": [config.imgsz, config.imgsz],
        "names": dict(getattr(model, "names")),
        "args": {"batch": 1, "data": config.data_yaml, "dynamic": False, "quantize": None,
                 **({"opset": ONNX_OPSET, "simplify": False} if fmt == "onnx" else {}), "nms": False},
        "channels": yaml_cfg.get("channels", 3),
        "end2end": False,
    }


# ------------------------------------------------------------------------------- ONNX


class _QDQConv2d(nn.Module):
    """Tracing stand-in of an int8 conv: fake-quant of the uint8 input and of the int8 weights,
    which torch's exporter writes as QuantizeLinear/DequantizeLinear pairs (the weight's
    QuantizeLinear is then folded into an int8 initializer: _fold_weight_quantization)."""

    weight: torch.Tensor  # buffers
    weight_scale: torch.Tensor
    weight_zero_point: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, conv: nn.Conv2d, quantizer: InputQuantizer):
        super().__init__()
        codes, scale, _ = integer_weights(conv)
        self.register_buffer("weight", codes.float() * scale.reshape(-1, 1, 1, 1))
        self.register_buffer("weight_scale", scale.float())
        self.register_buffer("weight_zero_point", torch.zeros(scale.numel(), dtype=torch.int32))
        self.register_buffer("bias", conv.bias.detach().clone() if conv.bias is not None else None)
        self.act_scale, self.act_zero_point = float(quantizer.scale), int(quantizer.zero_point)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.fake_quantize_per_tensor_affine(x, self.act_scale, self.act_zero_point, 0, 255)
        weight = torch.fake_quantize_per_channel_affine(self.weight, self.weight_scale, self.weight_zero_point, 0,
                                                        -128, 127)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _HalfConv2d(nn.Module):
    """Tracing stand-in of an fp16 conv: Cast -> fp16 Conv -> Cast."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.half()).float()


def onnx_graph_model(model: nn.Module, precisions: dict[str, str]) -> nn.Module:
    """A copy of the baked design as the ONNX graph computes it (module docstring)."""
    model = copy.deepcopy(model)
    convs = conv_layers(model)
    quantizers = {name: getattr(conv, "input_quantizer", None) for name, conv in convs.items()}
    remove_input_quantizers(model)
    for name, conv in convs.items():
        if precisions[name] == "int8":
            quantizer = quantizers[name]
            assert isinstance(quantizer, InputQuantizer)  # an int8 conv's input is quantized to uint8
            replace_module(model, name, _QDQConv2d(conv, quantizer))
        elif precisions[name] == "fp16":
            replace_module(model, name, _HalfConv2d(conv))
    set_export_mode(model)
    return model.eval()


def onnx_bytes(model: nn.Module, precisions: dict[str, str], imgsz: int, metadata: dict) -> bytes:
    """The serialized ONNX model of the baked design, with `metadata` in its metadata_props."""
    import onnx

    graph_model = onnx_graph_model(model, precisions)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice; ultralytics uses it too
        # the TorchScript exporter (dynamo=False) writes to a file object too; torch annotates f as a path
        torch.onnx.export(graph_model, (torch.zeros(1, 3, imgsz, imgsz),), buffer,  # type: ignore[arg-type]
                          opset_version=ONNX_OPSET, input_names=["images"], output_names=["output0"], dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    _fold_weight_quantization(proto)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _fold_weight_quantization(proto) -> None:
    """QuantizeLinear of a float weight initializer -> an int8 initializer feeding its
    DequantizeLinear: the weights are stored as int8, as QDQ tools write them."""
    from onnx import numpy_helper

    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    constants = {node.output[0]: next(a.t for a in node.attribute if a.name == "value")
                 for node in graph.node if node.op_type == "Constant" and node.attribute[0].name == "value"}
    constants.update(initializers)
    for node in graph.node:  # the exporter shares equal constants (e.g. zero-points) through Identity nodes
        if node.op_type == "Identity" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
    consumers = Counter(name for node in graph.node for name in node.input)
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in initializers \
                or not all(name in constants for name in node.input):
            continue
        weight, scale, zero_point = (numpy_helper.to_array(constants[name]) for name in node.input)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * weight.ndim
        shape[axis] = -1
        codes = np.clip(np.rint(weight / scale.reshape(shape)) + zero_point.reshape(shape).astype(np.float32),
                        -128, 127).astype(np.int8)
        folded = numpy_helper.from_array(codes, name=f"{node.input[0]}_int8")
        graph.initializer.append(folded)
        for other in graph.node:
            for i, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[i] = folded.name
        graph.node.remove(node)
        if consumers[node.input[0]] == 1:
            graph.initializer.remove(initializers[node.input[0]])


def write_onnx(model: nn.Module, precisions: dict[str, str], imgsz: int, metadata: dict, out: Path) -> None:
    atomic_write(out, onnx_bytes(model, precisions, imgsz, metadata))


# ------------------------------------------------------------------------------- .pt


def plain_model(model: nn.Module) -> nn.Module:
    """A copy of the baked design holding only torch and ultralytics classes: no activation
    fake-quant or fp16 rounding hooks, no packed bytes, no training state."""
    model = copy.deepcopy(model)
    remove_input_quantizers(model)
    for module in model.modules():
        if hasattr(module, "packed_layer"):
            del module.packed_layer
        if hasattr(module, "criterion"):
            setattr(module, "criterion", None)  # the loss of the fine-tune (ultralytics strips it too)
        if module._forward_hooks or module._forward_pre_hooks:
            raise RuntimeError(f"{type(module).__name__} still has hooks after removing edgesearch's")
    if hasattr(model, "pt_path"):
        del model.pt_path
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.float().eval()


def write_pt(model: nn.Module, base: nn.Module, config: EvalSettings, metadata: dict, precisions: dict[str, str],
             out: Path) -> None:
    """An ultralytics checkpoint (as strip_optimizer leaves one), weights kept fp32: they are exactly
    the quantized values, which fp16 storage would round again."""
    from ultralytics.utils import DEFAULT_CFG_KEYS

    plain = plain_model(model)
    train_args = {k: v for k, v in dict(getattr(base, "args")).items() if k in DEFAULT_CFG_KEYS}
    train_args.update(imgsz=config.imgsz, data=config.data_yaml)
    setattr(plain, "args", dict(train_args))
    checkpoint = {
        "date": metadata["date"], "version": metadata["version"], "license": metadata["license"],
        "docs": metadata["docs"], "epoch": -1, "best_fitness": None, "model": plain, "ema": None, "updates": None,
        "optimizer": None, "train_args": train_args, "train_metrics": {},
        "edgesearch": {**{k: v for k, v in metadata.items() if k.startswith("edgesearch_")},
                       "imgsz": config.imgsz, "precisions": precisions},
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write(out, buffer.getvalue())


# ------------------------------------------------------------------------------- NCNN


NCNN_FILES = ("model.ncnn.param", "model.ncnn.bin")


def write_ncnn(model: nn.Module, imgsz: int, metadata: dict, out: Path) -> None:
    """The design as ultralytics' NCNN export writes it (ultralytics/utils/export/ncnn.py): pnnx traces
    the plain model with the Detect head in export mode and writes NCNN's param and bin; metadata.yaml
    beside them. Written into a scratch folder next to `out`, then moved into place whole."""
    import pnnx
    import yaml

    graph_model = plain_model(model)
    set_export_mode(graph_model)
    image = torch.zeros(1, 3, imgsz, imgsz)
    with torch.no_grad():
        graph_model(image)  # a dry run, as ultralytics' exporter makes: the head caches its anchors, so the
        # trace and pnnx's check trace see the same graph
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch_name:
        scratch = Path(scratch_name)
        folder, work = scratch / out.name, scratch / "pnnx"
        folder.mkdir()
        work.mkdir()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit.trace's tracer warnings
            pnnx.export(graph_model, str(work / "model.pt"), inputs=image,
                        pnnxparam=str(work / "model.pnnx.param"), pnnxbin=str(work / "model.pnnx.bin"),
                        pnnxpy=str(work / "model_pnnx.py"), pnnxonnx=str(work / "model.pnnx.onnx"),
                        ncnnparam=str(folder / NCNN_FILES[0]), ncnnbin=str(folder / NCNN_FILES[1]),
                        ncnnpy=str(work / "model_ncnn.py"), fp16=False, device="cpu")
        missing = [name for name in NCNN_FILES if not (folder / name).is_file()]
        if missing:
            raise RuntimeError(f"pnnx wrote no {', '.join(missing)} (its own messages are above)")
        (folder / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False))
        if out.exists():  # an earlier export: swapped out whole, removed with the scratch folder
            os.replace(out, scratch / "previous")
        os.replace(folder, out)


def export_sha256(out: Path) -> str:
    """A file's sha256, or for an NCNN folder the sha256 of its param and bin."""
    if not out.is_dir():
        return file_sha256(out)
    digest = hashlib.sha256()
    for name in NCNN_FILES:
        digest.update(bytes.fromhex(file_sha256(out / name)))
    return digest.hexdigest()


# ------------------------------------------------------------------------------- the record


def exports_dir() -> Path:
    return cache_root() / EXPORTS_DIR


def record_export(identity: str, profile: str, config: EvalSettings, candidate: dict | None, finetune: dict,
                  work: dict, precisions: dict[str, str], out: Path, fmt: str) -> Path:
    """Write (or add this file to) `cache_root()/exports/<design id>.json`: what `search calibrate`
    reads to price a design id a user timed (`network_work`: latency_model.NetworkWork.to_json)."""
    path = exports_dir() / f"{identity}.json"
    files = {}
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        files = {f["path"]: f for f in json.loads(path.read_text()).get("files", [])}
    files[str(out)] = {"path": str(out), "format": fmt, "sha256": export_sha256(out)}
    record = {
        "design_id": identity,
        "profile": profile,
        "imgsz": config.imgsz,
        "candidate": candidate or {"layers": {}},
        "base_checkpoint": config.checkpoint,
        "finetune": finetune,
        "precisions": precisions,
        "network_work": work,
        "files": sorted(files.values(), key=lambda f: f["path"]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record, indent=2).encode())
    return path


def _network_work(model: nn.Module, imgsz: int, precisions: dict[str, str]) -> dict:
    """The latency model's description of the network, from the baked design and its precisions as
    a trial's estimate takes them (runners/hardware/scores.py), so a refit prices the same work."""
    from edgesearch.runners.hardware.latency_model import network_work

    return network_work(model, imgsz, precisions).to_json()


