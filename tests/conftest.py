"""Every process a test starts (the command lines, Ray's workers, the cluster's nodes) imports the
checkout under test: its root goes first on ``PYTHONPATH`` for the whole session. Without it a
command started outside the checkout would import whichever ``adastft`` pip last installed (or
none, on a machine where the editable install points at a folder that is gone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its tables made once (that costs seconds): copy it to get a
    fresh real store."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path
