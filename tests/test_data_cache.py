"""The Arrow cache: reuse, invalidation, damaged files, concurrent builds, zero-copy, bad audio."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from adastft.data import BadAudioWarning, CacheError, ClipStore, DataError, DataSpec, prepare
from data_helpers import RATE, SECONDS, tone, write_bad_files, write_folder

REPO = Path(__file__).resolve().parents[1]


def _spec(root: Path, cache: Path, **overrides) -> DataSpec:
    args = dict(source="folder", root=str(root), cache_dir=str(cache), sample_rate=RATE, clip_seconds=SECONDS)
    args.update(overrides)
    return DataSpec(**args)


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns


def test_matching_cache_is_reused(tmp_path):
    root = write_folder(tmp_path / "d", {"a": 4, "b": 4})
    first = prepare(_spec(root, tmp_path / "c"))
    before = _identity(first.path)
    second = prepare(_spec(root, tmp_path / "c", seed=5, split="random"))  # splits are not cached
    assert second.path == first.path and _identity(second.path) == before
    assert np.array_equal(second.audio(3), first.audio(3))
    assert [p.name for p in (tmp_path / "c").iterdir() if p.suffix == ".arrow"] == [Path(first.path).name]


def test_changed_added_or_removed_file_rebuilds(tmp_path):
    root = write_folder(tmp_path / "d", {"a": 4, "b": 4})
    store = prepare(_spec(root, tmp_path / "c"))
    before = _identity(store.path)
    sf.write(root / "a" / "a_0.wav", np.zeros(int(SECONDS * RATE), np.float32), RATE)  # new content
    changed = prepare(_spec(root, tmp_path / "c"))
    assert changed.path == store.path and _identity(changed.path) != before
    assert not changed.audio(changed.names.index("a/a_0.wav")).any()
    sf.write(root / "b" / "b_new.wav", tone(), RATE)
    assert len(prepare(_spec(root, tmp_path / "c"))) == 9
    (root / "a" / "a_1.wav").unlink()
    assert len(prepare(_spec(root, tmp_path / "c"))) == 8
    assert len(store) == 8 and store.audio(0).shape == (400,)  # the old map still reads


def test_decoding_parameters_are_part_of_the_cache(tmp_path):
    root = write_folder(tmp_path / "d", {"a": 2, "b": 2})
    a = prepare(_spec(root, tmp_path / "c"))
    b = prepare(_spec(root, tmp_path / "c", sample_rate=16000))
    with pytest.warns(BadAudioWarning, match=r"padded 4 short files"):
        c = prepare(_spec(root, tmp_path / "c", clip_seconds=0.1))
    assert len({a.path, b.path, c.path}) == 3
    assert (b.sample_rate, b.clip_samples, c.clip_samples) == (16000, 800, 800)


@pytest.mark.parametrize("damage", ["truncate", "footer", "garbage", "empty"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path, damage):
    root = write_folder(tmp_path / "d", {"a": 3, "b": 3})
    good = prepare(_spec(root, tmp_path / "c"))
    expected = np.array(good.audio(4))
    path = Path(good.path)
    data = path.read_bytes()
    damaged = {
        "truncate": data[: len(data) // 2],
        "footer": data[:-40] + b"\xff" * 40,
        "garbage": os.urandom(len(data)),
        "empty": b"",
    }[damage]
    path.write_bytes(damaged)
    with pytest.raises(CacheError, match="delete it"):
        ClipStore(path)
    rebuilt = prepare(_spec(root, tmp_path / "c"))
    assert len(rebuilt) == 6 and np.array_equal(rebuilt.audio(4), expected)


def test_files_left_by_an_interrupted_build_are_removed(tmp_path):
    root = write_folder(tmp_path / "d", {"a": 2})
    store = prepare(_spec(root, tmp_path / "c"))
    name = Path(store.path).name
    leftovers = [tmp_path / "c" / f".{name}.999.deadbeef.tmp", tmp_path / "c" / f".{name}.999.deadbeef.tmp.spill"]
    for f in leftovers:
        f.write_bytes(b"half a cache")
    sf.write(root / "a" / "a_9.wav", tone(), RATE)  # forces a rebuild, which holds the lock
    assert len(prepare(_spec(root, tmp_path / "c"))) == 3
    assert not any(f.exists() for f in leftovers)


def test_store_key_mismatch_is_an_error(tmp_path):
    store = prepare(_spec(write_folder(tmp_path / "d", {"a": 2}), tmp_path / "c"))
    with pytest.raises(CacheError, match="expected 000000000000; call prepare"):
        ClipStore(store.path, key="0" * 64)


def test_audio_is_a_read_only_zero_copy_view(tmp_path):
    store = prepare(_spec(write_folder(tmp_path / "d", {"a": 3}), tmp_path / "c"))
    clip = store.audio(1)
    assert clip.dtype == np.float32 and clip.shape == (store.clip_samples,)
    assert not clip.flags.writeable and not clip.flags.owndata
    assert np.shares_memory(clip, store._views[0])  # a row of the batch view over the map
    np.testing.assert_allclose(clip, tone(hz=300, seed=1), atol=1e-4)  # a_1.wav, PCM_16
    with pytest.raises(IndexError, match="clip index 3 out of range for 3 clips"):
        store.audio(3)


def test_store_pickles_by_path(tmp_path):
    store = prepare(_spec(write_folder(tmp_path / "d", {"a": 3, "b": 3}), tmp_path / "c"))
    blob = pickle.dumps(store)
    assert len(blob) < 2000  # the path and splits, not the audio
    copy = pickle.loads(blob)
    assert np.array_equal(copy.indices("train"), store.indices("train"))
    assert np.array_equal(copy.audio(5), store.audio(5))


def test_bad_files_are_skipped_with_one_warning_listing_all(tmp_path):
    root = write_folder(tmp_path / "d", {"good": 3})
    kinds = write_bad_files(root / "bad")
    sf.write(root / "good" / "short.wav", tone(seconds=0.01), RATE)  # 10 ms of a 50 ms clip
    with pytest.warns(BadAudioWarning) as record:
        store = prepare(_spec(root, tmp_path / "c"))
    messages = [str(w.message) for w in record if issubclass(w.category, BadAudioWarning)]
    assert len(messages) == 2
    skipped = next(m for m in messages if m.startswith("skipped"))
    assert skipped.startswith(f"skipped {len(kinds)} unusable files")
    for name in kinds:
        assert f"bad/{name}" in skipped
    assert "no audio frames" in skipped
    padded = next(m for m in messages if m.startswith("padded"))
    assert "good/short.wav (0.01 s padded to 0.05 s)" in padded
    # The class list comes from the folders, so labels do not shift when files fail to decode.
    assert store.classes == ["bad", "good"] and len(store) == 4 and set(store.labels.tolist()) == {1}
    short = store.audio(store.names.index("good/short.wav"))
    assert short[:80].any() and not short[80:].any()
    # A reuse reports the same files again (from the cache's metadata), still in one warning.
    with pytest.warns(BadAudioWarning) as again:
        prepare(_spec(root, tmp_path / "c"))
    assert [str(w.message) for w in again] == messages
    with pytest.raises(DataError, match=r"built with on_bad='skip' and left out or padded 6 files"):
        prepare(_spec(root, tmp_path / "c", on_bad="error"))


def test_file_truncated_inside_its_data_is_decoded_and_padded(tmp_path):
    root = write_folder(tmp_path / "d", {"a": 2}, seconds=0.1)
    whole = (root / "a" / "a_0.wav").read_bytes()
    (root / "a" / "a_0.wav").write_bytes(whole[: 44 + 2 * 200])  # header + 200 of 800 PCM_16 frames
    with pytest.warns(
        BadAudioWarning, match=r"padded 1 short files with silence: a/a_0\.wav \(0\.03 s padded to 0\.1 s\)"
    ):
        store = prepare(_spec(root, tmp_path / "c", clip_seconds=0.1))
    clip = store.audio(store.names.index("a/a_0.wav"))
    assert clip[:190].any() and not clip[200:].any()


def test_on_bad_error_stops_at_a_bad_file(tmp_path):
    root = write_folder(tmp_path / "d", {"good": 2})
    sf.write(root / "good" / "short.wav", tone(seconds=0.01), RATE)
    with pytest.raises(DataError, match=r"short\.wav: 0\.01 s padded to 0\.05 s; lower min_clip_fraction"):
        prepare(_spec(root, tmp_path / "c", on_bad="error"))
    (root / "good" / "zz.wav").write_text("not audio")
    (root / "good" / "short.wav").unlink()
    with pytest.raises(DataError, match=r"zz\.wav: unreadable .*on_bad='skip'"):
        prepare(_spec(root, tmp_path / "c", on_bad="error"))
    assert not list((tmp_path / "c").glob("*.arrow"))  # nothing half-built was left behind


def test_all_files_bad_is_an_error(tmp_path):
    root = tmp_path / "d"
    write_bad_files(root / "bad")
    with pytest.raises(DataError, match="no file under .* could be decoded"):
        prepare(_spec(root, tmp_path / "c"))


_CHILD = textwrap.dedent(
    """
    import logging, os, sys, time
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    from adastft.data import DataSpec, prepare
    go = sys.argv[1]
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.005)
    store = prepare(DataSpec(source="synthetic", cache_dir=sys.argv[2], sample_rate=8000, clip_seconds=2.0,
                             synthetic_clips_per_class=8))
    print("sum", float(sum(store.audio(i).sum() for i in range(len(store)))), flush=True)
    """
)


@pytest.mark.slow
def test_two_processes_building_at_once_make_one_valid_cache(tmp_path):
    go, cache = tmp_path / "go", tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(go), str(cache)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()  # both start prepare() within a few milliseconds
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outputs.append(out)
    both = "".join(outputs)
    assert both.count("building cache") == 1, both
    assert both.count("reused cache") == 1, both
    assert "waiting for another process" in both or "waited" in both, both
    sums = {line for out in outputs for line in out.splitlines() if line.startswith("sum")}
    assert len(sums) == 1  # both read the same clips
    files = sorted(p.name for p in cache.iterdir())
    assert len([f for f in files if f.endswith(".arrow")]) == 1 and not [f for f in files if "tmp" in f or "spill" in f]
    assert len(ClipStore(cache / files[0])) == 80
