"""``ClipStore``: a memory-mapped, zero-copy reader of a clip cache.

The audio stays in the page cache, shared by every process on the node that maps the same file;
``store.audio(i)`` is a read-only numpy view into the map, no copy. Small columns (labels,
names, provenance) are read into memory once.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import pyarrow as pa

from adastft.data.cache import FORMAT, CacheError
from adastft.data.sources import SPLITS


class ClipStore:
    """Clips of one cache: ``len(store)`` rows, each ``(clip_samples,)`` float32 at ``sample_rate``.

    Attributes: ``classes`` (list of names, ``labels`` index it), ``labels`` int64 ``(n,)``,
    ``names`` (file names relative to the source root), ``sample_rate``, ``clip_samples``,
    ``skipped`` and ``padded`` (``[(name, reason)]`` recorded when the cache was built),
    ``splits`` (``(n,)`` array of ``"train"|"val"|"test"|""``, ``""`` = in no split).

    Picklable: a copy sent to a DataLoader worker re-maps the file (nothing is copied).

    Example::

        store = ClipStore(".cache/adastft/synthetic-....arrow", splits=["train", ...])
        x = store.audio(store.indices("train")[0])  # (clip_samples,) float32, read-only
    """

    def __init__(self, path: str | os.PathLike, splits: Sequence[str] | None = None, key: str | None = None) -> None:
        self.path = str(path)
        self.key = key
        try:
            self._source = pa.memory_map(self.path, "r")
            reader = pa.ipc.open_file(self._source)
            meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
            if meta.get("format") != FORMAT:
                raise CacheError(f"{self.path} is not an adastft clip cache (format {meta.get('format')!r}); delete it")
            if key is not None and meta.get("key") != key:
                raise CacheError(
                    f"{self.path} has key {meta.get('key', '')[:12]}, expected {key[:12]}; call prepare() to rebuild it"
                )
            self.clip_samples = int(meta["clip_samples"])
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        except (OSError, pa.ArrowException, KeyError) as e:
            raise CacheError(f"cannot read cache {self.path} ({e}); delete it and call prepare() to rebuild") from None
        self.sample_rate = int(meta["sample_rate"])
        self.classes: list[str] = json.loads(meta["classes"])
        self.source = meta.get("source", "")
        self.skipped: list[tuple[str, str]] = [tuple(x) for x in json.loads(meta.get("skipped", "[]"))]
        self.padded: list[tuple[str, str]] = [tuple(x) for x in json.loads(meta.get("padded", "[]"))]
        self.rms_db: list[float] = json.loads(meta.get("rms_db", "[]"))  # per row, dBFS
        self._views: list[np.ndarray] = []
        labels, names, rows = [], [], []
        for batch in batches:
            flat = batch.column("audio").flatten()
            if flat.null_count or len(flat) != batch.num_rows * self.clip_samples:
                raise CacheError(f"cache {self.path} has a malformed audio batch; delete it and call prepare()")
            self._views.append(flat.to_numpy(zero_copy_only=True).reshape(batch.num_rows, self.clip_samples))
            labels.append(batch.column("label").to_numpy())
            names.extend(batch.column("name").to_pylist())
            rows.append(batch.num_rows)
        if sum(rows) != int(meta.get("rows", -1)):
            raise CacheError(
                f"cache {self.path} holds {sum(rows)} rows, its metadata says {meta.get('rows')}; delete it"
            )
        self.labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        self.names: list[str] = names
        self._batch = np.repeat(np.arange(len(rows)), rows)
        self._row = np.concatenate([np.arange(r) for r in rows]) if rows else np.zeros(0, np.int64)
        self.splits = np.full(len(self.labels), "", dtype=object)
        if splits is not None:
            self.set_splits(splits)

    def set_splits(self, splits: Sequence[str]) -> None:
        """Assign every row to ``"train"``, ``"val"``, ``"test"`` or ``""`` (no split)."""
        splits = np.asarray(list(splits), dtype=object)
        if splits.shape != (len(self),):
            raise ValueError(f"splits must have one entry per clip ({len(self)}), got {splits.shape[0]}")
        bad = set(splits.tolist()) - set(SPLITS) - {""}
        if bad:
            raise ValueError(f"splits must be 'train', 'val', 'test' or '', got {sorted(bad)}")
        self.splits = splits

    def __len__(self) -> int:
        return len(self.labels)

    def indices(self, split: str) -> np.ndarray:
        """Row indices (int64, ascending) of ``split``: ``"train"``, ``"val"`` or ``"test"``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return np.flatnonzero(self.splits == split).astype(np.int64)

    def audio(self, i: int) -> np.ndarray:
        """Clip ``i``: float32 ``(clip_samples,)``, a read-only view into the memory map."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"clip index {i} out of range for {len(self)} clips")
        return self._views[self._batch[i]][self._row[i]]

    def __reduce__(self):
        return (ClipStore, (self.path, self.splits.tolist(), self.key))

    def __repr__(self) -> str:
        counts = {s: int((self.splits == s).sum()) for s in SPLITS}
        return (
            f"ClipStore({self.path!r}, clips={len(self)}, classes={len(self.classes)}, "
            f"sample_rate={self.sample_rate}, clip_samples={self.clip_samples}, splits={counts})"
        )
