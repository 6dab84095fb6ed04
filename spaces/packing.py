"""The packed format of one layer: what a device stores, and so what weight bytes and SRAM count.

Layout (little-endian), in this order:
  header     12 bytes + 4 per dim: magic "ESQ1", scheme, granularity, bits, sparse mode, has-bias,
             number of dims, group size (uint16), then each dim (uint32)
  sparsity   only when some weights are pruned: a bitmask (1 bit per weight) or a list of the kept
             weights' indices (uint32 count, then uint16 or uint32 each), whichever is shorter
  params     per parameter set, in SCHEME_PARAMS order, as fp16 (kmeans: its codebook of
             min(2^b, set size) entries)
  values     the kept weights in weight order: b-bit codes packed densely (LSB first) when
             quantized, or raw fp16 / fp32 values when the layer stays in float
  bias       fp32 (it becomes the int32 accumulator's offset on integer hardware)

`unpack_layer(pack_layer(w, b, knobs))` gives back exactly the weights that fake-quant produced
(tests check this bit for bit), and `bake_fake_quant` loads them into the model that way.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from edgesearch.spaces.candidate import FLOAT_BITS, SCHEMES, LayerKnobs
from edgesearch.spaces.granularity import GRANULARITIES, SetLayout, set_counts
from edgesearch.spaces.quantize import (
    SCHEME_PARAMS,
    QuantizedWeight,
    dequantize,
    kmeans_clusters,
    layer_quantizer,
    quantize_weight,
    weight_parametrizations,
)

MAGIC = b"ESQ1"
HEADER = struct.Struct("<4sBBBBBBH")
DENSE, BITMASK, INDEX_LIST = 0, 1, 2


def _pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers < 2^bits, `bits` each, least significant bit first."""
    bit_planes = (values.astype(np.uint64)[:, None] >> np.arange(bits, dtype=np.uint64)) & 1
    return np.packbits(bit_planes.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def _unpack_bits(buffer: bytes, count: int, bits: int) -> np.ndarray:
    bit_planes = np.unpackbits(np.frombuffer(buffer, np.uint8), count=count * bits, bitorder="little")
    return (bit_planes.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)


def _index_dtype(numel: int):
    return np.uint16 if numel <= 2**16 else np.uint32


def _sparsity_section(mask: torch.Tensor | None) -> tuple[int, bytes]:
    if mask is None or bool(mask.all()):
        return DENSE, b""
    flat = mask.reshape(-1).numpy()
    bitmask = np.packbits(flat.astype(np.uint8), bitorder="little").tobytes()
    kept = np.flatnonzero(flat).astype(_index_dtype(flat.size))
    index_list = struct.pack("<I", kept.size) + kept.tobytes()
    return (BITMASK, bitmask) if len(bitmask) <= len(index_list) else (INDEX_LIST, index_list)


def pack_layer(weight: torch.Tensor, bias: torch.Tensor | None, knobs: LayerKnobs,
               mask: torch.Tensor | None = None, fit: torch.Tensor | None = None) -> bytes:
    """The packed bytes of one layer (weights quantized per `knobs`, pruned where mask is False;
    `fit`: where PWLQ / k-means start from, see quantize.FakeQuantWeight)."""
    weight = weight.detach().float()
    if mask is not None:
        mask = mask.bool()
    sparse_mode, sparse_bytes = _sparsity_section(mask)
    kept = slice(None) if sparse_mode == DENSE or mask is None else mask.reshape(-1)
    scheme = knobs.scheme if knobs.quantized else "affine"  # scheme is meaningless for float layers
    header = HEADER.pack(MAGIC, SCHEMES.index(scheme), GRANULARITIES.index(knobs.granularity), knobs.weight_bits,
                         sparse_mode, bias is not None, weight.ndim, knobs.group_size)
    parts = [header, struct.pack(f"<{weight.ndim}I", *weight.shape), sparse_bytes]
    if knobs.quantized:
        quantized = quantize_weight(weight, knobs, mask, fit)
        parts += [quantized.params[name].numpy().astype(np.float16).tobytes() for name in SCHEME_PARAMS[scheme]]
        codes = quantized.layout.merge(quantized.codes).reshape(-1)[kept]
        parts.append(_pack_bits(codes.numpy(), knobs.weight_bits))
    else:
        dtype = np.float16 if knobs.weight_bits == 16 else np.float32
        parts.append(weight.reshape(-1)[kept].numpy().astype(dtype).tobytes())
    if bias is not None:
        parts.append(bias.detach().float().numpy().astype(np.float32).tobytes())
    return b"".join(parts)


class _Reader:
    def __init__(self, blob: bytes):
        self.blob, self.at = blob, 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.blob):
            raise ValueError("packed layer is truncated")
        chunk = self.blob[self.at:self.at + size]
        self.at += size
        return chunk

    def array(self, dtype, count: int) -> np.ndarray:
        return np.frombuffer(self.take(count * np.dtype(dtype).itemsize), dtype).copy()


