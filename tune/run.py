"""The Ray side of ``tune/search.py``: start Ray, run the Tuner, summarise the study.

Run through ``python tune/search.py``; this module holds everything that touches Ray's API.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
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

from tune.optuna_search import PrunedAwareOptunaSearch
from tune.settings import ROOT, check_cluster, cluster_resources, plan_resources, run_on_nodes
from tune.space import SchedulerSpec, SearchSpec
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
    ray.init(
        address=address,
        include_dashboard=False if address is None else None,
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.ERROR,
        runtime_env={"env_vars": env},
    )


def _scheduler(sched: SchedulerSpec, epochs: int):
    if sched.type == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=min(sched.grace_period, epochs),
                             reduction_factor=sched.reduction_factor)
    if sched.type == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=sched.grace_period,
                                  min_samples_required=sched.min_samples_required)
    return FIFOScheduler()


def _parent_run(args, base: Config, spec: SearchSpec, sched: SchedulerSpec, exp_dir: Path | None, state: dict):
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
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{study['parent_run_id']}'",
    )
    for run in runs:
        abandoned = known is not None and run.data.tags.get(TRIAL_TAG) not in known
        if run.info.status == "RUNNING" or abandoned:
            client.set_tag(run.info.run_id, "stopped", "abandoned: Tune never recorded this trial" if abandoned else why)
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
        if abandoned:
            client.delete_run(run.info.run_id)


def run_study(args: argparse.Namespace, base: Config, spec: SearchSpec, sched: SchedulerSpec, storage: str,
              exp_dir: Path | None) -> int:
    started = time.time()
    _start_ray(args.address, args.verbose)
    try:
        check_cluster(storage, base.tracking.uri if base.tracking.enabled else None)
        cpus, gpus = cluster_resources(args)
        plan = plan_resources(args, cpus, gpus)
        device = "cuda" if plan["gpus"] > 0 else "cpu"
        threads = max(1, int(plan["cpus"]))
        base = base.merged({"train.device": device, "train.threads": base.train.threads or threads})

        exp_dir_path = exp_dir or Path(tempfile.mkdtemp(prefix=f"adastft-{args.name}-"))
        exp_dir_path.mkdir(parents=True, exist_ok=True)
        state_file = exp_dir_path / "adastft_study.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        parent = _parent_run(args, base, spec, sched, exp_dir, state)
        state["parent_run_id"] = parent.run_id
        # the trials' working folders on each node: a study of its own, whatever its name
        state.setdefault("work_key", f"{args.name}-{uuid.uuid4().hex[:8]}")
        state_file.write_text(json.dumps(state))

        optuna_url = args.optuna_storage or f"sqlite:///{exp_dir_path / 'optuna.db'}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study_info = {
            "name": args.name, "parent_run_id": parent.run_id, "experiment": base.tracking.experiment,
            "tracking_uri": base.tracking.uri, "notes_dir": str(exp_dir_path / "notes"),
            "stall_timeout_s": args.stall_timeout, "storage_path": storage, "workers": plan["workers"],
            "cpus_per_worker": plan["cpus"], "gpus_per_worker": plan["gpus"], "max_failures": args.max_failures,
            "work_key": state["work_key"],
        }
        print(f"study {args.name!r}: {args.trials} trials, {plan['concurrent']} at a time, "
              f"{plan['cpus']:g} CPU / {plan['gpus']:g} GPU x {plan['workers']} worker(s) per trial, "
              f"scheduler {sched.type}, results in {storage}/{args.name}"
              + (f", MLflow parent run {parent.run_id}" if parent.run_id else ""), flush=True)

        exp_path = f"{storage}/{args.name}"
        restoring = args.resume and tune.Tuner.can_restore(exp_path)
        if args.resume:
            # Runs a dead driver's trials left RUNNING: closed now; a trial Tune resumes reopens its own.
            known = {t.trial_id for t in tune.ExperimentAnalysis(exp_path).trials} if restoring else set()
            _close_running_children(study_info, "interrupted", known)
        fn = run_trial if plan["workers"] == 1 else run_ddp_trial
        resources = {"cpu": plan["cpus"], "gpu": plan["gpus"]} if plan["workers"] == 1 else {"cpu": 0.01}
        trainable = tune.with_resources(tune.with_parameters(fn, base=base.to_dict(), study=study_info), resources)
        run_config = tune.RunConfig(
            name=args.name, storage_path=storage, verbose=1,
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[TrialRunCallback(study_info, base.train.epochs)] if base.tracking.enabled else [],
        )
        if restoring:
            tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_errored=True)
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
        finally:
            _remove_work_dirs(state["work_key"], local=args.address is None)
        _close_running_children(study_info, "ended with the study")
        return _summarise(args, base, spec, results, optuna_url, exp_dir_path, parent, started)
    finally:
        ray.shutdown()


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


def _summarise(args, base: Config, spec: SearchSpec, results, optuna_url: str, exp_dir: Path, parent, started) -> int:
    study = optuna.load_study(study_name=args.name, storage=optuna_url)
    tracking = {"tracking_uri": base.tracking.uri, "experiment": base.tracking.experiment,
                "parent_run_id": parent.run_id} if parent.run_id else None
    table = trial_table(results, study, tracking)
    states = table["optuna_state"].value_counts().to_dict() if len(table) else {}
    finished = table[table[spec.metric].notna()] if spec.metric in table else table.iloc[0:0]
    best_yaml = None
    if len(finished):
        best_row = finished.sort_values(spec.metric, ascending=spec.mode == "min").iloc[0]
        params = {k.removeprefix("param."): (None if v is None or v != v else v.item() if hasattr(v, "item") else v)  # NaN: a None choice
                  for k, v in best_row.items() if k.startswith("param.")}
        best_cfg = base.merged(params)
        best_yaml = best_experiment_yaml(best_cfg, args.name, best_row["trial_id"], spec.metric, best_row[spec.metric])
    log_study(parent, table, best_yaml, study, exp_dir / "summary")
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
    print(f"  as an experiment: {exp_dir / 'summary' / 'best_experiment.yaml'}")
    return 0
