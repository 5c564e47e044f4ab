"""Crops, parts, voting and augmentation, on real cached files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from adastft.data import (
    Augment,
    DataSpec,
    EvalParts,
    Mixup,
    SpecAugment,
    TrainCrops,
    eval_loader,
    prepare,
    spaced_parts,
    spec_augment,
    train_loader,
    vote,
    vote_accuracy,
)
from data_helpers import RATE

CLIP = 400  # samples: 0.05 s at 8 kHz


@pytest.fixture(scope="module")
def ramp_store(tmp_path_factory):
    """Clips whose sample k holds (k + 1000 * clip) / 4096 exactly, so a crop tells where it came from."""
    base = tmp_path_factory.mktemp("ramp")
    for c, name in enumerate(["x", "y"]):
        (base / "d" / name).mkdir(parents=True)
        for i in range(5):
            ramp = (np.arange(CLIP) + 1000 * (5 * c + i)) / 4096
            sf.write(base / "d" / name / f"{i}.wav", ramp.astype(np.float32) / 4, RATE, subtype="FLOAT")
    return prepare(
        DataSpec(
            source="folder",
            root=str(base / "d"),
            cache_dir=str(base / "c"),
            sample_rate=RATE,
            clip_seconds=CLIP / RATE,
            val_fraction=0.2,
            test_fraction=0.2,
            seed=0,
        )
    )


def _positions(x: torch.Tensor) -> np.ndarray:
    return np.round(x.numpy() * 4 * 4096).astype(np.int64) % 1000


def test_train_crops_always_lie_inside_the_clip(ramp_store):
    ds = TrainCrops(ramp_store, split="train", parts=4, seed=0)
    assert len(ds) == 6 and ds.crop_samples == 100
    starts = []
    for _ in range(300):
        for k in range(len(ds)):
            crop, label = ds[k]
            assert crop.shape == (100,) and crop.dtype == torch.float32
            pos = _positions(crop)
            assert np.array_equal(pos, pos[0] + np.arange(100))  # contiguous, in order
            assert 0 <= pos[0] <= CLIP - 100
            assert label == ramp_store.labels[ds.indices[k]]
            starts.append(pos[0])
    assert min(starts) == 0 and max(starts) == CLIP - 100  # both ends reachable
    assert len(set(starts)) > 250  # a new crop on every access


def test_train_crops_repeat_with_the_seed(ramp_store):
    a, b = TrainCrops(ramp_store, parts=4, seed=7), TrainCrops(ramp_store, parts=4, seed=7)
    c = TrainCrops(ramp_store, parts=4, seed=8)
    first = [a[k][0] for k in range(6)]
    assert all(torch.equal(x, b[k][0]) for k, x in enumerate(first))
    assert not all(torch.equal(x, c[k][0]) for k, x in enumerate(first))


def test_eval_parts_are_the_clip_in_equal_segments(ramp_store):
    ds = EvalParts(ramp_store, split="test", parts=3)
    parts, label = ds[1]
    clip = ramp_store.audio(ds.indices[1])
    assert parts.shape == (3, 133) and label == ramp_store.labels[ds.indices[1]]
    assert torch.equal(parts.flatten(), torch.tensor(clip[:399]))  # remainder of 1 sample left out
    assert torch.equal(ds[1][0], parts)


def test_crops_per_clip_draws_that_many_crops_of_every_clip(ramp_store):
    ds = TrainCrops(ramp_store, split="train", parts=4, seed=0, crops_per_clip=3)
    assert len(ds) == 18
    for k in range(18):
        crop, label = ds[k]
        i = int(ds.indices[k // 3])
        start = int(_positions(crop)[0])
        assert torch.equal(crop, torch.tensor(ramp_store.audio(i)[start : start + 100]))  # from clip k // 3
        assert label == ramp_store.labels[i]
    starts = {int(_positions(ds[k][0])[0]) for k in range(3)}
    assert len(starts) == 3  # three different crops of the first clip
    with pytest.raises(
        ValueError,
        match=r"crops_per_clip must be an integer >= 1 \(random crops of each clip per "
        r"epoch; 1 is the original's recipe\), got 0",
    ):
        TrainCrops(ramp_store, parts=4, crops_per_clip=0)


def test_eval_parts_picks_evenly_spaced_segments(ramp_store):
    assert spaced_parts(6, 3) == [1, 3, 5] and spaced_parts(6, 1) == [3] and spaced_parts(12, 4) == [1, 4, 7, 10]
    assert spaced_parts(6, None) == spaced_parts(6, 6) == spaced_parts(6, 9) == list(range(6))
    every = EvalParts(ramp_store, split="test", parts=4)
    some = EvalParts(ramp_store, split="test", parts=4, eval_parts=2)
    assert some.segments == 2 and every.segments == 4
    segments, label = some[1]
    assert segments.shape == (2, 100) and label == every[1][1]
    assert torch.equal(segments, every[1][0][[1, 3]])
    with pytest.raises(
        ValueError,
        match=r"eval_parts must be None \(vote over every part\) or an integer >= 1 "
        r"\(that many evenly spaced parts\), got 0",
    ):
        EvalParts(ramp_store, split="test", parts=4, eval_parts=0)


def test_loaders_batch_and_shuffle(ramp_store):
    loader = train_loader(ramp_store, batch_size=4, parts=4, seed=0)
    x, y = next(iter(loader))
    assert x.shape == (4, 100) and y.dtype == torch.int64 and len(loader) == 1
    ev = eval_loader(ramp_store, "val", batch_size=2, parts=4)
    x, y = next(iter(ev))
    assert x.shape == (2, 4, 100)
    assert y.tolist() == ramp_store.labels[ramp_store.indices("val")].tolist()


@pytest.mark.slow
def test_train_loader_with_two_workers(ramp_store):
    torch.manual_seed(0)
    loader = train_loader(ramp_store, batch_size=3, parts=4, seed=0, num_workers=2)
    epochs = [[x.clone() for x, _ in loader] for _ in range(2)]
    assert all(x.shape == (3, 100) for epoch in epochs for x in epoch)
    for x in epochs[0]:
        for row in x:
            pos = _positions(row)
            assert np.array_equal(pos, pos[0] + np.arange(100)) and pos[0] <= CLIP - 100
    assert not torch.equal(torch.cat(epochs[0]), torch.cat(epochs[1]))


def test_dataset_arguments_are_checked(ramp_store):
    with pytest.raises(ValueError, match="parts must be a positive integer, got 0"):
        TrainCrops(ramp_store, parts=0)
    with pytest.raises(ValueError, match="parts=500 leaves no samples per part"):
        EvalParts(ramp_store, split="val", parts=500)
    with pytest.raises(ValueError, match="split must be one of train, val, test, got 'valid'"):
        EvalParts(ramp_store, split="valid")
    with pytest.raises(ValueError, match="store must be a ClipStore"):
        TrainCrops("path.arrow")


# Hand-made logits: 3 clips x 3 parts x 3 classes.
_LOGITS = torch.log(
    torch.tensor(
        [
            [[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1]],  # majority 0
            [[0.1, 0.5, 0.4], [0.1, 0.4, 0.5], [0.9, 0.05, 0.05]],  # 1-1-1 tie; mean prob picks 0
            [[0.4, 0.35, 0.25], [0.4, 0.3, 0.3], [0.0, 1.0, 0.0]],  # majority 0, mean prob 1
        ]
    ).clamp_min(1e-6)
)


def test_vote_majority_with_mean_probability_tie_break():
    assert vote(_LOGITS).tolist() == [0, 0, 0]
    assert vote(_LOGITS, method="mean").tolist() == [0, 0, 1]
    tie = torch.log(
        torch.tensor([[[0.6, 0.4, 0.0], [0.0, 0.9, 0.1], [0.6, 0.4, 0.0], [0.1, 0.9, 0.0]]]).clamp_min(1e-6)
    )
    assert vote(tie).tolist() == [1]  # 2 votes each for 0 and 1; 1 has the higher mean probability


def test_vote_accuracy_reports_clip_and_segment_level():
    acc = vote_accuracy(_LOGITS, torch.tensor([0, 0, 1]))
    assert acc["clip_accuracy"] == pytest.approx(2 / 3)
    assert acc["segment_accuracy"] == pytest.approx(4 / 9)  # 2 + 1 + 1 of 9 segments right
    assert vote_accuracy(_LOGITS, torch.tensor([0, 0, 1]), method="mean")["clip_accuracy"] == 1.0


def test_vote_checks_its_input():
    with pytest.raises(ValueError, match="method must be one of majority, mean, got 'max'"):
        vote(_LOGITS, method="max")
    with pytest.raises(ValueError, match=r"logits must be a float tensor \(clips, parts, classes\), got \(3, 3\)"):
        vote(_LOGITS[0])


_WAVE = 0.01 + torch.sin(torch.arange(2000) / 7.0).repeat(8, 1) * torch.linspace(0.1, 1, 8)[:, None]  # (8, 2000)


def test_augment_changes_train_batches_only():
    aug = Augment(noise_snr_db=(10, 30), gain_db=(-6, 6), max_delay_s=0.01, sample_rate=RATE)
    torch.manual_seed(0)
    out = aug(_WAVE)
    assert out.shape == _WAVE.shape and not torch.equal(out, _WAVE)
    assert not torch.allclose(out[0] / _WAVE[0].abs().max(), out[1] / _WAVE[1].abs().max())  # per-example
    aug.eval()
    assert aug(_WAVE) is _WAVE


def test_augment_on_real_batches_train_vs_eval(ramp_store):
    aug = Augment(noise_snr_db=(20, 20), gain_db=(-3, 3), max_delay_s=0.001, sample_rate=RATE)
    x, _ = next(iter(train_loader(ramp_store, batch_size=4, parts=4, seed=0)))
    assert not torch.equal(aug.train()(x), x)
    parts, _ = next(iter(eval_loader(ramp_store, "val", batch_size=2, parts=4)))
    flat = parts.flatten(0, 1)  # (clips * parts, crop)
    assert torch.equal(aug.eval()(flat), flat)


def test_augment_gain_delay_and_noise_are_exact():
    torch.manual_seed(1)
    gain = Augment(gain_db=(6.0, 6.0))(_WAVE)
    torch.testing.assert_close(gain, _WAVE * 10 ** (6 / 20))
    delayed = Augment(max_delay_s=50 / RATE, sample_rate=RATE)(_WAVE)
    shifts = set()
    for row, src in zip(delayed, _WAVE):
        d = next(s for s in range(51) if torch.equal(row[s:], src[: 2000 - s]) and not row[:s].any())
        shifts.add(d)
    assert len(shifts) > 1 and max(shifts) <= 50
    noisy = Augment(noise_snr_db=(20.0, 20.0))(_WAVE)
    snr = 10 * torch.log10(_WAVE.pow(2).mean(1) / (noisy - _WAVE).pow(2).mean(1))
    torch.testing.assert_close(snr, torch.full((8,), 20.0), atol=0.5, rtol=0)


def test_augment_checks_arguments():
    with pytest.raises(
        ValueError, match=r"noise_snr_db must be None or \(low, high\) with low <= high, got \(30, 10\)"
    ):
        Augment(noise_snr_db=(30, 10))
    with pytest.raises(ValueError, match="max_delay_s must be None or >= 0 seconds, got -1"):
        Augment(max_delay_s=-1)
    with pytest.raises(ValueError, match=r"Augment needs a float \(batch, time\) tensor"):
        Augment(gain_db=(0, 1))(torch.zeros(2, 3, 100))


_LABELS = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])


def test_mixup_mixes_each_example_with_its_pair_by_its_own_lambda():
    torch.manual_seed(0)
    x, target, lam, perm = Mixup(alpha=0.4)(_WAVE, _LABELS, num_classes=5)
    assert x.shape == _WAVE.shape and target.shape == (8, 5) and lam.shape == perm.shape == (8,)
    assert sorted(perm.tolist()) == list(range(8))  # a permutation of the batch
    assert ((lam >= 0) & (lam <= 1)).all() and len(set(lam.tolist())) == 8  # one lambda per example
    torch.testing.assert_close(x, lam[:, None] * _WAVE + (1 - lam[:, None]) * _WAVE[perm])
    onehot = torch.nn.functional.one_hot(_LABELS, 5).float()
    torch.testing.assert_close(target, lam[:, None] * onehot + (1 - lam[:, None]) * onehot[perm])
    torch.testing.assert_close(target.sum(dim=1), torch.ones(8))
    assert (target[:, 4] == 0).all()  # no class that neither example of a pair has


def test_mixup_repeats_with_the_seed_and_is_the_identity_in_eval():
    mixup = Mixup(alpha=1.0)
    torch.manual_seed(3)
    first = mixup(_WAVE, _LABELS, 4)
    torch.manual_seed(3)
    for a, b in zip(first, mixup(_WAVE, _LABELS, 4)):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], _WAVE)
    x, target, lam, perm = mixup.eval()(_WAVE, _LABELS, 4)
    assert x is _WAVE and torch.equal(target, torch.nn.functional.one_hot(_LABELS, 4).float())
    assert (lam == 1).all() and torch.equal(perm, torch.arange(8))


def test_mixup_with_p_leaves_the_others_unmixed():
    torch.manual_seed(0)
    x, target, lam, _ = Mixup(alpha=0.4, p=0.5)(_WAVE, _LABELS, 4)
    kept = lam == 1
    assert 0 < kept.sum() < 8
    assert torch.equal(x[kept], _WAVE[kept]) and (target[kept].max(dim=1).values == 1).all()


def test_mixup_checks_arguments():
    for alpha in (0, -1, float("inf"), True, None):
        with pytest.raises(ValueError, match=f"^alpha must be > 0, got {alpha!r}$"):
            Mixup(alpha=alpha)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 2"):
        Mixup(alpha=0.2, p=2)
    with pytest.raises(ValueError, match=r"Mixup needs integer labels of shape \(8,\)"):
        Mixup(alpha=0.2)(_WAVE, _LABELS[:4], 4)


def test_spec_augment_masks_bands_shared_by_channels():
    spec = torch.ones(16, 3, 40, 50)  # (B, C, F, T)
    torch.manual_seed(0)
    out = spec_augment(spec, freq_mask_param=8, time_mask_param=10)
    assert out.shape == spec.shape
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    masked_rows = (out[:, 0] == 0).all(dim=2).sum(dim=1)  # (B,) fully masked frequency rows
    masked_cols = (out[:, 0] == 0).all(dim=1).sum(dim=1)  # (B,) fully masked frames
    assert masked_rows.max() <= 8 and masked_cols.max() <= 10
    assert len(set(masked_rows.tolist())) > 1  # widths drawn per example
    # Everything not in a full row or column band is untouched.
    rows = (out[:, 0] == 0).all(dim=2)[:, :, None]
    cols = (out[:, 0] == 0).all(dim=1)[:, None, :]
    assert torch.equal(out[:, 0] == 0, rows | cols)


def test_spec_augment_module_is_train_only():
    spec = torch.rand(4, 20, 30)
    module = SpecAugment(freq_mask_param=5, time_mask_param=5, n_freq_masks=2)
    torch.manual_seed(0)
    assert not torch.equal(module(spec), spec)
    assert module.eval()(spec) is spec
    with pytest.raises(ValueError, match="time_mask_param must be an integer >= 0, got -2"):
        SpecAugment(time_mask_param=-2)
