"""The resolved training configuration: typed, validated once, plain data everywhere after.

``Config.from_dict`` turns a nested mapping (what Hydra composes, what Tune samples into, what a
checkpoint stores) into dataclasses, rejecting an unknown key or a bad value with one line that
names it. ``Config.to_dict`` goes back to plain data for MLflow params and checkpoints.

A value is checked by the class that takes it (``AdaSTFT``, ``DataSpec``, the datasets,
``Augment``, ``Mixup``, the classifier, the schedule): :meth:`Config.validate` hands each its keys
as arguments and puts the key in its message (``n_fft must be ...`` -> ``stft.n_fft must be ...``).
A section's own ``validate`` checks only what no class takes (the optimiser, the run, tracking,
and what training needs of the splits).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from adastft.checks import one_of
from adastft.config_types import ConfigError, build, check_key_of, coerce
from adastft.layer import SWITCHES, AdaSTFT
from adastft.layer_checks import min_input_length


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
    # mixup of waveforms and labels, lambda ~ Beta(mixup_alpha, mixup_alpha) per example; None: off.
    # Off until a measurement on real audio (GTZAN) chooses the default.
    mixup_alpha: float | None = None

    def spec(self):
        """The :class:`adastft.data.DataSpec` these settings describe (validated by it)."""
        from adastft.data import DataSpec

        return _check(DataSpec, "data", _arguments("data", self, DataSpec))

    def validate(self, where: str) -> None:
        for name in ("val_fraction", "test_fraction"):
            # a run validates every epoch and ends by testing: neither split may be empty
            split = name.split("_")[0]
            if self.split_files is not None and split not in self.split_files and "train" in self.split_files:
                raise ConfigError(f"{where}.split_files has no {split!r} list, but training needs one: add it")
            if (
                getattr(self, name) == 0
                and self.split_files is None
                and (self.source, self.split) != ("gtzan", "standard")
            ):
                raise ConfigError(
                    f"{where}.{name}=0 leaves the {split} split empty, but training needs it: "
                    f"set it above 0 (e.g. 0.2), or give {where}.split_files with a {split} list"
                )


# The stft section's keys are AdaSTFT's arguments, read from its signature with its defaults (not
# sample_rate: that is data.sample_rate; the learning switches are training's, below), except
# these defaults of the training recipe:
STFT_DEFAULTS = {
    "hop_length": 512,  # the original's; the layer's (torchaudio's) is win_length // 2, also 512 at n_fft=1024 only
    "compression": "log1p",  # the original's log(1 + log_gain x) into the ResNet; the layer's is torchaudio's none
}


def _layer_fields(layer: type, skip: tuple[str, ...], defaults: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``make_dataclass`` fields for ``layer``'s constructor arguments: name, type hint, default."""
    hints = typing.get_type_hints(layer.__init__)
    return [
        (p.name, hints[p.name], field(default=defaults.get(p.name, p.default)))
        for p in inspect.signature(layer).parameters.values()
        if p.name not in skip
    ]


StftArguments = dataclasses.make_dataclass(
    "StftArguments", _layer_fields(AdaSTFT, skip=("sample_rate", *SWITCHES), defaults=STFT_DEFAULTS)
)
StftArguments.__module__ = __name__  # where pickle finds it


@dataclass
class StftConfig(StftArguments):
    """The stft section: :class:`adastft.AdaSTFT`'s arguments (:data:`StftArguments`) and training's."""

    learn_window: bool = False
    learn_kernel: bool = False
    learn_compression: bool = False  # PCEN's parameters (stft.compression=pcen); the others have none
    learn_after_epoch: int = 0  # learning (if on) starts at this epoch (0-based)
    # The window's and kernel's learning rate (None: optim.lr; PCEN's and the window length's few
    # parameters always learn at optim.lr). 1e-4, a fortieth of the back end's: on the real-music
    # dev set, learning window and kernel at optim.lr lost accuracy against the fixed front end, at
    # 1e-4 it did not (docs/results.md).
    lr: float | None = 1e-4

    def validate(self, where: str) -> None:
        if self.learn_after_epoch < 0:
            raise ConfigError(f"{where}.learn_after_epoch must be >= 0, got {self.learn_after_epoch!r}")
        if self.lr is not None:
            _positive(where, "lr", self.lr)

    def layer_kwargs(self, sample_rate: int) -> dict[str, Any]:
        """Arguments for :class:`adastft.AdaSTFT` (learning switches off: training sets them)."""
        return {
            "sample_rate": sample_rate,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(StftArguments)},
        }


