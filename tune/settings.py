"""A search's settings checked before Ray starts: the training config, the search space and the
scheduler composed (:func:`compose`), the config's paths made absolute for the trials, the metric.

The study's name, storage and Optuna database are checked in ``tune/store_checks.py``; the
cluster and the trials' resources in ``tune/cluster_checks.py``. Used by ``tune/search.py``
(the command line) and ``tune/compare.py``.
"""

from __future__ import annotations

from typing import Any
from pathlib import Path

from adastft.config import Config
from adastft.tracking import default_tracking_uri
from tune.space import SchedulerSpec, SearchSpec

ROOT = Path(__file__).resolve().parents[1]


class SearchError(ValueError):
    """A bad flag or search setting; one line naming it."""


def compose(overrides: list[str], search: str, scheduler: str) -> tuple[Config, SearchSpec, SchedulerSpec]:
    """The training config, the search space and the scheduler, validated. The overrides are
    checked and composed by :func:`adastft.train.compose` (``search.*`` and ``scheduler.*`` keys are
    the space's and the scheduler's: ``SearchSpec`` and ``SchedulerSpec`` check them)."""
    import yaml
    from omegaconf import OmegaConf, open_dict

    from adastft.train import CONFIG_DIR, compose as compose_config, resolve

    search_file = Path(search).expanduser() if search.endswith((".yaml", ".yml")) else None
    if search_file is not None and not search_file.is_file():
        raise SearchError(f"--search {search!r}: no such file")
    if search_file is None and not (CONFIG_DIR / "search" / f"{search}.yaml").is_file():
        options = sorted(p.stem for p in (CONFIG_DIR / "search").glob("*.yaml"))
        raise SearchError(
            f"--search {search!r} is neither a .yaml file nor in adastft/configs/search/ (have: {', '.join(options)})"
        )
    extra = [f"+scheduler={scheduler}"] + ([] if search_file else [f"+search={search}"])
    moved = [o for o in overrides if o.startswith(("search.", "scheduler."))]
    rest = [o for o in overrides if o not in moved]
    dcfg = compose_config(rest + extra + moved, sections=("search", "scheduler"))  # ConfigError, one line
    if search_file is not None:
        try:
            search_data = OmegaConf.to_container(OmegaConf.load(search_file), resolve=True)
        except yaml.YAMLError as exc:  # name the line, as the training configs' errors do
            mark = getattr(exc, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark is not None else ""
            raise SearchError(
                f"--search {search!r}{where} is not valid YAML: "
                f"{getattr(exc, 'problem', None) or str(exc).splitlines()[0]}"
            ) from None
        except Exception as exc:
            raise SearchError(f"--search {search!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(search_data, dict):
            raise SearchError(f"--search {search!r} must hold a mapping (metric, mode, space, ...)")
    else:
        search_data = OmegaConf.to_container(dcfg.search, resolve=True)
    scheduler_data = OmegaConf.to_container(dcfg.scheduler, resolve=True)
    with open_dict(dcfg):
        dcfg.pop("search", None)
        del dcfg["scheduler"]
    base = resolve(dcfg)
    return base, SearchSpec.from_dict(search_data, base), SchedulerSpec.from_dict(scheduler_data)


def absolutise(cfg: Config, cwd: Path) -> Config:
    """Relative paths in the config made absolute: trials run in other working directories.

    Paths only, in a config already validated: it is not validated again."""

    def absolute(path: str) -> str:
        return str((cwd / Path(path).expanduser()).resolve())

    changes: dict[str, Any] = {"data.cache_dir": str((cwd / cfg.data.cache_dir).resolve())}
    if cfg.data.root:
        changes["data.root"] = absolute(cfg.data.root)
    if cfg.data.split_files:  # list files (not lists of names)
        changes["data.split_files"] = {
            split: absolute(v) if isinstance(v, str) else v for split, v in cfg.data.split_files.items()
        }
    if cfg.model.pretrained_path:
        changes["model.pretrained_path"] = str((cwd / cfg.model.pretrained_path).resolve())
    if cfg.tracking.enabled:
        changes["tracking.uri"] = cfg.tracking.uri or default_tracking_uri(cwd)
    return cfg.replaced(changes)


def check_metric(spec: SearchSpec) -> None:
    """The search's metric must be one a trial reports every epoch (the scheduler and Optuna
    read it there); a loss maximised or an accuracy minimised is warned about."""
    import sys

    from adastft.training import EPOCH_METRICS

    if spec.metric not in EPOCH_METRICS:
        raise SearchError(
            f"search.metric {spec.metric!r} is not a metric trials report every epoch: "
            f"use one of {', '.join(EPOCH_METRICS)}"
        )
    wrong = "max" if spec.metric.endswith("loss") else "min" if spec.metric.endswith("accuracy") else None
    if spec.mode == wrong:
        print(
            f"search: warning: search.mode {wrong} on {spec.metric} favours the worst trials; "
            f"did you mean mode: {'min' if wrong == 'max' else 'max'}?",
            file=sys.stderr,
        )
