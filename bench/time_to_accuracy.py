"""Time to accuracy: the original's training recipe vs the current defaults, seeded, side by side.

Run: ``python bench/time_to_accuracy.py [--seeds 3] [--target 0.6]`` (about 10 minutes on 2 CPU cores).

Both recipes train ``experiment=quickstart`` (the synthetic set: 10 classes, 40 clips of 6 s per
class, 80 validation clips; chance 0.10) from the same composed configs, differing only in the
recipe: the original's (one random crop per clip per epoch, validation votes over all parts,
ExponentialLR per epoch; as ``adastft/configs/experiment/original_*.yaml`` pin it) and the defaults
(``data.crops_per_clip``, ``data.eval_parts``, ``optim.schedule``, ``optim.warmup_epochs``). Each
recipe gets about the same wall-time budget (``--epochs-old``, ``--epochs-new``: an epoch of the
defaults trains on more crops). Two runs at a time, one thread each, queued old and new
alternately so that both see the same load. Printed per recipe, mean ± std over seeds:
wall time and epochs until validation clip accuracy first reaches ``--target`` (over the seeds
that reach it), and the final and best validation and test clip accuracy.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPE_KEYS = ("data.crops_per_clip", "data.eval_parts", "optim.schedule", "optim.warmup_epochs")


def compose(overrides: list[str]) -> dict:
    from adastft.train import compose as compose_config, resolve

    return resolve(compose_config(overrides)).to_dict()


def original_recipe() -> list[str]:
    """The recipe ``adastft/configs/experiment/original_learn_both.yaml`` pins, as overrides."""
    cfg = compose(["experiment=original_learn_both", "data.root=/unused"])
    return [
        f"{key}={'null' if v is None else v}"
        for key in RECIPE_KEYS
        for v in [cfg[key.split(".")[0]][key.split(".")[1]]]
    ]


class Curve:
    """A reporter that notes each epoch's validation accuracy and the wall time since the start."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.points: list[tuple[float, float]] = []  # (seconds, val clip accuracy)

    def report(self, metrics, checkpoint_dir) -> None:
        self.points.append((time.perf_counter() - self.started, metrics["val_clip_accuracy"]))

    def heartbeat(self) -> None:
        pass


def run(job: tuple[str, dict]) -> tuple[str, dict]:
    name, cfg = job
    logging.basicConfig(level=logging.WARNING)
    from adastft.training import train

    curve = Curve()
    metrics = train(cfg, curve)
    return name, {
        "points": curve.points,
        "test": metrics["test_clip_accuracy"],
        "seconds": time.perf_counter() - curve.started,
    }


def mean_std(values: list[float]) -> str:
    if not values:
        return "not reached"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else float("nan")
    return f"{mean:.3g} ± {std:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.6, help="validation clip accuracy to reach (default 0.6)")
    parser.add_argument("--epochs-old", type=int, default=24)
    parser.add_argument("--epochs-new", type=int, default=8)
    args = parser.parse_args()
    old = original_recipe()
    recipes = {"original": (old, args.epochs_old), "defaults": ([], args.epochs_new)}
    with tempfile.TemporaryDirectory(prefix="adastft-tta-") as tmp:
        jobs = []
        for seed in range(args.seeds):
            for name, (overrides, epochs) in recipes.items():
                cfg = compose(
                    [
                        "experiment=quickstart",
                        *overrides,
                        f"train.epochs={epochs}",
                        f"train.seed={seed}",
                        "train.threads=1",
                        f"train.out_dir={tmp}/{name}-{seed}",
                        "tracking.enabled=false",
                        f"data.cache_dir={tmp}/cache",
                    ]
                )
                jobs.append((name, cfg))
        compose_cache = compose(["experiment=quickstart", f"data.cache_dir={tmp}/cache"])  # build the cache once
        from adastft.data import prepare
        from adastft.config import Config

        prepare(Config.from_dict(compose_cache).data.spec())
        started = time.perf_counter()
        with mp.get_context("spawn").Pool(2) as pool:
            results = pool.map(run, jobs, chunksize=1)
        wall = time.perf_counter() - started
    print(
        f"time to accuracy on experiment=quickstart (synthetic, 80 validation clips, chance 0.10): {args.seeds} seeds "
        f"per recipe, 2 runs at a time on 1 thread each; {wall:.0f} s in all"
    )
    for name, (overrides, epochs) in recipes.items():
        print(
            f"  {name:9s} {epochs:2d} epochs  "
            + (
                " ".join(overrides)
                or "the defaults: "
                + " ".join(
                    f"{k}={compose(['experiment=quickstart'])[k.split('.')[0]][k.split('.')[1]]}" for k in RECIPE_KEYS
                )
            )
        )
    width = 18
    print(
        f"{'recipe':10s}{'reached':>8s}"
        + "".join(
            f"{h:>{width}s}"
            for h in (
                f"s to {args.target:g}",
                f"epochs to {args.target:g}",
                "s / epoch",
                "final val",
                "best val",
                "test",
                "total s",
            )
        )
    )
    for name in recipes:
        runs = [r for n, r in results if n == name]
        reached = [
            next(((i + 1, t) for i, (t, acc) in enumerate(r["points"]) if acc >= args.target), None) for r in runs
        ]
        hit = [x for x in reached if x is not None]
        cells = [
            mean_std([t for _, t in hit]),
            mean_std([float(e) for e, _ in hit]),
            mean_std([r["points"][-1][0] / len(r["points"]) for r in runs]),
            mean_std([r["points"][-1][1] for r in runs]),
            mean_std([max(a for _, a in r["points"]) for r in runs]),
            mean_std([r["test"] for r in runs]),
            mean_std([r["seconds"] for r in runs]),
        ]
        print(f"{name:10s}{len(hit):>5d}/{len(runs):<2d}" + "".join(f"{c:>{width}s}" for c in cells))
    print("validation clip accuracy per epoch (mean over seeds) and seconds since the start:")
    for name in recipes:
        runs = [r for n, r in results if n == name]
        n = min(len(r["points"]) for r in runs)
        print(
            f"  {name:9s} "
            + " ".join(
                f"{sum(r['points'][i][1] for r in runs) / len(runs):.2f}@{sum(r['points'][i][0] for r in runs) / len(runs):.0f}s"
                for i in range(n)
            )
        )


if __name__ == "__main__":
    main()
