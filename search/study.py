"""The Optuna study: ask a candidate from the space, tell its scores, read the Pareto front.

Objectives: maximize mAP50-95, minimize latency, minimize SRAM footprint. Budgets are
constraints (value - budget <= 0): the profile's hard memory limit (or --sram-budget), and, where
asked, a latency budget and an accuracy floor. The study lives in SQLite inside the run folder,
so a stopped run resumes where it was: finished trials stay, trials that were in flight when the
run died are marked failed and their candidates queued again.

Strategies: `guided` (default) is an Optuna sampler (search/guided.GuidedSampler, a DesignSampler)
that chooses each trial's whole design - a recipe, a budgeted seed or a few-layer move - and
gives it to the trial as parameters ("layer|knob", the knobs it changes) and as the trial's
`candidate` attribute; moves screened out by the proxy are stored as PRUNED trials with their
predicted scores, never fine-tuned and never on the front. `nsga2` (the search before guided
moves: uniform 8/6/4-bit anchors, then Optuna's NSGA-II over per-layer parameters) and `random`
(Optuna's RandomSampler) sample per-layer parameters, one Optuna parameter per layer and knob.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import uuid
import warnings
from typing import Literal

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from edgesearch.reports.design_names import design_name
from edgesearch.search.cli_env import QUIET
from edgesearch.search.recipes import CONTROL
from edgesearch.spaces.candidate import Candidate, LayerKnobs
from edgesearch.spaces.space import LayerChoices

if os.environ.get(QUIET):  # search/cli_env.quiet_console: no INFO line per trial
    optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDY_NAME = "edgesearch"
OBJECTIVES = ("map50_95", "latency_ms", "sram_bytes")
DIRECTIONS: tuple[Literal["maximize", "minimize"], ...] = ("maximize", "minimize", "minimize")
SCORE_ATTR = "scores"  # user attr holding every score of a trial
CANDIDATE_ATTR = "candidate"
ORIGIN_ATTR = "origin"  # one line: where the design came from (recipe, seed, move, sampler)
PREDICTED_ATTR = "predicted"  # proxy scores before the fine-tune (guided strategy)
# study attr, {trial number: predicted scores}: those known only after the trial began (a recipe
# started before the sensitivity table was in gets its predicted omega when the table comes)
LATE_PREDICTED_ATTR = "predicted_late"
RECIPE_ATTR = "recipe"
RECOVERED_FROM_ATTR = "recovered_from"  # a design of the recovery stage (search/recovery.py): its source trial
CONTINUED_ATTR = "continues_control"  # the fp32 control continued as children are (search/inherit.py): its number
ERROR_ATTR = "error"
FAILED_ON_ATTR = "failed_on"  # a failed trial's {node, attempts} (a scored one keeps them in its scores)
INTERRUPTED = "interrupted: the run stopped while this trial was in flight; its candidate was queued again"
# study attr: numbers of the trials a stopped run left in flight, failed and queued again on resume (their
# error is INTERRUPTED). Optuna's public API sets a trial's attributes only through the Trial that the
# process asked for, so the record lives on the study; runs before it stored INTERRUPTED on the trial.
INTERRUPTED_ATTR = "interrupted_trials"


def storage_url(run_dir) -> str:
    return f"sqlite:///{run_dir}/study.db"


METRIC_NAMES = ("mAP50-95", "latency_ms", "memory_footprint_bytes")  # what optuna-dashboard shows for the objectives
SUMMARY_ATTR = "design"  # the design's name (what it does), readable in optuna-dashboard's trial list
READ_ME = ("objectives: mAP50-95 on val (maximize), latency_ms (minimize), memory_footprint_bytes = packed weights + "
           "planned activations (minimize); constraints: memory_over_budget_bytes, and where asked "
           "latency_over_budget_ms and map_below_floor, each <= 0 when met. Trial user attributes: design (its name: "
           "what it does), origin (recipe, seed, move or sampler), predicted (proxy scores before the fine-tune), scores (every "
           "figure, each with its source), candidate (per-layer knobs, the JSON `search eval --candidate` takes), "
           "error. PRUNED trials were screened out by the proxy and never fine-tuned. The run's report is "
           "index.html beside study.db.")


def open_study(run_dir, *, seed: int, population_size: int, create: bool, strategy: str = "guided") -> optuna.Study:
    sampler: optuna.samplers.BaseSampler
    if strategy == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    else:  # random; a guided run sets its GuidedSampler once the sampler's tables exist (search/loop.py)
        sampler = optuna.samplers.RandomSampler(seed=seed)
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


def read_study(run_dir) -> optuna.Study:
    """An existing run's study, opened to read (reports, benchmarks): no sampler is needed and nothing
    is written, so no run setting is read."""
    return optuna.load_study(study_name=STUDY_NAME, storage=storage_url(run_dir))


RUN_ID_ATTR = "run_id"  # a random hex id, set once: names the run's kept builds on each node (build_cache.py)


def run_id(study: optuna.Study) -> str:
    """The run's id, made on first use and kept in the study (so a resumed run finds its builds)."""
    if RUN_ID_ATTR not in study.user_attrs:
        study.set_user_attr(RUN_ID_ATTR, uuid.uuid4().hex)
    return study.user_attrs[RUN_ID_ATTR]


