"""What the search machinery costs, and what ASHA saves, measured side by side in one run.

Run: ``python bench/bench_search.py [--trials 16 100] [--asha-trials 32]``.

1. Overhead: N no-op trials of 3 epochs (N = 16, and 100 as in the main command) through our
   trainable (``tune.trainable.run_trial`` with tune/run.py's settings, processes reused:
   config merge and validation, the MLflow child run with params and per-epoch metrics, a
   checkpoint file reported to Tune every epoch, the watchdog) with a training function that does
   no arithmetic (D), vs bare Ray Tune function trainables: one that only reports, as Ray runs it
   by default, a new process per trial (A); the same with our process reuse (B), plus the imports
   any trial of this model needs (C), plus a checkpoint reported every epoch (E: what Tune's own
   checkpoint handling costs), plus the same MLflow child run as ours written with MlflowClient
   directly (F: the least a tracked, checkpointed trainable costs).
   Target: ours <= 1.25 x bare wall time, judged against A (a bare trainable as Tune runs it)
   and against F (a bare trainable doing the same tracking). D/B is printed too; it cannot be
   under 1.25 on a small machine, because F/B (MLflow's own writes) is already above it.
2. Savings: a 32-trial study with our pruned-aware Optuna TPE and ASHA as configured in
   ``adastft/configs/scheduler/asha.yaml`` (grace 1, reduction 4; 16 epochs) on synthetic learning
   curves, vs the same study with every trial run to the end.
   Target: epochs spent <= 35% of running all to the end.
3. Where a real study's time goes: ``tune/search.py`` on the README's quickstart (synthetic set,
   default model, learned front end, ASHA) with ``--real-trials`` trials (16), as a user runs it:
   the trials' shares (compute, eval, data wait, checkpoints, tracking, other) and the share of
   the machine's CPU time (wall x cores) that went into training and evaluation compute (each
   trial computes on its one thread). Target: >= 85% on a 2-core machine. ``--real-only`` runs
   this part alone.
4. Rank fidelity (``--fidelity``, this part alone): a real study of ``--fidelity-trials`` (24)
   trials of small training (the synthetic set, smaller clips; the default space's learning rate,
   optimiser, augmentation and front-end switches, sampled at random), every
   trial run to the end (``--scheduler none``). From each trial's raw per-epoch validation clip
   accuracy: for each rung of the default ASHA (``adastft/configs/scheduler/asha.yaml``) and each
   ``--report`` mode, the Spearman correlation between the trials' ranking by what they would have
   reported at that rung and their final ranking (by the best validation clip accuracy over all
   epochs, what the study selects, and by the test accuracy of that best checkpoint).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

import logging  # noqa: E402

import optuna  # noqa: E402
import yaml  # noqa: E402
import ray  # noqa: E402
from optuna.samplers import TPESampler  # noqa: E402
from ray import tune as ray_tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: E402

from adastft.checkpoint import save_checkpoint  # noqa: E402
from adastft.config import Config  # noqa: E402
from adastft.tracking import Tracker, flatten  # noqa: E402
from tune.optuna_search import PrunedAwareOptunaSearch  # noqa: E402
from tune.space import SchedulerSpec, SearchSpec  # noqa: E402
from tune.study import StudySettings  # noqa: E402
from tune.trainable import run_trial  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from studies import QUICKSTART, run_study  # noqa: E402

EPOCHS = 3


def noop_train(cfg: Config, reporter) -> dict:
    """Everything train() does around the arithmetic: tracking, checkpoints, reports."""
    tracker = Tracker(
        cfg.tracking.uri,
        cfg.tracking.experiment,
        run_name=cfg.tracking.run_name,
        tags=cfg.tracking.tags,
        parent_run_id=cfg.tracking.parent_run_id,
        run_id=cfg.tracking.run_id,
    )
    tracker.log_params(cfg.to_dict())
    out = Path(cfg.train.out_dir)
    durable = not getattr(reporter, "persists_checkpoints", False)  # as train(): Tune keeps its copy
    for epoch in range(EPOCHS):
        metrics = {"val_loss": 1.0 / (epoch + 1), "val_clip_accuracy": 0.1 * epoch}
        tracker.log_metrics(metrics, step=epoch)
        save_checkpoint({"epoch": epoch, "config": cfg.to_dict()}, out / "last.pt", durable=durable)
        reporter.report(metrics, out)
    tracker.end("FINISHED")
    return metrics


def bare_trial(config: dict) -> None:
    for epoch in range(EPOCHS):
        ray_tune.report({"val_loss": 1.0 / (epoch + 1), "val_clip_accuracy": 0.1 * epoch})


def bare_trial_checkpointed(config: dict) -> None:
    """The bare trainable reporting a (tiny) checkpoint every epoch, as ours does: what Tune's own
    checkpoint handling costs, so the difference to ours is our machinery and MLflow alone."""
    for epoch in range(EPOCHS):
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "last.pt").write_bytes(b"\0" * 1024)
            ray_tune.report(
                {"val_loss": 1.0 / (epoch + 1), "val_clip_accuracy": 0.1 * epoch},
                checkpoint=ray_tune.Checkpoint.from_directory(tmp),
            )


def bare_trial_tracked(config: dict, tracking_uri: str, experiment_id: str, parent_run_id: str, params: dict) -> None:
    """E plus the MLflow child run ours makes, written with MLflow's client directly: the least any
    tracked trainable with a checkpoint per epoch costs (no config, no retry bookkeeping, no
    queueing, no atomic checkpoint writes), so D/F is what our machinery adds."""
    import torch
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    trial_id = ray_tune.get_context().get_trial_id()
    run_id = client.create_run(
        experiment_id,
        run_name=f"bare-{trial_id}",
        tags={"mlflow.parentRunId": parent_run_id, "tune_trial_id": trial_id},
    ).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()], synchronous=True)
    for epoch in range(EPOCHS):
        metrics = {"val_loss": 1.0 / (epoch + 1), "val_clip_accuracy": 0.1 * epoch}
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, epoch) for k, v in metrics.items()], synchronous=True)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"epoch": epoch, "config": params}, Path(tmp, "last.pt"))
            ray_tune.report(metrics, checkpoint=ray_tune.Checkpoint.from_directory(tmp))
    client.set_terminated(run_id, "FINISHED")


def bare_trial_with_stack(config: dict) -> None:
    """The bare trainable plus the imports any trial of this model needs (torch, torchaudio,
    torchvision), so the difference to ours is our machinery and MLflow alone."""
    import torch  # noqa: F401
    import torchaudio  # noqa: F401
    import torchvision  # noqa: F401

    bare_trial(config)


def timed_fit(trainable, trials: int, storage: str, name: str, concurrent: int, reuse: bool = True) -> float:
    started = time.perf_counter()
    ray_tune.Tuner(
        ray_tune.with_resources(trainable, {"cpu": 1}),
        param_space={"optim.lr": ray_tune.grid_search([1e-3 * (i + 1) for i in range(trials)])},
        tune_config=ray_tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=reuse),  # True: as tune/run.py
        # as tune/run.py: one checkpoint kept per trial (Tune then saves its experiment state after
        # each checkpoint; a trainable that reports none pays nothing for it)
        run_config=ray_tune.RunConfig(
            name=name, storage_path=storage, verbose=0, checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1)
        ),
    ).fit()
    return time.perf_counter() - started


def curve(config: dict) -> None:
    """A learning curve that depends on the sampled values: better lr, faster and higher."""
    quality = math.exp(-((math.log10(config["optim.lr"]) + 3.0) ** 2))  # best near lr 1e-3
    ceiling = 0.3 + 0.6 * quality * (0.8 if config["stft.learn_window"] else 0.7)
    for epoch in range(1, 17):
        ray_tune.report({"val_clip_accuracy": ceiling * (1 - math.exp(-epoch / 4))})


def asha_epochs(trials: int, storage: str, scheduler, name: str) -> int:
    spec = SearchSpec(
        metric="val_clip_accuracy",
        mode="max",
        space={
            "optim.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-1},
            "stft.learn_window": {"type": "categorical", "choices": [True, False]},
        },
    )
    searcher = PrunedAwareOptunaSearch(
        space=spec.define_by_run(),
        metric=spec.metric,
        mode=spec.mode,
        sampler=TPESampler(seed=0, n_startup_trials=8, multivariate=True, constant_liar=True),
        study_name=name,
        storage=optuna.storages.RDBStorage(f"sqlite:///{storage}/{name}.db"),
        max_epochs=16,
    )
    results = ray_tune.Tuner(
        ray_tune.with_resources(curve, {"cpu": 0.5}),
        tune_config=ray_tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=trials,
            max_concurrent_trials=4,
        ),
        run_config=ray_tune.RunConfig(name=name, storage_path=storage, verbose=0),
    ).fit()
    return sum(int(r.metrics.get("training_iteration", 0)) for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trials",
        type=int,
        nargs="+",
        default=[16, 100],
        help="study sizes for the overhead; the target is judged at the largest (default 16 100: "
        "100 is the main command's)",
    )
    parser.add_argument("--asha-trials", type=int, default=32)
    parser.add_argument("--real-trials", type=int, default=16, help="trials of the real study (part 3; 0: skip)")
    parser.add_argument("--real-only", action="store_true", help="part 3 alone")
    parser.add_argument("--fidelity", action="store_true", help="part 4 alone: rank fidelity of --report")
    parser.add_argument("--fidelity-trials", type=int, default=24)
    parser.add_argument("--fidelity-epochs", type=int, default=8)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.fidelity:
        rank_fidelity(args.fidelity_trials, args.fidelity_epochs)
        return
    if not args.real_only:
        overhead_and_asha(args)
    if args.real_trials:
        real_study(args.real_trials)


# Small real training for the fidelity study: the synthetic set in 4 s clips at 11 kHz, 20 per
# class (80 validation clips), a smaller STFT; the recipe's defaults otherwise. The space: the
# default's learning rate, optimiser, augmentation and front-end switches, sampled at random (all
# trials are TPE's start-up trials), so that the trials spread over the space as a study's early
# trials do, rather than crowding where TPE converges.
FIDELITY_SPACE = {
    "metric": "val_clip_accuracy",
    "mode": "max",
    "seed": 0,
    "n_startup_trials": 1000,
    "space": {
        "optim.lr": {"type": "loguniform", "low": 1e-5, "high": 1e-1},
        "optim.name": {"type": "categorical", "choices": ["sgd", "adamw"]},
        "data.augment": {"type": "categorical", "choices": [True, False]},
        "stft.learn_window": {"type": "categorical", "choices": [True, False]},
        "stft.learn_kernel": {"type": "categorical", "choices": [True, False]},
    },
}
FIDELITY = [
    "--scheduler",
    "none",
    "experiment=quickstart",
    "data.synthetic_clips_per_class=20",
    "data.clip_seconds=4.0",
    "data.sample_rate=11025",
    "data.parts=4",
    "stft.n_fft=512",
    "stft.hop_length=256",
    "stft.n_mels=48",
    "tracking.log_model=false",
]


def rank_fidelity(trials: int, epochs: int) -> None:
    """Part 4: Spearman correlation of each ASHA rung's ranking with the final ranking, per report mode."""
    from scipy.stats import spearmanr

    from tune.report import REPORT_MODES, reported_curve

    sched = SchedulerSpec.from_dict(yaml.safe_load((ROOT / "adastft/configs/scheduler/asha.yaml").read_text()))
    rungs = []
    rung = sched.grace_period
    while rung < epochs:  # ASHA's milestones below max_t
        rungs.append(rung)
        rung *= sched.reduction_factor
    with tempfile.TemporaryDirectory(prefix="adastft-bench-fidelity-") as tmp:
        space = Path(tmp) / "fidelity_space.yaml"
        space.write_text(yaml.safe_dump(FIDELITY_SPACE))
        study = run_study(Path(tmp), "fidelity", trials, "--search", str(space), *FIDELITY, f"train.epochs={epochs}")
        curves, finals, tests = [], [], []
        for results in sorted(study.folder.glob("*/result.json")):
            rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
            curve = [r["val_clip_accuracy"] for r in sorted(rows, key=lambda r: r["training_iteration"])]
            if len(curve) < epochs:
                continue  # a failed trial: no final ranking
            curves.append(curve)
            finals.append(max(curve))
            tests.append(rows[-1]["test_clip_accuracy"])
    print(
        f"rank fidelity: {len(curves)} trials of {epochs} epochs, all run to the end ({study.wall_s:.0f} s); "
        f"final val clip accuracy {min(finals):.2f}..{max(finals):.2f} (best epoch), test {min(tests):.2f}..{max(tests):.2f}"
    )
    print(
        f"Spearman correlation between the ranking by what a trial reports at ASHA's rungs (grace {sched.grace_period}, "
        f"reduction {sched.reduction_factor}) and the final ranking"
    )
    header = "".join(f"{'rung ' + str(r):>12s}" for r in rungs)
    for final_name, final in (("best val clip accuracy", finals), ("test clip accuracy of the best checkpoint", tests)):
        print(f"  final ranking by {final_name}")
        print(f"  {'--report':10s}{header}")
        for mode in REPORT_MODES:
            reported = [reported_curve(c, "max", mode) for c in curves]
            cells = "".join(f"{spearmanr([r[k - 1] for r in reported], final).statistic:>12.3f}" for k in rungs)
            print(f"  {mode:10s}{cells}")


