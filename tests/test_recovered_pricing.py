"""Pricing that knows the recovery stage (issue 19, item 2): with an accuracy floor and --recover-steps,
the references are recovered during the search, their recovered losses fit what a cut costs after
recovery, and the floor judges structural moves, seeds and the designs recovered by that figure."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from edgesearch.search import study as studies
from edgesearch.search.moves import AccuracyModel, Move, fit_recovered_scale, floor_prediction, screen
from edgesearch.search.recipes import CONTROL
from edgesearch.search.recovery import (
    FEWEST_FLOPS_SEED,
    RESULTS_ATTR,
    choose_sources,
    recovered_references,
    references_due,
)
from tests.test_search import BASE, _five_layer_tables

FLOOR = 0.70


def test_the_recovered_scale_is_what_the_recovered_recipes_lost_per_unit_of_their_cut_and_the_floor_reads_it():
    # lost 0.005 mAP per unit of one-shot loss after recovery, at 0.05 mAP per unit of omega: 0.1 of the cut
    assert fit_recovered_scale([(4.0, 0.02), (8.0, 0.04)], alpha=0.05) == pytest.approx(0.1)
    assert fit_recovered_scale([(4.0, -0.01), (8.0, 0.0)], alpha=0.05) == 0.01  # no loss: the scale's least
    assert fit_recovered_scale([(0.0, 0.02)], alpha=0.05) is None  # no recipe with structure
    model = AccuracyModel(alpha=0.05, intercept=0.72, structural_scale=0.25, recovered_scale=0.05)
    # a cut of one-shot loss 10 costs 0.25 x 10 x 0.05 after the fine-tune, 0.05 x 10 x 0.05 after recovery
    assert model.recovered(0.60, 10.0) == pytest.approx(0.60 + 0.05 * 0.20 * 10.0)
    assert model.recovered(0.60, 0.0) is None  # nothing to recover
    assert AccuracyModel(alpha=0.05, intercept=0.72).recovered(0.60, 10.0) is None  # no recovered references yet
    # the screen holds a structural move to its recovered prediction, any other to its fine-tune's
    front_point = [type("S", (), {"map50_95": 0.72, "sram_bytes": 10.0, "latency_ms": 10.0})()]
    cut = Move(0, {}, [], "cheapen", "latency_ms", {"map50_95": 0.55, "map50_95_recovered": 0.71,
                                                    "sram_bytes": 5.0, "latency_ms": 2.0})
    deep = Move(0, {}, [], "cheapen", "latency_ms", {"map50_95": 0.58, "map50_95_recovered": 0.65,
                                                     "sram_bytes": 5.0, "latency_ms": 1.0})
    int4 = Move(0, {}, [], "cheapen", "latency_ms", {"map50_95": 0.69, "sram_bytes": 4.0, "latency_ms": 3.0})
    assert [floor_prediction(m.predicted) for m in (cut, deep, int4)] == [0.71, 0.65, 0.69]
    assert screen([deep, int4, cut], front_point, (0.0, 11.0, 11.0), map_floor=FLOOR) == 2


def _add(study, layers: dict, map50_95: float, *, recipe: str | None = None, predicted: dict | None = None,
         latency_ms: float = 1.0, floor: float | None = None, origin: str = "test") -> int:
    scores = {"map50_95": map50_95, "sram_bytes": 1.0, "latency_ms": latency_ms}
    attrs = {studies.SCORE_ATTR: scores, studies.CANDIDATE_ATTR: {"layers": layers}, studies.ORIGIN_ATTR: origin}
    attrs.update({studies.RECIPE_ATTR: recipe} if recipe else {})
    attrs.update({studies.PREDICTED_ATTR: predicted} if predicted else {})
    trial = optuna.trial.create_trial(values=[map50_95, latency_ms, 1.0], user_attrs=attrs)
    for name, value in studies.constraint_values(scores, {"map_floor": floor}).items():
        trial.set_constraint(name, value)
    study.add_trial(trial)
    return study.trials[-1].number


def _references_study(layers: list[str], pricer) -> tuple[optuna.Study, dict[str, int]]:
    """The control, two int8 designs and two structural recipes, scored as if the fine-tune kept a
    quarter of each cut's one-shot loss (mAP 0.05 per unit of omega)."""
    from edgesearch.spaces.candidate import Candidate

    study = optuna.create_study(directions=list(studies.DIRECTIONS))
    int8 = {"weight_bits": 8, "scheme": "symmetric"}
    designs = {CONTROL: {}, "int8 one": {layers[0]: int8}, "int8 two": {lay: int8 for lay in layers[:2]},
               "cut one": {layers[4]: {"prune_ratio": 0.5}}, "cut all": {lay: {"prune_ratio": 0.5} for lay in layers}}
    numbers = {}
    for name, changed in designs.items():
        price = pricer.design(Candidate.from_json({"layers": changed}).layers)
        map50_95 = 0.72 - 0.05 * (price["omega"] - 0.75 * price["structural_loss"])
        recipe = name if name == CONTROL or name.startswith("cut") else None
        numbers[name] = _add(study, changed, map50_95, recipe=recipe)
    return study, numbers


