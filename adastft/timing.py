"""Where a run's time goes: wall seconds per phase, as metrics.

Five phases: ``data_wait`` (blocked on the training loader), ``compute`` (the training steps),
``eval`` (the validation split), ``checkpoint`` (writing ``last.pt``/``best.pt`` and handing them
to the caller's reporter, which for Tune copies them to its storage) and ``tracking`` (MLflow
calls and artifacts). A :class:`PhaseTimer` row covers the wall time since the previous row, so
every second is counted once: an epoch's row holds its training and evaluation and the checkpoint
and tracking that ended the epoch before it; the run's last row holds what followed its last
epoch (the test split as eval, the artifacts as tracking). ``epoch_seconds`` is that whole
interval; what no phase holds (learning-rate steps, barriers, bookkeeping) is ``other``.

Example::

    timer = PhaseTimer()
    with timer.phase("eval"):
        evaluate(...)
    row = timer.drain()   # {"time_data_wait": 0.0, ..., "time_eval": 1.2, "epoch_seconds": 1.3}
    shares(totals([row])) # "compute 0%, eval 92%, data wait 0%, checkpoints 0%, tracking 0%, other 8%"
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from contextlib import contextmanager

PHASES = ("compute", "eval", "data_wait", "checkpoint", "tracking")
_LABELS = {"data_wait": "data wait", "checkpoint": "checkpoints"}
EPOCH_SECONDS = "epoch_seconds"


def metric(phase: str) -> str:
    """The per-row metric of ``phase``: ``time_<phase>`` (seconds)."""
    return f"time_{phase}"


def total_metric(phase: str) -> str:
    """The whole run's metric of ``phase``: ``total_time_<phase>`` (seconds); ``total_epoch_seconds``
    for the wall time."""
    return f"total_{metric(phase) if phase in PHASES else phase}"


TOTALS = tuple(total_metric(p) for p in PHASES) + (total_metric(EPOCH_SECONDS),)


class PhaseTimer:
    """Accumulates seconds per phase until :meth:`drain` hands them over as one row."""

    def __init__(self) -> None:
        self._seconds = dict.fromkeys(PHASES, 0.0)
        self._since = time.perf_counter()
        self._inner: list[float] = []  # per open phase: seconds already given to phases inside it

    def add(self, phase: str, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self._seconds[phase] += seconds
        if self._inner:
            self._inner[-1] += seconds

    @contextmanager
    def phase(self, phase: str):
        """Time the block as ``phase``; a phase opened inside it takes its own seconds out."""
        started = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            inner = self._inner.pop()
            self.add(phase, time.perf_counter() - started - inner)
            if self._inner:
                self._inner[-1] += inner

    def drain(self) -> dict[str, float]:
        """``time_<phase>`` for every phase and ``epoch_seconds`` since the last drain; then restart."""
        now = time.perf_counter()
        row = {metric(p): s for p, s in self._seconds.items()}
        row[EPOCH_SECONDS] = now - self._since
        self._seconds, self._since = dict.fromkeys(PHASES, 0.0), now
        return row


def totals(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """``total_time_<phase>`` and ``total_epoch_seconds``: the sums over ``rows`` (rows without
    timing, from a run older than this module, count as zero)."""
    out = dict.fromkeys(TOTALS, 0.0)
    for row in rows:
        for phase in (*PHASES, EPOCH_SECONDS):
            out[total_metric(phase)] += float(row.get(metric(phase) if phase in PHASES else phase) or 0.0)
    return out


def shares(total: Mapping[str, float]) -> str:
    """``"compute 81%, eval 12%, data wait 2%, checkpoints 4%, tracking 1%, other 0%"``: each
    phase's share of ``total_epoch_seconds`` (of the phases' sum when that is missing)."""
    seconds = {p: float(total.get(total_metric(p)) or 0.0) for p in PHASES}
    wall = max(float(total.get(total_metric(EPOCH_SECONDS)) or 0.0), sum(seconds.values()))
    if wall <= 0:
        return "no timed epochs"
    seconds["other"] = wall - sum(seconds.values())
    return ", ".join(f"{_LABELS.get(p, p)} {100 * s / wall:.0f}%" for p, s in seconds.items())
