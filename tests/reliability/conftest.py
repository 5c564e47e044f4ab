"""Fixtures of the reliability suite (helpers in ``harness.py``).

Each test records what it did with the ``faults`` fixture: ``case = faults("name")``, then
``case.fault(survived=..., lost=..., note=...)`` once per injected fault or bad input. When
``ADASTFT_RELIABILITY_REPORT`` names a file, every case is appended to it as one JSON line with
the test's outcome; ``python tests/reliability/summary.py`` runs the suite that way and prints the
counts. The counts come from the assertions the tests make, nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, MlflowServer  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def faults(request):
    cases: list[Case] = []

    def make(name: str) -> Case:
        cases.append(Case(name))
        return cases[-1]

    yield make
    target = os.environ.get("ADASTFT_RELIABILITY_REPORT")
    if not target:
        return
    call = getattr(request.node, "rep_call", None)
    outcome = call.outcome if call is not None else "error"
    with open(target, "a") as f:
        for case in cases:
            f.write(
                json.dumps(
                    {
                        "test": request.node.nodeid,
                        "outcome": outcome,
                        "case": case.name,
                        "tried": case.tried,
                        "survived": case.survived,
                        "lost": case.lost,
                        "notes": case.notes,
                    }
                )
                + "\n"
            )


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def small_volume(tmp_path):
    """``make(size)``: a tmpfs of ``size`` mounted under tmp_path (a real full disk), or ``None``
    where this machine forbids mounting (or ``ADASTFT_RELIABILITY_NO_MOUNT`` is set, to test the
    fallback); unmounted at the end."""
    mounts: list[Path] = []

    def make(size: str, name: str = "volume") -> Path | None:
        target = tmp_path / name
        target.mkdir()
        if shutil.which("mount") is None or os.environ.get("ADASTFT_RELIABILITY_NO_MOUNT"):
            return None
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            return None
        mounts.append(target)
        return target

    yield make
    for target in mounts:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)
