"""Window metrics are right for known windows; every plot helper draws a figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adastft import AdaSTFT
from adastft.demo import main as demo_main, run as demo_run
from adastft.functional import make_window, window_metrics
from adastft.plots import plot_confusion, plot_curves, plot_kernel_change, plot_layer, plot_pcen, plot_window


@pytest.mark.parametrize(
    "name,lobe,side",
    [("hann", 4.0, -31.5), ("hamming", 4.0, -42.7), ("rectangular", 2.0, -13.3), ("blackman", 6.0, -58.1)],
)
def test_window_metrics_match_textbook_values(name, lobe, side):
    m = window_metrics(make_window(name, 512))
    assert m["main_lobe_width_bins"] == pytest.approx(lobe, abs=0.05)
    assert m["highest_side_lobe_db"] == pytest.approx(side, abs=0.6)


def test_plot_helpers_draw(tmp_path):
    layer = AdaSTFT(n_fft=128, hop_length=32, n_mels=16)
    with torch.no_grad():
        layer.window.mul_(0.9)
        layer.kernel[0, 3, :10] += 0.1
    figures = {
        **plot_layer(layer),
        "window_only": plot_window(layer.window, layer.initial_window),
        "kernel_only": plot_kernel_change(layer.kernel, layer.initial_kernel),
        "confusion": plot_confusion(np.eye(3, dtype=int) * 4, ["a", "b", "c"]),
        "curves": plot_curves(
            [
                {
                    "epoch": e,
                    "train_loss": 1 / (e + 1),
                    "val_loss": 1.2 / (e + 1),
                    "val_clip_accuracy": 0.3 + 0.1 * e,
                    "val_segment_accuracy": 0.25 + 0.1 * e,
                }
                for e in range(3)
            ]
        ),
    }
    pcen = AdaSTFT(n_fft=128, hop_length=32, n_mels=16, compression="pcen")
    with torch.no_grad():
        pcen.pcen.alpha[3:] -= 0.2
    assert set(plot_layer(pcen)) == {"window", "kernel", "pcen"}
    figures["pcen"] = plot_pcen(pcen.pcen.values(), pcen.pcen.initial)
    for name, fig in figures.items():
        path = tmp_path / f"{name}.png"
        fig.savefig(path)
        assert path.stat().st_size > 5000, name


def test_demo_runs_and_moves_the_front_end(tmp_path):
    result = demo_run(["--out", str(tmp_path), "--steps", "5"])
    assert demo_main(["--out", str(tmp_path / "again"), "--steps", "1"]) == 0  # the exit status of adastft-demo
    assert result["window_change"] > 0 and result["kernel_change"] > 0
    assert (tmp_path / "window.png").is_file() and (tmp_path / "kernel.png").is_file()
