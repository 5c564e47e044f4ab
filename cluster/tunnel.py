"""An SSH tunnel to a cluster from cluster/aws.yaml or cluster/local.yaml: the Ray dashboard (and
job submission) and the MLflow UI on this machine's loopback, until Ctrl-C.

    python cluster/tunnel.py cluster/aws.yaml                 # http://127.0.0.1:8265, http://127.0.0.1:5000
    python cluster/tunnel.py cluster/aws.yaml --dashboard-port 8266 --mlflow-port 5001

Both servers listen on the head's private side only (the dashboard on its loopback, MLflow on its
private address), so this is the way in: it asks Ray's launcher for the head's address and SSH
settings (as `ray attach` does), reads where the head's MLflow server listens (written by
cluster/node.sh), and runs `ssh -N -L ...`. Then, in another terminal:

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- python tune/search.py ...
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def ssh_base(config: dict) -> list[str]:
    auth = config["auth"]
    opts = [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "LogLevel=ERROR",
    ]
    if auth.get("ssh_private_key"):
        opts += ["-i", os.path.expanduser(auth["ssh_private_key"])]
    if auth.get("ssh_proxy_command"):
        opts += ["-o", f"ProxyCommand={auth['ssh_proxy_command']}"]
    return ["ssh", *opts]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python cluster/tunnel.py", description=__doc__.splitlines()[0])
    p.add_argument("cluster_yaml")
    p.add_argument("--dashboard-port", type=int, default=8265, help="local port for the Ray dashboard (8265)")
    p.add_argument("--mlflow-port", type=int, default=5000, help="local port for the MLflow UI (5000)")
    args = p.parse_args(argv)

    import yaml
    from ray.autoscaler.sdk import bootstrap_config, get_head_node_ip

    with open(args.cluster_yaml) as f:
        raw = yaml.safe_load(f)
    config = bootstrap_config(raw, no_config_cache=True)  # what `ray up` filled in (AWS: the key file)
    head = get_head_node_ip(args.cluster_yaml)
    target = f"{config['auth']['ssh_user']}@{head}"
    ssh = ssh_base(config)
    info = subprocess.run([*ssh, target, "cat ~/.adastft/head"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        print(
            f"tunnel: error: cannot read ~/.adastft/head on {head} (is the cluster up?): {info.stderr.strip()}",
            file=sys.stderr,
        )
        return 2
    remote = dict(line.split("=", 1) for line in info.stdout.split() if "=" in line)
    forwards = [
        "-L",
        f"127.0.0.1:{args.dashboard_port}:127.0.0.1:{remote['RAY_DASHBOARD_PORT']}",
        "-L",
        f"127.0.0.1:{args.mlflow_port}:{remote['MLFLOW_ADDRESS']}",
    ]
    print(
        f"Ray dashboard and jobs: http://127.0.0.1:{args.dashboard_port}   "
        f"MLflow: http://127.0.0.1:{args.mlflow_port}   (Ctrl-C closes the tunnel)",
        flush=True,
    )
    try:
        return subprocess.run([*ssh, "-N", *forwards, target]).returncode
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
