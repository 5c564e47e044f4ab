"""Trials per hour and GPU utilisation with trials packed on the GPU, side by side in one run.

Run (a machine with CUDA; ``bash bench/gpu_check.sh`` runs it):
``python bench/bench_packing.py [--trials 8] [--packings 1 0.5 0.25]``.

Each packing runs the same study, the README's quickstart (synthetic set, default model) with
no early stopping, with ``--gpus-per-trial G``, so 1/G trials share each GPU; a thread samples
every GPU's utilisation through NVML every 0.5 s while it runs. One table: trials per hour, mean
GPU utilisation, and where the trials' time went. Exits 2 at once without CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import torch

from studies import QUICKSTART, run_study


class GpuSampler:
    """Mean utilisation (%) of all GPUs, sampled by NVML every ``interval`` seconds."""

    def __init__(self, interval: float = 0.5) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._samples.append(
                statistics.mean(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles)
            )

    def __enter__(self) -> "GpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def mean(self) -> float:
        return statistics.mean(self._samples) if self._samples else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--packings", type=float, nargs="+", default=[1.0, 0.5, 0.25], help="GPUs per trial")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_packing: no CUDA device visible to torch: nothing to measure", file=sys.stderr)
        sys.exit(2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="adastft-packing-") as tmp:
        for gpus in args.packings:
            name = f"pack-{gpus:g}"
            with GpuSampler() as sampler:
                study = run_study(
                    Path(tmp) / name,
                    name,
                    args.trials,
                    "--gpus-per-trial",
                    f"{gpus:g}",
                    "--scheduler",
                    "none",
                    *QUICKSTART,
                )
            rows.append((gpus, study.wall_s, 3600 * args.trials / study.wall_s, sampler.mean(), study.shares()))
    print(
        f"{args.trials} trials of the quickstart study on {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    )
    print(f"{'GPU/trial':>9} {'wall s':>8} {'trials/h':>9} {'GPU util %':>11}  time in trials")
    for gpus, wall, per_hour, util, where in rows:
        print(f"{gpus:>9g} {wall:>8.0f} {per_hour:>9.0f} {util:>11.0f}  {where}")


if __name__ == "__main__":
    main()
