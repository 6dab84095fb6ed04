"""The structure-targets table of the search-quality benchmark (bench/search_quality.py): a target
missed by a hair does not print as the threshold beside its "no"."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "search_quality.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("search_quality", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_a_miss_is_not_rounded_up_to_the_threshold():
    bench = load_bench()
    assert bench.reached_text(2.9993, 3.0) == "2.999"
    assert bench.reached_text(3.004, 3.0) == "3.00"
    assert bench.reached_text(2.37, 1.5) == "2.37"
