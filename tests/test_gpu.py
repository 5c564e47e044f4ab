"""The GPU half of the suite, for the first machine with CUDA: `python -m pytest -m gpu`, or
`bash bench/gpu_check.sh` for these tests and the GPU benchmarks in one command.

Every test here is marked `gpu` and skipped, saying why, where torch sees no CUDA device; the
NCCL test also needs two GPUs. Nothing is mocked: the layer, training, the search (a real local
Ray packing trials on the GPU) and the predict command line run as a user would run them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from adastft import AdaSTFT
from adastft.checkpoint import load_checkpoint
from adastft.config import Config
from adastft.training import build_model, train
from test_layer import CASES, _WINDOW_FNS, _assert_rel_close, _force_kernel_path, _signal
from test_search import child_runs, run_search, space_file, tiny
from test_training import small_config

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = "needs a CUDA device: torch.cuda.is_available() is False on this machine"


def needs_cuda(test):
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)(test))


@needs_cuda
@pytest.mark.parametrize("path", ["fft", "kernel"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_layer_equals_torchaudio_on_cuda_and_stays_float32_under_autocast(case, path):
    args = dict(case)
    window = args.pop("window", "hann")
    reference = torchaudio.transforms.MelSpectrogram(sample_rate=16000, window_fn=_WINDOW_FNS[window], **args).cuda()
    layer = AdaSTFT(sample_rate=16000, window=window, **args).cuda()
    if path == "kernel":
        _force_kernel_path(layer)
    x = _signal().cuda()
    with torch.no_grad():
        expected = reference(x)
        _assert_rel_close(layer(x), expected)
        for dtype in (torch.float16, torch.bfloat16):  # what training's autocast picks
            with torch.autocast("cuda", dtype=dtype):
                out = layer(x)
            assert out.dtype == torch.float32
            _assert_rel_close(out, expected)


@needs_cuda
def test_two_epochs_with_amp_on_cuda_leave_a_checkpoint_that_loads_on_cpu(tmp_path):
    cfg = small_config(tmp_path, train={"device": "cuda", "amp": True}, tracking={"log_model": False})
    metrics = train(cfg)
    assert all(np.isfinite(metrics[k]) for k in ("train_loss", "val_loss", "test_loss"))
    state = load_checkpoint(tmp_path / "run" / "last.pt", map_location="cpu")
    assert state["epoch"] == 1
    model = build_model(Config.from_dict(state["config"]), len(state["classes"]))
    model.load_state_dict(state["model"])
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(2, 8000))).all()


@needs_cuda
def test_two_trials_share_the_gpu_at_the_same_time(tmp_path):
    proc = run_search(
        tmp_path,
        "--trials",
        "4",
        "--gpus-per-trial",
        "0.5",
        "--scheduler",
        "none",
        "--search",
        str(space_file(tmp_path)),
        "--name",
        "packed",
        *tiny(tmp_path, epochs=3),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, _, children = child_runs(tmp_path, "packed")
    assert len(children) == 4 and all(r.data.params["train.device"] == "cuda" for r in children)
    spans = sorted((r.info.start_time, r.info.end_time) for r in children)
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if b[0] < a[1]]
    assert overlapping, f"no two trials ran at the same time: {spans}"


@needs_cuda
def test_predict_runs_on_cuda(tmp_path):
    train(small_config(tmp_path, tracking={"enabled": False}, train={"epochs": 1}))
    song = tmp_path / "song.wav"
    sf.write(song, np.random.default_rng(0).standard_normal(8000 * 3).astype(np.float32) * 0.1, 8000)
    args = [sys.executable, "-m", "adastft.predict", str(song), "--model", str(tmp_path / "run"), "--top", "2"]
    on_gpu = subprocess.run([*args, "--device", "cuda"], capture_output=True, text=True, timeout=300)
    on_cpu = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert on_gpu.returncode == 0, on_gpu.stderr
    assert on_gpu.stdout.split("(")[0] == on_cpu.stdout.split("(")[0]  # the same genre


@needs_cuda
@pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason=f"a 2-worker NCCL trial needs 2 GPUs; this machine has {torch.cuda.device_count()}",
)
def test_a_two_worker_ddp_trial_over_nccl(tmp_path):
    proc = run_search(
        tmp_path,
        "--trials",
        "1",
        "--workers-per-trial",
        "2",
        "--gpus-per-trial",
        "1",
        "--scheduler",
        "none",
        "--search",
        str(space_file(tmp_path)),
        "--name",
        "nccl",
        *tiny(tmp_path, epochs=2),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, _, (run,) = child_runs(tmp_path, "nccl")
    assert run.info.status == "FINISHED" and run.data.params["train.device"] == "cuda"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: gpu_check.sh would run it all")
def test_gpu_check_without_cuda_exits_2_at_once_with_one_line():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "no CUDA device" in proc.stderr, proc.stderr
