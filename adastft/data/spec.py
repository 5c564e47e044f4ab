"""``DataSpec`` says which clips, decoded how, split how; ``prepare(spec)`` returns their store.

``prepare`` lists the source, computes the cache key, builds the Arrow cache once (or reuses
it; see :mod:`adastft.data.cache`), opens it memory-mapped and assigns the splits. Splits are
not part of the cache, so changing the split seed or fractions never re-decodes audio.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from adastft.checks import need, one_of
from adastft.data import synthetic
from adastft.data.cache import FORMAT, Row, cache_key, ensure_cache, file_fingerprints, write_cache
from adastft.data.decode import BadAudio, BadAudioWarning, decode_file
from adastft.data.sources import (
    AUDIO_EXTENSIONS,
    SPLITS,
    DataError,
    list_folder,
    list_gtzan,
    read_split_files,
    standard_gtzan_split,
    stratified_split,
)
from adastft.data.store import ClipStore

log = logging.getLogger(__name__)

# A clip whose RMS level is below this is silence to the model (music sits at -30..-10 dBFS).
SILENT_DBFS = -60.0

SOURCES = ("synthetic", "gtzan", "folder")
_DEFAULT_CLIP_SECONDS = {"synthetic": 4.0, "gtzan": 30.0, "folder": 30.0}


@dataclass(frozen=True)
class DataSpec:
    """Which clips, decoded how, split how. Validated on construction.

    Arguments:
        source: ``"synthetic"`` (built-in, 10 classes), ``"gtzan"`` or ``"folder"``
            (``root/<class>/<file>``).
        root: the data folder, required for ``gtzan`` and ``folder``. For GTZAN the Kaggle
            folder (``.../Data/genres_original`` or its parents) or the original ``genres``.
        cache_dir: where the Arrow cache lives (one file per source, root and decoding).
        sample_rate: clips are resampled to this rate.
        clip_seconds: clips are padded or trimmed to this length; ``None`` gives 30 s for
            ``gtzan`` and ``folder`` (GTZAN clips are 29.9-30.7 s) and 4 s for ``synthetic``.
        split: ``"standard"``: GTZAN's artist-filtered 443/197/290 lists; for ``synthetic``
            and ``folder``, which have no standard split, the same as ``"random"``: a seeded
            split stratified by class with ``val_fraction`` and ``test_fraction``.
        split_files: ``{"train": names, "val": names, "test": names}`` overriding ``split``;
            each value a list of names or the path of a text file with one name per line. A
            name is a path relative to the root, with or without extension, or a bare stem.
        seed: the random split's seed, and the synthetic generator's.
        on_bad: ``"skip"`` unreadable, empty or short (see ``min_clip_fraction``) files with
            one warning that lists them all, or ``"error"`` to stop at any of them.
        min_clip_fraction: a file shorter than this fraction of ``clip_seconds`` is padded with
            a warning (``on_bad="skip"``) or is an error (``on_bad="error"``); longer files are
            padded or trimmed silently (GTZAN's 29.9-30.7 s clips).
        synthetic_clips_per_class: clips of each of the 10 synthetic classes.
        extensions: file extensions that count as audio for ``folder``.

    Example: ``DataSpec(source="gtzan", root="~/data/gtzan", cache_dir="/tmp/cache")``.
    """

    source: str = "synthetic"
    root: str | None = None
    cache_dir: str = ".cache/adastft"
    sample_rate: int = 22050
    clip_seconds: float | None = None
    split: str = "standard"
    split_files: dict | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    on_bad: str = "skip"
    min_clip_fraction: float = 0.9
    synthetic_clips_per_class: int = 20
    extensions: tuple[str, ...] = field(default=AUDIO_EXTENSIONS)

    def __post_init__(self) -> None:
        one_of("source", self.source, SOURCES)
        if self.source == "synthetic":
            need(
                self.root is None,
                f"root is not used by source='synthetic', got {self.root!r}; drop it or pick source='gtzan'|'folder'",
            )
        else:
            need(
                isinstance(self.root, (str, os.PathLike)) and str(self.root) != "",
                f"root is required for source={self.source!r}: the folder that holds the data",
            )
        need(
            isinstance(self.sample_rate, int) and not isinstance(self.sample_rate, bool) and self.sample_rate >= 1000,
            f"sample_rate must be an integer >= 1000, got {self.sample_rate!r}",
        )
        if self.clip_seconds is None:
            object.__setattr__(self, "clip_seconds", _DEFAULT_CLIP_SECONDS[self.source])
        need(
            isinstance(self.clip_seconds, (int, float)) and self.clip_seconds > 0,
            f"clip_seconds must be positive, got {self.clip_seconds!r}",
        )
        object.__setattr__(self, "clip_seconds", float(self.clip_seconds))
        one_of("split", self.split, ("standard", "random"))
        if self.split_files is not None:
            need(
                isinstance(self.split_files, dict)
                and set(self.split_files) <= set(SPLITS)
                and "train" in self.split_files,
                f"split_files must be a dict with keys among {', '.join(SPLITS)} including 'train', got {self.split_files!r:.80}",
            )
            read_split_files(self.split_files)  # list files exist, no name in two splits: before any decoding
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and 0 <= value < 1, f"{name} must be in [0, 1), got {value!r}")
        need(
            self.val_fraction + self.test_fraction < 1,
            f"val_fraction + test_fraction must be below 1, got {self.val_fraction + self.test_fraction:g}",
        )
        need(isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")
        one_of("on_bad", self.on_bad, ("skip", "error"))
        need(
            isinstance(self.min_clip_fraction, (int, float)) and 0 < self.min_clip_fraction <= 1,
            f"min_clip_fraction must be in (0, 1], got {self.min_clip_fraction!r}",
        )
        need(
            isinstance(self.synthetic_clips_per_class, int) and self.synthetic_clips_per_class >= 1,
            f"synthetic_clips_per_class must be a positive integer, got {self.synthetic_clips_per_class!r}",
        )
        need(
            len(self.extensions) > 0 and all(isinstance(e, str) and e.startswith(".") for e in self.extensions),
            f"extensions must be a non-empty tuple like ('.wav', '.flac'), got {self.extensions!r}",
        )
        object.__setattr__(self, "extensions", tuple(e.lower() for e in self.extensions))

    @property
    def clip_samples(self) -> int:
        """Samples per clip: ``round(clip_seconds * sample_rate)``."""
        return int(round(self.clip_seconds * self.sample_rate))


def prepare(spec: DataSpec) -> ClipStore:
    """Build (once) or reuse the cache for ``spec``; return its memory-mapped store with splits.

    Safe to call from many processes at once: one decodes, the others wait and reuse. Files
    skipped or padded at build time are reported with one :class:`BadAudioWarning` per call;
    with ``on_bad="error"`` any of them raises :class:`DataError` instead.
    """
    if not isinstance(spec, DataSpec):
        raise ValueError(f"prepare needs a DataSpec, got {type(spec).__name__}")
    sr, clip_samples = spec.sample_rate, spec.clip_samples
    skipped: list[tuple[str, str]] = []
    padded: list[tuple[str, str]] = []
    rms_db: list[float] = []
    labels: list[int] = []
    names: list[str] = []

    if spec.source == "synthetic":
        classes = list(synthetic.CLASSES)
        n = spec.synthetic_clips_per_class
        payload = {"generator": synthetic.GENERATOR_VERSION, "seed": spec.seed, "n": n}
        stem = f"synthetic-seed{spec.seed}-n{n}"

        def rows() -> Iterator[Row]:
            for label, name in enumerate(classes):
                for i in range(n):
                    audio = synthetic.generate_clip(label, i, spec.seed, sr, clip_samples)
                    yield audio, label, f"{name}/{name}.{i:05d}", sr, 1, clip_samples
    else:
        lister = list_gtzan if spec.source == "gtzan" else (lambda r: list_folder(r, spec.extensions))
        classes, listing = lister(spec.root)
        root = str(Path(spec.root).expanduser().resolve())
        payload = {"root": root, "files": file_fingerprints((p, name) for p, name, _ in listing)}
        stem = f"{spec.source}-{Path(root).name}-{hashlib.sha256(root.encode()).hexdigest()[:8]}"
        if spec.split_files is not None:  # mistyped lists are found before any decoding
            mapping = read_split_files(spec.split_files)
            listed = [name for _, name, _ in listing]
            assigned, matched = _assign(listed, mapping)
            _check_split_names(spec, mapping, assigned, [k for k in mapping if k not in matched], listed)
        min_samples = spec.min_clip_fraction * spec.clip_seconds

        def rows() -> Iterator[Row]:
            for path, name, label in listing:
                try:
                    d = decode_file(path, sr, clip_samples)
                except BadAudio as e:
                    if spec.on_bad == "error":
                        raise DataError(f"{path}: {e}; fix or remove the file, or use on_bad='skip'") from None
                    skipped.append((name, str(e)))
                    continue
                seconds = d.orig_samples / d.orig_sample_rate
                if seconds < min_samples:
                    reason = f"{seconds:.2f} s padded to {spec.clip_seconds:g} s"
                    if spec.on_bad == "error":
                        raise DataError(f"{path}: {reason}; lower min_clip_fraction or use on_bad='skip'")
                    padded.append((name, reason))
                yield d.audio, label, name, d.orig_sample_rate, d.orig_channels, d.orig_samples

    payload.update(
        format=FORMAT,
        source=spec.source,
        classes=classes,
        sample_rate=sr,
        clip_samples=clip_samples,
        min_clip_fraction=spec.min_clip_fraction,
    )
    key = cache_key(payload)
    path = Path(spec.cache_dir).expanduser() / f"{stem}-{sr}hz-{clip_samples}.arrow"

    def metadata(n_rows: int) -> dict[str, str]:
        return {
            "format": FORMAT,
            "key": key,
            "rows": str(n_rows),
            "source": spec.source,
            "classes": json.dumps(classes),
            "sample_rate": str(sr),
            "clip_samples": str(clip_samples),
            "skipped": json.dumps(skipped),
            "padded": json.dumps(padded),
            "rms_db": json.dumps(rms_db),
        }

    def measured(rows: Iterator[Row]) -> Iterator[Row]:
        for row in rows:
            rms_db.append(round(level_dbfs(row[0]), 1))
            labels.append(row[1])
            names.append(row[2])
            yield row

    def build(tmp: str) -> None:
        n_rows = write_cache(tmp, measured(rows()), clip_samples, metadata)
        if n_rows == 0:
            raise DataError(
                f"no file under {spec.root!r} could be decoded ({len(skipped)} skipped: "
                f"{_listing(skipped, 5)}); check the files"
            )
        _check_silent(classes, labels, names, rms_db, spec.on_bad, warn=False)  # refused: no cache is kept

    built = ensure_cache(path, key, build)
    store = ClipStore(path, key=key)
    log.info("%s cache %s: %d clips", "built" if built else "reused", path, len(store))
    _report_bad(store, spec.on_bad)
    _check_silent(store.classes, store.labels, store.names, store.rms_db, spec.on_bad, warn=True)
    store.set_splits(_splits(spec, store))
    return store


def _listing(items: list[tuple[str, str]], limit: int | None = None) -> str:
    shown = items if limit is None else items[:limit]
    text = "; ".join(f"{name} ({reason})" for name, reason in shown)
    return text + (f"; ... {len(items) - limit} more" if limit is not None and len(items) > limit else "")


def _report_bad(store: ClipStore, on_bad: str) -> None:
    if on_bad == "error" and (store.skipped or store.padded):
        raise DataError(
            f"cache {store.path} was built with on_bad='skip' and left out or padded "
            f"{len(store.skipped) + len(store.padded)} files: {_listing(store.skipped + store.padded, 10)}; "
            "fix them (the cache is rebuilt when files change) or use on_bad='skip'"
        )
    if store.skipped:
        warnings.warn(
            f"skipped {len(store.skipped)} unusable files: {_listing(store.skipped)}", BadAudioWarning, stacklevel=3
        )
    if store.padded:
        warnings.warn(
            f"padded {len(store.padded)} short files with silence: {_listing(store.padded)}",
            BadAudioWarning,
            stacklevel=3,
        )


def _assign(names: list[str], mapping: dict[str, str]) -> tuple[list[str], set[str]]:
    """Each name's split (``""`` for none) and the keys of ``mapping`` that matched: a key is a
    name, the name without its extension, or its bare stem."""
    out, matched = [], set()
    for name in names:
        no_ext = name.rsplit(".", 1)[0] if "." in Path(name).name else name
        key = next((k for k in (name, no_ext, Path(name).stem) if k in mapping), None)
        out.append(mapping[key] if key is not None else "")
        matched.add(key)
    return out, matched


def _check_split_names(
    spec: DataSpec, mapping: dict[str, str], assigned: list[str], unmatched: list[str], names: list[str]
) -> None:
    """A split list of ``spec.split_files`` that matches no clip is an error naming its entries."""
    for split in SPLITS:
        if split in spec.split_files and split not in assigned:
            given = [k for k in mapping if mapping[k] == split]
            wrong = [k for k in given if k in unmatched]
            example = f", e.g. {names[0]!r}" if names else ""
            raise DataError(
                f"no name in split_files[{split!r}] matches a clip under {spec.root} ({len(given)} given, "
                f"{len(given) - len(wrong)} of them skipped as unusable): {_names(wrong or given)}; names "
                f"are paths relative to the root, with or without extension, or bare stems{example}"
            )


def _names(names: list[str], limit: int = 5) -> str:
    return ", ".join(map(repr, names[:limit])) + (f", ... {len(names) - limit} more" if len(names) > limit else "")


def level_dbfs(audio: np.ndarray) -> float:
    """The RMS level of ``audio`` in dB relative to full scale (-200 for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20.0 * math.log10(max(rms, 1e-10))


def _check_silent(
    classes: list[str], labels: list[int] | np.ndarray, names: list[str], rms_db: list[float], on_bad: str, warn: bool
) -> None:
    """Clips below :data:`SILENT_DBFS` teach nothing: an error where they are most of a class (it
    could only be learned from its silence) or with ``on_bad="error"``, else named in a warning."""
    silent = [i for i, db in enumerate(rms_db) if db < SILENT_DBFS]
    if not silent:
        return
    listing = [(names[i], f"{rms_db[i]:.0f} dBFS") for i in silent]
    what = f"silent or nearly (RMS below {SILENT_DBFS:g} dBFS)"
    labels = np.asarray(labels)
    for label, name in enumerate(classes):
        total = int((labels == label).sum())
        quiet = [entry for i, entry in zip(silent, listing) if labels[i] == label]
        if total and 2 * len(quiet) > total:
            raise DataError(
                f"{len(quiet)} of {total} clips of class {name!r} are {what}: {_listing(quiet, 3)}; "
                "the class cannot be learned from them: fix or remove them"
            )
    if on_bad == "error":
        raise DataError(
            f"{len(silent)} clips are {what}: {_listing(listing, 5)}; fix or remove them, or use on_bad='skip'"
        )
    if warn:
        warnings.warn(
            f"{len(silent)} clips are {what} and teach nothing: {_listing(listing, 5)}; fix or remove them",
            BadAudioWarning,
            stacklevel=3,
        )


def _splits(spec: DataSpec, store: ClipStore) -> list[str]:
    if spec.split_files is not None:
        mapping = read_split_files(spec.split_files)
    elif spec.source == "gtzan" and spec.split == "standard":
        mapping = standard_gtzan_split()
    else:
        return stratified_split(store.labels, spec.val_fraction, spec.test_fraction, spec.seed)
    out, matched = _assign(store.names, mapping)
    _, unusable = _assign([name for name, _ in store.skipped], mapping)
    unmatched = [k for k in mapping if k not in matched and k not in unusable]
    if spec.split_files is None:  # GTZAN's standard lists: a copy may lack a few of their clips
        if "train" not in out:
            raise DataError(f"no clip of {store.path} is in GTZAN's standard train list; check data.root")
        if unmatched:
            log.warning(
                "%d clips of GTZAN's standard split are not in %s (skipped or absent)", len(unmatched), spec.root
            )
        return out
    _check_split_names(spec, mapping, out, unmatched, store.names)
    if unmatched:
        warnings.warn(
            f"{len(unmatched)} names in split_files match no clip under {spec.root}: "
            f"{_names(unmatched)}; check them against the files",
            BadAudioWarning,
            stacklevel=3,
        )
    return out