def real_study(trials: int) -> None:
    """Part 3: a real quickstart study; where its time went, and how much of the machine computed."""
    with tempfile.TemporaryDirectory(prefix="adastft-bench-real-") as tmp:
        study = run_study(Path(tmp), "real", trials, *QUICKSTART)
        in_trials = study.trial_seconds()
    totals, cores = study.totals(), os.cpu_count()
    machine = study.wall_s * cores
    epochs = totals["total_epoch_seconds"]  # each trial runs on one thread (tune/run.py: threads = CPUs per trial)
    computing = totals["total_time_compute"] + totals["total_time_eval"]
    print(f"{trials}-trial quickstart study (synthetic set, default model, ASHA) on {cores} CPUs: {study.wall_s:.0f} s")
    print(f"  time in trials' epochs: {study.shares()}")
    print(f"  machine CPU time (wall x cores) {machine:.0f} s:")
    for label, seconds in (
        ("in trials' epochs", epochs),
        ("in trials, before their first epoch (data cache, model, MLflow run)", in_trials - epochs),
        (
            "outside trials (Ray start, trial processes, scheduling gaps, pruned trials' runs "
            "closed by the driver, the summary, idle slots)",
            machine - in_trials,
        ),
    ):
        print(f"    {100 * seconds / machine:3.0f}% {seconds:6.0f} s  {label}")
    share = computing / machine
    print(
        f"  training + evaluation compute {computing:.0f} s: {100 * share:.0f}% of the machine   "
        f"target >= 85%  {'met' if share >= 0.85 else 'MISSED'}"
    )


