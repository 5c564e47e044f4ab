"""`ray up cluster/local.yaml` for real, on this machine: Ray's cluster launcher reaches a "remote"
head at 127.0.0.1 over SSH, runs the file's setup and start commands there (venv, the project,
the MLflow server, Ray with token authentication), the search is submitted as a Ray job through
cluster/tunnel.py's SSH tunnel, its runs land in the cluster's MLflow server, and `ray down`
stops it all.

The "remote machine" is an sshd started here on a free loopback port with a throwaway host key
and client key, inside its own PID and mount namespace (tests/cluster_sandbox.py): that is where
`ray down`'s `ray stop` runs, so it cannot touch any other Ray on this machine, and that namespace
has its own /tmp/ray and HOME, like another machine. What the test changes in the YAML is only
what differs between machines: addresses, SSH user, key and port (ssh_proxy_command, as for a
bastion), the cluster's name, and the settings file's ports.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from cluster_sandbox import (
    PYTHON_BIN,
    Sandboxed,
    free_port,
    http_ok,
    ray_auth_home,
    require_namespaces,
    short_tmp,
    wait_for,
)
from process_helpers import checkout_copy
from system_programs import require

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(PYTHON_BIN) / "ray")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _tools() -> None:
    """sshd, rsync and nc (the launcher's file sync and the proxy command); .ci/run installs them."""
    missing = [
        tool
        for tool, path in (
            ("openssh-server", "/usr/sbin/sshd"),
            ("rsync", shutil.which("rsync")),
            ("netcat-openbsd", shutil.which("nc")),
        )
        if not path or not Path(path).exists()
    ]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq " + " ".join(missing),
            shell=True,
            check=False,
            capture_output=True,
            timeout=600,
        )
    still = [
        tool
        for tool, found in (
            ("openssh-server", Path("/usr/sbin/sshd").exists()),
            ("rsync", shutil.which("rsync")),
            ("netcat-openbsd", shutil.which("nc")),
        )
        if not found
    ]
    require(still, "apt-get install openssh-server rsync netcat-openbsd", "the cluster launcher test")


def _set_env(path: Path, values: dict[str, str]) -> None:
    text = path.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
        assert n == 1, f"{key} not in {path.name}"
    path.write_text(text)


