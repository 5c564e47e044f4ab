"""Ctrl-C and SIGTERM, for real: ``python -m adastft.train`` and ``python tune/search.py`` get the
signal while they train, then are resumed with the command their last line gives.

- Ctrl-C in a terminal is SIGINT to the whole foreground process group: sent with ``killpg``;
- SIGTERM (``kill``, systemd, Kubernetes, ``ray job stop``) goes to the process alone.

Each must exit within 30 s with 128 + the signal's number, one line on stderr that names the
resume command, no traceback and no success summary; nothing half-written (checkpoints load, no
temporary files); MLflow runs KILLED with the reason; and the resume command finishes the job.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from adastft.checkpoint import load_checkpoint
from harness import env, kill_group, search_cmd, space_file, tiny, wait_for
from process_helpers import remove_trial_work

pytestmark = pytest.mark.slow

HOW = {"SIGINT to the process group (Ctrl-C)": (signal.SIGINT, True), "SIGTERM to the process": (signal.SIGTERM, False)}
DRIVER_ALONE = {"SIGINT to the driver alone": (signal.SIGINT, False)}


def _interrupt(proc: subprocess.Popen, ready, what: str, signum: int, group: bool) -> tuple[str, str, float, list[str]]:
    """Once ``ready()``, ``signum`` to ``proc`` (its group with ``group``); its output, the seconds
    it took to exit, and what is wrong with its exit status and time."""
    try:
        wait_for(lambda: proc.poll() is not None or ready(), 300, what, interval=0.02)
        (os.killpg if group else os.kill)(proc.pid, signum)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=120)
        seconds = time.monotonic() - sent
    finally:
        kill_group(proc)
    problems = []
    if proc.returncode != 128 + signum:
        problems.append(f"exit status {proc.returncode}, want {128 + signum}")
    if seconds > 30:
        problems.append(f"took {seconds:.0f} s to stop")
    return out, err, seconds, problems


def _the_line(stderr: str, prefix: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize("how", list(HOW))
def test_train_command_line_interrupted_then_resumed(tmp_path, faults, how):
    case = faults(f"`python -m adastft.train` interrupted: {how}")
    signum, group = HOW[how]
    out_dir = tmp_path / "run"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [*tiny(tmp_path, tracking_uri=uri), f"train.out_dir={out_dir}", "train.threads=1", "train.epochs=1000"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "adastft.train", *args],
        cwd=tmp_path,
        env=env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # by construction mid-training: the first epoch is saved and 999 are left
    out, err, seconds, problems = _interrupt(
        proc, lambda: (out_dir / "last.pt").exists(), "the first checkpoint", signum, group
    )
    lines = _the_line(err, "adastft.train: interrupted")
    if len(lines) != 1 or "resume with: python -m adastft.train" not in lines[0]:
        problems.append(f"want one line with the resume command, got {lines}")
    if "Traceback" in err + out:
        problems.append("a traceback")
    temps = [p.name for p in out_dir.iterdir() if p.name.endswith(".tmp")]
    if temps:
        problems.append(f"temporary files left: {temps}")
    last = load_checkpoint(out_dir / "last.pt")  # raises if torn
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("reliability").experiment_id])
    if run.info.status != "KILLED":
        problems.append(f"MLflow run {run.info.status}, want KILLED")
    if lines:  # the printed command resumes: a few more epochs
        argv = shlex.split(lines[0].split("resume with: ", 1)[1])[1:]
        epochs = last["epoch"] + 2
        argv = [f"train.epochs={epochs}" if a == "train.epochs=1000" else a for a in argv]
        done = subprocess.run(
            [sys.executable, *argv], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0 or "resuming from" not in done.stdout + done.stderr:
            problems.append(f"the resume command failed ({done.returncode}): {done.stderr[-1500:]}")
        elif load_checkpoint(out_dir / "last.pt")["epoch"] != epochs - 1:
            problems.append("the resumed run did not reach its last epoch")
    case.fault(survived=not problems, note=f"detail: stopped in {seconds:.1f} s")
    assert not problems, "\n".join(problems) + "\n" + err[-3000:]


@pytest.mark.parametrize("how", list(HOW) + list(DRIVER_ALONE))
def test_search_interrupted_then_resumed(tmp_path, faults, how):
    case = faults(f"search driver interrupted: {how}")
    signum, group = {**HOW, **DRIVER_ALONE}[how]
    name = f"int{uuid.uuid4().hex[:8]}"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tmp_path / "runs/search" / name
    args = [
        "--trials",
        "2",
        "--search",
        str(space_file(tmp_path)),
        "--name",
        name,
        "--scheduler",
        "none",
        "--max-concurrent",
        "1",
        *tiny(tmp_path, epochs=3),
        "data.synthetic_clips_per_class=12",
    ]
    proc = subprocess.Popen(
        search_cmd(*args),
        cwd=tmp_path,
        env=env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def first_epoch_reported() -> bool:  # by construction mid-trial: the first of 3 epochs is in Tune
        files = list(exp.glob("run_trial_*/result.json"))
        return bool(files) and files[0].read_text().count("\n") >= 1

    out, err, seconds, problems = _interrupt(proc, first_epoch_reported, "the first trial's first epoch", signum, group)
    lines = _the_line(err, "search: interrupted")
    if len(lines) != 1 or f"study {name!r}" not in lines[0] or "--resume" not in lines[0]:
        problems.append(f"want one line naming the study and --resume, got {lines}")
    if any(line.startswith("best trial") for line in out.splitlines()):  # the summary's line, not Tune's table
        problems.append("a success summary")
    if "Traceback" in err:
        problems.append(f"a traceback: {err[err.index('Traceback') :][:2000]}")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("reliability").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    if parent.info.status != "KILLED" or "interrupted by" not in parent.data.tags.get("stopped", ""):
        problems.append(f"parent run {parent.info.status} tag stopped={parent.data.tags.get('stopped')!r}")
    for run in runs:
        if run.info.status == "RUNNING" or (run.info.status == "KILLED" and not run.data.tags.get("stopped")):
            problems.append(f"run {run.info.run_name} {run.info.status} without a reason")
    if lines:
        argv = shlex.split(lines[0].split("continue it with: ", 1)[1])[1:]
        done = subprocess.run(
            [sys.executable, *argv], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            problems.append(f"--resume failed ({done.returncode}): {done.stderr[-1500:]}")
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp}/optuna.db")
        states = [t.state for t in study.get_trials()]
        if states.count(TrialState.COMPLETE) != 2 or len(states) != 2:
            problems.append(f"after --resume, Optuna trials {[s.name for s in states]}, want 2 COMPLETE")
        runs = client.search_runs([parent.info.experiment_id])
        if sorted(r.info.status for r in runs) != ["FINISHED"] * 3:
            problems.append(f"after --resume, MLflow runs {sorted(r.info.status for r in runs)}")
    remove_trial_work(name)
    case.fault(survived=not problems, note=f"detail: stopped in {seconds:.1f} s")
    assert not problems, "\n".join(problems) + "\n" + err[-3000:]
