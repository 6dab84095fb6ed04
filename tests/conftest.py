"""Shared fixtures: a per-session cache (MNIST, the smoke dataset and the smoke base model are
built once per test session, from scratch, as on a fresh machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgesearch.search.cli_env import apply_process_env

apply_process_env()  # before any test module loads torch or TVM
SESSION_CACHE = None


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    global SESSION_CACHE
    SESSION_CACHE = tmp_path_factory.mktemp("edgesearch-cache")
    os.environ["EDGESEARCH_CACHE"] = str(SESSION_CACHE)
    os.environ.setdefault("YOLO_VERBOSE", "False")
    yield SESSION_CACHE


@pytest.fixture(scope="session")
def smoke_inputs(isolated_cache):
    """The smoke preset's data.yaml and trained tiny base checkpoint (real MNIST, real training)."""
    from edgesearch.search.jobs import resolve_inputs

    return resolve_inputs(profile="x86-host", space="yolov8", model=None, data=None, preset="smoke")


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained tiny YOLOv8 (from the smoke preset's YAML) for structural tests."""
    from ultralytics import YOLO

    from edgesearch.search.presets import TINY_MODEL_YAML

    return YOLO(TINY_MODEL_YAML).model.eval()


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """`search ...` in a subprocess, as a user would run it."""
    env = dict(os.environ, EDGESEARCH_CACHE=str(SESSION_CACHE))
    return subprocess.run([sys.executable, "-m", "edgesearch.search.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=timeout)
