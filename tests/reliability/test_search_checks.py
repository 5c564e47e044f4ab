"""What the search checks before Ray starts, beyond the bad-input table (``test_bad_input.py``):
the driver lock of a study, and the list of metrics a search may optimise against what training
really reports.

- A study's lock (``tune/lock.py``) is held by a live driver and refused to a second one; a
  driver killed with SIGKILL leaves the file, and its lock is taken over by the next driver.
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
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(exp), str(REPO)], env=env(), stdout=subprocess.PIPE,
                              text=True)
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


class Recorder:
    def __init__(self) -> None:
        self.reports: list[dict] = []

    def report(self, metrics, checkpoint_dir) -> None:
        self.reports.append(dict(metrics))

    def should_stop(self) -> bool:
        return False

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
