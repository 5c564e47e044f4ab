"""AdaSTFT in the torchaudio manner: reference equality, gradcheck, batching, gradients."""

from __future__ import annotations

import io

import pytest
import torch
import torchaudio

from adastft import AdaSTFT, AdaSTFTBank
from adastft import functional as AFN


def _signal(batch: int = 3, length: int = 8000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 16000
    tones = torch.sin(2 * torch.pi * 440 * t) + 0.3 * torch.sin(2 * torch.pi * 3000 * t)
    return tones + 0.1 * torch.randn(batch, length, generator=g)


def _assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """Elementwise within ``rtol`` of each value, with an absolute floor of ``rtol`` x the peak.

    The floor stops bins 10^8 below the peak (pure float32 rounding noise in both
    implementations) from deciding the test.
    """
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


def _force_kernel_path(layer: AdaSTFT) -> AdaSTFT:
    """The kernel learns, so the layer must take the kernel (convolution) path."""
    layer.set_learning(kernel=True)
    assert not layer.uses_fft()
    return layer


CASES = [
    dict(n_fft=400, n_mels=64),
    dict(n_fft=512, hop_length=128, n_mels=64),
    dict(n_fft=1024, hop_length=512, win_length=800, n_mels=96, window="hamming"),
    dict(n_fft=256, hop_length=100, center=False, n_mels=40, window="blackman"),
    dict(n_fft=512, hop_length=256, n_mels=80, mel_scale="slaney", norm="slaney", f_min=50.0, f_max=7000.0),
    dict(n_fft=400, hop_length=160, n_mels=64, power=1.0, pad_mode="constant", window="kaiser"),
]
_WINDOW_FNS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "blackman": torch.blackman_window,
    "kaiser": torch.kaiser_window,
}


@pytest.mark.parametrize("path", ["fft", "kernel"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_equals_torchaudio_melspectrogram_at_init(case, path):
    args = dict(case)
    window = args.pop("window", "hann")
    reference = torchaudio.transforms.MelSpectrogram(sample_rate=16000, window_fn=_WINDOW_FNS[window], **args)
    layer = AdaSTFT(sample_rate=16000, window=window, **args)
    if path == "kernel":
        _force_kernel_path(layer)
    else:
        assert layer.uses_fft()
    x = _signal()
    with torch.no_grad():
        _assert_rel_close(layer(x), reference(x))


@pytest.mark.parametrize("path", ["fft", "kernel"])
@pytest.mark.parametrize(
    "n_fft,hop,win,center", [(512, 128, 512, True), (256, 64, 200, False), (1024, 256, 1024, True)]
)
def test_linear_spectrogram_equals_torch_stft_magnitude(path, n_fft, hop, win, center):
    layer = AdaSTFT(n_fft=n_fft, hop_length=hop, win_length=win, n_mels=None, power=1.0, center=center)
    if path == "kernel":
        _force_kernel_path(layer)
    x = _signal()
    expected = torch.stft(x, n_fft, hop, win, torch.hann_window(win), center=center, return_complex=True).abs()
    with torch.no_grad():
        _assert_rel_close(layer(x), expected)


def test_db_compression_equals_amplitude_to_db():
    layer = AdaSTFT(sample_rate=16000, n_fft=512, hop_length=128, n_mels=64, compression="db")
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, hop_length=128, n_mels=64)
    x = _signal()
    expected = torchaudio.transforms.AmplitudeToDB("power")(mel(x))
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-3)


def test_log1p_compression_is_the_originals():
    raw = AdaSTFT(n_fft=512, hop_length=128, n_mels=64)
    logged = AdaSTFT(n_fft=512, hop_length=128, n_mels=64, compression="log1p", log_gain=10.0)
    x = _signal()
    torch.testing.assert_close(logged(x), torch.log10(1 + 10 * raw(x)))


