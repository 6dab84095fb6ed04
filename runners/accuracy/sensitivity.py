"""Per-layer sensitivity: what each option of the space costs in accuracy, before any fine-tune.

Every figure is an increase of the detection loss (ultralytics' box + cls + dfl loss per image) on
fixed train batches (letterboxed, no augmentation), so they add up and compare across knobs:

  weight options (bits x scheme x granularity x sparsity): omega = c_l * ||W_l - Q(W_l)||^2, the
      second-order form of HAWQ with the layer's curvature c_l *measured* along its quantization
      error d at a reference option (4-bit affine per tensor): c_l = (L(W + d) + L(W - d) - 2 L(W))
      / (2 ||d||^2), a central difference in which the gradient's first-order term cancels (with
      L(W + d) alone, 28 of YOLOv8n's 63 layers showed a loss *fall* at 4 bits and would
      have looked free to quantize). Q is each option's exact fake-quant (PWLQ and k-means errors
      of large layers estimated on a sample, see SAMPLED_ELEMENTS).
  changes of structure or activations (a pruning group's ratio, a kernel crop, low rank, int8
      input activations): measured - the loss with only that change, minus the base's loss.

Why measured and not HAWQ's Hutchinson trace: on the tiny test model a layer given a 50x outlier
got a negative trace estimate from 8 probes (its quantization would have looked free), and on
YOLOv8n the estimates of large layers had standard errors above their means at 16 probes. The
Hutchinson trace can still be computed, as a cross-check (`probes` > 0; the reference pass always):
`hawq_reference_delta` is HAWQ-V2's prediction 1/2 Tr(H)/n ||dW||^2 of the same reference change,
and `agreement` the Spearman rank correlation between it and the measured second-order change over
layers.

An option that combines several changes is priced as their sum; bench/search_quality.py checks
that additivity against measured drops. Negative measured changes (the loss can fall) are kept as
measured, and clipped at zero where the search uses them (search/options.py).

Two passes compute these figures (`method`): "reference", the pass up to VERSION 3, one full
forward of every batch per figure, a pruned copy re-traced per pruning change; and "fast" (the
default), the same figures with the redundant work left out (_analyse_fast: forwards re-run only
from the changed block, one calibration, pruning by zeroing, weight errors on a smaller sample in a
second thread). bench/sensitivity_speed.py times both, interleaved, and compares their rankings.

`analyse` takes and returns plain data, so it runs in-process or as a Ray task like a trial.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm import tqdm
from ultralytics.cfg import get_cfg
from ultralytics.utils import IterableSimpleNamespace

from edgesearch.runners.accuracy.channel_ranking import pruning_gradients
from edgesearch.runners.accuracy.finetune import detection_loss, loss_batches
from edgesearch.runners.checkpoints import load_detection_model
from edgesearch.runners.costs import layer_costs
from edgesearch.runners.device import batch_to, describe, exact_float32, resolve_device, running_on, to_device
from edgesearch.runners.hardware.turns import in_work_steps  # a timing pauses the pass between changes
from edgesearch.spaces.activations import attach_input_quantizer, calibrate, remove_input_quantizers
from edgesearch.spaces.apply import apply_candidate, conv_layers, replace_module
from edgesearch.spaces.candidate import Candidate, LayerKnobs
from edgesearch.spaces.kernel_size import shrink_kernel
from edgesearch.spaces.knobs import CHANGE_KNOBS, weight_option_key
from edgesearch.spaces.low_rank import factorize
from edgesearch.spaces.prune import removed_channels
from edgesearch.spaces.quantize import fake_quantize, squared_errors

VERSION = 5  # bump when the method changes: cached tables from older code are recomputed
DEFAULTS = LayerKnobs()
# PWLQ and k-means errors of larger layouts are estimated on a sample of this many entries (quantize.squared_errors):
# exact, the pass took over 2 minutes for model.7.conv alone (295k weights, 240 options) on 2 busy cores
SAMPLED_ELEMENTS = 32768
# the fast pass's sample: omega's rankings over every weight option of YOLOv8n agree with 32768's at
# Spearman 1.000 (same curvatures), at a sixteenth of the work
FAST_SAMPLED_ELEMENTS = 2048
METHODS = ("fast", "reference")
# today's pass as it was (VERSION 3): what bench/sensitivity_speed.py compares the fast pass with
REFERENCE_SETTINGS = {"method": "reference", "hessian_batches": 2, "probes": 16}
REFERENCE = LayerKnobs(weight_bits=4, scheme="affine", granularity="tensor")  # where each layer's curvature is measured


@dataclasses.dataclass(frozen=True)
class SensitivitySettings:
    checkpoint: str
    data_yaml: str
    imgsz: int
    batch: int = 16
    loss_batches: int = 4  # train batches every loss is measured on
    hessian_batches: int = 1  # of those, the ones Hutchinson's probes use (a cross-check only: 0, none)
    # Rademacher probes per Hessian batch: 0, no Hutchinson cross-check (the reference pass: 2 batches
    # x 16; with 8 probes on 1 batch it took 11 of the fast pass's 108 s, for a figure that prices nothing)
    probes: int = 0
    threads: int = 2
    seed: int = 0
    trust_checkpoint: bool = False
    # "fast": the same figures with less redundant work (see _analyse_fast); "reference": the pass as
    # it was up to VERSION 3, one full forward per figure (bench/sensitivity_speed.py times both)
    method: str = "fast"
    batch_offset: int = 0  # train batches skipped before the `loss_batches` used (the benchmark's other batches)
    # where the losses are measured (runners/device.py): auto | cpu | cuda[:N]; options are applied
    # and weight errors computed on the CPU. Not part of the cache key (search/analysis.py).
    device: str = "auto"


def analyse(settings: dict, layer_options: dict[str, dict[str, list]], progress: bool = False) -> dict:
    """Sensitivity of every layer to every option in `layer_options` ({layer: {knob: values}}, the
    space's choices plus any recipe values). Returns plain data (see the module docstring), with
    `device` (where the losses were measured) and `stage_devices` (what the fused model's
    parameters and batches were on, as seen)."""
    config = SensitivitySettings(**settings)
    if config.method not in METHODS:
        raise ValueError(f"sensitivity method must be one of {', '.join(METHODS)}, not {config.method!r}")
    device = resolve_device(config.device)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    base = load_detection_model(config.checkpoint, trust=config.trust_checkpoint)
    fused = to_device(apply_candidate(base, Candidate({})), device)  # BN folded: the weights every option quantizes
    with exact_float32(device), running_on(fused, device) as watch:
        passes = {"fast": _analyse_fast, "reference": _analyse}
        result = passes[config.method](config, device, base, fused, layer_options, progress,
                                       _ranking_gradients(config, base, layer_options))
    return {**result, "pass": config.method, "device": describe(device), "stage_devices": {"sensitivity": watch.describe()}}


def _ranking_gradients(config: SensitivitySettings, base: nn.Module,
                       layer_options: dict[str, dict[str, list]]) -> dict[str, torch.Tensor] | None:
    """The gradients that rank a pruned layer's channels, as in every trial (channel_ranking.py);
    None where no option prunes."""
    if not any(value > 0 for options in layer_options.values() for value in options.get("prune_ratio", [])):
        return None
    return pruning_gradients(base, config.checkpoint, config.data_yaml, imgsz=config.imgsz)


def _analyse(config: SensitivitySettings, device: torch.device, base: nn.Module, fused: nn.Module,
             layer_options: dict[str, dict[str, list]], progress: bool,
             gradients: dict[str, torch.Tensor] | None) -> dict:
    batches = _batches(config, fused, device)
    images = sum(len(b["img"]) for b in batches)
    seconds = {}
    started = time.perf_counter()
    base_loss = detection_loss(fused, batches)
    convs = conv_layers(fused)
    traces = hessian_traces(fused, batches[:config.hessian_batches], [n for n in layer_options], config.probes,
                            progress=progress) if config.probes and config.hessian_batches else {}
    seconds["hessian"] = time.perf_counter() - started

    started = time.perf_counter()
    layers: dict[str, dict] = {}
    for name in in_work_steps(tqdm(layer_options, desc="sensitivity: layer curvature", unit="layer",
                                   disable=not progress)):
        layers[name] = _measured_curvature(convs[name], device, lambda: detection_loss(fused, batches) - base_loss,
                                           traces.get(name, (None, None)))
    seconds["curvature"] = time.perf_counter() - started

    started = time.perf_counter()
    bar = tqdm(layer_options.items(), desc="sensitivity: weight options", unit="layer", disable=not progress)
    for name, options in bar:
        info = layers[name]
        deltas = squared_errors(convs[name].weight.detach().cpu(), list(_weight_options(options)),
                                max_elements=SAMPLED_ELEMENTS)
        info["weight_options"] = {weight_option_key(knobs): {
            "delta_w2": delta, "omega": info["curvature"] * delta} for knobs, delta in deltas.items()}
        info["changes"] = {}
    seconds["weight_options"] = time.perf_counter() - started

    started = time.perf_counter()
    changes = [(name, knob, value) for name, options in layer_options.items() for knob in CHANGE_KNOBS
               for value in options.get(knob, []) if value != getattr(DEFAULTS, knob)]
    base_costs = _model_costs(fused, config.imgsz)
    for name, knob, value in in_work_steps(tqdm(changes, desc="sensitivity: structural changes", unit="change",
                                                disable=not progress)):
        loss, costs = _changed_loss(base, fused, name, knob, value, batches, config.imgsz, base_costs, gradients)
        layers[name]["changes"].setdefault(knob, {})[str(value)] = {
            "delta_loss": loss - base_loss,
            "delta_flops": costs["flops"] - base_costs["flops"],
            "delta_params": costs["params"] - base_costs["params"],
            **({"out_channels": costs["out_channels"]} if knob == "prune_ratio" else {}),
        }
    seconds["changes"] = time.perf_counter() - started
    return _table(config, base_loss, images, base_costs, layers, seconds)


def _table(config: SensitivitySettings, base_loss: float, images: int, base_costs: dict, layers: dict[str, dict],
           seconds: dict[str, float]) -> dict:
    measured = [layer["reference_second_order"] for layer in layers.values() if layer["trace"] is not None]
    predicted = [layer["hawq_reference_delta"] for layer in layers.values() if layer["trace"] is not None]
    agreement = spearmanr(measured, predicted).statistic if len(measured) > 2 else None
    probes = config.probes * config.hessian_batches
    return {
        "version": VERSION,
        "base_loss": base_loss,
        "reference_option": weight_option_key(REFERENCE),
        "agreement": None if agreement is None or math.isnan(agreement) else float(agreement),
        "images": images,
        "probes": probes,
        "base_flops": base_costs["flops"],
        "layers": layers,
        "seconds": seconds,
        "method": (f"detection loss per image on {images} train images; weight options: c * ||W - Q(W)||^2 with "
                   "the layer's curvature c measured at 4-bit affine per tensor; other changes: measured loss "
                   "change with only that change applied; "
                   + (f"cross-check: HAWQ's Hutchinson trace ({probes} probes)" if probes else
                      "no Hutchinson cross-check")),
    }


def _batches(config: SensitivitySettings, fused: nn.Module, device: torch.device) -> list[dict]:
    batches = loss_batches(Path(config.data_yaml), imgsz=config.imgsz, batch=config.batch,
                           count=config.batch_offset + config.loss_batches, stride=int(getattr(fused, "stride").max()))
    return [batch_to(b, device) for b in batches[config.batch_offset:]]


# ---- the fast pass -------------------------------------------------------------------------------

def _analyse_fast(config: SensitivitySettings, device: torch.device, base: nn.Module, fused: nn.Module,
                  layer_options: dict[str, dict[str, list]], progress: bool,
                  gradients: dict[str, torch.Tensor] | None) -> dict:
    """The reference pass's figures with less redundant work, each computed as there (the same
    central difference, calibration and measured changes), except where said:

      - every loss re-runs the model only from the top-level block holding the change: the base's
        block outputs on every batch are kept (_Replay), so a change in the neck does not re-run
        the backbone;
      - the int8 input quantizers of all layers are calibrated in one pass (each observes the float
        model's input to its conv, as when calibrated alone);
      - a pruning group's loss is that of the fused base with the group's channels zeroed (what the
        pruned model computes), found from one DepGraph trace for all groups (prune.removed_channels)
        instead of a copy and a re-trace per change; its FLOPs and parameters are counted, not traced;
      - PWLQ and k-means errors of large layouts are estimated on FAST_SAMPLED_ELEMENTS entries.
    """
    batches = _batches(config, fused, device)
    convs = conv_layers(fused)
    # weight errors need no loss: a second thread computes them while the losses are measured, each
    # on one core (many small ops: two threads each made them 7x slower on a busy 2-core host)
    weights = {name: convs[name].weight.detach().cpu().clone() for name in layer_options}
    with _Background(config.threads) as background:
        errors = background.submit(_weight_errors, weights, layer_options)
        return _measure_fast(config, device, base, fused, layer_options, progress, batches, background, errors,
                             gradients)


def _measure_fast(config: SensitivitySettings, device: torch.device, base: nn.Module, fused: nn.Module,
                  layer_options: dict[str, dict[str, list]], progress: bool, batches: list[dict],
                  background: _Background, errors: concurrent.futures.Future,
                  gradients: dict[str, torch.Tensor] | None) -> dict:
    images = sum(len(b["img"]) for b in batches)
    seconds = {}
    convs = conv_layers(fused)
    started = time.perf_counter()
    replay = _Replay(fused, batches, background.release)
    base_loss = replay.base_loss
    traces = hessian_traces(fused, batches[:config.hessian_batches], list(layer_options), config.probes,
                            progress=progress) if config.probes and config.hessian_batches else {}
    seconds["hessian"] = time.perf_counter() - started

    started = time.perf_counter()
    layers: dict[str, dict] = {}
    for name in in_work_steps(tqdm(layer_options, desc="sensitivity: layer curvature", unit="layer",
                                   disable=not progress)):
        start = replay.block_of(name)
        layers[name] = _measured_curvature(convs[name], device, lambda start=start: replay.loss(start) - base_loss,
                                           traces.get(name, (None, None)))
    seconds["curvature"] = time.perf_counter() - started

    started = time.perf_counter()
    for info in layers.values():
        info["changes"] = {}
    changes = [(name, knob, value) for name, options in layer_options.items() for knob in CHANGE_KNOBS
               for value in options.get(knob, []) if value != getattr(DEFAULTS, knob)]
    base_costs = _model_costs(fused, config.imgsz)
    conv_costs = {c.name: c for c in layer_costs(fused, (1, 3, config.imgsz, config.imgsz))}
    removed = removed_channels(base, [(name, value) for name, knob, value in changes if knob == "prune_ratio"],
                               gradients)
    quantizers = _calibrated_input_quantizers(
        fused, [name for name, knob, value in changes if knob == "activation_bits" and value == 8], batches, device)
    for name, knob, value in in_work_steps(tqdm(changes, desc="sensitivity: structural changes", unit="change",
                                                disable=not progress)):
        if knob == "prune_ratio" and _zeroable(convs, removed[(name, value)]):
            group = removed[(name, value)]
            with _channels_zeroed(convs, group):
                loss = replay.loss(min(replay.block_of(conv) for conv in group))
            costs = _pruned_costs(fused, convs, conv_costs, group, base_costs)
            costs["out_channels"] = convs[name].out_channels - len(group[name][0])
        elif knob == "prune_ratio":  # grouped convs: priced on a pruned copy, as the reference pass does
            loss, costs = _changed_loss(base, fused, name, knob, value, batches, config.imgsz, base_costs,
                                        gradients)
        elif knob == "activation_bits" and value == 8:
            with _input_rounded(convs[name], quantizers[name]):
                loss, costs = replay.loss(replay.block_of(name)), base_costs
        else:
            loss, costs = _replayed_change(replay, fused, name, knob, value, config.imgsz, base_costs)
        layers[name]["changes"].setdefault(knob, {})[str(value)] = {
            "delta_loss": loss - base_loss,
            "delta_flops": costs["flops"] - base_costs["flops"],
            "delta_params": costs["params"] - base_costs["params"],
            **({"out_channels": costs["out_channels"]} if knob == "prune_ratio" else {}),
        }
    seconds["changes"] = time.perf_counter() - started

    started = time.perf_counter()
    deltas, seconds["weight_options"] = errors.result()  # its own time, beside the losses
    background.release()
    seconds["weight_options_wait"] = time.perf_counter() - started
    for name, info in layers.items():
        info["weight_options"] = {key: {"delta_w2": delta, "omega": info["curvature"] * delta}
                                  for key, delta in deltas[name].items()}
    return _table(config, base_loss, images, base_costs, layers, seconds)


def _weight_errors(weights: dict[str, torch.Tensor], layer_options: dict[str, dict[str, list]]
                   ) -> tuple[dict[str, dict[str, float]], float]:
    """({layer: {weight option key: ||W - Q(W)||^2}}, seconds taken). Each layer is a work step: a
    timing on this machine (the base's score runs beside the pass) pauses this thread too."""
    started = time.perf_counter()
    deltas = {}
    for name, options in in_work_steps(layer_options.items()):
        found = squared_errors(weights[name], list(_weight_options(options)), max_elements=FAST_SAMPLED_ELEMENTS)
        deltas[name] = {weight_option_key(knobs): delta for knobs, delta in found.items()}
    return deltas, time.perf_counter() - started


class _Background:
    """One worker thread beside the main one; torch runs one thread per caller until it is done
    (`release`, called between losses, gives the main thread its `threads` back)."""

    def __init__(self, threads: int):
        self.threads = threads
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.future: concurrent.futures.Future | None = None

    def submit(self, function, *args) -> concurrent.futures.Future:
        torch.set_num_threads(1)
        self.future = self.pool.submit(function, *args)
        return self.future

    def release(self) -> None:
        if self.future is not None and self.future.done():
            self.future = None
            torch.set_num_threads(self.threads)

    def __enter__(self) -> _Background:
        return self

    def __exit__(self, *exc) -> None:
        if self.future is not None:
            self.future.cancel()
        self.pool.shutdown(wait=True)  # a failed pass waits for the worker, then frees the threads
        torch.set_num_threads(self.threads)


class _Replay:
    """finetune.detection_loss of the fused model after a change inside one top-level block: the
    base's outputs of every block on every batch are kept, so only the blocks from the changed
    one on run again (ultralytics' BaseModel._predict_once, from a block). A model that is not an
    ultralytics chain of blocks runs whole."""

    def __init__(self, model: nn.Module, batches: list[dict], before_each=None):
        self.model, self.batches, self.before_each = model, batches, before_each
        blocks = getattr(model, "model", None)
        self.blocks = list(blocks) if isinstance(blocks, nn.Sequential) and all(hasattr(m, "f") for m in blocks) else []
        self.starts = {f"model.{index}": index for index in range(len(self.blocks))}
        self.outputs: list[list] = []
        if self.blocks:
            with torch.no_grad():
                model.eval()
                self.outputs = [self._run(batch["img"], 0, []) for batch in batches]
        self.base_loss = self.loss(len(self.blocks))  # every block's output kept: the loss only

    def block_of(self, name: str) -> int:
        """Index of the top-level block holding the module `name` (0: from the input)."""
        parts = name.split(".")
        return self.starts.get(".".join(parts[:2]), 0)

    def loss(self, start: int) -> float:
        """The mean loss per image with blocks `start`.. run again (the earlier ones as kept)."""
        if self.before_each is not None:
            self.before_each()
        if not self.blocks:
            return detection_loss(self.model, self.batches)
        if not isinstance(getattr(self.model, "args", None), IterableSimpleNamespace):
            setattr(self.model, "args", get_cfg())
        if getattr(self.model, "criterion", None) is None:
            setattr(self.model, "criterion", getattr(self.model, "init_criterion")())
        self.model.eval()
        total, images = 0.0, 0
        with torch.no_grad():
            for batch, kept in zip(self.batches, self.outputs, strict=True):
                outputs = self._run(batch["img"], start, kept) if start < len(self.blocks) else kept
                loss, _ = getattr(self.model, "loss")(batch, outputs[-1])
                total = total + loss.sum()
                images += len(batch["img"])
        return float(total) / images

    def _run(self, images: torch.Tensor, start: int, kept: list) -> list:
        outputs = list(kept[:start])
        x = kept[start - 1] if start else images
        for block in self.blocks[start:]:
            source = getattr(block, "f")  # where the block reads from: -1 the previous block, else indices
            if source != -1:
                x = outputs[source] if isinstance(source, int) else [x if j == -1 else outputs[j] for j in source]
            x = block(x)
            outputs.append(x)
        return outputs


def _calibrated_input_quantizers(fused: nn.Module, layers: list[str], batches: list[dict],
                                 device: torch.device) -> dict[str, nn.Module]:
    """{layer: its int8 input quantizer, calibrated}: all observed in one pass of the float model
    (a quantizer passes its input through while it observes, so each sees what it would alone)."""
    convs = conv_layers(fused)
    for name in layers:
        attach_input_quantizer(convs[name], 8)
        getattr(convs[name], "input_quantizer").to(device)
    try:
        calibrate(fused, (b["img"] for b in batches))
        return {name: getattr(convs[name], "input_quantizer") for name in layers}
    finally:
        remove_input_quantizers(fused)


@contextlib.contextmanager
def _input_rounded(conv: nn.Module, quantizer: nn.Module):
    handle = conv.register_forward_pre_hook(lambda module, args: (quantizer(args[0]), *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def _zeroable(convs: dict[str, nn.Conv2d], group: dict[str, tuple[list[int], list[int]]]) -> bool:
    """Whether zeroing computes what removing does for every conv of the group: plain or depthwise."""
    return all(convs[name].groups == 1 or convs[name].groups == convs[name].in_channels == convs[name].out_channels
               for name in group)


@contextlib.contextmanager
def _channels_zeroed(convs: dict[str, nn.Conv2d], group: dict[str, tuple[list[int], list[int]]]):
    """The group's removed output channels (filters and biases) and input channels (weight slices)
    set to zero: the fused model then computes what the pruned one does."""
    saved = [(p, p.detach().clone()) for name in group for p in (convs[name].weight, convs[name].bias)
             if p is not None]
    with torch.no_grad():
        for name, (outputs, inputs) in group.items():
            conv = convs[name]
            if outputs:
                conv.weight[outputs] = 0
                if conv.bias is not None:
                    conv.bias[outputs] = 0
            if inputs and conv.groups == 1:  # a depthwise conv's inputs are its outputs
                conv.weight[:, inputs] = 0
    try:
        yield
    finally:
        with torch.no_grad():
            for parameter, values in saved:
                parameter.copy_(values)


def _pruned_costs(fused: nn.Module, convs: dict[str, nn.Conv2d], conv_costs: dict, group: dict, base_costs: dict) -> dict:
    """_model_costs of the pruned fused model, counted: each conv of the group loses the FLOPs and
    parameters of its removed output and input channels."""
    flops, params = base_costs["flops"], base_costs["params"]
    for name, (outputs, inputs) in group.items():
        conv, cost = convs[name], conv_costs[name]
        positions = cost.output_elements // conv.out_channels
        kernel = conv.kernel_size[0] * conv.kernel_size[1]
        depthwise = conv.groups > 1
        before_in = conv.in_channels // conv.groups
        after_in = before_in if depthwise else conv.in_channels - len(inputs)
        after_out = conv.out_channels - len(outputs)
        flops += 2 * positions * kernel * (after_out * after_in - conv.out_channels * before_in)
        params += kernel * (after_out * after_in - conv.out_channels * before_in)
        if conv.bias is not None:
            params -= len(outputs)
    return {"flops": flops, "params": params}


def _replayed_change(replay: _Replay, fused: nn.Module, name: str, knob: str, value, imgsz: int,
                     base_costs: dict) -> tuple[float, dict]:
    """_changed_loss of a kernel crop, a low rank or fp16 compute, re-running from the layer's block."""
    start = replay.block_of(name)
    return _layer_change(fused, name, knob, value, imgsz, base_costs, lambda: replay.loss(start), replay.batches)


def _measured_curvature(conv: nn.Conv2d, device: torch.device, loss_change, trace: tuple) -> dict:
    """A layer's entry: its weights moved by +d and -d (d: its error at the REFERENCE option, of
    squared norm `reference_w2`), `loss_change()` measured at each, and its Hutchinson (trace, stderr);
    the central difference's second-order term (the gradient's first-order term cancels: 1/2 d^T H d)
    gives the curvature."""
    weight, (value, spread) = conv.weight, trace
    on_cpu = weight.detach().cpu()  # quantizers run on the CPU (spaces/); the loss on the device
    error = (fake_quantize(on_cpu, REFERENCE) - on_cpu).to(device)
    reference_w2 = float(error.pow(2).sum())
    with _weight_replaced(weight, weight.detach() + error):
        plus = loss_change()
    with _weight_replaced(weight, weight.detach() - error):
        minus = loss_change()
    second_order = (plus + minus) / 2
    return {"trace": value, "trace_stderr": spread, "weights": weight.numel(), "shape": list(weight.shape),
            "groups": conv.groups, "bias": conv.bias is not None,
            "reference_delta_w2": reference_w2, "reference_delta_loss": plus, "reference_second_order": second_order,
            "hawq_reference_delta": None if value is None else 0.5 * value / weight.numel() * reference_w2,
            "curvature": max(second_order, 0.0) / reference_w2 if reference_w2 > 0 else 0.0}


def hessian_traces(model: nn.Module, batches: list[dict], layers: list[str], probes: int,
                   progress: bool = False) -> dict[str, tuple[float, float]]:
    """{layer: (mean, standard error)} of Tr(H) of the loss w.r.t. each layer's weight, from
    Hutchinson's estimator: E[v^T H v] over Rademacher v, one Hessian-vector product per probe."""
    model = copy.deepcopy(model)
    convs = conv_layers(model)
    weights = [convs[name].weight for name in layers]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for weight in weights:
        weight.requires_grad_(True)
    samples: dict[str, list[float]] = {name: [] for name in layers}
    bar = tqdm(total=len(batches) * probes, desc="sensitivity: Hessian traces", unit="probe", disable=not progress)
    for batch in batches:
        loss = detection_loss(model, [batch], grad=True)
        grads = torch.autograd.grad(loss, weights, create_graph=True)
        for _ in range(probes):
            vectors = [torch.randint_like(w, 2) * 2 - 1 for w in weights]
            products = torch.autograd.grad(grads, weights, grad_outputs=vectors, retain_graph=True)
            for name, v, hv in zip(layers, vectors, products, strict=True):
                samples[name].append(float((v * hv).sum()))
            bar.update(1)
        del grads, loss
    bar.close()
    result = {}
    for name, values in samples.items():
        mean = sum(values) / len(values)
        variance = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
        result[name] = (mean, (variance / len(values)) ** 0.5)
    return result


@contextlib.contextmanager
def _weight_replaced(weight: torch.Tensor, values: torch.Tensor):
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.copy_(values)
    try:
        yield
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def _weight_options(options: dict[str, list]):
    """Every distinct weight option a layer can take (float bits ignore scheme and granularity)."""
    seen = set()
    for bits in options.get("weight_bits", [DEFAULTS.weight_bits]):
        for scheme in options.get("scheme", [DEFAULTS.scheme]):
            for granularity in options.get("granularity", [DEFAULTS.granularity]):
                for group_size in options.get("group_size", [DEFAULTS.group_size]):
                    for sparsity in options.get("sparsity", [DEFAULTS.sparsity]):
                        knobs = LayerKnobs(weight_bits=bits, scheme=scheme, granularity=granularity,
                                           group_size=group_size, sparsity=sparsity)
                        if not knobs.quantized:  # the packing ignores scheme and granularity
                            knobs = dataclasses.replace(knobs, scheme=DEFAULTS.scheme,
                                                        granularity=DEFAULTS.granularity,
                                                        group_size=DEFAULTS.group_size)
                        if knobs not in seen:
                            seen.add(knobs)
                            yield knobs


def _model_costs(model: nn.Module, imgsz: int) -> dict:
    costs = layer_costs(model, (1, 3, imgsz, imgsz))
    return {"flops": sum(c.flops for c in costs), "params": sum(p.numel() for p in model.parameters())}


def _changed_loss(base: nn.Module, fused: nn.Module, name: str, knob: str, value, batches: list[dict],
                  imgsz: int, base_costs: dict, gradients: dict[str, torch.Tensor] | None) -> tuple[float, dict]:
    """The loss and costs of the fused base with one change at one layer (`base` on the CPU, where
    changes are made; `fused` and `batches` on the device the loss is measured on)."""
    device = next(fused.parameters()).device
    if knob == "prune_ratio":  # a pruning group reaches several layers: prune the base, then fold
        model = to_device(apply_candidate(base, Candidate({name: LayerKnobs(prune_ratio=value)}), gradients), device)
        costs = {**_model_costs(model, imgsz), "out_channels": conv_layers(model)[name].out_channels}
        return detection_loss(model, batches), costs
    return _layer_change(fused, name, knob, value, imgsz, base_costs, lambda: detection_loss(fused, batches), batches)


def _layer_change(fused: nn.Module, name: str, knob: str, value, imgsz: int, base_costs: dict,
                  loss: Callable[[], float], batches: list[dict]) -> tuple[float, dict]:
    """`loss()` and the costs of `fused` with a kernel crop, a low rank or rounded inputs at one layer
    (put back afterwards; rounded inputs are calibrated on `batches`)."""
    original = conv_layers(fused)[name]
    device = original.weight.device
    if knob == "activation_bits":  # the same arithmetic on rounded inputs: costs unchanged
        # fp16 compute rounds the float weights to fp16 as well (LayerKnobs.stored)
        weights = original.weight.detach().half().float() if value == 16 else original.weight.detach()
        attach_input_quantizer(original, value)
        original.to(device)  # the quantizer's buffers
        try:
            with _weight_replaced(original.weight, weights):
                calibrate(fused, (b["img"] for b in batches))
                return loss(), base_costs
        finally:
            remove_input_quantizers(fused)
    source = original if device.type == "cpu" else copy.deepcopy(original).cpu()
    changed = (shrink_kernel(source, value) if knob == "kernel_size" else factorize(source, value)).to(device)
    replace_module(fused, name, changed)
    try:
        return loss(), _model_costs(fused, imgsz)
    finally:
        replace_module(fused, name, original)
