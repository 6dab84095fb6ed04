"""The report of a run: index.html (one self-contained interactive page), trials.csv, pareto.json
and designs/<design>.json (each a candidate for `search eval --candidate`).

Input is plain data (nothing of edgesearch is imported here):
  run     run.json (run_name, profile, sram_budget_bytes, ...; optional memory_budget,
          max_map_drop, latency_budget_ms, strategy)
  base    the unmodified model's scores, with `remeasured` (dict or None)
  trials  one dict per trial: number, state (COMPLETE, FAIL, PRUNED = screened out), pareto,
          feasible, scores, candidate, error, duration_s, remeasured; optional origin, recipe,
          predicted, node (where it ran: host, IP, Ray node id), attempts (runs it took: > 1 after a
          worker or node died)
  extras  optional: sensitivity, cost_basis, proxy_quality, accuracy_basis ({split, images}),
          packed_layers ({design key: {layer: packed bytes}}, "base" for the base) with
          packed_layers_source
Every file is written to a temporary name and renamed into place, so a reader never sees a
half-written report.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
from collections import Counter
from pathlib import Path

from edgesearch.common.files import atomic_write

from . import design_data as dd, figures
from .design_names import design_name
from .page import data_url, esc, figure_spec, fmt, fmt_bytes, mark, render

SCORE_COLUMNS = ("map50_95", "map50", "holdout_map50_95", "holdout_map50", "latency_ms", "latency_spread_ms",
                 "latency_error_pct", "latency_source", "latency_method", "compute_precision", "sram_bytes", "weight_bytes", "activation_bytes", "fits_sram",
                 "params", "flops", "unscheduled_kernels", "serial_blocks", "activation_bytes_source", "holdout_source",
                 "device", "ray_gpu_ids")  # where the trial's models ran; the GPUs Ray assigned it
# seconds each trial's task spent: fine-tune, validation, build + timing, the whole task (duration_s, from
# ask to tell, also counts the time outside the task: waiting for a worker, Ray, the worker's start)
STAGE_COLUMNS = ("finetune_s", "validate_s", "hardware_s", "eval_s", "build_reused")  # build_reused: search/timing.py
DESIGNS_DIR = "designs"


def knob_summary(candidate: dict | None) -> str:
    """A tally of a candidate's per-layer knobs (trials.csv's `knobs`; the design's name is design_name), e.g.
    `4b×20 8b×9 32b×34; kmeans×12 pwlq×9; 7 pruned, 3 sparse, 2 kernel-shrunk, 4 low-rank, 10 int8-act`
    (or `N fp16-compute`)."""
    if not candidate:
        return "unmodified"
    layers = list(candidate["layers"].values())
    bits = Counter(k.get("weight_bits", 32) for k in layers)
    schemes = Counter(k.get("scheme", "affine") for k in layers if k.get("weight_bits", 32) < 16)
    counts = {
        "pruned": sum(1 for k in layers if k.get("prune_ratio", 0) > 0),
        "sparse": sum(1 for k in layers if k.get("sparsity", 0) > 0),
        "kernel-shrunk": sum(1 for k in layers if k.get("kernel_size", "keep") != "keep"),
        "low-rank": sum(1 for k in layers if k.get("rank_ratio", 1.0) < 1),
        "int8-act": sum(1 for k in layers if k.get("activation_bits", 32) == 8),
        "fp16-compute": sum(1 for k in layers if k.get("activation_bits", 32) == 16),
    }
    bit_text = " ".join(f"{b}b×{n}" for b, n in sorted(bits.items()))
    scheme_text = " ".join(f"{s}×{n}" for s, n in sorted(schemes.items()))
    count_text = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    return "; ".join(part for part in (bit_text, scheme_text, count_text or "no structural change") if part)


def origin_text(t: dict) -> str:
    """How the search found a trial's design: its recipe, seed, move or sampler."""
    return t.get("origin") or ("recipe: " + t["recipe"] if t.get("recipe") else "")


def error_text(error_pct: float | None) -> str:
    """' ± 23 %' for an estimated latency (the p90 of its calibration's leave-one-out errors), else ''."""
    return f" ± {error_pct:.0f} %" if error_pct else ""


def memory_axis_title(budget: dict) -> str:
    """What the footprint counts; on a DRAM budget also what it leaves out."""
    title = "memory footprint: weights + planned activations (KiB)"
    if budget.get("kind") == "dram":
        title += "; runtime workspace and CUDA context not counted"
    return title


def _csv_bytes(trials: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["trial", "state", "pareto", "feasible", *SCORE_COLUMNS, "design", "knobs", "origin", "recipe",
                     "duration_s", "error", "predicted_map50_95", "predicted_omega", "node", "attempts", *STAGE_COLUMNS, "training"])
    for t in sorted(trials, key=lambda t: t["number"]):
        scores, predicted = t.get("scores") or {}, t.get("predicted") or {}
        writer.writerow([t["number"], t["state"], t.get("pareto"), t.get("feasible"),
                         *(scores.get(c) for c in SCORE_COLUMNS),
                         design_name(t.get("candidate")), knob_summary(t.get("candidate")),
                         t.get("origin") or "", t.get("recipe") or "", t.get("duration_s"), t.get("error") or "",
                         predicted.get("map50_95"), predicted.get("omega"), t.get("node") or "", t.get("attempts") or "",
                         *(scores.get(c) for c in STAGE_COLUMNS), (scores.get("training") or {}).get("label", "")])
    return out.getvalue().encode()