def requeue_interrupted(study: optuna.Study) -> int:
    """Fail the trials a killed run left RUNNING and queue their candidates again."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if stale:  # recorded first: a run stopped in between finds these still RUNNING and records them again
        study.set_user_attr(INTERRUPTED_ATTR, sorted(interrupted_numbers(study) | {t.number for t in stale}))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        if is_recovered(trial):  # its scores are kept by the recovery stage, which tells them again
            continue
        kept = {k: v for k, v in trial.user_attrs.items() if k in (CANDIDATE_ATTR, ORIGIN_ATTR, PREDICTED_ATTR,
                                                                       RECIPE_ATTR, CONTINUED_ATTR)}
        study.enqueue_trial(trial.params, user_attrs=kept, skip_if_exists=False)
    return len(stale)


def interrupted_numbers(study: optuna.Study) -> set[int]:
    """Numbers of the trials that requeue_interrupted failed."""
    return set(study.user_attrs.get(INTERRUPTED_ATTR, []))


def trial_error(trial: FrozenTrial, interrupted: set[int]) -> str | None:
    """A failed trial's error: its own, or INTERRUPTED for one in `interrupted` (interrupted_numbers)."""
    return trial.user_attrs.get(ERROR_ATTR) or (INTERRUPTED if trial.number in interrupted else None)


@dataclasses.dataclass(frozen=True)
class Proposal:
    """A whole design a sampler chose, with where it came from (the trial's user attributes)."""

    candidate: dict
    origin: str
    predicted: dict | None = None
    recipe: str | None = None

    def user_attrs(self) -> dict:
        attrs = {CANDIDATE_ATTR: self.candidate, ORIGIN_ATTR: self.origin, PREDICTED_ATTR: self.predicted,
                 RECIPE_ATTR: self.recipe}
        return {key: value for key, value in attrs.items() if value is not None}


class DesignSampler(optuna.samplers.BaseSampler, abc.ABC):
    """An Optuna sampler that chooses whole designs (search/guided.GuidedSampler). Optuna's sampler
    interface fills the trial's parameters; `design` then hands the caller the design itself."""

    @abc.abstractmethod
    def prepare(self, study: optuna.Study) -> bool:
        """Choose the next new trial's design now; False when there is none to propose yet."""

    @abc.abstractmethod
    def design(self, trial: Trial) -> dict | None:
        """The design this sampler chose for `trial` (recorded on it), or None if it chose none."""

    def busy_slots(self) -> int:
        """Trial slots the sampler's own work (e.g. a table it computes beside the trials) holds now."""
        return 0

    def wait(self) -> bool:
        """Block until that work is done; False when there was none (waiting cannot help)."""
        return False


def record_screened(study: optuna.Study, proposal: Proposal) -> None:
    """Store a design the screen passed over: PRUNED, with its proxy scores, never on the front."""
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs=proposal.user_attrs()))


