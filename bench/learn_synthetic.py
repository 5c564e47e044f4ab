"""Does the model learn? A few epochs on the synthetic set, fixed vs learned front end.

Run: ``python bench/learn_synthetic.py [--epochs 10]``. Prints validation clip accuracy per epoch
for each variant side by side (chance is 0.10 with 10 classes) and the final test accuracy.
Configuration: ``adastft/configs/experiment/quickstart.yaml`` (40 clips of 6 s per class, 64 mels, lr 1e-3).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adastft.training import train  # noqa: E402

VARIANTS = {"fixed": (False, False), "learn window": (True, False), "learn both": (True, True)}


class History:
    def __init__(self) -> None:
        self.acc: list[float] = []

    def report(self, metrics, checkpoint_dir) -> None:
        self.acc.append(metrics["val_clip_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (window, kernel) in VARIANTS.items():
            history = History()
            started = time.perf_counter()
            metrics = train(
                {
                    "name": name,
                    "data": {"source": "synthetic", "cache_dir": f"{tmp}/cache", "synthetic_clips_per_class": 40},
                    "stft": {"n_mels": 64, "learn_window": window, "learn_kernel": kernel},
                    "optim": {"lr": 1e-3},
                    "train": {"epochs": args.epochs, "out_dir": f"{tmp}/{name}"},
                    "tracking": {"enabled": False},
                },
                history,
            )
            results[name] = (history.acc, metrics["test_clip_accuracy"], time.perf_counter() - started)
    print(f"validation clip accuracy per epoch (chance 0.10); synthetic set, {args.epochs} epochs")
    print("epoch " + "".join(f"{name:>14}" for name in results))
    for epoch in range(args.epochs):
        print(f"{epoch + 1:>5} " + "".join(f"{acc[epoch]:>14.3f}" for acc, _, _ in results.values()))
    print("test  " + "".join(f"{test:>14.3f}" for _, test, _ in results.values()))
    print("time  " + "".join(f"{t:>13.0f}s" for _, _, t in results.values()))


if __name__ == "__main__":
    main()