# ------------------------------------------------------------------------------ the page's model


class Report:
    """Everything the page shows, derived once from the plain data."""

    def __init__(self, run: dict, base: dict, trials: list[dict], extras: dict, out_dir: Path):
        self.run, self.base, self.trials, self.extras, self.out_dir = run, base, trials, extras or {}, out_dir
        self.prov = dd.Provenance()
        self.accuracy_mark = self.prov.mark("A", dd.accuracy_source(run, self.extras))
        self.budget = dd.memory_budget(run)
        self.floor = dd.accuracy_floor(run, base, trials)
        self.scored = dd.scored(trials)
        self.recommended = dd.recommendations(run, base, trials)
        self.names = dd.layer_names(trials, self.extras)
        self.by_number = {t["number"]: t for t in trials}
        weights = self.prov.mark("M", dd.WEIGHT_BYTES_SOURCE)
        self.memory_marks = lambda s: [weights, self.prov.mark("M", (s or {}).get("activation_bytes_source"))]
        self.designs = dd.shown_designs(run, base, trials)
        self.base_row = self._row(None)
        self.rows = {t["number"]: self._row(t) for t in self.scored}

    # a design's figures, deltas and hover text ------------------------------------------------
    def label(self, t: dict | None) -> str:
        """A design's short handle: its trial number (and recipe)."""
        if t is None:
            return "base"
        return f"#{t['number']}" + (f" {t['recipe']}" if t.get("recipe") else "")

    def name(self, t: dict | None) -> str:
        """What a design does (design_names.design_name): the page's name for it; its origin is said beside."""
        return "the unmodified model" if t is None else design_name(t.get("candidate"))

    def title(self, t: dict | None) -> str:
        return f"{self.label(t)}: {self.name(t)}"

    def _row(self, t: dict | None) -> dict:
        base = self.base
        s = base if t is None else dd.scores(t)
        remeasured = base.get("remeasured") if t is None else t.get("remeasured")
        speed = dd.latency_pair(base, s, base.get("remeasured"), remeasured)
        d_map = None if t is None else s["map50_95"] - (base.get("map50_95") or 0.0)
        row = {
            "key": "base" if t is None else str(t["number"]),
            "number": None if t is None else t["number"],
            "label": self.label(t), "name": self.name(t), "title": self.title(t),
            "origin": "" if t is None else origin_text(t),
            "map50_95": s.get("map50_95"), "map50": s.get("map50"), "holdout_map50_95": s.get("holdout_map50_95"),
            "holdout_mark": self.prov.mark("H", s.get("holdout_source")) if s.get("holdout_source") else "",
            "d_map_points": None if d_map is None else 100 * d_map,
            "d_map_relative": (d_map / base["map50_95"]) if d_map is not None and base.get("map50_95") else None,
            "latency_ms": s.get("latency_ms"), "latency_mark": self.prov.mark("L", s.get("latency_source")),
            "latency_error_pct": s.get("latency_error_pct"),
            "remeasured_ms": (remeasured or {}).get("latency_ms"),
            "remeasured_mark": self.prov.mark("R", (remeasured or {}).get("latency_source")),
            "speedup": speed["speedup"], "speedup_basis": speed["basis"],
            "sram_bytes": s.get("sram_bytes"), "weight_bytes": s.get("weight_bytes"),
            "activation_bytes": s.get("activation_bytes"), "memory_marks": self.memory_marks(s),
            "smaller": dd.ratio(base.get("sram_bytes"), s.get("sram_bytes")),
            "fits": None if t is None and not self.budget["bytes"] else (
                s.get("sram_bytes") <= self.budget["bytes"] if self.budget["bytes"] and s.get("sram_bytes") is not None
                else t.get("feasible") if t else None),
            "params": s.get("params"), "flops": s.get("flops"),
            "node": None if t is None else t.get("node"),
            "pareto": bool(t and t.get("pareto")), "recipe": None if t is None else t.get("recipe"),
        }
        row["hover"] = self._hover(row)
        return row

    def _hover(self, r: dict) -> str:
        lines = [f"<b>{esc(r['title'])}</b>", *([f"origin: {esc(r['origin'])}"] if r["origin"] else []),
                 f"mAP50-95 {fmt(r['map50_95'])}" + (f" ({r['d_map_points']:+.1f} points vs base)" if r["d_map_points"] is not None else "")
                 + f" [{self.accuracy_mark}]",
                 f"latency {fmt(r['latency_ms'], 2)} ms{error_text(r['latency_error_pct'])} [{r['latency_mark']}]"
                 + (f", re-measured {fmt(r['remeasured_ms'], 2)} ms [{r['remeasured_mark']}]" if r["remeasured_ms"] else "")
                 + (f" · {r['speedup']:.2f}× faster ({r['speedup_basis']})" if r["speedup"] and r["number"] is not None else ""),
                 f"footprint {fmt_bytes(r['sram_bytes'])} KiB [{', '.join(m for m in r['memory_marks'] if m)}]"
                 + (f" · {r['smaller']:.2f}× smaller" if r["smaller"] and r["number"] is not None else "")]
        return "<br>".join(lines)

    # plots ------------------------------------------------------------------------------------
    def pareto_points(self, axis: str) -> list[dict]:
        points = []
        for t in self.scored:
            r = self.rows[t["number"]]
            category = "front" if t.get("pareto") else "recipe" if t.get("recipe") else "other"
            x = r["latency_ms"] if axis == "latency_ms" else r["sram_bytes"] / figures.KIB
            error = x * r["latency_error_pct"] / 100 if axis == "latency_ms" and r["latency_error_pct"] else None
            points.append({"number": t["number"], "category": category, "x": x, "y": r["map50_95"], "hover": r["hover"],
                           "group": r["latency_mark"] if axis == "latency_ms" else None, "error": error})
        predicted_mark = None
        for t in self.trials:
            p = t.get("predicted") or {}
            if t.get("state") != "PRUNED" or p.get("map50_95") is None or p.get(axis) is None:
                continue
            predicted_mark = predicted_mark or self.predicted_mark()
            x = p[axis] if axis == "latency_ms" else p[axis] / figures.KIB
            hover = (f"<b>{esc(self.title(t))}</b> screened out [{predicted_mark}]"
                     + (f"<br>origin: {esc(t['origin'])}" if t.get("origin") else "")
                     + f"<br>predicted mAP50-95 {p['map50_95']:.3f}, "
                     + (f"{p[axis]:.2f} ms" if axis == "latency_ms" else f"{p[axis] / 1024:,.1f} KiB") + " (never fine-tuned)")
            points.append({"number": t["number"], "category": "screened", "x": x, "y": p["map50_95"], "hover": hover,
                           "group": predicted_mark if axis == "latency_ms" else None})
        return points

    def predicted_mark(self) -> str | None:
        quality = self.extras.get("proxy_quality") or {}
        text = ("predicted: proxy scores of a screened-out design (from its parent's measured scores and the "
                "sensitivity table; never fine-tuned nor built)")
        if quality.get("spearman_rho") is not None:
            text += (f"; the proxy ranks scored designs with Spearman ρ = {quality['spearman_rho']:.2f} against "
                     f"their measured mAP50-95 (n = {quality.get('n', '?')})")
        return self.prov.mark("P", text)

    def highlights(self) -> dict[int, str]:
        short = {"floor": "floor", "floor-fastest": "fastest in floor", "budget": "budget", "knee": "knee"}
        out: dict[int, list[str]] = {}
        for r in self.recommended:
            if r["trial"] is not None:
                out.setdefault(r["trial"], []).append(short[r["key"]])
        return {n: "/".join(v) for n, v in out.items()}

    def figures(self) -> dict[str, dict]:
        base_lat = {"x": self.base["latency_ms"], "y": self.base["map50_95"], "hover": self.base_row["hover"]}
        base_mem = dict(base_lat, x=self.base["sram_bytes"] / figures.KIB)
        lat_marks = sorted({self.base_row["latency_mark"], *(self.rows[t["number"]]["latency_mark"] for t in self.scored)} - {None})
        mem_marks = sorted({m for r in [self.base_row, *self.rows.values()] for m in r["memory_marks"] if m})
        out = {
            "fig-pareto-latency": figures.pareto_figure(
                "latency_ms", self.pareto_points("latency_ms"), base_point=base_lat, budget=self.budget, floor=self.floor,
                latency_budget_ms=self.run.get("latency_budget_ms"), highlights=self.highlights(),
                x_title="latency (ms)", caption_marks=[self.accuracy_mark, *lat_marks]),
            "fig-pareto-memory": figures.pareto_figure(
                "sram_bytes", self.pareto_points("sram_bytes"), base_point=base_mem, budget=self.budget, floor=self.floor,
                latency_budget_ms=None, highlights=self.highlights(),
                x_title=memory_axis_title(self.budget), caption_marks=[self.accuracy_mark, *mem_marks]),
            "fig-progress": figures.progress_figure(dd.progress(self.trials, self.base), self.prov.mark("H", self.progress_method())),
        }
        return {k: figure_spec(v) for k, v in out.items()}

    def progress_method(self) -> str:
        return "computed: " + dd.progress(self.trials, self.base)["method"]

    def knob_columns(self) -> list[list[str]]:
        """[[knob, label], ...] of the per-layer views: the knob table's (the search hands it over in
        extras), else, for pages of older runs, the knobs the heatmap knows under their own names."""
        return self.extras.get("knobs") or [[knob, label] for label, knob, _ in figures.KNOB_ROWS]

    def layer_marks(self) -> dict:
        return {"bytes": self.prov.mark("B", self.extras.get("packed_layers_source")),
                "cost": self.prov.mark("C", (self.extras.get("cost_basis") or {}).get("latency_source")),
                "sensitivity": self.prov.mark("S", (self.extras.get("sensitivity") or {}).get("method"))}

    def layer_data(self) -> tuple[dict, dict]:
        """(figures per design key, rows per design key) for the per-layer view."""
        packed = self.extras.get("packed_layers") or {}
        marks = self.layer_marks()
        base_rows = dd.layer_rows(None, self.names, self.extras, packed.get("base"))
        rows = {"base": base_rows}
        figs = {}
        for t in self.designs:
            key = str(t["number"])
            rows[key] = dd.layer_rows(t.get("candidate"), self.names, self.extras, packed.get(key))
            title = esc(self.title(t))  # plotly reads tags in titles
            figs[key] = figure_spec(figures.layer_figure(title, rows[key], base_rows, marks))
        for design_rows in rows.values():
            for r in design_rows:
                r["text"] = {knob: figures.knob_text(knob, r) for knob, _ in self.knob_columns()}
        return figs, rows

    # take-away ---------------------------------------------------------------------------------
    def design_file(self, t: dict) -> Path:
        return self.out_dir / DESIGNS_DIR / f"trial-{int(t['number'])}.json"  # never a path from the study

    def _design_args(self, t: dict, command: str) -> list[str]:
        """`search <command>` on the design with this run's inputs and fine-tune (the same weights)."""
        run = self.run
        args = ["search", command, "--candidate", str(self.design_file(t)),
                "--profile", str(run.get("profile_file") or run.get("profile")),
                "--space", str(run.get("space_file") or run.get("space")),
                "--preset", str(run.get("preset", "default"))]
        for flag, key in (("--model", "model"), ("--data", "data"), ("--imgsz", "imgsz"),
                          ("--finetune-iters", "finetune_iters"), ("--seed", "seed")):
            if run.get(key) is not None:
                args += [flag, str(run[key])]
        if run.get("distill"):
            args.append("--distill")
        if dd.recovery_steps(t):  # a design of the recovery stage: its longer schedule (search/recovery.py)
            args += ["--recover-steps", str(dd.recovery_steps(t))]
        return args

    def _design_file_stem(self, t: dict) -> str:
        stem = f"{self.run.get('run_name', 'design')}-trial-{t['number']}-{self.run.get('profile', 'profile')}"
        return re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).lstrip(".-") or "design"  # a file name, never a path

    def eval_command(self, t: dict) -> str:
        args = self._design_args(t, "eval")
        if self.run.get("tune_trials"):
            args += ["--tune-trials", str(self.run["tune_trials"])]
        args += ["--library", f"{self._design_file_stem(t)}.so"]
        return shlex.join(args)

    def export_command(self, t: dict) -> str:
        """`search export`: the design as the device's runtime takes it (runners/export.py), in the
        profile's format (run.json's export_format; ONNX for runs that predate it)."""
        fmt = self.run.get("export_format") or "onnx"
        out = f"{self._design_file_stem(t)}" + ("_ncnn_model" if fmt == "ncnn" else f".{fmt}")  # export.NCNN_SUFFIX
        return shlex.join(self._design_args(t, "export") + ["--format", fmt, "--out", out])


