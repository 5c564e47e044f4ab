"""train(cfg) for real: synthetic data, a real SQLite MLflow store, real checkpoints, real DDP."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import soundfile as sf
import torch
from mlflow.tracking import MlflowClient

from adastft.checkpoint import CheckpointError, link_checkpoint, load_checkpoint, save_checkpoint
from adastft.timing import EPOCH_SECONDS, PHASES, metric, total_metric
from adastft.tracking import TrackingUnavailable
from adastft.training import NonFiniteLoss, NullReporter, train

HERE = Path(__file__).resolve().parent


def small_config(tmp_path: Path, **sections) -> dict:
    """A configuration that trains in seconds on a CPU: 40 clips of 2 s at 8 kHz, tiny STFT."""
    cfg = {
        "name": "unit",
        "data": {
            "source": "synthetic",
            "cache_dir": str(tmp_path / "cache"),
            "sample_rate": 8000,
            "clip_seconds": 2.0,
            "synthetic_clips_per_class": 4,
            "split": "random",
            "parts": 2,
            "crops_per_clip": 1,
            "batch_size": 8,
            "eval_batch_size": 8,
            "time_mask_frames": 2,
            "freq_mask_bins": 4,
        },
        "stft": {"n_fft": 256, "hop_length": 128, "n_mels": 32, "learn_window": True, "learn_kernel": True},
        "optim": {"lr": 1e-3},
        "train": {"epochs": 2, "out_dir": str(tmp_path / "run"), "threads": 2},
        "tracking": {
            "uri": f"sqlite:///{tmp_path}/mlflow.db",
            "experiment": "unit",
            "log_model": True,
            "tensor_formats": ["npy", "pt"],
        },  # both copies, as asked; the default is npy alone
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


@pytest.mark.slow
def test_two_epoch_run_is_tracked_with_every_artifact(tmp_path):
    cfg = small_config(tmp_path)
    metrics = train(cfg)
    for key in (
        "train_loss",
        "val_loss",
        "val_clip_accuracy",
        "val_segment_accuracy",
        "test_clip_accuracy",
        "best_val_clip_accuracy",
        "window_change",
        "kernel_change",
    ):
        assert np.isfinite(metrics[key]), key
    assert metrics["window_change"] > 0 and metrics["kernel_change"] > 0

    client = MlflowClient(cfg["tracking"]["uri"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "unit"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["experiment"] == "unit"
    assert run.data.params["optim.lr"] == "0.001" and run.data.params["stft.learn_kernel"] == "True"
    for name in (
        "train_loss",
        "val_loss",
        "val_clip_accuracy",
        "val_segment_accuracy",
        "lr",
        "window_change",
        "kernel_change",
    ):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [0, 1], name
    artifacts = _artifact_paths(client, run.info.run_id)
    for tensor in ("window_last", "kernel_last", "window_best", "kernel_best"):
        assert f"tensors/{tensor}.pt" in artifacts and f"tensors/{tensor}.npy" in artifacts
    for plot in ("window", "kernel_change", "confusion_val_best", "confusion_test", "learning_curves"):
        assert f"plots/{plot}.png" in artifacts, plot
    assert "config.yaml" in artifacts and "checkpoint/best_model.pt" in artifacts
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="tensors/kernel_last.npy", tracking_uri=cfg["tracking"]["uri"]
        )
    )
    assert np.load(local).shape == (2, 129, 256)
    # the best model logged with mlflow.pytorch loads and classifies
    (model,) = [
        m for m in client.search_logged_models([experiment.experiment_id]) if m.source_run_id == run.info.run_id
    ]
    assert run.data.tags["best_model_uri"] == f"models:/{model.model_id}"
    loaded = mlflow.pytorch.load_model(model.artifact_location)
    assert loaded(torch.randn(2, 8000)).shape == (2, 10)


def test_every_epoch_says_where_its_time_went_and_the_run_samples_the_machine(tmp_path):
    cfg = small_config(tmp_path, train={"epochs": 3}, tracking={"log_model": False, "system_metrics_interval": 0.2})
    metrics = train(cfg)
    client = MlflowClient(cfg["tracking"]["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("unit").experiment_id])

    def series(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]

    rows = {key: series(key) for key in [metric(p) for p in PHASES] + [EPOCH_SECONDS]}
    # a row per epoch, and one for what followed the last (its checkpoint, the test split, artifacts)
    assert all(len(values) == 4 for values in rows.values()), rows
    assert all(v >= 0 for values in rows.values() for v in values), rows
    for step in range(4):
        timed = sum(rows[metric(p)][step] for p in PHASES)
        wall = rows[EPOCH_SECONDS][step]
        assert 0.8 * wall <= timed <= wall + 1e-3, (step, timed, wall)
        assert rows[metric("eval")][step] > 0  # the last row's: the test split
        assert (rows[metric("compute")][step] > 0) == (step < 3)
    # an epoch's checkpoint and tracking end it, so they are in the next row
    assert all(rows[metric(p)][step] > 0 for p in ("checkpoint", "tracking") for step in (1, 2, 3)), rows
    for phase in (*PHASES, EPOCH_SECONDS):
        key = metric(phase) if phase in PHASES else phase
        assert metrics[total_metric(phase)] == pytest.approx(sum(rows[key]), rel=1e-6), phase

    # MLflow's system metrics, labelled with the node: several samples over the run
    cpu = [
        k
        for k in client.get_run(run.info.run_id).data.metrics
        if k.startswith(f"system/{socket.gethostname()}/") and k.endswith("/cpu_utilization_percentage")
    ]
    assert len(cpu) == 1 and len(series(cpu[0])) >= 3, cpu


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.mark.slow
def test_resume_continues_to_the_same_result(tmp_path):
    """A run stopped after its second epoch and resumed from last.pt ends with the weights and
    metrics of one never stopped. Checkpoints hold no RNG state: each epoch reseeds before it
    draws anything (crops, augmentations, dropout), so a resumed run needs none."""

    # the default schedule (warm-up + cosine over train.epochs, stepped per batch) included
    class Stopped(Exception):
        pass

    class StopAfterTwo(NullReporter):
        def __init__(self) -> None:
            self.epochs = 0

        def report(self, metrics, checkpoint_dir) -> None:
            self.epochs += 1
            if self.epochs == 2:
                raise Stopped

    straight = small_config(tmp_path / "a", tracking={"enabled": False}, train={"epochs": 3})
    full = train(straight)
    interrupted = small_config(tmp_path / "b", tracking={"enabled": False}, train={"epochs": 3})
    with pytest.raises(Stopped):
        train(interrupted, StopAfterTwo())
    assert load_checkpoint(tmp_path / "b" / "run" / "last.pt")["epoch"] == 1
    resumed = train(interrupted)
    a = load_checkpoint(tmp_path / "a" / "run" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert "rng" not in a and "rng" not in b
    for key, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][key], tensor, rtol=1e-5, atol=1e-6, msg=key)
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=1e-5)
    assert [h["train_loss"] for h in b["history"]] == pytest.approx([h["train_loss"] for h in a["history"]], rel=1e-5)


@pytest.mark.slow
def test_resuming_behind_the_logged_epochs_redoes_them_and_says_so(tmp_path):
    """A run that died between logging an epoch and saving its checkpoint: the epoch is trained
    again; MLflow cannot take points back, so both stay and the run's tag names the step."""
    cfg = small_config(
        tmp_path,
        train={"epochs": 1},
        tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "unit", "log_model": False},
    )
    train(cfg)
    run_dir = tmp_path / "run"
    shutil.copy(run_dir / "last.pt", tmp_path / "epoch0.pt")
    cfg["train"]["epochs"] = 2
    train(cfg)  # resumes the same run: epoch 2 logged at step 1
    # its checkpoint lost: last.pt may share its file with best.pt, so replace it, never write into it
    shutil.copy(tmp_path / "epoch0.pt", run_dir / "last.pt.old")
    os.replace(run_dir / "last.pt.old", run_dir / "last.pt")
    train(cfg)

    client = MlflowClient(cfg["tracking"]["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1, 1]
    assert run.data.tags["redone_epochs"] == "1"
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_rank_gloo_ddp_matches_single_process(tmp_path):
    # lr 1e-5: the two runs see the same clips in a different order; with a tiny step their
    # metrics must agree closely, and evaluation (sharded by clip, summed) must agree exactly.
    single_cfg = small_config(
        tmp_path / "single",
        tracking={"enabled": False},
        optim={"lr": 1e-5},
        train={"epochs": 1, "threads": 1},
        data={"augment": False},
    )
    ddp_cfg = small_config(
        tmp_path / "ddp",
        tracking={"uri": f"sqlite:///{tmp_path}/ddp.db", "experiment": "ddp"},
        optim={"lr": 1e-5},
        train={"epochs": 1, "threads": 1},
        data={"augment": False, "batch_size": 4, "cache_dir": single_cfg["data"]["cache_dir"]},
    )
    single = train(single_cfg)
    cfg_file, out_file = tmp_path / "cfg.json", tmp_path / "metrics.json"
    cfg_file.write_text(json.dumps(ddp_cfg))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            str(HERE / "ddp_worker.py"),
            str(cfg_file),
            str(out_file),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads(out_file.read_text())
    assert ddp["world_size"] == 2
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], rel=0.05)
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], rel=0.05)
    assert ddp["val_clip_accuracy"] == pytest.approx(single["val_clip_accuracy"], abs=0.15)
    # only rank 0 tracked: exactly one run
    client = MlflowClient(ddp_cfg["tracking"]["uri"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "ddp"]
    assert len(client.search_runs([experiment.experiment_id])) == 1


def test_non_finite_loss_fails_the_run_without_burning_epochs(tmp_path):
    cfg = small_config(
        tmp_path,
        optim={"name": "sgd", "lr": 1e12},
        train={"epochs": 5},
        tracking={"log_model": False},
        stft={"learn_window": False, "learn_kernel": False},
    )
    with pytest.raises(NonFiniteLoss, match="non-finite training loss"):
        train(cfg)
    client = MlflowClient(cfg["tracking"]["uri"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "unit"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["failure"]
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) <= 1


def test_unreachable_tracking_server_fails_before_any_work(tmp_path):
    port = _free_port()
    cfg = small_config(tmp_path, tracking={"uri": f"http://127.0.0.1:{port}"})
    with pytest.raises(TrackingUnavailable, match=f"http://127.0.0.1:{port}"):
        train(cfg)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_checkpoint_write_is_atomic_and_pickles_are_refused(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint({"a": torch.ones(3), "epoch": 1}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, evil)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(evil)


def test_a_best_checkpoint_that_is_also_the_last_is_one_file_under_two_names(tmp_path):
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    save_checkpoint({"epoch": 0}, last)
    save_checkpoint({"a": torch.ones(3), "epoch": 1}, best, durable=False)
    link_checkpoint(best, last, durable=False)
    assert last.stat().st_ino == best.stat().st_ino and load_checkpoint(last)["epoch"] == 1
    save_checkpoint({"epoch": 2}, last)  # the next epoch, not better: best.pt stays as it was
    assert (load_checkpoint(best)["epoch"], load_checkpoint(last)["epoch"]) == (1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no temp file left
    with pytest.raises(
        CheckpointError,
        match=r"cannot write checkpoint .*last\.pt.* from gone\.pt .*"
        r"the previous last\.pt is unchanged",
    ):
        link_checkpoint(tmp_path / "gone.pt", last)
    assert load_checkpoint(last)["epoch"] == 2


def test_a_best_checkpoint_on_another_file_system_is_copied(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system other than tmp_path's, for a real EXDEV")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        src = save_checkpoint({"epoch": 4}, Path(other) / "best.pt")
        link_checkpoint(src, tmp_path / "last.pt")  # os.link fails with EXDEV: copied instead
        assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 4
        assert (tmp_path / "last.pt").stat().st_ino != src.stat().st_ino


@pytest.mark.slow
def test_epochs_write_each_checkpoint_once_and_best_pt_keeps_the_best(tmp_path):
    """An improving epoch writes best.pt and links last.pt to it; later epochs leave it alone."""
    cfg = small_config(tmp_path, tracking={"enabled": False}, train={"epochs": 3})
    train(cfg)
    run_dir = tmp_path / "run"
    last, best = load_checkpoint(run_dir / "last.pt"), load_checkpoint(run_dir / "best.pt")
    accuracies = [h["val_clip_accuracy"] for h in last["history"]]
    best_epoch = max(range(3), key=lambda e: (accuracies[e], -e))  # the first of equals
    assert best["epoch"] == best_epoch and last["epoch"] == 2
    shares = (run_dir / "last.pt").stat().st_ino == (run_dir / "best.pt").stat().st_ino
    assert shares == (best_epoch == 2)


@pytest.mark.slow
def test_predict_cli_prints_top_genres(tmp_path):
    cfg = small_config(tmp_path, tracking={"log_model": False}, train={"epochs": 1})
    train(cfg)
    rng = np.random.default_rng(0)
    song = tmp_path / "song.wav"
    sf.write(song, rng.standard_normal(8000 * 3).astype(np.float32) * 0.1, 8000)
    stereo44k = tmp_path / "stereo.flac"
    sf.write(stereo44k, rng.standard_normal((44100 * 2, 2)).astype(np.float32) * 0.1, 44100)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "adastft.predict",
            str(song),
            str(stereo44k),
            "--model",
            str(tmp_path / "run"),
            "--top",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{song}: ")
    probs = [float(tok) for tok in lines[0].split("(")[1].rstrip(")").split()[1::2]]
    assert len(probs) == 2 and probs[0] >= probs[1] and 0 <= probs[1] <= probs[0] <= 1
    client = MlflowClient(cfg["tracking"]["uri"])
    (experiment,) = [e for e in client.search_experiments() if e.name == "unit"]
    (run,) = client.search_runs([experiment.experiment_id])
    from_mlflow = subprocess.run(
        [
            sys.executable,
            "-m",
            "adastft.predict",
            str(song),
            "--model",
            f"runs:/{run.info.run_id}",
            "--tracking-uri",
            cfg["tracking"]["uri"],
            "--top",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert from_mlflow.returncode == 0, from_mlflow.stderr
    assert from_mlflow.stdout.strip().splitlines()[0] == lines[0]  # the same model, the same answer
    bad = subprocess.run(
        [sys.executable, "-m", "adastft.predict", str(tmp_path / "nope.wav"), "--model", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "no such file" in bad.stderr

    # A file shorter than one segment says so; a model that cannot decide prints a tie, not a label.
    from adastft.predict import Predictor

    predictor = Predictor.load(str(tmp_path / "run"))
    blip = tmp_path / "blip.wav"
    sf.write(blip, rng.standard_normal(400).astype(np.float32) * 0.1, 8000)  # 0.05 s
    short = predictor.predict(blip)
    assert "0.05 s is shorter than one segment" in short.note and short.note in short.line()
    head = [m for m in predictor.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)  # every class equally likely
    undecided = predictor.predict(song, top=2)
    assert sorted([undecided.voted, *undecided.tied]) == sorted(predictor.classes)
    assert undecided.line().startswith(f"{song}: tie {undecided.voted} | ")


class _History:
    def __init__(self):
        self.metrics = []

    def report(self, metrics, checkpoint_dir):
        self.metrics.append(dict(metrics))


def test_front_end_starts_learning_at_the_configured_epoch(tmp_path):
    history = _History()
    cfg = small_config(
        tmp_path, tracking={"enabled": False}, train={"epochs": 2, "max_batches": 2}, stft={"learn_after_epoch": 1}
    )
    train(cfg, history)
    assert [m["window_change"] == 0.0 for m in history.metrics] == [True, False]
    assert history.metrics[1]["kernel_change"] > 0


def test_window_length_learns_from_its_epoch_and_is_logged(tmp_path):
    history = _History()
    cfg = small_config(
        tmp_path,
        train={"epochs": 2, "max_batches": 2},
        optim={"lr": 1e-2},
        stft={
            "learn_after_epoch": 1,
            "learn_win_length": True,
            "learn_window": False,
            "learn_kernel": False,
            "win_length": 200,
        },
        tracking={"tensor_formats": ["npy"], "log_model": False},
    )
    train(cfg, history)
    lengths = [m["win_length"] for m in history.metrics]
    assert lengths[0] == pytest.approx(200.0) and abs(lengths[1] - 200.0) > 1e-3, lengths
    assert history.metrics[1]["window_change"] > 0 and history.metrics[1]["kernel_change"] == 0.0
    client = MlflowClient(cfg["tracking"]["uri"])
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments() if e.name == "unit"])
    assert run.data.tags["learn_win_length"] == "True"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "win_length")] == pytest.approx(lengths)
    tensors = {a.path for a in client.list_artifacts(run.info.run_id, "tensors")}
    assert {"tensors/win_length_best.npy", "tensors/window_best.npy"} <= tensors
    window = np.load(client.download_artifacts(run.info.run_id, "tensors/window_best.npy", str(tmp_path)))
    assert window.shape == (256,)  # the applied window on the n_fft support, the taper times its correction


def test_mixup_trains_on_soft_targets_and_resumes_to_the_same_losses(tmp_path, monkeypatch):
    from adastft.data import Mixup

    calls = []
    forward = Mixup.forward
    monkeypatch.setattr(Mixup, "forward", lambda self, *a: (calls.append(self.training), forward(self, *a))[1])

    class Stopped(Exception):
        pass

    class StopAfterOne(NullReporter):
        def report(self, metrics, checkpoint_dir):
            raise Stopped

    def config(name):
        return small_config(
            tmp_path / name,
            tracking={"enabled": False},
            train={"epochs": 2, "max_batches": 2},
            data={"mixup_alpha": 0.4, "cache_dir": str(tmp_path / "cache")},
        )

    straight = _History()
    train(config("a"), straight)
    assert calls == [True] * 4  # every training batch, never evaluation
    with pytest.raises(Stopped):
        train(config("b"), StopAfterOne())
    resumed = _History()
    train(config("b"), resumed)
    losses = [m["train_loss"] for m in straight.metrics]
    assert all(np.isfinite(losses)) and resumed.metrics[-1]["train_loss"] == pytest.approx(losses[1], rel=1e-5)


def test_a_pcen_run_learns_its_compression_and_logs_it(tmp_path):
    cfg = small_config(
        tmp_path,
        train={"epochs": 1, "max_batches": 2},
        stft={"compression": "pcen", "learn_compression": True, "learn_window": False, "learn_kernel": False},
        tracking={"log_model": False, "tensor_formats": ["npy"], "system_metrics_interval": 0},
    )
    metrics = train(cfg)
    assert metrics["window_change"] == 0.0 and metrics["kernel_change"] == 0.0
    client = MlflowClient(cfg["tracking"]["uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    artifacts = _artifact_paths(client, run.info.run_id)
    for name in ("smoothing", "alpha", "delta", "root"):
        assert {f"tensors/pcen_{name}_last.npy", f"tensors/pcen_{name}_best.npy"} <= artifacts, name
    assert "plots/pcen.png" in artifacts
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="tensors/pcen_alpha_last.npy", tracking_uri=cfg["tracking"]["uri"]
    )
    alpha = np.load(local)
    assert alpha.shape == (32,) and np.abs(alpha - 0.96).max() > 0  # it learned


def test_pretrained_backbone_comes_from_a_local_file_only(tmp_path):
    import torchvision

    from adastft import AdaSTFT
    from adastft.model import AdaSTFTClassifier

    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pt")
    model = AdaSTFTClassifier(
        AdaSTFT(8000, n_fft=256, hop_length=128, n_mels=32), num_classes=10, pretrained_path=tmp_path / "resnet18.pt"
    )
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    with pytest.raises(ValueError, match="model.pretrained_path .* is not a file"):
        AdaSTFTClassifier(AdaSTFT(8000, n_fft=256, n_mels=32), num_classes=10, pretrained_path=tmp_path / "no.pt")
