"""A real `mlflow server` on 127.0.0.1 for tests (test_tracking, test_mlflow_ui, the reliability
suite): its own session, a SQLite backend, stop() and start() keeping port and store."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def eventually(predicate, what: str, timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` holds: a tracker sends to a server from a background thread."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on loopback.

    ``store``: the backend URI (default ``sqlite:///<folder>/server.db``). ``artifacts``:
    ``"proxied"`` (the server writes them under ``<folder>/server-artifacts`` and serves them, as
    the cluster's server does) or ``"direct"`` (clients write to ``<folder>/art`` themselves).
    ``crash``: stop() kills it at once (SIGKILL), as a crashed server; else SIGTERM first.
    """

    def __init__(
        self,
        folder: Path,
        store: str | None = None,
        artifacts: str = "proxied",
        crash: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        if artifacts not in ("proxied", "direct"):
            raise ValueError(f"artifacts={artifacts!r}: 'proxied' or 'direct'")
        self.folder = Path(folder)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.store = store or f"sqlite:///{self.folder}/server.db"
        self.artifacts = self.folder / ("server-artifacts" if artifacts == "proxied" else "art")
        self.mode = artifacts
        self.crash = crash
        self.env = env
        self.log = self.folder / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: float = 120.0) -> None:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.store,
        ]
        cmd += (
            ["--artifacts-destination", str(self.artifacts), "--serve-artifacts"]
            if self.mode == "proxied"
            else ["--default-artifact-root", str(self.artifacts)]
        )
        # Its background job runner (GenAI scorers) doubles the start time and is not needed here.
        env = {**(self.env or os.environ), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=self.folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.uri}/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer in {wait:g} s:\n{self.log.read_text()[-3000:]}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the server and its workers (its session), and wait until the port is closed."""
        if not self.running:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)  # a test may have left it stopped
            os.killpg(self.proc.pid, signal.SIGKILL if self.crash else signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the port must really be closed before a restart
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)
