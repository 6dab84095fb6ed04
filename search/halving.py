"""Successive halving of the fine-tune: a move's fine-tune stops at its first rung when it cannot
reach the front (issue 18, item 4).

Every trial of a run with `rung_steps` is validated after that many fine-tune steps
(runners/evaluate.Rung); a design that goes on records its mAP50-95 there (`rung_map50_95`), so the
run learns what the rest of a fine-tune adds. A move (not a recipe, the control or a planned seed:
those are the reference points, and always get the full schedule) gets a promotion bar:

    bar = the best mAP50-95 among scored designs at least SLACK faster and smaller than the move's
          predicted latency and memory - the most the rest of a fine-tune has added to a design
          trained at the move's learning rate (structural designs, at the higher rate, gain far more)

and with an accuracy floor, at least the floor less that gain. Below it after the rung, the move
would stay dominated (or under the floor, off the front) even with every remaining step, so its
fine-tune stops there; its figures are real (validated, built and timed) and its training record
says it had fewer steps. No bar (the move goes on) until MIN_GAINS designs have shown their gain,
or when no scored design is clearly faster and smaller than the move's prediction.
"""

from __future__ import annotations

import optuna

from edgesearch.search import study as studies

SLACK = 0.9  # a design counts as dominating only if 10 % faster and smaller than the prediction (its error)
MIN_GAINS = 3  # full fine-tunes with a rung figure needed before any move is stopped
RUNG_SHARE = 3  # default rung: a third of the fine-tune's steps


def default_rung_steps(finetune_iters: int) -> int:
    return finetune_iters // RUNG_SHARE


def promotion_bar(study: optuna.Study, predicted: dict | None, finetune_iters: int, *,
                  map_floor: float | None = None, lr: float | None = None) -> float | None:
    """The mAP50-95 a move predicted at `predicted` (latency_ms, sram_bytes), fine-tuned at `lr`,
    must reach at the rung to be fine-tuned on; None: it goes on whatever it scores there."""
    if not predicted or predicted.get("latency_ms") is None or predicted.get("sram_bytes") is None:
        return None
    # the whole schedule from the base, or more (children started from a parent's weights)
    full = [s for s in _scored(study) if s["training"]["steps_from_base"] >= finetune_iters]
    shown = [s for s in full if s.get("rung_map50_95") is not None]
    alike = [s for s in shown if s["training"].get("lr") == lr]
    shown = alike if len(alike) >= MIN_GAINS else shown  # too few at its rate: every design's gain
    if len(shown) < MIN_GAINS:
        return None
    gain = max(0.0, *(s["map50_95"] - s["rung_map50_95"] for s in shown))
    dominating = [s["map50_95"] for s in full if s["latency_ms"] <= SLACK * predicted["latency_ms"]
                  and s["sram_bytes"] <= SLACK * predicted["sram_bytes"]]
    bars = ([max(dominating) - gain] if dominating else []) + ([map_floor - gain] if map_floor is not None else [])
    return max(bars) if bars else None


def halving_text(study: optuna.Study) -> str:
    """How many scored trials successive halving stopped at their rung, for the run's account."""
    records = [s["training"] for s in _scored(study)]
    stopped = [r for r in records if r.get("stopped_early")]
    if not any("stopped_early" in r for r in records):
        return ""
    return (f"successive halving: {len(stopped)} of {len(records)} scored trial(s) stopped their fine-tune at the "
            "rung, below the mAP50-95 they needed to reach the front")


def _scored(study: optuna.Study) -> list[dict]:
    """The scores of the scored trials that carry a training record."""
    return [scores for scores in studies.completed_scores(study) if "training" in scores]
