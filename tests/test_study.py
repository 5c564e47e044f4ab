"""What a study hands its trials: one typed settings object, and a trial config validated once.

Fast: no Ray runtime, no training; the Ray-side callback is unpickled, not run.
"""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from adastft.config import Config
from tune.cluster_checks import TrialPlan
from tune.study import StudySettings

# the dict a search's driver handed its trials and callbacks before StudySettings (tune/driver.py
# study_info): what the pickled callbacks of a study begun then still hold
OLD_STUDY = {
    "name": "s",
    "parent_run_id": "abc",
    "experiment": "adastft",
    "tracking_uri": "sqlite:////x/mlflow.db",
    "notes_dir": "/x/s/notes",
    "stall_timeout_s": 900.0,
    "storage_path": "/x",
    "workers": 1,
    "cpus_per_worker": 1.0,
    "gpus_per_worker": 0.0,
    "max_failures": 2,
    "work_key": "s-0123abcd",
    "custom_resources": {},
    "metric": "val_clip_accuracy",
    "mode": "max",
    "report": "ema",
}


def test_study_settings_round_trip_and_read_the_old_dict():
    study = StudySettings.from_dict(OLD_STUDY)
    assert study.to_dict() == OLD_STUDY
    assert pickle.loads(pickle.dumps(study)) == study
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown study settings bogus"):
        StudySettings.from_dict({**OLD_STUDY, "bogus": 1})
    # a comparison's settings name no metric: its trials report the raw values
    compare = StudySettings.from_dict({k: v for k, v in OLD_STUDY.items() if k not in ("metric", "mode", "report")})
    assert (compare.metric, compare.mode, compare.report) == (None, None, "last")


def test_a_callback_pickled_by_a_study_begun_before_the_dataclass_resumes_with_it():
    """``Tuner.restore`` unpickles the run config's callbacks from the study's start."""
    from tune.summary import TrialRunCallback

    old = TrialRunCallback.__new__(TrialRunCallback)
    old.__dict__.update(study=dict(OLD_STUDY), max_epochs=3)  # as that code's __init__ left it
    restored = pickle.loads(pickle.dumps(old))
    assert restored.study == StudySettings.from_dict(OLD_STUDY) and restored.max_epochs == 3
    new = pickle.loads(pickle.dumps(TrialRunCallback(StudySettings.from_dict(OLD_STUDY), 5)))
    assert new.study == StudySettings.from_dict(OLD_STUDY) and new.max_epochs == 5


def test_a_trials_config_is_validated_once_from_the_composed_base(tmp_path, monkeypatch):
    """The driver's path, device and thread changes keep the validated base as it is; the trial
    merges its sampled values in and validates that, once, and sets where it writes and logs."""
    from tune.driver import for_trials
    from tune.settings import absolutise
    from tune.trainable import TRIAL_TAG, trial_config

    base = Config.from_dict(
        {"tracking": {"enabled": True, "uri": None}, "data": {"source": "folder", "root": "~/music"}}
    )
    validated = []
    check = Config.validate
    monkeypatch.setattr(Config, "validate", lambda self: validated.append(self) or check(self))
    base = for_trials(absolutise(base, tmp_path), TrialPlan(cpus=2.0, gpus=0.0, workers=1, concurrent=1))
    assert validated == []
    assert base.data.cache_dir == str((tmp_path / ".cache/adastft").resolve())
    assert base.data.root.endswith("/music") and base.data.root.startswith("/")
    assert base.tracking.uri and (base.train.device, base.train.threads) == ("cpu", 2)

    study = StudySettings(
        name="s",
        work_key="s-0123abcd",
        notes_dir=str(tmp_path / "notes"),
        storage_path=str(tmp_path),
        tracking_uri=base.tracking.uri,
    )
    cfg = trial_config({"optim.lr": 0.01, "stft.learn_kernel": True}, base, study, "t1", tmp_path / "t1")
    assert len(validated) == 1
    assert cfg.optim.lr == 0.01 and cfg.stft.learn_kernel and not base.stft.learn_kernel
    assert (cfg.train.out_dir, cfg.train.resume, cfg.train.threads) == (str(tmp_path / "t1"), True, 2)
    assert (cfg.tracking.run_name, cfg.tracking.parent_run_id, cfg.tracking.run_id) == ("s-t1", None, None)
    assert cfg.tracking.tags[TRIAL_TAG] == "t1" and cfg.tracking.tags["study"] == "s"
    assert TRIAL_TAG not in base.tracking.tags  # the base every trial starts from is untouched
    check(cfg)  # what the trial sets as it is makes a valid config
