"""Granularity: which weights of a conv share one set of quantization parameters.

For a conv weight of shape [out, in, kh, kw] (`in` = input channels per group), following the
YOLOv7 quantization study's layer / filter / channel comparison, plus kernel- and group-wise:

  tensor  - one set for the whole layer ("layer-wise" in the study)            1 set
  filter  - one set per output channel: all in*kh*kw weights of a filter      out sets
  channel - one set per input channel, shared across all filters              in sets
  kernel  - one set per k x k kernel, i.e. per (filter, input channel) pair   out*in sets
  group   - consecutive blocks of G input channels at one (filter, kh, kw)    out*kh*kw*ceil(in/G) sets
            position, as int8 GEMM kernels lay weights out along their
            reduction (input-channel) axis; the last block is short when G does not divide `in`

A layout turns a weight into a [sets, elements] matrix of rows (one row per parameter set) and
back. Rows are padded to equal length where sets differ in size (only `group` does); `valid`
marks the real entries, and padding never takes part in a parameter's computation.
"""

from __future__ import annotations

import math

import torch

GRANULARITIES = ("tensor", "filter", "channel", "kernel", "group")  # the packed header stores positions in this tuple


def set_counts(shape: tuple[int, ...], granularity: str, group_size: int = 16) -> tuple[int, int]:
    """(parameter sets, row length) of a weight of `shape` at `granularity`, without building rows."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
    out_channels, in_channels = shape[0], shape[1] if len(shape) > 1 else 1
    spatial = math.prod(shape[2:])
    in_blocks = math.ceil(in_channels / group_size)
    sets = {
        "tensor": 1,
        "filter": out_channels,
        "channel": in_channels,
        "kernel": out_channels * in_channels,
        "group": out_channels * spatial * in_blocks,
    }[granularity]
    padded = in_blocks * group_size if granularity == "group" else in_channels
    return sets, out_channels * padded * spatial // sets


class SetLayout:
    """Maps a 4-d conv weight (or any >= 2-d weight, trailing dims as the kernel) to rows."""

    def __init__(self, shape: tuple[int, ...], granularity: str, group_size: int = 16):
        self.shape = tuple(int(s) for s in shape)
        self.granularity, self.group_size = granularity, int(group_size)
        self.sets, self.row_length = set_counts(self.shape, granularity, self.group_size)
        self._in_blocks = math.ceil((self.shape[1] if len(self.shape) > 1 else 1) / self.group_size)
        ones = torch.ones(self.shape, dtype=torch.bool)
        self.valid = self._split(ones, pad_value=False)

    def _as_4d(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(self.shape[0], self.shape[1] if weight.ndim > 1 else 1, -1)

    def _split(self, weight: torch.Tensor, pad_value) -> torch.Tensor:
        w = self._as_4d(weight)  # [out, in, spatial]
        if self.granularity == "tensor":
            return w.reshape(1, -1)
        if self.granularity == "filter":
            return w.reshape(w.shape[0], -1)
        if self.granularity == "channel":
            return w.transpose(0, 1).reshape(w.shape[1], -1)
        if self.granularity == "kernel":
            return w.reshape(w.shape[0] * w.shape[1], -1)
        # group: [out, spatial, in] padded along `in` to whole blocks of G
        w = w.permute(0, 2, 1)
        missing = self._in_blocks * self.group_size - w.shape[2]
        if missing:
            pad = torch.full((*w.shape[:2], missing), pad_value, dtype=w.dtype)
            w = torch.cat([w, pad], dim=2)
        return w.reshape(-1, self.group_size)

    def split(self, weight: torch.Tensor) -> torch.Tensor:
        """[sets, row_length] rows of `weight` (padding entries are 0)."""
        return self._split(weight, pad_value=0)

    def merge(self, rows: torch.Tensor) -> torch.Tensor:
        """The weight whose rows are `rows` (inverse of split; padding dropped)."""
        out_channels, in_channels = self.shape[0], self.shape[1] if len(self.shape) > 1 else 1
        spatial = math.prod(self.shape[2:])
        if self.granularity in ("tensor", "filter", "kernel"):
            return rows.reshape(self.shape)
        if self.granularity == "channel":
            return rows.reshape(in_channels, out_channels, spatial).transpose(0, 1).reshape(self.shape)
        w = rows.reshape(out_channels, spatial, self._in_blocks * self.group_size)[:, :, :in_channels]
        return w.permute(0, 2, 1).reshape(self.shape)
