"""The Optuna study: ask a candidate from the space, tell its scores, read the Pareto front.

Objectives: maximize mAP50-95, minimize latency, minimize SRAM footprint. The device's SRAM
budget is a constraint (sram_bytes - budget <= 0). The study lives in SQLite inside the run
folder, so a stopped run resumes where it was: finished trials stay, trials that were in flight
when the run died are marked failed and their candidates queued again.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from edgesearch.reports.pareto_report import knob_summary
from edgesearch.spaces.candidate import Candidate, LayerKnobs
from edgesearch.spaces.space import LayerChoices

STUDY_NAME = "edgesearch"
OBJECTIVES = ("map50_95", "latency_ms", "sram_bytes")
DIRECTIONS = ("maximize", "minimize", "minimize")
SCORE_ATTR = "scores"  # user attr holding every score of a trial
CANDIDATE_ATTR = "candidate"
ERROR_ATTR = "error"
INTERRUPTED = "interrupted: the run stopped while this trial was in flight; its candidate was queued again"


def storage_url(run_dir) -> str:
    return f"sqlite:///{run_dir}/study.db"


METRIC_NAMES = ("mAP50-95", "latency_ms", "memory_footprint_bytes")  # what optuna-dashboard shows for the objectives
SUMMARY_ATTR = "design"  # a one-line summary of the candidate, readable in optuna-dashboard's trial list
READ_ME = ("objectives: mAP50-95 on val (maximize), latency_ms (minimize), memory_footprint_bytes = packed weights + "
           "planned activations (minimize); constraint sram_over_budget_bytes <= 0. Trial user attributes: design (summary), "
           "scores (every figure, each with its source), candidate (per-layer knobs, the JSON `search eval --candidate` "
           "takes), error. The run's report is index.html beside study.db.")


def open_study(run_dir, *, seed: int, population_size: int, create: bool) -> optuna.Study:
    sampler = optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    if create:
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage_url(run_dir), directions=list(DIRECTIONS),
                                    sampler=sampler)
    else:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run_dir), sampler=sampler)
    if study.metric_names is None:  # new studies, and those made before the names were set
        with warnings.catch_warnings():  # experimental since optuna 3.2; optuna is pinned
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(METRIC_NAMES))
        study.set_user_attr("read_me", READ_ME)
    return study


def requeue_interrupted(study: optuna.Study) -> int:
    """Fail the trials a killed run left RUNNING and queue their candidates again."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        # no public setter for a trial this process did not ask for; the state change is public
        study._storage.set_trial_user_attr(trial._trial_id, ERROR_ATTR, INTERRUPTED)
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
    return len(stale)


ANCHOR_BITS = (8, 6, 4)


def enqueue_anchors(study: optuna.Study, resolved: dict[str, LayerChoices]) -> int:
    """Queue uniform designs to be scored first: every layer at 8, 6 or 4 bits (or the nearest bits
    it allows) with every other knob at its first choice (the spaces list "no change" first).
    With a dozen knobs per layer, random first-generation designs change almost every layer at
    once; these anchors give the front known-good points that NSGA-II then recombines."""
    for bits in ANCHOR_BITS:
        params = {}
        for name, layer in resolved.items():
            for knob, choices in layer.choices.items():
                if len(choices) < 2:
                    continue
                if knob == "weight_bits":
                    params[f"{name}|{knob}"] = min(choices, key=lambda b: (abs(b - bits), -b))
                else:
                    params[f"{name}|{knob}"] = choices[0]
        study.enqueue_trial(params, skip_if_exists=True)
    return len(ANCHOR_BITS)


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)))


def suggest_candidate(trial: Trial, resolved: dict[str, LayerChoices]) -> Candidate:
    """One knob value per layer: sampled where the layer has choices, fixed otherwise."""
    layers = {}
    for name, layer in resolved.items():
        values = {
            knob: trial.suggest_categorical(f"{name}|{knob}", choices) if len(choices) > 1 else choices[0]
            for knob, choices in layer.choices.items()
        }
        layers[name] = LayerKnobs(**values)
    return Candidate(layers)


def tell_scores(study: optuna.Study, trial: Trial, scores: dict, sram_budget: int) -> None:
    trial.set_user_attr(SCORE_ATTR, scores)
    trial.set_user_attr(SUMMARY_ATTR, knob_summary(trial.user_attrs.get(CANDIDATE_ATTR)))
    trial.set_constraint("sram_over_budget_bytes", scores["sram_bytes"] - sram_budget)
    study.tell(trial, [scores[name] for name in OBJECTIVES])


def tell_failure(study: optuna.Study, trial: Trial, error: str) -> None:
    trial.set_user_attr(ERROR_ATTR, error)
    study.tell(trial, state=TrialState.FAIL)


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front: Optuna's own front of feasible trials.

    When no trial fits the SRAM budget, the front of all completed trials instead (their rows say
    feasible=False), so the report still shows the designs that come closest.
    """
    front = study.best_trials  # honours the constraint: feasible trials only
    if front:
        return sorted(front, key=lambda t: -t.values[0])
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    scratch = optuna.create_study(directions=list(DIRECTIONS))  # in memory, without the constraint
    for trial in completed:
        scratch.add_trial(optuna.trial.create_trial(values=trial.values, user_attrs={"number": trial.number}))
    numbers = {t.user_attrs["number"] for t in scratch.best_trials}
    return sorted((t for t in completed if t.number in numbers), key=lambda t: -t.values[0])


def trial_rows(study: optuna.Study) -> list[dict]:
    """Every finished trial as plain data, for the report."""
    pareto = {t.number for t in pareto_trials(study)}
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        rows.append({
            "number": trial.number,
            "state": trial.state.name,
            "pareto": trial.number in pareto,
            "feasible": all(v <= 0 for v in trial.constraints.values()) if trial.constraints else None,
            "scores": trial.user_attrs.get(SCORE_ATTR),
            "candidate": trial.user_attrs.get(CANDIDATE_ATTR),
            "error": trial.user_attrs.get(ERROR_ATTR),
            "duration_s": trial.duration.total_seconds() if trial.duration else None,
        })
    return rows
