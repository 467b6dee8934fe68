#!/usr/bin/env bash
# Run a command (the test suite) beside a throwaway PostgreSQL server, so that the threshold
# store is tested on PostgreSQL as well as SQLite. Installs Debian's `postgresql` package when
# it is missing and this runs as root; where that cannot be done it says why and runs the
# command anyway (the PostgreSQL tests then skip, naming the reason).
set -uo pipefail

start_postgres() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -z "$bin" ]]; then
        if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
            echo "with_postgres: no PostgreSQL, and no root apt-get to install it" >&2
            return 1
        fi
        echo "with_postgres: installing Debian's postgresql package" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql) \
            >/dev/null || return 1
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    PG_DIR=$(mktemp -d)
    PG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    local run=()
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$PG_DIR" || return 1
        run=(su postgres -c)
    else
        run=(bash -c)
    fi
    PG_STOP="${run[*]} '$bin/pg_ctl -D $PG_DIR/data -m fast stop'"
    "${run[@]}" "$bin/initdb -D $PG_DIR/data -U postgres --auth=trust -E UTF8" >/dev/null || return 1
    "${run[@]}" "$bin/pg_ctl -D $PG_DIR/data -l $PG_DIR/server.log -w \
        -o '-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1'  start" >/dev/null || return 1
    "${run[@]}" "$bin/createdb -h 127.0.0.1 -p $PG_PORT -U postgres inspection_test" || return 1
    export INSPECTION_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/inspection_test"
    echo "with_postgres: PostgreSQL on 127.0.0.1:$PG_PORT" >&2
}

PG_STOP=""
if ! start_postgres; then
    echo "with_postgres: running without PostgreSQL" >&2
fi
"$@"
status=$?
if [[ -n "$PG_STOP" ]]; then
    eval "$PG_STOP" >/dev/null 2>&1
fi
exit $status
