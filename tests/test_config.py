"""Every config file composes, validates and instantiates; bad keys and values get one line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from adastft.config import Config, ConfigError
from adastft.train import CONFIG_DIR, resolve
from adastft.training import build_model

GROUPS = ["data", "stft", "model", "optim", "train", "tracking"]
NEEDS = {"data/gtzan": ["data.root=/data/gtzan"], "data/folder": ["data.root=/data/mine"],
         "tracking/server": ["tracking.uri=http://127.0.0.1:5000"]}


def _compose(overrides: list[str]) -> Config:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return resolve(compose("config", overrides=overrides))


def _options():
    for group in GROUPS:
        for path in sorted((CONFIG_DIR / group).glob("*.yaml")):
            yield f"{group}/{path.stem}"


@pytest.mark.parametrize("option", list(_options()))
def test_every_group_option_composes_and_instantiates(option):
    group, name = option.split("/")
    cfg = _compose([f"{group}={name}", *NEEDS.get(option, [])])
    model = build_model(cfg, num_classes=10)
    assert model.channels == cfg.model.n_frontends


EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment):
    root = ["data.root=/data/gtzan"] if experiment.startswith("original_") else []
    cfg = _compose([f"experiment={experiment}", *root])
    assert cfg.name == experiment and cfg.train.out_dir == f"runs/{experiment}"
    build_model(cfg, num_classes=10)


def test_the_seven_original_trials_are_the_reports():
    seen = {}
    for name in EXPERIMENTS:
        if name.startswith("original_"):
            cfg = _compose([f"experiment={name}", "data.root=/data/gtzan"])
            seen[name] = (cfg.stft.learn_window, cfg.stft.learn_kernel, cfg.model.n_frontends)
            assert (cfg.optim.name, cfg.data.parts, cfg.data.augment, cfg.data.batch_size) == ("adamw", 12, True, 16)
            assert cfg.optim.lr == pytest.approx(0.004217059205126061)
            assert cfg.optim.gamma == pytest.approx(0.9974547047513221)
            # the original's recipe, pinned while the defaults moved on
            assert (cfg.data.crops_per_clip, cfg.data.eval_parts, cfg.optim.schedule, cfg.optim.warmup_epochs) == \
                (1, None, "exponential", 0.0)
    assert sorted(seen.values()) == sorted([
        (False, False, 1), (True, False, 1), (False, True, 1), (True, True, 1),
        (True, False, 3), (False, True, 3), (True, True, 3),
    ])


def test_config_files_start_with_the_command_that_runs_them():
    for path in CONFIG_DIR.rglob("*.yaml"):
        head = path.read_text().splitlines()[:3]
        assert any(cmd in line for line in head for cmd in ("python -m adastft.train", "mlflow ui", "python tune/search.py")), path


BAD = [
    ({"train": {"epoch": 3}}, "unknown key 'train.epoch' (did you mean 'epochs'?)"),
    ({"trian": {}}, "unknown key 'trian' (did you mean 'train'?)"),
    ({"optim": {"lr": "fast"}}, "optim.lr must be a finite number, got 'fast'"),
    ({"optim": {"lr": -1.0}}, "optim.lr must be > 0, got -1.0"),
    ({"optim": {"name": "adam"}}, "optim.name must be one of adamw, sgd, got 'adam'"),
    ({"train": {"epochs": 2.5}}, "train.epochs must be an integer, got 2.5"),
    ({"data": {"augment": "yes"}}, "data.augment must be true or false, got 'yes'"),
    ({"data": {"source": "gtzan"}}, "data.root must be set for source='gtzan'"),
    ({"model": {"backbone": "vgg16"}}, "model.backbone must be one of resnet18"),
    ({"model": {"n_frontends": 2}}, "model.n_frontends must be one of 1, 3, got 2"),
    ({"stft": {"n_fft": 1}}, "stft: n_fft must be an integer >= 2, got 1"),
    ({"stft": {"window": "gauss"}}, "stft: window must be one of"),
    ({"data": {"parts": 1000, "clip_seconds": 6.0}}, "data.parts=1000 makes 0.006 s crops, too short for stft.n_fft=1024"),
    ({"data": {"noise_snr_db": [40, 10]}}, "data.noise_snr_db must be [low, high] with low <= high"),
    ({"train": {"device": "tpu"}}, "train.device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ({"data": {"crops_per_clip": 0}}, "data.crops_per_clip must be >= 1 (random crops per clip per epoch; 1 is the "
                                      "original's recipe), got 0"),
    ({"data": {"eval_parts": 0}}, "data.eval_parts must be >= 1 (evaluate on at most that many evenly spaced parts), "
                                  "or null to vote over every part, got 0"),
    ({"optim": {"schedule": "cosin"}}, "optim.schedule must be one of exponential, cosine, got 'cosin' "
                                       "(did you mean 'cosine'?)"),
    ({"optim": {"schedule": "exponential", "warmup_epochs": 2}},
     "optim.warmup_epochs=2 needs optim.schedule=cosine (the exponential schedule has no warm-up): set "
     "optim.schedule=cosine or optim.warmup_epochs=0"),
    ({"optim": {"warmup_epochs": -1}}, "optim.warmup_epochs must be >= 0, got -1.0"),
]


@pytest.mark.parametrize("data,message", BAD, ids=[m.split(" ")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_config_is_one_line_naming_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_defaults_are_the_measured_recipe_in_python_and_in_the_configs():
    # bench/time_to_accuracy.py measured these against the original's recipe (README, Training recipe)
    for cfg in (Config(), _compose([]), _compose(["data=gtzan", "data.root=/data/gtzan"])):
        assert (cfg.data.crops_per_clip, cfg.data.eval_parts, cfg.optim.schedule, cfg.optim.warmup_epochs) == \
            (4, 3, "cosine", 1.0)


def test_round_trip_and_dotted_overrides():
    cfg = Config.from_dict({"optim": {"lr": 1}})
    assert isinstance(cfg.optim.lr, float)
    assert Config.from_dict(cfg.to_dict()) == cfg
    merged = cfg.merged({"optim.lr": 0.5, "stft.learn_kernel": True})
    assert merged.optim.lr == 0.5 and merged.stft.learn_kernel and not cfg.stft.learn_kernel
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        cfg.merged({"optim.lrr": 0.5})


@pytest.mark.parametrize(
    "args,message",
    [
        (["train.epochs=abc"], "adastft.train: error: train.epochs must be an integer, got 'abc'"),
        (["data=gtzan"], "adastft.train: error: data.root is required"),
        (["+train.epoch=3"], "adastft.train: error: unknown key 'train.epoch' (did you mean 'epochs'?)"),
        (["data=gtzan", "data.root=/nonexistent"], "adastft.train: error: GTZAN root '/nonexistent' does not exist"),
        (["tracking=server", "tracking.uri=http://127.0.0.1:9"], "adastft.train: error: MLflow tracking server http://127.0.0.1:9 is unreachable"),
    ],
)
def test_cli_rejects_bad_config_before_work(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "adastft.train", *args, f"train.out_dir={tmp_path}/run"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "mlflow.db").exists()


def test_library_never_imports_ray_or_hydra():
    code = (
        "import sys, adastft, adastft.training, adastft.train, adastft.predict, adastft.data, adastft.tracking;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'hydra')]; print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_library_sources_do_not_mention_ray_or_hydra_imports():
    root = Path(__file__).resolve().parents[1] / "adastft"
    for path in root.rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ray", "from ray")):
                pytest.fail(f"{path} imports Ray: {stripped}")
            if stripped.startswith(("import hydra", "from hydra")) and path.name != "train.py":
                pytest.fail(f"{path} imports Hydra: {stripped}")


def test_advice_warns_of_valid_but_suspicious_values_and_stays_quiet_on_every_shipped_config():
    from adastft.advice import advice

    assert advice(Config.from_dict({})) == []
    for experiment in sorted((CONFIG_DIR / "experiment").glob("*.yaml")):
        overrides = [f"experiment={experiment.stem}"]
        if "/data: gtzan" in experiment.read_text():
            overrides.append(f"data.root={CONFIG_DIR}")  # any folder: not read here
        assert advice(_compose(overrides)) == [], experiment.name
    lines = advice(Config.from_dict({"optim": {"lr": 5.0}, "stft": {"lr": 0.5, "hop_length": 2048, "learn_window": True,
                                                                     "learn_after_epoch": 30}}))
    assert lines == [
        "optim.lr=5 is far above adamw's usual range (at most 0.1): training will most likely diverge",
        "stft.lr=0.5 is far above adamw's usual range (at most 0.1): training will most likely diverge",
        "stft.hop_length=2048 is longer than the window (1024 samples): 1024 samples between frames are never seen",
        "stft.learn_after_epoch=30 is not before the last epoch (train.epochs=30): the front end never learns",
    ]
    assert advice(Config.from_dict({"optim": {"name": "sgd", "lr": 0.5}})) == []  # SGD's range is wider


def test_the_commands_print_advice_before_work(tmp_path):
    """The search prints it before anything else is checked (a closed --address here ends it before
    Ray); a key the search space samples gets none."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, str(CONFIG_DIR.parents[1] / "tune/search.py"), "--address", f"127.0.0.1:{port}",
                           "experiment=quickstart", "optim.lr=3", "stft.hop_length=4096"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("search: warning:")]
    assert warnings == ["search: warning: stft.hop_length=4096 is longer than the window (1024 samples): 3072 samples "
                        "between frames are never seen"], proc.stderr  # optim.lr: the quickstart space samples it


