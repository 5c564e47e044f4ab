"""Pictures of what an AdaSTFT learned: window in time and frequency, kernel change, PCEN per band.

Every function returns a matplotlib ``Figure`` (Agg backend, no display needed); save it with
``fig.savefig(path)``. Inputs are tensors or a layer, so exported learned tensors plot the same.
"""

from __future__ import annotations

from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from adastft.functional import window_metrics, window_response  # noqa: E402


def plot_window(learned: torch.Tensor, initial: torch.Tensor, title: str = "window") -> Figure:
    """Learned vs initial window: samples (left) and magnitude response in dB (right).

    The legend of the response gives each window's main-lobe width (bins) and highest side lobe.
    Example: ``plot_window(layer.window, layer.initial_window).savefig("window.png")``.
    """
    learned = learned.detach().cpu().double()
    initial = initial.detach().cpu().double()
    fig, (ax_t, ax_f) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax_t.plot(initial.numpy(), label="initial", color="0.5", linestyle="--")
    ax_t.plot(learned.numpy(), label="learned", color="C0")
    ax_t.set_xlabel("sample")
    ax_t.set_ylabel("amplitude")
    ax_t.set_title(f"{title}: time")
    ax_t.legend()
    for w, name, style in (
        (initial, "initial", dict(color="0.5", linestyle="--")),
        (learned, "learned", dict(color="C0")),
    ):
        freqs, db = window_response(w)
        m = window_metrics(w)
        label = f"{name}: main lobe {m['main_lobe_width_bins']:.2f} bins, side lobe {m['highest_side_lobe_db']:.1f} dB"
        ax_f.plot(freqs.numpy(), db.numpy(), label=label, **style)
    ax_f.set_xlim(-20, 20)
    ax_f.set_ylim(-120, 5)
    ax_f.set_xlabel("frequency (bins of the window length)")
    ax_f.set_ylabel("dB (peak = 0)")
    ax_f.set_title(f"{title}: frequency response")
    ax_f.legend(fontsize=8, loc="lower center")
    fig.tight_layout()
    return fig


def plot_kernel_change(learned: torch.Tensor, initial: torch.Tensor, title: str = "kernel change") -> Figure:
    """Heat maps of ``learned - initial`` for the cos and sin parts, ``(2, F, N)`` tensors.

    Colours are symmetric around zero; the title carries the relative L2 change.
    """
    diff = learned.detach().cpu().double() - initial.detach().cpu().double()
    rel = float(diff.norm() / initial.detach().cpu().double().norm())
    bound = float(diff.abs().max()) or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, part, name in zip(axes, diff, ("cos part", "sin part")):
        image = ax.imshow(part.numpy(), aspect="auto", origin="lower", cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.set_title(name)
        ax.set_xlabel("sample n")
    axes[0].set_ylabel("frequency bin f")
    fig.colorbar(image, ax=list(axes), label="learned - initial")
    fig.suptitle(f"{title} (relative L2 change {rel:.3g})")
    return fig


def plot_pcen(
    learned: Mapping[str, torch.Tensor], initial: Mapping[str, float] | None = None, title: str = "PCEN"
) -> Figure:
    """PCEN's parameters per band, one panel each: ``learned`` as ``PCEN.values()`` gives them
    (``{"smoothing", "alpha", "delta", "root"}``, each ``(bands,)``), ``initial`` as dashed lines.

    Example: ``plot_pcen(layer.pcen.values(), layer.pcen.initial).savefig("pcen.png")``.
    """
    fig, axes = plt.subplots(1, len(learned), figsize=(3.2 * len(learned), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], learned.items()):
        ax.plot(values.detach().cpu().double().numpy(), color="C0", label="learned")
        if initial is not None and name in initial:
            ax.axhline(initial[name], color="0.5", linestyle="--", label="initial")
        ax.set_title(name)
        ax.set_xlabel("band")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_layer(layer, prefix: str = "") -> dict[str, Figure]:
    """The plots for an :class:`~adastft.AdaSTFT`: ``{"window": fig, "kernel": fig}``, and ``"pcen"``
    with PCEN compression."""
    figures = {
        "window": plot_window(layer.effective_window().detach(), layer.initial_window, title=f"{prefix}window"),
        "kernel": plot_kernel_change(layer.kernel, layer.initial_kernel, title=f"{prefix}kernel change"),
    }
    if layer.pcen is not None:
        figures["pcen"] = plot_pcen(layer.pcen.values(), layer.pcen.initial, title=f"{prefix}PCEN")
    return figures


def plot_confusion(matrix, classes, title: str = "confusion matrix") -> Figure:
    """A confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    import numpy as np

    matrix = np.asarray(matrix)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(
                    j,
                    i,
                    int(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if matrix[i, j] > peak / 2 else "black",
                )
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"{title}: accuracy {accuracy:.3f}")
    fig.tight_layout()
    return fig


def plot_curves(history: list[dict]) -> Figure:
    """Learning curves from per-epoch metric dicts: losses (log scale) and accuracies."""
    epochs = [int(h["epoch"]) + 1 for h in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, label in (("train_loss", "train loss"), ("val_loss", "validation loss")):
        ax_l.plot(epochs, [h[key] for h in history], marker="o", label=label)
    ax_l.set_yscale("log")
    ax_l.set_xlabel("epoch")
    ax_l.legend()
    for key, label in (
        ("val_clip_accuracy", "validation clip accuracy (vote)"),
        ("val_segment_accuracy", "validation segment accuracy"),
    ):
        ax_a.plot(epochs, [h[key] for h in history], marker="o", label=label)
    ax_a.set_ylim(0, 1)
    ax_a.set_xlabel("epoch")
    ax_a.legend()
    fig.tight_layout()
    return fig
