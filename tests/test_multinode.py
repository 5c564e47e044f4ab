"""The cluster path for real, on this machine: many nodes, object storage, a lost machine.

A Ray head and two worker nodes, each a real `ray start` in its own PID and mount namespace with
a loopback address of its own (head 127.0.0.1, workers 127.0.0.2 and 127.0.0.3), token
authentication on. Each worker offers one CPU and one `trial_slot`, and every trial asks for a
`trial_slot` (`--trial-resource trial_slot=1`): trials run on the workers, never on the head, at
most one per worker. Killing a worker's namespace kills its raylet and every worker process at
once, as a spot machine that vanishes.

Shared storage is object storage over HTTP on loopback: moto's server mode, AN S3 EMULATOR (no
cloud is reachable from here), which every node, the driver and the MLflow server reach through
`AWS_ENDPOINT_URL`, as they would a real S3-compatible store. The search runs with
`--storage s3://<bucket>/tune`; the MLflow server on the head stores artifacts in
`s3://<bucket>/mlflow` (`--artifacts-destination`). MLflow is reached by a name that resolves to the
head in every namespace, as a private DNS name would on a cluster (the search refuses loopback).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from adastft.checkpoint import load_checkpoint
from cluster_sandbox import (
    PYTHON_BIN,
    Sandboxed,
    free_port,
    hosts_file,
    http_ok,
    ray_auth_home,
    require_namespaces,
    run_with_mounts,
    short_tmp,
    start_with_mounts,
    wait_for,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ROOT / "tune" / "search.py"
RAY = str(Path(PYTHON_BIN) / "ray")
BUCKET = "adastft-multinode"
WORKERS = ("127.0.0.2", "127.0.0.3")
EPOCHS = 4


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = ray_auth_home(tmp / "home")
        self.s3_port, self.mlflow_port, self.gcs = free_port(), free_port(), free_port()
        self.hosts = hosts_file(tmp / "hosts", {"mlflow.multinode.test": "127.0.0.1"})
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.env.update(
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.endpoint,
                "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
                "AWS_EC2_METADATA_DISABLED": "true",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            }
        )
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.tracking_uri = f"http://mlflow.multinode.test:{self.mlflow_port}"
        self.s3: Sandboxed | None = None
        self.nodes: dict[str, Sandboxed] = {}
        self.others: list[Sandboxed] = []

    def start(self) -> None:
        self.s3 = Sandboxed(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)],
            env=self.env,
            log=self.tmp / "s3.log",
        )
        wait_for(
            lambda: http_ok(f"{self.endpoint}/moto-api/", any_status=True) or not self.s3.alive(),
            120,
            "the S3 emulator",
            on_fail=self.s3.tail,
        )
        self.client().create_bucket(Bucket=BUCKET)
        self.others.append(
            Sandboxed(
                [
                    str(Path(PYTHON_BIN) / "mlflow"),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.mlflow_port),
                    "--backend-store-uri",
                    f"sqlite:///{self.tmp}/mlflow.db",
                    "--artifacts-destination",
                    f"s3://{BUCKET}/mlflow",
                    "--workers",
                    "1",
                    "--allowed-hosts",
                    f"mlflow.multinode.test:{self.mlflow_port},127.0.0.1:*",
                ],
                env=self.env,
                log=self.tmp / "mlflow.log",
            )
        )
        wait_for(
            lambda: http_ok(f"http://127.0.0.1:{self.mlflow_port}/health") or not self.others[-1].alive(),
            120,
            "the MLflow server",
            on_fail=self.others[-1].tail,
        )
        self.nodes["127.0.0.1"] = self._ray_start(
            ["--head", "--port", str(self.gcs), "--num-cpus", "0", "--include-dashboard", "false"], "127.0.0.1"
        )
        for ip in WORKERS:
            self.start_worker(ip)

    def node_tmp(self, ip: str) -> Path:
        """The node's own temp folder (TMPDIR), as on a machine of its own: the trials' working
        folders of two nodes never meet."""
        return self.tmp / f"tmp-{ip}"

    def _ray_start(self, args: list[str], ip: str) -> Sandboxed:
        self.node_tmp(ip).mkdir(exist_ok=True)
        node = Sandboxed(
            [
                RAY,
                "start",
                "--block",
                "--disable-usage-stats",
                "--node-ip-address",
                ip,
                "--temp-dir",
                str(self.tmp / f"ray-{ip}"),
                "--dashboard-agent-listen-port",
                str(free_port()),
                *args,
            ],
            binds={str(self.hosts): "/etc/hosts"},
            env={**self.env, "TMPDIR": str(self.node_tmp(ip))},
            log=self.tmp / f"ray-{ip}.log",
        )
        started = node.tail(10**6).count("Ray runtime started")
        wait_for(
            lambda: node.tail(10**6).count("Ray runtime started") > started or not node.alive(),
            120,
            f"the Ray node {ip}",
            on_fail=node.tail,
        )
        assert node.alive(), node.tail()
        return node

    def start_worker(self, ip: str) -> None:
        self.nodes[ip] = self._ray_start(
            ["--address", f"127.0.0.1:{self.gcs}", "--num-cpus", "1", "--resources", json.dumps({"trial_slot": 1})], ip
        )

    def kill_node(self, ip: str) -> None:
        """SIGKILL every process of the node at once (its namespace), as a vanished spot machine."""
        self.nodes.pop(ip).stop()

    def stop_node(self, ip: str, cwd: Path) -> None:
        """Stop a worker node the way a drained machine goes (SIGTERM: Ray tells the head), and wait
        until the head no longer lists it as alive."""
        node = self.nodes.pop(ip)
        os.killpg(node.proc.pid, signal.SIGTERM)
        try:
            node.proc.wait(60)
        except Exception:  # noqa: BLE001 - then at once
            pass
        node.stop()
        probe = (
            "import ray; ray.init(address='127.0.0.1:%d', logging_level='ERROR'); "
            "print(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))" % self.gcs
        )
        wait_for(
            lambda: ip not in self.run([sys.executable, "-c", probe], cwd=cwd, timeout=120).stdout,
            120,
            f"the head to see node {ip} gone",
            interval=2,
        )

    def stop(self) -> None:
        for node in [*self.nodes.values(), *self.others, *([self.s3] if self.s3 else [])]:
            node.stop()

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def keys(self, prefix: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def search(self, tmp_path: Path, name: str, *args: str, trials: int = 4, epochs: int = EPOCHS) -> list[str]:
        space = tmp_path / "space.yaml"
        space.write_text(
            yaml.safe_dump(
                {
                    "metric": "val_loss",
                    "mode": "min",
                    "seed": 0,
                    "n_startup_trials": 2,
                    "space": {
                        "optim.lr": {"type": "loguniform", "low": 3e-4, "high": 3e-3},
                        "stft.learn_window": {"type": "categorical", "choices": [True, False]},
                    },
                }
            )
        )
        return [
            sys.executable,
            str(SEARCH),
            "--address",
            f"127.0.0.1:{self.gcs}",
            "--storage",
            f"s3://{BUCKET}/tune",
            "--trial-resource",
            "trial_slot=1",
            "--scheduler",
            "none",
            "--trials",
            str(trials),
            "--name",
            name,
            "--search",
            str(space),
            *args,
            "data=synthetic",
            "data.sample_rate=8000",
            "data.clip_seconds=2.0",
            "data.synthetic_clips_per_class=6",
            "data.parts=2",
            "data.crops_per_clip=1",
            "data.batch_size=8",
            "data.time_mask_frames=2",
            "data.freq_mask_bins=4",
            f"data.cache_dir={self.tmp}/cache",
            "stft.n_fft=256",
            "stft.hop_length=128",
            "stft.n_mels=32",
            f"train.epochs={epochs}",
            "train.threads=1",
            f"tracking.uri={self.tracking_uri}",
            "tracking.experiment=multinode",
        ]

    def run(self, argv: list[str], cwd: Path, timeout: float = 600):
        return run_with_mounts(argv, binds={str(self.hosts): "/etc/hosts"}, env=self.env, cwd=cwd, timeout=timeout)

    def start_driver(self, argv: list[str], cwd: Path):
        return start_with_mounts(
            argv, binds={str(self.hosts): "/etc/hosts"}, env=self.env, cwd=cwd, log=cwd / "driver.log"
        )

    def results(self, study: str) -> dict[str, list[dict]]:
        """Each trial's results as Tune wrote them to storage, by the trial's folder name."""
        out = {}
        for key in self.keys(f"tune/{study}/"):
            if key.endswith("/result.json"):
                out[key.split("/")[2]] = [json.loads(line) for line in self.read(key).decode().splitlines() if line]
        return out

    def table(self, study: str) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self.read(f"tune/{study}/study/summary/trials.parquet")))

    def mlflow(self):
        client = MlflowClient(f"http://127.0.0.1:{self.mlflow_port}")
        return client, client.get_experiment_by_name("multinode")


@pytest.fixture(scope="module")
def cluster():
    require_namespaces()
    made = Cluster(short_tmp("rmn-"))
    try:
        made.start()
        yield made
    finally:
        made.stop()
        import shutil

        if not os.environ.get("KEEP_MN"):
            shutil.rmtree(made.tmp, ignore_errors=True)


def _study_runs(cluster: Cluster, study: str):
    client, experiment = cluster.mlflow()
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == study and "mlflow.parentRunId" not in r.data.tags]
    return client, experiment, parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def _local_leftovers(cluster: Cluster, tmp_path: Path, study: str, away: str | None = None) -> list[str]:
    """What the study left on the nodes' disks: checkpoint files anywhere in their temp and home
    folders or the driver's folder, Ray's local results folder, the trials' working folders."""
    import tempfile

    left = [str(p) for base in (cluster.tmp, tmp_path) for p in base.rglob("*.pt") if f"/{study}" in str(p)]
    left += [str(p) for p in (cluster.tmp / "home" / "ray_results").glob(f"{study}*")]
    for tmp in [Path(tempfile.gettempdir()), *(cluster.node_tmp(ip) for ip in ("127.0.0.1", *WORKERS))]:
        left += [str(p) for p in (tmp / "adastft-trials").glob(f"{study}-*")]
    left += [str(p) for p in (Path(tempfile.gettempdir()) / "adastft-studies").glob(f"{study}-*")]
    # a node that was away when the study ended keeps the working copy of the trial it was running
    return [p for p in left if away is None or not p.startswith(f"{cluster.node_tmp(away)}/")]