@pytest.fixture
def remote_machine():
    """An sshd on 127.0.0.1:<free port> in its own namespaces; yields its settings, then ends it."""
    require_namespaces()
    _tools()
    base = short_tmp("rup-")
    keys, home, raytmp = base / "keys", base / "remote-home", base / "remote-tmp-ray"
    for d in (keys, home, raytmp, Path("/tmp/ray"), Path("/run/sshd")):
        d.mkdir(parents=True, exist_ok=True)
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    port = free_port()
    config = keys / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress 127.0.0.1:{port}",
                f"HostKey {keys / 'host'}",
                f"AuthorizedKeysFile {keys / 'client.pub'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                f"PidFile {base / 'sshd.pid'}",
                f"SetEnv HOME={home}",
                "MaxStartups 100",
                "MaxSessions 100",
            ]
        )
        + "\n"
    )
    # The remote machine's login environment: its Python first on PATH (as /etc/profile would).
    (home / ".bash_profile").write_text(f'export PATH="{PYTHON_BIN}:$PATH"\n')
    sshd = Sandboxed(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], binds={str(raytmp): "/tmp/ray"}, log=base / "sshd.log"
    )
    ssh = [
        "ssh",
        "-i",
        str(keys / "client"),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        f"ProxyCommand=nc %h {port}",
        "root@127.0.0.1",
    ]
    try:
        wait_for(
            lambda: subprocess.run([*ssh, "true"], capture_output=True, timeout=20).returncode == 0 or not sshd.alive(),
            30,
            "sshd",
            on_fail=sshd.tail,
        )
        assert sshd.alive(), sshd.tail()
        yield {"base": base, "key": keys / "client", "port": port, "home": home, "ssh": ssh, "sshd": sshd}
    finally:
        sshd.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_ray_up_local_yaml_runs_a_search_tracked_by_the_clusters_mlflow(remote_machine, tmp_path):
    base, ssh = remote_machine["base"], remote_machine["ssh"]
    name = f"adastft-test-{os.getpid()}"
    laptop = ray_auth_home(base / "laptop-home")  # this machine as the user's: its own Ray token
    laptop["RAY_UP_enable_autoscaler_v2"] = "1"

    src = checkout_copy(base / "src")  # what `ray up` syncs
    ports = {
        key: str(free_port()) for key in ("RAY_PORT", "RAY_DASHBOARD_PORT", "RAY_DASHBOARD_AGENT_PORT", "MLFLOW_PORT")
    }
    _set_env(src / "cluster" / "local.env", {**ports, "MLFLOW_WORKERS": "1", "ADASTFT_SHARED": str(base / "shared")})
    config = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    config["cluster_name"] = name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {
        "ssh_user": "root",
        "ssh_private_key": str(remote_machine["key"]),
        "ssh_proxy_command": f"nc %h {remote_machine['port']}",
    }
    cluster_yaml = base / "cluster.yaml"
    cluster_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    space = src / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "metric": "val_loss",
                "mode": "min",
                "seed": 0,
                "n_startup_trials": 2,
                "space": {
                    "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-2},
                    "stft.learn_window": {"type": "categorical", "choices": [True, False]},
                },
            }
        )
    )

    def ray_cli(*args, timeout=600, check=True) -> subprocess.CompletedProcess:
        proc = subprocess.run([RAY, *args], cwd=src, env=laptop, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(
                f"ray {' '.join(args[:2])} exited {proc.returncode}:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    tunnel = None
    try:
        up = ray_cli("up", "-y", "--no-config-cache", str(cluster_yaml))
        assert "MLflow tracking server: http://" in up.stdout + up.stderr

        # The README's way in: the tunnel, then `ray job submit` with the token, through it.
        dash, mlflow_port = free_port(), free_port()
        tunnel_log = base / "tunnel.log"
        with open(tunnel_log, "wb") as log:
            tunnel = subprocess.Popen(
                [
                    sys.executable,
                    "cluster/tunnel.py",
                    str(cluster_yaml),
                    "--dashboard-port",
                    str(dash),
                    "--mlflow-port",
                    str(mlflow_port),
                ],
                cwd=src,
                env=laptop,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(
            lambda: (
                (
                    http_ok(f"http://127.0.0.1:{mlflow_port}/health")
                    and http_ok(f"http://127.0.0.1:{dash}/api/version", any_status=True)
                )
                or tunnel.poll() is not None
            ),
            120,
            "the tunnel",
            on_fail=tunnel_log.read_text,
        )
        assert tunnel.poll() is None, tunnel_log.read_text()

        # Without the token the dashboard turns the job away: authentication is on.
        no_token = subprocess.run(
            [RAY, "job", "list", "--address", f"http://127.0.0.1:{dash}"],
            cwd=src,
            env={**laptop, "RAY_AUTH_MODE": "disabled"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert no_token.returncode != 0

        cache = base / "cache"
        job = ray_cli(
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dash}",
            "--working-dir",
            ".",
            "--",
            "python",
            "tune/search.py",
            "--trials",
            "2",
            "--address",
            "auto",
            "--search",
            "space.yaml",
            "--scheduler",
            "none",
            "--storage",
            str(base / "shared" / "tune"),
            "--name",
            "cluster",
            "tracking.experiment=cluster-test",  # no tracking.uri: the cluster's $MLFLOW_TRACKING_URI
            "tracking.log_model=false",
            "data=synthetic",
            "data.sample_rate=8000",
            "data.clip_seconds=2.0",
            "data.synthetic_clips_per_class=4",
            "data.parts=2",
            "data.crops_per_clip=1",
            "data.batch_size=8",
            "data.time_mask_frames=2",
            "data.freq_mask_bins=4",
            f"data.cache_dir={cache}",
            "stft.n_fft=256",
            "stft.hop_length=128",
            "stft.n_mels=32",
            "train.epochs=2",
            timeout=600,
        )
        assert "succeeded" in job.stdout and "best trial" in job.stdout, job.stdout[-6000:]

        # The runs are in the cluster's MLflow server (read through the tunnel).
        client = MlflowClient(f"http://127.0.0.1:{mlflow_port}")
        experiment = client.get_experiment_by_name("cluster-test")
        runs = client.search_runs([experiment.experiment_id])
        (parent,) = [r for r in runs if r.info.run_name == "cluster" and "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert parent.info.status == "FINISHED" and len(children) == 2
        for run in children:
            assert run.info.status == "FINISHED"
            assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1]
        study_files = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
        assert {"study/trials.csv", "study/best_experiment.yaml"} <= study_files
        # The head's MLflow listens on its private address, not on loopback.
        head = subprocess.run([*ssh, "cat ~/.adastft/head"], capture_output=True, text=True, timeout=30).stdout
        assert "MLFLOW_ADDRESS=127." not in head and f":{ports['MLFLOW_PORT']}" in head

        down = ray_cli("down", "-y", str(cluster_yaml))
        assert down.returncode == 0
        # `ray down` stopped every Ray process on the head; MLflow stays for browsing (README) and
        # is stopped the on-premises way.
        procs = subprocess.run([*ssh, "ps -eo args"], capture_output=True, text=True, timeout=30).stdout
        assert not [p for p in procs.splitlines() if re.search(r"raylet|gcs_server|ray::|dashboard\.py", p)], procs
        subprocess.run([*ssh, "bash ~/adastft/cluster/node.sh mlflow-stop"], check=True, timeout=60)
        procs = subprocess.run([*ssh, "ps -eo args"], capture_output=True, text=True, timeout=30).stdout
        assert "mlflow" not in procs, procs
    finally:
        if tunnel is not None:
            try:
                os.killpg(tunnel.pid, 9)
            except ProcessLookupError:
                pass
            tunnel.wait(10)
        ray_cli("down", "-y", str(cluster_yaml), timeout=300, check=False)
        for leftover in Path("/tmp/ray").glob(f"cluster-{name}.*"):  # the launcher's state of this cluster
            leftover.unlink(missing_ok=True)
        # the launcher's SSH control folder for this cluster (ControlPath /tmp/ray_ssh_<user>/<cluster>)
        for control in Path("/tmp").glob(f"ray_ssh_*/{hashlib.sha256(name.encode()).hexdigest()[:10]}"):
            shutil.rmtree(control, ignore_errors=True)
        for cached in Path(tempfile.gettempdir()).glob("ray-config-*"):  # its cached configs
            try:
                if f'"cluster_name": "{name}"' in cached.read_text():
                    cached.unlink()
            except OSError:
                pass
