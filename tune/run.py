"""The Ray side of ``tune/search.py``: start Ray, run the Tuner, summarise the study.

Run through ``python tune/search.py``; this module holds everything that touches Ray's API.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import optuna
import ray
from optuna.samplers import TPESampler
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

from adastft.config import Config
from adastft.tracking import NullTracker, Tracker, redact_text, ui_link

from tune.checkpoints import SCORE, CheckpointRetention, folder_bytes, keep_best_trials
from tune.interrupt import Interrupted, StopSignals, report_interrupted
from tune.optuna_search import PrunedAwareOptunaSearch
from tune.settings import (ROOT, SearchError, check_cluster, cluster_resources, launcher_capacity, plan_resources,
                           run_on_nodes)
from tune.space import SchedulerSpec, SearchSpec
from tune.study_dir import STATE_FILE, StudyDir, storage_filesystem
from tune.summary import TrialRunCallback, best_experiment_yaml, log_study, trial_table
from tune.trainable import TRIAL_TAG, WORK_DIRS, run_ddp_trial, run_trial
from tune.summary import log_time

log = logging.getLogger("adastft.search")


def _start_ray(address: str | None, verbose: bool) -> None:
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for key in ("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
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
        raise SearchError(f"--address {address or os.environ.get('RAY_ADDRESS')}: no Ray cluster to connect to "
                          f"({str(exc).splitlines()[0]}); start one with `ray start --head`, or leave --address "
                          "out for a Ray of this process") from None


def _custom_resource_slots(wanted: dict[str, float], workers: int) -> int:
    """How many trials the cluster's custom resources (``--trial-resource``) let run at once."""
    if not wanted:
        return 10**9
    have = ray.cluster_resources()
    slots = []
    for name, amount in wanted.items():
        fits = int(have.get(name, 0.0) / (amount * workers) + 1e-9)
        if fits < 1 and launcher_capacity() is not None:  # an autoscaler may start such nodes later
            continue
        if fits < 1:
            raise SearchError(f"--trial-resource {name}={amount:g}: the Ray cluster offers {have.get(name, 0.0):g} {name} "
                              f"(start nodes with --resources '{{\"{name}\": N}}', or drop the flag)")
        slots.append(fits)
    return min(slots, default=10**9)


def _scheduler(sched: SchedulerSpec, epochs: int):
    if sched.type == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=min(sched.grace_period, epochs),
                             reduction_factor=sched.reduction_factor)
    if sched.type == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=sched.grace_period,
                                  min_samples_required=sched.min_samples_required)
    return FIFOScheduler()


def _parent_run(args, base: Config, spec: SearchSpec, sched: SchedulerSpec, state: dict):
    if not base.tracking.enabled:
        return NullTracker()
    tracker = Tracker(base.tracking.uri, base.tracking.experiment, run_name=args.name,
                      tags={"study": args.name, "kind": "search", **base.tracking.tags},
                      run_id=state.get("parent_run_id"))
    if not state.get("parent_run_id"):
        tracker.log_params({"search": {"trials": args.trials, "scheduler": sched.type, "space": spec.space,
                                       "metric": spec.metric, "mode": spec.mode, "seed": spec.seed},
                            "base": base.to_dict()})
    return tracker


class StudySync(tune.Callback):
    """Uploads the study's small files (Optuna's database above all) to object storage whenever a
    trial ends, so a driver lost mid-study loses at most the trials since the last one."""

    def __init__(self, study_dir: StudyDir) -> None:
        self.study_dir = study_dir

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self.study_dir.push()

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.study_dir.push()


def _close_running_children(study: dict, why: str, known: set[str] | None = None) -> None:
    """End as KILLED every child run of the study that is still RUNNING, with a tag saying why.

    ``known``: the trials Tune restores. A run of any other trial (one the dead driver started
    after its last snapshot of the experiment; a new trial takes its place) is deleted, so the
    study keeps one run per trial."""
    if not study.get("parent_run_id"):
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study["tracking_uri"])
    experiment = client.get_experiment_by_name(study["experiment"])
    if experiment is None:
        return
    for run in _child_runs(client, experiment, study):
        abandoned = known is not None and run.data.tags.get(TRIAL_TAG) not in known
        if run.info.status == "RUNNING" or abandoned:
            client.set_tag(run.info.run_id, "stopped", "abandoned: Tune never recorded this trial" if abandoned else why)
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
        if abandoned:
            client.delete_run(run.info.run_id)


def _child_runs(client, experiment, study: dict) -> list:
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{study['parent_run_id']}'",
    )


def _tag_stopped_children(study: dict, why: str, since_ms: int) -> None:
    """Tag ``stopped`` on child runs that ended KILLED since ``since_ms`` without saying why (a
    trial stopped from outside ends its own run so, before the driver gets to it)."""
    if not study.get("parent_run_id"):
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study["tracking_uri"])
    experiment = client.get_experiment_by_name(study["experiment"])
    for run in _child_runs(client, experiment, study) if experiment is not None else []:
        if run.info.status == "KILLED" and (run.info.end_time or 0) >= since_ms and "stopped" not in run.data.tags:
            client.set_tag(run.info.run_id, "stopped", why)


