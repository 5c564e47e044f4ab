"""Decode one file to a fixed-length mono clip at the configured rate.

``decode_file`` reads with soundfile (WAV, FLAC, OGG, AU, AIFF, MP3), downmixes by averaging the
channels, resamples with ``torchaudio.functional.resample`` and pads with zeros or trims to
``clip_samples``. A file that cannot be used raises :class:`BadAudio` with a short reason; the
caller decides whether that skips the file or stops the build.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


class BadAudio(Exception):
    """A file that cannot be decoded into a clip; ``str(e)`` is the reason."""


class BadAudioWarning(UserWarning):
    """Files were skipped or heavily padded while building a cache; the message lists them."""


@dataclass(frozen=True)
class Decoded:
    """A decoded clip ``audio`` float32 ``(clip_samples,)`` and where it came from."""

    audio: np.ndarray
    orig_sample_rate: int
    orig_channels: int
    orig_samples: int


def decode_file(path: str, sample_rate: int, clip_samples: int) -> Decoded:
    """``path`` -> mono float32 ``(clip_samples,)`` at ``sample_rate``.

    Raises :class:`BadAudio` for unreadable, empty, silent-length or non-finite audio.
    """
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)  # (frames, channels)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise BadAudio(f"unreadable ({str(e).strip().splitlines()[0][:120]})") from None
    except OSError as e:
        raise BadAudio(f"cannot open ({e.strerror or e})") from None
    frames, channels = data.shape
    if frames == 0:
        raise BadAudio("no audio frames")
    mono = data.mean(axis=1) if channels > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise BadAudio("non-finite samples")
    if rate != sample_rate:
        mono = AF.resample(torch.from_numpy(np.ascontiguousarray(mono)), int(rate), int(sample_rate)).numpy()
    audio = np.zeros(clip_samples, dtype=np.float32)
    n = min(clip_samples, len(mono))
    audio[:n] = mono[:n]
    return Decoded(audio, int(rate), int(channels), int(frames))
