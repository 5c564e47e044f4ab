"""Faults during a search, on the real thing: `python tune/search.py` on a local Ray, the Optuna
study in its SQLite file, MLflow in a SQLite store, trials training on the synthetic set.

- the search driver killed with SIGKILL mid-study, then ``--resume``;
- a trial's worker process killed with SIGKILL mid-epoch;
- trials that fail: a non-finite loss, an exception, an allocation beyond a memory limit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from adastft.checkpoint import load_checkpoint
from harness import env, kill_group, search_cmd, space_file, tiny, wait_for  # puts tests/ on sys.path
from process_helpers import optuna_states, remove_trial_work, trial_pids, trial_work_root

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


@pytest.fixture
def study_name(request):
    """A study name of this test only; its trial folders under the temp dir are removed after."""
    name = f"rel{uuid.uuid4().hex[:8]}"
    yield name
    remove_trial_work(name)


def load_study(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/runs/search/{name}/optuna.db")


def runs_of(uri: str, experiment: str, name: str):
    """(client, parent run, child runs) of study ``name``."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.info.run_name == name and "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, f"{len(parents)} parent runs named {name}"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return client, parents[0], children


def steps(client: MlflowClient, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def trial_dirs(tmp_path: Path, name: str) -> dict[str, Path]:
    """Tune's trial folders by trial id."""
    out = {}
    for d in (tmp_path / "runs/search" / name).glob("run_trial_*"):
        out[d.name.split("_")[2]] = d
    return out


def tune_trials(tmp_path: Path, name: str) -> set[str]:
    """The trial ids in Tune's snapshot of the experiment by its last driver: the study's trials."""
    newest = max((tmp_path / "runs/search" / name).glob("experiment_state-*.json"))  # named by session start
    return {json.loads(state)["trial_id"] for state, _ in json.loads(newest.read_text())["trial_data"]}


# ---- the driver killed mid-study ---------------------------------------------------------------


def test_driver_killed_mid_study_then_resume_finishes_exactly_the_requested_trials(tmp_path, faults, study_name):
    """Three trials, one at a time; the driver is killed while the second trains, at a random
    moment. After --resume: Tune's study holds exactly three trials, all finished, and Optuna
    three COMPLETE ones; the trials finished before the kill are not run or reported again; one
    MLflow run per trial, none RUNNING, every epoch logged once. A trial the driver started in
    the second before it died may be missing from Tune's last snapshot: it is abandoned and
    replaced, its Optuna record marked FAIL and its MLflow run deleted (counted in the note)."""
    case = faults("kill -9 the search driver mid-study, then --resume")
    trials, epochs = 3, 2
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = [
        "--trials",
        str(trials),
        "--search",
        str(space_file(tmp_path)),
        "--name",
        study_name,
        "--scheduler",
        "none",
        "--max-concurrent",
        "1",
        *tiny(tmp_path, epochs=epochs),
    ]
    driver = subprocess.Popen(
        search_cmd(*args),
        cwd=tmp_path,
        env=env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = tmp_path / "runs/search" / study_name / "optuna.db"

    def one_done_one_running() -> bool:
        states = optuna_states(db)
        return "COMPLETE" in states and "RUNNING" in states

    try:
        wait_for(one_done_one_running, 300, "a finished trial and a running one")
        time.sleep(random.uniform(0.0, 2.0))  # anywhere in the running trial
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone, mid-study
        driver.wait(30)
    finally:
        kill_group(driver)  # then the Ray processes it had started
    before = load_study(tmp_path, study_name).get_trials()
    finished_before = {t.user_attrs["tune_trial_id"]: t.value for t in before if t.state == TrialState.COMPLETE}
    client, _, children = runs_of(uri, "reliability", study_name)
    end_times = {
        r.data.tags["tune_trial_id"]: r.info.end_time
        for r in children
        if r.data.tags.get("tune_trial_id") in finished_before
    }
    results_before = {
        tid: (d / "result.json").read_text()
        for tid, d in trial_dirs(tmp_path, study_name).items()
        if tid in finished_before
    }

    resumed = subprocess.run(
        search_cmd("--resume", *args), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    problems = []
    after = load_study(tmp_path, study_name).get_trials()
    complete = [t for t in after if t.state == TrialState.COMPLETE]
    if len(complete) != trials:
        problems.append(
            f"{len(complete)} COMPLETE trials in Optuna, asked for {trials}: {[t.state.name for t in after]}"
        )
    known = tune_trials(tmp_path, study_name)
    if len(known) != trials:
        problems.append(f"the study has {len(known)} trials in Tune, asked for {trials}")
    dirs = trial_dirs(tmp_path, study_name)
    for tid, value in finished_before.items():  # finished before the kill: not re-run
        again = [t for t in complete if t.user_attrs.get("tune_trial_id") == tid]
        if len(again) != 1 or again[0].value != value or tid not in known:
            problems.append(f"trial {tid} finished before the kill but changed in Optuna or Tune: {again}")
        if (dirs[tid] / "result.json").read_text() != results_before[tid]:
            problems.append(f"trial {tid} finished before the kill and reported again after --resume")
    # A trial the dead driver started after Tune's last snapshot of the experiment is unknown to
    # the resumed study: a new trial takes its place, Optuna marks it FAIL and its MLflow run is
    # deleted (kept among MLflow's deleted runs, tagged stopped=abandoned...).
    client, parent, children = runs_of(uri, "reliability", study_name)
    deleted = [
        r
        for r in client.search_runs([parent.info.experiment_id], run_view_type=ViewType.DELETED_ONLY)
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    for run in deleted:
        tid = run.data.tags.get("tune_trial_id")
        states = [t.state for t in after if t.user_attrs.get("tune_trial_id") == tid]
        if (
            tid in known
            or TrialState.COMPLETE in states
            or not run.data.tags.get("stopped", "").startswith("abandoned")
        ):
            problems.append(
                f"deleted MLflow run of trial {tid}: in Tune {tid in known}, Optuna {states}, "
                f"tag stopped={run.data.tags.get('stopped')!r}"
            )
    for t in after:  # Optuna keeps its record of an abandoned trial, as FAIL
        if t.state != TrialState.COMPLETE and (
            t.state != TrialState.FAIL or t.user_attrs.get("tune_trial_id") in known
        ):
            problems.append(f"Optuna trial {t.number} ({t.user_attrs.get('tune_trial_id')}) is {t.state.name}")
    ids = [r.data.tags.get("tune_trial_id") for r in children]
    if len(ids) != len(set(ids)) or sorted(ids) != sorted(known):
        problems.append(f"MLflow child runs per trial: {sorted(ids)}, Tune's trials {sorted(known)}")
    for run in [parent, *children]:
        if run.info.status != "FINISHED":
            problems.append(f"MLflow run {run.info.run_name} is {run.info.status}")
    lost = 0
    for run in children:
        tid = run.data.tags["tune_trial_id"]
        if tid in end_times and run.info.end_time != end_times[tid]:
            problems.append(f"the MLflow run of trial {tid} (finished before the kill) was reopened")
        for metric in METRICS:
            got = steps(client, run.info.run_id, metric)
            want = list(range(epochs))
            if sorted(set(got)) != want:
                problems.append(f"trial {tid} {metric} steps {got}, want {want}")
                lost += 1
            elif tid in finished_before and got != want:
                problems.append(f"trial {tid} (finished before the kill) logged {metric} steps {got}")
        got = steps(client, run.info.run_id, "val_loss")  # epochs trained again are named
        twice = ",".join(str(s) for s in sorted({s for s in got if got.count(s) > 1}))
        if run.data.tags.get("redone_epochs", "") != twice:
            problems.append(f"trial {tid}: steps {got} but tag redone_epochs={run.data.tags.get('redone_epochs')!r}")
    case.fault(
        survived=not problems,
        lost=lost,
        note=f"detail: {len(finished_before)} finished before the kill, {len(deleted)} abandoned",
    )
    assert not problems, "\n".join(problems)


# ---- a trial's process killed mid-epoch ---------------------------------------------------------


def test_trial_process_killed_mid_epoch_resumes_from_its_last_checkpoint(tmp_path, faults, study_name):
    case = faults("kill -9 a trial's worker process mid-epoch")
    epochs = 3
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # 12 clips per class: epochs of 1-2 s, so that a kill lands inside one
    args = [
        "--trials",
        "1",
        "--search",
        str(space_file(tmp_path)),
        "--name",
        study_name,
        "--scheduler",
        "none",
        "--max-failures",
        "2",
        *tiny(tmp_path, epochs=epochs),
        "data.synthetic_clips_per_class=12",
    ]
    driver = subprocess.Popen(
        search_cmd(*args),
        cwd=tmp_path,
        env=env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    exp = tmp_path / "runs/search" / study_name
    killed_at = None
    try:

        def tune_has_epoch_0() -> bool:  # the driver writes result.json once it holds the report
            files = list(exp.glob("run_trial_*/result.json"))
            return bool(files) and files[0].read_text().count("\n") >= 1

        wait_for(tune_has_epoch_0, 300, "Tune's record of the first epoch and its checkpoint", interval=0.05)
        time.sleep(random.uniform(0.05, 0.3))  # into the next epoch's training steps
        pids = trial_pids(driver.pid)  # the driver leads its own session and process group
        assert pids, "no trial process found"
        (last,) = trial_work_root(exp).glob("*/last.pt")
        killed_at = load_checkpoint(last)["epoch"]  # the trial's newest checkpoint at the kill
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        out, _ = driver.communicate(timeout=600)
    finally:
        kill_group(driver)
    assert driver.returncode == 0, out[-4000:]

    problems = []
    (trial,) = load_study(tmp_path, study_name).get_trials()
    if trial.state != TrialState.COMPLETE:
        problems.append(f"the trial ended {trial.state.name}")
    if killed_at != 0:
        problems.append(f"the kill came after the checkpoint of epoch {killed_at}, not during the second epoch")
    (tdir,) = trial_dirs(tmp_path, study_name).values()
    state = json.loads(max(tdir.parent.glob("experiment_state-*.json")).read_text())
    if '\\"num_failures\\": 1' not in json.dumps(state) and '"num_failures": 1' not in json.dumps(state):
        problems.append("Tune does not record one failure of the trial")
    client, parent, (run,) = runs_of(uri, "reliability", study_name)
    lost = 0
    for metric in METRICS:
        got = steps(client, run.info.run_id, metric)
        # a retry from scratch would log the epochs before the kill a second time
        if got != list(range(epochs)):
            problems.append(f"{metric} steps {got}: want each of 0..{epochs - 1} once (resumed, not restarted)")
            lost += len(set(range(epochs)) - set(got))
    if run.info.status != "FINISHED" or parent.info.status != "FINISHED":
        problems.append(f"MLflow runs: trial {run.info.status}, study {parent.info.status}")
    case.fault(survived=not problems, lost=lost, note=f"detail: killed after the checkpoint of epoch {killed_at}")
    assert not problems, "\n".join(problems)


# ---- trials that fail --------------------------------------------------------------------------

SITECUSTOMIZE = '''
"""Test scaffolding (tests/reliability/test_search_faults.py): a memory limit on Ray's trial
workers. Once a worker has imported adastft.training, its address space is capped at what it
uses then plus ADASTFT_TEST_TRIAL_MEMORY_HEADROOM bytes (RLIMIT_AS)."""
import os, sys

_HEADROOM = int(os.environ.get("ADASTFT_TEST_TRIAL_MEMORY_HEADROOM", "0"))
if _HEADROOM and any(a.endswith("default_worker.py") for a in sys.argv):
    import importlib.abc, importlib.util, resource

    class _CapAfterImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "adastft.training":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                with open("/proc/self/status") as f:
                    size = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
                resource.setrlimit(resource.RLIMIT_AS, (size + _HEADROOM, size + _HEADROOM))
                print(f"adastft test: RLIMIT_AS set to {(size + _HEADROOM) / 2**30:.2f} GiB", file=sys.stderr)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _CapAfterImport())
'''


def test_failing_trials_end_with_their_reason_and_the_study_completes(tmp_path, faults, study_name):
    """Four trials, one at a time: a normal one; SGD at lr 1e4 (the loss turns non-finite); a
    backbone file that is not a state dict (the trial raises building its model); a learnable
    8192-point DFT kernel, whose gradient and Adam state need about 2 GiB more than the 1.5 GiB a
    trial may allocate. Out of memory is simulated by a limit: every trial worker gets RLIMIT_AS =
    its size after importing the training stack + 1.5 GiB (``SITECUSTOMIZE`` above, loaded by the
    workers from PYTHONPATH); the normal trials stay far below it, the big kernel's allocation
    fails for real in torch's allocator."""
    case_nan = faults("trial with a non-finite loss")
    case_raise = faults("trial that raises")
    case_oom = faults("trial out of memory (RLIMIT_AS 1.5 GiB above its start)")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    garbage = tmp_path / "not_a_state_dict.pt"
    garbage.write_bytes(os.urandom(4096))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = {
        "optim.name": {"type": "categorical", "choices": ["adamw", "sgd"]},
        "optim.lr": {"type": "categorical", "choices": [1e-3, 1e4]},
        "model.pretrained_path": {"type": "categorical", "choices": [None, str(garbage)]},
        "stft.n_fft": {"type": "categorical", "choices": [256, 8192]},
        "stft.learn_kernel": {"type": "categorical", "choices": [False, True]},
    }
    normal = {
        "optim.name": "adamw",
        "optim.lr": 1e-3,
        "model.pretrained_path": None,
        "stft.n_fft": 256,
        "stft.learn_kernel": False,
    }
    points = [
        normal,
        {**normal, "optim.name": "sgd", "optim.lr": 1e4},
        {**normal, "model.pretrained_path": str(garbage)},
        {**normal, "stft.n_fft": 8192, "stft.learn_kernel": True},
    ]
    args = [
        "--trials",
        str(len(points)),
        "--search",
        str(space_file(tmp_path, space=space, points=points)),
        "--name",
        study_name,
        "--scheduler",
        "none",
        "--max-concurrent",
        "2",
        "--max-failures",
        "0",
        *tiny(tmp_path, epochs=2),
    ]
    proc = subprocess.run(
        search_cmd(*args),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env=env(
            PYTHONPATH=f"{site}{os.pathsep}{env()['PYTHONPATH']}",
            ADASTFT_TEST_TRIAL_MEMORY_HEADROOM=str(int(1.5 * 2**30)),
        ),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"study {study_name!r}: {len(points)} trials" in proc.stdout, proc.stdout[-3000:]

    trials = load_study(tmp_path, study_name).get_trials()
    by_point = {}
    for t in trials:
        for i, p in enumerate(points):
            if all(t.params.get(k) == v for k, v in p.items()):
                by_point[i] = t
    table = {row["trial_id"]: row for row in _csv(tmp_path / "runs/search" / study_name / "summary/trials.csv")}
    client, parent, children = runs_of(uri, "reliability", study_name)
    runs = {r.data.tags["tune_trial_id"]: r for r in children}
    dirs = trial_dirs(tmp_path, study_name)

    problems = {}

    def check(i: int, reason: str) -> list[str]:
        out = []
        t = by_point.get(i)
        if t is None:
            return [f"point {i} never ran"]
        tid = t.user_attrs["tune_trial_id"]
        if t.state != TrialState.FAIL:
            out.append(f"Optuna state {t.state.name}, want FAIL")
        error = (dirs[tid] / "error.txt").read_text() if (dirs[tid] / "error.txt").exists() else ""
        if reason not in error:
            out.append(f"Tune's error.txt does not name the reason {reason!r}: {error[-300:]!r}")
        row = table.get(tid, {})
        if reason not in (row.get("error") or ""):
            out.append(f"the study table's error column does not name the reason {reason!r}: {row.get('error')!r}")
        run = runs.get(tid)
        if run is not None:
            if run.info.status != "FAILED":
                out.append(f"MLflow run {run.info.status}, want FAILED")
            if reason not in run.data.tags.get("failure", ""):
                out.append(f"MLflow tag failure={run.data.tags.get('failure')!r} does not name {reason!r}")
        return out

    problems["nan"] = check(1, "non-finite")
    problems["raise"] = check(2, "is not a loadable state dict")
    problems["oom"] = check(3, "can't allocate memory")
    ok = by_point.get(0)
    study_ok = ok is not None and ok.state == TrialState.COMPLETE and parent.info.status == "FINISHED"
    for name, case in (("nan", case_nan), ("raise", case_raise), ("oom", case_oom)):
        case.fault(survived=study_ok and not problems[name], note="; ".join(problems[name]))
    assert study_ok, f"the normal trial or the study did not finish: {ok}, study run {parent.info.status}"
    assert not any(problems.values()), "\n".join(f"{k}: {p}" for k, v in problems.items() for p in v)


def _csv(path: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(path).astype(object).where(lambda d: d.notna(), None).to_dict("records")
