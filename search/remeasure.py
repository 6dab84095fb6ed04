"""The front's final re-measure: its designs and the base timed again, together and interleaved."""

from __future__ import annotations

from edgesearch.runners.hardware.build_cache import KEPT_ORIGIN
from edgesearch.search import execution, study as studies

REMEASURE_ATTR = "remeasure"  # {state: done | failed | skipped, why}: what became of the final re-measure


def remeasure_front(study, settings: dict, cpus: int, parcels: dict) -> None:
    """Time the Pareto designs and the base again, together and interleaved: each trial was timed
    alone at its own moment (on a cluster, on its own node), and on a shared machine those moments
    differ by up to 3x. One Ray task, so all of them are timed on one node. Kept in the study
    (`remeasured`) and done again only when the front changed."""
    front_trials = studies.pareto_trials(study)
    front = {str(t.number): t.user_attrs[studies.CANDIDATE_ATTR] for t in front_trials}
    if not front or set(study.user_attrs.get("remeasured", {})) == {"base", *front}:
        return
    build_keys = {str(t.number): t.user_attrs[studies.SCORE_ATTR].get("build_key") for t in front_trials}
    build_keys["base"] = study.user_attrs["base"].get("build_key")
    print(f"re-measuring the {len(front)} Pareto design(s) and the base, interleaved")
    try:
        remeasured = execution.remeasure(settings, {"base": None, **front}, cpus, parcels, build_keys)
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
    study.set_user_attr(REMEASURE_ATTR, {"state": "done", "why": note, "from_libraries": kept_count(remeasured),
                                         "designs": len(remeasured)})


def kept_count(remeasured: dict) -> int:
    """How many re-measured designs were timed from the library their trial built (none rebuilt)."""
    return sum(1 for figures in remeasured.values() if figures.get("build_origin") == KEPT_ORIGIN)
