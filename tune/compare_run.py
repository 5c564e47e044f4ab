"""The Ray side of ``tune/compare.py``: arms x seeds as one Tune grid, then the table and plot.

The grid runs on the search's machinery: ``tune/driver.py`` starts Ray and handles interruptions,
``tune/trainable.py`` runs each trial (``train`` with the arm's config and the seed), retries
resume from Tune's checkpoints, and ``--resume`` restores the grid.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ray
import yaml
from ray import tune as ray_tune

from adastft.config import Config
from adastft.tracking import ui_link
from tune.checkpoints import keep_best_trials
from tune.compare_stats import METRICS, comparison, format_table, plot_comparison
from tune.driver import (
    announce,
    fit_and_end,
    for_trials,
    open_state,
    parent_run,
    plan_trials,
    restore_point,
    run_config,
    start,
    study_settings,
    trial_resources,
)
from tune.study import StudySettings
from tune.study_dir import StudyDir
from tune.summary import TrialRunCallback
from tune.trainable import find_trial_run, run_ddp_trial, run_trial


def run_arm(config: dict, arms: dict[str, Config], study: StudySettings) -> None:
    """One trial of the grid: the arm's config with ``train.seed`` = the seed, tagged with both;
    in one process, or as a DDP job of ``study.workers`` workers."""
    base = arms[config["arm"]]
    tags = {**base.tracking.tags, "arm": config["arm"], "seed": str(config["seed"])}
    params = {"train.seed": config["seed"], "tracking.tags": tags}
    if study.workers == 1:
        run_trial(params, base, study)
    else:
        run_ddp_trial(params, base, study)


def run_comparison(
    args: argparse.Namespace,
    arms: list[str],
    configs: dict[str, Config],
    baseline: str,
    storage: str,
    study_dir: StudyDir,
) -> int:
    started = time.time()
    stops = start(args)
    try:
        first = configs[arms[0]]
        plan, _ = plan_trials(args, first, storage)
        bases = {name: for_trials(cfg, plan) for name, cfg in configs.items()}
        params = {"compare": {"arms": arms, "seeds": args.seeds, "baseline": baseline}}
        state, parent = open_state(
            study_dir, args.name, lambda state: parent_run(args.name, first, "compare", params, state)
        )
        study = study_settings(args, first, parent, state, study_dir, storage, plan)
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        announce(
            f"comparison {args.name!r}: {len(arms)} arms x {len(seeds)} seeds = {len(arms) * len(seeds)} trials",
            plan,
            f"baseline {baseline!r}",
            storage,
            args.name,
            parent,
        )

        storage_path, storage_fs, exp_path, restoring = restore_point(args, storage, study)
        _, resources = trial_resources(args, plan)
        trainable = ray_tune.with_resources(ray_tune.with_parameters(run_arm, arms=bases, study=study), resources)
        epochs = min(cfg.train.epochs for cfg in configs.values())
        callbacks = [TrialRunCallback(study, epochs)] if first.tracking.enabled else []
        if restoring:
            tuner = ray_tune.Tuner.restore(
                exp_path, trainable=trainable, resume_errored=True, storage_filesystem=storage_fs
            )
        else:
            tuner = ray_tune.Tuner(
                trainable,
                param_space={"arm": ray_tune.grid_search(arms), "seed": ray_tune.grid_search(seeds)},
                tune_config=ray_tune.TuneConfig(max_concurrent_trials=plan.concurrent, reuse_actors=True),
                run_config=run_config(args, storage_path, storage_fs, callbacks, study_dir),
            )
        return fit_and_end(
            tuner,
            args,
            stops,
            study,
            parent,
            study_dir,
            lambda results: _summarise(args, arms, baseline, results, study, parent, study_dir, started),
            prog="compare",
        )
    finally:
        ray.shutdown()


def trial_rows(results, study: StudySettings) -> list[dict]:
    """One row per trial of the grid: arm, seed, the compared metrics, error, MLflow run."""
    rows = []
    for result in results:
        metrics, config = result.metrics or {}, result.config or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        row = {
            "arm": config.get("arm"),
            "seed": config.get("seed"),
            "trial_id": trial_id,
            "epochs": metrics.get("training_iteration"),
            "error": str(result.error).splitlines()[0] if result.error else None,
        }
        row.update({metric: metrics.get(metric) for metric, _ in METRICS})
        row["mlflow_run_id"] = find_trial_run(study, trial_id)  # None with tracking off
        rows.append(row)
    return sorted(rows, key=lambda r: (str(r["arm"]), int(r["seed"] or 0)))


def _summarise(
    args, arms: list[str], baseline: str, results, study: StudySettings, parent, study_dir: StudyDir, started: float
) -> int:
    rows = trial_rows(results, study)
    # every trial's best model is in its MLflow run (checkpoint/best_model.pt): Tune's full-state copies go
    keep_best_trials(results, [], 0 if study.parent_run_id else None, study.storage_path)
    table = comparison([r for r in rows if not r["error"]], arms, baseline)
    text = format_table(table, baseline, args.seeds, args.first_seed)
    out = study_dir.path / "summary"
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.txt").write_text(text + "\n")
    (out / "trials.json").write_text(json.dumps(rows, indent=1, default=str))
    (out / "comparison.json").write_text(json.dumps(table, indent=1, default=str))
    (out / "arms.yaml").write_text(yaml.safe_dump({"baseline": baseline, "arms": arms, "seeds": args.seeds}))
    plot_comparison(table, baseline, out / "comparison.png")
    parent.log_artifacts(out, "compare")
    failed = [r for r in rows if r["error"]]
    parent.set_tags({"baseline": baseline})
    parent.end("FINISHED" if not failed else "FAILED")
    print(
        f"\ncomparison {args.name!r}: {len(rows)} trials in {(time.time() - started) / 60:.1f} min"
        + (
            f", {len(failed)} failed: " + ", ".join(f"{r['arm']} seed {r['seed']} ({r['error']})" for r in failed)
            if failed
            else ""
        )
    )
    if parent.run_id:
        print(f"  MLflow UI: {ui_link(study.tracking_uri, parent.experiment_id)}")
    print(f"  table and plot: {study_dir.location('summary/comparison.txt')}, comparison.png\n")
    print(text, flush=True)
    return 0 if not failed else 1
