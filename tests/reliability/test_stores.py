"""Stores under contention: two processes creating the same new SQLite MLflow store at once.

Users start runs in two terminals and Hydra's multirun launchers start them in parallel: on a
new ``mlflow.db`` both then create MLflow's schema, and without ``adastft.tracking.open_client``'s
lock one fails ("duplicate column name: step"). The race is arranged by construction: two
processes forked after the imports wait on one barrier, then each opens a run in the store.
"""

from __future__ import annotations

import multiprocessing

import pytest
from mlflow.tracking import MlflowClient

from adastft.tracking import Tracker

pytestmark = pytest.mark.slow

ROUNDS = 3


def _open_run(uri: str, barrier, i: int, results) -> None:
    barrier.wait()
    try:
        tracker = Tracker(uri, "race", run_name=f"run{i}")
        tracker.log_metrics({"x": float(i)}, step=0)
        tracker.end("FINISHED")
        results.put((i, "ok"))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put((i, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))


def test_two_processes_create_one_new_mlflow_store_at_once(tmp_path, faults):
    case = faults(f"two processes create one new SQLite MLflow store at once x{ROUNDS}")
    ctx = multiprocessing.get_context("fork")
    failures = []
    for r in range(ROUNDS):
        uri = f"sqlite:///{tmp_path}/round{r}/mlflow.db"
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_open_run, args=(uri, barrier, i, results)) for i in range(2)]
        for p in procs:
            p.start()
        outcomes = dict(results.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(60)
        problems = [f"process {i}: {what}" for i, what in sorted(outcomes.items()) if what != "ok"]
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("race").experiment_id]) if not problems else []
        if not problems and sorted(r.info.status for r in runs) != ["FINISHED", "FINISHED"]:
            problems.append(f"runs in the store: {sorted(r.info.status for r in runs)}")
        case.fault(survived=not problems, note="; ".join(problems))
        failures += [f"round {r}: {p}" for p in problems]
    assert not failures, "\n".join(failures)
