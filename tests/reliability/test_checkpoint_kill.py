"""``kill -9`` of a training process while it writes a checkpoint, many times at random moments.

Claim (issue 7): after every kill the previous ``last.pt`` and ``best.pt`` still load (with
``weights_only=True``) and training resumes from them; nothing is lost or torn, and the files a
killed writer leaves behind do not pile up.

Two kinds of real processes are killed with SIGKILL:

- ``adastft.training.train(cfg)`` in processes forked from a fork server that has imported the
  training stack once (``kill_targets.py``), so that 30 kills take about a minute;
- the command line, ``python -m adastft.train``, a few times.

Every kill of the forked processes lands inside a write by construction: the process stops
itself at a chosen byte offset of the temporary file of ``best.pt`` or ``last.pt`` (or with the
file complete before its rename, or with last.pt's hard link made before it replaces last.pt)
and is killed there. The command-line kills are aimed at a write by watching for its temporary
file. What was being written at each kill is counted, and reported by the summary.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kill_targets
from adastft.checkpoint import load_checkpoint
from harness import env, kill_group, tiny, tiny_dict, wait_for

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("ADASTFT_RELIABILITY_KILLS", "30"))
CLI_KILLS = int(os.environ.get("ADASTFT_RELIABILITY_CLI_KILLS", "3"))
FINAL = {"best.pt", "last.pt", "best_model.pt"}


def _writing(out_dir: Path) -> set[str]:
    """Checkpoints being written right now: ``{"best.pt", "last.pt"}`` from their temp files."""
    found = set()
    try:
        for entry in os.scandir(out_dir):
            if entry.name.endswith(".tmp"):
                for name in ("best.pt", "last.pt", "best_model.pt"):
                    if entry.name.startswith(f".{name}."):
                        found.add(name)
    except FileNotFoundError:
        pass
    return found


def _aim_and_kill(pid: int, alive, out_dir: Path, target: str, rng: random.Random, give_up_s: float) -> str:
    """Kill ``pid`` during a write of ``target`` (best.pt / last.pt) or at a random moment ("any").

    A best.pt write happens only when validation improves; when none comes within ``give_up_s``
    the next write of any checkpoint is taken. Returns what was being written at the kill.
    """
    started = time.monotonic()
    if target == "any":
        deadline = started + rng.uniform(0.2, 3.0)
        while time.monotonic() < deadline and alive():
            time.sleep(0.01)
    else:
        while alive():
            writing = _writing(out_dir)
            if target in writing or (writing and time.monotonic() - started > give_up_s):
                time.sleep(rng.uniform(0.0, 0.35))  # somewhere inside the write
                break
            time.sleep(0.002)
    during = _writing(out_dir)
    os.kill(pid, signal.SIGKILL)
    return "+".join(sorted(during)) or "no write"


class Ledger:
    """What the run folder held after the last kill; checks that nothing went backwards."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.last_epoch: int | None = None
        self.best_epoch: int | None = None
        self.history: list[dict] = []

    def check(self) -> tuple[list[str], int]:
        """(problems, results lost) after a kill; updates the ledger."""
        problems, lost = [], 0
        states = {}
        for name in ("last.pt", "best.pt"):
            path = self.out_dir / name
            known = self.last_epoch if name == "last.pt" else self.best_epoch
            if not path.exists():
                if known is not None:
                    problems.append(f"{name} (epoch {known}) disappeared")
                    lost += 1
                continue
            try:
                states[name] = load_checkpoint(path)  # weights_only=True
            except Exception as exc:  # noqa: BLE001 - any failure to load is what we look for
                problems.append(f"{name} does not load: {exc}")
                lost += 1
                continue
            state = states[name]
            epoch = state["epoch"]
            if known is not None and epoch < known:
                problems.append(f"{name} went back from epoch {known} to {epoch}")
                lost += 1
            history = state["history"]
            if [int(h["epoch"]) for h in history] != list(range(epoch + 1)):
                problems.append(f"{name} at epoch {epoch} has history epochs {[h['epoch'] for h in history]}")
            if state["best_val_clip_accuracy"] != max(h["val_clip_accuracy"] for h in history):
                problems.append(f"{name}: best_val_clip_accuracy disagrees with its history")
            for key in ("model", "optimizer", "scheduler", "scaler", "config"):
                if key not in state:
                    problems.append(f"{name} lacks {key!r}")
        last, best = states.get("last.pt"), states.get("best.pt")
        if last is not None:
            if last["history"][: len(self.history)] != self.history:
                problems.append("last.pt's history rewrote epochs that an earlier last.pt had")
                lost += 1
            self.last_epoch, self.history = last["epoch"], list(last["history"])
        if best is not None:
            accs = [h["val_clip_accuracy"] for h in best["history"]]
            if accs.index(max(accs)) != best["epoch"]:
                problems.append(f"best.pt is epoch {best['epoch']}, its history peaks at {accs.index(max(accs))}")
            if last is not None and best["epoch"] > last["epoch"] + 1:
                problems.append(f"best.pt (epoch {best['epoch']}) is ahead of last.pt (epoch {last['epoch']}) by >1")
            self.best_epoch = best["epoch"]
        return problems, lost


