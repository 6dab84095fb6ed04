"""Beyond the default model: the default search and its structure-targets table on YOLO11n (C3k2 /
C2PSA blocks) and YOLOv5nu (YOLOv5's backbone with the anchor-free head), each trained from its
ultralytics YAML on a second, procedural dataset (search/shapes_data.py: coloured geometric shapes
on textured backgrounds; no downloads, no digits).

For each family, one after the other:

  1. the shapes dataset, at the preset's counts and canvas (default: 1,500 train / 300 val at 128 px,
     as the default digit dataset), built once and cached;
  2. the base, trained from the model YAML with the default base's own code and settings
     (search/base_model.default_base_checkpoint with the preset's model YAML swapped: default 15
     epochs, 128 px, batch 16, seed 0), cached like the default base;
  3. `search run --profile x86-host --model BASE --data DATA --out RUNS/<family>` with the preset's
     search (default: guided, 24 trials, 60 fine-tune steps, recovery 120 steps); a run folder that
     exists is resumed (`--resume`), one that is complete is only read;
  4. the structure targets table of that run (bench/search_quality.structure_targets, as
     `search_quality.py --targets RUN` writes it for the default model).

Writes bench/results/other_families.{md,json} (after each family, so a stopped benchmark keeps what
it finished) with the settings used.

    .venv/bin/python bench/other_families.py [--trials 24] [--recover-steps 120] [--max-map-drop 0.01]
                                             [--runs bench/other_families_runs]
    .venv/bin/python bench/other_families.py --dry-run     # the plan and the exact commands; builds nothing
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path

from edgesearch.search.cli_env import apply_process_env

apply_process_env()

from edgesearch.common.files import write_text_atomically  # noqa: E402
from edgesearch.search import study as studies  # noqa: E402
from edgesearch.search.cli import build_parser  # noqa: E402
from edgesearch.search.presets import PRESETS, Preset  # noqa: E402
from edgesearch.search.shapes_data import (  # noqa: E402
    SHAPE_CLASSES,
    ShapeCanvasRecipe,
    build_shapes_dataset,
    dataset_root,
)
from search_quality import structure_targets, targets_markdown  # noqa: E402

# family -> ultralytics model YAML (yolov5n.yaml builds YOLOv5u: ultralytics' anchor-free Detect head)
FAMILIES = {"yolo11n": "yolo11n.yaml", "yolov5nu": "yolov5n.yaml"}
PROFILE = "x86-host"


def shapes_recipe(preset: Preset, train_images: int | None, val_images: int | None) -> ShapeCanvasRecipe:
    """The shapes dataset at the preset's counts and canvas (those of its digit dataset)."""
    return ShapeCanvasRecipe(n_train=train_images or preset.data.n_train, n_val=val_images or preset.data.n_val,
                             canvas=preset.data.canvas)


def base_preset(preset: Preset, model_yaml: str, base_epochs: int | None = None) -> Preset:
    """The preset with another base architecture: default_base_checkpoint trains and caches it with the
    preset's epochs, input size and batch (base_epochs: fewer, for a quick check of this script only)."""
    return dataclasses.replace(preset, model_yaml=model_yaml, base_epochs=base_epochs or preset.base_epochs)


def train_base(preset: Preset, data_yaml: Path, seed: int, device: str) -> Path:
    from edgesearch.search.base_model import default_base_checkpoint  # loads torch and ultralytics' trainer

    return default_base_checkpoint(preset, data_yaml, seed, device)


def search_command(folder: Path, model: str | Path, data_yaml: str | Path, args) -> list[str]:
    """`search run` of the default search on this base and data (--resume where the folder holds a run)."""
    command = [sys.executable, "-m", "edgesearch.search.cli", "run", "--profile", PROFILE, "--preset", args.preset,
               "--model", str(model), "--data", str(data_yaml), "--seed", str(args.seed), "--device", args.device,
               "--out", str(folder)]
    if args.trials is not None:
        command += ["--trials", str(args.trials)]
    if args.recover_steps is not None:
        command += ["--recover-steps", str(args.recover_steps)]
    if args.max_map_drop is not None:
        command += ["--max-map-drop", str(args.max_map_drop)]
    if (folder / "run.json").exists():
        command.append("--resume")
    build_parser().parse_args(command[3:])  # a flag `search run` does not take fails here, not hours later
    return command


