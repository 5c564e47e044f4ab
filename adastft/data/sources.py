"""Where clips come from: GTZAN in its two common layouts, any class-per-folder set, and splits.

A source lists ``Entry`` rows (file, class, split); decoding happens later, once, in
:mod:`adastft.data.cache`. Nothing here reads audio.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".au", ".aiff", ".aif", ".mp3", ".snd")
GTZAN_GENRES = (
    "blues",
    "classical",
    "country",
    "disco",
    "hiphop",
    "jazz",
    "metal",
    "pop",
    "reggae",
    "rock",
)
GTZAN_HELP = (
    "GTZAN is not downloaded for you: get it from Kaggle "
    "(https://www.kaggle.com/datasets/andradaolteanu/gtzan-dataset-music-genre-classification, "
    "layout Data/genres_original/<genre>/<genre>.000NN.wav) or the original archive "
    "(http://opihi.cs.uvic.ca/sound/genres.tar.gz, layout genres/<genre>/<genre>.000NN.au)"
)


class DataError(ValueError):
    """A data source or cache that cannot be used as given; the message says what to do."""


@dataclass(frozen=True)
class Entry:
    """One labelled file: ``path`` absolute, ``name`` relative to the root (posix), ``split``."""

    path: str
    name: str
    label: int
    split: str


def find_gtzan_root(root: str | os.PathLike) -> Path:
    """The folder that holds the ten genre folders, for either layout.

    Accepts the Kaggle download folder (``.../Data/genres_original``), the original archive's
    folder (``.../genres``) or the genre folders' parent itself. Raises :class:`DataError` that
    says what was expected and where to get GTZAN.
    """
    base = Path(root).expanduser()
    if not base.exists():
        raise DataError(f"GTZAN root {str(base)!r} does not exist; {GTZAN_HELP}")
    if not base.is_dir():
        raise DataError(f"GTZAN root {str(base)!r} is not a folder; {GTZAN_HELP}")
    candidates = [base, base / "genres_original", base / "Data" / "genres_original", base / "genres"]
    for candidate in candidates:
        if all((candidate / genre).is_dir() for genre in GTZAN_GENRES):
            return candidate
    found = sorted(p.name for p in base.iterdir())[:10]
    raise DataError(
        f"GTZAN root {str(base)!r} has no folders {', '.join(GTZAN_GENRES)} (looked in "
        f"{', '.join(str(c) for c in candidates)}; it holds {found or 'nothing'}); {GTZAN_HELP}"
    )


def list_gtzan(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, str, int]]]:
    """``(classes, [(path, name, label)])`` for every ``<genre>/<genre>.000NN.(wav|au)`` file.

    When a clip exists as both ``.au`` and ``.wav`` the ``.wav`` wins (one row per clip).
    """
    genres_dir = find_gtzan_root(root)
    rows: list[tuple[str, str, int]] = []
    for label, genre in enumerate(GTZAN_GENRES):
        by_stem: dict[str, Path] = {}
        for path in sorted((genres_dir / genre).iterdir()):
            if path.suffix.lower() not in (".wav", ".au") or not path.name.startswith(genre + "."):
                continue
            if path.stem not in by_stem or path.suffix.lower() == ".wav":
                by_stem[path.stem] = path
        for stem in sorted(by_stem):
            path = by_stem[stem]
            rows.append((str(path.resolve()), f"{genre}/{path.name}", label))
    if not rows:
        raise DataError(
            f"GTZAN root {str(genres_dir)!r} has genre folders but no <genre>.000NN.wav|au files; {GTZAN_HELP}"
        )
    return list(GTZAN_GENRES), rows


def list_folder(
    root: str | os.PathLike, extensions: Sequence[str] = AUDIO_EXTENSIONS
) -> tuple[list[str], list[tuple[str, str, int]]]:
    """``(classes, [(path, name, label)])`` for ``root/<class>/**/*.<ext>``; classes sorted.

    Hidden files and folders are ignored. Raises :class:`DataError` for a missing root or a
    root without class folders holding audio files.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(
            f"folder root {str(base)!r} does not exist or is not a folder; expected root/<class>/<file> "
            f"with extensions {', '.join(extensions)}"
        )
    exts = tuple(e.lower() for e in extensions)
    per_class: dict[str, list[Path]] = {}
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(
            p
            for p in class_dir.rglob("*")
            if p.is_file()
            and p.suffix.lower() in exts
            and not any(part.startswith(".") for part in p.relative_to(base).parts)
        )
        if files:
            per_class[class_dir.name] = files
    if not per_class:
        raise DataError(
            f"folder root {str(base)!r} has no class folders with audio files; expected "
            f"root/<class>/<file> with extensions {', '.join(exts)}"
        )
    classes = sorted(per_class)
    rows = [
        (str(p.resolve()), p.relative_to(base).as_posix(), label)
        for label, c in enumerate(classes)
        for p in per_class[c]
    ]
    return classes, rows


def standard_gtzan_split() -> dict[str, str]:
    """``{"blues.00029": "train", ...}``: the artist-filtered split (Kereliuk, Sturm, Larsen).

    Read from torchaudio's GTZAN dataset module (no download): 443 train, 197 validation,
    290 test clips; the other 70 of the 1000 are in no list and are left out.
    """
    from torchaudio.datasets import gtzan  # imported here: only GTZAN needs it

    lists = {"train": gtzan.filtered_train, "val": gtzan.filtered_valid, "test": gtzan.filtered_test}
    return {stem: split for split, stems in lists.items() for stem in stems}


def stratified_split(labels: Sequence[int], val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """A seeded split per class: ``round(n * fraction)`` of each class to val and to test.

    Example: 10 clips of a class with fractions 0.2/0.2 give 6/2/2. Deterministic in ``seed``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out = np.empty(len(labels), dtype=object)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        out[idx[:n_test]] = "test"
        out[idx[n_test : n_test + n_val]] = "val"
        out[idx[n_test + n_val :]] = "train"
    return [str(s) for s in out]


def read_split_files(split_files: dict[str, str | Sequence[str]]) -> dict[str, str]:
    """``{name: split}`` from ``{"train": list_or_path, "val": ..., "test": ...}``.

    A value is a sequence of names or the path of a text file with one name per line (``#``
    comments and blank lines ignored). A name is a file's path relative to the root, with or
    without extension, or its bare stem (GTZAN style ``blues.00029``).
    """
    mapping: dict[str, str] = {}
    for split, value in split_files.items():
        if isinstance(value, (str, os.PathLike)):
            path = Path(value)
            if not path.is_file():
                raise DataError(
                    f"split_files[{split!r}] = {str(path)!r} is not a file; give a list of names or a text file path"
                )
            names = [ln.strip() for ln in path.read_text().splitlines()]
            names = [n for n in names if n and not n.startswith("#")]
        else:
            names = [str(n) for n in value]
        for name in names:
            if name in mapping and mapping[name] != split:
                raise DataError(
                    f"{name!r} is listed in split_files for both {mapping[name]!r} and {split!r}; list it once"
                )
            mapping[name] = split
    return mapping
