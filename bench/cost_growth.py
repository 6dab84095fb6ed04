"""How one trial's time grows with input size and model: a cost-growth table (issue tracker: "one
trial's time by input size (128, 256, 320 px) and model (YOLOv8n, YOLOv8s from yaml), CPU here, and
GPU where lent, so a user can predict their own run").

Each configuration (model x input size x design, on each device) is one trial scored the way a
search trial scores it: `runners/evaluate.score_candidate` with the settings of
`search/resolve.eval_settings` on the x86-host profile (latency decided once, as a search decides
it: built and timed here), the default preset's batch, the default dataset (search/default_data.py,
its 128 px canvases letterboxed up to each input size), and the trial's threads a default search
gives it here (`--parallel` 2 on this machine's cores: one thread each on 2 cores). No build cache
(`build_cache` left empty: every repeat builds and times its design again) and no rung.

The models are ultralytics' `yolov8n.yaml` and `yolov8s.yaml` built with the default dataset's
classes and left untrained (torch seed 0), saved as a checkpoint the project's loader takes: a fine-
tune step and a build cost the same whatever the weights. Validation is the exception: its NMS and
matching grow with the detections a model makes, which an untrained model's differ from a trained
one's; `--models yolov8n-trained` adds the default preset's trained base (YOLOv8n, the same graph)
to show by how much.

To keep the bench affordable the fine-tune runs `--steps` steps (default 6), not the search's 60.
An optimizer-step hook (torch's global one: the trial's code is not touched) stamps every step, so
the fine-tune splits into its setup (dataset scan, loader, first batch; the fine-tune's seconds less
N x the step) and the steady step ((last stamp - first stamp) / (N - 1)). The table's trial is then
PROJECTED FROM N MEASURED STEPS:

    projected trial = setup + 60 x step + 2 x validation (the default search's rung at 20 of 60
                      steps, then the trial's own) + build + timing + the rest (load, apply,
                      calibration, held-out validation: the trial's seconds less its three stages)

Rounds run every configuration once each, in alternating order (forward, then backward: drift
falls on both ends alike), `--repeats` rounds, after one untimed warm-up trial per device (the
first trial of a process pays imports and first-use set-up, which a search's later trials do not).
Medians and min-max spreads over the rounds; the host's load average is recorded before each
measurement; ratios are against YOLOv8n at 128 px (of the same design and device). With CUDA,
every configuration is scored again with `--device cuda` (calibration, fine-tune and validation
on the GPU; TVM builds and times on the CPU as in a search); without it the GPU column says so.

    .venv/bin/python bench/cost_growth.py [--models yolov8n yolov8s] [--sizes 128 256 320]
        [--designs int8] [--steps 6] [--repeats 2] [--out bench/results/cost_growth]

writes <out>.json and <out>.md (rewritten after every round, so a stopped run keeps its rounds).
Run it on a quiet machine: absolute times on a shared one drift by 2-3x within minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from edgesearch.search.cli_env import apply_process_env, quiet_console

apply_process_env()
quiet_console()

import torch  # noqa: E402
import ultralytics  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

from edgesearch.common.files import atomic_write, write_text_atomically  # noqa: E402
from edgesearch.runners.accuracy.finetune import load_dataset_info  # noqa: E402
from edgesearch.runners.evaluate import score_candidate  # noqa: E402
from edgesearch.runners.hardware.measure import decide_measurement  # noqa: E402
from edgesearch.search.cli import DEFAULT_PARALLEL  # noqa: E402
from edgesearch.search.default_data import build_digit_dataset  # noqa: E402
from edgesearch.search.halving import default_rung_steps  # noqa: E402
from edgesearch.search.presets import PRESETS  # noqa: E402
from edgesearch.search.recipes import CONTROL, recipe_candidates  # noqa: E402
from edgesearch.search.resolve import eval_settings, resolve_inputs  # noqa: E402

PROFILE, SPACE, PRESET = "x86-host", "yolov8", "default"
TRAINED = "yolov8n-trained"  # the default preset's trained base: how much validation depends on the weights
MODELS = {"yolov8n": "yolov8n.yaml", "yolov8s": "yolov8s.yaml", TRAINED: None}
LABELS = {"yolov8n": "YOLOv8n (untrained, from yaml)", "yolov8s": "YOLOv8s (untrained, from yaml)",
          TRAINED: "YOLOv8n (the default base, trained)"}
DESIGNS = {"int8": "int8 weights + int8 activations", "fp32": CONTROL}  # --designs name -> the search's recipe
REFERENCE = ("yolov8n", 128)
TARGET_STEPS = PRESETS[PRESET].finetune_iters  # a search trial's fine-tune (60)
RUNG_VALIDATIONS = 1 if default_rung_steps(TARGET_STEPS) > 0 else 0  # the default search's rung check


# ---------------------------------------------------------------- inputs


def untrained_checkpoint(model_yaml: str, data_yaml: Path, path: Path) -> Path:
    """An ultralytics checkpoint of `model_yaml` with the dataset's classes, untrained (torch seed 0),
    in the form the project's tests and benches save one ({"model": DetectionModel})."""
    from ultralytics.nn.tasks import DetectionModel

    names = load_dataset_info(data_yaml)["names"]
    torch.manual_seed(0)
    model = DetectionModel(model_yaml, nc=len(names), verbose=False)
    model.names = names
    buffer = io.BytesIO()
    torch.save({"model": model}, buffer)
    atomic_write(path, buffer.getvalue())
    return path


