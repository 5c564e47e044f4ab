"""adastft.tracking against real MLflow stores: a SQLite file in tmp_path and a real `mlflow server`."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow.pytorch  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from mlflow_server import MlflowServer, eventually, free_port  # noqa: E402
from adastft.tracking import (  # noqa: E402
    PARENT_RUN_TAG,
    NullTracker,
    Tracker,
    TrackingUnavailable,
    check_tracking_uri,
    default_tracking_uri,
    flatten,
)


@pytest.fixture
def uri(tmp_path: Path, empty_mlflow_store: Path) -> str:
    """A fresh real SQLite store per test (a copy of the empty one)."""
    shutil.copy(empty_mlflow_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def all_sent(tracker: Tracker) -> bool:
    return not any(tracker.pending().values())


# ---- pure helpers ------------------------------------------------------------------------------


def test_flatten_nests_with_dots_and_lists_as_repr():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "l": [1, 2], "t": (3,), "e": {}, "n": None}) == {
        "a.b": 1,
        "a.c.d": "x",
        "l": "[1, 2]",
        "t": "(3,)",
        "e": "{}",
        "n": None,
    }
    assert flatten({"b": 2}, prefix="cfg") == {"cfg.b": 2}


def test_default_tracking_uri_is_sqlite_beside_workdir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5000")  # as a cluster's node.sh sets it
    assert default_tracking_uri(tmp_path) == "http://10.0.0.5:5000"


# ---- check_tracking_uri ------------------------------------------------------------------------


def test_check_sqlite_creates_missing_folder(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path}/new/sub/mlflow.db")
    assert (tmp_path / "new" / "sub").is_dir()
    check_tracking_uri((tmp_path / "runs").as_uri())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_sqlite_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(TrackingUnavailable, match="ro"):
            check_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    finally:
        folder.chmod(0o700)


def test_check_sqlite_under_a_file_is_unavailable(tmp_path):
    (tmp_path / "afile").write_text("x")
    uri = f"sqlite:///{tmp_path}/afile/mlflow.db"
    with pytest.raises(TrackingUnavailable, match=f"MLflow store {uri} is not usable"):
        check_tracking_uri(uri)


@pytest.mark.parametrize("bad", ["mlruns", "postgresql://h/db", "sqlite:///:memory:", "ftp://x"])
def test_check_unsupported_uri_is_value_error(bad):
    with pytest.raises(ValueError, match="unsupported tracking URI"):
        check_tracking_uri(bad)


def test_check_closed_port_is_unavailable_fast():
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as info:
        check_tracking_uri(uri, timeout=5.0)
    assert time.monotonic() - start < 5.0
    assert str(info.value) == (
        f"MLflow tracking server {uri} is unreachable (connection refused): start it or set tracking.uri"
    )


@pytest.mark.parametrize(
    "health, api, message",
    [
        (404, 200, None),  # a proxy without /health in front of a working server
        (404, 401, "refused the credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME"),
        (404, 404, "is unreachable (HTTP 404 on /health and 404 on the REST API)"),
    ],
)
def test_check_server_without_health_falls_back_to_rest(health, api, message):
    # A stand-in for a reverse proxy: the real server cannot be made to drop /health.
    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(health if self.path.startswith("/health") else api)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    proxy = HTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{proxy.server_port}"
    try:
        if message is None:
            check_tracking_uri(uri)
        else:
            with pytest.raises(
                TrackingUnavailable, match=re.escape(f"MLflow tracking server {uri} ") + ".*" + re.escape(message)
            ):
                check_tracking_uri(uri)
    finally:
        proxy.shutdown()
        proxy.server_close()


# ---- Tracker on a SQLite store -----------------------------------------------------------------


def test_params_flattened_and_read_back(uri):
    with Tracker(uri, "exp", run_name="params") as tracker:
        params = {"model": {"depth": 18, "stft": {"n_fft": 1024}}, "lrs": [0.1, 0.01]}
        params.update({f"many.p{i}": i for i in range(150)})  # more than one batch of 100
        tracker.log_params(params)
        tracker.log_params({"long": "x" * 7000})
    logged = MlflowClient(uri).get_run(tracker.run_id).data.params
    assert logged["model.depth"] == "18"
    assert logged["model.stft.n_fft"] == "1024"
    assert logged["lrs"] == "[0.1, 0.01]"
    assert logged["many.p149"] == "149"
    assert logged["long"] == "x" * 6000  # MLflow's limit


def test_secrets_never_logged(uri, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "abc123secret")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # named like a token, is not one
    with Tracker(uri, "exp", tags={"note": "key=abc123secret"}) as tracker:
        tracker.log_params(
            {
                "storage": {"url": "s3://bucket?secret=abc123secret", "db_password": "hunter22"},
                "api_key": "k-1",
                "max_tokens": 5,
                "flag": "false",
            }
        )
        tracker.log_text("creds abc123secret", "notes.txt")
    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    everything = repr(run.data.params) + repr(run.data.tags)
    assert "abc123secret" not in everything and "hunter22" not in everything
    assert run.data.params["storage.url"] == "s3://bucket?secret=***"
    assert run.data.params["storage.db_password"] == "***"
    assert run.data.params["api_key"] == "***"
    assert run.data.params["max_tokens"] == "5"
    assert run.data.params["flag"] == "false"
    assert run.data.tags["note"] == "key=***"
    text = Path(client.download_artifacts(tracker.run_id, "notes.txt", str(tmp_path / "dl"))).read_text()
    assert text == "creds ***"


def test_metrics_per_step_and_non_finite(uri):
    with Tracker(uri, "exp") as tracker:
        for step in range(5):
            tracker.log_metrics({"train.loss": 1.0 / (step + 1), "val.acc": step / 10}, step=step)
        tracker.log_metrics({"diverged": float("nan"), "blown": float("inf")}, step=5)
        assert tracker.pending() == {"params": 0, "metrics": 0, "tags": 0}
    client = MlflowClient(uri)
    assert history(client, tracker.run_id, "train.loss") == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert [s for s, _ in history(client, tracker.run_id, "val.acc")] == list(range(5))
    assert math.isnan(history(client, tracker.run_id, "diverged")[0][1])
    assert history(client, tracker.run_id, "blown")[0][1] > 1e300


def test_artifacts_tensors_figure_dict_text(uri, tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "last.pt").write_bytes(b"abc")
    (tmp_path / "single.txt").write_text("one")
    window = torch.hann_window(16, dtype=torch.float64, requires_grad=True) * 2
    with Tracker(uri, "exp") as tracker:
        tracker.log_tensor("window", window)
        tracker.log_tensor("kernel", torch.ones(2, 3, dtype=torch.bfloat16), artifact_dir="learned")
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        tracker.log_figure(fig, "plots/window.png")
        tracker.log_dict({"a": {"b": 1}}, "config.yaml")
        tracker.log_dict({"a": 1}, "summary.json")
        tracker.log_artifacts(tmp_path / "ckpt", "checkpoints")
        tracker.log_artifact(tmp_path / "single.txt")
    assert not plt.fignum_exists(fig.number)
    client = MlflowClient(uri)
    out = Path(client.download_artifacts(tracker.run_id, "", str(tmp_path / "dl")))
    assert torch.equal(torch.load(out / "tensors" / "window.pt"), window.detach())
    np.testing.assert_array_equal(np.load(out / "tensors" / "window.npy"), window.detach().numpy())
    assert np.load(out / "learned" / "kernel.npy").dtype == np.float32
    assert torch.load(out / "learned" / "kernel.pt").dtype == torch.bfloat16
    assert (out / "plots" / "window.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "config.yaml").read_text().startswith("a:\n  b: 1")
    assert (out / "summary.json").read_text().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert (out / "checkpoints" / "last.pt").read_bytes() == b"abc"
    assert (out / "single.txt").read_text() == "one"
    # Artifacts sit in mlartifacts/ beside the database, where `mlflow ui` run there finds them.
    beside_db = (tmp_path / "mlartifacts").as_uri()
    assert client.get_run(tracker.run_id).info.artifact_uri.startswith(beside_db + "/")


def test_logged_model_loads_back_with_same_output(uri, monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)).eval()
    x = torch.randn(5, 8)
    with Tracker(uri, "exp") as tracker:
        model_uri = tracker.log_model(model, name="best_model")
        location = tracker.model_artifact_uri(model_uri)
    assert model_uri.startswith("models:/")
    client = MlflowClient(uri)
    logged = client.get_logged_model(model_uri.removeprefix("models:/"))
    assert (logged.name, logged.source_run_id, str(logged.status)) == ("best_model", tracker.run_id, "READY")
    loaded = mlflow.pytorch.load_model(location)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # The models:/ URI loads too once the process' MLflow points at this store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    torch.testing.assert_close(mlflow.pytorch.load_model(model_uri)(x), model(x), rtol=0, atol=0)


def test_nested_child_run_carries_parent_tag(uri):
    parent = Tracker(uri, "search", run_name="study")
    child = Tracker(uri, "search", run_name="trial-0", parent_run_id=parent.run_id)
    child.end()
    parent.end()
    run = MlflowClient(uri).get_run(child.run_id)
    assert run.data.tags[PARENT_RUN_TAG] == parent.run_id
    assert run.info.run_name == "trial-0"
    assert child.experiment_id == parent.experiment_id


def test_experiment_is_looked_up_once_yet_a_deleted_one_is_found_again(uri):
    """Trials sharing a process remember the experiment's id; a stale id never loses a run."""
    client = MlflowClient(uri)
    first = Tracker(uri, "exp")
    lookups = []  # a spy on the real call, to count the store's lookups
    real_lookup = MlflowClient.get_experiment_by_name
    MlflowClient.get_experiment_by_name = lambda self, name: lookups.append(name) or real_lookup(self, name)
    try:
        again = Tracker(uri, "exp")
        assert (again.experiment_id, lookups) == (first.experiment_id, [])
        client.delete_experiment(first.experiment_id)  # in the UI, mid-study
        restored = Tracker(uri, "exp")
    finally:
        MlflowClient.get_experiment_by_name = real_lookup
    assert restored.experiment_id == first.experiment_id and lookups == ["exp"]
    assert client.get_experiment(first.experiment_id).lifecycle_stage == "active"
    assert client.get_run(restored.run_id).info.experiment_id == first.experiment_id


