"""What a study leaves behind: the trial table, the best configuration as an experiment file,
Optuna's plots, and the MLflow bookkeeping of trials Tune stopped from outside.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from ray import tune as ray_tune  # noqa: E402

from adastft import plots  # noqa: E402
from adastft.checkpoint import load_checkpoint  # noqa: E402
from adastft.config import Config  # noqa: E402
from adastft.timing import TOTALS, shares  # noqa: E402
from adastft.tracking import Tracker, redact_text  # noqa: E402

from tune.optuna_search import epochs_done  # noqa: E402
from tune.study import StudySettings  # noqa: E402
from tune.trainable import TRIAL_TAG, find_trial_run  # noqa: E402

log = logging.getLogger(__name__)


class TrialRunCallback(ray_tune.Callback):
    """Closes the MLflow run of a trial that Tune ended from outside.

    A trial stopped by the scheduler (pruned) or killed never reaches its own cleanup: the
    driver ends its run as KILLED, tags it ``pruned``, and logs the learned window and kernel
    from the trial's last checkpoint, so every trial in the UI has its tensors and plots.
    """

    def __init__(self, study: StudySettings, max_epochs: int) -> None:
        self.study = study
        self.max_epochs = max_epochs

    def __setstate__(self, state: dict) -> None:
        # ``Tuner.restore`` unpickles the callbacks of the study's start: one begun before
        # StudySettings existed held the same settings as a dict
        if isinstance(state.get("study"), Mapping):
            state = {**state, "study": StudySettings.from_dict(state["study"])}
        self.__dict__.update(state)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        epochs = epochs_done(trial.last_result) or 0
        if epochs < self.max_epochs:
            self._close(trial, "KILLED", {"pruned": "true", "stopped_after_epochs": str(epochs)})

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        # the error file is written in the driver's staging folder before this call, synced later
        local = Path(trial.error_file) if trial.error_file else None
        text = local.read_text() if local is not None and local.is_file() else trial.get_error() or ""
        reason = error_reason(text) or "the trial raised or its process died; see the Tune log"
        self._close(trial, "FAILED", {"failure": reason})

    def _close(self, trial, status: str, tags: dict[str, str]) -> None:
        try:
            run_id = find_trial_run(self.study, trial.trial_id)
            if run_id is None:
                return
            tracker = Tracker(self.study.tracking_uri, self.study.experiment, run_id=run_id)
            tracker.set_tags(tags)
            if status == "KILLED" and trial.checkpoint is not None:
                with trial.checkpoint.as_directory() as ck:
                    _log_frontends(tracker, Path(ck) / "last.pt")
            tracker.end(status)
        except Exception as exc:  # bookkeeping must never stop the study
            log.warning("could not close the MLflow run of trial %s: %s", trial.trial_id, exc)


def error_reason(text: str) -> str:
    """The line of an error's text that names the exception and its message (the last such line
    of a traceback), without terminal colours: the first line of a Ray task error names the actor."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Loss)(\(\w+\))?: ", line)]
    return (named or lines or [""])[-1]


def _log_frontends(tracker: Tracker, checkpoint: Path) -> None:
    if not checkpoint.is_file():
        return
    from adastft.training import build_model, log_frontends

    state = load_checkpoint(checkpoint)
    cfg = Config.from_dict(state["config"])
    model = build_model(cfg, len(state["classes"]))
    model.load_state_dict(state["model"])
    log_frontends(tracker, model, "last", cfg.tracking.tensor_formats)
    tracker.log_figure(
        plots.plot_confusion(state["val_confusion"].numpy(), state["classes"], "validation (last epoch)"),
        "plots/confusion_val_last.png",
    )
    tracker.log_figure(plots.plot_curves(state["history"]), "plots/learning_curves.png")


