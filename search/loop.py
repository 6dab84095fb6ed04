"""The search loop (`search run`): ask designs, score them as Ray tasks, tell the study; the guided
strategy's tables and first designs; then the recovery stage, the front's re-measure and the report."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from optuna.trial import TrialState
from tqdm import tqdm

from edgesearch.search import execution, halving, inherit, shipping, study as studies, timing
from edgesearch.search.presets import PRESETS
from edgesearch.search.recovery import (
    FLOPS_ROUNDS,
    fewest_flops_points,
    flops_rounds_done,
    keep_result,
    next_flops_budgets,
    recover_front,
    recovered_control_scores,
    recovery_settings,
    references_due,
)
from edgesearch.search.remeasure import REMEASURE_ATTR, remeasure_front
from edgesearch.search.resolve import Inputs, eval_settings, ship_inputs
from edgesearch.search.run_config import RunConfig
from edgesearch.search.run_report import write_run_report

SLOT_POLL_S = 2.0  # how often the loop looks whether a slot the sampler held is free again


def run_search(inputs: Inputs, run_dir: Path, run: RunConfig, *, resume: bool, ray_address: str | None,
               archives: dict | None = None, device: str = "auto", gpus_per_trial: float = 0.0,
               given_designs: list | None = None) -> dict:
    """The search loop: ask candidates, score them as Ray tasks (locally, or on the cluster at
    `ray_address`), tell Optuna, write the report. Only this process opens the study. `device`
    and `gpus_per_trial` are this invocation's (execution.trial_gpus), never the run folder's: a
    resumed run chooses again on the machine it runs on. `given_designs` ((name, Candidate), from
    `--designs`) are queued when the run starts, before anything else."""
    parallel = max(1, run.parallel)
    spent: dict[str, float] = {}  # this invocation's stages (timing.account_text)
    archives = archives or ship_inputs(inputs)
    started_ray = execution.start_ray(ray_address, shipping.total_bytes(archives))
    try:
        cpus_per_trial = execution.cpus_per_trial(parallel)
        settings = eval_settings(inputs, imgsz=run.imgsz, finetune_iters=run.finetune_iters, batch=run.batch,
                                 threads=cpus_per_trial, seed=run.seed, tune_trials=run.tune_trials,
                                 distill=run.distill, measurement=run.measurement,
                                 device=device)
        print(execution.describe_devices(device, gpus_per_trial))
        parcels = shipping.put(archives)
        strategy = run.strategy
        study = studies.open_study(run_dir, seed=run.seed, population_size=run.population, create=not resume,
                                   strategy=strategy)
        if run.build_reuse:  # designs whose built graph was timed before in the run reuse its figure
            settings["build_cache"] = studies.run_id(study)
        settings["rung_steps"] = run.rung_steps  # successive halving (search/halving.py)
        if run.child_steps:  # children start from their parent's fine-tuned weights (search/inherit.py)
            settings.update(kept_weights=studies.run_id(study), child_iters=run.child_steps)
        if not resume and given_designs:
            studies.enqueue_given(study, given_designs, inputs.resolved)
        if not resume and strategy == "nsga2":
            studies.enqueue_anchors(study, inputs.resolved)
        requeued = studies.requeue_interrupted(study)
        if requeued:
            print(f"resuming: {requeued} interrupted trial(s) queued again")
        tables = None
        if strategy == "guided":  # the cost basis now; the sensitivity pass beside the base score and the trials
            with timing.stage(spent, "cost tables"):
                tables = _start_tables(inputs, settings, run, run_dir, cpus_per_trial)
        if "base" not in study.user_attrs:
            print("scoring the base model (no changes, no fine-tune)")
            base_settings = dict(settings, finetune_iters=0)
            with timing.stage(spent, "base score"):
                study.set_user_attr("base", execution.result(execution.submit(base_settings, None, cpus_per_trial,
                                                                              parcels, gpus_per_trial)))
        budgets = run.budgets(study.user_attrs["base"], studies.control_scores(study))
        sampler = _guided_sampler(inputs, run, study, budgets, tables) if tables is not None else None
        if sampler is not None:
            study.sampler = sampler
        print(timing.estimate_text(study, run.trials - studies.finished_count(study), parallel, run.finetune_iters))
        # with a floor, a guided run recovers its references during the search: the floor judges a
        # structural design after its recovery, so the search prices structure as the recovery leaves it
        references = (recovery_settings(settings, run.recover_steps)
                      if sampler is not None and run.recover_steps > 0 and run.max_map_drop else None)
        with timing.stage(spent, "trials"):
            _search_loop(study, inputs, settings, run.trials, parallel, cpus_per_trial, budgets, parcels,
                         gpus_per_trial, floor=lambda control: run.budgets(study.user_attrs["base"], control),
                         recover_references=references)
        if sampler is not None:  # its table belongs in the run folder, even if no trial needed it
            with timing.stage(spent, "waiting for the sensitivity pass") if not sampler.ready() else nullcontext():
                sampler.wait()
            if sampler.table_seconds is not None:
                spent["sensitivity pass (beside the first trials)"] = sampler.table_seconds
        def recover() -> None:  # queued trials first (_recovery_stage): those a stopped fewest-FLOPs round left
            _recovery_stage(study, lambda count: _search_loop(
                study, inputs, settings, studies.finished_count(study) + count, parallel, cpus_per_trial, budgets,
                parcels, gpus_per_trial), lambda: recover_front(
                study, settings, run.recover_steps, parallel, cpus_per_trial, parcels, gpus_per_trial,
                budgets_for=lambda control: run.budgets(study.user_attrs["base"], control)))

        with timing.stage(spent, "recovery"):  # before the re-measure: recovered designs may join the front
            recover()
        if references is not None:  # a guided run with a floor and a recovery stage
            with timing.stage(spent, "fewest-FLOPs rounds"):
                _fewest_flops_rounds(study, sampler, parallel, recover, floor=lambda control: run.budgets(
                    study.user_attrs["base"], control)["map_floor"])
        from edgesearch.runners.hardware.measure import timed_here

        if timed_here(inputs.profile):
            with timing.stage(spent, "re-measure"):
                remeasure_front(study, settings, cpus_per_trial, parcels)  # with the trials' thread count
        else:
            study.set_user_attr(REMEASURE_ATTR, {"state": "skipped", "why": f"profile {inputs.profile.name} is not "
                                                 "timed on this machine: its figures are the search's own"})
    finally:
        if started_ray:  # else the caller's (a batch of searches shares one connection)
            execution.stop_ray()
    with timing.stage(spent, "report"):
        report = write_run_report(run_dir, study=study)
    from edgesearch.search.guided import pricing_text

    if pricing := pricing_text(study):
        print(pricing)
    print(timing.account_text(study, spent))
    return report


def _start_tables(inputs: Inputs, settings: dict, run: RunConfig, run_dir: Path, threads: int):
    """The guided strategy's tables: the cost basis now (cached; on a measured profile it times
    blocks, so nothing else may run), and the sensitivity pass started in a thread beside what
    follows, both with a trial's `threads`: a move's predicted latency is its parent's measured one
    plus the basis' change, so the basis is timed as the trials are (at 2 threads instead of 1 it
    priced YOLOv5nu's base at 3.41 ms against 5.56 measured). Not the pass beside the basis: the
    basis exports blocks with torch.export, whose tracer patches every module's call for the whole
    process, so the pass's forwards in another thread were traced into the block (tried: the
    export failed, "Unexpected key _export_root.block.m.0.cv2"). (recipes, options, basis, future
    of the table, the convs' shapes and what each prune cut removes: FLOPs counted on pruned shapes):
    guided_space's recipes and options, made once for both the pass and the sampler."""
    from edgesearch.runners.conv_shapes import conv_shapes
    from edgesearch.search import analysis

    recipes, options = guided_space(inputs, run.preset)
    basis = analysis.cost_basis(settings, run_dir, threads)
    cuts = [(layer, float(ratio)) for layer, knobs in options.items() for ratio in knobs.get("prune_ratio", []) if ratio]
    shapes = conv_shapes(inputs.base_model, cuts, run.imgsz)  # a second: one DepGraph trace, no data
    return recipes, options, basis, analysis.start_sensitivity(settings, options, run_dir, threads), shapes


def _guided_sampler(inputs: Inputs, run: RunConfig, study, budgets: dict, tables):
    """The guided strategy's sampler, and in a new study the plan of recipes (and of the seeds to
    come, once the sensitivity table is in) to score first."""
    from edgesearch.runners.hardware.cost_basis import latency_key
    from edgesearch.search.flops_count import FlopsCounter
    from edgesearch.search.guided import Guide, GuidedSampler
    from edgesearch.search.options import OptionPricer

    recipes, options, basis, table, shapes = tables
    # a conv's FLOPs that another layer's cut removes are priced at its fastest precision: on the
    # safe side, since which precision it computes in is its own layer's choice
    ms_per_flop = {conv: min(cost[latency_key(p)] for p in basis["compute_precisions"]) / cost["flops"]
                   for conv, cost in basis["layers"].items() if cost["flops"]}

    def make_guide(sensitivity: dict) -> Guide:
        pricer = OptionPricer(sensitivity, basis, counter=FlopsCounter(shapes, ms_per_flop))
        return Guide(pricer, inputs.resolved, study.user_attrs["base"], budgets, run.seed)

    sampler = GuidedSampler((table, make_guide), options, run.seed)
    sampler.plan(study, recipes, seed_count(run.trials, len(recipes)))
    return sampler


def guided_space(inputs: Inputs, preset: str) -> tuple[dict, dict[str, dict[str, list]]]:
    """The recipes (name -> Candidate) a guided run scores first, and {layer: {knob: values}}: the
    space's values and those the recipes use (recipes are priced too, whatever the space offers)."""
    from edgesearch.search.recipes import recipe_candidates, recipe_options

    layers = list(inputs.resolved)
    recipes = recipe_candidates(inputs.base_model, layers, PRESETS[preset].recipes, inputs.profile.compute_precisions)
    extra = recipe_options(recipes, layers)
    options = {name: {knob: _merged(values, extra[name].get(knob, ())) for knob, values in layer.choices.items()}
               for name, layer in inputs.resolved.items()}
    return recipes, options


def seed_count(trials: int, recipes: int) -> int:
    """Budgeted seeds after the recipes: about a quarter of the trials (2-8), never more than remain."""
    return max(0, min(max(2, trials // 4), 8, trials - recipes))


def _merged(values: list, extra) -> list:
    return list(values) + [v for v in sorted(extra, key=str) if v not in values]


def _recovery_stage(study, run_trials: Callable[[int], None], recover_front: Callable[[], None]) -> None:
    """The recovery stage (`recover_front()`), after `run_trials(count)` scores the trials queued in the
    study: the seeds a stopped fewest-FLOPs round queued or a kill left to run again. The stage tells each
    recovered design through the study's queue of trials, which would hand it a queued seed instead."""
    if waiting := len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))):
        run_trials(waiting)
    recover_front()


def _fewest_flops_rounds(study, sampler, parallel: int, recover: Callable[[], None],
                         floor: Callable[[dict], float]) -> None:
    """After the recovery stage: up to recovery.FLOPS_ROUNDS rounds of `parallel` fewest-FLOPs seeds at
    omega budgets inside the bracket the recovered ones make (recovery.next_flops_budgets), queued as
    trials in the study, then scored and recovered by `recover()` (_recovery_stage), until the accuracy
    floor (`floor(recovered control's scores)`) binds. The study holds every step: a stopped run's stage
    scores the queued seeds and recovers those not yet recovered, and the rounds go on from there."""
    while True:
        done = flops_rounds_done(study)
        if done >= FLOPS_ROUNDS:
            return
        control, omega = recovered_control_scores(study), sampler.guide.recovered_omega(study)
        if control is None or omega is None:
            print("fewest-FLOPs rounds: none, " + ("the fp32 control was not recovered" if control is None else
                                                  "no structural recipe was recovered to price structure after "
                                                  "recovery"))
            return
        budgets, bracket = next_flops_budgets(fewest_flops_points(study, omega), floor(control), parallel)
        proposals = sampler.guide.fewest_flops_proposals(study, budgets, done + 1, bracket) if budgets else []
        if not proposals:
            print(f"fewest-FLOPs rounds: stopped after {done}: "
                  f"{bracket if not budgets else 'the budgets give designs already tried'}")
            return
        print(f"fewest-FLOPs round {done + 1} of {FLOPS_ROUNDS}: {len(proposals)} seed(s) at omega "
              f"{', '.join(f'{b:.4g}' for b in budgets)}, {bracket}")
        for proposal in proposals:  # queued with their designs: handed out before anything the sampler proposes
            study.enqueue_trial({}, user_attrs=proposal.user_attrs())
        recover()


def _search_loop(study, inputs: Inputs, settings: dict, trials: int, parallel: int, cpus: int, budgets: dict,
                 parcels: dict | None = None, gpus: float = 0.0, floor=None,
                 recover_references: dict | None = None) -> None:
    """Keep `parallel` trials in flight until the run has `trials` trials, each asking Ray for `cpus`
    CPUs and `gpus` GPUs; `parcels`: the shipped inputs (shipping.put), None to ship them here. A
    sampler that chooses whole designs (guided) is asked first whether it has one. `floor(control)`:
    the budgets once the fp32 control is scored (RunConfig.budgets), updated in place so that the
    guided sampler, which holds the same dict, plans the floor's seeds against them.
    `recover_references`: the recovery stage's settings, to recover the control and the structural
    recipes as soon as each is scored (search/recovery.references_due), before the next trial; they
    take trial slots but count against no --trials."""
    designer = study.sampler if isinstance(study.sampler, studies.DesignSampler) else None
    if parcels is None:
        parcels = shipping.put(ship_inputs(inputs))
    finished = studies.finished_count(study)
    estimated_from_trials = bool(timing.trial_times(study))  # else a better estimate follows the first trial
    in_flight: dict = {}
    recovering: dict = {}  # task -> the number of the reference it recovers
    with tqdm(total=trials, initial=finished, desc="trials", unit="trial") as bar:
        while True:
            # while the sampler's own work (the sensitivity pass) runs beside, it holds trial slots
            busy = designer.busy_slots() if designer is not None else 0
            slots = max(1, parallel - busy)
            if recover_references is not None:  # the last trial may be a reference: before the loop's end
                _recover_due(study, recover_references, recovering, slots - len(in_flight), cpus, parcels, gpus, bar)
            if not (finished + len(in_flight) < trials or in_flight or recovering):
                break
            while len(in_flight) + len(recovering) < slots and finished + len(in_flight) < trials:
                if designer is not None and not studies.has_waiting(study) and not designer.prepare(study):
                    break  # no scored design to move from yet (or no new move): wait for one
                trial = study.ask()
                candidate = studies.candidate_of(trial, inputs.resolved)
                trial_settings = inherit.parent_settings(
                    study, trial, candidate, _with_bar(study, trial, settings, candidate, budgets.get("map_floor")),
                    len(inputs.resolved))
                in_flight[execution.submit(trial_settings, candidate, cpus, parcels, gpus)] = trial
            if not in_flight and not recovering:
                if designer is not None and designer.wait():
                    continue  # its tables are in now: it can propose
                why = ("every move from the front was tried already, or is predicted below the accuracy floor"
                       if studies.pareto_trials(study) else "no design was scored to move from")
                bar.write(f"no new design to try: {why}")
                break
            # with a slot held, look again now and then: the slot frees when the sampler's work ends
            ref = execution.wait_one_within(list(in_flight) + list(recovering), SLOT_POLL_S if busy else None)
            if ref is None:
                continue
            if ref in recovering:  # kept for the stage, which tells it as a trial
                if error := keep_result(study, recovering.pop(ref), ref):
                    bar.write(error)
                continue
            trial = in_flight.pop(ref)
            try:
                scores = execution.result(ref)
            except Exception as error:  # a failing candidate is recorded, the search goes on
                studies.tell_failure(study, trial, execution.describe_error(error),
                                     node=execution.failed_node(error), attempts=ref.attempts)
                bar.write(f"trial {trial.number} failed: {execution.describe_error(error)}")
            else:
                studies.tell_scores(study, trial, scores, budgets)
                if floor is not None and studies.is_control(trial):
                    budgets.update(floor(scores))
                if settings.get("child_iters") and studies.is_control(trial):
                    inherit.continue_control(study, study.get_trials(deepcopy=False)[trial.number])
                if not estimated_from_trials and finished + 1 < trials:
                    bar.write(timing.estimate_text(study, trials - finished - 1, parallel, settings["finetune_iters"]))
                    estimated_from_trials = True
            finished += 1
            bar.update(1)
            bar.set_postfix_str(_front_summary(study), refresh=True)


def _recover_due(study, settings: dict, recovering: dict, room: int, cpus: int, parcels: dict, gpus: float,
                 bar: tqdm) -> None:
    """Start the recovery (`settings`) of each reference due (recovery.references_due) while fewer than
    `room` recoveries are in flight; `recovering`: task -> reference number, added to."""
    for source in references_due(study, set(recovering.values())):
        if len(recovering) >= room:
            return
        bar.write(f"recovering #{source.number} ({source.user_attrs.get(studies.RECIPE_ATTR)}) now: "
                  "the accuracy floor judges structure after its recovery")
        recovering[execution.submit(settings, source.user_attrs[studies.CANDIDATE_ATTR], cpus, parcels,
                                    gpus)] = source.number


def _with_bar(study, trial, settings: dict, candidate: dict, map_floor: float | None) -> dict:
    """A move's settings with its promotion bar (search/halving.py); anything else's unchanged."""
    from edgesearch.runners.evaluate import EvalSettings, design_lr

    if not settings.get("rung_steps") or not str(trial.user_attrs.get(studies.ORIGIN_ATTR, "")).startswith("move:"):
        return settings
    predicted = trial.user_attrs.get(studies.PREDICTED_ATTR) or {}
    if "map50_95_recovered" in predicted:  # the floor judges it after its recovery, not at this fine-tune's end
        map_floor = None
    bar = halving.promotion_bar(study, predicted, settings["finetune_iters"],
                                map_floor=map_floor, lr=design_lr(EvalSettings(**settings), candidate))
    return settings if bar is None else dict(settings, promotion_bar=bar)


def _front_summary(study) -> str:
    """The current front in a few words, for the trials' progress bar."""
    front = studies.pareto_trials(study)
    if not front:
        return "no design scored yet"
    scores = [t.user_attrs[studies.SCORE_ATTR] for t in front]
    return (f"front {len(front)}: best mAP50-95 {max(s['map50_95'] for s in scores):.3f}, "
            f"smallest {min(s['sram_bytes'] for s in scores) / 2**20:.2f} MiB, "
            f"fastest {min(s['latency_ms'] for s in scores):.2f} ms")
