"""The fewest-FLOPs rounds after the recovery stage (issue 19, items 3 and 4): the floor's fewest-FLOPs
seeds, recovered, bracket the accuracy floor; rounds of seeds at budgets inside the bracket are scored and
recovered until the floor binds, and a stopped run goes on where it stood."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from edgesearch.search import study as studies
from edgesearch.search.options import OptionPricer
from edgesearch.search.recovery import (
    FEWEST_FLOPS_SEED,
    FLOPS_ROUND_KEY,
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


class Killed(Exception):
    """The run stopped (in the test: a round's trials interrupted)."""


def test_rounds_of_fewest_flops_seeds_find_the_deepest_cut_the_floor_keeps_and_a_killed_round_resumes():
    from edgesearch.search.guided import Guide, GuidedSampler, candidate_key
    from edgesearch.search.loop import _fewest_flops_rounds, _recovery_stage
    from edgesearch.search.study import Proposal
    from edgesearch.spaces.candidate import Candidate

    layers, sensitivity, basis, resolved = _five_layer_tables()
    for i, layer in enumerate(layers):
        basis["layers"][layer]["latency_ms"] = 1.0 + i
    guide = Guide(OptionPricer(sensitivity, basis), resolved, BASE, {"map_floor": FLOOR}, seed=0)
    study, numbers = _references_study(layers, guide.pricer)
    study.sampler = sampler = GuidedSampler(guide, {layer: dict(c.choices) for layer, c in resolved.items()}, seed=0)
    control = 0.80  # the recovered control (_recovered); the floor after recovery: 0.95 of it
    kill_after: list[int] = []  # a round's trials: score this many, leave the next one running, stop (a kill)

    def run_trials(count: int) -> None:  # the search's loop: queued trials first, as the accuracy model predicts
        for _ in range(count):
            assert studies.has_waiting(study) or sampler.prepare(study)
            trial = study.ask()
            if kill_after and kill_after[0] == 0:
                kill_after.clear()
                raise Killed  # `trial` is left RUNNING
            price = guide.pricer.design(Candidate.from_json(studies.candidate_of(trial, resolved)).layers)
            map50_95 = 0.72 - 0.05 * price["omega"]  # the pricer is at the fitted structural scale
            trial.set_user_attr(studies.SCORE_ATTR, {"map50_95": map50_95, "sram_bytes": 1.0, "latency_ms": 1.0})
            study.tell(trial, [map50_95, 1.0, 1.0])
            if kill_after:
                kill_after[0] -= 1

    def recover_front() -> None:  # after recovery each cut costs 0.012: three cuts keep the floor, four do not
        # the stage tells each recovered design through the study's queue: nothing else may wait in it
        assert not studies.has_waiting(study)
        kept = dict(study.user_attrs[RESULTS_ATTR])
        for trial in choose_sources(study, FLOOR):
            kept.setdefault(str(trial.number), {"scores": {"map50_95": control - 0.012 * _cuts(trial)}})
        study.set_user_attr(RESULTS_ATTR, kept)

    def recover() -> None:
        _recovery_stage(study, run_trials, recover_front)

    def rounds() -> None:
        _fewest_flops_rounds(study, sampler, 2, recover, floor=lambda scores: 0.95 * scores["map50_95"])

    _recovered(study, numbers, guide.pricer, scale=0.02)
    # the floor's fewest-FLOPs seeds after recovery, at its budget and at half of it, scored and recovered
    _, model = guide.accuracy_model(study)
    for origin, candidate, budget in guide.floor_seeds(model, recovered=True):
        if origin.startswith(FEWEST_FLOPS_SEED):
            predicted = dict(guide.predicted(model, candidate), omega_budget=budget)
            study.enqueue_trial({}, user_attrs=Proposal(candidate, origin, predicted=predicted).user_attrs())
    recover()
    seeds = [t for t in study.trials if t.user_attrs[studies.ORIGIN_ATTR].startswith(FEWEST_FLOPS_SEED)]
    assert sorted(_cuts(t) for t in seeds) == [3, 5]  # a bracket: three cuts keep the floor, five do not
    assert len(fewest_flops_points(study, guide.recovered_omega(study))) == 2

    # round 1 is planned and queued (one new design in this small space); the run is killed while it runs
    kill_after.append(0)
    with pytest.raises(Killed):
        rounds()
    assert studies.requeue_interrupted(study) == 1  # a resumed run queues it again, then runs the stage
    recover()
    rounds()
    assert not studies.has_waiting(study)
    in_rounds = [t for t in study.get_trials(states=(TrialState.COMPLETE,))
                 if FLOPS_ROUND_KEY in (t.user_attrs.get(studies.PREDICTED_ATTR) or {})]
    assert {t.user_attrs[studies.PREDICTED_ATTR][FLOPS_ROUND_KEY] for t in in_rounds} == {1}
    assert len(in_rounds) == 1 and all("round 1: between omega" in t.user_attrs[studies.ORIGIN_ATTR] for t in in_rounds)
    assert all(str(t.number) in study.user_attrs[RESULTS_ATTR] for t in in_rounds)  # every round's seed recovered
    # the round found the four-cut design under the floor, between the bracket's three and five
    recovered = {_cuts(t): study.user_attrs[RESULTS_ATTR][str(t.number)]["scores"]["map50_95"] for t in seeds + in_rounds}
    assert 4 in recovered and recovered[4] < 0.95 * control <= recovered[3]
    scored = [candidate_key(t.user_attrs[studies.CANDIDATE_ATTR]) for t in seeds + in_rounds]
    assert len(set(scored)) == len(scored)  # the interrupted seed scored once, on the resume
    # round 2 has no new design in this small space: the rounds stop, and a further call does nothing
    count = len(study.trials)
    rounds()
    assert len(study.trials) == count
