"""Budgeted allocation: one option per layer, the least summed price under budgets on the others.

A multiple-choice knapsack, solved exactly as a mixed-integer program by HiGHS
(scipy.optimize.milp): a binary x[l, o] per option o of layer l, sum_o x[l, o] = 1 for every
layer, sum price_k[l, o] x[l, o] <= budget_k for every budget k, minimise sum price_obj x. The
default objective is omega (HAWQ's "least predicted accuracy cost within the budget"); the
accuracy-floor mode minimises bytes or latency under an omega budget instead.

Coupled layers stay consistent by construction: a pruning group is one knob on one layer (its
other convs have prune_ratio fixed to 0 by the space), and a factorized conv's two halves are one
layer's option.

`interactions` (search/flops_count.py) add what two layers' structural choices change together
(adjacent cuts remove the same channels): a variable y per interaction, y = z_a x z_b, written
linearly (y <= z_a, y <= z_b, y >= z_a + z_b - 1; exact for binaries), where z_a is the sum of
x over the layer's options with that structural choice.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from edgesearch.search.console import stdout_sent_to
from edgesearch.search.flops_count import Interaction, structure_key
from edgesearch.search.options import Option

# price a budget constrains -> how a design's price is summed from its options' prices
BUDGETS = {
    "omega": ("omega",),
    "weight_bytes": ("weight_bytes",),
    "sram_bytes": ("weight_bytes", "activation_bytes"),
    "latency_ms": ("latency_ms",),
    "flops": ("flops",),
}
TIME_LIMIT_S = 20.0  # the interactions' products make the bound weak: at 10-20 s the incumbent was within 0.5 % of 60 s's
# a debugging printf left in HiGHS 1.12 (the solver scipy 1.17 bundles; ERGO-Code/HiGHS#2783): no
# option silences it, and `make demo` printed it 48 times between its progress bars
HIGHS_STRAY_LINE = b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();"
_STDOUT_LOCK = threading.Lock()


def _price(option: Option, budget: str) -> float:
    return sum(option.price(part) for part in BUDGETS[budget])


def allocate(tables: dict[str, list[Option]], budgets: dict[str, float], *, minimise: str = "omega",
             offsets: dict[str, float] | None = None,
             interactions: Sequence[Interaction] = ()) -> dict[str, Option] | None:
    """The cheapest design (by `minimise`) within `budgets` ({price: limit}), or None when no
    design fits. `offsets` are fixed amounts a design always pays on top of its layers' prices
    (e.g. the latency of blocks without searchable convs); `interactions`, what pairs of layers'
    structural choices add to their options' prices."""
    offsets = offsets or {}
    layers = list(tables)
    flat = [(layer, option) for layer in layers for option in tables[layer]]
    positions: dict[tuple[str, tuple], list[int]] = {}  # (layer, structural choice) -> its options' columns
    for column, (layer, option) in enumerate(flat):
        positions.setdefault((layer, structure_key(option.knobs)), []).append(column)
    pairs = [i for i in interactions if i.first in positions and i.second in positions
             and any(_pair_price(i, name) for name in (minimise, *budgets))]  # bytes and omega have none
    width = len(flat) + len(pairs)

    def row(name: str) -> np.ndarray:
        return np.array([_price(option, name) for _, option in flat] + [_pair_price(i, name) for i in pairs])

    one_per_layer = sparse.csr_array(
        (np.ones(len(flat)), ([layers.index(layer) for layer, _ in flat], np.arange(len(flat)))),
        shape=(len(layers), width))
    constraints = [LinearConstraint(one_per_layer, 1, 1)]
    if pairs:
        constraints.append(_products(pairs, positions, len(flat)))
    names = list(budgets)
    if names:
        limits = np.array([budgets[name] - offsets.get(name, 0.0) for name in names])
        constraints.append(LinearConstraint(np.array([row(name) for name in names]), -np.inf, limits))
    integrality = np.concatenate([np.ones(len(flat)), np.zeros(len(pairs))])
    with _without_stray_solver_lines():
        result = milp(row(minimise), constraints=constraints, integrality=integrality, bounds=Bounds(0, 1),
                      options={"time_limit": TIME_LIMIT_S})
    if result.x is None:  # infeasible (or no solution within the time limit)
        return None
    chosen = {}
    for (layer, option), value in zip(flat, result.x[:len(flat)], strict=True):
        if value > 0.5:
            chosen[layer] = option
    return chosen


@contextmanager
def _without_stray_solver_lines() -> Iterator[None]:
    """Standard output (file descriptor 1: the solver writes there from C) goes to a file while the
    solve runs, and is written back without HIGHS_STRAY_LINE afterwards: what other threads print
    meanwhile comes out late, not lost."""
    with _STDOUT_LOCK, tempfile.TemporaryFile() as held:
        try:
            with stdout_sent_to(held.fileno()):
                yield
        finally:
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True) if not line.startswith(HIGHS_STRAY_LINE)]
            if kept:
                os.write(1, b"".join(kept))


def _pair_price(interaction: Interaction, name: str) -> float:
    return sum(interaction.price(part) for part in BUDGETS[name])


def _products(pairs: list[Interaction], positions: dict, first_pair_column: int) -> LinearConstraint:
    """y_k = z_a x z_b for each pair k, as three linear rows: y - z_a <= 0, y - z_b <= 0,
    z_a + z_b - y <= 1."""
    rows, columns, values, upper = [], [], [], []
    for k, interaction in enumerate(pairs):
        y = first_pair_column + k
        za, zb = positions[interaction.first], positions[interaction.second]
        # (the z columns, their coefficient, y's coefficient, the row's upper bound)
        for r, (entries, z_coefficient, y_coefficient, bound) in enumerate(
                ((za, -1.0, 1.0, 0.0), (zb, -1.0, 1.0, 0.0), (za + zb, 1.0, -1.0, 1.0))):
            rows += [3 * k + r] * (len(entries) + 1)
            columns += [*entries, y]
            values += [z_coefficient] * len(entries) + [y_coefficient]
            upper.append(bound)
    shape = (3 * len(pairs), first_pair_column + len(pairs))
    return LinearConstraint(sparse.csr_array((values, (rows, columns)), shape=shape), -np.inf, np.array(upper))


def design_price(design: dict[str, Option], name: str, offsets: dict[str, float] | None = None,
                 interactions: Sequence[Interaction] = ()) -> float:
    chosen = {(layer, structure_key(option.knobs)) for layer, option in design.items()}
    return (sum(_price(option, name) for option in design.values()) + (offsets or {}).get(name, 0.0)
            + sum(_pair_price(i, name) for i in interactions if i.first in chosen and i.second in chosen))


def budget_sweep(tables: dict[str, list[Option]], low: float, high: float, points: int, *, budget: str,
                 offsets: dict[str, float] | None = None,
                 interactions: Sequence[Interaction] = ()) -> list[tuple[float, dict[str, Option]]]:
    """Designs of least omega at `points` budgets spread evenly (geometrically) from `low` to
    `high` on `budget`; budgets no design meets are skipped, repeated designs kept once."""
    designs, seen = [], set()
    for limit in np.geomspace(low, high, points) if points > 1 else [high] * points:  # 1: `high`, 0: none
        design = allocate(tables, {budget: float(limit)}, offsets=offsets, interactions=interactions)
        if design is None:
            continue
        key = tuple(sorted((layer, option.knobs) for layer, option in design.items()))
        if key not in seen:
            seen.add(key)
            designs.append((float(limit), design))
    return designs