# ------------------------------------------------------------------------------ HTML


def _table(report: Report) -> str:
    rows = [report.base_row] + [report.rows[t["number"]] for t in report.designs]

    def column_marks(key):
        marks = {r[key] for r in rows if r.get(key)}
        return (mark(next(iter(marks))) if len(marks) == 1 else ""), len(marks) > 1

    lat_head, lat_cells = column_marks("latency_mark")
    rem_head, rem_cells = column_marks("remeasured_mark")
    has_remeasured = any(r["remeasured_ms"] for r in rows)
    mem_sets = {tuple(r["memory_marks"]) for r in rows}
    mem_head = "".join(mark(m) for m in next(iter(mem_sets))) if len(mem_sets) == 1 else ""
    head = ["design", "origin", f"mAP50-95 (val){mark(report.accuracy_mark)}", "Δ mAP50-95 vs base (points)",
            "mAP50 (val)", "mAP50-95 held out (never selected on)", f"latency (ms){lat_head}"]
    if has_remeasured:
        head.append(f"latency re-measured together (ms){rem_head}")
    head += ["× faster than base", f"memory footprint (KiB){mem_head}", "× smaller than base", "weights (KiB)",
             "activations (KiB)", f"fits {esc(report.budget['label'])}", "parameters (M)", "FLOPs (M)", "candidate"]
    body = []
    for r in rows:
        t = report.by_number.get(r["number"])
        cls = "base" if r["number"] is None else "front" if r["pareto"] else "recipe" if r["recipe"] else ""
        d_map = "—" if r["d_map_points"] is None else f"{r['d_map_points']:+.1f}" + (
            f" ({r['d_map_relative']:+.1%})" if r["d_map_relative"] is not None else "")
        cells = [f"<b>{esc(r['label'])}</b>" + (" <span class='muted'>front</span>" if r["pareto"] else "")
                 + f"<br>{esc(r['name'])}", esc(r["origin"]) or "—", fmt(r["map50_95"]), d_map, fmt(r["map50"]),
                 fmt(r["holdout_map50_95"]) + (mark(r["holdout_mark"]) if r["holdout_mark"] else ""),
                 fmt(r["latency_ms"], 2) + error_text(r["latency_error_pct"]) + (mark(r["latency_mark"]) if lat_cells else "")]
        if has_remeasured:
            cells.append(fmt(r["remeasured_ms"], 2) + (mark(r["remeasured_mark"]) if rem_cells and r["remeasured_ms"] else ""))
        speed = "1.00" if r["number"] is None else (
            f"{r['speedup']:.2f}×<br><span class='muted'>{esc(r['speedup_basis'])}</span>" if r["speedup"]
            else f"—<br><span class='muted'>{esc(r['speedup_basis'])}</span>")
        cells += [speed, fmt_bytes(r["sram_bytes"]) + ("" if mem_head else "".join(mark(m) for m in r["memory_marks"])),
                  "1.00" if r["number"] is None else (f"{r['smaller']:.2f}×" if r["smaller"] else "—"),
                  fmt_bytes(r["weight_bytes"]), fmt_bytes(r["activation_bytes"]),
                  {True: "yes", False: "<span class='warn'>no</span>", None: "—"}[r["fits"]],
                  fmt(r["params"] / 1e6 if r["params"] else None, 3), fmt(r["flops"] / 1e6 if r["flops"] else None, 1),
                  (f"<a download='{esc(report.run.get('run_name', 'design'))}-trial-{esc(r['number'])}.json' "
                   f"href='{data_url(t['candidate'])}'>download</a>" if t and t.get("candidate") else "—")]
        numeric = ({2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15} if has_remeasured
                   else {2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14})
        classes = {0: "name", 1: "origin", **{i: "n" for i in numeric}}
        body.append(f"<tr class='{cls}' id='design-{esc(r['key'])}'>"
                    + "".join(f"<td class='{classes.get(i, '')}'>{c}</td>" for i, c in enumerate(cells)) + "</tr>")
    note = ("<p class='muted'>× faster compares a design with the base on figures of one source: the latencies "
            "re-measured together where both have one, else the search's own when both came from the same source; "
            "otherwise it is left blank. The search optimised the search figures.</p>")
    remeasure = report.extras.get("remeasure") or {}
    if remeasure.get("state") in ("failed", "skipped") or remeasure.get("why"):
        what = {"failed": "The final re-measure failed", "skipped": "No final re-measure",
                "done": "Re-measured"}[remeasure["state"]]
        note += f"<p class='{'warn' if remeasure['state'] == 'failed' else 'muted'}'>{what}: {esc(remeasure['why'])}</p>"
    return (f"<div class='scroll'><table id='designs-table'><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>{note}")


