"""MLflow's own sampler of CPU, memory, disk, network and GPU use, for a run made with ``MlflowClient``.

Example::

    monitor = start_system_metrics(run_id, tracking_uri, interval=2.0, resume=False)
    ...  # train
    stop_system_metrics(monitor, run_id, timeout=5.0)
"""

from __future__ import annotations

import logging
import socket
import threading

from adastft.tracking.redact import RedactingFilter, short_error

log = logging.getLogger(__name__)

_SAMPLER_LOGGER = "mlflow.system_metrics.system_metrics_monitor"


def start_system_metrics(run_id: str, tracking_uri: str, interval: float, resume: bool):
    """Start MLflow's own sampler of CPU, memory, disk, network and (with ``nvidia-ml-py``) GPU use, as
    ``mlflow.start_run(log_system_metrics=True)`` starts it, here for a run made with
    ``MlflowClient`` (``start_run`` would set the process-global active run). Its metrics are
    ``system/<node>/...``, the node being this machine's host name unless
    ``$MLFLOW_SYSTEM_METRICS_NODE_ID`` names it; ``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
    overrides ``interval``. ``None`` when ``interval`` is 0 or the monitor cannot start.

    The sampler logs the store's errors as they are, and they name the tracking URI, password
    included: its logger gets a filter that redacts them like ours.
    """
    if interval <= 0:
        return None
    monitor_log = logging.getLogger(_SAMPLER_LOGGER)
    if not any(isinstance(f, RedactingFilter) for f in monitor_log.filters):
        monitor_log.addFilter(RedactingFilter())
    try:
        # Not in MLflow's API reference: its documented switch, mlflow.start_run(log_system_metrics=True),
        # needs the process-global tracking URI and active run. A change of this class shows in
        # tests/test_system_metrics.py, and costs the run its system metrics only (the warning below).
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id,
            sampling_interval=interval,
            resume_logging=resume,
            node_id=socket.gethostname(),
            tracking_uri=tracking_uri,
        )
        monitor.start()
        return monitor
    except Exception as err:  # noqa: BLE001 - nice to have: the run goes on without them
        log.warning("no system metrics for MLflow run %s: %s", run_id, short_error(err))
        return None


def stop_system_metrics(monitor, run_id: str, timeout: float) -> None:
    """Stop the sampler and send its last points, waiting at most ``timeout`` seconds: against a
    server that went away its client retries for minutes, and ending the run must not wait."""
    if monitor is None:
        return
    stopper = threading.Thread(target=monitor.finish, name="adastft-system-metrics-stop", daemon=True)
    stopper.start()
    stopper.join(timeout)
    if stopper.is_alive():
        log.warning("system metrics of MLflow run %s: the last points were not sent within %g s", run_id, timeout)