@dataclass
class ModelConfig:
    backbone: str = "resnet18"  # any torchvision ResNet: resnet18/34/50/101/152, resnext*, wide_resnet*; cnn4 (small)
    n_frontends: int = 1  # 1: one front end copied to the 3 channels; 3: three independent ones
    activation: str | None = None  # None | leaky_relu (the original's proposal)
    norm: str = "batch"  # batch | instance | none, applied to the spectrogram channels
    dropout: float = 0.2
    pretrained_path: str | None = None  # a local state-dict file for the backbone; never downloaded


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd (momentum 0.9)
    lr: float = 0.004217059205126061
    weight_decay: float = 0.01
    momentum: float = 0.9
    gamma: float = 0.9974547047513221  # ExponentialLR, stepped once per epoch
    schedule: str = "cosine"  # exponential (ExponentialLR by gamma, per epoch) | cosine (per step)
    warmup_epochs: float = (
        1.0  # cosine only: linear warm-up over this many epochs (at most half the run), then cosine to 0
    )

    def validate(self, where: str) -> None:  # the schedule's keys: adastft.schedule.check_schedule
        _choice(where, "name", self.name, ("adamw", "sgd"))
        _positive(where, "lr", self.lr)
        if self.weight_decay < 0:
            raise ConfigError(f"{where}.weight_decay must be >= 0, got {self.weight_decay!r}")


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
            raise ConfigError(
                f"{where}.tensor_formats must be a non-empty list of distinct formats from "
                f"{list(TENSOR_FORMATS)}, got {self.tensor_formats!r}"
            )


@dataclass
class Config:
    """The whole run: one section per component, each a dataclass of plain values. Built and
    validated by :meth:`from_dict`; :meth:`merged` validates again, :meth:`replaced` (paths, names)
    does not."""

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
        cfg = build(cls, dict(data or {}))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Every value checked once: by the class that takes it, or by its section (what none takes)."""
        from adastft.data import Augment, Mixup, SpecAugment, check_batching, check_parts
        from adastft.data.vote import check_method
        from adastft.model import AdaSTFTClassifier
        from adastft.schedule import check_schedule

        d = self.data
        d.spec()
        _check(check_parts, "data", _arguments("data", d, check_parts))
        _check(check_batching, "data", _arguments("data", d, check_batching))
        _check(check_batching, "data", _arguments("data", d, check_batching, {"batch_size": "eval_batch_size"}))
        _check(check_method, "data", {"method": ("data.vote", d.vote)})
        _check(Augment, "data", _arguments("data", d, Augment))
        _check(SpecAugment, "data", _arguments("data", d, SpecAugment, SPEC_AUGMENT_KEYS))
        if d.mixup_alpha is not None:
            _check(Mixup, "data", _arguments("data", d, Mixup, MIXUP_KEYS))
        _check(
            AdaSTFT.check_arguments,
            "stft",
            {**_arguments("stft", self.stft, AdaSTFT), "sample_rate": ("data.sample_rate", d.sample_rate)},
        )
        _check(
            AdaSTFTClassifier.check_arguments,
            "model",
            _arguments("model", self.model, AdaSTFTClassifier.check_arguments),
        )
        _check(check_schedule, "optim", _arguments("optim", self.optim, check_schedule))
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate(f.name)
        crop_samples = round(d.clip_seconds * d.sample_rate) // d.parts  # as the datasets cut them
        if crop_samples < min_input_length(self.stft.n_fft, self.stft.center):
            raise ConfigError(
                f"data.parts={d.parts} makes {d.clip_seconds / d.parts:.3g} s crops, too short for "
                f"stft.n_fft={self.stft.n_fft}: use fewer parts or longer clips"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def merged(self, overrides: Mapping[str, Any]) -> "Config":
        """A new validated config with dotted-key overrides, ``{"optim.lr": 1e-3}``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            check_key(dotted)
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {}) if node.get(key) is None else node[key]
            node[leaf] = value
        return Config.from_dict(data)

    def replaced(self, changes: Mapping[str, Any]) -> "Config":
        """A copy with dotted-key changes to :data:`RUN_KEYS` only (where the run reads, writes and
        runs, and how it is recorded), each type-checked but nothing re-validated: moving a file
        or naming a run changes nothing that was. Example: ``cfg.replaced({"train.out_dir": d})``.
        Any other key: :meth:`merged`, which validates the whole config."""
        sections: dict[str, dict[str, Any]] = {}
        for dotted, value in changes.items():
            if dotted not in RUN_KEYS:
                raise ConfigError(
                    f"{dotted!r} is not one of the keys replaced() changes unchecked "
                    f"({', '.join(sorted(RUN_KEYS))}): use merged()"
                )
            name, key = dotted.split(".")
            hint = typing.get_type_hints(type(getattr(self, name)))[key]
            sections.setdefault(name, {})[key] = coerce(value, hint, dotted)
        return dataclasses.replace(
            self, **{name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()}
        )


