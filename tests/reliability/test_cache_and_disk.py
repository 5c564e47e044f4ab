"""The Arrow cache damaged on disk, and a full disk while writing a checkpoint or the cache.

Damage: a real cache of real audio files is truncated, overwritten, zeroed and bit-flipped in
many places; each time ``prepare`` must give exactly the clips, labels, names and classes of the
undamaged cache (rebuilt, or untouched where the damage hit only padding), never garbage.

Full disk: a real full disk, a small tmpfs mounted for the test (``mount -t tmpfs``, as root).
Where this machine forbids mounting, the same claims are checked with an ENOSPC injected into the
writes instead, and the case says so in its name.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mlflow.tracking import MlflowClient

from adastft.checkpoint import load_checkpoint
from adastft.data import CacheError, DataSpec, prepare
from adastft.data.cache import read_key
from harness import env, tiny, tiny_dict
from data_helpers import RATE, tone, write_folder


def _content(store) -> tuple:
    return (
        np.stack([store.audio(i) for i in range(len(store))]).tobytes(),
        store.labels.tobytes(),
        tuple(store.names),
        tuple(store.classes),
        len(store),
    )


def _damages(data: bytes, rng: random.Random) -> list[tuple[str, bytes]]:
    n = len(data)
    out = [
        ("empty file", b""),
        ("only the magic bytes", data[:8]),
        ("cut after the schema", data[: n // 10]),
        ("cut in half", data[: n // 2]),
        ("last byte missing", data[:-1]),
        ("footer cut", data[:-64]),
        ("garbage of the same size", bytes(rng.getrandbits(8) for _ in range(n))),
        ("garbage appended", data + b"\x00garbage" * 32),
    ]
    for frac in (0.2, 0.5, 0.8):
        at = int(n * frac)
        out.append((f"4 KiB zeroed at {frac:.0%}", data[:at] + bytes(4096) + data[at + 4096 :]))
    for _ in range(28):
        at = rng.randrange(n)
        b = bytearray(data)
        b[at] ^= 1 << rng.randrange(8)
        out.append((f"bit flipped at byte {at}", bytes(b)))
    return out


def test_damaged_cache_is_detected_and_rebuilt_never_read_as_garbage(tmp_path, faults):
    case = faults("Arrow cache truncated/corrupted on disk (39 ways)")
    root = write_folder(tmp_path / "data", {"blues": 12, "jazz": 12, "rock": 12}, seconds=0.25)
    spec = DataSpec(
        source="folder", root=str(root), cache_dir=str(tmp_path / "cache"), sample_rate=RATE, clip_seconds=0.25
    )
    good = prepare(spec)
    path = Path(good.path)
    reference, data = _content(good), path.read_bytes()
    rng = random.Random(3)
    failures, rebuilt = [], 0
    for name, damaged in _damages(data, rng):
        path.write_bytes(damaged)
        inode = path.stat().st_ino
        try:
            store = prepare(spec)
            same = _content(store) == reference
        except Exception as exc:  # noqa: BLE001 - anything but the clips is a failure
            same, store = False, None
            name += f" (prepare raised {exc})"
        rebuilt += path.stat().st_ino != inode
        if not same:
            failures.append(f"{name}: the store differs from the undamaged cache")
        case.fault(survived=same, lost=0 if same else 1, note="" if same else name)
        left = [p.name for p in path.parent.iterdir() if p.name != path.name and not p.name.endswith(".lock")]
        if left:
            failures.append(f"{name}: left in the cache folder: {left}")
    case.notes.append(f"detail: {rebuilt} rebuilt, {case.tried - rebuilt} untouched (damage in padding)")
    assert not failures, "\n".join(failures)
    assert rebuilt >= case.tried - 6, f"only {rebuilt} of {case.tried} damaged files were rebuilt"


@pytest.mark.slow
def test_damaged_cache_under_the_training_command_line(tmp_path, faults):
    case = faults("Arrow cache corrupted under `python -m adastft.train`")
    args = [sys.executable, "-m", "adastft.train", *tiny(tmp_path, epochs=1), "tracking=off", "train.threads=1"]
    first = subprocess.run(
        [*args, f"train.out_dir={tmp_path}/a"], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 0, first.stderr[-3000:]
    (cache,) = (tmp_path / "cache").glob("*.arrow")
    good = cache.read_bytes()
    damaged = bytearray(good)
    middle = len(damaged) // 2  # inside the audio of some clip
    damaged[middle : middle + 64] = bytes(64)
    cache.write_bytes(bytes(damaged))
    second = subprocess.run(
        [*args, f"train.out_dir={tmp_path}/b"], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300
    )
    output = second.stdout + second.stderr
    problems = []
    if second.returncode != 0:
        problems.append(f"the run failed: {second.stderr[-2000:]}")
    if "is damaged" not in output:
        problems.append("the damage was not reported")
    if cache.read_bytes() != good:
        problems.append("the rebuilt cache differs from the original")
    a, b = load_checkpoint(tmp_path / "a/last.pt"), load_checkpoint(tmp_path / "b/last.pt")
    if a["history"][0]["train_loss"] != b["history"][0]["train_loss"]:
        problems.append("training on the rebuilt cache differs from training on the original")
    case.fault(survived=not problems, lost=len(problems))
    assert not problems, "\n".join(problems)


# ---- a full disk -------------------------------------------------------------------------------


@pytest.mark.slow
def test_disk_full_while_writing_a_checkpoint(tmp_path, faults, small_volume, monkeypatch):
    """200 MiB hold the first epoch's checkpoint (134 MB: ResNet-18 and its AdamW state; best.pt,
    and last.pt linked to it); the second epoch's write cannot fit beside it. A clear error, and
    epoch 0's files intact."""
    volume = small_volume("200m")
    case = faults("disk full while writing a checkpoint" + (" (tmpfs)" if volume else " (ENOSPC injected)"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    if volume is not None:
        out_dir = volume / "run"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "adastft.train",
                *tiny(tmp_path, epochs=3),
                f"train.out_dir={out_dir}",
                "train.threads=1",
            ],
            cwd=tmp_path,
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        code, stderr = proc.returncode, proc.stderr
    else:  # no mount here: from the second checkpoint write on, every write fails with ENOSPC
        import adastft.checkpoint as checkpoint
        from adastft.checkpoint import CheckpointError
        from adastft.training import train

        out_dir = tmp_path / "run"
        real_init, real_write, sinks = checkpoint._Sink.__init__, checkpoint._Sink.write, []

        def counting_init(self, fd):
            real_init(self, fd)
            sinks.append(self)

        def full_disk_write(self, data):
            if len(sinks) > 1:
                self.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                raise self.error
            return real_write(self, data)

        monkeypatch.setattr(checkpoint._Sink, "__init__", counting_init)
        monkeypatch.setattr(checkpoint._Sink, "write", full_disk_write)
        cfg = tiny_dict(
            tmp_path, epochs=3, tracking={"enabled": True, "uri": uri, "experiment": "reliability", "log_model": False}
        )
        code, stderr = 0, ""
        try:
            train(cfg)
        except CheckpointError as exc:
            code, stderr = 2, f"adastft.train: error: {exc}"

    problems = []
    errors = [line for line in stderr.splitlines() if ": error:" in line]
    if code != 2 or "Traceback" in stderr:
        problems.append(f"exit status {code}, want 2 and no traceback: {stderr[-1500:]}")
    if len(errors) != 1 or "No space left on device" not in errors[0] or "cannot write checkpoint" not in errors[0]:
        problems.append(f"want one error line naming the checkpoint and the full disk: {errors}")
    for name in ("best.pt", "last.pt"):
        try:
            if load_checkpoint(out_dir / name)["epoch"] != 0:
                problems.append(f"{name} is not epoch 0's")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"epoch 0's {name} was damaged: {exc}")
    left = sorted(p.name for p in out_dir.iterdir() if p.name not in ("best.pt", "last.pt", "train.log"))
    if left:
        problems.append(f"left on the full disk: {left}")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("reliability").experiment_id])
    if run.info.status != "FAILED":
        problems.append(f"the MLflow run is {run.info.status}, want FAILED")
    case.fault(survived=not problems, lost=sum("damaged" in p for p in problems))
    assert not problems, "\n".join(problems)


