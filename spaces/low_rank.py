"""Low-rank knob: factorize a conv by truncated SVD into two smaller convs (seed 002).

Seed 002 ("efficient model compression for edge AI", item 3 of /work/shared/SEEDS.md) lists
low-rank factorization next to pruning and quantization. A conv with weight W of shape
(c_out, c_in, kh, kw) is a matrix product on image patches: W reshaped to (c_out, c_in·kh·kw)
times the patch vector. Its truncated SVD W ≈ U_r S_r V_r^T splits the conv into
    Conv2d(c_in, r, (kh, kw), stride, padding, dilation, bias=False)   # weight √S_r V_r^T
    Conv2d(r, c_out, 1, bias=True)                                      # weight U_r √S_r, the bias
The square root of the singular values goes into both factors so their weights have similar
scales (one quantization grid fits both better than if one factor held all of S).
By Eckart-Young this is the best rank-r approximation of W, and the error on every patch can only
fall as r grows; at full rank the factorized conv reproduces the original.

Grouped and depthwise convs are not eligible: each group is its own small matrix, so the factor
would have to be per group, and a depthwise conv's per-channel matrix (1 × k·k) has rank 1 already.

Operates on a plain nn.Conv2d (the model's convs after Conv+BN folding, so usually with a bias).
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

import torch
from torch import nn

from edgesearch.common.errors import InputError


def why_not_factorizable(conv: nn.Module) -> str | None:
    """The reason `conv` cannot be factorized, or None if it can."""
    if not isinstance(conv, nn.Conv2d):
        return f"only nn.Conv2d layers can be factorized, not {type(conv).__name__}"
    if conv.groups != 1:
        return f"grouped/depthwise convs (groups={conv.groups}) are not eligible"
    return None


def can_factorize(conv: nn.Module) -> TypeGuard[nn.Conv2d]:
    return why_not_factorizable(conv) is None


def full_rank(conv: nn.Conv2d) -> int:
    """The largest rank the weight matrix (c_out, c_in/groups·kh·kw) can have."""
    kh, kw = conv.kernel_size
    return min(conv.out_channels, conv.in_channels // conv.groups * kh * kw)


def rank_for(conv: nn.Conv2d, ratio: float) -> int:
    """Rank kept at `ratio` in (0, 1]: max(1, round(ratio × full rank))."""
    return rank_for_shape(tuple(conv.weight.shape), ratio)


def rank_for_shape(shape: tuple[int, ...], ratio: float) -> int:
    """rank_for of a conv whose weight has `shape` (c_out, c_in/groups, kh, kw)."""
    if not 0.0 < float(ratio) <= 1.0:
        raise InputError(f"low-rank ratio must be in (0, 1], not {ratio!r}")
    return max(1, round(ratio * min(shape[0], math.prod(shape[1:]))))


def factorized_shapes(shape: tuple[int, ...], ratio: float) -> list[tuple[int, ...]]:
    """Weight shapes of the factorized pair of a conv with weight `shape`: (r, c_in, kh, kw), (c_out, r, 1, 1)."""
    rank = rank_for_shape(shape, ratio)
    return [(rank, *shape[1:]), (shape[0], rank, 1, 1)]


def weight_count(conv: nn.Conv2d) -> int:
    """Weights of the original conv (bias excluded: the factorized pair keeps the same bias)."""
    return conv.weight.numel()


def factorized_weight_count(conv: nn.Conv2d, ratio: float) -> int:
    """Weights of the factorized pair: r·(c_in·kh·kw) in the first conv + c_out·r in the second."""
    kh, kw = conv.kernel_size
    rank = rank_for(conv, ratio)
    return rank * (conv.in_channels * kh * kw + conv.out_channels)


def is_worth_it(conv: nn.Module, ratio: float) -> bool:
    """Whether factorizing at `ratio` is allowed and leaves fewer weights than the original.

    The search should not offer factorizations that grow the layer (e.g. any ratio of a conv with
    few output channels, or ratios near 1)."""
    return can_factorize(conv) and factorized_weight_count(conv, ratio) < weight_count(conv)


def factorize(conv: nn.Conv2d, ratio: float) -> nn.Sequential:
    """Two convs whose composition is the rank-r truncated-SVD approximation of `conv`.

    The input conv is left untouched. Raises InputError (a ValueError) for ineligible convs or a
    ratio outside (0, 1]. It does not check `is_worth_it`: callers decide whether to offer it.
    """
    reason = why_not_factorizable(conv)
    if reason is not None:
        raise InputError(f"cannot factorize: {reason}")
    rank = rank_for(conv, ratio)
    reduce_weight, expand_weight = _svd_factors(conv.weight.detach(), rank)
    common: dict[str, Any] = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    # torch types a Conv2d's kernel_size, stride, padding and dilation tuple[int, ...]; they are pairs
    reduce = nn.Conv2d(conv.in_channels, rank, conv.kernel_size, stride=conv.stride,  # type: ignore[arg-type]
                       padding=conv.padding, dilation=conv.dilation,  # type: ignore[arg-type]
                       bias=False, padding_mode=conv.padding_mode, **common)
    expand = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None, **common)
    reduce.weight.data.copy_(reduce_weight)
    expand.weight.data.copy_(expand_weight)
    if conv.bias is not None and expand.bias is not None:  # expand has a bias exactly when conv has
        expand.bias.data.copy_(conv.bias.detach())
    return nn.Sequential(reduce, expand)


def _svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first conv weight (r, c_in, kh, kw), second conv weight (c_out, r, 1, 1)) from the SVD.

    Computed in float64 so that a full-rank factorization reproduces the conv to float32 rounding."""
    c_out, c_in, kh, kw = weight.shape
    u, s, vh = torch.linalg.svd(weight.reshape(c_out, c_in * kh * kw).double(), full_matrices=False)
    root_s = s[:rank].sqrt()
    reduce = (root_s[:, None] * vh[:rank]).reshape(rank, c_in, kh, kw)
    expand = (u[:, :rank] * root_s[None, :]).reshape(c_out, rank, 1, 1)
    return reduce.to(weight.dtype), expand.to(weight.dtype)


def relative_weight_error(conv: nn.Conv2d, ratio: float) -> float:
    """‖W - W_r‖_F / ‖W‖_F from the singular values (no factorization built): cheap to report."""
    weight = conv.weight.detach().reshape(conv.out_channels, -1).double()
    s = torch.linalg.svdvals(weight)
    dropped = s[rank_for(conv, ratio):]
    total = s.square().sum().sqrt().item()
    return math.sqrt(dropped.square().sum().item()) / total if total > 0 else 0.0
