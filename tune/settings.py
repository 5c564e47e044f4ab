"""Search settings checked before Ray starts: config, space, storage, cluster and resources.

Used by ``tune/search.py`` (the command line) and ``tune/run.py`` (the Ray side).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

from adastft.config import Config
from adastft.tracking import default_tracking_uri
from tune.space import SchedulerSpec, SearchSpec

ROOT = Path(__file__).resolve().parents[1]
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://", "hdfs://")


class SearchError(ValueError):
    """A bad flag or search setting; one line naming it."""


def compose(overrides: list[str], search: str, scheduler: str) -> tuple[Config, SearchSpec, SchedulerSpec]:
    """The training config, the search space and the scheduler, validated."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict

    from adastft.train import CONFIG_DIR, resolve

    search_file = Path(search).expanduser() if search.endswith((".yaml", ".yml")) else None
    if search_file is not None and not search_file.is_file():
        raise SearchError(f"--search {search!r}: no such file")
    if search_file is None and not (CONFIG_DIR / "search" / f"{search}.yaml").is_file():
        options = sorted(p.stem for p in (CONFIG_DIR / "search").glob("*.yaml"))
        raise SearchError(f"--search {search!r} is neither a .yaml file nor in configs/search/ (have: {', '.join(options)})")
    extra = [f"+scheduler={scheduler}"] + ([] if search_file else [f"+search={search}"])
    moved = [o for o in overrides if o.startswith(("search.", "scheduler."))]
    rest = [o for o in overrides if o not in moved]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            dcfg = hydra_compose("config", overrides=rest + extra + moved)
    except HydraException as exc:
        raise SearchError(str(exc).strip().splitlines()[0]) from None
    if search_file is not None:
        try:
            search_data = OmegaConf.to_container(OmegaConf.load(search_file), resolve=True)
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
    """Relative paths in the config made absolute: trials run in other working directories."""
    changes: dict[str, Any] = {"data.cache_dir": str((cwd / cfg.data.cache_dir).resolve())}
    if cfg.data.root:
        changes["data.root"] = str((cwd / Path(cfg.data.root).expanduser()).resolve())
    if cfg.model.pretrained_path:
        changes["model.pretrained_path"] = str((cwd / cfg.model.pretrained_path).resolve())
    if cfg.tracking.enabled:
        changes["tracking.uri"] = cfg.tracking.uri or default_tracking_uri(cwd)
    return cfg.merged(changes)


def storage_root(storage: str | None, cwd: Path) -> str:
    if storage is None:
        return str((cwd / "runs" / "search").resolve())
    if storage.startswith(REMOTE_SCHEMES):
        return storage.rstrip("/")
    return str((cwd / Path(storage).expanduser()).resolve())


def check_cluster(storage: str, tracking_uri: str | None) -> None:
    """On more than one node, storage and MLflow must be reachable from every node."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    if not storage.startswith(REMOTE_SCHEMES) and not os.environ.get("ADASTFT_STORAGE_IS_SHARED"):
        raise SearchError(
            f"--storage {storage} is a local path but the cluster has {len(nodes)} nodes: use shared storage "
            "(s3://bucket/path, or an NFS mount on every node with ADASTFT_STORAGE_IS_SHARED=1)"
        )
    if tracking_uri and tracking_uri.startswith(("sqlite:", "file:")):
        raise SearchError(
            f"tracking.uri {tracking_uri} is local to this machine but the cluster has {len(nodes)} nodes: "
            "point it at the head node's MLflow server (tracking.uri=http://HEAD:5000)"
        )


def cluster_resources(args: argparse.Namespace) -> tuple[float, float]:
    import ray

    res = ray.cluster_resources()
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))


def plan_resources(args: argparse.Namespace, cpus: float, gpus: float) -> dict[str, Any]:
    """Per-trial resources and how many trials run at once."""
    gpus_per = args.gpus_per_trial if args.gpus_per_trial is not None else (0.5 if gpus >= 1 else 0.0)
    if gpus_per > 0 and gpus == 0:
        raise SearchError(f"--gpus-per-trial {gpus_per} but the Ray cluster has no GPU: drop the flag or add GPU nodes")
    workers = args.workers_per_trial
    fits = [math.floor(cpus / (args.cpus_per_trial * workers) + 1e-9)]
    if gpus_per > 0:
        fits.append(math.floor(gpus / (gpus_per * workers) + 1e-9))
    concurrent = min(fits)
    if concurrent < 1:
        raise SearchError(
            f"one trial needs {args.cpus_per_trial * workers:g} CPUs and {gpus_per * workers:g} GPUs; "
            f"the cluster has {cpus:g} CPUs and {gpus:g} GPUs: lower --cpus-per-trial or --workers-per-trial"
        )
    if args.max_concurrent:
        concurrent = min(concurrent, args.max_concurrent)
    return {"cpus": args.cpus_per_trial, "gpus": gpus_per, "workers": workers, "concurrent": concurrent}


