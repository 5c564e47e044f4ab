"""A real `mlflow server` on 127.0.0.1 that stops during a search, and secrets that must never
reach a log, an MLflow param or tag, or an artifact.

The outage: the server's processes are stopped with SIGSTOP (a hung server: connections are
accepted and never answered, every request times out) while both trials of a search train, then
continued with SIGCONT. The kill-and-restart outage of a single run (connection refused) is in
``tests/test_tracking.py::test_server_down_mid_run_loses_no_metric``.

The secrets: AWS keys, an AWS session token, an MLflow token in the environment, a password in
the tracking URI's userinfo (``http://user:PASSWORD@127.0.0.1:port``) and the session token
inside a config value. After the run, every param, tag and artifact file of every run, the
terminal output (with the trials' logs), Hydra's and Tune's log files and the study's summary are
scanned for each secret value.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from adastft.checkpoint import load_checkpoint
from harness import MlflowServer, env, kill_group, search_cmd, space_file, tiny, wait_for
from process_helpers import remove_trial_work, trial_work_root  # tests/ is on sys.path after harness

pytestmark = pytest.mark.slow

METRICS = (
    "train_loss",
    "val_loss",
    "val_clip_accuracy",
    "val_segment_accuracy",
    "lr",
    "window_change",
    "kernel_change",
)
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAREL7EXAMPLEKEY42",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-K7MDENG-bPxRfiCYrel7secret",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEJr-rel7-session-token-0123456789",
    "MLFLOW_TRACKING_TOKEN": "mlflow-bearer-rel7-token-abcdef987654",
    "HF_TOKEN": "hf_rel7HuggingFaceTokenXYZ",
}
URI_PASSWORD = "uri-password-rel7-Zq9"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        os.killpg(srv.proc.pid, signal.SIGCONT)
    srv.stop()


def secret_uri(server: MlflowServer) -> str:
    return f"http://adastft:{URI_PASSWORD}@127.0.0.1:{server.port}"


def secret_values() -> dict[str, str]:
    return {**SECRETS, "tracking URI password": URI_PASSWORD}


def _artifact_files(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifact_files(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def _texts_of(path: Path) -> list[bytes]:
    """The bytes of a file as they would be read: parquet and torch files also decoded."""
    data = path.read_bytes()
    out = [data]
    if path.suffix == ".parquet":
        out.append(pd.read_parquet(path).to_csv().encode())
    if path.suffix == ".pt":
        try:
            out.append(repr(load_checkpoint(path)).encode())
        except Exception:  # noqa: BLE001 - a pickled model is not a checkpoint; its bytes are scanned
            pass
    return out


def scan_runs(client: MlflowClient, runs, download_to: Path) -> tuple[list[str], int]:
    """(places where a secret was found, number of params + tags + artifact files scanned)."""
    found, scanned = [], 0
    secrets = secret_values()
    for run in runs:
        run = client.get_run(run.info.run_id)
        for kind, items in (("param", run.data.params), ("tag", run.data.tags)):
            for key, value in items.items():
                scanned += 1
                for name, secret in secrets.items():
                    if secret in key or secret in str(value):
                        found.append(f"{name} in {kind} {key!r} of run {run.info.run_name}")
        for artifact in _artifact_files(client, run.info.run_id):
            scanned += 1
            local = Path(client.download_artifacts(run.info.run_id, artifact, str(download_to / run.info.run_id)))
            for blob in _texts_of(local):
                for name, secret in secrets.items():
                    if secret.encode() in blob:
                        found.append(f"{name} in artifact {artifact} of run {run.info.run_name}")
    return found, scanned


def scan_files(files, label: str) -> tuple[list[str], int]:
    found, scanned = [], 0
    for f in files:
        f = Path(f)
        if not f.is_file() or f.suffix in (".pkl", ".db") or f.stat().st_size > 50_000_000:
            continue  # state for resuming, not a log; the Optuna database
        scanned += 1
        for blob in _texts_of(f):
            for name, secret in secret_values().items():
                if secret.encode() in blob:
                    found.append(f"{name} in {label} {f}")
    return found, scanned


def scan_text(text: str, label: str) -> list[str]:
    return [f"{name} in {label}" for name, secret in secret_values().items() if secret in text]


def _trial_epochs(trial_root: Path) -> dict[str, int]:
    """The epoch of each trial's newest checkpoint (memory-mapped: only the epoch is read)."""
    out = {}
    for folder in trial_root.iterdir():
        for _ in range(20):
            try:
                out[folder.name] = torch.load(folder / "last.pt", mmap=True, weights_only=True)["epoch"]
                break
            except Exception:  # noqa: BLE001 - not there yet, or the trial's folder being reset
                time.sleep(0.1)
    return out


