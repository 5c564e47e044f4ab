"""Train one model from the Hydra configs in ``configs/``.

Run: ``python -m adastft.train [group=option ...] [key=value ...]`` (or ``adastft-train``), e.g.
``python -m adastft.train stft=learn_both train.epochs=5``. The seven original trials:
``python -m adastft.train -m 'experiment=glob(original_*)' data.root=/path/to/GTZAN``.
DDP: ``torchrun --nproc-per-node 2 -m adastft.train ...``.

This is the edge where configuration becomes objects: Hydra is imported here, inside ``main``,
and nowhere in the library; ``adastft.training.train`` takes a plain mapping or a ``Config``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from adastft.config import Config, ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
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


def main() -> None:
    import hydra

    if not CONFIG_DIR.is_dir():
        sys.exit(f"adastft.train: error: config folder {CONFIG_DIR} is missing: run from a checkout (pip install -e .)")

    @hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
    def _run(dcfg) -> float:
        from adastft.checkpoint import CheckpointError
        from adastft.data import DataError
        from adastft.tracking import TrackingUnavailable
        from adastft.training import NonFiniteLoss, train

        try:
            cfg = resolve(dcfg)
        except ConfigError as exc:
            print(f"adastft.train: error: {exc}", file=sys.stderr)
            sys.exit(2)
        try:
            metrics = train(cfg)
        except NonFiniteLoss as exc:
            print(f"adastft.train: failed: {exc}", file=sys.stderr)
            sys.exit(1)
        except (DataError, CheckpointError, TrackingUnavailable) as exc:  # bad input: one line, no traceback
            print(f"adastft.train: error: {exc}", file=sys.stderr)
            sys.exit(2)
        log.info("done: %s", "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith(("test_", "best_"))))
        return metrics.get("best_val_clip_accuracy", 0.0)

    _run()


if __name__ == "__main__":
    main()
