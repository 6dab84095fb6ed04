"""Where a search's time goes: an estimate when its trials start, and an account at its end.

Each trial's stages are measured inside its task (runners/evaluate.py: fine-tune, validation,
build + timing, and the whole task) and kept in its scores, so trials.csv has them too. A trial's
ask-to-tell time (Optuna's duration) less its task's is the time outside the task: waiting for a
worker, Ray's scheduling and the worker's start and imports.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator

import optuna
from optuna.trial import TrialState

from edgesearch.search import study as studies
from edgesearch.search.halving import halving_text
from edgesearch.search.recovery import recovery_text
from edgesearch.search.remeasure import REMEASURE_ATTR

TRIAL_STAGES = {"finetune_s": "fine-tune", "validate_s": "validation", "hardware_s": "build + timing"}
TASK = "eval_s"  # the whole task, measured inside it


def trial_times(study: optuna.Study) -> list[dict[str, float]]:
    """Per scored trial: each stage's seconds, the task's, and ask to tell (`trial_s`)."""
    times = []
    for trial in studies.searched_trials(study, states=(TrialState.COMPLETE,)):
        scores = trial.user_attrs.get(studies.SCORE_ATTR) or {}
        if TASK in scores and trial.duration is not None:
            times.append({**{k: scores.get(k) or 0.0 for k in (*TRIAL_STAGES, TASK)},
                          "trial_s": trial.duration.total_seconds()})
    return times


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def estimate_text(study: optuna.Study, trials_left: int, parallel: int, finetune_iters: int) -> str:
    """What the trials still to run will take: from the trials scored so far (median ask-to-tell
    time, `parallel` in flight), else a lower bound from the base's score, which timed a trial's
    validation and build but no fine-tune."""
    if trials_left <= 0:
        return "trials: none left to run"
    times = trial_times(study)
    if times:
        each = statistics.median(t["trial_s"] for t in times)
        return (f"estimated time for {trials_left} trial(s): {_minutes(trials_left * each / parallel)} "
                f"({parallel} in flight, {each:.0f} s each: the median of {len(times)} scored trial(s))")
    base = study.user_attrs.get("base") or {}
    known = (base.get("validate_s") or 0.0) + (base.get("hardware_s") or 0.0)
    return (f"estimated time for {trials_left} trial(s): more than {_minutes(trials_left * known / parallel)} "
            f"({parallel} in flight, {known:.0f} s each for validation, build and timing as the base's score "
            f"took them, plus a {finetune_iters}-step fine-tune not timed yet: the estimate follows the first trial)")


def account_text(study: optuna.Study, spent: dict[str, float]) -> str:
    """Where this run's time went: `spent` (stage name -> seconds in this invocation), and the scored
    trials' own stages (medians per trial, and the time outside their tasks)."""
    lines = ["where the time went: " + ", ".join(f"{name} {_minutes(s)}" for name, s in spent.items())]
    times = trial_times(study)
    if times:
        parts = [f"{label} {statistics.median(t[key] for t in times):.1f} s" for key, label in TRIAL_STAGES.items()]
        outside = statistics.median(t["trial_s"] - t[TASK] for t in times)
        lines.append(f"  per scored trial (median of {len(times)}): {', '.join(parts)}; the whole task "
                     f"{statistics.median(t[TASK] for t in times):.1f} s; outside it (waiting for a worker, Ray, "
                     f"the worker's start) {outside:.1f} s")
    for extra in (pause_text(study), reuse_text(study), halving_text(study), recovery_text(study)):
        if extra:
            lines.append("  " + extra)
    return "\n".join(lines)


def pause_text(study: optuna.Study) -> str:
    """How long the scored trials' timings waited for the other trials' work steps to pause
    (runners/hardware/turns.py); trials that reused an earlier build were not timed."""
    waits = [scores["timing_wait_s"] for scores in studies.completed_scores(study)
             if "timing_wait_s" in scores and not scores.get("build_reused")]
    if not waits:
        return ""
    return (f"timing waited for the other trials to pause: median {statistics.median(waits):.1f} s, at most "
            f"{max(waits):.1f} s, {sum(waits) / 60:.1f} min in all over {len(waits)} timed trial(s)")


def reuse_text(study: optuna.Study) -> str:
    """How many scored trials reused a build timed earlier in the run (runners/hardware/build_cache.py),
    and how many of the front's designs the re-measure timed from their trials' libraries."""
    flags = [scores["build_reused"] for scores in studies.completed_scores(study) if "build_reused" in scores]
    if not flags:
        return ""
    text = (f"builds reused: {sum(flags)} of {len(flags)} scored trial(s) ({100 * sum(flags) / len(flags):.0f} %) "
            "had a built graph timed before in the run and skipped build and timing")
    remeasure = study.user_attrs.get(REMEASURE_ATTR) or {}
    if "from_libraries" in remeasure:
        rebuilt = remeasure["designs"] - remeasure["from_libraries"]
        text += (f"; the re-measure timed {remeasure['from_libraries']} of its {remeasure['designs']} design(s) from "
                 "the libraries their trials built" + (f" and rebuilt {rebuilt}" if rebuilt else ""))
    return text


@contextlib.contextmanager
def stage(spent: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds the `with` block takes to spent[name]."""
    started = time.perf_counter()
    try:
        yield
    finally:
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
