"""Every config file composes, validates and instantiates; bad keys and values get one line."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from adastft.config import Config, ConfigError
from adastft.train import CONFIG_DIR, compose, resolve
from adastft.training import build_model

GROUPS = ["data", "stft", "model", "optim", "train", "tracking"]
NEEDS = {
    "data/gtzan": ["data.root=/data/gtzan"],
    "data/folder": ["data.root=/data/mine"],
    "tracking/server": ["tracking.uri=http://127.0.0.1:5000"],
}


def _compose(overrides: list[str]) -> Config:
    return resolve(compose(overrides))


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
            assert (cfg.data.crops_per_clip, cfg.data.eval_parts, cfg.optim.schedule, cfg.optim.warmup_epochs) == (
                1,
                None,
                "exponential",
                0.0,
            )
    assert sorted(seen.values()) == sorted(
        [
            (False, False, 1),
            (True, False, 1),
            (False, True, 1),
            (True, True, 1),
            (True, False, 3),
            (False, True, 3),
            (True, True, 3),
        ]
    )


def test_config_files_start_with_the_command_that_runs_them():
    for path in CONFIG_DIR.rglob("*.yaml"):
        head = path.read_text().splitlines()[:3]
        assert any(
            cmd in line for line in head for cmd in ("python -m adastft.train", "mlflow ui", "python tune/search.py")
        ), path


BAD = [
    ({"train": {"epoch": 3}}, "unknown key 'train.epoch' (did you mean 'epochs'?)"),
    ({"trian": {}}, "unknown key 'trian' (did you mean 'train'?)"),
    ({"optim": {"lr": "fast"}}, "optim.lr must be a finite number, got 'fast'"),
    ({"optim": {"lr": -1.0}}, "optim.lr must be > 0, got -1.0"),
    ({"optim": {"name": "adam"}}, "optim.name must be one of adamw, sgd, got 'adam'"),
    ({"train": {"epochs": 2.5}}, "train.epochs must be an integer, got 2.5"),
    ({"data": {"augment": "yes"}}, "data.augment must be true or false, got 'yes'"),
    ({"data": {"source": "gtzan"}}, "data.root is required for data.source='gtzan'"),
    (
        {"data": {"source": "gtzn"}},
        "data.source must be one of synthetic, gtzan, folder, got 'gtzn' (did you mean 'gtzan'?)",
    ),
    ({"model": {"backbone": "vgg16"}}, "model.backbone must be one of resnet18"),
    ({"model": {"n_frontends": 2}}, "model.n_frontends must be one of 1, 3, got 2"),
    ({"stft": {"n_fft": 1}}, "stft.n_fft must be an integer >= 2, got 1"),
    ({"stft": {"window": "gauss"}}, "stft.window must be one of"),
    ({"stft": {"n_fft": 64, "hop_length": 32}}, "stft.n_mels=128 leaves 70 empty mel filters with stft.n_fft=64"),
    ({"data": {"sample_rate": 16000}, "stft": {"f_max": 9000.0}}, "stft.f_max must be <= sample_rate / 2 = 8000"),
    (
        {"data": {"parts": 1000, "clip_seconds": 6.0}},
        "data.parts=1000 makes 0.006 s crops, too short for stft.n_fft=1024",
    ),
    ({"data": {"noise_snr_db": [40, 10]}}, "data.noise_snr_db must be None or (low, high) with low <= high"),
    ({"data": {"freq_mask_bins": -1}}, "data.freq_mask_bins must be an integer >= 0, got -1"),
    ({"data": {"mixup_alpha": -1}}, "data.mixup_alpha must be > 0, got -1.0"),
    ({"data": {"mixup_alpha": 0, "augment": False}}, "data.mixup_alpha must be > 0, got 0.0"),  # null is off
    ({"data": {"vote": "mena"}}, "data.vote must be one of majority, mean, got 'mena' (did you mean 'mean'?)"),
    ({"data": {"test_fraction": 1.0}}, "data.test_fraction must be in [0, 1), got 1.0"),
    ({"model": {"dropout": 1.0}}, "model.dropout must be in [0, 1), got 1.0"),
    ({"optim": {"gamma": 1.5}}, "optim.gamma must be in (0, 1], got 1.5"),
    ({"train": {"device": "tpu"}}, "train.device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    (
        {"data": {"crops_per_clip": 0}},
        "data.crops_per_clip must be an integer >= 1 (random crops of each clip per "
        "epoch; 1 is the original's recipe), got 0",
    ),
    (
        {"data": {"eval_parts": 0}},
        "data.eval_parts must be None (vote over every part) or an integer >= 1 (that many evenly spaced parts), got 0",
    ),
    (
        {"optim": {"schedule": "cosin"}},
        "optim.schedule must be one of exponential, cosine, got 'cosin' (did you mean 'cosine'?)",
    ),
    (
        {"optim": {"schedule": "exponential", "warmup_epochs": 2}},
        "optim.warmup_epochs=2 needs optim.schedule=cosine (the exponential schedule has no warm-up): set "
        "optim.schedule=cosine or optim.warmup_epochs=0",
    ),
    ({"optim": {"warmup_epochs": -1}}, "optim.warmup_epochs must be >= 0, got -1.0"),
    ({"stft": {"compression": "pcen", "pcen_alpha": 1.5}}, "stft.pcen_alpha must be in [0, 1], got 1.5"),
    ({"stft": {"pcen_root": 0.5}}, "stft.pcen_root must be >= 1, got 0.5"),
    ({"stft": {"learn_compression": "on"}}, "stft.learn_compression must be true or false, got 'on'"),
]


@pytest.mark.parametrize("data,message", BAD, ids=[m.split(" ")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_config_is_one_line_naming_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_defaults_are_the_measured_recipe_in_python_and_in_the_configs():
    # bench/time_to_accuracy.py measured these against the original's recipe (docs/training.md, Training recipe)
    for cfg in (Config(), _compose([]), _compose(["data=gtzan", "data.root=/data/gtzan"])):
        assert (cfg.data.crops_per_clip, cfg.data.eval_parts, cfg.optim.schedule, cfg.optim.warmup_epochs) == (
            4,
            3,
            "cosine",
            1.0,
        )


def test_round_trip_and_dotted_overrides():
    cfg = Config.from_dict({"optim": {"lr": 1}})
    assert isinstance(cfg.optim.lr, float)
    assert Config.from_dict(cfg.to_dict()) == cfg
    merged = cfg.merged({"optim.lr": 0.5, "stft.learn_kernel": True})
    assert merged.optim.lr == 0.5 and merged.stft.learn_kernel and not cfg.stft.learn_kernel
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        cfg.merged({"optim.lrr": 0.5})


def test_replaced_changes_where_a_run_goes_without_validating_again(monkeypatch):
    cfg = Config.from_dict({"optim": {"lr": 1}})
    monkeypatch.setattr(Config, "validate", lambda self: pytest.fail("replaced() validated"))
    moved = cfg.replaced({"train.out_dir": "/tmp/run", "tracking.tags": {"trial": 3}, "train.threads": 2})
    assert (moved.train.out_dir, moved.tracking.tags, moved.train.threads) == ("/tmp/run", {"trial": "3"}, 2)
    assert moved.optim == cfg.optim and cfg.train.out_dir == "runs/default"
    with pytest.raises(ConfigError, match="train.threads must be an integer, got 'two'"):
        cfg.replaced({"train.threads": "two"})  # types are still checked
    with pytest.raises(ConfigError, match=r"'optim.lr' is not one of the keys replaced\(\) changes unchecked"):
        cfg.replaced({"optim.lr": 0.5})


def test_the_stft_section_is_the_layers_signature():
    """StftConfig's layer keys and defaults are AdaSTFT's arguments, read from its signature, but for
    the recipe's STFT_DEFAULTS; stft/fixed.yaml composes to exactly them; the layer reports them."""
    import dataclasses
    import inspect

    from adastft import AdaSTFT
    from adastft.config import STFT_DEFAULTS, StftArguments, StftConfig
    from adastft.layer import SWITCHES

    params = inspect.signature(AdaSTFT).parameters
    layer_keys = [f.name for f in dataclasses.fields(StftArguments)]
    assert layer_keys == [name for name in params if name not in ("sample_rate", *SWITCHES)]
    assert {f.name: f.default for f in dataclasses.fields(StftArguments)} == {
        name: STFT_DEFAULTS.get(name, params[name].default) for name in layer_keys
    }
    assert STFT_DEFAULTS == {"hop_length": 512, "compression": "log1p"}
    assert [f.name for f in dataclasses.fields(StftConfig)] == layer_keys + [
        "learn_window",
        "learn_kernel",
        "learn_compression",
        "learn_after_epoch",
        "lr",
    ]
    assert _compose(["stft=fixed"]).stft == StftConfig() == Config().stft
    layer = AdaSTFT(**StftConfig(n_fft=512, n_mels=64).layer_kwargs(16000))
    assert set(layer.config()) == {"sample_rate", *layer_keys}
    assert (layer.config()["n_fft"], layer.config()["sample_rate"], layer.config()["f_max"]) == (512, 16000, 8000.0)


