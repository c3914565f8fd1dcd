#!/usr/bin/env bash
# A real multi-node Ray cluster on this machine: one head and N worker nodes, all on 127.0.0.1,
# each a separate `ray start --block` process with its own temp dir and explicit CPU resources.
#
#   clusters/local-cluster.sh start N   # head + N workers; prints RAY_ADDRESS and the Jobs API URL
#   clusters/local-cluster.sh status    # which nodes are up, `ray status` of the cluster
#   clusters/local-cluster.sh stop      # stops exactly the processes this script started
#
# Settings (environment variables):
#   PRUNETUNE_CLUSTER_DIR  folder for the node temp dirs, logs, pid files (default
#                          /tmp/ptcluster; keep it short: Ray's socket paths live under it)
#   CPUS_PER_NODE          CPUs each node offers to Ray (default 1)
#   GPUS_PER_NODE          GPUs each node offers to Ray (default 0)
#   OBJECT_STORE_BYTES     object store size per node (default 300000000)
#   HEAD_PORT              GCS port of the head (default: a free port)
#   DASHBOARD_PORT         dashboard / Jobs API port (default: a free port)
#   RAY                    the `ray` executable (default: .venv/bin/ray of this repo, else `ray`)
#   RAY_AUTH_MODE          token (default: nodes and clients share ~/.ray/auth_token) or disabled
#
# Every port is chosen free at start (or given above), so several clusters can share a machine.
# `stop` never runs `ray stop` (that would stop every Ray process of this user on the machine):
# it signals the pids recorded at start, then any leftover process whose command line names
# this cluster's folder.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
DIR=${PRUNETUNE_CLUSTER_DIR:-/tmp/ptcluster}
CPUS=${CPUS_PER_NODE:-1}
GPUS=${GPUS_PER_NODE:-0}
OBJ_BYTES=${OBJECT_STORE_BYTES:-300000000}
HOST=127.0.0.1
MARKER=.prunetune-local-cluster  # marks folders this script made (stop only touches those)
if [[ -z "${RAY:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/ray" ]]; then RAY="$ROOT/.venv/bin/ray"; else RAY=ray; fi
fi
BIN=$(dirname "$(command -v "$RAY")")
PYTHON=$BIN/python
[[ -x "$PYTHON" ]] || PYTHON=python3
# Jobs run their entrypoint (`prunetune search ...`) with the nodes' PATH: put this Ray's bin
# folder (the virtual environment with prunetune installed) first.
export PATH="$BIN:$PATH"
# Ray token authentication, on by default (RAY_AUTH_MODE=disabled turns it off): every node,
# and every client (prunetune submit, ray job ...), uses the token in ~/.ray/auth_token
# (or $RAY_AUTH_TOKEN); `start` creates one when there is none.
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

usage() {
  echo "usage: $0 start N | stop | status" >&2
  echo "  start N: a head and N worker nodes (N >= 0) on $HOST, $CPUS CPU(s) each" >&2
  exit 2
}

