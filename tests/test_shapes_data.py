import hashlib

import numpy as np

from edgesearch.search.shapes_data import SHAPE_CLASSES, ShapeCanvasRecipe, build_shapes_dataset

TINY = ShapeCanvasRecipe(n_train=4, n_val=3, canvas=64, seed=5)


def _digest(root):
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_shapes_dataset_is_valid_deterministic_and_cached(tmp_path, monkeypatch):
    from PIL import Image
    from ultralytics.data.utils import check_det_dataset

    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path / "a"))
    data_yaml = build_shapes_dataset(TINY)
    mtime = data_yaml.stat().st_mtime_ns
    assert build_shapes_dataset(TINY) == data_yaml and data_yaml.stat().st_mtime_ns == mtime  # cached

    data = check_det_dataset(str(data_yaml), autodownload=False)
    assert data["nc"] == len(SHAPE_CLASSES) and list(data["names"].values()) == list(SHAPE_CLASSES)
    root = data_yaml.parent
    boxes = 0
    for split, count in (("train", TINY.n_train), ("val", TINY.n_val)):
        images = sorted((root / "images" / split).glob("*.png"))
        assert len(images) == count
        for image in images:
            with Image.open(image) as opened:
                assert opened.size == (64, 64) and opened.mode == "RGB"
            lines = (root / "labels" / split / f"{image.stem}.txt").read_text().splitlines()
            assert TINY.min_shapes <= len(lines) <= TINY.max_shapes
            for line in lines:
                cls, x, y, w, h = line.split()
                x, y, w, h = (float(v) for v in (x, y, w, h))
                assert int(cls) in range(len(SHAPE_CLASSES))
                assert 0 < w <= 1 and 0 < h <= 1
                assert 0 <= x - w / 2 and x + w / 2 <= 1 and 0 <= y - h / 2 and y + h / 2 <= 1
                assert min(w, h) * 64 >= 4  # no degenerate sliver
                boxes += 1
    assert boxes >= TINY.n_train + TINY.n_val

    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path / "b"))  # the same recipe from scratch: the same bytes
    again = build_shapes_dataset(TINY)
    assert again != data_yaml and _digest(again.parent) == _digest(root)
    other = build_shapes_dataset(ShapeCanvasRecipe(n_train=4, n_val=3, canvas=64, seed=6))
    assert other.parent.name != root.name and _digest(other.parent) != _digest(root)
    assert not list(tmp_path.rglob(".shapes-*"))  # no staging folder left behind


def test_boxes_are_tight_to_the_drawn_shapes():
    from edgesearch.search.shapes_data import compose_canvas

    rng = np.random.default_rng(0)
    recipe = ShapeCanvasRecipe()
    for _ in range(10):
        canvas, boxes = compose_canvas(rng, recipe)
        assert canvas.shape == (128, 128, 3) and canvas.dtype == np.uint8
        for cls, x0, y0, x1, y1 in boxes:
            assert 0 <= cls < len(SHAPE_CLASSES) and 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            side = max(x1 - x0, y1 - y0)
            assert recipe.min_shape * 128 * 0.6 <= side <= recipe.max_shape * 128 + 1