def _device_cell(scores: dict) -> str:
    """Where a trial's models ran, and the GPUs Ray assigned it where it did, e.g. 'cpu (Ray GPU 0)'."""
    gpus = scores.get("ray_gpu_ids")
    return (scores.get("device") or "") + (f" (Ray GPU {gpus})" if gpus else "")


def _all_trials_table(report: Report) -> str:
    head = ["trial", "state", "design", "origin", "mAP50-95", "latency (ms)", "footprint (KiB)", "feasible", "front",
            "node", "device", "duration (s)", "error"]
    body = []
    for t in sorted(report.trials, key=lambda t: t["number"]):
        s = dd.scores_of(t) or {}
        state = {"PRUNED": "screened out", "FAIL": "failed", "COMPLETE": "scored"}.get(str(t.get("state")), t.get("state"))
        cells = [esc(f"#{t['number']}"), esc(state), esc(design_name(t.get("candidate"))) if t.get("candidate") else "—",
                 esc(origin_text(t)),
                 fmt(s.get("map50_95")), fmt(s.get("latency_ms"), 2), fmt_bytes(s.get("sram_bytes")),
                 {True: "yes", False: "no", None: "—"}[t.get("feasible")], "yes" if t.get("pareto") else "",
                 esc(t.get("node") or ""), esc(_device_cell(s)), fmt(t.get("duration_s"), 1), esc(t.get("error") or "")]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f"<details><summary>All {len(report.trials)} trials</summary><div class='scroll'><table>"
            f"<thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            "</div></details>")


