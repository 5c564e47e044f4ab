"""Search settings from ``adastft/configs/search/*.yaml`` and ``adastft/configs/scheduler/*.yaml``, validated.

The space is a mapping of config keys (``optim.lr``) to distributions; it becomes an Optuna
define-by-run function, and every key and first point is checked against the training config
before Ray starts.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from adastft.config import Config, ConfigError

DISTRIBUTIONS = ("categorical", "uniform", "loguniform", "int")
# Keys whose valid values depend on each other (a mel filter is empty or not for a given n_fft and
# sample rate; a crop must hold a frame): a space is checked over every combination of their corners.
SHAPE_KEYS = (
    "stft.n_fft",
    "stft.win_length",
    "stft.hop_length",
    "stft.n_mels",
    "stft.f_min",
    "stft.f_max",
    "data.sample_rate",
    "data.clip_seconds",
    "data.parts",
)
SCHEDULERS = ("asha", "median", "none")


@dataclass
class SearchSpec:
    metric: str = "val_clip_accuracy"
    mode: str = "max"
    seed: int = 0
    n_startup_trials: int = 10
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Config) -> "SearchSpec":
        known = {f for f in cls.__dataclass_fields__}
        for key in data:
            if key not in known:
                raise ConfigError(f"unknown key 'search.{key}' (known: {', '.join(sorted(known))})")
        spec = cls(**{k: v for k, v in data.items()})
        spec.validate(base)
        return spec

    def validate(self, base: Config) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigError(f"search.mode must be min or max, got {self.mode!r}")
        if not self.space:
            raise ConfigError("search.space is empty: give at least one key to search")
        for key, dist in self.space.items():
            kind = dist.get("type") if isinstance(dist, Mapping) else None
            if kind not in DISTRIBUTIONS:
                raise ConfigError(f"search.space.{key}.type must be one of {', '.join(DISTRIBUTIONS)}, got {kind!r}")
            if kind == "categorical":
                if not dist.get("choices"):
                    raise ConfigError(f"search.space.{key}.choices must be a non-empty list")
            else:
                low, high = dist.get("low"), dist.get("high")
                if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and low < high):
                    raise ConfigError(f"search.space.{key} needs numbers low < high, got low={low!r} high={high!r}")
                if kind == "loguniform" and low <= 0:
                    raise ConfigError(f"search.space.{key}.low must be > 0 for loguniform, got {low!r}")
            # every value the space can produce must make a valid training config (the keys that
            # shape the STFT together are checked together, below)
            if key not in SHAPE_KEYS:
                for value in _corners(dist):
                    _check_point(base, {key: value}, f"search.space.{key}")
        shape = [key for key in self.space if key in SHAPE_KEYS]
        for values in itertools.product(*(_corners(self.space[key]) for key in shape)):
            point = dict(zip(shape, values))
            _check_point(
                base,
                point,
                "search.space."
                + (shape[0] if len(shape) == 1 else "{" + ", ".join(f"{k}={v!r}" for k, v in point.items()) + "}"),
            )
        for i, point in enumerate(self.points_to_evaluate):
            unknown = set(point) - set(self.space)
            if unknown:
                raise ConfigError(
                    f"search.points_to_evaluate[{i}] has keys outside the space: {', '.join(sorted(unknown))}"
                )
            _check_point(base, point, f"search.points_to_evaluate[{i}]")

    def define_by_run(self) -> "Sampler":
        """The Optuna define-by-run function that samples this space (picklable: Tune saves it)."""
        return Sampler(self.space)


class Sampler:
    """Samples a search space on an Optuna trial: ``Sampler(space)(trial)``."""

    def __init__(self, space: Mapping[str, Mapping[str, Any]]) -> None:
        self.space = {k: dict(v) for k, v in space.items()}

    def __call__(self, trial) -> None:
        for key, dist in self.space.items():
            kind = dist["type"]
            if kind == "categorical":
                trial.suggest_categorical(key, list(dist["choices"]))
            elif kind == "uniform":
                trial.suggest_float(key, dist["low"], dist["high"])
            elif kind == "loguniform":
                trial.suggest_float(key, dist["low"], dist["high"], log=True)
            else:
                trial.suggest_int(key, int(dist["low"]), int(dist["high"]), log=bool(dist.get("log", False)))


@dataclass
class SchedulerSpec:
    type: str = "asha"
    grace_period: int = 1
    reduction_factor: int = 2
    min_samples_required: int = 3

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SchedulerSpec":
        known = set(cls.__dataclass_fields__)
        for key in data:
            if key not in known:
                raise ConfigError(f"unknown key 'scheduler.{key}' (known: {', '.join(sorted(known))})")
        spec = cls(**dict(data))
        if spec.type not in SCHEDULERS:
            raise ConfigError(f"scheduler.type must be one of {', '.join(SCHEDULERS)}, got {spec.type!r}")
        for name in ("grace_period", "reduction_factor", "min_samples_required"):
            value = getattr(spec, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"scheduler.{name} must be an integer >= 1, got {value!r}")
        if spec.reduction_factor < 2:
            raise ConfigError(f"scheduler.reduction_factor must be >= 2, got {spec.reduction_factor!r}")
        return spec


def _corners(dist: Mapping[str, Any]) -> list[Any]:
    if dist["type"] == "categorical":
        return list(dist["choices"])
    low, high = dist["low"], dist["high"]
    if dist["type"] == "int":
        return [int(low), int(high)]
    return [float(low), float(high) if math.isfinite(high) else float(low)]


def _check_point(base: Config, point: Mapping[str, Any], where: str) -> None:
    try:
        base.merged(point)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
