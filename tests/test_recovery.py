"""The recovery stage (search/recovery.py): the front's structural designs, the structural recipes and
the fp32 control trained longer, as new trials; kept results told again after a stop, never redone."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from edgesearch.search import execution, recovery, shipping, study as studies
from edgesearch.search.recipes import CONTROL
from edgesearch.search.resolve import eval_settings, ship_inputs
from edgesearch.spaces.prune import prunable_pairs


def _searched_study(run_dir, layer: str) -> tuple[optuna.Study, dict[str, int]]:
    """A study as a search leaves it: the fp32 control, an int8 design, a pruned design on the front
    and a pruned design below it (figures made up: the stage reads only the front and the designs)."""
    run_dir.mkdir()
    study = studies.open_study(run_dir, seed=0, population_size=2, create=True)
    designs = {  # name: (candidate, values (mAP, latency, memory), recipe)
        "control": ({"layers": {}}, (0.70, 5.0, 1000), CONTROL),
        "int8": ({"layers": {layer: {"weight_bits": 8}}}, (0.69, 4.0, 400), None),
        "pruned": ({"layers": {layer: {"prune_ratio": 0.25}}}, (0.50, 3.0, 600), None),
        "dominated": ({"layers": {layer: {"prune_ratio": 0.25, "weight_bits": 4}}}, (0.40, 3.5, 700), None),
    }
    numbers = {}
    for name, (candidate, values, recipe) in designs.items():
        attrs = {studies.CANDIDATE_ATTR: candidate, studies.ORIGIN_ATTR: f"test: {name}",
                 studies.SCORE_ATTR: dict(zip(("map50_95", "latency_ms", "sram_bytes"), values, strict=True)),
                 **({studies.RECIPE_ATTR: recipe} if recipe else {})}
        study.add_trial(optuna.trial.create_trial(values=list(values), user_attrs=attrs))
        numbers[name] = study.trials[-1].number
    return study, numbers


def test_the_front_s_structural_designs_and_the_control_are_recovered_as_trials_and_a_stop_loses_nothing(
        tmp_path, smoke_inputs):
    layer = next(iter(prunable_pairs(smoke_inputs.base_model)))
    study, numbers = _searched_study(tmp_path / "run", layer)
    assert [t.number for t in recovery.choose_sources(study)] == [numbers["control"], numbers["pruned"]]
    settings = eval_settings(smoke_inputs, imgsz=64, finetune_iters=1, batch=8, threads=1, seed=0)
    budgets = lambda control: {"map_floor": 0.99 * control["map50_95"]}  # noqa: E731
    execution.start_ray(None)
    try:
        parcels = shipping.put(ship_inputs(smoke_inputs))
        recovery.recover_front(study, settings, 1, 2, 1, parcels, 0.0, budgets)
    finally:
        execution.stop_ray()
    recovered = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if studies.is_recovered(t)]
    assert sorted(t.user_attrs[studies.RECOVERED_FROM_ATTR] for t in recovered) == [numbers["control"],
                                                                                      numbers["pruned"]]
    control = next(t for t in recovered if studies.is_control(t))
    for trial in recovered:
        record = trial.user_attrs[studies.SCORE_ATTR]["training"]
        assert (record["steps_from_base"], record["recovery_steps"], record["distilled"]) == (2, 1, True)
        cut = ", channels cut at step 0" if trial.user_attrs[studies.RECOVERED_FROM_ATTR] == numbers["pruned"] else ""
        assert record["label"] == (f"2 fine-tune steps from the base: 1 of recovery first (float, BatchNorm unfused{cut}), "
                                   f"then 1, distilled from the base, learning rate {recovery.RECOVERY_LR:g}")
        assert trial.user_attrs[studies.ORIGIN_ATTR].startswith(
            f"recovery of #{trial.user_attrs[studies.RECOVERED_FROM_ATTR]}: 1 more steps, distilled (test: ")
        # the floor of a recovered design rests on the recovered control
        floor = 0.99 * control.user_attrs[studies.SCORE_ATTR]["map50_95"]
        assert trial.constraints == {"map_below_floor": floor - trial.values[0]}
    assert studies.finished_count(study) == 4  # recovered designs count against no --trials
    assert study.user_attrs[recovery.STAGE_ATTR] == {"state": "done", "why": "", "steps": 1, "designs": 2,
                                                     "failed": 0, "cuts": recovery.RECOVERY_CUTS}
    assert "recovery stage: 2 design(s)" in recovery.recovery_text(study)
    assert f"pruned channels cut in {recovery.RECOVERY_CUTS} steps" in recovery.recovery_text(study)

    # a run stopped after both recoveries finished, one of them while being told: the kept scores are
    # told again, nothing is trained again (the checkpoint is gone: a task would fail)
    again, _ = _searched_study(tmp_path / "again", layer)
    again.set_user_attr(recovery.RESULTS_ATTR, study.user_attrs[recovery.RESULTS_ATTR])
    again.enqueue_trial({}, user_attrs={studies.CANDIDATE_ATTR: {"layers": {}},
                                        studies.RECOVERED_FROM_ATTR: numbers["control"]})
    again.ask()  # killed before its tell
    assert studies.requeue_interrupted(again) == 1 and not studies.has_waiting(again)
    recovery.recover_front(again, dict(settings, checkpoint=str(tmp_path / "gone.pt")), 1, 2, 1, {}, 0.0, budgets)
    told = {t.user_attrs[studies.RECOVERED_FROM_ATTR]: t.values for t in again.get_trials(states=(TrialState.COMPLETE,))
            if studies.is_recovered(t)}
    assert told == {t.user_attrs[studies.RECOVERED_FROM_ATTR]: t.values for t in recovered}


def test_the_designs_recovered_spread_along_the_front_from_the_most_accurate_to_the_fastest():
    """The fastest structural designs lose most in the short fine-tune: they are recovered too."""
    front = [optuna.trial.create_trial(values=[0.7 - 0.1 * i, 10.0 - i, 100.0]) for i in range(7)]
    for number, trial in enumerate(front):
        trial.number = number
    assert [t.number for t in recovery.spread_along_front(front, 4)] == [6, 4, 2, 0]
    assert [t.number for t in recovery.spread_along_front(front[:3], 4)] == [2, 1, 0]
    assert [t.number for t in recovery.spread_along_front(front, 1)] == [0]



def test_with_a_floor_the_search_recovers_the_control_and_structural_recipes_as_soon_as_they_are_scored(
        tmp_path, smoke_inputs):
    """search/loop._search_loop with `recover_references`: each reference's recovery starts once it is
    scored, counts against no --trials and is kept for the stage (which then finds it done), and the
    recovered losses are what the guided search prices a cut by after recovery."""
    from edgesearch.search.loop import _search_loop

    layer = next(iter(prunable_pairs(smoke_inputs.base_model)))
    study = studies.open_study(tmp_path, seed=0, population_size=2, create=True)
    for recipe, layers in ((CONTROL, {}), ("25% structured pruning", {layer: {"prune_ratio": 0.25}})):
        study.enqueue_trial({}, user_attrs={studies.CANDIDATE_ATTR: {"layers": layers}, studies.RECIPE_ATTR: recipe,
                                            studies.ORIGIN_ATTR: f"recipe: {recipe}"})
    settings = eval_settings(smoke_inputs, imgsz=64, finetune_iters=1, batch=8, threads=1, seed=0)
    settings["build_cache"] = studies.run_id(study)  # a recovery times the graph its source built: reused
    execution.start_ray(None)
    try:
        _search_loop(study, smoke_inputs, settings, 2, 2, 1, {"map_floor": 0.0}, gpus=0.0,
                     recover_references=recovery.recovery_settings(settings, 1))
    finally:
        execution.stop_ray()
    assert studies.finished_count(study) == 2 and not any(studies.is_recovered(t) for t in study.trials)
    kept = study.user_attrs[recovery.RESULTS_ATTR]
    assert sorted(map(int, kept)) == [0, 1] and all("scores" in result for result in kept.values())
    assert all(result["scores"]["training"]["recovery_steps"] == 1 for result in kept.values())
    assert recovery.references_due(study, set()) == []
    (design, drop), = recovery.recovered_references(study)
    assert design == {"layers": {layer: {"prune_ratio": 0.25}}}
    assert drop == kept["0"]["scores"]["map50_95"] - kept["1"]["scores"]["map50_95"]