def _cards(report: Report) -> str:
    cards = []
    for rec in report.recommended:
        if rec["trial"] is None:
            cards.append(f"<div class='card' data-recommendation='{esc(rec['key'])}'><h3>{esc(rec['title'])}</h3>"
                         f"<p class='warn'>none: {esc(rec['why'])}</p><p class='muted'>{esc(rec['rule'])}</p></div>")
            continue
        r = report.rows[rec["trial"]]
        speed = f"{r['speedup']:.2f}× faster" if r["speedup"] else "speed-up not comparable"
        smaller = f"{r['smaller']:.2f}× smaller" if r["smaller"] else ""
        d_map = f"{r['d_map_points']:+.1f} points mAP50-95" if r["d_map_points"] is not None else ""
        cards.append(
            f"<div class='card' data-recommendation='{esc(rec['key'])}' data-trial='{esc(rec['trial'])}'>"
            f"<h3>{esc(rec['title'])}</h3><div class='big'><a href='#design-{esc(r['key'])}'>{esc(r['label'])}</a></div>"
            f"<div class='name'>{esc(r['name'])}</div>"
            f"<div>mAP50-95 {fmt(r['map50_95'])} ({d_map}) · {fmt(r['latency_ms'], 2)} ms · "
            f"{fmt_bytes(r['sram_bytes'])} KiB</div><div><b>{speed}</b>, <b>{smaller}</b> than the base</div>"
            f"<div class='muted'>origin: {esc(r['origin'])}</div><p class='muted'>{esc(rec['rule'])}</p></div>")
    return f"<div class='cards'>{''.join(cards)}</div>"


def _provenance(report: Report) -> str:
    names = {"A": "accuracy", "L": "latency (search)", "R": "latency (re-measured together)", "M": "memory footprint",
             "P": "screened-out designs", "B": "packed bytes per layer", "C": "latency share per layer",
             "S": "sensitivity per layer", "H": "search progress"}
    items = "".join(
        f"<dt id='prov-{esc(e['mark'])}'>[{esc(e['mark'])}] {esc(names.get(e['category'], e['category']))}: "
        f"<span class='kind-{esc(e['kind'])}'>{esc(e['kind'])}</span></dt><dd>{esc(e['text'])}</dd>"
        for e in report.prov.rows())
    return f"<dl class='prov'>{items}</dl>"


