"""MLflow tracking for one training run, safe to use from many runs in one process.

:class:`Tracker` owns one MLflow run and talks to the store only through an explicit
``MlflowClient(tracking_uri)``: no ``mlflow.start_run``, no active-run or tracking-URI globals,
so several Ray trials in one process and DDP ranks never see each other's runs. Rank 0 of a trial
holds a ``Tracker``; every other rank, and runs with tracking off, hold a :class:`NullTracker`.

Params, metrics and tags never stop training: a batch that cannot be sent (server down, database
locked) is queued in memory and retried on the next call and at :meth:`Tracker.end`; what is still
unsent after ``end`` is reported in one warning. Against an HTTP server these batches are sent
with no MLflow retries and a short timeout (``request_timeout``), because MLflow's own knobs
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7 with backoff factor 2, and
``MLFLOW_HTTP_REQUEST_TIMEOUT``, default 120 s) are environment variables read on every request
by every client in the process: setting them here would change other code's behaviour. Artifacts
and models still go through MLflow's client with those defaults; their failures are logged, not
raised.

Example::

    check_tracking_uri(uri)  # before any training: fails in seconds if the store is unusable
    with Tracker(uri, "gtzan", run_name="trial-3", parent_run_id=parent) as tracker:
        tracker.log_params(cfg)
        for epoch in range(epochs):
            tracker.log_metrics({"train.loss": loss, "val.acc": acc}, step=epoch)
        tracker.log_model(model)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import numpy as np
import requests
import torch
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.service_pb2 import LogBatch, UpdateRun
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking import MlflowClient
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.rest_utils import http_request, verify_rest_response
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

log = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"
REDACTED = "***"
_STATUSES = ("FINISHED", "FAILED", "KILLED")
# Secret-looking parameter names ("aws_secret_access_key", "hf.token", "db_password", "api_key")
# but not "max_tokens" or "tokenizer".
_SECRET_PARAM = re.compile(
    r"(^|[._-])(secret|token|password|passwd|credentials?)($|[._-])|(api|access|private|secret)[_-]?key",
    re.IGNORECASE,
)
# Environment variables whose values are secrets: a whole "_"-separated word of the name, so
# AWS_SECRET_ACCESS_KEY and HF_TOKEN count and TOKENIZERS_PARALLELISM does not.
_SECRET_ENV = re.compile(r"(^|_)(SECRET|TOKEN|PASSWORD|PASSWD|KEY|APIKEY|CREDENTIALS?)(_|$)", re.IGNORECASE)
# Values too short or too common to redact without mangling every param ("1", "true").
_MIN_SECRET_LENGTH = 4
_NOT_SECRETS = {"true", "false", "none", "null", "yes", "no"}
# Credentials in a URI's userinfo: http://user:PASSWORD@host, https://TOKEN@host.
_URI_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^/?#@\s]+)@")
# Text artifacts that are redacted like params before upload; larger ones are sent as they are.
_TEXT_SUFFIXES = {".yaml", ".yml", ".json", ".csv", ".txt", ".log", ".md", ".cfg", ".ini", ".toml"}
_MAX_REDACTED_BYTES = 50_000_000


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be used; the message names the URI and the fix."""


