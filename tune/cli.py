"""What ``tune/search.py`` and ``tune/compare.py`` share before Ray starts: the flags that say
where and how trials run, and opening the study (its name, storage, lock, tracking and resources),
each bad value one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Callable

from adastft.config import Config, ConfigError
from adastft.tracking import TrackingUnavailable, check_tracking_uri
from tune.lock import StudyLock
from tune.cluster_checks import plan_resources
from tune.settings import SearchError
from tune.store_checks import check_storage, check_study_name, storage_root
from tune.study_dir import StudyDir


def add_run_flags(p: argparse.ArgumentParser, what: str, default_name: str, default_storage: str) -> None:
    """The flags of where and how trials run; ``what``: "study" or "comparison", for the help."""
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs per trial; fractions pack trials on a GPU (default: 0.5 if a GPU is visible, else 0)",
    )
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial, or per worker (default 1)")
    p.add_argument(
        "--workers-per-trial",
        type=int,
        default=1,
        help="DDP workers per trial; >1 runs each trial as a Ray Train TorchTrainer (default 1)",
    )
    p.add_argument(
        "--max-concurrent", type=int, default=None, help="cap on trials at once (default: what the resources allow)"
    )
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' or host:port); default: a local Ray")
    p.add_argument(
        "--storage",
        default=None,
        help=f"results folder or URI (default {default_storage}); shared storage (s3://, NFS) on a multi-node cluster",
    )
    p.add_argument(
        "--name", default=default_name, help=f"{what} name: the folder under --storage and the MLflow parent run"
    )
    p.add_argument("--resume", action="store_true", help=f"continue the interrupted {what} --name")
    p.add_argument(
        "--max-failures", type=int, default=2, help="retries of a failed trial from its last checkpoint (default 2)"
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=900.0,
        help="seconds without a finished training step before a trial is stopped (default 900; 0 = never)",
    )
    p.add_argument(
        "--trial-resource",
        action="append",
        default=[],
        metavar="NAME=AMOUNT",
        help="a custom Ray resource each trial (each DDP worker) also needs, e.g. spot=1 to run trials only on "
        "nodes started with --resources '{\"spot\": 4}'; repeatable",
    )
    p.add_argument("--verbose", action="store_true", help="show Ray's and the trials' logs")


def check_run_flags(p: argparse.ArgumentParser, args: argparse.Namespace, overrides: list[str]) -> None:
    """``p.error`` (one line after the usage) on a bad value of :func:`add_run_flags`' flags."""
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        p.error(f"unknown flag {bad[0]} (Hydra overrides look like key=value)")
    for name in ("workers_per_trial", "max_failures"):
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
    args.trial_resources = {}
    for item in args.trial_resource:
        name, _, amount = item.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not name or name in ("CPU", "GPU", "cpu", "gpu") or not value > 0:
            p.error(
                f"--trial-resource {item!r}: give NAME=AMOUNT with a custom resource name and an amount > 0 "
                "(CPUs and GPUs have their own flags)"
            )
        args.trial_resources[name] = value


def open_study(
    args: argparse.Namespace,
    base: Config,
    cwd: Path,
    default_folder: str,
    what: str = "study",
    before_lock: Callable[[bool, Path | None], None] | None = None,
) -> tuple[str, StudyDir, StudyLock | None]:
    """Check the study's name, storage, ``--resume``, tracking and resources, then take its lock.

    Returns ``(storage, study_dir, lock)`` (on object storage, the lock of the working copy). ``before_lock(exists,
    local_folder)``: further checks once the study's folder is known. Raises :class:`SearchError`
    (or the tracking check's error), one line.
    """
    check_study_name(args.name)
    storage = storage_root(args.storage, cwd, default_folder)
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
    local = None if study_dir.remote else study_dir.path
    if exists and not args.resume:
        raise SearchError(
            f"{what} {args.name!r} already exists in {storage}: add --resume to continue it, or pick another --name"
        )
    if args.resume and not exists:
        raise SearchError(f"--resume: no {what} {args.name!r} in {storage} to continue")
    if before_lock is not None:
        before_lock(exists, local)
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
    return storage, study_dir, lock


def drive(
    prog: str,
    what: str,
    args: argparse.Namespace,
    argv: list[str] | None,
    default_script: str,
    check: Callable[[], tuple[Callable[[], int], StudyLock | None]],
) -> int:
    """Run a driver: ``check()`` validates everything before Ray starts and returns the function
    that starts Ray and runs the study, and the study's lock. Bad input: one line, exit 2; a
    Ctrl-C or SIGTERM that reaches here (before Ray, or a second one): one line, exit 128 + signal."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        start, lock = check()
    except (ConfigError, SearchError, TrackingUnavailable) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (SIGINT) before {what} {args.name!r} started: nothing ran", file=sys.stderr)
        return 130
    from tune.interrupt import report_interrupted, resume_command

    args.resume_command = resume_command(sys.argv[0], sys.argv[1:] if argv is None else argv, default_script)
    try:
        return start()
    except SearchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a second Ctrl-C or SIGTERM (tune/interrupt.py), or one before Ray started
        signum = getattr(exc, "signum", signal.SIGINT)
        report_interrupted(args.name, signal.Signals(signum).name, args.resume_command, prog)
        return 128 + signum
    finally:
        if lock is not None:
            lock.release()