free_ports() {  # free_ports K: K distinct free TCP ports on 127.0.0.1, one per line
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
EOF
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_ports() {  # the per-node ports every node needs, as ray start flags
  local p
  mapfile -t p < <(free_ports 6)
  echo "--node-manager-port ${p[0]} --object-manager-port ${p[1]}" \
       "--dashboard-agent-listen-port ${p[2]} --dashboard-agent-grpc-port ${p[3]}" \
       "--runtime-env-agent-port ${p[4]} --metrics-export-port ${p[5]}"
}

wait_for_nodes() {  # wait_for_nodes DASHBOARD_URL COUNT TIMEOUT_S PID...
  PTC_TOKEN="${TOKEN:-}" "$PYTHON" - "$@" <<'EOF'
import json, os, sys, time, urllib.request
url, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
token = os.environ.get("PTC_TOKEN", "")
headers = {"Authorization": f"Bearer {token}"} if token else {}
pids = [int(p) for p in sys.argv[4:]]
deadline, seen, last = time.time() + timeout, -1, ""
while time.time() < deadline:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except OSError:
            print(f"ray start (pid {pid}) exited", file=sys.stderr)
            sys.exit(1)
    try:
        req = urllib.request.Request(f"{url}/nodes?view=summary", headers=headers)
        with urllib.request.urlopen(req, timeout=5) as r:
            nodes = json.load(r)["data"]["summary"]
        seen = sum(n.get("raylet", {}).get("state") == "ALIVE" for n in nodes)
        if seen >= want:
            sys.exit(0)
    except Exception as err:  # dashboard not up yet
        last = str(err)
    time.sleep(1)
print(f"timed out after {timeout:.0f}s waiting for {want} alive nodes (saw {seen}; {last})",
      file=sys.stderr)
sys.exit(1)
EOF
}

start() {
  local n=$1
  [[ "$n" =~ ^[0-9]+$ ]] || { echo "start N: N must be a whole number >= 0, got '$n'" >&2; exit 2; }
  if alive "$DIR/head.pid"; then
    echo "a cluster is already running from $DIR (head pid $(cat "$DIR/head.pid")); run '$0 stop'" \
         "first or set PRUNETUNE_CLUSTER_DIR to another folder" >&2
    exit 1
  fi
  if [[ -d "$DIR" && ! -f "$DIR/$MARKER" && -n "$(ls -A "$DIR")" ]]; then
    echo "PRUNETUNE_CLUSTER_DIR=$DIR is a non-empty folder this script did not create; choose" \
         "an empty or new folder" >&2
    exit 2
  fi
  rm -rf "$DIR" && mkdir -p "$DIR" && touch "$DIR/$MARKER"
  if [[ "$RAY_AUTH_MODE" == token ]]; then
    TOKEN=$("$RAY" get-auth-token --generate 2>/dev/null | tail -n 1)
    [[ -n "$TOKEN" ]] || { echo "could not read or create the Ray auth token" \
        "(ray get-auth-token --generate); set RAY_AUTH_MODE=disabled to run without one" >&2; exit 1; }
  fi
  local ports head_port dash_port
  mapfile -t ports < <(free_ports 2)
  head_port=${HEAD_PORT:-${ports[0]}}
  dash_port=${DASHBOARD_PORT:-${ports[1]}}
  local common=(--block --node-ip-address "$HOST" --num-cpus "$CPUS" --num-gpus "$GPUS"
                --object-store-memory "$OBJ_BYTES" --disable-usage-stats)

  mkdir -p "$DIR/head"
  # shellcheck disable=SC2046
  nohup "$RAY" start --head "${common[@]}" --temp-dir "$DIR/head" --port "$head_port" \
      --include-dashboard true \
      --dashboard-host "$HOST" --dashboard-port "$dash_port" $(node_ports) \
      >"$DIR/head.log" 2>&1 &
  echo $! >"$DIR/head.pid"
  if ! wait_for_nodes "http://$HOST:$dash_port" 1 90 "$(cat "$DIR/head.pid")"; then
    echo "the head node did not come up; see $DIR/head.log" >&2
    tail -n 20 "$DIR/head.log" >&2 || true
    stop; exit 1
  fi

  for i in $(seq 1 "$n"); do
    mkdir -p "$DIR/worker-$i"
    # shellcheck disable=SC2046
    nohup "$RAY" start "${common[@]}" --temp-dir "$DIR/worker-$i" \
        --address "$HOST:$head_port" $(node_ports) >"$DIR/worker-$i.log" 2>&1 &
    echo $! >"$DIR/worker-$i.pid"
  done
  # shellcheck disable=SC2046
  if ! wait_for_nodes "http://$HOST:$dash_port" $((n + 1)) 120 $(cat "$DIR"/*.pid); then
    echo "not every worker node joined; see $DIR/worker-*.log" >&2
    stop; exit 1
  fi
  cat >"$DIR/cluster.env" <<EOF
RAY_ADDRESS=$HOST:$head_port
RAY_DASHBOARD=http://$HOST:$dash_port
RAY_AUTH_MODE=$RAY_AUTH_MODE
EOF
  echo "Ray cluster up: head + $n worker node(s), $CPUS CPU(s) each, folder $DIR"
  echo "RAY_ADDRESS=$HOST:$head_port        # prunetune search CONFIG --address $HOST:$head_port"
  echo "RAY_DASHBOARD=http://$HOST:$dash_port  # prunetune submit CONFIG --address http://$HOST:$dash_port"
  echo "RAY_AUTH_MODE=$RAY_AUTH_MODE  # clients: export RAY_AUTH_MODE=$RAY_AUTH_MODE (token in ~/.ray/auth_token)"
}

stop() {
  [[ -f "$DIR/$MARKER" ]] || { echo "no cluster folder $DIR: nothing to stop"; return 0; }
  local f pid
  # Workers first, then the head; `ray start --block` stops its own processes on SIGTERM.
  for f in "$DIR"/worker-*.pid "$DIR"/head.pid; do
    [[ -f "$f" ]] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 1 30); do
    local any=0
    for f in "$DIR"/*.pid; do alive "$f" && any=1; done
    [[ $any == 0 ]] && break
    sleep 0.5
  done
  # Leftovers (workers, agents) are found by this cluster's folder in their command line.
  local left=()
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [[ "$pid" == "$$" ]] && continue
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$DIR/"; then left+=("$pid"); fi
  done
  for pid in "${left[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${left[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -f "$DIR"/*.pid "$DIR/cluster.env"
  echo "Ray cluster in $DIR stopped"
}

status() {
  [[ -f "$DIR/cluster.env" ]] || { echo "no cluster running from $DIR"; return 1; }
  cat "$DIR/cluster.env"
  local f
  for f in "$DIR"/head.pid "$DIR"/worker-*.pid; do
    [[ -f "$f" ]] || continue
    if alive "$f"; then echo "$(basename "$f" .pid): up (pid $(cat "$f"))";
    else echo "$(basename "$f" .pid): DOWN"; fi
  done
  # shellcheck disable=SC1091
  (source "$DIR/cluster.env" && "$RAY" status --address "$RAY_ADDRESS") || true
}

case "${1:-}" in
  start) [[ $# == 2 ]] || usage; start "$2" ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
