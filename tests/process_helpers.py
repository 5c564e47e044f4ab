"""Watching what a test's search makes: trial processes (read from /proc), the trials' working
folders (from the study's state file), Optuna's trial states (shared by the search tests and the
reliability suite); the checkout as a clean clone has it (the launcher and package tests)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkout_copy(dest: Path) -> Path:
    """The files git tracks or would track (not ignored ones) copied to ``dest``: what a clean
    clone holds, what `ray up` syncs, what ``pip install`` may build in without touching the checkout."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def optuna_states(db: Path) -> list[str]:
    """The states of a study's Optuna trials, read from its SQLite file without writing to it
    ([] while the search is still creating it: ``optuna.load_study`` would race it to create the
    tables, and either side could fail)."""
    if not Path(db).exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return [state for (state,) in con.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.Error:
        return []


def trial_work_root(exp_dir: Path) -> Path:
    """This machine's folder of a study's trial working copies (tune/trainable.work_root), once the
    study has started: its key is in the study's state file, so stale folders never match."""
    from tune.trainable import work_root

    return work_root(json.loads((Path(exp_dir) / "adastft_study.json").read_text())["work_key"])


def remove_trial_work(study_name: str) -> None:
    """Remove the working folders of every study named ``study_name`` (a test's own name)."""
    from tune.trainable import WORK_DIRS

    for root in (Path(tempfile.gettempdir()) / WORK_DIRS).glob(f"{study_name}-*"):
        shutil.rmtree(root, ignore_errors=True)


def trial_pids(driver_pgid: int) -> list[int]:
    """Trial actor processes of this driver's Ray: `ray::ImplicitFunc` children of its raylet."""
    stats = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="ignore")
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(proc.name)] = (cmd, int(fields[1]), int(fields[2]))  # cmdline, ppid, pgid
    return [
        pid
        for pid, (cmd, ppid, _) in stats.items()
        if cmd.startswith("ray::ImplicitFunc") and stats.get(ppid, ("", 0, 0))[2] == driver_pgid
    ]