def has_waiting(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def candidate_of(trial: Trial, resolved: dict[str, LayerChoices]) -> dict:
    """The design a trial scores: the one queued with it (an interrupted trial's retry), else the one
    a DesignSampler chose, else sampled from its parameters."""
    candidate = trial.user_attrs.get(CANDIDATE_ATTR)
    if candidate is not None and not isinstance(trial.study.sampler, DesignSampler):
        for key, (_, choices) in _space_params(Candidate.from_json(candidate), resolved).items():
            trial.suggest_categorical(key, choices)  # the queued value: recorded so that NSGA-II can recombine it
    if candidate is None and isinstance(trial.study.sampler, DesignSampler):
        candidate = trial.study.sampler.design(trial)
    if candidate is None:
        candidate = suggest_candidate(trial, resolved).to_json()
        trial.set_user_attr(CANDIDATE_ATTR, candidate)
    return candidate


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


def enqueue_given(study: optuna.Study, designs: list[tuple[str, Candidate]], resolved: dict[str, LayerChoices]) -> int:
    """Queue designs the user gave (`search run --designs`), in order, to be scored before the
    strategy's own: each keeps its candidate and its origin ("given: <name>"). Its parameters
    (layers it does not name at their defaults) are set where the space offers the value, so that
    NSGA-II can recombine it; a value the space does not offer stays in the candidate only."""
    for name, candidate in designs:
        params = {key: value for key, (value, _) in _space_params(candidate, resolved).items()}
        study.enqueue_trial(params, user_attrs={CANDIDATE_ATTR: candidate.to_json(), ORIGIN_ATTR: f"given: {name}"},
                            skip_if_exists=False)
    return len(designs)


def _space_params(candidate: Candidate, resolved: dict[str, LayerChoices]) -> dict[str, tuple]:
    """{"layer|knob": (the candidate's value, the space's choices)} for every knob the space samples
    (more than one choice) where the candidate's value is one of them; a layer it does not name is
    at its defaults."""
    defaults, params = LayerKnobs(), {}
    for layer, choices in resolved.items():
        knobs = candidate.layers.get(layer, defaults)
        for knob, values in choices.choices.items():
            if len(values) > 1 and getattr(knobs, knob) in values:
                params[f"{layer}|{knob}"] = (getattr(knobs, knob), values)
    return params


def finished_count(study: optuna.Study) -> int:
    """Trials that count against --trials: scored or failed, but not those a killed run left
    behind (requeue_interrupted queues their designs again, so counting them would lose a slot)."""
    finished = searched_trials(study, states=(TrialState.COMPLETE, TrialState.FAIL))
    interrupted = interrupted_numbers(study)
    return sum(1 for t in finished if trial_error(t, interrupted) != INTERRUPTED)


def is_recovered(trial: FrozenTrial | Trial) -> bool:
    """Whether `trial` is a design of the recovery stage (search/recovery.py), not one of the search's."""
    return RECOVERED_FROM_ATTR in trial.user_attrs


def searched_trials(study: optuna.Study, states: tuple[TrialState, ...]) -> list[FrozenTrial]:
    """The search's own trials in `states`: the recovery stage's designs left out (a longer schedule,
    scored after the search: they count against no --trials and teach the search nothing)."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if not is_recovered(t)]


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


FLOOR_CONSTRAINT = "map_below_floor"


def constraint_values(scores: dict, budgets: dict) -> dict[str, float]:
    """{constraint: value - budget} for the run's budgets (see run_config.RunConfig.budgets); <= 0 is feasible."""
    values = {}
    if budgets.get("memory_bytes") is not None:
        values["memory_over_budget_bytes"] = scores["sram_bytes"] - budgets["memory_bytes"]
    if budgets.get("latency_ms") is not None:
        values["latency_over_budget_ms"] = scores["latency_ms"] - budgets["latency_ms"]
    if budgets.get("map_floor") is not None:
        values[FLOOR_CONSTRAINT] = budgets["map_floor"] - scores["map50_95"]
    return values


def tell_scores(study: optuna.Study, trial: Trial, scores: dict, budgets: dict) -> None:
    trial.set_user_attr(SCORE_ATTR, scores)
    trial.set_user_attr(SUMMARY_ATTR, design_name(trial.user_attrs.get(CANDIDATE_ATTR)))
    for name, value in constraint_values(scores, budgets).items():
        trial.set_constraint(name, value)
    study.tell(trial, [scores[name] for name in OBJECTIVES])


def tell_failure(study: optuna.Study, trial: Trial, error: str, *, node: dict | None = None,
                 attempts: int | None = None) -> None:
    """Record a failed trial: its error, and the node it failed on where its task said."""
    trial.set_user_attr(ERROR_ATTR, error)
    trial.set_user_attr(FAILED_ON_ATTR, {"node": node, "attempts": attempts})
    study.tell(trial, state=TrialState.FAIL)


def pareto_trials(study: optuna.Study, among: set[int] | None = None,
                  ignoring: tuple[str, ...] = ()) -> list[FrozenTrial]:
    """The Pareto front: Optuna's own front of feasible trials. `among`: of the trials with these
    numbers only (the guided search's moves start from the front of the designs within the space);
    `ignoring`: feasible by every constraint but these (constraint_values' names).

    When no trial is feasible, the front of all completed trials instead (their rows say
    feasible=False), so the report still shows the designs that come closest.
    """
    if among is None and not ignoring:
        front = study.best_trials  # honours the constraints: feasible trials only
        if front:
            return sorted(front, key=lambda t: -t.values[0])
    completed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if among is None or t.number in among]
    numbers: set[int] = set()
    # the constrained pass is done above already when neither `among` nor `ignoring` narrows it
    for constrained in (True, False) if among is not None or ignoring else (False,):
        scratch = optuna.create_study(directions=list(DIRECTIONS))  # in memory
        for trial in completed:
            copied = optuna.trial.create_trial(values=trial.values, user_attrs={"number": trial.number})
            for name, value in trial.constraints.items() if constrained else ():
                if name not in ignoring:
                    copied.set_constraint(name, value)
            scratch.add_trial(copied)
        numbers = {t.user_attrs["number"] for t in scratch.best_trials}
        if numbers:
            break
    return sorted((t for t in completed if t.number in numbers), key=lambda t: -t.values[0])


