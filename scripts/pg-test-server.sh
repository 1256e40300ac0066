#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the broker's tests (docs/broker.md "Tests"):
#
#   scripts/pg-test-server.sh run CMD ARGS...  start one, run CMD with
#                                             SEALTENSORS_TEST_POSTGRES_URL set, stop
#                                             and delete it (also when CMD fails)
#   scripts/pg-test-server.sh start           start one in $SEALTENSORS_PG_DIR and print
#                                             the `export SEALTENSORS_TEST_POSTGRES_URL=...`
#                                             line (eval "$(scripts/pg-test-server.sh start)")
#   scripts/pg-test-server.sh stop            stop it and delete its folder
#
# It needs PostgreSQL's server programs (Debian: apt-get install -y postgresql);
# the newest /usr/lib/postgresql/*/bin is used, or $PG_BIN. The cluster listens on
# 127.0.0.1 only, on a free port, with trust authentication: a test cluster, never
# a production one. Run as root, the server runs as the `postgres` user
# (PostgreSQL refuses to run as root).
set -euo pipefail

DIR_DEFAULT="${TMPDIR:-/tmp}/sealtensors-pg-test"
DB=sealtensors_test

die() {
    echo "pg-test-server: $*" >&2
    exit 1
}

pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        echo "$PG_BIN"
        return
    fi
    local b
    b=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z "$b" ]] && command -v pg_config >/dev/null; then
        b=$(pg_config --bindir)
    fi
    [[ -n "$b" && -x "$b/initdb" && -x "$b/pg_ctl" ]] ||
        die "no PostgreSQL server programs (initdb, pg_ctl): apt-get install -y postgresql, or set PG_BIN"
    echo "$b"
}

# Run a server program as a user PostgreSQL accepts.
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "running as root and there is no postgres user to run the server"
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
    local dir=$1 bin port url
    bin=$(pg_bin)
    if [[ -f "$dir/url" ]] && as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        echo "export SEALTENSORS_TEST_POSTGRES_URL=$(cat "$dir/url")"
        return
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    if [[ $(id -u) -eq 0 ]]; then chown postgres: "$dir"; fi
    as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
        >"$dir/initdb.log" 2>&1 || die "initdb failed: $(tail -n 5 "$dir/initdb.log")"
    port=$(free_port)
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c max_connections=300" \
        start >/dev/null || die "the server did not start: $(tail -n 5 "$dir/server.log")"
    as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$DB"
    url="postgres://postgres@127.0.0.1:$port/$DB"
    echo "$url" >"$dir/url"
    echo "export SEALTENSORS_TEST_POSTGRES_URL=$url"
}

stop() {
    local dir=$1 bin
    [[ -d "$dir" ]] || return 0
    bin=$(pg_bin)
    if [[ -d "$dir/data" ]]; then
        as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
start)
    start "${SEALTENSORS_PG_DIR:-$DIR_DEFAULT}"
    ;;
stop)
    stop "${SEALTENSORS_PG_DIR:-$DIR_DEFAULT}"
    ;;
run)
    shift
    [[ $# -gt 0 ]] || die "usage: $0 run CMD ARGS..."
    dir=$(mktemp -d "${TMPDIR:-/tmp}/sealtensors-pg-XXXXXX")
    trap 'stop "$dir"' EXIT
    line=$(start "$dir")
    eval "$line"
    echo "pg-test-server: PostgreSQL at $SEALTENSORS_TEST_POSTGRES_URL for: $*" >&2
    # Not exec: the trap stops the server when the command ends.
    SEALTENSORS_TEST_POSTGRES_REQUIRED=1 "$@"
    ;;
*)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
