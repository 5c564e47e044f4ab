"""Does the data loader keep up with training? Full training steps fed by the real loader vs
the same steps on batches already in memory, measured side by side in one run.

Run: ``python bench/bench_train.py`` (``--steps``, ``--workers``; ``--device cuda`` on a GPU).

Setup: the default GTZAN-like shape, 30 s clips at 22050 Hz cut into 12 parts (2.5 s crops),
batch 16, on a synthetic cache; model AdaSTFT (window and kernel learning) + resnet18, AdamW,
waveform augmentation on. "memory" replays batches drawn from the same loader beforehand, so
both runs do identical arithmetic and differ only in where the batches come from.
Target: loader samples/s >= 0.9 x in-memory samples/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adastft.config import Config  # noqa: E402
from adastft.data import TrainCrops, prepare  # noqa: E402
from adastft.training import build_augment, build_model, build_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--clips-per-class", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config.from_dict(
            {
                "data": {
                    "source": "synthetic",
                    "cache_dir": tmp,
                    "clip_seconds": 30.0,
                    "parts": 12,
                    "synthetic_clips_per_class": args.clips_per_class,
                    "split": "random",
                    "batch_size": 16,
                    "num_workers": args.workers,
                },
                "stft": {"learn_window": True, "learn_kernel": True},
            }
        )
        started = time.perf_counter()
        store = prepare(cfg.data.spec())
        print(
            f"cache: {len(store)} clips of 30 s built in {time.perf_counter() - started:.1f} s; "
            f"{args.steps} steps of batch 16 (2.5 s crops) on {device}, loader workers {args.workers}"
        )
        torch.manual_seed(0)
        model = build_model(cfg, len(store.classes)).to(device)
        model.set_frontend_learning(window=True, kernel=True)
        optimizer = build_optimizer(cfg, model)
        augment = build_augment(cfg).to(device)
        crops = TrainCrops(store, split="train", parts=12, seed=0)

        def loader():
            return DataLoader(
                crops,
                batch_size=16,
                shuffle=True,
                drop_last=True,
                num_workers=args.workers,
                persistent_workers=args.workers > 0,
                pin_memory=device.type == "cuda",
            )

        def step(x, y):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = torch.nn.functional.cross_entropy(model(augment(x)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss

        def batches():
            while True:
                yield from loader()

        stream = batches()
        cached = [next(stream) for _ in range(args.steps)]
        for x, y in cached[:2]:  # warm-up
            step(x, y)

        def timed(source) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _, (x, y) in zip(range(args.steps), source):
                loss = step(x, y)
            float(loss.detach())
            return time.perf_counter() - start

        # alternate the two, twice, so drift of the machine hits both alike
        t_loader, t_memory = [], []
        for _ in range(2):
            t_loader.append(timed(batches()))
            t_memory.append(timed(iter(cached)))
        loader_sps = 16 * args.steps / min(t_loader)
        memory_sps = 16 * args.steps / min(t_memory)
        print(f"{'real loader':<22}{loader_sps:>9.1f} samples/s")
        print(f"{'batches in memory':<22}{memory_sps:>9.1f} samples/s")
        ratio = loader_sps / memory_sps
        print(f"ratio loader / memory {ratio:>9.3f}   target >= 0.9  {'met' if ratio >= 0.9 else 'MISSED'}")


if __name__ == "__main__":
    main()
