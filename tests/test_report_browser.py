"""A real smoke search's report, rendered in headless Chromium from a file: URL (offline)."""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
from pathlib import Path

from browser import open_page, plot_points
from conftest import SMOKE_SPACE, run_cli

REPORT_LIMIT_BYTES = 6 * 1024 * 1024  # the smoke report: ~4.8 MB of it is plotly.js, inlined once


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
        assert page.locator("#compare-out table").nth(1).locator("tbody tr").count() == len(layers)
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
    assert "matched boxes (IoU 0.5)" in result.stdout
    with open_page(out / "index.html") as (page, problems):
        assert page.evaluate("document.getElementById('fig-agreement').data[0].x.length") == report["images"]
        assert page.locator("#class-table tbody tr").count() == len(report["accuracy"]["base"]["classes"])
        assert problems == [], problems
    # bad input fails in a line, before the slow work
    from edgesearch.search.cli import main

    assert main(["shadow", "--preset", "smoke", "--candidate", str(design), "--images", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
