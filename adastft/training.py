"""``train(cfg) -> metrics``: the one training path for the CLI, the tests and every Tune trial.

Per epoch: train on random crops, validate by voting over each clip's parts, log to MLflow (rank
0), write ``last.pt`` (and ``best.pt`` when validation clip accuracy improves) atomically, report
to the caller's reporter and ask it whether to stop. At the end the test split is evaluated with
the best checkpoint. The same function runs as one process or as N DDP ranks.
"""

from __future__ import annotations

import logging
import math
import random
import socket
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from adastft import distributed, plots, timing
from adastft.checkpoint import link_checkpoint, load_checkpoint, save_checkpoint
from adastft.config import Config
from adastft.data import Augment, ClipStore, DataError, EvalParts, SpecAugment, TrainCrops, prepare, vote
from adastft.layer import AdaSTFT, AdaSTFTBank
from adastft.memory import check_fits
from adastft.model import AdaSTFTClassifier
from adastft.schedule import build_scheduler
from adastft.timing import PhaseTimer, totals
from adastft.tracking import (NullTracker, Tracker, check_tracking_uri, default_tracking_uri, start_system_metrics,
                              stop_system_metrics, ui_link)

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """What the caller (the CLI, a test, a Tune trial) hears each epoch.

    A reporter whose class sets ``persists_checkpoints = True`` keeps a copy of every checkpoint
    it is handed (Tune does): the run's own files are then written without fsync.
    """

    def report(self, metrics: Mapping[str, float], checkpoint_dir: Path | None) -> None: ...

    def should_stop(self) -> bool: ...

    def heartbeat(self) -> None:
        """Called after every training step: the caller's watchdog sees progress."""


class NullReporter:
    def report(self, metrics: Mapping[str, float], checkpoint_dir: Path | None) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def heartbeat(self) -> None:
        pass


