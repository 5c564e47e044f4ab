"""What a trial reports to the scheduler and to Optuna: ``--report last|best|ema``.

A single epoch's validation accuracy swings from one epoch to the next, and ASHA and TPE decide on
the number they are given. ``last`` gives them the epoch's value, ``best`` the best so far, ``ema``
an exponential moving average (weight :data:`EMA_WEIGHT` on the newest epoch). The value goes to
Tune under its own name (:func:`reported_key`: ``ema_val_clip_accuracy``); the epoch's raw value is
still reported under the metric's name, and MLflow logs the raw curve as always.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

if TYPE_CHECKING:
    from tune.study import StudySettings

REPORT_MODES = ("last", "best", "ema")
DEFAULT_REPORT = "ema"  # chosen by rank fidelity (bench/bench_search.py --fidelity; docs/search.md)
EMA_WEIGHT = 0.5  # on the newest epoch: an epoch's weight halves with each epoch after it


def reported_key(metric: str, report: str) -> str:
    """The name under which a trial reports what the scheduler and Optuna decide on."""
    if report not in REPORT_MODES:
        raise ValueError(f"report must be one of {', '.join(REPORT_MODES)}, got {report!r}")
    return metric if report == "last" else f"{report}_{metric}"


def reported_curve(values: Iterable[float], mode: str, report: str) -> list[float]:
    """What a trial whose raw per-epoch values are ``values`` reports, epoch by epoch."""
    objective = Objective("m", mode, report)
    return [objective.update(v) for v in values]


class Objective:
    """The reported value of one trial, updated with each epoch's raw value of ``metric``.

    ``mode``: ``max`` or ``min`` (what ``best`` keeps). A retried trial is seeded with the
    history of the checkpoint it resumes from (:meth:`seed`), so its reports continue the curve.
    """

    def __init__(self, metric: str, mode: str, report: str, weight: float = EMA_WEIGHT) -> None:
        self.metric, self.mode, self.report = metric, mode, report
        self.key = reported_key(metric, report)
        self.weight = weight
        self.value: float | None = None

    def update(self, raw: float) -> float:
        raw = float(raw)
        if self.value is None or self.report == "last" or raw != raw:  # a NaN is passed on as it is
            self.value = raw
        elif self.report == "best":
            self.value = max(self.value, raw) if self.mode == "max" else min(self.value, raw)
        else:
            self.value = self.weight * raw + (1 - self.weight) * self.value
        return self.value

    def seed(self, history: Iterable[Mapping[str, float]]) -> "Objective":
        for row in history:
            if self.metric in row:
                self.update(row[self.metric])
        return self

    def add(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """``metrics`` plus the reported value (for ``last``, the metric itself, unchanged)."""
        if self.metric not in metrics or self.key == self.metric:
            return dict(metrics)
        return {**metrics, self.key: self.update(metrics[self.metric])}


def objective_for(study: StudySettings, out_dir: Path) -> Objective | None:
    """The trial's objective (``None`` for ``last``: nothing to add), seeded from the history of
    the checkpoint ``out_dir`` holds, when a retry restored one there."""
    if study.report == "last":
        return None
    objective = Objective(study.metric, study.mode, study.report)
    last = out_dir / "last.pt"
    if last.is_file():
        from adastft.checkpoint import load_checkpoint

        objective.seed(load_checkpoint(last)["history"])
    return objective
