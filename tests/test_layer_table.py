"""Per-layer latency table: every block timed once, then served from the per-profile cache;
signatures follow the architecture (pruning) and ignore weight values."""

import copy
import json

import pytest
import torch

from edgesearch.common.errors import InputError
from edgesearch.runners.hardware.layer_table import (
    build_pipeline,
    describe_blocks,
    load_table,
    per_layer_latency,
    save_entries,
    table_path,
)
from edgesearch.runners.hardware.profiles import load_profile
from edgesearch.spaces.apply import apply_candidate, uniform_candidate
from edgesearch.spaces.candidate import LayerKnobs
from edgesearch.spaces.prune import prunable_pairs

IMGSZ = 64


@pytest.fixture
def table_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _signatures(model) -> list[str]:
    return [block.signature for block in describe_blocks(model, IMGSZ)]


def _block_of(layer_name: str) -> int:
    """'model.4.m.0.cv1.conv' -> 4: the top-level block holding a layer."""
    return int(layer_name.split(".")[1])


def _changed_blocks(model_a, model_b) -> tuple[set[int], set[int]]:
    """(blocks whose signature differs, blocks whose parameter or input shapes differ)."""
    blocks_a, blocks_b = describe_blocks(model_a, IMGSZ), describe_blocks(model_b, IMGSZ)

    def shapes(block):
        return block.input_shapes, [list(p.shape) for p in block.module.parameters()]

    by_signature = {a.index for a, b in zip(blocks_a, blocks_b, strict=True) if a.signature != b.signature}
    by_shapes = {a.index for a, b in zip(blocks_a, blocks_b, strict=True) if shapes(a) != shapes(b)}
    return by_signature, by_shapes


def test_every_block_is_timed_once_then_served_from_the_cache(fused_tiny, table_cache, monkeypatch):
    profile = load_profile("x86-host")
    first = per_layer_latency(fused_tiny, profile, IMGSZ, repeat=3, min_repeat_ms=5)
    assert [row["index"] for row in first["blocks"]] == list(range(len(fused_tiny.model)))
    assert all(row["latency_ms"] > 0 and row["latency_spread_ms"] >= 0 for row in first["blocks"])
    assert first["latency_ms"] == pytest.approx(sum(row["latency_ms"] for row in first["blocks"]))
    assert first["latency_source"].startswith("estimated: sum of per-layer measured latencies")
    distinct = len({row["signature"] for row in first["blocks"]})
    assert first["measured_blocks"] == distinct  # blocks with the same structure are timed once

    stored = json.loads(table_path(profile).read_text())  # valid JSON, one entry per distinct block
    (section,) = stored["pipelines"].values()
    assert set(section["blocks"]) == {row["signature"] for row in first["blocks"]}
    assert table_path(profile).parent == table_cache / "layer_latency"

    def no_builds(*args, **kwargs):
        raise AssertionError("a cached block was built again")

    monkeypatch.setattr("edgesearch.runners.hardware.layer_table.build_block", no_builds)
    second = per_layer_latency(fused_tiny, profile, IMGSZ, repeat=3, min_repeat_ms=5)
    assert second["measured_blocks"] == 0 and all(row["cached"] for row in second["blocks"])
    assert second["latency_ms"] == first["latency_ms"]


def test_pruning_one_layer_changes_only_the_blocks_it_reshapes(fused_tiny, tiny_model):
    layer = sorted(prunable_pairs(tiny_model))[-1]
    pruned = apply_candidate(tiny_model, uniform_candidate(tiny_model, LayerKnobs(prune_ratio=0.5), [layer]))
    by_signature, by_shapes = _changed_blocks(fused_tiny, pruned)
    assert _block_of(layer) in by_signature
    assert by_signature == by_shapes  # its block and the blocks reading its channels, nothing else
    assert len(by_signature) < len(fused_tiny.model) / 2


def test_uniform_pruning_changes_exactly_the_reshaped_blocks(fused_tiny, tiny_model):
    prunable = list(prunable_pairs(tiny_model))
    pruned = apply_candidate(tiny_model, uniform_candidate(tiny_model, LayerKnobs(prune_ratio=0.5), prunable))
    by_signature, by_shapes = _changed_blocks(fused_tiny, pruned)
    assert by_signature == by_shapes
    assert {_block_of(layer) for layer in prunable} <= by_signature


def test_signatures_ignore_weight_values_and_bit_widths_but_not_input_size(fused_tiny, tiny_model):
    quantized = apply_candidate(tiny_model, uniform_candidate(tiny_model, LayerKnobs(weight_bits=4, activation_bits=8),
                                                              list(prunable_pairs(tiny_model))))
    assert _signatures(quantized) == _signatures(fused_tiny)  # fp32 build: bits change bytes, not latency
    reweighted = copy.deepcopy(fused_tiny)
    with torch.no_grad():
        for parameter in reweighted.parameters():
            parameter.mul_(-3.0)
    assert _signatures(reweighted) == _signatures(fused_tiny)
    larger = [block.signature for block in describe_blocks(fused_tiny, 2 * IMGSZ)]
    assert all(a != b for a, b in zip(larger, _signatures(fused_tiny), strict=True))  # every block sees larger inputs