# What train() reports every epoch, besides "epoch": a search's metric must be one of these
# (tests/reliability/test_search_checks.py compares them with a real run's reports).
EPOCH_METRICS = ("train_loss", "val_loss", "val_clip_accuracy", "val_segment_accuracy", "lr", "window_change",
                 "kernel_change", "epoch_seconds", "best_val_clip_accuracy", "best_epoch",
                 *(timing.metric(p) for p in timing.PHASES), *timing.TOTALS)


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss; the run is marked FAILED."""


@dataclass
class EvalResult:
    loss: float
    clip_accuracy: float
    segment_accuracy: float
    confusion: np.ndarray  # (classes, classes), rows = true class

    def metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_loss": self.loss,
            f"{prefix}_clip_accuracy": self.clip_accuracy,
            f"{prefix}_segment_accuracy": self.segment_accuracy,
        }


# ---- building blocks --------------------------------------------------------------------------


def build_model(cfg: Config, num_classes: int) -> AdaSTFTClassifier:
    """The classifier a config describes (front-end learning switched off: train() sets it)."""
    layer_kwargs = cfg.stft.layer_kwargs(cfg.data.sample_rate)
    frontend = AdaSTFT(**layer_kwargs) if cfg.model.n_frontends == 1 else AdaSTFTBank(cfg.model.n_frontends, **layer_kwargs)
    d = cfg.data
    spec_augment = None
    if d.augment and (d.time_masks or d.freq_masks):
        spec_augment = SpecAugment(freq_mask_param=d.freq_mask_bins, time_mask_param=d.time_mask_frames,
                                   n_freq_masks=d.freq_masks, n_time_masks=d.time_masks)
    return AdaSTFTClassifier(
        frontend, num_classes, backbone=cfg.model.backbone, activation=cfg.model.activation,
        norm=cfg.model.norm, dropout=cfg.model.dropout, pretrained_path=cfg.model.pretrained_path,
        spec_augment=spec_augment,
    )


def build_optimizer(cfg: Config, model: AdaSTFTClassifier) -> torch.optim.Optimizer:
    groups = model.parameter_groups(cfg.optim.lr, cfg.optim.weight_decay, cfg.stft.lr)
    if cfg.optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.optim.lr)
    return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum)


def build_augment(cfg: Config) -> nn.Module | None:
    d = cfg.data
    if not d.augment:
        return None
    return Augment(
        noise_snr_db=tuple(d.noise_snr_db) if d.noise_snr_db else None,
        gain_db=tuple(d.gain_db) if d.gain_db else None,
        max_delay_s=d.max_delay_s,
        sample_rate=d.sample_rate,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(cfg: Config, epoch: int, rank: int) -> int:
    # Every epoch starts from a seed of its own, so a resumed run draws exactly the crops,
    # augmentations and dropout masks the uninterrupted run drew.
    return (cfg.train.seed * 1_000_003 + epoch * 7919 + rank) % 2**63


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _learning_switches(cfg: Config, epoch: int) -> tuple[bool, bool]:
    on = epoch >= cfg.stft.learn_after_epoch
    return cfg.stft.learn_window and on, cfg.stft.learn_kernel and on


def _autocast(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def samples_its_node(hosts: list[str], rank: int) -> bool:
    """Whether ``rank`` samples its machine's system metrics into the run: rank 0's tracker
    samples its own; elsewhere the first rank on each other machine does."""
    return rank > 0 and hosts.index(hosts[rank]) == rank and hosts[rank] != hosts[0]


def _sample_other_node(cfg: Config, ctx: distributed.DistContext, tracker):
    """DDP over several machines: every machine's system metrics go into rank 0's run, each under
    its own host name. A collective: every rank calls it."""
    if not ctx.distributed or not cfg.tracking.enabled or not cfg.tracking.system_metrics_interval:
        return None
    ranks = ctx.gather((socket.gethostname(), tracker.run_id))
    if not samples_its_node([host for host, _ in ranks], ctx.rank):
        return None
    return start_system_metrics(ranks[0][1], _tracking_uri(cfg), cfg.tracking.system_metrics_interval, resume=True)


def _last_row(timer: PhaseTimer, tracker, history: list[dict]) -> dict[str, float]:
    """The run's totals, including the time after the last epoch's row (its checkpoint and
    tracking, the test split, the artifacts), which MLflow gets as one more row."""
    tail = timer.drain()
    tracker.log_metrics(tail, step=len(history))
    return totals([*history, tail])


def _timed_batches(loader, timer: PhaseTimer):
    """``loader``'s batches, the wait for each timed as ``data_wait`` (inside the ``compute`` phase
    that times the epoch's steps, which leaves it out)."""
    batches = iter(loader)
    while True:
        with timer.phase("data_wait"):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


# ---- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module,
    store: ClipStore,
    split: str,
    parts: int,
    batch_clips: int,
    device: torch.device,
    ctx: distributed.DistContext,
    vote_method: str = "majority",
    amp: bool = False,
    eval_parts: int | None = None,
) -> EvalResult:
    """Clip accuracy by voting over ``parts`` segments (``eval_parts`` of them, evenly spaced),
    segment accuracy and loss; exact under DDP.

    Each rank takes every ``world_size``-th clip; counts are summed over ranks.
    """
    model.eval()
    n_classes = len(store.classes)
    dataset = EvalParts(store, split=split, parts=parts, eval_parts=eval_parts)
    parts = dataset.segments  # per clip, from here on
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    loader = DataLoader(shard, batch_size=batch_clips, shuffle=False)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, segments, correct segs, correct clips
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.float64, device=device)
    for segments, labels in loader:
        b = segments.shape[0]
        segments, labels = segments.to(device), labels.to(device)
        with _autocast(device, amp):
            logits = model(segments.reshape(b * parts, -1)).float().reshape(b, parts, n_classes)
        seg_labels = labels.repeat_interleave(parts)
        loss = nn.functional.cross_entropy(logits.reshape(b * parts, -1), seg_labels, reduction="sum")
        predictions = vote(logits, method=vote_method)
        totals += torch.stack([
            loss.double(),
            torch.tensor(float(b * parts), device=device, dtype=torch.float64),
            (logits.argmax(-1).reshape(-1) == seg_labels).sum().double(),
            (predictions == labels).sum().double(),
        ])
        confusion.index_put_((labels, predictions), torch.ones(b, dtype=torch.float64, device=device), accumulate=True)
    ctx.all_reduce_sum(totals)
    ctx.all_reduce_sum(confusion)
    n_clips = float(confusion.sum())
    return EvalResult(
        loss=float(totals[0] / max(totals[1], 1)),
        clip_accuracy=float(totals[3] / max(n_clips, 1)),
        segment_accuracy=float(totals[2] / max(totals[1], 1)),
        confusion=confusion.cpu().numpy().astype(np.int64),
    )


