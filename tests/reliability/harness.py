"""Helpers of the reliability suite: the record of a case, tiny configurations, real
subprocesses, and a real MLflow server on loopback (fixtures are in ``conftest.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SEARCH = REPO / "tune" / "search.py"
sys.path.insert(0, str(HERE.parent))  # data_helpers
sys.path.insert(0, str(HERE))  # kill_targets (imported by forked training processes)

from mlflow_server import MlflowServer as _MlflowServer, free_port  # noqa: E402,F401  (tests/ is on sys.path now)


# ---- fault records -----------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    tried: int = 0
    survived: int = 0
    lost: int = 0
    notes: list[str] = field(default_factory=list)

    def fault(self, survived: bool, lost: int = 0, note: str = "") -> None:
        """One injected fault or bad input: whether every claim held after it, and results lost."""
        self.tried += 1
        self.survived += bool(survived)
        self.lost += lost
        if note:
            self.notes.append(note)


# ---- processes ---------------------------------------------------------------------------------


def env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout's code first, whatever is installed."""
    out = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "MPLBACKEND": "Agg",
        "PYTHONUNBUFFERED": "1",
    }
    out.update(extra)
    return out


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child started with ``start_new_session=True`` and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# ---- tiny configurations ------------------------------------------------------------------------


def tiny(
    tmp_path: Path, epochs: int = 2, tracking_uri: str | None = None, experiment: str = "reliability"
) -> list[str]:
    """Hydra overrides for a run of about a second per epoch on one CPU core."""
    uri = tracking_uri or f"sqlite:///{tmp_path}/mlflow.db"
    return [
        "data=synthetic",
        "data.sample_rate=8000",
        "data.clip_seconds=2.0",
        "data.synthetic_clips_per_class=4",
        "data.parts=2",
        "data.crops_per_clip=1",
        "data.batch_size=8",
        "data.time_mask_frames=2",
        "data.freq_mask_bins=4",
        f"data.cache_dir={tmp_path}/cache",
        "stft.n_fft=256",
        "stft.hop_length=128",
        "stft.n_mels=32",
        f"train.epochs={epochs}",
        f"tracking.uri={uri}",
        f"tracking.experiment={experiment}",
        "tracking.log_model=false",
    ]


def tiny_dict(tmp_path: Path, epochs: int = 2, **sections) -> dict:
    """The same run as a mapping for ``adastft.training.train``, tracking off unless given."""
    cfg = {
        "name": "reliability",
        "data": {
            "source": "synthetic",
            "cache_dir": str(tmp_path / "cache"),
            "sample_rate": 8000,
            "clip_seconds": 2.0,
            "synthetic_clips_per_class": 4,
            "parts": 2,
            "crops_per_clip": 1,
            "batch_size": 8,
            "time_mask_frames": 2,
            "freq_mask_bins": 4,
        },
        "stft": {"n_fft": 256, "hop_length": 128, "n_mels": 32},
        "optim": {"lr": 1e-3},
        "train": {"epochs": epochs, "out_dir": str(tmp_path / "run"), "threads": 1},
        "tracking": {"enabled": False},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def space_file(
    tmp_path: Path, space: dict | None = None, points: list[dict] | None = None, name: str = "space.yaml"
) -> Path:
    path = tmp_path / name
    path.write_text(
        yaml.safe_dump(
            {
                "metric": "val_loss",
                "mode": "min",
                "seed": 0,
                "n_startup_trials": 2,
                "space": space
                or {
                    "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
                    "stft.learn_window": {"type": "categorical", "choices": [True, False]},
                },
                "points_to_evaluate": points or [],
            }
        )
    )
    return path


def search_cmd(*args: str) -> list[str]:
    return [sys.executable, str(SEARCH), *args]


# ---- a real MLflow server on loopback ---------------------------------------------------------


class MlflowServer(_MlflowServer):
    """The suite's server: artifacts proxied as on a cluster, stopped as a crash (SIGKILL), started
    with the suite's environment."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, artifacts="proxied", crash=True, env=env())
