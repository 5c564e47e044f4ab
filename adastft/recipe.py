"""The training recipe behind ``train(cfg)``: :func:`setup` builds a :class:`TrainState`,
:func:`run_epoch` advances it one epoch, :func:`finish` tests the best checkpoint and logs the
results; :func:`run` drives them and ends the MLflow run FINISHED, FAILED or KILLED.

Per epoch: train on random crops, validate by voting over each clip's parts, log to MLflow (rank
0), write ``last.pt`` (and ``best.pt`` when validation clip accuracy improves) atomically and
report to the caller. The same steps run as one process or as N DDP ranks.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from adastft import distributed
from adastft.builders import build_augment, build_mixup, build_model, build_optimizer
from adastft.checkpoint import link_checkpoint, load_checkpoint, save_checkpoint
from adastft.config import Config
from adastft.data import ClipStore, DataError, TrainCrops, prepare
from adastft.evaluation import autocast, evaluate
from adastft.memory import check_fits
from adastft.model import AdaSTFTClassifier
from adastft.run_tracking import (
    end_run,
    last_row,
    log_frontends,
    log_results,
    open_run,
    sample_other_node,
    tracking_uri,
)
from adastft.schedule import build_scheduler
from adastft.timing import PhaseTimer, totals
from adastft.tracking import NullTracker, RunTracker, check_tracking_uri

if TYPE_CHECKING:
    from adastft.training import Reporter

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss; the run is marked FAILED."""


@dataclass
class TrainState:
    """What a run holds from one step to the next."""

    cfg: Config
    ctx: distributed.DistContext
    reporter: Reporter
    store: ClipStore
    model: AdaSTFTClassifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    per_step: bool  # the scheduler steps after every batch, not every epoch
    scaler: torch.amp.GradScaler
    augment: nn.Module | None
    loader: DataLoader  # TrainCrops through a DistributedSampler
    mixup: nn.Module | None = None  # after augment, on the waveforms; the loss then takes soft targets
    tracker: RunTracker = field(default_factory=NullTracker)
    node_sampler: Any = None  # this machine's system metrics, on the first rank of a machine other than rank 0's
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    start_epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    net: nn.Module | None = None  # the model, under DDP when distributed
    switches: tuple[bool, ...] | None = None  # (window, kernel, compression, win_length) learning ``net`` was built for

    @property
    def amp(self) -> bool:
        return self.cfg.train.amp and self.ctx.device.type == "cuda"

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.out_dir)

    @property
    def durable(self) -> bool:
        # a caller that keeps its own copy of every checkpoint (Tune) makes fsync here redundant
        return not getattr(self.reporter, "persists_checkpoints", False)


def run(cfg: Config, reporter: Reporter, ctx: distributed.DistContext) -> dict[str, float]:
    """Every epoch from the checkpoint's (or the first) to ``train.epochs``, then :func:`finish`."""
    state = setup(cfg, reporter, ctx)
    metrics: dict[str, float] = {}
    status = "FAILED"
    try:
        for epoch in range(state.start_epoch, cfg.train.epochs):
            metrics = run_epoch(state, epoch)
            if epoch == cfg.train.epochs - 1:
                # Finish before the last report: a caller may end the process on it (Tune stops
                # a trial that reached its last epoch from inside that report).
                metrics, status = finish(state, metrics), "FINISHED"
            else:
                metrics = {**metrics, **totals(state.history)}  # a new dict: history keeps the epoch's row
            with state.timer.phase("checkpoint"):  # Tune copies the reported checkpoint to its storage
                reporter.report(metrics, state.out_dir)
        if status != "FINISHED":  # resumed after its last epoch: nothing left but the test
            metrics = finish(state, metrics)
        status = "FINISHED"
        return metrics
    except NonFiniteLoss as exc:
        state.tracker.set_tags({"failure": str(exc)})
        raise
    except BaseException as exc:
        if (
            not isinstance(exc, Exception) and status != "FINISHED"
        ):  # SystemExit, KeyboardInterrupt: stopped from outside
            status = "KILLED"
        raise
    finally:
        end_run(state.tracker, state.node_sampler, status)


