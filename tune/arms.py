"""The arms of a comparison, from Hydra sweep syntax: ``stft=fixed,learn_both``,
``experiment='glob(original_*)'``; several sweeps make every combination.

Pure configuration (no Ray): ``tune/compare.py`` expands and validates the arms before Ray starts.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from adastft.config import Config, ConfigError
from tune.settings import SearchError

SEED_KEY = "train.seed"  # what --seeds varies


@dataclass(frozen=True)
class Arm:
    name: str  # the swept choices, "stft=fixed model=resnet34", or "base" when nothing is swept
    overrides: tuple[str, ...]  # every override of this arm, in the order given


def expand_arms(overrides: list[str], config_dir: Path) -> list[Arm]:
    """One :class:`Arm` per combination of the sweeps in ``overrides`` (in the order given); the
    other overrides are common to all. Raises :class:`SearchError` naming a bad override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as exc:
            raise SearchError(f"cannot parse override {text!r}: {str(exc).strip().splitlines()[0]}") from None
        parsed.append((text, override))
    slots: list[list[str]] = []  # per override: its one text, or its sweep's choices
    for text, override in parsed:
        key = text.split("=", 1)[0]
        if key.lstrip("+~") == SEED_KEY:
            raise SearchError(f"{text!r}: --seeds sets {SEED_KEY} (0, 1, ...) for every arm: drop the override")
        if not override.is_sweep_override():
            slots.append([text])
            continue
        if isinstance(override.value(), Glob):
            group = override.key_or_group
            options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
            values = override.value().filter(options)
            if not values:
                raise SearchError(
                    f"{text!r} matches no option of adastft/configs/{group}/ (have: {', '.join(options) or 'none'})"
                )
        elif override.is_discrete_sweep():
            values = list(override.sweep_string_iterator())
        else:
            raise SearchError(f"{text!r}: an arm needs a list of values (a,b) or glob(...), not an interval")
        slots.append([f"{key}={value}" for value in values])
    arms = []
    for combination in itertools.product(*slots):
        swept = [chosen for chosen, slot in zip(combination, slots) if len(slot) > 1]
        arms.append(Arm(" ".join(swept) or "base", tuple(combination)))
    if len({arm.name for arm in arms}) < len(arms):
        raise SearchError("two arms have the same overrides: give each value once")
    return arms


def named_arms(specs: list[str], common: list[str]) -> list[Arm]:
    """Arms given as ``NAME:override override ...`` (``--arm``), each with the ``common`` overrides
    first; a sweep among ``common`` is refused (the arms are named, not swept)."""
    arms = []
    for spec in specs:
        name, sep, rest = spec.partition(":")
        name = name.strip()
        if not sep or not name or any(c.isspace() for c in name):
            raise SearchError(f"--arm {spec!r}: give NAME:OVERRIDES, e.g. --arm 'slow:stft=learn_both stft.lr=1e-4'")
        arms.append(Arm(name, (*common, *rest.split())))
    if len({arm.name for arm in arms}) < len(arms):
        raise SearchError("two --arm flags have the same name: name each arm once")
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    swept = [text for text in common if parser.parse_overrides([text])[0].is_sweep_override()]
    if swept:
        raise SearchError(
            f"{swept[0]!r}: with --arm the other overrides are common to every arm; move the sweep into the --arm flags"
        )
    return arms


def compose_arm(arm: Arm) -> Config:
    """The arm's validated training config; :class:`ConfigError` names the arm and the bad key."""
    from adastft.train import precheck

    try:
        cfg = precheck(list(arm.overrides))
    except ConfigError as exc:
        raise ConfigError(f"arm {arm.name!r}: {exc}") from None
    if cfg is None:  # precheck leaves Hydra's own flags to Hydra
        raise SearchError(f"arm {arm.name!r}: only key=value overrides are allowed, got {' '.join(arm.overrides)}")
    return cfg


def find_baseline(arms: list[Arm], wanted: str | None) -> Arm:
    """The arm ``--baseline`` names: its name, or one swept value (``fixed`` for ``stft=fixed``)
    that only it has; the first arm by default."""
    if wanted is None:
        return arms[0]
    for arm in arms:
        if arm.name == wanted:
            return arm
    matches = [arm for arm in arms if wanted in [part.split("=", 1)[1] for part in arm.name.split() if "=" in part]]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(repr(arm.name) for arm in arms)
    why = "matches several arms" if matches else "is not an arm"
    raise SearchError(f"--baseline {wanted!r} {why}: give one of {names}")