def test_resume_by_run_id_makes_no_second_run(uri):
    first = Tracker(uri, "exp", run_name="resumable")
    first.log_metrics({"loss": 2.0}, step=0)
    first.end("KILLED")
    resumed = Tracker(uri, "exp", run_id=first.run_id)
    assert (resumed.run_id, resumed.experiment_id) == (first.run_id, first.experiment_id)
    client = MlflowClient(uri)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    resumed.log_metrics({"loss": 1.0}, step=1)
    resumed.end()
    runs = client.search_runs([first.experiment_id])
    assert [r.info.run_id for r in runs] == [first.run_id]
    assert history(client, first.run_id, "loss") == [(0, 2.0), (1, 1.0)]
    assert runs[0].info.status == "FINISHED"


def test_end_status_and_idempotent(uri):
    tracker = Tracker(uri, "exp")
    tracker.end("FAILED")
    tracker.end("FINISHED")  # no effect
    assert MlflowClient(uri).get_run(tracker.run_id).info.status == "FAILED"
    with pytest.raises(ValueError, match="status must be one of"):
        tracker.end("DONE")


def test_context_manager_fails_run_on_exception(uri):
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker(uri, "exp") as tracker:
            tracker.log_metrics({"loss": 1.0}, step=0)
            raise RuntimeError("boom")
    assert MlflowClient(uri).get_run(tracker.run_id).info.status == "FAILED"


