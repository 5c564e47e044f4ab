"""Targets for training processes that the reliability tests start and kill.

Imported in a ``multiprocessing`` fork server that has already imported ``adastft.training``, so
each training process starts in a fraction of a second instead of the ~6 s a fresh interpreter
spends importing torch: a kill campaign of dozens of processes then fits in a minute. The
processes are real (their own pid, killed with SIGKILL) and run the real ``train(cfg)``.
"""

from __future__ import annotations

import logging
import os


def train_quietly(cfg: dict) -> None:
    """``adastft.training.train(cfg)`` in this process, with one torch thread."""
    import torch

    from adastft.training import train

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    train(cfg)
    os._exit(0)  # skip interpreter teardown: the parent only needs the exit status


def train_stopping_in_a_write(cfg: dict, target: str, point: int | str, hit_file: str, patience: int = 3) -> None:
    """``train(cfg)`` that stops itself (SIGSTOP) inside a write of checkpoint ``target``, for the
    parent to SIGKILL it there: a kill at a chosen point of a write by construction, not by luck.

    ``point``: a byte offset (stop once that many bytes of the temporary file are written and
    flushed to it, or, for a file smaller than that, when it is complete and about to replace
    ``target``), ``"rename"`` (complete, about to replace ``target``) or ``"link"`` (last.pt's
    hard link to best.pt made, about to replace last.pt). ``best.pt`` is written, and last.pt
    linked, only on an epoch that improves: after ``patience`` writes of last.pt without one, the
    next last.pt write is taken at the same point. What was hit is written to ``hit_file`` just
    before the stop.
    """
    import signal
    from pathlib import Path

    from adastft import checkpoint

    aim = {"target": target, "point": point, "plain_last_writes": 0}
    real_write, real_replace = checkpoint._Sink.write, os.replace

    def stop(what: str) -> None:
        Path(hit_file).write_text(what)
        os.kill(os.getpid(), signal.SIGSTOP)

    def write(self, data) -> int:  # inside torch.save: count the bytes of this temporary file
        n = real_write(self, data)
        self.adastft_test_bytes = getattr(self, "adastft_test_bytes", 0) + n
        if not isinstance(aim["point"], int) or self.adastft_test_bytes < aim["point"]:
            return n
        name = Path(os.readlink(f"/proc/self/fd/{self._file.fileno()}")).name  # the temporary file
        if name.startswith(f".{aim['target']}."):
            self._file.flush()  # the bytes so far are in the file when the kill comes
            stop(f"{aim['target']} at byte {self.adastft_test_bytes}")
        return n

    def replace(src, dst, *args, **kwargs):
        name, linked = Path(dst).name, str(src).endswith("link.tmp")
        if name == aim["target"] and (aim["point"] == "link") == linked:
            stop(f"{name} {'linked' if linked else 'complete'}, before the rename")
        if name == "last.pt" and not linked:  # an epoch that did not improve
            aim["plain_last_writes"] += 1
            if aim["plain_last_writes"] >= patience and (aim["target"], aim["point"]) != ("last.pt", "rename"):
                # no best.pt write or last.pt link lately: take the next last.pt write
                aim.update(target="last.pt", point="rename" if aim["point"] == "link" else aim["point"])
        return real_replace(src, dst, *args, **kwargs)

    checkpoint._Sink.write = write
    os.replace = replace
    train_quietly(cfg)
