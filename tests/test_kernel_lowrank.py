"""Kernel-size (seed 004) and low-rank (seed 002) transforms on plain convs and on a tiny YOLO."""

import copy
import itertools

import pytest
import torch
from torch import nn

from edgesearch.common.errors import InputError
from edgesearch.spaces import kernel_size, low_rank


def _conv(c_in, c_out, k, stride=1, padding=None, groups=1, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2 if padding is None else padding,
                     groups=groups, bias=True).eval()


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# --- kernel size -------------------------------------------------------------------------------

@pytest.mark.parametrize("k, new_k", [(5, 3), (5, 1), (3, 1)])
@pytest.mark.parametrize("stride", [1, 2])
def test_shrink_keeps_output_shape_and_takes_the_centre_crop(k, new_k, stride):
    conv = _conv(4, 6, k, stride=stride)
    shrunk = kernel_size.shrink_kernel(conv, new_k)
    x = torch.rand(2, 4, 17, 16)  # odd and even sizes: padding must match on both axes
    assert shrunk(x).shape == conv(x).shape
    c = (k - new_k) // 2
    assert torch.equal(shrunk.weight, conv.weight[:, :, c:c + new_k, c:c + new_k])
    assert torch.equal(shrunk.bias, conv.bias)
    assert shrunk.kernel_size == (new_k, new_k) and shrunk.stride == conv.stride
    assert shrunk.padding == (conv.padding[0] - c,) * 2


@pytest.mark.parametrize("k, new_k, padding", [(3, 1, 1), (5, 3, 2), (5, 1, 2), (5, 3, 1)])
def test_kernel_with_a_zero_outer_ring_gives_identical_output(k, new_k, padding):
    # (5, 3, 1): a "valid-ish" padding works too, as long as the reduced padding stays >= 0
    conv = _conv(3, 5, k, stride=2, padding=padding)
    c = (k - new_k) // 2
    ring = torch.ones_like(conv.weight, dtype=torch.bool)
    ring[:, :, c:c + new_k, c:c + new_k] = False
    with torch.no_grad():
        conv.weight[ring] = 0.0
    x = torch.rand(1, 3, 15, 15)
    torch.testing.assert_close(kernel_size.shrink_kernel(conv, new_k)(x), conv(x), rtol=1e-5, atol=1e-6)


def test_shrink_keeps_groups_and_leaves_the_input_conv_untouched():
    conv = _conv(8, 8, 3, groups=8)  # depthwise convs can shrink: each filter is cropped alone
    before = conv.weight.clone()
    shrunk = kernel_size.shrink_kernel(conv, 1)
    assert shrunk.groups == 8 and shrunk.weight.shape == (8, 1, 1, 1)
    assert torch.equal(conv.weight, before) and conv.kernel_size == (3, 3)


@pytest.mark.parametrize("conv, new_k, reason", [
    (nn.Conv2d(2, 2, 3, padding=1), 3, "not smaller"),
    (nn.Conv2d(2, 2, 3, padding=1), 5, "not smaller"),
    (nn.Conv2d(2, 2, 5, padding=2), 2, "positive odd"),
    (nn.Conv2d(2, 2, 4, padding=2), 1, "even size"),
    (nn.Conv2d(2, 2, (3, 5), padding=(1, 2)), 1, "not square"),
    (nn.Conv2d(2, 2, 3, padding=2, dilation=2), 1, "dilated"),
    (nn.Conv2d(2, 2, 3, padding=0), 1, "padding"),
    (nn.Conv2d(2, 2, 5, padding=1), 1, "padding"),
    (nn.Linear(2, 2), 1, "nn.Conv2d"),
])
def test_ineligible_convs_raise_a_clear_error(conv, new_k, reason):
    assert not kernel_size.can_shrink(conv, new_k)
    with pytest.raises(InputError, match=reason) as error:  # InputError is a ValueError
        kernel_size.shrink_kernel(conv, new_k)
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)


def test_string_paddings_are_understood():
    same = nn.Conv2d(2, 3, 5, padding="same")
    x = torch.rand(1, 2, 9, 9)
    assert kernel_size.shrink_kernel(same, 1)(x).shape == same(x).shape
    assert not kernel_size.can_shrink(nn.Conv2d(2, 3, 5, padding="valid"), 3)


# --- low rank ----------------------------------------------------------------------------------

@pytest.mark.parametrize("c_in, c_out, k, stride", [(4, 8, 3, 1), (16, 6, 3, 2), (8, 12, 1, 1), (3, 40, 3, 2)])
def test_full_rank_factorization_reproduces_the_conv(c_in, c_out, k, stride):
    conv = _conv(c_in, c_out, k, stride=stride)
    pair = low_rank.factorize(conv, 1.0)
    reduce, expand = pair
    assert reduce.out_channels == low_rank.full_rank(conv) == min(c_out, c_in * k * k)
    assert (reduce.stride, reduce.padding, reduce.kernel_size) == (conv.stride, conv.padding, conv.kernel_size)
    assert reduce.bias is None and expand.kernel_size == (1, 1) and torch.equal(expand.bias, conv.bias)
    x = torch.rand(2, c_in, 13, 12)
    expected = conv(x)
    error = (pair(x) - expected).abs().max() / expected.abs().max()
    assert error < 1e-4


