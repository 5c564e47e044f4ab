"""The study's own small files: its state (``adastft_study.json``: MLflow parent run, working-folder
key), the Optuna database (``optuna.db``), the trials' notes and the summary.

With a local ``--storage`` they live in the study's folder, ``<storage>/<name>``, beside Tune's
experiment. With object storage (``s3://...``) SQLite cannot work in place, so the driver works on
a local copy (``<temp>/adastft-studies/<name>-<hash of the storage URI>``) and uploads it to
``<storage>/<name>/study/`` when the study starts, after every trial that ends, and at the end;
``--resume`` on any machine downloads it first. The upload of ``optuna.db`` is a consistent
snapshot (SQLite's backup API), never a file caught mid-write.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from tune.lock import LOCK_FILE
from tune.store_checks import REMOTE_SCHEMES

log = logging.getLogger(__name__)

STATE_FILE = "adastft_study.json"
OPTUNA_FILE = "optuna.db"
REMOTE_FOLDER = "study"


def is_remote(storage: str) -> bool:
    return storage.startswith(REMOTE_SCHEMES)


# How long a write to S3 rides out an unreachable store before it fails: each request waits up to
# 30 s, 10 attempts with the SDK's standard backoff, so several minutes.
S3_REQUEST_TIMEOUT_S, S3_ATTEMPTS = 30.0, 10


def storage_filesystem(storage: str, attempts: int = 0) -> tuple[str, pafs.FileSystem | None]:
    """``(path, filesystem)`` to hand Ray for ``--storage``: for ``s3://`` a pyarrow S3 filesystem
    that retries through an outage (the default one gives up after about 10 s, and a checkpoint
    upload that fails fails its trial), in the bucket's region and at ``AWS_ENDPOINT_URL[_S3]``
    when set (an S3-compatible store); else ``(storage, None)``, Ray's own choice. ``attempts``: a
    quick probe's few tries (the check before the study starts) instead of riding out an outage."""
    if not storage.startswith("s3://"):
        return storage, None
    import os

    found, path = pafs.FileSystem.from_uri(storage)  # resolves the bucket's region
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    fs = pafs.S3FileSystem(
        region=found.region,
        endpoint_override=endpoint,
        connect_timeout=5.0 if attempts else 10.0,
        request_timeout=10.0 if attempts else S3_REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts or S3_ATTEMPTS),
    )
    return path, fs


class StudyDir:
    """Where the study's small files are, and their copy in object storage."""

    def __init__(self, storage: str, name: str) -> None:
        self.storage, self.name = storage, name
        self.remote = is_remote(storage)
        if self.remote:
            key = hashlib.sha1(f"{storage}/{name}".encode()).hexdigest()[:8]
            self.path = Path(tempfile.gettempdir()) / "adastft-studies" / f"{name}-{key}"
        else:
            self.path = Path(storage) / name
        self._connection: tuple[pafs.FileSystem, str] | None = None  # made on first use: it asks the network

    def _connect(self) -> tuple[pafs.FileSystem, str]:
        """The object store's filesystem and the study's root in it."""
        if self._connection is None:
            root, fs = storage_filesystem(self.storage)
            if fs is None:  # other object stores: pyarrow's defaults
                fs, root = pafs.FileSystem.from_uri(f"{self.storage}/{self.name}")
            else:
                root = posixpath.join(root, self.name)
            self._connection = (fs, root)
        return self._connection

    @property
    def _fs(self) -> pafs.FileSystem:
        return self._connect()[0]

    @property
    def _study_root(self) -> str:
        return self._connect()[1]

    @property
    def _remote(self) -> str:
        return posixpath.join(self._study_root, REMOTE_FOLDER)

    def location(self, relative: str) -> str:
        """Where a user finds one of the study's files once the driver is done."""
        return f"{self.storage}/{self.name}/{REMOTE_FOLDER}/{relative}" if self.remote else str(self.path / relative)

    def exists(self) -> bool:
        """Whether a study of this name is already in the storage."""
        if not self.remote:
            # a folder holding only the lock of a driver that stopped before the study began
            # (refused after Ray started) is no study
            return self.path.exists() and any(p.name != LOCK_FILE for p in self.path.iterdir())
        # a probe with few tries: an unreachable store is told in seconds, before Ray starts
        probe = storage_filesystem(self.storage, attempts=2)[1] or self._fs
        info = probe.get_file_info(self._study_root)  # (its root is the same for both)
        return info.type != pafs.FileType.NotFound

    def pull(self) -> None:
        """Bring the stored copy down (object storage only; a local study is already here).

        A working copy already on this machine (its driver died before the study ended) is at
        least as new as the uploaded one, and is used as it is."""
        if self.remote and (self.path / STATE_FILE).is_file():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.remote or self._fs.get_file_info(self._remote).type == pafs.FileType.NotFound:
            return
        pafs.copy_files(
            self._remote, str(self.path), source_filesystem=self._fs, destination_filesystem=pafs.LocalFileSystem()
        )

    def push(self) -> None:
        """Upload the study's files (object storage only). Never raises: a failed upload is
        logged and retried at the next push."""
        if not self.remote:
            return
        try:
            with tempfile.TemporaryDirectory(prefix="adastft-study-") as tmp:
                staged = Path(tmp) / "study"
                staged.mkdir()
                for item in self.path.iterdir():
                    if item.name == LOCK_FILE:  # this machine's lock: means nothing elsewhere
                        continue
                    if item.name == OPTUNA_FILE:
                        _sqlite_snapshot(item, staged / OPTUNA_FILE)
                    elif item.is_file():
                        (staged / item.name).write_bytes(item.read_bytes())
                    elif item.is_dir():
                        shutil.copytree(item, staged / item.name)
                self._fs.create_dir(self._remote)
                pafs.copy_files(
                    str(staged), self._remote, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self._fs
                )
        except Exception as exc:  # noqa: BLE001 - storage may be away for a while; the next push retries
            log.warning(
                "could not upload the study's files to %s/%s/%s: %s", self.storage, self.name, REMOTE_FOLDER, exc
            )


def _sqlite_snapshot(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite database (the driver may be writing to it)."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    try:
        target = sqlite3.connect(dst)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
