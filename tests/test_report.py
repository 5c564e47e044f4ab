"""What a trial reports to the scheduler and Optuna (--report), checked by hand."""

from __future__ import annotations

import pytest

from tune.report import Objective, reported_curve, reported_key


def test_reported_values_by_mode():
    raw = [0.2, 0.6, 0.4, 0.5]
    assert reported_curve(raw, "max", "last") == raw
    assert reported_curve(raw, "max", "best") == [0.2, 0.6, 0.6, 0.6]
    assert reported_curve([3.0, 1.0, 2.0], "min", "best") == [3.0, 1.0, 1.0]
    # weight 0.5 on the newest epoch: 0.2; 0.4; 0.4; 0.45
    assert reported_curve(raw, "max", "ema") == pytest.approx([0.2, 0.4, 0.4, 0.45])
    assert (reported_key("val_clip_accuracy", "last"), reported_key("val_loss", "ema")) == (
        "val_clip_accuracy",
        "ema_val_loss",
    )
    with pytest.raises(ValueError, match="report must be one of last, best, ema, got 'mean'"):
        reported_key("val_loss", "mean")


def test_a_retried_trial_continues_its_curve_and_keeps_the_raw_value():
    history = [{"val_clip_accuracy": 0.2}, {"val_clip_accuracy": 0.6}]
    objective = Objective("val_clip_accuracy", "max", "ema").seed(history)
    reported = objective.add({"val_clip_accuracy": 0.4, "epoch": 2.0})
    assert reported == {"val_clip_accuracy": 0.4, "epoch": 2.0, "ema_val_clip_accuracy": pytest.approx(0.4)}
    assert Objective("val_loss", "min", "last").add({"val_loss": 1.0}) == {"val_loss": 1.0}
