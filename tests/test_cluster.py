"""The cluster files and the search's cluster checks.

- cluster/aws.yaml and cluster/local.yaml pass Ray's own launcher validation (prepare_config,
  then validate_config, which checks Ray's JSON schema and the launcher's rules);
  cluster/kuberay.yaml has what KubeRay's RayCluster CRD requires.
- cluster/aws.yaml goes through the launcher's AWS bootstrap (IAM role and instance profile, key
  pair, subnets, security group, node resources) and its nodes launch. AWS IS MOCKED (moto): no
  cloud is reachable from here, so these AWS calls go to moto's in-process fake of EC2 and IAM.
- `python tune/search.py --address <cluster>` on a real two-node Ray cluster (two `ray start`
  nodes on this machine, each in its own namespace, the worker with name lookups of its own, as
  on another network) refuses, before any trial, a results folder local to the driver and an
  MLflow URI that the other node cannot reach.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from cluster_sandbox import (
    PYTHON_BIN,
    Sandboxed,
    free_port,
    hosts_file,
    mlflow_server,
    ray_auth_home,
    require_namespaces,
    run_with_mounts,
    short_tmp,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
SEARCH = ROOT / "tune" / "search.py"
RAY = str(Path(PYTHON_BIN) / "ray")


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


# --- the files -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["aws.yaml", "local.yaml"])
def test_launcher_yamls_pass_rays_own_validation(name):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(name)
    prepared = prepare_config(copy.deepcopy(config))  # the launcher's first step of `ray up`
    validate_config(prepared)  # Ray's JSON schema, then the launcher's own rules
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(prepared, schema)
    with pytest.raises(jsonschema.ValidationError):  # the schema is strict: a typo would fail
        jsonschema.validate({**prepared, "max_worker": 3}, schema)

    # What the search needs from any launcher cluster: the synced tree installed, the MLflow
    # server before Ray on the head, the dashboard on loopback, token auth, the token synced.
    assert prepared["file_mounts"] == {"~/adastft": ".", "~/.ray/auth_token": "~/.ray/auth_token"}
    assert any("node.sh setup" in c for c in prepared["setup_commands"])
    head = " ".join(prepared["head_start_ray_commands"])
    assert head.index("node.sh mlflow") < head.index("ray start --head")
    assert "--dashboard-host=127.0.0.1" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    env = (CLUSTER / name.replace(".yaml", ".env")).read_text()
    assert re.search(r"^RAY_AUTH_MODE=token$", env, re.M)


def test_aws_yaml_node_types():
    config = load("aws.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    gpu = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert {t["node_config"]["InstanceType"] for t in gpu.values()} >= {"g5.xlarge", "g5.12xlarge"}
    spot = [t for t in gpu.values() if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    assert spot
    assert all("min_workers" in t and "max_workers" in t for t in gpu.values())
    assert config["idle_timeout_minutes"] > 0 and config["max_workers"] >= sum(t["min_workers"] for t in gpu.values())
    env = (CLUSTER / "aws.env").read_text()
    assert "MLFLOW_ARTIFACTS_DESTINATION=s3://$ADASTFT_BUCKET/" in env


def test_kuberay_yaml_has_the_fields_kuberay_requires():
    # The rules of KubeRay's RayCluster CRD (ray.io/v1): spec.headGroupSpec.template is required;
    # each worker group needs groupName, minReplicas, maxReplicas and template; pod templates need
    # containers with a name; rayStartParams values are strings; authOptions.mode is disabled|token.
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay.yaml").read_text()) if d]
    (cluster,) = [d for d in docs if d.get("kind") == "RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    spec = cluster["spec"]
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] is True
    assert tuple(int(x) for x in spec["rayVersion"].split(".")[:2]) >= (2, 52)  # token auth needs 2.52+

    def check_group(group: dict) -> list[dict]:
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), f"rayStartParams values must be strings: {params}"
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c.get("name") and c.get("image") for c in containers)
        return containers

    head = check_group(spec["headGroupSpec"])
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"  # nothing exposed outside
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert any(c["name"] == "mlflow" for c in head)
    (gpu,) = spec["workerGroupSpecs"]
    for key in ("groupName", "minReplicas", "maxReplicas", "template"):
        assert key in gpu
    assert 0 <= gpu["minReplicas"] <= gpu.get("replicas", 0) <= gpu["maxReplicas"]
    (worker,) = check_group(gpu)
    assert worker["resources"]["limits"]["nvidia.com/gpu"] >= 1


def test_no_credentials_and_every_yaml_says_how_it_runs():
    secret = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|BEGIN [A-Z ]*PRIVATE KEY|password\s*[:=]\s*\S", re.I)
    for path in sorted(CLUSTER.iterdir()):
        if path.is_file():
            assert not secret.search(path.read_text()), f"credential-like text in {path.name}"
    for name, command in (
        ("aws.yaml", "ray up cluster/aws.yaml"),
        ("local.yaml", "ray up cluster/local.yaml"),
        ("kuberay.yaml", "kubectl apply -f cluster/kuberay.yaml"),
    ):
        head = (CLUSTER / name).read_text().split("\n\n")[0]
        assert head.startswith("#") and command in head, name


# --- the AWS bootstrap against a mocked AWS ----------------------------------------------------


@pytest.fixture
def mocked_aws(tmp_path, monkeypatch):
    """AWS IS MOCKED: moto fakes EC2 and IAM in this process (no cloud is reachable from here).
    Fake credentials, a throwaway HOME for the key file `ray up` writes, AWS's managed policies
    loaded into the fake IAM (the launcher attaches two of them), and no 2 x 15 s waits for IAM
    propagation, which only a real AWS needs."""
    moto = pytest.importorskip("moto")
    import ray.autoscaler._private.aws.config as aws_config

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-west-2",
        "MOTO_IAM_LOAD_MANAGED_POLICIES": "true",
        "HOME": str(tmp_path),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(aws_config.time, "sleep", lambda seconds: None)
    with moto.mock_aws():
        yield tmp_path


def test_aws_yaml_goes_through_the_launchers_aws_bootstrap(mocked_aws):
    import boto3
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler.sdk import bootstrap_config
    from ray.autoscaler.tags import (
        TAG_RAY_LAUNCH_CONFIG,
        TAG_RAY_NODE_KIND,
        TAG_RAY_NODE_NAME,
        TAG_RAY_NODE_STATUS,
        TAG_RAY_USER_NODE_TYPE,
    )

    raw = load("aws.yaml")
    config = bootstrap_config(copy.deepcopy(raw), no_config_cache=True)  # what `ray up` does before launching
    region = raw["provider"]["region"]
    ec2, iam = boto3.client("ec2", region), boto3.client("iam")
    types = config["available_node_types"]

    # IAM: the head's instance profile, with a role that may launch instances and use S3; the
    # workers name the same profile (for their S3 checkpoints), so it must exist.
    profile_arn = config["head_node"]["IamInstanceProfile"]["Arn"]
    profile = iam.get_instance_profile(InstanceProfileName=profile_arn.rsplit("/", 1)[1])["InstanceProfile"]
    (role,) = profile["Roles"]
    policies = {p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]}
    assert {"AmazonEC2FullAccess", "AmazonS3FullAccess"} <= policies
    for name, node_type in types.items():
        if name != config["head_node_type"]:
            assert node_type["node_config"]["IamInstanceProfile"] == {"Name": profile["InstanceProfileName"]}

    # Key pair: created in EC2, its private key written to ~/.ssh with 0600.
    key_path = Path(config["auth"]["ssh_private_key"])
    assert key_path.is_relative_to(mocked_aws / ".ssh") and key_path.stat().st_mode & 0o077 == 0
    key_names = {t["node_config"]["KeyName"] for t in types.values()}
    assert key_names == {k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]}

    # Subnets of one VPC, in the listed zones; one security group for all nodes.
    subnets = {s["SubnetId"]: s for s in ec2.describe_subnets()["Subnets"]}
    zones = set(raw["provider"]["availability_zone"].split(","))
    for node_type in types.values():
        assert node_type["node_config"]["SubnetIds"]
        assert {subnets[s]["AvailabilityZone"] for s in node_type["node_config"]["SubnetIds"]} <= zones
    (sg_id,) = {sg for t in types.values() for sg in t["node_config"]["SecurityGroupIds"]}
    (sg,) = ec2.describe_security_groups(GroupIds=[sg_id])["SecurityGroups"]
    # From outside only SSH; everything else only from the cluster's own group (MLflow, the
    # dashboard and Ray's ports are reached through the SSH tunnel).
    for rule in sg["IpPermissions"]:
        if rule.get("IpRanges") or rule.get("Ipv6Ranges"):
            assert (rule["IpProtocol"], rule.get("FromPort"), rule.get("ToPort")) == ("tcp", 22, 22), rule
        else:
            assert [p["GroupId"] for p in rule["UserIdGroupPairs"]] == [sg_id], rule

    # Resources read from the instance types: the GPU types have their GPUs, the head no CPU for trials.
    assert types["head"]["resources"] == {"CPU": 0}
    assert types["gpu-1x"]["resources"]["GPU"] == 1 and types["gpu-4x"]["resources"]["GPU"] == 4
    assert types["gpu-4x"]["resources"]["CPU"] == 48

    # The nodes launch with these settings (the head as `ray up` would, a spot worker as the
    # autoscaler would).
    provider = AWSNodeProvider(config["provider"], config["cluster_name"])
    for kind, node_type, node_config in (
        ("head", "head", {**types["head"]["node_config"], **config["head_node"]}),
        ("worker", "gpu-1x-spot", types["gpu-1x-spot"]["node_config"]),
    ):
        provider.create_node(
            node_config,
            {
                TAG_RAY_NODE_KIND: kind,
                TAG_RAY_USER_NODE_TYPE: node_type,
                TAG_RAY_NODE_NAME: f"ray-{config['cluster_name']}-{kind}",
                TAG_RAY_NODE_STATUS: "uninitialized",
                TAG_RAY_LAUNCH_CONFIG: "test",
            },
            1,
        )
    instances = {i["InstanceType"]: i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    head, spot = instances["m5.xlarge"], instances["g5.xlarge"]
    assert head["IamInstanceProfile"]["Arn"] == profile_arn
    assert spot.get("InstanceLifecycle") == "spot"
    for instance in (head, spot):
        assert [g["GroupId"] for g in instance["SecurityGroups"]] == [sg_id]
        assert instance["KeyName"] in key_names


# --- the search's checks on a real multi-node cluster ------------------------------------------


def test_launcher_capacity_counts_the_workers_an_autoscaling_cluster_can_start(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT))
    from tune.cluster_checks import _cluster_span, launcher_capacity

    monkeypatch.setenv("HOME", str(tmp_path))
    assert launcher_capacity() is None and _cluster_span([{"Alive": True}]) is None
    head_only = {"alive": True}
    (tmp_path / "ray_bootstrap_config.yaml").write_text(
        yaml.safe_dump(
            {
                "max_workers": 5,
                "head_node_type": "head",
                "available_node_types": {
                    "head": {"resources": {"CPU": 0}, "max_workers": 0},
                    "gpu-1x": {"resources": {"CPU": 4, "GPU": 1}, "max_workers": 4},
                    "gpu-4x": {"resources": {"CPU": 48, "GPU": 4}, "max_workers": 2},
                },
            }
        )
    )
    assert launcher_capacity() == {"workers": 5, "CPU": 4 * 4 + 2 * 48, "GPU": 4 + 2 * 4}
    assert _cluster_span([head_only]) == "the cluster can grow to 5 worker nodes (~/ray_bootstrap_config.yaml)"
    assert _cluster_span([head_only, head_only]) == "the cluster has 2 nodes"


@pytest.fixture(scope="module")
def two_nodes():
    """A Ray head (127.0.0.1 side) and a worker node (127.0.0.2), each in its own namespace, with
    token authentication; an MLflow server on 127.0.0.1. The name mlflow.cluster.test resolves to
    that server on the head and for the driver, but to a closed port on the worker, as a name
    that only the head's network knows; mlflow-ok.cluster.test resolves to it everywhere."""
    require_namespaces()
    tmp = short_tmp("rcl-")
    env = ray_auth_home(tmp / "home")
    mlflow_port = free_port()
    names_ok = {"mlflow.cluster.test": "127.0.0.1", "mlflow-ok.cluster.test": "127.0.0.1"}
    hosts_head = hosts_file(tmp / "hosts-head", names_ok)
    hosts_worker = hosts_file(tmp / "hosts-worker", {**names_ok, "mlflow.cluster.test": "127.0.0.3"})
    gcs = free_port()
    common = ["--block", "--num-cpus", "1", "--disable-usage-stats"]
    started = []
    try:
        started.append(mlflow_server(tmp, mlflow_port))
        started.append(
            Sandboxed(
                [
                    RAY,
                    "start",
                    "--head",
                    "--node-ip-address",
                    "127.0.0.1",
                    "--port",
                    str(gcs),
                    "--temp-dir",
                    str(tmp / "head"),
                    "--include-dashboard",
                    "false",
                    "--dashboard-agent-listen-port",
                    str(free_port()),
                    *common,
                ],
                binds={str(hosts_head): "/etc/hosts"},
                env=env,
                log=tmp / "head.log",
            )
        )
        wait_for(
            lambda: "Ray runtime started" in started[-1].tail(100000) or not started[-1].alive(),
            120,
            "the head node",
            on_fail=started[-1].tail,
        )
        started.append(
            Sandboxed(
                [
                    RAY,
                    "start",
                    "--address",
                    f"127.0.0.1:{gcs}",
                    "--node-ip-address",
                    "127.0.0.2",
                    "--temp-dir",
                    str(tmp / "worker"),
                    "--dashboard-agent-listen-port",
                    str(free_port()),
                    *common,
                ],
                binds={str(hosts_worker): "/etc/hosts"},
                env=env,
                log=tmp / "worker.log",
            )
        )
        wait_for(
            lambda: "Ray runtime started" in started[-1].tail(100000) or not started[-1].alive(),
            120,
            "the worker node",
            on_fail=started[-1].tail,
        )
        assert all(s.alive() for s in started), [s.tail() for s in started]
        yield {"tmp": tmp, "env": env, "address": f"127.0.0.1:{gcs}", "mlflow_port": mlflow_port, "hosts": hosts_head}
    finally:
        for s in reversed(started):
            s.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def search_on(cluster: dict, tmp_path: Path, *args: str) -> tuple[int, str]:
    """`python tune/search.py --address <cluster> ...` as a driver on the head's side (its name lookups)."""
    proc = run_with_mounts(
        [
            sys.executable,
            str(SEARCH),
            "--address",
            cluster["address"],
            "--trials",
            "2",
            "--search",
            "quickstart",
            "--name",
            "refused",
            "tracking.experiment=cluster-refusal",
            "data=synthetic",
            f"data.cache_dir={tmp_path}/cache",
            *args,
        ],
        binds={str(cluster["hosts"]): "/etc/hosts"},
        env=cluster["env"],
        cwd=tmp_path,
        timeout=300,
    )
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    if not last.startswith("search: error: "):  # for the failure message: what happened instead
        last += f"\n--- stdout:\n{proc.stdout[-3000:]}\n--- stderr:\n{proc.stderr[-5000:]}"
    return proc.returncode, last


