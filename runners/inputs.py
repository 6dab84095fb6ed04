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

An archive is checked member by member before anything is extracted (`_checked_members`): regular
files and folders only (no links, devices or FIFOs), each a normalised relative path inside the
folder. Python's own `tarfile` data filter is applied too, but nothing depends on it: Python
3.11.7's has a known bypass (CVE-2025-4517, fixed in 3.11.13). A folder is trusted by its
content, not its name: unpacking writes a manifest (MANIFEST: the archive's hash and each file's
sha256), and a later trial re-hashes the files against it; a folder that differs (edited, half
removed, planted) is set aside and unpacked again from the parcel.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

from edgesearch.common.cache import cache_root
from edgesearch.common.files import file_sha256

INPUTS_DIR = "inputs"
PATH_SETTINGS = ("checkpoint", "data_yaml", "profile")  # the settings that name a file a trial opens
MANIFEST = ".edgesearch-manifest.json"  # in each unpacked folder: {archive, files: {path: sha256}}
WRITTEN_ON_THE_NODE = (".cache", ".cache.npy")  # files a trial may add (ultralytics' label caches, as written)


def materialise(settings: dict, parcels: dict, fetch) -> dict:
    """`settings` with each shipped path (`parcels`: setting -> {sha256, entry, ref}) pointing at
    this node's copy, and the tuning database at this node's. `fetch(ref)` returns a parcel's
    bytes (ray.get in a Ray task); it is called only for a parcel this node does not hold yet."""
    local = dict(settings)
    for key, parcel in parcels.items():
        local[key] = str(unpacked(parcel["sha256"], lambda ref=parcel["ref"]: fetch(ref)) / parcel["entry"])
    if local.get("tuning_db"):
        local["tuning_db"] = str(cache_root() / "tuning" / Path(local["tuning_db"]).name)
    return local


def unpacked(sha256: str, archive_bytes) -> Path:
    """The folder holding the archive with this hash, unpacked on first use (`archive_bytes()`
    gives its bytes). Checked against the hash and member by member before anything is unpacked;
    an existing folder is used only if its files match its manifest."""
    if not re.fullmatch(r"[0-9a-f]{64}", str(sha256)):
        raise RuntimeError(f"input parcel {str(sha256)[:20]!r} has no sha256 name")
    target = cache_root() / INPUTS_DIR / sha256
    if target.is_dir() and not target.is_symlink():
        if _intact(target, sha256):
            return target
        _set_aside(target)
    elif target.is_symlink() or target.exists():
        _set_aside(target)
    data = archive_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"input parcel {sha256[:12]} arrived corrupted")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:12]}.", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            members = _checked_members(archive, sha256)
            archive.extractall(staging, members=members, filter="data")  # and Python's own filter
        _write_manifest(staging, sha256)
        os.rename(staging, target)  # atomic; fails if another worker got there first
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # our copy, if it lost the race (or failed)
    return target


def _checked_members(archive: tarfile.TarFile, sha256: str) -> list[tarfile.TarInfo]:
    """Every member, refused unless it is a regular file or a folder whose name is a normalised
    relative path (no '..', no absolute path, no empty or '.' part) - whatever the interpreter's
    tarfile filter lets through."""
    members = archive.getmembers()
    for member in members:
        name = member.name
        kind = ("a regular file" if member.isreg() else "a folder" if member.isdir() else
                "a symbolic link" if member.issym() else "a hard link" if member.islnk() else "a device or FIFO")
        if kind not in ("a regular file", "a folder"):
            raise RuntimeError(f"input parcel {sha256[:12]} holds {name!r}, {kind}: only regular files and "
                               "folders are unpacked")
        if (not name or "\0" in name or "\\" in name or posixpath.isabs(name) or posixpath.normpath(name) != name
                or name == "." or name.split("/")[0] == ".."):
            raise RuntimeError(f"input parcel {sha256[:12]} holds {name!r}: not a plain relative path inside "
                               "its folder")
    return members


def _file_hashes(folder: Path) -> dict[str, str] | None:
    """{relative path: sha256} of the regular files under `folder` (the manifest and node-written
    caches left out); None if anything in it is neither a regular file nor a folder."""
    hashes = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                return None
            relative = str(path.relative_to(folder))
            if relative == MANIFEST or name.endswith(WRITTEN_ON_THE_NODE):
                continue
            hashes[relative] = file_sha256(path)
    return hashes


def _write_manifest(folder: Path, sha256: str) -> None:
    (folder / MANIFEST).write_text(json.dumps({"archive": sha256, "files": _file_hashes(folder)}))


def _intact(folder: Path, sha256: str) -> bool:
    """Whether `folder` holds exactly what its manifest says, for the archive with this hash."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return manifest.get("archive") == sha256 and manifest.get("files") == _file_hashes(folder)
    except (OSError, ValueError, AttributeError):
        return False


def _set_aside(target: Path) -> None:
    """Move a folder that cannot be trusted out of the way (renamed first, so no trial opens a
    half-removed one), then remove it."""
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name[:12]}.stale.", dir=target.parent))
    try:
        os.rename(target, aside / "old")
    except FileNotFoundError:  # another worker set it aside first
        pass
    shutil.rmtree(aside, ignore_errors=True)