@pytest.mark.parametrize("learn", [dict(window=True), dict(kernel=True), dict(window=True, kernel=True)])
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_gradcheck_float64(learn, power):
    layer = AdaSTFT(sample_rate=8000, n_fft=16, hop_length=4, win_length=12, n_mels=5, power=power).double()
    layer.set_learning(**learn)
    x = torch.randn(2, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    params = [p for p in (layer.window, layer.kernel) if p.requires_grad]

    def fn(*tensors):
        with torch.no_grad():
            for p, t in zip(params, tensors):
                p.copy_(t)
        # Functional call so gradcheck can perturb the parameters.
        named = {name: t for name, t in zip([n for n, p in layer.named_parameters() if p.requires_grad], tensors)}
        return torch.func.functional_call(layer, named, (x,))

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


def test_magnitude_gradient_is_finite_on_silence():
    layer = AdaSTFT(n_fft=64, hop_length=16, n_mels=8, power=1.0, compression="log1p").set_learning(True, True)
    x = torch.zeros(2, 400)
    x[0, 100:200] = torch.randn(100)
    layer(x).sum().backward()
    assert torch.isfinite(layer.window.grad).all() and torch.isfinite(layer.kernel.grad).all()


@pytest.mark.parametrize("learn_kernel", [False, True])
def test_batched_equals_per_item(learn_kernel):
    layer = AdaSTFT(n_fft=512, hop_length=128, n_mels=64, learn_kernel=learn_kernel)
    x = _signal(batch=4)
    with torch.no_grad():
        batched = layer(x)
        singles = torch.cat([layer(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-6 * float(batched.abs().max()))


def test_shapes():
    layer = AdaSTFT(n_fft=512, hop_length=128, n_mels=64)
    assert layer(torch.randn(4000)).shape == (1, 64, 32)
    assert layer(torch.randn(1, 4000)).shape == (1, 64, 32)
    assert layer(torch.randn(2, 3, 4000)).shape == (2, 3, 64, 32)
    assert AdaSTFT(n_fft=512, hop_length=128, n_mels=None)(torch.randn(2, 4000)).shape == (2, 257, 32)


@pytest.mark.parametrize("window,kernel", [(True, False), (False, True), (True, True), (False, False)])
def test_gradients_reach_learnable_and_only_learnable(window, kernel):
    layer = AdaSTFT(n_fft=256, hop_length=64, n_mels=32, compression="log1p", learn_window=window, learn_kernel=kernel)
    x = _signal(batch=2, length=2000).requires_grad_(not (window or kernel))
    layer(x).sum().backward()
    assert (layer.window.grad is not None) == window
    assert (layer.kernel.grad is not None) == kernel
    for p in (layer.window, layer.kernel):
        if p.grad is not None:
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_learning_toggles_mid_training_and_path_follows_the_kernel():
    layer = AdaSTFT(n_fft=256, hop_length=64, n_mels=32, compression="log1p")
    head = torch.nn.Linear(32, 2)
    opt = torch.optim.AdamW(layer.parameter_groups(lr=1e-2) + [{"params": head.parameters()}], lr=1e-2)
    x = _signal(batch=4, length=2000)
    y = torch.tensor([0, 1, 0, 1])

    def step():
        loss = torch.nn.functional.cross_entropy(head(layer(x).mean(-1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    assert layer.window_change() == 0.0 and layer.kernel_change() == 0.0 and layer.uses_fft()
    layer.set_learning(window=True)
    step()
    assert layer.window_change() > 0 and layer.kernel_change() == 0.0 and layer.uses_fft()
    layer.set_learning(window=False, kernel=True)
    frozen_window = layer.window.detach().clone()
    step()
    assert layer.kernel_change() > 0 and torch.equal(layer.window, frozen_window)
    # A learned kernel, frozen again, must still be used: the FFT would silently drop it.
    layer.set_learning(kernel=False)
    assert not layer.uses_fft()
    kernel_before = layer.kernel.detach().clone()
    step()
    assert torch.equal(layer.kernel, kernel_before)
    # Putting the exact DFT back (here by loading a fresh state) re-enables the FFT.
    layer.load_state_dict(AdaSTFT(n_fft=256, hop_length=64, n_mels=32).state_dict())
    assert layer.uses_fft()


def _learned_layer() -> AdaSTFT:
    layer = AdaSTFT(n_fft=256, hop_length=64, n_mels=32, compression="log1p", learn_window=True, learn_kernel=True)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = _signal(batch=2, length=2000)
    for _ in range(3):
        opt.zero_grad()
        layer(x).pow(2).mean().backward()
        opt.step()
    assert layer.window_change() > 1e-4 and layer.kernel_change() > 1e-4
    return layer


def test_export_then_load_reproduces_output_exactly(tmp_path):
    layer = _learned_layer()
    path = tmp_path / "learned.pt"
    torch.save(layer.export_learned(), path)
    learned = torch.load(path, weights_only=True)
    x = _signal(batch=2, length=2000)
    with torch.no_grad():
        expected = layer(x)
        fresh = AdaSTFT.from_learned(learned)
        assert torch.equal(fresh(x), expected)
        into = AdaSTFT(n_fft=256, hop_length=64, n_mels=32, compression="log1p").load_learned(learned)
        assert torch.equal(into(x), expected)
    assert fresh.window_change() == pytest.approx(layer.window_change())


def test_load_learned_rejects_wrong_shapes():
    learned = AdaSTFT(n_fft=256, hop_length=64, n_mels=32).export_learned()
    with pytest.raises(ValueError, match=r"learned\['window'\] has shape \(256,\), this layer needs \(512,\)"):
        AdaSTFT(n_fft=512, n_mels=32).load_learned(learned)


def _assert_state_dict_round_trip(layer: AdaSTFT, **kwargs) -> None:
    """The state dict through torch.save into a fresh layer built with ``kwargs`` gives the same output."""
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = AdaSTFT(**kwargs)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = _signal(batch=2, length=2000)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))


def test_state_dict_round_trip(tmp_path):
    layer = _learned_layer()
    _assert_state_dict_round_trip(layer, n_fft=256, hop_length=64, n_mels=32, compression="log1p")
    assert set(layer.state_dict()) == {"window", "kernel", "mel_fb"}


@pytest.mark.slow
@pytest.mark.parametrize("learn_kernel", [False, True])
def test_torch_compile_matches_eager(learn_kernel):
    layer = AdaSTFT(
        n_fft=256, hop_length=64, n_mels=32, compression="log1p", learn_window=True, learn_kernel=learn_kernel
    )
    compiled = torch.compile(layer)
    x = _signal(batch=2, length=2000)
    out = compiled(x)
    torch.testing.assert_close(out, layer(x), rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert layer.window.grad is not None


def test_bank_has_independent_front_ends():
    bank = AdaSTFTBank(3, n_fft=256, hop_length=64, n_mels=32, learn_window=True, learn_kernel=True)
    x = _signal(batch=2, length=2000)
    out = bank(x)
    assert out.shape == (2, 3, 32, 32)
    assert len({id(layer.window) for layer in bank.layers}) == 3
    out[:, 1].sum().backward()
    untouched = [bank[0].window.grad, bank[0].kernel.grad, bank[2].window.grad, bank[2].kernel.grad]
    assert all(g is None or not g.any() for g in untouched)
    assert bank[1].window.grad.abs().sum() > 0 and bank[1].kernel.grad.abs().sum() > 0
    assert bank(torch.randn(2, 3, 2000)).shape == (2, 3, 32, 32)
    assert len(bank.parameter_groups()[0]["params"]) == 6
    with pytest.raises(ValueError, match="input has 2 channels, this bank has 3 front ends"):
        bank(torch.randn(2, 2, 2000))


def test_parameter_groups_exempt_from_weight_decay():
    layer = AdaSTFT(n_fft=256, n_mels=32)
    (group,) = layer.parameter_groups(lr=1e-4)
    assert group["weight_decay"] == 0.0 and group["lr"] == 1e-4
    assert {id(p) for p in group["params"]} == {id(layer.window), id(layer.kernel)}


def test_mel_filterbank_is_a_buffer_built_once(monkeypatch):
    layer = AdaSTFT(n_fft=512, n_mels=64)
    calls = []
    monkeypatch.setattr(torchaudio.functional, "melscale_fbanks", lambda *a, **k: calls.append(a))
    layer(_signal(batch=1))
    layer.set_learning(kernel=True)
    layer(_signal(batch=1))
    assert calls == [] and "mel_fb" in dict(layer.named_buffers())


BAD = [
    (dict(n_fft=1), "n_fft must be an integer >= 2, got 1"),
    (dict(n_fft=512, hop_length=0), "hop_length must be an integer >= 1, got 0"),
    (dict(n_fft=512, win_length=600), r"win_length must be an integer in \[1, n_fft=512\], got 600"),
    (dict(sample_rate=16000, f_max=9000.0), "f_max must be <= sample_rate / 2 = 8000, got 9000.0"),
    (
        dict(n_fft=64, n_mels=128),
        "n_mels=128 leaves .* empty mel filters with n_fft=64 .*use fewer mels or a larger n_fft",
    ),
    (dict(window="gauss"), "window must be one of hann, hamming, blackman, bartlett, kaiser, rectangular, got 'gauss'"),
    (dict(compression="log"), "compression must be one of none, log1p, db, pcen, got 'log'"),
    (dict(mel_scale="bark"), "mel_scale must be 'htk' or 'slaney', got 'bark'"),
    (dict(norm="l2"), "norm must be None or 'slaney', got 'l2'"),
    (dict(power=0), "power must be a positive number, got 0"),
    (dict(pad_mode="wrap"), "pad_mode must be one of reflect, constant, replicate, circular, got 'wrap'"),
    (dict(f_min=9000.0, f_max=8000.0), "f_min must be below f_max=8000, got 9000.0"),
    (dict(pcen_smoothing=1.0), r"pcen_smoothing must be in \(0, 1\), got 1.0"),
    (dict(pcen_alpha=-0.1), r"pcen_alpha must be in \[0, 1\], got -0.1"),
    (dict(pcen_delta=0), "pcen_delta must be positive, got 0"),
    (dict(pcen_root=0.5), "pcen_root must be >= 1, got 0.5"),
    (dict(pcen_floor=float("nan")), "pcen_floor must be positive, got nan"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m.split(" ")[0] for _, m in BAD])
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaSTFT(**kwargs)
    with pytest.raises(ValueError, match=message):  # the config check's cheap path agrees
        AdaSTFT.check_arguments(**kwargs)


def test_check_arguments_resolves_like_the_constructor_and_config_comes_from_the_signature():
    import inspect

    from adastft.layer import ARGUMENTS, SWITCHES

    args = AdaSTFT.check_arguments(sample_rate=16000, n_fft=512, n_mels=64)  # no kernel is built
    assert (args["win_length"], args["hop_length"], args["f_max"]) == (512, 256, 8000.0)
    assert tuple(args) == ARGUMENTS == tuple(inspect.signature(AdaSTFT).parameters)
    layer = AdaSTFT(sample_rate=16000, n_fft=512, n_mels=64, window="hamming")
    assert layer.config() == {**{k: v for k, v in args.items() if k not in SWITCHES}, "window": "hamming"}
    with pytest.raises(TypeError, match="nfft"):  # an unknown name, as in the constructor
        AdaSTFT.check_arguments(nfft=512)
    with pytest.raises(ValueError, match=r"window must be one of .*, got 'han' \(did you mean 'hann'\?\)"):
        AdaSTFT.check_arguments(window="han")


def test_classifier_checks_its_arguments_without_building_the_backbone(monkeypatch):
    import torchvision

    from adastft.model import AdaSTFTClassifier

    monkeypatch.setattr(torchvision.models, "resnet152", lambda *a, **k: pytest.fail("resnet152 was built"))
    good = dict(n_frontends=1, backbone="resnet152", activation=None, norm="batch", dropout=0.2)
    AdaSTFTClassifier.check_arguments(**good)
    for bad, message in [
        (dict(n_frontends=2), "n_frontends must be one of 1, 3, got 2"),
        (dict(backbone="resnet15"), r"backbone must be one of resnet18, .*, got 'resnet15' \(did you"),
        (dict(activation="relu"), "activation must be one of None, leaky_relu, got 'relu'"),
        (dict(norm="layer"), "norm must be one of batch, instance, none, got 'layer'"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
        (dict(num_classes=1), "num_classes must be >= 2, got 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            AdaSTFTClassifier.check_arguments(**{**good, **bad})
    with pytest.raises(ValueError, match="n_frontends must be one of 1, 3, got 2"):  # the constructor agrees
        AdaSTFTClassifier(AdaSTFTBank(2, n_fft=256, n_mels=32), num_classes=10)


@pytest.mark.parametrize(
    "x,message",
    [
        (
            torch.zeros(2, 2, 2, 400),
            r"input must be \(time\), \(batch, time\) or \(batch, channels, time\), got shape \(2, 2, 2, 400\)",
        ),
        (torch.zeros(2, 400, dtype=torch.int16), "input must be a real floating-point tensor, got torch.int16"),
        (torch.zeros(2, 400, dtype=torch.complex64), "input must be a real floating-point tensor, got torch.complex64"),
        ([0.0] * 400, "input must be a real floating-point tensor, got list"),
        (torch.zeros(2, 100), "input has 100 samples; n_fft=400 with center=True needs at least 201"),
    ],
)
def test_bad_input_raises_value_error(x, message):
    with pytest.raises(ValueError, match=message):
        AdaSTFT(n_fft=400, n_mels=32)(x)


# ---- PCEN compression -----------------------------------------------------------------------


def _pcen_reference(x: torch.Tensor, s, alpha, delta, root, floor: float) -> torch.Tensor:
    """PCEN written out from the paper, the EMA as a loop over frames (LEAF's first state: frame 0)."""
    out = torch.empty_like(x)
    for band in range(x.shape[-2]):
        m = x[..., band, 0]
        for t in range(x.shape[-1]):
            m = (1 - s[band]) * m + s[band] * x[..., band, t]
            e, d, r = x[..., band, t], delta[band], root[band]
            out[..., band, t] = (e / (floor + m) ** alpha[band] + d) ** (1 / r) - d ** (1 / r)
    return out


def _pcen_values(bands: int, dtype=torch.float64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = [torch.rand(bands, generator=g, dtype=dtype) for _ in range(4)]
    return {"smoothing": 0.01 + 0.5 * u[0], "alpha": u[1], "delta": 0.1 + 3 * u[2], "root": 1 + 3 * u[3]}


def _set_pcen(layer: AdaSTFT, values: dict[str, torch.Tensor]) -> AdaSTFT:
    """Store in-range values into the layer's PCEN (through its parametrisation)."""
    with torch.no_grad():
        layer.pcen.smoothing_logit.copy_(torch.logit(values["smoothing"]))
        layer.pcen.alpha.copy_(values["alpha"])
        layer.pcen.log_delta.copy_(values["delta"].log())
        layer.pcen.root.copy_(values["root"])
    return layer


def test_pcen_equals_the_loop_reference_in_float64():
    from adastft.functional import pcen

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 6, 50, generator=g, dtype=torch.float64) ** 4 * 100  # energies over decades
    x[0, :, :10] = 0.0  # silence first: the average starts at zero
    values = _pcen_values(6)
    expected = _pcen_reference(x, *values.values(), floor=1e-12)
    torch.testing.assert_close(pcen(x, **values, floor=1e-12), expected, rtol=1e-12, atol=1e-12)
    # the layer: PCEN of its own linear (n_mels=None) or mel spectrogram, with its values
    for n_mels in (None, 5):
        plain = AdaSTFT(sample_rate=8000, n_fft=16, hop_length=4, n_mels=n_mels).double()
        layer = AdaSTFT(sample_rate=8000, n_fft=16, hop_length=4, n_mels=n_mels, compression="pcen").double()
        _set_pcen(layer, _pcen_values(n_mels or 9))
        signal = torch.randn(2, 200, dtype=torch.float64, generator=g)
        with torch.no_grad():
            expected = _pcen_reference(plain(signal), *layer.pcen.values().values(), floor=1e-12)
            torch.testing.assert_close(layer(signal), expected, rtol=1e-12, atol=1e-12)


def test_pcen_starts_at_leafs_values_and_keeps_its_parameters_in_range():
    layer = AdaSTFT(n_fft=256, n_mels=32, compression="pcen")
    values = layer.pcen.values()
    assert set(values) == {"smoothing", "alpha", "delta", "root"} and all(v.shape == (32,) for v in values.values())
    for name, init in (("smoothing", 0.04), ("alpha", 0.96), ("delta", 2.0), ("root", 2.0)):
        torch.testing.assert_close(values[name], torch.full((32,), init))
    with torch.no_grad():  # any stored value is a valid PCEN
        for p in layer.pcen.parameters():
            p.copy_(torch.linspace(-50, 50, 32))
    values = layer.pcen.values()
    assert (values["smoothing"] >= 0).all() and (values["smoothing"] <= 1).all()
    assert (values["alpha"] >= 0).all() and (values["alpha"] <= 1).all()
    assert (values["delta"] > 0).all() and (values["root"] >= 1).all()
    assert AdaSTFT(n_fft=256, n_mels=None, compression="pcen").pcen.values()["alpha"].shape == (129,)
    assert AdaSTFT(n_fft=256, n_mels=32).pcen is None
    from adastft.pcen import PCEN

    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 2"):  # the module checks them too
        PCEN(4, alpha=2)
    with pytest.raises(ValueError, match="n_bands must be a positive integer, got 0"):
        PCEN(0)


@pytest.mark.parametrize("learn", [dict(compression=True), dict(window=True, compression=True)])
def test_pcen_gradcheck_float64(learn):
    layer = AdaSTFT(sample_rate=8000, n_fft=16, hop_length=4, win_length=12, n_mels=5, compression="pcen").double()
    _set_pcen(layer, _pcen_values(5, seed=2)).set_learning(**learn)
    x = torch.randn(1, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert {"pcen.smoothing_logit", "pcen.alpha", "pcen.log_delta", "pcen.root"} <= set(names)

    def fn(*tensors):
        return torch.func.functional_call(layer, dict(zip(names, tensors)), (x,))

    inputs = tuple(p.detach().clone().requires_grad_(True) for n, p in layer.named_parameters() if p.requires_grad)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("signal", ["silence", "partly silent"])
def test_pcen_gradients_are_finite_on_silence(signal):
    layer = AdaSTFT(n_fft=64, hop_length=16, n_mels=8, compression="pcen").set_learning(True, True, True)
    x = torch.zeros(2, 400)
    if signal == "partly silent":
        x[0, 100:200] = torch.randn(100)
    out = layer(x)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("learn_compression", [False, True])
def test_gradients_reach_pcen_only_when_it_learns(learn_compression):
    layer = AdaSTFT(
        n_fft=256, hop_length=64, n_mels=32, compression="pcen", learn_window=True, learn_compression=learn_compression
    )
    assert layer.learn_compression == learn_compression
    layer(_signal(batch=2, length=2000)).sum().backward()
    for p in layer.pcen.parameters():
        assert (p.grad is not None) == learn_compression
        if p.grad is not None:
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    layer.set_learning(compression=False)  # switched off mid-training: gradients cleared, as for the window
    assert not layer.learn_compression and all(p.grad is None for p in layer.pcen.parameters())
    assert layer.window.requires_grad


def test_pcen_parameters_are_in_every_front_end_group_and_switch():
    from adastft.model import AdaSTFTClassifier

    layer = AdaSTFT(n_fft=256, n_mels=32, compression="pcen")
    (group,) = layer.parameter_groups(lr=1e-4)
    assert group["weight_decay"] == 0.0
    assert {id(p) for p in group["params"]} == {id(p) for p in layer.parameters()}
    bank = AdaSTFTBank(3, n_fft=256, hop_length=64, n_mels=32, compression="pcen")
    bank.set_learning(compression=True)
    assert all(layer.learn_compression and not layer.learn_window for layer in bank.layers)
    assert len(bank.parameter_groups()[0]["params"]) == 3 * 6
    model = AdaSTFTClassifier(bank, num_classes=2)
    model.set_frontend_learning(compression=False)
    assert not any(layer.learn_compression for layer in bank.layers)
    rest, front, scalars = model.parameter_groups(lr=1e-3, weight_decay=0.1, frontend_lr=1e-4)
    assert {id(p) for p in front["params"]} | {id(p) for p in scalars["params"]} == {id(p) for p in bank.parameters()}
    assert {id(p) for p in scalars["params"]} == {id(p) for layer in bank.layers for p in layer.pcen.parameters()}
    # the window and kernel at the front end's rate; PCEN's per-band parameters at the back end's
    assert (front["lr"], scalars["lr"], front["weight_decay"], scalars["weight_decay"]) == (1e-4, 1e-3, 0.0, 0.0)
    assert not {id(p) for p in rest["params"]} & {id(p) for p in bank.parameters()}
    # nothing to learn in the other compressions: the switch changes nothing there
    assert not AdaSTFT(n_fft=256, n_mels=32, learn_compression=True).learn_compression


def _learned_pcen_layer() -> AdaSTFT:
    layer = AdaSTFT(
        n_fft=256,
        hop_length=64,
        n_mels=32,
        compression="pcen",
        pcen_alpha=0.9,
        learn_window=True,
        learn_kernel=True,
        learn_compression=True,
    )
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = _signal(batch=2, length=2000)
    for _ in range(3):
        opt.zero_grad()
        layer(x).pow(2).mean().backward()
        opt.step()
    assert all(not torch.equal(v, torch.full_like(v, layer.pcen.initial[k])) for k, v in layer.pcen.values().items())
    return layer


def test_pcen_export_then_load_reproduces_output_exactly(tmp_path):
    layer = _learned_pcen_layer()
    path = tmp_path / "learned.pt"
    torch.save(layer.export_learned(), path)
    learned = torch.load(path, weights_only=True)
    assert set(learned["pcen"]) == {"smoothing_logit", "alpha", "log_delta", "root"}
    assert learned["config"]["compression"] == "pcen" and learned["config"]["pcen_alpha"] == 0.9
    x = _signal(batch=2, length=2000)
    with torch.no_grad():
        expected = layer(x)
        assert torch.equal(AdaSTFT.from_learned(learned)(x), expected)
        into = AdaSTFT(n_fft=256, hop_length=64, n_mels=32, compression="pcen").load_learned(learned)
        assert torch.equal(into(x), expected)
    assert "pcen" not in AdaSTFT(n_fft=256, n_mels=32).export_learned()
    with pytest.raises(ValueError, match="learned has PCEN parameters, this layer's compression is 'log1p'"):
        AdaSTFT(n_fft=256, hop_length=64, n_mels=32, compression="log1p").load_learned(learned)
    with pytest.raises(ValueError, match="learned has no PCEN parameters, this layer's compression is 'pcen'"):
        into.load_learned(AdaSTFT(n_fft=256, hop_length=64, n_mels=32).export_learned())
    shapes = r"learned\['pcen'\]\['smoothing_logit'\] has shape \(32,\), this layer needs \(16,\)"
    with pytest.raises(ValueError, match=shapes):
        AdaSTFT(n_fft=256, hop_length=64, n_mels=16, compression="pcen").load_learned(learned)


def test_pcen_state_dict_round_trip():
    layer = _learned_pcen_layer()
    _assert_state_dict_round_trip(layer, n_fft=256, hop_length=64, n_mels=32, compression="pcen")
    assert set(layer.state_dict()) == {
        "window",
        "kernel",
        "mel_fb",
        "pcen.smoothing_logit",
        "pcen.alpha",
        "pcen.log_delta",
        "pcen.root",
    }


def test_small_cnn_back_end_is_a_choice_of_the_classifier_and_the_memory_check():
    from adastft.builders import build_model
    from adastft.config import Config
    from adastft.memory import model_bytes
    from adastft.model import CNN4

    cfg = Config.from_dict({"model": {"backbone": "cnn4"}})
    model = build_model(cfg, num_classes=5)
    assert isinstance(model.backbone, CNN4)
    assert model(_signal(batch=2, length=22050)).shape == (2, 5)
    params = sum(p.numel() for p in model.backbone.parameters())
    assert params < 500_000  # resnet18: 11 M
    assert model_bytes(cfg, 5) < model_bytes(Config(), 5)


@pytest.mark.parametrize("chunk", [None, 1])
@pytest.mark.parametrize("learn", ["taps", "window", "both"])
@pytest.mark.parametrize("hop", [7, 24])  # 24 = the width: frames that do not overlap, copies that may be views
def test_kernel_path_gradients_equal_the_convolutions(monkeypatch, chunk, learn, hop):
    # The strided filters' own backward (a product of gradient and frames, a few clips at a time,
    # with the window folded into the frames when only the taps learn) gives the gradients
    # autograd of the plain convolution gives, for the signal, the taps and the window, and
    # leaves the signal as it was.
    if chunk is not None:  # one clip's frames per chunk: the accumulation over chunks is exercised
        monkeypatch.setattr(AFN, "FRAME_CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(3)
    width, length = 24, 24 * 12
    signal = torch.randn(3, length, dtype=torch.float64, generator=gen, requires_grad=True)
    taps = torch.randn(10, width, dtype=torch.float64, generator=gen, requires_grad=learn != "window")
    window = torch.rand(width, dtype=torch.float64, generator=gen, requires_grad=learn != "taps")
    grad = torch.randn(3, 10, 1 + (length - width) // hop, dtype=torch.float64, generator=gen)
    before = signal.detach().clone()
    AFN._StridedFilters.apply(signal, taps, window, hop).backward(grad)
    ours = [t.grad for t in (signal, taps, window)]
    signal.grad = taps.grad = window.grad = None
    torch.testing.assert_close(signal.detach(), before, rtol=0, atol=0)
    torch.nn.functional.conv1d(signal[:, None], (taps * window)[:, None], stride=hop).backward(grad)
    for got, want in zip(ours, (signal.grad, taps.grad, window.grad)):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want)
    inputs = (
        signal.detach()[:, :60].requires_grad_(),
        taps.detach().requires_grad_(learn != "window"),
        window.detach().requires_grad_(learn != "taps"),
    )
    assert torch.autograd.gradcheck(lambda s, k, w: AFN._StridedFilters.apply(s, k, w, hop), inputs)