def run_study(args: argparse.Namespace, base: Config, spec: SearchSpec, sched: SchedulerSpec, storage: str,
              study_dir: StudyDir) -> int:
    started = time.time()
    _start_ray(args.address, args.verbose)
    stops = StopSignals()
    stops.install()  # after ray.init, which installs its own SIGTERM handler
    try:
        check_cluster(storage, base.tracking.uri if base.tracking.enabled else None)
        cpus, gpus = cluster_resources(args)
        plan = plan_resources(args, cpus, gpus)
        plan["concurrent"] = min(plan["concurrent"], _custom_resource_slots(args.trial_resources, plan["workers"]))
        device = "cuda" if plan["gpus"] > 0 else "cpu"
        threads = max(1, int(plan["cpus"]))
        base = base.merged({"train.device": device, "train.threads": base.train.threads or threads})

        study_dir.pull()  # object storage: the study's small files, kept in storage between runs
        exp_dir_path = study_dir.path
        state_file = exp_dir_path / STATE_FILE
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        parent = _parent_run(args, base, spec, sched, state)
        state["parent_run_id"] = parent.run_id
        # the trials' working folders on each node: a study of its own, whatever its name
        state.setdefault("work_key", f"{args.name}-{uuid.uuid4().hex[:8]}")
        state_file.write_text(json.dumps(state))
        study_dir.push()

        optuna_url = args.optuna_storage or f"sqlite:///{exp_dir_path / 'optuna.db'}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study_info = {
            "name": args.name, "parent_run_id": parent.run_id, "experiment": base.tracking.experiment,
            "tracking_uri": base.tracking.uri, "notes_dir": str(exp_dir_path / "notes"),
            "stall_timeout_s": args.stall_timeout, "storage_path": storage, "workers": plan["workers"],
            "cpus_per_worker": plan["cpus"], "gpus_per_worker": plan["gpus"], "max_failures": args.max_failures,
            "work_key": state["work_key"], "custom_resources": args.trial_resources,
        }
        print(f"study {args.name!r}: {args.trials} trials, {plan['concurrent']} at a time, "
              f"{plan['cpus']:g} CPU / {plan['gpus']:g} GPU x {plan['workers']} worker(s) per trial, "
              f"scheduler {sched.type}, results in {storage}/{args.name}"
              + (f", MLflow parent run {parent.run_id}" if parent.run_id else ""), flush=True)

        storage_path, storage_fs = storage_filesystem(storage)  # s3://: one that rides out an outage
        exp_path = f"{storage_path}/{args.name}"
        restoring = args.resume and tune.Tuner.can_restore(exp_path, storage_filesystem=storage_fs)
        if args.resume:
            # Runs a dead driver's trials left RUNNING: closed now; a trial Tune resumes reopens its own.
            known = ({t.trial_id for t in tune.ExperimentAnalysis(exp_path, storage_filesystem=storage_fs).trials}
                     if restoring else set())
            _close_running_children(study_info, "interrupted", known)
        fn = run_trial if plan["workers"] == 1 else run_ddp_trial
        resources = ({"cpu": plan["cpus"], "gpu": plan["gpus"], **args.trial_resources} if plan["workers"] == 1
                     else {"cpu": 0.01})  # a DDP trial's workers ask for the resources themselves
        trainable = tune.with_resources(tune.with_parameters(fn, base=base.to_dict(), study=study_info), resources)
        callbacks = [TrialRunCallback(study_info, base.train.epochs)] if base.tracking.enabled else []
        if args.keep_checkpoints is not None:  # after the MLflow callback: it reads a stopped trial's last checkpoint
            callbacks.append(CheckpointRetention(storage, base.train.epochs))
        if study_dir.remote:
            callbacks.append(StudySync(study_dir))
        run_config = tune.RunConfig(
            name=args.name, storage_path=storage_path, storage_filesystem=storage_fs, verbose=1,
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            # One full state per epoch (see tune/checkpoints.py); Tune keeps the best epoch's and
            # the latest, and the latest is what a retry resumes from.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SCORE,
                                                    checkpoint_score_order="max"),
            callbacks=callbacks,
        )
        if restoring:
            tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True,
                                       storage_filesystem=storage_fs)
        else:
            searcher = PrunedAwareOptunaSearch(
                space=spec.define_by_run(), metric=spec.metric, mode=spec.mode,
                points_to_evaluate=spec.points_to_evaluate or None,
                sampler=TPESampler(seed=spec.seed, n_startup_trials=spec.n_startup_trials, multivariate=True,
                                   constant_liar=True),
                study_name=args.name, storage=optuna.storages.RDBStorage(optuna_url), max_epochs=base.train.epochs,
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=searcher,
                                            scheduler=_scheduler(sched, base.train.epochs),
                                            num_samples=args.trials, max_concurrent_trials=plan["concurrent"],
                                            # a trial that ended cleanly hands its process, with torch and
                                            # MLflow imported, to the next one (a stopped one mid-epoch does not)
                                            reuse_actors=True),
                run_config=run_config,
            )
        try:
            results = tuner.fit()
        except Interrupted:  # a second signal: no waiting for Tune's last snapshot
            pass
        finally:
            _remove_work_dirs(state["work_key"], local=args.address is None)
        if stops.received:
            study_dir.push()  # object storage: what --resume needs, from any machine
            return _stopped(args, stops, study_info, parent)
        _close_running_children(study_info, "ended with the study")
        code = _summarise(args, base, spec, results, optuna_url, study_dir, parent, started, storage)
        study_dir.push()
        if study_dir.remote:  # all of it is in storage now; --resume brings it back
            shutil.rmtree(study_dir.path, ignore_errors=True)
        return code
    finally:
        ray.shutdown()


