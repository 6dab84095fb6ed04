"""The shared smoke search (conftest's smoke_run: a real guided search through the CLI on a local
Ray, then resumed): what it wrote and scored, its stages, and its report rendered in headless
Chromium from a file: URL (offline). Every test reading that search is in this file, so that the
suite's two workers (pytest-xdist, one file per worker at a time) run it once."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from browser import open_page, plot_points
from conftest import RESUMED_TRIALS, SMOKE_FIRST_TRIALS as FIRST_TRIALS, SMOKE_SPACE, run_cli
from edgesearch.runners.accuracy.finetune import FINETUNE_LR, STRUCTURAL_LR
from edgesearch.search import study as studies
from edgesearch.spaces.candidate import Candidate

REPORT_LIMIT_BYTES = 6 * 1024 * 1024  # the smoke report: ~4.8 MB of it is plotly.js, inlined once
DIRECTIONS = {"map50_95": 1, "latency_ms": -1, "sram_bytes": -1}  # +1 maximize, -1 minimize


def _dominates(a: dict, b: dict) -> bool:
    better_or_equal = all(s * a[k] >= s * b[k] for k, s in DIRECTIONS.items())
    return better_or_equal and any(s * a[k] > s * b[k] for k, s in DIRECTIONS.items())


def _artifact_dir(tmp_path_factory) -> Path:
    """Screenshots go to $EDGESEARCH_TEST_ARTIFACTS when set (CI keeps them), else pytest's tmp."""
    where = os.environ.get("EDGESEARCH_TEST_ARTIFACTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_the_smoke_reports_page_works_offline_in_chromium(smoke_run, tmp_path_factory):
    out = smoke_run.out
    index = out / "index.html"
    assert index.stat().st_size < REPORT_LIMIT_BYTES
    html = index.read_text()
    assert "<script src" not in html and "<link " not in html  # self-contained (requests are refused below too)
    report = json.loads((out / "pareto.json").read_text())
    rows = [r for r in (out / "trials.csv").read_text().splitlines()[1:] if r]
    scored = sum(1 for r in rows if ",COMPLETE," in r)
    screened = sum(1 for r in rows if ",PRUNED," in r)
    assert screened, "the shared smoke search's moves were screened"
    front = {d["trial"] for d in report["pareto"]}

    with open_page(index) as (page, problems):
        # every scored design, every screened one (at its predicted scores) and the base, once, in each plot
        assert plot_points(page, "fig-pareto-latency") == scored + screened + 1
        assert plot_points(page, "fig-pareto-memory") == scored + screened + 1
        assert plot_points(page, "fig-pareto-memory", "highlight") >= 1  # recommended designs ringed
        # the budget is drawn on the memory plot
        assert page.evaluate("document.getElementById('fig-pareto-memory').layout.shapes.length") >= 1
        # hypervolume after each trial
        assert page.evaluate("document.getElementById('fig-progress').data[0].x.length") == len(rows)
        # recommended designs name trials that exist
        for number in page.eval_on_selector_all("[data-trial]", "els => els.map(e => +e.dataset.trial)"):
            assert number in {int(r.split(",")[0]) for r in rows}

        # per-layer view: one heatmap column per layer in model order, for each front design
        layers = list(report["pareto"][0]["candidate"]["layers"])
        options = page.eval_on_selector_all("#layer-design option", "els => els.map(e => e.value)")
        assert {int(v) for v in options} >= front
        for value in options:
            page.select_option("#layer-design", value)
            heatmap = page.evaluate("document.getElementById('fig-layers').data.find(t => t.type === 'heatmap')")
            assert len(heatmap["x"]) == len(layers) and heatmap["x"][0] == layers[0].removeprefix("model.")
            if int(value) in front:
                knobs = next(d for d in report["pareto"] if d["trial"] == int(value))["candidate"]["layers"]
                names = {32: "float", 16: "fp16"}
                assert heatmap["text"][0] == [names.get(k["weight_bits"], str(k["weight_bits"])) for k in knobs.values()]
            assert page.locator("#layer-table tbody tr").count() == len(layers)
        # packed bytes per layer add up to the design's weight bytes, less what is not a searchable conv
        first = report["pareto"][0]
        page.select_option("#layer-design", str(first["trial"]))
        packed = page.evaluate("PAGE.layers[document.getElementById('layer-design').value].map(r => r.packed_bytes)")
        assert all(b > 0 for b in packed) and sum(packed) <= first["scores"]["weight_bytes"]
        assert sum(packed) > 0.9 * first["scores"]["weight_bytes"]

        # comparing the base with a quantized design lists the layers it changed
        page.select_option("#compare-a", "base")
        page.select_option("#compare-b", str(first["trial"]))
        # every layer whose knobs the design changes, and only those (a seed or move may keep some as the base)
        changed = page.evaluate(f"PAGE.layers['base'].filter((r, i) => JSON.stringify(r.text) !== "
                                f"JSON.stringify(PAGE.layers['{first['trial']}'][i].text)).length")
        assert 1 <= changed <= len(layers)
        assert page.locator("#compare-out table").nth(1).locator("tbody tr").count() == changed
        assert len(page.evaluate("document.getElementById('fig-compare').data")) == 2

        # take-away: the downloadable candidate is the design's, and so is the file beside the page
        link = page.locator(f"#take-{first['trial']} a[download]")
        payload = json.loads(base64.b64decode(link.get_attribute("href").split(",", 1)[1]))
        assert payload == first["candidate"]
        command = page.locator(f"#take-{first['trial']} pre").inner_text()
        assert json.loads(Path(shlex.split(command)[shlex.split(command).index("--candidate") + 1]).read_text()) == payload

        page.set_viewport_size({"width": 1400, "height": 1000})
        shot = _artifact_dir(tmp_path_factory) / "smoke-report.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        assert problems == [], problems
    assert shot.stat().st_size > 10_000


def test_the_pages_command_line_rescores_the_design_and_writes_its_library(smoke_run, tmp_path):
    """The take-away command, as the page prints it, run as a user would (search -> this python)."""
    report = json.loads((smoke_run.out / "pareto.json").read_text())
    html = (smoke_run.out / "index.html").read_text()
    number = report["pareto"][0]["trial"]
    start = html.index(f"<li id='take-{number}'>")
    command = html[html.index("<pre>", start) + 5:html.index("</pre>", start)]
    import html as html_module

    args = shlex.split(html_module.unescape(command))
    assert args[:2] == ["search", "eval"] and "--library" in args
    library = tmp_path / "design.so"
    args[args.index("--library") + 1] = str(library)
    result = run_cli(*args[1:], "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout)
    assert scores["weight_bytes"] == report["pareto"][0]["scores"]["weight_bytes"]  # the same design, packed alike
    assert library.stat().st_size > 0


def test_several_runs_of_one_model_compare_on_one_page(smoke_run, tmp_path):
    """A real second run of the same model on another profile (raspberry-pi-4: no device here, so
    its latencies are estimated), compared with the x86-host run."""
    pi4 = tmp_path / "pi4"
    result = run_cli("run", "--preset", "smoke", "--space", SMOKE_SPACE, "--profile", "raspberry-pi-4", "--out", str(pi4),
                     "--trials", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "compare"
    compared = run_cli("report", str(smoke_run.out), str(pi4), "--out", str(out))
    assert compared.returncode == 0, compared.stderr[-3000:]
    fronts = [json.loads((d / "pareto.json").read_text())["pareto"] for d in (smoke_run.out, pi4)]
    html = (out / "index.html").read_text()
    assert "x86-host" in html and "raspberry-pi-4" in html and html.count("estimated</span>") >= 1
    with open_page(out / "index.html") as (page, problems):
        for figure in ("fig-compare-latency", "fig-compare-memory"):
            assert plot_points(page, figure) == sum(len(f) for f in fronts) + 2  # each front and each base
            profiles = page.evaluate(f"document.getElementById('{figure}').data.map(t => t.meta.profile)")
            assert set(profiles) == {"x86-host", "raspberry-pi-4"}
        assert page.evaluate("document.getElementById('fig-compare-memory').layout.shapes.length") == 2  # two budgets
        assert page.locator("#profiles-table tbody tr").count() == 2
        # the anchor design is the same candidate on both profiles
        assert page.locator("#same-designs tbody tr").count() >= 1
        page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
        assert problems == [], problems

    # runs of different models are refused before anything is written
    other = tmp_path / "other"
    shutil.copytree(pi4, other)
    run_file = other / "run.json"
    run_file.write_text(json.dumps(dict(json.loads(run_file.read_text()), model="/elsewhere/other.pt")))
    refused = run_cli("report", str(smoke_run.out), str(other), "--out", str(tmp_path / "refused"))
    assert refused.returncode == 2 and "one model" in refused.stderr and not (tmp_path / "refused").exists()


def test_shadow_runs_a_design_beside_the_base_on_a_second_folder(smoke_run, smoke_inputs, tmp_path, capsys):
    """A design from the report against the base on a copy of the val images with their labels."""
    data = Path(smoke_inputs.data_yaml).parent
    folder = tmp_path / "second"
    shutil.copytree(data / "images" / "val", folder / "images")
    shutil.copytree(data / "labels" / "val", folder / "labels")
    design = sorted((smoke_run.out / "designs").glob("trial-*.json"))[-1]
    out = tmp_path / "shadow"
    # the smoke base is barely trained: its confidences are low, so compare everything above 0.001
    result = run_cli("shadow", "--preset", "smoke", "--candidate", str(design), "--images", str(folder / "images"),
                     "--conf", "0.001", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "shadow.json").read_text())
    a = report["agreement"]
    assert report["images"] == len(list((folder / "images").iterdir())) == report["labelled_images"]
    assert a["base_boxes"] > 0 and 0 <= a["same_class"] <= a["matched"] <= min(a["base_boxes"], a["design_boxes"])
    assert len(a["per_image"]) == report["images"]
    assert set(report["accuracy"]["base"]["classes"]) == set(report["accuracy"]["design"]["classes"])
    assert all(report["latency"][who]["latency_ms"] > 0 for who in ("base", "design"))
    # --device auto: the CPU here; each stage records what its model and inputs were on (runners/device.py)
    where = "cpu" if not torch.cuda.is_available() else "cuda:0"
    assert report["device"].split()[0] == where
    assert {report["stage_devices"][s] for s in ("finetune", "shadow base", "shadow design")} == {where}
    assert "matched boxes (IoU 0.5)" in result.stdout
    with open_page(out / "index.html") as (page, problems):
        assert page.evaluate("document.getElementById('fig-agreement').data[0].x.length") == report["images"]
        assert page.locator("#class-table tbody tr").count() == len(report["accuracy"]["base"]["classes"])
        assert problems == [], problems
    # bad input fails in a line, before the slow work
    from edgesearch.search.cli import main

    assert main(["shadow", "--preset", "smoke", "--candidate", str(design), "--images", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_search_writes_a_correct_report_and_resumes(smoke_run):
    out, result = smoke_run.out, smoke_run.first
    assert all(size > 0 for size in smoke_run.written.values())
    assert "base" in result.stdout and "mAP50-95" in result.stdout  # the Pareto table is printed

    report, rows = smoke_run.first_report, smoke_run.first_rows
    assert len(rows) == FIRST_TRIALS and report["base"]["map50_95"] >= 0
    assert report["pareto"], "a search has at least one Pareto design"
    feasible = [r for r in rows if r["state"] == "COMPLETE" and r["feasible"] == "True"]
    all_scores = {int(r["trial"]): {k: float(r[k]) for k in DIRECTIONS} for r in feasible}
    for design in report["pareto"]:
        assert design["candidate"]["layers"], "Pareto designs carry their per-layer knobs"
        mine = {k: design["scores"][k] for k in DIRECTIONS}
        assert not any(_dominates(other, mine) for n, other in all_scores.items() if n != design["trial"])
        # the final designs are timed again together, interleaved, and say so
        assert design["remeasured"]["latency_ms"] > 0 and "interleaved" in design["remeasured"]["latency_source"]
    assert report["base"]["remeasured"]["latency_ms"] > 0
    assert "re-timed interleaved" in smoke_run.first_html
    # the take-away's export is in the format of the profile's runtime, which run.json records
    assert json.loads((out / "run.json").read_text())["export_format"] == "onnx" and "--format onnx" in smoke_run.first_html
    # the cost basis is timed at the trials' thread count: moves add its changes to measured latencies
    base_method = studies.read_study(out).user_attrs["base"]["latency_method"]
    assert f"{json.loads((out / 'cost_basis.json').read_text())['threads']} threads" in base_method

    first_trials = {int(r["trial"]): r["map50_95"] for r in rows}
    rows = list(csv.DictReader((out / "trials.csv").open()))  # after the resume
    assert sum(r["state"] == "COMPLETE" for r in rows) == RESUMED_TRIALS
    assert {int(r["trial"]): r["map50_95"] for r in rows if int(r["trial"]) in first_trials} == first_trials

    rebuilt = run_cli("report", str(out))
    assert rebuilt.returncode == 0 and "report:" in rebuilt.stdout
    # a report reads the study without the search's settings: a run.json without them still reports
    bare = out.parent / "bare-run"
    shutil.copytree(out, bare)
    settings = json.loads((bare / "run.json").read_text())
    (bare / "run.json").write_text(json.dumps({k: v for k, v in settings.items() if k not in ("seed", "population")}))
    rebuilt = run_cli("report", str(bare))
    assert rebuilt.returncode == 0 and "report:" in rebuilt.stdout, rebuilt.stderr[-2000:]

    again = run_cli("run", "--preset", "smoke", "--space", SMOKE_SPACE, "--out", str(out), "--trials", "2")
    assert again.returncode == 2 and "--resume" in again.stderr


def test_a_guided_search_scores_recipes_then_seeds_then_screened_few_layer_moves(smoke_run):
    from edgesearch.search.presets import PRESETS

    recipes = PRESETS["smoke"].recipes

    out = smoke_run.out
    assert (out / "sensitivity.json").stat().st_size > 0 and (out / "cost_basis.json").stat().st_size > 0
    # computed once, by the first run; the resumed run (another process) reads both from the cache
    assert "sensitivity pass:" in smoke_run.first.stdout and "hardware cost basis:" in smoke_run.first.stdout
    assert "sensitivity pass:" not in smoke_run.resumed.stdout and "cost basis:" not in smoke_run.resumed.stdout
    study = optuna.load_study(study_name=studies.STUDY_NAME, storage=studies.storage_url(out))
    scored = [t for t in study.trials if t.state == TrialState.COMPLETE]
    screened = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(scored) == RESUMED_TRIALS
    origins = [t.user_attrs[studies.ORIGIN_ATTR] for t in sorted(scored, key=lambda t: t.number)]
    assert [o.removeprefix("recipe: ") for o in origins[:len(recipes)]] == list(recipes)
    assert all(o.startswith("seed: ") for o in origins[len(recipes):len(recipes) + 2])
    assert any(o.startswith("move: ") for o in origins)

    by_number = {t.number: t for t in study.trials}
    for trial in [t for t in scored + screened if t.user_attrs[studies.ORIGIN_ATTR].startswith("move: ")]:
        parent = int(re.search(r"from #(\d+)", trial.user_attrs[studies.ORIGIN_ATTR]).group(1))
        mine = trial.user_attrs[studies.CANDIDATE_ATTR]["layers"]
        theirs = by_number[parent].user_attrs[studies.CANDIDATE_ATTR]["layers"]
        changed = [layer for layer in mine if mine[layer] != theirs.get(layer)]
        assert 1 <= len(changed) <= 3, changed
        assert "map50_95" in trial.user_attrs[studies.PREDICTED_ATTR]  # the proxy that screened it

    # a screened-out design is never on the front, and the report counts it apart
    assert screened, "each move slot draws several moves and scores one"
    report = json.loads((out / "pareto.json").read_text())
    front = {design["trial"] for design in report["pareto"]}
    assert front and front <= {t.number for t in scored}
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert sum(r["state"] == "PRUNED" for r in rows) == len(screened)



def test_a_run_estimates_its_time_when_trials_start_and_says_where_it_went_at_the_end(smoke_run):
    first, resumed = smoke_run.first.stdout, smoke_run.resumed.stdout
    # nothing scored yet: a lower bound from the base's score (no fine-tune), then one from the first trial
    assert re.search(rf"estimated time for {FIRST_TRIALS} trial\(s\): more than .*fine-tune not timed yet", first)
    assert re.search(rf"estimated time for {FIRST_TRIALS - 1} trial\(s\): .*the median of 1 scored trial", first)
    assert re.search(rf"estimated time for {RESUMED_TRIALS - FIRST_TRIALS} trial\(s\): .*the median of "
                     rf"{FIRST_TRIALS} scored trial", resumed)
    for stage in ("cost tables", "base score", "sensitivity pass (beside the first trials)", "trials",
                  "re-measure", "report"):
        assert re.search(rf"where the time went: .*{re.escape(stage)} \d", first), stage
    assert "base score" not in resumed.split("where the time went:")[1].splitlines()[0]  # scored by the first run
    assert re.search(r"timing waited for the other trials to pause: median [\d.]+ s, at most [\d.]+ s", first)
    assert re.search(r"per scored trial \(median of \d+\): fine-tune [\d.]+ s, validation [\d.]+ s, build \+ timing "
                     r"[\d.]+ s; the whole task [\d.]+ s; outside it .* [\d.]+ s", resumed)
    rows = [r for r in csv.DictReader((smoke_run.out / "trials.csv").open()) if r["state"] == "COMPLETE"]
    assert rows
    for row in rows:  # each stage measured inside the task, the task inside the trial's ask-to-tell time
        stages = [float(row[c]) for c in ("finetune_s", "validate_s", "hardware_s")]
        assert all(s > 0 for s in stages) and sum(stages) <= float(row["eval_s"]) <= float(row["duration_s"]), row


def test_designs_with_a_graph_timed_before_reuse_its_figure_and_the_remeasure_times_the_trials_libraries(smoke_run):
    study = studies.read_study(smoke_run.out)
    scored = [t.user_attrs[studies.SCORE_ATTR] for t in study.get_trials(states=(TrialState.COMPLETE,))]
    timed = {s["build_key"]: s["latency_ms"] for s in [study.user_attrs["base"], *scored] if not s["build_reused"]}
    for scores in scored:  # a reused figure is the one its graph's first build (maybe the base's) measured
        assert scores["build_key"] in timed
        if scores["build_reused"]:
            assert scores["latency_ms"] == timed[scores["build_key"]] and "reused" in scores["latency_source"]
    rows = list(csv.DictReader((smoke_run.out / "trials.csv").open()))
    assert sum(r["build_reused"] == "True" for r in rows) == sum(s["build_reused"] for s in scored)
    reused = sum(s["build_reused"] for s in scored)
    assert f"builds reused: {reused} of {len(scored)} scored trial(s)" in smoke_run.resumed.stdout
    remeasure = study.user_attrs["remeasure"]  # every design was scored on this node: none rebuilt
    assert remeasure["state"] == "done" and remeasure["from_libraries"] == remeasure["designs"] >= 2, remeasure
    assert f"the re-measure timed {remeasure['designs']} of its {remeasure['designs']} design(s)" in \
        smoke_run.resumed.stdout


def test_every_design_carries_its_training_record_and_moves_below_the_front_stop_at_their_rung(smoke_run):
    """Successive halving (search/halving.py) with the smoke run's --rung-steps 1 of 2: recipes and
    seeds always train fully and record their mAP at the rung; a move either does too or stopped
    there below its bar, and says so in its record."""
    study = studies.read_study(smoke_run.out)
    run = json.loads((smoke_run.out / "run.json").read_text())
    steps, rung = run["finetune_iters"], run["rung_steps"]
    assert (steps, rung) == (2, 1)
    labels = {row["trial"]: row["training"] for row in csv.DictReader((smoke_run.out / "trials.csv").open())}
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        scores, origin = trial.user_attrs[studies.SCORE_ATTR], trial.user_attrs[studies.ORIGIN_ATTR]
        record = scores["training"]
        assert labels[str(trial.number)] == record["label"] and record["start"] == "base"
        # a design that changes structure is fine-tuned at the higher rate, and says so
        structural = Candidate.from_json(trial.user_attrs[studies.CANDIDATE_ATTR]).changes_structure()
        assert record["lr"] == (STRUCTURAL_LR if structural else FINETUNE_LR)
        rate = f", learning rate {STRUCTURAL_LR:g}" if structural else ""
        if record["stopped_early"]:
            assert origin.startswith("move:") and record["steps_from_base"] == rung
            assert re.search(r"stopped at 1 of 2: mAP50-95 [\d.]+ there, below the [\d.]+ it needed", record["label"])
        else:
            assert record["steps_from_base"] == steps and record["label"] == f"{steps} fine-tune steps from the base{rate}"
            assert scores["rung_map50_95"] is not None
    stopped = sum(t.user_attrs[studies.SCORE_ATTR]["training"]["stopped_early"]
                  for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert f"successive halving: {stopped} of " in smoke_run.resumed.stdout
    assert study.user_attrs["base"]["training"]["steps_from_base"] == 0


def test_the_guided_sampler_drives_study_optimize_and_a_new_process_carries_on_from_the_study(smoke_run, tmp_path):
    """GuidedSampler is an Optuna sampler: `study.optimize` with it scores the recipes, then the seeds,
    then screened moves, each design also as the trial's parameters; a second sampler (another
    process, as a resumed run) reads the plan and the trials from the storage and goes on with moves.
    Scores are the proxy's (no fine-tune): the smoke run's own sensitivity and cost tables."""
    from edgesearch.runners.conv_shapes import conv_shapes
    from edgesearch.search.flops_count import FlopsCounter
    from edgesearch.search.guided import Guide, GuidedSampler
    from edgesearch.search.loop import guided_space
    from edgesearch.search.options import OptionPricer
    from edgesearch.search.resolve import resolve_inputs
    from edgesearch.spaces.candidate import Candidate
    from edgesearch.spaces.knobs import DEFAULTS

    out = smoke_run.out
    inputs = resolve_inputs(profile="x86-host", space=SMOKE_SPACE, model=None, data=None, preset="smoke")
    recipes, space = guided_space(inputs, "smoke")
    # as the search prices (search/loop.py): FLOPs counted on pruned shapes, adjacent cuts' overlap included
    cuts = [(layer, ratio) for layer, knobs in space.items() for ratio in knobs.get("prune_ratio", []) if ratio]
    basis = json.loads((out / "cost_basis.json").read_text())
    counter = FlopsCounter(conv_shapes(inputs.base_model, cuts, basis["imgsz"]))
    pricer = OptionPricer(json.loads((out / "sensitivity.json").read_text()), basis, counter=counter)
    base = optuna.load_study(study_name=studies.STUDY_NAME, storage=studies.storage_url(out)).user_attrs["base"]
    assert Guide(pricer, inputs.resolved, base, {}, seed=0).interactions, "the smoke space's cuts are adjacent"

    def sampler():
        return GuidedSampler(Guide(pricer, inputs.resolved, base, {}, seed=0), space, seed=0)

    def objective(trial):
        candidate = studies.candidate_of(trial, inputs.resolved)
        price = pricer.design(Candidate.from_json(candidate).layers)
        scores = {"map50_95": base["map50_95"] - 0.05 * price["omega"], "latency_ms": price["latency_ms"],
                  "sram_bytes": price["sram_bytes"]}
        trial.set_user_attr(studies.SCORE_ATTR, scores)
        return [scores[name] for name in studies.OBJECTIVES]

    storage = f"sqlite:///{tmp_path}/study.db"
    first = sampler()
    study = optuna.create_study(storage=storage, directions=list(studies.DIRECTIONS), sampler=first)
    first.plan(study, recipes, seed_count=2)
    study.optimize(objective, n_trials=len(recipes) + 4)  # the recipes, the seeds, then moves
    resumed = optuna.load_study(study_name=study.study_name, storage=storage, sampler=sampler())
    resumed.optimize(objective, n_trials=3)

    trials = sorted(resumed.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    origins = [t.user_attrs[studies.ORIGIN_ATTR] for t in trials]
    assert len(trials) == len(recipes) + 7
    assert origins[:len(recipes)] == [f"recipe: {name}" for name in recipes]
    kinds = [origin.split(":")[0] for origin in origins[len(recipes):]]
    seeds = kinds.count("seed")
    assert seeds >= 2 and kinds == ["seed"] * seeds + ["move"] * (7 - seeds), kinds
    assert resumed.get_trials(states=(TrialState.PRUNED,)), "each move slot screens several moves"
    changed_anything = False
    for trial in trials:  # the parameters are the knobs the design changes, layer by layer
        for layer, knobs in trial.user_attrs[studies.CANDIDATE_ATTR]["layers"].items():
            from_params = {knob: trial.params.get(f"{layer}|{knob}", DEFAULTS[knob]) for knob in knobs}
            assert from_params == knobs, (trial.number, layer)
        changed_anything |= bool(trial.params)
    assert changed_anything


def test_seeds_and_moves_predicted_below_the_accuracy_floor_are_not_spent(smoke_run, tmp_path):
    """With a floor the accuracy model (fitted on the scored recipes) puts every design under, the
    planned seeds and every drawn move are stored as screened, and the sampler proposes nothing;
    with a floor at 0 it proposes the first seed."""
    from edgesearch.search.guided import Guide, GuidedSampler
    from edgesearch.search.loop import guided_space
    from edgesearch.search.options import OptionPricer
    from edgesearch.search.resolve import resolve_inputs
    from edgesearch.spaces.candidate import Candidate

    out = smoke_run.out
    inputs = resolve_inputs(profile="x86-host", space=SMOKE_SPACE, model=None, data=None, preset="smoke")
    recipes, space = guided_space(inputs, "smoke")
    pricer = OptionPricer(json.loads((out / "sensitivity.json").read_text()),
                          json.loads((out / "cost_basis.json").read_text()))
    base = studies.read_study(out).user_attrs["base"]

    def proxy(candidate):  # the proxy's figures, so the fitted model is exact
        price = pricer.design(Candidate.from_json(candidate).layers)
        return {"map50_95": base["map50_95"] - 0.05 * price["omega"], "latency_ms": price["latency_ms"],
                "sram_bytes": price["sram_bytes"]}

    def objective(trial):
        scores = proxy(studies.candidate_of(trial, inputs.resolved))
        trial.set_user_attr(studies.SCORE_ATTR, scores)
        return [scores[name] for name in studies.OBJECTIVES]

    for floor, proposes in ((base["map50_95"] + 0.01, False), (0.0, True)):
        sampler = GuidedSampler(Guide(pricer, inputs.resolved, base, {"map_floor": floor}, seed=0), space, seed=0)
        study = optuna.create_study(storage=f"sqlite:///{tmp_path}/{proposes}.db", directions=list(studies.DIRECTIONS),
                                    sampler=sampler)
        sampler.plan(study, recipes, seed_count=2)
        study.optimize(objective, n_trials=len(recipes))
        unchanged = proxy({"layers": {}})  # a third scored design: the accuracy model is fitted
        study.add_trial(optuna.trial.create_trial(values=[unchanged[name] for name in studies.OBJECTIVES], user_attrs={
            studies.SCORE_ATTR: unchanged, studies.CANDIDATE_ATTR: {"layers": {}}, studies.ORIGIN_ATTR: "test"}))
        assert sampler.prepare(study) is proposes
        screened = [t.user_attrs[studies.ORIGIN_ATTR] for t in study.get_trials(states=(TrialState.PRUNED,))]
        if proposes:
            assert not screened
        else:  # both seeds, then every drawn move (cheapening, then restoring): none spent
            assert [o.split(":")[0] for o in screened][:2] == ["seed", "seed"] and len(screened) > 2
            assert all(t.user_attrs[studies.PREDICTED_ATTR]["map50_95"] < floor
                       for t in study.get_trials(states=(TrialState.PRUNED,)))
