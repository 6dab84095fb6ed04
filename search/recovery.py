"""The recovery stage: structural designs trained longer, so that structure survives (issue 19).

A one-shot structural cut (channels pruned, a kernel cropped, a rank lowered) loses more than the
search's short fine-tune wins back: after 60 steps, uniform 25 % channel pruning fell from 0.709 to
0.28 mAP50-95 on the default model (0.60 at the structural learning rate, finetune.STRUCTURAL_LR).
Published practice retrains after every cut. So, after the search, the front's structural designs
(at most MAX_FRONT_DESIGNS, spread along the front from the most accurate to the fastest:
spread_along_front) are trained again from the base for `--recover-steps` more steps, distilled from
the base, and scored like any trial. The recovery's steps come first and train the structure:
unfused, in float, a pruned design's channels cut in RECOVERY_CUTS steps
(runners/accuracy/structure_recovery.py). The fp32 control and the recipes that change structure get
the same schedule, so that a recovered design is compared with references that had the same training
record. The schedule's learning rate is higher than the fine-tune's (RECOVERY_LR: a cut has more to
win back than a quantizer).

With an accuracy floor, a guided run recovers the references (the control and the structural
recipes: is_reference) during the search, each as soon as it is scored (search/loop.py), so that the
guided search prices structure as the recovery leaves it (recovered_references, moves.py); the front's
designs the stage takes then include those under the floor that were predicted above it after
recovery (recoverable).

After the stage, with a floor, rounds of fewest-FLOPs seeds are planned at omega budgets between the
recovered ones above and under the floor, scored and recovered in turn (FLOPS_ROUNDS, next_flops_budgets,
search/loop.py): the floor is found by what recovered designs measured, not by the prediction alone.

Each recovered design becomes a new trial (origin "recovery of #N …", user attribute
`recovered_from`) and takes its place on the front where it earns it; its training record says
`recovery_steps`. Its accuracy floor rests on the recovered control, so recovered designs become trials
only once the control's recovery is in. Resumable: each finished recovery's scores are kept in the
study (RESULTS_ATTR) as it arrives, so a stopped run neither loses nor redoes one.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from edgesearch.runners.accuracy.finetune import STRUCTURAL_LR
from edgesearch.search import execution, study as studies

# The schedule's learning rate: a structural design's (runners/accuracy/finetune.py), for every design
# recovered, the control included. Measured on the default model, uniform 25 % channel pruning,
# distilled, mAP50-95 after 60/120/240/360 steps: lr 1e-4 0.282/0.476/0.582/0.628; lr 1e-3
# 0.604/0.671/0.746/0.768 (the base 0.709; the control at 1e-3: 0.729/0.753/0.785/0.770 after 300).
# 50 % pruning at 1e-3: 0.161 after 60 steps, 0.586 after 360.
RECOVERY_LR = STRUCTURAL_LR
# A pruned design's channels are cut in this many steps over the first third of its schedule, ranked
# again before each (runners/accuracy/structure_recovery.py). Measured on the default model, 60 %
# uniform pruning trained unfused, three seeds (bench/results/progressive_pruning.md, recovery_stage.md):
# after 1440 steps one cut holds 0.90-0.96 of the equally trained control, three 0.93-0.95; after 180,
# as the search runs it, medians 0.639 and 0.647 mAP50-95. No better beyond the seeds' spread; kept
# for the narrower spread, as Torch-Pruning's YOLOv8 example prunes.
RECOVERY_CUTS = 3
MAX_FRONT_DESIGNS = 4  # the front's structural designs recovered, at most (each costs a long fine-tune)
RESULTS_ATTR = "recovery_results"  # study attr: {source trial number: {"scores": ...} or {"error", "node", "attempts"}}
SOURCES_ATTR = "recovery_sources"  # study attr: the source trial numbers chosen, kept for a resume
STAGE_ATTR = "recovery"  # study attr: {state: done | skipped, why, steps, designs, failed, cuts}
# the origin of the floor's fewest-FLOPs seed after recovery (search/guided.py): recovered beside the
# front's designs, since the front (mAP, latency, memory) does not hold FLOPs and int8 designs dominate it
FEWEST_FLOPS_SEED = "seed: fewest FLOPs"
# After the stage, rounds of fewest-FLOPs seeds are planned between the recovered ones (next_flops_budgets),
# scored and recovered, until the floor binds: the seeds planned at the floor's budget and at half of it
# (search/guided.FLOPS_SEED_SHARES) recovered to 0.948 and 0.980 of the control against a 0.95 floor, at
# 8.4x and 4.7x fewer FLOPs; a design between them, 5.2x at 0.974. With the rounds, a run kept 8.04x at 0.954
# and found 8.48-10.7x under the floor (bench/results/flops_margin.md). Each round costs a trial and a recovery
# per seed, one seed per parallel slot (about 11 min at 1380 steps on the 2-core host).
FLOPS_ROUNDS = 2
FLOPS_ROUND_KEY = "flops_round"  # in a round's seeds' predicted scores: the round that planned it
NARROWEST_BRACKET = 0.05  # no further round once the bracket is narrower than this share of its upper budget


def choose_sources(study: optuna.Study, map_floor: float | None = None) -> list[FrozenTrial]:
    """The trials to recover: the references (is_reference) and the front's structural designs
    (MAX_FRONT_DESIGNS of them, spread_along_front), or those chosen before (a resumed stage). Empty
    when no design on the front changes structure. With an accuracy floor, the front's candidates
    include designs under it that the guided search predicted above it after recovery (recoverable), the
    floor's fewest-FLOPs seeds where predicted above the floor after recovery, and the seeds of the
    fewest-FLOPs rounds (chosen as they are scored)."""
    trials = {t.number: t for t in studies.searched_trials(study, states=(TrialState.COMPLETE,))}
    # chosen once: a resumed run recovers what it chose; the front moves once recovered designs join it,
    # and choosing again then took a fifth design (seen: a resume after a finished stage trained one more)
    chosen = set(study.user_attrs.get(SOURCES_ATTR, [])) & set(trials)
    if not chosen:
        chosen = {t.number for t in spread_along_front(recoverable(study, map_floor), MAX_FRONT_DESIGNS)}
        chosen |= {t.number for t in trials.values() if _fewest_flops_seed_kept(t, map_floor)}
    # a round's fewest-FLOPs seeds are planned after the stage, to be recovered whatever their prediction
    chosen |= {n for n, t in trials.items() if FLOPS_ROUND_KEY in (t.user_attrs.get(studies.PREDICTED_ATTR) or {})}
    if not chosen:
        return []
    chosen |= {n for n, t in trials.items() if is_reference(t)}
    study.set_user_attr(SOURCES_ATTR, sorted(chosen))
    # the control first: the recovered designs' accuracy floor waits for it
    return sorted((trials[n] for n in chosen), key=lambda t: (not studies.is_control(t), t.number))


def recoverable(study: optuna.Study, map_floor: float | None) -> list[FrozenTrial]:
    """The front's structural designs that are not recipes. With `map_floor`, the front of the designs
    held to every budget but the floor, of which those above the floor and those whose predicted mAP
    after recovery (`map50_95_recovered`, where the guided search priced the recovery) is above it:
    a structural design is kept or not after its recovery."""
    def candidate(trial: FrozenTrial) -> bool:
        return (not studies.is_recovered(trial) and studies.changes_structure(trial)
                and not trial.user_attrs.get(studies.RECIPE_ATTR))

    if map_floor is None:
        return [t for t in studies.pareto_trials(study) if candidate(t)]
    above = {t.number for t in studies.pareto_trials(study)}
    front = studies.pareto_trials(study, ignoring=(studies.FLOOR_CONSTRAINT,))
    return [t for t in front if candidate(t) and (t.number in above or _predicted_above_after_recovery(t, map_floor))]


def _predicted_above_after_recovery(trial: FrozenTrial, map_floor: float) -> bool:
    return (trial.user_attrs.get(studies.PREDICTED_ATTR) or {}).get("map50_95_recovered", -1.0) >= map_floor


def _fewest_flops_seed_kept(trial: FrozenTrial, map_floor: float | None) -> bool:
    return (map_floor is not None and trial.user_attrs.get(studies.ORIGIN_ATTR, "").startswith(FEWEST_FLOPS_SEED)
            and studies.changes_structure(trial) and _predicted_above_after_recovery(trial, map_floor))


def spread_along_front(front: list[FrozenTrial], count: int) -> list[FrozenTrial]:
    """`count` of the front's designs, evenly spaced in latency order: the most accurate and the fastest
    among them. The fastest structural designs lose most in the search's short fine-tune and have most
    to win back; the most accurate ones, least."""
    by_latency = sorted(front, key=lambda t: (t.values[1], -t.values[0], t.number))
    if len(by_latency) <= count:
        return by_latency
    last = len(by_latency) - 1
    return [by_latency[round(i * last / (count - 1))] for i in range(count)] if count > 1 else by_latency[-1:]


def recovery_settings(settings: dict, steps: int) -> dict:
    """A trial's settings with the recovery schedule: `steps` more fine-tune steps at RECOVERY_LR,
    distilled from the base, a pruned design's channels cut in RECOVERY_CUTS steps, no rung (every
    recovery runs to the end)."""
    return dict(settings, finetune_iters=settings["finetune_iters"] + steps, recovery_steps=steps, distill=True,
                lr=RECOVERY_LR, cuts=RECOVERY_CUTS, rung_steps=0, promotion_bar=None)


def recover_front(study: optuna.Study, settings: dict, steps: int, parallel: int, cpus: int, parcels: dict,
                  gpus: float, budgets_for: Callable[[dict | None], dict]) -> None:
    """Run the recovery stage (see the module's docstring) with `parallel` tasks in flight, each on
    `cpus` CPUs and `gpus` GPUs. `budgets_for(control_scores)`: the study's constraints with the
    accuracy floor resting on that control (RunConfig.budgets)."""
    if steps <= 0:
        study.set_user_attr(STAGE_ATTR, {"state": "skipped", "why": "--recover-steps 0", "steps": 0})
        return
    sources = choose_sources(study, budgets_for(studies.control_scores(study)).get("map_floor"))
    if not sources:
        study.set_user_attr(STAGE_ATTR, {"state": "skipped", "steps": steps,
                                         "why": "no design on the front changes structure"})
        return
    results = dict(study.user_attrs.get(RESULTS_ATTR, {}))
    _tell_ready(study, sources, results, steps, budgets_for)  # kept by a stopped run, not yet trials
    todo = [t for t in sources if str(t.number) not in results]
    print(f"recovery: {len(sources)} design(s) trained {steps} more steps from the base, distilled, learning rate "
          f"{RECOVERY_LR:g}, pruned channels cut in {RECOVERY_CUTS} steps ({len(sources) - len(todo)} done before)")
    task_settings = recovery_settings(settings, steps)
    in_flight: dict = {}
    with tqdm(total=len(sources), initial=len(sources) - len(todo), desc="recovery", unit="design") as bar:
        while todo or in_flight:
            while todo and len(in_flight) < max(1, parallel):
                source = todo.pop(0)
                in_flight[execution.submit(task_settings, source.user_attrs[studies.CANDIDATE_ATTR], cpus, parcels,
                                           gpus)] = source
            ref = execution.wait_one(list(in_flight))
            source = in_flight.pop(ref)
            if error := keep_result(study, source.number, ref):
                bar.write(error)
            results = dict(study.user_attrs[RESULTS_ATTR])
            _tell_ready(study, sources, results, steps, budgets_for)
            bar.update(1)
    failed = sum(1 for r in results.values() if "error" in r)
    study.set_user_attr(STAGE_ATTR, {"state": "done", "why": "", "steps": steps, "designs": len(sources),
                                     "failed": failed, "cuts": RECOVERY_CUTS})


def keep_result(study: optuna.Study, source: int, ref) -> str:
    """Keep the finished recovery task `ref` of trial `source` in the study at once (a stopped run does
    not redo it): its scores, or its error (told later as a failed trial; the run goes on). Returns
    the line to show for a failure, else ""."""
    results = dict(study.user_attrs.get(RESULTS_ATTR, {}))
    try:
        results[str(source)] = {"scores": execution.result(ref)}
    except Exception as error:
        results[str(source)] = {"error": execution.describe_error(error), "node": execution.failed_node(error),
                                "attempts": ref.attempts}
    study.set_user_attr(RESULTS_ATTR, results)
    return f"recovery of #{source} failed: {results[str(source)]['error']}" if "error" in results[str(source)] else ""


# ------------------------------------------------------------------ the references, recovered during the search

def is_reference(trial: FrozenTrial) -> bool:
    """Whether `trial` is one of the references every recovery stage recovers: the fp32 control or a
    recipe that changes structure (a searched trial, not a recovered one)."""
    return not studies.is_recovered(trial) and (studies.is_control(trial) or (
        bool(trial.user_attrs.get(studies.RECIPE_ATTR)) and studies.changes_structure(trial)))


def references_due(study: optuna.Study, started: set[int]) -> list[FrozenTrial]:
    """The scored references (is_reference) whose recovery is neither kept nor among `started`, the
    control first: a run with a recovery stage and an accuracy floor recovers them during the search
    (search/loop.py), so that the guided search prices structure as the recovery leaves it
    (recovered_references). The stage then finds them done."""
    kept = study.user_attrs.get(RESULTS_ATTR, {})
    due = [t for t in studies.searched_trials(study, states=(TrialState.COMPLETE,))
           if is_reference(t) and str(t.number) not in kept and t.number not in started]
    return sorted(due, key=lambda t: (not studies.is_control(t), t.number))


def recovered_references(study: optuna.Study) -> list[tuple[dict, float]]:
    """(design, mAP50-95 lost against the recovered control) of each structural recipe recovered so
    far; empty until the control's recovery is in."""
    kept = study.user_attrs.get(RESULTS_ATTR, {})
    trials = [t for t in studies.searched_trials(study, states=(TrialState.COMPLETE,)) if is_reference(t)]
    control = next((kept[str(t.number)].get("scores") for t in trials
                    if studies.is_control(t) and str(t.number) in kept), None)
    if control is None:
        return []
    return [(t.user_attrs[studies.CANDIDATE_ATTR], control["map50_95"] - kept[str(t.number)]["scores"]["map50_95"])
            for t in trials if not studies.is_control(t) and "scores" in kept.get(str(t.number), {})]


# ------------------------------------------------------------------ the fewest-FLOPs rounds, after the stage

def recovered_control_scores(study: optuna.Study) -> dict | None:
    """The recovered fp32 control's scores, once its recovery is in."""
    kept = study.user_attrs.get(RESULTS_ATTR, {})
    control = next((t for t in studies.searched_trials(study, states=(TrialState.COMPLETE,)) if studies.is_control(t)),
                   None)
    return kept.get(str(control.number), {}).get("scores") if control is not None else None


def fewest_flops_points(study: optuna.Study, omega: Callable[[dict], float]) -> list[tuple[float, float]]:
    """(omega, mAP50-95 after recovery) of each fewest-FLOPs seed recovered: its omega as `omega` prices
    it now (the budgets it was planned at were in the units of the model fitted then)."""
    kept = study.user_attrs.get(RESULTS_ATTR, {})
    points = []
    for trial in studies.searched_trials(study, states=(TrialState.COMPLETE,)):
        scores = kept.get(str(trial.number), {}).get("scores")
        if scores is not None and trial.user_attrs.get(studies.ORIGIN_ATTR, "").startswith(FEWEST_FLOPS_SEED):
            points.append((omega(trial.user_attrs[studies.CANDIDATE_ATTR]), scores["map50_95"]))
    return points


def flops_rounds_done(study: optuna.Study) -> int:
    """The last fewest-FLOPs round whose seeds are trials (0 before the first)."""
    return max((p.get(FLOPS_ROUND_KEY, 0) for t in study.get_trials(deepcopy=False)
                if (p := t.user_attrs.get(studies.PREDICTED_ATTR))), default=0)


def next_flops_budgets(points: list[tuple[float, float]], map_floor: float, count: int) -> tuple[list[float], str]:
    """The next round's omega budgets for the fewest-FLOPs seed, and where they come from in words.
    `points`: (omega, mAP50-95 after recovery) of the seeds recovered so far. The fewest FLOPs an omega
    budget buys fall as it grows, and the recovered mAP with them, so the floor lies between the largest
    omega recovered above it and the smallest recovered under it: `count` budgets split that bracket evenly (a
    k-section; the MNIST-complexity paper shrinks a model until its floor binds). With no seed under the
    floor the bracket reaches twice the largest omega; with none above it starts at 0. No budgets (and
    why) without a recovered seed, or once the bracket is narrower than NARROWEST_BRACKET of its top."""
    if not points:
        return [], "no fewest-FLOPs seed recovered"
    under = [budget for budget, map50_95 in points if map50_95 < map_floor]
    high = min(under) if under else 2 * max(budget for budget, _ in points)
    above = [budget for budget, map50_95 in points if map50_95 >= map_floor and budget < high]
    low = max(above) if above else 0.0
    if high - low < NARROWEST_BRACKET * high:
        return [], f"the bracket, omega {low:.4g} to {high:.4g}, is narrower than {NARROWEST_BRACKET:.0%} of its top"
    step = (high - low) / (count + 1)
    words = (f"between omega {low:.4g} ({'recovered above the floor' if above else 'no seed recovered above it'}) "
             f"and {high:.4g} ({'recovered under it' if under else 'twice the largest, none recovered under it'})")
    return [low + step * (i + 1) for i in range(count)], words


def _tell_ready(study: optuna.Study, sources: list[FrozenTrial], results: dict, steps: int,
                budgets_for: Callable[[dict | None], dict]) -> None:
    """Make a trial of each finished recovery not yet told, once the recovered control's is in."""
    control = next((t for t in sources if studies.is_control(t)), None)
    if control is not None and str(control.number) not in results:
        return
    control_scores = results[str(control.number)].get("scores") if control is not None else None
    budgets = budgets_for(control_scores)
    interrupted = studies.interrupted_numbers(study)  # a stopped run's: told again
    told = {t.user_attrs[studies.RECOVERED_FROM_ATTR] for t in study.get_trials(deepcopy=False)
            if studies.is_recovered(t) and t.state.is_finished() and studies.trial_error(t, interrupted) != studies.INTERRUPTED}
    for source in sources:
        result = results.get(str(source.number))
        if result is None or source.number in told:
            continue
        origin = source.user_attrs.get(studies.ORIGIN_ATTR, "sampled by Optuna")
        attrs = {studies.CANDIDATE_ATTR: source.user_attrs[studies.CANDIDATE_ATTR], studies.RECOVERED_FROM_ATTR: source.number,
                 studies.ORIGIN_ATTR: f"recovery of #{source.number}: {steps} more steps, distilled ({origin})"}
        if source.user_attrs.get(studies.RECIPE_ATTR):
            attrs[studies.RECIPE_ATTR] = source.user_attrs[studies.RECIPE_ATTR]
        study.enqueue_trial({}, user_attrs=attrs)
        trial = study.ask()
        if trial.user_attrs.get(studies.RECOVERED_FROM_ATTR) != source.number:  # another queued trial came first
            raise RuntimeError(f"recovery of #{source.number}: the study handed out trial {trial.number} instead")
        if "scores" in result:
            studies.tell_scores(study, trial, result["scores"], budgets)
        else:
            studies.tell_failure(study, trial, result["error"], node=result.get("node"), attempts=result.get("attempts"))


def recovery_text(study: optuna.Study) -> str:
    """The recovery stage in one line for the run's account: what it did (or why not), and its cost."""
    stage = study.user_attrs.get(STAGE_ATTR)
    if not stage:
        return ""
    if stage["state"] != "done":
        return f"recovery stage: skipped ({stage['why']})"
    results = study.user_attrs.get(RESULTS_ATTR, {}).values()
    seconds = [r["scores"]["eval_s"] for r in results if "scores" in r]
    median = f"; {statistics.median(seconds):.0f} s per design (median task)" if seconds else ""
    failed = f", {stage['failed']} failed" if stage.get("failed") else ""
    cuts = f", pruned channels cut in {stage['cuts']} steps" if stage.get("cuts", 1) > 1 else ""  # runs before: once
    rounds = flops_rounds_done(study)
    what = ("the control, structural recipes, the front's structural designs and the seeds of "
            f"{rounds} fewest-FLOPs round(s)" if rounds else "the control, structural recipes and the front's "
            "structural designs")
    return (f"recovery stage: {stage['designs']} design(s) ({what}) trained {stage['steps']} more steps from the "
            f"base, distilled, learning rate {RECOVERY_LR:g}{cuts}{failed}{median}")
