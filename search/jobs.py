"""Resolving a user's inputs (profile, space, data, base model) before anything is written, and
the two jobs built on them: scoring one candidate (`search eval`) and a whole search (`search run`)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
from pathlib import Path

from torch import nn
from tqdm import tqdm

from edgesearch.reports.compare_report import write_comparison
from edgesearch.reports.design_data import recommendations
from edgesearch.reports.pareto_report import pareto_table, write_report
from edgesearch.runners.accuracy.finetune import load_dataset_info
from edgesearch.runners.accuracy.splits import check_splittable
from edgesearch.runners.checkpoints import load_detection_model
from edgesearch.runners.hardware.profiles import HardwareProfile, load_profile
from edgesearch.search import execution, shipping, study as studies
from edgesearch.search.base_model import default_base_checkpoint
from edgesearch.search.default_data import build_digit_dataset
from edgesearch.search.paths import cache_dir, write_text_atomically
from edgesearch.search.presets import PRESETS
from edgesearch.search.report_inputs import report_extras
from edgesearch.spaces.errors import InputError
from edgesearch.spaces.space import LayerChoices, Space, load_space

RUN_FILE = "run.json"
REMEASURE_ATTR = "remeasure"  # {state: done | failed | skipped, why}: what became of the final re-measure


@dataclasses.dataclass
class Inputs:
    profile: HardwareProfile
    space: Space
    data_yaml: Path
    checkpoint: Path
    trust_checkpoint: bool
    base_model: nn.Module  # loaded from `checkpoint`
    resolved: dict[str, LayerChoices]  # per-layer choices of the space on this model


def resolve_inputs(*, profile: str, space: str, model: str | None, data: str | None, preset: str,
                   trust_checkpoint: bool = False, mnist_dir: str | None = None, seed: int = 0,
                   train_images: int | None = None, val_images: int | None = None, device: str = "auto") -> Inputs:
    """Check every input and produce the data and base model (cached; trained on `device`) - nothing
    else is written."""
    hardware = load_profile(profile)
    design_space = load_space(space)
    settings = PRESETS[preset]
    recipe = dataclasses.replace(settings.data, n_train=train_images or settings.data.n_train,
                                 n_val=val_images or settings.data.n_val)
    if data:
        data_yaml = Path(data).resolve()
        if not data_yaml.is_file():
            raise InputError(f"data.yaml {data} does not exist")
        load_dataset_info(data_yaml)
        check_splittable(data_yaml)  # the held-out images every trial is also scored on
    else:
        data_yaml = build_digit_dataset(recipe, Path(mnist_dir) if mnist_dir else None)
    if model:
        checkpoint = Path(model).resolve()
        base = load_detection_model(checkpoint, trust=trust_checkpoint)
    else:
        checkpoint = default_base_checkpoint(settings, data_yaml, seed, device)
        trust_checkpoint = False
        base = load_detection_model(checkpoint)
    resolved = design_space.resolve(base, hardware.compute_precisions, hardware.name)
    return Inputs(hardware, design_space, data_yaml, checkpoint, trust_checkpoint, base, resolved)


def eval_settings(inputs: Inputs, *, imgsz: int, finetune_iters: int, batch: int, threads: int, seed: int,
                  tune_trials: int = 0, distill: bool = False, measurement: dict | None = None,
                  device: str = "auto") -> dict:
    """The plain settings a trial needs (sent to Ray workers as-is). `measurement`: a search's one
    decision about latency (decide_measurement); None: each call decides. `device`: the --device
    spec (runners/device.py), resolved where the work runs (a Ray trial: on the GPU Ray assigned it)."""
    return {
        "device": device,
        "measurement": measurement,
        "tune_trials": tune_trials,
        "distill": distill,
        "tuning_db": str(cache_dir() / "tuning" / inputs.profile.name),  # shared by every run on this profile
        "checkpoint": str(inputs.checkpoint),
        "trust_checkpoint": inputs.trust_checkpoint,
        "data_yaml": str(inputs.data_yaml),
        "profile": inputs.profile.source,  # a path, so custom profile YAMLs reach the workers too
        "imgsz": imgsz,
        "finetune_iters": finetune_iters,
        "batch": batch,
        "threads": threads,
        "seed": seed,
    }


# ------------------------------------------------------------------------------------ search


def run_folder(out: str | None, profile: str, space: str, preset: str) -> Path:
    """--out, else reports/<profile>-<space>[-<preset>] under the current directory (never inside
    the installed package)."""
    if out:
        return Path(out).resolve()
    suffix = "" if preset == "default" else f"-{preset}"
    return Path.cwd().resolve() / "reports" / f"{profile}-{space}{suffix}"


class RunLock:
    """One search per run folder at a time (a second one would corrupt the trial bookkeeping)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"

    def __enter__(self):
        # never follow a link planted at .lock (open(..., "w") would truncate its target) and never
        # truncate: the lock is the open file, not its content
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise InputError(f"cannot open the run folder's lock {self.path} ({error.strerror}); "
                             "if it is a symbolic link, remove it") from None
        self.handle = os.fdopen(fd, "r+b")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another search is running in {self.path.parent}") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _write_json(path: Path, payload: dict) -> None:
    write_text_atomically(path, json.dumps(payload, indent=2))


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse a run folder this command cannot use (before any slow work): a resume needs a run
    there; a new run needs the folder absent or empty (the report would overwrite other files)."""
    run_file = run_dir / RUN_FILE
    if resume and not run_file.exists():
        raise InputError(f"nothing to resume in {run_dir} (no {RUN_FILE})")
    if not resume and run_file.exists():
        raise InputError(f"{run_dir} already holds a run; pass --resume to continue it or --out for a new one")
    if not resume and run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise InputError(f"{run_dir} exists and is not an empty folder or a run folder; choose another --out")


def prepare_run_dir(run_dir: Path, run: dict, resume: bool, explicit: dict | None = None) -> dict:
    """Create (or, with resume, reopen) a run folder; returns the run's settings. On resume,
    settings given explicitly on the command line (`explicit`, None = not given) must match the run's."""
    check_run_dir(run_dir, resume)
    run_file = run_dir / RUN_FILE
    if resume:
        stored = json.loads(run_file.read_text())
        if stored.get("space_sha256", run["space_sha256"]) != run["space_sha256"]:
            # the study's stored choices would no longer match the space's: sampling would break
            raise InputError(f"space {stored['space_file']} changed since the run in {run_dir} started; "
                             "start a new run with --out")
        for key, value in (explicit or {}).items():
            if value is not None and stored.get(key) != value:
                raise InputError(f"the run in {run_dir} started with {key} {stored.get(key)!r}, not {value!r}; "
                                 "start a new run with --out")
        stored["trials"] = max(stored["trials"], run["trials"])  # a resume may ask for more trials
        stored["trust_checkpoint"] = run.get("trust_checkpoint", False)  # this command line's, never the folder's
        _write_json(run_file, stored)
        return stored
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_file, run)
    return run


