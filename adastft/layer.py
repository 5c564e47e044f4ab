"""AdaSTFT: a mel spectrogram whose window and DFT kernel can learn.

At initialisation it computes exactly what ``torchaudio.transforms.MelSpectrogram`` computes with
the same arguments; ``set_learning`` turns learning of the window and of the kernel (and of the
PCEN compression's parameters) on or off at any time.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

from adastft import functional as AFN
from adastft.layer_checks import check_layer_arguments, mel_filters, min_input_length
from adastft.pcen import ALPHA, DELTA, FLOOR, PCEN, ROOT, SMOOTHING

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
        the (negative) sin part of the DFT, initialised to the exact DFT;
        with ``compression="pcen"``, ``pcen`` (:class:`adastft.pcen.PCEN`), one smoothing, alpha,
        delta and root per output row, initialised to ``pcen_smoothing``, ``pcen_alpha``,
        ``pcen_delta`` and ``pcen_root`` (LEAF's 0.04, 0.96, 2, 2), learning with ``learn_compression``.

    While the kernel does not learn and still equals the DFT, the spectrogram is computed with
    the FFT (``torch.stft``); otherwise the frames are multiplied by the windowed kernel in one
    matrix product. Both give the same numbers at initialisation.

    Bad arguments raise ``ValueError`` naming the argument and the value;
    ``AdaSTFT.check_arguments(**kwargs)`` raises the same without building anything.

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
        learn_win_length: bool = False,
        pcen_smoothing: float = SMOOTHING,
        pcen_alpha: float = ALPHA,
        pcen_delta: float = DELTA,
        pcen_root: float = ROOT,
        pcen_floor: float = FLOOR,
        learn_window: bool = False,
        learn_kernel: bool = False,
        learn_compression: bool = False,
    ) -> None:
        given = dict(locals())  # the arguments as passed; ARGUMENTS (the signature) says which
        super().__init__()
        args = self.check_arguments(**{name: given[name] for name in ARGUMENTS})
        for name in ARGUMENTS:
            if name not in SWITCHES:
                setattr(self, _ATTRIBUTE.get(name, name), args[name])
        self.n_freq = self.n_fft // 2 + 1

        init_kernel = AFN.dft_kernel(self.n_fft)
        if self.learn_win_length:
            # The window's length is a parameter of its own, win_length * exp(log_win_scale) (so that the
            # optimiser's steps are relative, and the length is exactly win_length at 0), applied as a taper of that length on
            # the n_fft support; the learnable window is then a multiplicative correction of the
            # taper, starting at ones. The taper alone sets the support, so the two cannot trade a
            # longer window for a shrunken correction outside it.
            self.win_length_bounds = (min(float(self.win_length), max(2.0, self.n_fft / 16)), float(self.n_fft))
            self._start_shift = ((self.n_fft - self.win_length) / 2) % 1  # where torch.stft puts a window of W
            self.log_win_scale = nn.Parameter(torch.tensor(0.0))
            self.window = nn.Parameter(torch.ones(self.n_fft))
            init_window = AFN.tapered_window(
                self.window_name, torch.tensor(float(self.win_length)), self.n_fft, self._start_shift
            )  # (N,)
        else:
            self.log_win_scale = None
            init_window = AFN.make_window(self.window_name, self.win_length)  # (W,)
            self.window = nn.Parameter(init_window.clone())
        self.kernel = nn.Parameter(init_kernel.clone())
        # Rebuilt from the arguments, so kept out of the state dict. initial_window is the window
        # the STFT applies at initialisation (the taper, with a learnable length).
        self.register_buffer("initial_window", init_window, persistent=False)
        self.register_buffer("initial_kernel", init_kernel, persistent=False)
        if self.n_mels is not None:
            fb = mel_filters(
                self.n_freq, self.f_min, self.f_max, self.n_mels, self.sample_rate, self.norm, self.mel_scale
            )  # (F, M)
            self.register_buffer("mel_fb", fb)
        else:
            self.mel_fb = None
        self.pcen = None
        if self.compression == "pcen":
            self.pcen = PCEN(
                self.n_mels or self.n_freq,
                self.pcen_smoothing,
                self.pcen_alpha,
                self.pcen_delta,
                self.pcen_root,
                self.pcen_floor,
            )
        # Kernel version last verified equal to the DFT: the FFT path is valid while it holds.
        self._dft_version: int | None = None
        self.set_learning(
            window=learn_window, kernel=learn_kernel, compression=learn_compression, win_length=learn_win_length or None
        )

    @classmethod
    def check_arguments(cls, **kwargs: Any) -> dict[str, Any]:
        """Raise the ``ValueError`` that ``AdaSTFT(**kwargs)`` would, without building the layer: no
        DFT kernel is allocated, so a config check can run it per trial (``n_fft=131072`` costs a
        mel filterbank, not 64 GiB). Returns every argument, defaults filled in and ``win_length``,
        ``hop_length`` and ``f_max`` resolved. An unknown name is a ``TypeError``, as in the
        constructor. Example: ``AdaSTFT.check_arguments(n_fft=1)`` raises
        ``ValueError("n_fft must be an integer >= 2, got 1")``.
        """
        bound = inspect.signature(cls).bind(**kwargs)
        bound.apply_defaults()
        return check_layer_arguments(dict(bound.arguments))

    # ---- learning switches -------------------------------------------------------------------

    @property
    def learn_window(self) -> bool:
        return self.window.requires_grad

    @property
    def learn_kernel(self) -> bool:
        return self.kernel.requires_grad

    @property
    def learn_compression(self) -> bool:
        return self.pcen is not None and self.pcen.alpha.requires_grad

    def compression_parameters(self) -> list[nn.Parameter]:
        """The compression's learnable parameters: PCEN's four, or none."""
        return list(self.pcen.parameters()) if self.pcen is not None else []

    def set_learning(
        self,
        window: bool | None = None,
        kernel: bool | None = None,
        compression: bool | None = None,
        win_length: bool | None = None,
    ) -> "AdaSTFT":
        """Switch learning of the window, kernel, compression and/or the window's length; ``None``
        leaves a switch as it is.

        ``compression`` switches PCEN's parameters; the other compressions have none, so there it
        changes nothing. ``win_length`` needs a layer built with ``learn_win_length=True``. Safe mid-training: a frozen parameter's ``.grad`` is cleared, so
        optimisers skip it (even with momentum) until it is switched on again.
        """
        if win_length and self.log_win_scale is None:
            raise ValueError("win_length learning needs a layer built with learn_win_length=True")
        switched = [(self.window, window), (self.kernel, kernel)]
        switched += [(param, compression) for param in self.compression_parameters()]
        if self.log_win_scale is not None:
            switched.append((self.log_win_scale, win_length))
        for param, flag in switched:
            if flag is None:
                continue
            param.requires_grad_(bool(flag))
            if not flag:
                param.grad = None
        return self

    def parameter_groups(
        self, lr: float | None = None, weight_decay: float = 0.0, scalar_lr: float | None = None
    ) -> list[dict]:
        """Optimiser groups of the front end, weight decay 0 by default: the window and kernel at
        ``lr``; PCEN's per-band parameters and the window's length scale (a few numbers each,
        like a normalisation's) at ``scalar_lr`` when given, else in the same group.

        Frozen parameters are included so that learning can be switched on later without
        rebuilding the optimiser. Example: ``AdamW(layer.parameter_groups(lr=1e-4) + rest)``.
        """
        return _groups([self], lr, weight_decay, scalar_lr)

    def learnable(self) -> list[nn.Parameter]:
        """The front end's parameters: window, kernel, PCEN's (with ``compression="pcen"``) and the
        window's log length scale (with ``learn_win_length``)."""
        scale = [self.log_win_scale] if self.log_win_scale is not None else []
        return [self.window, self.kernel, *self.compression_parameters(), *scale]

    @property
    def learning_win_length(self) -> bool:
        return self.log_win_scale is not None and self.log_win_scale.requires_grad

    def current_win_length(self) -> torch.Tensor:
        """The window's length in samples, a 0-d tensor (learnable with ``learn_win_length``)."""
        if self.log_win_scale is None:
            return torch.tensor(float(self.win_length))
        return AFN.bounded(self.win_length * self.log_win_scale.exp(), *self.win_length_bounds)

    def effective_window(self) -> torch.Tensor:
        """The window the STFT applies: ``(win_length,)``, or ``(n_fft,)`` (taper of the learned
        length times the learned correction) with ``learn_win_length``."""
        if self.log_win_scale is None:
            return self.window
        taper = AFN.tapered_window(self.window_name, self.current_win_length(), self.n_fft, self._start_shift)
        return taper * self.window  # (N,)

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
        minimum = min_input_length(self.n_fft, self.center)
        if length < minimum:
            raise ValueError(
                f"input has {length} samples; n_fft={self.n_fft} with center={self.center} needs at least {minimum}"
            )
        x = x.reshape(-1, length).to(self.window.dtype)  # (B, L)
        with torch.autocast(device_type=x.device.type, enabled=False):
            window = self.effective_window()
            if self.uses_fft():
                spec = AFN.power_spectrogram_fft(
                    x, window, self.n_fft, self.hop_length, self.center, self.pad_mode, self.power
                )  # (B, F, T)
            else:
                spec = AFN.power_spectrogram_kernel(
                    x,
                    window,
                    self.kernel,
                    self.n_fft,
                    self.hop_length,
                    self.center,
                    self.pad_mode,
                    self.power,
                )  # (B, F, T)
            if self.mel_fb is not None:
                spec = torch.matmul(self.mel_fb.t(), spec)  # (B, M, T)
            if self.pcen is not None:
                spec = self.pcen(spec)  # (B, M, T)
            else:
                spec = AFN.compress(spec, self.compression, self.power, self.log_gain)
        return spec.reshape(*lead, *spec.shape[-2:])

    # ---- inspection -------------------------------------------------------------------------

    def window_change(self) -> float:
        """Relative L2 distance of the applied window (with its learned length) from its initial value."""
        with torch.no_grad():
            return AFN.relative_change(self.effective_window(), self.initial_window)

    def kernel_change(self) -> float:
        """Relative L2 distance of the kernel from the exact DFT."""
        return AFN.relative_change(self.kernel, self.initial_kernel)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (without the learning switches) as plain values."""
        return {name: getattr(self, _ATTRIBUTE.get(name, name)) for name in ARGUMENTS if name not in SWITCHES}

    def export_learned(self) -> dict[str, Any]:
        """The learned tensors and the arguments that shape them, as plain detached CPU data.

        ``{"format", "config", "window" (W,), "kernel_cos" (F, N), "kernel_sin" (F, N)}``, and with
        ``learn_win_length`` also ``"win_length"`` (0-d, samples) and ``"effective_window"`` (N,),
        ``"window"`` then being the (N,) correction; with PCEN ``"pcen"``: its stored parameters
        ``{"smoothing_logit", "alpha", "log_delta", "root"}``, each ``(M,)`` (``self.pcen.values()``
        gives them in range); save it with ``torch.save`` (loadable with ``weights_only=True``) and
        restore with :meth:`load_learned` or :meth:`from_learned`.
        """
        learned = {
            "format": _EXPORT_FORMAT,
            "config": self.config(),
            "window": self.window.detach().cpu().clone(),
            "kernel_cos": self.kernel[0].detach().cpu().clone(),
            "kernel_sin": self.kernel[1].detach().cpu().clone(),
        }
        if self.log_win_scale is not None:
            with torch.no_grad():
                learned["win_length"] = self.current_win_length().detach().cpu().clone()
                learned["effective_window"] = self.effective_window().detach().cpu().clone()
        if self.pcen is not None:
            learned["pcen"] = {name: p.detach().cpu().clone() for name, p in self.pcen.named_parameters()}
        return learned

    def load_learned(self, learned: dict[str, Any]) -> "AdaSTFT":
        """Copy exported tensors into this layer; shapes and STFT arguments must match."""
        if learned.get("format") != _EXPORT_FORMAT:
            raise ValueError(f"learned must come from AdaSTFT.export_learned(), got format {learned.get('format')!r}")
        expected = {
            "window": tuple(self.window.shape),
            "kernel_cos": (self.n_freq, self.n_fft),
            "kernel_sin": (self.n_freq, self.n_fft),
        }
        if self.log_win_scale is not None:
            expected["win_length"] = ()
        for key, shape in expected.items():
            if key not in learned:
                raise ValueError(f"learned has no {key!r}: it comes from a layer built with other arguments")
            got = tuple(learned[key].shape)
            if got != shape:
                raise ValueError(f"learned[{key!r}] has shape {got}, this layer needs {shape}")
        pcen = dict(self.pcen.named_parameters()) if self.pcen is not None else {}
        if ("pcen" in learned) != bool(pcen):
            raise ValueError(
                f"learned {'has' if 'pcen' in learned else 'has no'} PCEN parameters, this layer's "
                f"compression is {self.compression!r}"
            )
        for name, param in pcen.items():
            got = tuple(learned["pcen"][name].shape)
            if got != tuple(param.shape):
                raise ValueError(f"learned['pcen'][{name!r}] has shape {got}, this layer needs {tuple(param.shape)}")
        with torch.no_grad():
            self.window.copy_(learned["window"])
            self.kernel[0].copy_(learned["kernel_cos"])
            self.kernel[1].copy_(learned["kernel_sin"])
            if self.log_win_scale is not None:
                self.log_win_scale.copy_((learned["win_length"] / self.win_length).log())
            for name, param in pcen.items():
                param.copy_(learned["pcen"][name])
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
            f"learn_kernel={self.learn_kernel}, learn_compression={self.learn_compression}, "
            f"learn_win_length={self.learn_win_length}"
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

    def set_learning(
        self,
        window: bool | None = None,
        kernel: bool | None = None,
        compression: bool | None = None,
        win_length: bool | None = None,
    ) -> "AdaSTFTBank":
        for layer in self.layers:
            layer.set_learning(window=window, kernel=kernel, compression=compression, win_length=win_length)
        return self

    def parameter_groups(
        self, lr: float | None = None, weight_decay: float = 0.0, scalar_lr: float | None = None
    ) -> list[dict]:
        """As :meth:`AdaSTFT.parameter_groups`, over every front end."""
        return _groups(list(self.layers), lr, weight_decay, scalar_lr)

    def window_change(self) -> float:
        """Mean relative window change over the front ends."""
        return sum(layer.window_change() for layer in self.layers) / len(self.layers)

    def kernel_change(self) -> float:
        """Mean relative kernel change over the front ends."""
        return sum(layer.kernel_change() for layer in self.layers) / len(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_tensor(x) and x.dim() == 3:
            if x.shape[1] != len(self.layers):
                raise ValueError(f"input has {x.shape[1]} channels, this bank has {len(self.layers)} front ends")
            return torch.stack([layer(x[:, i]) for i, layer in enumerate(self.layers)], dim=1)
        return torch.stack([layer(x) for layer in self.layers], dim=1)  # (B, n, M, T)


def _groups(layers: list[AdaSTFT], lr: float | None, weight_decay: float, scalar_lr: float | None) -> list[dict]:
    tensors = [p for layer in layers for p in (layer.window, layer.kernel)]
    scalars = [p for layer in layers for p in layer.learnable() if p is not layer.window and p is not layer.kernel]
    groups: list[dict[str, Any]] = [{"params": tensors, "weight_decay": weight_decay}]
    if scalars and scalar_lr is not None:
        groups.append({"params": scalars, "weight_decay": weight_decay, "lr": scalar_lr})
    else:
        groups[0]["params"] = tensors + scalars
    if lr is not None:
        groups[0]["lr"] = lr
    return groups


# The constructor's arguments, in order: the one list of them. The config's stft section
# (adastft.config.StftConfig) and config() are read from it.
ARGUMENTS = tuple(inspect.signature(AdaSTFT).parameters)
SWITCHES = ("learn_window", "learn_kernel", "learn_compression")  # learning on or off, not the shape of the STFT
_ATTRIBUTE = {"window": "window_name"}  # self.window is the learnable tensor
