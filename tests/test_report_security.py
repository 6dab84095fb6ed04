"""Hostile strings in a report's inputs (issue 21): layer names from a checkpoint, labels and
errors from a study.db, run.json values. The page shows each as text, runs no script but its own
(Content-Security-Policy by hash) and loads nothing from the network."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections import OrderedDict
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from browser import open_page, plot_points
from conftest import run_in_process
from edgesearch.common.files import atomic_write
from edgesearch.reports.compare_report import write_comparison
from edgesearch.reports.page import _script_json, fmt
from edgesearch.reports.pareto_report import write_report
from edgesearch.reports.shadow_report import write_shadow_report

# each sets a window global if it ever runs (module names may hold anything but '.')
LAYER_PAYLOADS = ("<img src=x onerror=pwned=1>", "</script><script>pwned=2</script><!--<script>")
STRING_PAYLOADS = ("<img src=x onerror=pwned=3>", "'><svg onload=pwned=4>", '"><script>pwned=5</script>',
                   "<!--<script>pwned=6//", "</script><img src=x onerror=pwned=7>")


# ------------------------------------------------------------------------------ a hostile run folder


def _hostile_checkpoint(path: Path) -> Path:
    """The tiny YOLOv8 with two top-level modules renamed to payloads: it still runs (ultralytics
    iterates the modules, whatever their names) and the safe loader accepts it."""
    import torch
    from ultralytics import YOLO

    from edgesearch.search.presets import TINY_MODEL_YAML

    model = YOLO(TINY_MODEL_YAML).model
    renamed = {"1": LAYER_PAYLOADS[0], "2": LAYER_PAYLOADS[1]}
    model.model._modules = OrderedDict((renamed.get(k, k), m) for k, m in model.model._modules.items())
    torch.save({"model": model}, path)
    return path


def _scores(map50_95: float, latency_ms: float, kib: float, source: str) -> dict:
    return {"map50_95": map50_95, "map50": map50_95 + 0.1, "latency_ms": latency_ms, "latency_spread_ms": 0.1,
            "latency_source": source, "weight_bytes": int(kib * 1024) - 500, "activation_bytes": 500,
            "activation_bytes_source": STRING_PAYLOADS[1], "sram_bytes": int(kib * 1024), "fits_sram": True,
            "params": 1000, "flops": 1e6, "node": {"hostname": STRING_PAYLOADS[4], "ip": "10.0.0.1", "id": "0" * 16},
            "packed_layers": {STRING_PAYLOADS[3]: STRING_PAYLOADS[0]},  # not bytes: the report computes its own
            # step counts that are not numbers: the design is held to the floor of a design from the base
            "training": {"label": STRING_PAYLOADS[2], "inherited_steps": STRING_PAYLOADS[0], "recovery_steps": [1]}}


def _hostile_run(run_dir: Path, checkpoint: Path) -> list[str]:
    """run.json and a study.db written as a search writes them, every string field a payload;
    the designs name the checkpoint's layers. Returns the layer names."""
    from edgesearch.runners.checkpoints import load_detection_model
    from edgesearch.search import study as studies
    from edgesearch.spaces.candidate import Candidate, LayerKnobs
    from edgesearch.spaces.space import load_space

    model = load_detection_model(checkpoint)  # the safe loader: no --trust-checkpoint
    layers = list(load_space("yolov8").resolve(model))
    assert {f"model.{LAYER_PAYLOADS[0]}.conv", f"model.{LAYER_PAYLOADS[1]}.cv1.conv"} <= set(layers)
    run_dir.mkdir()
    run = {"run_name": STRING_PAYLOADS[0], "profile": STRING_PAYLOADS[2], "space": STRING_PAYLOADS[3],
           "preset": "smoke", "model": str(checkpoint), "data": STRING_PAYLOADS[4], "imgsz": 64, "seed": 0,
           "population": 4, "trials": 3, "strategy": STRING_PAYLOADS[1], "sram_budget_bytes": 10 * 2**20}
    (run_dir / "run.json").write_text(json.dumps(run))
    study = studies.open_study(run_dir, seed=0, population_size=4, create=True)
    study.set_user_attr("base", _scores(0.5, 10.0, 400, STRING_PAYLOADS[3]))
    budgets = {"memory_bytes": run["sram_budget_bytes"]}
    for i, bits in enumerate((8, 4)):
        trial = study.ask()
        knobs = {name: LayerKnobs(weight_bits=bits if j % 2 else 8) for j, name in enumerate(layers)}
        trial.set_user_attr(studies.CANDIDATE_ATTR, Candidate(knobs).to_json())
        trial.set_user_attr(studies.ORIGIN_ATTR, STRING_PAYLOADS[i])
        trial.set_user_attr(studies.RECIPE_ATTR, STRING_PAYLOADS[i + 2])
        studies.tell_scores(study, trial, _scores(0.5 - 0.1 * i, 8.0 - 2 * i, 300 - 100 * i, STRING_PAYLOADS[4]),
                            budgets)
    failed = study.ask()
    failed.set_user_attr(studies.ORIGIN_ATTR, STRING_PAYLOADS[3])
    studies.tell_failure(study, failed, STRING_PAYLOADS[4])
    return layers


