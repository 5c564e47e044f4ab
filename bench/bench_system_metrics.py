"""What MLflow's system metrics cost a run: the CPU time of the sampler per second of run.

    python bench/bench_system_metrics.py [--seconds 20]

A run (``adastft.tracking.Tracker`` on a fresh SQLite store, as a trial's) is held open for
``--seconds`` while this process does nothing else, once without system metrics and once per
sampling interval; the process's CPU time over that span is the sampler's cost (psutil calls, a
``get_run`` per sample and a metrics batch per point, all in this process for SQLite). Printed as
a share of one core: a trial on one CPU pays that share of its time.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from adastft.tracking import Tracker


def measure(store: Path, interval: float, seconds: float) -> tuple[float, int]:
    """CPU seconds this process used while a run sampled at ``interval`` for ``seconds``, and
    how many CPU utilisation points reached the run."""
    uri = f"sqlite:///{store}"
    tracker = Tracker(uri, "bench", run_name=f"interval-{interval:g}", system_metrics_interval=interval)
    cpu = time.process_time()
    time.sleep(seconds)
    used = time.process_time() - cpu
    tracker.end("FINISHED")
    client = MlflowClient(uri)
    keys = [k for k in client.get_run(tracker.run_id).data.metrics if k.endswith("cpu_utilization_percentage")]
    points = len(client.get_metric_history(tracker.run_id, keys[0])) if keys else 0
    return used, points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each run is held open")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "mlflow.db"
        measure(store, 0.0, 1.0)  # create the store's tables before anything is timed
        rows = [(interval, *measure(store, interval, args.seconds)) for interval in (0.0, 0.5, 2.0, 10.0)]
    base = rows[0][1]
    print(f"a run held open {args.seconds:g} s; CPU time of this process (SQLite store, in-process)")
    print(f"{'interval s':>10} {'points':>7} {'CPU s':>7} {'sampler CPU s':>14} {'share of 1 core':>16}")
    for interval, used, points in rows:
        label = "off" if interval == 0 else f"{interval:g}"
        extra = max(0.0, used - base)
        print(f"{label:>10} {points:>7} {used:7.3f} {extra:14.3f} {100 * extra / args.seconds:15.2f}%")


if __name__ == "__main__":
    main()
