"""The held-out split: images the search never selects on, so its front can be checked unbiased.

The search selects designs by their mAP on the validation images, so the front's val mAP is an
optimistic estimate. Every trial (and the base) is also scored on images that take no part in
any choice the search makes:

  - the data.yaml's `test:` split, when it has one;
  - otherwise a fixed third of the val images, chosen before any search by a hash of each
    image's file name (the same images on every machine and in every run): the search then
    validates on the other two thirds only.

The carve-out writes two image lists and a data.yaml naming them into a temporary folder (the
user's dataset is never modified); labels are found beside the images as ultralytics always does.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from pathlib import Path

import yaml
from ultralytics.data.utils import IMG_FORMATS

from edgesearch.common.errors import InputError
from edgesearch.runners.accuracy.finetune import load_dataset_info

HOLDOUT_SHARE = 3  # one val image in this many is held out when the dataset has no test split
CARVE_OUT = f"1/{HOLDOUT_SHARE} of the val images, chosen by a hash of each file name before the search"
MIN_IMAGES = 3  # in each part of a carved-out val split: fewer makes either mAP meaningless


def check_splittable(data_yaml: Path) -> None:
    """Refuse, before any search, a dataset whose val split cannot spare a held-out part."""
    data = load_dataset_info(data_yaml)
    if not data.get("test"):
        _carve(data)


@contextlib.contextmanager
def search_and_holdout(data_yaml: Path):
    """Yield (data.yaml to validate the search on, data.yaml of the held-out split, its split name,
    how it was chosen)."""
    data = load_dataset_info(data_yaml)
    if data.get("test"):
        yield data_yaml, data_yaml, "test", "the data.yaml's test split"
        return
    images, held, kept = _carve(data)
    with tempfile.TemporaryDirectory(prefix="edgesearch-splits-") as scratch:
        folder = Path(scratch)
        (folder / "search.txt").write_text("".join(f"{image}\n" for image in kept))
        (folder / "holdout.txt").write_text("".join(f"{image}\n" for image in held))
        derived = {"path": str(folder), "train": _as_list(data["train"]), "val": str(folder / "search.txt"),
                   "test": str(folder / "holdout.txt"), "names": data["names"]}
        (folder / "data.yaml").write_text(yaml.safe_dump(derived))
        yield folder / "data.yaml", folder / "data.yaml", "test", f"{CARVE_OUT} ({len(held)} of {len(images)})"


def split_images(data_yaml: Path, split: str) -> list[str]:
    """Image files of a data.yaml's split."""
    return _images(load_dataset_info(data_yaml)[split])


def _carve(data: dict) -> tuple[list[str], list[str], list[str]]:
    """(val images, held out, kept for the search)."""
    images = sorted(_images(data["val"]))
    held = [image for image in images if _held_out(image)]
    kept = [image for image in images if not _held_out(image)]
    if min(len(held), len(kept)) < MIN_IMAGES:
        raise InputError(f"the val split has {len(images)} images: too few to hold out {CARVE_OUT} (at least "
                         f"{MIN_IMAGES} on each side); give the data.yaml a test: split or more val images")
    return images, held, kept


def _held_out(image: str) -> bool:
    return int(hashlib.sha256(Path(image).name.encode()).hexdigest(), 16) % HOLDOUT_SHARE == 0


def _as_list(entries) -> list[str] | str:
    return [str(e) for e in entries] if isinstance(entries, list) else str(entries)


def _images(entries) -> list[str]:
    """Image files of a split given as folders and/or list files (what ultralytics accepts)."""
    found = []
    for entry in entries if isinstance(entries, list) else [entries]:
        path = Path(entry)
        if path.is_dir():
            found += [str(p) for p in path.rglob("*") if p.suffix[1:].lower() in IMG_FORMATS]
        elif path.is_file():  # entries relative to the list file's folder, as ultralytics reads them
            found += [str(path.parent / line.strip()) if not Path(line.strip()).is_absolute() else line.strip()
                      for line in path.read_text().splitlines() if line.strip()]
    return found
