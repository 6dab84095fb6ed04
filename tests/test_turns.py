"""Trials on one machine take turns to be timed, count who else ran meanwhile and pause their work
steps while one is timed (real processes)."""

import multiprocessing
import threading
import time

import pytest

from edgesearch.runners.hardware.turns import TURNS_DIR_ENV, in_work_steps, running_trial, timing_turn, work_step


@pytest.fixture(autouse=True)
def turns_in_the_cache(monkeypatch):
    """These tests take turns in <cache>/machine, the default, not in the suite's folder per worker."""
    monkeypatch.delenv(TURNS_DIR_ENV, raising=False)


def _hold_a_trial(ready, release):
    with running_trial():
        ready.set()
        release.wait(30)


def _time_once(started, done):
    with running_trial(), timing_turn():
        started.set()
        done.wait(30)


def test_timing_counts_the_other_running_trials_and_takes_turns(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path))
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    other = context.Process(target=_hold_a_trial, args=(ready, release))
    other.start()
    try:
        assert ready.wait(30)
        with running_trial(), timing_turn() as turn:
            pass
        assert turn["others"] == 1  # the other process's trial, not this one's
    finally:
        release.set()
        other.join(30)
    with running_trial(), timing_turn() as turn:
        pass
    assert turn["others"] == 0  # its marker went with it

    started, done = context.Event(), context.Event()
    timer = context.Process(target=_time_once, args=(started, done))
    timer.start()
    try:
        assert started.wait(30)  # the other process is being timed now
        acquired = {}
        waiting = threading.Thread(target=lambda: _enter_turn(acquired))
        waiting.start()
        time.sleep(0.5)
        released = time.perf_counter()
        done.set()  # its turn ends here...
        waiting.join(30)
        assert acquired["at"] >= released  # ...and only then did this one's begin
    finally:
        timer.join(30)


def _time_with_cache(cache, started, done):
    import os

    os.environ["EDGESEARCH_CACHE"] = cache
    _time_once(started, done)


def test_runs_with_caches_of_their_own_take_turns_where_they_name_one_turns_folder(tmp_path, monkeypatch):
    context = multiprocessing.get_context("spawn")
    for shared in (False, True):
        if shared:
            monkeypatch.setenv(TURNS_DIR_ENV, str(tmp_path / "turns"))
        monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path / f"mine-{shared}"))
        started, done = context.Event(), context.Event()
        timer = context.Process(target=_time_with_cache, args=(str(tmp_path / f"theirs-{shared}"), started, done))
        timer.start()
        try:
            assert started.wait(30)  # the other run is being timed now
            acquired: dict = {}
            waiting = threading.Thread(target=_enter_turn, args=(acquired,))
            waiting.start()
            waiting.join(1.0)
            assert ("at" in acquired) is not shared  # apart, this one's turn came at once; together, it waits
            done.set()
            waiting.join(30)
            assert "at" in acquired
        finally:
            done.set()
            timer.join(30)


def _enter_turn(acquired):
    with timing_turn():
        acquired["at"] = time.perf_counter()


def _steps(cache, started, stop, spans):
    import os

    os.environ["EDGESEARCH_CACHE"] = cache
    with running_trial():
        for _ in in_work_steps(iter(lambda: stop.is_set(), True)):  # steps until told to stop
            begun = time.time()
            started.set()
            time.sleep(0.05)
            spans.append((begun, time.time()))


def test_a_timing_waits_for_the_steps_under_way_and_no_step_starts_until_it_ends(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path))
    context = multiprocessing.get_context("spawn")
    started, stop = context.Event(), context.Event()
    with context.Manager() as manager:
        spans = manager.list()
        worker = context.Process(target=_steps, args=(str(tmp_path), started, stop, spans))
        worker.start()
        try:
            assert started.wait(30)
            turns = []
            for _ in range(5):
                time.sleep(0.1)
                with running_trial(), timing_turn() as turn:
                    begun = time.time()
                    time.sleep(0.3)
                    turns.append((begun, time.time()))
                assert turn["others"] == 1 and turn["paused_s"] < 5
        finally:
            stop.set()
            worker.join(30)
        steps = list(spans)
    assert len(steps) > 10  # the worker stepped between the timings
    for begun, ended in turns:  # ...but never during one
        assert not [s for s in steps if s[0] < ended and s[1] > begun], (begun, ended)


def test_steps_nest_and_a_timing_inside_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path))
    with work_step(), work_step():  # the inner one does not lock again (it would wait for a timing forever)
        with pytest.raises(RuntimeError, match="wait for itself"), timing_turn():
            pass
    with timing_turn() as turn:  # outside every step it goes
        pass
    assert turn["others"] == 0


