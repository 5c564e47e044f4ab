"""Ray's OptunaSearch, fixed so that TPE learns from early-stopped trials correctly.

Ray 2.60's ``OptunaSearch.on_trial_complete`` tells Optuna that a trial stopped early by the
scheduler (ASHA, median stopping) is COMPLETE with its truncated score, so TPE treats a 1-epoch
score as a final one. Tune gives the searcher no flag for "stopped by the scheduler"; the trial's
epoch count does: a trial that ended before its last epoch, without an error, was pruned. It is
told to Optuna as PRUNED, with every intermediate value including the one that stopped it (Tune
does not pass that result to ``on_trial_result``).

It also survives a driver killed with SIGKILL: the Optuna database can then be ahead of Tune's
last snapshot, and the stock searcher crashes on restore trying to update a finished trial.
Trials already finished in the database are left alone, and trials the database shows RUNNING
that Tune never heard of are marked FAIL.
"""

from __future__ import annotations

import logging
import math

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)


def epochs_done(result: dict | None) -> int | None:
    """Epochs the trial trained: the training function's own count (``epoch``, 0-based) when it
    reports one, else Tune's report count, which a retry that resumed from a checkpoint file
    written after the last report can leave one short."""
    if not result:
        return None
    if "epoch" in result:
        return int(result["epoch"]) + 1
    return result.get("training_iteration")


class PrunedAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_epochs: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs

    def _finished_in_study(self, ot_trial) -> bool:
        return self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished()

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:  # lets the study's table join Optuna's trials to Tune's
            ot_trial.set_user_attr("tune_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or self._finished_in_study(ot_trial):
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or self._finished_in_study(ot_trial):
            self._completed_trials.add(trial_id)
            return
        epochs = epochs_done(result)
        pruned = (
            not error
            and result is not None
            and self.metric in result
            and epochs is not None
            and epochs < self._max_epochs
        )
        if not pruned:
            super().on_trial_complete(trial_id, result, error)
            return
        if not math.isfinite(float(result[self.metric])):
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return
        step = result.get("training_iteration", epochs)
        if step not in ot_trial._cached_frozen_trial.intermediate_values:
            ot_trial.report(result[self.metric], step)  # the value the scheduler stopped it on
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)  # its value becomes the last intermediate one
        self._completed_trials.add(trial_id)
        log.debug("trial %s pruned after %d epochs", trial_id, epochs)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        known = {t._trial_id for t in self._ot_trials.values()}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen._trial_id not in known:  # asked for just before a hard kill; Tune never ran it
                self._ot_study.tell(frozen.number, state=TrialState.FAIL)
