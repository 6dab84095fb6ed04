"""A real search through a local Ray: report files, Pareto correctness, resume, the guided search's stages."""

import csv
import json
import re

import optuna
from optuna.trial import TrialState

from conftest import RESUMED_TRIALS, SMOKE_SPACE, run_cli
from conftest import SMOKE_FIRST_TRIALS as FIRST_TRIALS
from edgesearch.search import study as studies

DIRECTIONS = {"map50_95": 1, "latency_ms": -1, "sram_bytes": -1}  # +1 maximize, -1 minimize


def _dominates(a: dict, b: dict) -> bool:
    better_or_equal = all(s * a[k] >= s * b[k] for k, s in DIRECTIONS.items())
    return better_or_equal and any(s * a[k] > s * b[k] for k, s in DIRECTIONS.items())


def test_a_search_writes_a_correct_report_and_resumes(smoke_run):
    out, result = smoke_run.out, smoke_run.first
    assert all(size > 0 for size in smoke_run.written.values())
    assert "base" in result.stdout and "mAP50-95" in result.stdout  # the Pareto table is printed

    report, rows = smoke_run.first_report, smoke_run.first_rows
    assert len(rows) == FIRST_TRIALS and report["base"]["map50_95"] >= 0
    assert report["pareto"], "a search has at least one Pareto design"
    feasible = [r for r in rows if r["state"] == "COMPLETE" and r["feasible"] == "True"]
    all_scores = {int(r["trial"]): {k: float(r[k]) for k in DIRECTIONS} for r in feasible}
    for design in report["pareto"]:
        assert design["candidate"]["layers"], "Pareto designs carry their per-layer knobs"
        mine = {k: design["scores"][k] for k in DIRECTIONS}
        assert not any(_dominates(other, mine) for n, other in all_scores.items() if n != design["trial"])
        # the final designs are timed again together, interleaved, and say so
        assert design["remeasured"]["latency_ms"] > 0 and "interleaved" in design["remeasured"]["latency_source"]
    assert report["base"]["remeasured"]["latency_ms"] > 0
    assert "re-timed interleaved" in smoke_run.first_html

    first_trials = {int(r["trial"]): r["map50_95"] for r in rows}
    rows = list(csv.DictReader((out / "trials.csv").open()))  # after the resume
    assert sum(r["state"] == "COMPLETE" for r in rows) == RESUMED_TRIALS
    assert {int(r["trial"]): r["map50_95"] for r in rows if int(r["trial"]) in first_trials} == first_trials

    rebuilt = run_cli("report", str(out))
    assert rebuilt.returncode == 0 and "report:" in rebuilt.stdout

    again = run_cli("run", "--preset", "smoke", "--space", SMOKE_SPACE, "--out", str(out), "--trials", "2")
    assert again.returncode == 2 and "--resume" in again.stderr


def test_interrupted_trials_are_failed_and_queued_again(tmp_path):
    study = studies.open_study(tmp_path, seed=0, population_size=2, create=True, strategy="nsga2")
    done = study.ask()
    done.suggest_categorical("layer|weight_bits", [4, 8])
    study.tell(done, [0.5, 1.0, 100.0])
    lost = study.ask()  # the run dies while this one is in flight
    lost_params = {"layer|weight_bits": lost.suggest_categorical("layer|weight_bits", [4, 8])}

    reopened = studies.open_study(tmp_path, seed=0, population_size=2, create=False, strategy="nsga2")
    assert studies.requeue_interrupted(reopened) == 1
    trials = reopened.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.COMPLETE and trials[0].values == [0.5, 1.0, 100.0]
    assert trials[1].state == TrialState.FAIL and "interrupted" in trials[1].user_attrs[studies.ERROR_ATTR]
    retry = reopened.ask()
    assert retry.suggest_categorical("layer|weight_bits", [4, 8]) == lost_params["layer|weight_bits"]
    assert isinstance(reopened.sampler, optuna.samplers.NSGAIISampler)


def test_an_interrupted_guided_trial_is_queued_again_with_its_design(tmp_path):
    study = studies.open_study(tmp_path, seed=0, population_size=2, create=True)
    design = {"layers": {"model.0.conv": {"weight_bits": 4}}}
    studies.enqueue_design(study, design, "seed: test", predicted={"omega": 0.5})
    assert study.ask().user_attrs[studies.CANDIDATE_ATTR] == design  # the run dies while it is in flight
    reopened = studies.open_study(tmp_path, seed=0, population_size=2, create=False)
    assert studies.requeue_interrupted(reopened) == 1
    retry = reopened.ask()
    assert retry.user_attrs[studies.CANDIDATE_ATTR] == design and retry.user_attrs[studies.ORIGIN_ATTR] == "seed: test"
    assert studies.candidate_of(retry, {}) == design


