"""One page comparing runs of the same model on several profiles (`search report RUN_DIR...`).

Input: a list of runs, each {run, base, trials, extras, report} as for pareto_report.write_report
(report: the path of that run's own index.html). Plain data only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import plotly.graph_objects as go

from edgesearch.common.files import atomic_write

from . import design_data as dd
from .design_names import design_name
from .figures import KIB, LAYOUT
from .page import esc, figure_spec, fmt, fmt_bytes, mark, render

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _name(entry: dict) -> str:
    return str(entry["run"].get("profile") or entry["run"].get("run_name"))


def _figure(entries: list[dict], axis: str, prov: dd.Provenance, accuracy_marks: list[str]) -> go.Figure:
    fig = go.Figure()
    for i, entry in enumerate(entries):
        color, name = PALETTE[i % len(PALETTE)], _name(entry)
        front = [t for t in dd.scored(entry["trials"]) if t.get("pareto")]
        base = entry["base"]

        def x_of(s):
            return s["latency_ms"] if axis == "latency_ms" else s["sram_bytes"] / KIB

        def source_mark(s):
            if axis == "latency_ms":
                return prov.mark("L", s.get("latency_source"))
            return prov.mark("M", s.get("activation_bytes_source"))

        marks = sorted(({source_mark(dd.scores(t)) for t in front} | {source_mark(base)}) - {None})
        suffix = f" [{', '.join(marks)}]" if marks else ""
        hover = [f"<b>{esc(name)} #{esc(t['number'])}: {esc(design_name(t.get('candidate')))}</b>"
                 + (f"<br>origin: {esc(t['origin'])}" if t.get("origin") else "")
                 + f"<br>mAP50-95 {dd.scores(t)['map50_95']:.3f}, "
                 f"{dd.scores(t)['latency_ms']:.2f} ms [{prov.mark('L', dd.scores(t).get('latency_source'))}], "
                 f"{dd.scores(t)['sram_bytes'] / KIB:,.1f} KiB" for t in front]
        fig.add_trace(go.Scatter(x=[x_of(dd.scores(t)) for t in front], y=[dd.scores(t)["map50_95"] for t in front],
                                 mode="markers", name=f"{esc(name)}: Pareto front{suffix}",
                                 marker=dict(color=color, size=11, line=dict(width=1, color="#333")),
                                 customdata=hover, hovertemplate="%{customdata}<extra></extra>",
                                 meta={"role": "designs", "profile": name}))
        fig.add_trace(go.Scatter(x=[x_of(base)], y=[base["map50_95"]], mode="markers", name=f"{esc(name)}: base",
                                 marker=dict(color=color, size=17, symbol="star", line=dict(width=1, color="#333")),
                                 customdata=[f"<b>{esc(name)} base</b><br>{base['latency_ms']:.2f} ms, "
                                             f"{base['sram_bytes'] / KIB:,.1f} KiB"],
                                 hovertemplate="%{customdata}<extra></extra>", meta={"role": "designs", "profile": name}))
        budget = dd.memory_budget(entry["run"])
        if axis == "sram_bytes" and budget["bytes"]:
            fig.add_vline(x=budget["bytes"] / KIB, line=dict(color=color, dash="dash"),
                          annotation_text=esc(f"{name}: {budget['label']}"), annotation_position="top left")
    title = "latency (ms)" if axis == "latency_ms" else "memory footprint: weights + activations (KiB)"
    fig.update_layout(**LAYOUT, height=480, xaxis_title=title, yaxis_title="mAP50-95 (val)",
                      title=dict(text=f"mAP50-95 vs {title} [{', '.join(accuracy_marks)}]", font=dict(size=14)))
    if axis == "latency_ms":
        fig.update_xaxes(type="log")  # profiles differ by orders of magnitude
    else:
        fig.update_xaxes(rangemode="tozero")
    return fig


def _picks_table(entries: list[dict], prov: dd.Provenance) -> str:
    # one column per recommendation (the budget's kind differs between profiles: named in its own column)
    titles = ["Best within the memory budget" if rec["key"] == "budget" else rec["title"]
              for rec in dd.recommendations(entries[0]["run"], entries[0]["base"], [])]
    head = ["profile", "latency figures", "budget", "trials (scored / failed / screened)", "base latency (ms)",
            "base footprint (KiB)", *map(esc, titles), "report"]
    rows = []
    for entry in entries:
        run, base, trials = entry["run"], entry["base"], entry["trials"]
        counts = {s: sum(1 for t in trials if t.get("state") == s) for s in ("COMPLETE", "FAIL", "PRUNED")}
        kinds = sorted({dd.kind_of((dd.scores_of(t) or {}).get("latency_source")) for t in dd.scored(trials)}
                       | {dd.kind_of(base.get("latency_source"))})
        lat_mark = mark(prov.mark("L", base.get("latency_source")))
        picks = []
        for rec in dd.recommendations(run, base, trials):
            t = next((t for t in trials if t["number"] == rec["trial"]), None)
            if t is None:
                picks.append(f"<span class='muted'>none: {esc(rec['why'])}</span>")
                continue
            s = dd.scores(t)
            speed = dd.latency_pair(base, s, None, None)["speedup"]
            picks.append(f"<b>#{esc(t['number'])}: {esc(design_name(t.get('candidate')))}</b><br>"
                         f"{s['map50_95']:.3f} mAP, {s['latency_ms']:.2f} ms"
                         + (f" ({speed:.2f}× faster)" if speed else "") + f", {fmt_bytes(s['sram_bytes'])} KiB"
                         + (f" ({dd.ratio(base['sram_bytes'], s['sram_bytes']):.2f}× smaller)" if s['sram_bytes'] else "")
                         + (f"<br><span class='muted'>origin: {esc(t['origin'])}</span>" if t.get("origin") else ""))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in [
            f"<b>{esc(_name(entry))}</b>", esc(", ".join(kinds)) + lat_mark, esc(dd.memory_budget(run)["label"]),
            f"{counts['COMPLETE']} / {counts['FAIL']} / {counts['PRUNED']}", fmt(base.get("latency_ms"), 2),
            fmt_bytes(base.get("sram_bytes")), *picks,
            f"<a href='{esc(entry['link'])}'>{esc(run.get('run_name', 'run'))}</a>"]) + "</tr>")
    return (f"<div class='scroll'><table id='profiles-table'><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table></div>")


def _same_designs_table(entries: list[dict], prov: dd.Provenance) -> str:
    """Designs scored with identical candidates in several runs (recipes, anchors): the same
    design's figures on each profile."""
    seen: dict[str, dict] = {}
    for i, entry in enumerate(entries):
        for t in dd.scored(entry["trials"]):
            if not t.get("candidate"):
                continue
            key = json.dumps(t["candidate"], sort_keys=True)
            label = design_name(t["candidate"]) + (f" (recipe: {t['recipe']})" if t.get("recipe") else "")
            seen.setdefault(key, {"label": label, "by": {}})["by"][i] = t
    shared = [v for v in seen.values() if len(v["by"]) > 1]
    if not shared:
        return "<p class='muted'>No design was scored with the same knobs in more than one of these runs.</p>"
    head = "<th>design</th>" + "".join(f"<th>{esc(_name(e))}</th>" for e in entries)
    body = []
    for item in shared:
        cells = []
        for i in range(len(entries)):
            t = item["by"].get(i)
            if t is None:
                cells.append("<td>—</td>")
                continue
            s = dd.scores(t)
            cells.append(f"<td>#{esc(t['number'])}: {s['map50_95']:.3f} mAP, {s['latency_ms']:.2f} ms"
                         f"{mark(prov.mark('L', s.get('latency_source')))}, {fmt_bytes(s['sram_bytes'])} KiB"
                         + ("" if t.get("feasible") is not False else " <span class='warn'>over budget</span>") + "</td>")
        body.append(f"<tr><td>{esc(item['label'])}</td>{''.join(cells)}</tr>")
    return f"<div class='scroll'><table id='same-designs'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def write_comparison(out_dir: Path, entries: list[dict]) -> Path:
    """entries: [{run, base, trials, extras, report (path of the run's index.html)}] of one model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        entry["link"] = os.path.relpath(entry["report"], out_dir)
    prov = dd.Provenance()
    accuracy_marks = [mark for e in entries  # a mark for each run (its text is never empty)
                      if (mark := prov.mark("A", dd.accuracy_source(e["run"], e.get("extras") or {}) + f" ({_name(e)})"))]
    figures = {"fig-compare-latency": figure_spec(_figure(entries, "latency_ms", prov, accuracy_marks)),
               "fig-compare-memory": figure_spec(_figure(entries, "sram_bytes", prov, accuracy_marks))}
    picks = _picks_table(entries, prov)
    same = _same_designs_table(entries, prov)
    provenance = "".join(f"<dt id='prov-{esc(e['mark'])}'>[{esc(e['mark'])}] <span class='kind-{esc(e['kind'])}'>{esc(e['kind'])}</span></dt>"
                         f"<dd>{esc(e['text'])}</dd>" for e in prov.rows())
    model = Path(str(entries[0]["run"].get("model", "?"))).name
    body = f"""
<h1>{esc(model)} on {len(entries)} profiles: {esc(', '.join(_name(e) for e in entries))}</h1>
<p class="lede">The Pareto fronts of {len(entries)} searches of the same model, one per device profile. Latency figures of
different profiles come from different sources (measured on a device, or estimated from its roofline): each is marked,
and the marks are stated once under <a href="#provenance">Where the figures come from</a>. Budgets differ by profile.</p>
<h2>Fronts side by side</h2>
<div class="grid2"><div id="fig-compare-latency" class="plot"></div><div id="fig-compare-memory" class="plot"></div></div>
<h2>What to pick on each profile</h2>{picks}
<h2>The same design on each profile</h2>{same}
<h2 id="provenance">Where the figures come from</h2><dl class="prov">{provenance}</dl>
"""
    html = render(title=f"edgesearch: {model} on {len(entries)} profiles", body=body, figures=figures, data={})
    path = out_dir / "index.html"
    atomic_write(path, html.encode())
    return path
