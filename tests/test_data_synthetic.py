"""The synthetic set: deterministic, quick, and learnable but not trivially."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torchaudio

from adastft.data import SYNTHETIC_CLASSES, DataSpec, prepare
from adastft.data.synthetic import generate_clip


def test_clips_are_deterministic_in_their_arguments():
    a = generate_clip(3, 7, seed=0, sample_rate=8000, clip_samples=8000)
    assert a.dtype == np.float32 and a.shape == (8000,) and np.isfinite(a).all()
    assert np.array_equal(a, generate_clip(3, 7, seed=0, sample_rate=8000, clip_samples=8000))
    assert not np.array_equal(a, generate_clip(3, 8, seed=0, sample_rate=8000, clip_samples=8000))
    assert not np.array_equal(a, generate_clip(3, 7, seed=1, sample_rate=8000, clip_samples=8000))


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_clips_at_other_rates(rate):
    x = generate_clip(9, 0, seed=0, sample_rate=rate, clip_samples=rate)
    rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert np.isfinite(x).all() and 0.03 < rms < 0.3


def test_bad_label():
    with pytest.raises(ValueError, match="label must be in \\[0, 10\\), got 10"):
        generate_clip(10, 0, seed=0, sample_rate=8000, clip_samples=100)


@pytest.fixture(scope="module")
def default_store(tmp_path_factory):
    start = time.perf_counter()
    store = prepare(DataSpec(source="synthetic", cache_dir=str(tmp_path_factory.mktemp("cache"))))
    return store, time.perf_counter() - start


@pytest.mark.slow
def test_default_synthetic_set_is_quick_to_make(default_store):
    store, seconds = default_store
    assert store.classes == SYNTHETIC_CLASSES and len(store.classes) == 10
    assert (len(store), store.sample_rate, store.clip_samples) == (200, 22050, 88200)
    assert [len(store.indices(s)) for s in ("train", "val", "test")] == [120, 40, 40]
    assert seconds < 30  # about 3 s on 2 CPU cores


@pytest.mark.slow
def test_learnable_but_not_trivial(default_store):
    """A logistic regression on clip-mean log-mel features: far above chance, far from perfect."""
    store, _ = default_store
    mel = torchaudio.transforms.MelSpectrogram(store.sample_rate, n_fft=1024, hop_length=512, n_mels=64)

    def features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        idx = store.indices(split)
        x = torch.stack([torch.tensor(store.audio(i)) for i in idx])  # (N, S)
        return torch.log(mel(x) + 1e-6).mean(dim=-1), torch.from_numpy(store.labels[idx])  # (N, 64)

    (xtr, ytr), (xte, yte) = features("train"), features("test")
    mu, sd = xtr.mean(0), xtr.std(0)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    w = torch.zeros(64, 10, requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + 1e-2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    accuracy = float(((xte @ w + b).argmax(1) == yte).float().mean())
    assert 0.25 < accuracy < 0.9, accuracy  # chance is 0.1; measured 0.40 (train 0.82) with seed 0
