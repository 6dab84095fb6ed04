"""A candidate design: plain, JSON-serialisable knobs for each searchable layer.

    {"layers": {"model.0.conv": {"weight_bits": 4, "scheme": "affine", "granularity": "filter",
                                 "prune_ratio": 0.25, "kernel_size": "keep"}, ...}}

Layers the candidate does not name are left as they are (float weights, unpruned); knobs a layer
does not name take their defaults below.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from edgesearch.spaces.activations import ACTIVATION_BITS
from edgesearch.spaces.errors import InputError
from edgesearch.spaces.granularity import GRANULARITIES

FLOAT_BITS = 32  # weight_bits=32 means "left in float"; 16 means stored as fp16
SCHEMES = ("affine", "symmetric", "pwlq", "kmeans")  # the packed header stores positions in this tuple
KERNEL_SIZES = ("keep", 5, 3, 1)


@dataclasses.dataclass(frozen=True)
class LayerKnobs:
    weight_bits: int = FLOAT_BITS
    scheme: str = "affine"
    granularity: str = "filter"
    prune_ratio: float = 0.0
    kernel_size: str | int = "keep"
    group_size: int = 16  # G of the `group` granularity: input channels per parameter set
    sparsity: float = 0.0  # unstructured magnitude pruning: fraction of weights set to zero
    rank_ratio: float = 1.0  # < 1: factorized by SVD into two convs keeping this share of the rank
    activation_bits: int = FLOAT_BITS  # 8: input as uint8; 16: computes in fp16 (activations.py)

    def __post_init__(self):
        # types first: 4.0 == 4 and "0.5" would pass the range checks and fail after the fine-tune
        for knob in ("weight_bits", "group_size", "activation_bits"):
            if not _is_int(getattr(self, knob)):
                raise InputError(f"{knob} must be an integer, not {getattr(self, knob)!r}")
        for knob in ("prune_ratio", "sparsity", "rank_ratio"):
            if not (_is_int(getattr(self, knob)) or isinstance(getattr(self, knob), float)):
                raise InputError(f"{knob} must be a number, not {getattr(self, knob)!r}")
        if not (self.kernel_size == "keep" or _is_int(self.kernel_size)):
            raise InputError(f"kernel_size must be 'keep' or an integer, not {self.kernel_size!r}")
        if self.weight_bits not in (*range(2, 9), 16, FLOAT_BITS):
            raise InputError(f"weight_bits must be 2-8, 16 or 32, not {self.weight_bits!r}")
        if self.scheme not in SCHEMES:
            raise InputError(f"scheme must be one of {', '.join(SCHEMES)}, not {self.scheme!r}")
        if self.granularity not in GRANULARITIES:
            raise InputError(f"granularity must be one of {', '.join(GRANULARITIES)}, not {self.granularity!r}")
        if not 0.0 <= float(self.prune_ratio) < 1.0:
            raise InputError(f"prune_ratio must be in [0, 1), not {self.prune_ratio!r}")
        if self.kernel_size not in KERNEL_SIZES:
            raise InputError(f"kernel_size must be one of {KERNEL_SIZES}, not {self.kernel_size!r}")
        if not 1 <= self.group_size <= 4096:
            raise InputError(f"group_size must be an integer in 1..4096, not {self.group_size!r}")
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise InputError(f"sparsity must be in [0, 1), not {self.sparsity!r}")
        if self.activation_bits not in ACTIVATION_BITS:
            raise InputError(f"activation_bits must be 8, 16 or 32, not {self.activation_bits!r}")
        if not 0.0 < float(self.rank_ratio) <= 1.0:
            raise InputError(f"rank_ratio must be in (0, 1], not {self.rank_ratio!r}")

    @property
    def quantized(self) -> bool:
        return self.weight_bits < 16

    def stored(self) -> "LayerKnobs":
        """The knobs as the weights are stored and fake-quantized: a layer that computes in fp16
        keeps float weights in fp16 (weight_bits 32 counts as 16 there)."""
        if self.activation_bits == 16 and self.weight_bits == FLOAT_BITS:
            return dataclasses.replace(self, weight_bits=16)
        return self

    def compute_precision(self, available: tuple[str, ...] | list[str] = ("fp32", "fp16", "int8")) -> str:
        """fp32, fp16 or int8: what the conv computes in on a device that computes in `available`
        (int8 needs int8 inputs and weights of 8 bits or fewer; fp16 needs activation_bits 16)."""
        if self.activation_bits == 8 and self.weight_bits <= 8 and "int8" in available:
            return "int8"
        if self.activation_bits == 16 and "fp16" in available:
            return "fp16"
        return "fp32"

    @classmethod
    def from_dict(cls, raw: dict, where: str = "") -> "LayerKnobs":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise InputError(f"{where}unknown knob(s) {sorted(unknown)}; knobs are {sorted(known)}")
        try:
            return cls(**raw)
        except InputError as error:
            raise InputError(f"{where}{error}") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass
class Candidate:
    layers: dict[str, LayerKnobs]

    def to_json(self) -> dict:
        return {"layers": {name: dataclasses.asdict(knobs) for name, knobs in self.layers.items()}}

    @classmethod
    def from_json(cls, raw: dict) -> "Candidate":
        if not isinstance(raw, dict) or not isinstance(raw.get("layers"), dict):
            raise InputError('a candidate is a JSON object {"layers": {layer_name: {knob: value}}}')
        return cls({name: LayerKnobs.from_dict(knobs, f"layer {name}: ") for name, knobs in raw["layers"].items()})

    @classmethod
    def load(cls, path: Path) -> "Candidate":
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError(f"candidate file {path} does not exist") from None
        except json.JSONDecodeError as error:
            raise InputError(f"candidate file {path} is not valid JSON: {error}") from None
        return cls.from_json(raw)


def parse_uniform(spec: str) -> LayerKnobs:
    """`bits=4,scheme=affine,granularity=channel,prune=0.25,kernel=keep` -> the same knobs for every layer."""
    aliases = {"bits": "weight_bits", "prune": "prune_ratio", "kernel": "kernel_size", "group": "group_size",
               "rank": "rank_ratio", "act": "activation_bits"}
    raw: dict = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise InputError(f"--uniform expects key=value pairs, got {part!r}")
        key = aliases.get(key.strip(), key.strip())
        raw[key] = _parse_value(value.strip())
    if raw.get("weight_bits") in ("float", "fp32"):
        raw["weight_bits"] = FLOAT_BITS
    return LayerKnobs.from_dict(raw, "--uniform: ")


def _parse_value(value: str):
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return value
