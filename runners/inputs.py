"""A trial's input files on the node it runs on: unpacked from Ray's object store into the node's cache.

A search can run its trials on machines that share nothing with the driver but Ray. The driver
(search/shipping.py) packs each input it names by path - the base checkpoint, the dataset, the
hardware profile - into a tar archive, puts the bytes into Ray's object store and sends the
references (parcels) with every trial. Here, in the worker, each parcel becomes a folder
`<node cache>/inputs/<sha256 of the archive>/`, unpacked once per node: the first trial on a node
fetches and unpacks, later ones (and later searches with the same inputs) find the folder there.
Two workers of one node may unpack the same parcel at once: each unpacks into its own temporary
folder and renames it into place; the loser discards its copy. The settings' paths are then
rewritten to the local copies.

Per-node state stays per node: the MetaSchedule tuning database is the node's own
(`<node cache>/tuning/<profile>`), never the driver's path.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from edgesearch.runners.cache import cache_root

INPUTS_DIR = "inputs"
PATH_SETTINGS = ("checkpoint", "data_yaml", "profile")  # the settings that name a file a trial opens


def materialise(settings: dict, parcels: dict, fetch) -> dict:
    """`settings` with each shipped path (`parcels`: setting -> {sha256, entry, ref}) pointing at
    this node's copy, and the tuning database at this node's. `fetch(ref)` returns a parcel's
    bytes (ray.get in a Ray task); it is called only for a parcel this node does not hold yet."""
    local = dict(settings)
    for key, parcel in parcels.items():
        local[key] = str(unpacked(parcel["sha256"], lambda: fetch(parcel["ref"])) / parcel["entry"])
    if local.get("tuning_db"):
        local["tuning_db"] = str(cache_root() / "tuning" / Path(local["tuning_db"]).name)
    return local


def unpacked(sha256: str, archive_bytes) -> Path:
    """The folder holding the archive with this hash, unpacked on first use (`archive_bytes()`
    gives its bytes). Checked against the hash before anything is unpacked."""
    target = cache_root() / INPUTS_DIR / sha256
    if target.is_dir():
        return target
    data = archive_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"input parcel {sha256[:12]} arrived corrupted")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}.", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            archive.extractall(staging, filter="data")  # no absolute paths, links out or devices
        os.rename(staging, target)  # atomic; fails if another worker got there first
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # our copy, if it lost the race (or failed)
    return target
