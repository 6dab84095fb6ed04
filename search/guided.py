"""The guided search: recipes first, then budgeted seeds, then screened few-layer moves.

1. Recipes (recipes.py): what a user would otherwise apply, as reference points.
2. Seeds: least-omega designs at budgets spread between the smallest and the largest recipe's
   SRAM, and at latency budgets from the fastest allocated design to 0.9x the base's predicted latency,
   from the multiple-choice knapsack of allocate.py over the per-layer option tables.
3. Moves (moves.py): 1-3 layers of a front design changed, several drawn per slot, the one the
   proxy predicts adds most hypervolume scored in full, the others stored as screened.
"""

from __future__ import annotations

import json

import numpy as np
import optuna
from optuna.trial import TrialState

from edgesearch.search import study as studies
from edgesearch.search.allocate import allocate, budget_sweep, design_price
from edgesearch.search.moves import RESOURCES, Scored, fit_accuracy_model, layer_fronts, propose, screen
from edgesearch.search.options import OptionPricer, layer_options
from edgesearch.spaces.candidate import Candidate
from edgesearch.spaces.space import LayerChoices

PROPOSALS_PER_SLOT = 8  # moves drawn per fully scored trial; the proxy picks one
DEFAULT_ALPHA = 0.05  # mAP per unit of omega until three scored designs fit it (recipes come first)
LATENCY_SEED_TOP = 0.9  # latency seeds go up to this share of the base's predicted latency
CHEAPEN_PROBABILITY = 0.5
CHEAPEN_PROBABILITY_WITH_FLOOR = 0.75  # an accuracy floor asks for the smallest designs above it
MIB = 1024 * 1024


def candidate_key(candidate: dict) -> str:
    return json.dumps(candidate, sort_keys=True)


def _designs_tried(study: optuna.Study) -> set[str]:
    """Keys of every design the study holds: scored, failed, in flight, queued or screened."""
    return {candidate_key(t.user_attrs[studies.CANDIDATE_ATTR]) for t in study.get_trials(deepcopy=False)
            if studies.CANDIDATE_ATTR in t.user_attrs}


