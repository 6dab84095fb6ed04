"""Fine-tuned weights kept within a run, so that a child design starts from its parent's.

A child that changes only weight knobs (bit-widths, schemes, granularity, sparsity, activation
precision) of a scored design has the same modules with the same shapes. Started from the parent's
fine-tuned weights instead of the base's, it needs a short fine-tune to adapt its changed layers
(issue 18, item 4), and its training record says so (runners/evaluate.training_record).

What is kept: every float weight and buffer of the fine-tuned model before its weights are baked,
by the name it has without fake-quant (`conv.parametrizations.weight.original` is kept as
`conv.weight`), without the fake-quant masks (a child computes its own from the weights it starts
from). Activation ranges are kept too but a child calibrates its own.

Where: `<node cache>/builds/<run id>/weights/<trial>.pt`, beside the run's kept builds
(hardware/build_cache.py, which trims whole runs); on the node that trained it. A child scheduled on
another node does not find it and trains from the base (its record says so). Loaded with
`weights_only=True`: tensors, never pickled code.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch
from torch import nn

from edgesearch.common.files import atomic_write
from edgesearch.spaces.quantize import layer_quantizer, magnitude_mask, weight_parametrizations

WEIGHTS_DIR = "weights"
_ORIGINAL = ".parametrizations.weight.original"
_MASK = re.compile(r"\.parametrizations\.weight\.\d+\.mask$")
_KEY = re.compile(r"[0-9]{1,9}")


def weights_path(run_folder: Path, key: str) -> Path:
    if not _KEY.fullmatch(key):
        raise ValueError(f"kept weights key {key[:20]!r} is not a trial number")
    return run_folder / WEIGHTS_DIR / f"{key}.pt"


def _float_state_names(model: nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    """{name without fake-quant: (the model's own state name, its tensor)}, masks left out."""
    return {name.replace(_ORIGINAL, ".weight"): (name, tensor)
            for name, tensor in model.state_dict().items() if not _MASK.search(name)}


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights and buffers by their names without fake-quant, masks left out, on the CPU."""
    return {name: tensor.detach().cpu().clone() for name, (_, tensor) in _float_state_names(model).items()}


def keep(model: nn.Module, path: Path) -> None:
    """Write the model's float state to `path`, atomically (a child never reads half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    buffer = io.BytesIO()
    torch.save(float_state(model), buffer)
    atomic_write(path, buffer.getvalue())


def start_from(model: nn.Module, path: Path) -> bool:
    """Load the weights kept at `path` into `model` (a design with the same structure); False, the
    model untouched, when there are none here or they do not fit it. Sparsity masks are computed
    again from the loaded weights, as applying the knobs computes them from the base's."""
    try:
        kept = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return False
    own = _float_state_names(model)
    trained = {name.replace(_ORIGINAL, ".weight") for name, _ in model.named_parameters()}
    fits = isinstance(kept, dict) and all(
        isinstance(kept.get(name), torch.Tensor) and kept[name].shape == own[name][1].shape for name in trained)
    if not fits:
        return False
    # every trained weight, and the buffers both have (batch-norm statistics; an activation range
    # only one of them quantizes is left as it is, and calibrated again)
    model.load_state_dict({own[name][0]: tensor for name, tensor in kept.items()
                           if name in own and isinstance(tensor, torch.Tensor) and tensor.shape == own[name][1].shape},
                          strict=False)
    for module in model.modules():
        quantizer = layer_quantizer(module)
        if quantizer is not None and quantizer.mask is not None:
            quantizer.mask = magnitude_mask(weight_parametrizations(module).original, quantizer.knobs.sparsity)
    return True