def test_error_never_grows_as_the_rank_grows():
    conv = _conv(6, 10, 3, stride=2)
    x = torch.rand(2, 6, 11, 11)
    expected = conv(x)
    output_errors, weight_errors = [], []
    for rank in range(1, low_rank.full_rank(conv) + 1):
        ratio = rank / low_rank.full_rank(conv)
        assert low_rank.rank_for(conv, ratio) == rank
        output_errors.append((low_rank.factorize(conv, ratio)(x) - expected).norm().item())
        weight_errors.append(low_rank.relative_weight_error(conv, ratio))
    # Eckart-Young: every patch's error is a sum over the dropped singular directions
    for smaller, larger in itertools.pairwise(output_errors):
        assert larger <= smaller + 1e-5
    assert weight_errors == sorted(weight_errors, reverse=True) and weight_errors[-1] < 1e-6
    assert output_errors[0] > 10 * output_errors[-1]  # the loop measured something


def test_relative_weight_error_matches_the_built_factors():
    conv = _conv(5, 7, 3)
    reduce, expand = low_rank.factorize(conv, 0.5)
    rebuilt = expand.weight.flatten(1) @ reduce.weight.flatten(1)
    measured = (rebuilt - conv.weight.flatten(1)).norm() / conv.weight.norm()
    assert measured.item() == pytest.approx(low_rank.relative_weight_error(conv, 0.5), rel=1e-4)


def test_singular_values_are_split_evenly_between_the_factors():
    conv = _conv(16, 16, 3)
    reduce, expand = low_rank.factorize(conv, 0.25)
    # each factor's row/column r has norm sqrt(s_r): the two factors have matching scales
    torch.testing.assert_close(reduce.weight.flatten(1).norm(dim=1), expand.weight.flatten(1).norm(dim=0))


def test_rank_and_parameter_counts():
    conv = _conv(16, 32, 3)  # full rank min(32, 16*9) = 32
    assert low_rank.rank_for(conv, 0.25) == 8
    assert low_rank.rank_for(conv, 0.001) == 1
    reduce, expand = low_rank.factorize(conv, 0.25)
    assert reduce.weight.numel() + expand.weight.numel() == 8 * (16 * 9 + 32)
    assert low_rank.factorized_weight_count(conv, 0.25) == 8 * (16 * 9 + 32)
    assert low_rank.is_worth_it(conv, 0.25)  # 1408 < 4608
    assert not low_rank.is_worth_it(conv, 1.0)  # 32 * 176 = 5632 > 4608: the layer would grow
    assert not low_rank.is_worth_it(_conv(16, 1, 1), 0.5)  # one output channel: never smaller


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5])
def test_bad_ratio_is_refused(ratio):
    with pytest.raises(InputError, match="ratio"):
        low_rank.factorize(_conv(4, 4, 3), ratio)


def test_grouped_convs_are_not_factorizable():
    depthwise = _conv(8, 8, 3, groups=8)
    assert not low_rank.can_factorize(depthwise) and not low_rank.is_worth_it(depthwise, 0.1)
    with pytest.raises(InputError, match="groups=8"):
        low_rank.factorize(depthwise, 0.5)


# --- on a fused tiny YOLO ----------------------------------------------------------------------

@pytest.fixture
def fused_model(tiny_model):
    return copy.deepcopy(tiny_model).fuse(verbose=False).eval()


def _convs(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_shrinking_every_eligible_conv_of_a_tiny_yolo_keeps_its_output_shape(fused_model):
    x = torch.rand(1, 3, 64, 64)
    base = fused_model(x)[0]
    eligible = [n for n, conv in _convs(fused_model).items() if kernel_size.can_shrink(conv, 1)]
    assert len(eligible) >= 10  # YOLOv8's 3×3 convs: stem, downsamplers, bottlenecks, head
    for name in eligible:
        _replace(fused_model, name, kernel_size.shrink_kernel(fused_model.get_submodule(name), 1))
    assert all(c.kernel_size == (1, 1) for c in _convs(fused_model).values())
    assert fused_model(x)[0].shape == base.shape


def test_factorizing_every_worthwhile_conv_of_a_tiny_yolo_keeps_its_output_shape(fused_model):
    x = torch.rand(1, 3, 64, 64)
    base = fused_model(x)[0]
    before = sum(p.numel() for p in fused_model.parameters())
    eligible = [n for n, conv in _convs(fused_model).items() if low_rank.is_worth_it(conv, 0.25)]
    assert len(eligible) >= 10
    for name in eligible:
        _replace(fused_model, name, low_rank.factorize(fused_model.get_submodule(name), 0.25))
    assert fused_model(x)[0].shape == base.shape
    assert sum(p.numel() for p in fused_model.parameters()) < before


def _block_outputs(model, x):
    """Each top-level block's output. The untrained tiny YOLO's detections barely depend on its
    features (its head is saturated), so equality is checked block by block, not on detections."""
    outputs = []
    hooks = [block.register_forward_hook(lambda _, __, out: outputs.append(out if torch.is_tensor(out) else out[0]))
             for block in model.model]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return outputs


@pytest.mark.parametrize("ratio, close", [(1.0, True), (0.9, False)])
def test_full_rank_factorization_of_a_tiny_yolo_keeps_every_block_output(fused_model, ratio, close):
    x = torch.rand(1, 3, 64, 64)
    base = _block_outputs(fused_model, x)
    factorized = [n for n, conv in _convs(fused_model).items() if low_rank.can_factorize(conv)]
    assert len(factorized) == len(_convs(fused_model))  # YOLOv8 has no grouped convs
    for name in factorized:
        _replace(fused_model, name, low_rank.factorize(fused_model.get_submodule(name), ratio))
    errors = [((new - old).abs().max() / old.abs().max()).item()
              for new, old in zip(_block_outputs(fused_model, x), base, strict=True)]
    # full rank: float rounding only; 90 % of the rank: the check sees the dropped directions
    assert (max(errors) < 1e-4) == close, errors
