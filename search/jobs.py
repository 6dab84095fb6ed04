"""Resolving a user's inputs (profile, space, data, base model) before anything is written, and
the two jobs built on them: scoring one candidate (`search eval`) and a whole search (`search run`)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from pathlib import Path

from torch import nn
from tqdm import tqdm

from edgesearch.reports.compare_report import write_comparison
from edgesearch.reports.pareto_report import pareto_table, write_report
from edgesearch.runners.accuracy.finetune import load_dataset_info
from edgesearch.runners.checkpoints import load_detection_model
from edgesearch.runners.hardware.profiles import HardwareProfile, load_profile
from edgesearch.search import execution, study as studies
from edgesearch.search.report_inputs import report_extras
from edgesearch.search.base_model import default_base_checkpoint
from edgesearch.search.default_data import build_digit_dataset
from edgesearch.search.paths import cache_dir, write_text_atomically
from edgesearch.search.presets import PRESETS
from edgesearch.spaces.errors import InputError
from edgesearch.spaces.space import LayerChoices, Space, load_space

RUN_FILE = "run.json"


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
                   train_images: int | None = None, val_images: int | None = None) -> Inputs:
    """Check every input and produce the data and base model (cached) - nothing else is written."""
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
    else:
        data_yaml = build_digit_dataset(recipe, Path(mnist_dir) if mnist_dir else None)
    if model:
        checkpoint = Path(model).resolve()
        base = load_detection_model(checkpoint, trust=trust_checkpoint)
    else:
        checkpoint = default_base_checkpoint(settings, data_yaml, seed)
        trust_checkpoint = False
        base = load_detection_model(checkpoint)
    resolved = design_space.resolve(base)
    return Inputs(hardware, design_space, data_yaml, checkpoint, trust_checkpoint, base, resolved)


def eval_settings(inputs: Inputs, *, imgsz: int, finetune_iters: int, batch: int, threads: int, seed: int,
                  tune_trials: int = 0, distill: bool = False) -> dict:
    """The plain settings a trial needs (sent to Ray workers as-is)."""
    return {
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
        self.handle = open(self.path, "w")
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


def prepare_run_dir(run_dir: Path, run: dict, resume: bool) -> dict:
    """Create (or, with resume, reopen) a run folder; returns the run's settings."""
    check_run_dir(run_dir, resume)
    run_file = run_dir / RUN_FILE
    if resume:
        stored = json.loads(run_file.read_text())
        if stored.get("space_sha256", run["space_sha256"]) != run["space_sha256"]:
            # the study's stored choices would no longer match the space's: sampling would break
            raise InputError(f"space {stored['space_file']} changed since the run in {run_dir} started; "
                             "start a new run with --out")
        stored["trials"] = max(stored["trials"], run["trials"])  # a resume may ask for more trials
        stored["trust_checkpoint"] = run["trust_checkpoint"]  # this command line's, never the folder's
        _write_json(run_file, stored)
        return stored
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_file, run)
    return run


def run_search(inputs: Inputs, run_dir: Path, run: dict, *, resume: bool, ray_address: str | None) -> dict:
    """The search loop: ask candidates, score them as Ray tasks, tell Optuna, write the report."""
    parallel = max(1, run["parallel"])
    cpus_per_trial = max(1, (os.cpu_count() or 1) // parallel)
    settings = eval_settings(inputs, imgsz=run["imgsz"], finetune_iters=run["finetune_iters"], batch=run["batch"],
                             threads=cpus_per_trial, seed=run["seed"], tune_trials=run.get("tune_trials", 0),
                             distill=run.get("distill", False))
    study = studies.open_study(run_dir, seed=run["seed"], population_size=run["population"], create=not resume)
    if not resume:
        studies.enqueue_anchors(study, inputs.resolved)
    requeued = studies.requeue_interrupted(study)
    if requeued:
        print(f"resuming: {requeued} interrupted trial(s) queued again")
    execution.start_ray(ray_address)
    try:
        if "base" not in study.user_attrs:
            print("scoring the base model (no changes, no fine-tune)")
            base_settings = dict(settings, finetune_iters=0)
            study.set_user_attr("base", execution.result(execution.submit(base_settings, None, cpus_per_trial)))
        _search_loop(study, inputs, settings, run, parallel, cpus_per_trial)
        if inputs.profile.measurement == "local":
            _remeasure_front(study, settings)  # with the trials' thread count
    finally:
        execution.stop_ray()
    return write_run_report(run_dir, study=study)


def _search_loop(study, inputs: Inputs, settings: dict, run: dict, parallel: int, cpus: int) -> None:
    finished = studies.finished_count(study)
    in_flight: dict = {}
    with tqdm(total=run["trials"], initial=finished, desc="trials", unit="trial") as bar:
        while finished + len(in_flight) < run["trials"] or in_flight:
            while len(in_flight) < parallel and finished + len(in_flight) < run["trials"]:
                trial = study.ask()
                candidate = studies.suggest_candidate(trial, inputs.resolved).to_json()
                trial.set_user_attr(studies.CANDIDATE_ATTR, candidate)
                in_flight[execution.submit(settings, candidate, cpus)] = trial
            ref = execution.wait_one(list(in_flight))
            trial = in_flight.pop(ref)
            try:
                scores = execution.result(ref)
            except Exception as error:  # a failing candidate is recorded, the search goes on
                studies.tell_failure(study, trial, execution.describe_error(error))
                bar.write(f"trial {trial.number} failed: {execution.describe_error(error)}")
            else:
                studies.tell_scores(study, trial, scores, inputs.profile.sram_bytes)
            finished += 1
            bar.update(1)


def _remeasure_front(study, settings: dict) -> None:
    """Time the Pareto designs and the base again, together and interleaved: each trial was timed
    alone at its own moment, and on a shared machine those moments differ by up to 3x. Kept in the
    study (`remeasured`) and done again only when the front changed."""
    front = {str(t.number): t.user_attrs[studies.CANDIDATE_ATTR] for t in studies.pareto_trials(study)}
    if not front or set(study.user_attrs.get("remeasured", {})) == {"base", *front}:
        return
    from edgesearch.runners.evaluate import remeasure_designs  # loads TVM: only when needed

    print(f"re-measuring the {len(front)} Pareto design(s) and the base, interleaved")
    try:
        remeasured = remeasure_designs(settings, {"base": None, **front})
    except Exception as error:  # the report still gets written, with the search's own figures
        print(f"re-measuring skipped: {type(error).__name__}: {error}")
        return
    study.set_user_attr("remeasured", remeasured)


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
    print(pareto_table(data["base"], data["trials"]))
    print(f"report: {files['index.html']}")
    return files


def write_comparison_report(run_dirs: list[Path], out: Path | None) -> Path:
    """Each run's own report, then one page comparing them (runs of one model on several profiles)."""
    entries = [dict(report_data(run_dir), run_dir=run_dir) for run_dir in run_dirs]
    models = {str(e["run"].get("model")) for e in entries}
    if len(models) > 1:  # checked before anything is written
        raise InputError("search report compares runs of one model; these use " + ", ".join(sorted(models)))
    for entry in entries:
        entry["report"] = write_report(entry.pop("run_dir"), **entry)["index.html"]
    if out is None:
        parent = Path(os.path.commonpath([str(d.resolve().parent) for d in run_dirs]))
        out = parent / ("compare-" + "-".join(e["run"].get("profile", "run") for e in entries))
    path = write_comparison(out, entries)
    print(f"comparison: {path}")
    return path
