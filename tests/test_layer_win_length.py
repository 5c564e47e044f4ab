"""AdaSTFT with a learnable window length (``learn_win_length=True``): torchaudio at initialisation,
gradcheck through the length, finite gradients on silence, bounds, export and the config key."""

from __future__ import annotations

import pytest
import torch
import torchaudio

from adastft import AdaSTFT
from adastft import functional as AFN
from adastft.config import Config, ConfigError

_WINDOW_FNS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "blackman": torch.blackman_window,
    "bartlett": torch.bartlett_window,
    "kaiser": torch.kaiser_window,
}


def _signal(batch: int = 3, length: int = 8000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 16000
    return torch.sin(2 * torch.pi * 440 * t) + 0.1 * torch.randn(batch, length, generator=g)


@pytest.mark.parametrize("name", AFN.TAPERED_WINDOWS)
@pytest.mark.parametrize("n_fft,win", [(512, 512), (512, 300), (512, 301)])
def test_taper_at_an_integer_length_is_the_named_window(name, n_fft, win):
    placed = torch.zeros(n_fft)
    left = (n_fft - win) // 2  # where torch.stft puts a short window
    placed[left : left + win] = AFN.make_window(name, win)
    taper = AFN.tapered_window(name, torch.tensor(float(win)), n_fft, ((n_fft - win) / 2) % 1)
    torch.testing.assert_close(taper, placed, rtol=0, atol=2e-6)


@pytest.mark.parametrize("path", ["fft", "kernel"])
@pytest.mark.parametrize("window,win", [("hann", None), ("hann", 300), ("hamming", 401), ("kaiser", 512)])
def test_equals_torchaudio_at_init(path, window, win):
    reference = torchaudio.transforms.MelSpectrogram(
        16000, n_fft=512, win_length=win, hop_length=128, n_mels=64, window_fn=_WINDOW_FNS[window]
    )
    layer = AdaSTFT(16000, n_fft=512, win_length=win, hop_length=128, n_mels=64, window=window, learn_win_length=True)
    if path == "kernel":
        layer.set_learning(kernel=True)
    assert layer.uses_fft() == (path == "fft")
    x = _signal()
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert layer.window_change() < 1e-6


@pytest.mark.parametrize("learn", [dict(win_length=True), dict(window=True, kernel=True, win_length=True)])
def test_gradcheck_float64_through_the_length(learn):
    layer = AdaSTFT(
        8000, n_fft=32, hop_length=8, win_length=21, n_mels=5, power=1.0, learn_win_length=True, compression="log1p"
    ).double()
    layer.set_learning(window=False, kernel=False, win_length=False).set_learning(**learn)
    with torch.no_grad():  # off the integer length, so no sample sits exactly on the window's edge
        layer.log_win_scale.fill_(float(torch.log(torch.tensor(18.3 / 21, dtype=torch.float64))))
    x = torch.randn(2, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert "log_win_scale" in names

    def fn(*tensors):
        return torch.func.functional_call(layer, dict(zip(names, tensors)), (x,))

    inputs = tuple(dict(layer.named_parameters())[n].detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("window", ["hann", "kaiser", "bartlett"])
def test_gradients_are_finite_on_silence(window):
    layer = AdaSTFT(
        n_fft=64,
        hop_length=16,
        n_mels=8,
        power=1.0,
        compression="log1p",
        window=window,
        learn_win_length=True,
        learn_window=True,
        learn_kernel=True,
    )
    x = torch.zeros(2, 400)
    x[0, 100:200] = torch.randn(100)
    layer(x).sum().backward()
    for p in layer.learnable():
        assert torch.isfinite(p.grad).all()
    assert float(layer.log_win_scale.grad) != 0.0


def test_length_learns_only_when_switched_on_and_only_in_a_layer_built_for_it():
    layer = AdaSTFT(n_fft=256, hop_length=64, n_mels=32, win_length=200, learn_win_length=True)
    assert layer.learning_win_length and not layer.learn_window and not layer.learn_kernel
    layer.set_learning(win_length=False)
    assert not layer(_signal(length=2000)).requires_grad
    layer.set_learning(win_length=True)
    layer(_signal(length=2000)).sum().backward()
    assert layer.log_win_scale.grad is not None and layer.window.grad is None
    plain = AdaSTFT(n_fft=256, hop_length=64, n_mels=32)
    assert plain.log_win_scale is None and set(plain.state_dict()) == {"window", "kernel", "mel_fb"}
    plain.set_learning(win_length=False)  # nothing to switch off: fine
    with pytest.raises(ValueError, match="win_length learning needs a layer built with learn_win_length=True"):
        plain.set_learning(win_length=True)


def test_length_stays_in_its_bounds_and_comes_back_from_them():
    layer = AdaSTFT(n_fft=256, hop_length=64, n_mels=32, learn_win_length=True)  # starts at n_fft, its upper bound
    low, high = layer.win_length_bounds
    assert (low, high) == (16.0, 256.0)
    opt = torch.optim.SGD([layer.log_win_scale], lr=1.0)
    for sign in (-1.0, 1.0):  # -1: the loss wants a longer window (blocked at the bound); +1: a shorter one
        opt.zero_grad()
        (sign * layer.current_win_length()).backward()
        blocked = float(layer.log_win_scale.grad) == 0.0
        assert blocked == (sign < 0)
        opt.step()
    assert low <= float(layer.current_win_length()) < high
    with torch.no_grad():
        layer.log_win_scale.fill_(-5.0)  # far below: clamped to the lower bound
    assert float(layer.current_win_length()) == low


def test_export_and_state_dict_carry_the_length(tmp_path):
    layer = AdaSTFT(
        n_fft=256,
        hop_length=64,
        n_mels=32,
        win_length=180,
        compression="log1p",
        learn_win_length=True,
        learn_window=True,
        learn_kernel=True,
    )
    opt = torch.optim.Adam(layer.learnable(), lr=1e-2)
    x = _signal(batch=2, length=2000)
    for _ in range(3):
        opt.zero_grad()
        layer(x).pow(2).mean().backward()
        opt.step()
    assert abs(float(layer.current_win_length()) - 180) > 0.01 and layer.window_change() > 1e-4
    path = tmp_path / "learned.pt"
    torch.save(layer.export_learned(), path)
    learned = torch.load(path, weights_only=True)
    assert learned["config"]["learn_win_length"] is True and learned["effective_window"].shape == (256,)
    with torch.no_grad():
        assert torch.equal(AdaSTFT.from_learned(learned)(x), layer(x))
    fresh = AdaSTFT(n_fft=256, hop_length=64, n_mels=32, win_length=180, compression="log1p", learn_win_length=True)
    fresh.load_state_dict(layer.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))
    with pytest.raises(ValueError, match="learned has no 'win_length'"):
        AdaSTFT(n_fft=256, hop_length=64, n_mels=32, learn_win_length=True).load_learned(
            AdaSTFT(n_fft=256, hop_length=64, n_mels=32).export_learned() | {"window": torch.ones(256)}
        )


def test_rectangular_window_cannot_learn_its_length():
    message = r"learn_win_length needs a tapered window \(hann, hamming, blackman, bartlett, kaiser\), got window='rectangular'"
    with pytest.raises(ValueError, match=message):
        AdaSTFT(window="rectangular", learn_win_length=True)
    with pytest.raises(
        ConfigError, match=r"stft.learn_win_length needs a tapered window .*, got stft.window='rectangular'"
    ):
        Config.from_dict({"stft": {"window": "rectangular", "learn_win_length": True}})


def test_config_key_builds_a_layer_with_a_learnable_length():
    from adastft.builders import build_model

    cfg = Config.from_dict({"stft": {"learn_win_length": True, "win_length": 800}})
    model = build_model(cfg, num_classes=3)
    front = model.frontends()[0]
    assert front.log_win_scale is not None and float(front.current_win_length()) == pytest.approx(800, abs=1e-3)
    groups = model.parameter_groups(1e-3, 0.01, frontend_lr=1e-4)
    (scalars,) = [g for g in groups if any(front.log_win_scale is p for p in g["params"])]
    assert scalars["lr"] == 1e-3 and len(scalars["params"]) == 1  # the length learns at the back end's rate
    assert cfg.stft.lr == 1e-4 and groups[1]["lr"] == 1e-4 and groups[1]["params"] == [front.window, front.kernel]
