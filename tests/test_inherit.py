"""Children started from their parent's fine-tuned weights (search/inherit.py,
runners/accuracy/inherited.py): what is kept and loaded, which scored design is a parent, and a
search in which a weight-only child inherits, records it, and is held to a control trained alike."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch
from optuna.trial import TrialState

from edgesearch.search import inherit, study as studies
from edgesearch.search.recipes import CONTROL
from edgesearch.spaces.candidate import Candidate, LayerKnobs


def _applied(model, knobs: dict[str, LayerKnobs]):
    from edgesearch.spaces.apply import apply_candidate

    return apply_candidate(copy.deepcopy(model), Candidate(knobs))


def test_a_child_loads_its_parents_kept_weights_and_computes_its_own_masks(tiny_model, tmp_path):
    from edgesearch.runners.accuracy import inherited
    from edgesearch.spaces.prune import prunable_pairs
    from edgesearch.spaces.quantize import layer_quantizer, magnitude_mask, weight_parametrizations
    from edgesearch.spaces.space import load_space

    layers = list(load_space("yolov8").resolve(tiny_model))
    first, second = layers[0], layers[1]
    parent = _applied(tiny_model, {first: LayerKnobs(weight_bits=8, sparsity=0.5), second: LayerKnobs(weight_bits=8)})
    with torch.no_grad():  # as a fine-tune leaves it: every weight and statistic moved
        for tensor in parent.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.1)
    path = inherited.weights_path(tmp_path, "3")
    inherited.keep(parent, path)

    child = _applied(tiny_model, {first: LayerKnobs(weight_bits=4, sparsity=0.25),
                                  second: LayerKnobs(weight_bits=8, activation_bits=8)})
    assert inherited.start_from(child, path)
    kept = inherited.float_state(parent)
    loaded = inherited.float_state(child)
    for name, tensor in kept.items():
        if name in loaded and "quantizer" not in name:
            assert torch.equal(loaded[name], tensor), name
    conv = child.get_submodule(first)
    weight = weight_parametrizations(conv).original
    assert torch.equal(layer_quantizer(conv).mask, magnitude_mask(weight, 0.25))  # its own sparsity, on its weights

    pruned_layer = next(iter(prunable_pairs(tiny_model)))
    pruned = _applied(tiny_model, {pruned_layer: LayerKnobs(prune_ratio=0.5)})
    before = inherited.float_state(pruned)
    assert not inherited.start_from(pruned, path)  # other shapes: untouched
    assert all(torch.equal(before[name], tensor) for name, tensor in inherited.float_state(pruned).items())
    assert not inherited.start_from(child, inherited.weights_path(tmp_path, "4"))  # not on this node
    with pytest.raises(ValueError):
        inherited.weights_path(tmp_path, "../3")


def _scored(study, candidate: dict, mAP: float, training: dict | None = None, **attrs) -> int:
    record = {"start": "base", "steps_from_base": 6, "inherited_steps": 0, "recovery_steps": 0,
              "stopped_early": False, **(training or {})}
    study.add_trial(optuna.trial.create_trial(
        values=[mAP, 5.0, 1000], user_attrs={studies.CANDIDATE_ATTR: candidate, studies.ORIGIN_ATTR: "test",
                                              studies.SCORE_ATTR: {"map50_95": mAP, "training": record}, **attrs}))
    return study.trials[-1].number


def test_the_parent_is_the_nearest_design_of_the_same_structure_trained_from_the_base(tmp_path):
    study = studies.open_study(tmp_path, seed=0, population_size=2, create=True)
    space_layers = 4
    int8 = {"layers": {"a": {"weight_bits": 8}, "b": {"weight_bits": 8}}}
    control = _scored(study, {"layers": {}}, 0.70, **{studies.RECIPE_ATTR: CONTROL})
    parent = _scored(study, int8, 0.69)
    _scored(study, {"layers": {"a": {"weight_bits": 8}, "b": {"weight_bits": 8}, "c": {"weight_bits": 8}}}, 0.69)
    _scored(study, {"layers": {"a": {"weight_bits": 8}, "b": {"weight_bits": 6}}}, 0.60, {"stopped_early": True})
    _scored(study, {"layers": {"a": {"weight_bits": 8}, "b": {"weight_bits": 5}}}, 0.68,
            {"start": "#1", "inherited_steps": 6, "steps_from_base": 8})  # a child: no chains
    pruned = _scored(study, {"layers": {"a": {"prune_ratio": 0.25}}}, 0.50)

    def parent_of(candidate: dict, **attrs):
        study.enqueue_trial({}, user_attrs={studies.CANDIDATE_ATTR: candidate, **attrs})
        trial = study.ask()
        found = inherit.choose_parent(study, trial, candidate, space_layers)
        study.tell(trial, state=TrialState.FAIL)
        return None if found is None else found.number

    assert parent_of({"layers": {"a": {"weight_bits": 8}, "b": {"weight_bits": 4}}}) == parent  # one layer apart
    assert parent_of({"layers": {"a": {"weight_bits": 4}}}) == control  # one layer from the control, two from int8
    assert parent_of({"layers": {"a": {"prune_ratio": 0.25, "weight_bits": 8}}}) == pruned
    assert parent_of({"layers": {"a": {"prune_ratio": 0.5}}}) is None  # no design of its structure
    assert parent_of({"layers": {n: {"weight_bits": 4} for n in "abcd"}}) is None  # changes more than half
    assert parent_of({"layers": {"a": {"weight_bits": 8}, "b": {"weight_bits": 4}}},
                     **{studies.RECIPE_ATTR: "int8"}) is None  # recipes start from the base

    inherit.continue_control(study, study.trials[control])
    inherit.continue_control(study, study.trials[control])  # once per run
    continued = [t for t in study.get_trials(states=(TrialState.WAITING,))]
    assert len(continued) == 1 and continued[0].user_attrs[studies.CONTINUED_ATTR] == control
    trial = study.ask()
    settings = inherit.parent_settings(study, trial, {"layers": {}}, {"kept_weights": "ab" * 16, "child_iters": 2}, 4)
    assert (settings["parent"], settings["parent_steps"], settings["keep_as"]) == (str(control), 6, str(trial.number))
    assert not studies.is_control(trial)  # the control's floor is not moved by it


def test_a_weight_only_child_inherits_in_a_search_and_is_held_to_the_control_continued_alike(tmp_path, smoke_inputs):
    from edgesearch.reports import design_data as dd
    from edgesearch.search import execution, shipping
    from edgesearch.search.loop import _search_loop
    from edgesearch.search.resolve import eval_settings, ship_inputs

    layers = list(smoke_inputs.resolved)
    study = studies.open_study(tmp_path, seed=0, population_size=2, create=True, strategy="random")
    # int8 changes every layer of the control: no child of it, it trains from the base; the child one layer of it
    int8 = Candidate({name: LayerKnobs(weight_bits=8, activation_bits=8) for name in layers})
    child = Candidate({**int8.layers, layers[1]: LayerKnobs(weight_bits=4, activation_bits=8)})
    study.enqueue_trial({}, user_attrs={studies.CANDIDATE_ATTR: {"layers": {}}, studies.RECIPE_ATTR: CONTROL})
    studies.enqueue_given(study, [("int8.json", int8), ("child.json", child)], smoke_inputs.resolved)
    settings = eval_settings(smoke_inputs, imgsz=64, finetune_iters=2, batch=8, threads=1, seed=0)
    settings.update(kept_weights=studies.run_id(study), child_iters=1, build_cache=studies.run_id(study))
    execution.start_ray(None)
    try:
        parcels = shipping.put(ship_inputs(smoke_inputs))
        _search_loop(study, smoke_inputs, settings, 4, parallel=1, cpus=1, budgets={}, parcels=parcels)
    finally:
        execution.stop_ray()
    control, parent, son, continued = study.get_trials(deepcopy=False)
    records = [t.user_attrs[studies.SCORE_ATTR]["training"] for t in (control, parent, son, continued)]
    assert [(r["start"], r["steps_from_base"], r["inherited_steps"]) for r in records] == [
        ("base", 2, 0), ("base", 2, 0), (f"#{parent.number}", 3, 2), (f"#{control.number}", 3, 2)]
    assert records[2]["label"] == f"1 fine-tune steps from #{parent.number}'s weights (2 from the base before, 3 in all)"
    assert son.user_attrs[studies.SCORE_ATTR]["finetune_iters"] == 1
    assert continued.user_attrs[studies.CONTINUED_ATTR] == control.number and studies.is_control(control)

    rows = studies.trial_rows(study)
    floor = dd.accuracy_floor({"max_map_drop": 0.01}, study.user_attrs.get("base", {"map50_95": 0.0}), rows, 0, 2)
    assert f"#{continued.number}" in floor["label"]  # the child's floor rests on the control continued alike
    assert dd.record_key(rows[2]) == (0, 2) and dd.record_key(rows[1]) == (0, 0)
