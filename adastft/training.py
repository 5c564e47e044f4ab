"""``train(cfg) -> metrics``: the one training path for the CLI, the tests and every Tune trial.

Per epoch: train on random crops, validate by voting over each clip's parts, log to MLflow (rank
0), write ``last.pt`` (and ``best.pt`` when validation clip accuracy improves) atomically and
report to the caller's reporter. At the end the test split is evaluated with the best checkpoint.
The same function runs as one process or as N DDP ranks.

The steps live in :mod:`adastft.recipe` (setup, one epoch, finish), evaluation in
:mod:`adastft.evaluation`, what a config builds in :mod:`adastft.builders` and what the run
records in MLflow in :mod:`adastft.run_tracking`; this module is their public face.

Example::

    metrics = train({"data": {"source": "synthetic"}, "train": {"epochs": 2}})
    metrics["test_clip_accuracy"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol

from adastft import distributed, recipe, timing
from adastft.builders import build_augment, build_mixup, build_model, build_optimizer
from adastft.config import Config
from adastft.evaluation import EvalResult, evaluate
from adastft.recipe import NonFiniteLoss, seed_everything
from adastft.run_tracking import log_frontends, samples_its_node

__all__ = [
    "EPOCH_METRICS",
    "EvalResult",
    "NonFiniteLoss",
    "NullReporter",
    "Reporter",
    "build_augment",
    "build_mixup",
    "build_model",
    "build_optimizer",
    "evaluate",
    "log_frontends",
    "samples_its_node",
    "seed_everything",
    "train",
]


class Reporter(Protocol):
    """What the caller (the CLI, a test, a Tune trial) hears each epoch.

    A reporter whose class sets ``persists_checkpoints = True`` keeps a copy of every checkpoint
    it is handed (Tune does): the run's own files are then written without fsync.
    """

    def report(self, metrics: Mapping[str, float], checkpoint_dir: Path | None) -> None: ...

    def heartbeat(self) -> None:
        """Called after every training step: the caller's watchdog sees progress."""


class NullReporter:
    def report(self, metrics: Mapping[str, float], checkpoint_dir: Path | None) -> None:
        pass

    def heartbeat(self) -> None:
        pass


# What train() reports every epoch, besides "epoch": a search's metric must be one of these
# (tests/reliability/test_search_checks.py compares them with a real run's reports).
EPOCH_METRICS = (
    "train_loss",
    "val_loss",
    "val_clip_accuracy",
    "val_segment_accuracy",
    "lr",
    "window_change",
    "kernel_change",
    "epoch_seconds",
    "best_val_clip_accuracy",
    "best_epoch",
    *(timing.metric(p) for p in timing.PHASES),
    *timing.TOTALS,
)


def train(cfg: Config | Mapping[str, Any], reporter: Reporter | None = None) -> dict[str, float]:
    """Train the classifier a config describes and return its final metrics.

    ``cfg`` is a :class:`Config` or a mapping (validated here). Returns the last epoch's metrics
    plus ``best_val_clip_accuracy`` and the test split's metrics (``test_*``), evaluated with the
    best checkpoint. Raises :class:`NonFiniteLoss` when the loss turns NaN or infinite.
    """
    cfg = cfg if isinstance(cfg, Config) else Config.from_dict(cfg)
    ctx = distributed.setup(cfg.train.device)
    try:
        return recipe.run(cfg, reporter or NullReporter(), ctx)
    finally:
        ctx.close()
