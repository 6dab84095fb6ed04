"""The input files of a search, shipped to its trials through Ray's object store.

A trial opens three files the user names by path: the base checkpoint, the dataset (data.yaml and
the image and label folders it names) and the hardware profile YAML. On a cluster the nodes share
nothing but Ray, so the driver packs each into a tar archive (`pack_inputs`, before anything is
written: an input that cannot be shipped is refused like any bad input), puts the bytes into the
object store (`put`) and sends the references with every trial; runners/inputs.py unpacks each
once per node, by content hash, and points the trial's settings at the local copies.

Local runs ship too: one code path, the one every search test goes through. What it costs on one
machine is a second copy of the inputs under <cache>/inputs (once per content, reused by later
runs) and the archives in the object store: a few MB for the default dataset. A dataset of many
GB would be better read in place; this is not written for such datasets.

Archives are deterministic (sorted members, zeroed owners and times), so the same inputs give the
same hash: a resumed run, or a second search on the same data, finds them already on each node.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tarfile
from pathlib import Path

import yaml

from edgesearch.common.errors import InputError
from edgesearch.runners.accuracy.finetune import load_dataset_info

SHIPPED_DATA_YAML = "data.shipped.yaml"  # the data.yaml written into the dataset archive, paths relative
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Archive:
    entry: str  # the file inside the archive the setting points at
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def pack_inputs(*, checkpoint: Path, data_yaml: Path, profile: Path) -> dict[str, Archive]:
    """{setting: archive} for each trial setting that names a file (runners/inputs.PATH_SETTINGS)."""
    checkpoint, data_yaml, profile = Path(checkpoint), Path(data_yaml), Path(profile)
    return {
        "checkpoint": Archive(checkpoint.name, _tar({checkpoint.name: checkpoint})),
        "data_yaml": pack_dataset(data_yaml),
        "profile": Archive(profile.name, _tar({profile.name: profile})),
    }


def put(archives: dict[str, Archive]) -> dict[str, dict]:
    """The parcels a trial takes (runners/inputs.materialise): {setting: {sha256, entry, ref}}.
    The driver keeps the references, so the objects live as long as the search."""
    import ray

    return {key: {"sha256": a.sha256, "entry": a.entry, "ref": ray.put(a.data)} for key, a in archives.items()}


def total_bytes(archives: dict[str, Archive]) -> int:
    return sum(len(a.data) for a in archives.values())


def pack_dataset(data_yaml: Path) -> Archive:
    """The split folders (or list files and the images they list) a data.yaml names, their label
    folders (ultralytics finds labels by swapping /images/ for /labels/), and a data.yaml whose
    split paths are relative to the archive."""
    data = load_dataset_info(data_yaml)  # ultralytics' reading: split paths resolved
    files: dict[Path, None] = {}  # ordered set
    splits = {}
    for split in SPLITS:
        if not data.get(split):
            continue
        entries = [Path(e) for e in (data[split] if isinstance(data[split], list) else [data[split]])]
        splits[split] = entries
        for entry in entries:
            for path in _split_files(entry, data_yaml):
                files[path] = None
    if not files:
        raise InputError(f"data.yaml {data_yaml}: its splits name no files to ship")
    root = Path(_common_folder(list(files)))
    members = {str(path.relative_to(root)): path for path in files}
    shipped = {k: v for k, v in yaml.safe_load(data_yaml.read_text()).items() if k not in ("path", "download", *SPLITS)}
    for split, entries in splits.items():
        relative = [str(e.relative_to(root)) for e in entries]
        shipped[split] = relative if isinstance(data[split], list) else relative[0]
    return Archive(SHIPPED_DATA_YAML, _tar(members, extra={SHIPPED_DATA_YAML: yaml.safe_dump(shipped).encode()}))


def _split_files(entry: Path, data_yaml: Path) -> list[Path]:
    """The files one split entry needs: a folder's files and its label folder's, or a list file,
    the images it lists and their labels."""
    if entry.is_dir():
        folders = {entry, _label_path(entry)}
        # ultralytics' label caches (*.cache) are left out: each node writes its own
        return [p for folder in folders if folder.is_dir() for p in folder.rglob("*")
                if p.is_file() and p.suffix != ".cache"]
    if entry.is_file():
        found = [entry]
        for line in entry.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            relative = os.path.normpath(line[2:]) if line.startswith("./") else ""
            # ultralytics reads other lines as they are (not relocatable); './/abs' and './../x' leave the folder
            if relative in ("", ".", "..") or os.path.isabs(relative) or relative.startswith("../"):
                raise InputError(f"data.yaml {data_yaml}: list file {entry} names {line!r}; trials on other "
                                 "machines need image paths relative to the list file and inside its folder "
                                 "('./images/...'), or folders")
            image = entry.parent / relative
            found.append(image)
            label = _label_path(image).with_suffix(".txt")
            if label.is_file():
                found.append(label)
        return found
    raise InputError(f"data.yaml {data_yaml}: split path {entry} does not exist")


def _label_path(path: Path) -> Path:
    """ultralytics' rule (img2label_paths): the last /images/ in the path becomes /labels/."""
    text, images, labels = str(path), "/images/", "/labels/"
    text_slash = text + "/" if path.is_dir() else text
    if images not in text_slash:
        return path
    head, tail = text_slash.rsplit(images, 1)
    return Path((head + labels + tail).rstrip("/"))


def _common_folder(paths: list[Path]) -> str:
    return os.path.commonpath([str(p.parent) for p in paths])


def _tar(members: dict[str, Path], extra: dict[str, bytes] | None = None) -> bytes:
    """An uncompressed tar of `members` (name in archive -> file) and `extra` (name -> bytes),
    deterministic: sorted names, no owners, no times."""
    extra = extra or {}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted({*members, *extra}):
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            if name in extra:
                info.size = len(extra[name])
                archive.addfile(info, io.BytesIO(extra[name]))
            else:
                info.size = members[name].stat().st_size
                with open(members[name], "rb") as handle:
                    archive.addfile(info, handle)
    return out.getvalue()
