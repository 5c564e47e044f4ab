"""A real study for the benchmarks: ``tune/search.py`` as a user runs it, in a folder of its own.

Shared by ``bench_search.py`` (where a study's time goes) and ``bench_packing.py`` (trials per
hour when trials share a GPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adastft.timing import EPOCH_SECONDS, PHASES, shares, total_metric  # noqa: E402

# The README's quickstart study: the synthetic set, the default model, learned front end.
QUICKSTART = ["--search", "quickstart", "experiment=quickstart"]


@dataclass
class Study:
    wall_s: float
    table: pd.DataFrame  # the study's trials.csv
    stdout: str
    folder: Path  # Tune's results of the study: a folder per trial

    def trial_seconds(self) -> float:
        """The trials' wall seconds as Tune timed them (each from its start to its last report), summed."""
        total = 0.0
        for results in self.folder.glob("*/result.json"):
            lines = results.read_text().splitlines()
            total += json.loads(lines[-1]).get("time_total_s", 0.0) if lines else 0.0
        return total

    def totals(self) -> dict[str, float]:
        """Seconds per phase summed over the trials (``total_time_<phase>``, ``total_epoch_seconds``)."""
        keys = [total_metric(p) for p in (*PHASES, EPOCH_SECONDS)]
        return {k: float(self.table[k].fillna(0).sum()) for k in keys}

    def shares(self) -> str:
        return shares(self.totals())


def run_study(folder: Path, name: str, trials: int, *args: str, timeout: float = 7200) -> Study:
    """Run ``tune/search.py --trials N --name NAME ARGS`` in ``folder`` (its own MLflow store and
    results); raise with the output's tail when it fails."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        str(ROOT / "tune" / "search.py"),
        "--trials",
        str(trials),
        "--name",
        name,
        *args,
        f"tracking.uri=sqlite:///{folder}/mlflow.db",
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    results = folder / "runs" / "search" / name
    return Study(wall, pd.read_csv(results / "summary" / "trials.csv"), proc.stdout, results)
