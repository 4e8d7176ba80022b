#!/usr/bin/env bash
# A local Prefect server and a process worker in the background (`make up` / `make down`).
#
#   infra/local.sh up     start the server on 127.0.0.1:$SIP_PORT, wait for /api/health, create the
#                         `sip-process` pool, start a worker on it, `prefect deploy --all`
#   infra/local.sh down   stop both by the PIDs written at start (each leads its own process group)
#   infra/local.sh status
#
# With SIP_STATE_DB=1 (`make up STATE_DB=1`) `up` also starts a local Postgres for run.state (a
# DuckLake catalog shared by every process of this machine; docs/running-at-scale.md section 5):
# initdb in $SIP_RUN_DIR/state-pg on 127.0.0.1:$SIP_STATE_PORT (default 5433), as the `postgres`
# user when run as root (Postgres refuses root); `down` stops it. Needs Debian's postgresql.
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
  if [ "${SIP_STATE_DB:-0}" = 1 ]; then state_db_up; fi
  echo "up: export PREFECT_API_URL=$PREFECT_API_URL"
}

pg_bin() {
  local found
  found="$(command -v "$1" 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$found" ] || { echo "$1 not found: apt-get install postgresql (or make postgres)" >&2; exit 1; }
  echo "$found"
}

# Run a command as the user that owns the catalog's files (postgres when we are root).
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

state_db_up() {
  local dir="$RUN_DIR/state-pg" port="${SIP_STATE_PORT:-5433}"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg "$(pg_bin initdb)" -D "$dir/data" -A trust -U sip >/dev/null
  fi
  if as_pg "$(pg_bin pg_ctl)" -D "$dir/data" status >/dev/null 2>&1; then echo "state catalog already running"; else
    as_pg "$(pg_bin pg_ctl)" -D "$dir/data" -l "$dir/log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
  fi
  # the database the README's examples name; createdb fails harmlessly when it exists
  as_pg "$(pg_bin createdb)" -h "$dir" -p "$port" -U sip sip_state 2>/dev/null || true
  echo "state catalog: --set run.state=postgres://sip@127.0.0.1:$port/sip_state"
}

state_db_down() {
  local dir="$RUN_DIR/state-pg"
  [ -f "$dir/data/PG_VERSION" ] || return 0
  if as_pg "$(pg_bin pg_ctl)" -D "$dir/data" status >/dev/null 2>&1; then
    as_pg "$(pg_bin pg_ctl)" -D "$dir/data" -m fast stop >/dev/null && echo "state catalog stopped"
  fi
}

down() {
  stop worker
  stop server
  state_db_down
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
