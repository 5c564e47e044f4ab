"""The search for real: `python tune/search.py` on a real local Ray, a real SQLite MLflow store,
the synthetic set, and the Optuna study read back from its SQLite file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from adastft.checkpoint import load_checkpoint
from adastft.config import Config
from adastft.timing import EPOCH_SECONDS, PHASES, total_metric
from process_helpers import optuna_states, trial_pids, trial_work_root

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ROOT / "tune" / "search.py"

pytestmark = pytest.mark.slow


def tiny(tmp_path: Path, epochs: int = 4) -> list[str]:
    """Hydra overrides for trials of a few seconds each on a CPU."""
    return [
        "data=synthetic",
        "data.sample_rate=8000",
        "data.clip_seconds=2.0",
        "data.synthetic_clips_per_class=4",
        "data.parts=2",
        "data.crops_per_clip=1",
        "data.batch_size=8",
        "data.time_mask_frames=2",
        "data.freq_mask_bins=4",
        f"data.cache_dir={tmp_path}/cache",
        "stft.n_fft=256",
        "stft.hop_length=128",
        "stft.n_mels=32",
        f"train.epochs={epochs}",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        "tracking.experiment=search-test",
        "tracking.log_model=false",
    ]


def space_file(tmp_path: Path, points: list[dict] | None = None) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "metric": "val_loss",
                "mode": "min",
                "seed": 0,
                "n_startup_trials": 2,
                "space": {
                    "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
                    "optim.name": {"type": "categorical", "choices": ["adamw", "sgd"]},
                    "stft.learn_window": {"type": "categorical", "choices": [True, False]},
                },
                "points_to_evaluate": points or [],
            }
        )
    )
    return path


def run_search(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(SEARCH), *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout
    )
    return proc


def study(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/runs/search/{name}/optuna.db")


def child_runs(tmp_path: Path, parent_name: str):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("search-test")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == parent_name and "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, children


def _artifacts(client, run_id, path=None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_asha_search_prunes_in_optuna_and_tracks_every_trial(tmp_path):
    # First points, run one at a time so ASHA's decisions do not depend on timing: one diverges
    # (SGD at lr 1e4: it must fail alone while the study goes on; Optuna takes an enqueued value
    # outside the distribution, with a warning), one learns gently, one is far worse at epoch 1
    # (AdamW at lr 0.03 on this tiny set) and must be stopped there.
    space = space_file(
        tmp_path,
        points=[
            {"optim.lr": 1e4, "optim.name": "sgd", "stft.learn_window": False},
            {"optim.lr": 1e-4, "optim.name": "sgd", "stft.learn_window": False},
            {"optim.lr": 3e-2, "optim.name": "adamw", "stft.learn_window": True},
        ],
    )
    proc = run_search(
        tmp_path,
        "--trials",
        "5",
        "--search",
        str(space),
        "--name",
        "asha",
        "--max-failures",
        "1",
        "--max-concurrent",
        "1",
        *tiny(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "best trial" in proc.stdout and "Trial status" in proc.stdout

    trials = study(tmp_path, "asha").get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 5
    assert trials[2].state == TrialState.PRUNED, states
    assert states.count(TrialState.FAIL) == 1 and trials[0].state == TrialState.FAIL  # the diverging point
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, f"no trial pruned: {states}"
    for t in pruned:  # TPE sees the truncated curve, and knows it is truncated
        assert t.intermediate_values and max(t.intermediate_values) < 4
        assert t.value == t.intermediate_values[max(t.intermediate_values)]
    assert TrialState.COMPLETE in states

    client, parent, children = child_runs(tmp_path, "asha")
    assert parent.info.status == "FINISHED"
    parent_files = _artifacts(client, parent.info.run_id)
    for name in (
        "trials.parquet",
        "trials.csv",
        "best_experiment.yaml",
        "optuna_trials.csv",
        "optuna_optimization_history.png",
        "optuna_parallel_coordinate.png",
    ):
        assert f"study/{name}" in parent_files, name
    assert len(children) == 5 and not [r for r in children if r.info.status == "RUNNING"]
    for run in children:
        files = _artifacts(client, run.info.run_id)
        if run.data.tags.get("pruned") == "true":
            assert run.info.status == "KILLED" and "tensors/window_last.npy" in files and "plots/window.png" in files
        elif run.info.status == "FINISHED":
            assert {
                "tensors/window_best.npy",
                "tensors/kernel_last.npy",
                "plots/confusion_test.png",
                "checkpoint/best_model.pt",
            } <= files
            assert not {f for f in files if f.endswith(".pt") and f.startswith("tensors/")}  # one format unless asked
        else:
            assert run.info.status == "FAILED", (run.info.run_name, run.data.tags, run.data.params.get("optim.lr"))
    assert sum(r.info.status == "FAILED" for r in children) == 1

    # trials stopped by ASHA, failed or finished leave no working copy behind (Tune holds them)
    assert not trial_work_root(tmp_path / "runs/search/asha").exists()

    # Storage: each epoch sent one full state (last.pt + its epoch.json); when the study ended
    # only the best 3 trials (--keep-checkpoints default) kept a checkpoint, their best epoch's.
    exp = tmp_path / "runs/search/asha"
    folders = sorted(exp.glob("*/checkpoint_*"))
    assert folders and len(folders) == len({f.parent for f in folders}) <= 3, folders
    for trial_dir in exp.glob("*/result.json"):
        sent = [json.loads(line)["checkpoint_bytes"] for line in trial_dir.read_text().splitlines()]
        if not sent:  # the diverging trial never finished an epoch
            continue
        kept = list(trial_dir.parent.glob("checkpoint_*"))
        full_state = (kept[0] / "last.pt").stat().st_size if kept else min(sent)  # SGD and AdamW states differ
        assert max(sent) <= 1.05 * full_state, (trial_dir.parent.name, sent, full_state)
    table = pd.read_parquet(exp / "summary" / "trials.parquet")
    best = table[table["val_loss"].notna()].sort_values("val_loss").iloc[0]
    meta = json.loads((Path(best["checkpoint"]) / "epoch.json").read_text())
    assert meta["epoch"] == meta["best_epoch"]
    assert load_checkpoint(Path(best["checkpoint"]) / "last.pt")["epoch"] == meta["epoch"]
    assert table["node"].dropna().nunique() == 1  # a local Ray: every trial on this one node

    # the best configuration is a ready-to-run experiment file
    best = yaml.safe_load((tmp_path / "runs/search/asha/summary/best_experiment.yaml").read_text())
    assert Config.from_dict(best).name == "best_asha"


def test_a_study_says_where_its_trials_time_went_and_samples_their_machine(tmp_path):
    proc = run_search(
        tmp_path,
        "--trials",
        "2",
        "--scheduler",
        "none",
        "--search",
        str(space_file(tmp_path)),
        "--name",
        "timed",
        "--report",
        "ema",
        *tiny(tmp_path, epochs=3),
        "tracking.system_metrics_interval=0.25",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shares = re.search(
        r"time in trials: compute (\d+)%, eval (\d+)%, data wait (\d+)%, checkpoints (\d+)%, "
        r"tracking (\d+)%, other (\d+)%",
        proc.stdout,
    )
    assert shares and 95 <= sum(map(int, shares.groups())) <= 105 and int(shares[1]) > 0, proc.stdout[-2000:]

    client, parent, children = child_runs(tmp_path, "timed")
    link = f"#/experiments/{parent.info.experiment_id}/runs?workflowType=machine_learning"
    assert (
        f"MLflow UI: mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db, then open "
        f"http://127.0.0.1:5000/{link}" in proc.stdout
    ), proc.stdout[-2000:]

    # the study table: each trial's seconds per phase; the parent run: the same, one step per trial
    table = pd.read_csv(tmp_path / "runs/search/timed/summary/trials.csv")
    assert len(table) == 2 and (table[[total_metric(p) for p in PHASES]] >= 0).all().all()
    assert (table[total_metric("compute")] > 0).all() and (table[total_metric("checkpoint")] > 0).all()
    assert (table[[total_metric(p) for p in PHASES]].sum(axis=1) <= table[total_metric(EPOCH_SECONDS)] + 1e-3).all()
    assert sorted(m.step for m in client.get_metric_history(parent.info.run_id, "trial_total_time_compute")) == [0, 1]

    # --report ema: Optuna (and the scheduler) got the moving average of the raw val_loss, which
    # MLflow logged as it was; the table has both
    assert "scheduler none on ema_val_loss" in proc.stdout
    by_run = {r.data.tags["tune_trial_id"]: r for r in children}
    for trial in study(tmp_path, "timed").get_trials():
        raw = [
            m.value
            for m in sorted(
                client.get_metric_history(by_run[trial.user_attrs["tune_trial_id"]].info.run_id, "val_loss"),
                key=lambda m: m.step,
            )
        ]
        ema = [raw[0], 0.5 * raw[1] + 0.5 * raw[0], 0.5 * raw[2] + 0.25 * raw[1] + 0.25 * raw[0]]
        assert [trial.intermediate_values[i] for i in (1, 2, 3)] == pytest.approx(ema, rel=1e-9)
        assert trial.value == pytest.approx(ema[-1], rel=1e-9)
        row = table[table["trial_id"] == trial.user_attrs["tune_trial_id"]].iloc[0]
        assert row["ema_val_loss"] == pytest.approx(ema[-1]) and row["val_loss"] == pytest.approx(raw[-1])

    # each trial's run: a timing row per epoch and one after, and MLflow's system metrics of its node
    assert len(children) == 2
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "time_compute")] == [0, 1, 2, 3]
        (cpu,) = [k for k in run.data.metrics if k.startswith("system/") and k.endswith("/cpu_utilization_percentage")]
        assert cpu == f"system/{socket.gethostname()}/cpu_utilization_percentage"
        assert len(client.get_metric_history(run.info.run_id, cpu)) >= 3, run.info.run_name


def test_a_trial_can_be_a_two_worker_ddp_job(tmp_path):
    space = space_file(tmp_path)
    proc = run_search(
        tmp_path,
        "--trials",
        "1",
        "--search",
        str(space),
        "--name",
        "ddp",
        "--workers-per-trial",
        "2",
        "--scheduler",
        "none",
        *tiny(tmp_path, epochs=2),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (trial,) = study(tmp_path, "ddp").get_trials()
    assert trial.state == TrialState.COMPLETE and sorted(trial.intermediate_values) == [1, 2]
    client, _, (run,) = child_runs(tmp_path, "ddp")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1]


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_resume_after_the_driver_is_killed(tmp_path):
    space = space_file(tmp_path)
    args = [
        sys.executable,
        str(SEARCH),
        "--trials",
        "3",
        "--search",
        str(space),
        "--name",
        "resume",
        "--scheduler",
        "none",
        "--max-concurrent",
        "1",
        *tiny(tmp_path, epochs=2),
    ]
    driver = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    db = tmp_path / "runs/search/resume/optuna.db"
    try:
        _wait_for(lambda: "COMPLETE" in optuna_states(db), 300, "a finished trial")
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone, mid-study
        driver.wait(30)
    finally:
        _kill_group(driver)  # then Ray's processes it had started
    finished_before = {t.number for t in study(tmp_path, "resume").get_trials() if t.state == TrialState.COMPLETE}

    proc = run_search(tmp_path, "--resume", *args[2:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = study(tmp_path, "resume").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3, [t.state for t in trials]
    assert finished_before <= {t.number for t in complete}
    client, _, children = child_runs(tmp_path, "resume")
    tune_ids = [r.data.tags["tune_trial_id"] for r in children]
    assert len(tune_ids) == len(set(tune_ids)), "an MLflow run was duplicated"
    assert not [r for r in children if r.info.status == "RUNNING"]
    redone = []
    for run in children:  # finished trials were not re-run: each epoch logged once ...
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        if run.info.status == "FINISHED":
            assert sorted(set(steps)) == [0, 1], steps
            twice = sorted({s for s in steps if steps.count(s) > 1})
            # ... but for epochs the trial in flight had logged past the checkpoint Tune recorded
            # (the driver died in between): trained again, both points kept, and the run says so
            assert run.data.tags.get("redone_epochs", "") == ",".join(map(str, twice)), (steps, run.data.tags)
            redone += [run] if twice else []
    assert len(redone) <= 1, "only the trial in flight at the kill may redo epochs"
    assert not trial_work_root(tmp_path / "runs/search/resume").exists(), "working copies left"


def test_a_killed_trial_is_retried_from_its_checkpoint(tmp_path):
    space = space_file(tmp_path)
    args = [
        sys.executable,
        str(SEARCH),
        "--trials",
        "1",
        "--search",
        str(space),
        "--name",
        "retry",
        "--scheduler",
        "none",
        "--max-failures",
        "2",
        *tiny(tmp_path, epochs=3),
    ]
    driver = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    exp = tmp_path / "runs/search/retry"
    try:
        _wait_for(lambda: any(exp.glob("run_trial_*/checkpoint_000000")), 300, "the first checkpoint")
        pids = trial_pids(driver.pid)  # the driver leads its own session and process group
        assert pids, "no trial process found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # mid-epoch, the trial's worker process
        out, _ = driver.communicate(timeout=400)
    finally:
        _kill_group(driver)
    assert driver.returncode == 0, out[-4000:]
    (trial,) = study(tmp_path, "retry").get_trials()
    assert trial.state == TrialState.COMPLETE
    state = json.loads(sorted(exp.glob("experiment_state-*.json"))[-1].read_text())
    assert '"num_failures": 1' in json.dumps(state) or 'num_failures\\": 1' in json.dumps(state)
    client, _, (run,) = child_runs(tmp_path, "retry")
    assert run.info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "val_loss")})
    assert steps == [0, 1, 2]
    # the trial's working copies of its checkpoints are gone (the killed attempt's too): Tune holds them
    assert not trial_work_root(exp).exists()


def test_bad_flags_and_settings_fail_before_ray_starts(tmp_path):
    cases = [
        (["--trials", "0"], "--trials must be >= 1"),
        (["--search", "nope"], "--search 'nope' is neither a .yaml file nor in adastft/configs/search/"),
        (["--search", "default", "optim.lr=-1"], "optim.lr must be > 0"),
        (["--resume", "--name", "ghost"], "--resume: no study 'ghost'"),
        (["--frobnicate"], "unknown flag --frobnicate"),
        (["--report", "mean"], "argument --report: invalid choice: 'mean' (choose from 'last', 'best', 'ema')"),
        (["tracking.uri=http://127.0.0.1:9"], "is unreachable"),
    ]
    for args, message in cases:
        started = time.monotonic()
        proc = run_search(tmp_path, *args, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr.strip().splitlines()[-1], (args, proc.stderr)  # one line (after usage)
        assert time.monotonic() - started < 60
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("beats", [False, True])
def test_watchdog_stops_a_process_that_makes_no_progress(tmp_path, beats):
    # A real process: a "trial" that stalls after two steps is ended with a message and a note;
    # one that keeps making progress is left alone.
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from pathlib import Path; from tune.trainable import Watchdog;"
        "w = Watchdog(2.0, 'trial-x', Path(sys.argv[2]));"
        "[(w.beat(), time.sleep(0.5)) for _ in range(2)];"
        f"[(w.beat() if {beats} else None, time.sleep(0.5)) for _ in range(12)];"
        "print('finished')"
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    if beats:
        assert proc.returncode == 0 and "finished" in proc.stdout
        assert not (tmp_path / "trial-x.txt").exists()
    else:
        assert proc.returncode == 75 and "finished" not in proc.stdout
        assert "trial-x: no training progress for" in proc.stderr and "stopping it" in proc.stderr
        assert "no training progress" in (tmp_path / "trial-x.txt").read_text()
        assert time.monotonic() - started < 30


def test_a_retry_restores_tunes_checkpoint_and_drops_files_written_after_it(tmp_path):
    """A trial killed between writing last.pt and reporting it leaves a file Tune never saw; the
    retry must resume from Tune's checkpoint, or its epoch count (and so PRUNED vs COMPLETE in
    Optuna) would be off by one. The best epoch's weights come from its own checkpoint folder in
    storage, found by its epoch.json; a best epoch that is the latest is one file, linked."""
    from ray import tune as ray_tune

    from tune.checkpoints import restore, trim
    from tune.optuna_search import epochs_done

    out = tmp_path / "trial"
    out.mkdir()
    (out / "last.pt").write_text("epoch 1, never reported")
    (out / "best.pt").write_text("epoch 1, never reported")
    restore(None, out)  # no report yet: start afresh
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()

    # Tune's storage for one trial: epochs 0 (the best) and 2 (the latest) kept, 1 deleted by Tune
    storage = tmp_path / "storage" / "trial_0"
    for index, (epoch, best) in enumerate([(0, 0), (2, 0)]):
        folder = storage / f"checkpoint_{index:06d}"
        folder.mkdir(parents=True)
        (folder / "last.pt").write_text(f"epoch {epoch}")
        (folder / "epoch.json").write_text(json.dumps({"epoch": epoch, "best_epoch": best}))
    (out / "last.pt").write_text("epoch 3, never reported")
    (out / "best.pt").write_text("epoch 3, never reported")
    restore(ray_tune.Checkpoint.from_directory(str(storage / "checkpoint_000001")), out)
    assert (out / "last.pt").read_text() == "epoch 2" and (out / "best.pt").read_text() == "epoch 0"

    restore(ray_tune.Checkpoint.from_directory(str(storage / "checkpoint_000000")), out)  # the best is the latest
    assert (out / "last.pt").read_text() == "epoch 0" and (out / "best.pt").samefile(out / "last.pt")

    # a trial keeps its latest folder (stopped, mid-study), its best (kept at the end) or none
    import pyarrow.fs as pafs

    fs = pafs.LocalFileSystem()
    twin = tmp_path / "storage" / "trial_1"
    shutil.copytree(storage, twin)
    assert trim(fs, str(twin), keep="latest") == len("epoch 0") + len(json.dumps({"epoch": 0, "best_epoch": 0}))
    assert sorted(p.name for p in twin.iterdir()) == ["checkpoint_000001"]
    assert trim(fs, str(storage), keep="best") == len("epoch 2") + len(json.dumps({"epoch": 2, "best_epoch": 0}))
    assert sorted(p.name for p in storage.iterdir()) == ["checkpoint_000000"]
    trim(fs, str(storage), keep="none")
    assert not list(storage.iterdir())

    # the searcher counts epochs from the training function's own report when there is one
    assert epochs_done({"epoch": 3.0, "training_iteration": 3}) == 4
    assert epochs_done({"training_iteration": 2}) == 2
    assert epochs_done(None) is None


def test_a_trial_sweeps_its_studys_stale_working_folders(tmp_path, monkeypatch):
    """Folders whose owner died, or is this very process (a reused one), go; live owners' stay."""
    from tune.trainable import OWNER_FILE, claim_work_dir, work_root

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    work_key = "sweep-0123abcd"
    root = work_root(work_key)
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        owners = {"dead": dead.pid, "mine": os.getpid(), "alive": alive.pid, "unowned": None}
        for name, pid in owners.items():
            (root / name).mkdir(parents=True)
            (root / name / "last.pt").write_bytes(b"x")
            if pid is not None:
                (root / name / OWNER_FILE).write_text(str(pid))
        out_dir = claim_work_dir(work_key, "new")
        assert out_dir == root / "new" and (out_dir / OWNER_FILE).read_text() == str(os.getpid())
        assert sorted(p.name for p in root.iterdir()) == ["alive", "new", "unowned"]
    finally:
        alive.kill()
        alive.wait()