def test_entries_are_kept_per_pipeline_and_stale_code_is_dropped(tmp_path):
    path = tmp_path / "x86-host.json"
    fixed = {"tvm": "0.27", "pipeline_code": "abc", "schedule": "fixed schedule", "threads": 2}
    tuned = dict(fixed, schedule="MetaSchedule-tuned, 64 trials")
    save_entries(path, fixed, {"sig1": {"latency_ms": 1.0}})
    save_entries(path, tuned, {"sig1": {"latency_ms": 0.5}})
    save_entries(path, fixed, {"sig2": {"latency_ms": 2.0}})
    assert load_table(path, fixed) == {"sig1": {"latency_ms": 1.0}, "sig2": {"latency_ms": 2.0}}
    assert load_table(path, tuned) == {"sig1": {"latency_ms": 0.5}}
    newer = dict(fixed, pipeline_code="def")  # the build code changed: old timings no longer hold
    assert load_table(path, newer) == {}
    save_entries(path, newer, {"sig3": {"latency_ms": 3.0}})
    assert load_table(path, fixed) == {} and load_table(path, tuned) == {}
    assert list(json.loads(path.read_text())["pipelines"].values())[0]["blocks"] == {"sig3": {"latency_ms": 3.0}}
    timed_otherwise = dict(newer, timing="new blocks in 3 interleaved rounds")  # older timings may hold a disturbance
    save_entries(path, timed_otherwise, {"sig4": {"latency_ms": 4.0}})
    assert load_table(path, newer) == {} and len(json.loads(path.read_text())["pipelines"]) == 1
    path.write_text("{not json")
    assert load_table(path, newer) == {}


def test_remote_profiles_and_plain_modules_are_refused(fused_tiny, table_cache):
    with pytest.raises(InputError, match="measured on this machine"):
        per_layer_latency(fused_tiny, load_profile("raspberry-pi-4"), IMGSZ)
    with pytest.raises(InputError, match="DetectionModel"):
        per_layer_latency(torch.nn.Conv2d(3, 8, 3), load_profile("x86-host"), IMGSZ)


def test_integer_blocks_have_their_own_signatures_and_table_section(int8_tiny, fused_tiny):
    """The integer form of a block is a different build: its signature differs where convs run as
    int8 kernels, not where nothing is quantized, and its timings sit in their own section."""
    model, _ = int8_tiny
    fp32 = describe_blocks(model, IMGSZ)
    integer = describe_blocks(model, IMGSZ, integer=True)
    assert [b.signature for b in fp32] == _signatures(fused_tiny)  # fp32 form: bits change nothing
    for a, b in zip(fp32, integer, strict=True):
        has_convs = any(isinstance(m, torch.nn.Conv2d) for m in a.module.modules())
        assert (a.signature != b.signature) == has_convs, a.type
    profile = load_profile("x86-host")
    assert build_pipeline(profile, "fixed schedule", integer=True) != build_pipeline(profile, "fixed schedule")


def test_new_blocks_are_timed_in_interleaved_rounds_so_a_disturbed_moment_skews_none(monkeypatch):
    """A machine slowed 100x for three timer calls in a row: timed one block after the other, one
    block gets every run in that window (its median 100x); in interleaved rounds each block gets one
    slow round of three, and the spread check times it again."""
    import types

    from edgesearch.runners.hardware import layer_table

    calls: list[str] = []

    class OneMomentSlowVM:  # three executables, each a name; after the 3 warm-ups, calls 4-6 are slow
        def __init__(self, executable, device):
            self.name = executable

        def time_evaluator(self, name, device, *, number, repeat, min_repeat_ms):
            def run(*arguments):
                calls.append(self.name)
                ms = 100.0 if 4 <= len(calls) <= 6 else 1.0
                return types.SimpleNamespace(results=[ms / 1e3] * repeat)
            return run

    monkeypatch.setattr(layer_table.relax, "VirtualMachine", OneMomentSlowVM)
    inputs = [torch.zeros(1, 3, 8, 8)]
    blocks = {name: (name, inputs) for name in "abc"}
    one_after_another = layer_table.time_executables(blocks, repeat=6, min_repeat_ms=1, rounds=1)
    assert one_after_another["a"]["latency_ms"] == 100.0 and one_after_another["a"]["attempts"] == 1
    calls.clear()
    interleaved = layer_table.time_executables(blocks, repeat=6, min_repeat_ms=1)
    assert {name: timing["latency_ms"] for name, timing in interleaved.items()} == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert calls[3:9] == ["a", "b", "c", "a", "b", "c"]  # after the warm-ups, round after round
