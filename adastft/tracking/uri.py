"""Where runs go: the tracking URI, the store behind it, whether it can take a run, the
experiment's id in it, and the link to its runs in the MLflow UI.

Example::

    uri = default_tracking_uri(Path("."))  # $MLFLOW_TRACKING_URI, else sqlite:///<abs>/mlflow.db
    check_tracking_uri(uri)  # before any training: fails in seconds if the store is unusable
    client = open_client(uri)
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from adastft.tracking.redact import redact_text
from adastft.tracking.server import server_problem

log = logging.getLogger(__name__)


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be used; the message names the URI and the fix."""


def default_tracking_uri(workdir: Path) -> str:
    """Where runs go when ``tracking.uri`` is not set: ``$MLFLOW_TRACKING_URI`` as MLflow itself
    would (a cluster from ``cluster/*.yaml`` sets it to its head node's server), else the local
    store ``sqlite:///<workdir>/mlflow.db`` (absolute)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{Path(workdir).expanduser().resolve() / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (``http(s)://``) rather than a local store."""
    return urlparse(uri).scheme.lower() in ("http", "https")


def local_path(uri: str) -> Path | None:
    """The file system path of a ``sqlite:///`` database or a ``file:`` store, else ``None``."""
    if uri.startswith("sqlite:///"):
        path = unquote(uri[len("sqlite:///") :])
        if not path or path.startswith(":memory:"):
            raise ValueError(
                f"unsupported tracking URI {uri!r}: an in-memory SQLite store loses the runs; "
                "use sqlite:///path/mlflow.db"
            )
        return Path(path).expanduser().resolve()
    if uri.startswith("file:"):
        return Path(url2pathname(urlparse(uri).path)).expanduser().resolve()
    return None


def open_client(uri: str) -> MlflowClient:
    """``MlflowClient(uri)``, whose SQLite store, when new, is created by one process at a time.

    MLflow 3.17's ``SqlAlchemyStore`` creates a missing schema without a lock: two processes
    opening the same new ``mlflow.db`` at once both create the tables, and one fails ("duplicate
    column name: step"). The first use of the store here (creating the schema if missing) is
    serialised with an ``flock`` on ``<db>.lock`` beside it; once the tables exist, MLflow creates
    none. (tests/reliability/test_stores.py opens one new store from two processes at once.)
    """
    path = local_path(uri) if uri.startswith("sqlite:///") else None
    if path is None:
        return MlflowClient(uri)
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # opens the store: the schema is made here
        return client


def sqlite_damage(path: Path) -> str | None:
    """Why the SQLite database ``path`` cannot be used (SQLite's own words), or ``None`` when it
    opens and passes ``PRAGMA quick_check`` (or does not exist yet, or is empty: SQLite makes an
    empty file a new database). Opened read-only: a damaged file is left exactly as it is."""
    import sqlite3

    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as con:
            (verdict,) = con.execute("PRAGMA quick_check(1)").fetchone()
    except sqlite3.Error as err:
        return str(err)
    return None if verdict == "ok" else str(verdict)


