"""What a training run records in MLflow besides each epoch's metrics: the run itself (tags,
params, a resumed run's redone epochs), the system metrics of every machine of a DDP run, the
front ends' tensors and plots, the results at the end, and the run's last timing row.

Rank 0 opens the run; every other rank holds a :class:`NullTracker` (``tracker.active`` is False).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from torch import nn

from adastft import distributed, plots
from adastft.config import Config
from adastft.model import AdaSTFTClassifier
from adastft.timing import PhaseTimer, totals
from adastft.tracking import (
    RunTracker,
    Tracker,
    default_tracking_uri,
    start_system_metrics,
    stop_system_metrics,
    ui_link,
)

log = logging.getLogger(__name__)

REDONE_TAG = "redone_epochs"


def tracking_uri(cfg: Config) -> str:
    return cfg.tracking.uri or default_tracking_uri(Path.cwd())


def open_run(cfg: Config, classes: Sequence[str], train_clips: int, run_id: str | None, start_epoch: int) -> Tracker:
    """The run's MLflow run: new, or ``run_id`` resumed at ``start_epoch``; its params once, at the start."""
    tags = {
        "experiment": cfg.name,
        "learn_window": str(cfg.stft.learn_window),
        "learn_kernel": str(cfg.stft.learn_kernel),
        "learn_win_length": str(cfg.stft.learn_win_length),
        "n_frontends": str(cfg.model.n_frontends),
        **cfg.tracking.tags,
    }
    tracker = Tracker(
        tracking_uri(cfg),
        cfg.tracking.experiment,
        run_name=cfg.tracking.run_name or cfg.name,
        tags=tags,
        parent_run_id=cfg.tracking.parent_run_id,
        run_id=run_id,
        system_metrics_interval=cfg.tracking.system_metrics_interval,
    )
    if run_id is not None:
        _note_redone_epochs(tracker, start_epoch)
    if not start_epoch:  # one batch: each is a round trip to the store
        tracker.log_params({**cfg.to_dict(), "data.classes": ",".join(classes), "data.train_clips": train_clips})
    return tracker


def _note_redone_epochs(tracker: Tracker, start_epoch: int) -> None:
    """A resumed run that logged epochs past its checkpoint (it died between logging an epoch and
    saving it, or its caller restores an older checkpoint) trains them again: MLflow cannot take
    points back, so both are kept and the run's ``redone_epochs`` tag lists the steps (0-based)."""
    redone = {s for s in tracker.metric_steps("val_loss") if s >= start_epoch}
    if not redone:
        return
    earlier = tracker.tag(REDONE_TAG)
    steps = sorted(redone | {int(s) for s in (earlier or "").split(",") if s.strip().isdigit()})
    tracker.set_tags({REDONE_TAG: ",".join(map(str, steps))})
    log.warning(
        "MLflow run %s already has epochs %s past the checkpoint it resumes from (step %d): they are "
        "trained and logged again; both points stay (tag %s)",
        tracker.run_id,
        ",".join(str(s + 1) for s in sorted(redone)),
        start_epoch,
        REDONE_TAG,
    )


def end_run(tracker: RunTracker, node_sampler, status: str) -> None:
    """Stop this machine's sampler (if it samples one other than rank 0's) and end the run as ``status``."""
    stop_system_metrics(node_sampler, tracker.run_id, timeout=5.0)
    tracker.end(status)
    if tracker.run_id is not None:
        log.info("MLflow run %s: %s", tracker.run_id, ui_link(tracker.tracking_uri, tracker.experiment_id))


def samples_its_node(hosts: list[str], rank: int) -> bool:
    """Whether ``rank`` samples its machine's system metrics into the run: rank 0's tracker
    samples its own; elsewhere the first rank on each other machine does."""
    return rank > 0 and hosts.index(hosts[rank]) == rank and hosts[rank] != hosts[0]


