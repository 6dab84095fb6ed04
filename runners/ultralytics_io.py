"""Keep ultralytics from writing into the user's dataset folder.

ultralytics saves a `labels/<split>.cache` file beside a dataset's labels the first time it reads
them. edgesearch promises never to modify its inputs, so that save is switched off here for the
whole process (label scanning is fast at the sizes edgesearch fine-tunes and validates on).
Imported by every runner module that reads a dataset through ultralytics.
"""

from __future__ import annotations

import ultralytics.data.dataset as _ultralytics_dataset


def _do_not_write_label_cache(prefix, path, x, version) -> None:
    return None


_ultralytics_dataset.save_dataset_cache_file = _do_not_write_label_cache