def _recovered(study, numbers: dict[str, int], pricer, scale: float) -> None:
    """Keep recoveries of the references as the loop does: the control at 0.80, the cuts losing `scale`
    of their one-shot loss (x 0.05 mAP per unit)."""
    from edgesearch.spaces.candidate import Candidate

    kept = {}
    for name in (CONTROL, "cut one", "cut all"):
        trial = study.trials[numbers[name]]
        loss = pricer.design(Candidate.from_json(trial.user_attrs[studies.CANDIDATE_ATTR]).layers)["structural_loss"]
        kept[str(trial.number)] = {"scores": {"map50_95": 0.80 - 0.05 * scale * loss}}
    study.set_user_attr(RESULTS_ATTR, kept)


def test_the_references_are_due_control_first_and_fit_the_scale_once_the_control_s_recovery_is_in():
    from edgesearch.search.guided import Guide
    from edgesearch.search.options import OptionPricer

    layers, sensitivity, basis, resolved = _five_layer_tables()
    guide = Guide(OptionPricer(sensitivity, basis), resolved, BASE, {"map_floor": FLOOR}, seed=0)
    study, numbers = _references_study(layers, guide.pricer)
    assert [t.number for t in references_due(study, set())] == [numbers[n] for n in (CONTROL, "cut one", "cut all")]
    assert [t.number for t in references_due(study, {numbers[CONTROL]})] == [numbers["cut one"], numbers["cut all"]]
    _recovered(study, numbers, guide.pricer, scale=0.02)
    assert references_due(study, set()) == []
    assert [drop for _, drop in recovered_references(study)] == pytest.approx([0.05 * 0.02 * 5, 0.05 * 0.02 * 15])
    _, model = guide.accuracy_model(study)
    assert model.structural_scale == pytest.approx(0.25, rel=0.02)
    assert model.recovered_scale == pytest.approx(0.02 / (model.alpha / 0.05), rel=0.05)
    # without the control's recovery there is nothing to measure a loss against
    study.set_user_attr(RESULTS_ATTR, {k: v for k, v in study.user_attrs[RESULTS_ATTR].items()
                                       if k != str(numbers[CONTROL])})
    assert recovered_references(study) == [] and guide.accuracy_model(study)[1].recovered_scale is None