def test_a_trials_heavy_phases_outside_the_fine_tune_are_work_steps_too(smoke_inputs, monkeypatch):
    """Applying the candidate (DepGraph cuts), calibration, packing, the integer copy and torch.export
    take seconds of CPU each: unpaused, one of them beside a timing doubled an int8 design's figure
    (the int8 recipe at 3.95 ms against 1.9 ms re-timed). Each runs inside a work step."""
    from edgesearch.runners import evaluate
    from edgesearch.runners.hardware import scores, turns
    from edgesearch.runners.hardware.profiles import load_profile
    from edgesearch.search.resolve import eval_settings

    depths: dict[str, int] = {}

    def watched(module, name):
        real = getattr(module, name)

        def call(*args, **kwargs):
            depths[name] = getattr(turns._in_step, "depth", 0)
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, call)

    for module, name in ((evaluate, "apply_candidate"), (evaluate, "calibrate"), (evaluate, "bake_fake_quant"),
                         (scores, "integer_copy"), (scores, "export_for_tvm")):
        watched(module, name)
    settings = eval_settings(smoke_inputs, imgsz=64, finetune_iters=0, batch=2, threads=1, seed=0)
    design = {"layers": {"model.1.conv": {"weight_bits": 4, "activation_bits": 8, "prune_ratio": 0.25}}}
    _, model, *_ = evaluate.build_design(evaluate.EvalSettings(**settings), design)
    scores.hardware_scores(model, load_profile("jetson-nano"), 64)  # estimated: no build, no timing
    assert depths == {"apply_candidate": 1, "calibrate": 1, "bake_fake_quant": 1, "integer_copy": 1,
                      "export_for_tvm": 1}


def test_trials_get_the_drivers_process_environment_with_the_users_values_kept(monkeypatch):
    """Ray workers start from `worker_env()`, not from the driver's environment: a value the user set
    (e.g. TVM_BIND_THREADS=1 to time with TVM's pinned threads) reaches them as it reaches the driver."""
    from edgesearch.search.cli_env import PROCESS_ENV
    from edgesearch.search.execution import worker_env

    monkeypatch.delenv("TVM_BIND_THREADS", raising=False)
    assert worker_env()["TVM_BIND_THREADS"] == PROCESS_ENV["TVM_BIND_THREADS"] == "0"
    monkeypatch.setenv("TVM_BIND_THREADS", "1")
    assert worker_env()["TVM_BIND_THREADS"] == "1"


def test_the_sensitivity_passs_weight_error_thread_pauses_while_a_trial_is_timed(tmp_path, monkeypatch):
    """The pass computes weight errors in a thread beside its losses, while the base's score may be
    timed: each layer's errors are a work step, so they wait for the timing to end."""
    import concurrent.futures

    import torch

    from edgesearch.runners.accuracy.sensitivity import _weight_errors

    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path))
    weights = {"conv": torch.randn(8, 8, 3, 3)}
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        with timing_turn():
            errors = pool.submit(_weight_errors, weights, {"conv": {"weight_bits": [8, 4]}})
            time.sleep(1.0)
            assert not errors.done()  # waiting at its first layer
        deltas, _ = errors.result(timeout=30)
    assert set(deltas["conv"]) and all(value >= 0 for value in deltas["conv"].values())


def test_the_cost_basis_times_its_blocks_with_the_work_beside_it_paused(tmp_path, monkeypatch):
    """Trials working on the same machine (another search's) pause while the cost basis times its
    blocks, and run while it builds them."""
    from types import SimpleNamespace

    from edgesearch.runners.hardware import layer_table

    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path))
    events: list[str] = []

    def timed(executables, **kwargs):  # the TVM timing's place in the sequence, held for a while
        events.append("timing starts")
        time.sleep(0.5)
        events.append("timing ends")
        return {key: {"latency_ms": 1.0, "latency_spread_ms": 0.0} for key in executables}

    monkeypatch.setattr(layer_table, "time_executables", timed)
    monkeypatch.setattr(layer_table, "build_block", lambda block, profile, **kwargs: (block.signature, {"build_s": 0}))
    blocks = [SimpleNamespace(signature=name, inputs=[], type="Conv", input_shapes=[]) for name in "ab"]
    stop = threading.Event()

    def steps():
        while not stop.is_set():
            with work_step():
                events.append("step")
            time.sleep(0.005)

    worker = threading.Thread(target=steps)
    worker.start()
    try:
        time.sleep(0.1)
        layer_table.measure_blocks(blocks, None, repeat=1, min_repeat_ms=1, tune_trials=0, tuning_db=None)
        time.sleep(0.1)
    finally:
        stop.set()
        worker.join()
    start, end = events.index("timing starts"), events.index("timing ends")
    assert "step" in events[:start] and "step" in events[end:]
    assert "step" not in events[start:end]
