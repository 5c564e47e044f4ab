"""What every trial of a study is told: :class:`StudySettings`, plain typed data.

Built once by the driver (``tune/driver.py`` ``study_settings``) after Ray started and the study's
state and MLflow parent run are known, then handed to the trainable (``ray.tune.with_parameters``),
to a DDP trial's workers (``train_loop_config``), to the callbacks that close trials' MLflow runs
and to the summaries. Module-level and plain fields, so it pickles the same way in every Ray
process; no Ray import here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class StudySettings:
    """What every trial of a study is told: built once by the driver (``tune/driver.py``), pickled
    by Ray to each trial and DDP worker. Frozen: a trial cannot change what the others see."""

    name: str
    """The study's ``--name``: its folder under the storage and its MLflow parent run's name."""
    work_key: str
    """Names the trials' working folders on each node (``<temp>/adastft-trials/<work_key>``): the
    name plus a random id kept in the study's state file, so two studies of one name never share."""
    notes_dir: str
    """Folder of the study's notes: a watchdog's message, a diverged trial's marker, DDP beats."""
    storage_path: str
    """The study's ``--storage`` root (a local folder or a URI such as ``s3://bucket/path``)."""
    parent_run_id: str | None = None
    """The study's MLflow parent run; ``None`` with tracking off."""
    tracking_uri: str | None = None
    """Where the trials' MLflow runs are (the base config's ``tracking.uri``)."""
    experiment: str = "adastft"
    """The MLflow experiment of the study's runs."""
    stall_timeout_s: float = 900.0
    """Seconds without a finished training step before a trial is stopped (``0``: never)."""
    workers: int = 1
    """Processes per trial: 1 runs ``train`` in the trial's process, more a DDP job of that many."""
    cpus_per_worker: float = 1.0
    """CPUs each worker (the trial's one process, or each DDP worker) asks Ray for."""
    gpus_per_worker: float = 0.0
    """GPUs each worker asks Ray for; a fraction packs trials on one GPU."""
    max_failures: int = 2
    """Retries of a failed trial (a DDP job: of its workers) from its last checkpoint."""
    custom_resources: Mapping[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker also needs (``--trial-resource spot=1``)."""
    metric: str | None = None
    """The search's metric (``val_clip_accuracy``); ``None`` for a comparison, which ranks nothing."""
    mode: str | None = None
    """``max`` or ``min``: which way :attr:`metric` improves."""
    report: str = "last"
    """What a trial reports to the scheduler and Optuna: ``last``, ``best`` or ``ema`` (``tune/report.py``)."""

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "custom_resources": dict(self.custom_resources)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StudySettings":
        """From :meth:`to_dict`'s output, or the dict a study's pickled callbacks held before this
        class existed (``ray.tune.Tuner.restore`` of a study begun then: its keys are these fields)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown study settings {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        return cls(**data)
