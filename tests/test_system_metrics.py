"""MLflow's system metrics on our runs: a real SQLite store, MLflow's own sampler."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from mlflow.tracking import MlflowClient

from adastft.tracking import Tracker
from adastft.training import samples_its_node


def test_a_run_samples_its_machine_under_its_host_name_until_it_ends(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "sys", run_name="sampled", system_metrics_interval=0.2)
    time.sleep(1.5)
    tracker.end()
    client = MlflowClient(uri)
    key = f"system/{socket.gethostname()}/cpu_utilization_percentage"
    points = len(client.get_metric_history(tracker.run_id, key))
    assert points >= 3
    time.sleep(0.6)  # the sampler stopped with the run
    assert len(client.get_metric_history(tracker.run_id, key)) == points


def test_the_samplers_messages_do_not_show_the_stores_password(tmp_path, caplog):
    Tracker(f"sqlite:///{tmp_path}/mlflow.db", "sys", system_metrics_interval=60).end()
    sampler_log = logging.getLogger("mlflow.system_metrics.system_metrics_monitor")
    sampler_log.addHandler(caplog.handler)  # MLflow's loggers do not propagate to the root logger
    try:
        # what MLflow's sampler logs when the store fails: its error names the URI, userinfo included
        sampler_log.warning(
            "Failed to get mlflow run: API request to %s failed",
            "http://me:s3cr3t-pw@mlflow:5000/api/2.0/mlflow/runs/get",
        )
    finally:
        sampler_log.removeHandler(caplog.handler)
    assert "s3cr3t-pw" not in caplog.text and "http://me:***@mlflow:5000" in caplog.text


def test_a_negative_interval_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^system_metrics_interval must be >= 0 seconds \(0: off\), got -1$"):
        Tracker(f"sqlite:///{tmp_path}/mlflow.db", "sys", system_metrics_interval=-1)


def test_ddp_over_several_machines_samples_each_machine_once():
    hosts = ["a", "a", "b", "b", "c"]  # ranks 0..4
    assert [samples_its_node(hosts, rank) for rank in range(5)] == [False, False, True, False, True]
    assert not any(samples_its_node(["a", "a"], rank) for rank in range(2))  # one machine: rank 0's run has it
