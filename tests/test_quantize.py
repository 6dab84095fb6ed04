import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesearch.spaces.candidate import LayerKnobs
from edgesearch.spaces.quantize import (
    FakeQuantWeight,
    _reduce_dims,
    fake_quantize,
    packed_weight_bytes,
    parameter_sets,
)

shapes = st.tuples(st.integers(1, 8), st.integers(1, 8), st.sampled_from([1, 3]), st.sampled_from([1, 3]))


def _weights(shape, seed, scale):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


@settings(max_examples=60, deadline=None)
@given(shape=shapes, bits=st.integers(2, 8), scheme=st.sampled_from(["affine", "symmetric"]),
       granularity=st.sampled_from(["tensor", "filter", "channel"]), seed=st.integers(0, 10_000),
       scale=st.floats(1e-3, 10.0))
def test_uniform_error_is_at_most_half_a_step(shape, bits, scheme, granularity, seed, scale):
    w = _weights(shape, seed, scale)
    q = fake_quantize(w, bits, scheme, granularity)
    dims = _reduce_dims(granularity, w.ndim)
    if scheme == "affine":
        step = (w.amax(dims, keepdim=True).clamp(min=0) - w.amin(dims, keepdim=True).clamp(max=0)) / (2**bits - 1)
    else:
        step = w.abs().amax(dims, keepdim=True) / (2 ** (bits - 1) - 1)
    # half a step, plus fp16 rounding of the stored scale (relative 2^-11 over at most 2^b steps)
    bound = step / 2 * (1 + 2**-10 * 2**bits) + 1e-7
    assert torch.all((q - w).abs() <= bound)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, bits=st.integers(2, 6), granularity=st.sampled_from(["tensor", "filter", "channel"]),
       seed=st.integers(0, 10_000))
def test_at_most_2_to_the_b_levels_per_parameter_set(shape, bits, granularity, seed):
    q = fake_quantize(_weights(shape, seed, 1.0), bits, "affine", granularity)
    keep = [d for d in range(q.ndim) if d not in _reduce_dims(granularity, q.ndim)]
    groups = q.permute(*keep, *[d for d in range(q.ndim) if d not in keep]).reshape(
        math.prod(q.shape[d] for d in keep), -1)
    assert all(len(torch.unique(g)) <= 2**bits for g in groups)


def test_fake_quant_passes_gradients_straight_through():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    FakeQuantWeight(LayerKnobs(weight_bits=3))(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_float_and_fp16_layers():
    w = torch.randn(4, 3, 3, 3)
    assert torch.equal(fake_quantize(w, 32, "affine", "filter"), w)
    assert torch.equal(fake_quantize(w, 16, "affine", "filter"), w.half().float())


def test_packed_bytes_count_indices_scales_zero_points_and_bias():
    shape = (16, 8, 3, 3)  # 1152 weights
    assert parameter_sets(shape, "filter") == 16 and parameter_sets(shape, "channel") == 8
    assert parameter_sets(shape, "tensor") == 1
    assert packed_weight_bytes(shape, LayerKnobs(4, "affine", "filter"), has_bias=True) == 576 + 16 * 4 + 16 * 4
    assert packed_weight_bytes(shape, LayerKnobs(3, "symmetric", "tensor"), has_bias=False) == 432 + 2
    assert packed_weight_bytes(shape, LayerKnobs(32), has_bias=True) == 1152 * 4 + 64