def _stopped(args, stops: StopSignals, study: dict, parent) -> int:
    """An interrupted study: its MLflow runs KILLED with the reason, one line, exit 128 + signal.

    The Optuna trials that were running stay RUNNING: ``--resume`` continues them."""
    why = f"interrupted by {stops.name}: continue with {args.resume_command}"
    _close_running_children(study, why)
    _tag_stopped_children(study, why, since_ms=int(stops.at * 1000))
    parent.set_tags({"stopped": why})
    parent.end("KILLED")
    report_interrupted(args.name, stops.name, args.resume_command)
    return stops.exit_code


def _remove_work_dirs(work_key: str, local: bool) -> None:
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


def _retention_line(keep: int | None, table, storage: str) -> str:
    kept = table["checkpoint"].dropna()
    import pyarrow.fs as pafs

    total = 0
    for path in kept:
        fs, inner = pafs.FileSystem.from_uri(path if "://" in path else str(Path(path).resolve()))
        total += folder_bytes(fs, inner)
    rule = "all trials' checkpoints kept" if keep is None else f"checkpoints of the best {keep} trial(s) kept"
    return f"{rule}: {len(kept)} checkpoint(s), {total / 1e6:.0f} MB in {storage}"


def _summarise(args, base: Config, spec: SearchSpec, results, optuna_url: str, study_dir: StudyDir, parent,
               started, storage: str) -> int:
    study = optuna.load_study(study_name=args.name, storage=optuna_url)
    tracking = {"tracking_uri": base.tracking.uri, "experiment": base.tracking.experiment,
                "parent_run_id": parent.run_id} if parent.run_id else None
    table = trial_table(results, study, tracking)
    states = table["optuna_state"].value_counts().to_dict() if len(table) else {}
    finished = table[table[spec.metric].notna()] if spec.metric in table else table.iloc[0:0]
    if len(table):
        complete = finished[finished["optuna_state"] == "COMPLETE"]  # stopped trials keep nothing
        ranked = complete.sort_values(spec.metric, ascending=spec.mode == "min")["trial_id"].tolist()
        kept = keep_best_trials(results, ranked, args.keep_checkpoints, storage)
        table["checkpoint"] = table["trial_id"].map(kept)
        finished = table[table[spec.metric].notna()] if spec.metric in table else table.iloc[0:0]
        print(_retention_line(args.keep_checkpoints, table, storage), flush=True)
    best_yaml = None
    if len(finished):
        best_row = finished.sort_values(spec.metric, ascending=spec.mode == "min").iloc[0]
        params = {k.removeprefix("param."): (None if v is None or v != v else v.item() if hasattr(v, "item") else v)  # NaN: a None choice
                  for k, v in best_row.items() if k.startswith("param.")}
        best_cfg = base.merged(params)
        best_yaml = best_experiment_yaml(best_cfg, args.name, best_row["trial_id"], spec.metric, best_row[spec.metric])
    log_study(parent, table, best_yaml, study, study_dir.path / "summary")
    if len(finished):
        parent.log_metrics({f"best_{spec.metric}": float(best_row[spec.metric])}, step=0)
    time_shares = log_time(parent, table)
    parent.end("FINISHED")
    minutes = (time.time() - started) / 60
    print(f"\nstudy {args.name!r}: {len(table)} trials in {minutes:.1f} min; Optuna states "
          + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    print(f"  time in trials: {time_shares}")
    if parent.run_id:
        print(f"  MLflow UI: {ui_link(base.tracking.uri, parent.experiment_id)}")
    if not len(finished):
        print("no trial reported a result; see the errors above")
        return 1
    print(f"best trial {best_row['trial_id']}: {spec.metric} {best_row[spec.metric]:.4f}"
          + (f", test_clip_accuracy {best_row['test_clip_accuracy']:.4f}" if best_row.get("test_clip_accuracy") == best_row.get("test_clip_accuracy") and best_row.get("test_clip_accuracy") is not None else ""))
    print("  params: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    print(f"  checkpoint: {best_row['checkpoint']}")
    if best_row.get("mlflow_run_id"):
        print(f"  MLflow run: {best_row['mlflow_run_id']} (parent {parent.run_id}, {redact_text(base.tracking.uri)})")
    print(f"  as an experiment: {study_dir.location('summary/best_experiment.yaml')}")
    return 0
