"""The README's test command on a fresh machine: tests that need a system program (Debian's
Chromium for the MLflow UI test; sshd, rsync and nc for the cluster launcher test) skip with the
line that installs it, and under ``CI=true`` (where ``.ci/run`` installs them) they fail instead
of skipping.

The two real test files run in a pytest of their own with the programs hidden by a plugin
(``shutil.which`` finds none of them, the Chromium paths point nowhere), so the outcome is the
same on a machine that has them and on one that does not.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from harness import REPO, env

pytestmark = pytest.mark.slow

HIDE = '''
"""Test scaffolding (tests/reliability/test_fresh_machine.py): a machine without the programs."""
import shutil
from pathlib import Path

HIDDEN = {"rsync", "nc", "apt-get", "chromium", "chromedriver"}
_which = shutil.which


def _which_but_hidden(cmd, *args, **kwargs):
    return None if Path(str(cmd)).name in HIDDEN else _which(cmd, *args, **kwargs)


shutil.which = _which_but_hidden


def pytest_runtest_setup(item):
    for name in ("CHROMIUM", "CHROMEDRIVER"):
        if hasattr(item.module, name):
            setattr(item.module, name, Path("/nonexistent") / name.lower())
'''

INSTALL_LINES = {
    "MLflow UI": "apt-get install -y chromium chromium-driver",
    "cluster launcher": "apt-get install openssh-server rsync netcat-openbsd",
}


@pytest.mark.parametrize("ci", ["", "true"], ids=["fresh machine", "CI=true"])
def test_tests_needing_system_programs_skip_with_the_install_line_unless_ci(tmp_path, faults, ci):
    from cluster_sandbox import namespaces_work

    case = faults(f"system programs missing ({'CI=true: the tests fail' if ci else 'no CI: the tests skip'})")
    (tmp_path / "hide_programs.py").write_text(HIDE)
    files = ["tests/test_mlflow_ui.py"] + (["tests/test_cluster_launcher.py"] if namespaces_work() is None else [])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *files,
            "-p",
            "hide_programs",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rsf",
            "--durations=0",
            "-o",
            "addopts=",
        ],
        cwd=REPO,
        env=env(CI=ci, PYTHONPATH=f"{tmp_path}:{env()['PYTHONPATH']}"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped)", out.splitlines()[-1])}
    # a test fails, or errors where its fixture checks (the cluster launcher's remote machine)
    got = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0) if ci else counts.get("skipped", 0)
    problems = []
    if proc.returncode != (1 if ci else 0):
        problems.append(f"pytest exit status {proc.returncode}")
    if got != len(files) or counts.get("passed"):
        problems.append(f"want all {len(files)} {'failed' if ci else 'skipped'}: {out.splitlines()[-1]}")
    for what, line in list(INSTALL_LINES.items())[: len(files)]:
        if line not in out:
            problems.append(f"the {what} test does not give the install line {line!r}")
    if "Traceback" in out:
        problems.append("a traceback")
    case.fault(survived=not problems)
    assert not problems, "\n".join(problems) + "\n" + out[-3000:]