def test_a_study_spreads_over_two_workers_and_keeps_everything_in_s3(cluster, tmp_path):
    proc = cluster.run(cluster.search(tmp_path, "spread"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]

    # Trials ran on both workers (one trial_slot each), never on the head.
    table = cluster.table("spread")
    assert len(table) == 4 and set(table["node"]) == set(WORKERS), table[["trial_id", "node"]]

    # Every trial's checkpoints went to S3; the best 3 trials kept their best epoch's, one each.
    keys = cluster.keys("tune/spread/")
    kept = sorted(k for k in keys if k.endswith("/last.pt"))
    assert 1 <= len(kept) <= 3 and len({k.split("/")[2] for k in kept}) == len(kept), kept
    best = table.sort_values("val_loss").iloc[0]
    assert best["checkpoint"].startswith(f"s3://{BUCKET}/tune/spread/")
    best_key = best["checkpoint"].removeprefix(f"s3://{BUCKET}/") + "/last.pt"
    assert best_key in kept
    (tmp_path / "best.pt").write_bytes(cluster.read(best_key))
    assert load_checkpoint(tmp_path / "best.pt")["config"]["train"]["epochs"] == EPOCHS
    (tmp_path / "best.pt").unlink()
    for study_file in ("optuna.db", "adastft_study.json", "summary/trials.parquet", "summary/best_experiment.yaml"):
        assert f"tune/spread/study/{study_file}" in keys, study_file

    # MLflow's artifacts are in S3 too: the study summary on the parent run, each trial's
    # tensors and plots, the best model of finished trials.
    client, experiment, parent, children = _study_runs(cluster, "spread")
    assert parent.info.status == "FINISHED" and len(children) == 4
    artifacts = set(cluster.keys("mlflow/"))

    def stored(run, path):
        return f"mlflow/{experiment.experiment_id}/{run.info.run_id}/artifacts/{path}" in artifacts

    assert stored(parent, "study/trials.parquet") and stored(parent, "study/best_experiment.yaml")
    for run in children:
        assert run.info.status == "FINISHED"
        for path in (
            "tensors/window_best.npy",
            "tensors/kernel_last.npy",
            "plots/window.png",
            "plots/learning_curves.png",
            "checkpoint/best_model.pt",
        ):
            assert stored(run, path), (run.info.run_id, path)

    # Nothing of the study stays on the nodes' (or the driver's) disks.
    assert not _local_leftovers(cluster, tmp_path, "spread")


LOST_EPOCHS = 6


def _victim(cluster: Cluster, study: str, node: str) -> str | None:
    """A trial of ``study`` whose latest result came from ``node``, with a checkpoint in storage
    and at least 4 epochs to go: its folder name."""
    keys = cluster.keys(f"tune/{study}/")
    for folder, results in cluster.results(study).items():
        if results and results[-1]["node_ip"] == node and results[-1]["training_iteration"] <= LOST_EPOCHS - 4:
            if any(k.startswith(f"tune/{study}/{folder}/checkpoint_") for k in keys):
                return folder
    return None


def test_a_lost_worker_node_costs_one_retry_and_a_resumed_study_uses_it_again(cluster, tmp_path):
    """Spot preemption: every process of a worker node is killed while its trial is mid-epoch.

    The trial is retried on the other worker from its last checkpoint in S3. While it is still
    training there, the driver dies too and the other worker goes away; the lost node comes back,
    and the resumed study finishes the trial on it, from S3 again."""
    argv = cluster.search(tmp_path, "lost", "--max-failures", "2", epochs=LOST_EPOCHS)
    driver = cluster.start_driver(argv, tmp_path)
    victim_node, survivor = WORKERS[1], WORKERS[0]
    log = lambda: (tmp_path / "driver.log").read_text()[-3000:]  # noqa: E731
    try:
        # The victim has reported an epoch and its checkpoint is in S3 (Tune uploads the result
        # after the checkpoint): it is training its next epoch, 4 or more still to go.
        victim = wait_for(
            lambda: _victim(cluster, "lost", victim_node),
            300,
            f"a checkpointed trial on {victim_node}",
            interval=0.2,
            on_fail=log,
        )
        done_before = cluster.results("lost")[victim][-1]["training_iteration"]
        cluster.kill_node(victim_node)

        # Ray notices the node is gone, the trial fails and is retried on the survivor from its
        # last checkpoint in S3 (its epochs go on from there: not from 1).
        retried = wait_for(
            lambda: (r := cluster.results("lost").get(victim)) and r[-1]["node_ip"] == survivor and r,
            400,
            "the victim trial to go on on the other worker",
            interval=0.2,
            on_fail=log,
        )
        assert [r["training_iteration"] for r in retried] == list(range(1, len(retried) + 1)), retried
        assert done_before < retried[-1]["training_iteration"] < LOST_EPOCHS, (done_before, retried)
        os.killpg(driver.pid, signal.SIGKILL)  # the study is interrupted mid-trial
        driver.wait(30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

    # The other worker goes, the lost node comes back: the resumed study can only run there.
    cluster.stop_node(survivor, tmp_path)
    cluster.start_worker(victim_node)
    try:
        proc = cluster.run(
            cluster.search(tmp_path, "lost", "--max-failures", "2", "--resume", epochs=LOST_EPOCHS), cwd=tmp_path
        )
    finally:
        cluster.start_worker(survivor)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    table = cluster.table("lost")
    victim_id = victim.split("_")[2]
    assert table.set_index("trial_id").loc[victim_id, "node"] == victim_node, table[["trial_id", "node"]]
    steps = [r["training_iteration"] for r in cluster.results("lost")[victim]]
    assert sorted(set(steps)) == list(range(1, LOST_EPOCHS + 1)) and len(steps) <= LOST_EPOCHS + 2, steps

    # Exactly the requested trials, each ended in Optuna; MLflow's runs all closed.
    import optuna

    study_dir = tmp_path / "optuna"
    study_dir.mkdir()
    (study_dir / "optuna.db").write_bytes(cluster.read("tune/lost/study/optuna.db"))
    trials = optuna.load_study(study_name="lost", storage=f"sqlite:///{study_dir}/optuna.db").get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 4 and "RUNNING" not in states, states
    client, _, parent, children = _study_runs(cluster, "lost")
    assert parent.info.status == "FINISHED"
    assert {r.info.status for r in children} <= {"FINISHED", "KILLED"}, [
        (r.data.tags.get("tune_trial_id"), r.info.status, r.data.tags.get("failure")) for r in children
    ]
    (victim_run,) = [r for r in children if r.data.tags["tune_trial_id"] == victim_id]
    assert victim_run.info.status == "FINISHED"
    for run in children:  # every epoch once in each run; one logged twice only if tagged as redone
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        if run.info.status == "FINISHED":
            assert sorted(set(steps)) == list(range(LOST_EPOCHS)), steps
        twice = sorted({s for s in steps if steps.count(s) > 1})
        assert run.data.tags.get("redone_epochs", "") == ",".join(map(str, twice)), (steps, run.data.tags)
    assert not _local_leftovers(cluster, tmp_path, "lost", away=survivor)


def test_storage_unreachable_for_20_s_mid_study_is_ridden_out(cluster, tmp_path):
    """The S3 server frozen (SIGSTOP) for 20 s while trials are mid-study: its requests hang, as
    when a store stops answering. The search's S3 filesystem waits and retries (up to 10 requests
    of 30 s), so checkpoint uploads and the driver's snapshots are late, not lost: no trial fails,
    no retry is spent, every epoch is there once."""
    driver = cluster.start_driver(cluster.search(tmp_path, "outage", trials=2), tmp_path)
    try:
        wait_for(
            lambda: (
                any(r and r[-1]["training_iteration"] < EPOCHS for r in cluster.results("outage").values())
                and any(k.rsplit("/", 2)[-2].startswith("checkpoint_") for k in cluster.keys("tune/outage/"))
            ),
            300,
            "a trial mid-study with a checkpoint in S3",
            interval=0.2,
            on_fail=lambda: (tmp_path / "driver.log").read_text()[-3000:],
        )
        os.killpg(cluster.s3.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(20)
        finally:
            os.killpg(cluster.s3.proc.pid, signal.SIGCONT)
        assert driver.wait(600) == 0, (tmp_path / "driver.log").read_text()[-4000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    log = (tmp_path / "driver.log").read_text()
    assert "Trial status: 2 TERMINATED" in log and "ERROR" not in log.split("Trial status")[-1], log[-3000:]
    for folder, results in cluster.results("outage").items():
        assert [r["training_iteration"] for r in results] == list(range(1, EPOCHS + 1)), (folder, results)
    client, _, parent, children = _study_runs(cluster, "outage")
    assert parent.info.status == "FINISHED" and len(children) == 2
    for run in children:
        assert run.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == list(range(EPOCHS))
    assert not _local_leftovers(cluster, tmp_path, "outage")
