#!/usr/bin/env bash
# A real PostgreSQL server on loopback for the lab instance (configs/dagster-postgres.yaml): what
# the PostgreSQL tests start, and a way to try the lab deployment on one machine.
#
#   scripts/postgres-local.sh start    initdb (first time) + start on 127.0.0.1:$PORT, create the
#                                      role and database Dagster uses; prints the DAGSTER_PG_* exports
#   scripts/postgres-local.sh env      print the DAGSTER_PG_* exports again (eval "$(... env)")
#   scripts/postgres-local.sh stop     stop exactly the server it started
#   scripts/postgres-local.sh status   exit 0 when the server accepts connections
#   scripts/postgres-local.sh createdb NAME   another database owned by the same role (MLflow's:
#                                      scripts/mlflow-local.sh)
#
# Installs Debian's postgresql when no server binaries are found (needs root, as on CI). As root,
# the server runs as the `postgres` system user (initdb refuses root; the user is created when
# absent); otherwise as the calling user. State lives under $INTERP_ASSETS_PG_DIR (default
# /tmp/interp-assets-postgres): it must be a folder the server's user can reach, so not under a
# private (mode 700) folder such as pytest's temp root. Port: $INTERP_ASSETS_PG_PORT (default 55432).
# Only TCP on 127.0.0.1 with a password (scram-sha-256); the unix socket lies in the state folder.
set -euo pipefail

STATE=${INTERP_ASSETS_PG_DIR:-/tmp/interp-assets-postgres}
PORT=${INTERP_ASSETS_PG_PORT:-55432}
DB_USER=dagster
DB_NAME=dagster

log() { echo "postgres-local: $*" >&2; }
die() { log "$*"; exit 1; }

pg_bin() {  # the newest installed server's bin folder (Debian keeps them per major version)
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

as_server_user() {  # command... : run as the server's owner
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

apt_install() {  # packages...
    log "installing $*"
    mkdir -p "$STATE"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@") \
        > "$STATE/apt.log" 2>&1 || die "apt-get install $* failed (see $STATE/apt.log)"
}

ensure_installed() {
    if [ -z "$(pg_bin)" ]; then
        [ "$(id -u)" = 0 ] || die "PostgreSQL server binaries are not installed and installing them needs root"
        apt_install postgresql
    fi
    [ -n "$(pg_bin)" ] || die "no PostgreSQL server found under /usr/lib/postgresql/*/bin after installing"
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
}

pg_ctl_() { as_server_user "$(pg_bin)/pg_ctl" -D "$STATE/data" "$@"; }

cmd_status() {
    [ -n "$(pg_bin)" ] && [ -f "$STATE/data/postmaster.pid" ] || { echo "down"; return 1; }
    "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PORT" || { echo "down"; return 1; }
    echo "up: 127.0.0.1:$PORT, data in $STATE/data"
}

cmd_env() {
    [ -f "$STATE/password" ] || die "not initialised: run '$0 start' first"
    cat <<EOF
export DAGSTER_PG_HOST=127.0.0.1
export DAGSTER_PG_PORT=$PORT
export DAGSTER_PG_USERNAME=$DB_USER
export DAGSTER_PG_PASSWORD=$(cat "$STATE/password")
export DAGSTER_PG_DB=$DB_NAME
EOF
}

cmd_start() {
    ensure_installed
    mkdir -p "$STATE"
    chmod 755 "$STATE"
    if ! [ -f "$STATE/data/PG_VERSION" ]; then
        local owner
        if [ "$(id -u)" = 0 ]; then owner=postgres; else owner=$(id -un); fi
        install -d -m 0700 -o "$owner" "$STATE/data"
        install -d -m 0755 -o "$owner" "$STATE/run"
        # The password for the Dagster role: $DAGSTER_PG_PASSWORD when given, else a random one.
        (umask 077; printf '%s' "${DAGSTER_PG_PASSWORD:-$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')}" > "$STATE/password")
        # Local socket connections for the server's own user only (peer), TCP with a password.
        as_server_user "$(pg_bin)/initdb" -D "$STATE/data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
            --encoding=UTF8 --locale=C > "$STATE/initdb.log" 2>&1 || die "initdb failed (see $STATE/initdb.log)"
        cat >> "$STATE/data/postgresql.conf" <<EOF
# scripts/postgres-local.sh: loopback only, socket in the state folder.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$STATE/run'
max_connections = 200
fsync = on
EOF
    fi
    if cmd_status >/dev/null 2>&1; then
        log "already up on 127.0.0.1:$PORT"
    else
        touch "$STATE/server.log"; [ "$(id -u)" = 0 ] && chown postgres "$STATE/server.log"
        pg_ctl_ -l "$STATE/server.log" -w -t 60 start > /dev/null \
            || die "the server did not start (see $STATE/server.log): $(tail -5 "$STATE/server.log")"
    fi
    local psql=("$(pg_bin)/psql" -h "$STATE/run" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt)
    if [ "$(as_server_user "${psql[@]}" -c "select 1 from pg_roles where rolname = '$DB_USER'")" != 1 ]; then
        as_server_user "${psql[@]}" -c "create role $DB_USER login password '$(cat "$STATE/password")'" > /dev/null
    fi
    if [ "$(as_server_user "${psql[@]}" -c "select 1 from pg_database where datname = '$DB_NAME'")" != 1 ]; then
        as_server_user "${psql[@]}" -c "create database $DB_NAME owner $DB_USER" > /dev/null
    fi
    log "up on 127.0.0.1:$PORT ($("$(pg_bin)/postgres" --version)), database $DB_NAME, role $DB_USER"
    cmd_env
}

cmd_createdb() {
    local name=${1:-}
    [[ "$name" =~ ^[a-z][a-z0-9_]*$ ]] || die "createdb: give a database name of lowercase letters, digits and _"
    cmd_status > /dev/null || die "not running: run '$0 start' first"
    local psql=("$(pg_bin)/psql" -h "$STATE/run" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt)
    if [ "$(as_server_user "${psql[@]}" -c "select 1 from pg_database where datname = '$name'")" != 1 ]; then
        as_server_user "${psql[@]}" -c "create database $name owner $DB_USER" > /dev/null
    fi
    log "database $name, role $DB_USER"
}

cmd_stop() {
    if [ -n "$(pg_bin)" ] && [ -f "$STATE/data/postmaster.pid" ]; then
        pg_ctl_ -m fast -w -t 60 stop > /dev/null || die "pg_ctl stop failed (see $STATE/server.log)"
        log "stopped"
    else
        log "not running"
    fi
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    createdb) cmd_createdb "${2:-}" ;;
    *) echo "usage: $0 start | stop | status | env | createdb NAME" >&2; exit 2 ;;
esac