def test_model_memory_estimate_matches_what_training_allocates():
    """Parameters, gradients and AdamW's two moments after one step, plus the front end's initial
    copies, against ``model_bytes``: within 5% (BatchNorm statistics and the mel basis are the rest)."""
    from adastft.memory import model_bytes
    from adastft.training import build_model, build_optimizer

    cfg = Config.from_dict({"stft": {"n_fft": 2048, "hop_length": 512, "learn_kernel": True, "learn_window": True}})
    model = build_model(cfg, 10)
    model.set_frontend_learning(True, True)
    opt = build_optimizer(cfg, model)
    model(torch.randn(2, 22050)).sum().backward()
    opt.step()
    tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [t for state in opt.state.values() for t in state.values() if torch.is_tensor(t) and t.dim() > 0]
    tensors += [b for name, b in model.named_buffers() if "initial_" in name]
    allocated = sum(t.numel() * t.element_size() for t in tensors)
    assert model_bytes(cfg, 10) == pytest.approx(allocated, rel=0.05)


def test_a_model_that_cannot_fit_is_refused_before_anything_is_built(tmp_path):
    """A learnable 131072-point kernel: 64 GiB per copy, at least 320 GiB with its gradient and AdamW's
    state, more than any machine this runs on has free."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "adastft.train", "experiment=quickstart", "stft.n_fft=131072",
                           "stft.hop_length=32768", "stft.learn_kernel=true", "data.parts=1", "data.clip_seconds=6",
                           "tracking=off", f"train.out_dir={tmp_path}/run"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("adastft.train: error: the model needs at least 320."), lines[-1]
    assert "stft.n_fft=131072" in lines[-1]
    assert time.monotonic() - started < 60
    assert not (tmp_path / ".cache").exists()  # the data cache was not built
