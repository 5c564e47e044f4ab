"""A study's driver on Ray, shared by the search (``tune/run.py``) and the comparison
(``tune/compare_run.py``): start Ray, plan the trials' resources, the study's state and MLflow
parent run, restoring an interrupted study, running the Tuner and ending the study (finished or
interrupted), and the trials' working folders.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import uuid

import ray
from ray import tune as ray_tune

from adastft.config import Config
from adastft.tracking import NullTracker, Tracker

from tune.checkpoints import SCORE
from tune.cluster_checks import (
    TrialPlan,
    check_cluster,
    cluster_resources,
    custom_resource_slots,
    plan_resources,
    run_on_nodes,
)
from tune.interrupt import Interrupted, StopSignals, report_interrupted
from tune.settings import ROOT, SearchError
from tune.study import StudySettings
from tune.study_dir import STATE_FILE, StudyDir, storage_filesystem
from tune.trainable import TRIAL_TAG, WORK_DIRS, run_ddp_trial, run_trial

log = logging.getLogger("adastft.search")


def plan_trials(args: argparse.Namespace, base: Config, storage: str) -> tuple[TrialPlan, Config]:
    """After Ray started: the cluster checked, the trials' resources planned, and ``base`` with
    the device and threads a trial gets."""
    check_cluster(storage, base.tracking.uri if base.tracking.enabled else None)
    plan = plan_resources(args, *cluster_resources())
    plan = dataclasses.replace(
        plan, concurrent=min(plan.concurrent, custom_resource_slots(args.trial_resources, plan.workers))
    )
    return plan, for_trials(base, plan)


def for_trials(cfg: Config, plan: TrialPlan) -> Config:
    """``cfg`` with the device and threads a trial of ``plan`` gets (valid by construction: not
    validated again)."""
    return cfg.replaced(
        {
            "train.device": "cuda" if plan.gpus > 0 else "cpu",
            "train.threads": cfg.train.threads or max(1, int(plan.cpus)),
        }
    )


def announce(head: str, plan: TrialPlan, tail: str, storage: str, name: str, parent) -> None:
    """The driver's first line: what runs, how many at once on what, where results and the parent run are."""
    print(
        f"{head}, {plan.concurrent} at a time, {plan.cpus:g} CPU / {plan.gpus:g} GPU x {plan.workers} "
        f"worker(s) per trial, {tail}, results in {storage}/{name}"
        + (f", MLflow parent run {parent.run_id}" if parent.run_id else ""),
        flush=True,
    )


def study_settings(
    args: argparse.Namespace,
    base: Config,
    parent,
    state: dict,
    study_dir: StudyDir,
    storage: str,
    plan: TrialPlan,
    **objective,
) -> StudySettings:
    """What every trial of the study is told (``tune/trainable.py``); ``objective``: the search's
    ``metric``, ``mode`` and ``report``."""
    return StudySettings(
        name=args.name,
        work_key=state["work_key"],
        notes_dir=str(study_dir.path / "notes"),
        storage_path=storage,
        parent_run_id=parent.run_id,
        tracking_uri=base.tracking.uri,
        experiment=base.tracking.experiment,
        stall_timeout_s=args.stall_timeout,
        workers=plan.workers,
        cpus_per_worker=plan.cpus,
        gpus_per_worker=plan.gpus,
        max_failures=args.max_failures,
        custom_resources=dict(args.trial_resources),
        **objective,
    )


def trial_resources(args: argparse.Namespace, plan: TrialPlan) -> tuple[object, dict]:
    """The function a trial runs (one process, or a DDP job) and what the trial asks Ray for."""
    if plan.workers == 1:
        return run_trial, {"cpu": plan.cpus, "gpu": plan.gpus, **args.trial_resources}
    return run_ddp_trial, {"cpu": 0.01}  # a DDP trial's workers ask for the resources themselves


def start(args: argparse.Namespace) -> StopSignals:
    """Start (or join) Ray, then take over Ctrl-C and SIGTERM (tune/interrupt.py)."""
    start_ray(args.address, args.verbose)
    stops = StopSignals()
    stops.install()  # after ray.init, which installs its own SIGTERM handler
    return stops