def memory_budget(run: dict) -> dict:
    """The run's hard memory budget ({kind, bytes, source}); runs from before memory_limit had the
    profile's SRAM."""
    return run.get("memory_budget") or {"kind": "sram", "bytes": run["sram_budget_bytes"], "source": "profile"}


def run_budgets(run: dict, base: dict) -> dict:
    """The constraints of the study: memory (hard), latency (if asked), accuracy floor (if asked)."""
    drop = run.get("max_map_drop")
    return {"memory_bytes": memory_budget(run)["bytes"], "memory_kind": memory_budget(run)["kind"],
            "latency_ms": run.get("latency_budget_ms"),
            "map_floor": base["map50_95"] * (1 - drop) if drop else None}


def check_smallest_design_fits(inputs: Inputs, run: dict) -> None:
    """Refuse a budget no design of the space can meet, before any search: the smallest design
    (least packed bytes per layer, int8 activations where offered) is packed and its activations
    planned by TVM."""
    budget = memory_budget(run)
    if budget["bytes"] is None:
        return
    from edgesearch.runners.hardware.memory import design_memory  # loads TVM
    from edgesearch.spaces.apply import apply_candidate, smallest_candidate

    smallest = smallest_candidate(inputs.base_model, {n: layer.choices for n, layer in inputs.resolved.items()})
    memory = design_memory(apply_candidate(inputs.base_model, smallest), run["imgsz"], inputs.profile.target)
    if memory["memory_bytes"] > budget["bytes"]:
        raise InputError(
            f"no design can meet the {budget['kind'].upper()} budget of {budget['bytes'] / 1024:,.0f} KiB "
            f"({budget['source']}): the smallest design of space {inputs.space.name} needs "
            f"{memory['memory_bytes'] / 1024:,.0f} KiB ({memory['weight_bytes'] / 1024:,.0f} KiB packed weights + "
            f"{memory['activation_bytes'] / 1024:,.0f} KiB planned activations); set --sram-budget or another profile")


