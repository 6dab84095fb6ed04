"""The guided search, as an Optuna sampler: recipes first, then budgeted seeds, then screened few-layer moves.

1. Recipes (recipes.py): what a user would otherwise apply, as reference points.
2. Seeds: least-omega designs at budgets spread between the smallest and the largest recipe's
   SRAM, and at latency budgets from the fastest allocated design to 0.9x the base's predicted latency,
   from the multiple-choice knapsack of allocate.py over the per-layer option tables. They are planned
   once the structural recipes (scored right after the control) are in, so that the tables price a
   cut at what the recipes' fine-tunes kept of it.
3. Moves (moves.py): 1-3 layers of a front design changed, several drawn per slot, the one the
   proxy predicts adds most hypervolume scored in full, the others stored as screened. The front is
   that of the designs within the space: a recipe outside it (int8 in a float-only space) is a
   reference point, neither a parent nor what a move is screened against. With an accuracy floor,
   the front of the designs held to every budget but the floor also gives parents (for moves that
   restore a design the fine-tune left just short of it).

The accuracy model (moves.fit_accuracy_model) is fitted on the scored designs as they come in,
and also learns what share of a structural change's one-shot loss survives the fine-tune; the
option tables are re-priced with that share, so structure is offered at what it cost the trials.

With an accuracy floor, the floor's seeds are the smallest and the fastest designs the accuracy model
puts at the floor, and are always scored. Any other seed, or a move, that the accuracy model predicts
below the floor is not spent: it is stored as screened, with its prediction (a slot whose every move
falls below is drawn again from restoring moves, then left empty).

The sensitivity table the option tables come from may still be computing when the run starts
(search/analysis.start_sensitivity): the recipes need no prices and are proposed at once; the
seeds, the floor's seeds and the moves wait for the table.

GuidedSampler is an Optuna sampler (optuna.samplers.BaseSampler): each new trial gets the next design
of this order, as its parameters ("layer|knob" for the knobs the design changes, so Optuna's own
tools see them) and as its user attributes (the design, its origin, its predicted scores). The study
is the one truth: the recipes and seeds are planned once, in a study attribute, and a design of the
plan is due until a trial of the study carries it; moves start from the study's scored trials. So a
resumed run, another process or `study.optimize` carries on where the study is.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from edgesearch.search import study as studies
from edgesearch.search.allocate import allocate, budget_sweep, design_price
from edgesearch.search.flops_count import Interaction
from edgesearch.search.moves import (
    RESOURCES,
    AccuracyModel,
    Scored,
    fit_accuracy_model,
    fit_recovered_scale,
    floor_prediction,
    layer_fronts,
    propose,
    screen,
)
from edgesearch.search.options import Option, OptionPricer, in_space, layer_options
from edgesearch.search.recovery import FEWEST_FLOPS_SEED, FLOPS_ROUND_KEY, recovered_references
from edgesearch.search.study import Proposal
from edgesearch.spaces.candidate import Candidate, LayerKnobs
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
# study attr: the floor's seeds priced after recovery (structure at the recovered scale) were planned
RECOVERED_FLOOR_PLANNED_ATTR = "floor_seeded_after_recovery"
FLOOR_SEED_WORDS = "within the accuracy floor"  # in the origin of the floor's seeds, after what they minimise
SEEDS_DUE_ATTR = "seeds_due"  # study attr: budgeted seeds still to plan once the tables are in (their count)
LEGACY_SEEDED_ATTR = "seeded"  # runs before the sampler queued their recipes and seeds as waiting trials
FLOPS_TIE = 1e-6  # designs within this share of the fewest FLOPs count as having them (the floor's FLOPs seed)
# the fewest-FLOPs seed after recovery is planned at these shares of the omega the floor allows: at the floor,
# where a prediction a hair optimistic lands it under (three such seeds of the default model recovered to
# 0.942-0.948 of the control against a 0.95 floor), and at half, with a margin that error does not eat (the
# most accurate design with 5.2x fewer FLOPs, predicted 0.021 above the floor, recovered to 0.974). Recovered,
# the two bracket the floor; the rounds after the stage narrow that bracket (recovery.next_flops_budgets)
FLOPS_SEED_SHARES = (1.0, 0.5)
RESCALE_TOLERANCE = 0.05  # the tables are re-priced when the fitted structural scale moves by more than this share


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
        self.choices = {layer: resolved[layer].choices for layer in resolved}
        self.offsets = {"latency_ms": pricer.basis["fixed_ms"]}
        self._price_tables()
        self.rng = np.random.default_rng(seed)
        # the hypervolume reference: the base's SRAM and latency x 1.1, mAP 0 (as the benchmark)
        self.reference = (0.0, base["sram_bytes"] * 1.1, base["latency_ms"] * 1.1)

    def _price_tables(self) -> None:
        """Each layer's option table, and its trade-off per resource, at the pricer's structural scale."""
        self.tables = {layer: layer_options(self.pricer, layer, choices) for layer, choices in self.choices.items()}
        self.interactions = self.pricer.interactions(self.tables)  # what adjacent cuts remove twice
        self.fronts = {resource: layer_fronts(self.tables, resource) for resource in RESOURCES
                       if self._varies(resource)}

    def memory_word(self) -> str:
        """What the memory figure is called in seed names: SRAM where the budget is on-chip, else the
        footprint (weights + planned activations), which a DRAM device holds with room to spare."""
        return "SRAM" if self.budgets.get("memory_kind", "sram") == "sram" else "footprint"

    def _varies(self, resource: str) -> bool:
        values = {round(sum(o.price(p) for p in RESOURCES[resource]), 9) for options in self.tables.values()
                  for o in options}
        return len(values) > len(self.tables)

    def in_space(self, layers: dict[str, LayerKnobs]) -> bool:
        """Whether every changed layer is searchable and its knobs among the space's choices for it."""
        return all(layer in self.choices and in_space(knobs, self.choices[layer]) for layer, knobs in layers.items())

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
            fastest = allocate(self.tables, {}, minimise="latency_ms", interactions=self.interactions)
            assert fastest is not None
            low = design_price(fastest, "latency_ms", self.offsets, self.interactions) * 1.001
            high = max(low, LATENCY_SEED_TOP * self.pricer.design({})["latency_ms"])
            for limit, design in budget_sweep(self.tables, low, high, count - sram_points, budget="latency_ms",
                                              offsets=self.offsets, interactions=self.interactions):
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
            prices = self.pricer.design(layers)
            result.append(Scored(trial.number, layers, scores["map50_95"], scores["sram_bytes"], scores["latency_ms"],
                                 prices["omega"], prices["structural_loss"],
                                 bool(scores.get("training", {}).get("stopped_early"))))
        return result

    def accuracy_model(self, study: optuna.Study) -> tuple[list[Scored], AccuracyModel]:
        """The scored designs and the accuracy model fitted on them; when the fitted structural scale
        differs from the pricer's, the option tables are re-priced with it first (and the designs with them)."""
        scored = self.scored(study)
        model = fit_accuracy_model(scored, DEFAULT_ALPHA, self.base["map50_95"], self.pricer.structural_scale)
        if abs(model.structural_scale - self.pricer.structural_scale) > RESCALE_TOLERANCE * self.pricer.structural_scale:
            self.pricer.structural_scale = model.structural_scale
            self._price_tables()
            scored = self.scored(study)
        references = [(self.pricer.design(Candidate.from_json(candidate).layers)["structural_loss"], drop)
                      for candidate, drop in recovered_references(study)]
        if references and model.designs:
            model = dataclasses.replace(model, recovered_scale=fit_recovered_scale(references, model.alpha))
        return scored, model

    def floor_seeds(self, model: AccuracyModel, recovered: bool = False) -> list[tuple[str, dict, float]]:
        """With an accuracy floor: (origin, candidate JSON, omega budget) of the smallest and the fastest
        designs whose predicted mAP (intercept - alpha x omega, fitted on the scored designs) stays above
        it; `recovered`: with structure priced as the recovery leaves it (model.recovered_scale), the
        designs the floor keeps after their recovery, and the fewest FLOPs at each of FLOPS_SEED_SHARES
        of the floor's budget (the first bracket of the fewest-FLOPs rounds: fewest_flops_proposals)."""
        alpha = model.alpha
        allowed = (model.intercept - self.budgets["map_floor"]) / alpha
        if allowed <= 0:
            return []
        tables, interactions, words = self.tables, self.interactions, _scale_words(model)
        if recovered:
            tables, interactions = self._recovered_tables(model)
            words = f", structure at {model.recovered_scale:.2g} of its one-shot loss after recovery"
        designs = []
        plans = [("sram_bytes", f"least {self.memory_word()}", 1.0), ("latency_ms", "least latency", 1.0)]
        if recovered:  # after recovery also the fewest FLOPs: what structure removes, which int8 (least latency) does not
            plans += [("flops", FEWEST_FLOPS_SEED.removeprefix("seed: "), share) for share in FLOPS_SEED_SHARES]
        for price, what, share in plans:
            if price == "latency_ms" and "latency_ms" not in self.fronts:
                continue
            budget = allowed * share
            if price == "flops":
                design = self._fewest_flops(tables, interactions, budget)
            else:
                design = allocate(tables, {"omega": budget}, minimise=price, offsets=self.offsets,
                                  interactions=interactions)
            if design is not None:
                candidate = Candidate({layer: option.knobs for layer, option in design.items()}).to_json()
                margin = f", {share:g} of the {allowed:.4g} it allows: a margin for the prediction" if share < 1 else ""
                designs.append((f"seed: {what} {FLOOR_SEED_WORDS}{' after recovery' if recovered else ''} "
                                f"(omega <= {budget:.4g}{margin}, alpha {alpha:.3g}{words})", candidate, budget))
        return designs

    def _recovered_pricer(self, model: AccuracyModel) -> OptionPricer:
        """The pricer with structure at model.recovered_scale (what the recovery leaves of a cut)."""
        assert model.recovered_scale is not None
        pricer = copy.copy(self.pricer)
        pricer.structural_scale = model.recovered_scale
        return pricer

    def _recovered_tables(self, model: AccuracyModel) -> tuple[dict[str, list[Option]], list[Interaction]]:
        """The option tables and their interactions with structure priced at model.recovered_scale."""
        pricer = self._recovered_pricer(model)
        tables = {layer: layer_options(pricer, layer, choices) for layer, choices in self.choices.items()}
        return tables, pricer.interactions(tables)

    def _fewest_flops(self, tables: dict[str, list[Option]], interactions: Sequence[Interaction],
                      budget: float) -> dict[str, Option] | None:
        """The design with the fewest FLOPs within an omega budget and, of those with them, the least omega."""
        design = allocate(tables, {"omega": budget}, minimise="flops", offsets=self.offsets, interactions=interactions)
        if design is None:
            return None
        least = design_price(design, "flops", interactions=interactions) * (1 + FLOPS_TIE)
        return allocate(tables, {"omega": budget, "flops": least}, interactions=interactions) or design

    def floor_proposals(self, study: optuna.Study, recovered: bool = False) -> list[Proposal]:
        """With an accuracy floor: floor_seeds from the model fitted on the scored designs, those not
        tried, with their predicted scores (after recovery too, where the model knows it) and the omega
        budget each was planned at."""
        _, model = self.accuracy_model(study)
        seen = _designs_tried(study)
        proposals = []
        for origin, candidate, budget in self.floor_seeds(model, recovered):
            if candidate_key(candidate) not in seen:  # two prices may pick one design: it is scored once
                seen.add(candidate_key(candidate))
                proposals.append(Proposal(candidate, origin, predicted=dict(self.predicted(model, candidate),
                                                                            omega_budget=budget)))
        return proposals

    def recovered_omega(self, study: optuna.Study) -> Callable[[dict], float] | None:
        """A design's (candidate JSON) omega with structure priced as the recovery leaves it, by the
        model fitted on the study now; None before the recovered references fit that price."""
        _, model = self.accuracy_model(study)
        if model.recovered_scale is None:
            return None
        pricer = self._recovered_pricer(model)
        return lambda candidate: pricer.design(Candidate.from_json(candidate).layers)["omega"]

    def fewest_flops_proposals(self, study: optuna.Study, budgets: list[float], round_number: int,
                               bracket: str) -> list[Proposal]:
        """A round of the fewest-FLOPs seeds after recovery (search/loop.py, recovery.next_flops_budgets):
        the fewest-FLOPs design at each omega budget, priced as the recovery leaves structure, those not
        tried. `bracket`: where the budgets come from, in words, for their origin."""
        _, model = self.accuracy_model(study)
        if model.recovered_scale is None:
            return []
        tables, interactions = self._recovered_tables(model)
        seen = _designs_tried(study)
        proposals = []
        for budget in budgets:
            design = self._fewest_flops(tables, interactions, budget)
            if design is None:
                continue
            candidate = Candidate({layer: option.knobs for layer, option in design.items()}).to_json()
            if candidate_key(candidate) in seen:
                continue
            seen.add(candidate_key(candidate))
            origin = (f"{FEWEST_FLOPS_SEED} {FLOOR_SEED_WORDS} after recovery (omega <= {budget:.4g}, round "
                      f"{round_number}: {bracket}, alpha {model.alpha:.3g}, structure at "
                      f"{model.recovered_scale:.2g} of its one-shot loss after recovery)")
            proposals.append(Proposal(candidate, origin, predicted=dict(
                self.predicted(model, candidate), omega_budget=budget, **{FLOPS_ROUND_KEY: round_number})))
        return proposals

    def predicted(self, model: AccuracyModel, candidate: dict) -> dict:
        """A planned design's omega and the mAP50-95 the model predicts for it: after the fine-tune,
        and after the recovery stage where the design changes structure and the run recovers it."""
        prices = self.pricer.design(Candidate.from_json(candidate).layers)
        predicted: dict = {"omega": prices["omega"], "map50_95": model.predict(prices["omega"]), "alpha": model.alpha,
                           "structural_scale": model.structural_scale}
        recovered = model.recovered(predicted["map50_95"], prices["structural_loss"])
        if recovered is not None:
            predicted.update(map50_95_recovered=recovered, recovered_scale=model.recovered_scale)
        return predicted

    def move(self, study: optuna.Study) -> Proposal | None:
        """Draw moves from the current front, screen them, store all but the best as screened and
        return the best. None when nothing can be proposed yet (no scored design, or no new move)."""
        scored, model = self.accuracy_model(study)
        if not scored:
            return None
        # moves start from the front of the designs in the space and are screened against it, so that
        # what the search proposes stays in the space and improves its own front: a recipe outside it (int8
        # in a float-only space) is a reference point, not a parent whose knobs its children would carry
        within = {s.number: s for s in scored if self.in_space(s.layers)}
        front = [within[t.number] for t in studies.pareto_trials(study, among=set(within))]
        floor = self.budgets.get("map_floor")
        parents = front
        if floor is not None:
            # a design just under the floor (its own seed, say, which the fine-tune left short) is where
            # restoring moves start: a move is predicted from its parent's mAP, so its cheapening moves
            # fall below the floor and are not spent
            near = studies.pareto_trials(study, among=set(within), ignoring=(studies.FLOOR_CONSTRAINT,))
            on_front = {design.number for design in front}
            parents = front + [within[t.number] for t in near if t.number not in on_front]
        if not parents:
            return None
        seen = _designs_tried(study)
        # with a floor, a slot whose draws all fall below it is drawn again from restoring moves only
        # (they raise the predicted mAP), and is left empty if those fall below it too: such moves are not spent
        cheapens = (CHEAPEN_PROBABILITY_WITH_FLOOR, 0.0) if floor is not None else (CHEAPEN_PROBABILITY,)
        for cheapen in cheapens:
            moves = self._draw(parents, model, cheapen, seen)
            if not moves:
                continue
            screened_best = screen(moves, front, self.reference, floor)
            below = floor is not None and floor_prediction(moves[screened_best].predicted) < floor
            best = None if below else screened_best
            proposals = [Proposal(Candidate(move.layers).to_json(), f"move: {move.describe()}",
                                  predicted=dict(move.predicted, alpha=model.alpha,
                                                 structural_scale=model.structural_scale,
                                                 structural_designs=model.structural_designs,
                                                 **_recovered_scale_attr(move.predicted, model)))
                         for move in moves]
            for index, proposal in enumerate(proposals):
                if index != best:
                    studies.record_screened(study, proposal)
            if best is not None:
                return proposals[best]
        return None

    def _draw(self, parents: list[Scored], model: AccuracyModel, cheapen: float, seen: set[str]) -> list:
        """Up to PROPOSALS_PER_SLOT new moves from random `parents` (draws repeating a design in
        `seen`, which grows, are skipped)."""
        moves = []
        for _ in range(PROPOSALS_PER_SLOT * 4):
            parent = parents[self.rng.integers(len(parents))]
            move = propose(parent, self.fronts, self.pricer, model, self.rng, cheapen_probability=cheapen)
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


