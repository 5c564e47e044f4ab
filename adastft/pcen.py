"""PCEN: learnable per-channel energy normalisation, the compression LEAF learns.

Wang et al. 2017, "Trainable frontend for robust and far-field keyword spotting"; LEAF (Zeghidour
et al. 2021) puts it after its filterbank with one set of parameters per band. The maths is
:func:`adastft.functional.pcen`; this module holds the parameters and keeps them in range.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from adastft import functional as AFN
from adastft.checks import need

# LEAF's initial values. They suit this layer's scale too: the EMA includes the current frame, so
# x / m <= 1 / s, and with alpha near 1, x / m^alpha ~ x^(1 - alpha) at a steady level. Mel energies of
# [-1, 1] audio at n_fft=1024 (about 1e-6 for 16-bit noise to 1e5 for a full-scale tone) map to
# 0.6 .. 1.6 there, LEAF's range, and a level change is at most 1 / s = 25 times that.
SMOOTHING, ALPHA, DELTA, ROOT, FLOOR = 0.04, 0.96, 2.0, 2.0, 1e-12


def check_pcen_arguments(smoothing: Any, alpha: Any, delta: Any, root: Any, floor: Any, prefix: str = "") -> None:
    """The ``ValueError`` naming the first bad initial value, ``f"{prefix}alpha must be in [0, 1], got 1.5"``
    (``AdaSTFT`` checks its ``pcen_*`` arguments with ``prefix="pcen_"``)."""
    need(_number(smoothing) and 0 < smoothing < 1, f"{prefix}smoothing must be in (0, 1), got {smoothing!r}")
    need(_number(alpha) and 0 <= alpha <= 1, f"{prefix}alpha must be in [0, 1], got {alpha!r}")
    need(_number(delta) and math.isfinite(delta) and delta > 0, f"{prefix}delta must be positive, got {delta!r}")
    need(_number(root) and math.isfinite(root) and root >= 1, f"{prefix}root must be >= 1, got {root!r}")
    need(_number(floor) and math.isfinite(floor) and floor > 0, f"{prefix}floor must be positive, got {floor!r}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class PCEN(nn.Module):
    """``(..., n_bands, frames) -> (..., n_bands, frames)``, for a non-negative energy.

    ``m = ema(x, s)``, ``out = (x / (floor + m)^alpha + delta)^(1/root) - delta^(1/root)``, every
    parameter per band. The parameters are stored so that any value is valid:

    - ``smoothing_logit``: ``s = sigmoid(smoothing_logit)``, in (0, 1); ``s = 0.04`` is a time
      constant of about 25 frames (0.58 s at hop 512 and 22050 Hz, 0.25 s at LEAF's 10 ms hop);
    - ``alpha``: used as ``clamp(alpha, 0, 1)`` (LEAF's ``min(alpha, 1)``, and >= 0);
    - ``log_delta``: ``delta = exp(log_delta)``, > 0 (LEAF's delta is unconstrained and NaNs below 0);
    - ``root``: used as ``clamp(root, min=1)`` (LEAF's ``max(root, 1)``).

    A clamped value past its bound gets no gradient from the loss there, as in LEAF. ``floor`` is
    fixed: it only matters where both energy and its average are zero (silence). Bad initial values
    raise ``ValueError`` naming them (:func:`check_pcen_arguments`).

    Example: ``PCEN(128)(mel)`` for ``mel`` of shape ``(16, 128, 130)``.
    """

    def __init__(
        self,
        n_bands: int,
        smoothing: float = SMOOTHING,
        alpha: float = ALPHA,
        delta: float = DELTA,
        root: float = ROOT,
        floor: float = FLOOR,
    ) -> None:
        super().__init__()
        need(
            isinstance(n_bands, int) and not isinstance(n_bands, bool) and n_bands >= 1,
            f"n_bands must be a positive integer, got {n_bands!r}",
        )
        check_pcen_arguments(smoothing, alpha, delta, root, floor)
        self.n_bands, self.floor = n_bands, float(floor)
        self.initial = {"smoothing": smoothing, "alpha": alpha, "delta": delta, "root": root}  # as values() names them
        self.smoothing_logit = nn.Parameter(torch.full((n_bands,), math.log(smoothing / (1.0 - smoothing))))
        self.alpha = nn.Parameter(torch.full((n_bands,), float(alpha)))
        self.log_delta = nn.Parameter(torch.full((n_bands,), math.log(delta)))
        self.root = nn.Parameter(torch.full((n_bands,), float(root)))

    def values(self) -> dict[str, torch.Tensor]:
        """The parameters as :func:`~adastft.functional.pcen` takes them, in range: ``{smoothing,
        alpha, delta, root}``, each ``(n_bands,)``."""
        return {
            "smoothing": torch.sigmoid(self.smoothing_logit),
            "alpha": self.alpha.clamp(0.0, 1.0),
            "delta": self.log_delta.exp(),
            "root": self.root.clamp(min=1.0),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return AFN.pcen(x, **self.values(), floor=self.floor)

    def extra_repr(self) -> str:
        return f"n_bands={self.n_bands}, floor={self.floor:g}"