# Keys that say where a run reads, writes and runs and how it is recorded, not what it trains.
RUN_KEYS = frozenset(
    {
        "data.root",
        "data.cache_dir",
        "data.split_files",
        "model.pretrained_path",
        "train.out_dir",
        "train.resume",
        "train.device",
        "train.threads",
        "tracking.uri",
        "tracking.run_name",
        "tracking.parent_run_id",
        "tracking.run_id",
        "tracking.tags",
    }
)


def check_key(dotted: str) -> None:
    """Raise :class:`ConfigError` unless ``dotted`` is a key of :class:`Config`:
    ``unknown key 'train.epoch' (did you mean 'epochs'?)`` (see :func:`check_key_of`)."""
    check_key_of(Config, dotted)


# SpecAugment's arguments and the data keys that give them
SPEC_AUGMENT_KEYS = {
    "freq_mask_param": "freq_mask_bins",
    "time_mask_param": "time_mask_frames",
    "n_freq_masks": "freq_masks",
    "n_time_masks": "time_masks",
}
# Mixup's arguments and the data keys that give them
MIXUP_KEYS = {"alpha": "mixup_alpha"}


def _arguments(
    where: str, section: Any, owner: Callable[..., Any], renamed: Mapping[str, str] | None = None
) -> dict[str, tuple[str, Any]]:
    """``{argument: (key, value)}`` for each of ``owner``'s arguments that a key of ``section`` gives:
    the key of the same name, or ``renamed[argument]``."""
    keys = {f.name for f in dataclasses.fields(section)}
    out = {}
    for name in inspect.signature(owner).parameters:
        key = (renamed or {}).get(name, name)
        if key in keys:
            out[name] = (f"{where}.{key}", getattr(section, key))
    return out


def arguments_for(owner: Callable[..., Any], section: Any, renamed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The keyword arguments ``section`` gives ``owner``: the one mapping from config keys to a
    class's arguments, used both to validate (:meth:`Config.validate`) and to build (adastft/builders.py)."""
    return {name: value for name, (_, value) in _arguments("", section, owner, renamed).items()}


_NAME = re.compile(r"\b([a-z_][a-z0-9_]*)(?==)|^([a-z_][a-z0-9_]*)\b")


def _check(owner: Callable[..., Any], where: str, arguments: Mapping[str, tuple[str, Any]]) -> Any:
    """``owner(**{argument: value})`` for ``arguments`` ``{argument: (key, value)}``; its
    ``ValueError``, which starts with the argument's name, comes back naming the key instead
    (and each ``argument=`` in it), ``stft.n_fft must be ...``, or prefixed with ``where``."""
    try:
        return owner(**{name: value for name, (_, value) in arguments.items()})
    except ValueError as exc:
        message, keys = str(exc).strip(), {name: key for name, (key, _) in arguments.items()}
        first = re.match(r"[a-z_][a-z0-9_]*", message)
        keyed = _NAME.sub(lambda m: keys.get(m[1] or m[2], m[0]), message)
        raise ConfigError(keyed if first and first[0] in keys else f"{where}: {keyed}") from None


def _choice(where: str, name: str, value: Any, allowed: tuple) -> None:
    try:
        one_of(f"{where}.{name}", value, allowed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _positive(where: str, name: str, value: Any) -> None:
    if not value > 0:
        raise ConfigError(f"{where}.{name} must be > 0, got {value!r}")
