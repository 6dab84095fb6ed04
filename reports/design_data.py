"""What a report says about a run, derived from plain data (no HTML here): where each figure comes
from, deltas against the base, the recommended designs, search progress and per-layer rows.

Input is the report's plain data (pareto_report.write_report): `run` (run.json), `base` (the
unmodified model's scores), `trials` (one row per trial) and optional `extras`. Any field the
interface marks optional may be missing; nothing here imports edgesearch.
"""

from __future__ import annotations

import math
from collections import Counter

import moocore
import numpy as np

# the knob table's defaults (spaces/knobs.DEFAULTS; reports/ imports nothing of it: tests/test_report.py checks the copy)
KNOB_DEFAULTS = {"weight_bits": 32, "scheme": "affine", "granularity": "filter", "group_size": 16,
                 "prune_ratio": 0.0, "sparsity": 0.0, "kernel_size": "keep", "rank_ratio": 1.0,
                 "activation_bits": 32}
DEFAULT_MAX_MAP_DROP = 0.01  # relative: used when run.json names no accuracy floor (and said so)
MEMORY_KEY = "sram_bytes"  # the footprint a memory budget is checked against (weights + activations)


# ------------------------------------------------------------------------------ provenance


class Provenance:
    """Each distinct source of a figure, stated once and referenced by a mark such as `L1`.

    Categories: A accuracy, L latency (search), R latency (re-measured), M memory, P predicted
    (screened), B per-layer packed bytes, S sensitivity, C per-layer cost basis."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], str] = {}  # (category, text) -> mark

    def mark(self, category: str, text: str | None) -> str | None:
        if not text:
            return None
        key = (category, text)
        if key not in self.entries:
            self.entries[key] = f"{category}{1 + sum(1 for c, _ in self.entries if c == category)}"
        return self.entries[key]

    def rows(self) -> list[dict]:
        """[{mark, kind, text}] in the order the marks were made; kind: measured, estimated, ..."""
        return [{"mark": mark, "category": category, "kind": kind_of(text), "text": text}
                for (category, text), mark in self.entries.items()]


def kind_of(source: str | None) -> str:
    """`measured`, `estimated`, `planned`, `computed`, `predicted` or `unknown`: the word before the
    first colon of a source text (every source text of the scores starts that way), less a
    parenthesis after it (calibrated estimates: "estimated (± 8 %): ...")."""
    if not source:
        return "unknown"
    head = source.split(":", 1)[0].split("(", 1)[0].strip().lower()
    return head if head in ("measured", "estimated", "planned", "computed", "predicted") else "unknown"


def accuracy_source(run: dict, extras: dict) -> str:
    basis = extras.get("accuracy_basis") or {}
    split = basis.get("split", "val")
    images = basis.get("images")
    count = f"{images} images" if images else "image count not recorded"
    distill = ", distilled from the base" if run.get("distill") else ""
    return (f"measured: ultralytics' DetectionValidator on the {split} split ({count}) after "
            f"{run.get('finetune_iters', '?')} fine-tune steps per design{distill}, input {run.get('imgsz', '?')} px; "
            "the base is validated unchanged, without a fine-tune")


WEIGHT_BYTES_SOURCE = ("computed: exact length of every layer's packing (codes, sparse index, scales, bias), "
                       "spaces/packing.py")


# ------------------------------------------------------------------------------ designs


def scores_of(trial: dict) -> dict | None:
    scores = trial.get("scores")
    return scores if isinstance(scores, dict) and scores.get("map50_95") is not None else None


def scores(trial: dict) -> dict:
    """The scores of a trial known to be scored (one of `scored`, or one scores_of returned scores for)."""
    return trial["scores"]


def scored(trials: list[dict]) -> list[dict]:
    return [t for t in trials if t.get("state") == "COMPLETE" and scores_of(t)]


def memory_budget(run: dict) -> dict:
    """{kind: sram|dram|none, bytes: int|None, label}: run.json's memory_budget, else the SRAM budget."""
    budget = run.get("memory_budget")
    if isinstance(budget, dict) and budget.get("kind"):
        kind, size = budget["kind"], budget.get("bytes")
    else:
        kind, size = ("sram", run.get("sram_budget_bytes")) if run.get("sram_budget_bytes") else ("none", None)
    if kind == "none" or not size:
        return {"kind": "none", "bytes": None, "label": "no memory budget"}
    return {"kind": kind, "bytes": size, "label": f"{kind.upper()} budget {size / 1024:,.0f} KiB"}


def recovery_steps(trial: dict) -> int:
    """The recovery schedule a scored trial had (its training record; 0: the search's own fine-tune)."""
    return _steps(trial, "recovery_steps")