def _final_checks(out_dir: Path, epochs: int) -> list[str]:
    problems = []
    last, best = load_checkpoint(out_dir / "last.pt"), load_checkpoint(out_dir / "best.pt")
    if last["epoch"] != epochs - 1 or [int(h["epoch"]) for h in last["history"]] != list(range(epochs)):
        problems.append(
            f"the finished run's history is not epochs 0..{epochs - 1}: {[h['epoch'] for h in last['history']]}"
        )
    accs = [h["val_clip_accuracy"] for h in last["history"]]
    if best["epoch"] != accs.index(max(accs)):
        problems.append(f"best.pt is epoch {best['epoch']}, the run's best epoch is {accs.index(max(accs))}")
    left = {p.name for p in out_dir.iterdir()} - FINAL - {"train.log"}
    if left:
        problems.append(f"left behind in the run folder: {sorted(left)}")
    return problems


def _record_kill(case, ledger: Ledger, i: int, during: str, exit_code: int | None) -> list[str]:
    """After kill ``i``: check the folder against the ledger, record the fault, and return its
    problems as failure lines (a process that ended before the kill is one)."""
    problems, lost = ledger.check()
    if exit_code != -signal.SIGKILL:
        problems.append(f"the process ended with {exit_code} before the kill")
    case.fault(survived=not problems, lost=lost, note=f"kill {i + 1} during {during}")
    return [f"kill {i + 1} ({during}): {p}" for p in problems]


# Where each kill lands inside a checkpoint write: bytes of the temporary file written (a byte
# count beyond the file's size means "complete, before the rename"), "rename", or "link"
# (last.pt's hard link to best.pt made, before it replaces last.pt). A checkpoint of the tiny
# model is about 134 MB.
POINTS = [1, 1 << 16, 16 << 20, 96 << 20, 1 << 40, "rename"]
PLAN = [(target, point) for target in ("best.pt", "last.pt") for point in POINTS] + [("last.pt", "link")]


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def test_kill_9_while_writing_checkpoints_never_loses_last_or_best(tmp_path, faults):
    """Every kill lands inside a write by construction: the training process stops itself
    (SIGSTOP) at a chosen point of a chosen checkpoint's write (``kill_targets.
    train_stopping_in_a_write``) and is then killed with SIGKILL. The points cycle through
    ``PLAN``; the first kill, in a fresh run whose first epoch always improves, is in best.pt."""
    case = faults(f"kill -9 training mid-checkpoint x{KILLS} (forked train())")
    rng = random.Random(int(os.environ.get("ADASTFT_RELIABILITY_SEED", "7")))
    out_dir, hit = tmp_path / "run", tmp_path / "hit"
    cfg = tiny_dict(tmp_path, epochs=1000)  # never ends by itself: every process is killed
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["adastft.training", "kill_targets"])
    ledger = Ledger(out_dir)
    plan = [("best.pt", 16 << 20)] + [PLAN[i % len(PLAN)] for i in rng.sample(range(KILLS), KILLS)][1:]
    kinds: dict[str, int] = {}
    failures = []
    for i, (target, point) in enumerate(plan):
        hit.unlink(missing_ok=True)
        proc = ctx.Process(
            target=kill_targets.train_stopping_in_a_write, args=(cfg, target, point, str(hit)), daemon=True
        )
        proc.start()
        wait_for(
            lambda: _stopped(proc.pid) or not proc.is_alive(), 300, f"kill {i + 1}: a stop in {target}", interval=0.01
        )
        during = hit.read_text() if hit.exists() else "no write"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        name = during.split(" ", 1)[0]
        kinds[name] = kinds.get(name, 0) + 1
        failures += _record_kill(case, ledger, i, during, proc.exitcode)

    # The last process resumes and finishes: every epoch exactly once, best.pt the best epoch.
    epochs = (ledger.last_epoch if ledger.last_epoch is not None else -1) + 3
    proc = ctx.Process(target=kill_targets.train_quietly, args=(tiny_dict(tmp_path, epochs=epochs),), daemon=True)
    proc.start()
    proc.join(300)
    assert proc.exitcode == 0, f"the resumed run failed with exit code {proc.exitcode}"
    failures += _final_checks(out_dir, epochs)
    case.notes.append("writes hit: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    assert not failures, "\n".join(failures)
    assert kinds.get("best.pt", 0) >= 1 and kinds.get("no write", 0) == 0, f"kills outside a write: {kinds}"


def test_kill_9_of_the_command_line_mid_checkpoint_then_resume(tmp_path, faults):
    case = faults(f"kill -9 `python -m adastft.train` mid-checkpoint x{CLI_KILLS}")
    rng = random.Random(11)
    out_dir = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "adastft.train",
        *tiny(tmp_path),
        "tracking=off",
        f"train.out_dir={out_dir}",
        "train.threads=1",
    ]
    ledger = Ledger(out_dir)
    failures = []
    for i in range(CLI_KILLS):
        proc = subprocess.Popen(
            [*args, "train.epochs=1000"],
            cwd=tmp_path,
            env=env(),
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            during = _aim_and_kill(
                proc.pid, lambda: proc.poll() is None, out_dir, rng.choice(["best.pt", "last.pt"]), rng, give_up_s=2.0
            )
            proc.wait(30)
        finally:
            kill_group(proc)
        failures += _record_kill(case, ledger, i, during, proc.returncode)
    epochs = (ledger.last_epoch if ledger.last_epoch is not None else -1) + 2
    done = subprocess.run(
        [*args, f"train.epochs={epochs}"], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # the log goes to stdout (Hydra's job logging): the resume must say so there
    assert "resuming from" in done.stdout or ledger.last_epoch is None, done.stdout[-3000:] + done.stderr[-3000:]
    failures += _final_checks(out_dir, epochs)
    assert not failures, "\n".join(failures)
