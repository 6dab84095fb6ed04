"""Keep ultralytics from writing into, or unpickling from, the user's dataset folder.

ultralytics saves a `labels/<split>.cache` file beside a dataset's labels the first time it reads
them, and later loads it with `np.load(allow_pickle=True)`. edgesearch promises never to modify
its inputs and never to unpickle untrusted files silently, so both are switched off here for the
whole process: labels are always scanned afresh (fast at the sizes edgesearch trains on).
Imported by every runner module that reads a dataset through ultralytics.
"""

from __future__ import annotations

import ultralytics.data.dataset as _ultralytics_dataset


def _skip_saving_label_cache(prefix, path, x: dict, version: str) -> None:
    x["version"] = version  # the one side effect callers rely on (ultralytics' saver adds it in place)


def _never_load_label_cache(path):
    raise FileNotFoundError(f"edgesearch does not read label caches ({path})")  # ultralytics then rescans


_ultralytics_dataset.save_dataset_cache_file = _skip_saving_label_cache
_ultralytics_dataset.load_dataset_cache_file = _never_load_label_cache