class Guide:
    def __init__(self, pricer: OptionPricer, resolved: dict[str, LayerChoices], base: dict, budgets: dict,
                 seed: int):
        self.pricer, self.base, self.budgets = pricer, base, budgets
        self.tables = {layer: layer_options(pricer, layer, resolved[layer].choices) for layer in resolved}
        self.offsets = {"latency_ms": pricer.basis["fixed_ms"]}
        self.fronts = {resource: layer_fronts(self.tables, resource) for resource in RESOURCES
                       if self._varies(resource)}
        self.rng = np.random.default_rng(seed)
        # the hypervolume reference: the base's SRAM and latency x 1.1, mAP 0 (as the benchmark)
        self.reference = (0.0, base["sram_bytes"] * 1.1, base["latency_ms"] * 1.1)

    def memory_word(self) -> str:
        """What the memory figure is called in seed names: SRAM where the budget is on-chip, else the
        footprint (weights + planned activations), which a DRAM device holds with room to spare."""
        return "SRAM" if self.budgets.get("memory_kind", "sram") == "sram" else "footprint"

    def _varies(self, resource: str) -> bool:
        values = {round(sum(o.price(p) for p in RESOURCES[resource]), 9) for options in self.tables.values()
                  for o in options}
        return len(values) > len(self.tables)

    def omega(self, candidate: dict) -> float:
        return self.pricer.design(Candidate.from_json(candidate).layers)["omega"]

    # -------------------------------------------------------------------------------- seeds

    def seeds(self, recipe_candidates: dict[str, Candidate], count: int) -> list[tuple[str, dict]]:
        """(origin, candidate JSON) of `count` budgeted designs, spread between the recipes."""
        if count <= 0:
            return []
        prices = [self.pricer.design(c.layers) for c in recipe_candidates.values()]
        sram_points = count - (count // 3 if "latency_ms" in self.fronts else 0)
        designs = []
        low = min(p["sram_bytes"] for p in prices)
        high = max(p["sram_bytes"] for p in prices)
        smallest = allocate(self.tables, {}, minimise="sram_bytes")
        assert smallest is not None  # without budgets some design always fits
        low = max(low, design_price(smallest, "sram_bytes") * 1.001)
        for limit, design in budget_sweep(self.tables, low, high, sram_points, budget="sram_bytes"):
            designs.append((f"seed: least omega under {limit / MIB:.2f} MiB {self.memory_word()} (predicted)", design))
        if "latency_ms" in self.fronts:  # from the fastest design to just under the base's latency
            fastest = allocate(self.tables, {}, minimise="latency_ms")
            assert fastest is not None
            low = design_price(fastest, "latency_ms", self.offsets) * 1.001
            high = max(low, LATENCY_SEED_TOP * self.pricer.design({})["latency_ms"])
            for limit, design in budget_sweep(self.tables, low, high, count - sram_points, budget="latency_ms",
                                              offsets=self.offsets):
                designs.append((f"seed: least omega under {limit:.2f} ms latency (predicted)", design))
        return [(origin, Candidate({layer: option.knobs for layer, option in design.items()}).to_json())
                for origin, design in designs]

    # -------------------------------------------------------------------------------- moves

    def scored(self, study: optuna.Study) -> list[Scored]:
        result = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            scores, candidate = trial.user_attrs.get(studies.SCORE_ATTR), trial.user_attrs.get(studies.CANDIDATE_ATTR)
            if not scores or not candidate:
                continue
            layers = Candidate.from_json(candidate).layers
            result.append(Scored(trial.number, layers, scores["map50_95"], scores["sram_bytes"], scores["latency_ms"],
                                 self.pricer.design(layers)["omega"]))
        return result

    def floor_seeds(self, alpha: float, intercept: float) -> list[tuple[str, dict]]:
        """With an accuracy floor: the smallest and the fastest designs whose predicted mAP
        (intercept - alpha x omega, fitted on the scored designs) stays above it."""
        allowed = (intercept - self.budgets["map_floor"]) / alpha
        if allowed <= 0:
            return []
        designs = []
        for price, what in (("sram_bytes", f"least {self.memory_word()}"), ("latency_ms", "least latency")):
            if price == "latency_ms" and "latency_ms" not in self.fronts:
                continue
            design = allocate(self.tables, {"omega": allowed}, minimise=price, offsets=self.offsets)
            if design is not None:
                candidate = Candidate({layer: option.knobs for layer, option in design.items()}).to_json()
                designs.append((f"seed: {what} within the accuracy floor (omega <= {allowed:.4g}, "
                                f"alpha {alpha:.3g})", candidate))
        return designs

    def propose_into(self, study: optuna.Study) -> bool:
        """Draw moves from the current front, screen them, enqueue the best and store the rest as
        screened. False when nothing can be proposed yet (no scored design, or no new move)."""
        scored = self.scored(study)
        if not scored:
            return False
        numbers = {t.number for t in studies.pareto_trials(study)}
        front = [s for s in scored if s.number in numbers] or scored
        alpha, intercept = fit_accuracy_model(scored, DEFAULT_ALPHA, self.base["map50_95"])
        floor = self.budgets.get("map_floor")
        if floor is not None and not study.user_attrs.get("floor_seeded"):
            study.set_user_attr("floor_seeded", True)
            seen = _designs_tried(study)
            seeds = [(o, c) for o, c in self.floor_seeds(alpha, intercept) if candidate_key(c) not in seen]
            for origin, candidate in seeds:
                studies.enqueue_design(study, candidate, origin, predicted={"omega": self.omega(candidate)})
            if seeds:
                return True
        cheapen = CHEAPEN_PROBABILITY_WITH_FLOOR if floor is not None else CHEAPEN_PROBABILITY
        seen = _designs_tried(study)
        moves = []
        for _ in range(PROPOSALS_PER_SLOT * 4):  # draws that repeat a design are skipped
            parent = front[self.rng.integers(len(front))]
            move = propose(parent, self.fronts, self.pricer, alpha, self.rng, cheapen_probability=cheapen)
            if move is None:
                continue
            key = candidate_key(Candidate(move.layers).to_json())
            if key in seen:
                continue
            seen.add(key)
            moves.append(move)
            if len(moves) == PROPOSALS_PER_SLOT:
                break
        if not moves:
            return False
        best = screen(moves, front, self.reference, floor)
        for index, move in enumerate(moves):
            predicted = dict(move.predicted, alpha=alpha)
            candidate = Candidate(move.layers).to_json()
            if index == best:
                studies.enqueue_design(study, candidate, f"move: {move.describe()}", predicted=predicted)
            else:
                studies.record_screened(study, candidate, f"move: {move.describe()}", predicted)
        return True

