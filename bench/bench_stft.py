"""Speed of AdaSTFT against its references, measured side by side in one run.

Run: ``python bench/bench_stft.py`` (``--device cuda`` on a GPU; ``--rounds`` for more samples;
``--n-fft 1024,4096,8192`` for one table per size and the ratios of every size at the end).
Needs the bench extra (``pip install -e '.[bench]'``) for nnAudio.

Forward+backward of a batch of 16 clips of 3 s at 22050 Hz (``--batch``, ``--seconds``), n_fft
1024, hop 512, 128 mels.
Implementations are timed round-robin (one call of each in turn, many rounds) so that drift of
the machine's speed hits all of them alike; the table shows medians and the ratios the targets
are stated in:

- window-only learning vs ``torch.stft`` with a learnable window + the same mel product (<= 1.2);
- kernel learning vs nnAudio's trainable ``STFT`` + the same mel product (<= 1.0);
- kernel learning vs a bare matrix product of the same shape, forward+backward (<= 1.15);
- torchaudio's fixed MelSpectrogram and the original project's style (conv2d on real kernels)
  for reference (the latter only up to n_fft 2048: its weight gradient takes a minute at 8192);
- the same two targets at power 1 (magnitude, torchaudio's ``power=1``): window learning vs
  ``torch.stft(...).abs()`` (<= 1.2) and kernel learning vs nnAudio's ``Magnitude`` output (<= 1.0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torchaudio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from adastft import AdaSTFT  # noqa: E402
from adastft import functional as AFN  # noqa: E402

SR, HOP, N_MELS = 22050, 512, 128


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _adastft_case(
    device: torch.device, x: torch.Tensor, n_fft: int, power: float, window: bool, kernel: bool
) -> Callable[[], None]:
    layer = AdaSTFT(
        SR, n_fft=n_fft, hop_length=HOP, n_mels=N_MELS, power=power, learn_window=window, learn_kernel=kernel
    ).to(device)

    def case():
        layer(x).sum().backward()
        layer.zero_grad(set_to_none=True)

    return case


def build_cases(device: torch.device, n_fft: int, batch: int, seconds: float) -> dict[str, Callable[[], None]]:
    x = torch.randn(batch, int(SR * seconds), device=device)
    n_freq = n_fft // 2 + 1
    mel_fb = torchaudio.functional.melscale_fbanks(n_freq, 0.0, SR / 2, N_MELS, SR).to(device)  # (F, M)
    cases: dict[str, Callable[[], None]] = {}

    fixed = torchaudio.transforms.MelSpectrogram(SR, n_fft=n_fft, hop_length=HOP, n_mels=N_MELS).to(device)

    def torchaudio_fixed():
        with torch.no_grad():
            fixed(x)

    cases["torchaudio MelSpectrogram (fixed, forward only)"] = torchaudio_fixed

    window = torch.hann_window(n_fft, device=device).requires_grad_(True)

    def stft_learnable_window():
        spec = torch.stft(x, n_fft, HOP, window=window, return_complex=True)
        p = torch.view_as_real(spec).square().sum(-1)  # (B, F, T)
        torch.matmul(mel_fb.t(), p).sum().backward()
        window.grad = None

    cases["torch.stft + learnable window + mel"] = stft_learnable_window

    cases["AdaSTFT learn window (FFT path)"] = _adastft_case(device, x, n_fft, 2.0, window=True, kernel=False)

    def stft_abs_learnable_window():
        spec = torch.stft(x, n_fft, HOP, window=window, return_complex=True).abs()  # (B, F, T)
        torch.matmul(mel_fb.t(), spec).sum().backward()
        window.grad = None

    cases["p1: torch.stft(...).abs() + learnable window + mel"] = stft_abs_learnable_window
    cases["p1: AdaSTFT learn window (FFT path)"] = _adastft_case(device, x, n_fft, 1.0, window=True, kernel=False)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from nnAudio.features import STFT as NNAudioSTFT

        nna = NNAudioSTFT(
            n_fft=n_fft,
            hop_length=HOP,
            window="hann",
            freq_scale="no",
            center=True,
            pad_mode="reflect",
            trainable=True,
            output_format="Complex",
            sr=SR,
            verbose=False,
        ).to(device)

        def nnaudio_trainable():
            out = nna(x)  # (B, F, T, 2)
            p = out.square().sum(-1)
            torch.matmul(mel_fb.t(), p).sum().backward()
            nna.zero_grad(set_to_none=True)

        cases["nnAudio STFT trainable + mel"] = nnaudio_trainable

        def nnaudio_magnitude():
            torch.matmul(mel_fb.t(), nna(x, output_format="Magnitude")).sum().backward()  # (B, F, T)
            nna.zero_grad(set_to_none=True)

        cases["p1: nnAudio STFT trainable Magnitude + mel"] = nnaudio_magnitude
    except ImportError:
        print("nnAudio is not installed (pip install -e '.[bench]'); its row is skipped", file=sys.stderr)

    cases["AdaSTFT learn kernel (kernel path)"] = _adastft_case(device, x, n_fft, 2.0, window=False, kernel=True)
    cases["p1: AdaSTFT learn kernel (kernel path)"] = _adastft_case(device, x, n_fft, 1.0, window=False, kernel=True)
    cases["AdaSTFT learn window + kernel"] = _adastft_case(device, x, n_fft, 2.0, window=True, kernel=True)

    n_frames = 1 + (x.shape[-1] + 2 * (n_fft // 2) - n_fft) // HOP
    frames = torch.randn(batch * n_frames, n_fft, device=device)
    weight = torch.randn(2 * n_freq, n_fft, device=device, requires_grad=True)

    def bare_matmul():
        torch.matmul(frames, weight.t()).sum().backward()
        weight.grad = None

    cases["bare matmul (B*T, N) x (N, 2F), fwd+bwd"] = bare_matmul

    # The original project's style: the windowed real kernels as conv2d filters over the signal.
    kernels = (AFN.dft_kernel(n_fft).to(device) * torch.hann_window(n_fft, device=device)).reshape(
        2 * n_freq, 1, 1, n_fft
    )
    kernels = kernels.clone().requires_grad_(True)

    def original_conv2d():
        padded = torch.nn.functional.pad(x.unsqueeze(1), (n_fft // 2, n_fft // 2), mode="reflect")
        out = torch.nn.functional.conv2d(padded.unsqueeze(1), kernels, stride=(1, HOP))  # (B, 2F, 1, T)
        out = out.squeeze(2)
        p = out[:, :n_freq].square() + out[:, n_freq:].square()
        torch.matmul(mel_fb.t(), p).sum().backward()
        kernels.grad = None

    if n_fft <= 2048:
        cases["original style: conv2d on real kernels + mel"] = original_conv2d
    return cases


def run(
    device: torch.device,
    rounds: int,
    warmup: int,
    stat: str = "median",
    n_fft: int = 1024,
    batch: int = 16,
    seconds: float = 3.0,
) -> dict[str, float]:
    cases = build_cases(device, n_fft, batch, seconds)
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    pick = min if stat == "min" else statistics.median
    return {name: pick(times) for name, times in samples.items()}


RATIOS = [  # (label, numerator, denominator, target)
    (
        "window learning / torch.stft learnable window",
        "AdaSTFT learn window (FFT path)",
        "torch.stft + learnable window + mel",
        1.2,
    ),
    (
        "kernel learning / nnAudio trainable STFT",
        "AdaSTFT learn kernel (kernel path)",
        "nnAudio STFT trainable + mel",
        1.0,
    ),
    (
        "kernel learning / bare matmul",
        "AdaSTFT learn kernel (kernel path)",
        "bare matmul (B*T, N) x (N, 2F), fwd+bwd",
        1.15,
    ),
    (
        "window+kernel learning / bare matmul",
        "AdaSTFT learn window + kernel",
        "bare matmul (B*T, N) x (N, 2F), fwd+bwd",
        None,
    ),
    (
        "original conv2d style / AdaSTFT kernel learning",
        "original style: conv2d on real kernels + mel",
        "AdaSTFT learn kernel (kernel path)",
        None,
    ),
    (
        "power 1: window learning / torch.stft(...).abs()",
        "p1: AdaSTFT learn window (FFT path)",
        "p1: torch.stft(...).abs() + learnable window + mel",
        1.2,
    ),
    (
        "power 1: kernel learning / nnAudio Magnitude",
        "p1: AdaSTFT learn kernel (kernel path)",
        "p1: nnAudio STFT trainable Magnitude + mel",
        1.0,
    ),
]


def ratios(times: dict[str, float]) -> list[tuple[str, float | None, float | None]]:
    """``(label, value or None when a row is missing, target)`` for each ratio of ``RATIOS``."""
    return [
        (label, times[num] / times[den] if num in times and den in times else None, target)
        for label, num, den, target in RATIOS
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description="AdaSTFT speed vs references (forward+backward)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--n-fft", default="1024", help="comma-separated sizes, e.g. 1024,4096,8192")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="min: the fastest round of each, for a machine other work keeps busy",
    )
    args = parser.parse_args()
    try:
        sizes = [int(v) for v in args.n_fft.split(",")]
    except ValueError:
        parser.error(f"--n-fft {args.n_fft!r}: comma-separated integers, e.g. 1024,4096,8192")
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    summary: dict[int, list] = {}
    for n_fft in sizes:
        print(
            f"batch {args.batch} x {args.seconds:g} s at {SR} Hz, n_fft {n_fft}, hop {HOP}, {N_MELS} mels; {where}; "
            f"{args.stat} of {args.rounds} round-robin rounds; torch {torch.__version__}",
            flush=True,
        )
        times = run(device, args.rounds, args.warmup, args.stat, n_fft, args.batch, args.seconds)
        width = max(map(len, times)) + 2
        print(f"{'implementation':<{width}}{'ms':>9}")
        for name, t in times.items():
            print(f"{name:<{width}}{1000 * t:>9.2f}")
        print()
        summary[n_fft] = ratios(times)
        width = max(len(r[0]) for r in RATIOS) + 2
        print(f"{'ratio':<{width}}{'value':>7}  target")
        for label, value, target in summary[n_fft]:
            if value is None:
                print(f"{label:<{width}}{'n/a':>7}")
                continue
            verdict = "" if target is None else f"<= {target}  {'met' if value <= target else 'MISSED'}"
            print(f"{label:<{width}}{value:>7.3f}  {verdict}")
        print(flush=True)
    if len(sizes) > 1:
        width = max(len(r[0]) for r in RATIOS) + 2
        print(f"{'ratio (target)':<{width + 8}}" + "".join(f"{f'n_fft {n}':>12}" for n in sizes))
        for i, (label, _, _, target) in enumerate(RATIOS):
            cells = []
            for n in sizes:
                value = summary[n][i][1]
                mark = "" if value is None or target is None or value <= target else "!"
                cells.append(f"{'n/a' if value is None else f'{value:.3f}{mark}':>12}")
            print(f"{label:<{width}}{'' if target is None else f'(<={target})':<8}" + "".join(cells))
        print("(! marks a missed target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
