"""Hypervolume (moocore's, public) against a brute-force union of boxes and hand-computed values:
the search's screen (search/moves.py, mAP maximised), the report's progress (reports/design_data.py)
and the search-quality benchmark (bench/search_quality.py) give the numbers they gave before."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgesearch.reports.design_data import progress
from edgesearch.search.moves import hypervolume


def brute_force(points, reference, maximise) -> float:
    """Volume of the union of the boxes between each point and `reference` (objectives with
    maximise True count upwards from the reference), by summing the cells of the grid of every
    coordinate that some point dominates. Points that do not strictly beat the reference add none."""
    sign = np.where(maximise, -1.0, 1.0)
    losses = np.array(points, dtype=float).reshape(-1, len(reference)) * sign
    ref = np.array(reference, dtype=float) * sign
    losses = losses[(losses < ref).all(axis=1)]
    if not len(losses):
        return 0.0
    axes = [np.unique(np.append(losses[:, k], ref[k])) for k in range(len(ref))]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        low = np.array([axes[k][i] for k, i in enumerate(cell)])
        if (losses <= low).all(axis=1).any():
            total += float(np.prod([axes[k][i + 1] - axes[k][i] for k, i in enumerate(cell)]))
    return total


def test_brute_force_itself_on_a_hand_computed_front():
    # mAP up, cost down; reference (0, 4): boxes 0.5 x 2 and 0.3 x 3 overlapping in 0.3 x 2
    assert brute_force([(0.5, 2.0), (0.3, 1.0)], (0.0, 4.0), [True, False]) == pytest.approx(1.3)


def test_search_screen_hypervolume_maximises_map():
    # hand-computed: two designs, one dominated, one beyond the latency reference (adds nothing)
    points = [(0.5, 2.0, 3.0), (0.3, 1.0, 1.0), (0.2, 2.0, 3.0), (0.9, 1.0, 11.0)]
    # boxes [0, 0.5] x [2, 4] x [3, 10] = 7 and [0, 0.3] x [1, 4] x [1, 10] = 8.1, overlap 0.3 x 2 x 7 = 4.2
    assert hypervolume(points, (0.0, 4.0, 10.0)) == pytest.approx(7 + 8.1 - 4.2)
    assert hypervolume([], (0.0, 4.0, 10.0)) == 0.0
    assert hypervolume([(0.1, 5.0, 1.0)], (0.0, 4.0, 10.0)) == 0.0
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 9):
        # mAP around a reference mAP of 0.2 (some below it), SRAM and latency around their references
        points = [tuple(p) for p in rng.uniform((0.1, 0.5, 1.0), (0.6, 4.5, 12.0), size=(n, 3))]
        reference = (0.2, 4.0, 10.0)
        assert hypervolume(points, reference) == pytest.approx(brute_force(points, reference, [True, False, False]))


def test_report_progress_hypervolume_matches_brute_force():
    rng = np.random.default_rng(1)
    scores = rng.uniform((0.2, 1.0, 1e5), (0.6, 9.0, 9e5), size=(6, 3))
    trials = [{"number": i, "state": "COMPLETE", "scores": {"map50_95": m, "latency_ms": t, "sram_bytes": s}}
              for i, (m, t, s) in enumerate(scores)]
    base = {"map50_95": 0.5, "latency_ms": 5.0, "sram_bytes": 5e5}
    rows = progress(trials, base)["rows"]
    # progress scales each objective to [0, 1] over the designs and the base (mAP negated) against 1.1
    every = np.vstack([scores * (-1, 1, 1), [[-0.5, 5.0, 5e5]]])
    low, span = every.min(axis=0), every.max(axis=0) - every.min(axis=0)
    scaled = (scores * (-1, 1, 1) - low) / span
    for i, row in enumerate(rows):
        assert row["hypervolume"] == pytest.approx(brute_force(scaled[:i + 1], (1.1, 1.1, 1.1), [False] * 3))
    assert rows[-1]["hypervolume"] > 0


def test_bench_hypervolume_maximises_map(search_quality_bench):
    bench = search_quality_bench
    points = [(0.5, 2.0), (0.3, 1.0), (0.4, 5.0)]
    assert bench._hypervolume(points, (0.0, 4.0)) == pytest.approx(1.3)
    rng = np.random.default_rng(2)
    points = [tuple(p) for p in rng.uniform((0.0, 0.5), (0.6, 1.3), size=(7, 2))]
    assert bench._hypervolume(points, (0.1, 1.1)) == pytest.approx(brute_force(points, (0.1, 1.1), [True, False]))