def _structural_recipes_in_flight(study: optuna.Study) -> bool:
    """Whether a recipe that changes structure is started and not yet scored (nor failed)."""
    return any(t.user_attrs.get(studies.RECIPE_ATTR) and studies.changes_structure(t)
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)))


def pricing_text(study: optuna.Study) -> str:
    """How the last move priced structure, for the run's summary ("" before any move fitted a scale)."""
    for trial in reversed(study.get_trials(deepcopy=False)):
        predicted = trial.user_attrs.get(studies.PREDICTED_ATTR) or {}
        if predicted.get("structural_designs"):
            recovered = next((p["recovered_scale"] for t in reversed(study.get_trials(deepcopy=False))
                              if "recovered_scale" in (p := t.user_attrs.get(studies.PREDICTED_ATTR) or {})), None)
            after = (f"; after the recovery stage, at {recovered:.2g} x, fitted on the recovered structural recipes "
                     "(the accuracy floor judges structural designs there)" if recovered is not None else "")
            return (f"structural changes priced at {predicted['structural_scale']:.2g} x their one-shot loss on the "
                    f"base, fitted on the {predicted['structural_designs']} scored design(s) with structure "
                    f"(mAP50-95 {predicted['alpha']:.3g} per unit of omega){after}")
    return ""


