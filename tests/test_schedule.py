"""The learning-rate schedules: warm-up + cosine by the step, ExponentialLR by the epoch."""

from __future__ import annotations

import math

import pytest
import torch

from adastft.schedule import build_scheduler, check_schedule, warmup_cosine


def test_warmup_cosine_factors():
    # 2 warm-up steps of 10: 1/2, 2/2, then the cosine from 1 to 0 over the 8 steps left
    assert [warmup_cosine(s, 2, 10) for s in (0, 1)] == [0.5, 1.0]
    assert warmup_cosine(2, 2, 10) == 1.0
    assert warmup_cosine(6, 2, 10) == pytest.approx(0.5)
    assert warmup_cosine(10, 2, 10) == pytest.approx(0.0)
    assert warmup_cosine(3, 0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 10)))


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_cosine_runs_per_step_and_resumes_from_its_state():
    opt = _optimizer()
    sched, per_step = build_scheduler(opt, "cosine", gamma=0.5, warmup_epochs=1, epochs=3, steps_per_epoch=4)
    assert per_step
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])  # warm-up over the first epoch's 4 steps
    assert lrs[4] == pytest.approx(0.1) and lrs[8] == pytest.approx(0.05) and lrs[11] < 0.01  # cosine over 8
    # a run resumed from a checkpoint continues where it was
    state = sched.state_dict()
    opt2 = _optimizer()
    sched2, _ = build_scheduler(opt2, "cosine", gamma=0.5, warmup_epochs=1, epochs=3, steps_per_epoch=4)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_warmup_takes_at_most_half_the_run():
    opt = _optimizer()
    sched, _ = build_scheduler(opt, "cosine", gamma=0.5, warmup_epochs=1, epochs=1, steps_per_epoch=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.05])  # 2 steps up, 2 down


def test_exponential_is_per_epoch_by_gamma():
    opt = _optimizer()
    sched, per_step = build_scheduler(opt, "exponential", gamma=0.5, warmup_epochs=0, epochs=3, steps_per_epoch=4)
    assert not per_step and isinstance(sched, torch.optim.lr_scheduler.ExponentialLR)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match=r"schedule must be one of exponential, cosine, got 'step'"):
        build_scheduler(opt, "step", gamma=0.5, warmup_epochs=0, epochs=3, steps_per_epoch=4)
    with pytest.raises(
        ValueError,
        match=r"warmup_epochs=1 needs schedule=cosine \(the exponential schedule has no "
        r"warm-up\): set schedule=cosine or warmup_epochs=0",
    ):
        build_scheduler(opt, "exponential", gamma=0.5, warmup_epochs=1, epochs=3, steps_per_epoch=4)
    with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\], got 1.5"):
        check_schedule("exponential", gamma=1.5, warmup_epochs=0)  # what a config check calls: no optimiser