def trial_rows(study: optuna.Study) -> list[dict]:
    """Every finished trial as plain data, for the report."""
    pareto = {t.number for t in pareto_trials(study)}
    rows = []
    interrupted = interrupted_numbers(study)
    late = study.user_attrs.get(LATE_PREDICTED_ATTR, {})
    states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    for trial in study.get_trials(deepcopy=False, states=states):
        where = trial.user_attrs.get(SCORE_ATTR) or trial.user_attrs.get(FAILED_ON_ATTR) or {}
        rows.append({
            "number": trial.number,
            "state": trial.state.name,
            "pareto": trial.number in pareto,
            "feasible": all(v <= 0 for v in trial.constraints.values()) if trial.constraints else None,
            "scores": trial.user_attrs.get(SCORE_ATTR),
            "candidate": trial.user_attrs.get(CANDIDATE_ATTR),
            "error": trial_error(trial, interrupted),
            "duration_s": trial.duration.total_seconds() if trial.duration else None,
            "origin": trial.user_attrs.get(ORIGIN_ATTR, "sampled by Optuna"),
            "recipe": trial.user_attrs.get(RECIPE_ATTR),
            "control": trial.user_attrs.get(RECIPE_ATTR) == CONTROL,  # any of its training records
            "recovered_from": trial.user_attrs.get(RECOVERED_FROM_ATTR),
            "predicted": {**(trial.user_attrs.get(PREDICTED_ATTR) or {}), **late.get(str(trial.number), {})} or None,
            "node": node_label(where.get("node")),
            "attempts": where.get("attempts"),
        })
    return rows


def changes_structure(trial: FrozenTrial) -> bool:
    """Whether the trial's design changes a layer's shape (pruned channels, a cropped kernel, a low rank)."""
    candidate = trial.user_attrs.get(CANDIDATE_ATTR)
    return candidate is not None and Candidate.from_json(candidate).changes_structure()


def is_control(trial: FrozenTrial | Trial) -> bool:
    """Whether `trial` is the fp32 control: the base given the designs' fine-tune (recipes.CONTROL),
    from the base (its continuation for children, search/inherit.py, is not)."""
    return trial.user_attrs.get(RECIPE_ATTR) == CONTROL and CONTINUED_ATTR not in trial.user_attrs


def control_scores(study: optuna.Study) -> dict | None:
    """The scores of the fp32 control, once scored."""
    return next((trial.user_attrs[SCORE_ATTR] for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if is_control(trial)), None)


def completed_scores(study: optuna.Study) -> list[dict]:
    """The scores of every scored (COMPLETE) trial of the search (searched_trials)."""
    return [trial.user_attrs[SCORE_ATTR] for trial in searched_trials(study, states=(TrialState.COMPLETE,))
            if SCORE_ATTR in trial.user_attrs]


def node_label(node: dict | None) -> str | None:
    """The node a trial ran on, in one short line: host, IP and the start of Ray's node id."""
    if not node:
        return None
    return f"{node['hostname']} {node['ip']} {node['id'][:8]}"