def decide_measurement(inputs: Inputs, run: dict, estimate_only: bool = False) -> None:
    """How this whole search obtains latency (measure.decide_measurement): decided once, here, so that
    one objective never mixes measured and estimated figures; a device that is there but cannot be
    built for is refused before anything is written."""
    from edgesearch.runners.hardware import measure  # loads TVM

    plan = measure.decide_measurement(inputs.profile, estimate_only=estimate_only)
    run["measurement"] = dataclasses.asdict(plan)
    measurer = measure.measurer_for(inputs.profile, plan, tune_trials=run.get("tune_trials", 0))
    print(f"latency on {inputs.profile.name}: every trial {measurer.describe()}")


def run_measurement(run: dict) -> dict | None:
    """The run's measurement plan; runs from before it recorded latency_mode (RPC profiles only)."""
    if "measurement" in run:
        return run["measurement"]
    mode = run.get("latency_mode")
    if mode == "estimated":
        return {"kind": "estimate", "why": run.get("latency_mode_why") or "no device when the run started"}
    return {"kind": "rpc"} if mode == "measured" else None


def ship_inputs(inputs: Inputs) -> dict:
    """The archives of the files a trial opens (search/shipping.py); an input that cannot be shipped
    is refused here, before anything is written."""
    return shipping.pack_inputs(checkpoint=inputs.checkpoint, data_yaml=inputs.data_yaml,
                                profile=Path(inputs.profile.source))


def run_search(inputs: Inputs, run_dir: Path, run: dict, *, resume: bool, ray_address: str | None,
               archives: dict | None = None, device: str = "auto", gpus_per_trial: float = 0.0) -> dict:
    """The search loop: ask candidates, score them as Ray tasks (locally, or on the cluster at
    `ray_address`), tell Optuna, write the report. Only this process opens the study. `device`
    and `gpus_per_trial` are this invocation's (execution.trial_gpus), never the run folder's: a
    resumed run chooses again on the machine it runs on."""
    parallel = max(1, run["parallel"])
    archives = archives or ship_inputs(inputs)
    started_ray = execution.start_ray(ray_address, shipping.total_bytes(archives))
    try:
        cpus_per_trial = execution.cpus_per_trial(parallel)
        settings = eval_settings(inputs, imgsz=run["imgsz"], finetune_iters=run["finetune_iters"], batch=run["batch"],
                                 threads=cpus_per_trial, seed=run["seed"], tune_trials=run.get("tune_trials", 0),
                                 distill=run.get("distill", False), measurement=run_measurement(run),
                                 device=device)
        print(execution.describe_devices(device, gpus_per_trial))
        parcels = shipping.put(archives)
        strategy = run.get("strategy", "nsga2")  # runs from before the guided search used NSGA-II
        study = studies.open_study(run_dir, seed=run["seed"], population_size=run["population"], create=not resume,
                                   strategy=strategy)
        if not resume and strategy == "nsga2":
            studies.enqueue_anchors(study, inputs.resolved)
        requeued = studies.requeue_interrupted(study)
        if requeued:
            print(f"resuming: {requeued} interrupted trial(s) queued again")
        if "base" not in study.user_attrs:
            print("scoring the base model (no changes, no fine-tune)")
            base_settings = dict(settings, finetune_iters=0)
            study.set_user_attr("base", execution.result(execution.submit(base_settings, None, cpus_per_trial,
                                                                          parcels, gpus_per_trial)))
        budgets = run_budgets(run, study.user_attrs["base"])
        guide = _prepare_guide(inputs, settings, run, run_dir, study, budgets) if strategy == "guided" else None
        _search_loop(study, inputs, settings, run, parallel, cpus_per_trial, budgets, guide, parcels, gpus_per_trial)
        if inputs.profile.measurement == "local":
            _remeasure_front(study, settings, cpus_per_trial, parcels)  # with the trials' thread count
        else:
            study.set_user_attr(REMEASURE_ATTR, {"state": "skipped", "why": f"profile {inputs.profile.name} is not "
                                                 "timed on this machine: its figures are the search's own"})
    finally:
        if started_ray:  # else the caller's (a batch of searches shares one connection)
            execution.stop_ray()
    return write_run_report(run_dir, study=study)


