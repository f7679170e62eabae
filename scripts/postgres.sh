#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests, on 127.0.0.1 with trust auth.
#
#   eval "$(bash scripts/postgres.sh | tail -n1)"   # start (idempotent), export the DSN
#   bash scripts/postgres.sh stop                   # stop it
#
# Installs the Debian `postgresql` package when no server binaries are found
# (needs root), keeps the cluster under $ENGINE_PG_DIR (default <repo>/.pg),
# listens on ${ENGINE_PG_PORT:-55432}, creates database engine_test, and
# prints `export ENGINE_TEST_PG_DSN=...` as its last line. Everything else
# goes to stderr; any failure exits non-zero (scripts/test.sh relies on it).
# As root the server runs as the `postgres` user (initdb refuses root): when
# that user cannot reach <repo>/.pg (a clone under /root, say) and
# ENGINE_PG_DIR is not set, the cluster lives in /var/tmp/engine-pg-<port>.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PORT="${ENGINE_PG_PORT:-55432}"
DB=engine_test
DSN="postgresql://postgres@127.0.0.1:$PORT/$DB"

say() { echo "postgres.sh: $*" >&2; }

# Where the cluster lives: $ENGINE_PG_DIR, else <repo>/.pg, unless we are
# root and the postgres user cannot get there (then /var/tmp/engine-pg-<port>).
# Called again after an install creates that user, and by `stop`, so both
# find the same place.
pick_dir() {
  if [ -n "${ENGINE_PG_DIR:-}" ]; then
    PG_DIR="$ENGINE_PG_DIR"
  elif [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1 \
    && ! runuser -u postgres -- test -x "$REPO"; then
    PG_DIR="/var/tmp/engine-pg-$PORT"
  else
    PG_DIR="$REPO/.pg"
  fi
  DATA="$PG_DIR/data"
}
pick_dir

# The newest /usr/lib/postgresql/<version>/bin holding initdb, or nothing.
# A glob, not `ls | sort`: under pipefail a failing ls would end the script
# right here, silently, on exactly the machines that need the install.
find_bin() {
  local dir dirs=()
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ]; then dirs+=("$dir"); fi
  done
  if [ "${#dirs[@]}" -gt 0 ]; then printf '%s\n' "${dirs[@]}" | sort -V | tail -n1; fi
}

# Run a server binary as the cluster's owner: `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    # From /: the caller's directory may be closed to that user (a clone under /root).
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

BIN="$(find_bin)"

if [ "${1:-}" = "stop" ]; then
  if [ -n "$BIN" ] && [ -f "$DATA/PG_VERSION" ] \
    && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2
  else
    say "not running"
  fi
  exit 0
fi
if [ -n "${1:-}" ]; then
  say "unknown argument '$1'; use no argument to start, or 'stop'"
  exit 2
fi

if [ -z "$BIN" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin; run as root to install them"
    exit 1
  fi
  say "installing the postgresql package"
  # The package may create and start its own cluster on port 5432; ours is
  # separate (own data directory and port), so that one is left alone.
  apt-get update >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
  BIN="$(find_bin)"
  [ -n "$BIN" ] || { say "installed postgresql, but found no initdb under /usr/lib/postgresql"; exit 1; }
  pick_dir  # the package created the postgres user: can it reach the repo?
fi

ready() { "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; }

if ! ready; then
  mkdir -p "$PG_DIR"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$PG_DIR" postgres
    chown -R postgres: "$PG_DIR"
    runuser -u postgres -- test -w "$PG_DIR" || {
      say "user postgres cannot reach $PG_DIR (a parent folder is private?); set ENGINE_PG_DIR"
      exit 1
    }
  fi
  if [ ! -f "$DATA/PG_VERSION" ]; then
    say "creating a cluster in $DATA"
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C >&2
  fi
  say "starting on 127.0.0.1:$PORT"
  as_owner "$BIN/pg_ctl" -D "$DATA" -l "$PG_DIR/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $PG_DIR -c max_connections=200" >&2 || {
    say "the server did not start; its log ($PG_DIR/server.log) ends with:"
    tail -n 20 "$PG_DIR/server.log" >&2 || true
    exit 1
  }
  for _ in $(seq 1 60); do
    ready && break
    sleep 0.5
  done
  ready || { say "the server does not accept connections on port $PORT"; exit 1; }
fi

psql_() { "$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
if [ "$(psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
  say "creating database $DB"
  "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB" >&2
fi

echo "export ENGINE_TEST_PG_DSN=$DSN"
