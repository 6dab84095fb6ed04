"""Kernel-size knob: shrink a conv's k×k kernel to its centre new_k×new_k crop (seed 004).

Seed 004 ("model complexity vs accuracy", item 5 of /work/shared/SEEDS.md) shrinks kernels
5×5 → 3×3 → 1×1 and retrains. Here the smaller kernel starts from the centre crop of the trained
one (the taps that usually carry most of the weight) and is then fine-tuned like any candidate.

The shrunk conv reads exactly the same input pixels with its remaining taps: output pixel o of a
conv with kernel k and padding p reads inputs o·stride - p + i for taps i = 0..k-1. Keeping only
the centre taps i = c..c+new_k-1, with c = (k - new_k) / 2, and lowering the padding to
p' = p - c reads the same pixels for those taps, so the output shape is unchanged and a kernel
whose outer ring is zero gives the identical output. That works for any padding (not only
"same" padding), as long as p' stays ≥ 0: a 5×5 conv with padding 1 can go to 3×3 (padding 0)
but not to 1×1 (it would need padding -1, i.e. cropping the input, which a conv cannot do).

Operates on a plain nn.Conv2d (the model's convs after Conv+BN folding, so usually with a bias).
"""

from __future__ import annotations

from torch import nn

from edgesearch.common.errors import InputError


def why_not_shrinkable(conv: nn.Module, new_k: int) -> str | None:
    """The reason `conv` cannot be shrunk to new_k×new_k, or None if it can.

    Not eligible: anything but an nn.Conv2d; non-square or even kernels (no single centre tap);
    new_k that is even or not smaller than the current size; dilated convs (their taps are
    spread out, the centre-crop argument above would need dilation-scaled padding - not needed
    for YOLO); and convs whose padding is too small for the reduced padding to stay ≥ 0.
    """
    if not isinstance(conv, nn.Conv2d):
        return f"only nn.Conv2d kernels can be shrunk, not {type(conv).__name__}"
    kh, kw = conv.kernel_size
    if kh != kw:
        return f"kernel {kh}×{kw} is not square"
    if kh % 2 == 0:
        return f"kernel {kh}×{kw} has even size (no centre tap)"
    if not isinstance(new_k, int) or isinstance(new_k, bool) or new_k < 1 or new_k % 2 == 0:
        return f"new kernel size must be a positive odd integer, not {new_k!r}"
    if new_k >= kh:
        return f"new kernel size {new_k} is not smaller than the current {kh}×{kw}"
    if conv.dilation != (1, 1):
        return f"dilated convs (dilation {conv.dilation}) are not eligible"
    if min(_numeric_padding(conv)) - (kh - new_k) // 2 < 0:
        return f"padding {conv.padding} is too small to keep the output shape with a {new_k}×{new_k} kernel"
    return None


def can_shrink(conv: nn.Module, new_k: int) -> bool:
    """Whether `conv` can be shrunk to a centre new_k×new_k kernel with the same output shape."""
    return why_not_shrinkable(conv, new_k) is None


def shrink_kernel(conv: nn.Conv2d, new_k: int) -> nn.Conv2d:
    """A new conv with the centre new_k×new_k crop of `conv`'s weights and the same output shape.

    Same in/out channels, groups, stride, padding mode and bias; padding reduced by
    (k - new_k) / 2 on each side. The input conv is left untouched.
    Raises InputError (a ValueError) naming the reason when the conv is not eligible.
    """
    reason = why_not_shrinkable(conv, new_k)
    if reason is not None:
        raise InputError(f"cannot shrink kernel to {new_k}×{new_k}: {reason}")
    crop_start = (conv.kernel_size[0] - new_k) // 2
    pad_h, pad_w = _numeric_padding(conv)
    shrunk = nn.Conv2d(
        conv.in_channels, conv.out_channels, new_k,
        stride=conv.stride,  # type: ignore[arg-type]  # torch types a Conv2d's stride tuple[int, ...]; it is a pair
        padding=(pad_h - crop_start, pad_w - crop_start),
        groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    crop = slice(crop_start, crop_start + new_k)
    shrunk.weight.data.copy_(conv.weight.detach()[:, :, crop, crop])
    if conv.bias is not None and shrunk.bias is not None:  # shrunk has a bias exactly when conv has
        shrunk.bias.data.copy_(conv.bias.detach())
    return shrunk


def _numeric_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Padding as (rows, cols); torch also accepts the strings "valid" and "same" (stride 1 only)."""
    padding = conv.padding
    if padding == "valid":
        return (0, 0)
    if padding == "same":  # for odd kernels and dilation 1 (checked by the caller) this is k // 2
        return (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
    assert not isinstance(padding, str)  # torch allows no other string
    return (padding[0], padding[1])