def test_a_report_from_a_hostile_checkpoint_and_study_runs_no_script(tmp_path, capsys):
    run_dir = tmp_path / "run"
    _hostile_run(run_dir, _hostile_checkpoint(tmp_path / "hostile.pt"))
    result = run_in_process(capsys, "report", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    dialogs = []
    with open_page(run_dir / "index.html") as (page, problems):
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        assert plot_points(page, "fig-pareto-latency") == 2 + 1  # two designs and the base
        for design in ("0", "1"):  # the layer table and the comparison, rebuilt by the page's script
            page.select_option("#layer-design", design)
            page.select_option("#compare-b", design)
        page.select_option("#compare-a", "0")
        table = page.locator("#layer-table").inner_text()
        diff = page.locator("#compare-out").inner_text()
        assert LAYER_PAYLOADS[0] in table and LAYER_PAYLOADS[1] in table  # shown, as text
        assert LAYER_PAYLOADS[0] in diff and STRING_PAYLOADS[2] in diff  # a changed layer, a design's label
        assert STRING_PAYLOADS[0] in page.locator("h1").inner_text()
        assert page.evaluate("typeof window.pwned") == "undefined"
        assert page.evaluate("document.querySelectorAll('img, main svg:not(.main-svg):not([class])').length") == 0
        assert dialogs == [] and problems == [], (dialogs, problems)


# ------------------------------------------------------------------------------ the policy itself


def _inline_scripts(html: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"<script>(.*?)</script>", html, flags=re.S)]


def _policy(html: str) -> str:
    match = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', html)
    assert match, "no Content-Security-Policy"
    return match.group(1).replace("&#x27;", "'")


def _assert_policy(html: str) -> None:
    policy = dict(part.strip().split(" ", 1) for part in _policy(html).split(";"))
    assert policy["default-src"] == "'none'"  # nothing from the network: no connect, fetch, frame or object
    scripts = _inline_scripts(html)
    assert len(scripts) == 2  # plotly.js and the page's own
    allowed = set(policy["script-src"].split())
    assert allowed == {f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts}
    assert "'unsafe-inline'" not in policy["script-src"] and "unsafe-eval" not in policy["script-src"]
    assert policy["img-src"] == "data: blob:" and policy["base-uri"] == "'none'"
    assert html.index("Content-Security-Policy") < html.index("<script")


