"""The resolved training configuration: typed, validated once, plain data everywhere after.

``Config.from_dict`` turns a nested mapping (what Hydra composes, what Tune samples into, what a
checkpoint stores) into dataclasses, rejecting an unknown key or a bad value with one line that
names it. ``Config.to_dict`` goes back to plain data for MLflow params and checkpoints.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping


class ConfigError(ValueError):
    """A bad configuration key or value; the message is one line naming the key."""


@dataclass
class DataConfig:
    source: str = "synthetic"  # synthetic | gtzan | folder
    root: str | None = None  # GTZAN or folder root; unused for synthetic
    cache_dir: str = ".cache/adastft"
    sample_rate: int = 22050
    clip_seconds: float = 30.0
    split: str = "standard"  # standard (GTZAN's artist-filtered lists) | random (seeded, stratified)
    split_files: dict[str, str | list[str]] | None = None  # {train: names or a list file, val: ..., test: ...}
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    on_bad: str = "skip"  # skip | error
    synthetic_clips_per_class: int = 20
    parts: int = 12  # training crop = clip / parts; evaluation votes over `parts` segments
    crops_per_clip: int = 4  # random training crops drawn per clip per epoch (1: the original's recipe)
    eval_parts: int | None = 3  # validate on at most this many evenly spaced parts per clip; None: all `parts`
    batch_size: int = 16
    eval_batch_size: int = 8  # clips per evaluation batch (each clip is `parts` segments)
    num_workers: int = 0
    vote: str = "majority"  # majority | mean
    augment: bool = True
    noise_snr_db: list[float] | None = field(default_factory=lambda: [10.0, 40.0])
    gain_db: list[float] | None = field(default_factory=lambda: [-6.0, 6.0])
    max_delay_s: float | None = 0.1
    time_masks: int = 2  # SpecAugment masks per example (0 = off), widths below
    time_mask_frames: int = 8
    freq_masks: int = 2
    freq_mask_bins: int = 8

    def spec(self):
        """The :class:`adastft.data.DataSpec` these settings describe (validated by it)."""
        from adastft.data import DataSpec

        return DataSpec(
            source=self.source, root=self.root, cache_dir=self.cache_dir, sample_rate=self.sample_rate,
            clip_seconds=self.clip_seconds, split=self.split, split_files=self.split_files,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction, seed=self.seed, on_bad=self.on_bad,
            synthetic_clips_per_class=self.synthetic_clips_per_class,
        )

    def validate(self, where: str) -> None:
        _choice(where, "source", self.source, ("synthetic", "gtzan", "folder"))
        _choice(where, "split", self.split, ("standard", "random"))
        _choice(where, "on_bad", self.on_bad, ("skip", "error"))
        _choice(where, "vote", self.vote, ("majority", "mean"))
        if self.source != "synthetic" and not self.root:
            raise ConfigError(f"{where}.root must be set for source={self.source!r}: the folder that holds the audio")
        for name in ("sample_rate", "synthetic_clips_per_class", "parts", "batch_size", "eval_batch_size"):
            _positive(where, name, getattr(self, name))
        if self.crops_per_clip < 1:
            raise ConfigError(f"{where}.crops_per_clip must be >= 1 (random crops per clip per epoch; 1 is the "
                              f"original's recipe), got {self.crops_per_clip!r}")
        if self.eval_parts is not None and self.eval_parts < 1:
            raise ConfigError(f"{where}.eval_parts must be >= 1 (evaluate on at most that many evenly spaced parts), "
                              f"or null to vote over every part, got {self.eval_parts!r}")
        _positive(where, "clip_seconds", self.clip_seconds)
        for name in ("num_workers", "time_masks", "time_mask_frames", "freq_masks", "freq_mask_bins"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be in [0, 1), got {getattr(self, name)!r}")
            # a run validates every epoch and ends by testing: neither split may be empty
            split = name.split("_")[0]
            if self.split_files is not None and split not in self.split_files and "train" in self.split_files:
                raise ConfigError(f"{where}.split_files has no {split!r} list, but training needs one: add it")
            if getattr(self, name) == 0 and self.split_files is None and (self.source, self.split) != ("gtzan", "standard"):
                raise ConfigError(f"{where}.{name}=0 leaves the {split} split empty, but training needs it: "
                                  f"set it above 0 (e.g. 0.2), or give {where}.split_files with a {split} list")
        for name in ("noise_snr_db", "gain_db"):
            value = getattr(self, name)
            if value is not None and (len(value) != 2 or value[0] > value[1]):
                raise ConfigError(f"{where}.{name} must be [low, high] with low <= high, got {value!r}")


@dataclass
class StftConfig:
    n_fft: int = 1024
    win_length: int | None = None
    hop_length: int | None = 512
    n_mels: int | None = 128
    f_min: float = 0.0
    f_max: float | None = None
    window: str = "hann"
    center: bool = True
    pad_mode: str = "reflect"
    power: float = 2.0
    norm: str | None = None
    mel_scale: str = "htk"
    compression: str = "log1p"
    log_gain: float = 10.0
    learn_window: bool = False
    learn_kernel: bool = False
    learn_after_epoch: int = 0  # learning (if on) starts at this epoch (0-based)
    lr: float | None = None  # the front end's own learning rate; None = optim.lr

    def validate(self, where: str) -> None:
        if self.learn_after_epoch < 0:
            raise ConfigError(f"{where}.learn_after_epoch must be >= 0, got {self.learn_after_epoch!r}")
        if self.lr is not None:
            _positive(where, "lr", self.lr)

    def layer_kwargs(self, sample_rate: int) -> dict[str, Any]:
        """Arguments for :class:`adastft.AdaSTFT` (learning switches off: training sets them)."""
        skip = {"learn_window", "learn_kernel", "learn_after_epoch", "lr"}
        kwargs = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        return {"sample_rate": sample_rate, **kwargs}


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # any torchvision ResNet: resnet18/34/50/101/152, resnext*, wide_resnet*
    n_frontends: int = 1  # 1: one front end copied to the 3 channels; 3: three independent ones
    activation: str | None = None  # None | leaky_relu (the original's proposal)
    norm: str = "batch"  # batch | instance | none, applied to the spectrogram channels
    dropout: float = 0.2
    pretrained_path: str | None = None  # a local state-dict file for the backbone; never downloaded

    def validate(self, where: str) -> None:
        from adastft.model import BACKBONES  # torchvision's list, kept in one place

        _choice(where, "backbone", self.backbone, BACKBONES)
        _choice(where, "n_frontends", self.n_frontends, (1, 3))
        _choice(where, "activation", self.activation, (None, "leaky_relu"))
        _choice(where, "norm", self.norm, ("batch", "instance", "none"))
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{where}.dropout must be in [0, 1), got {self.dropout!r}")


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd (momentum 0.9)
    lr: float = 0.004217059205126061
    weight_decay: float = 0.01
    momentum: float = 0.9
    gamma: float = 0.9974547047513221  # ExponentialLR, stepped once per epoch
    schedule: str = "cosine"  # exponential (ExponentialLR by gamma, per epoch) | cosine (per step)
    warmup_epochs: float = 1.0  # cosine only: linear warm-up over this many epochs (at most half the run), then cosine to 0

    def validate(self, where: str) -> None:
        _choice(where, "name", self.name, ("adamw", "sgd"))
        _choice(where, "schedule", self.schedule, SCHEDULES)
        if self.warmup_epochs < 0:
            raise ConfigError(f"{where}.warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if self.warmup_epochs and self.schedule != "cosine":
            raise ConfigError(f"{where}.warmup_epochs={self.warmup_epochs:g} needs {where}.schedule=cosine "
                              f"(the exponential schedule has no warm-up): set {where}.schedule=cosine or "
                              f"{where}.warmup_epochs=0")
        _positive(where, "lr", self.lr)
        if self.weight_decay < 0:
            raise ConfigError(f"{where}.weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"{where}.gamma must be in (0, 1], got {self.gamma!r}")


@dataclass
class TrainConfig:
    epochs: int = 30
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA; ignored on CPU
    out_dir: str = "runs/default"  # checkpoints (last.pt, best.pt) and local artifacts
    resume: bool = True  # continue from out_dir/last.pt when it exists
    threads: int | None = None  # torch CPU threads; None = torch's default
    max_batches: int | None = None  # cap batches per epoch (smoke runs, benches)

    def validate(self, where: str) -> None:
        _positive(where, "epochs", self.epochs)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"{where}.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for name in ("threads", "max_batches"):
            if getattr(self, name) is not None:
                _positive(where, name, getattr(self, name))


SCHEDULES = ("exponential", "cosine")
TENSOR_FORMATS = ("npy", "pt")


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: sqlite:///mlflow.db in the working directory
    experiment: str = "adastft"
    run_name: str | None = None
    parent_run_id: str | None = None  # set by the search: trials are nested under the study's run
    run_id: str | None = None  # continue this run instead of starting one (the search's retries)
    # The best model is always logged once, as checkpoint/best_model.pt (what predict loads);
    # log_model adds a second copy as an MLflow LoggedModel (pickled, for mlflow.pytorch users).
    log_model: bool = False
    tensor_formats: list[str] = field(default_factory=lambda: ["npy"])  # learned tensors: npy and/or pt
    tags: dict[str, str] = field(default_factory=dict)
    # seconds between MLflow's system-metrics samples (CPU, memory, GPU); 0: none
    system_metrics_interval: float = 2.0

    def validate(self, where: str) -> None:
        if not self.experiment:
            raise ConfigError(f"{where}.experiment must be a non-empty name")
        formats = list(self.tensor_formats or [])
        if not formats or any(f not in TENSOR_FORMATS for f in formats) or len(set(formats)) < len(formats):
            raise ConfigError(f"{where}.tensor_formats must be a non-empty list of distinct formats from "
                              f"{list(TENSOR_FORMATS)}, got {self.tensor_formats!r}")


@dataclass
class Config:
    name: str = "default"  # the experiment's name; becomes the MLflow tag `experiment`
    data: DataConfig = field(default_factory=DataConfig)
    stft: StftConfig = field(default_factory=StftConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None) -> "Config":
        """Build and validate. Raises :class:`ConfigError` naming the first bad key."""
        cfg = _build(cls, dict(data or {}), "")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.validate(f.name)
        try:
            from adastft.layer import check_arguments

            check_arguments(**self.stft.layer_kwargs(self.data.sample_rate))
        except ValueError as exc:  # the layer names the argument; say where it lives
            raise ConfigError(f"stft: {exc}") from None
        try:
            self.data.spec()
        except ValueError as exc:  # DataSpec names the field; say where it lives
            raise ConfigError(f"data: {exc}") from None
        crop = self.data.clip_seconds / self.data.parts
        n_fft = self.stft.n_fft
        if crop * self.data.sample_rate <= n_fft // 2:
            raise ConfigError(
                f"data.parts={self.data.parts} makes {crop:.3g} s crops, too short for stft.n_fft={n_fft}: "
                "use fewer parts or longer clips"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merged(self, overrides: Mapping[str, Any]) -> "Config":
        """A new validated config with dotted-key overrides, ``{"optim.lr": 1e-3}``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    raise ConfigError(f"unknown key {dotted!r}: {key!r} is not a config section")
                node = node[key]
            node[leaf] = value
        return Config.from_dict(data)


def _build(cls: type, data: dict[str, Any], where: str):
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            path = f"{where}.{key}" if where else str(key)
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(fields)})"
            raise ConfigError(f"unknown key {path!r}{hint}")
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value if value is not None else {}, path)
        else:
            kwargs[name] = _coerce(value, hint, path)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Check ``value`` against a type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        if item is str:  # tags: any scalar, as text
            return {str(k): str(v) for k, v in value.items()}
        return {str(k): _coerce(v, item, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"{path} must be a finite number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path} must be a string, got {value!r}")
    raise TypeError(f"config type {hint!r} at {path} is not supported")  # a bug in this module


def _choice(where: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        close = difflib.get_close_matches(value, [a for a in allowed if isinstance(a, str)], n=1) \
            if isinstance(value, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}.{name} must be one of {shown}, got {value!r}{hint}")


def _positive(where: str, name: str, value: Any) -> None:
    if not value > 0:
        raise ConfigError(f"{where}.{name} must be > 0, got {value!r}")