def _prepare_guide(inputs: Inputs, settings: dict, run: dict, run_dir: Path, study, budgets: dict):
    """Sensitivity and cost tables (cached), then, in a new study, recipes and seeds queued first."""
    from edgesearch.search import analysis
    from edgesearch.search.guided import Guide
    from edgesearch.search.options import OptionPricer
    from edgesearch.search.recipes import recipe_candidates, recipe_options

    layers = list(inputs.resolved)
    recipes = recipe_candidates(inputs.base_model, layers, PRESETS[run["preset"]].recipes,
                                inputs.profile.compute_precisions)
    extra = recipe_options(recipes, layers)  # recipes are priced too, whatever the space offers
    options = {name: {knob: _merged(values, extra[name].get(knob, ())) for knob, values in layer.choices.items()}
               for name, layer in inputs.resolved.items()}
    cpus = os.cpu_count() or 1
    pricer = OptionPricer(analysis.sensitivity(settings, options, run_dir, cpus),
                          analysis.cost_basis(settings, run_dir, cpus))
    guide = Guide(pricer, inputs.resolved, study.user_attrs["base"], budgets, run["seed"])
    if not study.user_attrs.get("seeded"):
        for name, recipe in recipes.items():
            design = recipe.to_json()
            studies.enqueue_design(study, design, f"recipe: {name}", recipe=name,
                                   predicted={"omega": guide.omega(design)})
        for origin, candidate in guide.seeds(recipes, seed_count(run["trials"], len(recipes))):
            studies.enqueue_design(study, candidate, origin, predicted={"omega": guide.omega(candidate)})
        study.set_user_attr("seeded", True)
    return guide