def test_every_page_edgesearch_writes_carries_the_policy(tmp_path):
    from test_report import BASE, RUN, hand_trials

    reports = write_report(tmp_path / "run", run=RUN, base=BASE, trials=hand_trials())
    _assert_policy(reports["index.html"].read_text())
    entries = [{"run": RUN, "base": BASE, "trials": hand_trials(), "extras": {}, "report": reports["index.html"]}]
    _assert_policy(write_comparison(tmp_path / "compare", entries).read_text())
    shadow = {"agreement": {"per_image": [{"image": 0, "base": 1, "design": 1, "matched": 1, "same_class": 1}],
                            "match_iou": 0.5, "base_recall": 1.0, "design_precision": 1.0, "class_agreement": 1.0,
                            "matched": 1, "base_boxes": 1, "design_boxes": 1, "same_class": 1, "mean_iou": 0.9,
                            "identical_images": 1},
              "latency": {w: {"latency_ms": 1.0, "latency_spread_ms": 0.1, "latency_source": "measured: x"}
                          for w in ("base", "design")},
              "confidence": 0.25, "nms_iou": 0.7, "imgsz": 64, "images": 1, "images_dir": "/i", "finetune_iters": 1,
              "image_names": ["a.png"]}
    shadow_page = write_shadow_report(tmp_path / "shadow", shadow, {"candidate": "d.json", "design": STRING_PAYLOADS[0]})
    html = shadow_page["index.html"].read_text()
    _assert_policy(html)
    assert f"<h1>Shadow comparison: {escape(STRING_PAYLOADS[0])} beside the base</h1>" in html  # named by its name


def test_json_blocks_and_figures_cannot_break_out_of_their_element():
    text = _script_json({"a": "</script><!--<script>&x", "</b>": 1})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><!--<script>&x", "</b>": 1}
    assert fmt("<b>x</b>") == "&lt;b&gt;x&lt;/b&gt;" and fmt(1.5, 1) == "1.5"


# ------------------------------------------------------------------------------ fuzz


class _Page(HTMLParser):
    """The page's structure (tags and attribute names, in order), its text and its script blocks."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.structure, self.text, self.scripts, self._in_script = [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.structure.append((tag, tuple(name for name, _ in attrs)))
        self._in_script = tag == "script"

    def handle_startendtag(self, tag, attrs):
        self.structure.append((tag, tuple(name for name, _ in attrs)))

    def handle_endtag(self, tag):
        self.structure.append(("/" + tag, ()))
        self._in_script = False

    def handle_data(self, data):
        (self.scripts if self._in_script else self.text).append(data)

    def handle_comment(self, data):
        self.structure.append(("!--", ()))


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def _fuzz_inputs(layers: list[str], labels: list[str], run_strings: list[str]):
    """A run of three layers, two designs on the front (recipe and origin labels), a failed trial
    (its error) and the run's own strings, each from the lists given."""
    run = {"run_name": run_strings[0], "profile": run_strings[1], "space": run_strings[2], "model": run_strings[3],
           "strategy": run_strings[4], "preset": "smoke", "imgsz": 64, "seed": 0, "sram_budget_bytes": 1 << 20,
           run_strings[5]: run_strings[6]}
    base = dict(_scores(0.5, 10.0, 400, "base: " + run_strings[7]), remeasured=None, node=None)  # sources differ

    def design(number, bits, map50_95, latency):
        scores = dict(_scores(map50_95, latency, 300 - 50 * number, "designs: " + labels[0]), node=None,
                      map50=labels[2], holdout_map50_95=labels[5])  # a doctored study.db: strings where numbers go
        return {"number": number, "state": "COMPLETE", "pareto": True, "feasible": True, "scores": scores,
                "candidate": {"layers": {name: {"weight_bits": bits if i else 8} for i, name in enumerate(layers)}},
                "error": None, "duration_s": 1.0, "remeasured": None, "origin": labels[1 + number],
                "recipe": labels[3 + number], "node": labels[5]}

    trials = [design(0, 8, 0.48, 8.0), design(1, 4, 0.40, 6.0),
              {"number": 2, "state": "FAIL", "pareto": False, "feasible": None, "scores": None, "candidate": None,
               "error": labels[6], "duration_s": 1.0, "remeasured": None, "origin": labels[0]}]
    return run, base, trials


