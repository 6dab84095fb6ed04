"""The structure-targets table of the search-quality benchmark (bench/search_quality.py): a target
missed by a hair does not print as the threshold beside its "no"."""

from __future__ import annotations


def test_a_miss_is_not_rounded_up_to_the_threshold(search_quality_bench):
    assert search_quality_bench.reached_text(2.9993, 3.0) == "2.999"
    assert search_quality_bench.reached_text(3.004, 3.0) == "3.00"
    assert search_quality_bench.reached_text(2.37, 1.5) == "2.37"
