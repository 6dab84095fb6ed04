"""The page of a shadow comparison (`search shadow`): a design beside the base on a second image
folder. Input: the plain result of runners/shadow.py plus `context` (candidate file, the
design's name, profile, model). Writes index.html and shadow.json."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go

from edgesearch.common.files import atomic_write

from . import design_data as dd
from .figures import COLORS, LAYOUT
from .page import esc, figure_spec, fmt, mark, render


def _pct(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def _class_figure(accuracy: dict, accuracy_mark: str | None) -> go.Figure:
    classes = sorted(set(accuracy["base"]["classes"]) | set(accuracy["design"]["classes"]))
    fig = go.Figure()
    for who, color in (("base", COLORS["other"]), ("design", COLORS["front"])):
        values = [accuracy[who]["classes"].get(c, {}).get("map50_95") for c in classes]
        fig.add_trace(go.Bar(x=classes, y=values, name=f"{who} mAP50-95", marker_color=color,
                             hovertemplate=f"class %{{x}}: {who} mAP50-95 %{{y:.3f}}<extra></extra>",
                             meta={"role": "classes"}))
    fig.update_layout(**LAYOUT, height=380, barmode="group", xaxis_title="class", yaxis_title="mAP50-95",
                      title=dict(text=f"mAP50-95 per class [{accuracy_mark}]", font=dict(size=14)))
    return fig


def _agreement_figure(per_image: list[dict], names: list[str]) -> go.Figure:
    fig = go.Figure()
    x = [names[r["image"]] if r["image"] < len(names) else str(r["image"]) for r in per_image]
    fig.add_trace(go.Bar(x=x, y=[r["same_class"] for r in per_image], name="matched, same class",
                         marker_color=COLORS["highlight"], meta={"role": "images"}))
    fig.add_trace(go.Bar(x=x, y=[r["matched"] - r["same_class"] for r in per_image], name="matched, other class",
                         marker_color=COLORS["recipe"]))
    fig.add_trace(go.Bar(x=x, y=[r["base"] - r["matched"] for r in per_image], name="base only",
                         marker_color=COLORS["other"]))
    fig.add_trace(go.Bar(x=x, y=[r["design"] - r["matched"] for r in per_image], name="design only",
                         marker_color=COLORS["base"]))
    fig.update_layout(**LAYOUT, height=360, barmode="stack", yaxis_title="detections",
                      title=dict(text="Detections per image", font=dict(size=14)))
    fig.update_xaxes(showticklabels=len(x) <= 40, tickangle=-60)
    return fig


def write_shadow_report(out_dir: Path, result: dict, context: dict) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prov = dd.Provenance()
    a = result["agreement"]
    lat = result["latency"]
    lat_marks = {k: prov.mark("L", v.get("latency_source")) for k, v in lat.items()}
    speed = (lat["base"]["latency_ms"] / lat["design"]["latency_ms"]
             if dd.same_method(lat["base"], lat["design"]) and lat["design"].get("latency_ms")
             else None)
    agreement_mark = prov.mark("G", f"computed: detections at confidence ≥ {result['confidence']} after NMS (IoU "
                                    f"{result['nms_iou']}), both models on the same letterboxed {result['imgsz']} px images; "
                                    f"one-to-one matching on IoU (Hungarian), matched at IoU ≥ {a['match_iou']}")
    figures = {"fig-agreement": figure_spec(_agreement_figure(a["per_image"], result.get("image_names", [])))}
    accuracy_html = ("<p>The folder has no label files (ultralytics' layout: <code>images/x.jpg</code> → "
                     "<code>labels/x.txt</code>): no mAP, agreement only.</p>")
    if result.get("accuracy"):
        acc = result["accuracy"]
        accuracy_mark = prov.mark("A", result["accuracy_source"])
        figures["fig-classes"] = figure_spec(_class_figure(acc, accuracy_mark))
        rows = []
        for cls in sorted(set(acc["base"]["classes"]) | set(acc["design"]["classes"])):
            b, d = acc["base"]["classes"].get(cls, {}), acc["design"]["classes"].get(cls, {})
            delta = (d["map50_95"] - b["map50_95"]) * 100 if "map50_95" in b and "map50_95" in d else None
            rows.append(f"<tr><td>{esc(cls)}</td><td class='n'>{esc(b.get('instances', d.get('instances', '—')))}</td>"
                        f"<td class='n'>{fmt(b.get('map50_95'))}</td><td class='n'>{fmt(d.get('map50_95'))}</td>"
                        f"<td class='n'>{'—' if delta is None else f'{delta:+.1f}'}</td></tr>")
        overall = (acc["design"]["map50_95"] - acc["base"]["map50_95"]) * 100
        accuracy_html = (
            f"<p>mAP50-95{mark(accuracy_mark)}: base {acc['base']['map50_95']:.3f}, design {acc['design']['map50_95']:.3f} "
            f"(<b>{overall:+.1f} points</b>); mAP50 base {acc['base']['map50']:.3f}, design {acc['design']['map50']:.3f}. "
            f"{result['labelled_images']} of {result['images']} images have labels.</p>"
            "<div class='grid2'><div class='scroll'><table id='class-table'><thead><tr><th>class</th><th>instances</th>"
            "<th>base mAP50-95</th><th>design mAP50-95</th><th>Δ (points)</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div><div id='fig-classes' class='plot'></div></div>")
    differing = [r for r in a["per_image"] if not (r["base"] == r["design"] == r["same_class"])]
    names = result.get("image_names", [])
    diff_rows = "".join(f"<tr><td>{esc(names[r['image']] if r['image'] < len(names) else r['image'])}</td>"
                        f"<td class='n'>{r['base']}</td><td class='n'>{r['design']}</td><td class='n'>{r['matched']}</td>"
                        f"<td class='n'>{r['same_class']}</td></tr>" for r in differing[:50])
    provenance = "".join(f"<dt id='prov-{esc(e['mark'])}'>[{esc(e['mark'])}] <span class='kind-{esc(e['kind'])}'>{esc(e['kind'])}</span></dt>"
                         f"<dd>{esc(e['text'])}</dd>" for e in prov.rows())
    body = f"""
