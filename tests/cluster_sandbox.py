"""Helpers for the cluster tests: real Ray nodes, sshd and MLflow servers on this machine, each in
its own PID and mount namespace.

Why namespaces: `ray down` runs `ray stop`, and `ray stop` kills every Ray process it can see,
including other test runs' Ray on a shared machine. A process started here lives in a fresh PID
namespace (`unshare --pid --fork --kill-child --mount-proc`): it sees only its own processes, and
killing the namespace's first process makes the kernel end everything in it, daemons included.
Its mount namespace can also give it its own `/tmp/ray` (so a cluster's session files and
`ray_current_cluster` never mix with another Ray's) and its own `/etc/hosts` (a machine whose name
lookups differ, as on another network). The network is the machine's: ports are picked free and
everything listens on loopback.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

PYTHON_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def namespaces_work() -> str | None:
    """``None`` when unshare can make PID and mount namespaces here, else why not."""
    if not shutil.which("unshare"):
        return "unshare (util-linux) is not installed"
    proc = subprocess.run(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "true"], capture_output=True, text=True
    )
    return None if proc.returncode == 0 else f"unshare cannot make namespaces here: {proc.stderr.strip()}"


def require_namespaces() -> None:
    why = namespaces_work()
    if why:
        pytest.skip(why)


def short_tmp(prefix: str) -> Path:
    """A short folder under /tmp: Ray's socket paths must stay under 107 characters."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def _unshare(argv: list[str], binds: dict[str, str] | None, pid: bool = True) -> list[str]:
    mounts = " && ".join(f"mount --bind {shlex.quote(src)} {shlex.quote(dst)}" for src, dst in (binds or {}).items())
    script = (mounts + " && " if mounts else "") + 'exec "$@"'
    namespaces = ["--pid", "--fork", "--kill-child", "--mount-proc"] if pid else ["--mount"]
    return ["unshare", *namespaces, "--propagation", "private", "sh", "-c", script, "sh", *argv]


def run_with_mounts(
    argv: list[str],
    *,
    binds: dict[str, str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run a command to its end with ``binds`` in its own mount namespace, in this PID namespace
    (a Ray driver finds its node's raylet among the processes it can see)."""
    return subprocess.run(
        _unshare(argv, binds, pid=False),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_with_mounts(
    argv: list[str], *, binds: dict[str, str], env: dict[str, str] | None = None, cwd: Path | None = None, log: Path
) -> subprocess.Popen:
    """Like :func:`run_with_mounts`, but in the background, in a session of its own (so that
    ``os.killpg`` reaches it and what it started), its output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            _unshare(argv, binds, pid=False),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


class Sandboxed:
    """A command in its own PID + mount namespace; ``binds`` maps host files/folders onto paths
    inside it (bind mounts). ``stop()`` ends the command and everything it started."""

    def __init__(
        self,
        argv: list[str],
        *,
        binds: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        log: Path,
        cwd: Path | None = None,
    ):
        self.log = log
        self._log_file = open(log, "ab")
        self.proc = subprocess.Popen(
            _unshare(argv, binds),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        # SIGKILL to unshare: --kill-child kills the namespace's first process, and with it the
        # kernel kills every process in the namespace. The group kill is belt and braces.
        for sig_target in (lambda: self.proc.kill(), lambda: os.killpg(self.proc.pid, signal.SIGKILL)):
            try:
                sig_target()
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        self._log_file.close()

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5, on_fail=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}" + (f"\n{on_fail()}" if on_fail else ""))


def http_ok(url: str, timeout: float = 2.0, any_status: bool = False) -> bool:
    """``url`` answers 200 (or, with ``any_status``, answers at all)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return any_status
    except OSError:
        return False


def hosts_file(path: Path, names: dict[str, str]) -> Path:
    """This machine's /etc/hosts plus ``{name: address}``."""
    lines = Path("/etc/hosts").read_text().splitlines() + [f"{ip} {name}" for name, ip in names.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def ray_auth_home(home: Path) -> dict[str, str]:
    """A HOME with its own Ray token (``ray get-auth-token --generate``) and the environment that
    turns token authentication on for Ray commands run with it."""
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [str(Path(PYTHON_BIN) / "ray"), "get-auth-token", "--generate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and (home / ".ray" / "auth_token").is_file(), proc.stderr
    return env


def mlflow_server(tmp: Path, port: int, host: str = "127.0.0.1") -> Sandboxed:
    """A real MLflow tracking server (SQLite store) on ``host:port``, in its own namespace."""
    server = Sandboxed(
        [
            str(Path(PYTHON_BIN) / "mlflow"),
            "server",
            "--host",
            host,
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp}/mlflow.db",
            "--artifacts-destination",
            str(tmp / "artifacts"),
            "--workers",
            "1",
        ],
        log=tmp / "mlflow.log",
    )
    wait_for(
        lambda: http_ok(f"http://{host}:{port}/health") or not server.alive(),
        120,
        "the MLflow server",
        on_fail=server.tail,
    )
    assert server.alive(), server.tail()
    return server
