"""Pure maths behind :class:`adastft.AdaSTFT`: no state, no parameters.

The module (``adastft.layer``) owns the tensors; these functions only compute. Shapes use
``B`` batch, ``L`` samples, ``T`` frames, ``N`` n_fft, ``W`` win_length, ``F`` n_fft // 2 + 1
frequency bins and ``M`` mel bands (or ``F`` rows, without a mel filterbank).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio.functional as AF

WINDOWS = ("hann", "hamming", "blackman", "bartlett", "kaiser", "rectangular")
COMPRESSIONS = ("none", "log1p", "db", "pcen")
PAD_MODES = ("reflect", "constant", "replicate", "circular")


def make_window(name: str, win_length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The named periodic window, as torch (and so torchaudio) builds it.

    ``(win_length,)``. ``rectangular`` is all ones. Example: ``make_window("hann", 1024)``.
    """
    builders = {
        "hann": torch.hann_window,
        "hamming": torch.hamming_window,
        "blackman": torch.blackman_window,
        "bartlett": torch.bartlett_window,
        "kaiser": torch.kaiser_window,
        "rectangular": lambda n, dtype: torch.ones(n, dtype=dtype),
    }
    if name not in builders:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {name!r}")
    return builders[name](win_length, dtype=dtype)


# The named windows as functions of t = (n - start) / length on [0, 1): periodic, as torch builds
# them, so that a window of real-valued length evaluated at an integer length equals make_window.
KAISER_BETA = 12.0  # torch.kaiser_window's default


def _window_curve(name: str, t: torch.Tensor) -> torch.Tensor:
    tau = 2.0 * math.pi * t
    if name == "hann":
        return 0.5 - 0.5 * torch.cos(tau)
    if name == "hamming":
        return 0.54 - 0.46 * torch.cos(tau)
    if name == "blackman":
        return 0.42 - 0.5 * torch.cos(tau) + 0.08 * torch.cos(2.0 * tau)
    if name == "bartlett":
        return 1.0 - torch.abs(2.0 * t - 1.0)
    if name == "kaiser":
        # the clamp keeps sqrt's gradient finite at the window's first sample (t = 0)
        arg = torch.clamp(1.0 - (2.0 * t - 1.0).square(), min=1e-12)
        return torch.special.i0(KAISER_BETA * arg.sqrt()) / torch.special.i0(torch.tensor(KAISER_BETA, dtype=t.dtype))
    raise ValueError(f"a window of learnable length must be tapered ({', '.join(TAPERED_WINDOWS)}), got {name!r}")


TAPERED_WINDOWS = ("hann", "hamming", "blackman", "bartlett", "kaiser")


def tapered_window(name: str, length: torch.Tensor, n_fft: int, start_shift: float = 0.0) -> torch.Tensor:
    """The named window of real-valued ``length`` (samples), centred on an ``n_fft`` support.

    ``length`` a 0-d tensor (may require grad) -> ``(n_fft,)``: zero outside the window, its
    gradient in ``length`` flowing through every sample inside it. The window starts at
    ``(n_fft - length) / 2 - start_shift``; with ``start_shift = ((n_fft - W) / 2) % 1`` and
    ``length = W`` it equals ``make_window(name, W)`` placed where ``torch.stft`` puts a short
    window (``(n_fft - W) // 2`` samples in). Example: ``tapered_window("hann", torch.tensor(700.5), 1024)``.
    """
    n = torch.arange(n_fft, dtype=length.dtype, device=length.device)
    start = (n_fft - length) / 2.0 - start_shift
    t = (n - start) / length  # (N,): position inside the window, in [0, 1) where it is nonzero
    inside = (t >= 0) & (t < 1)
    return torch.where(inside, _window_curve(name, torch.clamp(t, 0.0, 1.0)), torch.zeros_like(t))


