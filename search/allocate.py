"""Budgeted allocation: one option per layer, the least summed price under budgets on the others.

A multiple-choice knapsack, solved exactly as a mixed-integer program by HiGHS
(scipy.optimize.milp): a binary x[l, o] per option o of layer l, sum_o x[l, o] = 1 for every
layer, sum price_k[l, o] x[l, o] <= budget_k for every budget k, minimise sum price_obj x. The
default objective is omega (HAWQ's "least predicted accuracy cost within the budget"); the
accuracy-floor mode minimises bytes or latency under an omega budget instead.

Coupled layers stay consistent by construction: a pruning group is one knob on one layer (its
other convs have prune_ratio fixed to 0 by the space), and a factorized conv's two halves are one
layer's option.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from edgesearch.search.options import Option

# price a budget constrains -> how a design's price is summed from its options' prices
BUDGETS = {
    "omega": ("omega",),
    "weight_bytes": ("weight_bytes",),
    "sram_bytes": ("weight_bytes", "activation_bytes"),
    "latency_ms": ("latency_ms",),
    "flops": ("flops",),
}
TIME_LIMIT_S = 60.0


def _price(option: Option, budget: str) -> float:
    return sum(option.price(part) for part in BUDGETS[budget])


def allocate(tables: dict[str, list[Option]], budgets: dict[str, float], *, minimise: str = "omega",
             offsets: dict[str, float] | None = None) -> dict[str, Option] | None:
    """The cheapest design (by `minimise`) within `budgets` ({price: limit}), or None when no
    design fits. `offsets` are fixed amounts a design always pays on top of its layers' prices
    (e.g. the latency of blocks without searchable convs)."""
    offsets = offsets or {}
    layers = list(tables)
    flat = [(layer, option) for layer in layers for option in tables[layer]]
    cost = np.array([_price(option, minimise) for _, option in flat])
    one_per_layer = sparse.csr_array(
        (np.ones(len(flat)), ([layers.index(layer) for layer, _ in flat], np.arange(len(flat)))),
        shape=(len(layers), len(flat)))
    constraints = [LinearConstraint(one_per_layer, 1, 1)]
    names = list(budgets)
    if names:
        rows = np.array([[_price(option, name) for _, option in flat] for name in names])
        limits = np.array([budgets[name] - offsets.get(name, 0.0) for name in names])
        constraints.append(LinearConstraint(rows, -np.inf, limits))
    result = milp(cost, constraints=constraints, integrality=np.ones(len(flat)), bounds=Bounds(0, 1),
                  options={"time_limit": TIME_LIMIT_S})
    if result.x is None:  # infeasible (or no solution within the time limit)
        return None
    chosen = {}
    for (layer, option), value in zip(flat, result.x, strict=True):
        if value > 0.5:
            chosen[layer] = option
    return chosen


def design_price(design: dict[str, Option], name: str, offsets: dict[str, float] | None = None) -> float:
    return sum(_price(option, name) for option in design.values()) + (offsets or {}).get(name, 0.0)


def budget_sweep(tables: dict[str, list[Option]], low: float, high: float, points: int, *, budget: str,
                 offsets: dict[str, float] | None = None) -> list[tuple[float, dict[str, Option]]]:
    """Designs of least omega at `points` budgets spread evenly (geometrically) from `low` to
    `high` on `budget`; budgets no design meets are skipped, repeated designs kept once."""
    designs, seen = [], set()
    for limit in np.geomspace(low, high, points) if points > 1 else [high] * points:  # 1: `high`, 0: none
        design = allocate(tables, {budget: float(limit)}, offsets=offsets)
        if design is None:
            continue
        key = tuple(sorted((layer, option.knobs) for layer, option in design.items()))
        if key not in seen:
            seen.add(key)
            designs.append((float(limit), design))
    return designs
