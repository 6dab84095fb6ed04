"""The guided search, as an Optuna sampler: recipes first, then budgeted seeds, then screened few-layer moves.

1. Recipes (recipes.py): what a user would otherwise apply, as reference points.
2. Seeds: least-omega designs at budgets spread between the smallest and the largest recipe's
   SRAM, and at latency budgets from the fastest allocated design to 0.9x the base's predicted latency,
   from the multiple-choice knapsack of allocate.py over the per-layer option tables.
3. Moves (moves.py): 1-3 layers of a front design changed, several drawn per slot, the one the
   proxy predicts adds most hypervolume scored in full, the others stored as screened.

With an accuracy floor, a seed or move the accuracy model (fitted on the scored designs) predicts
below it is not spent: it is stored as screened, with its prediction (a slot whose every move falls
below is drawn again from restoring moves, then left empty).

GuidedSampler is an Optuna sampler (optuna.samplers.BaseSampler): each new trial gets the next design
of this order, as its parameters ("layer|knob" for the knobs the design changes, so Optuna's own
tools see them) and as its user attributes (the design, its origin, its predicted scores). The study
is the one truth: the recipes and seeds are planned once, in a study attribute, and a design of the
plan is due until a trial of the study carries it; moves start from the study's scored trials. So a
resumed run, another process or `study.optimize` carries on where the study is.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from edgesearch.search import study as studies
from edgesearch.search.allocate import allocate, budget_sweep, design_price
from edgesearch.search.moves import RESOURCES, Scored, fit_accuracy_model, layer_fronts, propose, screen
from edgesearch.search.options import OptionPricer, layer_options
from edgesearch.search.study import Proposal
from edgesearch.spaces.candidate import Candidate
from edgesearch.spaces.knobs import DEFAULTS
from edgesearch.spaces.space import LayerChoices

PROPOSALS_PER_SLOT = 8  # moves drawn per fully scored trial; the proxy picks one
DEFAULT_ALPHA = 0.05  # mAP per unit of omega until three scored designs fit it (recipes come first)
LATENCY_SEED_TOP = 0.9  # latency seeds go up to this share of the base's predicted latency
CHEAPEN_PROBABILITY = 0.5
CHEAPEN_PROBABILITY_WITH_FLOOR = 0.75  # an accuracy floor asks for the smallest designs above it
MIB = 1024 * 1024
PLAN_ATTR = "guided_plan"  # study attr: the designs to score first, in order (recipes, seeds, floor seeds)
FLOOR_PLANNED_ATTR = "floor_seeded"  # study attr: the accuracy floor's seeds were planned
LEGACY_SEEDED_ATTR = "seeded"  # runs before the sampler queued their recipes and seeds as waiting trials


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
        for trial in studies.searched_trials(study, states=(TrialState.COMPLETE,)):
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

    def floor_proposals(self, study: optuna.Study) -> list[Proposal]:
        """With an accuracy floor: floor_seeds from the model fitted on the scored designs, those not tried."""
        alpha, intercept = fit_accuracy_model(self.scored(study), DEFAULT_ALPHA, self.base["map50_95"])
        seen = _designs_tried(study)
        return [Proposal(candidate, origin, predicted={"omega": self.omega(candidate)})
                for origin, candidate in self.floor_seeds(alpha, intercept) if candidate_key(candidate) not in seen]

    def move(self, study: optuna.Study) -> Proposal | None:
        """Draw moves from the current front, screen them, store all but the best as screened and
        return the best. None when nothing can be proposed yet (no scored design, or no new move)."""
        scored = self.scored(study)
        if not scored:
            return None
        numbers = {t.number for t in studies.pareto_trials(study)}
        front = [s for s in scored if s.number in numbers] or scored
        alpha, _ = fit_accuracy_model(scored, DEFAULT_ALPHA, self.base["map50_95"])
        floor = self.budgets.get("map_floor")
        seen = _designs_tried(study)
        # with a floor, a slot whose draws all fall below it is drawn again from restoring moves only
        # (they raise the predicted mAP), and is left empty if those fall below it too: such moves are not spent
        cheapens = (CHEAPEN_PROBABILITY_WITH_FLOOR, 0.0) if floor is not None else (CHEAPEN_PROBABILITY,)
        for cheapen in cheapens:
            moves = self._draw(front, alpha, cheapen, seen)
            if not moves:
                continue
            screened_best = screen(moves, front, self.reference, floor)
            below = floor is not None and moves[screened_best].predicted["map50_95"] < floor
            best = None if below else screened_best
            proposals = [Proposal(Candidate(move.layers).to_json(), f"move: {move.describe()}",
                                  predicted=dict(move.predicted, alpha=alpha)) for move in moves]
            for index, proposal in enumerate(proposals):
                if index != best:
                    studies.record_screened(study, proposal)
            if best is not None:
                return proposals[best]
        return None

    def _draw(self, front: list[Scored], alpha: float, cheapen: float, seen: set[str]) -> list:
        """Up to PROPOSALS_PER_SLOT new moves from random front designs (draws repeating a design in
        `seen`, which grows, are skipped)."""
        moves = []
        for _ in range(PROPOSALS_PER_SLOT * 4):
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
        return moves


class GuidedSampler(studies.DesignSampler):
    """The guided search as an Optuna sampler (see the module's docstring). `space`: {layer: {knob:
    values}}, the values a trial's parameter may take (the search space and what the recipes use)."""

    def __init__(self, guide: Guide, space: dict[str, dict[str, list]], seed: int):
        self.guide, self.space = guide, space
        self._independent = optuna.samplers.RandomSampler(seed=seed)  # parameters no design of ours set
        self._prepared: Proposal | None = None
        # trial number -> its design and that design's parameters (_parameters), until `design` records it
        self._chosen: dict[int, tuple[Proposal, dict[str, tuple[object, CategoricalDistribution]]]] = {}

    def plan(self, study: optuna.Study, recipes: dict[str, Candidate], seed_count: int) -> None:
        """Write the designs a new study scores first: the recipes, then `seed_count` budgeted seeds."""
        if PLAN_ATTR in study.user_attrs or study.user_attrs.get(LEGACY_SEEDED_ATTR):
            return
        plan = []
        for name, recipe in recipes.items():
            design = recipe.to_json()
            plan.append(Proposal(design, f"recipe: {name}", predicted={"omega": self.guide.omega(design)}, recipe=name))
        plan += [Proposal(candidate, origin, predicted={"omega": self.guide.omega(candidate)})
                 for origin, candidate in self.guide.seeds(recipes, seed_count)]
        study.set_user_attr(PLAN_ATTR, [dataclasses.asdict(p) for p in plan])

    def prepare(self, study: optuna.Study) -> bool:
        if self._prepared is None:
            self._prepared = self._next(study)
        return self._prepared is not None

    def _next(self, study: optuna.Study) -> Proposal | None:
        """The first design of the plan that no trial carries yet, else the floor's seeds (planned once,
        when designs are scored to fit the accuracy model on), else a screened move."""
        while (proposal := self._due(study)) is not None:
            predicted = self._below_floor(study, proposal)
            if predicted is None:
                return proposal
            studies.record_screened(study, dataclasses.replace(proposal, predicted=predicted))  # not spent
        if self.guide.budgets.get("map_floor") is not None and not study.user_attrs.get(FLOOR_PLANNED_ATTR):
            if not self.guide.scored(study):
                return None
            extra = self.guide.floor_proposals(study)
            study.set_user_attr(PLAN_ATTR, study.user_attrs.get(PLAN_ATTR, []) + [dataclasses.asdict(p) for p in extra])
            study.set_user_attr(FLOOR_PLANNED_ATTR, True)
            if extra:
                return extra[0]
        return self.guide.move(study)

    def _below_floor(self, study: optuna.Study, proposal: Proposal) -> dict | None:
        """A planned seed's predicted scores when the accuracy model fitted on the scored designs puts it
        below the accuracy floor (it is then not spent); None for recipes (the reference points), without
        a floor, or before three scored designs fit the model."""
        floor, scored = self.guide.budgets.get("map_floor"), self.guide.scored(study)
        if floor is None or not proposal.origin.startswith("seed:") or len({s.omega for s in scored}) < 3:
            return None
        alpha, intercept = fit_accuracy_model(scored, DEFAULT_ALPHA, self.guide.base["map50_95"])
        omega = self.guide.omega(proposal.candidate)
        predicted = intercept - alpha * omega
        return {"omega": omega, "map50_95": predicted, "alpha": alpha} if predicted < floor else None

    @staticmethod
    def _due(study: optuna.Study) -> Proposal | None:
        carried = {(t.user_attrs.get(studies.ORIGIN_ATTR), candidate_key(t.user_attrs[studies.CANDIDATE_ATTR]))
                   for t in study.get_trials(deepcopy=False) if studies.CANDIDATE_ATTR in t.user_attrs}
        for entry in study.user_attrs.get(PLAN_ATTR, []):
            if (entry["origin"], candidate_key(entry["candidate"])) not in carried:
                return Proposal(**entry)
        return None

    def _parameters(self, proposal: Proposal) -> dict[str, tuple[object, CategoricalDistribution]]:
        """{"layer|knob": (value, distribution)} for each knob the design changes from no change."""
        parameters = {}
        for layer, knobs in proposal.candidate["layers"].items():
            for knob, value in knobs.items():
                choices = self.space.get(layer, {}).get(knob, [])
                if value != DEFAULTS[knob] and value in choices:
                    parameters[f"{layer}|{knob}"] = (value, CategoricalDistribution(choices))
        return parameters

    # Optuna's sampler interface: before_trial chooses the design, sample_relative gives its values

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if studies.CANDIDATE_ATTR in trial.user_attrs:  # queued with its design: an interrupted trial's retry
            return
        proposal, self._prepared = self._prepared or self._next(study), None
        if proposal is not None:
            self._chosen[trial.number] = (proposal, self._parameters(proposal))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        _, parameters = self._chosen.get(trial.number, (None, {}))
        return {name: distribution for name, (_, distribution) in parameters.items()}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, object]:
        _, parameters = self._chosen.get(trial.number, (None, {}))
        return {name: value for name, (value, _) in parameters.items() if name in search_space}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> object:
        return self._independent.sample_independent(study, trial, param_name, param_distribution)

    def design(self, trial: Trial) -> dict | None:
        if trial.number not in self._chosen:
            return None
        proposal, parameters = self._chosen[trial.number]
        for name, (_, distribution) in parameters.items():
            trial.suggest_categorical(name, distribution.choices)  # the value sample_relative gives
        for key, value in proposal.user_attrs().items():
            trial.set_user_attr(key, value)
        del self._chosen[trial.number]  # only now: the suggestions above read it (sample_relative)
        return proposal.candidate
