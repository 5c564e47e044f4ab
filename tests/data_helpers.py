"""Real files for the data tests: tiny GTZAN trees in both layouts, class folders, bad files.

Everything is written with soundfile (or as raw bytes for the broken cases) into a folder the
test owns; nothing is mocked.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

from adastft.data.sources import GTZAN_GENRES

RATE = 8000  # tiny files: 0.05 s at 8 kHz = 400 samples
SECONDS = 0.05


def tone(seconds: float = SECONDS, rate: int = RATE, hz: float = 440.0, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A tone plus a little noise, float32 ``(frames,)`` or ``(frames, channels)``."""
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(seed)
    x = 0.5 * np.sin(2 * np.pi * hz * t) + 0.01 * rng.standard_normal(len(t))
    x = x.astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def write_gtzan(root: Path, layout: str, per_genre: int = 100) -> Path:
    """A GTZAN tree with ``per_genre`` clips per genre; returns the folder a user would pass.

    ``layout="kaggle"``: ``root/Data/genres_original/<genre>/<genre>.000NN.wav``, returns ``root``;
    ``layout="original"``: ``root/genres/<genre>/<genre>.000NN.au``, returns ``root/genres``.
    """
    if layout == "kaggle":
        base, ext, fmt = root / "Data" / "genres_original", "wav", "WAV"
    elif layout == "original":
        base, ext, fmt = root / "genres", "au", "AU"
    else:
        raise ValueError(f"layout must be 'kaggle' or 'original', got {layout!r}")
    for g, genre in enumerate(GTZAN_GENRES):
        (base / genre).mkdir(parents=True, exist_ok=True)
        encoded = io.BytesIO()  # encode once per genre, write the real bytes 100 times
        sf.write(encoded, tone(hz=200 + 50 * g), RATE, format=fmt, subtype="PCM_16")
        for i in range(per_genre):
            (base / genre / f"{genre}.{i:05d}.{ext}").write_bytes(encoded.getvalue())
    return root if layout == "kaggle" else base


def write_folder(root: Path, classes: dict[str, int], seconds: float = SECONDS, ext: str = "wav") -> Path:
    """``root/<class>/<class>_<i>.<ext>`` with ``classes[name]`` files each."""
    for c, (name, count) in enumerate(sorted(classes.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            sf.write(root / name / f"{name}_{i}.{ext}", tone(seconds, hz=300 + 100 * c, seed=i), RATE)
    return root


def write_bad_files(folder: Path) -> dict[str, str]:
    """Every kind of bad input, as real files in ``folder``; returns ``{file name: kind}``."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "_source.wav"
    sf.write(good, tone(seconds=0.2), RATE, subtype="PCM_16")
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated_header.wav").write_bytes(data[:30])  # cut inside the RIFF header
    (folder / "corrupted.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "not_audio.wav").write_text("this is a text file, not audio\n" * 20)
    sf.write(folder / "no_frames.wav", np.zeros(0, dtype=np.float32), RATE)
    return {
        "truncated_header.wav": "truncated",
        "corrupted.wav": "corrupted",
        "empty.wav": "empty",
        "not_audio.wav": "non-audio",
        "no_frames.wav": "no frames",
    }
