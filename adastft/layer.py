"""AdaSTFT: a mel spectrogram whose window and DFT kernel can learn.

At initialisation it computes exactly what ``torchaudio.transforms.MelSpectrogram`` computes with
the same arguments; ``set_learning`` turns learning of the window and of the kernel on or off at
any time.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from typing import Any

import torch
import torchaudio.functional as AF
from torch import nn

from adastft import functional as AFN

log = logging.getLogger(__name__)

_EXPORT_FORMAT = "adastft.learned/1"


class AdaSTFT(nn.Module):
    """Learnable STFT -> |X|^power -> mel filterbank -> compression.

    Shapes: ``(time)`` or ``(batch, time)`` -> ``(batch, n_mels, frames)``; ``(batch, channels,
    time)`` -> ``(batch, channels, n_mels, frames)``. With ``n_mels=None`` the output has
    ``n_fft // 2 + 1`` linear-frequency rows instead of ``n_mels``. A 1-D input is a batch of one.

    Parameters:
        ``window`` ``(win_length,)``, initialised to the named window;
        ``kernel`` ``(2, n_fft // 2 + 1, n_fft)``: ``kernel[0]`` the cos part and ``kernel[1]``
        the (negative) sin part of the DFT, initialised to the exact DFT.

    While the kernel does not learn and still equals the DFT, the spectrogram is computed with
    the FFT (``torch.stft``); otherwise the frames are multiplied by the windowed kernel in one
    matrix product. Both give the same numbers at initialisation.

    Defaults are torchaudio's except ``sample_rate=22050`` and ``n_fft=1024`` (GTZAN's rate and
    the usual frame): torchaudio's 16000 / 400 with 128 mels leave 4 mel filters empty, which this
    layer refuses.

    The spectral maths runs in the parameters' dtype with autocast off: float16 STFTs of a few
    thousand points lose the quiet bins, and the front end is a small part of the model's cost.

    Example::

        layer = AdaSTFT(sample_rate=22050, n_fft=1024, hop_length=512, n_mels=128,
                        compression="log1p")
        layer.set_learning(window=True, kernel=True)
        spec = layer(torch.randn(16, 66150))  # (16, 128, 130)
    """

    def __init__(
        self,
        sample_rate: int = 22050,
        n_fft: int = 1024,
        win_length: int | None = None,
        hop_length: int | None = None,
        f_min: float = 0.0,
        f_max: float | None = None,
        n_mels: int | None = 128,
        window: str = "hann",
        center: bool = True,
        pad_mode: str = "reflect",
        power: float = 2.0,
        norm: str | None = None,
        mel_scale: str = "htk",
        compression: str = "none",
        log_gain: float = 10.0,
        learn_window: bool = False,
        learn_kernel: bool = False,
    ) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        hop_length = win_length // 2 if hop_length is None else hop_length
        f_max = sample_rate / 2 if f_max is None else f_max
        _check_arguments(
            sample_rate, n_fft, win_length, hop_length, f_min, f_max, n_mels, window, pad_mode,
            power, norm, mel_scale, compression, log_gain,
        )
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.win_length = int(win_length)
        self.hop_length = int(hop_length)
        self.f_min = float(f_min)
        self.f_max = float(f_max)
        self.n_mels = None if n_mels is None else int(n_mels)
        self.window_name = window
        self.center = bool(center)
        self.pad_mode = pad_mode
        self.power = float(power)
        self.norm = norm
        self.mel_scale = mel_scale
        self.compression = compression
        self.log_gain = float(log_gain)
        self.n_freq = self.n_fft // 2 + 1

        init_window = AFN.make_window(window, self.win_length)
        init_kernel = AFN.dft_kernel(self.n_fft)
        self.window = nn.Parameter(init_window.clone())
        self.kernel = nn.Parameter(init_kernel.clone())
        # Rebuilt from the arguments, so kept out of the state dict.
        self.register_buffer("initial_window", init_window, persistent=False)
        self.register_buffer("initial_kernel", init_kernel, persistent=False)
        if self.n_mels is not None:
            with warnings.catch_warnings():  # torchaudio warns of empty filters; we raise below
                warnings.simplefilter("ignore")
                fb = AF.melscale_fbanks(
                    self.n_freq, self.f_min, self.f_max, self.n_mels, self.sample_rate, norm, mel_scale
                )  # (F, M)
            _check_filters(fb, self.n_mels, self.n_fft, self.f_min, self.f_max)
            self.register_buffer("mel_fb", fb)
        else:
            self.mel_fb = None
        # Kernel version last verified equal to the DFT: the FFT path is valid while it holds.
        self._dft_version: int | None = None
        self.set_learning(window=learn_window, kernel=learn_kernel)

    # ---- learning switches -------------------------------------------------------------------

    @property
    def learn_window(self) -> bool:
        return self.window.requires_grad

    @property
    def learn_kernel(self) -> bool:
        return self.kernel.requires_grad

    def set_learning(self, window: bool | None = None, kernel: bool | None = None) -> "AdaSTFT":
        """Switch learning of the window and/or kernel; ``None`` leaves a switch as it is.

        Safe mid-training: a frozen parameter's ``.grad`` is cleared, so optimisers skip it
        (even with momentum) until it is switched on again.
        """
        for param, flag in ((self.window, window), (self.kernel, kernel)):
            if flag is None:
                continue
            param.requires_grad_(bool(flag))
            if not flag:
                param.grad = None
        return self

    def parameter_groups(self, lr: float | None = None, weight_decay: float = 0.0) -> list[dict]:
        """One optimiser group holding the window and kernel, weight decay 0 by default.

        Frozen parameters are included so that learning can be switched on later without
        rebuilding the optimiser. Example: ``AdamW(layer.parameter_groups(lr=1e-4) + rest)``.
        """
        group: dict[str, Any] = {"params": [self.window, self.kernel], "weight_decay": weight_decay}
        if lr is not None:
            group["lr"] = lr
        return [group]

    # ---- computation ------------------------------------------------------------------------

    def uses_fft(self) -> bool:
        """Whether the next forward takes the FFT path (the kernel is fixed and is the DFT)."""
        if self.kernel.requires_grad:
            return False
        version = self.kernel._version
        if self._dft_version != version:
            with torch.no_grad():
                is_dft = torch.equal(self.kernel, self.initial_kernel.to(self.kernel.dtype))
            self._dft_version = version if is_dft else -1 - version
        return self._dft_version == version

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or not torch.is_floating_point(x) or torch.is_complex(x):
            kind = type(x).__name__ if not torch.is_tensor(x) else str(x.dtype)
            raise ValueError(f"input must be a real floating-point tensor, got {kind}")
        if x.dim() not in (1, 2, 3):
            raise ValueError(
                f"input must be (time), (batch, time) or (batch, channels, time), got shape {tuple(x.shape)}"
            )
        lead = x.shape[:-1] if x.dim() > 1 else (1,)
        length = x.shape[-1]
        minimum = self.n_fft // 2 + 1 if self.center else self.n_fft
        if length < minimum:
            raise ValueError(
                f"input has {length} samples; n_fft={self.n_fft} with center={self.center} needs at least {minimum}"
            )
        x = x.reshape(-1, length).to(self.window.dtype)  # (B, L)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.uses_fft():
                spec = AFN.power_spectrogram_fft(
                    x, self.window, self.n_fft, self.hop_length, self.center, self.pad_mode, self.power
                )  # (B, F, T)
            else:
                spec = AFN.power_spectrogram_kernel(
                    x, self.window, self.kernel, self.n_fft, self.hop_length, self.center, self.pad_mode,
                    self.power,
                )  # (B, F, T)
            if self.mel_fb is not None:
                spec = torch.matmul(self.mel_fb.t(), spec)  # (B, M, T)
            spec = AFN.compress(spec, self.compression, self.power, self.log_gain)
        return spec.reshape(*lead, *spec.shape[-2:])

    # ---- inspection -------------------------------------------------------------------------

    def window_change(self) -> float:
        """Relative L2 distance of the window from its initial value."""
        return AFN.relative_change(self.window, self.initial_window)

    def kernel_change(self) -> float:
        """Relative L2 distance of the kernel from the exact DFT."""
        return AFN.relative_change(self.kernel, self.initial_kernel)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (without the learning switches) as plain values."""
        return {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "win_length": self.win_length,
            "hop_length": self.hop_length,
            "f_min": self.f_min,
            "f_max": self.f_max,
            "n_mels": self.n_mels,
            "window": self.window_name,
            "center": self.center,
            "pad_mode": self.pad_mode,
            "power": self.power,
            "norm": self.norm,
            "mel_scale": self.mel_scale,
            "compression": self.compression,
            "log_gain": self.log_gain,
        }

    def export_learned(self) -> dict[str, Any]:
        """The learned tensors and the arguments that shape them, as plain detached CPU data.

        ``{"format", "config", "window" (W,), "kernel_cos" (F, N), "kernel_sin" (F, N)}``; save it
        with ``torch.save`` (loadable with ``weights_only=True``) and restore with
        :meth:`load_learned` or :meth:`from_learned`.
        """
        return {
            "format": _EXPORT_FORMAT,
            "config": self.config(),
            "window": self.window.detach().cpu().clone(),
            "kernel_cos": self.kernel[0].detach().cpu().clone(),
            "kernel_sin": self.kernel[1].detach().cpu().clone(),
        }

    def load_learned(self, learned: dict[str, Any]) -> "AdaSTFT":
        """Copy exported tensors into this layer; shapes and STFT arguments must match."""
        if learned.get("format") != _EXPORT_FORMAT:
            raise ValueError(f"learned must come from AdaSTFT.export_learned(), got format {learned.get('format')!r}")
        expected = {"window": (self.win_length,), "kernel_cos": (self.n_freq, self.n_fft),
                    "kernel_sin": (self.n_freq, self.n_fft)}
        for key, shape in expected.items():
            got = tuple(learned[key].shape)
            if got != shape:
                raise ValueError(f"learned[{key!r}] has shape {got}, this layer needs {shape}")
        with torch.no_grad():
            self.window.copy_(learned["window"])
            self.kernel[0].copy_(learned["kernel_cos"])
            self.kernel[1].copy_(learned["kernel_sin"])
        return self

    @classmethod
    def from_learned(cls, learned: dict[str, Any], **switches: bool) -> "AdaSTFT":
        """A fresh layer built from an export: same arguments, same learned tensors."""
        return cls(**learned["config"], **switches).load_learned(learned)

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, win_length={self.win_length}, "
            f"hop_length={self.hop_length}, n_mels={self.n_mels}, window={self.window_name!r}, "
            f"compression={self.compression!r}, learn_window={self.learn_window}, "
            f"learn_kernel={self.learn_kernel}"
        )


