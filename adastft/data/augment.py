"""Training-only augmentations, batched on the device: waveform noise, gain and delay, mixup of
the waveforms and their labels, and SpecAugment masks for the spectrogram the model computes.

The modules draw one set of random parameters per example with torch's RNG on the input's
device, in a handful of tensor operations per batch (no Python loop over examples), and are the
identity in ``eval()`` mode, so evaluation is never augmented.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _check_range(name: str, value: tuple[float, float] | None) -> tuple[float, float] | None:
    if value is None:
        return None
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
        and value[0] <= value[1]
    )
    if not ok:
        raise ValueError(f"{name} must be None or (low, high) with low <= high, got {value!r}")
    return float(value[0]), float(value[1])


def _uniform(low: float, high: float, batch: int, x: torch.Tensor) -> torch.Tensor:
    return low + (high - low) * torch.rand(batch, 1, device=x.device, dtype=x.dtype)  # (B, 1)


class Augment(nn.Module):
    """``(batch, time) -> (batch, time)`` waveform augmentation, on in ``train()`` only.

    In order, each with probability ``p`` per example:
        gain: multiply by ``10 ** (g / 20)``, ``g`` uniform in ``gain_db`` (dB);
        delay: shift later by a uniform ``0 .. max_delay_s`` seconds, silence in front, same
            length;
        noise: add white Gaussian noise at an SNR uniform in ``noise_snr_db`` (dB) relative to
            the example's own power (a silent example gets none).
    ``None`` switches an augmentation off.

    Example::

        aug = Augment(noise_snr_db=(10, 40), gain_db=(-6, 6), max_delay_s=0.1, sample_rate=22050)
        x = aug(x)  # in the training step, on the GPU batch; aug.eval() makes it the identity
    """

    def __init__(
        self,
        noise_snr_db: tuple[float, float] | None = None,
        gain_db: tuple[float, float] | None = None,
        max_delay_s: float | None = None,
        sample_rate: int = 22050,
        p: float = 1.0,
    ) -> None:
        super().__init__()
        self.noise_snr_db = _check_range("noise_snr_db", noise_snr_db)
        self.gain_db = _check_range("gain_db", gain_db)
        if max_delay_s is not None and not (isinstance(max_delay_s, (int, float)) and max_delay_s >= 0):
            raise ValueError(f"max_delay_s must be None or >= 0 seconds, got {max_delay_s!r}")
        if not isinstance(sample_rate, int) or sample_rate < 1:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        if not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.max_delay_s = max_delay_s
        self.sample_rate = sample_rate
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if not torch.is_tensor(x) or x.dim() != 2 or not torch.is_floating_point(x):
            raise ValueError(f"Augment needs a float (batch, time) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        batch, length = x.shape
        if self.gain_db is not None:
            gain = 10 ** (_uniform(*self.gain_db, batch, x) / 20)  # (B, 1)
            x = torch.where(self._chosen(batch, x), x * gain, x)
        if self.max_delay_s:
            max_delay = min(int(self.max_delay_s * self.sample_rate), length)
            delay = torch.randint(0, max_delay + 1, (batch, 1), device=x.device)
            delay = delay * self._chosen(batch, x)  # (B, 1)
            src = torch.arange(length, device=x.device) - delay  # (B, T): sample t comes from t - d
            x = torch.where(src >= 0, x.gather(1, src.clamp(min=0)), torch.zeros((), dtype=x.dtype, device=x.device))
        if self.noise_snr_db is not None:
            snr = _uniform(*self.noise_snr_db, batch, x)
            power = x.pow(2).mean(dim=1, keepdim=True)  # (B, 1)
            std = torch.sqrt(power / 10 ** (snr / 10))
            x = x + torch.randn_like(x) * std * self._chosen(batch, x)
        return x

    def _chosen(self, batch: int, x: torch.Tensor) -> torch.Tensor:
        if self.p >= 1:
            return torch.ones(batch, 1, dtype=torch.bool, device=x.device)
        return torch.rand(batch, 1, device=x.device) < self.p  # (B, 1)

    def extra_repr(self) -> str:
        return (
            f"noise_snr_db={self.noise_snr_db}, gain_db={self.gain_db}, max_delay_s={self.max_delay_s}, "
            f"sample_rate={self.sample_rate}, p={self.p}"
        )


class Mixup(nn.Module):
    """Mixup (Zhang et al. 2018) of waveforms and labels, on in ``train()`` only:
    ``(batch, time), (batch,) -> (batch, time), (batch, num_classes)``.

    Each example ``i`` is paired with example ``perm[i]`` of a random permutation of the batch
    and, with probability ``p``, mixed with its own ``lam[i] ~ Beta(alpha, alpha)``:
    ``x[i] * lam[i] + x[perm[i]] * (1 - lam[i])``, with the soft target
    ``lam[i] * onehot(y[i]) + (1 - lam[i]) * onehot(y[perm[i]])`` (rows sum to 1; cross-entropy
    takes it as class probabilities). Unmixed examples, and every example in ``eval()``, keep
    ``x[i]`` and ``onehot(y[i])``. ``forward`` also returns ``lam`` and ``perm``.

    One ``lam`` per example, not per batch: a batch then covers the whole Beta distribution at
    every step instead of one draw of it, so the gradient's noise from the mixing averages out
    within the batch (a per-batch ``lam`` near 0.5 blurs every example of that step at once).
    torchvision's ``MixUp`` draws one per batch and pairs by rolling the batch, hence this module.

    In training it mixes the waveforms, after :class:`Augment` and before the model: the mix is
    two songs sounding together, and its spectrogram is not the mix of the two spectrograms
    (magnitudes and compression are not linear). Each song's own gain, delay and noise come
    first, so the target weighs the songs by ``lam``, not by their loudness in the mix.
    :class:`SpecAugment` then masks the mix's spectrogram: both songs lose the same bands.

    Example::

        mixup = Mixup(alpha=0.2)
        x, target, _, _ = mixup(augment(x), y, num_classes=10)  # after the waveform Augment
        loss = nn.functional.cross_entropy(model(x), target)
    """

    def __init__(self, alpha: float, p: float = 1.0) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self.alpha = float(alpha)
        self.p = float(p)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mixed x, soft targets, lam (batch,), perm (batch,))``; ``x`` may be ``(batch, ...)``."""
        if not torch.is_tensor(x) or x.dim() < 1 or not torch.is_floating_point(x):
            raise ValueError(f"Mixup needs a float (batch, ...) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        if not torch.is_tensor(y) or y.shape != x.shape[:1] or torch.is_floating_point(y):
            raise ValueError(f"Mixup needs integer labels of shape ({x.shape[0]},), got {getattr(y, 'shape', y)}")
        batch = x.shape[0]
        target = nn.functional.one_hot(y.long(), num_classes).to(x.dtype)  # (B, C)
        if not self.training:
            return x, target, torch.ones(batch, dtype=x.dtype, device=x.device), torch.arange(batch, device=x.device)
        concentration = torch.full((batch,), self.alpha, device=x.device)
        lam = torch.distributions.Beta(concentration, concentration).sample().to(x.dtype)  # (B,)
        if self.p < 1:
            lam = torch.where(torch.rand(batch, device=x.device) < self.p, lam, torch.ones_like(lam))
        perm = torch.randperm(batch, device=x.device)
        w = lam.view(batch, *([1] * (x.dim() - 1)))  # (B, 1, ...)
        mixed = x * w + x[perm] * (1 - w)
        return mixed, target * lam[:, None] + target[perm] * (1 - lam[:, None]), lam, perm

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, p={self.p}"


def spec_augment(
    spec: torch.Tensor,
    freq_mask_param: int,
    time_mask_param: int,
    n_freq_masks: int = 1,
    n_time_masks: int = 1,
    mask_value: float = 0.0,
) -> torch.Tensor:
    """SpecAugment masks: ``(batch, [channels,] freq, frames)`` -> same shape.

    Each example gets ``n_freq_masks`` bands of a width uniform in ``0..freq_mask_param`` rows
    and ``n_time_masks`` of ``0..time_mask_param`` frames, at uniform positions, set to
    ``mask_value``. The channels of an example share its masks (unlike torchaudio's iid masks,
    drawn per channel), so a spectrogram repeated to three channels stays consistent.
    """
    if not torch.is_tensor(spec) or spec.dim() not in (3, 4):
        raise ValueError(
            f"spec must be (batch, freq, frames) or (batch, channels, freq, frames), got {getattr(spec, 'shape', spec)}"
        )
    batch, n_freq, n_frames = spec.shape[0], spec.shape[-2], spec.shape[-1]
    keep = torch.ones(batch, n_freq, n_frames, dtype=torch.bool, device=spec.device)  # (B, F, T)
    for axis, size, param, count in (
        (1, n_freq, freq_mask_param, n_freq_masks),
        (2, n_frames, time_mask_param, n_time_masks),
    ):
        param = min(param, size)
        for _ in range(count):
            width = torch.randint(0, param + 1, (batch, 1), device=spec.device)
            start = (torch.rand(batch, 1, device=spec.device) * (size - width + 1)).long()  # (B, 1)
            pos = torch.arange(size, device=spec.device)
            band = (pos >= start) & (pos < start + width)  # (B, size)
            keep &= ~(band[:, :, None] if axis == 1 else band[:, None, :])
    if spec.dim() == 4:
        keep = keep[:, None]  # (B, 1, F, T): shared by the channels
    return spec.masked_fill(~keep, mask_value)


class SpecAugment(nn.Module):
    """:func:`spec_augment` as a module, on in ``train()`` only.

    Example: ``SpecAugment(freq_mask_param=16, time_mask_param=20)(model.frontend(x))``.
    """

    def __init__(
        self,
        freq_mask_param: int = 0,
        time_mask_param: int = 0,
        n_freq_masks: int = 1,
        n_time_masks: int = 1,
        mask_value: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("freq_mask_param", freq_mask_param),
            ("time_mask_param", time_mask_param),
            ("n_freq_masks", n_freq_masks),
            ("n_time_masks", n_time_masks),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.freq_mask_param = freq_mask_param
        self.time_mask_param = time_mask_param
        self.n_freq_masks = n_freq_masks
        self.n_time_masks = n_time_masks
        self.mask_value = float(mask_value)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if not self.training or (self.freq_mask_param == 0 and self.time_mask_param == 0):
            return spec
        return spec_augment(
            spec, self.freq_mask_param, self.time_mask_param, self.n_freq_masks, self.n_time_masks, self.mask_value
        )

    def extra_repr(self) -> str:
        return (
            f"freq_mask_param={self.freq_mask_param}, time_mask_param={self.time_mask_param}, "
            f"n_freq_masks={self.n_freq_masks}, n_time_masks={self.n_time_masks}"
        )