# ---- the training function ----------------------------------------------------------------------


REDONE_TAG = "redone_epochs"


def _note_redone_epochs(tracker, start_epoch: int) -> None:
    """A resumed run that logged epochs past its checkpoint (it died between logging an epoch and
    saving it, or its caller restores an older checkpoint) trains them again: MLflow cannot take
    points back, so both are kept and the run's ``redone_epochs`` tag lists the steps (0-based)."""
    redone = {s for s in tracker.metric_steps("val_loss") if s >= start_epoch}
    if not redone:
        return
    earlier = tracker.tag(REDONE_TAG)
    steps = sorted(redone | {int(s) for s in (earlier or "").split(",") if s.strip().isdigit()})
    tracker.set_tags({REDONE_TAG: ",".join(map(str, steps))})
    log.warning("MLflow run %s already has epochs %s past the checkpoint it resumes from (step %d): they are "
                "trained and logged again; both points stay (tag %s)", tracker.run_id,
                ",".join(str(s + 1) for s in sorted(redone)), start_epoch, REDONE_TAG)


def train(cfg: Config | Mapping[str, Any], reporter: Reporter | None = None) -> dict[str, float]:
    """Train the classifier a config describes and return its final metrics.

    ``cfg`` is a :class:`Config` or a mapping (validated here). Returns the last epoch's metrics
    plus ``best_val_clip_accuracy`` and the test split's metrics (``test_*``), evaluated with the
    best checkpoint. Raises :class:`NonFiniteLoss` when the loss turns NaN or infinite.
    """
    cfg = cfg if isinstance(cfg, Config) else Config.from_dict(cfg)
    reporter = reporter or NullReporter()
    ctx = distributed.setup(cfg.train.device)
    try:
        return _train(cfg, reporter, ctx)
    finally:
        ctx.close()


def _tracking_uri(cfg: Config) -> str:
    return cfg.tracking.uri or default_tracking_uri(Path.cwd())