def setup(cfg: Config, reporter: Reporter, ctx: distributed.DistContext) -> TrainState:
    """Checks first, then the data, the model and its optimiser, the checkpoint to resume from
    and the MLflow run."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = ctx.device
    if ctx.is_main and cfg.tracking.enabled:
        check_tracking_uri(tracking_uri(cfg))  # before any expensive work
    check_fits(cfg, device)  # before the data cache and the model are built
    store = prepare(cfg.data.spec())
    _check_splits(store, cfg)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, len(store.classes)).to(device)
    optimizer = build_optimizer(cfg, model)
    loader = _train_loader(cfg, store, ctx)
    steps = len(loader) if cfg.train.max_batches is None else min(len(loader), cfg.train.max_batches)
    scheduler, per_step = build_scheduler(
        optimizer, cfg.optim.schedule, cfg.optim.gamma, cfg.optim.warmup_epochs, cfg.train.epochs, steps
    )
    scaler = torch.amp.GradScaler(
        "cuda", enabled=cfg.train.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    )
    augment = build_augment(cfg)
    state = TrainState(
        cfg,
        ctx,
        reporter,
        store,
        model,
        optimizer,
        scheduler,
        per_step,
        scaler,
        augment.to(device) if augment is not None else None,
        loader,
        mixup=build_mixup(cfg),
    )
    run_id = cfg.tracking.run_id
    if cfg.train.resume and (state.out_dir / "last.pt").exists():
        run_id = _resume(state) or run_id
    if ctx.is_main and cfg.tracking.enabled:
        state.tracker = open_run(cfg, store.classes, len(store.indices("train")), run_id, state.start_epoch)
    state.node_sampler = sample_other_node(cfg, ctx, state.tracker)
    state.timer = PhaseTimer()  # the epochs' rows time the epochs, not the setup
    return state


def _check_splits(store: ClipStore, cfg: Config) -> None:
    """Every split a run uses has clips (before training: testing comes at the end)."""
    for split in ("train", "val", "test"):
        if not len(store.indices(split)):
            fix = (
                f"add a {split!r} list to data.split_files"
                if cfg.data.split_files
                else f"raise data.{split}_fraction"
                if split != "train"
                else "lower data.val_fraction + data.test_fraction"
            )
            raise DataError(f"the {split} split of {Path(store.path).name} has no clip: {fix}")


def _train_loader(cfg: Config, store: ClipStore, ctx: distributed.DistContext) -> DataLoader:
    crops = TrainCrops(
        store, split="train", parts=cfg.data.parts, seed=cfg.data.seed, crops_per_clip=cfg.data.crops_per_clip
    )
    sampler = DistributedSampler(
        crops, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.train.seed, drop_last=ctx.distributed
    )
    drop_last = len(crops) // ctx.world_size > cfg.data.batch_size  # BatchNorm needs batches > 1
    return DataLoader(
        crops,
        batch_size=cfg.data.batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=cfg.data.num_workers,
        pin_memory=ctx.device.type == "cuda",
    )


def _resume(state: TrainState) -> str | None:
    """Load ``last.pt`` into ``state``; the MLflow run it logged to, if any."""
    path = state.out_dir / "last.pt"
    saved = load_checkpoint(path, map_location=state.ctx.device)
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    state.start_epoch, state.best_acc = saved["epoch"] + 1, saved["best_val_clip_accuracy"]
    state.best_epoch = int(saved.get("best_epoch", -1))  # -1: a checkpoint from before best_epoch was kept
    state.history = list(saved["history"])
    log.info("resuming from %s at epoch %d", path, state.start_epoch)
    return saved.get("mlflow_run_id")


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators (every device) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(cfg: Config, epoch: int, rank: int) -> int:
    # Every epoch starts from a seed of its own, so a resumed run draws exactly the crops,
    # augmentations and dropout masks the uninterrupted run drew.
    return (cfg.train.seed * 1_000_003 + epoch * 7919 + rank) % 2**63


def run_epoch(state: TrainState, epoch: int) -> dict[str, float]:
    """Train one epoch, validate, log it and write its checkpoint; its row of the history."""
    cfg, ctx, model, timer = state.cfg, state.ctx, state.model, state.timer
    _set_learning(state, epoch)
    seed_everything(_epoch_seed(cfg, epoch, ctx.rank))
    state.loader.sampler.set_epoch(epoch)
    state.loader.dataset.set_epoch(epoch)
    lr = state.optimizer.param_groups[0]["lr"]  # the epoch's first step's (exponential: every step's)
    with timer.phase("compute"):
        train_loss = _train_steps(state)
    if not state.per_step:
        state.scheduler.step()
    with timer.phase("eval"):
        val = evaluate(
            model,
            state.store,
            "val",
            cfg.data.parts,
            cfg.data.eval_batch_size,
            ctx.device,
            ctx,
            cfg.data.vote,
            state.amp,
            cfg.data.eval_parts,
        )
    if not math.isfinite(val.loss):  # the last step of the epoch can break the weights
        raise NonFiniteLoss(
            f"non-finite validation loss ({val.loss}) after epoch {epoch + 1}: lower optim.lr or check the data"
        )
    fronts = model.frontends()
    metrics = {
        "epoch": float(epoch),
        "train_loss": train_loss,
        **val.metrics("val"),
        "lr": lr,
        "window_change": sum(f.window_change() for f in fronts) / len(fronts),
        "kernel_change": sum(f.kernel_change() for f in fronts) / len(fronts),
        **(
            {"win_length": sum(float(f.current_win_length().detach()) for f in fronts) / len(fronts)}
            if cfg.stft.learn_win_length
            else {}
        ),
        **timer.drain(),
    }
    improved = val.clip_accuracy > state.best_acc
    if improved:
        state.best_acc, state.best_epoch = val.clip_accuracy, epoch
    # best_epoch == epoch: this epoch's last.pt is also best.pt (a caller keeping only the
    # latest and the best checkpoint, as the search does, needs no second copy)
    metrics["best_val_clip_accuracy"], metrics["best_epoch"] = state.best_acc, float(state.best_epoch)
    state.history.append(metrics)
    if ctx.is_main:
        with timer.phase("tracking"):
            state.tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
        with timer.phase("checkpoint"):
            _save(state, epoch, val.confusion, improved)
        log.info(
            "epoch %d/%d  train loss %.4f  val loss %.4f  val clip acc %.3f  seg acc %.3f  (%.1f s)",
            epoch + 1,
            cfg.train.epochs,
            train_loss,
            val.loss,
            val.clip_accuracy,
            val.segment_accuracy,
            metrics["epoch_seconds"],
        )
    ctx.barrier()
    return metrics


def _set_learning(state: TrainState, epoch: int) -> None:
    stft = state.cfg.stft
    on = epoch >= stft.learn_after_epoch
    switches = (
        stft.learn_window and on,
        stft.learn_kernel and on,
        stft.learn_compression and on,
        stft.learn_win_length and on,
    )
    if switches == state.switches:
        return
    state.switches = switches
    # AdaSTFT or AdaSTFTBank; the window's length exists to learn only in a layer built with it
    state.model.frontend.set_learning(
        window=switches[0],
        kernel=switches[1],
        compression=switches[2],
        win_length=switches[3] if stft.learn_win_length else None,
    )
    # DDP fixes the set of gradient-carrying parameters when it is built: rebuild it whenever
    # the front end's learning switches change.
    device = state.ctx.device
    state.net = (
        DistributedDataParallel(state.model, device_ids=[device.index] if device.type == "cuda" else None)
        if state.ctx.distributed
        else state.model
    )


def _train_steps(state: TrainState) -> float:
    """One pass over the training loader (at most ``train.max_batches``); the mean loss over ranks."""
    net, device, ctx, max_batches = state.net, state.ctx.device, state.ctx, state.cfg.train.max_batches
    heartbeat = getattr(state.reporter, "heartbeat", None)
    net.train()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for step, (x, y) in enumerate(_timed_batches(state.loader, state.timer)):
        if max_batches is not None and step >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if state.augment is not None:
            x = state.augment(x)
        target = y
        if state.mixup is not None:  # class probabilities, which cross_entropy takes as they are
            x, target, _, _ = state.mixup(x, y, len(state.store.classes))
        with autocast(device, state.amp):
            loss = nn.functional.cross_entropy(net(x).float(), target)
        if ctx.any(not bool(torch.isfinite(loss))):
            raise NonFiniteLoss(
                f"non-finite training loss ({loss.item()}) at step {step}: lower optim.lr or check the data"
            )
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        if state.per_step:
            state.scheduler.step()
        if heartbeat is not None:
            heartbeat()
        total += torch.stack(
            [loss.detach().double() * y.shape[0], torch.tensor(float(y.shape[0]), device=device, dtype=torch.float64)]
        )
    ctx.all_reduce_sum(total)
    return float(total[0] / max(total[1], 1))


def _timed_batches(loader: DataLoader, timer: PhaseTimer):
    """``loader``'s batches, the wait for each timed as ``data_wait`` (inside the ``compute`` phase
    that times the epoch's steps, which leaves it out)."""
    batches = iter(loader)
    while True:
        with timer.phase("data_wait"):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


