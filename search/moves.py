"""Moves that change few layers of front designs, and the screen that picks which to score.

A move starts from a design on the current front and changes 1-3 layers (1.85 on average), each
to a neighbouring option on that layer's own trade-off between omega (predicted accuracy cost)
and one resource (SRAM bytes or latency):

  cheapen  - the next cheaper option; layers are drawn in proportion to resource saved per unit
             of omega added, so insensitive layers are cheapened first;
  restore  - the next more accurate option; layers are drawn in proportion to the omega they
             currently carry, so the most sensitive ones are restored first.

Why not Optuna's NSGA-II: it samples at random until a generation is complete, then its uniform
crossover swaps about half of ~500 per-layer parameters between two parents - a child of two good
designs changes dozens of layers and loses the accuracy of both (measured: issue 8). Moves are
generated here and handed to Optuna with `enqueue_trial`, its public API for trials whose values
the caller chooses; the study still stores, resumes and reports every trial.

Screening: each slot draws several moves and predicts each child's scores without fine-tuning
- mAP from the parent's measured mAP less alpha x the omega the move adds (alpha fitted on the
scored trials), SRAM and latency from the parent's measured figures plus the priced change - and
only the child that adds most hypervolume to the current front gets the full fine-tune.

The accuracy model (fit_accuracy_model) also learns what a structural change costs after the
fine-tune: the sensitivity pass prices a cut, a cropped kernel or a low rank as a one-shot change
of the base, but a design's own fine-tune recovers much of that (25 % channel pruning: 0.28 ->
0.60 mAP50-95). Once MIN_STRUCTURAL_DESIGNS scored designs carry structure, a second slope on their
one-shot structural loss is fitted beside the first, and omega then counts a structural loss at
the ratio of the two slopes (the structural scale), so moves, seeds and the floor's screen price
structure as the search's own trials found it.

A run with a recovery stage and an accuracy floor judges a structural design against the floor after
its recovery, not after the search's short fine-tune (it is recovered before it is kept). The control
and the structural recipes are recovered during the search (search/recovery.py); what the recipes
lose after it against the recovered control fits a third scale (fit_recovered_scale: 0.029 of the
one-shot loss after 1380 recovery steps where the 60-step trials fitted 0.31, in
bench/results/structure_targets_recovery_priced.md), and a move or seed that changes
structure carries a second prediction, `map50_95_recovered` (floor_prediction), which the floor's
screen reads.
"""

from __future__ import annotations

import dataclasses

import moocore
import numpy as np

from edgesearch.search.options import Option, OptionPricer
from edgesearch.spaces.candidate import LayerKnobs

RESOURCES = {"sram_bytes": ("weight_bytes", "activation_bytes"), "latency_ms": ("latency_ms",)}
LAYERS_CHANGED = (1, 2, 3)
MAXIMISE = (True, False, False)  # mAP up, SRAM down, latency down
LAYERS_CHANGED_ODDS = (0.4, 0.35, 0.25)  # 1.85 layers per move on average
EPSILON = 1e-9
# scored designs with distinct structural losses before their own slope is fitted: the two pruning recipes
MIN_STRUCTURAL_DESIGNS = 2
MIN_DESIGNS_FOR_TWO_SLOPES = 5  # two slopes and an intercept: a few designs more than parameters
STRUCTURAL_SCALE_RANGE = (0.01, 1.0)  # a fine-tune does not make a cut cost more than the cut itself


@dataclasses.dataclass
class Scored:
    """A fully scored design, as the moves see it."""

    number: int
    layers: dict[str, LayerKnobs]
    map50_95: float
    sram_bytes: float
    latency_ms: float
    omega: float  # predicted accuracy cost (sum over layers, at the pricer's structural scale)
    structural_loss: float = 0.0  # the one-shot loss of its structural changes (sum over layers)
    stopped_early: bool = False  # successive halving stopped its fine-tune: its mAP is not a full one's


@dataclasses.dataclass(frozen=True)
class AccuracyModel:
    """mAP50-95 ~ intercept - alpha x omega, where omega counts structural_scale x each structural
    change's one-shot loss; `designs` scored designs fitted it (0: the defaults), `structural_designs`
    of them with structure fitted the scale (0: not fitted, the scale is 1)."""

    alpha: float
    intercept: float
    structural_scale: float = 1.0
    designs: int = 0
    structural_designs: int = 0
    # the structural scale after the recovery stage (fit_recovered_scale); None: no recovery, or not known yet
    recovered_scale: float | None = None

    def predict(self, omega: float) -> float:
        return self.intercept - self.alpha * omega

    def recovered(self, map50_95: float, structural_loss: float) -> float | None:
        """A design's predicted mAP50-95 after the recovery stage, from `map50_95` predicted at the
        structural scale: its one-shot structural loss counted at recovered_scale instead. None for
        a design without structure, or before the recovered references fit the scale."""
        if self.recovered_scale is None or structural_loss <= 0:
            return None
        return map50_95 + self.alpha * (self.structural_scale - self.recovered_scale) * structural_loss