def run_complete(folder: Path, trials: int | None) -> bool:
    """The run has its trials, its recovery and re-measure (the last stages) and its report."""
    from edgesearch.search.remeasure import REMEASURE_ATTR  # loads Ray: only when a run folder is there

    if not (folder / "run.json").exists() or not (folder / "study.db").exists():
        return False
    wanted = trials or json.loads((folder / "run.json").read_text())["trials"]
    study = studies.read_study(folder)
    return (studies.finished_count(study) >= wanted and REMEASURE_ATTR in study.user_attrs
            and (folder / "index.html").exists())


def run_search(folder: Path, command: list[str]) -> float:
    """Run (or resume) one search, its output appended to RUNS/<family>.log; its wall time in seconds."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(folder.parent / f"{folder.name}.log", "a") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        subprocess.run(command, check=True, stdout=log, stderr=log)
    return time.perf_counter() - started


def base_training(checkpoint: Path) -> dict:
    """What default_base_checkpoint recorded (recipe.json) and ultralytics' own log of the training:
    its time and best val mAP50-95 (ultralytics' validator, all val images)."""
    recipe = json.loads((checkpoint.parent / "recipe.json").read_text())
    recipe.pop("model_yaml", None)  # the YAML's text when it is a file; the name is given separately
    summary = {"checkpoint": str(checkpoint), **recipe}
    results = checkpoint.parent / "training" / "train" / "results.csv"
    if results.exists():
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(results.open())]
        if rows:
            summary["train_s"] = float(rows[-1]["time"])
            summary["best_val_map50_95"] = max(float(r["metrics/mAP50-95(B)"]) for r in rows)
    return summary


def settings_text(settings: dict) -> str:
    data, base, search = settings["dataset"], settings["base_training"], settings["search"]
    recipe = data["recipe"]
    return "\n".join([
        f"Other families on a second dataset (bench/other_families.py), profile {PROFILE}, preset {settings['preset']}.",
        "",
        f"- dataset: {data['name']} (search/shapes_data.py, procedural): {recipe['n_train']} train / "
        f"{recipe['n_val']} val canvases of {recipe['canvas']} px, {recipe['min_shapes']}-{recipe['max_shapes']} "
        f"shapes each of {len(SHAPE_CLASSES)} classes ({', '.join(SHAPE_CLASSES)}), {recipe['min_shape']:g}-"
        f"{recipe['max_shape']:g} of the canvas across, up to {recipe['max_occlusion']:.0%} of a shape covered by "
        f"later ones, seed {recipe['seed']}",
        f"- base training (search/base_model.py, as the default base): {base['epochs']} epochs, {base['imgsz']} px, "
        f"batch {base['batch']}, seed {base['seed']}, ultralytics {base['ultralytics']}",
        f"- search: `search run --profile {PROFILE} --preset {settings['preset']} --model BASE --data DATA "
        f"--seed {search['seed']}" + (f" --trials {search['trials']}" if search["trials"] is not None else "")
        + (f" --recover-steps {search['recover_steps']}" if search["recover_steps"] is not None else "")
        + (f" --max-map-drop {search['max_map_drop']}" if search.get("max_map_drop") is not None else "")
        + "` (other settings the preset's; each table's first line gives the run's own)",
    ])


def family_text(name: str, entry: dict) -> str:
    base = entry["base"]
    trained = (f"trained in {base['train_s'] / 60:.1f} min on {base.get('trained_on', '?')}, best val mAP50-95 "
               f"{base['best_val_map50_95']:.3f} during training" if "train_s" in base else "training log not found")
    wall = f"search wall {entry['search_wall_s'] / 60:.1f} min" if entry.get("search_wall_s") else "search wall not timed"
    return "\n".join([f"## {name} ({entry['model_yaml']})", "",
                      f"Base {base['checkpoint']}: {trained}; {wall} (all invocations of this script).", "",
                      targets_markdown(entry["targets"])])


