"""A seeded comparison: arms x seeds as one Ray Tune grid, with error bars and paired differences.

Run: ``python tune/compare.py [flags] [Hydra overrides ...]``, the arms given as Hydra sweeps, e.g.
``python tune/compare.py experiment='glob(original_*)' --seeds 3 data=gtzan data.root=/data/gtzan``
(the original's seven trials, three seeds each), or
``python tune/compare.py stft=fixed,learn_both --seeds 2 experiment=quickstart train.epochs=1``.

Each arm is every combination of the sweeps (``a,b`` lists, ``glob(...)`` of a config group);
the other overrides are common. Each arm runs with ``train.seed`` 0, 1, ..., ``--seeds`` - 1,
the data split fixed (``data.seed``), so seeds pair across arms. Trials run on the search's
machinery (``tune/run.py``, ``tune/trainable.py``): a local Ray, GPUs, a cluster, retries,
``--resume``, an MLflow parent run with a child run per trial. At the end: per arm, mean ± std
of the best and last validation clip accuracy and of the test accuracy, and per arm the
difference to the ``--baseline`` arm paired by seed with a 95% t interval; printed, and logged
with the plot as the parent run's ``compare/`` artifacts. Everything is validated before Ray starts.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

if not __package__:  # run as a file (python tune/...py): the checkout first; as adastft-... it is installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # as the search: a killed driver loses no finished trial

from tune.interrupt import command_of  # noqa: E402
from tune.arms import compose_arm, expand_arms, find_baseline, named_arms  # noqa: E402
from tune.cli import add_run_flags, check_run_flags, drive, open_study  # noqa: E402
from tune.settings import SearchError, absolutise  # noqa: E402

PROG = "compare"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog=shlex.join(command_of(sys.argv[0], "tune/compare.py")),
        description="Compare configurations (arms) over seeds on the search's machinery, with error bars.",
        epilog="Anything else is a Hydra override; sweeps (stft=fixed,learn_both, experiment='glob(original_*)') "
        "make the arms.",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm: train.seed 0..N-1 (default 3)")
    p.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="start the seeds here: train.seed K..K+N-1, to add seeds to an earlier comparison's (default 0)",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="the arm the others are compared with: its name (stft=fixed) or its swept value (fixed); "
        "default: the first arm",
    )
    p.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME:OVERRIDES",
        help="a named arm of several overrides, e.g. --arm 'slow:stft=learn_both stft.lr=1e-4' "
        "(repeat it; the other overrides are common to all arms and may not sweep)",
    )
    add_run_flags(p, "comparison", "compare", "./runs/compare")
    args, overrides = p.parse_known_args(argv)
    check_run_flags(p, args, overrides)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.first_seed < 0:
        p.error(f"--first-seed must be >= 0, got {args.first_seed}")
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    cwd = Path.cwd()

    def check():
        from adastft.train import CONFIG_DIR

        arms = named_arms(args.arm, overrides) if args.arm else expand_arms(overrides, CONFIG_DIR)
        baseline = find_baseline(arms, args.baseline)
        configs = {arm.name: absolutise(compose_arm(arm), cwd) for arm in arms}
        first = configs[arms[0].name]
        for name, cfg in configs.items():  # one parent run holds them all
            if (cfg.tracking.enabled, cfg.tracking.uri, cfg.tracking.experiment) != (
                first.tracking.enabled,
                first.tracking.uri,
                first.tracking.experiment,
            ):
                raise SearchError(
                    f"arm {name!r} tracks elsewhere than arm {arms[0].name!r} (tracking.enabled, .uri, "
                    ".experiment): set them once, outside the sweeps"
                )
        storage, study_dir, lock = open_study(args, first, cwd, "compare", what="comparison")

        def start() -> int:
            from tune.compare_run import run_comparison  # imports Ray: only after the checks

            return run_comparison(args, [a.name for a in arms], configs, baseline.name, storage, study_dir)

        return start, lock

    return drive(PROG, "comparison", args, argv, "tune/compare.py", check)


if __name__ == "__main__":
    sys.exit(main())
