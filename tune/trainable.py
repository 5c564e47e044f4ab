"""The Tune trial: merge the sampled values into the config and call ``adastft.training.train``.

Nothing here trains; it adapts. ``run_trial`` is one process; ``run_ddp_trial`` runs the same
``train`` on N Ray Train workers (``TorchTrainer`` inside the trial, the pattern Ray 2.60
documents), which find their process group already initialised.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from ray import tune as ray_tune

from adastft.checkpoint import load_checkpoint, pid_alive
from adastft.config import Config
from adastft.tracking import experiment_id
from adastft.training import NonFiniteLoss, train
from tune import checkpoints
from tune.report import Objective, objective_for
from tune.study import StudySettings
from tune.study_dir import storage_filesystem

log = logging.getLogger(__name__)

TRIAL_TAG = "tune_trial_id"


class Watchdog:
    """Ends this process when no training step completes for ``timeout_s`` seconds.

    A stuck collective or a worker that never starts would otherwise hang the whole study; the
    process exits with a message (and a note in ``note_dir``), Tune sees the trial fail and
    retries it from its last checkpoint or records it as failed.
    """

    def __init__(
        self, timeout_s: float, label: str, note_dir: Path | None, beat_file: Path | None = None, watch: bool = True
    ) -> None:
        self.timeout_s = timeout_s
        self.label = label
        self.note_dir = note_dir
        # DDP: the workers beat into a file that the trial's driver process watches, which
        # also catches workers that never start.
        self.beat_file = beat_file
        self._last = time.monotonic()
        self._written = 0.0
        self._stop = threading.Event()
        if timeout_s > 0 and watch:
            threading.Thread(target=self._watch, name="adastft-watchdog", daemon=True).start()

    def beat(self) -> None:
        self._last = time.monotonic()
        if self.beat_file is not None and self._last - self._written > 1.0:
            self.beat_file.parent.mkdir(parents=True, exist_ok=True)
            self.beat_file.touch()
            self._written = self._last

    def _idle(self) -> float:
        idle = time.monotonic() - self._last
        if self.beat_file is not None and self.beat_file.exists():
            idle = min(idle, time.time() - self.beat_file.stat().st_mtime)
        return idle

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout_s / 4)):
            idle = self._idle()
            if idle > self.timeout_s:
                message = (
                    f"{self.label}: no training progress for {idle:.0f} s (limit {self.timeout_s:.0f} s; "
                    "a stuck collective or worker start?): stopping it"
                )
                print(message, file=sys.stderr, flush=True)
                if self.note_dir is not None:
                    self.note_dir.mkdir(parents=True, exist_ok=True)
                    (self.note_dir / f"{self.label}.txt").write_text(message + "\n")
                os._exit(75)


class TuneReporter:
    """The library's Reporter, speaking to Tune: metrics and one checkpoint folder every epoch."""

    persists_checkpoints = True  # Tune copies each reported checkpoint to its storage

    def __init__(self, watchdog: Watchdog, objective: Objective | None = None) -> None:
        self.watchdog = watchdog
        self.objective = objective  # --report best|ema: the value the scheduler and Optuna decide on

    def report(self, metrics: Mapping[str, float], checkpoint_dir: Path | None) -> None:
        self.watchdog.beat()
        metrics = self.objective.add(metrics) if self.objective is not None else metrics
        with tempfile.TemporaryDirectory(prefix="adastft-ckpt-") as tmp:
            ray_tune.report(
                _with_checkpoint_metrics(metrics, checkpoints.stage(checkpoint_dir, Path(tmp), metrics)),
                checkpoint=ray_tune.Checkpoint.from_directory(tmp),
            )
        self.watchdog.beat()

    def heartbeat(self) -> None:
        self.watchdog.beat()


def _with_checkpoint_metrics(metrics: Mapping[str, float], staged_bytes: int) -> dict[str, float]:
    """The epoch's metrics plus how Tune ranks its checkpoint and the bytes handed to storage."""
    return {
        **metrics,
        checkpoints.SCORE: checkpoints.checkpoint_score(metrics),
        "checkpoint_bytes": float(staged_bytes),
    }


