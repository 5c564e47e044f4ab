"""Train one model from the Hydra configs in ``adastft/configs/`` (shipped inside the package).

Run: ``python -m adastft.train [group=option ...] [key=value ...]`` (or ``adastft-train``), e.g.
``python -m adastft.train stft=learn_both train.epochs=5``. The seven original trials:
``python -m adastft.train -m 'experiment=glob(original_*)' data.root=/path/to/GTZAN``.
DDP: ``torchrun --nproc-per-node 2 -m adastft.train ...``.

This is the edge where configuration becomes objects: Hydra is imported here, inside ``main``,
and nowhere in the library; ``adastft.training.train`` takes a plain mapping or a ``Config``.

Bad input is one line on stderr and exit status 2: the overrides are composed and validated
before Hydra starts the run (so a bad key leaves no run folder), and an input the run itself
finds bad (a missing data folder, an unreachable tracking server, a damaged checkpoint) ends it
the same way.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from adastft.config import Config, ConfigError

# Inside the package, so that an installed wheel finds them from any folder; a checkout and an
# editable install read the same files.
CONFIG_DIR = Path(str(resources.files("adastft") / "configs"))
log = logging.getLogger("adastft.train")


def resolve(dcfg: Any) -> Config:
    """A composed Hydra config to a validated :class:`Config`; one-line errors as ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        data = OmegaConf.to_container(dcfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{key} is required: set it on the command line, e.g. {key}=...") from None
    data.pop("hydra", None)
    return Config.from_dict(data)


_HYDRA_FLAGS_WITH_VALUE = ("--config-dir", "-cd")


def precheck(argv: list[str]) -> Config | None:
    """Compose ``argv``'s overrides as ``@hydra.main`` will and validate them; ``None`` when
    ``argv`` holds Hydra flags other than ``--config-dir`` (multirun, help, ...), left to Hydra.

    Raises :class:`ConfigError` with one line naming the bad override, key or value.
    """
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

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
    search = [f"hydra.searchpath=[{','.join('file://' + str(Path(d).expanduser().resolve()) for d in extra_dirs)}]"] \
        if extra_dirs else []
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            dcfg = compose("config", overrides=overrides + search)
    except OverrideParseException as exc:
        parser = OverridesParser.create()
        bad = next((o for o in overrides if not _parses(parser, o)), " ".join(overrides))
        raise ConfigError(f"cannot parse override {bad!r}: {_first_line(exc)}") from None
    except HydraException as exc:
        key = getattr(exc.__cause__, "full_key", None)
        if key and "Could not override" in str(exc):
            *parents, leaf = str(key).split(".")
            probe: dict = {}
            node = probe
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = None
            Config.from_dict(probe)  # raises "unknown key 'train.epoch' (did you mean 'epochs'?)"
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        options = lines[lines.index(next(l for l in lines if l.startswith("Available options"))) + 1:] \
            if any(l.startswith("Available options") for l in lines) else []
        options = options[:options.index("Config search path:")] if "Config search path:" in options else options
        hint = f" {lines[1]}" if len(lines) > 1 and lines[1].startswith("To append") else ""
        raise ConfigError(lines[0] + hint + (f" (available: {', '.join(options)})" if options else "")) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(_first_line(exc)) from None
    except yaml.YAMLError as exc:  # a config file that does not parse
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}" if mark is not None else "a config file"
        raise ConfigError(f"{where} is not valid YAML: {getattr(exc, 'problem', None) or _first_line(exc)}") from None
    try:
        cfg = resolve(dcfg)
    except OmegaConfBaseException as exc:  # an interpolation that does not resolve
        raise ConfigError(_first_line(exc)) from None
    out_dir = Path(cfg.train.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"train.out_dir {str(out_dir)!r} is a file, not a folder")
    existing = next(p for p in (out_dir.absolute(), *out_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"train.out_dir {str(out_dir)!r} cannot be made: {existing} is "
                          f"{'a file' if not existing.is_dir() else 'not writable'}; give another folder")
    backbone = cfg.model.pretrained_path
    if backbone and not Path(backbone).expanduser().is_file():  # before the data is decoded
        raise ConfigError(f"model.pretrained_path {backbone!r} is not a file: give a local torchvision state dict")
    if cfg.train.resume and (out_dir / "last.pt").is_file():  # likewise: a damaged or unsafe checkpoint
        from adastft.checkpoint import CheckpointError, load_checkpoint

        try:
            load_checkpoint(out_dir / "last.pt")
        except CheckpointError as exc:
            raise ConfigError(f"{exc}; delete it or set train.resume=false") from None
    return cfg


def _parses(parser, override: str) -> bool:
    try:
        parser.parse_override(override)
        return True
    except Exception:  # noqa: BLE001 - any parse failure names this override
        return False


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


def _raise_stopped(signum: int, frame) -> None:
    raise Stopped(signum)


def interrupted_line(argv: list[str], signum: int) -> str:
    """The one line of a run stopped by ``signum``: the command that resumes it from ``last.pt``."""
    again = [a for a in argv if not a.startswith(("train.resume=", "+train.resume=", "++train.resume="))]
    return (f"adastft.train: interrupted ({signal.Signals(signum).name}): stopped between checkpoints, last.pt "
            f"and best.pt are whole; resume with: {shlex.join(['python', '-m', 'adastft.train', *again])}")


def main() -> None:
    import hydra

    try:
        precheck(sys.argv[1:])
    except ConfigError as exc:
        print(f"adastft.train: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("adastft.train: interrupted (SIGINT) before the run started; nothing was written", file=sys.stderr)
        sys.exit(130)

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def _run(dcfg) -> float:
        from adastft.checkpoint import CheckpointError
        from adastft.tracking import TrackingUnavailable
        from adastft.training import NonFiniteLoss, train

        try:
            cfg = resolve(dcfg)
        except ConfigError as exc:
            print(f"adastft.train: error: {exc}", file=sys.stderr)
            sys.exit(2)
        from adastft.advice import advice

        for line in advice(cfg):
            print(f"adastft.train: warning: {line}", file=sys.stderr)
        try:
            metrics = train(cfg)
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
    try:
        _run()
    except KeyboardInterrupt as exc:  # Ctrl-C (SIGINT) or SIGTERM: one line, 130 or 143
        signum = getattr(exc, "signum", signal.SIGINT)
        print(interrupted_line(sys.argv[1:], signum), file=sys.stderr, flush=True)
        sys.exit(128 + signum)


if __name__ == "__main__":
    main()
