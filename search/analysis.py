"""The once-per-base analysis a guided search starts from: sensitivity and hardware cost basis.

Both are cached by content hash in the user's cache (`<cache>/analysis/`), so a second search on
the same base, data, space and input size (or profile) reuses them, and copied into the run folder
(`sensitivity.json`, `cost_basis.json`), where the report reads them. They run once, in the
driver's process: the cost basis (which times blocks on a measured profile) before anything else;
the sensitivity pass in a thread of its own (start_sensitivity), beside the base score and the
first trials, holding one of the run's trial slots while it runs (search/loop.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from edgesearch.common.cache import cache_dir
from edgesearch.common.files import file_sha256, write_text_atomically

SENSITIVITY_FILE = "sensitivity.json"
BASIS_FILE = "cost_basis.json"
# "reference": the search prices options with the sensitivity pass as it was up to its VERSION 3
# (issue 18's path, for bench/search_quality.py's comparison of old and new); unset: the fast pass
SENSITIVITY_METHOD_ENV = "EDGESEARCH_SENSITIVITY_METHOD"



def dataset_fingerprint(data_yaml: str | Path) -> str:
    """data.yaml's bytes and, for each train and val image and its label file, path, size and
    mtime (a changed image or label changes the fingerprint without hashing every byte)."""
    from ultralytics.data.utils import img2label_paths

    from edgesearch.runners.accuracy.splits import split_images

    digest = hashlib.sha256(Path(data_yaml).read_bytes())
    for split in ("train", "val"):
        images: list[str | Path] = sorted(split_images(Path(data_yaml), split))
        for path in [*images, *img2label_paths(images)]:
            stat = Path(path).stat() if Path(path).is_file() else None
            digest.update(f"{path}:{stat.st_size if stat else '-'}:{stat.st_mtime_ns if stat else '-'}".encode())
    return digest.hexdigest()


def _cached(kind: str, key_material: dict, compute, run_dir: Path, file_name: str) -> dict:
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / "analysis" / f"{kind}-{key}.json"
    if path.exists():
        result = json.loads(path.read_text())
    else:
        result = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(result))
    write_text_atomically(run_dir / file_name, json.dumps(result))
    return result


def start_sensitivity(settings: dict, layer_options: dict[str, dict[str, list]], run_dir: Path,
                      cpus: int) -> Future:
    """sensitivity(...) in a thread of its own, started now: a future of (the table, seconds it took),
    or of the pass's error. While it computes, it counts as a running trial (runners/hardware/turns.py),
    so trials timed meanwhile say so. A daemon thread: a stopped run does not wait for it."""
    from edgesearch.runners.hardware.turns import running_trial

    pending: Future = Future()

    def work():
        started = time.perf_counter()
        try:
            with running_trial():
                table = sensitivity(settings, layer_options, run_dir, cpus, progress=False)
        except BaseException as error:  # handed to whoever waits for the table
            pending.set_exception(error)
        else:
            pending.set_result((table, time.perf_counter() - started))

    pending.set_running_or_notify_cancel()
    threading.Thread(target=work, name="sensitivity pass", daemon=True).start()
    return pending


def sensitivity(settings: dict, layer_options: dict[str, dict[str, list]], run_dir: Path, cpus: int,
                progress: bool = True) -> dict:
    """The sensitivity pass (runners/accuracy/sensitivity.py) of the base to every option, cached."""
    from edgesearch.runners.accuracy.sensitivity import REFERENCE_SETTINGS, VERSION, SensitivitySettings

    config = {k: settings[k] for k in ("checkpoint", "data_yaml", "imgsz", "batch", "trust_checkpoint", "seed")}
    if os.environ.get(SENSITIVITY_METHOD_ENV) == "reference":  # part of the cache key: its own table
        config.update(REFERENCE_SETTINGS)
    material = {"version": VERSION, "checkpoint": file_sha256(config["checkpoint"]),
                "data": dataset_fingerprint(config["data_yaml"]), "options": layer_options,
                "settings": {k: v for k, v in config.items() if k not in ("checkpoint", "data_yaml")},
                # fields without a default are left out: dataclasses.MISSING's text holds its memory
                # address, which made the key differ in every process (the cache never hit)
                # nor the device: it changes where the losses are measured, not what (the table
                # says where it was computed: `device`)
                "defaults": {f.name: f.default for f in dataclasses.fields(SensitivitySettings)
                             if f.default is not dataclasses.MISSING and f.name != "device"}}
    config["threads"] = cpus
    config["device"] = settings.get("device", "auto")  # in this process: --device as given (cuda:N included)

    def compute():
        print(f"sensitivity pass: {sum(len(v) for v in layer_options.values())} knob lists over "
              f"{len(layer_options)} layers (once per base, data, space and input size; cached)")
        from edgesearch.runners.accuracy.sensitivity import analyse

        return analyse(config, layer_options, progress=progress)

    return _cached("sensitivity", material, compute, run_dir, SENSITIVITY_FILE)


def cost_basis(settings: dict, run_dir: Path, cpus: int) -> dict:
    """The hardware cost basis (runners/hardware/cost_basis.py) of the base on the profile, cached."""
    import tvm

    from edgesearch.runners.hardware.cost_basis import VERSION
    from edgesearch.runners.hardware.layer_table import build_code_hash

    config = {k: settings[k] for k in ("checkpoint", "trust_checkpoint", "profile", "imgsz")}
    material = {"version": VERSION, "tvm": tvm.__version__, "build_code": build_code_hash(),
                "checkpoint": file_sha256(config["checkpoint"]),
                "profile": file_sha256(config["profile"]),
                "imgsz": config["imgsz"], "threads": cpus}
    config["threads"] = cpus

    def compute():
        print("hardware cost basis: per-layer latency shares and the base's planned activations (cached)")
        from edgesearch.runners.hardware.cost_basis import cost_basis as compute_basis

        return compute_basis(config)

    return _cached("cost-basis", material, compute, run_dir, BASIS_FILE)