def test_with_the_recovered_references_in_the_floor_s_seeds_after_recovery_cut_deeper_and_are_spent():
    """The floor's seeds priced at the 60-step scale cut one layer; those priced after recovery cut all
    five, predicted under the floor after the fine-tune and above it after the recovery."""
    from edgesearch.search.guided import FLOOR_SEED_WORDS, RECOVERED_FLOOR_PLANNED_ATTR, Guide, GuidedSampler
    from edgesearch.search.options import OptionPricer
    from edgesearch.spaces.candidate import Candidate, LayerKnobs

    layers, sensitivity, basis, resolved = _five_layer_tables()
    for i, layer in enumerate(layers):  # layers that differ in latency: a latency front
        basis["layers"][layer]["latency_ms"] = 1.0 + i
    guide = Guide(OptionPricer(sensitivity, basis), resolved, BASE, {"map_floor": FLOOR}, seed=0)
    study, numbers = _references_study(layers, guide.pricer)
    # FLOPs are counted per option: what the fewest-FLOPs seed minimises
    assert guide.pricer.design({layers[0]: LayerKnobs(prune_ratio=0.5)})["flops"] == 5 * 1e6 - 5e5
    sampler = GuidedSampler(guide, {layer: dict(c.choices) for layer, c in resolved.items()}, seed=0)
    study.sampler = sampler
    origins, predictions, cuts = [], [], []

    def next_design() -> None:
        assert sampler.prepare(study)
        trial = study.ask()
        candidate = Candidate.from_json(studies.candidate_of(trial, resolved))
        origins.append(trial.user_attrs[studies.ORIGIN_ATTR])
        predictions.append(trial.user_attrs[studies.PREDICTED_ATTR])
        cuts.append(sum(1 for knobs in candidate.layers.values() if knobs.prune_ratio))
        study.tell(trial, state=TrialState.FAIL)  # what it scores does not matter here

    for _ in range(2):
        next_design()
    assert all(FLOOR_SEED_WORDS in o and "after recovery" not in o for o in origins) and max(cuts) <= 1
    _recovered(study, numbers, guide.pricer, scale=0.02)  # the references' recoveries come in
    while not origins[-1].startswith("move:"):
        next_design()
    # least SRAM, least latency and fewest FLOPs at the floor's budget: here one design, scored once; and the
    # fewest FLOPs at half that budget, a margin for the prediction: fewer cuts, predicted higher after recovery
    after = origins[2:-1]
    assert len(after) == 2 and all(f"{FLOOR_SEED_WORDS} after recovery" in o for o in after), origins
    assert after[1].startswith(FEWEST_FLOPS_SEED) and "a margin for the prediction" in after[1]
    assert cuts[2] == 5 and 0 < cuts[3] < 5 and study.user_attrs[RECOVERED_FLOOR_PLANNED_ATTR]
    deepest, halfway = predictions[2], predictions[3]
    assert deepest["map50_95"] < FLOOR <= deepest["map50_95_recovered"] < halfway["map50_95_recovered"]
    assert halfway["omega"] < deepest["omega"]
    assert floor_prediction(deepest) == deepest["map50_95_recovered"]


def test_the_stage_recovers_designs_under_the_floor_that_the_search_predicted_above_it_after_recovery():
    layer = "model.0.conv"
    study = optuna.create_study(directions=list(studies.DIRECTIONS))
    control = _add(study, {}, 0.72, recipe=CONTROL, latency_ms=10.0, floor=FLOOR)
    kept = _add(study, {layer: {"prune_ratio": 0.25}}, 0.71, latency_ms=8.0, floor=FLOOR)
    recoverable = _add(study, {layer: {"prune_ratio": 0.5}}, 0.50, latency_ms=5.0, floor=FLOOR,
                       predicted={"map50_95": 0.50, "map50_95_recovered": 0.705})
    _add(study, {layer: {"prune_ratio": 0.75}}, 0.30, latency_ms=3.0, floor=FLOOR,
         predicted={"map50_95": 0.30, "map50_95_recovered": 0.65})  # not even after recovery
    _add(study, {layer: {"weight_bits": 4}}, 0.40, latency_ms=4.0, floor=FLOOR)  # no structure to recover
    # the fewest-FLOPs seed is recovered off the front (which holds no FLOPs), where predicted above the floor
    fewest = _add(study, {layer: {"prune_ratio": 0.5}, "model.1.conv": {"prune_ratio": 0.5}}, 0.45, latency_ms=6.0,
                  floor=FLOOR, predicted={"map50_95": 0.45, "map50_95_recovered": 0.70},
                  origin=f"{FEWEST_FLOPS_SEED} within the accuracy floor after recovery (...)")
    _add(study, {"model.1.conv": {"prune_ratio": 0.75}}, 0.40, latency_ms=6.5, floor=FLOOR,
         predicted={"map50_95": 0.40, "map50_95_recovered": 0.69}, origin=f"{FEWEST_FLOPS_SEED} (an earlier plan)")
    assert [t.number for t in choose_sources(study, FLOOR)] == [control, kept, recoverable, fewest]
    # chosen once: a design that joins the front later (say, after the stage) is not recovered on a resume
    _add(study, {layer: {"prune_ratio": 0.25}, "model.1.conv": {"prune_ratio": 0.25}}, 0.715, latency_ms=7.0,
         floor=FLOOR)
    assert [t.number for t in choose_sources(study, FLOOR)] == [control, kept, recoverable, fewest]
