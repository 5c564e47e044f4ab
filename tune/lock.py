"""One driver per study: ``<storage>/<name>/driver.lock``, held with ``flock`` for the driver's
lifetime and naming it (pid, host, start time).

The kernel releases the lock when the driver's process ends, however it ends (``kill -9``
included), so a lock left by a dead driver is taken over by the next one without any guess about
whether the pid in the file is still alive. The file itself stays; only the lock on it matters.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from tune.settings import SearchError

LOCK_FILE = "driver.lock"


class StudyLock:
    """Held from :meth:`acquire` until this process ends (or :meth:`release`)."""

    def __init__(self, exp_dir: Path) -> None:
        self.path = Path(exp_dir) / LOCK_FILE
        self._fd: int | None = None
        self._made: list[Path] = []

    def acquire(self, study: str) -> "StudyLock":
        """Take the lock, or raise :class:`SearchError` naming the driver that holds it."""
        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._made = missing  # the folders this lock made: gone again if the study never begins
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            refusal = _refusal(study, os.pread(fd, 4096, 0))
            os.close(fd)
            raise refusal from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd
        return self

    def check_free(self, study: str) -> None:
        """Raise :class:`SearchError` naming the driver that holds this study's lock, if one does.

        A probe that changes nothing: checked before anything else about the study, so that a
        second driver is told a study is running even while its folder holds nothing but the lock."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(study, os.pread(fd, 4096, 0)) from None
        finally:
            os.close(fd)  # closing releases the probe's shared lock

    def release(self) -> None:
        if self._fd is None:
            return
        # A study refused after Ray started (a cluster check) wrote nothing but this lock: leave no
        # folder behind, or its name would look taken (and the results folder made).
        left = [p.name for p in self.path.parent.iterdir()] if self.path.parent.is_dir() else None  # None: removed
        if left == [LOCK_FILE]:
            self.path.unlink(missing_ok=True)
            for folder in self._made:
                try:
                    folder.rmdir()
                except OSError:
                    break
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None


def _refusal(study: str, raw: bytes) -> SearchError:
    """The error for a study whose lock another driver holds, naming it from the lock file."""
    return SearchError(
        f"study {study!r} is being run by another driver ({_describe(raw)}): wait for it to end, "
        "or stop it and then --resume"
    )


def _describe(raw: bytes) -> str:
    try:
        holder = json.loads(raw.decode())
        return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):  # it has the lock but has not written its name yet
        return "a driver starting this moment"