# markup fragments and any printable character, joined
FRAGMENTS = ("<", ">", "&", '"', "'", "/", "=", "\n", "<!--", "-->", "</script", "<script>", "</b>", "&amp;", "&#x27;",
             " selected", "value='0'", "<img src=x onerror=pwned=1>", "]]>", "\\u003c")
hostile = st.lists(st.sampled_from(FRAGMENTS) | st.characters(blacklist_categories=("Cs", "Cc")),
                   min_size=1, max_size=8).map("".join)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(layers=st.lists(hostile.filter(lambda s: "." not in s), min_size=3, max_size=3, unique=True),
       labels=st.lists(hostile, min_size=7, max_size=7), run_strings=st.lists(hostile, min_size=8, max_size=8))
def test_fuzzed_report_strings_appear_only_as_text(tmp_path_factory, layers, labels, run_strings):
    run_strings[5] = "x-" + run_strings[5]  # a run.json key other than the ones the report reads
    out = tmp_path_factory.mktemp("fuzz")
    html = write_report(out / "hostile", **dict(zip(("run", "base", "trials"),
                                                    _fuzz_inputs(layers, labels, run_strings), strict=True)))["index.html"].read_text()
    benign = write_report(out / "benign", **dict(zip(("run", "base", "trials"), _fuzz_inputs(
        [f"model-{i}-conv" for i in range(3)], [f"label {i}" for i in range(7)],
        [f"run-{i}" for i in range(8)]), strict=True)))["index.html"].read_text()
    page, reference = _parse(html), _parse(benign)
    # the same elements and attributes, in the same order, whatever the strings: none became markup
    assert page.structure == reference.structure
    text = "".join(page.text)
    for s in [run_strings[0], run_strings[6], labels[1], labels[2], labels[3], labels[5], labels[6]]:
        assert s in text, s
    scripts = page.scripts
    assert not any("<!--" in block or "</script" in block.lower() for block in scripts[1:])
    data = json.loads(scripts[-2])  # the page data the script reads: every layer name intact
    assert [r["layer"] for r in data["layers"]["base"]] == layers


def test_a_designs_name_from_hostile_knob_values_is_text_wherever_the_page_shows_it(tmp_path):
    """The name (design_names) is built from a candidate's values: a doctored study.db's strings go
    into it as they are, and every place that titles a design escapes it."""
    from edgesearch.reports.design_names import design_name
    from test_report import BASE, RUN, hand_trials

    def page(value: str, layer: str) -> tuple[_Page, str]:
        trials = hand_trials()
        for number in (1, 2):  # a design of the front, shown in every view
            trials[number]["candidate"]["layers"][layer] = {"kernel_size": value, "scheme": value}
        name = design_name(trials[1]["candidate"])
        html = write_report(tmp_path / value.encode().hex(), run=RUN, base=BASE, trials=trials)["index.html"].read_text()
        return _parse(html), name

    hostile, name = page(STRING_PAYLOADS[0], LAYER_PAYLOADS[1])
    benign, _ = page("7", "model.9.conv")
    assert STRING_PAYLOADS[0] in name and hostile.structure == benign.structure  # no payload became markup
    assert "".join(hostile.text).count(name) >= 3  # the table, a card or the take-away, the choices


# ------------------------------------------------------------------------------ file modes


@pytest.mark.parametrize("existing", [0o600, 0o640, None])
def test_a_rewritten_file_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path, existing):
    import os

    from edgesearch.common.files import write_text_atomically

    path = tmp_path / "file.json"
    if existing is not None:
        path.write_text("old")
        path.chmod(existing)
    previous = os.umask(0o027)
    try:
        atomic_write(path, b"new")
        write_text_atomically(path, "newer")
    finally:
        os.umask(previous)
    assert path.read_text() == "newer"
    assert (path.stat().st_mode & 0o777) == (existing if existing is not None else 0o640)
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]  # no temporary left behind
