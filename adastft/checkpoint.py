"""Checkpoints that survive a crash mid-write and load without unpickling code.

A checkpoint is a dict of tensors and plain Python values (no pickled objects), written to a
temporary file in the same folder, fsynced, then renamed over the target: a reader sees the old
file or the new one, never a torn one (the original project lost its best model to exactly that).
A best checkpoint that is also the last one is one file under two names (a hard link), not
two writes. A writer killed mid-write leaves its temporary file behind; the next save in that folder removes
it (the name carries the host and process id, so a live writer's file is never touched). A write
that fails (a full disk) raises :class:`CheckpointError` and leaves the previous file as it was.
The stored config is redacted like MLflow params (passwords in URIs, values of secret-named
environment variables): checkpoints are copied to Tune's storage and logged as artifacts.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_TEMP = re.compile(r"^\..+\.ckpt-(?P<host>[^.]+)-(?P<pid>\d+)-[^.]+\.tmp$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded or written; the message names the file and why."""


def save_checkpoint(state: dict[str, Any], path: str | Path, durable: bool = True) -> Path:
    """Write ``state`` atomically to ``path`` (temp file, fsync, rename, fsync of the folder).

    ``durable=False`` skips the two fsyncs (still atomic; a power cut may lose the file): for a
    working copy that a caller persists itself, as Tune does with a trial's reported checkpoint.
    Raises :class:`CheckpointError` naming the file and the reason (e.g. no space left on device)
    when the write fails; ``path`` is then untouched.
    """
    path = Path(path)
    state = _without_secrets(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    sink = _Sink(fd)
    try:
        with sink:
            torch.save(state, sink)
            sink.flush()
            if durable:
                os.fsync(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if not isinstance(exc, Exception):
            raise
        error = sink.error or (exc if isinstance(exc, OSError) else None)
        reason = os.strerror(error.errno) if error is not None and error.errno else _first_line(exc)
        raise _write_error(path, reason, error.errno if error is not None else None) from exc
    if durable:
        _fsync_dir(path.parent)
    return path


def link_checkpoint(src: str | Path, path: str | Path, durable: bool = True) -> Path:
    """Make ``path`` hold the checkpoint ``src`` holds, atomically, without writing it again.

    A hard link where the file system has them (the files then share their data: a later
    :func:`save_checkpoint` to either replaces that one's file and leaves the other as it was),
    else a copy. ``path`` is the old file or the new one at any moment; ``durable`` as in
    :func:`save_checkpoint`. Raises :class:`CheckpointError` naming the file and the reason.
    """
    src, path = Path(src), Path(path)
    _remove_stale_temps(path.parent)
    tmp = path.parent / f"{_temp_prefix(path)}link.tmp"
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            shutil.copyfile(src, tmp)
            if durable:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, err.strerror or str(err), err.errno, f" from {src.name}") from err
    if durable:
        _fsync_dir(path.parent)
    return path


def _temp_prefix(path: Path) -> str:
    """How a writer's temporary file for ``path`` starts; :data:`_TEMP` reads its host and pid."""
    return f".{path.name}.ckpt-{_host()}-{os.getpid()}-"


def _write_error(path: Path, reason: str, code: int | None, source: str = "") -> CheckpointError:
    """The one-line error of a failed write: the file, why, what is left, and the fix for ENOSPC."""
    kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
    hint = f": free space in {path.parent}" if code == errno.ENOSPC else ""
    return CheckpointError(f"cannot write checkpoint {str(path)!r}{source} ({reason}); {kept}{hint}")


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _Sink:
    """A binary file that remembers the ``OSError`` of a failed write: ``torch.save`` reports a
    full disk as an opaque ``RuntimeError`` ("unexpected pos ..."), which names neither."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "wb")
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as exc:
            self.error = exc
            raise

    def __enter__(self) -> "_Sink":
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self._file.close()
        except OSError as exc:  # the last buffered bytes did not fit
            self.error = self.error or exc
            if exc_info[0] is None:
                raise


def _without_secrets(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its ``config`` redacted (see :func:`adastft.tracking.redact`)."""
    if not isinstance(state.get("config"), Mapping):
        return state
    from adastft.tracking import environment_secrets, redact

    secrets = environment_secrets()

    def clean(key: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(str(k), v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(clean(key, v) for v in value)
        return redact(key, value, secrets) if isinstance(value, str) else value

    return {**state, "config": clean("config", state["config"])}


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def _remove_stale_temps(folder: Path) -> None:
    """Remove temporary files of writers on this host that no longer run (killed mid-write)."""
    host = _host()
    for entry in folder.glob(".*.tmp"):
        m = _TEMP.match(entry.name)
        if m is None or m["host"] != host or int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
            continue
        log.info("removing %s, left by a writer that was killed mid-write", entry)
        entry.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (in this PID namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: a file carrying pickled code is refused, not run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be loaded safely (weights_only=True): {_first_line(exc)}"
        ) from None