def _train(cfg: Config, reporter: Reporter, ctx: distributed.DistContext) -> dict[str, float]:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = ctx.device
    amp = cfg.train.amp and device.type == "cuda"
    out_dir = Path(cfg.train.out_dir)
    if ctx.is_main and cfg.tracking.enabled:
        check_tracking_uri(_tracking_uri(cfg))  # before any expensive work

    check_fits(cfg, device)  # before the data cache and the model are built
    store = prepare(cfg.data.spec())
    _check_splits(store, cfg)
    n_classes = len(store.classes)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, n_classes).to(device)
    optimizer = build_optimizer(cfg, model)
    train_set = TrainCrops(store, split="train", parts=cfg.data.parts, seed=cfg.data.seed,
                           crops_per_clip=cfg.data.crops_per_clip)
    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=ctx.distributed)
    drop_last = len(train_set) // ctx.world_size > cfg.data.batch_size  # BatchNorm needs batches > 1
    loader = DataLoader(train_set, batch_size=cfg.data.batch_size, sampler=sampler, drop_last=drop_last,
                        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    steps = len(loader) if cfg.train.max_batches is None else min(len(loader), cfg.train.max_batches)
    scheduler, per_step = build_scheduler(optimizer, cfg.optim.schedule, cfg.optim.gamma, cfg.optim.warmup_epochs,
                                          cfg.train.epochs, steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())
    augment = build_augment(cfg)
    if augment is not None:
        augment = augment.to(device)

    start_epoch, best_acc, best_epoch, history, run_id = 0, -1.0, -1, [], cfg.tracking.run_id
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    durable = not getattr(reporter, "persists_checkpoints", False)
    if cfg.train.resume and last_path.exists():
        state = load_checkpoint(last_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_acc = state["epoch"] + 1, state["best_val_clip_accuracy"]
        best_epoch = int(state.get("best_epoch", -1))  # -1: a checkpoint from before best_epoch was kept
        history, run_id = list(state["history"]), state.get("mlflow_run_id") or cfg.tracking.run_id
        log.info("resuming from %s at epoch %d", last_path, start_epoch)

    tracker = NullTracker()
    if ctx.is_main and cfg.tracking.enabled:
        tags = {"experiment": cfg.name, "learn_window": str(cfg.stft.learn_window),
                "learn_kernel": str(cfg.stft.learn_kernel), "n_frontends": str(cfg.model.n_frontends),
                **cfg.tracking.tags}
        tracker = Tracker(
            _tracking_uri(cfg), cfg.tracking.experiment, run_name=cfg.tracking.run_name or cfg.name,
            tags=tags, parent_run_id=cfg.tracking.parent_run_id, run_id=run_id,
            system_metrics_interval=cfg.tracking.system_metrics_interval,
        )
        if run_id is not None:
            _note_redone_epochs(tracker, start_epoch)
        if not start_epoch:  # one batch: each is a round trip to the store
            tracker.log_params({**cfg.to_dict(), "data.classes": ",".join(store.classes),
                                "data.train_clips": len(store.indices("train"))})

    node_sampler = _sample_other_node(cfg, ctx, tracker)

    switches, net = None, model
    metrics: dict[str, float] = {}
    status, finished = "FAILED", False
    timer = PhaseTimer()
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            if _learning_switches(cfg, epoch) != switches:
                switches = _learning_switches(cfg, epoch)
                model.set_frontend_learning(window=switches[0], kernel=switches[1])
                # DDP fixes the set of gradient-carrying parameters when it is built: rebuild it
                # whenever the front end's learning switches change.
                net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
                    if ctx.distributed else model
            seed_everything(_epoch_seed(cfg, epoch, ctx.rank))
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]  # the epoch's first step's (exponential: every step's)
            with timer.phase("compute"):
                train_loss = _train_epoch(net, _timed_batches(loader, timer), optimizer, scaler, augment, device, amp,
                                          ctx, cfg.train.max_batches, getattr(reporter, "heartbeat", None),
                                          scheduler.step if per_step else None)
            if not per_step:
                scheduler.step()
            with timer.phase("eval"):
                val = evaluate(model, store, "val", cfg.data.parts, cfg.data.eval_batch_size, device, ctx,
                               cfg.data.vote, amp, cfg.data.eval_parts)
            if not math.isfinite(val.loss):  # the last step of the epoch can break the weights
                raise NonFiniteLoss(f"non-finite validation loss ({val.loss}) after epoch {epoch + 1}: "
                                    "lower optim.lr or check the data")
            fronts = model.frontends()
            metrics = {
                "epoch": float(epoch),
                "train_loss": train_loss,
                **val.metrics("val"),
                "lr": lr,
                "window_change": sum(f.window_change() for f in fronts) / len(fronts),
                "kernel_change": sum(f.kernel_change() for f in fronts) / len(fronts),
                **timer.drain(),
            }
            improved = val.clip_accuracy > best_acc
            if improved:
                best_acc, best_epoch = val.clip_accuracy, epoch
            # best_epoch == epoch: this epoch's last.pt is also best.pt (a caller keeping only the
            # latest and the best checkpoint, as the search does, needs no second copy)
            metrics["best_val_clip_accuracy"], metrics["best_epoch"] = best_acc, float(best_epoch)
            history.append(metrics)
            if ctx.is_main:
                with timer.phase("tracking"):
                    tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
                state = {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                    "best_val_clip_accuracy": best_acc, "best_epoch": best_epoch, "history": history, "config": cfg.to_dict(),
                    "classes": list(store.classes), "rng": _rng_state(), "mlflow_run_id": tracker.run_id,
                    "val_confusion": torch.from_numpy(val.confusion),
                }
                with timer.phase("checkpoint"):
                    if improved:  # best first: a kill between the two leaves last.pt older, never best.pt
                        save_checkpoint(state, best_path, durable=durable)
                        link_checkpoint(best_path, last_path, durable=durable)
                    else:
                        save_checkpoint(state, last_path, durable=durable)
                log.info("epoch %d/%d  train loss %.4f  val loss %.4f  val clip acc %.3f  seg acc %.3f  (%.1f s)",
                         epoch + 1, cfg.train.epochs, train_loss, val.loss, val.clip_accuracy,
                         val.segment_accuracy, metrics["epoch_seconds"])
            ctx.barrier()
            if epoch == cfg.train.epochs - 1:
                # Finish before the last report: a caller may end the process on it (Tune stops
                # a trial that reached its last epoch from inside that report).
                with timer.phase("tracking"):  # the artifacts; the test split is timed as eval
                    metrics = {**metrics, **_finish(cfg, model, store, device, ctx, tracker, history, amp, durable,
                                                    timer)}
                metrics.update(_last_row(timer, tracker, history))
                finished, status = True, "FINISHED"
            else:
                metrics = {**metrics, **totals(history)}  # a new dict: history keeps the epoch's row
            with timer.phase("checkpoint"):  # Tune copies the reported checkpoint to its storage
                reporter.report(metrics, out_dir)
            if not finished and ctx.any(reporter.should_stop()):
                log.info("stopped by the caller after epoch %d", epoch + 1)
                break
        if not finished:
            with timer.phase("tracking"):
                metrics = {**metrics, **_finish(cfg, model, store, device, ctx, tracker, history, amp, durable, timer)}
            metrics.update(_last_row(timer, tracker, history))
        status = "FINISHED"
        return metrics
    except NonFiniteLoss as exc:
        tracker.set_tags({"failure": str(exc)})
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception) and not finished:  # SystemExit, KeyboardInterrupt: stopped from outside
            status = "KILLED"
        raise
    finally:
        stop_system_metrics(node_sampler, tracker.run_id, timeout=5.0)
        tracker.end(status)
        if tracker.run_id is not None:
            log.info("MLflow run %s: %s", tracker.run_id, ui_link(tracker.tracking_uri, tracker.experiment_id))