def test_checks_of_heavy_objects_build_none_of_them(monkeypatch):
    """A 131072-point kernel (64 GiB) and a resnet152 are checked from their arguments alone."""
    import torchvision

    from adastft import functional

    monkeypatch.setattr(functional, "dft_kernel", lambda *a, **k: pytest.fail("the DFT kernel was built"))
    monkeypatch.setattr(torchvision.models, "resnet152", lambda *a, **k: pytest.fail("resnet152 was built"))
    started = time.monotonic()
    cfg = Config.from_dict(
        {
            "stft": {"n_fft": 131072, "hop_length": 32768},
            "model": {"backbone": "resnet152"},
            "data": {"parts": 1, "clip_seconds": 6.0},
        }
    )
    assert cfg.stft.n_fft == 131072 and time.monotonic() - started < 10


OVERRIDES = [
    (
        ["stft=learn_bot"],
        "stft=learn_bot is not an option of stft (did you mean 'learn_both'?; available: fixed, "
        "learn_both, learn_kernel, learn_window, pcen)",
    ),
    (["experiment=nope"], "experiment=nope is not an option of experiment (available: original_3stft_learn_both,"),
    (["train.epoch=3"], "unknown key 'train.epoch' (did you mean 'epochs'?)"),
    (["++train.epoch=3"], "unknown key 'train.epoch' (did you mean 'epochs'?)"),
    (["trian.epochs=3"], "unknown key 'trian' (did you mean 'train'?)"),
    (["optim.lr.x=1"], "unknown key 'optim.lr.x': 'optim.lr' is a value, not a config section"),
    (["optim.lr=[1,2"], "cannot parse override 'optim.lr=[1,2': "),
    (["stft.n_fft=1"], "stft.n_fft must be an integer >= 2, got 1"),
    (["data.mixup_alpha=-1"], "data.mixup_alpha must be > 0, got -1.0"),
    (["tracking.tags.team=a"], "tracking.tags.team is not in the composed config: add it with +tracking.tags.team=a"),
    (["train.epochs=${nowhere}"], "Interpolation key 'nowhere' not found"),  # Hydra's (OmegaConf's) own, first line
]