@pytest.mark.slow
def test_the_search_refuses_a_multi_node_run_that_workers_cannot_serve(two_nodes, tmp_path):
    from mlflow.tracking import MlflowClient

    server = f"mlflow.cluster.test:{two_nodes['mlflow_port']}"
    shared_env = {"ADASTFT_STORAGE_IS_SHARED": "1"}

    # 1. Results in a folder of the driver's machine: refused.
    rc, line = search_on(two_nodes, tmp_path, f"tracking.uri=http://{server}")
    assert rc == 2 and line.startswith("search: error: --storage "), line
    assert "is a local path but the cluster has 2 nodes" in line

    two_nodes["env"].update(shared_env)  # from now on the folder is declared shared (an NFS mount)
    try:
        # 2. MLflow in a file of the driver's machine: refused.
        rc, line = search_on(two_nodes, tmp_path, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
        assert rc == 2 and line.startswith("search: error: tracking.uri sqlite:"), line
        assert "is local to this machine" in line

        # 3. A server on loopback (the driver reaches it; no other machine could): refused.
        rc, line = search_on(two_nodes, tmp_path, f"tracking.uri=http://127.0.0.1:{two_nodes['mlflow_port']}")
        assert rc == 2 and "is this machine's loopback address" in line and line.startswith("search: error: ")

        # 4. A server the driver and the head reach, but the worker node cannot: probed from each
        #    node, refused, naming the node and why.
        rc, line = search_on(two_nodes, tmp_path, f"tracking.uri=http://{server}")
        assert rc == 2, line
        assert line.startswith(f"search: error: tracking.uri http://{server} is unreachable from node 127.0.0.2")
        assert "Connection refused" in line and "the cluster has 2 nodes" in line

        # Control: a server every node reaches passes the check; the search goes on to its next
        # check (no GPU here), so the refusals above came from the cluster check.
        reachable = f"http://mlflow-ok.cluster.test:{two_nodes['mlflow_port']}"
        rc, line = search_on(two_nodes, tmp_path, f"tracking.uri={reachable}", "--gpus-per-trial", "1")
        assert rc == 2 and "the Ray cluster has no GPU" in line, line
    finally:
        for key in shared_env:
            two_nodes["env"].pop(key, None)

    # Refused before any trial: no results, no MLflow run.
    assert not (tmp_path / "runs").exists()
    client = MlflowClient(f"http://127.0.0.1:{two_nodes['mlflow_port']}")
    experiment = client.get_experiment_by_name("cluster-refusal")
    assert experiment is None or not client.search_runs([experiment.experiment_id])
