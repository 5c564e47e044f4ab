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
