"""The Pareto report of a run: index.html, pareto.png, trials.csv, pareto.json.

Input is plain data: a `base` row (the unmodified model's scores), `trials` (one dict per
finished trial: number, state, pareto, feasible, scores, candidate, error, duration_s) and `run`
(settings shown in the header). Every file is written to a temporary name and renamed into
place, so a reader never sees a half-written report.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

SCORE_COLUMNS = ("map50_95", "map50", "latency_ms", "latency_spread_ms", "latency_source", "sram_bytes", "weight_bytes",
                 "activation_bytes", "fits_sram", "params", "flops")


def _atomic_write(path: Path, data: bytes) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def knob_summary(candidate: dict | None) -> str:
    """A one-line summary of a candidate's per-layer knobs, e.g.
    `4b×20 8b×9 32b×34; kmeans×12 pwlq×9; 7 pruned, 3 sparse, 2 kernel-shrunk, 4 low-rank, 10 int8-act`."""
    if not candidate:
        return "unmodified"
    layers = list(candidate["layers"].values())
    bits = Counter(k["weight_bits"] for k in layers)
    schemes = Counter(k.get("scheme", "affine") for k in layers if k["weight_bits"] < 16)
    counts = {
        "pruned": sum(1 for k in layers if k.get("prune_ratio", 0) > 0),
        "sparse": sum(1 for k in layers if k.get("sparsity", 0) > 0),
        "kernel-shrunk": sum(1 for k in layers if k.get("kernel_size", "keep") != "keep"),
        "low-rank": sum(1 for k in layers if k.get("rank_ratio", 1.0) < 1),
        "int8-act": sum(1 for k in layers if k.get("activation_bits", 32) == 8),
    }
    bit_text = " ".join(f"{b}b×{n}" for b, n in sorted(bits.items()))
    scheme_text = " ".join(f"{s}×{n}" for s, n in sorted(schemes.items()))
    count_text = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    return "; ".join(part for part in (bit_text, scheme_text, count_text or "no structural change") if part)


def _csv_bytes(trials: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial", "state", "pareto", "feasible", *SCORE_COLUMNS, "knobs", "duration_s", "error", "origin",
                     "predicted_map50_95", "predicted_omega"])
    for t in trials:
        scores, predicted = t.get("scores") or {}, t.get("predicted") or {}
        writer.writerow([t["number"], t["state"], t["pareto"], t["feasible"], *(scores.get(c) for c in SCORE_COLUMNS),
                         knob_summary(t.get("candidate")), t.get("duration_s"), t.get("error") or "", t.get("origin", ""),
                         predicted.get("map50_95"), predicted.get("omega")])
    return out.getvalue().encode()


def _plot_png(base: dict, trials: list[dict], sram_budget: int | None, latency_label: str) -> bytes:
    done = [t for t in trials if t.get("scores")]  # screened-out designs have none
    front = sorted((t for t in done if t["pareto"]), key=lambda t: t["scores"]["latency_ms"])
    fig, (ax_lat, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, label in ((ax_lat, "latency_ms", f"latency (ms, {latency_label})"),
                           (ax_mem, "sram_bytes", "SRAM footprint (KiB)")):
        scale = 1 / 1024 if key == "sram_bytes" else 1
        others = [t for t in done if not t["pareto"]]
        ax.scatter([t["scores"][key] * scale for t in others], [t["scores"]["map50_95"] for t in others],
                   c="lightgray", edgecolors="gray", label="other trials")
        ax.scatter([t["scores"][key] * scale for t in front], [t["scores"]["map50_95"] for t in front],
                   c="tab:blue", label="Pareto designs", zorder=3)
        for t in front:
            ax.annotate(f"#{t['number']}", (t["scores"][key] * scale, t["scores"]["map50_95"]), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")
        ax.scatter([base[key] * scale], [base["map50_95"]], marker="*", s=220, c="tab:red", label="base", zorder=4)
        if key == "sram_bytes" and sram_budget:
            ax.axvline(sram_budget * scale, color="tab:orange", linestyle="--", label="SRAM budget")
        ax.set_xlabel(label)
        ax.set_ylabel("mAP50-95 (val)")
        ax.grid(alpha=0.3)
    ax_lat.legend(loc="lower right", fontsize=8)
    ax_mem.legend(loc="lower right", fontsize=8)
    fig.suptitle("Designs found: accuracy vs latency and vs on-chip memory")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()


def _fmt(value, key: str) -> str:
    if value is None:
        return "—"
    if key in ("map50_95", "map50"):
        return f"{value:.3f}"
    if key in ("latency_ms", "latency_spread_ms"):
        return f"{value:.2f}"
    if key.endswith("_bytes"):
        return f"{value / 1024:,.1f} KiB"
    if key in ("params", "flops"):
        return f"{value / 1e6:,.2f} M"
    return html.escape(str(value))


def _remeasured_text(remeasured: dict | None) -> str:
    if not remeasured:
        return "-"
    return f"{remeasured['latency_ms']:.2f} ({remeasured['latency_spread_ms']:.2f})"


def _design_rows(label: str, scores: dict, candidate: dict | None, remeasured: dict | None) -> str:
    cells = "".join(f"<td>{_fmt(scores.get(c), c)}</td>" for c in SCORE_COLUMNS)
    cells += f"<td>{_remeasured_text(remeasured)}</td>"
    knobs = ""
    if candidate:
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in k.values()) + "</tr>"
            for name, k in candidate["layers"].items()
        )
        head = "".join(f"<th>{html.escape(k)}</th>" for k in next(iter(candidate["layers"].values()), {}))
        knobs = (f"<details><summary>{html.escape(knob_summary(candidate))}</summary>"
                 f"<table class='knobs'><tr><th>layer</th>{head}</tr>{rows}</table></details>")
    return f"<tr><td>{html.escape(label)}</td>{cells}<td>{knobs or 'unmodified'}</td></tr>"


def _html(run: dict, base: dict, trials: list[dict]) -> str:
    front = sorted((t for t in trials if t["pareto"]), key=lambda t: -t["scores"]["map50_95"])
    failed = [t for t in trials if t["state"] == "FAIL"]
    screened = [t for t in trials if t["state"] == "PRUNED"]
    head = "".join(f"<th>{c}</th>" for c in SCORE_COLUMNS)
    body = _design_rows("base", base, None, base.get("remeasured")) + "".join(
        _design_rows(f"#{t['number']}", t["scores"], t["candidate"], t.get("remeasured")) for t in front)
    remeasured_source = (base.get("remeasured") or {}).get("latency_source")
    remeasured_note = (f"<p><b>Re-measured latency</b> ({html.escape(remeasured_source)}): the search times each trial "
                       "alone, at its own moment, on a shared machine; this column times the final designs together, so "
                       "compare designs by it. Optimisation used the search figures (latency_ms).</p>"
                       if remeasured_source else "<p>No re-measured latencies: the profile is not timed on this machine, or the run has not finished."
                       "</p>")
    settings = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in run.items())
    no_fit = front and not any(t["feasible"] for t in front)
    warning = ("<p style='color:#b00'><b>No design meets the SRAM budget.</b> The front below ignores the budget: "
               "these are the non-dominated designs that come closest.</p>") if no_fit else ""
    failures = "".join(f"<li>#{t['number']}: {html.escape(t.get('error') or 'unknown error')}</li>" for t in failed)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgesearch report: {html.escape(str(run.get('run_name', '')))}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px;text-align:right;vertical-align:top}}
table.knobs td,table.knobs th{{font-size:11px}} details summary{{cursor:pointer;text-align:left}}</style></head>
<body><h1>Pareto designs for {html.escape(str(run.get('profile', '')))}</h1>
<p>{len(trials) - len(screened)} finished trials ({len(screened)} more screened out by the proxy, never
fine-tuned), {len(front)} on the Pareto front (feasible under the SRAM budget and
non-dominated in mAP50-95 ↑, latency ↓, SRAM ↓), {len(failed)} failed. mAP is measured on the val split by
ultralytics' validator after the short fine-tune. <b>latency_source</b> says how each latency was obtained:
<i>measured</i> figures come from a TVM build timed on the device, <i>estimated</i> ones from the profile's roofline.</p>
{warning}<img src="pareto.png" alt="Pareto plot" style="max-width:100%">
<h2>Designs</h2>{remeasured_note}
<table><tr><th>design</th>{head}<th>latency re-measured ms (spread)</th><th>per-layer knobs</th></tr>{body}</table>
<h2>Run</h2><table>{settings}</table>
{f'<h2>Failed trials</h2><ul>{failures}</ul>' if failures else ''}
<p>Files: <a href="trials.csv">trials.csv</a> (every trial), <a href="pareto.json">pareto.json</a> (Pareto designs with knobs).</p>
</body></html>"""


