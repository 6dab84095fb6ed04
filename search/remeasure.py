"""The front's final re-measure: its designs and the base timed again, together and interleaved."""

from __future__ import annotations

from edgesearch.search import execution, study as studies

REMEASURE_ATTR = "remeasure"  # {state: done | failed | skipped, why}: what became of the final re-measure


def remeasure_front(study, settings: dict, cpus: int, parcels: dict) -> None:
    """Time the Pareto designs and the base again, together and interleaved: each trial was timed
    alone at its own moment (on a cluster, on its own node), and on a shared machine those moments
    differ by up to 3x. One Ray task, so all of them are timed on one node. Kept in the study
    (`remeasured`) and done again only when the front changed."""
    front = {str(t.number): t.user_attrs[studies.CANDIDATE_ATTR] for t in studies.pareto_trials(study)}
    if not front or set(study.user_attrs.get("remeasured", {})) == {"base", *front}:
        return
    print(f"re-measuring the {len(front)} Pareto design(s) and the base, interleaved")
    try:
        remeasured = execution.remeasure(settings, {"base": None, **front}, cpus, parcels)
    except Exception as error:  # the report still gets written, with the search's own figures, and says why
        why = execution.describe_error(error)
        print(f"re-measuring failed: {why}")
        study.set_user_attr("remeasured", {})  # an earlier re-measure's figures belong to another front
        study.set_user_attr(REMEASURE_ATTR, {"state": "failed", "why": why})
        return
    study.set_user_attr("remeasured", remeasured)
    note = ("the search's own figures came from MetaSchedule-tuned builds; the re-measure builds with the fixed "
            "schedule, so compare re-measured figures with each other, not with the search's"
            if settings.get("tune_trials") else "")
    study.set_user_attr(REMEASURE_ATTR, {"state": "done", "why": note})