def _takeaway(report: Report) -> str:
    items = []
    for t in report.designs:
        r = report.rows[t["number"]]
        items.append(
            f"<li id='take-{esc(t['number'])}'><b>{esc(r['title'])}</b>: "
            f"<a download='{esc(report.run.get('run_name', 'design'))}-trial-{esc(t['number'])}.json' href='{data_url(t['candidate'])}'>"
            f"candidate JSON</a> (also <code>{esc(report.design_file(t).relative_to(report.out_dir))}</code> beside this page)"
            f"<pre>{esc(report.eval_command(t))}</pre>"
            f"to the device's runtime: <code class='export-command'>{esc(report.export_command(t))}</code></li>")
    return ("<p>Each command re-scores the design (fine-tune, mAP, latency and footprint on this profile) and writes the "
            "deployable library for the profile (<code>--library</code>). <code>search export</code> re-runs the same "
            f"fine-tune and writes the design in the format of the profile's runtime (<code>--format "
            f"{esc(report.run.get('export_format') or 'onnx')}</code>). The formats: <code>onnx</code> (TensorRT, ONNX "
            "Runtime; int8 as QDQ where the profile computes int8), <code>ncnn</code> (an NCNN folder, as ultralytics "
            "writes it; every conv in float) and <code>pt</code> (an ultralytics checkpoint for ultralytics' own exporter: "
            "TFLite, TensorRT). Paths are this run's.</p>"
            f"<ul>{''.join(items) or '<li>no scored design</li>'}</ul>")


def _settings(run: dict) -> str:
    return "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in run.items())


SCRIPT = r"""
const KNOBS = PAGE.knobs;  // [[knob, label], ...]: the knob table's, through the page data
function cell(v, digits) { if (v === null || v === undefined) return "—";
  return (typeof v === "number" && !Number.isInteger(v)) ? v.toFixed(digits === undefined ? 3 : digits) : String(v); }
function kib(b) { return (b === null || b === undefined) ? "—" : (b / 1024).toFixed(2); }
function knobShown(row, knob) { return row.text[knob]; }
// Every value is text: elements are built with el() and strings become text nodes, never markup
// (layer names come from a checkpoint, labels from a study.db someone may hand over).
function el(tag, cls, ...children) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  node.append(...children.flat().map(c => c instanceof Node ? c : String(c)));
  return node;
}
// plotly draws its text (axis labels, legend) from a subset of HTML: names go to it escaped
function plotText(s) { return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
function table(head, rows) { return el("table", "", el("thead", "", el("tr", "", head)), el("tbody", "", rows)); }
function layerTable(key) {
  const head = [el("th", "", "layer"), KNOBS.map(k => el("th", "", k[1])), el("th", "", "packed KiB"),
                el("th", "", "base latency share"), el("th", "", "ω of the option"), el("th", "", "Δ loss of other changes")];
  return table(head, PAGE.layers[key].map(r => el("tr", "", el("td", "", r.layer),
    KNOBS.map(k => el("td", "", knobShown(r, k[0]))), el("td", "n", kib(r.packed_bytes)),
    el("td", "n", r.latency_share === null ? "—" : (100 * r.latency_share).toFixed(1) + "%"),
    el("td", "n", r.omega === null ? "—" : r.omega.toPrecision(3)),
    el("td", "n", r.delta_loss === null ? "—" : r.delta_loss.toPrecision(3)))));
}
function showLayers() {
  const key = document.getElementById("layer-design").value;
  draw("fig-layers", PAGE.layer_figures[key]);
  document.getElementById("layer-table").replaceChildren(layerTable(key));
}
function compareDesigns() {
  const a = document.getElementById("compare-a").value, b = document.getElementById("compare-b").value;
  const ra = PAGE.layers[a], rb = PAGE.layers[b];
  const sa = PAGE.rows[a], sb = PAGE.rows[b];
  const out = [];
  const figures = [];
  for (const [k, name, d] of [["map50_95","mAP50-95",3],["latency_ms","latency (ms)",2],["sram_bytes","footprint (KiB)",-1],
                              ["weight_bytes","weights (KiB)",-1]]) {
    const f = v => d < 0 ? kib(v) : cell(v, d);
    figures.push(el("tr", "", el("th", "", name), el("td", "n", f(sa[k])), el("td", "n", f(sb[k]))));
  }
  out.push(table([el("th", ""), el("th", "", sa.label), el("th", "", sb.label)], figures), el("h4", "", "Layers that differ"));
  const diff = [];
  for (let i = 0; i < ra.length; i++) {
    const changes = [];
    for (const [k, name] of KNOBS) {
      const va = knobShown(ra[i], k), vb = knobShown(rb[i], k);
      if (va !== vb) changes.push(changes.length ? ", " : "", el("b", "", name), " " + va + " → " + vb);
    }
    if (changes.length) {
      diff.push(el("tr", "", el("td", "", ra[i].layer), el("td", "", changes), el("td", "n", kib(ra[i].packed_bytes)),
                   el("td", "n", kib(rb[i].packed_bytes)))); }
  }
  out.push(diff.length ? table([el("th", "", "layer"), el("th", "", sa.label + " → " + sb.label),
                                el("th", "", "packed KiB " + sa.label), el("th", "", "packed KiB " + sb.label)], diff)
                       : el("p", "", "The two designs set every layer alike."));
  document.getElementById("compare-out").replaceChildren(...out);
  const x = ra.map(r => plotText(r.layer.replace(/^model\./, "")));
  const traces = [a, b].map((key, j) => ({type: "bar", name: plotText(PAGE.rows[key].label), x: x,
    y: PAGE.layers[key].map(r => r.packed_bytes === null ? null : r.packed_bytes / 1024)}));
  Plotly.react(document.getElementById("fig-compare"), traces, {template: FIGURES["fig-progress"].layout.template,
    barmode: "group", height: 320, margin: {l: 60, r: 20, t: 40, b: 90}, title: {text: "packed KiB per layer", font: {size: 14}},
    xaxis: {tickangle: -60, tickfont: {size: 9}}, yaxis: {title: {text: "packed KiB"}}}, CONFIG);
}
if (PAGE.layer_figures && Object.keys(PAGE.layer_figures).length) {
  document.getElementById("layer-design").addEventListener("change", showLayers);
  showLayers();
  document.getElementById("compare-a").addEventListener("change", compareDesigns);
  document.getElementById("compare-b").addEventListener("change", compareDesigns);
  compareDesigns();
}
"""


