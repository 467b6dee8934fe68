#!/usr/bin/env bash
# Run a command (the test suite) with what some tests need from outside Python: a throwaway
# PostgreSQL server (the threshold store is tested on it as well as on SQLite), promtool (checks
# the /metrics exposition), HAProxy (the load balancer in front of several servers) and Chromium
# (the QA console's browser tests), the last two started by the tests themselves. Installs Debian's
# `postgresql`, `prometheus`, `haproxy` and `chromium` packages when they are missing and this runs
# as root; where that cannot be done it says why and runs
# the command anyway (those tests then skip, naming the reason).
set -uo pipefail

install_packages() {
    local missing=()
    ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || missing+=(postgresql)
    command -v promtool >/dev/null || missing+=(prometheus)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v chromium >/dev/null || missing+=(chromium)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "with_services: ${missing[*]} missing, and no root apt-get to install them" >&2
        return 0
    fi
    echo "with_services: installing Debian's ${missing[*]}" >&2
    apt-get update -qq >/dev/null
    # No daemons: this script starts what the tests need itself.
    local own_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || echo "with_services: could not install ${missing[*]}" >&2
    [[ -n "$own_policy" ]] && rm -f /usr/sbin/policy-rc.d
    return 0
}

start_postgres() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [[ -n "$bin" ]] || return 1
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
    echo "with_services: PostgreSQL on 127.0.0.1:$PG_PORT" >&2
}

PG_STOP=""
install_packages
if ! start_postgres; then
    echo "with_services: running without PostgreSQL" >&2
fi
"$@"
status=$?
if [[ -n "$PG_STOP" ]]; then
    eval "$PG_STOP" >/dev/null 2>&1
fi
exit $status
