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
from adastft.tracking import default_tracking_uri, redact_text
from tune.space import SchedulerSpec, SearchSpec

ROOT = Path(__file__).resolve().parents[1]
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://", "hdfs://")


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
        raise SearchError(f"--search {search!r} is neither a .yaml file nor in adastft/configs/search/ (have: {', '.join(options)})")
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
            raise SearchError(f"--search {search!r}{where} is not valid YAML: "
                              f"{getattr(exc, 'problem', None) or str(exc).splitlines()[0]}") from None
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
    if cfg.data.split_files:  # list files (not lists of names)
        changes["data.split_files"] = {split: str((cwd / Path(v).expanduser()).resolve()) if isinstance(v, str) else v
                                       for split, v in cfg.data.split_files.items()}
    if cfg.model.pretrained_path:
        changes["model.pretrained_path"] = str((cwd / cfg.model.pretrained_path).resolve())
    if cfg.tracking.enabled:
        changes["tracking.uri"] = cfg.tracking.uri or default_tracking_uri(cwd)
    return cfg.merged(changes)


def storage_root(storage: str | None, cwd: Path, default_folder: str = "search") -> str:
    if storage is None:
        return str((cwd / "runs" / default_folder).resolve())
    if storage.startswith(REMOTE_SCHEMES):
        return storage.rstrip("/")
    return str((cwd / Path(storage).expanduser()).resolve())


LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"


def launcher_capacity() -> dict[str, float] | None:
    """What a cluster started by Ray's launcher can grow to, from the autoscaling config that
    ``ray up`` leaves on the head node (where ``ray job submit`` runs this driver); ``None``
    elsewhere. ``{"workers": N, "CPU": c, "GPU": g}``: worker nodes, and CPUs and GPUs of the
    head plus every worker type at its ``max_workers`` (an upper bound when the global
    ``max_workers`` is lower).
    """
    path = Path(LAUNCHER_CONFIG).expanduser()
    if not path.is_file():
        return None
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    cap_total = int(config.get("max_workers", 0) or 0)
    out = {"workers": 0.0, "CPU": 0.0, "GPU": 0.0}
    for name, node_type in types.items():
        count = 1 if name == head else min(int(node_type.get("max_workers", 0) or 0), cap_total)
        if name != head:
            out["workers"] += count
        for key in ("CPU", "GPU"):
            out[key] += count * float((node_type.get("resources") or {}).get(key, 0))
    out["workers"] = min(out["workers"], cap_total)
    return out


def _cluster_span(nodes: list[dict]) -> str | None:
    """Why this search may run on more than one machine (for messages), or ``None``.

    More than one alive node, or a cluster that Ray's launcher started with room for workers
    (:func:`launcher_capacity`): those start later, when trials ask for them, and would then find
    no results folder or MLflow server. (On KubeRay only alive nodes count.)
    """
    if len(nodes) > 1:
        return f"the cluster has {len(nodes)} nodes"
    capacity = launcher_capacity()
    if capacity and capacity["workers"] > 0:
        return f"the cluster can grow to {capacity['workers']:g} worker nodes ({LAUNCHER_CONFIG})"
    return None


def _loopback(host: str) -> bool:
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _unreachable_from(url: str, nodes: list[dict], timeout_s: float = 5.0,
                      wait_s: float = 90.0) -> dict[str, str]:
    """``{node address: reason}`` for each node where an HTTP GET of ``url`` gets no answer.

    One tiny task per node, pinned there. Any HTTP answer (even an error status) means the
    server is reachable; a refused or timed-out connection, or a name that does not resolve,
    does not. A node whose task does not finish within ``wait_s`` is reported as such.
    """
    def probe(target: str, timeout: float) -> str | None:  # runs on the node; stdlib only
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(target, timeout=timeout).close()
        except urllib.error.HTTPError:
            return None
        except (OSError, ValueError) as exc:
            return str(getattr(exc, "reason", None) or exc)
        return None

    answers, failed = run_on_nodes(probe, (url, timeout_s), nodes, wait_s)
    failed.update({node: reason for node, reason in answers.items() if reason})
    return failed


