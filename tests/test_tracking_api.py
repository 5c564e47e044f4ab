"""The shape of adastft.tracking: one protocol both trackers follow, and MLflow used only through
its public API."""

from __future__ import annotations

import inspect
import re
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from adastft.tracking import NullTracker, RunTracker, Tracker

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def uri(tmp_path: Path, empty_mlflow_store: Path) -> str:
    shutil.copy(empty_mlflow_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def protocol_methods() -> set[str]:
    return {
        name
        for name, value in vars(RunTracker).items()
        if callable(value) and (not name.startswith("_") or name in ("__enter__", "__exit__"))
    }


def protocol_members() -> set[str]:
    return protocol_methods() | set(RunTracker.__annotations__)


def test_both_trackers_follow_the_protocol_with_the_same_signatures(uri):
    tracker = Tracker(uri, "api")
    try:
        assert isinstance(tracker, RunTracker) and isinstance(NullTracker(), RunTracker)
        for name in sorted(protocol_methods()):
            want = getattr(RunTracker, name)
            expected = [(p.name, p.kind, p.default) for p in inspect.signature(want).parameters.values()]
            for cls in (Tracker, NullTracker):
                got = [(p.name, p.kind, p.default) for p in inspect.signature(getattr(cls, name)).parameters.values()]
                assert got == expected, f"{cls.__name__}.{name}{inspect.signature(getattr(cls, name))}"
    finally:
        tracker.end()


def test_active_tells_the_trackers_apart():
    assert Tracker.active is True and NullTracker.active is False
    assert set(RunTracker.__annotations__) >= {"active", "run_id", "experiment_id", "tracking_uri"}


def test_the_protocol_has_every_tracker_call_of_training_and_the_search():
    used = set()
    for path in [REPO / "adastft" / "training.py", *sorted((REPO / "tune").glob("*.py"))]:
        used |= set(re.findall(r"\btracker\.(\w+)", path.read_text()))
    assert used, "no tracker calls found: the scan is out of date"
    assert used <= protocol_members(), sorted(used - protocol_members())


def test_null_tracker_answers_questions_without_a_store():
    tracker = NullTracker()
    assert (tracker.tracking_uri, tracker.metric_steps("val_loss"), tracker.tag("t")) == (None, [], None)
    assert tracker.model_artifact_uri("models:/m") is None
    with pytest.raises(ValueError, match="status must be one of"):
        tracker.end("DONE")


# MLflow's internals: its REST plumbing, protobufs, the client's private store, any `_name`.
PRIVATE_MLFLOW = re.compile(
    r"_tracking_client|mlflow\.protos|http_request|mlflow\.utils\.rest_utils|RestStore|message_to_json"
    r"|verify_rest_response|from mlflow[\w.]* import[^\n]*\b_\w+|mlflow(\.\w+)*\._\w+|\.store\.get_host_creds"
)


def test_mlflow_is_used_through_its_public_api_only():
    found = []
    for folder in ("adastft", "tune"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if PRIVATE_MLFLOW.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "MLflow internals in use:\n" + "\n".join(found)


def test_the_private_api_scan_finds_what_it_looks_for():
    for line in (
        "store = client._tracking_client.store",
        "from mlflow.protos.service_pb2 import LogBatch",
        "from mlflow.utils.rest_utils import http_request",
        "from mlflow.tracking.fluent import _get_store",
        "mlflow.tracking._tracking_service.utils",
    ):
        assert PRIVATE_MLFLOW.search(line), line
    for line in (
        "client.log_batch(run_id, metrics=m, synchronous=True)",
        "from mlflow.tracking import MlflowClient",
        "self._client.get_run(run_id)",
    ):
        assert not PRIVATE_MLFLOW.search(line), line


def test_tracker_logs_through_the_clients_log_batch(uri, monkeypatch):
    """The public ``MlflowClient.log_batch``, one call per batch, synchronous (the queue is ours)."""
    calls = []
    real = MlflowClient.log_batch

    def spy(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
        calls.append((len(metrics), len(params), len(tags), synchronous))
        return real(self, run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous)

    monkeypatch.setattr(MlflowClient, "log_batch", spy)  # a spy on the real call
    with Tracker(uri, "api") as tracker:
        tracker.log_params({f"p{i}": i for i in range(150)})
        tracker.log_metrics({"loss": 1.0, "acc": 0.5}, step=0)
        tracker.set_tags({"t": "v"})
    assert calls == [(0, 100, 0, True), (0, 50, 0, True), (2, 0, 0, True), (0, 0, 1, True)]


def test_the_batch_limits_are_mlflows_documented_ones():
    """The tracker cuts batches to MLflow's REST limits; if a release moves the module they come
    from, the documented values are used: they must agree with the installed MLflow's."""
    from adastft.tracking import tracker

    assert (
        tracker.MAX_METRICS_PER_BATCH,
        tracker.MAX_PARAMS_TAGS_PER_BATCH,
        tracker.MAX_PARAM_VAL_LENGTH,
        tracker.MAX_TAG_VAL_LENGTH,
    ) == (1000, 100, 6000, 8000)