def _check_splits(store, cfg: Config) -> None:
    """Every split a run uses has clips (before training: testing comes at the end)."""
    for split in ("train", "val", "test"):
        if not len(store.indices(split)):
            fix = (f"add a {split!r} list to data.split_files" if cfg.data.split_files else
                   f"raise data.{split}_fraction" if split != "train" else "lower data.val_fraction + data.test_fraction")
            raise DataError(f"the {split} split of {Path(store.path).name} has no clip: {fix}")


def _train_epoch(net, loader, optimizer, scaler, augment, device, amp, ctx, max_batches, heartbeat,
                 step_schedule=None) -> float:
    net.train()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for step, (x, y) in enumerate(loader):
        if max_batches is not None and step >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if augment is not None:
            x = augment(x)
        with _autocast(device, amp):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        if ctx.any(not bool(torch.isfinite(loss))):
            raise NonFiniteLoss(f"non-finite training loss ({loss.item()}) at step {step}: lower optim.lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if step_schedule is not None:
            step_schedule()
        if heartbeat is not None:
            heartbeat()
        total += torch.stack([loss.detach().double() * y.shape[0], torch.tensor(float(y.shape[0]), device=device, dtype=torch.float64)])
    ctx.all_reduce_sum(total)
    return float(total[0] / max(total[1], 1))


def log_frontends(tracker, model: AdaSTFTClassifier, which: str, formats: Sequence[str], plots_too: bool = True) -> None:
    """Log each front end's window and kernel as ``tensors/[frontendI_]{window,kernel}_<which>``
    in ``formats`` (``npy``, ``pt``) and, with ``plots_too``, its window and kernel-change plots as
    ``plots/[frontendI_]*.png``."""
    if isinstance(tracker, NullTracker):
        return
    fronts = model.frontends()
    for i, front in enumerate(fronts):
        prefix = f"frontend{i}_" if len(fronts) > 1 else ""
        tracker.log_tensor(f"{prefix}window_{which}", front.window, formats=formats)
        tracker.log_tensor(f"{prefix}kernel_{which}", front.kernel, formats=formats)
        if plots_too:
            tracker.log_figure(plots.plot_window(front.window, front.initial_window, title=f"{prefix}window ({which})"),
                               f"plots/{prefix}window.png")
            tracker.log_figure(plots.plot_kernel_change(front.kernel, front.initial_kernel,
                                                        title=f"{prefix}kernel change ({which})"),
                               f"plots/{prefix}kernel_change.png")


def _finish(cfg, model, store, device, ctx, tracker, history, amp, durable, timer: PhaseTimer) -> dict[str, float]:
    """Test split with the best checkpoint; artifacts (rank 0): tensors, plots, config, model."""
    out_dir = Path(cfg.train.out_dir)
    log_frontends(tracker, model, "last", cfg.tracking.tensor_formats, plots_too=False)  # before the best weights replace them
    best_path = out_dir / "best.pt"
    ctx.barrier()
    best = load_checkpoint(best_path, map_location=device) if best_path.exists() else None
    if best is not None:
        model.load_state_dict(best["model"])
    with timer.phase("eval"):
        # every part, whatever data.eval_parts: the test runs once, and its number is the one compared
        test = evaluate(model, store, "test", cfg.data.parts, cfg.data.eval_batch_size, device, ctx, cfg.data.vote, amp)
    results = {**test.metrics("test"), "best_val_clip_accuracy": max(h["val_clip_accuracy"] for h in history)}
    if not ctx.is_main:
        return results
    tracker.log_metrics(results, step=len(history))
    if best is not None:
        save_checkpoint({"model": best["model"], "config": cfg.to_dict(), "classes": list(store.classes),
                         "epoch": best["epoch"]}, out_dir / "best_model.pt", durable=durable)
    if isinstance(tracker, NullTracker):
        return results
    log_frontends(tracker, model, "best", cfg.tracking.tensor_formats)
    if best is not None:
        tracker.log_figure(plots.plot_confusion(best["val_confusion"].numpy(), store.classes, "validation (best epoch)"),
                           "plots/confusion_val_best.png")
    tracker.log_figure(plots.plot_confusion(test.confusion, store.classes, "test (best checkpoint)"),
                       "plots/confusion_test.png")
    tracker.log_figure(plots.plot_curves(history), "plots/learning_curves.png")
    tracker.log_dict(cfg.to_dict(), "config.yaml")
    if (out_dir / "best_model.pt").exists():
        tracker.log_artifact(out_dir / "best_model.pt", "checkpoint")
    if cfg.tracking.log_model:
        uri = tracker.log_model(model.cpu(), name="best_model")
        if uri:
            tracker.set_tags({"best_model_uri": uri})
        model.to(device)
    return results
