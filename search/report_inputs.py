"""What the report needs beyond the study's trial rows, gathered as plain data (reports/ imports
nothing of edgesearch): the run folder's analysis files, how many images the mAP figures rest
on, and each shown design's packed bytes per layer."""

from __future__ import annotations

import json
from pathlib import Path

from edgesearch.common.errors import InputError
from edgesearch.reports import design_data
from edgesearch.spaces.knobs import report_knobs

PACKED_SOURCE = ("computed: each layer's packed length as the design's trial packed it (spaces/apply.packed_layer_bytes); "
                 "for the base, and for designs of runs that did not record it, at the layout of the candidate applied "
                 "to the base (spaces/packing.packed_size: pruned shape, kernel crop, low-rank halves, sparsity mask), "
                 "the same length the trial's packing has")


def report_extras(run_dir: Path, run: dict, study, base: dict, trials: list[dict]) -> dict:
    extras: dict = {}
    for key, name in (("sensitivity", "sensitivity.json"), ("cost_basis", "cost_basis.json")):
        path = run_dir / name
        if path.is_file():
            extras[key] = json.loads(path.read_text())
    extras["knobs"] = report_knobs()  # the per-layer columns, from the knob table
    extras["proxy_quality"] = proxy_quality(trials)
    extras["remeasure"] = study.user_attrs.get("remeasure")
    extras["accuracy_basis"] = accuracy_basis(run.get("data"))
    extras.update(packed_layers(run, base, trials))
    return extras


def accuracy_basis(data_yaml: str | None) -> dict:
    """Which images the search's mAP figures rest on: val, less the held-out images when the
    dataset has no test split (runners/accuracy/splits.py)."""
    from edgesearch.runners.accuracy.splits import search_and_holdout

    if data_yaml is None:
        return {"split": "val", "images": None}
    try:
        with search_and_holdout(Path(data_yaml)) as (search_data, _, _, how):
            return {"split": "val" if search_data == Path(data_yaml) else "val, less the held-out images",
                    "images": split_images(str(search_data), "val"), "holdout": how}
    except (InputError, TypeError, OSError):
        return {"split": "val", "images": None}


def split_images(data_yaml: str | None, split: str) -> int | None:
    """How many images a data.yaml's split holds; None if unreadable."""
    from edgesearch.runners.accuracy import splits

    if data_yaml is None:
        return None
    try:
        return len(splits.split_images(Path(data_yaml), split))
    except (InputError, KeyError, TypeError, OSError):
        return None


def packed_layers(run: dict, base: dict, trials: list[dict]) -> dict:
    """{packed_layers: {design key: {layer: bytes}}, packed_layers_source} for the base and every
    design the report shows. The checkpoint is loaded without --trust-checkpoint (never read from a
    run folder); one that needs it gets the reason in the source text instead."""
    from edgesearch.runners.checkpoints import load_detection_model

    shown = design_data.shown_designs(run, base, trials)
    try:
        model = load_detection_model(Path(run["model"]), trust=False)
    except (InputError, KeyError, OSError) as error:
        return {"packed_layers": {}, "packed_layers_source": f"not computed: {error}"}
    out = {"base": layer_bytes(model, None, design_data.layer_names(trials, {}))}
    for t in shown:  # the trial's own figures where it recorded them: applying each candidate again took seconds
        recorded = _recorded_bytes(t.get("scores"))
        out[str(t["number"])] = recorded or layer_bytes(model, t["candidate"], list(t["candidate"]["layers"]))
    return {"packed_layers": out, "packed_layers_source": PACKED_SOURCE}


def _recorded_bytes(scores: dict | None) -> dict[str, int] | None:
    """A trial's recorded {layer: packed bytes}, if it is one (a handed-over study may hold anything)."""
    recorded = (scores or {}).get("packed_layers")
    if isinstance(recorded, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in recorded.values()):
        return recorded
    return None


def layer_bytes(model, candidate: dict | None, names: list[str]) -> dict[str, int]:
    """Packed bytes of each named layer of `model` with `candidate` applied (a factorized layer
    counts both halves); from the layout alone, so no fine-tune or packing is run."""
    from edgesearch.spaces.apply import apply_candidate, conv_layers
    from edgesearch.spaces.candidate import FLOAT_BITS, Candidate, LayerKnobs
    from edgesearch.spaces.packing import packed_size
    from edgesearch.spaces.quantize import layer_quantizer, weight_parametrizations

    transformed = apply_candidate(model, Candidate.from_json(candidate) if candidate else Candidate({}))
    convs = conv_layers(transformed)
    out = {}
    for name in names:
        parts = [convs[name]] if name in convs else [c for n, c in convs.items() if n in (f"{name}.0", f"{name}.1")]
        total = 0
        for conv in parts:
            quantizer = layer_quantizer(conv)
            if quantizer is None:
                total += packed_size(tuple(conv.weight.shape), LayerKnobs(weight_bits=FLOAT_BITS),
                                     has_bias=conv.bias is not None)
                continue
            weight = weight_parametrizations(conv).original
            kept = int(quantizer.mask.sum()) if quantizer.mask is not None else None
            total += packed_size(tuple(weight.shape), quantizer.knobs, kept=kept, has_bias=conv.bias is not None)
        out[name] = total
    return out


def proxy_quality(trials: list[dict]) -> dict:
    """How well the screening proxy ranked the designs then scored in full: Spearman rho of -omega
    (predicted accuracy cost) against mAP50-95 over every scored design with a prediction, and of
    predicted mAP against mAP over the moves (whose prediction is a mAP); how many were screened out."""
    from scipy.stats import spearmanr

    scored = [t for t in trials if t["state"] == "COMPLETE" and t.get("predicted")]

    def rho(pairs):
        if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
            return None
        return {"rho": float(spearmanr(*zip(*pairs, strict=True)).statistic), "n": len(pairs)}

    omega = rho([(-t["predicted"]["omega"], t["scores"]["map50_95"]) for t in scored
                 if t["predicted"].get("omega") is not None])
    return {
        "screened": sum(t["state"] == "PRUNED" for t in trials),
        "spearman_rho": omega["rho"] if omega else None,  # the headline: the sensitivity model's ranking
        "n": omega["n"] if omega else 0,
        "moves": rho([(t["predicted"]["map50_95"], t["scores"]["map50_95"]) for t in scored
                      if t["predicted"].get("map50_95") is not None]),
    }

