#!/usr/bin/env bash
# What the cluster YAMLs run on each node, from the working tree that `ray up` synced to ~/adastft:
#   bash ~/adastft/cluster/node.sh setup ENV_FILE   every node: Python environment, the project, settings
#   bash ~/adastft/cluster/node.sh mlflow           head node: (re)start the MLflow tracking server
#   bash ~/adastft/cluster/node.sh mlflow-stop      head node: stop it
# ENV_FILE is cluster/aws.env or cluster/local.env (settings, no credentials).
set -euo pipefail

TREE=~/adastft
VENV=~/adastft-venv
STATE=~/.adastft            # this node's generated settings (the MLflow address on the head)
mkdir -p "$STATE"

load() {  # the settings in every later shell: Ray's commands source ~/.bashrc first
  set -a; . "$STATE/settings.env"; [ -f "$STATE/mlflow.env" ] && . "$STATE/mlflow.env"; set +a
}

case "${1:-}" in
setup)
  env_file="$TREE/${2:?usage: node.sh setup cluster/aws.env}"
  cp "$env_file" "$STATE/settings.env"
  # A virtual environment that also sees the image's packages (CUDA-enabled builds, boto3...).
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv --system-site-packages "$VENV" 2>/dev/null || {
      # Debian/Ubuntu ship venv separately
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      python3 -m venv --system-site-packages "$VENV"
    }
  fi
  # Every shell on this node (Ray's commands, `ray attach`, `ray exec`): the venv and the settings.
  line=". $VENV/bin/activate; set -a; . $STATE/settings.env; [ -f $STATE/mlflow.env ] && . $STATE/mlflow.env; set +a  # adastft"
  touch ~/.bashrc
  grep -qF "# adastft" ~/.bashrc || printf '%s\n' "$line" | cat - ~/.bashrc > ~/.bashrc.adastft
  [ -f ~/.bashrc.adastft ] && mv ~/.bashrc.adastft ~/.bashrc   # first, before any early return for non-interactive shells
  . "$VENV/bin/activate"
  load
  # The project from the synced tree, with its pinned dependencies (already satisfied ones are kept).
  python -m pip install -q --disable-pip-version-check -e "$TREE"
  # Ray's dashboard, which serves `ray job submit` and the UI, needs Ray's "default" extras, of
  # the Ray version just installed.
  python -m pip install -q --disable-pip-version-check "ray[default]==$(python -c 'import ray; print(ray.__version__)')"
  # Optional: a data set from S3 onto every node (ADASTFT_DATA_S3 -> ADASTFT_DATA_DIR).
  if [ -n "${ADASTFT_DATA_S3:-}" ]; then
    mkdir -p "$ADASTFT_DATA_DIR"
    aws s3 sync --only-show-errors "$ADASTFT_DATA_S3" "$ADASTFT_DATA_DIR"
  fi
  ;;
mlflow)
  load
  bash "$0" mlflow-stop
  # The address Ray uses for this node: the private one (not loopback, not a public address).
  ip=$(python -c 'from ray._private.services import get_node_ip_address; print(get_node_ip_address())')
  mkdir -p ~/mlflow
  # In its own session, so that it outlives the SSH command that started it; its pid for `mlflow-stop`.
  # Host headers it answers (MLflow's guard against DNS rebinding): its private address, which the
  # nodes use (not every private network is 10/8, 172.16/12 or 192.168/16, MLflow's default), and
  # loopback, which the SSH tunnel uses.
  # MLflow's job runner (huey consumers for its GenAI scorers, on by default in MLflow 3) is
  # not used by adastft: off, so the head runs no idle consumers.
  setsid -f bash -c 'echo $$ > ~/mlflow/server.pid; exec "$@"' mlflow-server \
    env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --host "$ip" --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
      --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
      --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts \
      --allowed-hosts "$ip:$MLFLOW_PORT,localhost:*,127.0.0.1:*" \
      >> ~/mlflow/server.log 2>&1 < /dev/null
  for _ in $(seq 120); do
    if python -c "import urllib.request as u; u.urlopen('http://$ip:$MLFLOW_PORT/health', timeout=2)" 2>/dev/null; then
      printf 'export MLFLOW_TRACKING_URI=http://%s:%s\n' "$ip" "$MLFLOW_PORT" > "$STATE/mlflow.env"
      printf 'MLFLOW_ADDRESS=%s:%s\nRAY_DASHBOARD_PORT=%s\n' "$ip" "$MLFLOW_PORT" "$RAY_DASHBOARD_PORT" > "$STATE/head"
      echo "MLflow tracking server: http://$ip:$MLFLOW_PORT (private address; from your machine: python cluster/tunnel.py CLUSTER_YAML)"
      exit 0
    fi
    sleep 1
  done
  echo "MLflow server did not start; the end of ~/mlflow/server.log:" >&2
  tail -n 30 ~/mlflow/server.log >&2
  exit 1
  ;;
mlflow-stop)
  if [ -f ~/mlflow/server.pid ]; then
    pid=$(cat ~/mlflow/server.pid)
    # The server leads a session of its own (setsid above): stop the whole process group (its
    # uvicorn workers and any consumer it spawned), and wait until none is left.
    if kill -TERM -- "-$pid" 2>/dev/null; then
      for _ in $(seq 30); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f ~/mlflow/server.pid "$STATE/mlflow.env"
  fi
  ;;
*)
  sed -n '2,6p' "$0" >&2
  exit 2
  ;;
esac
