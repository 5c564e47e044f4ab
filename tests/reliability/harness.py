"""Helpers of the reliability suite: the record of a case, tiny configurations, real
subprocesses, and a real MLflow server on loopback (fixtures are in ``conftest.py``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SEARCH = REPO / "tune" / "search.py"
sys.path.insert(0, str(HERE.parent))  # data_helpers
sys.path.insert(0, str(HERE))  # kill_targets (imported by forked training processes)


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
    out = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- tiny configurations ------------------------------------------------------------------------


def tiny(tmp_path: Path, epochs: int = 2, tracking_uri: str | None = None, experiment: str = "reliability") -> list[str]:
    """Hydra overrides for a run of about a second per epoch on one CPU core."""
    uri = tracking_uri or f"sqlite:///{tmp_path}/mlflow.db"
    return [
        "data=synthetic", "data.sample_rate=8000", "data.clip_seconds=2.0", "data.synthetic_clips_per_class=4",
        "data.parts=2", "data.batch_size=8", "data.time_mask_frames=2", "data.freq_mask_bins=4",
        f"data.cache_dir={tmp_path}/cache", "stft.n_fft=256", "stft.hop_length=128", "stft.n_mels=32",
        f"train.epochs={epochs}", f"tracking.uri={uri}", f"tracking.experiment={experiment}",
        "tracking.log_model=false",
    ]


def tiny_dict(tmp_path: Path, epochs: int = 2, **sections) -> dict:
    """The same run as a mapping for ``adastft.training.train``, tracking off unless given."""
    cfg = {
        "name": "reliability",
        "data": {"source": "synthetic", "cache_dir": str(tmp_path / "cache"), "sample_rate": 8000,
                 "clip_seconds": 2.0, "synthetic_clips_per_class": 4, "parts": 2, "batch_size": 8,
                 "time_mask_frames": 2, "freq_mask_bins": 4},
        "stft": {"n_fft": 256, "hop_length": 128, "n_mels": 32},
        "optim": {"lr": 1e-3},
        "train": {"epochs": epochs, "out_dir": str(tmp_path / "run"), "threads": 1},
        "tracking": {"enabled": False},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def space_file(tmp_path: Path, space: dict | None = None, points: list[dict] | None = None,
               name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({
        "metric": "val_loss", "mode": "min", "seed": 0, "n_startup_trials": 2,
        "space": space or {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
                           "stft.learn_window": {"type": "categorical", "choices": [True, False]}},
        "points_to_evaluate": points or [],
    }))
    return path


def search_cmd(*args: str) -> list[str]:
    return [sys.executable, str(SEARCH), *args]


# ---- a real MLflow server on loopback ---------------------------------------------------------


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend; stop() and start() keep port and store."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.store = f"sqlite:///{folder}/server.db"
        self.artifacts = folder / "server-artifacts"
        self.log = folder / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: float = 120.0) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", self.store, "--artifacts-destination", str(self.artifacts),
               "--serve-artifacts"]
        with open(self.log, "ab") as out:
            # Its job runner (GenAI scorers) doubles the start time and is not needed here.
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.uri}/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer in {wait:g} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)  # gone at once, as a crashed server is
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the port must really be closed
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)