def trial_config(params: Mapping[str, Any], base: Config, study: StudySettings, trial_id: str, out_dir: Path) -> Config:
    """The trial's resolved config: base + sampled values (validated, once) + where to write and
    log (set as they are: plain values the driver made)."""
    cfg = base.merged(params)
    return cfg.replaced(
        {
            **_writing_to(out_dir),
            "tracking.parent_run_id": study.parent_run_id,
            "tracking.run_name": f"{study.name}-{trial_id}",
            "tracking.run_id": find_trial_run(study, trial_id) if cfg.tracking.enabled else None,
            "tracking.tags": {**cfg.tracking.tags, TRIAL_TAG: trial_id, "study": study.name},
        }
    )


def _writing_to(out_dir: Path) -> dict[str, Any]:
    """A trial writes to ``out_dir`` and resumes from what a retry restored there."""
    return {"train.out_dir": str(out_dir), "train.resume": True}


def find_trial_run(study: StudySettings, trial_id: str) -> str | None:
    """The MLflow run an earlier attempt of this trial made, so a retry continues it."""
    if not study.parent_run_id:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study.tracking_uri)
    found = experiment_id(client, study.tracking_uri, study.experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found],
        filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{study.parent_run_id}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


# ---- the trials' working folders ----------------------------------------------------------------
#
# A trial writes its checkpoints into a folder of the node's temp dir, and Tune copies each
# reported one into its storage. The folder is only a working copy: a retry restores from Tune.
# Folders are per study (its name and a random id kept in the study's state file, so that two
# studies of the same name never share one), per trial, and carry the pid of the process that
# owns them. A trial that starts removes the folders of its study on its node whose owner is
# dead or is its own process (a reused one: the trial before it has ended); the driver removes
# the study's folders on every node when the study ends. A trial stopped by the scheduler, or a
# killed one, cannot be trusted to clean up after itself.

OWNER_FILE = "owner.pid"
WORK_DIRS = "adastft-trials"  # in the node's temp dir, one folder per study inside


def work_root(work_key: str) -> Path:
    """This node's folder for the working copies of the trials of the study ``work_key`` names
    (:attr:`StudySettings.work_key`)."""
    return Path(tempfile.gettempdir()) / WORK_DIRS / work_key


def claim_work_dir(work_key: str, name: str) -> Path:
    """Create (or take over) the working folder ``name`` of this study, after sweeping stale ones."""
    root = work_root(work_key)
    out_dir = root / name
    if root.is_dir():
        for other in root.iterdir():
            if other == out_dir or not other.is_dir():
                continue
            try:
                owner = int((other / OWNER_FILE).read_text())
            except (OSError, ValueError):
                continue  # being created right now, or not ours
            if owner == os.getpid() or not pid_alive(owner):
                shutil.rmtree(other, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / OWNER_FILE).write_text(str(os.getpid()))
    return out_dir


def _nonfinite_marker(study: StudySettings, trial_id: str) -> Path:
    return Path(study.notes_dir) / f"{trial_id}.nonfinite"


def run_trial(params: dict, base: Config, study: StudySettings, train_fn=train) -> None:
    """One Tune trial in one process (the function trainable). ``train_fn``: for benchmarks."""
    trial_id = ray_tune.get_context().get_trial_id()
    marker = _nonfinite_marker(study, trial_id)
    if marker.exists():  # a retry cannot fix a diverging configuration: fail again at once
        raise NonFiniteLoss(marker.read_text().strip())
    out_dir = claim_work_dir(study.work_key, trial_id)
    try:
        checkpoints.restore(ray_tune.get_checkpoint(), out_dir)
        cfg = trial_config(params, base, study, trial_id, out_dir)
        last = out_dir / "last.pt"
        if last.is_file() and load_checkpoint(last)["epoch"] >= cfg.train.epochs - 1:
            # Tune holds its final report, made after the test split and the artifacts: the driver
            # died before recording the trial as finished. Resuming it must not do them again.
            return
        watchdog = Watchdog(study.stall_timeout_s, trial_id, Path(study.notes_dir))
        try:
            train_fn(cfg, TuneReporter(watchdog, objective_for(study, out_dir)))
        except NonFiniteLoss as exc:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(str(exc))
            raise
        finally:
            watchdog.stop()
    finally:
        # Tune holds every reported checkpoint and a retry restores from it: the working copy
        # (hundreds of MB per trial) goes, or a study fills the disk's temp folder.
        shutil.rmtree(out_dir, ignore_errors=True)


