"""Sources and splits: both GTZAN layouts, the standard split sizes, folders, split lists, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf

from adastft.data import BadAudioWarning, DataError, DataSpec, prepare
from adastft.data.sources import standard_gtzan_split, stratified_split
from data_helpers import RATE, SECONDS, write_folder, write_gtzan


def _gtzan_spec(root, cache, **overrides) -> DataSpec:
    args = dict(source="gtzan", root=str(root), cache_dir=str(cache), sample_rate=RATE, clip_seconds=SECONDS)
    args.update(overrides)
    return DataSpec(**args)


@pytest.fixture(scope="module")
def kaggle_root(tmp_path_factory):
    """Kaggle layout, all 1000 clips, with jazz.00054.wav broken as in the real download."""
    root = write_gtzan(tmp_path_factory.mktemp("kaggle"), "kaggle")
    (root / "Data" / "genres_original" / "jazz" / "jazz.00054.wav").write_bytes(b"RIFF" + b"\x00" * 100)
    return root


@pytest.fixture(scope="module")
def original_root(tmp_path_factory):
    return write_gtzan(tmp_path_factory.mktemp("original"), "original")


def test_standard_split_lists_have_the_published_sizes():
    split = standard_gtzan_split()
    counts = {s: list(split.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 443, "val": 197, "test": 290}


def test_original_layout_gives_the_standard_split(original_root, tmp_path):
    store = prepare(_gtzan_spec(original_root, tmp_path))
    assert len(store) == 1000
    assert store.classes[0] == "blues" and len(store.classes) == 10
    sizes = {s: len(store.indices(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 443, "val": 197, "test": 290}
    assert store.names[store.indices("train")[0]] == "blues/blues.00029.au"
    assert store.audio(0).shape == (store.clip_samples,) == (400,)


def test_original_layout_accepts_the_parent_folder(original_root, tmp_path):
    store = prepare(_gtzan_spec(original_root.parent, tmp_path))
    assert len(store) == 1000


def test_kaggle_layout_skips_the_broken_jazz_file_with_one_warning(kaggle_root, tmp_path):
    with pytest.warns(BadAudioWarning, match=r"skipped 1 unusable files: jazz/jazz\.00054\.wav") as record:
        store = prepare(_gtzan_spec(kaggle_root, tmp_path))
    assert len([w for w in record if issubclass(w.category, BadAudioWarning)]) == 1
    assert len(store) == 999
    sizes = {s: len(store.indices(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 929  # jazz.00054 is in a list; the other 70 clips are in none
    assert store.labels[store.names.index("jazz/jazz.00053.wav")] == store.classes.index("jazz")


def test_kaggle_layout_with_on_bad_error_names_the_file(kaggle_root, tmp_path):
    with pytest.raises(DataError, match=r"jazz\.00054\.wav.*on_bad='skip'"):
        prepare(_gtzan_spec(kaggle_root, tmp_path, on_bad="error"))


def test_gtzan_random_split_is_stratified_and_seeded(original_root, tmp_path):
    a = prepare(_gtzan_spec(original_root, tmp_path, split="random", seed=1))
    b = prepare(_gtzan_spec(original_root, tmp_path, split="random", seed=1))
    c = prepare(_gtzan_spec(original_root, tmp_path, split="random", seed=2))
    assert np.array_equal(a.indices("test"), b.indices("test"))
    assert not np.array_equal(a.indices("test"), c.indices("test"))
    assert np.bincount(a.labels[a.indices("test")]).tolist() == [20] * 10
    assert len(a.indices("train")) == 600


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p / "missing", r"does not exist.*kaggle"),
        (lambda p: p, r"has no folders blues.*holds nothing.*genres_original"),
        (lambda p: (p / "rock").mkdir() or p, r"has no folders blues.*\['rock'\]"),
    ],
    ids=["missing", "empty", "not-gtzan"],
)
def test_bad_gtzan_root_says_what_is_expected_and_where_to_get_it(tmp_path, make, match):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataError, match=match):
        prepare(_gtzan_spec(make(root), tmp_path / "cache"))


def test_gtzan_genre_folders_without_audio(tmp_path):
    root = write_gtzan(tmp_path / "g", "original", per_genre=0)
    with pytest.raises(DataError, match="no <genre>.000NN.wav|au files"):
        prepare(_gtzan_spec(root, tmp_path / "cache"))


def test_folder_source_with_random_split(tmp_path):
    root = write_folder(tmp_path / "data", {"cat": 10, "dog": 10, "owl": 5})
    store = prepare(
        DataSpec(
            source="folder",
            root=str(root),
            cache_dir=str(tmp_path / "c"),
            sample_rate=RATE,
            clip_seconds=SECONDS,
            val_fraction=0.2,
            test_fraction=0.2,
            seed=3,
        )
    )
    assert store.classes == ["cat", "dog", "owl"]
    assert np.bincount(store.labels).tolist() == [10, 10, 5]
    assert np.bincount(store.labels[store.indices("test")]).tolist() == [2, 2, 1]
    assert sorted(store.names)[0] == "cat/cat_0.wav"


def test_folder_source_with_split_files(tmp_path):
    root = write_folder(tmp_path / "data", {"a": 3, "b": 3})
    listing = tmp_path / "test.txt"
    listing.write_text("# held out\na/a_2.wav\nb/b_2\n")
    spec = DataSpec(
        source="folder",
        root=str(root),
        cache_dir=str(tmp_path / "c"),
        sample_rate=RATE,
        clip_seconds=SECONDS,
        split_files={"train": ["a/a_0", "b/b_0", "a_1"], "test": str(listing)},
    )
    store = prepare(spec)
    assert sorted(store.names[i] for i in store.indices("test")) == ["a/a_2.wav", "b/b_2.wav"]
    assert sorted(store.names[i] for i in store.indices("train")) == ["a/a_0.wav", "a/a_1.wav", "b/b_0.wav"]
    assert len(store.indices("val")) == 0  # b_1 is in no list


def test_folder_handles_stereo_other_rates_and_flac(tmp_path):
    root = tmp_path / "data"
    (root / "x").mkdir(parents=True)
    t = np.arange(16000) / 16000
    stereo = np.stack([np.sin(2 * np.pi * 100 * t), np.zeros_like(t)], axis=1).astype(np.float32)
    sf.write(root / "x" / "stereo16k.flac", stereo, 16000)
    sf.write(root / "x" / "mono8k.ogg", stereo[::2, 0], 8000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BadAudioWarning)
        store = prepare(
            DataSpec(
                source="folder",
                root=str(root),
                cache_dir=str(tmp_path / "c"),
                sample_rate=RATE,
                clip_seconds=1.0,
                split="random",
                test_fraction=0.0,
                val_fraction=0.0,
            )
        )
    i = store.names.index("x/stereo16k.flac")
    audio = store.audio(i)
    assert audio.shape == (RATE,)
    # downmixed (half amplitude) and resampled to 8 kHz: 100 Hz has 80 samples per period
    np.testing.assert_allclose(
        audio[1000:1400], 0.5 * np.sin(2 * np.pi * 100 * np.arange(1000, 1400) / RATE), atol=2e-3
    )


def test_empty_folder_root(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no class folders with audio files; expected root/<class>/<file>"):
        prepare(DataSpec(source="folder", root=str(tmp_path / "empty"), cache_dir=str(tmp_path / "c")))


def test_stratified_split_counts():
    split = stratified_split([0] * 10 + [1] * 5, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert [split[:10].count(s) for s in ("train", "val", "test")] == [6, 2, 2]
    assert split == stratified_split([0] * 10 + [1] * 5, 0.2, 0.2, 0)


@pytest.mark.parametrize(
    "args, match",
    [
        (dict(source="kaggle"), "source must be one of synthetic, gtzan, folder, got 'kaggle'"),
        (dict(source="gtzan"), "root is required for source='gtzan'"),
        (dict(root="/x"), "root is not used by source='synthetic'"),
        (dict(sample_rate=22050.0), "sample_rate must be an integer >= 1000, got 22050.0"),
        (dict(clip_seconds=0), "clip_seconds must be positive, got 0"),
        (dict(split="artist"), "split must be one of standard, random, got 'artist'"),
        (dict(source="gtzn"), r"source must be one of synthetic, gtzan, folder, got 'gtzn' \(did you mean 'gtzan'\?\)"),
        (dict(val_fraction=0.6, test_fraction=0.5), "val_fraction \\+ test_fraction must be below 1, got 1.1"),
        (dict(on_bad="ignore"), "on_bad must be one of skip, error, got 'ignore'"),
        (dict(split_files={"training": []}), "split_files must be a dict with keys among train, val, test"),
        (dict(synthetic_clips_per_class=0), "synthetic_clips_per_class must be a positive integer, got 0"),
    ],
)
def test_spec_validation_names_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        DataSpec(**args)


def test_spec_defaults():
    assert DataSpec().clip_seconds == 4.0 and DataSpec(source="gtzan", root="/x").clip_seconds == 30.0
    assert DataSpec(source="folder", root="/x", sample_rate=16000).clip_samples == 480000


def _folder_spec(root, cache, **overrides) -> DataSpec:
    return DataSpec(
        source="folder", root=str(root), cache_dir=str(cache), sample_rate=RATE, clip_seconds=SECONDS, **overrides
    )


def test_silent_clips_are_named_and_refused_where_they_are_most_of_a_class(tmp_path):
    """Clips below -60 dBFS teach nothing: a warning names them; most of a class silent is an error."""
    root = write_folder(tmp_path / "music", {"a": 4, "b": 4})
    sf.write(root / "a" / "a_0.wav", np.zeros(int(RATE * SECONDS), np.float32), RATE)  # digital silence
    sf.write(root / "b" / "b_1.wav", np.full(int(RATE * SECONDS), 1e-4, np.float32), RATE)  # -80 dBFS, -81 in 16 bits
    with pytest.warns(
        BadAudioWarning,
        match=r"2 clips are silent or nearly \(RMS below -60 dBFS\) and teach "
        r"nothing: a/a_0\.wav \(-200 dBFS\); b/b_1\.wav \(-8\d dBFS\)",
    ):
        store = prepare(_folder_spec(root, tmp_path / "cache"))
    assert len(store) == 8 and store.rms_db[store.names.index("a/a_1.wav")] > -10  # a tone at 0.5: about -9 dBFS
    with pytest.raises(DataError, match=r"2 clips are silent .* use on_bad='skip'"):
        prepare(_folder_spec(root, tmp_path / "cache", on_bad="error"))
    for i in (1, 2):
        sf.write(root / "a" / f"a_{i}.wav", np.zeros(int(RATE * SECONDS), np.float32), RATE)
    with pytest.raises(
        DataError,
        match=r"^3 of 4 clips of class 'a' are silent or nearly \(RMS below -60 dBFS\): "
        r"a/a_0\.wav \(-200 dBFS\); a/a_1\.wav .*the class cannot be learned",
    ):
        prepare(_folder_spec(root, tmp_path / "cache"))


def test_split_list_names_that_match_no_clip_are_listed(tmp_path):
    root = write_folder(tmp_path / "music", {"a": 3, "b": 3})
    lists = {"train": ["a/a_0", "b/b_0", "a/a_1", "b/b_1", "a/a_9"], "val": ["a/a_2", "b/b_2"]}
    with pytest.warns(BadAudioWarning, match=r"1 names in split_files match no clip under .*: 'a/a_9'; check them"):
        store = prepare(_folder_spec(root, tmp_path / "cache", split_files=lists))
    assert len(store.indices("train")) == 4 and len(store.indices("val")) == 2
    typo = dict(lists, test=["a_2.wave", "b/b_2x"])  # mistyped: a list was given, none of it matches
    with pytest.raises(
        DataError,
        match=r"^no name in split_files\['test'\] matches a clip under .* \(2 given, 0 of "
        r"them skipped as unusable\): 'a_2\.wave', 'b/b_2x'; names are paths relative",
    ):
        prepare(_folder_spec(root, tmp_path / "cache", split_files=typo))
