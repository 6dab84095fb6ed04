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

from edgesearch.common.errors import InputError
from edgesearch.spaces.knobs import (
    ALIASES,
    DEFAULTS,
    FLOAT_BITS,
    KERNEL_SIZES,
    KNOBS,
    SCHEMES,
    STRUCTURAL_KNOBS,
    problem,
)

__all__ = ["FLOAT_BITS", "KERNEL_SIZES", "SCHEMES", "Candidate", "LayerKnobs", "parse_uniform"]


@dataclasses.dataclass(frozen=True)
class LayerKnobs:
    """One layer's knobs: the fields of the knob table (knobs.py), which says what each means and allows."""
    weight_bits: int = DEFAULTS["weight_bits"]
    scheme: str = DEFAULTS["scheme"]
    granularity: str = DEFAULTS["granularity"]
    prune_ratio: float = DEFAULTS["prune_ratio"]
    kernel_size: str | int = DEFAULTS["kernel_size"]
    group_size: int = DEFAULTS["group_size"]
    sparsity: float = DEFAULTS["sparsity"]
    rank_ratio: float = DEFAULTS["rank_ratio"]
    activation_bits: int = DEFAULTS["activation_bits"]

    def __post_init__(self):
        for knob in KNOBS:
            why = problem(knob.name, getattr(self, knob.name))
            if why:
                raise InputError(why)

    @property
    def quantized(self) -> bool:
        return self.weight_bits < 16

    def changes_structure(self) -> bool:
        """Whether these knobs change the layer's shape (a structural knob away from "no change")."""
        return any(getattr(self, name) != DEFAULTS[name] for name in STRUCTURAL_KNOBS)

    def stored(self) -> LayerKnobs:
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
    def from_dict(cls, raw: dict, where: str = "") -> LayerKnobs:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise InputError(f"{where}unknown knob(s) {sorted(unknown)}; knobs are {sorted(known)}")
        try:
            return cls(**raw)
        except InputError as error:
            raise InputError(f"{where}{error}") from None


@dataclasses.dataclass
class Candidate:
    layers: dict[str, LayerKnobs]

    def to_json(self) -> dict:
        return {"layers": {name: dataclasses.asdict(knobs) for name, knobs in self.layers.items()}}

    def changes_structure(self) -> bool:
        """Whether any layer's shape changes (pruned channels, a smaller kernel, a low rank)."""
        return any(knobs.changes_structure() for knobs in self.layers.values())

    def structure(self) -> dict[str, tuple]:
        """{layer: its structural knobs} for each layer whose shape changes: two candidates with
        the same structure build the same modules with the same shapes from the same base."""
        return {name: tuple(getattr(knobs, knob) for knob in STRUCTURAL_KNOBS)
                for name, knobs in self.layers.items() if knobs.changes_structure()}

    def changed_layers(self, other: Candidate) -> set[str]:
        """The layers whose knobs differ between the two (a layer left out has no change)."""
        unchanged = LayerKnobs()
        return {name for name in {*self.layers, *other.layers}
                if self.layers.get(name, unchanged) != other.layers.get(name, unchanged)}

    @classmethod
    def from_json(cls, raw: dict) -> Candidate:
        if not isinstance(raw, dict) or not isinstance(raw.get("layers"), dict):
            raise InputError('a candidate is a JSON object {"layers": {layer_name: {knob: value}}}')
        return cls({name: LayerKnobs.from_dict(knobs, f"layer {name}: ") for name, knobs in raw["layers"].items()})

    @classmethod
    def load(cls, path: Path) -> Candidate:
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InputError(f"candidate file {path} does not exist") from None
        except json.JSONDecodeError as error:
            raise InputError(f"candidate file {path} is not valid JSON: {error}") from None
        except UnicodeDecodeError as error:
            raise InputError(f"candidate file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
        except RecursionError:
            raise InputError(f"candidate file {path} nests too deeply to be a candidate") from None
        except OSError as error:
            raise InputError(f"candidate file {path}: {error.strerror or error}") from None
        return cls.from_json(raw)


def parse_uniform(spec: str) -> LayerKnobs:
    """`bits=4,scheme=affine,granularity=channel,prune=0.25,kernel=keep` -> the same knobs for every layer."""
    raw: dict = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise InputError(f"--uniform expects key=value pairs, got {part!r}")
        key = ALIASES.get(key.strip(), key.strip())
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
