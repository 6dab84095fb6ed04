"""The recovery stage's first phase (runners/accuracy/structure_recovery.py, spaces/prune.ratios_in_steps):
channels cut in steps reach exactly the widths one cut leaves, kernels crop the same fused or not, and
a recovered design trains its whole schedule, structure first, and says so in its training record."""

from __future__ import annotations

import copy

import pytest
import torch

from edgesearch.common.errors import InputError
from edgesearch.runners import evaluate
from edgesearch.runners.accuracy.structure_recovery import cut_steps
from edgesearch.search.recovery import recovery_settings
from edgesearch.search.resolve import eval_settings
from edgesearch.spaces.apply import apply_candidate, conv_layers, crop_kernels
from edgesearch.spaces.candidate import Candidate
from edgesearch.spaces.prune import prunable_groups, prunable_pairs, prune_output_channels, ratios_in_steps


def _shapes(model) -> dict[str, tuple]:
    return {name: tuple(conv.weight.shape) for name, conv in conv_layers(model).items()}


@pytest.mark.parametrize("cuts", [2, 3, 5])
def test_cuts_in_steps_leave_the_widths_one_cut_leaves_each_removing_a_like_share(tiny_model, cuts):
    names = list(prunable_pairs(tiny_model))
    ratios = dict(zip(names, [0.6, 0.75, 0.3, 0.5] * len(names), strict=False))
    once = copy.deepcopy(tiny_model)
    prune_output_channels(once, ratios)
    stepped, widths = copy.deepcopy(tiny_model), []
    steps = ratios_in_steps(tiny_model, ratios, cuts)
    assert len(steps) == cuts
    for ratios_now in steps:
        prune_output_channels(stepped, ratios_now)
        widths.append({name: group.channels for name, group in prunable_groups(stepped).items()})
    assert _shapes(stepped) == _shapes(once)
    name = next(n for n, r in ratios.items() if r == 0.75 and prunable_groups(tiny_model)[n].channels >= 16)
    path = [prunable_groups(tiny_model)[name].channels] + [w[name] for w in widths]
    shares = [after / before for before, after in zip(path, path[1:], strict=False)]
    assert all(0 < share < 1 for share in shares) and max(shares) - min(shares) < 0.2, path  # a geometric path


def test_a_layer_that_cannot_be_pruned_is_refused_in_one_line(tiny_model):
    coupled = next(name for name in conv_layers(tiny_model) if name not in prunable_pairs(tiny_model))
    with pytest.raises(InputError, match=f"{coupled} cannot be pruned"):
        ratios_in_steps(tiny_model, {coupled: 0.5}, 3)


def test_the_cuts_spread_over_the_first_third_of_the_schedule_within_the_recovery():
    assert cut_steps(1440, 1380, 3) == [0, 240, 480]
    assert cut_steps(180, 120, 3) == [0, 30, 60]
    assert cut_steps(180, 20, 3) == [0, 10, 20]  # a short recovery: all of them within it
    assert cut_steps(3, 2, 3) == [0]  # too short to spread: one cut
    assert cut_steps(180, 120, 1) == [0]


def test_a_kernel_crops_the_same_before_and_after_fusing(tiny_model):
    """The recovery crops kernels on the unfused model, a trial on the fused one: the same weights."""
    convs = conv_layers(tiny_model)
    name = next(n for n, conv in convs.items() if conv.kernel_size == (3, 3) and conv.padding == (1, 1))
    design = Candidate.from_json({"layers": {name: {"kernel_size": 1}}})
    torch.manual_seed(0)
    for module in tiny_model.modules():  # BatchNorms that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 2)
            module.running_var.data.uniform_(0.5, 2)
            module.running_mean.data.normal_()
    fused_first, cropped_first = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    fused_first.fuse(verbose=False)
    crop_kernels(fused_first, design)
    crop_kernels(cropped_first, design)
    cropped_first.fuse(verbose=False)
    for one, other in ((fused_first, cropped_first), (cropped_first, fused_first)):
        assert conv_layers(one)[name].kernel_size == (1, 1)
        assert torch.equal(conv_layers(one)[name].weight, conv_layers(other)[name].weight)
        assert torch.equal(conv_layers(one)[name].bias, conv_layers(other)[name].bias)


def test_a_recovered_design_trains_its_structure_first_to_the_one_cut_widths_and_says_so(smoke_inputs):
    convs = conv_layers(smoke_inputs.base_model)
    pruned = list(prunable_pairs(smoke_inputs.base_model))[:2]
    cropped = next(n for n, conv in convs.items() if conv.kernel_size == (3, 3) and conv.padding == (1, 1)
                   and n not in pruned)
    design = {"layers": {pruned[0]: {"prune_ratio": 0.5, "weight_bits": 8, "activation_bits": 8},
                         pruned[1]: {"prune_ratio": 0.75}, cropped: {"kernel_size": 1, "weight_bits": 4}}}
    settings = eval_settings(smoke_inputs, imgsz=64, finetune_iters=3, batch=4, threads=1, seed=0)
    config = evaluate.EvalSettings(**recovery_settings(settings, 6))
    assert (config.finetune_iters, config.recovery_steps, config.cuts) == (9, 6, 3)
    _, model, _, losses, _ = evaluate.build_design(config, design)
    once = apply_candidate(smoke_inputs.base_model, Candidate.from_json(design))
    assert {n: c.weight.shape for n, c in conv_layers(model).items()} == \
        {n: c.weight.shape for n, c in conv_layers(once).items()}  # the widths, kernels (and quantizers) of one cut
    assert losses.cuts_at == (0, 1, 2) and len(losses) == 9  # every step of the schedule trained
    record = evaluate.training_record(config, cuts_at=losses.cuts_at)
    assert record["cuts_at"] == [0, 1, 2] and record["label"].startswith(
        "9 fine-tune steps from the base: 6 of recovery first (float, BatchNorm unfused, channels cut at steps "
        "0, 1, 2), then 3, distilled from the base")
    # the search's own fine-tune: one cut, before it; nothing in the record
    _, _, _, losses, _ = evaluate.build_design(evaluate.EvalSettings(**settings), design)
    assert losses.cuts_at == (0,) and len(losses) == 3
    assert "cuts_at" not in evaluate.training_record(evaluate.EvalSettings(**settings), cuts_at=losses.cuts_at)