class AdaSTFTBank(nn.Module):
    """``n`` independent AdaSTFT front ends, stacked as channels (the original's RGB variant).

    ``(batch, time) -> (batch, n, n_mels, frames)``: every front end sees the same signal;
    ``(batch, n, time)`` gives channel ``i`` to front end ``i``. Each has its own window and
    kernel; keyword arguments are those of :class:`AdaSTFT`.

    Example: ``AdaSTFTBank(3, sample_rate=22050, n_fft=1024, hop_length=512)(x)``.
    """

    def __init__(self, n: int = 3, **layer_kwargs: Any) -> None:
        super().__init__()
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        self.layers = nn.ModuleList(AdaSTFT(**layer_kwargs) for _ in range(n))

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> AdaSTFT:
        return self.layers[i]

    def set_learning(self, window: bool | None = None, kernel: bool | None = None) -> "AdaSTFTBank":
        for layer in self.layers:
            layer.set_learning(window=window, kernel=kernel)
        return self

    def parameter_groups(self, lr: float | None = None, weight_decay: float = 0.0) -> list[dict]:
        params = [p for layer in self.layers for p in (layer.window, layer.kernel)]
        group: dict[str, Any] = {"params": params, "weight_decay": weight_decay}
        if lr is not None:
            group["lr"] = lr
        return [group]

    def window_change(self) -> float:
        """Mean relative window change over the front ends."""
        return sum(layer.window_change() for layer in self.layers) / len(self.layers)

    def kernel_change(self) -> float:
        """Mean relative kernel change over the front ends."""
        return sum(layer.kernel_change() for layer in self.layers) / len(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_tensor(x) and x.dim() == 3:
            if x.shape[1] != len(self.layers):
                raise ValueError(
                    f"input has {x.shape[1]} channels, this bank has {len(self.layers)} front ends"
                )
            return torch.stack([layer(x[:, i]) for i, layer in enumerate(self.layers)], dim=1)
        return torch.stack([layer(x) for layer in self.layers], dim=1)  # (B, n, M, T)


def check_arguments(
    sample_rate: int = 22050, n_fft: int = 1024, win_length: int | None = None, hop_length: int | None = None,
    f_min: float = 0.0, f_max: float | None = None, n_mels: int | None = 128, window: str = "hann",
    center: bool = True, pad_mode: str = "reflect", power: float = 2.0, norm: str | None = None,
    mel_scale: str = "htk", compression: str = "none", log_gain: float = 10.0, learn_window: bool = False,
    learn_kernel: bool = False,
) -> None:
    """Raise the ``ValueError`` that ``AdaSTFT(**kwargs)`` would, without building the layer
    (no DFT kernel): what a config check needs, cheaply enough to run per trial."""
    win_length = n_fft if win_length is None else win_length
    hop_length = win_length // 2 if hop_length is None else hop_length
    f_max = sample_rate / 2 if f_max is None else f_max
    _check_arguments(sample_rate, n_fft, win_length, hop_length, f_min, f_max, n_mels, window, pad_mode,
                     power, norm, mel_scale, compression, log_gain)
    if n_mels is not None:
        empty = _empty_filters(int(n_fft) // 2 + 1, float(f_min), float(f_max), int(n_mels), int(sample_rate),
                               norm, mel_scale)
        if empty:
            raise ValueError(_empty_filters_message(empty, n_mels, n_fft, f_min, f_max))


@functools.lru_cache(maxsize=64)
def _empty_filters(n_freq: int, f_min: float, f_max: float, n_mels: int, sample_rate: int, norm, mel_scale) -> int:
    with warnings.catch_warnings():  # torchaudio warns of empty filters; the caller raises
        warnings.simplefilter("ignore")
        fb = AF.melscale_fbanks(n_freq, f_min, f_max, n_mels, sample_rate, norm, mel_scale)
    return int((fb.max(dim=0).values == 0).sum())


def _empty_filters_message(empty: int, n_mels, n_fft, f_min, f_max) -> str:
    return (f"n_mels={n_mels} leaves {empty} empty mel filters with n_fft={n_fft} between "
            f"f_min={f_min:g} and f_max={f_max:g} Hz: use fewer mels or a larger n_fft")


def _check_arguments(
    sample_rate, n_fft, win_length, hop_length, f_min, f_max, n_mels, window, pad_mode, power,
    norm, mel_scale, compression, log_gain,
) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    need(isinstance(sample_rate, (int, float)) and sample_rate > 0, f"sample_rate must be positive, got {sample_rate!r}")
    need(isinstance(n_fft, int) and n_fft >= 2, f"n_fft must be an integer >= 2, got {n_fft!r}")
    need(isinstance(win_length, int) and 1 <= win_length <= n_fft,
         f"win_length must be an integer in [1, n_fft={n_fft}], got {win_length!r}")
    need(isinstance(hop_length, int) and hop_length >= 1, f"hop_length must be an integer >= 1, got {hop_length!r}")
    need(f_min >= 0, f"f_min must be >= 0, got {f_min!r}")
    need(f_max <= sample_rate / 2, f"f_max must be <= sample_rate / 2 = {sample_rate / 2:g}, got {f_max!r}")
    need(f_min < f_max, f"f_min must be below f_max={f_max:g}, got {f_min!r}")
    need(n_mels is None or (isinstance(n_mels, int) and n_mels >= 1),
         f"n_mels must be a positive integer or None, got {n_mels!r}")
    need(window in AFN.WINDOWS, f"window must be one of {', '.join(AFN.WINDOWS)}, got {window!r}")
    need(pad_mode in AFN.PAD_MODES, f"pad_mode must be one of {', '.join(AFN.PAD_MODES)}, got {pad_mode!r}")
    need(isinstance(power, (int, float)) and math.isfinite(power) and power > 0,
         f"power must be a positive number, got {power!r}")
    need(norm in (None, "slaney"), f"norm must be None or 'slaney', got {norm!r}")
    need(mel_scale in ("htk", "slaney"), f"mel_scale must be 'htk' or 'slaney', got {mel_scale!r}")
    need(compression in AFN.COMPRESSIONS,
         f"compression must be one of {', '.join(AFN.COMPRESSIONS)}, got {compression!r}")
    need(isinstance(log_gain, (int, float)) and log_gain > 0, f"log_gain must be positive, got {log_gain!r}")


def _check_filters(fb: torch.Tensor, n_mels: int, n_fft: int, f_min: float, f_max: float) -> None:
    empty = int((fb.max(dim=0).values == 0).sum())
    if empty:
        raise ValueError(_empty_filters_message(empty, n_mels, n_fft, f_min, f_max))
