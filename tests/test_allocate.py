"""The budgeted allocation (a multiple-choice knapsack solved by HiGHS) against brute force."""

import itertools
import random

import pytest

from edgesearch.search.allocate import allocate, budget_sweep, design_price
from edgesearch.search.options import Option, non_dominated
from edgesearch.spaces.candidate import LayerKnobs


def _random_tables(rng: random.Random, layers: int, options: int) -> dict[str, list[Option]]:
    tables = {}
    for layer in range(layers):
        tables[f"model.{layer}.conv"] = [
            Option(LayerKnobs(weight_bits=b), omega=rng.uniform(0, 1), weight_bytes=rng.randint(10, 1000),
                   activation_bytes=rng.choice([25.0, 100.0]), latency_ms=rng.uniform(0.1, 2.0))
            for b in (2, 3, 4, 5, 6, 8, 16, 32)[:options]]
    return tables


def _brute_force(tables, budgets, minimise="omega", offsets=None):
    best = None
    for combination in itertools.product(*tables.values()):
        design = dict(zip(tables, combination, strict=True))
        if all(design_price(design, name, offsets) <= limit + 1e-9 for name, limit in budgets.items()):
            value = design_price(design, minimise, offsets)
            if best is None or value < best - 1e-12:
                best = value
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_solver_finds_the_brute_force_optimum_within_every_budget(seed):
    rng = random.Random(seed)
    tables = _random_tables(rng, layers=4, options=4)
    offsets = {"latency_ms": 0.5}
    everything = {name: design_price({layer: max(t, key=lambda o: o.weight_bytes) for layer, t in tables.items()}, name,
                                     offsets) for name in ("weight_bytes", "sram_bytes", "latency_ms")}
    cases = [
        ({"weight_bytes": everything["weight_bytes"] * 0.5}, "omega"),
        ({"sram_bytes": everything["sram_bytes"] * 0.6, "latency_ms": everything["latency_ms"] * 0.8}, "omega"),
        ({"omega": 1.5}, "sram_bytes"),  # the accuracy-floor form: least memory under an omega budget
    ]
    for budgets, minimise in cases:
        expected = _brute_force(tables, budgets, minimise, offsets)
        design = allocate(tables, budgets, minimise=minimise, offsets=offsets)
        if expected is None:
            assert design is None
            continue
        assert set(design) == set(tables)  # one option per layer
        for name, limit in budgets.items():
            assert design_price(design, name, offsets) <= limit + 1e-6
        assert design_price(design, minimise, offsets) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_a_budget_no_design_meets_gives_none():
    tables = _random_tables(random.Random(1), layers=3, options=3)
    smallest = sum(min(o.weight_bytes for o in options) for options in tables.values())
    assert allocate(tables, {"weight_bytes": smallest - 1}) is None
    assert allocate(tables, {"weight_bytes": smallest}) is not None


def test_a_sweep_spreads_designs_between_its_budgets():
    tables = _random_tables(random.Random(2), layers=5, options=5)
    low = sum(min(o.weight_bytes for o in options) for options in tables.values())
    high = sum(max(o.weight_bytes for o in options) for options in tables.values())
    designs = budget_sweep(tables, low, high, 5, budget="weight_bytes")
    sizes = [design_price(design, "weight_bytes") for _, design in designs]
    omegas = [design_price(design, "omega") for _, design in designs]
    assert len(designs) >= 3 and all(size <= limit for (limit, _), size in zip(designs, sizes, strict=True))
    assert omegas == sorted(omegas, reverse=True)  # more bytes allowed, less predicted accuracy cost

    assert budget_sweep(tables, low, high, 0, budget="weight_bytes") == []  # asked for none: none (was one)
    assert [limit for limit, _ in budget_sweep(tables, low, high, 1, budget="weight_bytes")] == [high]


def test_dominated_options_are_dropped():
    a = Option(LayerKnobs(weight_bits=4), omega=1.0, weight_bytes=100, activation_bytes=10, latency_ms=1.0)
    b = Option(LayerKnobs(weight_bits=5), omega=1.0, weight_bytes=120, activation_bytes=10, latency_ms=1.0)  # worse
    c = Option(LayerKnobs(weight_bits=8), omega=0.1, weight_bytes=200, activation_bytes=10, latency_ms=1.0)
    assert non_dominated([b, c, a]) == [a, c]


def test_the_solver_s_stray_debug_line_is_dropped_and_other_output_kept(capfd):
    """HiGHS 1.12 prints a leftover debugging line from C (allocate.HIGHS_STRAY_LINE); the solve's
    standard output is filtered at the file descriptor, C's buffered output included."""
    import ctypes

    from edgesearch.search.allocate import HIGHS_STRAY_LINE, _without_stray_solver_lines

    libc = ctypes.CDLL(None)
    with _without_stray_solver_lines():
        libc.printf(HIGHS_STRAY_LINE + b"\n")  # buffered by C: the filter flushes it
        libc.printf(b"the solver's own line\n")
        print("a Python line", flush=True)
    print("after", flush=True)
    out = capfd.readouterr().out
    assert HIGHS_STRAY_LINE.decode() not in out
    # C's buffered lines come out at the solve's end, after Python's (as they would without the filter)
    assert sorted(out.splitlines()[:2]) == ["a Python line", "the solver's own line"]
    assert out.splitlines()[2:] == ["after"]
