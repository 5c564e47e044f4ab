"""Where a study's trials can run, checked after Ray started: a cluster that spans (or can grow
to) several nodes must share the results folder and reach the MLflow server from every node; the
trials' resources are planned from what the cluster has.

Used by ``tune/cli.py`` (a local Ray's plan, before it starts) and ``tune/driver.py``.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adastft.tracking import redact_text
from tune.settings import SearchError
from tune.store_checks import REMOTE_SCHEMES

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


def _unreachable_from(url: str, nodes: list[dict], timeout_s: float = 5.0, wait_s: float = 90.0) -> dict[str, str]:
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
    fix = (
        "point it at the MLflow server on the head node's private address "
        "(on clusters from cluster/*.yaml leave tracking.uri unset: they set MLFLOW_TRACKING_URI to it)"
    )
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        raise SearchError(f"tracking.uri {redact_text(tracking_uri)} is local to this machine but {why}: {fix}")
    host = parsed.hostname or ""
    if _loopback(host):
        raise SearchError(
            f"tracking.uri {redact_text(tracking_uri)} is this machine's loopback address, which workers on "
            f"other nodes cannot reach, but {why}: {fix}"
        )
    if len(nodes) > 1:
        health = f"{parsed.scheme}://{parsed.netloc.rpartition('@')[2]}{parsed.path.rstrip('/')}/health"
        failed = _unreachable_from(health, nodes)
        if failed:
            node, reason = sorted(failed.items())[0]
            more = f" (and {len(failed) - 1} more nodes)" if len(failed) > 1 else ""
            raise SearchError(
                f"tracking.uri {redact_text(tracking_uri)} is unreachable from node {node}{more} ({reason}) "
                f"but {why}: {fix}"
            )


@dataclass(frozen=True)
class TrialPlan:
    """How a study's trials run: what each asks Ray for and how many run at once."""

    cpus: float
    """CPUs per worker (``--cpus-per-trial``)."""
    gpus: float
    """GPUs per worker (``--gpus-per-trial``, or 0.5 when the cluster has a GPU)."""
    workers: int
    """Workers per trial (``--workers-per-trial``): more than one makes each trial a DDP job."""
    concurrent: int
    """Trials at once: what the resources allow, capped by ``--max-concurrent``."""


def cluster_resources() -> tuple[float, float]:
    """The CPUs and GPUs of the Ray cluster, or of what an autoscaling one can grow to."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    capacity = launcher_capacity()  # an autoscaling cluster: plan for the workers it can start
    if capacity:
        cpus, gpus = max(cpus, capacity["CPU"]), max(gpus, capacity["GPU"])
    return cpus, gpus


def plan_resources(args: argparse.Namespace, cpus: float, gpus: float) -> TrialPlan:
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
    return TrialPlan(cpus=args.cpus_per_trial, gpus=gpus_per, workers=workers, concurrent=concurrent)


def custom_resource_slots(wanted: dict[str, float], workers: int) -> int:
    """How many trials the cluster's custom resources (``--trial-resource``) let run at once."""
    import ray

    if not wanted:
        return 10**9
    have = ray.cluster_resources()
    slots = []
    for name, amount in wanted.items():
        fits = int(have.get(name, 0.0) / (amount * workers) + 1e-9)
        if fits < 1 and launcher_capacity() is not None:  # an autoscaler may start such nodes later
            continue
        if fits < 1:
            raise SearchError(
                f"--trial-resource {name}={amount:g}: the Ray cluster offers {have.get(name, 0.0):g} {name} "
                f"(start nodes with --resources '{{\"{name}\": N}}', or drop the flag)"
            )
        slots.append(fits)
    return min(slots, default=10**9)
