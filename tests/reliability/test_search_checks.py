"""What the search checks before Ray starts, beyond the bad-input table (``test_bad_input.py``):
the driver lock of a study, and the list of metrics a search may optimise against what training
really reports.

- A study's lock (``tune/lock.py``) is held by a live driver and refused to a second one; a
  driver killed with SIGKILL leaves the file, and its lock is taken over by the next driver.
- An object store that does not answer (``--storage s3://...`` at a closed endpoint) is one line
  within seconds, before Ray starts, not the minutes of retries the study itself rides out.
- ``adastft.training.EPOCH_METRICS`` (what ``search.metric`` is checked against) equals what
  ``train`` reports every epoch, so the check never refuses a metric that exists nor accepts one
  that does not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness import REPO, env, tiny_dict, wait_for

HOLD = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tune.lock import StudyLock
lock = StudyLock(Path(sys.argv[1])).acquire("study")
print("held", flush=True)
time.sleep(600)
"""


def test_a_running_drivers_lock_is_refused_and_a_dead_ones_taken_over(tmp_path, faults):
    from tune.lock import StudyLock
    from tune.settings import SearchError

    case = faults("study lock: a live driver's refused, a killed driver's taken over")
    exp = tmp_path / "study"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(exp), str(REPO)], env=env(), stdout=subprocess.PIPE, text=True
    )
    problems = []
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SearchError) as refused:
            StudyLock(exp).acquire("study")
        if f"pid {holder.pid} on host" not in str(refused.value):
            problems.append(f"the refusal does not name the driver: {refused.value}")
        holder.send_signal(signal.SIGKILL)  # dies holding it: the file stays, naming the dead driver
        holder.wait(30)
    finally:
        holder.kill()
        holder.wait(30)
    wait_for(lambda: (exp / "driver.lock").exists(), 5, "the dead driver's lock file")
    if json.loads((exp / "driver.lock").read_text())["pid"] != holder.pid:
        problems.append("the lock file does not name the dead driver")
    lock = StudyLock(exp).acquire("study")  # taken over
    if json.loads((exp / "driver.lock").read_text())["pid"] != os.getpid():
        problems.append("the lock file does not name the driver that took it over")
    lock.release()
    case.fault(survived=not problems)
    assert not problems, "\n".join(problems)


def test_an_object_store_that_does_not_answer_is_one_line_before_ray_starts(tmp_path, faults):
    import socket

    case = faults("--storage s3:// whose endpoint does not answer")
    with socket.socket() as s:  # a port nothing listens on: the S3 endpoint is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tune/search.py"),
            "--storage",
            "s3://adastft-check/tune",
            "--name",
            "unreachable",
            "--trials",
            "1",
            "experiment=quickstart",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        ],
        cwd=tmp_path,
        env=env(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_DEFAULT_REGION="us-east-1",
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    lines = proc.stderr.strip().splitlines()
    problems = []
    if (
        proc.returncode != 2
        or not lines
        or not lines[-1].startswith("search: error: --storage s3://adastft-check/tune: cannot reach it")
    ):
        problems.append(f"rc {proc.returncode}, last line {lines[-1:]}")
    if "Ray" in proc.stdout + proc.stderr:
        problems.append("Ray started before the storage was checked")
    if seconds > 30:
        problems.append(f"the refusal took {seconds:.0f} s")
    if any(tmp_path.iterdir()):
        problems.append(f"left files: {sorted(p.name for p in tmp_path.iterdir())}")
    case.fault(survived=not problems, note=f"detail: {seconds:.1f} s")
    assert not problems, "\n".join(problems) + "\n" + proc.stderr[-2000:]


def test_a_second_driver_of_a_study_in_object_storage_on_one_machine_is_refused(tmp_path, faults):
    """The lock of a study in object storage is in its working copy on this machine (no S3 server
    is needed: the refusal comes before the storage is asked anything)."""
    from tune.lock import StudyLock
    from tune.study_dir import StudyDir

    case = faults("a second driver of an s3:// study on the same machine")
    working_copy = StudyDir("s3://adastft-check/tune", "held").path
    lock = StudyLock(working_copy).acquire("held")
    try:
        proc = subprocess.run(
            [
                sys.executable,
                str(REPO / "tune/search.py"),
                "--storage",
                "s3://adastft-check/tune",
                "--name",
                "held",
                "--resume",
                "experiment=quickstart",
                f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            ],
            cwd=tmp_path,
            env=env(AWS_ENDPOINT_URL="http://127.0.0.1:9"),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        lock.release()
    last = proc.stderr.strip().splitlines()[-1:]
    survived = proc.returncode == 2 and f"another driver (pid {os.getpid()} on host" in "".join(last)
    case.fault(survived=survived and not working_copy.exists())
    assert survived, proc.stderr[-2000:]
    assert not working_copy.exists(), "the lock's folder stayed"


def test_address_auto_with_no_cluster_is_one_line(tmp_path, faults):
    """``--address auto`` finds clusters through Ray's temp folder: an empty one of its own
    (RAY_TMPDIR) makes sure no other Ray on this machine answers."""
    import psutil

    # `auto` also finds any Ray running on this machine by its GCS process (another test's or
    # another user's): this case exists only on a machine with no Ray at all.
    running = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "gcs_server"]
    if running:
        pytest.skip(f"a Ray cluster runs on this machine (gcs_server pids {running}): --address auto would use it")
    case = faults("--address auto with no Ray cluster on the machine")
    (tmp_path / "ray").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "tune/search.py"),
            "--address",
            "auto",
            "--trials",
            "1",
            "experiment=quickstart",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        ],
        cwd=tmp_path,
        env=env(RAY_TMPDIR=str(tmp_path / "ray")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    survived = (
        proc.returncode == 2
        and lines[-1].startswith("search: error: --address auto: no Ray cluster")
        and "Traceback" not in proc.stderr
        and not (tmp_path / "runs").exists()
    )
    case.fault(survived=survived)
    assert survived, proc.stderr[-3000:]


class Recorder:
    def __init__(self) -> None:
        self.reports: list[dict] = []

    def report(self, metrics, checkpoint_dir) -> None:
        self.reports.append(dict(metrics))

    def heartbeat(self) -> None:
        pass


def test_the_metrics_a_search_may_optimise_are_those_training_reports(tmp_path, faults):
    from adastft.training import EPOCH_METRICS, train

    case = faults("search.metric checked against what a trial reports")
    recorder = Recorder()
    train(tiny_dict(tmp_path, epochs=2), reporter=recorder)
    problems = []
    for i, metrics in enumerate(recorder.reports):
        every_epoch = set(metrics) - {"epoch"} - {k for k in metrics if k.startswith("test_")}  # test_*: last only
        if every_epoch != set(EPOCH_METRICS):
            problems.append(f"epoch {i} reports {sorted(every_epoch)}, EPOCH_METRICS is {sorted(EPOCH_METRICS)}")
    case.fault(survived=not problems and len(recorder.reports) == 2)
    assert not problems, "\n".join(problems)
