#!/usr/bin/env bash
# A local Prefect server and a process worker in the background (`make up` / `make down`).
#
#   infra/local.sh up     start the server on 127.0.0.1:$SIP_PORT, wait for /api/health, create the
#                         `sip-process` pool, start a worker on it, `prefect deploy --all`
#   infra/local.sh down   stop both by the PIDs written at start (each leads its own process group)
#   infra/local.sh status
#
# Environment: SIP_PORT (default 4200), PREFECT_HOME (default <checkout>/.sip/prefect),
# SIP_RUN_DIR (default <checkout>/.sip: pids/ and logs/ go there), PREFECT (the prefect executable,
# default .venv/bin/prefect), SIP_UP_TIMEOUT (seconds to wait for the server, default 180).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PORT="${SIP_PORT:-4200}"
RUN_DIR="${SIP_RUN_DIR:-$ROOT/.sip}"
PIDS="$RUN_DIR/pids"
LOGS="$RUN_DIR/logs"
PREFECT="${PREFECT:-$ROOT/.venv/bin/prefect}"
POOL=sip-process
export PREFECT_HOME="${PREFECT_HOME:-$ROOT/.sip/prefect}"
export PREFECT_API_URL="http://127.0.0.1:$PORT/api"
export PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT="$PORT"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export SIP_PROJECT_DIR="${SIP_PROJECT_DIR:-$ROOT}"

alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

# Start a command in its own session (so `down` can stop it and its children as one group).
start() {
  local name="$1"; shift
  if alive "$name"; then echo "$name already running (pid $(cat "$PIDS/$name.pid"))"; return; fi
  setsid "$@" >"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! >"$PIDS/$name.pid"
  echo "$name started (pid $!, log $LOGS/$name.log)"
}

stop() {
  local name="$1" pid i
  [ -f "$PIDS/$name.pid" ] || return 0
  pid="$(cat "$PIDS/$name.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
    echo "$name stopped (pid $pid)"
  fi
  rm -f "$PIDS/$name.pid"
}

healthy() { "$ROOT/.venv/bin/python" - "$PREFECT_API_URL/health" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except OSError:
    sys.exit(1)
EOF
}

up() {
  mkdir -p "$PIDS" "$LOGS" "$PREFECT_HOME"
  start server "$PREFECT" server start --host 127.0.0.1 --port "$PORT"
  local deadline=$((SECONDS + ${SIP_UP_TIMEOUT:-180}))
  until healthy; do
    if ! alive server; then echo "server exited; last lines of $LOGS/server.log:" >&2; tail -n 30 "$LOGS/server.log" >&2; exit 1; fi
    if [ "$SECONDS" -ge "$deadline" ]; then echo "server not healthy after ${SIP_UP_TIMEOUT:-180}s" >&2; exit 1; fi
    sleep 1
  done
  echo "server healthy: http://127.0.0.1:$PORT (UI), $PREFECT_API_URL"
  if ! "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1; then
    "$PREFECT" work-pool create "$POOL" --type process
  fi
  (cd "$ROOT" && start worker "$PREFECT" worker start --pool "$POOL")
  (cd "$ROOT" && "$PREFECT" --no-prompt deploy --all)
  echo "up: export PREFECT_API_URL=$PREFECT_API_URL"
}

down() {
  stop worker
  stop server
}

status() {
  for name in server worker; do
    if alive "$name"; then echo "$name running (pid $(cat "$PIDS/$name.pid"))"; else echo "$name not running"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