# ---- DDP trials --------------------------------------------------------------------------------


class TrainReporter:
    """Reporter for a Ray Train worker: every rank reports, rank 0 attaches the checkpoint."""

    persists_checkpoints = True  # Ray Train copies each reported checkpoint to its storage

    def __init__(self, watchdog: Watchdog, rank: int, objective: Objective | None = None) -> None:
        self.watchdog = watchdog
        self.rank = rank
        self.objective = objective

    def report(self, metrics: Mapping[str, float], checkpoint_dir: Path | None) -> None:
        from ray import train as ray_train

        self.watchdog.beat()
        metrics = self.objective.add(metrics) if self.objective is not None else metrics
        if self.rank == 0:
            with tempfile.TemporaryDirectory(prefix="adastft-ckpt-") as tmp:
                staged = checkpoints.stage(checkpoint_dir, Path(tmp), metrics)
                ray_train.report(
                    _with_checkpoint_metrics(metrics, staged), checkpoint=ray_train.Checkpoint.from_directory(tmp)
                )
        else:
            ray_train.report(_with_checkpoint_metrics(metrics, 0))
        self.watchdog.beat()

    def heartbeat(self) -> None:
        self.watchdog.beat()


def _ddp_worker(loop_config: dict) -> None:
    """One rank of a DDP trial. ``loop_config``: ``cfg``, the trial's config (validated in the
    trial's process: only the working folder changes here), ``study`` and ``trial_id``."""
    from ray import train as ray_train

    rank = ray_train.get_context().get_world_rank()
    cfg, study, trial_id = loop_config["cfg"], loop_config["study"], loop_config["trial_id"]
    out_dir = claim_work_dir(study.work_key, f"{trial_id}-rank{rank}")
    checkpoints.restore(ray_train.get_checkpoint(), out_dir)
    cfg = cfg.replaced(_writing_to(out_dir))
    beat_file = Path(study.notes_dir) / f"{trial_id}.beat" if rank == 0 else None
    watchdog = Watchdog(study.stall_timeout_s, f"{trial_id}-rank{rank}", Path(study.notes_dir), beat_file)
    try:
        train(cfg, TrainReporter(watchdog, rank, objective_for(study, out_dir)))
    finally:
        watchdog.stop()
        shutil.rmtree(out_dir, ignore_errors=True)  # Ray Train holds the reported checkpoints


def run_ddp_trial(params: dict, base: Config, study: StudySettings) -> None:
    """One Tune trial as a DDP job: a TorchTrainer with ``study.workers`` workers."""
    from ray import train as ray_train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = ray_tune.get_context().get_trial_id()
    cfg = trial_config(params, base, study, trial_id, Path(tempfile.gettempdir()))
    use_gpu = study.gpus_per_worker > 0
    # The trial's own process (this driver) holds 0.01 CPU; the workers leave room for it.
    resources = {"CPU": study.cpus_per_worker * 0.99, **study.custom_resources}
    if use_gpu:
        resources["GPU"] = study.gpus_per_worker
    storage_path, storage_fs = storage_filesystem(study.storage_path)
    trainer = TorchTrainer(
        _ddp_worker,
        train_loop_config={"cfg": cfg, "study": study, "trial_id": trial_id},
        scaling_config=ray_train.ScalingConfig(
            num_workers=study.workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray_train.RunConfig(
            name=f"ddp-{trial_id}",  # the same name on a retry: Ray Train restores its own checkpoint
            storage_path=f"{storage_path}/{study.name}",  # inside the study's folder
            storage_filesystem=storage_fs,
            callbacks=[TuneReportCallback()],
            failure_config=ray_train.FailureConfig(max_failures=study.max_failures),
            # as for one-process trials: the best epoch's checkpoint and the latest
            checkpoint_config=ray_train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=checkpoints.SCORE, checkpoint_score_order="max"
            ),
        ),
    )
    notes = Path(study.notes_dir)
    watchdog = Watchdog(study.stall_timeout_s, trial_id, notes, notes / f"{trial_id}.beat")
    try:
        trainer.fit()
    finally:
        watchdog.stop()
