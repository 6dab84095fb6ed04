import torch
from ultralytics.nn.modules.block import Bottleneck

from edgesearch.spaces.prune import channels_to_keep, prunable_pairs, prune_output_channels


def test_prunable_pairs_are_bottleneck_inners_and_detect_chains(tiny_model):
    pairs = prunable_pairs(tiny_model)
    bottlenecks = [n for n, m in tiny_model.named_modules() if isinstance(m, Bottleneck)]
    assert {f"{b}.cv1.conv" for b in bottlenecks} <= set(pairs)
    head = [p for p in pairs if p.startswith("model.22.")]
    assert len(head) == 12  # 3 scales x 2 branches x 2 inner convs
    assert not any(p.endswith(".2") for p in pairs)  # head output convs keep their channels


def test_pruning_removes_the_weakest_channels_and_keeps_outputs(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    x = torch.rand(2, 3, 64, 64)
    ratios = {name: 0.5 for name in prunable_pairs(model)}
    name = next(iter(ratios))
    conv = model.get_submodule(name)
    expected = channels_to_keep(conv, 0.5)
    strongest = conv.weight.detach().abs().sum((1, 2, 3)).argmax()
    prune_output_channels(model, ratios)
    assert strongest in expected
    assert model.get_submodule(name).out_channels == len(expected) == conv.out_channels
    assert model(x)[0].shape == tiny_model(x)[0].shape
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in tiny_model.parameters())


def test_pruning_zero_ratio_changes_nothing(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    prune_output_channels(model, {})
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(model(x)[0], tiny_model(x)[0])