@pytest.mark.parametrize("overrides,message", OVERRIDES, ids=[o[0] for o, _ in OVERRIDES])
def test_overrides_are_checked_before_hydra_composes_them(overrides, message):
    with pytest.raises(ConfigError) as info:
        _compose(overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_mixup_is_built_from_data_mixup_alpha_and_a_search_can_sample_it():
    from adastft.data import Mixup
    from adastft.training import build_mixup
    from tune.space import SearchSpec

    assert _compose([]).data.mixup_alpha is None and build_mixup(Config()) is None  # off until measured
    mixup = build_mixup(_compose(["data.mixup_alpha=0.2"]))
    assert isinstance(mixup, Mixup) and (mixup.alpha, mixup.p) == (0.2, 1.0)
    assert build_mixup(Config.from_dict({"data": {"mixup_alpha": 0.2, "augment": False}})) is None
    space = {"data.mixup_alpha": {"type": "loguniform", "low": 0.1, "high": 1.0}}
    SearchSpec.from_dict({"space": space, "points_to_evaluate": [{"data.mixup_alpha": 0.2}]}, Config())
    with pytest.raises(ConfigError, match=r"search.space.data.mixup_alpha: data.mixup_alpha must be > 0, got 0.0"):
        SearchSpec.from_dict({"space": {"data.mixup_alpha": {"type": "uniform", "low": 0.0, "high": 1.0}}}, Config())


def test_pcen_compression_composes_and_learns_from_learn_after_epoch():
    """stft=pcen and the keys it sets, from Hydra and from a dict; the recipe switches PCEN's
    parameters on with the window's and kernel's rule."""
    from types import SimpleNamespace

    from adastft.recipe import _set_learning

    cfg = _compose(["stft=pcen", "stft.pcen_delta=0.5", "stft.learn_after_epoch=1"])
    assert (cfg.stft.compression, cfg.stft.learn_compression, cfg.stft.pcen_delta) == ("pcen", True, 0.5)
    assert not cfg.stft.learn_window and not cfg.stft.learn_kernel
    assert (
        Config.from_dict(
            {"stft": {"compression": "pcen", "learn_compression": True, "pcen_delta": 0.5, "learn_after_epoch": 1}}
        ).stft
        == cfg.stft
    )
    model = build_model(cfg, num_classes=10)
    torch.testing.assert_close(model.frontend.pcen.values()["delta"], torch.full((128,), 0.5))
    state = SimpleNamespace(
        cfg=cfg,
        model=model,
        switches=None,
        net=None,
        ctx=SimpleNamespace(distributed=False, device=torch.device("cpu")),
    )
    for epoch, learns in ((0, False), (1, True)):
        _set_learning(state, epoch)
        assert model.frontend.learn_compression == learns and not model.frontend.learn_window
        assert all(p.requires_grad == learns for p in model.frontend.pcen.parameters())


def test_overrides_reach_the_config():
    cfg = _compose(["stft=learn_kernel", "stft.n_fft=2048", "+tracking.tags.team=a", "optim.lr=0.01"])
    stft = cfg.stft
    assert (stft.learn_kernel, stft.learn_window, stft.n_fft, stft.hop_length) == (True, False, 2048, 512)
    assert cfg.tracking.tags == {"team": "a"} and cfg.optim.lr == 0.01


def test_one_run_validates_its_config_once_and_each_multirun_job_once(tmp_path):
    """``python -m adastft.train``: the config precheck validated is the one the run trains with;
    with -m each job's is validated (training is stubbed: only the validations are counted)."""
    code = (
        "import sys; import adastft.config as c, adastft.training as t; calls = []; validate = c.Config.validate;"
        "c.Config.validate = lambda self: (calls.append(1), validate(self))[1];"
        "t.train = lambda cfg, *a, **k: {'best_val_clip_accuracy': 0.0};"
        "from adastft.train import main; sys.argv = ['adastft.train', *sys.argv[1:]];"
        "exec('try: main()\\nexcept SystemExit: pass'); print('validations', len(calls))"
    )
    for args, count in (
        (["tracking=off", f"train.out_dir={tmp_path}/run"], 1),
        (["-m", "tracking=off", "train.seed=0,1"], 2),
    ):
        proc = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert f"validations {count}" in proc.stdout, proc.stdout + proc.stderr[-2000:]


@pytest.mark.parametrize(
    "args,message",
    [
        (["train.epochs=abc"], "adastft.train: error: train.epochs must be an integer, got 'abc'"),
        (["data=gtzan"], "adastft.train: error: data.root is required"),
        (["+train.epoch=3"], "adastft.train: error: unknown key 'train.epoch' (did you mean 'epochs'?)"),
        (["data=gtzan", "data.root=/nonexistent"], "adastft.train: error: GTZAN root '/nonexistent' does not exist"),
        (
            ["tracking=server", "tracking.uri=http://127.0.0.1:9"],
            "adastft.train: error: MLflow tracking server http://127.0.0.1:9 is unreachable",
        ),
    ],
)
def test_cli_rejects_bad_config_before_work(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "adastft.train", *args, f"train.out_dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
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
    lines = advice(
        Config.from_dict(
            {
                "optim": {"lr": 5.0},
                "stft": {"lr": 0.5, "hop_length": 2048, "learn_window": True, "learn_after_epoch": 30},
            }
        )
    )
    assert lines == [
        "optim.lr=5 is far above adamw's usual range (at most 0.1): training will most likely diverge",
        "stft.lr=0.5 is far above adamw's usual range (at most 0.1): training will most likely diverge",
        "stft.hop_length=2048 is longer than the window (1024 samples): 1024 samples between frames are never seen",
        "stft.learn_after_epoch=30 is not before the last epoch (train.epochs=30): the front end never learns",
    ]
    assert advice(Config.from_dict({"optim": {"name": "sgd", "lr": 0.5}})) == []  # SGD's range is wider
    assert advice(Config.from_dict({"data": {"augment": False, "mixup_alpha": 0.4}})) == [
        "data.augment=false switches every training augmentation off, data.mixup_alpha=0.4 too: "
        "set data.augment=true to mix"
    ]
    assert advice(Config.from_dict({"stft": {"learn_compression": True}})) == [
        "stft.learn_compression=true does nothing with stft.compression=log1p: only pcen has parameters to learn"
    ]
    assert advice(_compose(["stft=pcen"])) == []
    assert advice(Config.from_dict({"optim": {"warmup_epochs": 5}, "train": {"epochs": 1}})) == [
        "optim.warmup_epochs=5 is more than half of train.epochs=1: the warm-up is cut to 0.5 epochs so that the "
        "learning rate still decays; lower optim.warmup_epochs or raise train.epochs"
    ]
    assert advice(Config.from_dict({"train": {"epochs": 1}})) == []  # the default's cut is documented


def test_the_commands_print_advice_before_work(tmp_path):
    """The search prints it before anything else is checked (a closed --address here ends it before
    Ray); a key the search space samples gets none."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [
            sys.executable,
            str(CONFIG_DIR.parents[1] / "tune/search.py"),
            "--address",
            f"127.0.0.1:{port}",
            "experiment=quickstart",
            "optim.lr=3",
            "stft.learn_after_epoch=30",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("search: warning:")]
    assert warnings == [
        "search: warning: stft.learn_after_epoch=30 is not before the last epoch (train.epochs=5): "
        "the front end never learns"
    ], proc.stderr  # optim.lr: the default space samples it


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
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "adastft.train",
            "experiment=quickstart",
            "stft.n_fft=131072",
            "stft.hop_length=32768",
            "stft.learn_kernel=true",
            "data.parts=1",
            "data.clip_seconds=6",
            "tracking=off",
            f"train.out_dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("adastft.train: error: the model needs at least 320."), lines[-1]
    assert "stft.n_fft=131072" in lines[-1]
    assert time.monotonic() - started < 60
    assert not (tmp_path / ".cache").exists()  # the data cache was not built


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"batch_size": 0}, "data.batch_size must be a positive integer, got 0"),
        ({"eval_batch_size": 0}, "data.eval_batch_size must be a positive integer, got 0"),
        ({"num_workers": -1}, "data.num_workers must be an integer >= 0, got -1"),
    ],
)
def test_batching_is_checked_once_by_the_loaders_check_and_named_by_its_key(bad, message):
    from adastft.data import check_batching

    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        Config.from_dict({"data": bad})
    argument = next(iter(bad)).replace("eval_", "")
    with pytest.raises(ValueError, match=f"^{re.escape(message.removeprefix('data.').replace('eval_', ''))}$"):
        check_batching(**{"batch_size": 1, argument: bad[next(iter(bad))]})


def test_a_space_checks_the_stft_shape_keys_together_and_the_default_space_fits_a_small_base():
    import yaml

    from tune.space import SearchSpec

    default = yaml.safe_load((CONFIG_DIR / "search" / "default.yaml").read_text())
    assert "optim.gamma" not in default["space"] and {
        "stft.n_fft",
        "stft.n_mels",
        "stft.learn_win_length",
        "stft.compression",
        "data.mixup_alpha",
    } <= set(default["space"])
    small = Config.from_dict(
        {
            "data": {"sample_rate": 8000, "clip_seconds": 2.0, "parts": 2},
            "stft": {"n_fft": 256, "hop_length": 128, "n_mels": 32},
        }
    )
    SearchSpec.from_dict(default, small)  # n_mels=96 alone would not fit n_fft=256, but n_fft is sampled too
    SearchSpec.from_dict(default, Config())
    space = {
        "stft.n_fft": {"type": "categorical", "choices": [512, 1024]},
        "stft.n_mels": {"type": "categorical", "choices": [64, 96]},
    }
    with pytest.raises(
        ConfigError,
        match=r"search.space.\{stft.n_fft=512, stft.n_mels=96\}: stft.n_mels=96 leaves 1 "
        r"empty mel filters with stft.n_fft=512",
    ):
        SearchSpec.from_dict({"space": space}, Config())
