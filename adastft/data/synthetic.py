"""A deterministic generator of music-like clips in ten classes, for quickstarts and tests.

Each class has a tempo range, a drum pattern, a pool of instrument timbres, a mode and a lead
density. The classes overlap on purpose so that the task is learnable but not trivial: tempo
ranges overlap, every timbre is shared by several classes (and any clip may swap in a random
one), drum hits are dropped and added at random, the key is random and may change mid-clip, drum
sounds are re-drawn per clip, and every clip gets noise at a random SNR. The spectrum averaged
over a clip therefore does not identify its class; rhythm and harmony over time help.

``generate_clip(label, index, seed, sample_rate, clip_samples)`` depends only on its arguments,
so any clip can be regenerated on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GENERATOR_VERSION = "synthetic/1"


@dataclass(frozen=True)
class _Style:
    name: str
    tempo: tuple[float, float]
    kick: str
    snare: str
    hat: str
    timbres: tuple[str, ...]
    mode: str
    lead_per_beat: float


# Patterns are 16 steps of a 4/4 bar (12 for the waltz); "x" is a hit.
STYLES = (
    _Style(
        "ambient",
        (60, 85),
        "x...............",
        "................",
        "........x.......",
        ("pad", "bell", "sine"),
        "major",
        0.5,
    ),
    _Style(
        "ballad",
        (65, 90),
        "x.......x.......",
        "....x.......x...",
        "x.x.x.x.x.x.x.x.",
        ("pluck", "organ", "pad"),
        "major",
        1.0,
    ),
    _Style(
        "bossa",
        (110, 140),
        "x..x....x..x....",
        "..x..x....x..x..",
        "x.x.x.x.x.x.x.x.",
        ("pluck", "sine", "bell"),
        "major",
        1.5,
    ),
    _Style(
        "disco",
        (112, 130),
        "x...x...x...x...",
        "....x.......x...",
        "..x...x...x...x.",
        ("brass", "organ", "pluck"),
        "minor",
        1.0,
    ),
    _Style(
        "drumnbass",
        (160, 180),
        "x.........x.....",
        "....x.......x...",
        "xxxxxxxxxxxxxxxx",
        ("sine", "pad", "brass"),
        "minor",
        0.5,
    ),
    _Style(
        "funk",
        (92, 115),
        "x..x..x...x..x..",
        "....x..x.x..x...",
        "xxxxxxxxxxxxxxxx",
        ("brass", "pluck", "organ"),
        "dorian",
        2.0,
    ),
    _Style(
        "march",
        (100, 122),
        "x.......x.......",
        "x.xxx.x.x.xxx.x.",
        "................",
        ("brass", "organ", "bell"),
        "major",
        1.0,
    ),
    _Style(
        "reggae",
        (70, 92),
        "........x.......",
        "........x.......",
        "..x...x...x...x.",
        ("organ", "pluck", "sine"),
        "minor",
        0.75,
    ),
    _Style(
        "rock",
        (108, 140),
        "x.....x.x.......",
        "....x.......x...",
        "x.x.x.x.x.x.x.x.",
        ("brass", "pluck", "organ"),
        "minor",
        1.0,
    ),
    _Style("waltz", (84, 110), "x...........", "....x...x...", "..x...x...x.", ("organ", "pad", "sine"), "major", 1.0),
)
CLASSES = [s.name for s in STYLES]

# Partial frequency ratios, amplitudes and amplitude decay (1/s): the shared instrument pool.
_TIMBRES = {
    "sine": ((1.0,), (1.0,), 2.0),
    "organ": ((1.0, 2.0, 3.0, 4.0), (1.0, 0.6, 0.4, 0.25), 0.3),
    "pluck": ((1.0, 2.0, 3.0, 4.0, 5.0), (1.0, 0.6, 0.4, 0.3, 0.2), 6.0),
    "brass": ((1.0, 2.0, 3.0, 4.0, 5.0, 6.0), (1.0, 0.8, 0.6, 0.5, 0.4, 0.3), 1.0),
    "pad": ((1.0, 2.0, 3.0), (1.0, 0.3, 0.1), 0.1),
    "bell": ((1.0, 2.76, 5.4), (1.0, 0.5, 0.3), 3.0),
}
_MODES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
}
_PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (1, 4, 0, 0), (0, 3, 0, 4))


def generate_clip(label: int, index: int, seed: int, sample_rate: int, clip_samples: int) -> np.ndarray:
    """One clip of class ``label``: float32 ``(clip_samples,)``, RMS 0.1 before a random gain."""
    if not 0 <= label < len(STYLES):
        raise ValueError(f"label must be in [0, {len(STYLES)}), got {label!r}")
    rng = np.random.default_rng([seed, label, index])
    style = STYLES[label]
    sr = sample_rate
    out = np.zeros(clip_samples, dtype=np.float64)

    tempo = rng.uniform(*style.tempo) * rng.uniform(0.95, 1.05)  # jitter beyond the class range
    step = 60.0 / tempo / 4  # seconds per 16th note
    steps_per_bar = len(style.kick)
    n_steps = int(clip_samples / (step * sr)) + 1
    swing = rng.uniform(0.0, 0.3) * step

    def onset(i: int) -> int:
        return int(round((i * step + (swing if i % 2 else 0.0)) * sr))

    # Drums: sounds re-drawn per clip, hits dropped/added at random.
    drums = {
        "kick": (_kick(rng, sr), style.kick, 0.9),
        "snare": (_snare(rng, sr), style.snare, 0.6),
        "hat": (_hat(rng, sr), style.hat, 0.25),
    }
    for sound, pattern, level in drums.values():
        for i in range(n_steps):
            hit = pattern[i % steps_per_bar] == "x"
            if rng.random() < 0.12:
                hit = not hit
            if hit:
                _add(out, onset(i), sound * level * rng.uniform(0.6, 1.0))

    # Harmony: random key, maybe a key change, a chord progression one chord per bar.
    scale = _MODES[style.mode]
    key = int(rng.integers(0, 12))
    change_bar = int(rng.integers(2, 8)) if rng.random() < 0.4 else -1
    progression = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
    timbres = [t if rng.random() > 0.3 else str(rng.choice(list(_TIMBRES))) for t in style.timbres]
    chord_timbre, bass_timbre, lead_timbre = timbres[0], timbres[1 % len(timbres)], timbres[2 % len(timbres)]
    bar_seconds = step * steps_per_bar
    n_bars = n_steps // steps_per_bar + 1
    beat = steps_per_bar // 4 if steps_per_bar == 16 else steps_per_bar // 3
    for bar in range(n_bars):
        if bar == change_bar:
            key = (key + int(rng.choice([2, 5, 7, -2]))) % 12
        degree = progression[bar % len(progression)]
        start = bar * steps_per_bar
        for k in (0, 2, 4):  # triad
            midi = 60 + key + _degree(scale, degree + k)
            _add(out, onset(start), 0.12 * _note(rng, _hz(midi), bar_seconds, chord_timbre, sr))
        for b in range(0, steps_per_bar, beat):  # bass on the beats
            midi = 36 + key + _degree(scale, degree + (4 if b and rng.random() < 0.3 else 0))
            _add(out, onset(start + b), 0.3 * _note(rng, _hz(midi), beat * step, bass_timbre, sr))
        n_lead = rng.poisson(style.lead_per_beat * steps_per_bar / beat)
        for s in np.sort(rng.integers(0, steps_per_bar, n_lead)):
            midi = 72 + key + _degree(scale, int(rng.integers(0, 8)))
            _add(out, onset(start + int(s)), 0.15 * _note(rng, _hz(midi), 2 * step, lead_timbre, sr))

    out *= 0.1 / (np.sqrt(np.mean(out**2)) + 1e-12)
    snr_db = rng.uniform(0.0, 20.0)
    out += rng.standard_normal(clip_samples) * 0.1 * 10 ** (-snr_db / 20)
    out *= 10 ** (rng.uniform(-6.0, 6.0) / 20)
    return out.astype(np.float32)


def _add(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    if start >= len(out):
        return
    n = min(len(sound), len(out) - start)
    out[start : start + n] += sound[:n]


def _hz(midi: float) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


def _degree(scale: tuple[int, ...], degree: int) -> int:
    octave, pos = divmod(degree, len(scale))
    return 12 * octave + scale[pos]


def _note(rng: np.random.Generator, hz: float, seconds: float, timbre: str, sr: int) -> np.ndarray:
    ratios, amps, decay = _TIMBRES[timbre]
    # Notes end where the envelope has fallen 40 dB: nothing audible is lost, time is saved.
    n = max(1, int(min(seconds, np.log(100.0) / decay) * sr))
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    f = hz * (1 + rng.uniform(-0.004, 0.004))
    if all(r == int(r) for r in ratios):
        # Harmonic timbre: read one period from a table (partials above Nyquist left out).
        table = _table(timbre, max(1, int(sum(f * r < sr / 2 for r in ratios))))
        idx = (np.arange(n) * (f * _TABLE_SIZE / sr)).astype(np.int64) & (_TABLE_SIZE - 1)  # float64 phase
        wave = table[idx]
    else:
        wave = sum(a * np.sin(2 * np.pi * f * r * t) for r, a in zip(ratios, amps) if f * r < sr / 2)
    env = np.exp(np.float32(-decay) * t)
    attack = int((0.08 if timbre == "pad" else 0.005) * sr)
    release = int(0.01 * sr)
    if attack < n:
        env[:attack] *= np.linspace(0.0, 1.0, attack, dtype=np.float32)
    if release < n:
        env[-release:] *= np.linspace(1.0, 0.0, release, dtype=np.float32)
    return wave * env


_TABLE_SIZE = 4096
_TABLES: dict[tuple[str, int], np.ndarray] = {}


def _table(timbre: str, n_partials: int) -> np.ndarray:
    key = (timbre, n_partials)
    if key not in _TABLES:
        ratios, amps, _ = _TIMBRES[timbre]
        phase = np.arange(_TABLE_SIZE) / _TABLE_SIZE
        _TABLES[key] = sum(
            a * np.sin(2 * np.pi * r * phase) for r, a in zip(ratios[:n_partials], amps[:n_partials])
        ).astype(np.float32)
    return _TABLES[key]


def _kick(rng: np.random.Generator, sr: int) -> np.ndarray:
    t = np.arange(int(0.25 * sr)) / sr
    f0, f1 = rng.uniform(45, 70), rng.uniform(90, 160)
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * (1 - np.exp(-t * 30)) / 30)
    return np.sin(phase) * np.exp(-t * rng.uniform(12, 25))


def _snare(rng: np.random.Generator, sr: int) -> np.ndarray:
    t = np.arange(int(0.2 * sr)) / sr
    tone = np.sin(2 * np.pi * rng.uniform(150, 250) * t)
    return (0.5 * tone + rng.standard_normal(len(t))) * np.exp(-t * rng.uniform(18, 35))


def _hat(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = int(0.06 * sr)
    noise = rng.standard_normal(n + 1)
    bright = np.diff(noise)  # first difference: a cheap high-pass
    return bright * np.exp(-np.arange(n) / sr * rng.uniform(40, 90))
