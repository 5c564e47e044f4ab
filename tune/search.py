"""The search: Ray Tune + Optuna TPE + ASHA or median stopping over adastft.training.train.

Run: ``python tune/search.py --trials 100 [flags] [Hydra overrides ...]``, e.g.
``python tune/search.py --trials 100 data=gtzan data.root=/data/gtzan``;
quickstart: ``python tune/search.py --trials 6 search=quickstart experiment=quickstart``;
on a cluster: ``ray job submit --working-dir . -- python tune/search.py --trials 100 --address auto
--storage s3://bucket/adastft ...``.

Overrides are those of ``python -m adastft.train`` plus ``search=<adastft/configs/search/*>`` and
``scheduler.<key>=...``. Everything is validated before Ray starts. Results: ``<storage>/<name>``
holds Tune's experiment (trials, checkpoints), the Optuna study (``optuna.db``) and the summary;
MLflow has one parent run for the study and one child run per trial.
"""

from __future__ import annotations

import argparse
import shlex
import os
import sys
from pathlib import Path

# `tune.*` and `adastft` from this checkout, here and (through PYTHONPATH) in Ray's workers
if not __package__:  # run as a file (python tune/...py): the checkout first; as adastft-... it is installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Ray's noise off before it is imported; the progress table stays.
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Tune's snapshot of the experiment every second (its default: every 10 s or more), so a driver
# killed mid-study leaves no trial that ran, or finished, unrecorded for --resume.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

from tune.interrupt import command_of  # noqa: E402
from tune.cli import add_run_flags, check_run_flags, drive, open_study  # noqa: E402
from tune.report import DEFAULT_REPORT, REPORT_MODES  # noqa: E402
from tune.settings import SearchError, absolutise, check_metric, compose  # noqa: E402
from tune.store_checks import check_optuna_storage  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog=shlex.join(command_of(sys.argv[0], "tune/search.py")),
        description="Hyper-parameter search over adastft training (Ray Tune + Optuna TPE).",
        epilog="Anything else is a Hydra override, e.g. data=gtzan data.root=/data/gtzan optim=sgd.",
    )
    p.add_argument("--trials", type=int, default=20, help="number of trials (default 20)")
    p.add_argument(
        "--search",
        default="default",
        help="search space: a name in adastft/configs/search/ or a path to a .yaml file (default: default)",
    )
    p.add_argument(
        "--scheduler",
        choices=["asha", "median", "none"],
        default="asha",
        help="early stopping on epochs (default asha)",
    )
    p.add_argument(
        "--report",
        choices=REPORT_MODES,
        default=DEFAULT_REPORT,
        help="what a trial reports to the scheduler and Optuna each epoch: the epoch's value of the "
        f"metric (last), the best so far (best) or a moving average (ema) (default {DEFAULT_REPORT}); "
        "the raw value is logged either way",
    )
    p.add_argument(
        "--keep-checkpoints",
        default="3",
        metavar="K",
        help="when the study ends, keep the checkpoints of the best K trials only, or 'all' (default 3); "
        "trials stopped early give theirs up when they stop",
    )
    add_run_flags(p, "study", "study", "./runs/search")
    p.add_argument(
        "--optuna-storage", default=None, help="Optuna RDB URL (default sqlite:///<storage>/<name>/optuna.db)"
    )
    args, overrides = p.parse_known_args(argv)
    check_run_flags(p, args, overrides)
    if args.trials < 1:
        p.error(f"--trials must be >= 1, got {args.trials}")
    if args.keep_checkpoints == "all":
        args.keep_checkpoints = None
    elif args.keep_checkpoints.isdigit():
        args.keep_checkpoints = int(args.keep_checkpoints)
    else:
        p.error(f"--keep-checkpoints takes a number of trials >= 0 or 'all', got {args.keep_checkpoints!r}")
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    cwd = Path.cwd()

    def check():
        base, spec, sched = compose(overrides, args.search, args.scheduler)
        import torch

        from adastft.advice import advice
        from adastft.memory import check_fits

        if args.address is None and not args.gpus_per_trial:  # trials on this machine's memory
            try:
                check_fits(base, torch.device("cpu"))
            except ValueError as exc:
                raise SearchError(str(exc)) from None
        for line in advice(base):  # the base config, less the keys the space samples
            if line.split("=", 1)[0] not in spec.space:
                print(f"search: warning: {line}", file=sys.stderr)
        base = absolutise(base, cwd)
        check_metric(spec)

        def check_optuna(exists: bool, local: Path | None) -> None:
            if args.optuna_storage or (args.resume and local is not None):  # a new study's optuna.db is made later
                check_optuna_storage(
                    args.optuna_storage or f"sqlite:///{local / 'optuna.db'}", args.name if args.resume else None
                )

        storage, study_dir, lock = open_study(args, base, cwd, "search", before_lock=check_optuna)

        def start() -> int:
            from tune.run import run_study  # imports Ray: only after the checks

            return run_study(args, base, spec, sched, storage, study_dir)

        return start, lock

    return drive("search", "study", args, argv, "tune/search.py", check)


if __name__ == "__main__":
    sys.exit(main())
