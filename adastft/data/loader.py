"""Datasets over a ``ClipStore``: random training crops and evaluation parts, and their loaders.

A clip of ``clip_samples`` is cut into ``parts`` segments of ``crop_samples = clip_samples //
parts``. Training sees ``crops_per_clip`` random crops of that length per clip per epoch (a new
one each access); evaluation sees the ``parts`` consecutive segments of a clip (or
``eval_parts`` of them, evenly spaced) at once, to be classified in one batch and voted on
(:func:`adastft.data.vote`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from adastft.checks import need
from adastft.data.store import ClipStore


def check_parts(parts: int, crops_per_clip: int = 1, eval_parts: int | None = None) -> None:
    """The datasets' own arguments, checked without a store (what a config check needs)."""
    need(_positive_int(parts), f"parts must be a positive integer, got {parts!r}")
    need(
        _positive_int(crops_per_clip),
        "crops_per_clip must be an integer >= 1 (random crops of each clip per "
        f"epoch; 1 is the original's recipe), got {crops_per_clip!r}",
    )
    need(
        eval_parts is None or _positive_int(eval_parts),
        "eval_parts must be None (vote over every part) or an integer >= 1 (that many evenly spaced parts), "
        f"got {eval_parts!r}",
    )


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check(store: ClipStore, split: str, parts: int) -> tuple[np.ndarray, int]:
    if not isinstance(store, ClipStore):
        raise ValueError(f"store must be a ClipStore (from prepare), got {type(store).__name__}")
    check_parts(parts)
    crop = store.clip_samples // parts
    if crop < 1:
        raise ValueError(
            f"parts={parts} leaves no samples per part of a {store.clip_samples}-sample clip; use fewer parts"
        )
    indices = store.indices(split)
    if len(indices) == 0:
        raise ValueError(f"split {split!r} of {store.path} is empty; check the split fractions or lists")
    return indices, crop


def spaced_parts(parts: int, eval_parts: int | None) -> list[int]:
    """The segments, of ``parts``, that evaluation uses: at most ``eval_parts``, evenly spaced (each
    the middle one of its share of the clip), ``spaced_parts(6, 3) == [1, 3, 5]``,
    ``spaced_parts(6, 1) == [3]``; all of them for ``None`` or ``eval_parts >= parts`` (a search may
    sample ``parts`` below the evaluation's count)."""
    check_parts(parts, eval_parts=eval_parts)
    if eval_parts is None or eval_parts >= parts:
        return list(range(parts))
    return [int((i + 0.5) * parts / eval_parts) for i in range(eval_parts)]


class TrainCrops(Dataset):
    """Item ``k``: ``(crop float32 (crop_samples,), label int)``, a random crop of clip
    ``k // crops_per_clip``: an epoch draws ``crops_per_clip`` crops of every clip.

    The crop start is uniform in ``[0, clip_samples - crop_samples]``, drawn anew on every
    access, so a crop always lies inside the clip. Starts come from a numpy generator seeded
    with ``seed`` (and, in a DataLoader worker, the worker's seed, which DataLoader derives from
    torch's RNG: seed torch to make multi-worker runs repeatable).

    Example::

        ds = TrainCrops(store, split="train", parts=12, seed=0)
        crop, label = ds[0]  # (clip_samples // 12,), int
    """

    def __init__(
        self, store: ClipStore, split: str = "train", parts: int = 12, seed: int = 0, crops_per_clip: int = 1
    ) -> None:
        self.store = store
        self.split = split
        self.parts = parts
        self.indices, self.crop_samples = _check(store, split, parts)
        check_parts(parts, crops_per_clip=crops_per_clip)
        self.crops_per_clip = crops_per_clip
        self.seed = int(seed)
        self.epoch = 0
        self._rng: np.random.Generator | None = None
        self._rng_owner: int | None = None

    def __len__(self) -> int:
        return len(self.indices) * self.crops_per_clip

    def set_epoch(self, epoch: int) -> None:
        """Start the crop stream of ``epoch``: crops then depend on (seed, epoch) alone, so a run
        resumed at an epoch draws what the uninterrupted run drew. With DataLoader workers, use
        non-persistent workers (they pick the epoch up when they start)."""
        self.epoch = int(epoch)
        self._rng = None

    def _generator(self) -> np.random.Generator:
        info = get_worker_info()
        owner = -1 if info is None else info.seed
        if self._rng is None or self._rng_owner != owner:  # a fresh stream per worker process
            self._rng = np.random.default_rng([self.seed, self.epoch, owner + 1])
            self._rng_owner = owner
        return self._rng

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        i = int(self.indices[k // self.crops_per_clip])
        start = int(self._generator().integers(0, self.store.clip_samples - self.crop_samples + 1))
        crop = np.array(self.store.audio(i)[start : start + self.crop_samples])  # copy out of the map
        return torch.from_numpy(crop), int(self.store.labels[i])


class EvalParts(Dataset):
    """Item ``k``: ``(segments float32 (n, crop_samples), label int)`` for the ``k``-th clip, ``n``
    = ``eval_parts`` or, by default, ``parts``.

    Segment ``j`` is samples ``[j * crop_samples, (j + 1) * crop_samples)``; the last
    ``clip_samples % parts`` samples are left out. With ``eval_parts``, only the segments
    :func:`spaced_parts` picks. Deterministic.
    """

    def __init__(self, store: ClipStore, split: str = "val", parts: int = 12, eval_parts: int | None = None) -> None:
        self.store = store
        self.split = split
        self.parts = parts
        self.indices, self.crop_samples = _check(store, split, parts)
        self.chosen = spaced_parts(parts, eval_parts)
        self.segments = len(self.chosen)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        i = int(self.indices[k])
        audio = self.store.audio(i)[: self.parts * self.crop_samples]
        segments = np.array(audio.reshape(self.parts, self.crop_samples)[self.chosen])  # (n, S), a copy
        return torch.from_numpy(segments), int(self.store.labels[i])


def check_batching(batch_size: int, num_workers: int = 0) -> None:
    """Raise ``ValueError`` naming a bad ``batch_size`` (>= 1) or ``num_workers`` (>= 0): the
    loaders here and the config (``data.batch_size``, ``data.eval_batch_size``, ``data.num_workers``)
    share this one check."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")


def train_loader(
    store: ClipStore,
    batch_size: int,
    parts: int = 12,
    seed: int = 0,
    num_workers: int = 0,
    split: str = "train",
    drop_last: bool = True,
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffled batches ``(batch, crop_samples)`` float32 and ``(batch,)`` int64 labels.

    Workers, if any, are persistent (the store re-maps the cache once per worker, not per
    epoch). Shuffling uses a torch generator seeded with ``seed``.
    """
    check_batching(batch_size, num_workers)
    dataset = TrainCrops(store, split=split, parts=parts, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=drop_last and len(dataset) >= batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
    )


def eval_loader(
    store: ClipStore, split: str, batch_size: int, parts: int = 12, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Batches ``(clips, parts, crop_samples)`` float32 and ``(clips,)`` int64 labels, in order.

    ``batch_size`` counts clips; the model sees ``batch_size * parts`` segments per batch
    (``x.flatten(0, 1)``), and the logits go back to ``(clips, parts, classes)`` for voting.
    """
    check_batching(batch_size, num_workers)
    dataset = EvalParts(store, split=split, parts=parts)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