# ---- pure helpers ------------------------------------------------------------------------------


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys: ``{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": "[1, 2]"}``.

    Lists and tuples become their ``repr``; an empty mapping stays as ``"{}"`` under its key.
    """
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        elif isinstance(value, Mapping):
            out[name] = "{}"
        elif isinstance(value, (list, tuple)):
            out[name] = repr(value)
        else:
            out[name] = value
    return out


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables named like secrets, longest first (for substring redaction)."""
    environ = os.environ if environ is None else environ
    values = {
        value for name, value in environ.items()
        if _SECRET_ENV.search(name) and len(value) >= _MIN_SECRET_LENGTH and value.lower() not in _NOT_SECRETS
    }
    return sorted(values, key=len, reverse=True)


def redact(key: str, value: str, secrets: Iterable[str]) -> str:
    """``"***"`` for a secret-looking key; otherwise ``value`` redacted by :func:`redact_text`."""
    if _SECRET_PARAM.search(key):
        return REDACTED
    return redact_text(value, secrets)


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret substring (default: :func:`environment_secrets`) and the
    password of every URI's userinfo replaced: ``http://me:***@host``, ``https://***@host``."""
    for secret in environment_secrets() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _URI_USERINFO.sub(_mask_userinfo, text)


def _mask_userinfo(match: re.Match) -> str:
    user, password = match[2].split(":", 1) if ":" in match[2] else (None, match[2])
    return f"{match[1]}{user}:{REDACTED}@" if user is not None else f"{match[1]}{REDACTED}@"


def default_tracking_uri(workdir: Path) -> str:
    """Where runs go when ``tracking.uri`` is not set: ``$MLFLOW_TRACKING_URI`` as MLflow itself
    would (a cluster from ``cluster/*.yaml`` sets it to its head node's server), else the local
    store ``sqlite:///<workdir>/mlflow.db`` (absolute)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return f"sqlite:///{Path(workdir).expanduser().resolve() / 'mlflow.db'}"


def _local_path(uri: str) -> Path | None:
    """The file system path of a ``sqlite:///`` database or a ``file:`` store, else ``None``."""
    if uri.startswith("sqlite:///"):
        path = unquote(uri[len("sqlite:///"):])
        if not path or path.startswith(":memory:"):
            raise ValueError(f"unsupported tracking URI {uri!r}: an in-memory SQLite store loses the runs; "
                             "use sqlite:///path/mlflow.db")
        return Path(path).expanduser().resolve()
    if uri.startswith("file:"):
        return Path(url2pathname(urlparse(uri).path)).expanduser().resolve()
    return None


def _check_writable_dir(folder: Path, uri: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise TrackingUnavailable(
            f"MLflow store {uri} is not usable: folder {folder} cannot be created or written "
            f"({err.strerror or err}): fix its permissions or set tracking.uri") from None


def open_client(uri: str) -> MlflowClient:
    """``MlflowClient(uri)``, whose SQLite store, when new, is created by one process at a time.

    MLflow 3.17's ``SqlAlchemyStore`` creates a missing schema without a lock (its
    ``_safe_initialize_tables`` is not used there): two processes opening the same new
    ``mlflow.db`` at once both create the tables, and one fails ("duplicate column name: step").
    The first use of the store here (creating the schema if missing) is serialised with an
    ``flock`` on ``<db>.lock`` beside it; once the tables exist, MLflow creates none.
    (tests/reliability/test_stores.py opens one new store from two processes at once.)
    """
    path = _local_path(uri) if uri.startswith("sqlite:///") else None
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
    return (f"move it aside (mv {path} {path}.damaged) and restore it from a backup, "
            "or point the command at another file")


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
    scheme = urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_server(uri.rstrip("/"), timeout)
        return
    path = _local_path(uri) if scheme in ("sqlite", "file") else None
    if path is None:
        raise ValueError(f"unsupported tracking URI {uri!r}: use http(s)://host:port, "
                         "sqlite:///path/mlflow.db or file:///path/to/mlruns")
    if scheme == "sqlite":
        _check_writable_dir(path.parent, uri)
        if path.exists() and not os.access(path, os.W_OK):
            raise TrackingUnavailable(f"MLflow store {uri} is not usable: {path} is read-only: "
                                      "fix its permissions or set tracking.uri")
        damage = sqlite_damage(path)
        if damage:
            raise TrackingUnavailable(f"MLflow store {path} is damaged ({damage}): {damaged_store_fix(path)} "
                                      "(tracking.uri)")
    else:
        _check_writable_dir(path, uri)


def _check_server(uri: str, timeout: float) -> None:
    def unreachable(reason: str) -> TrackingUnavailable:
        return TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({reason}): start it or set tracking.uri")

    # MLflow's own request helper, so that its TLS and credential settings apply, but no retries.
    creds = MlflowClient(uri)._tracking_client.store.get_host_creds()

    def get(endpoint: str, **kwargs) -> requests.Response:
        try:
            return http_request(creds, endpoint, "GET", max_retries=0, backoff_factor=0, timeout=timeout, **kwargs)
        except MlflowException as err:
            text = str(err).lower()
            if "refused" in text:
                raise unreachable("connection refused") from None
            if "timed out" in text or "timeout" in text:
                raise unreachable(f"no answer within {timeout:g} s") from None
            raise unreachable(_short(err)) from None

    health = get("/health")
    if health.ok:
        return
    # No /health (a reverse proxy in front, an older server): the REST API itself must answer.
    answer = get("/api/2.0/mlflow/experiments/search", params={"max_results": 1})
    if answer.status_code in (401, 403):
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} refused the credentials (HTTP {answer.status_code}): set "
            "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")
    if not answer.ok:
        raise unreachable(f"HTTP {health.status_code} on /health and {answer.status_code} on the REST API")