def run_on_nodes(fn, args: tuple, nodes: list[dict], wait_s: float) -> tuple[dict[str, Any], dict[str, str]]:
    """Run ``fn(*args)`` once on each of ``nodes``, in a tiny task pinned there.

    ``fn`` should need only the standard library (define it inside the caller: it then travels
    by value). Returns ``({node address: result}, {node address: why there is none})``.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = {}
    for node in nodes:
        pinned = task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
        refs[pinned.remote(*args)] = node.get("NodeManagerAddress") or node["NodeID"]
    done, late = ray.wait(list(refs), num_returns=len(refs), timeout=wait_s)
    failed = {refs[ref]: f"no answer within {wait_s:g} s" for ref in late}
    answers = {}
    for ref in done:
        try:
            answers[refs[ref]] = ray.get(ref)
        except Exception as exc:  # the task itself failed on that node
            failed[refs[ref]] = f"the task failed there: {str(exc).strip().splitlines()[-1]}"
    for ref in late:
        ray.cancel(ref, force=True)
    return answers, failed


def check_cluster(storage: str, tracking_uri: str | None) -> None:
    """On more than one node, storage and MLflow must be reachable from every node.

    "More than one node": more than one alive node now, or a cluster from Ray's launcher that
    can add workers (:func:`_cluster_span`). Then the results folder must be shared (``s3://``...,
    or a path every node mounts, said with ``ADASTFT_STORAGE_IS_SHARED=1``) and the MLflow URI
    must be a server every node reaches: not a file or SQLite store, not a loopback address, and
    answering from each alive node (probed there). Raises :class:`SearchError`, one line.
    """
    from urllib.parse import urlparse

    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    why = _cluster_span(nodes)
    if why is None:
        return
    if not storage.startswith(REMOTE_SCHEMES) and not os.environ.get("ADASTFT_STORAGE_IS_SHARED"):
        raise SearchError(
            f"--storage {storage} is a local path but {why}: use shared storage "
            "(s3://bucket/path, or an NFS mount on every node with ADASTFT_STORAGE_IS_SHARED=1)"
        )
    if not tracking_uri:
        return
    fix = ("point it at the MLflow server on the head node's private address "
           "(on clusters from cluster/*.yaml leave tracking.uri unset: they set MLFLOW_TRACKING_URI to it)")
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        raise SearchError(f"tracking.uri {redact_text(tracking_uri)} is local to this machine but {why}: {fix}")
    host = parsed.hostname or ""
    if _loopback(host):
        raise SearchError(f"tracking.uri {redact_text(tracking_uri)} is this machine's loopback address, which workers on "
                          f"other nodes cannot reach, but {why}: {fix}")
    if len(nodes) > 1:
        health = f"{parsed.scheme}://{parsed.netloc.rpartition('@')[2]}{parsed.path.rstrip('/')}/health"
        failed = _unreachable_from(health, nodes)
        if failed:
            node, reason = sorted(failed.items())[0]
            more = f" (and {len(failed) - 1} more nodes)" if len(failed) > 1 else ""
            raise SearchError(f"tracking.uri {redact_text(tracking_uri)} is unreachable from node {node}{more} ({reason}) "
                              f"but {why}: {fix}")


def cluster_resources(args: argparse.Namespace) -> tuple[float, float]:
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    capacity = launcher_capacity()  # an autoscaling cluster: plan for the workers it can start
    if capacity:
        cpus, gpus = max(cpus, capacity["CPU"]), max(gpus, capacity["GPU"])
    return cpus, gpus


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




# ---- the study: its name, where it is stored, its Optuna database (checked before Ray starts) ----

STUDY_NAME = r"[A-Za-z0-9_.-]+"


def check_study_name(name: str) -> None:
    """The study's name is a folder under ``--storage`` and the MLflow parent run's name: one path
    segment, so that it cannot write outside ``--storage`` (``../x``) or nest under another study."""
    import re

    if not re.fullmatch(STUDY_NAME, name) or name in (".", ".."):
        raise SearchError(f"--name {name!r} must be one path segment of letters, digits, '-', '_' and '.' "
                          "(it names the study's folder under --storage), e.g. --name gtzan-asha.1")


def check_storage(storage: str) -> None:
    """A local ``--storage`` must be a folder this user can write, or creatable in one; a file
    is refused. (A bucket URI is checked by Ray when it starts.)"""
    if storage.startswith(REMOTE_SCHEMES):
        return
    path = Path(storage)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise SearchError(f"--storage {storage}: {existing} is a file, not a folder: give a folder for the results")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SearchError(f"--storage {storage}: folder {existing} is not writable by this user: "
                          "fix its permissions or give another --storage")


def check_optuna_storage(url: str, study: str | None) -> None:
    """``--optuna-storage`` (or the study's own ``optuna.db``): a URL SQLAlchemy parses, whose
    driver is installed and whose database opens: for SQLite, its folder exists and the file, when
    present, is an undamaged database (opened read-only: nothing in it changes); another database
    must accept a connection within 10 s. ``study``: the name a ``--resume`` needs in it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from adastft.tracking import damaged_store_fix, sqlite_damage

    shown = redact_text(url)
    try:
        parsed = make_url(url)
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:  # (an ArgumentError too)
        raise SearchError(f"--optuna-storage {shown}: SQLAlchemy knows no database {parsed.drivername!r}") from None
    except ArgumentError:
        raise SearchError(f"--optuna-storage {shown!r} is not a database URL: use e.g. sqlite:////abs/path/optuna.db "
                          "or postgresql://user@host/db") from None
    except ImportError as exc:
        raise SearchError(f"--optuna-storage {shown}: its driver {exc.name or parsed.drivername!r} is not installed: "
                          f"pip install {exc.name or parsed.drivername}") from None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise SearchError(f"--optuna-storage {shown}: an in-memory SQLite database loses the study: "
                              "give a file, sqlite:////abs/path/optuna.db")
        path = Path(parsed.database).expanduser()
        if not path.parent.is_dir():
            raise SearchError(f"--optuna-storage {shown}: folder {path.parent} does not exist: create it first")
        damage = sqlite_damage(path)
        if damage:
            raise SearchError(f"Optuna database {path} is damaged ({damage}): {damaged_store_fix(path)}")
        if study is not None and path.exists() and not _has_study(path, study):
            raise SearchError(f"Optuna database {path} holds no study {study!r} (emptied or replaced): "
                              f"{damaged_store_fix(path)}, or start a new study with another --name")
        return
    _check_connects(url, shown)


def _has_study(path: Path, study: str) -> bool:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as con:
            return con.execute("SELECT 1 FROM studies WHERE study_name = ?", (study,)).fetchone() is not None
    except sqlite3.Error:  # no tables: an empty file
        return False


def _check_connects(url: str, shown: str, timeout_s: float = 10.0) -> None:
    import threading

    from sqlalchemy import create_engine

    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            engine = create_engine(url)
            with engine.connect():
                pass
            engine.dispose()
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - any failure is the user's database: named below
            outcome.append(exc)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise SearchError(f"--optuna-storage {shown}: no answer within {timeout_s:g} s: start the database or fix the URL")
    if outcome[0] is not None:
        reason = redact_text(str(outcome[0]).strip().splitlines()[0])
        raise SearchError(f"--optuna-storage {shown}: cannot connect ({reason})")


def check_metric(spec: SearchSpec) -> None:
    """The search's metric must be one a trial reports every epoch (the scheduler and Optuna
    read it there); a loss maximised or an accuracy minimised is warned about."""
    import sys

    from adastft.training import EPOCH_METRICS

    if spec.metric not in EPOCH_METRICS:
        raise SearchError(f"search.metric {spec.metric!r} is not a metric trials report every epoch: "
                          f"use one of {', '.join(EPOCH_METRICS)}")
    wrong = "max" if spec.metric.endswith("loss") else "min" if spec.metric.endswith("accuracy") else None
    if spec.mode == wrong:
        print(f"search: warning: search.mode {wrong} on {spec.metric} favours the worst trials; "
              f"did you mean mode: {'min' if wrong == 'max' else 'max'}?", file=sys.stderr)
