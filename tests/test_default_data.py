import hashlib

import numpy as np
import pytest

from edgesearch.common.errors import InputError
from edgesearch.search.default_data import DigitCanvasRecipe, build_digit_dataset, compose_canvas, read_idx


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mnist(tmp_path):
    """A tiny IDX folder: squares of ink standing in for digits (the format, not the content, matters)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, count in (("train", 50), ("t10k", 20)):
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        images[:, 6:22, 8:20] = 255
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count))
    return folder


def _digest(root):
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (".png", ".txt"):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_dataset_is_deterministic_cached_and_rebuilt_on_recipe_change(fake_mnist, tmp_path, monkeypatch):
    recipe = DigitCanvasRecipe(n_train=12, n_val=4, seed=3)
    first = build_digit_dataset(recipe, fake_mnist)
    mtime = first.stat().st_mtime_ns
    assert build_digit_dataset(recipe, fake_mnist) == first and first.stat().st_mtime_ns == mtime  # cached
    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path / "other-cache"))
    assert _digest(build_digit_dataset(recipe, fake_mnist).parent) == _digest(first.parent)  # same bytes
    changed = build_digit_dataset(DigitCanvasRecipe(n_train=12, n_val=4, seed=4), fake_mnist)
    assert changed != first
    assert len(list((first.parent / "images" / "train").glob("*.png"))) == 12


def test_boxes_are_tight_to_the_ink_and_inside_the_canvas(fake_mnist):
    from edgesearch.search.default_data import load_mnist

    images, labels = load_mnist(fake_mnist, "train")
    recipe = DigitCanvasRecipe()
    rng = np.random.default_rng(0)
    for _ in range(20):
        canvas, boxes = compose_canvas(rng, images, labels, recipe)
        assert recipe.min_digits <= len(boxes) <= recipe.max_digits
        for cls, x0, y0, x1, y1 in boxes:
            assert 0 <= cls <= 9 and 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            ink = canvas[y0:y1, x0:x1] > 40
            assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()  # tight on all sides


def test_truncated_idx_is_refused(tmp_path):
    (tmp_path / "x").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(InputError, match="truncated"):
        read_idx(tmp_path, "x")


def test_runs_started_together_train_the_base_once(tmp_path, monkeypatch):
    """Two runs asking for the same uncached base at once: one trains, the other waits for it."""
    import threading
    import time

    from edgesearch.search import base_model
    from edgesearch.search.presets import PRESETS

    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path / "cache"))
    trainings = []

    def fake_training(model_yaml, data_yaml, folder, **settings):
        trainings.append(threading.get_ident())
        time.sleep(0.5)  # long enough for the other run to ask meanwhile
        folder.mkdir(parents=True)
        (folder / "best.pt").write_bytes(b"weights")
        return folder / "best.pt", "cpu"  # the checkpoint and where it was trained

    monkeypatch.setattr(base_model, "train_base_model", fake_training)
    data_yaml = tmp_path / "digits" / "data.yaml"
    found = []
    runs = [threading.Thread(target=lambda: found.append(base_model.default_base_checkpoint(PRESETS["smoke"], data_yaml)))
            for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert len(trainings) == 1
    assert len(found) == 2 and found[0] == found[1] and found[0].read_bytes() == b"weights"
