"""MLflow tracking for training runs, safe to use from many runs in one process.

- :mod:`~adastft.tracking.tracker`: :class:`Tracker`, one MLflow run.
- :mod:`~adastft.tracking.protocol`: :class:`RunTracker`, what training and the search may ask of
  a tracker, and :class:`NullTracker`, which records nothing.
- :mod:`~adastft.tracking.batch_queue`: params, metrics and tags queued in memory while the store
  cannot take them, sent through ``MlflowClient.log_batch``.
- :mod:`~adastft.tracking.uri`: the tracking URI, its store, the check before a run, the
  experiment's id, the link to the UI.
- :mod:`~adastft.tracking.server`: whether a tracking server answers, within a bounded time.
- :mod:`~adastft.tracking.redact`: params flattened, secrets redacted.
- :mod:`~adastft.tracking.system_metrics`: MLflow's sampler of CPU, memory and GPU use.

Example::

    check_tracking_uri(uri)  # before any training: fails in seconds if the store is unusable
    with Tracker(uri, "gtzan", run_name="trial-3", parent_run_id=parent) as tracker:
        tracker.log_params(cfg)
        for epoch in range(epochs):
            tracker.log_metrics({"train.loss": loss, "val.acc": acc}, step=epoch)
        tracker.log_model(model)
"""

from adastft.tracking.redact import REDACTED, environment_secrets, flatten, redact, redact_text
from adastft.tracking.system_metrics import start_system_metrics, stop_system_metrics
from adastft.tracking.protocol import NullTracker, RunTracker
from adastft.tracking.tracker import PARENT_RUN_TAG, Tracker
from adastft.tracking.uri import (
    TrackingUnavailable,
    check_tracking_uri,
    damaged_store_fix,
    default_tracking_uri,
    experiment_id,
    open_client,
    sqlite_damage,
    ui_link,
)

__all__ = [
    "PARENT_RUN_TAG",
    "REDACTED",
    "NullTracker",
    "RunTracker",
    "Tracker",
    "TrackingUnavailable",
    "check_tracking_uri",
    "damaged_store_fix",
    "default_tracking_uri",
    "environment_secrets",
    "experiment_id",
    "flatten",
    "open_client",
    "redact",
    "redact_text",
    "sqlite_damage",
    "start_system_metrics",
    "stop_system_metrics",
    "ui_link",
]