def record_key(trial: dict) -> tuple[int, int]:
    """What a design's accuracy is compared by: its recovery steps and the steps it inherited with a
    parent's weights (0: it started from the base)."""
    return recovery_steps(trial), _steps(trial, "inherited_steps")


def _steps(trial: dict, field: str) -> int:
    """A step count of the trial's training record; 0 where it has none (or a study holds no whole number)."""
    training = scores(trial).get("training")
    value = training.get(field) if isinstance(training, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def accuracy_floor(run: dict, base: dict, trials: list[dict] | None = None, recovery: int = 0,
                   inherited: int = 0) -> dict:
    """`max_map_drop` below the higher of the unmodified base and the fp32 control (the base given the
    designs' own fine-tune: a trial row marked `control`) with the same training record (record_key:
    `recovery` steps, 0 for the search's designs; `inherited` steps, 0 for a design trained from the
    base), as the issues define "within X %"."""
    drop = run.get("max_map_drop")
    stated = drop is not None
    drop = DEFAULT_MAX_MAP_DROP if drop is None else float(drop)
    base_map = base.get("map50_95") or 0.0
    control = next((t for t in scored(trials or []) if t.get("control") and record_key(t) == (recovery, inherited)),
                   None)
    control_map = scores(control)["map50_95"] if control else 0.0
    if control is not None and control_map > base_map:
        training = (scores(control).get("training") or {}).get("label") or "the designs' fine-tune"
        reference = (f"the fp32 control's mAP50-95 {control_map:.3f} (#{control['number']}: {training}; "
                     f"the unmodified base scored {base_map:.3f})")
    else:
        reference = f"the base's mAP50-95 {base_map:.3f}" + (
            f" (the fp32 control, #{control['number']}, scored {control_map:.3f})" if control else
            " (no fp32 control was scored: its fine-tune may lift the base)")
    reference_map = max(base_map, control_map)
    return {"drop": drop, "stated": stated, "map50_95": reference_map * (1 - drop),
            "label": f"accuracy floor: {drop:.1%} below {reference}" + ("" if stated else " (default; run.json sets none)")}


def _within_budgets(trial: dict, run: dict) -> bool:
    s = scores(trial)
    if trial.get("feasible") is False:
        return False
    budget = memory_budget(run)
    if budget["bytes"] and s.get(MEMORY_KEY) is not None and s[MEMORY_KEY] > budget["bytes"]:
        return False
    latency_budget = run.get("latency_budget_ms")
    return not (latency_budget and s.get("latency_ms") is not None and s["latency_ms"] > latency_budget)


def _record_words(recovery: int, inherited: int) -> str:
    """A training record (record_key) in words, for the floor that holds designs trained so."""
    if recovery:
        return f"of the recovery stage ({recovery} more steps)"
    return f"started from a parent's weights ({inherited} steps from the base before)"


def recommendations(run: dict, base: dict, trials: list[dict]) -> list[dict]:
    """The designs to pick from, each {key, title, rule, trial (number or None), why}.

    - best within the accuracy floor: the smallest footprint (then the fastest) among designs
      within the budgets whose mAP50-95 is at least the floor; and the fastest of them;
    - best within the memory budget: the highest mAP50-95 (then the smallest) within the budgets;
    - the knee: the front design nearest the ideal point once each objective is scaled to [0, 1]
      over the front."""
    eligible = [t for t in scored(trials) if _within_budgets(t, run)]
    floors = {key: accuracy_floor(run, base, trials, *key) for key in {(0, 0), *map(record_key, eligible)}}
    floor = floors[(0, 0)]
    budget = memory_budget(run)
    budget_text = budget["label"] + (f", latency ≤ {run['latency_budget_ms']} ms" if run.get("latency_budget_ms") else "")
    floor_text = f"mAP50-95 ≥ {floor['map50_95']:.3f} ({floor['label']})" + "".join(
        f"; for designs {_record_words(*key)}, ≥ {f['map50_95']:.3f} ({f['label']})"
        for key, f in sorted(floors.items())
        if key != (0, 0) and f["label"] != floor["label"])  # held to the control trained as they were
    out = []

    above = [t for t in eligible if scores(t)["map50_95"] >= floors[record_key(t)]["map50_95"]]
    pick = min(above, key=lambda t: (scores(t)[MEMORY_KEY], scores(t)["latency_ms"]), default=None)
    out.append({"key": "floor", "title": "Best within the accuracy floor",
                "rule": f"smallest footprint with {floor_text}, within {budget_text}",
                "trial": pick["number"] if pick else None,
                "why": None if pick else "no scored design reaches the accuracy floor within the budgets"})

    pick = min(above, key=lambda t: (scores(t)["latency_ms"], scores(t)[MEMORY_KEY]), default=None)
    out.append({"key": "floor-fastest", "title": "Fastest within the accuracy floor",
                "rule": f"lowest latency with {floor_text}, within {budget_text}",
                "trial": pick["number"] if pick else None,
                "why": None if pick else "no scored design reaches the accuracy floor within the budgets"})

    pick = max(eligible, key=lambda t: (scores(t)["map50_95"], -scores(t)[MEMORY_KEY]), default=None)
    out.append({"key": "budget", "title": f"Best within the {'memory' if budget['kind'] == 'none' else budget['kind'].upper()} budget",
                "rule": f"highest mAP50-95 within {budget_text}",
                "trial": pick["number"] if pick else None,
                "why": None if pick else "no scored design fits the budgets"})

    front = [t for t in eligible if t.get("pareto")] or [t for t in scored(trials) if t.get("pareto")]
    pick = knee(front)
    out.append({"key": "knee", "title": "The knee of the front",
                "rule": "front design nearest the ideal point (mAP50-95, latency, footprint each scaled to [0, 1] over the front)",
                "trial": pick["number"] if pick else None, "why": None if pick else "the front is empty"})
    return out


def knee(front: list[dict]) -> dict | None:
    if not front:
        return None
    points = np.array([[-scores(t)["map50_95"], scores(t)["latency_ms"], scores(t)[MEMORY_KEY]]
                       for t in front], dtype=float)
    low, high = points.min(axis=0), points.max(axis=0)
    scaled = (points - low) / np.where(high > low, high - low, 1.0)
    return front[int(np.argmin(np.linalg.norm(scaled, axis=1)))]


def ratio(base_value, value) -> float | None:
    """base / design (x faster, x smaller); None where either is missing or zero."""
    if not base_value or not value:
        return None
    return base_value / value


def same_method(a: dict, b: dict) -> bool:
    """Whether two latencies were obtained the same way (so their ratio is a speed-up): by their
    `latency_method` (the label without its per-design parts: precision, other trials running);
    runs from before it existed compare the whole label."""
    key = "latency_method" if a.get("latency_method") and b.get("latency_method") else "latency_source"
    return bool(a.get(key)) and a.get(key) == b.get(key)


def latency_pair(base: dict, scores: dict, remeasured_base: dict | None, remeasured: dict | None) -> dict:
    """Speed-up of a design over the base, computed only from figures obtained the same way: the
    re-measured pair where both exist, else the search pair."""
    if remeasured_base and remeasured and same_method(remeasured_base, remeasured):
        return {"speedup": ratio(remeasured_base.get("latency_ms"), remeasured.get("latency_ms")), "basis": "re-measured"}
    if same_method(base, scores):
        return {"speedup": ratio(base.get("latency_ms"), scores.get("latency_ms")), "basis": "search"}
    return {"speedup": None, "basis": "different sources: not compared"}


# ------------------------------------------------------------------------------ progress


def progress(trials: list[dict], base: dict) -> dict:
    """Hypervolume of the feasible designs scored so far after each trial (moocore's
    hypervolume), with cumulative counts of failed and screened-out trials.

    Objectives (mAP50-95 maximised, latency and footprint minimised) are scaled to [0, 1] over every
    scored design and the base; the reference point is 1.1 on each scaled axis, so the value lies
    in [0, 1.331] and grows whenever a trial extends the front."""
    ordered = sorted(trials, key=lambda t: t["number"])
    points = [[-scores(t)["map50_95"], scores(t)["latency_ms"], scores(t)[MEMORY_KEY]]
              for t in ordered if scores_of(t)]
    if base.get("map50_95") is not None:
        points.append([-base["map50_95"], base["latency_ms"], base[MEMORY_KEY]])
    all_points = np.array(points, dtype=float) if points else np.zeros((0, 3))
    low = all_points.min(axis=0) if len(all_points) else np.zeros(3)
    span = (all_points.max(axis=0) - low) if len(all_points) else np.ones(3)
    span = np.where(span > 0, span, 1.0)
    reference = np.full(3, 1.1)
    rows, kept = [], []
    counts: Counter[str] = Counter()
    for t in ordered:
        counts[t.get("state", "?")] += 1
        s = scores_of(t)
        if s and t.get("state") == "COMPLETE" and t.get("feasible") is not False:
            kept.append((np.array([-s["map50_95"], s["latency_ms"], s[MEMORY_KEY]], dtype=float) - low) / span)
        value = float(moocore.hypervolume(np.array(kept), ref=reference)) if kept else 0.0
        rows.append({"number": t["number"], "state": t.get("state"), "hypervolume": value,
                     "failed": counts["FAIL"], "screened": counts["PRUNED"], "completed": counts["COMPLETE"]})
    return {"rows": rows, "counts": dict(counts),
            "method": "hypervolume of the feasible designs scored so far (moocore's hypervolume); mAP50-95, "
                      "latency and footprint scaled to [0, 1] over all scored designs and the base, reference point "
                      "1.1 on each axis (maximum 1.331)"}


# ------------------------------------------------------------------------------ per layer


def layer_knobs(candidate: dict | None, name: str) -> dict:
    knobs = dict(KNOB_DEFAULTS)
    if candidate and name in candidate.get("layers", {}):
        knobs.update(candidate["layers"][name])
    return knobs


def layer_names(trials: list[dict], extras: dict) -> list[str]:
    """Every layer in model order: the order of a candidate's layers (the first trial that has
    them), else the sensitivity table's."""
    for t in sorted(trials, key=lambda t: t["number"]):
        if t.get("candidate") and t["candidate"].get("layers"):
            return list(t["candidate"]["layers"])
    return list((extras.get("sensitivity") or {}).get("layers") or {})


def same_value(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b))
    except (TypeError, ValueError):
        return str(a) == str(b)


