"""The queue of params, metrics and tags that outlives an outage (adastft.tracking.batch_queue), and
the bounded questions to a tracking server (adastft.tracking.server).

The queue runs against a real SQLite store through ``MlflowClient.log_batch``; its outage is the
probe saying the server does not answer (the real server stopped mid-run is
tests/test_tracking.py::test_server_down_mid_run_loses_no_metric). A hung server, and servers that
answer with chosen statuses or record the credentials they get, are stand-ins on loopback: a real
``mlflow server`` cannot be made to hang on one request only, or to drop ``/health``.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from adastft.tracking.batch_queue import BatchQueue
from adastft.tracking.server import answers, end_run, request_options, server_problem
from mlflow_server import eventually, free_port


@pytest.fixture
def run(tmp_path: Path, empty_mlflow_store: Path) -> tuple[MlflowClient, str]:
    """A real SQLite store (a copy of the empty one) and a run in it."""
    shutil.copy(empty_mlflow_store, tmp_path / "mlflow.db")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return client, client.create_run(client.create_experiment("queue")).info.run_id


def metrics(step: int) -> list[Metric]:
    return [Metric("loss", float(step), int(time.time() * 1000), step)]


def steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


class Outage:
    """The probe of a queue, switched by the test: ``None`` while the server answers."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.calls = 0

    def __call__(self) -> str | None:
        self.calls += 1
        return self.reason


def test_batches_wait_out_an_outage_and_arrive_once_in_order(run, caplog):
    client, run_id = run
    outage = Outage()
    queue = BatchQueue(client, run_id, probe=outage, retry_interval=0.2)
    queue.put("metrics", metrics(0), 1000)
    eventually(lambda: queue.pending()["metrics"] == 0, "step 0 to be sent")

    outage.reason = "connection refused"
    with caplog.at_level(logging.INFO, logger="adastft.tracking"):
        for step in (1, 2, 3):
            queue.put("metrics", metrics(step), 1000)
        time.sleep(0.7)  # a few retries, all refused
        assert queue.pending() == {"params": 0, "metrics": 3, "tags": 0}
        assert steps(client, run_id) == [0]
        assert outage.calls >= 3
        warnings = [r.getMessage() for r in caplog.records if "MLflow unavailable" in r.getMessage()]
        assert len(warnings) == 1, warnings  # once per outage, however many retries
        assert re.fullmatch(
            rf"MLflow unavailable \(connection refused\); [1-3] batches queued for run {run_id}, "
            r"retrying in 0\.2 s",
            warnings[0],
        ), warnings[0]

        outage.reason = None  # back: the next retry sends them, with no new batch to trigger it
        eventually(lambda: queue.pending()["metrics"] == 0, "the queued batches to be sent")
    assert "MLflow available again" in caplog.text
    assert queue.close(timeout=5) is None
    assert steps(client, run_id) == [0, 1, 2, 3]


def test_with_no_retry_interval_the_next_batch_retries(run):
    client, run_id = run
    outage = Outage()
    outage.reason = "connection refused"
    queue = BatchQueue(client, run_id, probe=outage, retry_interval=0)
    queue.put("metrics", metrics(0), 1000)
    eventually(lambda: outage.calls == 1, "the first try")
    outage.reason = None
    time.sleep(0.3)
    assert outage.calls == 1 and queue.pending()["metrics"] == 1  # no busy loop of retries
    queue.put("metrics", metrics(1), 1000)
    eventually(lambda: queue.pending()["metrics"] == 0, "both batches to be sent")
    assert queue.close(timeout=5) is None
    assert steps(client, run_id) == [0, 1]


def test_close_gives_up_at_once_on_a_server_that_does_not_answer(run):
    client, run_id = run
    outage = Outage()
    queue = BatchQueue(client, run_id, probe=outage, retry_interval=60)
    outage.reason = "connection refused"
    queue.put("metrics", metrics(0), 1000)
    start = time.monotonic()
    assert queue.close(timeout=60) == "connection refused"
    assert time.monotonic() - start < 2
    assert queue.pending() == {"params": 0, "metrics": 1, "tags": 0}
    assert steps(client, run_id) == []


def test_a_local_store_is_sent_to_in_the_callers_thread(run):
    client, run_id = run
    queue = BatchQueue(client, run_id, probe=None, retry_interval=10)
    queue.put("metrics", metrics(0), 1000)
    assert queue.pending()["metrics"] == 0 and steps(client, run_id) == [0]
    assert queue.close(timeout=0) is None
    with pytest.raises(ValueError, match="kind must be one of"):
        queue.put("metric", metrics(1), 1000)


# ---- stand-in servers ---------------------------------------------------------------------------


class StandIn:
    """An HTTP server on loopback answering ``GET /health`` with ``health`` (or never, with
    ``health_hangs``), ``GET /api/...`` with ``api``, and a POST with ``post`` (``None``: holding
    it until released)."""

    def __init__(self, health: int = 200, api: int = 200) -> None:
        self.health, self.api, self.health_hangs = health, api, False
        self.post: int | None = None
        self.release, self.posted = threading.Event(), threading.Event()
        self.headers: list[dict[str, str]] = []
        self.posts: list[tuple[str, dict]] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                standin.headers.append(dict(self.headers))
                if self.path.startswith("/health") and standin.health_hangs:
                    standin.release.wait(30)
                self.answer(standin.health if self.path.startswith("/health") else standin.api)

            def do_POST(self):
                standin.posts.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                standin.posted.set()
                if standin.post is None:
                    standin.release.wait(30)
                self.answer(
                    standin.post or 200,
                    b'{"error_code": "INVALID_STATE", "message": "run is gone"}'
                    if (standin.post or 200) >= 400
                    else b"{}",
                )

            def answer(self, status: int, body: bytes = b"{}") -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def standin():
    server = StandIn()
    yield server
    server.stop()


