"""Children started from their parent's fine-tuned weights (issue 18, item 4).

A design that changes only weight knobs (bit-widths, schemes, granularity, sparsity, activation
precision) of a scored design has the same modules and shapes, so it can start from that design's
fine-tuned weights (kept on the node that trained them: runners/accuracy/inherited.py) and adapt in
`child_steps` instead of the full fine-tune. The parent is the scored design with the same
structure whose knobs differ in the fewest layers, at most MAX_CHANGED_SHARE of them (a design that
changes most layers is no child; it starts from the base). Parents are designs trained from the base
(no chains: every child's record is the same, `finetune_iters` inherited + `child_steps`), with the
full schedule, not recovered.

Recipes and the fp32 control are reference points: they always start from the base. So that
children are compared with a control of the same training record, the control, once scored, is
continued the same way (`child_steps` from its own weights: CONTINUED_ATTR names it).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from edgesearch.search import study as studies
from edgesearch.spaces.candidate import Candidate

MAX_CHANGED_SHARE = 0.5  # a child changes at most half of the space's layers from its parent
CHILD_SHARE = 3  # default child_steps: a third of the fine-tune (as the rung's)


def default_child_steps(finetune_iters: int) -> int:
    return finetune_iters // CHILD_SHARE


def parent_settings(study: optuna.Study, trial: Trial, candidate: dict, settings: dict, space_layers: int) -> dict:
    """The trial's settings: its weights kept under its number (for its children), and started from
    its parent's where it has one."""
    if not settings.get("kept_weights"):
        return settings
    settings = dict(settings, keep_as=str(trial.number))
    if not settings.get("child_iters"):
        return settings
    parent = _queued_parent(study, trial) or choose_parent(study, trial, candidate, space_layers)
    if parent is None:
        return settings
    return dict(settings, parent=str(parent.number),
                parent_steps=parent.user_attrs[studies.SCORE_ATTR]["training"]["steps_from_base"])


def choose_parent(study: optuna.Study, trial: Trial, candidate: dict, space_layers: int) -> FrozenTrial | None:
    """The scored design this one starts from (module docstring), or None: it starts from the base."""
    if trial.user_attrs.get(studies.RECIPE_ATTR) or studies.is_recovered(trial):
        return None
    design = Candidate.from_json(candidate)
    changed_at_most = int(MAX_CHANGED_SHARE * space_layers)
    best: tuple | None = None
    for parent in studies.searched_trials(study, states=(TrialState.COMPLETE,)):
        if not _can_be_parent(parent):
            continue
        other = Candidate.from_json(parent.user_attrs[studies.CANDIDATE_ATTR])
        if other.structure() != design.structure():
            continue
        changed = len(design.changed_layers(other))
        rank = (changed, -parent.user_attrs[studies.SCORE_ATTR]["map50_95"], parent.number)
        if changed <= changed_at_most and (best is None or rank < best[0]):
            best = (rank, parent)
    return best[1] if best else None


def continue_control(study: optuna.Study, control: FrozenTrial) -> None:
    """Queue the fp32 control's continuation (module docstring), once per run."""
    if any(t.user_attrs.get(studies.CONTINUED_ATTR) is not None for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial({}, user_attrs={
        studies.CANDIDATE_ATTR: control.user_attrs[studies.CANDIDATE_ATTR],
        studies.RECIPE_ATTR: control.user_attrs[studies.RECIPE_ATTR], studies.CONTINUED_ATTR: control.number,
        studies.ORIGIN_ATTR: f"the fp32 control #{control.number} continued from its own weights, as children "
                             "continue from their parent's (the reference for their accuracy floor)"})


def _queued_parent(study: optuna.Study, trial: Trial) -> FrozenTrial | None:
    """The parent a trial was queued with (the control's continuation), if it can still be one."""
    number = trial.user_attrs.get(studies.CONTINUED_ATTR)
    if number is None:
        return None
    parent = study.get_trials(deepcopy=False)[number]
    return parent if parent.state == TrialState.COMPLETE and _can_be_parent(parent) else None


def _can_be_parent(trial: FrozenTrial) -> bool:
    """Trained from the base, with the whole schedule and no recovery (its task kept its weights where
    it ran: a child that does not find them there trains from the base)."""
    training = (trial.user_attrs.get(studies.SCORE_ATTR) or {}).get("training") or {}
    return (bool(training) and trial.user_attrs.get(studies.CANDIDATE_ATTR) is not None
            and training.get("start") == "base" and not training.get("stopped_early")
            and not training.get("recovery_steps") and training.get("steps_from_base", 0) > 0
            and not studies.is_recovered(trial))