def test_runs_do_not_touch_mlflow_globals(uri):
    a, b = Tracker(uri, "exp-a"), Tracker(uri, "exp-b")
    assert mlflow.active_run() is None
    a.end()
    b.end()
    assert {e.name for e in MlflowClient(uri).search_experiments()} >= {"exp-a", "exp-b"}


def test_null_tracker_does_nothing(tmp_path):
    with NullTracker() as tracker:
        assert tracker.run_id is None
        tracker.log_params({"a": 1})
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.set_tags({"a": "b"})
        tracker.log_tensor("w", torch.ones(2))
        fig = plt.figure()
        tracker.log_figure(fig, "f.png")
        assert not plt.fignum_exists(fig.number)
        assert tracker.log_model(torch.nn.Linear(1, 1)) is None
    assert list(tmp_path.iterdir()) == []


def test_rejected_batch_is_dropped_not_raised(uri, caplog):
    with Tracker(uri, "exp") as tracker:
        tracker.log_params({"lr": 0.1})
        with caplog.at_level(logging.ERROR, logger="adastft.tracking"):
            tracker.log_params({"lr": 0.2})  # MLflow forbids changing a param
        tracker.log_metrics({"loss": 1.0}, step=0)
        assert tracker.pending()["params"] == 0
    assert "rejected" in caplog.text
    assert MlflowClient(uri).get_run(tracker.run_id).data.params["lr"] == "0.1"