def _recovered_scale_attr(predicted: dict, model: AccuracyModel) -> dict:
    """The recovered scale beside a prediction after recovery, so a trial's record says how it was priced."""
    return {"recovered_scale": model.recovered_scale} if "map50_95_recovered" in predicted else {}


def _scale_words(model: AccuracyModel) -> str:
    if not model.structural_designs:
        return ""
    return f", structure at {model.structural_scale:.2g} of its one-shot loss"


class GuidedSampler(studies.DesignSampler):
    """The guided search as an Optuna sampler (see the module's docstring). `guide`: the Guide, or a
    future of the sensitivity table and a function making the Guide from it (analysis.start_sensitivity).
    `space`: {layer: {knob: values}}, the values a trial's parameter may take (the search space and
    what the recipes use)."""

    def __init__(self, guide: Guide | tuple[Future, Callable[[dict], Guide]], space: dict[str, dict[str, list]],
                 seed: int):
        self._guide: Guide | None = guide if isinstance(guide, Guide) else None
        self._pending: tuple[Future, Callable[[dict], Guide]] | None = None if isinstance(guide, Guide) else guide
        self.space = space
        self.recipes: dict[str, Candidate] = {}
        self._independent = optuna.samplers.RandomSampler(seed=seed)  # parameters no design of ours set
        self._prepared: Proposal | None = None
        # trial number -> its design and that design's parameters (_parameters), until `design` records it
        self._chosen: dict[int, tuple[Proposal, dict[str, tuple[object, CategoricalDistribution]]]] = {}
        self.table_seconds: float | None = None  # how long the sensitivity table took, once in
        self._late_done = False  # _predict_late ran

    @property
    def guide(self) -> Guide:
        """The Guide, waiting for the sensitivity table if it is still computing (raises its error)."""
        if self._guide is None:
            self._make_guide()
        assert self._guide is not None
        return self._guide

    def _make_guide(self) -> None:
        assert self._pending is not None
        table, self.table_seconds = self._pending[0].result()
        self._guide = self._pending[1](table)

    def ready(self) -> bool:
        """Whether the option tables are in (or the table is, so that the Guide is made at once)."""
        return self._guide is not None or (self._pending is not None and self._pending[0].done())

    def busy_slots(self) -> int:
        """Trial slots the sensitivity pass holds while it computes beside the trials (one)."""
        return 0 if self.ready() else 1

    def wait(self) -> bool:
        """Block until the option tables are in; False when they already were (nothing to wait for)."""
        if self._guide is not None:
            return False
        self._make_guide()
        return True

    def plan(self, study: optuna.Study, recipes: dict[str, Candidate], seed_count: int) -> None:
        """Write the designs a new study scores first: the recipes, then `seed_count` budgeted seeds
        (planned when the option tables are in: `_next`)."""
        self.recipes = recipes
        if PLAN_ATTR in study.user_attrs or study.user_attrs.get(LEGACY_SEEDED_ATTR):
            return
        plan = [Proposal(recipe.to_json(), f"recipe: {name}", predicted=self._omega(recipe.to_json()), recipe=name)
                for name, recipe in recipes.items()]
        study.set_user_attr(SEEDS_DUE_ATTR, seed_count)
        study.set_user_attr(PLAN_ATTR, [dataclasses.asdict(p) for p in plan])

    def _omega(self, candidate: dict) -> dict:
        """{"omega": the design's predicted accuracy cost}, or {} while the tables are not in."""
        return {"omega": self.guide.omega(candidate)} if self.ready() else {}

    def prepare(self, study: optuna.Study) -> bool:
        if self._prepared is None:
            self._prepared = self._next(study)
        return self._prepared is not None

    def _next(self, study: optuna.Study) -> Proposal | None:
        """The first design of the plan that no trial carries yet; then (once the option tables are
        in) the budgeted seeds, the floor's seeds (planned once, when designs are scored to fit the
        accuracy model on), else a screened move."""
        while (proposal := self._due(study)) is not None:
            predicted = self._below_floor(study, proposal)
            if predicted is None:
                return proposal
            studies.record_screened(study, dataclasses.replace(proposal, predicted=predicted))  # not spent
        if not self.ready():
            return None  # the loop waits for the table, or for a trial
        self._predict_late(study)
        if study.user_attrs.get(SEEDS_DUE_ATTR):
            if _structural_recipes_in_flight(study):
                return None  # the loop waits for a trial: their scores fit the structural scale first
            self.guide.accuracy_model(study)  # re-prices the tables where the scored designs fit a structural scale
            seeds = [Proposal(candidate, origin, predicted=self._omega(candidate))
                     for origin, candidate in self.guide.seeds(self.recipes, study.user_attrs[SEEDS_DUE_ATTR])]
            self._extend_plan(study, seeds)
            study.set_user_attr(SEEDS_DUE_ATTR, 0)
            return self._next(study)
        if self.guide.budgets.get("map_floor") is not None and not study.user_attrs.get(FLOOR_PLANNED_ATTR):
            if not self.guide.scored(study):
                return None
            extra = self.guide.floor_proposals(study)
            self._extend_plan(study, extra)
            study.set_user_attr(FLOOR_PLANNED_ATTR, True)
            if extra:
                return extra[0]
        # the model is fitted here only once recovered references exist (a floor run without a recovery
        # stage would otherwise fit it twice for every design it proposes: here and in the move)
        if (self.guide.budgets.get("map_floor") is not None and not study.user_attrs.get(RECOVERED_FLOOR_PLANNED_ATTR)
                and recovered_references(study) and self.guide.accuracy_model(study)[1].recovered_scale is not None):
            extra = self.guide.floor_proposals(study, recovered=True)  # once the recovered references are in
            self._extend_plan(study, extra)
            study.set_user_attr(RECOVERED_FLOOR_PLANNED_ATTR, True)
            if extra:
                return extra[0]
        return self.guide.move(study)

    def _predict_late(self, study: optuna.Study) -> None:
        """The predicted omega of trials begun before the table was in (the first recipes), once."""
        if self._late_done:
            return
        late = dict(study.user_attrs.get(studies.LATE_PREDICTED_ATTR, {}))
        for trial in study.get_trials(deepcopy=False):
            predicted = trial.user_attrs.get(studies.PREDICTED_ATTR)
            if predicted == {} and str(trial.number) not in late and studies.CANDIDATE_ATTR in trial.user_attrs:
                late[str(trial.number)] = {"omega": self.guide.omega(trial.user_attrs[studies.CANDIDATE_ATTR])}
        if late:
            study.set_user_attr(studies.LATE_PREDICTED_ATTR, late)
        self._late_done = True

    @staticmethod
    def _extend_plan(study: optuna.Study, proposals: list[Proposal]) -> None:
        study.set_user_attr(PLAN_ATTR, study.user_attrs.get(PLAN_ATTR, []) + [dataclasses.asdict(p) for p in proposals])

    def _below_floor(self, study: optuna.Study, proposal: Proposal) -> dict | None:
        """A planned seed's predicted scores when the accuracy model fitted on the scored designs puts it
        below the accuracy floor (it is then not spent); None for recipes (the reference points), for the
        floor's own seeds, without a floor, or before three scored designs fit the model.

        The floor's seeds are aimed at the floor: they are what tells the search where it lies, and a
        refit between their planning and their turn moves their prediction by a hair either way (in runs
        F4-F6 and both other-family runs the least-latency one was predicted 0.0002 under the floor at its
        turn, so it was never scored)."""
        if (not proposal.origin.startswith("seed:") or FLOOR_SEED_WORDS in proposal.origin
                or self.guide.budgets.get("map_floor") is None):
            return None
        _, model = self.guide.accuracy_model(study)
        if not model.designs:
            return None
        predicted = self.guide.predicted(model, proposal.candidate)
        return predicted if floor_prediction(predicted) < self.guide.budgets["map_floor"] else None

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