class _InwardClamp(torch.autograd.Function):
    """``clamp(x, low, high)`` whose gradient passes at a bound when descent would move ``x`` back
    inside: a plain clamp's zero gradient there would leave a parameter stuck at its bound for good."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.low, ctx.high = low, high
        return torch.clamp(x, low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        passes = ((x > ctx.low) & (x < ctx.high)) | ((x >= ctx.high) & (grad > 0)) | ((x <= ctx.low) & (grad < 0))
        return torch.where(passes, grad, torch.zeros_like(grad)), None, None


def bounded(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``x`` clamped to ``[low, high]``, with a gradient that can bring it back from a bound."""
    return _InwardClamp.apply(x, low, high)


def dft_kernel(n_fft: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The real and imaginary parts of the one-sided DFT matrix.

    ``(2, F, N)``: ``[0]`` is ``cos(2 pi f n / N)``, ``[1]`` is ``-sin(2 pi f n / N)``, so that
    ``kernel[0] @ x + 1j * kernel[1] @ x`` equals ``torch.fft.rfft(x)``. The phase ``f * n`` is
    reduced modulo ``N`` in integers first, which keeps the float32 kernel exact to rounding.
    """
    f = torch.arange(n_fft // 2 + 1, dtype=torch.int64).unsqueeze(1)
    n = torch.arange(n_fft, dtype=torch.int64).unsqueeze(0)
    phase = (f * n % n_fft).to(torch.float64) * (2.0 * math.pi / n_fft)  # (F, N)
    return torch.stack([torch.cos(phase), -torch.sin(phase)]).to(dtype)


class _PowerOfSquare(torch.autograd.Function):
    """``p ** e`` for ``p = |X|^2 >= 0`` with the gradient set to zero where ``p == 0``.

    ``|X|^power = p ** (power / 2)``; for ``power < 2`` its derivative is infinite at ``p = 0``
    (silence, zero padding), which would poison a whole batch with NaN. Zero is the
    minimal-norm subgradient there, the same choice ``torch.abs`` makes for complex input.
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor, exponent: float) -> torch.Tensor:
        ctx.exponent = exponent
        if exponent == 0.5:  # |X|: its gradient needs only |X|, so p is not kept for backward
            out = p.sqrt()
            ctx.save_for_backward(out)
            return out
        out = p.pow(exponent)
        ctx.save_for_backward(p, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # One pass of arithmetic, then ``where`` drops the inf/NaN it made at zero: at power 1
        # this backward is the layer's largest cost after the matrix products.
        if ctx.exponent == 0.5:
            (out,) = ctx.saved_tensors
            return torch.where(out > 0, grad * 0.5 / out, 0.0), None
        p, out = ctx.saved_tensors
        return torch.where(p > 0, grad * ctx.exponent * out / p, 0.0), None


def magnitude(power_spectrum: torch.Tensor, power: float) -> torch.Tensor:
    """``|X| ** power`` from ``|X| ** 2``, with finite gradients everywhere (see above)."""
    if power == 2.0:
        return power_spectrum
    return _PowerOfSquare.apply(power_spectrum, power / 2.0)


def pad_signal(x: torch.Tensor, n_fft: int, center: bool, pad_mode: str) -> torch.Tensor:
    """Pad ``(B, L)`` by ``n_fft // 2`` on both sides when ``center``, as ``torch.stft`` does."""
    if not center:
        return x
    half = n_fft // 2
    return F.pad(x.unsqueeze(1), (half, half), mode=pad_mode).squeeze(1)  # (B, L + 2 * half)


def power_spectrogram_fft(
    x: torch.Tensor,
    window: torch.Tensor,
    n_fft: int,
    hop_length: int,
    center: bool,
    pad_mode: str,
    power: float = 2.0,
) -> torch.Tensor:
    """``|STFT(x)|^power`` by the FFT. ``(B, L) -> (B, F, T)``; the window may require grad."""
    spec = torch.stft(
        x,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=window.shape[-1],
        window=window,
        center=center,
        pad_mode=pad_mode,
        return_complex=True,
    )  # (B, F, T) complex
    if power == 1.0:
        # torch's complex abs: one fused pass each way, and its gradient is zero where |X| = 0
        return spec.abs()
    return magnitude(torch.view_as_real(spec).square().sum(-1), power)  # (B, F, T)


class _MagnitudeOfHalves(torch.autograd.Function):
    """``|X| = hypot(re, im)`` of a ``(B, 2F, T)`` tensor holding ``[re | im]`` along dim 1.

    One fused pass forward; backward ``d|X|/d[re | im] = [re | im] / |X|`` in two, written
    straight into the gradient, with zero where ``|X| = 0`` (the minimal-norm subgradient, as
    torch's complex ``abs`` has). Autograd over ``sqrt(re^2 + im^2)`` takes about twice the passes.
    """

    @staticmethod
    def forward(ctx, out: torch.Tensor) -> torch.Tensor:
        re, im = out.chunk(2, dim=1)
        mag = torch.hypot(re, im)  # (B, F, T)
        ctx.save_for_backward(out, mag)
        return mag

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out, mag = ctx.saved_tensors
        scale = grad / mag
        scale.masked_fill_(mag == 0, 0.0)
        grad_out = torch.empty_like(out)
        for part, dest in zip(out.chunk(2, dim=1), grad_out.chunk(2, dim=1)):
            torch.mul(part, scale, out=dest)
        return grad_out


# Frames a weight-gradient chunk may copy at once (elements): 16 M floats, 64 MB in float32.
FRAME_CHUNK_ELEMENTS = 1 << 24


class _StridedFilters(torch.autograd.Function):
    """``conv1d(signal[:, None], (taps * window)[:, None], stride=hop)``:
    ``(B, L), (C, W), (W,) -> (B, C, T)``, with the gradients as matrix products of output
    gradient and frames.

    Forward is the strided convolution, which never materialises the frames. Its weight gradient
    in PyTorch's CPU kernels grows far faster than the product it is (8 one-second clips, hop 512,
    2F = 8194 filters of 8192 taps: 60 s against 0.36 s for ``grad^T @ frames``; at 1024 taps
    6x slower), so backward computes ``sum_b grad[b] @ frames[b]`` itself, copying the frames of
    a few clips at a time (at most ``FRAME_CHUNK_ELEMENTS``) into one ``(rows, W)`` matrix.
    When the window learns, that product ``G`` gives both gradients (``G * window`` and
    ``sum_c G * taps``). When only the taps learn, the window is folded into the frame copy
    instead (``grad^T @ (frames * window)``), which spares two passes over the ``(C, W)`` basis:
    at n_fft 8192 these are larger than the frames. The signal's gradient, needed only when the
    signal itself requires one, stays the convolution's. ``bench/bench_stft.py --n-fft
    1024,4096,8192`` measures this against nnAudio and a bare product.
    """

    @staticmethod
    def forward(ctx, signal: torch.Tensor, taps: torch.Tensor, window: torch.Tensor, hop: int) -> torch.Tensor:
        ctx.save_for_backward(signal, taps, window)
        ctx.hop = hop
        return F.conv1d(signal[:, None], (taps * window)[:, None], stride=hop)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        signal, taps, window = ctx.saved_tensors
        hop = ctx.hop
        grad_signal = grad_taps = grad_window = None
        if ctx.needs_input_grad[0]:
            basis = (taps * window)[:, None].to(grad.dtype)
            grad_signal = torch.nn.grad.conv1d_input((signal.shape[0], 1, signal.shape[1]), basis, grad, stride=hop)[
                :, 0
            ].to(signal.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            fold = not ctx.needs_input_grad[2]  # only the taps learn: window the frames instead
            n_batch, n_filters, n_frames = grad.shape
            width = taps.shape[-1]
            frames = signal.unfold(-1, width, hop)  # (B, T, W), a view
            step = max(1, FRAME_CHUNK_ELEMENTS // max(1, n_frames * width))
            product = torch.zeros_like(taps)  # (C, W)
            for start in range(0, n_batch, step):
                rows = frames[start : start + step].reshape(-1, width)  # (b*T, W), one copy
                if fold:
                    shares = rows.untyped_storage().data_ptr() == signal.untyped_storage().data_ptr()
                    rows = rows * window if shares else rows.mul_(window)  # never write into the signal
                g = grad[start : start + step].to(taps.dtype).transpose(1, 2).reshape(-1, n_filters)
                product.addmm_(g.t(), rows)  # (C, b*T) @ (b*T, W)
            if fold:
                grad_taps = product
            else:
                if ctx.needs_input_grad[1]:
                    grad_taps = product * window
                grad_window = (product * taps).sum(0)
        return grad_signal, grad_taps, grad_window, None


def power_spectrogram_kernel(
    x: torch.Tensor,
    window: torch.Tensor,
    kernel: torch.Tensor,
    n_fft: int,
    hop_length: int,
    center: bool,
    pad_mode: str,
    power: float = 2.0,
) -> torch.Tensor:
    """``|STFT(x)|^power`` with an arbitrary (learnable) kernel. ``(B, L) -> (B, F, T)``.

    The ``(2, F, N)`` kernel is windowed into ``2F`` filters of ``W`` taps, and real and imaginary
    parts come out of one strided convolution over the padded signal (:class:`_StridedFilters`,
    whose backward is a matrix product). ``torch.stft`` centres a short window inside the
    ``n_fft`` frame; the samples outside it are multiplied by zero, so the convolution starts
    ``(N - W) // 2`` samples in and reads only ``W`` per frame.
    """
    win_length = window.shape[-1]
    left = (n_fft - win_length) // 2
    n_freq = kernel.shape[1]
    # A full-width slice would still cost a zero-filled copy of the kernel in backward.
    taps = kernel if win_length == n_fft else kernel[..., left : left + win_length]
    padded = pad_signal(x, n_fft, center, pad_mode)  # (B, L')
    n_frames = 1 + (padded.shape[-1] - n_fft) // hop_length
    signal = padded[:, left : left + (n_frames - 1) * hop_length + win_length]  # exactly T frames
    out = _StridedFilters.apply(signal, taps.reshape(2 * n_freq, win_length), window, hop_length)  # (B, 2F, T)
    if power == 1.0:
        return _MagnitudeOfHalves.apply(out)  # (B, F, T)
    return magnitude(out.square().unflatten(1, (2, n_freq)).sum(1), power)  # (B, F, T)


def compress(x: torch.Tensor, method: str, power: float, log_gain: float) -> torch.Tensor:
    """Dynamic-range compression of a non-negative spectrogram.

    ``none``: unchanged. ``log1p``: ``log10(1 + log_gain * x)``, the original project's choice
    (gain 10), finite at zero. ``db``: ``(20 / power) * log10(max(x, 1e-10))``, which is
    ``torchaudio.transforms.AmplitudeToDB`` for power 1 and 2 with no ``top_db``.
    """
    if method == "none":
        return x
    if method == "log1p":
        return torch.log1p(log_gain * x) / math.log(10.0)
    if method == "db":
        return (20.0 / power) * torch.log10(torch.clamp(x, min=1e-10))
    if method == "pcen":  # its parameters live in a module: adastft.pcen.PCEN
        raise ValueError("compression 'pcen' has learnable state: use adastft.pcen.PCEN, or functional.pcen")
    raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {method!r}")


def ema(x: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """Exponential moving average over the last (time) axis, one coefficient per row.

    ``(..., M, T), (M,) -> (..., M, T)``: ``m[0] = x[0]`` and ``m[t] = (1 - s) m[t-1] + s x[t]``,
    as LEAF starts it (its first step is the same recurrence from ``m[-1] = x[0]``). Computed as
    ``torchaudio.functional.lfilter`` from a zero state, which runs the recursion in C++ with its
    own backward, plus the initial state's free decay ``(1 - s)^(t+1) x[0]``.
    """
    n_frames = x.shape[-1]
    s = smoothing.to(x.dtype)
    # lfilter's rows are its filters: y[t] = s x[t] + (1 - s) y[t-1]
    a = torch.stack([torch.ones_like(s), s - 1.0], dim=-1)  # (M, 2)
    b = torch.stack([s, torch.zeros_like(s)], dim=-1)  # (M, 2)
    zero_state = AF.lfilter(x, a, b, clamp=False, batching=True)  # (..., M, T)
    steps = torch.arange(1, n_frames + 1, device=x.device, dtype=x.dtype)
    decay = torch.exp(steps * torch.log1p(-s).unsqueeze(-1))  # (M, T): (1 - s)^(t+1)
    return zero_state + decay * x[..., :1]


def pcen(
    x: torch.Tensor,
    smoothing: torch.Tensor,
    alpha: torch.Tensor,
    delta: torch.Tensor,
    root: torch.Tensor,
    floor: float = 1e-12,
) -> torch.Tensor:
    """Per-channel energy normalisation (Wang et al. 2017; LEAF, Zeghidour et al. 2021).

    ``(..., M, T) -> (..., M, T)`` for a non-negative energy ``x`` and per-row ``(M,)`` parameters,
    already in range: smoothing ``s`` in (0, 1), ``alpha`` in [0, 1], ``delta > 0``, ``root >= 1``::

        m = ema(x, s)
        out = (x / (floor + m) ** alpha + delta) ** (1 / root) - delta ** (1 / root)

    Example: ``pcen(mel, *(torch.full((128,), v) for v in (0.04, 0.96, 2.0, 2.0)))``.
    """
    smooth = ema(x, smoothing)
    alpha, delta, inv_root = alpha.unsqueeze(-1), delta.unsqueeze(-1), 1.0 / root.unsqueeze(-1)  # (M, 1)
    return (x / (floor + smooth).pow(alpha) + delta).pow(inv_root) - delta.pow(inv_root)


def relative_change(current: torch.Tensor, initial: torch.Tensor) -> float:
    """``||current - initial|| / ||initial||`` (L2 over all elements) as a Python float."""
    with torch.no_grad():
        return float(torch.linalg.vector_norm(current - initial) / torch.linalg.vector_norm(initial))


def window_response(window: torch.Tensor, n_fft: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitude response of a window in dB relative to its peak, on a fine grid.

    ``(W,) -> (freqs (K,), response_db (K,))``; ``freqs`` are in bins of the window's own length
    (one bin = ``sample_rate / W``), from ``-W/2`` to ``W/2``. Zero-padded to ``n_fft``
    (default ``64 * W``) so lobes are resolved.
    """
    w = window.detach().to(torch.float64).cpu()
    size = n_fft or 64 * w.numel()
    spectrum = torch.fft.fftshift(torch.fft.fft(w, n=size)).abs()
    db = 20.0 * torch.log10(torch.clamp(spectrum / spectrum.max(), min=1e-12))
    freqs = (torch.arange(size, dtype=torch.float64) - size // 2) * (w.numel() / size)
    return freqs, db


def window_metrics(window: torch.Tensor) -> dict[str, float]:
    """Main-lobe width (null to null, in bins) and highest side lobe (dB) of a window.

    The main lobe is the region around the response's peak bounded by its first local minima.
    Example: a periodic Hann window gives a main lobe of 4 bins and a highest side lobe near -31.5 dB.
    """
    freqs, db = window_response(window)
    peak = int(torch.argmax(db))
    right = peak
    while right + 1 < db.numel() and db[right + 1] <= db[right]:
        right += 1
    left = peak
    while left - 1 >= 0 and db[left - 1] <= db[left]:
        left -= 1
    side = torch.cat([db[:left], db[right + 1 :]])
    return {
        "main_lobe_width_bins": float(freqs[right] - freqs[left]),
        "highest_side_lobe_db": float(side.max()) if side.numel() else float("-inf"),
    }