def _html(report: Report) -> str:
    run, trials = report.run, report.trials
    counts = Counter(t.get("state") for t in trials)
    front = [t for t in report.scored if t.get("pareto")]
    no_fit = front and all(t.get("feasible") is False for t in front)  # None: the run has no constraint
    warning = ("<p class='warn'>No design meets the run's budgets (memory, and latency or accuracy floor where set). "
               "The front below ignores them: these are the non-dominated designs that come closest.</p>") if no_fit else ""
    layer_figs, layer_rows = report.layer_data()
    def design_options(selected=None) -> str:
        return "".join(f"<option value='{esc(t['number'])}'{' selected' if t['number'] == selected else ''}>"
                       f"{esc(report.title(t))}</option>" for t in report.designs)

    options = design_options()
    compare_a = "<option value='base' selected>base</option>" + options
    b_default = report.designs[0]["number"] if report.designs else None
    compare_b = "<option value='base'>base</option>" + design_options(b_default)
    per_layer = (
        f"<p><label>design <select id='layer-design'>{options}</select></label></p>"
        "<div id='fig-layers' class='plot'></div><details open><summary>layer table</summary>"
        "<div class='scroll' id='layer-table'></div></details>"
        "<h3>Compare two designs</h3>"
        f"<p><label>A <select id='compare-a'>{compare_a}</select></label> "
        f"<label>B <select id='compare-b'>{compare_b}</select></label></p>"
        "<div id='compare-out' class='scroll'></div><div id='fig-compare' class='plot'></div>"
    ) if report.designs else "<p>No scored design yet.</p>"
    sensitivity = report.extras.get("sensitivity")
    sens_note = (f"<p class='muted'>Sensitivity: ω is the predicted accuracy cost of the layer's weight option, "
                 f"Δ loss the measured loss change of its structural and activation changes{mark(report.layer_marks()['sensitivity'])}.</p>"
                 if sensitivity else "<p class='muted'>This run has no sensitivity table (no ω per layer).</p>")
    proxy = report.extras.get("proxy_quality") or {}
    proxy_text = (f" The screening proxy ranks scored designs with Spearman ρ = {proxy['spearman_rho']:.2f} against their "
                  f"measured mAP50-95 (n = {proxy.get('n', '?')})." if proxy.get("spearman_rho") is not None else "")
    strategy = f", strategy {esc(run['strategy'])}" if run.get("strategy") else ""
    figs = report.figures()
    body = f"""
<h1>{esc(run.get('run_name', 'run'))}: designs for {esc(run.get('profile', '?'))}</h1>
<p class="lede">{len(trials)} trials{strategy}: {counts.get('COMPLETE', 0)} scored, {counts.get('FAIL', 0)} failed,
{counts.get('PRUNED', 0)} screened out (predicted only, never fine-tuned). {len(front)} on the Pareto front (mAP50-95 ↑,
latency ↓, memory footprint ↓, {esc(report.budget['label'])} as a constraint). Model <code>{esc(Path(str(run.get('model', '?'))).name)}</code>,
input {esc(run.get('imgsz', '?'))} px. Figures carry a mark such as [L1] naming their source, stated once under
<a href="#provenance">Where the figures come from</a>.</p>{warning}
<h2 id="recommended">Recommended designs</h2>{_cards(report)}
<h2 id="pareto">Accuracy against latency and memory</h2>
<p class="muted">Hover a point for the design. Dashed: the budget; dotted: the accuracy floor; green rings: the recommended designs.</p>
<div class="grid2"><div id="fig-pareto-latency" class="plot"></div><div id="fig-pareto-memory" class="plot"></div></div>
<h2 id="designs">Designs against the base</h2>{_table(report)}{_all_trials_table(report)}
<h2 id="layers">What each design does to each layer</h2>
<p class="muted">Layers in model order. Darker = more compressed; cells say the value.</p>{sens_note}{per_layer}
<h2 id="progress">Search progress</h2>
<p>{counts.get('COMPLETE', 0)} scored, {counts.get('FAIL', 0)} failed, {counts.get('PRUNED', 0)} screened out.{proxy_text}</p>
<div id="fig-progress" class="plot"></div>
<h2 id="takeaway">Take a design away</h2>{_takeaway(report)}
<h2 id="provenance">Where the figures come from</h2>{_provenance(report)}
<h2 id="run">Run settings</h2><table>{_settings(run)}</table>
<p class="muted">Files: <a href="trials.csv">trials.csv</a> (every trial), <a href="pareto.json">pareto.json</a>
(the front with knobs), <code>{DESIGNS_DIR}/</code> (candidate JSON of each design above). Live view while a search runs:
<code>optuna-dashboard sqlite:///{esc(report.out_dir / 'study.db')}</code>.</p>
"""
    rows = {"base": report.base_row, **{str(n): r for n, r in report.rows.items()}}
    data = {"layer_figures": layer_figs, "layers": layer_rows, "knobs": report.knob_columns(),
            "rows": {k: {x: r[x] for x in ("label", "map50_95", "latency_ms", "sram_bytes", "weight_bytes")}
                     for k, r in rows.items()}}
    return render(title=f"edgesearch: {run.get('run_name', '')} on {run.get('profile', '')}", body=body,
                  figures=figs, data=data, script=SCRIPT)