def option_omega(layer_table: dict | None, knobs: dict) -> float | None:
    """The sensitivity table's omega for this layer's weight option (key bits|scheme|granularity|group|sparsity;
    float bits ignore scheme, granularity and group)."""
    if not layer_table:
        return None
    options = layer_table.get("weight_options") or {}
    for key, entry in options.items():
        parts = key.split("|")
        if len(parts) != 5:
            continue
        bits, scheme, granularity, group, sparsity = parts
        if not (same_value(bits, knobs["weight_bits"]) and same_value(sparsity, knobs["sparsity"])):
            continue
        if int(knobs["weight_bits"]) >= 16 or (
                scheme == str(knobs["scheme"]) and granularity == str(knobs["granularity"])
                and (knobs["granularity"] != "group" or same_value(group, knobs["group_size"]))):
            return entry.get("omega")
    return None


def change_loss(layer_table: dict | None, knobs: dict) -> float | None:
    """Sum of the measured loss changes of the layer's structural and activation knobs that differ
    from the default (sensitivity `changes`), or None where the table has none of them."""
    if not layer_table or not layer_table.get("changes"):
        return None
    total, found = 0.0, False
    for knob, values in layer_table["changes"].items():
        if knob not in knobs or same_value(knobs[knob], KNOB_DEFAULTS.get(knob)):
            continue
        for value, entry in values.items():
            if same_value(value, knobs[knob]) and entry.get("delta_loss") is not None:
                total += entry["delta_loss"]
                found = True
    return total if found else None


