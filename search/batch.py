"""`search batch jobs.yaml`: several searches, one after another, on one Ray connection.

Each search is what `search run` would do with the same settings: its own run folder and report.
All of them are checked (inputs resolved, packed for the workers) before any run folder is
written. They share one connection, so on a cluster they share its worker pool (and its workers'
caches: a base model or dataset used by two searches is unpacked once per node). Running the same
batch again resumes each search where it stopped (a finished one only gets its report rewritten).
On a cluster, submit it as a Ray job, so that it outlives your terminal; the job's driver runs on
the head node, which reads the jobs file and the inputs it names (Ray sets RAY_ADDRESS for it):

    ray job submit --address http://HEAD:8265 -- search batch /data/jobs.yaml

A jobs file (paths are relative to the file's folder; `defaults` apply to every search):

    defaults: {preset: default, profile: raspberry-pi-4, parallel: 4}
    searches:
      - {out: runs/pi4-yolov8, space: yolov8, trials: 24}
      - {out: runs/orin-yolov8, profile: jetson-orin-nano, model: base.pt, data: digits/data.yaml}
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from edgesearch.common.errors import InputError

# jobs-file key -> its type; each is the `search run` flag of the same name (underscores as dashes)
SEARCH_KEYS = {"out": str, "model": str, "data": str, "profile": str, "space": str, "preset": str, "strategy": str,
               "trials": int, "parallel": int, "seed": int, "finetune_iters": int, "imgsz": int, "population": int,
               "max_map_drop": float, "latency_budget": float, "sram_budget": str, "device": str,
               "gpus_per_trial": float}
PATH_KEYS = ("out", "model", "data")  # always paths; profile and space are paths when they name a .yaml


def load_jobs(jobs_file: str, parse_run_args) -> list[argparse.Namespace]:
    """The `search run` arguments of each search in a jobs file (`parse_run_args(argv)` parses a
    `search run` command line); a bad file is refused whole, before anything runs."""
    path = Path(jobs_file)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise InputError(f"jobs file {jobs_file}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise InputError(f"jobs file {jobs_file} is not valid YAML: {str(error).splitlines()[0]}") from None
    except UnicodeDecodeError as error:
        raise InputError(f"jobs file {jobs_file} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except RecursionError:
        raise InputError(f"jobs file {jobs_file} nests too deeply to read") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("searches"), list) or not raw["searches"]:
        raise InputError(f"jobs file {jobs_file}: needs a non-empty list `searches` (see `search batch --help`)")
    defaults = raw.get("defaults") or {}
    jobs, outs = [], set()
    for number, search in enumerate(raw["searches"], 1):
        where = f"jobs file {jobs_file}, search {number}"
        if not isinstance(search, dict) or not isinstance(defaults, dict):
            raise InputError(f"{where}: each search (and `defaults`) is a mapping of settings")
        settings = {**defaults, **search}
        if "out" not in settings:
            raise InputError(f"{where}: needs `out`, the search's own run folder")
        argv = [part for key, value in settings.items() for part in _flag(key, value, path.parent, where)]
        args = parse_run_args(argv)
        if args.out in outs:
            raise InputError(f"{where}: run folder {args.out} is used by an earlier search")
        outs.add(args.out)
        args.resume = (Path(args.out) / "run.json").exists()  # running the batch again continues each search
        jobs.append(args)
    return jobs


def _flag(key: str, value, folder: Path, where: str) -> list[str]:
    """The `search run` flag and value of one setting, checked (argparse would exit with its usage)."""
    from edgesearch.search.presets import PRESETS, STRATEGIES

    if key not in SEARCH_KEYS:
        raise InputError(f"{where}: unknown setting {key!r} (known: {', '.join(SEARCH_KEYS)})")
    kind = SEARCH_KEYS[key]
    if kind is not str and (isinstance(value, bool) or not isinstance(value, (int, float))
                            or (kind is int and not isinstance(value, int))):
        raise InputError(f"{where}: {key} must be {'an integer' if kind is int else 'a number'}, not {value!r}")
    choices = {"preset": list(PRESETS), "strategy": list(STRATEGIES)}.get(key)
    if choices and value not in choices:
        raise InputError(f"{where}: {key} must be one of {', '.join(choices)}, not {value!r}")
    text = str(value)
    if key in PATH_KEYS or (key in ("profile", "space") and text.endswith((".yaml", ".yml"))):
        text = str((folder / text).resolve())
    return [f"--{key.replace('_', '-')}", text]
