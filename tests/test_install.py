"""Installed as users install it: the wheel built from the sources, installed with --no-deps into a
fresh virtual environment outside the repository, runs `search profiles` and `search eval --preset
smoke` from a folder outside the repository.

The new environment takes its dependencies (torch, TVM, ...) from the project's: a .pth file names
the project venv's site-packages (a venv's --system-site-packages would give the base interpreter's,
where they are not). Lines of a .pth only extend sys.path, so the editable install's import hook in
the project venv (a .pth of its own there) is not loaded: edgesearch comes from the wheel alone,
which the test checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _copy_sources(destination: Path) -> None:
    """What setuptools builds from: pyproject.toml, the README and each package's folder (its own
    files, not its subfolders: those are packages of their own, or run outputs such as reports/demo/)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    destination.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, destination / name)
    for package in config["packages"]:
        mapped = max((p for p in config["package-dir"] if package == p or package.startswith(p + ".")), key=len)
        folder = Path(config["package-dir"][mapped], *package[len(mapped):].split(".")[1:])
        (destination / folder).mkdir(parents=True, exist_ok=True)
        for source in (ROOT / folder).iterdir():
            if source.is_file() and source.suffix != ".pyc":
                shutil.copy2(source, destination / folder / source.name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory, smoke_inputs):
    """(venv python, environment, a folder outside the repository) with the wheel installed."""
    folder = tmp_path_factory.mktemp("install")
    _copy_sources(folder / "src")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(folder / "wheels"), str(folder / "src")], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    wheel, = (folder / "wheels").glob("edgesearch-*.whl")
    shipped = zipfile.ZipFile(wheel).namelist()
    profiles = sorted(p.name for p in (ROOT / "hardware_profiles").glob("*.yaml"))
    assert [n for n in profiles if f"edgesearch/hardware_profiles/{n}" not in shipped] == []
    assert "edgesearch/search/yolov8-tiny.yaml" in shipped and "edgesearch/spaces/yolov8.yaml" in shipped

    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "edgesearch-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the project venv's editable edgesearch (seen through the .pth) is neither
    # taken as already installed nor uninstalled
    install = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    outside = folder / "elsewhere"
    outside.mkdir()
    return python, purelib, env, outside


def test_the_installed_package_is_the_wheel_with_its_data(installed):
    python, purelib, env, outside = installed
    check = ("import json, edgesearch.search, edgesearch.runners.hardware.profiles as profiles\n"
             "from edgesearch.runners.hardware import latency_model\n"
             "work = latency_model.model_work('search/yolov8-tiny.yaml', 64, 'fp32')\n"
             "print(json.dumps({'search': edgesearch.search.__file__, 'profiles': str(profiles.PROFILES_DIR),\n"
             "                  'names': profiles.available_profiles(), 'convs': len(work.convs)}))")
    result = subprocess.run([python, "-c", check], capture_output=True, text=True, env=env, cwd=outside)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(found["search"]).is_relative_to(purelib) and Path(found["profiles"]).is_relative_to(purelib)
    assert "x86-host" in found["names"] and found["convs"] > 0


def test_search_profiles_and_a_smoke_eval_run_from_the_installed_wheel(installed):
    python, purelib, env, outside = installed
    search = str(Path(python).parent / "search")
    profiles = subprocess.run([search, "profiles"], capture_output=True, text=True, env=env, cwd=outside, timeout=300)
    assert profiles.returncode == 0, profiles.stderr[-3000:]
    names = sorted(p.stem for p in (ROOT / "hardware_profiles").glob("*.yaml"))
    assert [n for n in names if f"{n}: " not in profiles.stdout] == [], profiles.stdout
    # the session's smoke base (smoke_inputs) is in EDGESEARCH_CACHE: reused, not trained again
    evaluated = subprocess.run([search, "eval", "--preset", "smoke", "--json"], capture_output=True, text=True,
                               env=env, cwd=outside, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "training the base model" not in evaluated.stdout + evaluated.stderr
    scores = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert scores["map50_95"] > 0 and scores["latency_ms"] > 0 and scores["fits_sram"] is True
    assert list(outside.iterdir()) == []  # nothing written where it was run from