def packed_size(shape: tuple[int, ...], knobs: LayerKnobs, *, kept: int | None = None, has_bias: bool = True) -> int:
    """len(pack_layer(...)) of a weight of `shape` at `knobs` with `kept` unpruned weights (default:
    all), computed from the layout alone: the cost tables price thousands of options this way."""
    numel = math.prod(shape)
    kept = numel if kept is None else kept
    size = HEADER.size + 4 * len(shape)
    if kept < numel:  # the shorter of the two sparse encodings, as _sparsity_section picks
        size += min(math.ceil(numel / 8), 4 + kept * np.dtype(_index_dtype(numel)).itemsize)
    if knobs.quantized:
        sets, row_length = set_counts(tuple(shape), knobs.granularity, knobs.group_size)
        per_set = kmeans_clusters(knobs.weight_bits, row_length) if knobs.scheme == "kmeans" else 1
        size += sets * per_set * 2 * len(SCHEME_PARAMS[knobs.scheme])
        size += math.ceil(kept * knobs.weight_bits / 8)
    else:
        size += kept * (2 if knobs.weight_bits == 16 else 4)
    return size + (4 * shape[0] if has_bias else 0)


@dataclasses.dataclass
class PackedLayer:
    """What one packing holds, decoded: the quantized grid (codes and per-set parameters) for
    quantized layers, raw float values otherwise."""

    shape: tuple[int, ...]
    bits: int
    scheme: str  # "affine" for float layers (meaningless there)
    granularity: str
    group_size: int
    mask: torch.Tensor | None
    quantized: QuantizedWeight | None  # None for float (16/32-bit) layers
    float_weight: torch.Tensor | None  # the weight of a float layer
    bias: torch.Tensor | None

    @property
    def weight(self) -> torch.Tensor:
        if self.quantized is not None:
            return dequantize(self.quantized)
        assert self.float_weight is not None  # a float layer keeps its weight
        return self.float_weight


def read_layer(blob: bytes) -> PackedLayer:
    """Decode `pack_layer`'s bytes (integer kernels read the grid; unpack_layer the weights)."""
    reader = _Reader(blob)
    magic, scheme_id, granularity_id, bits, sparse_mode, has_bias, ndim, group_size = HEADER.unpack(
        reader.take(HEADER.size))
    if magic != MAGIC:
        raise ValueError("not a packed edgesearch layer")
    shape = struct.unpack(f"<{ndim}I", reader.take(4 * ndim))
    numel = math.prod(shape)
    mask = None
    if sparse_mode == BITMASK:
        bitmask = np.unpackbits(np.frombuffer(reader.take(math.ceil(numel / 8)), np.uint8), count=numel,
                                bitorder="little")
        mask = torch.from_numpy(bitmask.astype(bool)).reshape(shape)
    elif sparse_mode == INDEX_LIST:
        (count,) = struct.unpack("<I", reader.take(4))
        flat = np.zeros(numel, dtype=bool)
        flat[reader.array(_index_dtype(numel), count)] = True
        mask = torch.from_numpy(flat).reshape(shape)
    kept = slice(None) if mask is None else mask.reshape(-1)
    stored = numel if mask is None else int(mask.sum())
    quantized = weight = None
    if bits < 16:
        scheme = SCHEMES[scheme_id]
        layout = SetLayout(shape, GRANULARITIES[granularity_id], group_size)
        per_set = kmeans_clusters(bits, layout.row_length) if scheme == "kmeans" else 1
        params = {name: torch.from_numpy(reader.array(np.float16, layout.sets * per_set).astype(np.float32))
                  .reshape(layout.sets, per_set) for name in SCHEME_PARAMS[scheme]}
        codes = torch.zeros(numel, dtype=torch.int64)
        codes[kept] = torch.from_numpy(_unpack_bits(reader.take(math.ceil(stored * bits / 8)), stored, bits))
        quantized = QuantizedWeight(layout, bits, scheme, layout.split(codes.reshape(shape)), params, mask)
    else:
        dtype = np.float16 if bits == 16 else np.float32
        weight = torch.zeros(numel)
        weight[kept] = torch.from_numpy(reader.array(dtype, stored).astype(np.float32))
        weight = weight.reshape(shape)
    bias = torch.from_numpy(reader.array(np.float32, shape[0])) if has_bias else None
    if reader.at != len(blob):
        raise ValueError("packed layer has trailing bytes")
    return PackedLayer(tuple(shape), bits, SCHEMES[scheme_id], GRANULARITIES[granularity_id], group_size, mask,
                       quantized, weight, bias)


def unpack_layer(blob: bytes) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) decoded from `pack_layer`'s bytes."""
    layer = read_layer(blob)
    return layer.weight, layer.bias


def module_packing(module: nn.Module, knobs: LayerKnobs | None = None) -> bytes:
    """The packed bytes of a conv: the bytes baked into it, else packed from its fake-quant
    parametrization, else its float weights at `knobs` (default fp32)."""
    packed = getattr(module, "packed_layer", None)
    if packed is not None:
        return packed
    conv = cast(nn.Conv2d, module)  # packed layers are convs
    quantizer = layer_quantizer(conv)
    if quantizer is not None:
        return pack_layer(weight_parametrizations(conv).original, conv.bias, quantizer.knobs, quantizer.mask,
                          quantizer.fit)
    return pack_layer(conv.weight, conv.bias, knobs or LayerKnobs(weight_bits=FLOAT_BITS))


def bake_fake_quant(model: nn.Module) -> None:
    """Pack every fake-quantized layer and load the weights decoded from its packing, so the
    model holds exactly what a device would decode; the packing is kept as `module.packed_layer`."""
    for module in model.modules():
        if layer_quantizer(module) is None:
            continue
        packed = module_packing(module)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        with torch.no_grad():
            cast(nn.Conv2d, module).weight.copy_(unpack_layer(packed)[0])
        setattr(module, "packed_layer", packed)