def layer_rows(candidate: dict | None, names: list[str], extras: dict, packed: dict | None) -> list[dict]:
    """One row per layer in model order: the knobs, packed bytes (where computed), the base's
    latency share (cost basis) and the sensitivity of the chosen option (where the run has them)."""
    sensitivity = (extras.get("sensitivity") or {}).get("layers") or {}
    basis = (extras.get("cost_basis") or {}).get("layers") or {}
    total_ms = sum(v.get("latency_ms") or 0.0 for v in basis.values())
    rows = []
    for name in names:
        knobs = layer_knobs(candidate, name)
        cost = basis.get(name) or {}
        rows.append({
            "layer": name,
            **knobs,
            "packed_bytes": (packed or {}).get(name),
            "latency_share": (cost["latency_ms"] / total_ms) if total_ms and cost.get("latency_ms") is not None else None,
            "trace": (sensitivity.get(name) or {}).get("trace"),
            "omega": option_omega(sensitivity.get(name), knobs),
            "delta_loss": change_loss(sensitivity.get(name), knobs),
        })
    return rows


def changed_knobs(a: dict | None, b: dict | None, names: list[str]) -> list[dict]:
    """[{layer, knob, a, b}] wherever two candidates differ."""
    out = []
    for name in names:
        ka, kb = layer_knobs(a, name), layer_knobs(b, name)
        for knob in KNOB_DEFAULTS:
            if knob in ("scheme", "granularity", "group_size") and min(ka["weight_bits"], kb["weight_bits"]) >= 16:
                continue  # float weights have no scheme or granularity
            if knob == "group_size" and "group" not in (ka["granularity"], kb["granularity"]):
                continue
            if not same_value(ka[knob], kb[knob]):
                out.append({"layer": name, "knob": knob, "a": ka[knob], "b": kb[knob]})
    return out


def shown_designs(run: dict, base: dict, trials: list[dict]) -> list[dict]:
    """The designs a report details (per layer, take-away): the front, the recipes and the
    recommended designs, best mAP50-95 first."""
    chosen = {r["trial"] for r in recommendations(run, base, trials) if r["trial"] is not None}
    picked = [t for t in scored(trials)
              if t.get("candidate") and (t.get("pareto") or t.get("recipe") or t["number"] in chosen)]
    return sorted(picked, key=lambda t: (-scores(t)["map50_95"], scores(t)[MEMORY_KEY], t["number"]))