def trial_table(results, study: optuna.Study, settings: StudySettings, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per trial: Tune id, Optuna number and state, parameters, metrics (and the ``extra``
    ones: what the trials reported to the search), paths, MLflow run (with tracking on)."""
    by_tune_id = {}
    for frozen in study.get_trials(deepcopy=False):
        tune_id = frozen.user_attrs.get("tune_trial_id")
        if tune_id:
            by_tune_id[tune_id] = frozen
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        row = {
            "trial_id": trial_id,
            "path": result.path,
            "checkpoint": result.checkpoint.path if result.checkpoint else metrics.get("checkpoint_path"),
            "error": error_reason(str(result.error)) if result.error else None,
            "epochs": metrics.get("training_iteration"),
            "node": metrics.get("node_ip"),
        }  # where the trial's last epoch ran (Tune fills it in)
        row.update({f"param.{k}": v for k, v in (result.config or {}).items()})
        for key in (
            "val_clip_accuracy",
            "best_val_clip_accuracy",
            "val_segment_accuracy",
            "val_loss",
            "train_loss",
            "test_clip_accuracy",
            "window_change",
            "kernel_change",
            *extra,
        ):
            row[key] = metrics.get(key)
        row.update({key: metrics.get(key) for key in TOTALS})  # where the trial's time went (s)
        frozen = by_tune_id.get(trial_id)
        row["optuna_number"] = frozen.number if frozen else None
        row["optuna_state"] = frozen.state.name if frozen else None
        if settings.parent_run_id:
            row["mlflow_run_id"] = find_trial_run(settings, trial_id)
        rows.append(row)
    return pd.DataFrame(rows)


def best_experiment_yaml(best_cfg: Config, study_name: str, trial_id: str, metric: str, value: float) -> str:
    """The best trial's configuration as a ready-to-run ``adastft/configs/experiment/`` file."""
    name = f"best_{study_name}"
    data = best_cfg.to_dict()
    data["name"] = name
    data["train"]["out_dir"] = "runs/${name}"
    data["train"]["resume"] = True
    for key in ("parent_run_id", "run_id", "run_name"):
        data["tracking"][key] = None
    data["tracking"]["tags"] = {k: v for k, v in data["tracking"]["tags"].items() if k not in (TRIAL_TAG, "study")}
    header = (
        "# @package _global_\n"
        f"# The best trial ({trial_id}) of the search {study_name!r}: {metric} {value:.4f}.\n"
        f"# Copy to <dir>/experiment/{name}.yaml and run: adastft-train --config-dir <dir> experiment={name}\n"
        "# (in a checkout, <dir> may be adastft/configs, and then --config-dir is not needed)\n"
    )
    return redact_text(header + yaml.safe_dump(data, sort_keys=False))  # a file to commit: no credentials


def optuna_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optimisation history, parameter importances and parallel coordinates, as PNG files."""
    from optuna.visualization import matplotlib as ovm

    made = []
    for name, fn in (
        ("optimization_history", ovm.plot_optimization_history),
        ("param_importances", ovm.plot_param_importances),
        ("parallel_coordinate", ovm.plot_parallel_coordinate),
        ("intermediate_values", ovm.plot_intermediate_values),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 5)
            fig.tight_layout()
            path = out_dir / f"optuna_{name}.png"
            fig.savefig(path, dpi=100)
            matplotlib.pyplot.close(fig)
            made.append(path)
        except Exception as exc:  # e.g. importances need two finished trials
            log.info("optuna plot %s skipped: %s", name, exc)
    return made


def log_time(tracker: Tracker, table: pd.DataFrame) -> str:
    """Log each trial's time per phase on the study's parent run (``trial_total_time_<phase>``,
    one step per trial: its Optuna number) and return the study's shares, ``"compute 81%, ..."``."""
    timed = table[[key for key in TOTALS if key in table]].fillna(0.0) if len(table) else pd.DataFrame()
    if timed.empty:
        return shares({})
    steps = table["optuna_number"].fillna(pd.Series(range(len(table)), index=table.index)).astype(int)
    for step, (_, row) in zip(steps, timed.iterrows()):
        tracker.log_metrics({f"trial_{key}": float(value) for key, value in row.items()}, step=int(step))
    return shares(timed.sum().to_dict())


def log_study(tracker: Tracker, table: pd.DataFrame, best_yaml: str | None, study: optuna.Study, out_dir: Path) -> None:
    """Write the summary files to ``out_dir`` and log them on the study's parent run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out_dir / "trials.parquet", index=False)
    table.to_csv(out_dir / "trials.csv", index=False)
    study.trials_dataframe().to_csv(out_dir / "optuna_trials.csv", index=False)
    if best_yaml:
        (out_dir / "best_experiment.yaml").write_text(best_yaml)
    optuna_plots(study, out_dir)
    tracker.log_artifacts(out_dir, "study")
