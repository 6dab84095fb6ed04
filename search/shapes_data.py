"""A second procedural dataset: coloured geometric shapes on textured backgrounds, as an
ultralytics detection set (no downloads, nothing from MNIST).

Each image is a square canvas (128 px by default, as the default digit dataset) holding 1-5 shapes
of six classes (circle, square, triangle, cross, ring, star) at random size, place, rotation and
colour. Shapes may overlap: a later shape is drawn over the earlier ones, but never covers more than
`max_occlusion` of an earlier shape's pixels. Each box is tight to the whole shape (its pixels at
half coverage or more, drawn 4x supersampled), occluded part included. The class is the shape, never
its colour (ultralytics' HSV augmentation would change that): every class takes every colour. The
background is a smooth random colour field with pixel noise and a few unlabelled lines across it;
the finished image gets sensor-like noise.

The build is deterministic for a recipe and cached under the user's cache dir keyed by the recipe's
hash, written through a staging folder that is renamed into place only when complete, as the
default dataset is (search/default_data.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw
from tqdm import tqdm

from edgesearch.common.cache import cache_dir
from edgesearch.common.files import atomic_directory

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star")
RECIPE_VERSION = 1  # bump when the drawing code changes what it produces
SUPERSAMPLE = 4  # shapes are drawn at this multiple of the canvas and box-filtered down (smooth edges)
MIN_CONTRAST = 90.0  # least RGB distance between a shape's colour and the background under it


@dataclasses.dataclass(frozen=True)
class ShapeCanvasRecipe:
    n_train: int = 1500  # the default preset's counts and canvas (search/presets.py)
    n_val: int = 300
    canvas: int = 128
    min_shapes: int = 1
    max_shapes: int = 5
    min_shape: float = 0.125  # a shape's outer diameter as a share of the canvas (16-56 px at 128 px)
    max_shape: float = 0.44
    max_occlusion: float = 0.4  # the most of a shape's pixels that shapes drawn later may cover
    max_lines: int = 4  # unlabelled lines across the background
    seed: int = 0

    def key(self) -> str:
        payload = json.dumps({"version": RECIPE_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- drawing


def _rotated(points: list[tuple[float, float]], angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def shape_mask(kind: str, cx: float, cy: float, diameter: float, angle: float, canvas: int) -> np.ndarray:
    """Coverage (0-1, float32, canvas x canvas) of one shape whose outer circle has `diameter` px,
    centred at (cx, cy) px and turned by `angle` radians."""
    big = Image.new("L", (canvas * SUPERSAMPLE, canvas * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    x, y, r = cx * SUPERSAMPLE, cy * SUPERSAMPLE, diameter / 2 * SUPERSAMPLE
    if kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    elif kind == "ring":
        draw.ellipse((x - r, y - r, x + r, y + r), outline=255, width=max(SUPERSAMPLE, round(0.35 * r)))
    elif kind in ("square", "triangle"):
        draw.regular_polygon((x, y, r), 4 if kind == "square" else 3, rotation=math.degrees(angle), fill=255)
    elif kind == "cross":
        w = 0.3 * r  # half the width of an arm; the arms reach the outer circle's axes
        outline = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w),
                   (-w, w), (-w, r)]
        draw.polygon(_rotated(outline, angle, x, y), fill=255)
    elif kind == "star":
        outline = [((r if i % 2 == 0 else 0.45 * r) * math.sin(math.pi * i / 5),
                    -(r if i % 2 == 0 else 0.45 * r) * math.cos(math.pi * i / 5)) for i in range(10)]
        draw.polygon(_rotated(outline, angle, x, y), fill=255)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    small = big.resize((canvas, canvas), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, canvas: int, max_lines: int) -> np.ndarray:
    """A smooth random colour field (a 2-8 cell grid, bicubic) with pixel noise and unlabelled lines."""
    cells = int(rng.integers(2, 9))
    grid = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    field = Image.fromarray(grid).resize((canvas, canvas), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(int(rng.integers(0, max_lines + 1))):
        ends = [float(v) for v in rng.uniform(0, canvas, size=4)]
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        draw.line(ends, fill=colour, width=int(rng.integers(1, 3)))
    background = np.asarray(field, dtype=np.float32)
    return background + rng.normal(0.0, rng.uniform(3.0, 18.0), size=background.shape).astype(np.float32)


def _colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour at least MIN_CONTRAST from `under` (the mean background colour beneath the
    shape), else the most distant of 20 draws."""
    draws = rng.integers(0, 256, size=(20, 3)).astype(np.float32)
    distance = np.linalg.norm(draws - under, axis=1)
    good = np.flatnonzero(distance >= MIN_CONTRAST)
    return draws[good[0] if len(good) else int(distance.argmax())]


