"""The report on hand-made rows: optional fields present or missing, recommendations, provenance,
progress; rendered in headless Chromium where the page's behaviour is the point."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
from html import escape

import pytest

from browser import open_page, plot_points
from edgesearch.reports import design_data as dd
from edgesearch.reports.pareto_report import write_report

LAYERS = ["model.0.conv", "model.1.conv", "model.2.cv1.conv"]
MEASURED = "measured: TVM llvm build, fixed CPU schedule (no tuning), fp32, 2 threads, time evaluator median"
ESTIMATED = "estimated: roofline from profile peak fp32 rate and bandwidth (no device reachable)"
PLANNED = "planned: TVM static memory planning of the fp32 build"
INT8 = "estimated: TVM-planned fp32 activation bytes x 0.400, the byte share of conv inputs once int8 layers read 1-byte activations"


def scores(map50_95, latency_ms, sram_kib, *, source=MEASURED, activation_source=PLANNED):
    sram = int(sram_kib * 1024)
    return {"map50_95": map50_95, "map50": map50_95 + 0.2, "latency_ms": latency_ms, "latency_spread_ms": 0.1,
            "latency_source": source, "weight_bytes": sram - 1000, "activation_bytes": 1000,
            "activation_bytes_source": activation_source, "sram_bytes": sram, "fits_sram": sram <= 100 * 1024,
            "params": 300_000, "flops": 2e7}


def candidate(bits, **extra):
    layers = {}
    for i, name in enumerate(LAYERS):
        knobs = {"weight_bits": bits[i], "scheme": "affine", "granularity": "filter", "group_size": 16,
                 "prune_ratio": 0.0, "sparsity": 0.0, "kernel_size": "keep", "rank_ratio": 1.0, "activation_bits": 32}
        knobs.update(extra.get(name, {}))
        layers[name] = knobs
    return {"layers": layers}


def trial(number, s, *, pareto=False, feasible=True, cand=None, state="COMPLETE", **optional):
    return {"number": number, "state": state, "pareto": pareto, "feasible": feasible if s else None, "scores": s,
            "candidate": cand, "error": None, "duration_s": 10.0, "remeasured": None, **optional}


BASE = dict(scores(0.70, 10.0, 400), remeasured=None)
RUN = {"run_name": "hand", "profile": "x86-host", "profile_file": "hardware_profiles/x86-host.yaml", "space": "yolov8",
       "space_file": "spaces/yolov8.yaml", "preset": "smoke", "model": "/m/base.pt", "data": "/d/data.yaml", "trials": 7,
       "parallel": 1, "imgsz": 64, "finetune_iters": 2, "seed": 0, "sram_budget_bytes": 100 * 1024}


def hand_trials():
    """0-2 recipes and moves on the front, 3 dominated, 4 over budget, 5 failed, 6 screened out."""
    return [
        trial(0, scores(0.695, 9.0, 90), pareto=True, cand=candidate([8, 8, 8]), recipe="int8 weights + int8 activations",
              origin="recipe: int8 weights + int8 activations"),
        trial(1, scores(0.68, 8.0, 50), pareto=True, cand=candidate([4, 8, 4]), origin="move: cheapen sram_bytes from #0: model.0.conv: weight_bits 8->4",
              predicted={"omega": 0.01, "map50_95": 0.69}, node="10.0.0.2"),
        trial(2, scores(0.60, 5.0, 30), pareto=True, cand=candidate([4, 4, 2], **{"model.1.conv": {"prune_ratio": 0.5, "activation_bits": 8}}),
              origin="seed: least omega under SRAM 30 KiB"),
        trial(3, scores(0.55, 9.5, 95), cand=candidate([6, 6, 6]), recipe="4-bit affine per filter"),
        trial(4, scores(0.71, 12.0, 200), feasible=False, cand=candidate([32, 32, 8])),
        trial(5, None, state="FAIL", cand=candidate([2, 2, 2]), error="RuntimeError: boom"),
        trial(6, None, state="PRUNED", cand=candidate([3, 3, 3]), origin="move: cheapen latency_ms from #1",
              predicted={"omega": 0.3, "map50_95": 0.5, "sram_bytes": 40 * 1024, "latency_ms": 7.5}),
    ]


SENSITIVITY = {"method": "detection loss per image on 32 train images; weight options: 1/2 Tr(H)/n ||W - Q(W)||^2",
               "images": 32,
               "layers": {name: {"trace": 1.0 + i, "trace_stderr": 0.1, "weights": 100, "shape": [4, 3, 3, 3],
                                 "weight_options": {f"{b}|affine|filter|16|0.0": {"delta_w2": 0.1, "omega": 0.001 * (9 - b) * (i + 1)}
                                                    for b in (2, 3, 4, 6, 8)} | {"32|affine|filter|16|0.0": {"delta_w2": 0.0, "omega": 0.0}},
                                 "changes": {"prune_ratio": {"0.5": {"delta_loss": 0.2}}, "activation_bits": {"8": {"delta_loss": 0.05}}}}
                          for i, name in enumerate(LAYERS)}}
COST_BASIS = {"layers": {name: {"flops": 1e6, "input_elements": 1000, "latency_ms": 1.0 + i} for i, name in enumerate(LAYERS)},
              "latency_source": "estimated: per-block TVM timings of the profile's layer table, shared among a block's convs by FLOPs"}


def test_recommendations_pick_by_their_rules():
    trials = hand_trials()
    run = dict(RUN, max_map_drop=0.05)  # floor 0.665
    picks = {r["key"]: r["trial"] for r in dd.recommendations(run, BASE, trials)}
    assert picks["floor"] == 1  # smallest within budget at >= 0.665 (#0 is bigger; #4 is over budget)
    assert picks["budget"] == 0  # highest mAP within budget (#4 scores more but does not fit)
    assert picks["knee"] in {0, 1, 2}
    # without a stated floor the default (1%) applies and says so
    floor = dd.accuracy_floor(RUN, BASE)
    assert floor["drop"] == dd.DEFAULT_MAX_MAP_DROP and "default" in floor["label"]
    picks = {r["key"]: r for r in dd.recommendations(RUN, BASE, trials)}
    assert picks["floor"]["trial"] == 0  # 0.695 >= 0.693; #1 (0.68) is below
    # a latency budget and a DRAM budget are honoured
    run = dict(RUN, latency_budget_ms=6.0, memory_budget={"kind": "dram", "bytes": 60 * 1024})
    picks = {r["key"]: r for r in dd.recommendations(run, BASE, trials)}
    assert picks["budget"]["trial"] == 2 and "DRAM" in picks["budget"]["title"]
    assert picks["floor"]["trial"] is None and picks["floor"]["why"]
    # nothing scored: every pick says why it is empty
    assert all(r["trial"] is None and r["why"] for r in dd.recommendations(RUN, BASE, trials[5:]))


def test_the_accuracy_floor_rests_on_the_higher_of_the_base_and_the_fp32_control():
    """"Within X %" as the issues define it: below the higher of the unmodified base and the fp32
    control given the designs' fine-tune; the label says which, and the control's training."""
    run = dict(RUN, max_map_drop=0.01)
    training = {"steps_from_base": 2, "label": "2 fine-tune steps from the base"}
    control = trial(7, dict(scores(0.72, 10.0, 400), training=training), recipe="control: float, the same fine-tune",
                    control=True)
    trials = [*hand_trials(), control]
    floor = dd.accuracy_floor(run, BASE, trials)
    assert floor["map50_95"] == pytest.approx(0.72 * 0.99)
    assert "fp32 control's mAP50-95 0.720 (#7: 2 fine-tune steps from the base" in floor["label"]
    picks = {r["key"]: r["trial"] for r in dd.recommendations(run, BASE, trials)}
    assert picks["floor"] is None  # #0 (0.695) meets the base's floor (0.693), not the control's (0.713)
    assert {r["key"]: r["trial"] for r in dd.recommendations(run, BASE, hand_trials())}["floor"] == 0
    lower = dict(control, scores=dict(control["scores"], map50_95=0.65))  # a control below the base: the base
    floor = dd.accuracy_floor(run, BASE, [*hand_trials(), lower])
    assert floor["map50_95"] == pytest.approx(0.70 * 0.99) and "the fp32 control, #7, scored 0.650" in floor["label"]
    assert "no fp32 control was scored" in dd.accuracy_floor(run, BASE, hand_trials())["label"]


def test_designs_of_the_recovery_stage_are_held_to_the_control_recovered_as_they_were():
    run = dict(RUN, max_map_drop=0.01)
    short = {"steps_from_base": 2, "recovery_steps": 0, "label": "2 fine-tune steps from the base"}
    recovered = {"steps_from_base": 6, "recovery_steps": 4, "label": "6 fine-tune steps from the base (2 + 4 of recovery)"}
    control = trial(7, dict(scores(0.72, 10.0, 400), training=short), control=True)
    recovered_control = trial(8, dict(scores(0.80, 10.0, 400), training=recovered), control=True)
    pruned = trial(9, dict(scores(0.75, 2.0, 30), training=recovered))  # above the short control's floor only
    trials = [*hand_trials(), control, recovered_control, pruned]
    assert dd.accuracy_floor(run, BASE, trials)["map50_95"] == pytest.approx(0.72 * 0.99)
    floor = dd.accuracy_floor(run, BASE, trials, recovery=4)
    assert floor["map50_95"] == pytest.approx(0.80 * 0.99) and "(#8: 6 fine-tune steps" in floor["label"]
    picks = {r["key"]: r for r in dd.recommendations(run, BASE, trials)}
    assert picks["floor-fastest"]["trial"] != 9 and "recovery stage (4 more steps), ≥ 0.792" in picks["floor"]["rule"]
    trials[-1] = dict(pruned, scores=dict(pruned["scores"], map50_95=0.795))
    assert {r["key"]: r["trial"] for r in dd.recommendations(run, BASE, trials)}["floor-fastest"] == 9


def test_the_knee_is_the_design_nearest_the_ideal_point():
    front = [trial(0, scores(0.70, 10.0, 100)), trial(1, scores(0.68, 5.5, 55)), trial(2, scores(0.40, 5.0, 50))]
    assert dd.knee(front)["number"] == 1


def test_speedups_compare_figures_of_one_source_only():
    base = scores(0.7, 10.0, 100)
    assert dd.latency_pair(base, scores(0.7, 5.0, 100), None, None) == {"speedup": 2.0, "basis": "search"}
    assert dd.latency_pair(base, scores(0.7, 5.0, 100, source=ESTIMATED), None, None)["speedup"] is None
    again = {"latency_ms": 4.0, "latency_source": "measured: re-timed interleaved"}
    assert dd.latency_pair(base, scores(0.7, 5.0, 100), dict(again, latency_ms=8.0), again) == {
        "speedup": 2.0, "basis": "re-measured"}


def test_an_integer_design_is_compared_with_the_fp32_base_timed_the_same_way():
    """Labels differ by precision and by how many trials ran meanwhile; the method is what counts."""
    method = "measured on this machine: fixed schedule, 2 threads"
    base = dict(scores(0.7, 10.0, 100), latency_source="measured: ..., fp32, 0 other trial(s)", latency_method=method)
    design = dict(scores(0.7, 4.0, 100), latency_source="measured: ..., 60 of 63 convs as int8 kernels, 1 other trial(s)",
                  latency_method=method)
    assert dd.latency_pair(base, design, None, None) == {"speedup": 2.5, "basis": "search"}
    estimated = dict(design, latency_method="estimated: roofline of raspberry-pi-4")
    assert dd.latency_pair(base, estimated, None, None)["speedup"] is None


def test_progress_counts_failed_and_screened_and_never_loses_hypervolume():
    rows = dd.progress(hand_trials(), BASE)["rows"]
    assert [r["number"] for r in rows] == list(range(7))
    assert rows[-1]["failed"] == 1 and rows[-1]["screened"] == 1 and rows[-1]["completed"] == 5
    values = [r["hypervolume"] for r in rows]
    assert all(b >= a for a, b in itertools.pairwise(values)) and values[2] > values[0] > 0
    assert values[4] == values[3]  # #4 is infeasible: it does not count


def test_layer_rows_read_the_sensitivity_and_cost_basis_of_the_chosen_options():
    extras = {"sensitivity": SENSITIVITY, "cost_basis": COST_BASIS}
    rows = dd.layer_rows(hand_trials()[2]["candidate"], LAYERS, extras, {"model.0.conv": 123})
    assert [r["layer"] for r in rows] == LAYERS
    assert rows[0]["omega"] == pytest.approx(0.001 * 5 * 1) and rows[2]["omega"] == pytest.approx(0.001 * 7 * 3)
    assert rows[1]["delta_loss"] == pytest.approx(0.25)  # pruned 0.5 and int8 activations
    assert rows[0]["delta_loss"] is None and rows[0]["packed_bytes"] == 123 and rows[1]["packed_bytes"] is None
    assert sum(r["latency_share"] for r in rows) == pytest.approx(1.0)
    float_rows = dd.layer_rows(None, LAYERS, extras, None)
    assert [r["omega"] for r in float_rows] == [0.0, 0.0, 0.0]
    bare = dd.layer_rows(None, LAYERS, {}, None)  # a run without analysis files
    assert all(r["omega"] is None and r["latency_share"] is None and r["trace"] is None for r in bare)


def test_changed_knobs_ignore_scheme_of_float_layers():
    a, b = candidate([32, 32, 8]), candidate([32, 32, 4])
    b["layers"]["model.0.conv"]["scheme"] = "pwlq"  # meaningless at float bits
    assert dd.changed_knobs(a, b, LAYERS) == [{"layer": "model.2.cv1.conv", "knob": "weight_bits", "a": 8, "b": 4}]



def test_the_reports_copies_of_the_knob_table_match_it():
    """reports/ imports nothing of edgesearch and renders plain data even without extras, so it keeps
    the knob defaults (design_data) and the heatmap's rows (figures) itself; the knob table is the
    truth, and a knob added there without its report rows fails here."""
    from edgesearch.reports import figures
    from edgesearch.spaces.knobs import DEFAULTS, report_knobs

    assert dd.KNOB_DEFAULTS == DEFAULTS
    assert [[knob, label] for label, knob, _ in figures.KNOB_ROWS] == report_knobs()

def test_a_design_is_named_by_what_it_does_to_its_layers():
    """Issue 19 item 6: layers grouped by what was done to them, the largest group first, capped."""
    from edgesearch.reports.design_names import UNCHANGED, design_name

    assert design_name(None) == design_name({"layers": {}}) == design_name(candidate([32, 32, 32])) == UNCHANGED
    int8 = candidate([8, 8, 8], **{name: {"activation_bits": 8, "scheme": "symmetric"} for name in LAYERS})
    assert design_name(int8) == "int8 weights + activations on 3 layers"
    mixed = candidate([4, 4, 8], **{"model.0.conv": {"scheme": "kmeans", "sparsity": 0.5},
                                    "model.1.conv": {"scheme": "kmeans", "prune_ratio": 0.25, "kernel_size": 1},
                                    "model.2.cv1.conv": {"activation_bits": 8, "prune_ratio": 0.5, "rank_ratio": 0.5}})
    named = ["4-bit k-means weights on 2 layers", "pruned 25-50 % on 2 layers", "int8 weights + activations on 1 layer",
             "50 % sparse on 1 layer"]
    assert design_name(mixed) == ", ".join([*named, "and 2 more changes"])
    assert design_name(mixed, max_parts=6) == ", ".join([*named, "kernel cropped to 1×1 on 1 layer", "rank 0.5 on 1 layer"])
    half = candidate([32, 16, 4], **{"model.0.conv": {"activation_bits": 16}, "model.2.cv1.conv": {"activation_bits": 16}})
    assert design_name(half) == "4-bit weights + fp16 compute on 1 layer, fp16 compute on 1 layer, fp16 weights on 1 layer"
    # a layer's name never enters the design's; odd values read as they are (the page escapes them)
    odd = {"layers": {"<img src=x onerror=pwned=1>": {"kernel_size": "<b>", "weight_bits": 32}}}
    assert design_name(odd) == "kernel cropped to <b>×<b> on 1 layer"


def test_the_page_titles_designs_by_what_they_do_and_keeps_their_origin(tmp_path):
    from edgesearch.reports.design_names import design_name
    from edgesearch.reports.pareto_report import Report

    trials = hand_trials()
    files = write_report(tmp_path, run=RUN, base=BASE, trials=trials)
    html = files["index.html"].read_text()
    move = trials[1]
    title = "#1: " + design_name(move["candidate"])
    assert title == "#1: 4-bit weights on 2 layers, int8 weights on 1 layer"
    row = html[html.index("id='design-1'"):].split("</tr>", 1)[0]
    assert f"<b>#1</b> <span class='muted'>front</span><br>{escape(title[4:])}</td>" in row  # the name first
    assert f"<td class='origin'>{escape(move['origin'])}</td>" in row  # the origin beside it
    assert f"#0 {trials[0]['recipe']}: int8 weights on 3 layers" in html  # a recipe keeps its name beside
    assert html.count(f">{escape(title)}</option>") == 3  # the per-layer view's and the comparison's choices
    hover = Report(RUN, BASE, trials, {}, tmp_path).rows[1]["hover"]  # the plots' (in the page's script data)
    assert hover.startswith(f"<b>{escape(title)}</b><br>origin: {escape(move['origin'])}<br>")
    with files["trials.csv"].open() as rows:
        by_trial = {row["trial"]: row for row in csv.DictReader(rows)}
    assert by_trial["1"]["design"] == design_name(move["candidate"]) and by_trial["1"]["origin"] == move["origin"]
    assert by_trial["1"]["knobs"] == "4b×2 8b×1; affine×3; no structural change"  # the tally stays
    pareto = json.loads(files["pareto.json"].read_text())["pareto"]
    assert [(d["design"], d["origin"]) for d in pareto if d["trial"] == 1] == [(title[4:], move["origin"])]


def test_reports_import_nothing_of_edgesearch_beyond_reports_and_the_common_leaf():
    code = ("import sys, edgesearch.reports.pareto_report, edgesearch.reports.compare_report, "
            "edgesearch.reports.shadow_report;"
            "print(sorted(m for m in sys.modules if m.startswith('edgesearch.') "
            "and not m.startswith(('edgesearch.reports', 'edgesearch.common'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_report_with_every_optional_field_works_in_chromium(tmp_path):
    trials = hand_trials()
    run = dict(RUN, max_map_drop=0.05, latency_budget_ms=11.0, strategy="guided",
               memory_budget={"kind": "sram", "bytes": 100 * 1024})
    trials[1]["scores"]["activation_bytes_source"] = INT8
    extras = {"sensitivity": SENSITIVITY, "cost_basis": COST_BASIS, "proxy_quality": {"spearman_rho": 0.81, "n": 5},
              "accuracy_basis": {"split": "val", "images": 16},
              "packed_layers": {"base": {n: 4000 for n in LAYERS}, **{str(i): {n: 1000 + i for n in LAYERS} for i in range(5)}},
              "packed_layers_source": "computed: from the layout"}
    files = write_report(tmp_path, run=run, base=BASE, trials=trials, extras=extras)
    html = files["index.html"].read_text()
    # each source stated once, referenced by marks
    for text in (MEASURED, PLANNED, SENSITIVITY["method"], COST_BASIS["latency_source"]):
        assert html.count(escape(text)) == 1, text
    assert "Spearman ρ = 0.81" in html and "on the val split (16 images)" in html
    assert "mAP50-95 (val)" in html and "map50_95</th>" not in html and "sram_bytes</th>" not in html
    # designs shown: the front, recipes and picks; each has its candidate file
    assert sorted(p.name for p in (tmp_path / "designs").iterdir()) == ["trial-0.json", "trial-1.json", "trial-2.json",
                                                                        "trial-3.json"]
    assert json.loads((tmp_path / "designs" / "trial-2.json").read_text()) == trials[2]["candidate"]
    with open_page(files["index.html"]) as (page, problems):
        assert plot_points(page, "fig-pareto-latency") == 5 + 1 + 1  # 5 scored, the base, 1 screened (predicted)
        assert plot_points(page, "fig-pareto-memory") == 5 + 1 + 1
        names = page.evaluate("document.getElementById('fig-pareto-latency').data.map(t => t.name)")
        assert "screened out: predicted, never fine-tuned [P1]" in names  # never mixed with measured points
        assert "recipe (fixed reference design) [L1]" in names
        assert page.evaluate("document.getElementById('fig-pareto-latency').layout.shapes.length") == 2  # latency budget, floor
        assert page.evaluate("document.getElementById('fig-progress').data[0].x.length") == 7
        assert page.locator("#layer-design option").count() == 4
        page.select_option("#layer-design", "2")
        traces = page.evaluate("document.getElementById('fig-layers').data.map(t => t.name || t.type)")
        assert "ω of the chosen option (predicted accuracy cost)" in traces and "base latency share %" in traces
        assert page.locator("#layer-table tbody tr").nth(1).inner_text().count("50%") == 1  # prune ratio
        page.select_option("#compare-a", "0")
        page.select_option("#compare-b", "2")
        changed = page.locator("#compare-out table").nth(1).locator("tbody tr").all_inner_texts()
        assert len(changed) == 3 and "prune ratio" in changed[1] and "int8" in changed[1]
        assert problems == [], problems


def test_a_report_of_a_run_without_optional_fields_or_scores(tmp_path):
    """Only failed trials, no extras, no budget: the page still renders and says what is missing."""
    run = {k: v for k, v in RUN.items() if k != "sram_budget_bytes"}
    trials = [trial(0, None, state="FAIL", cand=candidate([2, 2, 2]), error="RuntimeError: boom")]
    files = write_report(tmp_path, run=run, base=BASE, trials=trials)
    html = files["index.html"].read_text()
    assert "no memory budget" in html and "No scored design yet" in html and "RuntimeError: boom" in html
    with open_page(files["index.html"]) as (page, problems):
        assert plot_points(page, "fig-pareto-latency") == 1
        assert problems == [], problems


def test_agreement_matches_boxes_one_to_one_at_iou_half():
    import numpy as np

    from edgesearch.runners.shadow import agreement

    base = [np.array([[0, 0, 10, 10, 0.9, 1], [20, 20, 30, 30, 0.8, 2]], dtype=np.float32), np.zeros((0, 6), np.float32)]
    same = agreement(base, [b.copy() for b in base])
    assert same["matched"] == same["same_class"] == 2 and same["class_agreement"] == 1.0 and same["mean_iou"] == 1.0
    assert same["identical_images"] == 2
    design = [np.array([[1, 1, 10, 10, 0.9, 1],      # IoU 0.81 with the first box, same class
                        [20, 20, 30, 24, 0.7, 3],    # IoU 0.4 with the second: not matched
                        [0, 0, 10, 10, 0.5, 4]], dtype=np.float32),  # IoU 1 with the first: takes it, other class
              np.array([[5, 5, 9, 9, 0.6, 0]], dtype=np.float32)]
    found = agreement(base, design)
    assert (found["matched"], found["same_class"], found["base_boxes"], found["design_boxes"]) == (1, 0, 2, 4)
    assert found["mean_iou"] == 1.0 and found["class_agreement"] == 0.0
    assert found["base_recall"] == 0.5 and found["design_precision"] == 0.25 and found["identical_images"] == 0


def test_the_study_reads_sensibly_in_optuna_dashboard(tmp_path):
    from edgesearch.search import study as studies

    study = studies.open_study(tmp_path, seed=0, population_size=2, create=True)
    assert study.metric_names == list(studies.METRIC_NAMES) and "objectives" in study.user_attrs["read_me"]
    trial = study.ask()
    trial.set_user_attr(studies.CANDIDATE_ATTR, candidate([4, 4, 8]))
    studies.tell_scores(study, trial, scores(0.5, 1.0, 10), {"memory_bytes": 100 * 1024})
    assert study.trials[0].user_attrs[studies.SUMMARY_ATTR] == "4-bit weights on 2 layers, int8 weights on 1 layer"


def test_a_dram_budget_far_off_the_scale_is_noted_not_drawn_and_estimates_carry_error_bars():
    """Issue 17 item 6: on a 4 GiB DRAM budget a line at the budget squashed every design onto 0."""
    from edgesearch.reports import figures
    from edgesearch.reports.pareto_report import error_text, memory_axis_title

    points = [{"number": 1, "category": "front", "x": 2000.0, "y": 0.6, "hover": "", "group": None, "error": 0.5},
              {"number": 2, "category": "other", "x": 3000.0, "y": 0.5, "hover": "", "group": None, "error": None}]
    base = {"x": 4000.0, "y": 0.7, "hover": ""}
    floor = {"map50_95": 0.0, "label": ""}
    dram = {"kind": "dram", "bytes": 4 * 1024**3, "label": "DRAM budget 4,194,304 KiB"}
    fig = figures.pareto_figure("sram_bytes", points, base_point=base, budget=dram, floor=floor, latency_budget_ms=None,
                                highlights={}, x_title=memory_axis_title(dram), caption_marks=[])
    assert not fig.layout.shapes and any("off the scale" in a.text for a in fig.layout.annotations)
    assert "CUDA context not counted" in memory_axis_title(dram) and "CUDA" not in memory_axis_title({"kind": "sram"})
    sram = {"kind": "sram", "bytes": 5000 * 1024, "label": "SRAM budget 5,000 KiB"}
    fig = figures.pareto_figure("sram_bytes", points, base_point=base, budget=sram, floor=floor, latency_budget_ms=None,
                                highlights={}, x_title="x", caption_marks=[])
    assert len(fig.layout.shapes) == 1  # a budget near the designs is drawn
    fig = figures.pareto_figure("latency_ms", points, base_point=base, budget=sram, floor=floor, latency_budget_ms=None,
                                highlights={}, x_title="x", caption_marks=[])
    front = next(t for t in fig.data if t.meta and t.meta.get("category") == "front")
    assert list(front.error_x.array) == [0.5]
    other = next(t for t in fig.data if t.meta and t.meta.get("category") == "other")
    assert other.error_x.array is None
    assert error_text(23.4) == " ± 23 %" and error_text(None) == ""


def test_estimated_latencies_show_their_error_band_in_the_table_and_trials_csv(tmp_path):
    estimated = dict(scores(0.69, 30.0, 90, source="estimated (± 25 %): jetson-nano model"), latency_error_pct=25.0)
    base = dict(scores(0.70, 40.0, 400, source="estimated (± 25 %): jetson-nano model"), latency_error_pct=25.0,
                remeasured=None)
    trials = [trial(0, estimated, pareto=True, cand=candidate([8, 8, 8]), origin="seed")]
    run = dict(RUN, profile="jetson-nano", memory_budget={"kind": "dram", "bytes": 4 * 1024**3, "source": "profile"})
    files = write_report(tmp_path, run=run, base=base, trials=trials)
    html = files["index.html"].read_text()
    assert "30.00 ± 25 %" in html and "CUDA context not counted" in html
    header = files["trials.csv"].read_text().splitlines()[0]
    assert "latency_error_pct" in header.split(",")
