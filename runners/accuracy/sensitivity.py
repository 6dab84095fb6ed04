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
Hutchinson trace is still computed, as a cross-check: `hawq_reference_delta` is HAWQ-V2's
prediction 1/2 Tr(H)/n ||dW||^2 of the same reference change, and `agreement` the Spearman rank
correlation between it and the measured second-order change over layers.

An option that combines several changes is priced as their sum; bench/search_quality.py checks
that additivity against measured drops. Negative measured changes (the loss can fall) are kept as
measured, and clipped at zero where the search uses them (search/options.py).

`analyse` takes and returns plain data, so it runs in-process or as a Ray task like a trial.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm import tqdm

from edgesearch.runners.accuracy.finetune import detection_loss, loss_batches
from edgesearch.runners.checkpoints import load_detection_model
from edgesearch.runners.costs import layer_costs
from edgesearch.runners.device import batch_to, describe, exact_float32, resolve_device, running_on, to_device
from edgesearch.spaces.activations import attach_input_quantizer, calibrate, remove_input_quantizers
from edgesearch.spaces.apply import apply_candidate, conv_layers, replace_module
from edgesearch.spaces.candidate import Candidate, LayerKnobs
from edgesearch.spaces.kernel_size import shrink_kernel
from edgesearch.spaces.knobs import CHANGE_KNOBS, weight_option_key
from edgesearch.spaces.low_rank import factorize
from edgesearch.spaces.quantize import fake_quantize, squared_errors

VERSION = 3  # bump when the method changes: cached tables from older code are recomputed
DEFAULTS = LayerKnobs()
# PWLQ and k-means errors of larger layouts are estimated on a sample of this many entries (quantize.squared_errors):
# exact, the pass took over 2 minutes for model.7.conv alone (295k weights, 240 options) on 2 busy cores
SAMPLED_ELEMENTS = 32768
REFERENCE = LayerKnobs(weight_bits=4, scheme="affine", granularity="tensor")  # where each layer's curvature is measured


@dataclasses.dataclass(frozen=True)
class SensitivitySettings:
    checkpoint: str
    data_yaml: str
    imgsz: int
    batch: int = 16
    loss_batches: int = 4  # train batches every loss is measured on
    hessian_batches: int = 2  # of those, the ones Hutchinson's probes use
    probes: int = 16  # Rademacher probes per Hessian batch
    threads: int = 2
    seed: int = 0
    trust_checkpoint: bool = False
    # where the losses are measured (runners/device.py): auto | cpu | cuda[:N]; options are applied
    # and weight errors computed on the CPU. Not part of the cache key (search/analysis.py).
    device: str = "auto"


def analyse(settings: dict, layer_options: dict[str, dict[str, list]], progress: bool = False) -> dict:
    """Sensitivity of every layer to every option in `layer_options` ({layer: {knob: values}}, the
    space's choices plus any recipe values). Returns plain data (see the module docstring), with
    `device` (where the losses were measured) and `stage_devices` (what the fused model's
    parameters and batches were on, as seen)."""
    config = SensitivitySettings(**settings)
    device = resolve_device(config.device)
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    base = load_detection_model(config.checkpoint, trust=config.trust_checkpoint)
    fused = to_device(apply_candidate(base, Candidate({})), device)  # BN folded: the weights every option quantizes
    with exact_float32(device), running_on(fused, device) as watch:
        result = _analyse(config, device, base, fused, layer_options, progress)
    return {**result, "device": describe(device), "stage_devices": {"sensitivity": watch.describe()}}