def _save(state: TrainState, epoch: int, val_confusion: np.ndarray, improved: bool) -> None:
    # No RNG state: every epoch reseeds (_epoch_seed) before it draws anything, so a resumed run
    # draws what the uninterrupted one drew without it (tests/test_training.py pins this).
    checkpoint = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "epoch": epoch,
        "best_val_clip_accuracy": state.best_acc,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "config": state.cfg.to_dict(),
        "classes": list(state.store.classes),
        "mlflow_run_id": state.tracker.run_id,
        "val_confusion": torch.from_numpy(val_confusion),
    }
    last, best = state.out_dir / "last.pt", state.out_dir / "best.pt"
    if improved:  # best first: a kill between the two leaves last.pt older, never best.pt
        save_checkpoint(checkpoint, best, durable=state.durable)
        link_checkpoint(best, last, durable=state.durable)
    else:
        save_checkpoint(checkpoint, last, durable=state.durable)


def finish(state: TrainState, metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` plus the test split's, evaluated with the best checkpoint, and the run's
    totals; rank 0 writes ``best_model.pt`` and logs the results."""
    with state.timer.phase("tracking"):  # the artifacts; the test split is timed as eval
        metrics = {**metrics, **_test_best(state)}
    metrics.update(last_row(state.timer, state.tracker, state.history))
    return metrics


def _test_best(state: TrainState) -> dict[str, float]:
    cfg, ctx, model, tracker = state.cfg, state.ctx, state.model, state.tracker
    log_frontends(
        tracker, model, "last", cfg.tracking.tensor_formats, plots_too=False
    )  # before the best weights replace them
    best_path = state.out_dir / "best.pt"
    ctx.barrier()
    best = load_checkpoint(best_path, map_location=ctx.device) if best_path.exists() else None
    if best is not None:
        model.load_state_dict(best["model"])
    with state.timer.phase("eval"):
        # every part, whatever data.eval_parts: the test runs once, and its number is the one compared
        test = evaluate(
            model,
            state.store,
            "test",
            cfg.data.parts,
            cfg.data.eval_batch_size,
            ctx.device,
            ctx,
            cfg.data.vote,
            state.amp,
        )
    results = {**test.metrics("test"), "best_val_clip_accuracy": max(h["val_clip_accuracy"] for h in state.history)}
    if not ctx.is_main:
        return results
    tracker.log_metrics(results, step=len(state.history))
    best_model = state.out_dir / "best_model.pt"
    if best is not None:
        save_checkpoint(
            {
                "model": best["model"],
                "config": cfg.to_dict(),
                "classes": list(state.store.classes),
                "epoch": best["epoch"],
            },
            best_model,
            durable=state.durable,
        )
    if tracker.active:
        log_results(
            tracker,
            cfg,
            model,
            state.store.classes,
            state.history,
            test.confusion,
            best["val_confusion"].numpy() if best is not None else None,
            best_model,
        )
    return results