class _SmallDisk:
    """``pyarrow.OSFile`` on a disk with ``free`` bytes left: the injected full disk where this
    machine forbids mounting a tmpfs. Reads and every other file are untouched."""

    free = 0

    def __init__(self, path, mode="rb"):
        self._file = open(path, mode)
        self.closed = False

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > _SmallDisk.free:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _SmallDisk.free -= size
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        self.closed = True

    def tell(self) -> int:
        return self._file.tell()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.mark.slow
def test_disk_full_while_writing_the_cache(tmp_path, faults, small_volume, monkeypatch):
    """A 3 MiB volume holds a small cache; a rebuild of it with more files and a new, larger
    cache do not fit. Each is a clear error; the cache already there is untouched and readable."""
    volume = small_volume("3m")
    case = faults("disk full while writing the cache" + (" (tmpfs)" if volume else " (ENOSPC injected)"))
    folder = volume or tmp_path / "volume"
    root = write_folder(tmp_path / "data", {"a": 10, "b": 10}, seconds=0.5)  # 80 KB of audio
    spec = DataSpec(
        source="folder", root=str(root), cache_dir=str(folder / "cache"), sample_rate=RATE, clip_seconds=0.5
    )
    small = prepare(spec)
    path, before, key = Path(small.path), Path(small.path).read_bytes(), read_key(small.path)
    if volume is None:  # what a 3 MiB disk would have left
        import adastft.data.cache as cache

        _SmallDisk.free = 3 * 2**20 - len(before)
        monkeypatch.setattr(cache.pa, "OSFile", _SmallDisk)
    problems = []

    def intact(label: str) -> None:
        if path.read_bytes() != before or read_key(path) != key:
            problems.append(f"{label}: the cache already there changed")
        left = [p.name for p in path.parent.iterdir() if p.name != path.name and not p.name.endswith(".lock")]
        if left:
            problems.append(f"{label}: left on the full disk: {left}")

    # 1. the same dataset grown: its rebuild (spill + new file beside the old) cannot fit
    for i in range(120):
        sf.write(root / "a" / f"more_{i}.wav", tone(seconds=0.5, seed=100 + i), RATE)
    try:
        prepare(spec)
        problems.append("rebuilding a grown dataset on a full disk did not fail")
    except CacheError as exc:
        if "No space left on device" not in str(exc) or str(path) not in str(exc):
            problems.append(f"unclear error: {exc}")
    intact("rebuild")
    case.fault(survived=not problems, lost=sum("changed" in p for p in problems), note="rebuild of a grown dataset")

    # 2. a new cache of 2.5 MB (synthetic) beside the small one, through the training command line
    n = len(problems)
    if volume is not None:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "adastft.train",
                *tiny(tmp_path, epochs=1),
                "tracking=off",
                f"data.cache_dir={folder / 'cache'}",
                f"train.out_dir={tmp_path}/run",
            ],
            cwd=tmp_path,
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        code, stderr = proc.returncode, proc.stderr
    else:  # in this process, where the injected full disk is
        from adastft.training import train

        code, stderr = 0, ""
        try:
            train(tiny_dict(tmp_path, epochs=1, data={"cache_dir": str(folder / "cache")}))
        except CacheError as exc:
            code, stderr = 2, f"adastft.train: error: {exc}"
    errors = [line for line in stderr.splitlines() if ": error:" in line]
    if (
        code != 2
        or "Traceback" in stderr
        or len(errors) != 1
        or "cannot write the cache" not in errors[0]
        or "No space left on device" not in errors[0]
    ):
        problems.append(f"a new cache: exit {code}, error lines {errors}: {stderr[-1500:]}")
    intact("new cache")
    if (tmp_path / "run" / "last.pt").exists():
        problems.append("training started without its data")
    case.fault(
        survived=len(problems) == n,
        lost=sum("changed" in p for p in problems[n:]),
        note="new cache via `python -m adastft.train`",
    )
    assert not problems, "\n".join(problems)