def run_config(
    args: argparse.Namespace, storage_path: str, storage_fs, callbacks: list, study_dir: StudyDir
) -> ray_tune.RunConfig:
    """Where Tune keeps the study, its retries and checkpoints (object storage: the study's own
    files are uploaded whenever a trial ends)."""
    if study_dir.remote:
        callbacks = [*callbacks, StudySync(study_dir)]
    return ray_tune.RunConfig(
        name=args.name,
        storage_path=storage_path,
        storage_filesystem=storage_fs,
        verbose=1,
        failure_config=ray_tune.FailureConfig(max_failures=args.max_failures),
        # One full state per epoch (see tune/checkpoints.py); Tune keeps the best epoch's and
        # the latest, and the latest is what a retry resumes from.
        checkpoint_config=ray_tune.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=SCORE, checkpoint_score_order="max"
        ),
        callbacks=callbacks,
    )


def restore_point(args: argparse.Namespace, storage: str, study: StudySettings) -> tuple[str, object, str, bool]:
    """``(storage_path, storage_filesystem, experiment path, restoring)``; on ``--resume``, the
    runs a dead driver's trials left RUNNING closed (a trial Tune resumes reopens its own)."""
    storage_path, storage_fs = storage_filesystem(storage)  # s3://: one that rides out an outage
    exp_path = f"{storage_path}/{args.name}"
    restoring = args.resume and ray_tune.Tuner.can_restore(exp_path, storage_filesystem=storage_fs)
    if args.resume:
        known = (
            {t.trial_id for t in ray_tune.ExperimentAnalysis(exp_path, storage_filesystem=storage_fs).trials}
            if restoring
            else set()
        )
        close_running_children(study, "interrupted", known)
    return storage_path, storage_fs, exp_path, restoring


def start_ray(address: str | None, verbose: bool) -> None:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for key in (
        "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    ):
        if key in os.environ:
            env[key] = os.environ[key]
    try:
        ray.init(
            address=address,
            include_dashboard=False if address is None else None,
            log_to_driver=verbose,
            logging_level=logging.INFO if verbose else logging.ERROR,
            runtime_env={"env_vars": env},
        )
    except ConnectionError as exc:  # --address auto (or RAY_ADDRESS) with no cluster on this machine
        raise SearchError(
            f"--address {address or os.environ.get('RAY_ADDRESS')}: no Ray cluster to connect to "
            f"({str(exc).splitlines()[0]}); start one with `ray start --head`, or leave --address "
            "out for a Ray of this process"
        ) from None


def parent_run(name: str, base: Config, kind: str, params: dict, state: dict):
    """The study's MLflow parent run (``kind``: search, compare): the one ``state`` names, or a
    new one with ``params``; a :class:`NullTracker` with tracking off."""
    if not base.tracking.enabled:
        return NullTracker()
    tracker = Tracker(
        base.tracking.uri,
        base.tracking.experiment,
        run_name=name,
        tags={"study": name, "kind": kind, **base.tracking.tags},
        run_id=state.get("parent_run_id"),
    )
    if not state.get("parent_run_id"):
        tracker.log_params(params)
    return tracker


class StudySync(ray_tune.Callback):
    """Uploads the study's small files (Optuna's database above all) to object storage whenever a
    trial ends, so a driver lost mid-study loses at most the trials since the last one."""

    def __init__(self, study_dir: StudyDir) -> None:
        self.study_dir = study_dir

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.study_dir.push()

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.study_dir.push()


def close_running_children(study: StudySettings, why: str, known: set[str] | None = None) -> None:
    """End as KILLED every child run of the study that is still RUNNING, with a tag saying why.

    ``known``: the trials Tune restores. A run of any other trial (one the dead driver started
    after its last snapshot of the experiment; a new trial takes its place) is deleted, so the
    study keeps one run per trial."""
    if not study.parent_run_id:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study.tracking_uri)
    experiment = client.get_experiment_by_name(study.experiment)
    if experiment is None:
        return
    for run in _child_runs(client, experiment, study):
        abandoned = known is not None and run.data.tags.get(TRIAL_TAG) not in known
        if run.info.status == "RUNNING" or abandoned:
            client.set_tag(
                run.info.run_id, "stopped", "abandoned: Tune never recorded this trial" if abandoned else why
            )
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
        if abandoned:
            client.delete_run(run.info.run_id)


