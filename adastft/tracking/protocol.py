"""What training and the search may ask of a run's tracker (:class:`RunTracker`), and the tracker
that records nothing (:class:`NullTracker`), held by DDP ranks other than 0 and by runs with
tracking off. ``tracker.active`` tells it from a recording :class:`~adastft.tracking.Tracker`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

STATUSES = ("FINISHED", "FAILED", "KILLED")


def check_status(status: str) -> None:
    """Refuse an end status MLflow does not have."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")


@runtime_checkable
class RunTracker(Protocol):
    """What training and the search use of a run's tracker. ``active``: whether it records."""

    active: bool
    run_id: str | None
    experiment_id: str | None
    tracking_uri: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def metric_steps(self, key: str) -> list[int]: ...
    def tag(self, key: str) -> str | None: ...
    def pending(self) -> dict[str, int]: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_dict(self, d: Mapping, artifact_file: str) -> None: ...
    def log_figure(self, fig, artifact_file: str) -> None: ...
    def log_tensor(
        self, name: str, tensor: torch.Tensor, artifact_dir: str = "tensors", formats: Sequence[str] = ("pt", "npy")
    ) -> None: ...
    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None: ...
    def log_model(self, model: torch.nn.Module, name: str = "best_model", step: int = 0) -> str | None: ...
    def model_artifact_uri(self, model_uri: str) -> str | None: ...
    def end(self, status: str = "FINISHED") -> None: ...
    def __enter__(self) -> RunTracker: ...
    def __exit__(self, exc_type, exc, tb) -> None: ...


class NullTracker:
    """A tracker that records nothing: for ranks other than 0 and for tracking off."""

    active = False
    run_id = None
    experiment_id = None
    tracking_uri = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_dict(self, d: Mapping, artifact_file: str) -> None: ...
    def log_tensor(
        self, name: str, tensor: torch.Tensor, artifact_dir: str = "tensors", formats: Sequence[str] = ("pt", "npy")
    ) -> None: ...
    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None: ...
    def log_model(self, model: torch.nn.Module, name: str = "best_model", step: int = 0) -> None: ...
    def model_artifact_uri(self, model_uri: str) -> None: ...

    def metric_steps(self, key: str) -> list[int]:
        return []

    def tag(self, key: str) -> None:
        return None

    def pending(self) -> dict[str, int]:
        return {"params": 0, "metrics": 0, "tags": 0}

    def log_figure(self, fig, artifact_file: str) -> None:
        import matplotlib.pyplot as plt

        plt.close(fig)  # the caller made it for us; do not leak it

    def end(self, status: str = "FINISHED") -> None:
        check_status(status)

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FINISHED" if exc_type is None else "FAILED")
