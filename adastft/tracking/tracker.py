""":class:`Tracker`: one MLflow run, as training and the search record it (it follows
:class:`~adastft.tracking.protocol.RunTracker`, like :class:`~adastft.tracking.protocol.NullTracker`).

It talks to the store only through an explicit ``MlflowClient(tracking_uri)``: no
``mlflow.start_run``, no active-run or tracking-URI globals, so several Ray trials in one process
and DDP ranks never see each other's runs. Rank 0 of a trial holds a ``Tracker``; every other
rank, and runs with tracking off, hold a ``NullTracker``; ``tracker.active`` tells them apart.

Params, metrics and tags never stop training: they go through a :class:`BatchQueue`, which keeps
what the store cannot take now (server down, database locked) and sends it later; what is still
unsent after :meth:`Tracker.end` is reported in one warning. Artifacts and models go through
MLflow's client as they are (with its own retries); their failures are logged, not raised.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

# MLflow's limits, as its REST API documents them (LogBatch: 1000 metrics, 100 params or tags;
# values of 6000 and 8000 characters), taken from the installed MLflow so that they follow it.
# mlflow.utils.validation is not in MLflow's API reference: if a release moves it, the documented
# values hold (tests/test_tracking_api.py pins both to the installed MLflow's).
try:
    from mlflow.utils.validation import (
        MAX_METRICS_PER_BATCH,
        MAX_PARAM_VAL_LENGTH,
        MAX_PARAMS_TAGS_PER_BATCH,
        MAX_TAG_VAL_LENGTH,
    )
except ImportError:  # pragma: no cover - a future MLflow
    MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH = 1000, 100, 6000, 8000

from adastft.tracking import uri as uris
from adastft.tracking.batch_queue import BatchQueue
from adastft.tracking.protocol import check_status
from adastft.tracking.redact import environment_secrets, flatten, redact, redact_text, redacted_copy, short_error
from adastft.tracking.server import answers, end_run
from adastft.tracking.system_metrics import start_system_metrics, stop_system_metrics

log = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"


class Tracker:
    """One MLflow run, created, nested under ``parent_run_id`` or resumed from ``run_id``.

    The experiment is created when missing (see :func:`adastft.tracking.uri.ensure_experiment`).
    Metrics: non-finite values (a diverged loss) are logged as they are; MLflow stores NaN as NaN
    and +-inf as +-1.8e308. Params and tags are flattened, truncated to MLflow's limits and
    redacted (:mod:`adastft.tracking.redact`). A context manager: leaving it ends the run FAILED
    on an exception, FINISHED otherwise.

    Against a server, ``request_timeout`` bounds each question to it (is it up? the run's end
    status) and ``retry_interval`` spaces the tries while it is down; ``end`` waits at most
    ``flush_timeout`` for a batch that an outage caught mid-request. Creating or resuming the run
    goes through MLflow's client with its own (long) retries: call
    :func:`adastft.tracking.check_tracking_uri` first so that a dead server fails in seconds.

    Example::

        with Tracker(uri, "gtzan", run_name="trial-3", parent_run_id=parent) as tracker:
            tracker.log_params(cfg)
            tracker.log_metrics({"train.loss": loss, "val.acc": acc}, step=epoch)
    """

    active = True

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        artifact_root: str | None = None,
        request_timeout: float = 5.0,
        retry_interval: float = 10.0,
        system_metrics_interval: float = 0.0,
        flush_timeout: float = 60.0,
    ) -> None:
        if not system_metrics_interval >= 0:
            raise ValueError(f"system_metrics_interval must be >= 0 seconds (0: off), got {system_metrics_interval!r}")
        self.tracking_uri = tracking_uri
        self.request_timeout = float(request_timeout)
        self.flush_timeout = float(flush_timeout)
        self._client = uris.open_client(tracking_uri)
        self._secrets = environment_secrets()
        self._ended = False
        if run_id is not None:
            run = self._client.get_run(run_id)
            self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
            if run.info.status != "RUNNING":
                self._client.update_run(run_id, status="RUNNING")
            log.info("resumed MLflow run %s (was %s)", run_id, run.info.status)
        else:
            self.experiment_id, self.run_id = self._create_run(experiment, run_name, tags, parent_run_id, artifact_root)
        server = tracking_uri.rstrip("/") if uris.is_server(tracking_uri) else None
        self._queue = BatchQueue(
            self._client,
            self.run_id,
            retry_interval=retry_interval,
            probe=None if server is None else lambda: answers(server, self.request_timeout),
            stall_after=self.request_timeout,
        )
        if tags and run_id is not None:
            self.set_tags(tags)
        self._monitor = start_system_metrics(
            self.run_id, tracking_uri, system_metrics_interval, resume=run_id is not None
        )

    def _create_run(
        self,
        experiment: str,
        run_name: str | None,
        tags: Mapping[str, str] | None,
        parent_run_id: str | None,
        artifact_root: str | None,
    ) -> tuple[str, str]:
        """A new run: ``(experiment id, run id)``."""
        remembered = uris.is_remembered(self.tracking_uri, experiment)
        experiment_id = uris.ensure_experiment(self._client, self.tracking_uri, experiment, artifact_root)
        run_tags = _context_tags()
        run_tags.update({k: redact(k, str(v), self._secrets) for k, v in (tags or {}).items()})
        if parent_run_id is not None:
            run_tags[PARENT_RUN_TAG] = parent_run_id
        try:
            run = self._client.create_run(experiment_id, tags=run_tags, run_name=run_name)
        except MlflowException:
            if not remembered:
                raise
            # the remembered experiment was deleted (or its store replaced) since: look again
            uris.forget_experiment(self.tracking_uri, experiment)
            experiment_id = uris.ensure_experiment(self._client, self.tracking_uri, experiment, artifact_root)
            run = self._client.create_run(experiment_id, tags=run_tags, run_name=run_name)
        log.info(
            "MLflow run %s (%s) in experiment %r at %s",
            run.info.run_id,
            run.info.run_name,
            experiment,
            redact_text(self.tracking_uri, self._secrets),
        )
        return experiment_id, run.info.run_id

    # ---- params, metrics, tags: queued, never raising ---------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flatten, redact, truncate to 6000 characters and log in batches of 100."""
        entities = [
            Param(k, redact(k, str(v), self._secrets)[:MAX_PARAM_VAL_LENGTH]) for k, v in flatten(params).items()
        ]
        self._put("params", entities, MAX_PARAMS_TAGS_PER_BATCH)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``{name: value}`` at ``step`` (stamped now, whenever it reaches the store)."""
        now = int(time.time() * 1000)
        entities = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        self._put("metrics", entities, MAX_METRICS_PER_BATCH)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (redacted, truncated to 8000 characters)."""
        entities = [RunTag(k, redact(k, str(v), self._secrets)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
        self._put("tags", entities, MAX_PARAMS_TAGS_PER_BATCH)

    def _put(self, kind: str, entities: list, batch_size: int) -> None:
        if self._ended:
            log.warning("MLflow run %s has ended; %d %s not logged", self.run_id, len(entities), kind)
            return
        self._queue.put(kind, entities, batch_size)

    def pending(self) -> dict[str, int]:
        """How many params, metrics and tags wait in memory to be sent."""
        return self._queue.pending()

    def metric_steps(self, key: str) -> list[int]:
        """The steps at which ``key`` has reached the store for this run ([] if the store cannot say)."""
        try:
            return [m.step for m in self._client.get_metric_history(self.run_id, key)]
        except Exception as err:  # noqa: BLE001 - a question to the store must not end training
            log.warning("could not read the history of %s from MLflow run %s: %s", key, self.run_id, short_error(err))
            return []

    def tag(self, key: str) -> str | None:
        """The run's tag ``key`` as the store has it (None if unset or the store cannot say)."""
        try:
            return self._client.get_run(self.run_id).data.tags.get(key)
        except Exception as err:  # noqa: BLE001
            log.warning("could not read the tags of MLflow run %s: %s", self.run_id, short_error(err))
            return None

    # ---- artifacts: through MlflowClient, failures logged ------------------------------------

    def _artifact(self, what: str, call, *args) -> bool:
        try:
            call(self.run_id, *args)
            return True
        except Exception as err:  # noqa: BLE001 - a lost artifact must not end training
            log.error("could not log %s to MLflow run %s: %s", what, self.run_id, redact_text(str(err)), exc_info=True)
            return False

    def log_text(self, text: str, artifact_file: str) -> None:
        """Write ``text`` (secrets redacted) as the artifact ``artifact_file``."""
        self._artifact(artifact_file, self._client.log_text, redact("", text, self._secrets), artifact_file)

    def log_dict(self, d: Mapping, artifact_file: str) -> None:
        """Write ``d`` as YAML (``.yaml``/``.yml``) or JSON (any other suffix); secrets redacted."""
        clean = json.loads(redact("", json.dumps(d, default=str), self._secrets))
        self._artifact(artifact_file, self._client.log_dict, clean, artifact_file)

    def log_figure(self, fig, artifact_file: str) -> None:
        """Save a matplotlib figure as ``artifact_file`` (format from the suffix), then close it."""
        import matplotlib.pyplot as plt

        try:
            self._artifact(artifact_file, self._client.log_figure, fig, artifact_file)
        finally:
            plt.close(fig)

    def log_tensor(
        self, name: str, tensor: torch.Tensor, artifact_dir: str = "tensors", formats: Sequence[str] = ("pt", "npy")
    ) -> None:
        """Write ``<artifact_dir>/<name>.pt`` (``torch.save``) and/or ``<name>.npy`` (bfloat16 as float32)."""
        tensor = tensor.detach().cpu()
        with tempfile.TemporaryDirectory() as tmp:
            if "pt" in formats:
                torch.save(tensor, Path(tmp) / f"{name}.pt")
            if "npy" in formats:
                array = tensor.float() if tensor.dtype == torch.bfloat16 else tensor
                np.save(Path(tmp) / f"{name}.npy", array.numpy())
            self._artifact(f"tensor {name}", self._client.log_artifacts, tmp, artifact_dir)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Copy one local file into the run's artifacts (under ``artifact_path``); a text file
        (``.yaml``, ``.json``, ``.csv``, ``.txt``, ...) is redacted like params on the way."""
        with tempfile.TemporaryDirectory() as tmp:
            path = redacted_copy(Path(local_path), Path(tmp), self._secrets)
            self._artifact(str(local_path), self._client.log_artifact, str(path), artifact_path)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Copy a local folder's contents into the run's artifacts (under ``artifact_path``), its
        text files redacted like params."""
        with tempfile.TemporaryDirectory() as tmp:
            path = redacted_copy(Path(local_dir), Path(tmp), self._secrets)
            self._artifact(str(local_dir), self._client.log_artifacts, str(path), artifact_path)

    def log_model(self, model: torch.nn.Module, name: str = "best_model", step: int = 0) -> str | None:
        """Log ``model`` as an MLflow 3 LoggedModel of this run; returns ``models:/<model_id>``.

        Pickled (``serialization_format="pickle"``: MLflow 3's default ``pt2`` needs an input
        example), with pinned ``torch``/``cloudpickle`` requirements (no pip inference subprocess)
        and no signature (no inference). ``mlflow.pytorch.log_model`` is not used because it
        resolves the store from the global tracking URI. Load with
        ``mlflow.pytorch.load_model(uri)`` once that URI points at this store, or from
        :meth:`model_artifact_uri`. ``None`` (and an error logged) on failure.
        """
        import mlflow.pytorch
        from mlflow.models import Model

        try:
            logged = self._client.create_logged_model(self.experiment_id, name=name, source_run_id=self.run_id)
        except Exception as err:  # noqa: BLE001
            log.error("could not create MLflow model %s for run %s: %s", name, self.run_id, short_error(err))
            return None
        try:
            self._client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, step=step)])
            with tempfile.TemporaryDirectory() as tmp:
                meta = Model(
                    artifact_path=logged.artifact_location,
                    model_uuid=logged.model_id,
                    run_id=self.run_id,
                    model_id=logged.model_id,
                )
                mlflow.pytorch.save_model(
                    model,
                    Path(tmp) / "model",
                    mlflow_model=meta,
                    serialization_format="pickle",
                    pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
                )
                self._client.log_model_artifacts(logged.model_id, str(Path(tmp) / "model"))
            self._client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        except Exception as err:  # noqa: BLE001
            log.error(
                "could not log model %s to MLflow run %s: %s", name, self.run_id, redact_text(str(err)), exc_info=True
            )
            try:
                self._client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            except Exception:  # noqa: BLE001
                pass
            return None
        return f"models:/{logged.model_id}"

    def model_artifact_uri(self, model_uri: str) -> str:
        """Where a ``models:/<id>`` URI from :meth:`log_model` keeps its files (loadable directly)."""
        return self._client.get_logged_model(model_uri.removeprefix("models:/")).artifact_location

    # ---- end ---------------------------------------------------------------------------------

    def end(self, status: str = "FINISHED") -> None:
        """Send what is queued, then end the run as FINISHED, FAILED or KILLED; later calls do nothing.

        Against a server that does not answer, returns in about ``request_timeout`` seconds: the
        unsent params, metrics and tags are counted in one warning and the run stays RUNNING.
        """
        check_status(status)
        if self._ended:
            return
        self._ended = True
        stop_system_metrics(self._monitor, self.run_id, timeout=self.request_timeout)
        problem = self._queue.close(self.flush_timeout)
        lost = self._queue.pending()
        if any(lost.values()):
            log.warning(
                "MLflow run %s ended with %d metric values, %d params and %d tags unsent: they are lost",
                self.run_id,
                lost["metrics"],
                lost["params"],
                lost["tags"],
            )
        end_time = int(time.time() * 1000)
        if uris.is_server(self.tracking_uri):
            # not MlflowClient.set_terminated: see end_run
            problem = problem or end_run(self.tracking_uri, self.run_id, status, end_time, self.request_timeout)
        else:
            try:
                self._client.set_terminated(self.run_id, status=status, end_time=end_time)
                problem = None
            except Exception as err:  # noqa: BLE001 - the run's results are in; only its status is not
                problem = short_error(err)
        if problem is not None:
            log.warning("could not mark MLflow run %s %s: %s", self.run_id, status, problem)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FINISHED" if exc_type is None else "FAILED")


def _context_tags() -> dict[str, str]:
    """The tags ``mlflow.start_run`` would add (user, source, git commit), without its globals.
    MLflow's registry of run context providers (its plugin API); nice to have, so any failure of
    it, in this MLflow or a later one, costs only these tags."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return dict(resolve_tags({}))
    except Exception:  # noqa: BLE001 - nice to have only
        return {}
