"""Coupled-channel structured pruning on the three ultralytics families (v8n, v5nu, 11n) at 64 px:
the right layers are grouped, the pruned model is smaller, consistent, exportable and loadable, and
pruning channels that carry nothing leaves the predictions unchanged (every coupling mapped right)."""

import copy
import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from ultralytics import YOLO
from ultralytics.nn.modules.block import SPPF, Attention, C2f
from ultralytics.nn.modules.conv import Conv
from ultralytics.nn.modules.head import Detect

from conftest import unit_variance_weights
from edgesearch.common.errors import InputError
from edgesearch.spaces.apply import apply_candidate
from edgesearch.spaces.candidate import Candidate, LayerKnobs
from edgesearch.spaces.prune import (
    attach_gradients,
    prunable_groups,
    prunable_pairs,
    prune_output_channels,
    removed_channels,
    removed_count,
)

IMGSZ = 64
FAMILIES = ["yolov8n.yaml", "yolov5n.yaml", "yolo11n.yaml"]


def _fresh(yaml: str) -> nn.Module:
    torch.manual_seed(0)
    return YOLO(yaml).model.eval()


@pytest.fixture(scope="module", params=FAMILIES)
def base_and_pruned(request):
    """(base, every prunable group pruned at 0.5) for one family, built once per module."""
    base = _fresh(request.param)
    pruned = copy.deepcopy(base)
    prune_output_channels(pruned, {name: 0.5 for name in prunable_pairs(base)})
    return base, pruned.eval()


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _head(model: nn.Module) -> Detect:
    return next(m for m in model.modules() if isinstance(m, Detect))


def _exportable(model: nn.Module) -> nn.Module:
    """A copy whose Detect returns one tensor, as ultralytics' exporter sets it."""
    model = copy.deepcopy(model).eval()
    head = _head(model)
    head.export, head.format, head.dynamic, head.shape = True, "onnx", False, None
    return model


