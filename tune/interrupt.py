"""Ctrl-C and SIGTERM during a search: Tune's own graceful stop, then an exit that says so.

Left alone, Tune catches SIGINT inside ``Tuner.fit`` and then returns its results as if the study
had ended (the driver printed a "best trial" summary and exited 0 with trials unfinished), and
``ray.init`` turns SIGTERM (``kill``, systemd, Kubernetes, ``ray job stop``) into ``sys.exit``
wherever Ray happens to be (an abort, exit status 134). Here both signals are recorded, Tune is
asked to stop through the other signal ``ray.tune.run`` handles that way (SIGUSR1, always registered:
it saves the experiment's state once more, stops the trials and returns), and the
driver then ends the study's MLflow runs as KILLED and exits 128 + the signal's number with one
line naming the study and the command that resumes it. A second signal stops at once.

Ray's own processes (raylet, GCS and through them the trial workers) start with SIGINT blocked,
so Ctrl-C in the terminal (SIGINT to the whole process group) reaches only the driver.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A second SIGINT or SIGTERM: stop without waiting for Tune."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Call :meth:`install` after ``ray.init`` (which installs its own SIGTERM handler).

    ``received``: the first signal (``signal.SIGINT`` / ``signal.SIGTERM``) or ``None``.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self.at = 0.0  # when (time.time())

    def install(self) -> None:
        # Tune's SIGINT handler would make Ctrl-C look like the end of the study; ours asks it to
        # stop through SIGUSR1 instead (TUNE_DISABLE_SIGINT_HANDLER is Tune's documented switch).
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for signum in SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            raise Interrupted(signum)
        self.received, self.at = signum, time.time()
        threading.Thread(target=_ask_tune_to_stop, name="adastft-stop", daemon=True).start()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    @property
    def exit_code(self) -> int:
        return 128 + int(self.received or signal.SIGINT)


def _ask_tune_to_stop(poll_s: float = 0.1) -> None:
    """SIGUSR1 to this process once ``ray.tune.run`` handles it (before, SIGUSR1 would end the
    process): at once during ``Tuner.fit``, at its start when the signal came before."""
    while signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
        time.sleep(poll_s)
    os.kill(os.getpid(), signal.SIGUSR1)


def resume_command(script: str, argv: list[str], default: str = "tune/search.py") -> str:
    """The command line that continues the study ``argv`` (the search's, or the comparison's,
    arguments) started; ``script``: the path to ``search.py`` (``compare.py``) as it was run."""
    args = list(argv) + ([] if "--resume" in argv else ["--resume"])
    return shlex.join([*command_of(script, default), *args])


def command_of(script: str, default: str = "tune/search.py") -> list[str]:
    """How the user ran this command line: an installed console script (``adastft-search``) by
    its name, a file (``tune/search.py``) with ``python``; anything else (``python -c``, a
    test's runner) as ``python <default>``."""
    name = os.path.basename(script)
    if name.startswith("adastft-"):
        return [name]
    return ["python", script if script.endswith(".py") else default]


def report_interrupted(study: str, why: str, command: str, prog: str = "search") -> None:
    """The one line an interrupted search (``prog``: or comparison) ends with, on stderr."""
    what = "comparison" if prog == "compare" else "study"
    print(
        f"{prog}: interrupted ({why}): {what} {study!r} stopped before it finished; continue it with: {command}",
        file=sys.stderr,
        flush=True,
    )