def sample_other_node(cfg: Config, ctx: distributed.DistContext, tracker: RunTracker):
    """DDP over several machines: every machine's system metrics go into rank 0's run, each under
    its own host name. A collective: every rank calls it."""
    if not ctx.distributed or not cfg.tracking.enabled or not cfg.tracking.system_metrics_interval:
        return None
    ranks = ctx.gather((socket.gethostname(), tracker.run_id))
    if not samples_its_node([host for host, _ in ranks], ctx.rank):
        return None
    return start_system_metrics(ranks[0][1], tracking_uri(cfg), cfg.tracking.system_metrics_interval, resume=True)


def log_frontends(
    tracker, model: AdaSTFTClassifier, which: str, formats: Sequence[str], plots_too: bool = True
) -> None:
    """Log each front end's window and kernel as ``tensors/[frontendI_]{window,kernel}_<which>``
    in ``formats`` (``npy``, ``pt``), with PCEN its per-band values (in range) as
    ``tensors/[frontendI_]pcen_{smoothing,alpha,delta,root}_<which>``, and, with ``plots_too``, its
    window, kernel-change (and PCEN) plots as ``plots/[frontendI_]*.png``."""
    if not tracker.active:
        return
    fronts = model.frontends()
    for i, front in enumerate(fronts):
        prefix = f"frontend{i}_" if len(fronts) > 1 else ""
        window = front.effective_window().detach()  # with a learned length: the taper times its correction
        tracker.log_tensor(f"{prefix}window_{which}", window, formats=formats)
        tracker.log_tensor(f"{prefix}kernel_{which}", front.kernel, formats=formats)
        if front.log_win_scale is not None:
            tracker.log_tensor(f"{prefix}win_length_{which}", front.current_win_length().detach(), formats=formats)
        pcen = front.pcen.values() if front.pcen is not None else {}
        for name, values in pcen.items():
            tracker.log_tensor(f"{prefix}pcen_{name}_{which}", values, formats=formats)
        if plots_too:
            length = (
                f", length {float(front.current_win_length().detach()):.1f}" if front.log_win_scale is not None else ""
            )
            tracker.log_figure(
                plots.plot_window(window, front.initial_window, title=f"{prefix}window ({which}{length})"),
                f"plots/{prefix}window.png",
            )
            tracker.log_figure(
                plots.plot_kernel_change(front.kernel, front.initial_kernel, title=f"{prefix}kernel change ({which})"),
                f"plots/{prefix}kernel_change.png",
            )
            if pcen:
                tracker.log_figure(
                    plots.plot_pcen(pcen, front.pcen.initial, title=f"{prefix}PCEN ({which})"),
                    f"plots/{prefix}pcen.png",
                )


def log_results(
    tracker: Tracker,
    cfg: Config,
    model: nn.Module,
    classes: Sequence[str],
    history: list[dict],
    test_confusion: np.ndarray,
    best_val_confusion: np.ndarray | None,
    best_model: Path,
) -> None:
    """The end of a run (``model`` holding the best weights): its front ends, the confusion
    matrices, the learning curves, the config, the best model's checkpoint and, with
    ``tracking.log_model``, the model itself."""
    log_frontends(tracker, model, "best", cfg.tracking.tensor_formats)
    if best_val_confusion is not None:
        tracker.log_figure(
            plots.plot_confusion(best_val_confusion, classes, "validation (best epoch)"), "plots/confusion_val_best.png"
        )
    tracker.log_figure(
        plots.plot_confusion(test_confusion, classes, "test (best checkpoint)"), "plots/confusion_test.png"
    )
    tracker.log_figure(plots.plot_curves(history), "plots/learning_curves.png")
    tracker.log_dict(cfg.to_dict(), "config.yaml")
    if best_model.exists():
        tracker.log_artifact(best_model, "checkpoint")
    if cfg.tracking.log_model:
        device = next(model.parameters()).device
        uri = tracker.log_model(model.cpu(), name="best_model")
        if uri:
            tracker.set_tags({"best_model_uri": uri})
        model.to(device)


def last_row(timer: PhaseTimer, tracker, history: list[Mapping[str, float]]) -> dict[str, float]:
    """The run's totals, including the time after the last epoch's row (its checkpoint and
    tracking, the test split, the artifacts), which MLflow gets as one more row."""
    tail = timer.drain()
    tracker.log_metrics(tail, step=len(history))
    return totals([*history, tail])