def write_results(out: str, settings: dict, families: dict) -> str:
    text = settings_text(settings) + "".join(f"\n\n{family_text(n, e)}" for n, e in families.items()) + "\n"
    write_text_atomically(Path(out + ".json"), json.dumps({"settings": settings, "families": families}, indent=2))
    write_text_atomically(Path(out + ".md"), text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--trials", type=int, help="`search run --trials` (default: the preset's, 24)")
    parser.add_argument("--recover-steps", type=int, help="`search run --recover-steps` (default: the preset's, 120)")
    parser.add_argument("--max-map-drop", type=float,
                        help="`search run --max-map-drop` (an accuracy floor; default: none, as the preset)")
    parser.add_argument("--preset", default="default", choices=list(PRESETS),
                        help="sizes of data, base training and search (smoke: a quick check of the whole path)")
    parser.add_argument("--seed", type=int, default=0, help="base training and search seed (the dataset's is 0)")
    parser.add_argument("--device", default="auto", help="`search run --device`; also where the bases train")
    parser.add_argument("--train-images", type=int, help="shapes train canvases (default: the preset's)")
    parser.add_argument("--val-images", type=int, help="shapes val canvases (default: the preset's)")
    parser.add_argument("--base-epochs", type=int, help="base training epochs (default: the preset's; fewer only to "
                                                        "check this script)")
    parser.add_argument("--runs", default="bench/other_families_runs", help="run folders <family> (kept; resumed)")
    parser.add_argument("--out", default="bench/results/other_families")
    parser.add_argument("--retime-passes", type=int, default=3,
                        help="the targets table re-times each speed target's candidates with the base this many "
                             "times (search_quality.py --retime-passes; 0: only the run's own re-measure)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands; build nothing")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    recipe = shapes_recipe(preset, args.train_images, args.val_images)
    runs = Path(args.runs)
    first = base_preset(preset, FAMILIES[args.families[0]], args.base_epochs)
    settings = {"preset": args.preset, "profile": PROFILE,
                "dataset": {"name": dataset_root(recipe).name, "recipe": dataclasses.asdict(recipe)},
                "base_training": {"epochs": first.base_epochs, "imgsz": first.imgsz, "batch": first.batch,
                                  "seed": args.seed, "ultralytics": importlib.metadata.version("ultralytics")},
                "search": {"seed": args.seed, "trials": args.trials, "recover_steps": args.recover_steps,
                           "max_map_drop": args.max_map_drop, "runs": str(runs)}}
    if args.dry_run:
        print(settings_text(settings) + "\n")
        print(f"dataset: {dataset_root(recipe) / 'data.yaml'}"
              + (" (cached)" if (dataset_root(recipe) / "data.yaml").exists() else " (built first)"))
        for name in args.families:
            folder = runs / name
            state = ("complete: only read" if run_complete(folder, args.trials) else
                     "resumed" if (folder / "run.json").exists() else "new")
            command = search_command(folder, f"<base of {FAMILIES[name]}>", dataset_root(recipe) / "data.yaml", args)
            print(f"\n{name}: train (or reuse) the base of {FAMILIES[name]}, then ({state}):\n  {' '.join(command)}"
                  f"\n  then the targets table of {folder}")
        return 0

    data_yaml = build_shapes_dataset(recipe)
    walls_file = runs / "wall_s.json"
    families: dict[str, dict] = {}
    text = ""
    for name in args.families:
        folder = runs / name
        checkpoint = train_base(base_preset(preset, FAMILIES[name], args.base_epochs), data_yaml, args.seed,
                                args.device)
        walls = json.loads(walls_file.read_text()) if walls_file.exists() else {}
        if not run_complete(folder, args.trials):
            print(f"{name}: searching ({folder}.log)")
            walls[name] = walls.get(name, 0.0) + run_search(folder, search_command(folder, checkpoint, data_yaml, args))
            write_text_atomically(walls_file, json.dumps(walls, indent=2))
        families[name] = {"model_yaml": FAMILIES[name], "base": base_training(checkpoint), "run": str(folder),
                          "search_wall_s": walls.get(name),
                          "targets": structure_targets(folder, args.retime_passes)}
        text = write_results(args.out, settings, families)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
