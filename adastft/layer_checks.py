"""The checks of :class:`adastft.AdaSTFT`'s arguments, which its constructor runs first and a config
check runs alone (``AdaSTFT.check_arguments``): cheap enough per trial, because no DFT kernel is
built (``n_fft=131072`` would be 64 GiB), only the mel filterbank's count of empty filters (cached).
"""

from __future__ import annotations

import functools
import math
import warnings
from types import SimpleNamespace
from typing import Any

import torchaudio.functional as AF

from adastft import functional as AFN
from adastft.checks import need, one_of
from adastft.pcen import check_pcen_arguments


def check_layer_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Every argument of ``AdaSTFT`` (as bound to its signature, defaults filled in) checked, with
    ``win_length``, ``hop_length`` and ``f_max`` resolved from ``None`` and numbers normalised."""
    a = SimpleNamespace(**arguments)
    a.win_length = a.n_fft if a.win_length is None else a.win_length
    a.hop_length = a.win_length // 2 if a.hop_length is None and isinstance(a.win_length, int) else a.hop_length
    a.f_max = a.sample_rate / 2 if a.f_max is None and _number(a.sample_rate) else a.f_max

    need(_number(a.sample_rate) and a.sample_rate > 0, f"sample_rate must be positive, got {a.sample_rate!r}")
    need(_integer(a.n_fft) and a.n_fft >= 2, f"n_fft must be an integer >= 2, got {a.n_fft!r}")
    need(
        _integer(a.win_length) and 1 <= a.win_length <= a.n_fft,
        f"win_length must be an integer in [1, n_fft={a.n_fft}], got {a.win_length!r}",
    )
    need(_integer(a.hop_length) and a.hop_length >= 1, f"hop_length must be an integer >= 1, got {a.hop_length!r}")
    need(_number(a.f_min) and a.f_min >= 0, f"f_min must be >= 0, got {a.f_min!r}")
    need(
        _number(a.f_max) and a.f_max <= a.sample_rate / 2,
        f"f_max must be <= sample_rate / 2 = {a.sample_rate / 2:g}, got {a.f_max!r}",
    )
    need(a.f_min < a.f_max, f"f_min must be below f_max={a.f_max:g}, got {a.f_min!r}")
    need(
        a.n_mels is None or (_integer(a.n_mels) and a.n_mels >= 1),
        f"n_mels must be a positive integer or None, got {a.n_mels!r}",
    )
    one_of("window", a.window, AFN.WINDOWS)
    one_of("pad_mode", a.pad_mode, AFN.PAD_MODES)
    need(
        _number(a.power) and math.isfinite(a.power) and a.power > 0, f"power must be a positive number, got {a.power!r}"
    )
    need(a.norm in (None, "slaney"), f"norm must be None or 'slaney', got {a.norm!r}")
    need(a.mel_scale in ("htk", "slaney"), f"mel_scale must be 'htk' or 'slaney', got {a.mel_scale!r}")
    one_of("compression", a.compression, AFN.COMPRESSIONS)
    need(_number(a.log_gain) and a.log_gain > 0, f"log_gain must be positive, got {a.log_gain!r}")
    need(isinstance(a.learn_win_length, bool), f"learn_win_length must be true or false, got {a.learn_win_length!r}")
    need(
        not a.learn_win_length or a.window in AFN.TAPERED_WINDOWS,
        f"learn_win_length needs a tapered window ({', '.join(AFN.TAPERED_WINDOWS)}), got window={a.window!r}: "
        "a rectangular window's length has no gradient",
    )
    check_pcen_arguments(a.pcen_smoothing, a.pcen_alpha, a.pcen_delta, a.pcen_root, a.pcen_floor, prefix="pcen_")

    a.sample_rate, a.center = int(a.sample_rate), bool(a.center)
    a.f_min, a.f_max, a.power, a.log_gain = float(a.f_min), float(a.f_max), float(a.power), float(a.log_gain)
    a.pcen_smoothing, a.pcen_alpha, a.pcen_delta = float(a.pcen_smoothing), float(a.pcen_alpha), float(a.pcen_delta)
    a.pcen_root, a.pcen_floor = float(a.pcen_root), float(a.pcen_floor)
    if a.n_mels is not None:
        empty = _empty_filters(a.n_fft // 2 + 1, a.f_min, a.f_max, a.n_mels, a.sample_rate, a.norm, a.mel_scale)
        need(
            not empty,
            f"n_mels={a.n_mels} leaves {empty} empty mel filters with n_fft={a.n_fft} between "
            f"f_min={a.f_min:g} and f_max={a.f_max:g} Hz: use fewer mels or a larger n_fft",
        )
    return vars(a)


def min_input_length(n_fft: int, center: bool) -> int:
    """The fewest samples one STFT frame needs: half a frame (plus one) when centred, else a frame."""
    return n_fft // 2 + 1 if center else n_fft


def mel_filters(
    n_freq: int, f_min: float, f_max: float, n_mels: int, sample_rate: int, norm: str | None, mel_scale: str
):
    """torchaudio's mel filterbank ``(n_freq, n_mels)``, without its warning about empty filters
    (:func:`check_layer_arguments` refuses them with a message that says what to change)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AF.melscale_fbanks(n_freq, f_min, f_max, n_mels, sample_rate, norm, mel_scale)


@functools.lru_cache(maxsize=64)
def _empty_filters(n_freq: int, f_min: float, f_max: float, n_mels: int, sample_rate: int, norm, mel_scale) -> int:
    fb = mel_filters(n_freq, f_min, f_max, n_mels, sample_rate, norm, mel_scale)
    return int((fb.max(dim=0).values == 0).sum())


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
