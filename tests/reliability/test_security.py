"""Checkpoints and models load with ``weights_only=True``: a pickled payload is refused, never run.

The payload is a real pickle that would run ``touch <marker>`` when unpickled (its
``__reduce__``); each entry point that reads a checkpoint or model file is given it, and the
marker must not appear. A static check finds every ``torch.load`` in the library and the search
and requires ``weights_only=True`` on it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from adastft.checkpoint import CheckpointError, load_checkpoint
from harness import REPO, env, tiny
from data_helpers import RATE, tone


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(path: Path, marker: Path, wrap: bool = True) -> Path:
    """A file that looks like a checkpoint and runs ``touch marker`` if unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _Payload(marker)
    state = {"model": {"w": torch.ones(2)}, "config": payload, "classes": ["a"], "epoch": 0} if wrap else payload
    torch.save(state, path)
    return path


def test_the_payload_is_live(tmp_path):
    """The payload does run when unpickled without weights_only: the tests below mean something."""
    marker = tmp_path / "pwned"
    torch.load(_evil(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


def test_pickled_payloads_are_refused_everywhere(tmp_path, faults):
    case = faults("pickled payload in checkpoint/model files")
    marker = tmp_path / "pwned"
    song = tmp_path / "song.wav"
    sf.write(song, tone(seconds=2.0), RATE)
    failures = []

    def attempt(name: str, check) -> None:
        problems = check()
        if marker.exists():
            problems.append("THE PAYLOAD RAN")
            marker.unlink()
        case.fault(survived=not problems, note=f"{name}: {'; '.join(problems)}" if problems else "")
        failures.extend(f"{name}: {p}" for p in problems)

    def in_process() -> list[str]:
        for wrap in (True, False):
            try:
                load_checkpoint(_evil(tmp_path / f"direct{wrap}.pt", marker, wrap))
            except CheckpointError as exc:
                if "weights_only=True" not in str(exc):
                    return [f"refused with {exc}"]
            else:
                return ["load_checkpoint accepted it"]
        return []

    def command(args: list[str], culprit: str) -> list[str]:
        proc = subprocess.run(
            [sys.executable, *args], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300
        )
        errors = [line for line in proc.stderr.splitlines() if ": error:" in line]
        problems = [] if proc.returncode == 2 else [f"exit status {proc.returncode}"]
        if len(errors) != 1 or culprit not in errors[0]:
            problems.append(f"error lines {errors!r}, want one naming {culprit!r}")
        return problems

    run_dir = tmp_path / "resume"
    _evil(run_dir / "last.pt", marker)
    attempt("load_checkpoint", in_process)
    attempt(
        "python -m adastft.train resuming from it",
        lambda: command(
            ["-m", "adastft.train", *tiny(tmp_path, epochs=1), "tracking=off", f"train.out_dir={run_dir}"], "last.pt"
        ),
    )
    attempt(
        "python -m adastft.train with it as the backbone",
        lambda: command(
            [
                "-m",
                "adastft.train",
                *tiny(tmp_path, epochs=1),
                "tracking=off",
                f"train.out_dir={tmp_path}/run2",
                f"model.pretrained_path={_evil(tmp_path / 'backbone.pt', marker, wrap=False)}",
            ],
            "backbone.pt",
        ),
    )
    attempt(
        "python -m adastft.predict --model it",
        lambda: command(
            ["-m", "adastft.predict", str(song), "--model", str(_evil(tmp_path / "model" / "best_model.pt", marker))],
            "best_model.pt",
        ),
    )
    assert not failures, "\n".join(failures)


def _torch_loads(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = ast.unparse(func)
            if name == "torch.load" or name.endswith(("pickle.load", "pickle.loads")):
                yield node, name


@pytest.mark.parametrize("folder", ["adastft", "tune"])
def test_every_torch_load_is_weights_only(folder):
    found, unsafe = 0, []
    for path in sorted((REPO / folder).rglob("*.py")):
        for node, name in _torch_loads(path):
            found += 1
            safe = name == "torch.load" and any(
                kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                for kw in node.keywords
            )
            if not safe:
                unsafe.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not unsafe, "loads that may run pickled code:\n" + "\n".join(unsafe)
    if folder == "adastft":
        assert found >= 2  # checkpoint.load_checkpoint and the backbone in model.py