@pytest.fixture
def study_name():
    """A study name of this test only; its trial folders under the temp dir are removed after."""
    name = f"rel{uuid.uuid4().hex[:8]}"
    yield name
    remove_trial_work(name)


def test_mlflow_server_stopped_mid_search_loses_nothing_and_no_secret_is_logged(tmp_path, faults, server, study_name):
    outage = faults("MLflow server stopped (SIGSTOP) mid-search, then continued")
    secrets_case = faults("secrets in env, tracking URI and config during a search")
    name = study_name
    epochs = 20  # about 20 s a trial: they outlast the outage below
    overrides = [
        o
        for o in tiny(tmp_path, epochs=epochs, tracking_uri=secret_uri(server))
        if not o.startswith("tracking.log_model")
    ]
    args = [
        "--trials",
        "2",
        "--max-concurrent",
        "2",
        "--search",
        str(space_file(tmp_path)),
        "--name",
        name,
        "--scheduler",
        "none",
        "--verbose",
        *overrides,
        "tracking.log_model=true",
        f"+tracking.tags.dataset_url='s3://bucket/data?token={SECRETS['AWS_SESSION_TOKEN']}'",
    ]
    log_path = tmp_path / "search.log"
    client = MlflowClient(server.uri)
    with open(log_path, "w") as log:
        driver = subprocess.Popen(
            search_cmd(*args),
            cwd=tmp_path,
            env=env(**SECRETS),
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def both_trials_logged_an_epoch() -> bool:
                exp = client.get_experiment_by_name("reliability")
                if exp is None:
                    return False
                runs = client.search_runs([exp.experiment_id], filter_string="tags.study = '%s'" % name)
                children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
                return len(children) == 2 and all("val_loss" in r.data.metrics for r in children)

            wait_for(both_trials_logged_an_epoch, 400, "both trials to log an epoch", interval=0.5)
            trial_root = trial_work_root(tmp_path / "runs/search" / name)
            at_stop = _trial_epochs(trial_root)
            os.killpg(server.proc.pid, signal.SIGSTOP)
            stopped = time.monotonic()
            # stopped until each trial has trained two more epochs and a trial has reported the
            # outage (at most 30 s): long enough for the trials' questions to the server to time
            # out (5 s) while their batches queue, short enough that the trials outlast it
            while time.monotonic() - stopped < 30:
                time.sleep(0.5)
                at_cont = _trial_epochs(trial_root)
                if (
                    len(at_cont) == 2
                    and all(at_cont.get(t, -1) - e >= 2 for t, e in at_stop.items())
                    and "MLflow unavailable" in log_path.read_text()
                ):
                    break
            os.killpg(server.proc.pid, signal.SIGCONT)
            outage_s = time.monotonic() - stopped
            driver.wait(timeout=900)
        finally:
            os.killpg(server.proc.pid, signal.SIGCONT)
            kill_group(driver)
    output = log_path.read_text()
    assert driver.returncode == 0, output[-5000:]

    # ---- the outage -------------------------------------------------------------------------
    problems, lost = [], 0
    advanced = {t: at_cont.get(t, -1) - e for t, e in at_stop.items()}
    if len(advanced) != 2 or min(advanced.values()) < 2:
        problems.append(f"training did not go on while the server was stopped: epochs {at_stop} -> {at_cont}")
    if "MLflow unavailable" not in output:
        problems.append("no trial reported the unavailable server (expected 'MLflow unavailable ... queued')")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/runs/search/{name}/optuna.db")
    states = [t.state for t in study.get_trials()]
    if states != [TrialState.COMPLETE] * 2:
        problems.append(f"Optuna states {[s.name for s in states]}")
    exp = client.get_experiment_by_name("reliability")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.study = '%s'" % name)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    if len(parents) != 1 or len(children) != 2:
        problems.append(f"{len(parents)} study runs and {len(children)} trial runs, want 1 and 2")
    for run in runs:
        if run.info.status != "FINISHED":
            problems.append(f"run {run.info.run_name} is {run.info.status}")
    for run in children:
        for metric in METRICS:
            got = sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))
            if got != list(range(epochs)):
                problems.append(f"run {run.info.run_name}: {metric} steps {got}, want 0..{epochs - 1} once each")
                lost += len(set(range(epochs)) - set(got))
        if "test_clip_accuracy" not in run.data.metrics:
            problems.append(f"run {run.info.run_name} has no test metrics")
        files = set(_artifact_files(client, run.info.run_id))
        for want in ("tensors/window_best.npy", "plots/learning_curves.png", "config.yaml", "checkpoint/best_model.pt"):
            if want not in files:
                problems.append(f"run {run.info.run_name} lacks artifact {want}")
    if parents and not any(f.startswith("study/") for f in _artifact_files(client, parents[0].info.run_id)):
        problems.append("the study run has no study/ artifacts")
    outage.fault(
        survived=not problems, lost=lost, note=f"detail: {outage_s:.0f} s outage, epochs {at_stop} -> {at_cont}"
    )

    # ---- the secrets ------------------------------------------------------------------------
    found, scanned = scan_runs(client, runs, tmp_path / "download")
    found += scan_text(output, "the search's terminal output (with the trials' logs)")
    exp_dir = tmp_path / "runs/search" / name
    more, n = scan_files(
        [p for p in exp_dir.rglob("*") if p.suffix in (".json", ".csv", ".txt", ".log", ".yaml", ".parquet")],
        "the study folder",
    )
    found += more
    secrets_case.fault(survived=not found, note=f"detail: {scanned} params, tags and artifacts + {n} files scanned")
    assert not problems and not found, "\n".join(problems + ["secrets leaked:"] * bool(found) + sorted(set(found)))


def test_training_command_line_logs_no_secret(tmp_path, faults, server):
    case = faults("secrets in env, tracking URI and config of `python -m adastft.train`")
    out_dir = tmp_path / "run"
    overrides = [
        o
        for o in tiny(tmp_path, epochs=1, tracking_uri=secret_uri(server), experiment="reliability-cli")
        if not o.startswith("tracking.log_model")
    ]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "adastft.train",
            *overrides,
            "tracking=server",
            f"train.out_dir={out_dir}",
            "tracking.log_model=true",
            f"+tracking.tags.dataset_url='s3://bucket/data?token={SECRETS['AWS_SESSION_TOKEN']}'",
        ],
        cwd=tmp_path,
        env=env(**SECRETS),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name("reliability-cli")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"] == f"http://adastft:***@127.0.0.1:{server.port}"
    found, scanned = scan_runs(client, [run], tmp_path / "download")
    found += scan_text(proc.stdout + proc.stderr, "the terminal output")
    more, n = scan_files(out_dir.glob("*.log"), "the run's log")
    found += more
    case.fault(survived=not found, note=f"detail: {scanned} params, tags and artifacts + {n} log files scanned")
    assert not found, "secrets leaked:\n" + "\n".join(sorted(set(found)))