def _child_runs(client, experiment, study: StudySettings) -> list:
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{study.parent_run_id}'",
    )


def _tag_stopped_children(study: StudySettings, why: str, since_ms: int) -> None:
    """Tag ``stopped`` on child runs that ended KILLED since ``since_ms`` without saying why (a
    trial stopped from outside ends its own run so, before the driver gets to it)."""
    if not study.parent_run_id:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study.tracking_uri)
    experiment = client.get_experiment_by_name(study.experiment)
    for run in _child_runs(client, experiment, study) if experiment is not None else []:
        if run.info.status == "KILLED" and (run.info.end_time or 0) >= since_ms and "stopped" not in run.data.tags:
            client.set_tag(run.info.run_id, "stopped", why)


def open_state(study_dir: StudyDir, name: str, parent_run) -> tuple[dict, object]:
    """The study's state file (its MLflow parent run, its working folders' key), read or begun,
    and its parent run: ``parent_run(state)`` opens it (the one of ``state['parent_run_id']``)."""
    study_dir.pull()  # object storage: the study's small files, kept in storage between runs
    state_file = study_dir.path / STATE_FILE
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    parent = parent_run(state)
    state["parent_run_id"] = parent.run_id
    # the trials' working folders on each node: a study of its own, whatever its name
    state.setdefault("work_key", f"{name}-{uuid.uuid4().hex[:8]}")
    state_file.write_text(json.dumps(state))
    study_dir.push()
    return state, parent


def fit_and_end(
    tuner, args, stops: StopSignals, study: StudySettings, parent, study_dir: StudyDir, summarise, prog: str = "search"
) -> int:
    """Run the Tuner; then end the study as interrupted (:func:`stopped`) or with
    ``summarise(results) -> exit code``, its files in storage either way."""
    results = None
    try:
        results = tuner.fit()
    except Interrupted:  # a second signal: no waiting for Tune's last snapshot
        pass
    finally:
        remove_work_dirs(study.work_key, local=args.address is None)
    if stops.received:
        study_dir.push()  # object storage: what --resume needs, from any machine
        return stopped(args, stops, study, parent, prog)
    close_running_children(study, "ended with the study")
    code = summarise(results)
    study_dir.push()
    if study_dir.remote:  # all of it is in storage now; --resume brings it back
        shutil.rmtree(study_dir.path, ignore_errors=True)
    return code


def stopped(args, stops: StopSignals, study: StudySettings, parent, prog: str = "search") -> int:
    """An interrupted study: its MLflow runs KILLED with the reason, one line, exit 128 + signal.

    The Optuna trials that were running stay RUNNING: ``--resume`` continues them."""
    why = f"interrupted by {stops.name}: continue with {args.resume_command}"
    close_running_children(study, why)
    _tag_stopped_children(study, why, since_ms=int(stops.at * 1000))
    parent.set_tags({"stopped": why})
    parent.end("KILLED")
    report_interrupted(args.name, stops.name, args.resume_command, prog)
    return stops.exit_code


def remove_work_dirs(work_key: str, local: bool) -> None:
    """Remove the trials' working folders of the study on every node (Tune holds the checkpoints).

    ``local``: Ray was started by this driver, so this machine is the only node.

    Trials stopped by the scheduler or killed leave theirs behind; interrupting the study
    (Ctrl-C) removes them too: ``--resume`` restores from Tune's copies.
    """

    def remove(folder: str) -> int:  # runs on each node (its own temp dir); stdlib only
        import shutil
        import tempfile
        from pathlib import Path

        root = Path(tempfile.gettempdir()) / folder
        if not root.is_dir():
            return 0
        size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
        shutil.rmtree(root, ignore_errors=True)
        return size

    folder = f"{WORK_DIRS}/{work_key}"
    if local:  # the Ray this driver started: one node, this machine
        freed, failed = {"local": remove(folder)}, {}
    else:
        freed, failed = run_on_nodes(remove, (folder,), [n for n in ray.nodes() if n.get("Alive")], wait_s=60)
    log.info("removed the trials' working folders: %.0f MB on %d node(s)", sum(freed.values()) / 1e6, len(freed))
    for node, why in failed.items():
        log.warning("could not remove the trials' working folders on node %s: %s", node, why)