def model_inputs(name: str, folder: Path):
    """The resolved inputs (x86-host, the yolov8 space, the default dataset) of model `name`."""
    model = None
    if MODELS[name]:
        data_yaml = build_digit_dataset(PRESETS[PRESET].data)
        model = str(untrained_checkpoint(MODELS[name], data_yaml, folder / f"{name}.pt"))
    return resolve_inputs(profile=PROFILE, space=SPACE, model=model, data=None, preset=PRESET)


def design_candidate(inputs, design: str) -> dict:
    """The candidate JSON of recipe DESIGNS[design] on this model, as a guided search builds it."""
    recipe = DESIGNS[design]
    candidates = recipe_candidates(inputs.base_model, list(inputs.resolved), (recipe,),
                                   inputs.profile.compute_precisions)
    return candidates[recipe].to_json()


# ---------------------------------------------------------------- one measurement


class StepStamps:
    """perf_counter() after every optimizer step in this process (torch's global post-step hook:
    only the fine-tune steps an optimizer, so these are its steps)."""

    def __init__(self):
        self.stamps: list[float] = []

    def __enter__(self):
        self.stamps = []
        self.handle = register_optimizer_step_post_hook(
            lambda optimizer, args, kwargs: self.stamps.append(time.perf_counter()))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def measure(settings: dict, candidate: dict | None) -> dict:
    """One trial scored as a search scores it, its stages, and its projection to TARGET_STEPS."""
    load = os.getloadavg()
    with StepStamps() as steps:
        started = time.perf_counter()
        scores = score_candidate(settings, candidate)
        wall_s = time.perf_counter() - started
    if scores.get("build_reused"):
        raise SystemExit("a build was reused: this bench measures every build (build_cache must stay off)")
    n = len(steps.stamps)
    if n != settings["finetune_iters"]:
        raise SystemExit(f"{n} optimizer steps seen, {settings['finetune_iters']} asked: the step hook missed some")
    finetune_s, validate_s, hardware_s, eval_s = (scores[k] for k in ("finetune_s", "validate_s", "hardware_s",
                                                                      "eval_s"))
    if n >= 2:
        step_s = (steps.stamps[-1] - steps.stamps[0]) / (n - 1)
        setup_s = max(0.0, finetune_s - n * step_s)
    else:  # one step: set-up and step cannot be told apart (the projection then overstates)
        step_s, setup_s = finetune_s / max(n, 1), 0.0
    other_s = eval_s - finetune_s - validate_s - hardware_s
    projected_s = other_s + setup_s + TARGET_STEPS * step_s + (1 + RUNG_VALIDATIONS) * validate_s + hardware_s
    return {
        "load_average_1_5_15": list(load),
        "steps": n, "finetune_s": finetune_s, "step_s": step_s, "finetune_setup_s": setup_s,
        "validate_s": validate_s, "hardware_s": hardware_s, "build_s": scores.get("build_s"),
        "other_s": other_s, "eval_s": eval_s, "wall_s": wall_s, "projected_trial_s": projected_s,
        "latency_ms": scores.get("latency_ms"), "latency_source": scores.get("latency_source"),
        "build_reused": scores.get("build_reused", False), "map50_95": scores.get("map50_95"),
        "device": scores.get("device"), "stage_devices": scores.get("stage_devices"),
    }


# ---------------------------------------------------------------- report


FIELDS = ("step_s", "finetune_setup_s", "validate_s", "hardware_s", "other_s", "eval_s", "projected_trial_s")


def summary(samples: list[dict]) -> dict:
    out = {}
    for field in FIELDS:
        values = [s[field] for s in samples]
        out[field] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def reference_key(config: dict, done: dict) -> tuple:
    """The row a configuration's ratio is against: YOLOv8n at 128 px of the same design and device,
    else (not measured in this run) the first model at its smallest size."""
    wanted = (config["device"], REFERENCE[0], REFERENCE[1], config["design"])
    if wanted in done:
        return wanted
    return min((k for k in done if k[0] == config["device"] and k[3] == config["design"]),
               key=lambda k: (list(MODELS).index(k[1]), k[2]))


