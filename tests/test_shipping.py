"""Inputs packed by the driver (search/shipping.py) and unpacked on a node (runners/inputs.py), without Ray."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edgesearch.common.errors import InputError
from edgesearch.runners.accuracy.finetune import load_dataset_info
from edgesearch.runners.inputs import materialise, unpacked
from edgesearch.search.shipping import pack_dataset, pack_inputs


def _dataset(root: Path, data_yaml: str) -> Path:
    """Two train and one val image (1x1 PNG) with labels, in ultralytics' images/ + labels/ layout."""
    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010800000000"
                        "3a7e9b550000000a4944415478da63600000000200015e2b7d8d0000000049454e44ae426082")
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        for name in names:
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "images" / split / f"{name}.png").write_bytes(png)
            (root / "labels" / split / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(data_yaml)
    return root / "data.yaml"


def test_a_shipped_dataset_is_read_on_the_node_from_its_own_copy(tmp_path, monkeypatch):
    data_yaml = _dataset(tmp_path / "user", "train: images/train\nval: images/val\nnames: {0: digit}\n")
    (tmp_path / "user" / "unrelated.bin").write_bytes(b"x" * 1000)  # not named by the data.yaml: stays home
    archive = pack_dataset(data_yaml)
    assert pack_dataset(data_yaml).sha256 == archive.sha256, "the same dataset packs to the same bytes"

    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path / "node"))
    local = unpacked(archive.sha256, lambda: archive.data) / archive.entry
    assert local.is_relative_to(tmp_path / "node" / "inputs")
    data = load_dataset_info(local)
    assert Path(data["train"]).is_relative_to(local.parent) and Path(data["val"]).is_relative_to(local.parent)
    assert sorted(p.name for p in (local.parent / "labels" / "train").iterdir()) == ["a.txt", "b.txt"]
    assert not (local.parent / "unrelated.bin").exists()
    assert data["names"] == {0: "digit"}


def test_list_files_with_relative_entries_travel_and_absolute_ones_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path / "node"))
    root = tmp_path / "user"
    data_yaml = _dataset(root, "train: train.txt\nval: images/val\nnames: {0: digit}\n")
    (root / "train.txt").write_text("./images/train/a.png\n")
    archive = pack_dataset(data_yaml)
    node = unpacked(archive.sha256, lambda: archive.data)
    assert (node / "train.txt").is_file() and (node / "images/train/a.png").is_file()
    assert (node / "labels/train/a.txt").is_file() and not (node / "images/train/b.png").exists()

    (root / "train.txt").write_text(f"{root}/images/train/a.png\n")
    with pytest.raises(InputError, match="relative to the list file"):
        pack_dataset(data_yaml)


def test_racing_workers_unpack_a_parcel_once_and_settings_point_at_the_node(tmp_path, monkeypatch):
    data_yaml = _dataset(tmp_path / "user", "train: images/train\nval: images/val\nnames: {0: digit}\n")
    (tmp_path / "base.pt").write_bytes(b"weights")
    (tmp_path / "board.yaml").write_text("name: board\n")
    archives = pack_inputs(checkpoint=tmp_path / "base.pt", data_yaml=data_yaml, profile=tmp_path / "board.yaml")
    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path / "node"))
    parcels = {key: {"sha256": a.sha256, "entry": a.entry, "ref": key} for key, a in archives.items()}
    fetched = []

    def fetch(ref):
        fetched.append(ref)
        return archives[ref].data

    settings = {"checkpoint": "/driver/base.pt", "data_yaml": "/driver/data.yaml", "profile": "/driver/board.yaml",
                "tuning_db": "/driver/cache/tuning/board", "imgsz": 64}
    results = []
    threads = [threading.Thread(target=lambda: results.append(materialise(settings, parcels, fetch)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(r == results[0] for r in results)
    local = results[0]
    assert Path(local["checkpoint"]).read_bytes() == b"weights"
    assert Path(local["profile"]).read_text() == "name: board\n"
    assert local["tuning_db"] == str(tmp_path / "node" / "tuning" / "board") and local["imgsz"] == 64
    assert sorted(p.name for p in (tmp_path / "node" / "inputs").iterdir()) == sorted(a.sha256 for a in archives.values())
    fetched_by_racers = len(fetched)
    assert fetched_by_racers <= 4 * len(parcels)
    materialise(settings, parcels, fetch)  # a later trial on this node
    assert len(fetched) == fetched_by_racers, "a parcel the node holds is not fetched again"


def test_a_parcel_that_arrives_corrupted_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path / "node"))
    with pytest.raises(RuntimeError, match="corrupted"):
        unpacked("0" * 64, lambda: b"not what was sent")
    assert not (tmp_path / "node" / "inputs" / ("0" * 64)).exists()