def overhead_and_asha(args: argparse.Namespace) -> None:
    """Parts 1 and 2."""
    with tempfile.TemporaryDirectory() as tmp:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        )
        try:
            base = Config.from_dict(
                {
                    "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "bench"},
                    "data": {"cache_dir": f"{tmp}/cache"},
                }
            )
            parent = Tracker(base.tracking.uri, "bench", run_name="bench-study")
            study = StudySettings(
                name="bench",
                work_key=f"bench-{os.getpid()}",
                notes_dir=f"{tmp}/notes",
                storage_path=tmp,
                parent_run_id=parent.run_id,
                tracking_uri=base.tracking.uri,
                experiment="bench",
                stall_timeout_s=600.0,
            )
            ours = ray_tune.with_parameters(run_trial, base=base, study=study, train_fn=noop_train)
            tracked = ray_tune.with_parameters(
                bare_trial_tracked,
                tracking_uri=base.tracking.uri,
                experiment_id=parent.experiment_id,
                parent_run_id=parent.run_id,
                params=flatten(base.to_dict()),
            )
            # per size: alternate, twice, so drift hits all alike; keep the faster of each
            times = {}
            for n in args.trials:
                runs = {"default": [], "bare": [], "stack": [], "ckpt": [], "tracked": [], "ours": []}
                for i in range(2):
                    runs["default"].append(timed_fit(bare_trial, n, tmp, f"default{n}-{i}", 2, reuse=False))
                    runs["bare"].append(timed_fit(bare_trial, n, tmp, f"bare{n}-{i}", 2))
                    runs["stack"].append(timed_fit(bare_trial_with_stack, n, tmp, f"stack{n}-{i}", 2))
                    runs["ckpt"].append(timed_fit(bare_trial_checkpointed, n, tmp, f"ckpt{n}-{i}", 2))
                    runs["tracked"].append(timed_fit(tracked, n, tmp, f"tracked{n}-{i}", 2))
                    runs["ours"].append(timed_fit(ours, n, tmp, f"ours{n}-{i}", 2))
                times[n] = {k: min(v) for k, v in runs.items()}
            parent.end()
            full = asha_epochs(args.asha_trials, tmp, FIFOScheduler(), "all")
            sched = SchedulerSpec.from_dict(yaml.safe_load((ROOT / "adastft/configs/scheduler/asha.yaml").read_text()))
            asha = asha_epochs(
                args.asha_trials,
                tmp,
                ASHAScheduler(
                    time_attr="training_iteration",
                    max_t=16,
                    grace_period=sched.grace_period,
                    reduction_factor=sched.reduction_factor,
                ),
                "asha",
            )
        finally:
            ray.shutdown()
    print(f"no-op trials of {EPOCHS} epochs, 2 at a time, on {os.cpu_count()} CPUs; wall time of Tuner.fit()")
    print("  A  bare function trainable, Ray's defaults (a new process per trial)")
    print("  B  bare function trainable, processes reused (reuse_actors, as tune/run.py)")
    print("  C  B importing torch/torchaudio/torchvision")
    print("  E  B reporting a tiny checkpoint every epoch (Tune's checkpoint handling alone)")
    print("  F  E plus the same MLflow child run as D, written with MlflowClient directly")
    print("  D  our trainable (tune/run.py's settings): config, MLflow child run, a checkpoint per epoch")
    print("  trials        A        B        C        E        F        D     D/A     D/B     D/E     D/F     F/B")
    for n, t in times.items():
        print(
            f"  {n:6d} {t['default']:6.1f} s {t['bare']:6.1f} s {t['stack']:6.1f} s {t['ckpt']:6.1f} s"
            f" {t['tracked']:6.1f} s {t['ours']:6.1f} s {t['ours'] / t['default']:7.3f}"
            f" {t['ours'] / t['bare']:7.3f} {t['ours'] / t['ckpt']:7.3f} {t['ours'] / t['tracked']:7.3f}"
            f" {t['tracked'] / t['bare']:7.3f}"
        )
        print(
            "         per trial: "
            + ", ".join(
                f"{label} {t[key] / n * 1e3:.0f} ms"
                for label, key in (
                    ("A", "default"),
                    ("B", "bare"),
                    ("C", "stack"),
                    ("E", "ckpt"),
                    ("F", "tracked"),
                    ("D", "ours"),
                )
            )
        )
    n = max(times)
    t = times[n]
    for label, ratio in (
        ("D/A (vs a bare trainable as Tune runs it)", t["ours"] / t["default"]),
        ("D/F (vs bare doing the same tracking)", t["ours"] / t["tracked"]),
    ):
        print(f"  {n} trials: {label:43s} {ratio:.3f}   target <= 1.25  {'met' if ratio <= 1.25 else 'MISSED'}")
    print(
        f"  {n} trials: {'D/B (vs bare, no tracking, same reuse)':43s} {t['ours'] / t['bare']:.3f}   "
        f"not a target: F/B = {t['tracked'] / t['bare']:.3f} is the least any tracked trainable pays"
    )
    share = asha / full
    print(f"{args.asha_trials}-trial study, 16 epochs max: ASHA {asha} epochs vs {full} all to the end")
    print(f"  share {share:.3f}   target <= 0.35  {'met' if share <= 0.35 else 'MISSED'}")


if __name__ == "__main__":
    main()
