"""The search: Ray Tune + Optuna TPE + ASHA or median stopping over adastft.training.train.

Run: ``python tune/search.py --trials 100 [flags] [Hydra overrides ...]``, e.g.
``python tune/search.py --trials 100 data=gtzan data.root=/data/gtzan``;
quickstart: ``python tune/search.py --trials 6 search=quickstart experiment=quickstart``;
on a cluster: ``ray job submit --working-dir . -- python tune/search.py --trials 100 --address auto
--storage s3://bucket/adastft ...``.

Overrides are those of ``python -m adastft.train`` plus ``search=<configs/search/*>`` and
``scheduler.<key>=...``. Everything is validated before Ray starts. Results: ``<storage>/<name>``
holds Tune's experiment (trials, checkpoints), the Optuna study (``optuna.db``) and the summary;
MLflow has one parent run for the study and one child run per trial.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path

# `tune.*` and `adastft` from this checkout, here and (through PYTHONPATH) in Ray's workers
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Ray's noise off before it is imported; the progress table stays.
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Tune's snapshot of the experiment every second (its default: every 10 s or more), so a driver
# killed mid-study leaves no trial that ran, or finished, unrecorded for --resume.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

from adastft.advice import advice  # noqa: E402
from adastft.memory import check_fits  # noqa: E402
from adastft.training import NOMINAL_CLASSES  # noqa: E402
from torch import device as torch_device  # noqa: E402
from adastft.config import ConfigError  # noqa: E402
from adastft.tracking import TrackingUnavailable, check_tracking_uri  # noqa: E402
from tune.lock import StudyLock  # noqa: E402
from tune.settings import (SearchError, absolutise, check_metric, check_optuna_storage,  # noqa: E402
                           check_storage, check_study_name, compose, plan_resources, storage_root)
from tune.study_dir import StudyDir  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="python tune/search.py",
        description="Hyper-parameter search over adastft training (Ray Tune + Optuna TPE).",
        epilog="Anything else is a Hydra override, e.g. data=gtzan data.root=/data/gtzan optim=sgd.",
    )
    p.add_argument("--trials", type=int, default=20, help="number of trials (default 20)")
    p.add_argument("--search", default="default",
                   help="search space: a name in configs/search/ or a path to a .yaml file (default: default)")
    p.add_argument("--scheduler", choices=["asha", "median", "none"], default="asha",
                   help="early stopping on epochs (default asha)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial; fractions pack trials on a GPU (default: 0.5 if a GPU is visible, else 0)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial, or per worker (default 1)")
    p.add_argument("--workers-per-trial", type=int, default=1,
                   help="DDP workers per trial; >1 runs each trial as a Ray Train TorchTrainer (default 1)")
    p.add_argument("--max-concurrent", type=int, default=None, help="cap on trials at once (default: what the resources allow)")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' or host:port); default: a local Ray")
    p.add_argument("--storage", default=None,
                   help="results folder or URI (default ./runs/search); shared storage (s3://, NFS) on a multi-node cluster")
    p.add_argument("--name", default="study", help="study name: the folder under --storage and the MLflow parent run")
    p.add_argument("--resume", action="store_true", help="continue the interrupted study --name")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial from its last checkpoint (default 2)")
    p.add_argument("--stall-timeout", type=float, default=900.0,
                   help="seconds without a finished training step before a trial is stopped (default 900; 0 = never)")
    p.add_argument("--keep-checkpoints", default="3", metavar="K",
                   help="when the study ends, keep the checkpoints of the best K trials only, or 'all' (default 3); "
                        "trials stopped early give theirs up when they stop")
    p.add_argument("--trial-resource", action="append", default=[], metavar="NAME=AMOUNT",
                   help="a custom Ray resource each trial (each DDP worker) also needs, e.g. spot=1 to run trials only on "
                        "nodes started with --resources '{\"spot\": 4}'; repeatable")
    p.add_argument("--optuna-storage", default=None, help="Optuna RDB URL (default sqlite:///<storage>/<name>/optuna.db)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and the trials' logs")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        p.error(f"unknown flag {bad[0]} (Hydra overrides look like key=value)")
    for name in ("trials", "workers_per_trial", "max_failures"):
        value = getattr(args, name)
        if value < (0 if name == "max_failures" else 1):
            p.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'max_failures' else 1}, got {value}")
    if args.cpus_per_trial <= 0:
        p.error(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial}")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        p.error(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial}")
    if args.stall_timeout < 0:
        p.error(f"--stall-timeout must be >= 0, got {args.stall_timeout}")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        p.error(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if args.keep_checkpoints == "all":
        args.keep_checkpoints = None
    elif args.keep_checkpoints.isdigit():
        args.keep_checkpoints = int(args.keep_checkpoints)
    else:
        p.error(f"--keep-checkpoints takes a number of trials >= 0 or 'all', got {args.keep_checkpoints!r}")
    args.trial_resources = {}
    for item in args.trial_resource:
        name, _, amount = item.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not name or name in ("CPU", "GPU", "cpu", "gpu") or not value > 0:
            p.error(f"--trial-resource {item!r}: give NAME=AMOUNT with a custom resource name and an amount > 0 "
                    "(CPUs and GPUs have their own flags)")
        args.trial_resources[name] = value
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    cwd = Path.cwd()
    try:
        base, spec, sched = compose(overrides, args.search, args.scheduler)
        if args.address is None and not args.gpus_per_trial:  # trials on this machine's memory
            try:
                check_fits(base, NOMINAL_CLASSES, torch_device("cpu"))
            except ValueError as exc:
                raise SearchError(str(exc)) from None
        for line in advice(base):  # the base config, less the keys the space samples
            if line.split("=", 1)[0] not in spec.space:
                print(f"search: warning: {line}", file=sys.stderr)
        base = absolutise(base, cwd)
        check_metric(spec)
        check_study_name(args.name)
        storage = storage_root(args.storage, cwd)
        check_storage(storage)
        study_dir = StudyDir(storage, args.name)
        # A running driver is named first, even before its study has files. A study in object
        # storage is locked in its working copy on this machine: two drivers on one machine are
        # refused; object storage offers no lock that two machines could share through pyarrow.
        StudyLock(study_dir.path).check_free(args.name)
        try:
            exists = study_dir.exists()
        except OSError as exc:
            raise SearchError(f"--storage {storage}: cannot reach it ({str(exc).strip().splitlines()[0]})") from None
        exp_dir_local = None if study_dir.remote else study_dir.path
        if exists and not args.resume:
            raise SearchError(f"study {args.name!r} already exists in {storage}: add --resume to continue it, "
                              "or pick another --name")
        if args.resume and not exists:
            raise SearchError(f"--resume: no study {args.name!r} in {storage} to continue")
        if args.optuna_storage or (args.resume and exp_dir_local is not None):  # a new study's optuna.db is made later
            check_optuna_storage(args.optuna_storage or f"sqlite:///{exp_dir_local / 'optuna.db'}",
                                 args.name if args.resume else None)
        if base.tracking.enabled:
            check_tracking_uri(base.tracking.uri)
        if args.address is None:  # a local Ray gets this machine's resources: check the plan before starting it
            import torch

            plan_resources(args, float(len(os.sched_getaffinity(0))), float(torch.cuda.device_count()))
        elif ":" in args.address.rpartition("/")[2]:  # host:port: ray.init would wait minutes for a dead address
            host, _, port = args.address.rpartition("/")[2].rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
            except (OSError, ValueError) as exc:
                raise SearchError(f"--address {args.address}: no Ray cluster answers there ({exc})") from None
        # last: a new study's folder is made here, to hold its lock (tune/lock.py)
        lock = StudyLock(study_dir.path).acquire(args.name)
    except (ConfigError, SearchError, TrackingUnavailable) as exc:
        print(f"search: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"search: interrupted (SIGINT) before study {args.name!r} started: nothing ran", file=sys.stderr)
        return 130
    from tune.interrupt import report_interrupted, resume_command
    from tune.run import run_study  # imports Ray: only after the checks

    args.resume_command = resume_command(sys.argv[0], sys.argv[1:] if argv is None else argv)
    try:
        return run_study(args, base, spec, sched, storage, study_dir)
    except SearchError as exc:
        print(f"search: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a second Ctrl-C or SIGTERM (tune/interrupt.py), or one before Ray started
        signum = getattr(exc, "signum", signal.SIGINT)
        report_interrupted(args.name, signal.Signals(signum).name, args.resume_command)
        return 128 + signum
    finally:
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    sys.exit(main())