def tables(results: list[dict], devices: list[str], gpu_note: str) -> str:
    cuda = len(devices) > 1
    done = {(r["device"], r["model"], r["imgsz"], r["design"]): r for r in results if r["samples"]}
    if not done:
        return "(no measurement yet)"

    def spread(stats: dict) -> str:
        return f"{stats['median']:.1f} ({stats['min']:.1f}-{stats['max']:.1f})"

    def ratio(r: dict, field: str = "projected_trial_s") -> str:
        ref = done[reference_key(r, done)]
        return f"{r['summary'][field]['median'] / ref['summary'][field]['median']:.2f}x"

    lines = []
    for device in devices:
        rows = [r for r in results if r["device"] == device and r["samples"]]
        if not rows:
            continue
        gpu = "" if device != "cpu" else " | GPU (cuda): projected trial s"
        lines += [f"**{'CPU' if device == 'cpu' else 'GPU (' + device + ')'}**", "",
                  "| model | input px | design | fine-tune s/step | vs ref | fine-tune set-up s | validate s | "
                  "build + time s | rest s | measured trial s | projected 60-step trial s: median (min-max) | "
                  f"vs ref{gpu} |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else "")]
        for r in rows:
            s = r["summary"]
            cells = [LABELS[r["model"]], str(r["imgsz"]), r["design"], f"{s['step_s']['median']:.2f}",
                     ratio(r, "step_s"), f"{s['finetune_setup_s']['median']:.1f}", f"{s['validate_s']['median']:.1f}",
                     f"{s['hardware_s']['median']:.1f}", f"{s['other_s']['median']:.1f}",
                     f"{s['eval_s']['median']:.1f}", spread(s["projected_trial_s"]), ratio(r)]
            if gpu:
                twin = next((g for g in results if g["device"] != "cpu" and g["samples"]
                             and (g["model"], g["imgsz"], g["design"]) == (r["model"], r["imgsz"], r["design"])), None)
                cells.append(spread(twin["summary"]["projected_trial_s"]) if twin else "-" if cuda else gpu_note)
            lines.append("| " + " | ".join(cells) + " |")
        refs = sorted({reference_key(r, done)[1:] for r in rows})
        lines += ["", "ref: " + "; ".join(f"{LABELS[m]} at {px} px, {d}" for m, px, d in refs) + ".", ""]
    return "\n".join(lines)


def header(meta: dict) -> str:
    loads = [s["load_average_1_5_15"][0] for r in meta["results"] for s in r["samples"]]
    load = f"{min(loads):.2f}-{max(loads):.2f}" if loads else "-"
    steps = meta["steps"]
    return (
        f"One trial's time by model and input size ({meta['rounds_done']} of {meta['repeats']} interleaved rounds; "
        f"medians, min-max in brackets). Each trial is `score_candidate` with `eval_settings` as a search runs it: "
        f"profile {PROFILE} (latency built and timed here by TVM, fixed schedule), space {SPACE}, the default "
        f"dataset ({meta['dataset']}; its 128 px canvases letterboxed to each input size), batch {meta['batch']}, "
        f"{meta['threads']} torch/TVM thread(s) per trial (a default search's share on this {meta['cpus']}-core "
        f"machine), no build cache (every repeat builds again), no rung; designs: "
        + ", ".join(f"{d} = recipe \"{DESIGNS[d]}\"" for d in meta["designs"]) + ". "
        f"Models built from ultralytics' yaml with the dataset's {meta['classes']} classes, untrained (a step and a "
        "build cost the same whatever the weights; validation's NMS does not, see the trained row where measured).\n\n"
        f"**The trial is projected from {steps} measured fine-tune step(s)**: fine-tune set-up + {TARGET_STEPS} x "
        f"s/step + {1 + RUNG_VALIDATIONS} x validate (the default search validates at its rung, "
        f"{default_rung_steps(TARGET_STEPS)} of {TARGET_STEPS} steps, and at the end) + build and time + rest "
        f"(checkpoint load, apply, int8 calibration, held-out validation). s/step is the steady step from "
        f"optimizer-step stamps ((last - first) / (N - 1)); set-up = fine-tune s - N x s/step. The measured trial "
        f"is the task's own seconds at {steps} step(s) and no rung. A recovery trial ({PRESETS[PRESET].recover_steps} "
        "more steps) adds that many x s/step; a trial whose build is reused in a run skips build + time.\n\n"
        f"Host: {meta['host']['cpu']}, {meta['cpus']} cores; 1-min load average before the measurements "
        f"{load} (each one's in the JSON). torch {meta['host']['torch']}, ultralytics {meta['host']['ultralytics']}."
    )


def write(out: str, meta: dict, gpu_note: str) -> str:
    text = header(meta) + "\n\n" + tables(meta["results"], meta["devices"], gpu_note) + f"\nGPU: {gpu_note}.\n"
    write_text_atomically(Path(out + ".json"), json.dumps(meta, indent=2))
    write_text_atomically(Path(out + ".md"), text)
    return text


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["yolov8n", "yolov8s"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 320], help="input sizes, px")
    parser.add_argument("--designs", nargs="+", choices=list(DESIGNS), default=["int8"],
                        help="int8: the int8 weights + activations recipe; fp32: the search's float control")
    parser.add_argument("--steps", type=int, default=6, help="fine-tune steps measured (projected to "
                        f"{TARGET_STEPS}); 2 or more separate the set-up from the step")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // DEFAULT_PARALLEL),
                        help="threads per trial (default: a default search's share here)")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                        help="one untimed 1-step trial per device first")
    parser.add_argument("--out", default="bench/results/cost_growth")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--steps, --repeats and --threads must be at least 1")

    cuda = torch.cuda.is_available()
    devices = ["cpu"] + (["cuda"] if cuda else [])
    gpu_note = ("measured: " + torch.cuda.get_device_name(0)) if cuda else "not measured: no GPU on this machine"
    preset = PRESETS[PRESET]
    with tempfile.TemporaryDirectory(prefix="cost-growth-") as scratch:
        inputs = {name: model_inputs(name, Path(scratch)) for name in args.models}
        first = inputs[args.models[0]]
        plan = dataclasses.asdict(decide_measurement(first.profile))  # a search's one decision, made once
        configs = []
        for device in devices:
            for name in args.models:
                candidates = {design: design_candidate(inputs[name], design) for design in args.designs}
                for imgsz in args.sizes:
                    for design in args.designs:
                        settings = eval_settings(inputs[name], imgsz=imgsz, finetune_iters=args.steps,
                                                 batch=preset.batch, threads=args.threads, seed=0,
                                                 measurement=plan, device=device)
                        if settings.get("build_cache"):
                            raise SystemExit("eval_settings set a build cache: this bench builds every repeat")
                        configs.append({"device": device, "model": name, "imgsz": imgsz, "design": design,
                                        "settings": settings, "candidate": candidates[design]})
        names = load_dataset_info(first.data_yaml)["names"]
        meta = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "profile": PROFILE, "space": SPACE, "preset": PRESET, "measurement": plan,
            "dataset": first.data_yaml.parent.name, "classes": len(names), "batch": preset.batch,
            "threads": args.threads, "cpus": os.cpu_count(), "steps": args.steps, "target_steps": TARGET_STEPS,
            "rung_validations_projected": RUNG_VALIDATIONS, "repeats": args.repeats, "rounds_done": 0,
            "designs": args.designs, "devices": devices, "gpu": gpu_note, "warmup": [],
            "host": {"cpu": cpu_name(), "python": platform.python_version(), "torch": torch.__version__,
                     "ultralytics": ultralytics.__version__},
            "projection": f"finetune_setup_s + {TARGET_STEPS} x step_s + {1 + RUNG_VALIDATIONS} x validate_s + "
                          "hardware_s + other_s (other_s = eval_s - finetune_s - validate_s - hardware_s)",
            "results": [{k: c[k] for k in ("device", "model", "imgsz", "design")} | {"samples": []}
                        for c in configs],
        }
        if args.warmup:
            for device in devices:
                warm = next(c for c in configs if c["device"] == device)
                settings = {**warm["settings"], "finetune_iters": 1, "imgsz": min(args.sizes)}
                started = time.perf_counter()
                score_candidate(settings, warm["candidate"])
                meta["warmup"].append({"device": device, "model": warm["model"], "imgsz": min(args.sizes),
                                       "s": time.perf_counter() - started})
                print(f"warm-up on {device}: {meta['warmup'][-1]['s']:.1f} s", flush=True)
        for round_ in range(args.repeats):
            order = list(range(len(configs)))
            for i in order if round_ % 2 == 0 else reversed(order):
                config, result = configs[i], meta["results"][i]
                sample = measure(config["settings"], config["candidate"])
                sample["round"] = round_
                result["samples"].append(sample)
                result["summary"] = summary(result["samples"])
                print(f"round {round_ + 1}/{args.repeats} {config['device']} {config['model']} {config['imgsz']} px "
                      f"{config['design']}: trial {sample['eval_s']:.1f} s at {sample['steps']} step(s), "
                      f"{sample['step_s']:.2f} s/step, projected {sample['projected_trial_s']:.1f} s "
                      f"(load {sample['load_average_1_5_15'][0]:.2f})", flush=True)
            meta["rounds_done"] = round_ + 1
            text = write(args.out, meta, gpu_note)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