# ---- a real MLflow server that goes away mid-run -----------------------------------------------


@pytest.fixture(scope="module")
def _server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("server"), artifacts="direct")
    yield srv
    srv.stop()


@pytest.fixture
def server(_server):
    """One server for the module (a start costs 10-20 s on 2 cores), running when a test begins."""
    if not _server.running:
        _server.start()
    return _server


@pytest.mark.slow
def test_server_down_mid_run_loses_no_metric(server, caplog):
    check_tracking_uri(server.uri)
    tracker = Tracker(server.uri, "outage", run_name="survivor", retry_interval=0.0)
    tracker.log_params({"model": {"depth": 18}})
    for step in range(3):
        tracker.log_metrics({"loss": float(step)}, step=step)
    eventually(lambda: all_sent(tracker), "the first batches to reach the server")

    server.stop()
    with pytest.raises(TrackingUnavailable, match="connection refused"):
        check_tracking_uri(server.uri, timeout=2)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="adastft.tracking"):
        for step in range(3, 6):
            tracker.log_metrics({"loss": float(step)}, step=step)
        tracker.log_params({"late": 1})
        assert time.monotonic() - start < 5.0
        assert tracker.pending() == {"params": 1, "metrics": 3, "tags": 0}
        eventually(lambda: "MLflow unavailable" in caplog.text, "the outage to be reported")

    server.start()
    tracker.end()
    client = MlflowClient(server.uri)
    assert history(client, tracker.run_id, "loss") == [(s, float(s)) for s in range(6)]
    run = client.get_run(tracker.run_id)
    assert run.data.params == {"model.depth": "18", "late": "1"}
    assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_server_gone_at_end_warns_once_with_lost_count(server, caplog):
    tracker = Tracker(server.uri, "outage", retry_interval=0.0)
    tracker.log_metrics({"loss": 0.0}, step=0)
    eventually(lambda: all_sent(tracker), "step 0 to reach the server")
    server.stop()
    tracker.log_metrics({"loss": 1.0, "acc": 0.5}, step=1)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="adastft.tracking"):
        tracker.end()
    assert time.monotonic() - start < 5.0
    lost = [r for r in caplog.records if "unsent" in r.getMessage()]
    assert len(lost) == 1 and "2 metric values" in lost[0].getMessage()