@dataclasses.dataclass
class Move:
    parent: int
    layers: dict[str, LayerKnobs]
    changes: list[str]  # "layer: old -> new" per changed layer
    direction: str
    resource: str
    predicted: dict  # map50_95, sram_bytes, latency_ms, omega

    def describe(self) -> str:
        return f"{self.direction} {self.resource} from #{self.parent}: " + "; ".join(self.changes)


def _resource(option: Option, resource: str) -> float:
    return sum(option.price(part) for part in RESOURCES[resource])


def layer_fronts(tables: dict[str, list[Option]], resource: str) -> dict[str, list[Option]]:
    """Per layer, the options on its own (omega, resource) trade-off, cheapest first."""
    fronts = {}
    for layer, options in tables.items():
        best: list[Option] = []
        for option in sorted(options, key=lambda o: (_resource(o, resource), o.omega)):
            if not best or option.omega < best[-1].omega - EPSILON:
                best.append(option)
        fronts[layer] = best
    return fronts


def knob_change(old: LayerKnobs, new: LayerKnobs) -> str:
    changed = [f"{f.name} {getattr(old, f.name)}->{getattr(new, f.name)}" for f in dataclasses.fields(LayerKnobs)
               if getattr(old, f.name) != getattr(new, f.name)]
    return ", ".join(changed)


def propose(parent: Scored, fronts: dict[str, dict[str, list[Option]]], pricer: OptionPricer,
            model: AccuracyModel, rng: np.random.Generator, *, cheapen_probability: float) -> Move | None:
    """One move from `parent`, or None when no layer can move in the drawn direction."""
    if not fronts:
        return None
    resource = rng.choice(list(fronts))
    direction = "cheapen" if rng.random() < cheapen_probability else "restore"
    steps: dict[str, Option] = {}
    weights: dict[str, float] = {}
    current = {layer: pricer.price(layer, parent.layers.get(layer, LayerKnobs())) for layer in fronts[resource]}
    for layer, front in fronts[resource].items():
        here = current[layer]
        if direction == "cheapen":
            cheaper = [o for o in front if _resource(o, resource) < _resource(here, resource) - EPSILON]
            if cheaper:
                step = cheaper[-1]  # the smallest step down
                saved = _resource(here, resource) - _resource(step, resource)
                steps[layer], weights[layer] = step, saved / (max(step.omega - here.omega, 0.0) + EPSILON)
        else:
            better = [o for o in front if o.omega < here.omega - EPSILON]
            if better:
                step = min(better, key=lambda o: _resource(o, resource))  # the cheapest that is more accurate
                steps[layer], weights[layer] = step, here.omega
    if not steps:
        return None
    names = list(steps)
    weight = np.array([weights[n] for n in names], dtype=float)
    odds = weight / weight.sum() if weight.sum() > 0 and np.isfinite(weight.sum()) else None
    count = min(len(names), int(rng.choice(LAYERS_CHANGED, p=LAYERS_CHANGED_ODDS)))
    chosen = rng.choice(names, size=count, replace=False, p=odds)
    layers = dict(parent.layers)
    changes = []
    for layer in chosen:
        old = parent.layers.get(layer, LayerKnobs())
        layers[layer] = steps[layer].knobs
        changes.append(f"{layer}: {knob_change(old, steps[layer].knobs)}")
    before = pricer.design(parent.layers)
    after = pricer.design(layers)
    predicted = {
        "omega": after["omega"],
        "map50_95": parent.map50_95 - model.alpha * (after["omega"] - before["omega"]),
        "sram_bytes": parent.sram_bytes + after["sram_bytes"] - before["sram_bytes"],
        "latency_ms": parent.latency_ms + after["latency_ms"] - before["latency_ms"],
    }
    recovered = model.recovered(predicted["map50_95"], after["structural_loss"])
    if recovered is not None:
        predicted["map50_95_recovered"] = recovered
    return Move(parent.number, layers, changes, direction, str(resource), predicted)


