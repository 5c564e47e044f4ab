"""The Ray side of ``tune/search.py``: the Tuner with Optuna and the scheduler, and the study's
summary; what it shares with ``tune/compare.py`` (Ray, the study's state, its ending) is in
``tune/driver.py``.

Run through ``python tune/search.py``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import optuna
import ray
from optuna.samplers import TPESampler
from ray import tune as ray_tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

from adastft.config import Config
from adastft.tracking import redact_text, ui_link

from tune.checkpoints import CheckpointRetention, folder_bytes, keep_best_trials
from tune.driver import (
    announce,
    fit_and_end,
    open_state,
    parent_run,
    plan_trials,
    restore_point,
    run_config,
    start,
    study_settings,
    trial_resources,
)
from tune.optuna_search import PrunedAwareOptunaSearch
from tune.report import reported_key
from tune.space import SchedulerSpec, SearchSpec
from tune.study import StudySettings
from tune.study_dir import StudyDir
from tune.summary import TrialRunCallback, best_experiment_yaml, log_study, log_time, trial_table

log = logging.getLogger("adastft.search")


def _scheduler(sched: SchedulerSpec, epochs: int):
    if sched.type == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=epochs,
            grace_period=min(sched.grace_period, epochs),
            reduction_factor=sched.reduction_factor,
        )
    if sched.type == "median":
        return MedianStoppingRule(
            time_attr="training_iteration",
            grace_period=sched.grace_period,
            min_samples_required=sched.min_samples_required,
        )
    return FIFOScheduler()


def _parent_run(args, base: Config, spec: SearchSpec, sched: SchedulerSpec, state: dict):
    return parent_run(
        args.name,
        base,
        "search",
        {
            "search": {
                "trials": args.trials,
                "scheduler": sched.type,
                "space": spec.space,
                "metric": spec.metric,
                "mode": spec.mode,
                "seed": spec.seed,
                "report": state.get("report", args.report),
            },
            "base": base.to_dict(),
        },
        state,
    )


def run_study(
    args: argparse.Namespace, base: Config, spec: SearchSpec, sched: SchedulerSpec, storage: str, study_dir: StudyDir
) -> int:
    """Start Ray, open the study (state, MLflow parent run), run the Tuner over ``base`` (a
    validated ``Config``, handed to every trial) and summarise; the command's exit status."""
    started = time.time()
    stops = start(args)
    try:
        plan, base = plan_trials(args, base, storage)

        def open_parent(state: dict):
            state.setdefault("report", args.report)  # a resumed study keeps what its trials report
            if state["report"] != args.report:
                print(
                    f"search: warning: --report {args.report} ignored: study {args.name!r} reports {state['report']}",
                    flush=True,
                )
            args.report = state["report"]
            return _parent_run(args, base, spec, sched, state)

        state, parent = open_state(study_dir, args.name, open_parent)
        optuna_url = args.optuna_storage or f"sqlite:///{study_dir.path / 'optuna.db'}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = study_settings(
            args, base, parent, state, study_dir, storage, plan, metric=spec.metric, mode=spec.mode, report=args.report
        )
        objective = reported_key(spec.metric, args.report)  # what the scheduler and Optuna decide on
        announce(
            f"study {args.name!r}: {args.trials} trials",
            plan,
            f"scheduler {sched.type} on {objective}",
            storage,
            args.name,
            parent,
        )

        storage_path, storage_fs, exp_path, restoring = restore_point(args, storage, study)
        fn, resources = trial_resources(args, plan)
        trainable = ray_tune.with_resources(ray_tune.with_parameters(fn, base=base, study=study), resources)
        callbacks = [TrialRunCallback(study, base.train.epochs)] if base.tracking.enabled else []
        if args.keep_checkpoints is not None:  # after the MLflow callback: it reads a stopped trial's last checkpoint
            callbacks.append(CheckpointRetention(storage, base.train.epochs))
        if restoring:
            tuner = ray_tune.Tuner.restore(
                exp_path, trainable=trainable, resume_errored=True, storage_filesystem=storage_fs
            )
        else:
            searcher = PrunedAwareOptunaSearch(
                space=spec.define_by_run(),
                metric=objective,
                mode=spec.mode,
                points_to_evaluate=spec.points_to_evaluate or None,
                sampler=TPESampler(
                    seed=spec.seed, n_startup_trials=spec.n_startup_trials, multivariate=True, constant_liar=True
                ),
                study_name=args.name,
                storage=optuna.storages.RDBStorage(optuna_url),
                max_epochs=base.train.epochs,
            )
            tuner = ray_tune.Tuner(
                trainable,
                tune_config=ray_tune.TuneConfig(
                    metric=objective,
                    mode=spec.mode,
                    search_alg=searcher,
                    scheduler=_scheduler(sched, base.train.epochs),
                    num_samples=args.trials,
                    max_concurrent_trials=plan.concurrent,
                    # a trial that ended cleanly hands its process, with torch and
                    # MLflow imported, to the next one (a stopped one mid-epoch does not)
                    reuse_actors=True,
                ),
                run_config=run_config(args, storage_path, storage_fs, callbacks, study_dir),
            )
        return fit_and_end(
            tuner,
            args,
            stops,
            study,
            parent,
            study_dir,
            lambda results: _summarise(
                args, base, spec, results, optuna_url, study, study_dir, parent, started, objective
            ),
        )
    finally:
        ray.shutdown()