def compose_canvas(rng: np.random.Generator, recipe: ShapeCanvasRecipe):
    """One RGB canvas (uint8) and its boxes [(class, x0, y0, x1, y1)] in pixels (x1, y1 exclusive)."""
    size = recipe.canvas
    image = _background(rng, size, recipe.max_lines)
    owner = np.full((size, size), -1, dtype=np.int16)  # which shape each pixel shows (-1: background)
    areas: list[int] = []  # each shape's own pixel count, as drawn
    visible = np.zeros(0, dtype=np.int64)  # how many of them no later shape covers
    boxes: list[tuple[int, int, int, int, int]] = []
    wanted = int(rng.integers(recipe.min_shapes, recipe.max_shapes + 1))
    for _ in range(wanted * 20):  # bounded retries to find a place that hides no shape too much
        if len(boxes) == wanted:
            break
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        diameter = float(rng.uniform(recipe.min_shape, recipe.max_shape)) * size
        cx, cy = (float(v) for v in rng.uniform(diameter / 2, size - diameter / 2, size=2))
        alpha = shape_mask(SHAPE_CLASSES[cls], cx, cy, diameter, float(rng.uniform(0, 2 * math.pi)), size)
        inside = alpha >= 0.5
        if not inside.any():
            continue
        # what each earlier shape would still show: at least (1 - max_occlusion) of its own area
        left = visible - np.bincount(owner[inside & (owner >= 0)], minlength=len(areas))
        if (left < (1.0 - recipe.max_occlusion) * np.asarray(areas)).any():
            continue
        visible = np.append(left, int(inside.sum()))
        owner[inside] = len(areas)
        areas.append(int(inside.sum()))
        colour = _colour(rng, image[inside].mean(axis=0))
        image = image * (1.0 - alpha[..., None]) + colour * alpha[..., None]
        rows, cols = np.nonzero(inside)
        boxes.append((cls, int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1))
    image = image + rng.normal(0.0, rng.uniform(2.0, 8.0), size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), boxes


# ---------------------------------------------------------------- the dataset


def _write_split(root: Path, split: str, count: int, recipe: ShapeCanvasRecipe, rng, progress) -> None:
    from ultralytics.utils.ops import xyxy2xywhn  # loads torch: only when a dataset is written

    image_dir, label_dir = root / "images" / split, root / "labels" / split
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    for i in range(count):
        canvas, boxes = compose_canvas(rng, recipe)
        Image.fromarray(canvas).save(image_dir / f"{i:06d}.png")
        corners = np.array([box[1:] for box in boxes], dtype=np.float64).reshape(-1, 4)
        lines = [f"{box[0]} " + " ".join(f"{v:.6f}" for v in xywh)
                 for box, xywh in zip(boxes, xyxy2xywhn(corners, w=recipe.canvas, h=recipe.canvas), strict=True)]
        (label_dir / f"{i:06d}.txt").write_text("".join(f"{line}\n" for line in lines))
        progress.update(1)


def dataset_root(recipe: ShapeCanvasRecipe) -> Path:
    """The folder the shapes dataset for `recipe` is (or will be) cached in; its name carries the
    recipe's hash, which the base model's cache key takes from it (search/base_model.py)."""
    return cache_dir() / "datasets" / f"shapes-{recipe.key()}"


def build_shapes_dataset(recipe: ShapeCanvasRecipe) -> Path:
    """Path of the data.yaml of the shapes dataset for `recipe`, building it if it is not cached yet."""
    root = dataset_root(recipe)
    data_yaml = root / "data.yaml"
    if data_yaml.exists():
        return data_yaml
    rng = np.random.default_rng(recipe.seed)
    with atomic_directory(root) as staging, tqdm(
        total=recipe.n_train + recipe.n_val, desc="building shapes dataset", unit="img"
    ) as progress:
        _write_split(staging, "train", recipe.n_train, recipe, rng, progress)
        _write_split(staging, "val", recipe.n_val, recipe, rng, progress)
        (staging / "recipe.json").write_text(json.dumps({"version": RECIPE_VERSION, **dataclasses.asdict(recipe)},
                                                        indent=2))
        # no `path:` key, as the default dataset: ultralytics resolves train/val against this file's
        # folder, which keeps the dataset valid after the atomic rename from the staging folder
        (staging / "data.yaml").write_text(yaml.safe_dump(
            {"train": "images/train", "val": "images/val", "names": dict(enumerate(SHAPE_CLASSES))}, sort_keys=False))
    return data_yaml
