"""Your own train/val/test lists from the command line and in a search's base config
(``data.split_files``), with the same checks as ``DataSpec(split_files=...)`` in Python; the
refusals are rows of the bad-input table (``test_bad_input.py``).

- ``python -m adastft.train data.split_files={train:train.txt,val:val.txt,test:test.txt}``, list
  files relative to the working folder: the run trains on exactly those splits and is tested on
  the test list;
- ``python tune/search.py ... data.split_files=...``: the trials get the lists as absolute paths
  (they run in other working folders).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adastft.checkpoint import load_checkpoint
from adastft.data import DataSpec, prepare
from harness import env, space_file, tiny

pytestmark = pytest.mark.slow


def _lists(tmp_path: Path) -> dict[str, list[str]]:
    """Split lists over the tiny synthetic set (train 2 of every 4 clips, val 1, test 1)."""
    store = prepare(
        DataSpec(
            source="synthetic",
            cache_dir=str(tmp_path / "cache"),
            sample_rate=8000,
            clip_seconds=2.0,
            synthetic_clips_per_class=4,
        )
    )
    names = list(store.names)
    lists = {"train": names[0::4] + names[1::4], "val": names[2::4], "test": names[3::4]}
    for split, items in lists.items():
        (tmp_path / f"{split}.txt").write_text("\n".join(items) + "\n")
    return lists


def test_split_files_from_the_training_command_line(tmp_path, faults, monkeypatch):
    case = faults("data.split_files from the command line")
    lists = _lists(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "adastft.train",
            *tiny(tmp_path, epochs=1),
            "tracking=off",
            f"train.out_dir={tmp_path}/run",
            "data.split_files={train:train.txt,val:val.txt,test:test.txt}",
        ],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    problems = [] if proc.returncode == 0 else [f"exit status {proc.returncode}: {proc.stderr[-1500:]}"]
    if not problems:
        monkeypatch.chdir(tmp_path)  # the list files are relative to the run's working folder
        cfg = load_checkpoint(tmp_path / "run" / "best_model.pt")["config"]
        store = prepare(
            DataSpec(
                **{
                    k: cfg["data"][k]
                    for k in (
                        "source",
                        "cache_dir",
                        "sample_rate",
                        "clip_seconds",
                        "synthetic_clips_per_class",
                        "split_files",
                    )
                }
            )
        )
        for split, names in lists.items():
            got = sorted(store.names[i] for i in store.indices(split))
            if got != sorted(names):
                problems.append(f"the {split} split has {len(got)} clips, its list {len(names)}")
        if "test_clip_accuracy" not in proc.stdout + proc.stderr:
            problems.append("the run was not tested")
    case.fault(survived=not problems)
    assert not problems, "\n".join(problems)


def test_split_files_in_a_search_base_config_reach_the_trials_as_absolute_paths(tmp_path, faults, monkeypatch):
    from tune.settings import absolutise, compose

    case = faults("data.split_files in a search's base config")
    _lists(tmp_path)
    monkeypatch.chdir(tmp_path)
    base, _, _ = compose(
        [*tiny(tmp_path), "data.split_files={train:train.txt,val:val.txt,test:[ballad/ballad.00003]}"],
        str(space_file(tmp_path)),
        "none",
    )
    base = absolutise(base, tmp_path)
    want = {"train": str(tmp_path / "train.txt"), "val": str(tmp_path / "val.txt"), "test": ["ballad/ballad.00003"]}
    problems = [] if base.data.split_files == want else [f"the trials get {base.data.split_files}, want {want}"]
    case.fault(survived=not problems)
    assert not problems, "\n".join(problems)
