"""Params, metrics and tags on their way to MLflow: an in-memory queue that outlives an outage.

Each batch goes to the store through ``MlflowClient.log_batch(..., synchronous=True)``, one store
request per batch (batches are cut to MLflow's per-request limits here, so the client does not
split them, and a failed one is retried whole, never in part twice). What MLflow lacks is kept here: a batch that
cannot be sent (server down, database locked) stays queued, in order, and is tried again later;
nothing raises into training, and :meth:`BatchQueue.close` says what was never sent.

How batches are sent depends on the store:

- A local store (SQLite, files) answers in milliseconds or raises: batches are sent in the
  caller's thread as they are queued; after a failure, not before ``retry_interval`` seconds.
- A tracking server is sent to from one background thread per run, so training never waits on
  the network. MLflow's client retries a request for minutes against a server that is down
  (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7 with backoff factor 2;
  ``MLFLOW_HTTP_REQUEST_TIMEOUT``, default 120 s), and those settings are environment variables
  read by every MLflow client in the process, so they are left alone. Instead, before handing
  batches to MLflow's client, the thread asks the server (``probe``: ``GET /health``, a short
  timeout, no retries); while it does not answer, batches stay queued and it asks again every
  ``retry_interval`` seconds (at 0: whenever a new batch is queued). A server that hangs while a
  batch is in MLflow's client is reported by the next :meth:`BatchQueue.put` once that has taken
  ``stall_after`` seconds.

``MlflowClient.log_batch(..., synchronous=False)`` is not used: the ``RunOperations`` it returns has
only a ``wait()`` without a timeout, its failures come back as one ``MlflowException`` that no
longer tells rejected data from an outage, and MLflow's async queue waits at interpreter exit
until it has drained, through those minutes of retries.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from adastft.tracking.redact import redact_text, short_error

log = logging.getLogger(__name__)

KINDS = ("params", "metrics", "tags")


def is_transient(err: Exception) -> bool:
    """Worth trying again later: transport failures and server-side errors, not rejected data."""
    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(err, (OSError, requests.RequestException))


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class BatchQueue:
    """The params, metrics and tags of one run that have not reached the store yet.

    ``probe``: for a tracking server, a function that returns ``None`` when the server answers
    now and otherwise why not, within ``stall_after`` seconds; batches are then sent from a
    background thread. ``None`` for a local store: sent in the caller's thread.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        probe: Callable[[], str | None] | None,
        retry_interval: float,
        stall_after: float = 5.0,
    ) -> None:
        self._client = client
        self.run_id = run_id
        self._probe = probe
        self.retry_interval = float(retry_interval)
        self.stall_after = float(stall_after)
        self._batches: deque[tuple[str, list]] = deque()  # (kind, entities), oldest first
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()  # one sender at a time among the caller's threads
        self._down: str | None = None  # why the store did not take the last batch; None: it did
        self._reported = False  # this outage has been warned of
        self._busy_since: float | None = None  # when the sender began its question to the server
        self._retry_at = 0.0
        self._kicked = False  # a batch was queued since the last attempt
        self._closing = False
        self._abandoned = False  # close() gave up: send nothing more
        self._thread: threading.Thread | None = None
        if probe is not None:
            self._thread = threading.Thread(target=self._run, name=f"adastft-mlflow-{run_id}", daemon=True)
            self._thread.start()

    def put(self, kind: str, entities: list, batch_size: int) -> None:
        """Queue ``entities`` in batches of at most ``batch_size`` and send what is due."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        with self._cond:
            self._batches.extend((kind, chunk) for chunk in _chunks(entities, batch_size))
            self._kicked = True
            self._cond.notify()
        if self._thread is None:
            if time.monotonic() >= self._retry_at:
                with self._send_lock:
                    self._send()
            return
        busy_since = self._busy_since
        if busy_since is not None and time.monotonic() - busy_since > self.stall_after:
            self._report(f"no answer within {self.stall_after:g} s", retrying=False)

    def pending(self) -> dict[str, int]:
        """How many params, metrics and tags wait in memory (including a batch being sent)."""
        counts = dict.fromkeys(KINDS, 0)
        with self._cond:
            for kind, entities in self._batches:
                counts[kind] += len(entities)
        return counts

    def close(self, timeout: float) -> str | None:
        """Send what is queued, now, and stop; ``None`` when the store took it all, else why not
        (what was not sent stays counted by :meth:`pending`).

        Gives up as soon as the server does not answer (a question of at most ``stall_after``
        seconds). Waits up to ``timeout`` seconds only while it answers and a batch is still in
        MLflow's client (caught by an outage mid-request, which that client retries with its own
        backoff).
        """
        if self._thread is None:
            with self._send_lock:
                self._send()
            return self._down
        with self._cond:
            self._closing = True
            self._cond.notify()
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(min(1.0, max(0.0, deadline - time.monotonic())))
            if self._thread.is_alive():
                reason = self._probe()
                if reason is not None:
                    self._down = reason
                    break
        with self._cond:
            self._abandoned = True
        if self._thread.is_alive():
            return self._down or f"a batch was still being sent after {timeout:g} s"
        return self._down

    # ---- sending -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due():
                    self._cond.wait(self._wait_time())
                closing, self._kicked = self._closing, False
            try:
                self._send()
            except Exception:  # noqa: BLE001 - a bug here must not stop the sender silently
                log.exception("MLflow sender of run %s failed", self.run_id)
            if closing:
                return

    def _due(self) -> bool:
        if self._closing:
            return True
        if not self._batches:
            return False
        if self._down is None:
            return True
        if self.retry_interval > 0:
            return time.monotonic() >= self._retry_at
        return self._kicked

    def _wait_time(self) -> float | None:
        if self._batches and self._down is not None and self.retry_interval > 0:
            return max(0.0, self._retry_at - time.monotonic())
        return None

    def _send(self) -> None:
        """Send queued batches in order until none is left or one fails for a transient reason."""
        asked = self._probe is None
        while True:
            with self._cond:
                if not self._batches or self._abandoned:
                    return
                kind, entities = self._batches[0]
            reason: str | None = None
            self._busy_since = time.monotonic()
            try:
                if not asked:
                    reason, asked = self._probe(), True
                if reason is None:
                    self._client.log_batch(self.run_id, synchronous=True, **{kind: entities})
            except Exception as err:  # noqa: BLE001 - training must go on whatever the store does
                if is_transient(err):
                    reason = short_error(err)
                else:
                    log.error(
                        "MLflow rejected %d %s for run %s, dropped: %s",
                        len(entities),
                        kind,
                        self.run_id,
                        redact_text(str(err)),
                    )
            finally:
                self._busy_since = None
            if reason is not None:
                self._failed(reason)
                return
            self._sent()

    def _sent(self) -> None:
        with self._cond:
            self._batches.popleft()
            was_reported, self._reported = self._reported, False
            self._down, self._retry_at = None, 0.0
            left = len(self._batches)
        if was_reported:
            log.info("MLflow available again; sending %d queued batches for run %s", left, self.run_id)

    def _failed(self, reason: str) -> None:
        with self._cond:
            self._down, self._retry_at = reason, time.monotonic() + self.retry_interval
        self._report(reason, retrying=True)

    def _report(self, reason: str, retrying: bool) -> None:
        """Warn of an outage, once: a long one would otherwise repeat it with every batch."""
        with self._cond:
            first, self._reported = not self._reported, True
            queued = len(self._batches)
        again = f", retrying in {self.retry_interval:g} s" if retrying else ""
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "MLflow unavailable (%s); %d batches queued for run %s%s",
            reason,
            queued,
            self.run_id,
            again,
        )
