"""A trial's checkpoints in Tune's storage: one full state per epoch, the best found again,
and what a study keeps when trials end.

Each epoch a trial hands Tune one folder: ``last.pt`` (model, optimiser, scheduler, epoch: what a
retry resumes from) and ``epoch.json`` (``{"epoch": e, "best_epoch": b}``). An epoch that improves
is its own best, so the best weights are never uploaded a second time: Tune's ``CheckpointConfig``
(``num_to_keep=1``, scored by :data:`SCORE`) keeps the best epoch's folder and the latest one. A
retry restores the latest, and fetches the best (``best.pt``, for the test split at the end) from
its sibling folder in storage, found by ``epoch.json``.

A trial the scheduler stopped gives up all but its latest checkpoint when it stops
(:class:`CheckpointRetention`); when the study ends, the best ``K`` finished trials keep their best
epoch's checkpoint and everything else goes (:func:`keep_best_trials`).

Storage is whatever Ray's storage is (a local folder, ``s3://``...), reached through the pyarrow
filesystem of the checkpoints Ray hands out (``Checkpoint.filesystem``, ``Checkpoint.path``).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow.fs as pafs
from ray import tune as ray_tune

from tune.optuna_search import epochs_done
from tune.study_dir import storage_filesystem

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
BEST_FILE = "best.pt"
META_FILE = "epoch.json"
SCORE = "checkpoint_score"  # Tune's checkpoint_score_attribute
DDP_CHECKPOINT_PATH = "checkpoint_path"  # what Ray's TuneReportCallback reports for a DDP trial


def checkpoint_score(metrics: Mapping[str, Any]) -> float:
    """How Tune ranks an epoch's checkpoint: its validation clip accuracy when the epoch is its
    trial's best so far, else -1. The latest best epoch then outranks every other one, exactly as
    ``best.pt`` does in training (a tie with an earlier epoch is not an improvement)."""
    if metrics.get("best_epoch") is not None and metrics.get("best_epoch") == metrics.get("epoch"):
        return float(metrics["val_clip_accuracy"])
    return -1.0


def stage(src: Path | None, dst: Path, metrics: Mapping[str, Any]) -> int:
    """Put the epoch's checkpoint into ``dst`` (the folder handed to Tune); returns its bytes.

    ``last.pt`` is hard-linked (copied where links are impossible); ``epoch.json`` says which
    epoch it is and which epoch is the best so far."""
    if src is None or not (src / CHECKPOINT_FILE).is_file():
        return 0
    try:
        os.link(src / CHECKPOINT_FILE, dst / CHECKPOINT_FILE)
    except OSError:
        shutil.copy2(src / CHECKPOINT_FILE, dst / CHECKPOINT_FILE)
    meta = {"epoch": int(metrics["epoch"]), "best_epoch": int(metrics.get("best_epoch", -1))}
    (dst / META_FILE).write_text(json.dumps(meta))
    return sum(f.stat().st_size for f in dst.iterdir())


def restore(restored, out_dir: Path) -> None:
    """Make ``out_dir`` hold the checkpoint of ``restored`` (a Tune or Train checkpoint, or None):
    ``last.pt``, and ``best.pt`` when the best epoch's checkpoint is still in storage.

    The restored checkpoint is the truth: files an earlier attempt wrote after its last report
    (it was killed in between) are dropped, or the retry would train from an epoch Tune never saw.
    """
    for name in (CHECKPOINT_FILE, BEST_FILE):
        (out_dir / name).unlink(missing_ok=True)
    if restored is None:
        return
    with restored.as_directory() as ck:
        if not (Path(ck) / CHECKPOINT_FILE).is_file():
            return
        shutil.copy2(Path(ck) / CHECKPOINT_FILE, out_dir / CHECKPOINT_FILE)
        meta = _read_meta_file(Path(ck) / META_FILE)
    if meta is None or meta["best_epoch"] < 0:
        return
    if meta["best_epoch"] == meta["epoch"]:
        os.link(out_dir / CHECKPOINT_FILE, out_dir / BEST_FILE)
        return
    root = posixpath.dirname(restored.path.rstrip("/"))
    for path, other in trial_checkpoints(restored.filesystem, root):
        if other["epoch"] == meta["best_epoch"]:
            tmp = out_dir / f".{BEST_FILE}.download"
            pafs.copy_files(
                posixpath.join(path, CHECKPOINT_FILE),
                str(tmp),
                source_filesystem=restored.filesystem,
                destination_filesystem=pafs.LocalFileSystem(),
            )
            os.replace(tmp, out_dir / BEST_FILE)
            return
    log.warning(
        "the checkpoint of best epoch %d is not in %s: the test split will use the last weights",
        meta["best_epoch"] + 1,
        root,
    )


def _read_meta_file(path: Path) -> dict[str, int] | None:
    try:
        return _meta(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _meta(data: Any) -> dict[str, int] | None:
    if isinstance(data, dict) and isinstance(data.get("epoch"), int) and isinstance(data.get("best_epoch"), int):
        return {"epoch": data["epoch"], "best_epoch": data["best_epoch"]}
    return None


def trial_checkpoints(fs: pafs.FileSystem, root: str) -> list[tuple[str, dict[str, int]]]:
    """``(path, {"epoch", "best_epoch"})`` of each checkpoint folder under a trial's ``root``,
    by epoch; folders without a readable ``epoch.json`` are left out."""
    found = []
    for info in _list(fs, root):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(posixpath.join(info.path, META_FILE)) as stream:
                meta = _meta(json.loads(stream.read()))
        except (OSError, ValueError):
            meta = None
        if meta is not None:
            found.append((info.path, meta))
    return sorted(found, key=lambda item: item[1]["epoch"])


def _list(fs: pafs.FileSystem, root: str, recursive: bool = False) -> list[pafs.FileInfo]:
    try:
        return fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=recursive))
    except OSError as exc:
        log.warning("cannot list %s: %s", root, exc)
        return []


def folder_bytes(fs: pafs.FileSystem, root: str) -> int:
    return sum(info.size or 0 for info in _list(fs, root, recursive=True) if info.type == pafs.FileType.File)


def trim(fs: pafs.FileSystem, root: str, keep: str) -> int:
    """Delete a trial's checkpoint folders under ``root`` but the one ``keep`` names: ``"best"``
    (the best epoch's, as the latest folder says), ``"latest"`` or ``"none"``. Returns the bytes freed."""
    checkpoints = trial_checkpoints(fs, root)
    spared = None
    if checkpoints and keep == "best":
        spared = checkpoints[-1][1]["best_epoch"]
    elif checkpoints and keep == "latest":
        spared = checkpoints[-1][1]["epoch"]
    freed = 0
    for path, meta in checkpoints:
        if meta["epoch"] == spared:
            continue
        freed += folder_bytes(fs, path)
        try:
            fs.delete_dir(path)
        except OSError as exc:
            log.warning("could not delete the checkpoint %s: %s", path, exc)
    return freed


def best_checkpoint(fs: pafs.FileSystem, root: str) -> str | None:
    """The path of the best epoch's checkpoint folder of a trial, or None."""
    checkpoints = trial_checkpoints(fs, root)
    if not checkpoints:
        return None
    best = checkpoints[-1][1]["best_epoch"]
    return next((path for path, meta in checkpoints if meta["epoch"] == best), None)


def checkpoint_root(checkpoint, metrics: Mapping[str, Any] | None, storage: str) -> tuple[pafs.FileSystem, str] | None:
    """Where a trial's checkpoint folders are: beside its latest Tune checkpoint, or, for a DDP
    trial (Ray Train keeps its checkpoints and reports their path), beside that path."""
    if checkpoint is not None:
        return checkpoint.filesystem, posixpath.dirname(checkpoint.path.rstrip("/"))
    path = (metrics or {}).get(DDP_CHECKPOINT_PATH)
    if not path:
        return None
    fs = storage_filesystem(storage)[1] or pafs.FileSystem.from_uri(storage)[0]
    return fs, posixpath.dirname(str(path).rstrip("/"))


class CheckpointRetention(ray_tune.Callback):
    """Trims the checkpoints of a trial the scheduler stopped, when it stops, to its latest.

    The latest stays until the study ends, for finished trials too: a driver killed before its
    next snapshot of the experiment leaves the trial unfinished there, and ``--resume`` restores
    it from that latest checkpoint (Tune refuses, and fails the trial, if it is gone; a finished
    trial restored so ends at once). :func:`keep_best_trials` removes the rest when the study ends.
    Registered after the MLflow callback, which logs a stopped trial's tensors from that checkpoint.
    """

    def __init__(self, storage: str, max_epochs: int) -> None:
        self.storage = storage
        self.max_epochs = max_epochs

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        if (epochs_done(trial.last_result) or 0) >= self.max_epochs:
            return
        where = checkpoint_root(trial.checkpoint, trial.last_result, self.storage)
        if where is None:
            return
        try:
            trim(*where, keep="latest")
        except Exception as exc:  # bookkeeping must never stop the study
            log.warning("could not trim the checkpoints of trial %s: %s", trial.trial_id, exc)


def keep_best_trials(results: Iterable, ranked_ids: list[str], keep: int | None, storage: str) -> dict[str, str | None]:
    """At the end of a study: keep the best epoch's checkpoint of the best ``keep`` trials of
    ``ranked_ids`` (best first) and delete every other one (``None``: delete nothing). Returns ``{trial_id: its best checkpoint
    folder, or None}`` for the table, as ``<storage scheme>`` paths Ray would print."""
    kept = set(ranked_ids if keep is None else ranked_ids[:keep])
    out: dict[str, str | None] = {}
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        where = checkpoint_root(result.checkpoint, result.metrics, storage)
        if where is None:
            out[trial_id] = None
            continue
        if keep is not None:
            trim(*where, keep="best" if trial_id in kept else "none")
        best = best_checkpoint(*where)
        out[trial_id] = _uri(where[0], best) if best else None
    return out


def _uri(fs: pafs.FileSystem, path: str) -> str:
    return path if isinstance(fs, pafs.LocalFileSystem) else f"{fs.type_name}://{path}"