def _is_transient(err: Exception) -> bool:
    """Worth retrying later: transport failures and server-side errors, not rejected data."""
    if isinstance(err, MlflowException):
        return err.get_http_status_code() >= 500
    return isinstance(err, (OSError, requests.RequestException))


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ---- trackers ----------------------------------------------------------------------------------


# (tracking URI, experiment name) -> id, per process: the trials of a study that share a process
# (Tune reuses it) look the experiment up once. Only ids of active experiments are kept; a run
# that cannot be created in a remembered one (deleted since) makes the Tracker look again.
_EXPERIMENT_IDS: dict[tuple[str, str], str] = {}


def experiment_id(client: MlflowClient, tracking_uri: str, name: str) -> str | None:
    """The id of the experiment ``name`` in ``client``'s store (None when there is none),
    remembered for this process like :class:`Tracker` does."""
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


class Tracker:
    """One MLflow run, created, nested under ``parent_run_id`` or resumed from ``run_id``.

    The experiment is created when missing. For a ``sqlite:///.../mlflow.db`` store without
    ``artifact_root`` its artifacts go to ``mlartifacts/`` beside the database, so
    ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` run in that folder shows them.

    Metrics: non-finite values (a diverged loss) are logged as they are; MLflow stores NaN as NaN
    and +-inf as +-1.8e308. Params and tags are flattened, truncated to MLflow's limits and
    redacted: secret-looking keys get ``"***"`` and values of secret-named environment variables
    (``*_SECRET*``, ``*_TOKEN``, ``*_PASSWORD``, ``*_KEY`` ...) are replaced by ``"***"`` inside
    any value. A context manager: leaving it ends the run FAILED on an exception, FINISHED otherwise.

    Creating or resuming the run goes through MLflow's client with its own (long) retries: call
    :func:`check_tracking_uri` first so that a dead server fails in seconds, not minutes.
    """

    active = True

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        artifact_root: str | None = None,
        request_timeout: float = 5.0,
        retry_interval: float = 10.0,
        system_metrics_interval: float = 0.0,
    ) -> None:
        if not system_metrics_interval >= 0:
            raise ValueError(f"system_metrics_interval must be >= 0 seconds (0: off), got {system_metrics_interval!r}")
        self.tracking_uri = tracking_uri
        self.request_timeout = float(request_timeout)
        self.retry_interval = float(retry_interval)
        self._client = open_client(tracking_uri)
        store = self._client._tracking_client.store
        self._rest_creds = store.get_host_creds if isinstance(store, RestStore) else None
        self._secrets = environment_secrets()
        self._lock = threading.Lock()
        self._queue: list[tuple[str, list]] = []  # ("metrics" | "params" | "tags", entities)
        self._retry_at = 0.0
        self._ended = False

        if run_id is not None:
            run = self._client.get_run(run_id)
            self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
            if run.info.status != "RUNNING":
                self._client.update_run(run_id, status="RUNNING")
            log.info("resumed MLflow run %s (was %s)", run_id, run.info.status)
        else:
            remembered = (tracking_uri, experiment) in _EXPERIMENT_IDS
            self.experiment_id = self._experiment_id(experiment, artifact_root)
            run_tags = _context_tags()
            run_tags.update({k: redact(k, str(v), self._secrets) for k, v in (tags or {}).items()})
            if parent_run_id is not None:
                run_tags[PARENT_RUN_TAG] = parent_run_id
            try:
                run = self._client.create_run(self.experiment_id, tags=run_tags, run_name=run_name)
            except MlflowException:
                if not remembered:
                    raise
                # the remembered experiment was deleted (or its store replaced) since: look again
                _EXPERIMENT_IDS.pop((tracking_uri, experiment), None)
                self.experiment_id = self._experiment_id(experiment, artifact_root)
                run = self._client.create_run(self.experiment_id, tags=run_tags, run_name=run_name)
            self.run_id = run.info.run_id
            log.info("MLflow run %s (%s) in experiment %r at %s", self.run_id, run.info.run_name,
                     experiment, redact_text(tracking_uri, self._secrets))
        if tags and run_id is not None:
            self.set_tags(tags)
        self._monitor = start_system_metrics(self.run_id, tracking_uri, system_metrics_interval,
                                                resume=run_id is not None)

    def _experiment_id(self, name: str, artifact_root: str | None) -> str:
        known = _EXPERIMENT_IDS.get((self.tracking_uri, name))
        if known is not None:
            return known
        found = self._find_or_create_experiment(name, artifact_root)
        _EXPERIMENT_IDS[(self.tracking_uri, name)] = found
        return found

    def _find_or_create_experiment(self, name: str, artifact_root: str | None) -> str:
        found = self._client.get_experiment_by_name(name)
        if found is None:
            if artifact_root is None and self.tracking_uri.startswith("sqlite:///"):
                artifact_root = (_local_path(self.tracking_uri).parent / "mlartifacts").as_uri()
            try:
                return self._client.create_experiment(name, artifact_location=artifact_root)
            except MlflowException:  # another trial created it first
                found = self._client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            log.warning("MLflow experiment %r was deleted; restoring it", name)
            self._client.restore_experiment(found.experiment_id)
        return found.experiment_id

    # ---- params, metrics, tags: queued, never raising ---------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flatten, redact, truncate to 6000 characters and log in batches of 100."""
        entities = [Param(k, redact(k, str(v), self._secrets)[:MAX_PARAM_VAL_LENGTH])
                    for k, v in flatten(params).items()]
        self._submit("params", entities, MAX_PARAMS_TAGS_PER_BATCH)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``{name: value}`` at ``step`` (stamped now, whenever it reaches the store)."""
        now = int(time.time() * 1000)
        entities = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        self._submit("metrics", entities, MAX_METRICS_PER_BATCH)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (redacted, truncated to 8000 characters)."""
        entities = [RunTag(k, redact(k, str(v), self._secrets)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
        self._submit("tags", entities, MAX_PARAMS_TAGS_PER_BATCH)

    def metric_steps(self, key: str) -> list[int]:
        """The steps at which ``key`` has reached the store for this run ([] if the store cannot say)."""
        try:
            return [m.step for m in self._client.get_metric_history(self.run_id, key)]
        except Exception as err:  # noqa: BLE001 - a question to the store must not end training
            log.warning("could not read the history of %s from MLflow run %s: %s", key, self.run_id, _short(err))
            return []

    def tag(self, key: str) -> str | None:
        """The run's tag ``key`` as the store has it (None if unset or the store cannot say)."""
        try:
            return self._client.get_run(self.run_id).data.tags.get(key)
        except Exception as err:  # noqa: BLE001
            log.warning("could not read the tags of MLflow run %s: %s", self.run_id, _short(err))
            return None

    def pending(self) -> dict[str, int]:
        """How many params, metrics and tags wait in memory to be sent."""
        with self._lock:
            counts = {"params": 0, "metrics": 0, "tags": 0}
            for kind, entities in self._queue:
                counts[kind] += len(entities)
            return counts

    def _submit(self, kind: str, entities: list, batch: int) -> None:
        if self._ended:
            log.warning("MLflow run %s has ended; %d %s not logged", self.run_id, len(entities), kind)
            return
        with self._lock:
            self._queue.extend((kind, chunk) for chunk in _chunks(entities, batch))
            if time.monotonic() >= self._retry_at:
                self._flush()

    def _flush(self) -> bool:
        """Send queued batches in order until one fails for a transient reason (lock held)."""
        while self._queue:
            kind, entities = self._queue[0]
            try:
                self._send(kind, entities)
            except Exception as err:  # noqa: BLE001 - training must go on whatever the store does
                if not _is_transient(err):
                    log.error("MLflow rejected %d %s for run %s, dropped: %s", len(entities), kind, self.run_id, err)
                    self._queue.pop(0)
                    continue
                self._retry_at = time.monotonic() + self.retry_interval
                log.warning("MLflow unavailable (%s); %d batches queued for run %s, retrying in %g s",
                            _short(err), len(self._queue), self.run_id, self.retry_interval)
                return False
            self._queue.pop(0)
        self._retry_at = 0.0
        return True

    def _send(self, kind: str, entities: list) -> None:
        batch = {"metrics": [], "params": [], "tags": []}
        batch[kind] = entities
        if self._rest_creds is None:
            self._client.log_batch(self.run_id, synchronous=True, **batch)
            return
        body = LogBatch(run_id=self.run_id, metrics=[m.to_proto() for m in batch["metrics"]],
                        params=[p.to_proto() for p in batch["params"]], tags=[t.to_proto() for t in batch["tags"]])
        self._rest_post("/api/2.0/mlflow/runs/log-batch", body)

    def _rest_post(self, endpoint: str, message) -> None:
        # MLflow's RestStore would retry for minutes; one quick attempt, then the queue retries.
        response = http_request(self._rest_creds(), endpoint, "POST", max_retries=0, backoff_factor=0,
                                timeout=self.request_timeout, json=json.loads(message_to_json(message)))
        verify_rest_response(response, endpoint)

    # ---- artifacts: through MlflowClient, failures logged ------------------------------------

    def _artifact(self, what: str, call, *args) -> bool:
        try:
            call(self.run_id, *args)
            return True
        except Exception as err:  # noqa: BLE001 - a lost artifact must not end training
            log.error("could not log %s to MLflow run %s: %s", what, self.run_id, err, exc_info=True)
            return False

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` (secrets redacted) as the artifact ``artifact_file``."""
        self._artifact(artifact_file, self._client.log_text, redact("", text, self._secrets), artifact_file)

    def log_dict(self, d: Mapping, artifact_file: str) -> None:
        """Write ``d`` as YAML (``.yaml``/``.yml``) or JSON (any other suffix); secrets redacted."""
        clean = json.loads(redact("", json.dumps(d, default=str), self._secrets))
        self._artifact(artifact_file, self._client.log_dict, clean, artifact_file)

    def log_figure(self, fig, artifact_file: str) -> None:
        """Save a matplotlib figure as ``artifact_file`` (format from the suffix), then close it."""
        import matplotlib.pyplot as plt

        try:
            self._artifact(artifact_file, self._client.log_figure, fig, artifact_file)
        finally:
            plt.close(fig)

    def log_tensor(self, name: str, tensor: torch.Tensor, artifact_dir: str = "tensors",
                   formats: Sequence[str] = ("pt", "npy")) -> None:
        """Write ``<artifact_dir>/<name>.pt`` (``torch.save``) and/or ``<name>.npy`` (bfloat16 as float32)."""
        tensor = tensor.detach().cpu()
        with tempfile.TemporaryDirectory() as tmp:
            if "pt" in formats:
                torch.save(tensor, Path(tmp) / f"{name}.pt")
            if "npy" in formats:
                array = tensor.float() if tensor.dtype == torch.bfloat16 else tensor
                np.save(Path(tmp) / f"{name}.npy", array.numpy())
            self._artifact(f"tensor {name}", self._client.log_artifacts, tmp, artifact_dir)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Copy one local file into the run's artifacts (under ``artifact_path``); a text file
        (``.yaml``, ``.json``, ``.csv``, ``.txt``, ...) is redacted like params on the way."""
        with tempfile.TemporaryDirectory() as tmp:
            path = _redacted_copy(Path(local_path), Path(tmp), self._secrets)
            self._artifact(str(local_path), self._client.log_artifact, str(path), artifact_path)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local folder's contents into the run's artifacts (under ``artifact_path``), its
        text files redacted like params."""
        with tempfile.TemporaryDirectory() as tmp:
            path = _redacted_copy(Path(local_dir), Path(tmp), self._secrets)
            self._artifact(str(local_dir), self._client.log_artifacts, str(path), artifact_path)

    def log_model(self, model: torch.nn.Module, name: str = "best_model", step: int = 0) -> str | None:
        """Log ``model`` as an MLflow 3 LoggedModel of this run; returns ``models:/<model_id>``.

        Pickled (``serialization_format="pickle"``: MLflow 3's default ``pt2`` needs an input
        example), with pinned ``torch``/``cloudpickle`` requirements (no pip inference subprocess)
        and no signature (no inference). ``mlflow.pytorch.log_model`` is not used because it
        resolves the store from the global tracking URI. Load with
        ``mlflow.pytorch.load_model(uri)`` once that URI points at this store, or from
        :meth:`model_artifact_uri`. ``None`` (and an error logged) on failure.
        """
        import mlflow.pytorch
        from mlflow.models import Model

        try:
            logged = self._client.create_logged_model(self.experiment_id, name=name, source_run_id=self.run_id)
        except Exception as err:  # noqa: BLE001
            log.error("could not create MLflow model %s for run %s: %s", name, self.run_id, err)
            return None
        try:
            self._client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, step=step)])
            with tempfile.TemporaryDirectory() as tmp:
                meta = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id,
                             run_id=self.run_id, model_id=logged.model_id)
                mlflow.pytorch.save_model(
                    model, Path(tmp) / "model", mlflow_model=meta, serialization_format="pickle",
                    pip_requirements=mlflow.pytorch.get_default_pip_requirements())
                self._client.log_model_artifacts(logged.model_id, str(Path(tmp) / "model"))
            self._client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        except Exception as err:  # noqa: BLE001
            log.error("could not log model %s to MLflow run %s: %s", name, self.run_id, err, exc_info=True)
            try:
                self._client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            except Exception:  # noqa: BLE001
                pass
            return None
        return f"models:/{logged.model_id}"

    def model_artifact_uri(self, model_uri: str) -> str:
        """Where a ``models:/<id>`` URI from :meth:`log_model` keeps its files (loadable directly)."""
        return self._client.get_logged_model(model_uri.removeprefix("models:/")).artifact_location

    # ---- end ---------------------------------------------------------------------------------

    def end(self, status: str = "FINISHED") -> None:
        """Flush the queue, then end the run as FINISHED, FAILED or KILLED; later calls do nothing."""
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}, got {status!r}")
        if self._ended:
            return
        self._ended = True
        stop_system_metrics(self._monitor, self.run_id, timeout=self.request_timeout)
        with self._lock:
            self._flush()
        lost = self.pending()
        if any(lost.values()):
            log.warning("MLflow run %s ended with %d metric values, %d params and %d tags unsent: they are lost",
                        self.run_id, lost["metrics"], lost["params"], lost["tags"])
        end_time = int(time.time() * 1000)
        try:
            if self._rest_creds is None:
                self._client.set_terminated(self.run_id, status=status, end_time=end_time)
            else:
                self._rest_post("/api/2.0/mlflow/runs/update", UpdateRun(
                    run_id=self.run_id, run_uuid=self.run_id, status=RunStatus.from_string(status), end_time=end_time))
        except Exception as err:  # noqa: BLE001
            log.warning("could not mark MLflow run %s %s: %s", self.run_id, status, _short(err))

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FINISHED" if exc_type is None else "FAILED")


class NullTracker:
    """A :class:`Tracker` that records nothing: for ranks other than 0 and for tracking off."""

    active = False
    run_id = None
    experiment_id = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_dict(self, d: Mapping, artifact_file: str) -> None: ...
    def log_tensor(self, name: str, tensor: torch.Tensor, artifact_dir: str = "tensors",
                   formats: Sequence[str] = ("pt", "npy")) -> None: ...
    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None: ...
    def log_model(self, model: torch.nn.Module, name: str = "best_model", step: int = 0) -> None: ...
    def model_artifact_uri(self, model_uri: str) -> None: ...
    def pending(self) -> dict[str, int]:
        return {"params": 0, "metrics": 0, "tags": 0}

    def log_figure(self, fig, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        plt.close(fig)  # the caller made it for us; do not leak it

    def end(self, status: str = "FINISHED") -> None:
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}, got {status!r}")

    def __enter__(self) -> "NullTracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FINISHED" if exc_type is None else "FAILED")


def start_system_metrics(run_id: str, tracking_uri: str, interval: float, resume: bool):
    """Start MLflow's own sampler of CPU, memory, disk, network and (with ``nvidia-ml-py``) GPU use, as
    ``mlflow.start_run(log_system_metrics=True)`` starts it, here for a run made with
    ``MlflowClient`` (``start_run`` would set the process-global active run). Its metrics are
    ``system/<node>/...``, the node being this machine's host name unless
    ``$MLFLOW_SYSTEM_METRICS_NODE_ID`` names it; ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
    overrides ``interval``. ``None`` when ``interval`` is 0 or the monitor cannot start."""
    if interval <= 0:
        return None
    monitor_log = logging.getLogger("mlflow.system_metrics.system_metrics_monitor")
    if not any(isinstance(f, _Redacting) for f in monitor_log.filters):
        monitor_log.addFilter(_Redacting())
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=resume,
                                       node_id=socket.gethostname(), tracking_uri=tracking_uri)
        monitor.start()
        return monitor
    except Exception as err:  # noqa: BLE001 - nice to have: the run goes on without them
        log.warning("no system metrics for MLflow run %s: %s", run_id, _short(err))
        return None


class _Redacting(logging.Filter):
    """MLflow's sampler logs the store's errors as they are, and they name the tracking URI,
    password included: its messages are redacted like ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage()), None
        return True


def stop_system_metrics(monitor, run_id: str, timeout: float) -> None:
    """Stop the sampler and send its last points, waiting at most ``timeout`` seconds: against a
    server that went away its client retries for minutes, and ending the run must not wait."""
    if monitor is None:
        return
    stopper = threading.Thread(target=monitor.finish, name="adastft-system-metrics-stop", daemon=True)
    stopper.start()
    stopper.join(timeout)
    if stopper.is_alive():
        log.warning("system metrics of MLflow run %s: the last points were not sent within %g s", run_id, timeout)


def ui_link(tracking_uri: str, experiment_id: str | None) -> str:
    """Where the MLflow UI lists an experiment's runs in its Model training view.

    MLflow 3 opens an experiment on its GenAI overview (traces: empty for us); the
    ``workflowType=machine_learning`` view is the runs table. A server's URI gives the link
    itself; a local store gives the ``mlflow ui`` command to run first and the link it serves.
    """
    view = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if urlparse(tracking_uri).scheme.lower() in ("http", "https"):
        return f"{redact_text(tracking_uri.rstrip('/'))}/{view}"
    return f"mlflow ui --backend-store-uri {tracking_uri}, then open http://127.0.0.1:5000/{view}"


def _context_tags() -> dict[str, str]:
    """The tags ``mlflow.start_run`` would add (user, source, git commit), without its globals."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return dict(resolve_tags({}))
    except Exception:  # noqa: BLE001 - nice to have only
        return {}


def _redacted_copy(path: Path, tmp: Path, secrets: list[str]) -> Path:
    """``path`` itself when none of its text files holds a secret, else a redacted copy in ``tmp``."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())

    def clean(f: Path) -> str | None:
        if f.suffix.lower() not in _TEXT_SUFFIXES or f.stat().st_size > _MAX_REDACTED_BYTES:
            return None
        try:
            text = f.read_text()
        except (UnicodeDecodeError, OSError):
            return None
        redacted = redact_text(text, secrets)
        return redacted if redacted != text else None

    changed = {f: text for f in files if (text := clean(f)) is not None}
    if not changed:
        return path
    if path.is_file():
        out = tmp / path.name
        out.write_text(changed[path])
        return out
    out = tmp / path.name
    shutil.copytree(path, out)
    for f, text in changed.items():
        (out / f.relative_to(path)).write_text(text)
    return out


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    text = redact_text(text)
    return text if len(text) <= 200 else text[:200] + "..."
