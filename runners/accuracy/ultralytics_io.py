"""Keep ultralytics from writing into, unpickling from, or running scripts of the user's dataset.

ultralytics saves a `labels/<split>.cache` file beside a dataset's labels the first time it reads
them, and later loads it with `np.load(allow_pickle=True)`. edgesearch promises never to modify
its inputs and never to unpickle untrusted files silently, so both are switched off here for the
whole process: labels are always scanned afresh (fast at the sizes edgesearch trains on).

`check_det_dataset` runs a data.yaml's `download:` entry (a shell command or Python code) when a
split folder is missing, and ultralytics' validator and trainer call it with autodownload on. A
folder missing at that moment (removed after edgesearch checked it, or absent on a worker node)
would run the script. Every ultralytics module that imported the function gets a version that
never downloads: a missing split is an error instead.

Imported by every runner module that reads a dataset through ultralytics.
"""

from __future__ import annotations

import functools
import importlib

import ultralytics.data.dataset as _ultralytics_dataset
import ultralytics.data.utils as _ultralytics_data_utils


def _skip_saving_label_cache(prefix, path, x: dict, version: str) -> None:
    x["version"] = version  # the one side effect callers rely on (ultralytics' saver adds it in place)


def _never_load_label_cache(path):
    raise FileNotFoundError(f"edgesearch does not read label caches ({path})")  # ultralytics then rescans


_ultralytics_dataset.save_dataset_cache_file = _skip_saving_label_cache
_ultralytics_dataset.load_dataset_cache_file = _never_load_label_cache

_check_det_dataset = _ultralytics_data_utils.check_det_dataset


@functools.wraps(_check_det_dataset)
def check_det_dataset_without_download(dataset, autodownload: bool = True, **kwargs):
    return _check_det_dataset(dataset, autodownload=False, **kwargs)


# the modules that call it (each holds its own reference, taken at import)
for _name in ("ultralytics.data.utils", "ultralytics.engine.validator", "ultralytics.engine.trainer",
              "ultralytics.engine.exporter"):
    setattr(importlib.import_module(_name), "check_det_dataset", check_det_dataset_without_download)