def seed_count(trials: int, recipes: int) -> int:
    """Budgeted seeds after the recipes: about a quarter of the trials (2-8), never more than remain."""
    return max(0, min(max(2, trials // 4), 8, trials - recipes))


def _merged(values: list, extra) -> list:
    return list(values) + [v for v in sorted(extra, key=str) if v not in values]


def _search_loop(study, inputs: Inputs, settings: dict, run: dict, parallel: int, cpus: int, budgets: dict,
                 guide=None, parcels: dict | None = None, gpus: float = 0.0) -> None:
    """Keep `parallel` trials in flight until the run has its trials, each asking Ray for `cpus`
    CPUs and `gpus` GPUs; `parcels`: the shipped inputs (shipping.put), None to ship them here."""
    if parcels is None:
        parcels = shipping.put(ship_inputs(inputs))
    finished = studies.finished_count(study)
    in_flight: dict = {}
    with tqdm(total=run["trials"], initial=finished, desc="trials", unit="trial") as bar:
        while finished + len(in_flight) < run["trials"] or in_flight:
            while len(in_flight) < parallel and finished + len(in_flight) < run["trials"]:
                if guide is not None and not studies.has_waiting(study) and not guide.propose_into(study):
                    break  # no scored design to move from yet (or no new move): wait for one
                trial = study.ask()
                candidate = studies.candidate_of(trial, inputs.resolved)
                in_flight[execution.submit(settings, candidate, cpus, parcels, gpus)] = trial
            if not in_flight:
                why = ("every move from the front was tried already" if studies.pareto_trials(study)
                       else "no design was scored to move from")
                bar.write(f"no new design to try: {why}")
                break
            ref = execution.wait_one(list(in_flight))
            trial = in_flight.pop(ref)
            try:
                scores = execution.result(ref)
            except Exception as error:  # a failing candidate is recorded, the search goes on
                studies.tell_failure(study, trial, execution.describe_error(error),
                                     node=execution.failed_node(error), attempts=ref.attempts)
                bar.write(f"trial {trial.number} failed: {execution.describe_error(error)}")
            else:
                studies.tell_scores(study, trial, scores, budgets)
            finished += 1
            bar.update(1)
            bar.set_postfix_str(_front_summary(study), refresh=True)


def _front_summary(study) -> str:
    """The current front in a few words, for the trials' progress bar."""
    front = studies.pareto_trials(study)
    if not front:
        return "no design scored yet"
    scores = [t.user_attrs[studies.SCORE_ATTR] for t in front]
    return (f"front {len(front)}: best mAP50-95 {max(s['map50_95'] for s in scores):.3f}, "
            f"smallest {min(s['sram_bytes'] for s in scores) / 2**20:.2f} MiB, "
            f"fastest {min(s['latency_ms'] for s in scores):.2f} ms")


def _remeasure_front(study, settings: dict, cpus: int, parcels: dict) -> None:
    """Time the Pareto designs and the base again, together and interleaved: each trial was timed
    alone at its own moment (on a cluster, on its own node), and on a shared machine those moments
    differ by up to 3x. One Ray task, so all of them are timed on one node. Kept in the study
    (`remeasured`) and done again only when the front changed."""
    front = {str(t.number): t.user_attrs[studies.CANDIDATE_ATTR] for t in studies.pareto_trials(study)}
    if not front or set(study.user_attrs.get("remeasured", {})) == {"base", *front}:
        return
    print(f"re-measuring the {len(front)} Pareto design(s) and the base, interleaved")
    try:
        remeasured = execution.remeasure(settings, {"base": None, **front}, cpus, parcels)
    except Exception as error:  # the report still gets written, with the search's own figures, and says why
        why = execution.describe_error(error)
        print(f"re-measuring failed: {why}")
        study.set_user_attr("remeasured", {})  # an earlier re-measure's figures belong to another front
        study.set_user_attr(REMEASURE_ATTR, {"state": "failed", "why": why})
        return
    study.set_user_attr("remeasured", remeasured)
    note = ("the search's own figures came from MetaSchedule-tuned builds; the re-measure builds with the fixed "
            "schedule, so compare re-measured figures with each other, not with the search's"
            if settings.get("tune_trials") else "")
    study.set_user_attr(REMEASURE_ATTR, {"state": "done", "why": note})


def report_data(run_dir: Path, study=None) -> dict:
    """The plain data a report is written from: run, base, trials, extras."""
    run = json.loads((run_dir / RUN_FILE).read_text())
    if study is None:
        study = studies.open_study(run_dir, seed=run["seed"], population_size=run["population"], create=False)
    base = study.user_attrs.get("base")
    if base is None:
        raise InputError(f"{run_dir} has no scored base model yet; resume the run first")
    remeasured = study.user_attrs.get("remeasured", {})
    base = dict(base, remeasured=remeasured.get("base"))
    trials = [dict(row, remeasured=remeasured.get(str(row["number"]))) for row in studies.trial_rows(study)]
    return {"run": run, "base": base, "trials": trials, "extras": report_extras(run_dir, run, study, base, trials)}


def write_run_report(run_dir: Path, study=None) -> dict:
    data = report_data(run_dir, study)
    files = write_report(run_dir, **data)
    for pick in recommendations(data["run"], data["base"], data["trials"]):  # an accuracy floor leads
        print(f"{pick['title']}: " + (f"#{pick['trial']}" if pick["trial"] is not None else pick["why"])
              + f" ({pick['rule']})")
    print(pareto_table(data["base"], data["trials"]))
    quality = data["extras"]["proxy_quality"]
    if quality["spearman_rho"] is not None:
        moves = quality["moves"]
        print(f"proxy: {quality['screened']} design(s) screened out; the predicted accuracy cost ranks the "
              f"{quality['n']} scored designs with Spearman rho {quality['spearman_rho']:+.2f} against mAP50-95"
              + (f"; the moves' predicted mAP50-95, rho {moves['rho']:+.2f} (n = {moves['n']})" if moves else ""))
    print(f"report: {files['index.html']}")
    return files


def comparison_folder_name(profiles) -> str:
    """`compare-<profile>-<profile>...`: each profile name reduced to letters, digits, '.', '_',
    '+' and '-' (never a path: no separator, no leading dot), the whole at most 200 characters."""
    words = [re.sub(r"[^A-Za-z0-9._+-]+", "_", str(p or "run")).strip("._-") or "run" for p in profiles]
    return ("compare-" + "-".join(words))[:200]


def write_comparison_report(run_dirs: list[Path], out: Path | None) -> Path:
    """Each run's own report, then one page comparing them (runs of one model on several profiles)."""
    entries = [dict(report_data(run_dir), run_dir=run_dir) for run_dir in run_dirs]
    models = {str(e["run"].get("model")) for e in entries}
    if len(models) > 1:  # checked before anything is written
        raise InputError("search report compares runs of one model; these use " + ", ".join(sorted(models)))
    for entry in entries:
        entry["report"] = write_report(entry.pop("run_dir"), **entry)["index.html"]
    if out is None:  # beside the runs, named from their profiles as file-name-safe words (run.json is data)
        parent = Path(os.path.commonpath([str(d.resolve().parent) for d in run_dirs]))
        out = parent / comparison_folder_name(e["run"].get("profile") for e in entries)
    path = write_comparison(out, entries)
    print(f"comparison: {path}")
    return path