def write_report(out_dir: Path, *, run: dict, base: dict, trials: list[dict], extras: dict | None = None) -> dict[str, Path]:
    out_dir = Path(out_dir)
    (out_dir / DESIGNS_DIR).mkdir(parents=True, exist_ok=True)
    report = Report(run, base, trials, extras or {}, out_dir)
    front = [t for t in trials if t.get("pareto")]
    pareto = {
        "run": run,
        "objectives": {"map50_95": "maximize", "latency_ms": "minimize", "sram_bytes": "minimize"},
        "base": base,
        "pareto": [{"trial": t["number"], "scores": t["scores"], "remeasured": t.get("remeasured"),
                    "design": design_name(t["candidate"]), "origin": t.get("origin"), "recipe": t.get("recipe"),
                    "candidate": t["candidate"]} for t in front],
        "recommended": report.recommended,
    }
    files = {
        "trials.csv": _csv_bytes(trials),
        "pareto.json": json.dumps(pareto, indent=2).encode(),
        **{str(report.design_file(t).relative_to(out_dir)): json.dumps(t["candidate"], indent=2).encode()
           for t in report.designs if t.get("candidate")},
        "index.html": _html(report).encode(),
    }
    for name, data in files.items():
        atomic_write(out_dir / name, data)
    for stale in (out_dir / DESIGNS_DIR).glob("trial-*.json"):  # designs an earlier front showed
        if str(stale.relative_to(out_dir)) not in files:
            stale.unlink()
    return {name: out_dir / name for name in files}


def _remeasured_text(remeasured: dict | None) -> str:
    if not remeasured:
        return "-"
    return f"{remeasured['latency_ms']:.2f} ({remeasured['latency_spread_ms']:.2f})"


def pareto_table(base: dict, trials: list[dict]) -> str:
    """The Pareto designs as a fixed-width text table for the terminal."""
    header = (f"{'design':>8} {'mAP50-95':>9} {'held out':>9} {'mAP50':>7} {'latency ms':>11} {'re-measured':>14} "
              f"{'memory KiB':>10} {'meets budgets':>13}  what it does")
    lines = [header, "-" * len(header)]

    def line(label, s, remeasured, feasible, name):
        held = f"{s['holdout_map50_95']:9.3f}" if s.get("holdout_map50_95") is not None else f"{'-':>9}"
        meets = {True: "yes", False: "no", None: "-"}[feasible]
        return (f"{label:>8} {s['map50_95']:9.3f} {held} {s['map50']:7.3f} {s['latency_ms']:11.2f} "
                f"{_remeasured_text(remeasured):>14} {s['sram_bytes'] / 1024:10.1f} {meets:>13}  {name}")

    lines.append(line("base", base, base.get("remeasured"), None, "the unmodified model"))
    front = sorted((t for t in trials if t["pareto"]), key=lambda t: -t["scores"]["map50_95"])
    for t in front:
        lines.append(line(f"#{t['number']}", t["scores"], t.get("remeasured"), t.get("feasible"),
                          design_name(t["candidate"])))
    if front and all(t.get("feasible") is False for t in front):
        lines.append("no design meets the run's budgets: these are the non-dominated designs ignoring them")
    if base.get("holdout_source"):
        lines.append(f"mAP50-95 on the val images the search selects on; held out: {base['holdout_source']}")
    # the method, not the base's own label: the base computes in fp32, the front's designs in their own precisions
    lines.append(f"latency: {base.get('latency_method') or base['latency_source']}; each design in the precisions "
                 "it computes in (compute_precision in trials.csv)")
    if base.get("latency_error_pct"):
        lines.append(f"estimated latencies: ± {base['latency_error_pct']:.0f} % (p90 of the calibration's "
                     "leave-one-out errors)")
    if base.get("remeasured"):
        lines.append(f"re-measured: {base['remeasured']['latency_source']}")
    return "\n".join(lines)