def write_report(out_dir: Path, *, run: dict, base: dict, trials: list[dict], extras: dict | None = None
                 ) -> dict[str, Path]:
    """`extras` (optional): sensitivity, cost_basis, proxy_quality, recommended - see search/jobs.py."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    front = [t for t in trials if t["pareto"]]
    latency_sources = sorted({t["scores"]["latency_source"] for t in trials if t.get("scores")} | {base["latency_source"]})
    pareto = {
        "run": run,
        "objectives": {"map50_95": "maximize", "latency_ms": "minimize", "sram_bytes": "minimize"},
        "base": base,
        "pareto": [{"trial": t["number"], "scores": t["scores"], "remeasured": t.get("remeasured"),
                    "candidate": t["candidate"], "origin": t.get("origin")} for t in front],
        "recommended": (extras or {}).get("recommended"),
        "proxy_quality": (extras or {}).get("proxy_quality"),
    }
    files = {
        "trials.csv": _csv_bytes(trials),
        "pareto.json": json.dumps(pareto, indent=2).encode(),
        "pareto.png": _plot_png(base, trials, run.get("sram_budget_bytes"), " / ".join(s.split(":")[0] for s in latency_sources)),
        "index.html": _html(run, base, trials).encode(),
    }
    for name, data in files.items():
        _atomic_write(out_dir / name, data)
    return {name: out_dir / name for name in files}


def pareto_table(base: dict, trials: list[dict]) -> str:
    """The Pareto designs as a fixed-width text table for the terminal."""
    header = (f"{'design':>8} {'mAP50-95':>9} {'mAP50':>7} {'latency ms':>11} {'re-measured':>14} {'SRAM KiB':>10} "
              f"{'fits':>5}  knobs")
    lines = [header, "-" * len(header)]

    def line(label, s, remeasured, knobs):
        return (f"{label:>8} {s['map50_95']:9.3f} {s['map50']:7.3f} {s['latency_ms']:11.2f} "
                f"{_remeasured_text(remeasured):>14} {s['sram_bytes'] / 1024:10.1f} {str(s['fits_sram']):>5}  {knobs}")

    lines.append(line("base", base, base.get("remeasured"), "unmodified"))
    for t in sorted((t for t in trials if t["pareto"]), key=lambda t: -t["scores"]["map50_95"]):
        lines.append(line(f"#{t['number']}", t["scores"], t.get("remeasured"), knob_summary(t["candidate"])))
    if any(t["pareto"] for t in trials) and not any(t["pareto"] and t["feasible"] for t in trials):
        lines.append("no design meets the SRAM budget: these are the non-dominated designs ignoring it")
    lines.append(f"latency: {base['latency_source']}")
    if base.get("remeasured"):
        lines.append(f"re-measured: {base['remeasured']['latency_source']}")
    return "\n".join(lines)