@pytest.mark.parametrize("health_hangs", [False, True])
def test_close_is_bounded_while_a_batch_hangs_in_mlflows_client(standin, health_hangs):
    """MLflow's client waits up to 120 s for an answer and retries: ``close`` does not wait for it."""
    queue = BatchQueue(MlflowClient(standin.uri), "run-1", probe=lambda: answers(standin.uri, 1.0), retry_interval=0)
    queue.put("metrics", metrics(0), 1000)
    assert standin.posted.wait(10), "the batch never reached the stand-in"
    standin.health_hangs = health_hangs
    start = time.monotonic()
    reason = queue.close(timeout=10 if health_hangs else 2.5)
    took = time.monotonic() - start
    if health_hangs:  # the server stopped answering: given up after one probe, long before 10 s
        assert reason == "no answer within 1 s" and took < 3.5
    else:  # it answers, and the batch is still in MLflow's hands: waited up to the timeout
        assert reason == "a batch was still being sent after 2.5 s" and 2.4 < took < 4
    assert queue.pending()["metrics"] == 1


def test_a_server_that_hangs_mid_request_is_reported_by_the_next_batch(standin, caplog):
    queue = BatchQueue(
        MlflowClient(standin.uri), "run-1", probe=lambda: answers(standin.uri, 1.0), retry_interval=0, stall_after=0.5
    )
    queue.put("metrics", metrics(0), 1000)
    assert standin.posted.wait(10), "the batch never reached the stand-in"
    with caplog.at_level(logging.WARNING, logger="adastft.tracking"):
        start = time.monotonic()
        queue.put("metrics", metrics(1), 1000)  # too soon to tell
        assert "MLflow unavailable" not in caplog.text
        time.sleep(0.6)
        queue.put("metrics", metrics(2), 1000)
        queue.put("metrics", metrics(3), 1000)
        assert time.monotonic() - start < 1.0  # the caller never waits on the hung request
    warnings = [r.getMessage() for r in caplog.records if "MLflow unavailable" in r.getMessage()]
    assert warnings == ["MLflow unavailable (no answer within 0.5 s); 3 batches queued for run run-1"]
    standin.post = 200
    standin.release.set()  # it answers: the rest follows
    eventually(lambda: queue.pending()["metrics"] == 0, "the queued batches to be sent")
    assert queue.close(timeout=5) is None
    assert [body["metrics"][0]["step"] for _, body in standin.posts] == [0, 1, 2, 3]


def test_a_run_is_ended_through_the_rest_api_in_one_bounded_attempt(standin, capfd):
    standin.post = 200
    assert end_run(standin.uri, "r1", "KILLED", 1234, 2.0) is None
    assert standin.posts == [("/api/2.0/mlflow/runs/update", {"run_id": "r1", "status": "KILLED", "end_time": 1234})]
    standin.post = 400
    assert end_run(standin.uri, "r1", "FINISHED", 1, 2.0) == "HTTP 400: run is gone"
    assert end_run(f"http://127.0.0.1:{free_port()}", "r1", "FINISHED", 1, 2.0) == "connection refused"
    assert capfd.readouterr().out == ""  # MlflowClient.set_terminated prints the run's address


def test_answers_says_why_a_server_does_not(standin):
    assert answers(standin.uri, 1.0) is None
    standin.health = 404  # a proxy without /health: it answered
    assert answers(standin.uri, 1.0) is None
    standin.health = 503
    assert answers(standin.uri, 1.0) == "HTTP 503 on /health"
    assert answers(f"http://127.0.0.1:{free_port()}", 1.0) == "connection refused"
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.monotonic()
        assert answers(f"http://127.0.0.1:{silent.getsockname()[1]}", 0.5) == "no answer within 0.5 s"
        assert time.monotonic() - start < 2


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for name in (
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_INSECURE_TLS",
        "MLFLOW_TRACKING_SERVER_CERT_PATH",
        "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials but the test's
    return tmp_path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_checks_send_the_credentials_mlflow_documents(standin, no_credentials, monkeypatch):
    standin.health = 404  # so that the check asks the REST API too, as behind a proxy
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-123")
    assert server_problem(standin.uri, 2.0) is None
    assert standin.headers[-1]["Authorization"] == "Bearer tok-123"

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "me")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    server_problem(standin.uri, 2.0)
    assert standin.headers[-1]["Authorization"] == basic("me", "pw")  # before the token, as MLflow's client

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    (no_credentials / ".mlflow").mkdir()
    (no_credentials / ".mlflow" / "credentials").write_text(
        "[mlflow]\nmlflow_tracking_username = file-user\nmlflow_tracking_password = file-pw\n"
    )
    server_problem(standin.uri, 2.0)
    assert standin.headers[-1]["Authorization"] == basic("file-user", "file-pw")


def test_tls_settings_follow_mlflows_variables(no_credentials, monkeypatch):
    assert request_options()["verify"] is True and "cert" not in request_options()
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", "/ca.pem")
    monkeypatch.setenv("MLFLOW_TRACKING_CLIENT_CERT_PATH", "/client.pem")
    assert (request_options()["verify"], request_options()["cert"]) == ("/ca.pem", "/client.pem")
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    assert request_options()["verify"] is False
