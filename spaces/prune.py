"""Structured pruning: physically remove a conv's output channels (and its consumer's inputs).

A conv's output channels can be removed on their own only when exactly one conv reads them and
nothing else does (no residual add, concat, split or head output). In ultralytics YOLOs that holds
for two patterns, found here by module type, not by layer index:
  - Bottleneck (in C2f, C3, C3k2, ...): cv1 feeds only cv2; cv2's output is added to the shortcut.
  - the Detect head's per-scale Sequential chains: Conv -> Conv -> Conv2d (the last one's output
    is the head's output, so only the first two are prunable).
Every other conv keeps its channels (the space reports it as "coupled"). Channels are ranked by
the L1 norm of their filter weights and the weakest are removed.
"""

from __future__ import annotations

import torch
from torch import nn

try:  # ultralytics is a required dependency; kept optional here so plain nn models still work
    from ultralytics.nn.modules.block import Bottleneck
    from ultralytics.nn.modules.conv import Conv
    from ultralytics.nn.modules.head import Detect
except ImportError:  # pragma: no cover
    Bottleneck = Conv = Detect = ()


def _plain_conv(module: nn.Module) -> nn.Conv2d | None:
    """The Conv2d of an ultralytics Conv (conv+bn+act) or a bare Conv2d; None if grouped."""
    conv = module.conv if isinstance(module, Conv) else module
    if isinstance(conv, nn.Conv2d) and conv.groups == 1:
        return conv
    return None


def prunable_pairs(model: nn.Module) -> dict[str, str]:
    """{producer Conv2d name: consumer Conv2d name} for every conv whose outputs can be removed."""
    pairs: dict[str, str] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, Bottleneck):
            if _plain_conv(module.cv1) is not None and _plain_conv(module.cv2) is not None:
                pairs[f"{prefix}cv1.conv"] = f"{prefix}cv2.conv"
        elif isinstance(module, nn.Sequential) and _inside_detect(model, name):
            children = list(module.named_children())
            for (p_name, producer), (c_name, consumer) in zip(children, children[1:]):
                if isinstance(producer, Conv) and _plain_conv(producer) and _plain_conv(consumer) is not None:
                    consumer_conv = f"{prefix}{c_name}.conv" if isinstance(consumer, Conv) else f"{prefix}{c_name}"
                    pairs[f"{prefix}{p_name}.conv"] = consumer_conv
    return pairs


def _inside_detect(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), Detect) for i in range(1, len(parts)))


def _parent_block(model: nn.Module, conv_name: str) -> nn.Module:
    """The ultralytics Conv wrapping `conv_name` (it holds the BatchNorm to prune alongside)."""
    return model.get_submodule(conv_name.rsplit(".", 1)[0])


def channels_to_keep(conv: nn.Conv2d, ratio: float) -> torch.Tensor:
    out_channels = conv.out_channels
    keep = max(1, out_channels - int(out_channels * ratio))
    importance = conv.weight.detach().abs().sum(dim=(1, 2, 3))
    return torch.sort(torch.topk(importance, keep).indices).values


def _slice_conv(conv: nn.Conv2d, out_idx: torch.Tensor | None = None, in_idx: torch.Tensor | None = None) -> None:
    weight = conv.weight.data
    if out_idx is not None:
        weight = weight[out_idx]
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.data[out_idx].clone())
        conv.out_channels = len(out_idx)
    if in_idx is not None:
        weight = weight[:, in_idx]
        conv.in_channels = len(in_idx)
    conv.weight = nn.Parameter(weight.clone())


def _slice_batchnorm(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    bn.weight = nn.Parameter(bn.weight.data[idx].clone())
    bn.bias = nn.Parameter(bn.bias.data[idx].clone())
    bn.running_mean = bn.running_mean[idx].clone()
    bn.running_var = bn.running_var[idx].clone()
    bn.num_features = len(idx)


def prune_output_channels(model: nn.Module, ratios: dict[str, float]) -> None:
    """Remove the weakest `ratio` of output channels of each named conv, in place."""
    pairs = prunable_pairs(model)
    # rank every layer on the original weights first, so pruning one does not bias another's ranking
    keep = {
        name: channels_to_keep(model.get_submodule(name), ratio) for name, ratio in ratios.items() if ratio > 0
    }
    for name, idx in keep.items():
        if name not in pairs:
            raise ValueError(f"{name} cannot be pruned: its output channels are coupled to other layers")
        _slice_conv(model.get_submodule(name), out_idx=idx)
        batchnorm = getattr(_parent_block(model, name), "bn", None)
        if isinstance(batchnorm, nn.BatchNorm2d):
            _slice_batchnorm(batchnorm, idx)
        _slice_conv(model.get_submodule(pairs[name]), in_idx=idx)
