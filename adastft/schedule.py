"""Learning-rate schedules: ExponentialLR per epoch (the original's), or warm-up + cosine per step.

    scheduler, per_step = build_scheduler(optimizer, "cosine", gamma=0.99, warmup_epochs=1,
                                          epochs=30, steps_per_epoch=60)
    # per_step: call scheduler.step() after every optimiser step; else once per epoch

Both are torch schedulers, so their state goes into a checkpoint and a resumed run continues the
schedule where it was.
"""

from __future__ import annotations

import math

import torch

from adastft.checks import need, one_of


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """The factor on the base learning rate at optimiser step ``step`` (0-based): linear from
    ``1 / warmup_steps`` to 1 over the first ``warmup_steps`` steps, then half a cosine down to 0
    at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, decay) / decay))


SCHEDULES = ("exponential", "cosine")


def check_schedule(schedule: str, gamma: float, warmup_epochs: float) -> None:
    """The arguments :func:`build_scheduler` takes from a config, checked without an optimiser."""
    one_of("schedule", schedule, SCHEDULES)
    need(isinstance(gamma, (int, float)) and 0 < gamma <= 1, f"gamma must be in (0, 1], got {gamma!r}")
    need(
        isinstance(warmup_epochs, (int, float)) and warmup_epochs >= 0,
        f"warmup_epochs must be >= 0, got {warmup_epochs!r}",
    )
    need(
        not warmup_epochs or schedule == "cosine",
        f"warmup_epochs={warmup_epochs:g} needs schedule=cosine (the {schedule} schedule has no warm-up): "
        "set schedule=cosine or warmup_epochs=0",
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    gamma: float,
    warmup_epochs: float,
    epochs: int,
    steps_per_epoch: int,
) -> tuple[torch.optim.lr_scheduler.LRScheduler, bool]:
    """The scheduler ``schedule`` names (``exponential`` or ``cosine``) and whether it is stepped
    per optimiser step (cosine) rather than per epoch (exponential). The cosine's warm-up lasts
    ``warmup_epochs``, at most half of the ``epochs``; the decay reaches 0 at the end of ``epochs``."""
    check_schedule(schedule, gamma, warmup_epochs)
    if schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma), False
    steps_per_epoch = max(int(steps_per_epoch), 1)
    total = epochs * steps_per_epoch
    # at most half the run: a short run (a smoke test, a search's 1-epoch trial) still decays
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total // 2)

    def factor(step: int) -> float:
        return warmup_cosine(step, warmup, total)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True
