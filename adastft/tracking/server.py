"""An MLflow tracking server asked with plain ``requests`` within a bounded time: whether it
answers (before a run, before each batch), and the end of a run.

MLflow's own client retries a request for minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default
7 with backoff, ``MLFLOW_HTTP_REQUEST_TIMEOUT``, default 120 s); both are environment variables
read on every request by every client in the process, so they are not changed here. Instead
these calls to MLflow's documented REST API make one attempt with a short timeout, with the
credentials and TLS settings MLflow documents for its client: ``MLFLOW_TRACKING_USERNAME``/
``MLFLOW_TRACKING_PASSWORD`` (or ``~/.mlflow/credentials``), ``MLFLOW_TRACKING_TOKEN``,
``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``,
``MLFLOW_TRACKING_CLIENT_CERT_PATH``; a password in the URI's userinfo is sent by ``requests``
itself, as by MLflow's client.
"""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import requests
from mlflow.environment_variables import (
    MLFLOW_TRACKING_CLIENT_CERT_PATH,
    MLFLOW_TRACKING_INSECURE_TLS,
    MLFLOW_TRACKING_PASSWORD,
    MLFLOW_TRACKING_SERVER_CERT_PATH,
    MLFLOW_TRACKING_TOKEN,
    MLFLOW_TRACKING_USERNAME,
)

from adastft.tracking.redact import short_error

# Statuses on which MLflow's client retries (a server or proxy in trouble): no answer yet.
_RETRIED_STATUSES = {408, 429}


class Unreachable(Exception):
    """No HTTP answer: the message is why ("connection refused", "no answer within 5 s", ...)."""


def request_options() -> dict[str, Any]:
    """``requests`` keyword arguments for MLflow's documented credentials and TLS settings."""
    options: dict[str, Any] = {"headers": {}}
    username, password = MLFLOW_TRACKING_USERNAME.get(), MLFLOW_TRACKING_PASSWORD.get()
    if not (username and password):
        username, password = _credentials_file()
    if username and password:
        options["auth"] = (username, password)
    elif token := MLFLOW_TRACKING_TOKEN.get():
        options["headers"]["Authorization"] = f"Bearer {token}"
    insecure = MLFLOW_TRACKING_INSECURE_TLS.get()
    options["verify"] = False if insecure else (MLFLOW_TRACKING_SERVER_CERT_PATH.get() or True)
    if cert := MLFLOW_TRACKING_CLIENT_CERT_PATH.get():
        options["cert"] = cert
    return options


def _credentials_file() -> tuple[str | None, str | None]:
    """The ``[mlflow]`` section of ``~/.mlflow/credentials``, where MLflow's docs put them."""
    config = configparser.ConfigParser()
    config.read(Path("~/.mlflow/credentials").expanduser())
    if "mlflow" not in config:
        return None, None
    section = config["mlflow"]
    return section.get("mlflow_tracking_username"), section.get("mlflow_tracking_password")


def request(method: str, uri: str, endpoint: str, timeout: float, **kwargs) -> requests.Response:
    """``<method> <uri><endpoint>``: one attempt within ``timeout`` seconds; raises :class:`Unreachable`."""
    try:
        return requests.request(method, f"{uri.rstrip('/')}{endpoint}", timeout=timeout, **request_options(), **kwargs)
    except requests.Timeout:
        raise Unreachable(f"no answer within {timeout:g} s") from None
    except requests.RequestException as err:
        raise Unreachable("connection refused" if _refused(err) else short_error(err)) from None


def _refused(err: BaseException) -> bool:
    """Whether a ``ConnectionRefusedError`` is among the causes of ``err`` (requests wraps urllib3's
    ``MaxRetryError``, whose ``reason`` was raised from the socket's error)."""
    seen: set[int] = set()
    todo: list[Any] = [err]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        if isinstance(item, ConnectionRefusedError):
            return True
        seen.add(id(item))
        todo += [item.__cause__, item.__context__, getattr(item, "reason", None), *item.args]
    return False


def answers(uri: str, timeout: float) -> str | None:
    """``None`` when the server answers ``GET /health`` within ``timeout`` seconds with a status
    MLflow's client would not retry (a 404 of a proxy without ``/health`` counts as an answer);
    else why not. Asked before handing a batch to MLflow's client, which would retry for minutes."""
    try:
        response = request("GET", uri, "/health", timeout)
    except Unreachable as err:
        return str(err)
    if response.status_code in _RETRIED_STATUSES or response.status_code >= 500:
        return f"HTTP {response.status_code} on /health"
    return None


def server_problem(uri: str, timeout: float) -> str | None:
    """Why the server at ``uri`` cannot take a run (one sentence naming the URI), or ``None``.

    It must answer ``GET /health`` or, behind a proxy without it (an older server), the REST
    experiments search, and accept the credentials, each within ``timeout`` seconds.
    """

    def unreachable(reason: str) -> str:
        return f"MLflow tracking server {uri} is unreachable ({reason}): start it or set tracking.uri"

    try:
        health = request("GET", uri, "/health", timeout)
        if health.ok:
            return None
        # No /health (a reverse proxy in front, an older server): the REST API itself must answer.
        answer = request("GET", uri, "/api/2.0/mlflow/experiments/search", timeout, params={"max_results": 1})
    except Unreachable as err:
        return unreachable(str(err))
    if answer.status_code in (401, 403):
        return (
            f"MLflow tracking server {uri} refused the credentials (HTTP {answer.status_code}): set "
            "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"
        )
    if not answer.ok:
        return unreachable(f"HTTP {health.status_code} on /health and {answer.status_code} on the REST API")
    return None


def end_run(uri: str, run_id: str, status: str, end_time: int, timeout: float) -> str | None:
    """Mark a run ended (``status``, ``end_time`` in ms) through MLflow's documented REST API,
    ``POST /api/2.0/mlflow/runs/update``, in one attempt within ``timeout`` seconds: ``None``, or
    why not. ``MlflowClient.set_terminated`` would retry for minutes against a server that went
    away, and it prints the run's address to stdout, the password of the URI's userinfo included.
    """
    try:
        answer = request(
            "POST",
            uri,
            "/api/2.0/mlflow/runs/update",
            timeout,
            json={"run_id": run_id, "status": status, "end_time": end_time},
        )
    except Unreachable as err:
        return str(err)
    if answer.ok:
        return None
    try:
        message = answer.json().get("message", "")
    except ValueError:  # not MLflow's JSON error: a proxy's page
        message = ""
    return f"HTTP {answer.status_code}" + (f": {short_error(Exception(message))}" if message else "")
