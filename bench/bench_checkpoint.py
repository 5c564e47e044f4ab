"""What an epoch's checkpoint costs the training loop, for the default model, side by side in one run.

Run: ``python bench/bench_checkpoint.py [--repeats 5] [--dir /path/on/the/disk/to/test]``.

The state is what ``train()`` saves: ResNet-18 (10 classes, one AdaSTFT front-end) with its AdamW
state, 134 MB. Three ways to write an epoch that improved (best.pt and last.pt) and one that did
not (last.pt only):

- ``two writes``: best.pt and last.pt each written in full, fsynced (what train() did before);
- ``write + link``: best.pt written and fsynced, last.pt a hard link to it (``python -m adastft.train``);
- ``no fsync``: the same without fsync, for a trial whose reporter persists the checkpoint itself
  (Tune copies it to its storage), as ``tune/trainable.py``'s reporters declare.

Medians of ``--repeats`` epochs each, in the folder given (default: the temp folder, where trials
write their working copies).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from adastft.checkpoint import link_checkpoint, save_checkpoint  # noqa: E402
from adastft.config import Config  # noqa: E402
from adastft.training import build_model, build_optimizer  # noqa: E402


def training_state() -> dict:
    cfg = Config.from_dict({"optim": {"name": "adamw"}})
    model = build_model(cfg, 10)
    optimizer = build_optimizer(cfg, model)
    model(torch.randn(2, int(cfg.data.sample_rate * 3))).sum().backward()
    optimizer.step()  # AdamW's moments exist from the first step on
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 0}


def epoch(state: dict, folder: Path, way: str, improved: bool) -> float:
    best, last = folder / "best.pt", folder / "last.pt"
    started = time.perf_counter()
    if way == "two writes":
        if improved:
            save_checkpoint(state, best)
        save_checkpoint(state, last)
    else:
        durable = way != "no fsync"
        if improved:
            save_checkpoint(state, best, durable=durable)
            link_checkpoint(best, last, durable=durable)
        else:
            save_checkpoint(state, last, durable=durable)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: the temp folder)")
    args = parser.parse_args()
    state = training_state()
    ways = ("two writes", "write + link", "no fsync")
    times: dict[tuple[str, bool], list[float]] = {(w, i): [] for w in ways for i in (True, False)}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        save_checkpoint(state, folder / "best.pt")
        save_checkpoint(state, folder / "last.pt")
        size = (folder / "last.pt").stat().st_size
        for _ in range(args.repeats):  # interleaved, so drift hits all ways alike
            for way in ways:
                for improved in (True, False):
                    times[(way, improved)].append(epoch(state, folder, way, improved))
    print(
        f"checkpoint of one epoch, {size / 1e6:.0f} MB state (ResNet-18 + AdamW), median of {args.repeats}, "
        f"in {args.dir or tempfile.gettempdir()}"
    )
    print(f"  {'':14s} {'improved':>10s} {'not':>10s} {'improved vs two writes':>24s}")
    base = statistics.median(times[("two writes", True)])
    for way in ways:
        a, b = (statistics.median(times[(way, i)]) for i in (True, False))
        print(f"  {way:14s} {a * 1e3:8.0f} ms {b * 1e3:8.0f} ms {a / base:24.2f}")


if __name__ == "__main__":
    main()
