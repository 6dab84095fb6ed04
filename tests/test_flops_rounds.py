"""The fewest-FLOPs rounds after the recovery stage (issue 19, items 3 and 4): the floor's fewest-FLOPs
seeds, recovered, bracket the accuracy floor; rounds of seeds at budgets inside the bracket are scored and
recovered until the floor binds, and a stopped run goes on where it stood."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from edgesearch.search import study as studies
from edgesearch.search.recovery import (
    FEWEST_FLOPS_SEED,
    FLOPS_ROUND_KEY,
    FLOPS_ROUNDS,
    RESULTS_ATTR,
    choose_sources,
    fewest_flops_points,
    next_flops_budgets,
)
from tests.test_recovered_pricing import FLOOR, _recovered, _references_study
from tests.test_search import BASE, _five_layer_tables


def test_the_next_budgets_split_the_bracket_the_recovered_seeds_make():
    # recovered above the floor (0.76) at omega 0.3 and under it at 0.9: two budgets split 0.3-0.9 in three
    budgets, words = next_flops_budgets([(0.3, 0.79), (0.9, 0.67)], 0.76, 2)
    assert budgets == pytest.approx([0.5, 0.7]) and "between omega 0.3" in words
    # the bracket is the tightest: the largest budget above, the smallest under
    assert next_flops_budgets([(0.3, 0.79), (0.4, 0.78), (0.9, 0.67), (0.6, 0.70)], 0.76, 1)[0] == pytest.approx([0.5])
    # none under the floor: up to twice the largest budget; none above: from zero
    assert next_flops_budgets([(0.2, 0.79), (0.4, 0.78)], 0.76, 1)[0] == pytest.approx([0.6])
    assert next_flops_budgets([(0.6, 0.70)], 0.76, 2)[0] == pytest.approx([0.2, 0.4])
    # nothing recovered, or a bracket narrower than NARROWEST_BRACKET of its top: no round
    assert next_flops_budgets([], 0.76, 2)[0] == []
    none, why = next_flops_budgets([(0.50, 0.77), (0.51, 0.75)], 0.76, 2)
    assert none == [] and "narrower" in why


def _cuts(trial) -> int:
    return sum(1 for knobs in trial.user_attrs[studies.CANDIDATE_ATTR]["layers"].values() if knobs.get("prune_ratio"))


def test_rounds_of_fewest_flops_seeds_find_the_deepest_cut_the_floor_keeps_and_resume_where_they_stood():
    from edgesearch.search.guided import Guide, GuidedSampler
    from edgesearch.search.loop import _fewest_flops_rounds
    from edgesearch.search.options import OptionPricer
    from edgesearch.search.study import Proposal
    from edgesearch.spaces.candidate import Candidate

    layers, sensitivity, basis, resolved = _five_layer_tables()
    for i, layer in enumerate(layers):
        basis["layers"][layer]["latency_ms"] = 1.0 + i
    guide = Guide(OptionPricer(sensitivity, basis), resolved, BASE, {"map_floor": FLOOR}, seed=0)
    study, numbers = _references_study(layers, guide.pricer)
    sampler = GuidedSampler(guide, {layer: dict(c.choices) for layer, c in resolved.items()}, seed=0)
    study.sampler = sampler
    control = 0.80  # the recovered control (_recovered); the floor after recovery: 0.95 of it
    recovered_floor = 0.95 * control

    def run_trials(count: int) -> None:  # the search's 60-step fine-tune, as the accuracy model fitted predicts
        for _ in range(count):
            assert studies.has_waiting(study) or sampler.prepare(study)
            trial = study.ask()
            price = guide.pricer.design(Candidate.from_json(studies.candidate_of(trial, resolved)).layers)
            map50_95 = 0.72 - 0.05 * price["omega"]  # the pricer is at the fitted structural scale (a quarter)
            trial.set_user_attr(studies.SCORE_ATTR, {"map50_95": map50_95, "sram_bytes": 1.0, "latency_ms": 1.0})
            study.tell(trial, [map50_95, 1.0, 1.0])

    def recover() -> None:  # after recovery each cut costs 0.012: three cuts keep the floor, four do not
        kept = dict(study.user_attrs[RESULTS_ATTR])
        for trial in choose_sources(study, FLOOR):
            kept.setdefault(str(trial.number), {"scores": {"map50_95": control - 0.012 * _cuts(trial)}})
        study.set_user_attr(RESULTS_ATTR, kept)

    _recovered(study, numbers, guide.pricer, scale=0.02)
    # the floor's fewest-FLOPs seeds after recovery, at its budget and at half of it, scored and recovered
    _, model = guide.accuracy_model(study)
    sampler.extend_plan(study, [Proposal(candidate, origin, predicted=dict(guide.predicted(model, candidate), omega_budget=budget))
                                for origin, candidate, budget in guide.floor_seeds(model, recovered=True)
                                if origin.startswith(FEWEST_FLOPS_SEED)])
    run_trials(2)
    recover()
    seeds = [t for t in study.trials if t.user_attrs[studies.ORIGIN_ATTR].startswith(FEWEST_FLOPS_SEED)]
    assert sorted(_cuts(t) for t in seeds) == [3, 5]  # a bracket: three cuts keep the floor, five do not
    assert len(fewest_flops_points(study, guide.recovered_omega(study))) == 2

    # a round planned, then the run stopped: its seeds are due, and are scored and recovered first
    budgets, words = next_flops_budgets(fewest_flops_points(study, guide.recovered_omega(study)), recovered_floor, 2)
    sampler.extend_plan(study, guide.fewest_flops_proposals(study, budgets, 1, words))
    assert len(sampler.due(study)) >= 1
    _fewest_flops_rounds(study, sampler, 2, recover, floor=lambda scores: 0.95 * scores["map50_95"],
                         run_trials=run_trials)
    assert sampler.due(study) == []
    rounds = [t for t in study.trials if FLOPS_ROUND_KEY in (t.user_attrs.get(studies.PREDICTED_ATTR) or {})]
    assert rounds and max(t.user_attrs[studies.PREDICTED_ATTR][FLOPS_ROUND_KEY] for t in rounds) <= FLOPS_ROUNDS
    assert all(str(t.number) in study.user_attrs[RESULTS_ATTR] for t in rounds)  # every round's seed recovered
    assert all("round" in t.user_attrs[studies.ORIGIN_ATTR] and "between omega" in t.user_attrs[studies.ORIGIN_ATTR]
               for t in rounds)
    # the rounds found the four-cut design (under the floor) between the brackets' three and five
    recovered = {_cuts(t): study.user_attrs[RESULTS_ATTR][str(t.number)]["scores"]["map50_95"]
                 for t in seeds + rounds}
    assert 4 in recovered and recovered[4] < recovered_floor <= recovered[3]
    designs = {json_key(t) for t in seeds + rounds}
    assert len(designs) == len(seeds + rounds)  # no design scored twice
    # nothing left: another call (a resume) scores and recovers nothing more
    count = len(study.trials)
    _fewest_flops_rounds(study, sampler, 2, recover, floor=lambda scores: 0.95 * scores["map50_95"],
                         run_trials=run_trials)
    assert len(study.trials) == count
    assert Candidate.from_json(rounds[0].user_attrs[studies.CANDIDATE_ATTR]).layers
    assert all(t.state == TrialState.COMPLETE for t in rounds)


def json_key(trial) -> str:
    from edgesearch.search.guided import candidate_key

    return candidate_key(trial.user_attrs[studies.CANDIDATE_ATTR])
