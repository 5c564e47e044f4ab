"""Bad input, table-driven, through the real command lines: ``python -m adastft.train``,
``python tune/search.py`` and ``python -m adastft.predict``, each run in a process of its own.

To keep 58 runs within a minute or two, each runs in a child forked from ``cli_runner.py`` after
it has imported torch, Hydra and MLflow (the module or script is then run as ``__main__``, as
``python -m`` does). One row of each program also runs as a fresh ``python`` process, and must
give the same exit status and error line.

Every row is one bad input: a command-line value, a config or search-space file, an audio file,
a dataset layout, a cluster flag, a checkpoint or a model given to ``predict``. Each must give
- a non-zero exit status,
- exactly one error line (``...: error: ...``) that names the culprit, and no traceback,
- before expensive work: no Ray started (no study folder, no "study ..." line), no cache file,
  no checkpoint, no MLflow store; and within a minute on a loaded 2-core machine,
- nothing half-written: the case's working folder holds no file afterwards except Hydra's
  ``*.log`` and empty cache ``.lock`` files, and the shared inputs are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import soundfile as sf
import torch
import yaml

from harness import HERE, SEARCH, env, free_port, space_file, tiny
from data_helpers import RATE, tone, write_bad_files, write_folder

pytestmark = pytest.mark.slow


@dataclass
class Row:
    id: str
    where: str  # what kind of input: cli, config, audio, layout, cluster, predict, checkpoint
    program: str  # train | search | predict
    args: list[str]
    culprit: str  # the error line must contain this
    exit_code: int = 2
    setup: Callable[[Path], None] | None = None  # puts files in the case's folder first (not checked as leftovers)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Shared inputs: datasets of real audio in bad layouts, config files, a small trained model."""
    root = tmp_path_factory.mktemp("inputs")
    # a dataset folder of class folders, one of whose files is broken
    write_folder(root / "folder_one_bad", {"a": 3, "b": 3})
    (root / "folder_one_bad" / "a" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" * 8)
    # every file broken
    for cls in ("a", "b"):
        write_bad_files(root / "folder_all_bad" / cls)
    # every clip digital silence: nothing to learn
    write_folder(root / "folder_silent", {"a": 2, "b": 2})
    for wav in (root / "folder_silent").rglob("*.wav"):
        sf.write(wav, tone() * 0, RATE)
    # audio files but no class folders
    (root / "folder_flat").mkdir()
    for i in range(3):
        sf.write(root / "folder_flat" / f"clip{i}.wav", tone(), RATE)
    # a "GTZAN" folder with genre folders but no clips in them
    (root / "gtzan_empty" / "genres" / "blues").mkdir(parents=True)
    (root / "gtzan_empty" / "genres" / "blues" / "notes.txt").write_text("no audio here\n")
    (root / "a_file").write_text("not a folder\n")
    # experiment files for --config-dir
    (root / "extra" / "experiment").mkdir(parents=True)
    (root / "extra" / "experiment" / "typo.yaml").write_text("# @package _global_\ntrain:\n  epoch: 3\n")
    (root / "extra" / "experiment" / "broken.yaml").write_text("# @package _global_\ntrain: {epochs: 3\n  bad")
    (root / "space_broken.yaml").write_text(
        "metric: val_clip_accuracy\nmode: max\nparams:\n  optim.lr: {low: 1e-4\n  x: [\n"
    )
    # search spaces
    space_file(root, space={"optim.lr": {"type": "loguniform", "low": 1e-2, "high": 1e-4}}, name="low_high.yaml")
    space_file(root, space={"optim.lrr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}, name="not_a_key.yaml")
    space_file(root, points=[{"optim.lr": 1e-3, "model.dropout": 0.1}], name="point_outside.yaml")
    # a damaged checkpoint where a run would resume
    (root / "damaged_run").mkdir()
    (root / "damaged_run" / "last.pt").write_bytes(b"PK\x03\x04" + os.urandom(2000))
    space_file(root, name="metric_not_reported.yaml")
    spec = yaml.safe_load((root / "metric_not_reported.yaml").read_text())
    (root / "metric_not_reported.yaml").write_text(yaml.safe_dump({**spec, "metric": "val_acc"}))
    # stores: an Optuna study and an MLflow store holding another study's finished parent run
    import optuna
    from mlflow.tracking import MlflowClient

    optuna.create_study(study_name="bad", storage=f"sqlite:///{root}/optuna.db")
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    run = client.create_run(client.create_experiment("reliability"), run_name="other-study")
    client.set_terminated(run.info.run_id, "FINISHED")
    # predict: a real model, a checkpoint that is not an adastft model, files that are not audio
    from adastft.checkpoint import save_checkpoint
    from adastft.config import Config
    from adastft.training import build_model

    cfg = Config.from_dict(
        {
            "data": {"sample_rate": 8000, "clip_seconds": 2.0, "parts": 2},
            "stft": {"n_fft": 256, "hop_length": 128, "n_mels": 32},
        }
    )
    classes = ["a", "b"]
    save_checkpoint(
        {"model": build_model(cfg, len(classes)).state_dict(), "config": cfg.to_dict(), "classes": classes, "epoch": 0},
        root / "model" / "best_model.pt",
    )
    torch.save({"weights": torch.ones(3)}, root / "plain.pt")
    (root / "empty_model_dir").mkdir()
    sf.write(root / "song.wav", tone(seconds=2.0), RATE)
    (root / "notes.wav").write_text("this is a text file, not audio\n" * 20)
    return root


def _truncated(src: Path, dst: Path, keep: float = 0.5) -> None:
    _copy(src, dst)
    dst.write_bytes(dst.read_bytes()[: int(dst.stat().st_size * keep)])


_HELD: list = []  # locks this test process holds for the rows of a running driver


def _running_study(case: Path) -> None:
    """A study folder whose lock a live driver holds (this test process) beside the runs of
    another study, which must not change."""
    from tune.lock import StudyLock

    _HELD.append(StudyLock(case / "runs/search/bad").acquire("bad"))


def rows(inputs: Path) -> list[Row]:
    i = inputs
    closed = f"http://127.0.0.1:{free_port()}"
    folder = ["data=folder", "data.clip_seconds=0.05", "data.sample_rate=8000", "data.parts=2"]
    return [
        # ---- python -m adastft.train: command line and configs
        Row("unknown key", "cli", "train", ["train.epoch=3"], "unknown key 'train.epoch' (did you mean 'epochs'?)"),
        Row("value of the wrong type", "cli", "train", ["optim.lr=abc"], "optim.lr must be a finite number"),
        Row(
            "no such config option",
            "config",
            "train",
            ["model=resnet999"],
            "model=resnet999 is not an option of model (did you mean 'resnet50'?; available: cnn4, resnet18, "
            "resnet34, resnet50)",
        ),
        Row("override that does not parse", "cli", "train", ["optim.lr=[1,2"], "optim.lr=[1,2"),
        Row(
            "experiment file with a typo",
            "config",
            "train",
            ["-cd", str(i / "extra"), "experiment=typo"],
            "unknown key 'train.epoch'",
        ),
        Row(
            "experiment file that is not YAML",
            "config",
            "train",
            ["-cd", str(i / "extra"), "experiment=broken"],
            "broken.yaml",
        ),
        Row(
            "search space file that is not YAML",
            "config",
            "search",
            ["--search", f"{i}/space_broken.yaml"],
            "space_broken.yaml', line 5 is not valid YAML",
        ),
        Row("crops too short for the STFT", "config", "train", ["data.parts=1000"], "data.parts=1000"),
        Row("tracking=server without a URI", "config", "train", ["tracking=server"], "tracking.uri is required"),
        Row("unsupported tracking URI", "cli", "train", ["tracking.uri=ftp://mlflow.example"], "ftp://mlflow.example"),
        Row("tracking server not answering", "cli", "train", [f"tracking.uri={closed}"], closed),
        Row("CUDA device on a machine without one", "cli", "train", ["train.device=cuda"], "train.device='cuda'"),
        Row("backbone file missing", "cli", "train", [f"model.pretrained_path={i}/missing.pt"], "missing.pt"),
        Row(
            "damaged checkpoint to resume from",
            "checkpoint",
            "train",
            ["train.out_dir={case}/resume"],
            "resume/last.pt",
            setup=lambda case: _copy(i / "damaged_run" / "last.pt", case / "resume" / "last.pt"),
        ),
        # ---- datasets: layouts and audio files
        Row(
            "train.out_dir inside a file",
            "cli",
            "train",
            ["train.out_dir={case}/afile/run"],
            "afile is a file",
            setup=lambda case: (case / "afile").write_text("not a folder\n"),
        ),
        Row(
            "data.test_fraction=0 (an empty test split)",
            "config",
            "train",
            ["data.test_fraction=0"],
            "data.test_fraction=0",
        ),
        Row(
            "data.split_files naming a list file that does not exist",
            "config",
            "train",
            ["data.split_files={train:nowhere/train.txt,val:[a],test:[b]}"],
            "nowhere/train.txt",
        ),
        Row(
            "data.split_files without a train list",
            "config",
            "train",
            ["data.split_files={val:[a]}"],
            "split_files must be a dict",
        ),
        Row(
            "data.split_files without a test list",
            "config",
            "train",
            ["data.split_files={train:[ambient/ambient.00000],val:[ambient/ambient.00001]}"],
            "data.split_files has no 'test' list",
        ),
        Row(
            "search whose base config has data.test_fraction=0",
            "config",
            "search",
            ["data.test_fraction=0"],
            "data.test_fraction=0",
        ),
        Row("GTZAN without data.root", "layout", "train", ["data=gtzan"], "data.root is required"),
        Row("GTZAN root that does not exist", "layout", "train", ["data=gtzan", f"data.root={i}/nowhere"], "nowhere"),
        Row("GTZAN root without clips", "layout", "train", ["data=gtzan", f"data.root={i}/gtzan_empty"], "gtzan_empty"),
        Row("dataset root that is a file", "layout", "train", [*folder, f"data.root={i}/a_file"], "a_file"),
        Row("dataset without class folders", "layout", "train", [*folder, f"data.root={i}/folder_flat"], "folder_flat"),
        Row(
            "dataset whose every file is broken",
            "audio",
            "train",
            [*folder, f"data.root={i}/folder_all_bad"],
            "folder_all_bad",
        ),
        Row(
            "broken audio file with data.on_bad=error",
            "audio",
            "train",
            [*folder, f"data.root={i}/folder_one_bad", "data.on_bad=error"],
            "broken.wav",
        ),
        Row(
            "dataset of silent clips",
            "audio",
            "train",
            [*folder, f"data.root={i}/folder_silent"],
            "2 of 2 clips of class 'a' are silent or nearly",
        ),
        Row(
            "data.split_files with a mistyped test list",
            "config",
            "train",
            [
                *folder,
                f"data.root={i}/folder_one_bad",
                "data.split_files={train:[a/a_0,b/b_0],val:[a/a_1,b/b_1],test:[a/a_2.wave]}",
            ],
            "no name in split_files['test'] matches a clip under",
        ),
        # ---- python tune/search.py: flags, spaces, cluster flags
        Row("--trials 0", "cli", "search", ["--trials", "0"], "--trials must be >= 1"),
        Row("no such search space", "config", "search", ["--search", "nope"], "--search 'nope'"),
        Row(
            "space with low > high", "config", "search", ["--search", str(i / "low_high.yaml")], "search.space.optim.lr"
        ),
        Row(
            "space over a key that does not exist",
            "config",
            "search",
            ["--search", str(i / "not_a_key.yaml")],
            "optim.lrr",
        ),
        Row(
            "first point outside the space",
            "config",
            "search",
            ["--search", str(i / "point_outside.yaml")],
            "model.dropout",
        ),
        Row("--resume of a study that does not exist", "cli", "search", ["--resume", "--name", "ghost"], "'ghost'"),
        Row("--max-concurrent 0", "cli", "search", ["--max-concurrent", "0"], "--max-concurrent must be >= 1"),
        Row("search with a tracking server not answering", "cli", "search", [f"tracking.uri={closed}"], closed),
        Row(
            "--gpus-per-trial on a machine without a GPU",
            "cluster",
            "search",
            ["--gpus-per-trial", "1"],
            "--gpus-per-trial",
        ),
        Row("--cpus-per-trial beyond the machine", "cluster", "search", ["--cpus-per-trial", "64"], "64 CPUs"),
        Row(
            "--address where no cluster runs",
            "cluster",
            "search",
            ["--address", f"127.0.0.1:{free_port()}"],
            "--address 127.0.0.1:",
        ),
        Row("--name that is a path", "cli", "search", ["--name", "../x"], "--name '../x'"),
        Row("--name with folders", "cli", "search", ["--name", "a/b"], "--name 'a/b'"),
        Row(
            "--storage that is a file",
            "cli",
            "search",
            ["--storage", "{case}/results"],
            "results is a file",
            setup=lambda case: (case / "results").write_text("not a folder\n"),
        ),
        Row(
            "space whose metric no trial reports",
            "config",
            "search",
            ["--search", str(i / "metric_not_reported.yaml")],
            "search.metric 'val_acc'",
        ),
        Row(
            "--optuna-storage that is not a URL",
            "cli",
            "search",
            ["--optuna-storage", "optuna.db"],
            "--optuna-storage 'optuna.db'",
        ),
        Row(
            "--optuna-storage with a driver not installed",
            "cli",
            "search",
            ["--optuna-storage", "mysql+pymysql://user@127.0.0.1:1/db"],
            "--optuna-storage mysql+pymysql",
        ),
        Row(
            "--optuna-storage in a folder that does not exist",
            "cli",
            "search",
            ["--optuna-storage", "sqlite:///{case}/nowhere/optuna.db"],
            "nowhere does not exist",
        ),
        Row(
            "--resume of a study whose driver is running",
            "cli",
            "search",
            ["--resume"],
            f"another driver (pid {os.getpid()} on host",
            setup=_running_study,
        ),
        Row(
            "--resume with a truncated optuna.db",
            "checkpoint",
            "search",
            ["--resume"],
            "bad/optuna.db is damaged",
            setup=lambda case: (
                _truncated(i / "optuna.db", case / "runs/search/bad/optuna.db"),
                _copy(i / "mlflow.db", case / "mlflow.db"),
            ),
        ),
        Row(
            "--resume with a zero-byte optuna.db",
            "checkpoint",
            "search",
            ["--resume"],
            "holds no study 'bad'",
            setup=lambda case: (
                _copy(i / "mlflow.db", case / "mlflow.db"),
                _truncated(i / "optuna.db", case / "runs/search/bad/optuna.db", keep=0),
            ),
        ),
        Row(
            "search with a truncated mlflow.db",
            "checkpoint",
            "search",
            [],
            "mlflow.db is damaged",
            setup=lambda case: _truncated(i / "mlflow.db", case / "mlflow.db"),
        ),
        Row(
            "training with a truncated mlflow.db",
            "checkpoint",
            "train",
            [],
            "mlflow.db is damaged",
            setup=lambda case: _truncated(i / "mlflow.db", case / "mlflow.db"),
        ),
        # ---- python -m adastft.predict
        Row(
            "audio file that does not exist",
            "predict",
            "predict",
            [f"{i}/missing.wav", "--model", f"{i}/model"],
            "missing.wav",
        ),
        Row(
            "model that does not exist",
            "predict",
            "predict",
            [f"{i}/song.wav", "--model", f"{i}/nomodel.pt"],
            "nomodel.pt",
        ),
        Row(
            "model folder without a checkpoint",
            "predict",
            "predict",
            [f"{i}/song.wav", "--model", f"{i}/empty_model_dir"],
            "empty_model_dir",
        ),
        Row(
            "checkpoint that is not an adastft model",
            "predict",
            "predict",
            [f"{i}/song.wav", "--model", f"{i}/plain.pt"],
            "plain.pt",
        ),
        Row(
            "MLflow run without a store",
            "predict",
            "predict",
            [f"{i}/song.wav", "--model", "runs:/0123456789abcdef"],
            "runs:/0123456789abcdef",
        ),
        Row(
            "--device cuda without a GPU",
            "predict",
            "predict",
            [f"{i}/song.wav", "--model", f"{i}/model", "--device", "cuda"],
            "--device cuda",
        ),
        Row(
            "file that is not audio",
            "audio",
            "predict",
            [f"{i}/notes.wav", "--model", f"{i}/model"],
            "notes.wav",
            exit_code=1,
        ),
    ]


def _base(case_dir: Path, row: Row) -> list[str]:
    """The tiny run's overrides, less those the row sets (a group choice drops its whole group)."""
    keys = {a.split("=")[0] for a in row.args if "=" in a and not a.startswith("-")}

    def set_by_row(override: str) -> bool:
        key = override.split("=")[0]
        return any(key == k or key.startswith(k + ".") for k in keys)

    base = [o for o in tiny(case_dir, epochs=1) if not set_by_row(o)]
    if row.program == "train" and not any(a.startswith("train.out_dir=") for a in row.args):
        base.append(f"train.out_dir={case_dir}/run")
    return base


def _command(row: Row, case_dir: Path) -> list[str]:
    """The command line after ``python``."""
    args = [a.replace("{case}", str(case_dir)) for a in row.args]
    if row.program == "train":
        return ["-m", "adastft.train", *_base(case_dir, row), *args]
    if row.program == "search":
        return [str(SEARCH), "--trials", "2", "--name", "bad", *args, *_base(case_dir, row)]
    return ["-m", "adastft.predict", *args]


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _leftovers(case_dir: Path, given: dict[str, str]) -> list[str]:
    """Files a failed start left in its working folder, other than logs, empty lock files and
    the files the row put there (which must be unchanged)."""
    out = []
    now = _fingerprint(case_dir)
    for name, digest in now.items():
        p = case_dir / name
        if name in given:
            if digest != given[name]:
                out.append(f"{name} (changed)")
        elif not (p.suffix == ".log" or (p.suffix == ".lock" and p.stat().st_size == 0)):
            out.append(name)
    return sorted(out)


def _prepare(row: Row, case_dir: Path) -> dict[str, str]:
    case_dir.mkdir(parents=True)
    if row.setup is not None:
        row.setup(case_dir)
    return _fingerprint(case_dir)


def _check(
    row: Row, case_dir: Path, given: dict[str, str], returncode: int, stdout: str, stderr: str, seconds: float
) -> list[str]:
    problems = []
    if returncode != row.exit_code:
        problems.append(f"exit status {returncode}, want {row.exit_code}")
    if "Traceback" in stderr:
        problems.append("a traceback on stderr")
    errors = [line for line in stderr.splitlines() if ": error:" in line]
    if len(errors) != 1:
        problems.append(f"{len(errors)} error lines, want one")
    elif row.culprit not in errors[0]:
        problems.append(f"the error line does not name {row.culprit!r}")
    if seconds > 60:
        problems.append(f"took {seconds:.0f} s")
    if "study 'bad'" in stdout:
        problems.append("the search started")
    left = _leftovers(case_dir, given)
    if left:
        problems.append(f"left behind: {left}")
    if problems:
        problems.append(f"stderr: {stderr.strip()[-600:]!r}")
    return problems


def _error_line(stderr: str) -> str:
    return next((line for line in stderr.splitlines() if ": error:" in line), "")


def test_bad_input_table(tmp_path, inputs, faults):
    table = rows(inputs)
    if torch.cuda.is_available():  # the GPU rows are bad input only without a GPU
        table = [r for r in table if "cuda" not in r.id.lower() and "gpu" not in r.id.lower()]
    before = _fingerprint(inputs)
    out = tmp_path / "output"
    out.mkdir()
    cases, jobs = [], []
    for n, row in enumerate(table):
        case_dir = tmp_path / f"case{n:02d}"
        cases.append((row, case_dir, _prepare(row, case_dir)))
        jobs.append(
            {
                "argv": _command(row, case_dir),
                "cwd": str(case_dir),
                "stdout": str(out / f"{n:02d}.out"),
                "stderr": str(out / f"{n:02d}.err"),
            }
        )
    (out / "jobs.json").write_text(json.dumps(jobs))
    runner = subprocess.run(
        [sys.executable, str(HERE / "cli_runner.py"), str(out / "jobs.json"), str(out / "results.json")],
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert runner.returncode == 0, runner.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    after = _fingerprint(inputs)
    changed = sorted(set(before.items()) ^ set(after.items()))

    # one row of each program again, as a fresh interpreter: the same status and error line
    fresh = {}
    for program in ("train", "search", "predict"):
        n = next(n for n, (row, _, _) in enumerate(cases) if row.program == program and row.setup is None)
        row, _, _ = cases[n]
        case_dir = tmp_path / f"fresh{n:02d}"
        given = _prepare(row, case_dir)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, *_command(row, case_dir)],
            cwd=case_dir,
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        fresh[n] = (
            proc,
            _check(row, case_dir, given, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started),
        )

    failures = []
    for n, ((row, case_dir, given), result) in enumerate(zip(cases, results)):
        stdout, stderr = (out / f"{n:02d}.out").read_text(), (out / f"{n:02d}.err").read_text()
        problems = _check(row, case_dir, given, result["returncode"], stdout, stderr, result["seconds"])
        if changed:
            problems.append(f"shared inputs changed: {changed[:3]}")
        if n in fresh:
            proc, fresh_problems = fresh[n]
            problems += [f"as a fresh process: {p}" for p in fresh_problems]
            if (proc.returncode, _error_line(proc.stderr)) != (result["returncode"], _error_line(stderr)):
                problems.append(f"a fresh process differs: {proc.returncode} {_error_line(proc.stderr)!r}")
        faults(f"bad input [{row.where}/{row.program}]: {row.id}").fault(
            survived=not problems, note=f"detail: {result['seconds']:.1f} s"
        )
        failures += [f"{row.id}: " + "; ".join(problems)] if problems else []
    assert len(table) >= 30
    assert not failures, "\n".join(failures)