def _retention_line(keep: int | None, table, storage: str) -> str:
    kept = table["checkpoint"].dropna()
    import pyarrow.fs as pafs

    total = 0
    for path in kept:
        fs, inner = pafs.FileSystem.from_uri(path if "://" in path else str(Path(path).resolve()))
        total += folder_bytes(fs, inner)
    rule = "all trials' checkpoints kept" if keep is None else f"checkpoints of the best {keep} trial(s) kept"
    return f"{rule}: {len(kept)} checkpoint(s), {total / 1e6:.0f} MB in {storage}"


def _summarise(
    args,
    base: Config,
    spec: SearchSpec,
    results,
    optuna_url: str,
    study: StudySettings,
    study_dir: StudyDir,
    parent,
    started,
    metric: str,
) -> int:
    """``metric``: what the trials reported to the scheduler and Optuna (``--report``)."""
    storage = study.storage_path
    optuna_study = optuna.load_study(study_name=args.name, storage=optuna_url)
    table = trial_table(results, optuna_study, study, extra=(metric,))
    states = table["optuna_state"].value_counts().to_dict() if len(table) else {}
    finished = table[table[metric].notna()] if metric in table else table.iloc[0:0]
    if len(table):
        complete = finished[finished["optuna_state"] == "COMPLETE"]  # stopped trials keep nothing
        ranked = complete.sort_values(metric, ascending=spec.mode == "min")["trial_id"].tolist()
        kept = keep_best_trials(results, ranked, args.keep_checkpoints, storage)
        table["checkpoint"] = table["trial_id"].map(kept)
        finished = table[table[metric].notna()] if metric in table else table.iloc[0:0]
        print(_retention_line(args.keep_checkpoints, table, storage), flush=True)
    best_yaml = None
    if len(finished):
        best_row = finished.sort_values(metric, ascending=spec.mode == "min").iloc[0]
        params = {
            k.removeprefix("param."): (
                None if v is None or v != v else v.item() if hasattr(v, "item") else v
            )  # NaN: a None choice
            for k, v in best_row.items()
            if k.startswith("param.")
        }
        best_cfg = base.merged(params)
        best_yaml = best_experiment_yaml(best_cfg, args.name, best_row["trial_id"], metric, best_row[metric])
    log_study(parent, table, best_yaml, optuna_study, study_dir.path / "summary")
    if len(finished):
        parent.log_metrics({f"best_{metric}": float(best_row[metric])}, step=0)
    time_shares = log_time(parent, table)
    parent.end("FINISHED")
    minutes = (time.time() - started) / 60
    print(
        f"\nstudy {args.name!r}: {len(table)} trials in {minutes:.1f} min; Optuna states "
        + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
    )
    print(f"  time in trials: {time_shares}")
    if parent.run_id:
        print(f"  MLflow UI: {ui_link(base.tracking.uri, parent.experiment_id)}")
    if not len(finished):
        print("no trial reported a result; see the errors above")
        return 1
    print(
        f"best trial {best_row['trial_id']}: {metric} {best_row[metric]:.4f}"
        + (
            f", test_clip_accuracy {best_row['test_clip_accuracy']:.4f}"
            if best_row.get("test_clip_accuracy") == best_row.get("test_clip_accuracy")
            and best_row.get("test_clip_accuracy") is not None
            else ""
        )
    )
    print("  params: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    print(f"  checkpoint: {best_row['checkpoint']}")
    if best_row.get("mlflow_run_id"):
        print(f"  MLflow run: {best_row['mlflow_run_id']} (parent {parent.run_id}, {redact_text(base.tracking.uri)})")
    print(f"  as an experiment: {study_dir.location('summary/best_experiment.yaml')}")
    return 0