def fit_accuracy_model(scored: list[Scored], default_alpha: float, default_intercept: float,
                       scale: float = 1.0) -> AccuracyModel:
    """The AccuracyModel of the scored designs (whose omegas were priced at structural `scale`), by
    least squares (the intercept absorbs what the fine-tune itself adds or costs). Designs successive
    halving stopped early are left out: their mAP is not what a full fine-tune gives. The defaults
    until three designs with distinct omegas exist, or while the fitted slope is not negative."""
    fitted = [s for s in scored if not s.stopped_early]
    structural = np.array([s.structural_loss for s in fitted], dtype=float)
    weight = np.array([s.omega for s in fitted], dtype=float) - scale * structural  # omega less its structure
    map50_95 = np.array([s.map50_95 for s in fitted], dtype=float)
    new_scale = _structural_scale(weight, structural, map50_95)
    if new_scale is None:
        new_scale, structural_designs = 1.0, 0
    else:
        structural_designs = int(np.count_nonzero(structural > 0))
    omega = weight + new_scale * structural
    if len(np.unique(omega)) < 3:
        return AccuracyModel(default_alpha, default_intercept)
    slope, intercept = np.polyfit(omega, map50_95, 1)
    if slope >= 0:
        return AccuracyModel(default_alpha, default_intercept)
    return AccuracyModel(float(-slope), float(intercept), new_scale, len(fitted), structural_designs)


def _structural_scale(weight: np.ndarray, structural: np.ndarray, map50_95: np.ndarray) -> float | None:
    """The ratio of the mAP lost per unit of one-shot structural loss to that lost per unit of
    weight omega (map50_95 ~ c - a x weight - b x structural: b / a), clipped to
    STRUCTURAL_SCALE_RANGE; None while too few designs carry structure or a slope is not negative."""
    if (len(np.unique(structural[structural > 0])) < MIN_STRUCTURAL_DESIGNS
            or len(map50_95) < MIN_DESIGNS_FOR_TWO_SLOPES):
        return None
    columns = np.column_stack([np.ones_like(weight), weight, structural])
    (_, weight_slope, structural_slope), _, rank, _ = np.linalg.lstsq(columns, map50_95, rcond=None)
    if rank < 3 or weight_slope >= 0 or structural_slope >= 0:
        return None
    return float(np.clip(structural_slope / weight_slope, *STRUCTURAL_SCALE_RANGE))


def fit_recovered_scale(references: list[tuple[float, float]], alpha: float) -> float | None:
    """The structural scale after recovery: `references` are (one-shot structural loss, mAP50-95 lost
    against the recovered control) of the recovered structural recipes (uniform cuts, float weights,
    so the loss is all structure's); the least-squares slope through the origin, per unit of omega
    (/ alpha), clipped to STRUCTURAL_SCALE_RANGE. None without a recipe that carries structure."""
    losses = np.array([loss for loss, _ in references if loss > 0], dtype=float)
    drops = np.array([max(0.0, drop) for loss, drop in references if loss > 0], dtype=float)
    if not len(losses) or alpha <= 0:
        return None
    slope = float(losses @ drops / (losses @ losses))
    return float(np.clip(slope / alpha, *STRUCTURAL_SCALE_RANGE))


def floor_prediction(predicted: dict) -> float:
    """The predicted mAP50-95 the accuracy floor is held to: after the recovery stage where the
    design will have one (a structural design of a recovering run), else after the fine-tune."""
    return predicted.get("map50_95_recovered", predicted["map50_95"])


def hypervolume(points: list[tuple[float, float, float]], reference: tuple[float, float, float]) -> float:
    """Hypervolume of (mAP up, SRAM down, latency down) points against `reference` (points that do
    not strictly beat the reference on every objective add none)."""
    kept = np.array([p for p in points if p[0] > reference[0] and p[1] < reference[1] and p[2] < reference[2]],
                    dtype=float).reshape(-1, 3)
    if not len(kept):
        return 0.0
    return float(moocore.hypervolume(kept, ref=np.array(reference, dtype=float), maximise=MAXIMISE))


def screen(moves: list[Move], front: list[Scored], reference: tuple[float, float, float],
           map_floor: float | None = None) -> int:
    """Index of the move whose predicted design adds the most hypervolume to `front` (designs
    under `map_floor`, by floor_prediction, add none); ties, including all-zero gains, go to the higher predicted mAP."""
    points = [(s.map50_95, s.sram_bytes, s.latency_ms) for s in front]
    now = hypervolume(points, reference)

    def gain(move: Move) -> tuple[float, float]:
        p = move.predicted
        if map_floor is not None and floor_prediction(p) < map_floor:
            return (0.0, p["map50_95"])
        return (hypervolume(points + [(p["map50_95"], p["sram_bytes"], p["latency_ms"])], reference) - now,
                p["map50_95"])

    return max(range(len(moves)), key=lambda i: gain(moves[i]))