<h1>Shadow comparison: {esc(context.get('design') or Path(str(context.get('candidate', 'design'))).name)} beside the base</h1>
<p class="lede">The design (<code>{esc(Path(str(context.get('candidate', '?'))).name)}</code>) ran beside the unmodified base on {result['images']} images of
<code>{esc(result['images_dir'])}</code> (profile {esc(context.get('profile', '?'))}, model
<code>{esc(Path(str(context.get('model', '?'))).name)}</code>; the design fine-tuned {result['finetune_iters']} steps as in
the search).</p>
<h2>Detection agreement{mark(agreement_mark)}</h2>
<div class="cards">
<div class="card"><h3>Base detections kept</h3><div class="big" id="base-recall">{_pct(a['base_recall'])}</div>
<div>{a['matched']} of the base's {a['base_boxes']} boxes matched at IoU ≥ {a['match_iou']}</div></div>
<div class="card"><h3>Design detections the base has</h3><div class="big">{_pct(a['design_precision'])}</div>
<div>{a['matched']} of the design's {a['design_boxes']} boxes</div></div>
<div class="card"><h3>Class agreement</h3><div class="big" id="class-agreement">{_pct(a['class_agreement'])}</div>
<div>{a['same_class']} of {a['matched']} matched pairs; mean IoU {fmt(a['mean_iou'])}</div></div>
<div class="card"><h3>Images where both agree fully</h3><div class="big">{a['identical_images']} / {result['images']}</div></div>
</div>
<div id="fig-agreement" class="plot"></div>
<details><summary>{len(differing)} images where they differ</summary><div class='scroll'><table><thead><tr><th>image</th>
<th>base boxes</th><th>design boxes</th><th>matched</th><th>same class</th></tr></thead><tbody>{diff_rows}</tbody></table>
</div></details>
<h2>Accuracy per class</h2>{accuracy_html}
<h2>Latency</h2>
<table id="latency-table"><thead><tr><th></th><th>latency (ms)</th><th>spread (ms)</th></tr></thead><tbody>
<tr><td>base</td><td class='n'>{fmt(lat['base'].get('latency_ms'), 2)}{mark(lat_marks['base'])}</td><td class='n'>{fmt(lat['base'].get('latency_spread_ms'), 2)}</td></tr>
<tr><td>design</td><td class='n'>{fmt(lat['design'].get('latency_ms'), 2)}{mark(lat_marks['design'])}</td><td class='n'>{fmt(lat['design'].get('latency_spread_ms'), 2)}</td></tr>
</tbody></table>
<p>{f'The design is <b>{speed:.2f}× faster</b> than the base (same source).' if speed else 'The two latencies come from different sources and are not compared.'}</p>
<h2 id="provenance">Where the figures come from</h2><dl class="prov">{provenance}</dl>
<p class="muted">Data: <a href="shadow.json">shadow.json</a>.</p>
"""
    files = {"shadow.json": json.dumps({"context": context, **result}, indent=2).encode(),
             "index.html": render(title="edgesearch shadow comparison", body=body, figures=figures, data={}).encode()}
    for name, data in files.items():
        atomic_write(out_dir / name, data)
    return {name: out_dir / name for name in files}
