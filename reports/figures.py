"""Plotly figures of a run (built here, drawn by plotly.js inlined in the page).

Every trace that stands for designs carries meta {"role": "designs"} (one point per design) so
that a reader - or a test - can count the points; highlight rings carry {"role": "highlight"}.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .page import esc

COLORS = {"front": "#1f77b4", "other": "#b0b0b0", "recipe": "#ff7f0e", "base": "#d62728", "screened": "#7f7f7f",
          "highlight": "#2ca02c", "budget": "#ff7f0e", "floor": "#9467bd"}
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), hovermode="closest",
              legend=dict(orientation="h", y=-0.2), font=dict(size=12))
KIB = 1024
OFF_SCALE = 20  # a memory budget this many times beyond the largest design is noted, not drawn


def _mark_text(marks) -> str:
    marks = [m for m in marks if m]
    return f" [{', '.join(marks)}]" if marks else ""


def pareto_figure(axis: str, points: list[dict], *, base_point: dict, budget: dict, floor: dict,
                  latency_budget_ms: float | None, highlights: dict[int, str], x_title: str, caption_marks) -> go.Figure:
    """mAP50-95 against latency (axis='latency_ms') or against the memory footprint (axis='sram_bytes').

    points: [{number, category (front|recipe|other|screened), x, y, hover, group}]; designs whose x
    came from different sources are drawn as separate traces (group = the source mark)."""
    fig = go.Figure()
    names = {"front": "Pareto front", "recipe": "recipe (fixed reference design)", "other": "other scored designs",
             "screened": "screened out: predicted, never fine-tuned"}
    symbols = {"front": "circle", "recipe": "diamond", "other": "circle", "screened": "x-thin-open"}
    groups = sorted({p["group"] or "" for p in points})
    for category in ("other", "screened", "recipe", "front"):
        for group in groups:
            chosen = [p for p in points if p["category"] == category and (p["group"] or "") == group]
            if not chosen:
                continue
            errors = [p.get("error") or 0.0 for p in chosen]
            fig.add_trace(go.Scatter(
                x=[p["x"] for p in chosen], y=[p["y"] for p in chosen], mode="markers",
                # estimated latencies: ± the p90 of their calibration's leave-one-out errors
                error_x=dict(type="data", array=errors, visible=True, thickness=1, color="#999") if any(errors) else None,
                name=names[category] + (f" [{group}]" if group and len(groups) > 1 else ""),
                marker=dict(color=COLORS[category], size=11 if category in ("front", "recipe") else 8,
                            symbol=symbols[category], line=dict(width=1, color="#333" if category != "other" else "#888")),
                customdata=[p["hover"] for p in chosen], hovertemplate="%{customdata}<extra></extra>",
                meta={"role": "designs", "category": category}))
    fig.add_trace(go.Scatter(x=[base_point["x"]], y=[base_point["y"]], mode="markers+text", name="base (unmodified)",
                             text=["base"], textposition="top center",
                             marker=dict(color=COLORS["base"], size=18, symbol="star", line=dict(width=1, color="#333")),
                             customdata=[base_point["hover"]], hovertemplate="%{customdata}<extra></extra>",
                             meta={"role": "designs", "category": "base"}))
    shown = [p for p in points if p["number"] in highlights]
    if shown:
        fig.add_trace(go.Scatter(
            x=[p["x"] for p in shown], y=[p["y"] for p in shown], mode="markers+text", name="recommended",
            text=[highlights[p["number"]] for p in shown], textposition="bottom center",
            marker=dict(color=COLORS["highlight"], size=22, symbol="circle-open", line=dict(width=2.5)),
            hoverinfo="skip", meta={"role": "highlight"}))
    largest = max([p["x"] for p in points] + [base_point["x"]])
    if axis == "sram_bytes" and budget["bytes"] and budget["bytes"] / KIB > OFF_SCALE * largest:
        # a DRAM budget of GiB beside designs of MiB: a line there would squash every design onto 0
        fig.add_annotation(text=f"{esc(budget['label'])}: off the scale, every design here fits", xref="paper",
                           yref="paper", x=1, y=1.06, showarrow=False, font=dict(color=COLORS["budget"]))
    elif axis == "sram_bytes" and budget["bytes"]:
        fig.add_vline(x=budget["bytes"] / KIB, line=dict(color=COLORS["budget"], dash="dash"),
                      annotation_text=esc(budget["label"]), annotation_position="top left")
    if axis == "latency_ms" and latency_budget_ms:
        fig.add_vline(x=latency_budget_ms, line=dict(color=COLORS["budget"], dash="dash"),
                      annotation_text=esc(f"latency budget {latency_budget_ms} ms"), annotation_position="top left")
    if floor["map50_95"] > 0:
        fig.add_hline(y=floor["map50_95"], line=dict(color=COLORS["floor"], dash="dot"),
                      annotation_text=esc(floor["label"]), annotation_position="bottom right")
    fig.update_layout(**LAYOUT, height=460,
                      title=dict(text=f"mAP50-95 vs {x_title}{_mark_text(caption_marks)}", font=dict(size=14)),
                      xaxis_title=x_title, yaxis_title="mAP50-95 (val)")
    return fig


def progress_figure(progress: dict, mark: str | None) -> go.Figure:
    rows = progress["rows"]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    numbers = [r["number"] for r in rows]
    fig.add_trace(go.Scatter(x=numbers, y=[r["hypervolume"] for r in rows], mode="lines+markers",
                             name="hypervolume of the feasible front", line=dict(color=COLORS["front"]),
                             hovertemplate="after trial #%{x}: hypervolume %{y:.4f}<extra></extra>",
                             meta={"role": "progress"}), secondary_y=False)
    fig.add_trace(go.Scatter(x=numbers, y=[r["failed"] for r in rows], mode="lines", name="failed (cumulative)",
                             line=dict(color=COLORS["base"], shape="hv"),
                             hovertemplate="after trial #%{x}: %{y} failed<extra></extra>"), secondary_y=True)
    fig.add_trace(go.Scatter(x=numbers, y=[r["screened"] for r in rows], mode="lines",
                             name="screened out (cumulative)", line=dict(color=COLORS["screened"], shape="hv", dash="dot"),
                             hovertemplate="after trial #%{x}: %{y} screened out<extra></extra>"), secondary_y=True)
    fig.update_layout(**LAYOUT, height=360,
                      title=dict(text="Search progress" + _mark_text([mark]), font=dict(size=14)),
                      xaxis_title="trial number")
    fig.update_yaxes(title_text="hypervolume (scaled objectives)", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text="trials", secondary_y=True, rangemode="tozero", showgrid=False)
    return fig


# (row label, knob, intensity 0 = unchanged .. 1 = most compressed), in the knob table's order (spaces/knobs.py;
# reports/ imports nothing of it, so tests/test_report.py checks that these rows match it)
KNOB_ROWS = (
    ("weight bits", "weight_bits", lambda k: 0.0 if k["weight_bits"] >= 32 else min(1.0, (32 - k["weight_bits"]) / 30)),
    ("scheme", "scheme", lambda k: 0.5 if k["weight_bits"] < 16 else 0.0),
    ("granularity", "granularity", lambda k: 0.5 if k["weight_bits"] < 16 else 0.0),
    ("prune ratio", "prune_ratio", lambda k: float(k["prune_ratio"])),
    ("kernel", "kernel_size", lambda k: {"keep": 0.0, 5: 0.33, 3: 0.66, 1: 1.0}.get(k["kernel_size"], 0.5)),
    ("sparsity", "sparsity", lambda k: float(k["sparsity"])),
    ("rank ratio", "rank_ratio", lambda k: 1.0 - float(k["rank_ratio"])),
    ("compute", "activation_bits", lambda k: {8: 1.0, 16: 0.5}.get(k["activation_bits"], 0.0)),
)


def knob_text(knob: str, k: dict) -> str:
    """A knob's value as the per-layer view shows it; "-" where the layer keeps the base's."""
    value = k[knob]
    if knob == "weight_bits":
        return "float" if value >= 32 else ("fp16" if value == 16 else f"{value}")
    if knob in ("scheme", "granularity") and k["weight_bits"] >= 16:
        return "-"
    if knob == "granularity" and value == "group":
        return f"group {k['group_size']}"
    if knob == "activation_bits":
        return {8: "int8", 16: "fp16"}.get(value, "-")
    if knob in ("prune_ratio", "sparsity"):
        return "-" if not value else f"{float(value):.0%}"
    if knob == "rank_ratio":
        return "-" if float(value) >= 1 else f"{float(value):.2f}"
    if knob == "kernel_size":
        return "-" if value == "keep" else f"{value}×{value}"
    return str(value)


def short_layer(name: str) -> str:
    return name[len("model."):] if name.startswith("model.") else name


def layer_figure(title: str, rows: list[dict], base_rows: list[dict], marks: dict) -> go.Figure:
    """Per-layer strip chart of one design: a knob heatmap (layers in model order), then each
    layer's packed bytes (design vs base, where computed), then the base's latency share and the
    sensitivity of the chosen option (where the run has them)."""
    layers = [esc(short_layer(r["layer"])) for r in rows]  # plotly reads tags (<a href>, <span style>) in its text
    has_bytes = any(r["packed_bytes"] is not None for r in rows)
    has_share = any(r["latency_share"] is not None for r in rows)
    has_omega = any(r["omega"] is not None for r in rows)
    panels = 1 + has_bytes + (has_share or has_omega)
    heights = [0.5] + [0.5 / (panels - 1)] * (panels - 1) if panels > 1 else [1.0]
    fig = make_subplots(rows=panels, cols=1, shared_xaxes=True, vertical_spacing=0.04, row_heights=heights,
                        specs=[[{}]] * (panels - 1 if (has_share or has_omega) else panels)
                        + ([[{"secondary_y": True}]] if (has_share or has_omega) else []))
    fig.add_trace(go.Heatmap(
        x=layers, y=[label for label, _, _ in KNOB_ROWS],
        z=[[intensity(r) for r in rows] for _, _, intensity in KNOB_ROWS],
        text=[[esc(knob_text(knob, r)) for r in rows] for _, knob, _ in KNOB_ROWS], texttemplate="%{text}",
        textfont=dict(size=9), colorscale="Blues", zmin=0, zmax=1, showscale=False, xgap=1, ygap=1,
        hovertemplate="%{x}<br>%{y}: %{text}<extra></extra>", meta={"role": "layers"}), row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    row = 2
    if has_bytes:
        fig.add_trace(go.Bar(x=layers, y=[(r["packed_bytes"] or 0) / KIB for r in base_rows], name="base packed KiB",
                             marker_color=COLORS["other"], hovertemplate="%{x}: base %{y:.2f} KiB<extra></extra>"),
                      row=row, col=1)
        fig.add_trace(go.Bar(x=layers, y=[(r["packed_bytes"] or 0) / KIB for r in rows], name="design packed KiB",
                             marker_color=COLORS["front"], hovertemplate="%{x}: design %{y:.2f} KiB<extra></extra>"),
                      row=row, col=1)
        fig.update_yaxes(title_text="packed KiB" + _mark_text([marks.get("bytes")]), row=row, col=1)
        row += 1
    if has_share or has_omega:
        if has_share:
            fig.add_trace(go.Bar(x=layers, y=[100 * (r["latency_share"] or 0) for r in rows],
                                 name="base latency share %", marker_color=COLORS["screened"],
                                 hovertemplate="%{x}: %{y:.1f}% of the base's latency<extra></extra>"),
                          row=row, col=1, secondary_y=False)
            fig.update_yaxes(title_text="latency %" + _mark_text([marks.get("cost")]), row=row, col=1, secondary_y=False)
        if has_omega:
            fig.add_trace(go.Scatter(x=layers, y=[r["omega"] for r in rows], mode="markers",
                                     name="ω of the chosen option (predicted accuracy cost)",
                                     marker=dict(color=COLORS["base"], size=7),
                                     hovertemplate="%{x}: ω %{y:.3g}<extra></extra>"),
                          row=row, col=1, secondary_y=True)
            fig.update_yaxes(title_text="ω" + _mark_text([marks.get("sensitivity")]), row=row, col=1,
                             secondary_y=True, showgrid=False)
    fig.update_layout(**dict(LAYOUT, margin=dict(l=110, r=60, t=50, b=90)), height=340 + 170 * (panels - 1),
                      barmode="group", title=dict(text=title, font=dict(size=14)))
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=9))
    return fig
