"""A run folder's report (from its study), and the page comparing runs of one model on several profiles."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from edgesearch.common.errors import InputError
from edgesearch.reports.compare_report import write_comparison
from edgesearch.reports.design_data import recommendations
from edgesearch.reports.pareto_report import pareto_table, write_report
from edgesearch.search import study as studies
from edgesearch.search.report_inputs import report_extras
from edgesearch.search.run_config import RUN_FILE


def report_data(run_dir: Path, study=None) -> dict:
    """The plain data a report is written from: run, base, trials, extras. run.json is read as plain
    data (the report shows what it holds, and reads a handed-over folder's with care), not as a
    RunConfig: reporting needs no setting to be complete."""
    run = json.loads((run_dir / RUN_FILE).read_text())
    if study is None:
        study = studies.read_study(run_dir)
    base = study.user_attrs.get("base")
    if base is None:
        raise InputError(f"{run_dir} has no scored base model yet; resume the run first")
    remeasured = study.user_attrs.get("remeasured", {})
    base = dict(base, remeasured=remeasured.get("base"))
    trials = [dict(row, remeasured=remeasured.get(str(row["number"]))) for row in studies.trial_rows(study)]
    return {"run": run, "base": base, "trials": trials, "extras": report_extras(run_dir, run, study, base, trials)}


def write_run_report(run_dir: Path, study=None) -> dict:
    data = report_data(run_dir, study)
    files = write_report(run_dir, **data)
    for pick in recommendations(data["run"], data["base"], data["trials"]):  # an accuracy floor leads
        print(f"{pick['title']}: " + (f"#{pick['trial']}" if pick["trial"] is not None else pick["why"])
              + f" ({pick['rule']})")
    print(pareto_table(data["base"], data["trials"]))
    quality = data["extras"]["proxy_quality"]
    if quality["spearman_rho"] is not None:
        moves = quality["moves"]
        print(f"proxy: {quality['screened']} design(s) screened out; the predicted accuracy cost ranks the "
              f"{quality['n']} scored designs with Spearman rho {quality['spearman_rho']:+.2f} against mAP50-95"
              + (f"; the moves' predicted mAP50-95, rho {moves['rho']:+.2f} (n = {moves['n']})" if moves else ""))
    print(f"report: {files['index.html']}")
    return files


def comparison_folder_name(profiles) -> str:
    """`compare-<profile>-<profile>...`: each profile name reduced to letters, digits, '.', '_',
    '+' and '-' (never a path: no separator, no leading dot), the whole at most 200 characters."""
    words = [re.sub(r"[^A-Za-z0-9._+-]+", "_", str(p or "run")).strip("._-") or "run" for p in profiles]
    return ("compare-" + "-".join(words))[:200]


def write_comparison_report(run_dirs: list[Path], out: Path | None) -> Path:
    """Each run's own report, then one page comparing them (runs of one model on several profiles)."""
    entries = [dict(report_data(run_dir), run_dir=run_dir) for run_dir in run_dirs]
    models = {str(e["run"].get("model")) for e in entries}
    if len(models) > 1:  # checked before anything is written
        raise InputError("search report compares runs of one model; these use " + ", ".join(sorted(models)))
    for entry in entries:
        entry["report"] = write_report(entry.pop("run_dir"), **entry)["index.html"]
    if out is None:  # beside the runs, named from their profiles as file-name-safe words (run.json is data)
        parent = Path(os.path.commonpath([str(d.resolve().parent) for d in run_dirs]))
        out = parent / comparison_folder_name(e["run"].get("profile") for e in entries)
    path = write_comparison(out, entries)
    print(f"comparison: {path}")
    return path
