"""Data pipeline bench: loader throughput against the model's consumption, and reader memory.

    python bench/bench_data.py                     # about 1.5 min on 2 CPU cores
    python bench/bench_data.py --clips-per-class 10 --cache-dir /tmp/adastft-bench

1. Builds (once, in a child process) a synthetic cache of 30 s clips at 22050 Hz, the GTZAN shape.
2. Memory of readers (below), measured while this process does not map the cache.
3. Throughput: training crops of 30 s / 12 parts (55125 samples) through a real torch DataLoader
   at batch 16 (``train_loader``; 0 and 2 persistent workers), in samples/s, against the
   model's consumption: training steps/s of AdaSTFT(22050, n_fft=1024, hop=512, 128 mels,
   log1p) + torchvision resnet18(num_classes=10) on the spectrogram repeated to 3 channels,
   forward + backward + AdamW step at batch 16, on this machine's CPU. Target: loader >= 20x.
Memory of readers: reader processes open the cache (memory-mapped) and each reads every
   byte of it; while all of them are alive, each reports USS (pages only it maps) and PSS
   (each page divided among the processes that map it), before and after touching. The page
   cache pages of the file are clean and file-backed: with ONE reader they are mapped by one
   process only, so the kernel counts them in that process's USS (which then grows by about
   the cache size, though that memory is reclaimable page cache, not heap). With N readers
   the same pages are shared: each reader's USS grows by ~0 and its PSS by ~cache/N. Both
   cases are printed; the target (USS growth <= 10% of the cache size) is about N >= 2 readers
   on one node, the case the mmap design is for. The absolute USS of a reader also holds the
   Python interpreter and torch (imported by the adastft package), printed as "base".
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adastft import AdaSTFT  # noqa: E402
from adastft.data import DataSpec, prepare, train_loader  # noqa: E402

MB = 1024 * 1024


def loader_throughput(store, batch: int, parts: int, workers: int, seconds: float) -> float:
    loader = train_loader(store, batch_size=batch, parts=parts, seed=0, num_workers=workers)
    it = iter(loader)
    next(it)  # start the workers
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def model_throughput(crop: int, batch: int, steps: int) -> float:
    import torchvision

    front = AdaSTFT(sample_rate=22050, n_fft=1024, hop_length=512, n_mels=128, compression="log1p", learn_window=True)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    opt = torch.optim.AdamW(front.parameter_groups(lr=1e-4) + [{"params": net.parameters()}], lr=1e-3)
    x, y = torch.randn(batch, crop), torch.randint(0, 10, (batch,))

    def step() -> None:
        spec = front(x)[:, None].expand(-1, 3, -1, -1)  # (B, 3, M, T)
        loss = torch.nn.functional.cross_entropy(net(spec), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def _reader(path: str, touched, measure, results) -> None:
    import psutil

    from adastft.data import ClipStore

    proc = psutil.Process()
    store = ClipStore(path)
    before = proc.memory_full_info()
    total = 0.0
    for i in range(len(store)):
        total += float(store.audio(i).sum(dtype="float64"))  # reads every page of the clip
    touched.put(os.getpid())
    measure.wait()
    after = proc.memory_full_info()
    results.put((os.getpid(), before.uss, before.pss, after.uss, after.pss, total))


def reader_memory(path: str, readers: int) -> list[tuple]:
    ctx = mp.get_context("spawn")
    touched, results, measure = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_reader, args=(path, touched, measure, results)) for _ in range(readers)]
    for p in procs:
        p.start()
    for _ in procs:
        touched.get(timeout=300)
    measure.set()  # every reader is alive and has touched the whole cache
    out = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    return out


def _prepare_child(spec: DataSpec, out) -> None:
    out.put(prepare(spec).path)


def prepare_elsewhere(spec: DataSpec) -> str:
    """Build the cache in a child, so that this process does not map it during the memory test."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_prepare_child, args=(spec, out))
    p.start()
    path = out.get(timeout=600)
    p.join()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default="/tmp/adastft-bench")
    parser.add_argument("--clips-per-class", type=int, default=10)
    parser.add_argument("--parts", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0, help="loader timing per setting")
    parser.add_argument("--steps", type=int, default=3, help="model training steps timed")
    args = parser.parse_args()

    spec = DataSpec(
        source="synthetic",
        cache_dir=args.cache_dir,
        sample_rate=22050,
        clip_seconds=30.0,
        synthetic_clips_per_class=args.clips_per_class,
    )
    start = time.perf_counter()
    path = prepare_elsewhere(spec)
    size = os.path.getsize(path)
    print(f"cache: {path}  {size / MB:.0f} MiB (prepare {time.perf_counter() - start:.1f} s)")
    print(f"machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, no GPU used")

    print(f"\nreader memory, cache {size / MB:.0f} MiB (USS/PSS growth from touching every byte; base = before):")
    for readers in (1, 2):
        rows = reader_memory(path, readers)
        for pid, uss0, pss0, uss1, pss1, _ in rows:
            print(
                f"  {readers} reader(s), pid {pid}: USS +{(uss1 - uss0) / MB:6.1f} MiB "
                f"({(uss1 - uss0) / size:6.1%} of cache), PSS +{(pss1 - pss0) / MB:6.1f} MiB "
                f"({(pss1 - pss0) / size:6.1%}); base USS {uss0 / MB:.0f} MiB"
            )
        if readers > 1:
            worst = max((uss1 - uss0) / size for _, uss0, _, uss1, _, _ in rows)
            print(
                f"  with {readers} readers, worst USS growth {worst:.1%} of cache; target <= 10%: "
                f"{'PASS' if worst <= 0.10 else 'FAIL'}"
            )

    store = prepare(spec)  # reuses the cache; from here on this process maps it too
    crop = store.clip_samples // args.parts
    # The model first: persistent loader workers from the loader runs cannot compete with it.
    model = model_throughput(crop, args.batch, args.steps)
    loader = {w: loader_throughput(store, args.batch, args.parts, w, args.seconds) for w in (0, 2)}
    best = max(loader, key=loader.get)
    print(f"\nthroughput at crop {crop} samples ({crop / 22050:.2f} s), batch {args.batch}:")
    for w, rate in loader.items():
        print(f"  loader, num_workers={w}: {rate:10.0f} samples/s")
    print(
        f"  model (AdaSTFT + resnet18 fwd+bwd+AdamW, CPU): {model:10.1f} samples/s ({model / args.batch:.2f} steps/s)"
    )
    ratio = loader[best] / model
    print(
        f"  ratio loader/model: {ratio:.0f}x (num_workers={best})  target >= 20x: {'PASS' if ratio >= 20 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
