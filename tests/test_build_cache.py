"""Builds reused within a run (runners/hardware/build_cache.py): the key follows the built graph and
nothing else, a kept figure is reused and labelled, and the re-measure times the kept library."""

import pytest

from conftest import quantized_model

INT8 = "bits=8,scheme=symmetric,granularity=filter,act=8"


def _key(model, imgsz: int = 64) -> str:
    from edgesearch.runners.hardware.build import export_for_tvm
    from edgesearch.runners.hardware.build_cache import graph_key
    from edgesearch.runners.hardware.integer_model import integer_copy
    from edgesearch.runners.hardware.profiles import load_profile

    target = load_profile("x86-host").target
    build_model, _ = integer_copy(model)
    return graph_key(export_for_tvm(build_model, imgsz, target), "x86-host")


def test_the_key_ignores_values_and_follows_structure_and_integer_convs(fused_tiny):
    fp32, _ = quantized_model(fused_tiny, "bits=32")
    int8, _ = quantized_model(fused_tiny, INT8, seed=0)
    int8_other_ranges, _ = quantized_model(fused_tiny, INT8, seed=1)  # other zero points and scales
    keys = {
        "fp32": _key(fp32),
        "4-bit weights, float compute": _key(quantized_model(fused_tiny, "bits=4")[0]),
        "int8": _key(int8),
        "int8, other activation ranges": _key(int8_other_ranges),
        "6-bit weights on int8 kernels": _key(quantized_model(fused_tiny, "bits=6,act=8")[0]),
        "pruned 50 %": _key(quantized_model(fused_tiny, "bits=32,prune=0.5")[0]),
        "kernels 3->1": _key(quantized_model(fused_tiny, "bits=32,kernel=1")[0]),
        "fp32 at 96 px": _key(fp32, imgsz=96),
    }
    # the zero points differ, so the imported kernels do too: the key must not see it
    assert keys["fp32"] == keys["4-bit weights, float compute"]
    assert keys["int8"] == keys["int8, other activation ranges"] == keys["6-bit weights on int8 kernels"]
    distinct = {keys[name] for name in ("fp32", "int8", "pruned 50 %", "kernels 3->1", "fp32 at 96 px")}
    assert len(distinct) == 5, keys


def test_a_design_with_a_graph_timed_before_reuses_its_figure_and_the_remeasure_its_library(fused_tiny, tmp_path):
    from edgesearch.runners.hardware.build_cache import KEPT_ORIGIN, REBUILT_ORIGIN, BuildCache
    from edgesearch.runners.hardware.profiles import load_profile
    from edgesearch.runners.hardware.scores import KeptBuild, hardware_scores, remeasure_interleaved

    profile, cache = load_profile("x86-host"), BuildCache(tmp_path / "builds", "ab" * 16)
    first = hardware_scores(quantized_model(fused_tiny, INT8, seed=0)[0], profile, 64, cache=cache)
    second = hardware_scores(quantized_model(fused_tiny, INT8, seed=1)[0], profile, 64, cache=cache)
    other = hardware_scores(quantized_model(fused_tiny, "bits=32")[0], profile, 64, cache=cache)
    assert not first["build_reused"] and second["build_reused"] and not other["build_reused"]
    assert second["build_key"] == first["build_key"] != other["build_key"]
    for field in ("latency_ms", "activation_bytes", "integer_layers"):
        assert second[field] == first[field], field
    assert "reused: timed once in this run" in second["latency_source"]
    assert "reused" not in first["latency_source"]

    kept = cache.library(first["build_key"])
    assert kept is not None and kept[0].stat().st_size > 0 and "int8" in kept[1]
    remeasured = remeasure_interleaved({"kept": KeptBuild(*kept), "rebuilt": quantized_model(fused_tiny, "bits=32")[0]},
                                       profile, 64, rounds=2, repeat=2)
    assert remeasured["kept"]["build_origin"] == KEPT_ORIGIN and remeasured["rebuilt"]["build_origin"] == REBUILT_ORIGIN
    assert all(figures["latency_ms"] > 0 for figures in remeasured.values())
    assert "int8" in remeasured["kept"]["latency_source"]

    library = kept[0]  # a library whose bytes changed after it was kept is not loaded
    data = library.read_bytes()
    library.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert cache.library(first["build_key"]) is None


def test_another_runs_builds_are_removed_oldest_first_over_the_size_limit(tmp_path, monkeypatch):
    import os

    from edgesearch.runners.hardware import build_cache

    root = tmp_path / "builds"
    old, recent = _another_runs_folder(root, "0" * 32), _another_runs_folder(root, "1" * 32)
    os.utime(old, (1, 1))
    monkeypatch.setattr(build_cache, "MAX_BYTES", 1500)
    current = build_cache.BuildCache(root, "2" * 32)
    current.put("k", {"latency_ms": 1.0}, "fp32")
    assert not old.exists() and recent.exists() and (current.folder / "k.json").exists()
    with pytest.raises(ValueError, match="not a hex id"):
        build_cache.BuildCache(root, "../elsewhere")


def _another_runs_folder(root, run_id):
    """A folder standing for another run's kept builds: 1,000 bytes."""
    folder = root / run_id
    folder.mkdir(parents=True)
    (folder / "x.so").write_bytes(b"\0" * 1000)
    return folder