def test_a_failing_trial_is_recorded_with_its_error_and_the_search_goes_on(tmp_path, smoke_inputs):
    from edgesearch.search import execution, shipping
    from edgesearch.search.jobs import _search_loop, eval_settings, ship_inputs

    study = studies.open_study(tmp_path, seed=0, population_size=2, create=True)
    settings = eval_settings(smoke_inputs, imgsz=64, finetune_iters=0, batch=8, threads=1, seed=0)
    settings["checkpoint"] = str(tmp_path / "vanished.pt")  # every trial will raise inside its Ray task
    execution.start_ray(None)
    try:
        # the checkpoint is not shipped: the workers look for the vanished path
        parcels = shipping.put({k: v for k, v in ship_inputs(smoke_inputs).items() if k != "checkpoint"})
        _search_loop(study, smoke_inputs, settings, {"trials": 2}, parallel=2, cpus=1, budgets={}, parcels=parcels)
    finally:
        execution.stop_ray()
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("checkpoint not found" in t.user_attrs[studies.ERROR_ATTR] for t in trials)


def test_resume_refuses_a_space_that_changed_since_the_run_started(tmp_path):
    import pytest

    from edgesearch.search.jobs import prepare_run_dir
    from edgesearch.spaces.errors import InputError

    run = {"trials": 2, "space_file": "spaces/mine.yaml", "space_sha256": "a" * 64}
    prepare_run_dir(tmp_path, run, resume=False)
    assert prepare_run_dir(tmp_path, dict(run, trials=4), resume=True)["trials"] == 4
    with pytest.raises(InputError, match="changed since the run"):
        prepare_run_dir(tmp_path, dict(run, space_sha256="b" * 64), resume=True)


def test_a_new_study_scores_uniform_anchor_designs_first(tmp_path, tiny_model):
    from edgesearch.spaces.space import load_space

    resolved = load_space("yolov8").resolve(tiny_model)
    study = studies.open_study(tmp_path, seed=0, population_size=2, create=True)
    assert studies.enqueue_anchors(study, resolved) == len(studies.ANCHOR_BITS)
    for bits in studies.ANCHOR_BITS:
        candidate = studies.suggest_candidate(study.ask(), resolved)
        for name, knobs in candidate.layers.items():
            allowed = resolved[name].choices["weight_bits"]
            assert knobs.weight_bits == min(allowed, key=lambda b: (abs(b - bits), -b))
            assert knobs.prune_ratio == 0 and knobs.sparsity == 0 and knobs.kernel_size == "keep"
            assert knobs.rank_ratio == 1.0 and knobs.activation_bits == 32


def test_a_guided_search_scores_recipes_then_seeds_then_screened_few_layer_moves(smoke_run):
    from edgesearch.search.presets import PRESETS

    recipes = PRESETS["smoke"].recipes

    out = smoke_run.out
    assert (out / "sensitivity.json").stat().st_size > 0 and (out / "cost_basis.json").stat().st_size > 0
    # computed once, by the first run; the resumed run (another process) reads both from the cache
    assert "sensitivity pass:" in smoke_run.first.stdout and "hardware cost basis:" in smoke_run.first.stdout
    assert "sensitivity pass:" not in smoke_run.resumed.stdout and "cost basis:" not in smoke_run.resumed.stdout
    study = optuna.load_study(study_name=studies.STUDY_NAME, storage=studies.storage_url(out))
    scored = [t for t in study.trials if t.state == TrialState.COMPLETE]
    screened = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(scored) == RESUMED_TRIALS
    origins = [t.user_attrs[studies.ORIGIN_ATTR] for t in sorted(scored, key=lambda t: t.number)]
    assert [o.removeprefix("recipe: ") for o in origins[:len(recipes)]] == list(recipes)
    assert all(o.startswith("seed: ") for o in origins[len(recipes):len(recipes) + 2])
    assert any(o.startswith("move: ") for o in origins)

    by_number = {t.number: t for t in study.trials}
    for trial in [t for t in scored + screened if t.user_attrs[studies.ORIGIN_ATTR].startswith("move: ")]:
        parent = int(re.search(r"from #(\d+)", trial.user_attrs[studies.ORIGIN_ATTR]).group(1))
        mine = trial.user_attrs[studies.CANDIDATE_ATTR]["layers"]
        theirs = by_number[parent].user_attrs[studies.CANDIDATE_ATTR]["layers"]
        changed = [layer for layer in mine if mine[layer] != theirs.get(layer)]
        assert 1 <= len(changed) <= 3, changed
        assert "map50_95" in trial.user_attrs[studies.PREDICTED_ATTR]  # the proxy that screened it

    # a screened-out design is never on the front, and the report counts it apart
    assert screened, "each move slot draws several moves and scores one"
    report = json.loads((out / "pareto.json").read_text())
    front = {design["trial"] for design in report["pareto"]}
    assert front and front <= {t.number for t in scored}
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert sum(r["state"] == "PRUNED" for r in rows) == len(screened)