def _analyse(config: SensitivitySettings, device: torch.device, base: nn.Module, fused: nn.Module,
             layer_options: dict[str, dict[str, list]], progress: bool) -> dict:
    batches = loss_batches(Path(config.data_yaml), imgsz=config.imgsz, batch=config.batch, count=config.loss_batches,
                           stride=int(getattr(fused, "stride").max()))
    batches = [batch_to(b, device) for b in batches]
    images = sum(len(b["img"]) for b in batches)
    seconds = {}
    started = time.perf_counter()
    base_loss = detection_loss(fused, batches)
    convs = conv_layers(fused)
    traces = hessian_traces(fused, batches[:config.hessian_batches], [n for n in layer_options], config.probes,
                            progress=progress)
    seconds["hessian"] = time.perf_counter() - started

    started = time.perf_counter()
    layers: dict[str, dict] = {}
    for name in tqdm(layer_options, desc="sensitivity: layer curvature", unit="layer", disable=not progress):
        weight = convs[name].weight
        on_cpu = weight.detach().cpu()  # quantizers run on the CPU (spaces/); the loss on the device
        error = (fake_quantize(on_cpu, REFERENCE) - on_cpu).to(device)
        reference_w2 = float(error.pow(2).sum())
        with _weight_replaced(weight, weight.detach() + error):
            plus = detection_loss(fused, batches) - base_loss
        with _weight_replaced(weight, weight.detach() - error):
            minus = detection_loss(fused, batches) - base_loss
        second_order = (plus + minus) / 2  # the gradient's first-order term cancels: 1/2 d^T H d
        trace, spread = traces[name]
        layers[name] = {"trace": trace, "trace_stderr": spread, "weights": weight.numel(),
                        "shape": list(weight.shape), "groups": convs[name].groups,
                        "bias": convs[name].bias is not None,
                        "reference_delta_w2": reference_w2, "reference_delta_loss": plus,
                        "reference_second_order": second_order,
                        "hawq_reference_delta": 0.5 * trace / weight.numel() * reference_w2,
                        "curvature": max(second_order, 0.0) / reference_w2 if reference_w2 > 0 else 0.0}
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
    for name, knob, value in tqdm(changes, desc="sensitivity: structural changes", unit="change",
                                  disable=not progress):
        loss, costs = _changed_loss(base, fused, name, knob, value, batches, config.imgsz, base_costs)
        layers[name]["changes"].setdefault(knob, {})[str(value)] = {
            "delta_loss": loss - base_loss,
            "delta_flops": costs["flops"] - base_costs["flops"],
            "delta_params": costs["params"] - base_costs["params"],
            **({"out_channels": costs["out_channels"]} if knob == "prune_ratio" else {}),
        }
    seconds["changes"] = time.perf_counter() - started
    measured = [layer["reference_second_order"] for layer in layers.values()]
    predicted = [layer["hawq_reference_delta"] for layer in layers.values()]
    agreement = spearmanr(measured, predicted).statistic if len(layers) > 2 else None
    return {
        "version": VERSION,
        "base_loss": base_loss,
        "reference_option": weight_option_key(REFERENCE),
        "agreement": None if agreement is None or math.isnan(agreement) else float(agreement),
        "images": images,
        "probes": config.probes * config.hessian_batches,
        "base_flops": base_costs["flops"],
        "layers": layers,
        "seconds": seconds,
        "method": (f"detection loss per image on {images} train images; weight options: c * ||W - Q(W)||^2 with "
                   "the layer's curvature c measured at 4-bit affine per tensor; other changes: measured loss "
                   "change with only that change applied; cross-check: HAWQ's Hutchinson trace "
                   f"({config.probes * config.hessian_batches} probes)"),
    }


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
                  imgsz: int, base_costs: dict) -> tuple[float, dict]:
    """The loss and costs of the fused base with one change at one layer (`base` on the CPU, where
    changes are made; `fused` and `batches` on the device the loss is measured on)."""
    device = next(fused.parameters()).device
    if knob == "prune_ratio":  # a pruning group reaches several layers: prune the base, then fold
        model = to_device(apply_candidate(base, Candidate({name: LayerKnobs(prune_ratio=value)})), device)
        costs = {**_model_costs(model, imgsz), "out_channels": conv_layers(model)[name].out_channels}
        return detection_loss(model, batches), costs
    original = conv_layers(fused)[name]
    if knob == "activation_bits":  # the same arithmetic on rounded inputs: costs unchanged
        # fp16 compute rounds the float weights to fp16 as well (LayerKnobs.stored)
        weights = original.weight.detach().half().float() if value == 16 else original.weight.detach()
        attach_input_quantizer(original, value)
        original.to(device)  # the quantizer's buffers
        try:
            with _weight_replaced(original.weight, weights):
                calibrate(fused, (b["img"] for b in batches))
                return detection_loss(fused, batches), base_costs
        finally:
            remove_input_quantizers(fused)
    source = original if device.type == "cpu" else copy.deepcopy(original).cpu()
    changed = (shrink_kernel(source, value) if knob == "kernel_size" else factorize(source, value)).to(device)
    replace_module(fused, name, changed)
    try:
        return detection_loss(fused, batches), _model_costs(fused, imgsz)
    finally:
        replace_module(fused, name, original)
