"""Trials on one machine take turns to be timed and count who else ran meanwhile (real processes)."""

import multiprocessing
import threading
import time

from edgesearch.runners.hardware.turns import running_trial, timing_turn


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


def _enter_turn(acquired):
    with timing_turn():
        acquired["at"] = time.perf_counter()