def _unit_spread(model: nn.Module, x: torch.Tensor) -> None:
    """Rescale every trainable conv so its output has unit spread on `x` (zero weights stay zero):
    with half the channels zeroed, activations vanish layer by layer, and a comparison of
    near-constant outputs would pass whatever the pruning did."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
    unit_variance_weights(model, x, randomise=False, convs=convs)


# --- grouping ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("yaml", FAMILIES)
def test_groups_couple_residuals_splits_and_concats_and_spare_outputs_and_attention(yaml):
    model = _fresh(yaml)
    groups = prunable_groups(model)
    convs = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(groups) <= convs and list(prunable_pairs(model)) == list(groups)
    producers = {name for group in groups.values() for name in group.producers}
    members = producers | {name for group in groups.values() for name in group.consumers}
    assert not set(groups) & {name for group in groups.values() for name in group.producers if name != group.knob}

    head = _head(model)
    head_name = next(name for name, m in model.named_modules() if m is head)
    outputs = {f"{head_name}.{branch}.{i}.{len(seq) - 1}" for branch in ("cv2", "cv3")
               for i, seq in enumerate(getattr(head, branch))}
    assert outputs <= convs and not outputs & producers and outputs <= members  # inputs pruned, outputs kept
    assert f"{head_name}.dfl.conv" not in members

    sppf = next(name for name, m in model.named_modules() if isinstance(m, SPPF))
    assert f"{sppf}.cv1.conv" in groups and f"{sppf}.cv2.conv" in groups[f"{sppf}.cv1.conv"].consumers

    for name, block in model.named_modules():
        if isinstance(block, C2f):  # C2f and C3k2: cv1's halves as one knob, the residual branch coupled
            group = groups[f"{name}.cv1.conv"]
            assert group.halves and group.channels == block.c
            if block.m[0].__class__.__name__ == "Bottleneck" and block.m[0].add:
                assert f"{name}.m.0.cv2.conv" in group.producers
    for attention in (name for name, m in model.named_modules() if isinstance(m, Attention)):
        assert not {n for n in members if n.startswith(f"{attention}.")}  # qkv/proj/pe left alone


# --- the pruned model ---------------------------------------------------------------------------------

def test_pruned_model_runs_with_the_same_output_shapes_and_fewer_parameters(base_and_pruned):
    base, pruned = base_and_pruned
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        before, after = base(x), pruned(x)
    assert after[0].shape == before[0].shape
    assert [f.shape[-2:] for f in after[1]["feats"]] == [f.shape[-2:] for f in before[1]["feats"]]
    assert _params(pruned) < 0.4 * _params(base)  # 0.5 of (almost) every channel: ~1/4 of the weights


def test_pruned_model_layers_are_consistent_and_coupled_channels_shrank(base_and_pruned):
    base, pruned = base_and_pruned
    for module in pruned.modules():
        if isinstance(module, nn.Conv2d):
            assert module.weight.shape[:2] == (module.out_channels, module.in_channels // module.groups)
        if isinstance(module, Conv) and isinstance(module.bn, nn.BatchNorm2d):
            assert module.bn.num_features == module.conv.out_channels == module.bn.weight.numel()
    base_modules = dict(base.named_modules())
    for name, block in pruned.named_modules():
        if isinstance(block, C2f):  # equal halves, `c` follows
            assert block.cv1.conv.out_channels == 2 * block.c == 2 * (base_modules[name].c // 2)
        if isinstance(block, SPPF):
            assert block.cv1.conv.out_channels == base_modules[name].cv1.conv.out_channels // 2
    head, base_head = _head(pruned), _head(base)
    for branch in ("cv2", "cv3"):
        for seq, base_seq in zip(getattr(head, branch), getattr(base_head, branch), strict=True):
            assert seq[-1].out_channels == base_seq[-1].out_channels  # 4 * reg_max boxes, nc classes
            assert seq[-1].in_channels < base_seq[-1].in_channels
    assert torch.equal(head.dfl.conv.weight, base_head.dfl.conv.weight)
    for name, module in pruned.named_modules():
        if isinstance(module, Attention):
            assert all(p.shape == q.shape for p, q in zip(module.parameters(), base_modules[name].parameters(), strict=True))


def test_pruned_model_exports_and_onnx_runtime_agrees(base_and_pruned):
    _, pruned = base_and_pruned
    model = _exportable(pruned)
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        expected = model(x)
        exported = torch.export.export(model, (x,))
        assert torch.allclose(exported.module()(x), expected, atol=1e-4)
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["images"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (onnx_output,) = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(onnx_output, expected.numpy(), atol=1e-3, rtol=1e-3)


def test_pruned_model_survives_a_save_and_load_round_trip(base_and_pruned, tmp_path):
    _, pruned = base_and_pruned
    torch.save({"model": pruned}, tmp_path / "pruned.pt")
    loaded = torch.load(tmp_path / "pruned.pt", weights_only=False)["model"].eval()
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], pruned(x)[0])
    assert not any("forward" in vars(m) for m in loaded.modules())  # the classes' own forwards


# --- which channels go ------------------------------------------------------------------------------

@pytest.mark.parametrize("yaml", FAMILIES)
def test_pruning_channels_that_carry_nothing_leaves_the_predictions_unchanged(yaml):
    """Zero the channels to remove in every producer of every group (filter and BatchNorm), so they
    carry exact zeros; "bn" importance then removes exactly them, and the raw head outputs must not
    move. A channel mapped wrongly anywhere (concat offsets, split halves, residuals, depthwise
    pass-through) removes a live channel or leaves a dead one and changes them."""
    model = _fresh(yaml)
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    generator = torch.Generator().manual_seed(1)
    modules = dict(model.named_modules())
    groups = prunable_groups(model)
    with torch.no_grad():
        for group in groups.values():
            halves = 2 if group.halves else 1
            dead = torch.cat([h * group.channels + torch.randperm(group.channels, generator=generator)[
                :removed_count(group.channels, 0.5)] for h in range(halves)])
            for producer in group.producers:
                conv, batchnorm = modules[producer], modules[producer.rsplit(".", 1)[0]].bn
                rows = dead
                if conv.out_channels < len(dead) * 2:  # a bottleneck on a split's second half (the
                    rows = dead[dead >= group.channels] - group.channels  # first half goes to the concat only)
                conv.weight[rows] = 0
                batchnorm.weight[rows], batchnorm.bias[rows] = 0, 0
        _unit_spread(model, x)
        before = model(x)[1]
        assert (before["scores"][0] - before["scores"][1]).abs().mean() > 0.1  # outputs depend on the input
        pruned = copy.deepcopy(model)
        prune_output_channels(pruned, {name: 0.5 for name in groups}, importance="bn")
        after = pruned(x)[1]
    assert _params(pruned) < 0.4 * _params(model)
    for key in ("boxes", "scores"):
        torch.testing.assert_close(after[key], before[key], atol=1e-4, rtol=1e-4)


def test_l1_importance_keeps_the_channels_with_the_largest_group_weights():
    model = _fresh("yolov8n.yaml")
    first, second = model.get_submodule("model.0.conv"), model.get_submodule("model.1.conv")
    assert prunable_groups(model)["model.0.conv"].consumers == ("model.1.conv",)
    # group L1: the channel's filter in model.0 plus its input slice in model.1
    scores = first.weight.abs().sum((1, 2, 3)) + second.weight.abs().sum((0, 2, 3))
    kept = torch.sort(torch.topk(scores, first.out_channels - removed_count(first.out_channels, 0.25)).indices).values
    expected_first, expected_second = first.weight[kept].clone(), second.weight[:, kept].clone()
    prune_output_channels(model, {"model.0.conv": 0.25})
    assert torch.equal(model.get_submodule("model.0.conv").weight, expected_first)
    assert torch.equal(model.get_submodule("model.1.conv").weight, expected_second)


def test_bn_importance_removes_the_channels_with_the_smallest_gamma():
    model = _fresh("yolov8n.yaml")
    batchnorm = model.get_submodule("model.2.cv1.bn")  # C2f cv1: halves of 16, residual with m.0.cv2
    residual_bn = model.get_submodule("model.2.m.0.cv2.bn")
    with torch.no_grad():
        batchnorm.weight.copy_(torch.linspace(-1, 1, batchnorm.num_features).flip(0))
        residual_bn.weight.fill_(0.01)
    # second half's scores: |gamma| of cv1 (second half) + |gamma| of m.0.cv2 (same channels)
    scores = batchnorm.weight.abs().clone()
    scores[16:] += residual_bn.weight.abs()
    kept = [torch.topk(scores[offset:offset + 16], 8).indices.sort().values + offset for offset in (0, 16)]
    expected = batchnorm.weight[torch.cat(kept)].clone()
    prune_output_channels(model, {"model.2.cv1.conv": 0.5}, importance="bn")
    assert torch.equal(model.get_submodule("model.2.cv1.bn").weight, expected)
    assert model.get_submodule("model.2").c == 8


def _random_gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {name: torch.randn(p.shape, generator=generator) for name, p in model.named_parameters()}


def test_taylor_importance_removes_the_channels_whose_weight_times_gradient_is_smallest():
    model = _fresh("yolov8n.yaml")
    gradients = _random_gradients(model)
    first, second = model.get_submodule("model.0.conv"), model.get_submodule("model.1.conv")
    # group Taylor over the convs: |w x dL/dw| of the channel's filter in model.0 and its input slice in model.1
    scores = ((first.weight * gradients["model.0.conv.weight"]).abs().sum((1, 2, 3))
              + (second.weight * gradients["model.1.conv.weight"]).abs().sum((0, 2, 3)))
    kept = torch.sort(torch.topk(scores, first.out_channels - removed_count(first.out_channels, 0.25)).indices).values
    magnitude = first.weight.abs().sum((1, 2, 3)) + second.weight.abs().sum((0, 2, 3))
    by_magnitude = torch.sort(torch.topk(magnitude, len(kept)).indices).values
    assert not torch.equal(kept, by_magnitude)  # the test tells the two apart
    expected_first = first.weight[kept].clone()
    attach_gradients(model, gradients)
    prune_output_channels(model, {"model.0.conv": 0.25}, importance="taylor")
    assert torch.equal(model.get_submodule("model.0.conv").weight, expected_first)


def test_a_design_cut_with_gradients_loses_the_channels_taylor_ranks_lowest_in_every_path(tiny_model):
    """apply_candidate with gradients prunes by Taylor (without: by L1), also through a split cv1's
    halves, and removed_channels (the sensitivity pass's zeroing) names the same channels."""
    gradients = _random_gradients(tiny_model)
    changes = {"model.0.conv": 0.5, "model.2.cv1.conv": 0.5}
    candidate = Candidate({name: LayerKnobs(prune_ratio=ratio) for name, ratio in changes.items()})
    by_taylor, by_magnitude = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    attach_gradients(by_taylor, gradients)
    prune_output_channels(by_taylor, changes, importance="taylor")
    prune_output_channels(by_magnitude, changes, importance="l1")
    cut = apply_candidate(tiny_model, candidate, gradients)
    for name in changes:  # apply_candidate fuses: compare with the fused prunings
        weights = [m.fuse(verbose=False).get_submodule(name).weight for m in (by_taylor, by_magnitude)]
        assert torch.equal(cut.get_submodule(name).weight, weights[0]), name
        assert not torch.equal(cut.get_submodule(name).weight, weights[1]), name
        assert torch.equal(apply_candidate(tiny_model, candidate).get_submodule(name).weight, weights[1]), name
    assert all(p.grad is None for p in cut.parameters()) and all(p.grad is None for p in tiny_model.parameters())
    removed = removed_channels(tiny_model, list(changes.items()), gradients)
    for knob, ratio in changes.items():
        ranked = copy.deepcopy(tiny_model)
        attach_gradients(ranked, gradients)
        prune_output_channels(ranked, {knob: ratio}, importance="taylor")
        conv, kept_conv = tiny_model.get_submodule(knob), ranked.get_submodule(knob)
        kept = [i for i in range(conv.out_channels) if i not in removed[(knob, ratio)][knob][0]]
        assert torch.equal(conv.weight[kept], kept_conv.weight), knob


def test_zero_ratio_changes_nothing(tiny_model):
    model = copy.deepcopy(tiny_model)
    prune_output_channels(model, {name: 0.0 for name in prunable_pairs(model)})
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    assert torch.equal(model(x)[0], tiny_model(x)[0])


def test_pruning_keeps_the_training_mode_and_frozen_parameters(tiny_model):
    model = copy.deepcopy(tiny_model).train()
    model.model[0].requires_grad_(False)
    prune_output_channels(model, {"model.0.conv": 0.5, "model.2.cv1.conv": 0.5})
    assert model.training and model.model[1].conv.weight.requires_grad
    assert not any(p.requires_grad for p in model.model[0].parameters())
    assert model.model[0].conv.out_channels == tiny_model.model[0].conv.out_channels // 2


@pytest.mark.parametrize("ratios, importance, message", [
    ({"model.99.conv": 0.5}, "l1", "cannot be pruned"),
    ({"model.2.m.0.cv2.conv": 0.5}, "l1", "cannot be pruned"),  # coupled: follows model.2.cv1.conv
    ({"model.22.cv2.0.2": 0.5}, "l1", "cannot be pruned"),  # a Detect output
    ({"model.0.conv": 1.0}, "l1", "must be in"),
    ({"model.0.conv": 0.5}, "hessian", "importance"),
    ({"model.0.conv": 0.5}, "taylor", "gradients"),  # nothing in .grad to rank on
])
def test_bad_requests_are_refused_in_one_line(tiny_model, ratios, importance, message):
    model = copy.deepcopy(tiny_model)
    with pytest.raises(InputError, match=message) as error:
        prune_output_channels(model, ratios, importance=importance)
    assert "\n" not in str(error.value)
