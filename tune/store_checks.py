"""The study's name, its results folder and its Optuna database, checked before Ray starts.

Used by ``tune/cli.py`` and ``tune/search.py``; each bad value is one line (:class:`SearchError`).
"""

from __future__ import annotations

import os
from pathlib import Path

from adastft.tracking import redact_text
from tune.settings import SearchError

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://", "hdfs://")


def storage_root(storage: str | None, cwd: Path, default_folder: str = "search") -> str:
    """``--storage`` as the study's root: a URI as given, a path absolute; default ``runs/<default_folder>``."""
    if storage is None:
        return str((cwd / "runs" / default_folder).resolve())
    if storage.startswith(REMOTE_SCHEMES):
        return storage.rstrip("/")
    return str((cwd / Path(storage).expanduser()).resolve())


STUDY_NAME = r"[A-Za-z0-9_.-]+"


def check_study_name(name: str) -> None:
    """The study's name is a folder under ``--storage`` and the MLflow parent run's name: one path
    segment, so that it cannot write outside ``--storage`` (``../x``) or nest under another study."""
    import re

    if not re.fullmatch(STUDY_NAME, name) or name in (".", ".."):
        raise SearchError(
            f"--name {name!r} must be one path segment of letters, digits, '-', '_' and '.' "
            "(it names the study's folder under --storage), e.g. --name gtzan-asha.1"
        )


def check_storage(storage: str) -> None:
    """A local ``--storage`` must be a folder this user can write, or creatable in one; a file
    is refused. (A bucket URI is checked by Ray when it starts.)"""
    if storage.startswith(REMOTE_SCHEMES):
        return
    path = Path(storage)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise SearchError(f"--storage {storage}: {existing} is a file, not a folder: give a folder for the results")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SearchError(
            f"--storage {storage}: folder {existing} is not writable by this user: "
            "fix its permissions or give another --storage"
        )


def check_optuna_storage(url: str, study: str | None) -> None:
    """``--optuna-storage`` (or the study's own ``optuna.db``): a URL SQLAlchemy parses, whose
    driver is installed and whose database opens: for SQLite, its folder exists and the file, when
    present, is an undamaged database (opened read-only: nothing in it changes); another database
    must accept a connection within 10 s. ``study``: the name a ``--resume`` needs in it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from adastft.tracking import damaged_store_fix, sqlite_damage

    shown = redact_text(url)
    try:
        parsed = make_url(url)
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:  # (an ArgumentError too)
        raise SearchError(f"--optuna-storage {shown}: SQLAlchemy knows no database {parsed.drivername!r}") from None
    except ArgumentError:
        raise SearchError(
            f"--optuna-storage {shown!r} is not a database URL: use e.g. sqlite:////abs/path/optuna.db "
            "or postgresql://user@host/db"
        ) from None
    except ImportError as exc:
        raise SearchError(
            f"--optuna-storage {shown}: its driver {exc.name or parsed.drivername!r} is not installed: "
            f"pip install {exc.name or parsed.drivername}"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise SearchError(
                f"--optuna-storage {shown}: an in-memory SQLite database loses the study: "
                "give a file, sqlite:////abs/path/optuna.db"
            )
        path = Path(parsed.database).expanduser()
        if not path.parent.is_dir():
            raise SearchError(f"--optuna-storage {shown}: folder {path.parent} does not exist: create it first")
        damage = sqlite_damage(path)
        if damage:
            raise SearchError(f"Optuna database {path} is damaged ({damage}): {damaged_store_fix(path)}")
        if study is not None and path.exists() and not _has_study(path, study):
            raise SearchError(
                f"Optuna database {path} holds no study {study!r} (emptied or replaced): "
                f"{damaged_store_fix(path)}, or start a new study with another --name"
            )
        return
    _check_connects(url, shown)


def _has_study(path: Path, study: str) -> bool:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as con:
            return con.execute("SELECT 1 FROM studies WHERE study_name = ?", (study,)).fetchone() is not None
    except sqlite3.Error:  # no tables: an empty file
        return False


def _check_connects(url: str, shown: str, timeout_s: float = 10.0) -> None:
    import threading

    from sqlalchemy import create_engine

    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            engine = create_engine(url)
            with engine.connect():
                pass
            engine.dispose()
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - any failure is the user's database: named below
            outcome.append(exc)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise SearchError(
            f"--optuna-storage {shown}: no answer within {timeout_s:g} s: start the database or fix the URL"
        )
    if outcome[0] is not None:
        reason = redact_text(str(outcome[0]).strip().splitlines()[0])
        raise SearchError(f"--optuna-storage {shown}: cannot connect ({reason})")
