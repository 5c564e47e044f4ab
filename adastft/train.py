"""Train one model from the Hydra configs in ``adastft/configs/`` (shipped inside the package).

Run: ``python -m adastft.train [group=option ...] [key=value ...]`` (or ``adastft-train``), e.g.
``python -m adastft.train stft=learn_both train.epochs=5``. The seven original trials:
``python -m adastft.train -m 'experiment=glob(original_*)' data.root=/path/to/GTZAN``.
DDP: ``torchrun --nproc-per-node 2 -m adastft.train ...``.

This is the edge where configuration becomes objects: Hydra is imported here, inside ``main``,
and nowhere in the library; ``adastft.training.train`` takes a plain mapping or a ``Config``.

Bad input is one line on stderr and exit status 2: the overrides are checked, composed and
validated once, before Hydra starts the run (so a bad key leaves no run folder), and the run uses
that config; an input the run itself finds bad (a missing data folder, an unreachable tracking
server) ends it the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import signal
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from adastft.checks import close_match
from adastft.config import Config, ConfigError, StftConfig, check_key

# Inside the package, so that an installed wheel finds them from any folder; a checkout and an
# editable install read the same files.
CONFIG_DIR = Path(str(resources.files("adastft") / "configs"))
log = logging.getLogger("adastft.train")


def resolve(dcfg: Any) -> Config:
    """A composed Hydra config to a validated :class:`Config`; one-line errors as ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        data = OmegaConf.to_container(dcfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or _first_line(exc)
        raise ConfigError(f"{key} is required: set it on the command line, e.g. {key}=...") from None
    except OmegaConfBaseException as exc:  # an interpolation that does not resolve
        raise ConfigError(_first_line(exc)) from None
    data.pop("hydra", None)
    return Config.from_dict(data)


def compose(overrides: list[str], config_dirs: Sequence[str] = (), sections: Sequence[str] = ()):
    """Check ``overrides`` and compose them with Hydra as ``@hydra.main`` does: the DictConfig.

    Each override is parsed with Hydra's override parser and checked here before Hydra composes:
    a key must be one of :class:`Config`'s (or lie under one of ``sections``, whose readers check
    them, like the search's ``search.*``); a group's option must be a file of that group under
    :data:`CONFIG_DIR` or one of ``config_dirs`` (``--config-dir``). An error Hydra still raises
    is reported by its first line. Raises :class:`ConfigError`, one line.
    """
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    dirs = [CONFIG_DIR, *(Path(d).expanduser().resolve() for d in config_dirs)]
    parser, parsed = OverridesParser.create(), {}
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as exc:
            raise ConfigError(f"cannot parse override {text!r}: {_first_line(exc)}") from None
        parsed[text] = override
        key = override.key_or_group
        if any((d / key).is_dir() for d in dirs):  # a config group: stft=learn_both
            _check_option(key, override, dirs)
        elif key.split(".")[0].split("/")[0] not in ("hydra", *sections):  # a key: stft.n_fft=2048
            check_key(key)
    search = [f"hydra.searchpath=[{','.join(f'file://{d}' for d in dirs[1:])}]"] if config_dirs else []
    store_defaults()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose("config", overrides=[*overrides, *search])
    except yaml.YAMLError as exc:  # a config file that does not parse
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}" if mark is not None else "a config file"
        raise ConfigError(f"{where} is not valid YAML: {getattr(exc, 'problem', None) or _first_line(exc)}") from None
    except (HydraException, OmegaConfBaseException) as exc:
        failed = getattr(exc.__cause__, "full_key", None)  # a key we know, missing from the composed config
        new = next(
            (text for text, o in parsed.items() if o.key_or_group == failed and o.type == OverrideType.CHANGE), None
        )
        if new:  # a new key inside a mapping (tracking.tags.team), as Hydra would say in its second line
            raise ConfigError(f"{failed} is not in the composed config: add it with +{new}") from None
        raise ConfigError(_first_line(exc)) from None


def _check_option(group: str, override, dirs: list[Path]) -> None:
    """A group's chosen option must be one of its files (``null`` and sweeps are Hydra's to judge)."""
    if override.is_delete() or override.is_sweep_override() or override.value() is None:
        return
    option = str(override.value())
    options = sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})
    if option not in options:
        close = close_match(option, options)
        hint = f"did you mean {close!r}?; " if close else ""
        raise ConfigError(f"{group}={option} is not an option of {group} ({hint}available: {', '.join(options)})")