def damaged_store_fix(path: Path) -> str:
    return (
        f"move it aside (mv {path} {path}.damaged) and restore it from a backup, or point the command at another file"
    )


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, when the tracking store cannot take a run.

    ``http(s)://``: the server must answer ``GET /health`` (or, behind proxies without it, the REST
    experiments search) within ``timeout`` seconds. ``sqlite:///path``: the database's folder must
    exist or be creatable, and be writable (and the file, when present). ``file:``: likewise the
    store folder. Raises :class:`TrackingUnavailable`; any other scheme raises ``ValueError``.
    Messages never show a password of the URI or a secret of the environment.
    """
    try:
        _check_tracking_uri(uri, timeout)
    except (TrackingUnavailable, ValueError) as exc:
        raise type(exc)(redact_text(str(exc))) from None


def _check_tracking_uri(uri: str, timeout: float) -> None:
    if is_server(uri):
        problem = server_problem(uri.rstrip("/"), timeout)
        if problem:
            raise TrackingUnavailable(problem)
        return
    scheme = urlparse(uri).scheme.lower()
    path = local_path(uri) if scheme in ("sqlite", "file") else None
    if path is None:
        raise ValueError(
            f"unsupported tracking URI {uri!r}: use http(s)://host:port, "
            "sqlite:///path/mlflow.db or file:///path/to/mlruns"
        )
    if scheme == "sqlite":
        _check_writable_dir(path.parent, uri)
        if path.exists() and not os.access(path, os.W_OK):
            raise TrackingUnavailable(
                f"MLflow store {uri} is not usable: {path} is read-only: fix its permissions or set tracking.uri"
            )
        damage = sqlite_damage(path)
        if damage:
            raise TrackingUnavailable(
                f"MLflow store {path} is damaged ({damage}): {damaged_store_fix(path)} (tracking.uri)"
            )
    else:
        _check_writable_dir(path, uri)


def _check_writable_dir(folder: Path, uri: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise TrackingUnavailable(
            f"MLflow store {uri} is not usable: folder {folder} cannot be created or written "
            f"({err.strerror or err}): fix its permissions or set tracking.uri"
        ) from None


def ui_link(tracking_uri: str, experiment_id: str | None) -> str:
    """Where the MLflow UI lists an experiment's runs in its Model training view.

    MLflow 3 opens an experiment on its GenAI overview (traces: empty for us); the
    ``workflowType=machine_learning`` view is the runs table. A server's URI gives the link
    itself; a local store gives the ``mlflow ui`` command to run first and the link it serves.
    """
    view = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if is_server(tracking_uri):
        return f"{redact_text(tracking_uri.rstrip('/'))}/{view}"
    return f"mlflow ui --backend-store-uri {tracking_uri}, then open http://127.0.0.1:5000/{view}"


# ---- experiments -------------------------------------------------------------------------------

# (tracking URI, experiment name) -> id, per process: the trials of a study that share a process
# (Tune reuses it) look the experiment up once. Only ids of active experiments are kept; a run
# that cannot be created in a remembered one (deleted since) makes the Tracker look again.
_EXPERIMENT_IDS: dict[tuple[str, str], str] = {}


def experiment_id(client: MlflowClient, tracking_uri: str, name: str) -> str | None:
    """The id of the experiment ``name`` in ``client``'s store (None when there is none),
    remembered for this process like :func:`ensure_experiment` does."""
    key = (tracking_uri, name)
    known = _EXPERIMENT_IDS.get(key)
    if known is not None:
        return known
    found = client.get_experiment_by_name(name)
    if found is None:
        return None
    if found.lifecycle_stage == "active":
        _EXPERIMENT_IDS[key] = found.experiment_id
    return found.experiment_id


def is_remembered(tracking_uri: str, name: str) -> bool:
    return (tracking_uri, name) in _EXPERIMENT_IDS


def forget_experiment(tracking_uri: str, name: str) -> None:
    """Drop a remembered id (the experiment was deleted, or its store replaced, since)."""
    _EXPERIMENT_IDS.pop((tracking_uri, name), None)


def ensure_experiment(client: MlflowClient, tracking_uri: str, name: str, artifact_root: str | None) -> str:
    """The id of the experiment ``name``, created when missing and restored when deleted.

    A new experiment in a ``sqlite:///.../mlflow.db`` store without ``artifact_root`` keeps its
    artifacts in ``mlartifacts/`` beside the database, where ``mlflow ui`` run there finds them.
    """
    key = (tracking_uri, name)
    if key not in _EXPERIMENT_IDS:
        _EXPERIMENT_IDS[key] = _find_or_create(client, tracking_uri, name, artifact_root)
    return _EXPERIMENT_IDS[key]


def _find_or_create(client: MlflowClient, tracking_uri: str, name: str, artifact_root: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        if artifact_root is None and tracking_uri.startswith("sqlite:///"):
            artifact_root = (local_path(tracking_uri).parent / "mlartifacts").as_uri()
        try:
            return client.create_experiment(name, artifact_location=artifact_root)
        except MlflowException:  # another trial created it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        log.warning("MLflow experiment %r was deleted; restoring it", name)
        client.restore_experiment(found.experiment_id)
    return found.experiment_id
