"""Shared fixtures: a per-session cache (MNIST, the smoke dataset and the smoke base model are
built once per test session, from scratch, as on a fresh machine).

The suite runs on two pytest-xdist workers (pyproject's addopts), each test file on one worker, so
that module-scoped fixtures are built once (the shared smoke search's tests are all in
test_smoke_search.py for that reason). The workers share the session's cache, as two runs on one
machine share the user's: the base model is trained once, behind the product's lock. They do not
take turns to be timed (each its own EDGESEARCH_TURNS_DIR; a worker's own trials still do): no test
checks a figure a neighbour's work could move, and waiting for the other worker's timings made a
25-second `search eval` take 5-8 minutes in a suite that shared the cores with a benchmark. The
longest files start first."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgesearch.runners.hardware.turns import TURNS_DIR_ENV
from edgesearch.search.cli_env import apply_process_env

apply_process_env()  # before any test module loads torch or TVM
SESSION_CACHE = None
SMOKE_SPACE = str(Path(__file__).parent / "data" / "smoke-space.yaml")  # few options: a fast sensitivity pass
SMOKE_FIRST_TRIALS = 4  # the smoke preset's 2 recipes (search/presets.py) and 2 budgeted seeds
RESUMED_TRIALS = 6  # then two screened moves


# the longest files, started first on the two workers (pytest-xdist sends each file to one worker)
FIRST_FILES = ("test_smoke_search.py", "test_cluster.py", "test_batch.py")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        first = {name: rank for rank, name in enumerate(FIRST_FILES)}
        items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: file order otherwise


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    global SESSION_CACHE
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    SESSION_CACHE = root / "edgesearch-cache"
    SESSION_CACHE.mkdir(exist_ok=True)
    os.environ["EDGESEARCH_CACHE"] = str(SESSION_CACHE)
    os.environ[TURNS_DIR_ENV] = str(SESSION_CACHE / f"turns-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    yield SESSION_CACHE


@pytest.fixture(scope="session")
def smoke_inputs(isolated_cache):
    """The smoke preset's data.yaml and trained tiny base checkpoint (real MNIST, real training)."""
    from edgesearch.search.resolve import resolve_inputs

    return resolve_inputs(profile="x86-host", space="yolov8", model=None, data=None, preset="smoke")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, smoke_inputs):
    """A real guided smoke search through the CLI, shared by the search and report tests: the recipes
    and two seeds, then resumed for two moves. Keeps what the first run wrote (its results are
    checked against the resumed run)."""
    import csv
    import json
    from types import SimpleNamespace

    out = tmp_path_factory.mktemp("smoke-run") / "run"
    first = run_cli("run", "--preset", "smoke", "--space", SMOKE_SPACE, "--out", str(out), "--trials",
                    str(SMOKE_FIRST_TRIALS), "--rung-steps", "1")  # successive halving after 1 of 2 steps
    assert first.returncode == 0, first.stderr[-3000:]
    written = {name: (out / name).stat().st_size for name in ("index.html", "trials.csv", "pareto.json", "study.db")}
    first_rows = list(csv.DictReader((out / "trials.csv").open()))
    first_report = json.loads((out / "pareto.json").read_text())
    first_html = (out / "index.html").read_text()
    resumed = run_cli("run", "--preset", "smoke", "--space", SMOKE_SPACE, "--out", str(out), "--trials",
                      str(RESUMED_TRIALS), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return SimpleNamespace(out=out, first=first, written=written, first_rows=first_rows, first_report=first_report,
                           first_html=first_html, resumed=resumed)


@pytest.fixture(scope="session")
def cluster_inputs(tmp_path_factory, isolated_cache):
    """The smoke dataset and an untrained tiny checkpoint (for tests of mechanics, not accuracy:
    no base training), in a folder of their own that tests copy from."""
    import shutil

    import torch
    from ultralytics import YOLO

    from edgesearch.search.default_data import build_digit_dataset
    from edgesearch.search.presets import PRESETS, TINY_MODEL_YAML

    source = tmp_path_factory.mktemp("cluster-inputs")
    shutil.copytree(build_digit_dataset(PRESETS["smoke"].data).parent, source / "data")
    torch.save({"model": YOLO(TINY_MODEL_YAML).model}, source / "tiny.pt")
    return source


@pytest.fixture(scope="session")
def search_quality_bench():
    """bench/search_quality.py loaded as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("search_quality", Path(__file__).resolve().parents[1] / "bench"
                                                  / "search_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained tiny YOLOv8 (from the smoke preset's YAML) for structural tests."""
    from ultralytics import YOLO

    from edgesearch.search.presets import TINY_MODEL_YAML

    return YOLO(TINY_MODEL_YAML).model.eval()


@pytest.fixture(scope="module")
def fused_tiny(tiny_model):
    """The tiny YOLOv8 fused as it is scored, with weights rescaled so that outputs depend on the input."""
    import copy

    import torch

    from edgesearch.spaces.apply import apply_candidate
    from edgesearch.spaces.candidate import Candidate

    model = apply_candidate(copy.deepcopy(tiny_model), Candidate({}))
    unit_variance_weights(model, torch.rand(1, 3, 64, 64))
    return model


def unit_variance_weights(model, x, *, randomise: bool = True, convs=None):
    """Random ultralytics init makes activations vanish (the output is then just the anchor grid and
    any comparison of outputs passes): rescale every conv (default: all but DFL's fixed decoding
    table) so its output has unit spread on `x`, after giving it random weights if `randomise`."""
    import torch

    torch.manual_seed(0)
    if convs is None:
        convs = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and ".dfl" not in name]

    def rescale(module, inputs, output):
        spread = output.std().clamp_min(1e-8)
        module.weight.div_(spread)
        if module.bias is not None:
            module.bias.div_(spread)
        return output / spread

    with torch.no_grad():
        if randomise:
            for conv in convs:
                torch.nn.init.normal_(conv.weight)
        handles = [conv.register_forward_hook(rescale) for conv in convs]
        model(x)
        for handle in handles:
            handle.remove()


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """`search ...` in a subprocess, as a user would run it."""
    env = dict(os.environ, EDGESEARCH_CACHE=str(SESSION_CACHE))
    return subprocess.run([sys.executable, "-m", "edgesearch.search.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)


def run_in_process(capsys, *args: str) -> SimpleNamespace:
    """`search ...` as `search.cli.main` in this process, with run_cli's result fields: for inputs
    refused before any slow work, where a new interpreter's imports would be most of the cost."""
    from edgesearch.search.cli import main

    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def quantized_model(fused, spec: str, imgsz: int = 64, *, seed: int = 0):
    """`fused` (a fused YOLO) at the uniform `spec` on every searchable layer, int8 activation
    ranges calibrated on random images, baked, in export mode: (model, layer names)."""
    import torch

    from edgesearch.runners.hardware.build import set_export_mode
    from edgesearch.spaces.activations import calibrate
    from edgesearch.spaces.apply import apply_candidate, uniform_candidate
    from edgesearch.spaces.candidate import parse_uniform
    from edgesearch.spaces.packing import bake_fake_quant
    from edgesearch.spaces.space import load_space

    layers = list(load_space("yolov8").resolve(fused))
    model = apply_candidate(fused, uniform_candidate(fused, parse_uniform(spec), layers))
    calibrate(model, [torch.rand(4, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(seed))])
    bake_fake_quant(model)
    set_export_mode(model)
    return model.eval(), layers


@pytest.fixture(scope="module")
def int8_tiny(fused_tiny):
    """The tiny YOLO with every searchable conv at 8-bit symmetric per-filter weights and int8
    activations: every one runs as an integer kernel."""
    return quantized_model(fused_tiny, "bits=8,scheme=symmetric,granularity=filter,act=8")


def assert_detections_match(out, reference, *, box_relative=2e-5, score_absolute=1e-4):
    """Compare a build's head output (1, 4 + classes, anchors) with PyTorch's, each part on its own
    scale: box coordinates (pixels, up to ~10x the input size on random weights) relative to their
    largest, class scores (0-1) absolutely. One tolerance over the mixed tensor would let scores be
    off by 0.75. Seen on the tiny model, fp32 TVM vs PyTorch: boxes 2.4e-6 relative, scores 1.2e-5:
    reordered fp32 sums over a few hundred terms, and the fast exp of the sigmoid (1e-6 relative)."""
    import numpy as np

    assert out.shape == reference.shape
    boxes, scores = slice(0, 4), slice(4, None)
    box_scale = max(1.0, float(np.abs(reference[:, boxes]).max()))
    assert np.abs(out[:, boxes] - reference[:, boxes]).max() <= box_relative * box_scale
    assert np.abs(out[:, scores] - reference[:, scores]).max() <= score_absolute