def store_defaults() -> None:
    """Give Hydra the stft section's keys and defaults, read from :class:`StftConfig` (that is,
    from ``AdaSTFT``'s signature), as the config ``stft_defaults`` that ``stft/fixed.yaml``
    extends: every key exists for a command-line override without a copy of them in YAML."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="stft_defaults", node=dataclasses.asdict(StftConfig()))


_HYDRA_FLAGS_WITH_VALUE = ("--config-dir", "-cd")


def precheck(argv: list[str]) -> Config | None:
    """Compose ``argv``'s overrides as ``@hydra.main`` will and validate them; ``None`` when
    ``argv`` holds Hydra flags other than ``--config-dir`` (multirun, help, ...), left to Hydra.
    Then what the run would find bad before its first epoch: ``train.out_dir``, the backbone file,
    a damaged checkpoint to resume from.

    Raises :class:`ConfigError` with one line naming the bad override, key or value.
    """
    overrides, extra_dirs, args = [], [], list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name in _HYDRA_FLAGS_WITH_VALUE:
            extra_dirs.append(value if eq else (args.pop(0) if args else ""))
        elif arg.startswith("-"):
            return None
        else:
            overrides.append(arg)
    cfg = resolve(compose(overrides, extra_dirs))
    out_dir = Path(cfg.train.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"train.out_dir {str(out_dir)!r} is a file, not a folder")
    existing = next(p for p in (out_dir.absolute(), *out_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"train.out_dir {str(out_dir)!r} cannot be made: {existing} is "
            f"{'a file' if not existing.is_dir() else 'not writable'}; give another folder"
        )
    if cfg.model.pretrained_path:  # before the data is decoded
        from adastft.model import check_backbone_file

        try:
            check_backbone_file(cfg.model.pretrained_path)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if cfg.train.resume and (out_dir / "last.pt").is_file():  # likewise: a damaged or unsafe checkpoint
        from adastft.checkpoint import CheckpointError, load_checkpoint

        try:
            load_checkpoint(out_dir / "last.pt")
        except CheckpointError as exc:
            raise ConfigError(f"{exc}; delete it or set train.resume=false") from None
    return cfg


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Stopped(KeyboardInterrupt):
    """SIGTERM (``kill``, systemd, a scheduler) raised in the main thread like Ctrl-C's
    KeyboardInterrupt, so that training ends its MLflow run as KILLED and removes a half-written
    checkpoint's temporary file instead of dying mid-write."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# Stop signals received, kept after they are raised: a library that catches the KeyboardInterrupt
# and goes on (a store's retry loop, say) cannot make the command ignore a Ctrl-C.
_RECEIVED: list[int] = []


def _raise_stopped(signum: int, frame) -> None:
    _RECEIVED.append(signum)
    raise Stopped(signum)


class _StopsOnSignal:
    """The command line's reporter: after every training step, a stop signal received earlier is
    raised again (if it was, nothing is left to raise: the run is already unwinding)."""

    def report(self, metrics, checkpoint_dir) -> None:
        pass

    def heartbeat(self) -> None:
        if _RECEIVED:
            raise Stopped(_RECEIVED[-1])


def interrupted_line(argv: list[str], signum: int) -> str:
    """The one line of a run stopped by ``signum``: the command that resumes it from ``last.pt``."""
    again = [a for a in argv if not a.startswith(("train.resume=", "+train.resume=", "++train.resume="))]
    return (
        f"adastft.train: interrupted ({signal.Signals(signum).name}): stopped between checkpoints, last.pt "
        f"and best.pt are whole; resume with: {shlex.join(['python', '-m', 'adastft.train', *again])}"
    )


def main() -> None:
    import hydra

    try:
        checked = precheck(sys.argv[1:])  # None: multirun, --help, ...; each job is then checked in _run
    except ConfigError as exc:
        print(f"adastft.train: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("adastft.train: interrupted (SIGINT) before the run started; nothing was written", file=sys.stderr)
        sys.exit(130)
    store_defaults()  # precheck stored them when it composed; --help and -m need them too

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def _run(dcfg) -> float:
        from adastft.checkpoint import CheckpointError
        from adastft.tracking import TrackingUnavailable
        from adastft.training import NonFiniteLoss, train

        try:
            cfg = checked if checked is not None else resolve(dcfg)  # a plain run was checked once, above
        except ConfigError as exc:
            print(f"adastft.train: error: {exc}", file=sys.stderr)
            sys.exit(2)
        from adastft.advice import advice

        for line in advice(cfg):
            print(f"adastft.train: warning: {line}", file=sys.stderr)
        try:
            metrics = train(cfg, _StopsOnSignal())
        except NonFiniteLoss as exc:
            print(f"adastft.train: failed: {exc}", file=sys.stderr)
            sys.exit(1)
        except (ValueError, CheckpointError, TrackingUnavailable) as exc:
            # Bad input, found by the run (ValueError: a data folder, a device, a backbone file
            # or a tracking URI the library rejects, each naming it): one line, no traceback.
            log.debug("bad input", exc_info=True)
            print(f"adastft.train: error: {_first_line(exc)}", file=sys.stderr)
            sys.exit(2)
        log.info("done: %s", "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith(("test_", "best_"))))
        return metrics.get("best_val_clip_accuracy", 0.0)

    signal.signal(signal.SIGTERM, _raise_stopped)
    signal.signal(signal.SIGINT, _raise_stopped)  # Ctrl-C as KeyboardInterrupt, and remembered
    try:
        _run()
    except KeyboardInterrupt as exc:  # Ctrl-C (SIGINT) or SIGTERM: one line, 130 or 143
        signum = getattr(exc, "signum", signal.SIGINT)
        print(interrupted_line(sys.argv[1:], signum), file=sys.stderr, flush=True)
        sys.exit(128 + signum)


if __name__ == "__main__":
    main()
