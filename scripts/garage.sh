#!/usr/bin/env bash
# Starts and stops a throwaway single-node Garage (the S3 store Facteur runs
# on in production) on free loopback ports, for tests.
#
#   eval "$(scripts/garage.sh start <workdir>)"   # prints export lines
#   scripts/garage.sh stop <workdir>
#
# `start` prints only `export FACTEUR_TEST_S3_...=...` lines on stdout;
# progress goes to stderr and Garage's own log to <workdir>/garage.log.
# Everything (config, metadata, data, pid file) lives in <workdir>. Running
# `start` again on a live workdir just prints the exports again; on a
# stopped one it restarts the same node with its data.
#
# Installs Garage with `cargo install --locked garage` when it is neither on
# PATH nor in ~/.cargo/bin (about 10 minutes on 2 cores). The CLI calls below
# were checked against Garage 2.5.0 (see FACTS.md).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

GARAGE_VERSION="${GARAGE_VERSION:-2.5.0}"
BUCKET=facteur-test
KEY_NAME=facteur-test
READY_TIMEOUT_S=60

log() { echo "garage.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    echo "usage: $0 start|stop <workdir>" >&2
    exit 2
}

# Prints the path of a garage binary, installing one if there is none.
find_garage() {
    if command -v garage >/dev/null 2>&1; then
        command -v garage
    elif [ -x "$HOME/.cargo/bin/garage" ]; then
        echo "$HOME/.cargo/bin/garage"
    else
        log "garage not found; cargo install --locked garage --version $GARAGE_VERSION (takes ~10 min)"
        cargo install --locked garage --version "$GARAGE_VERSION" >&2 ||
            die "cargo install garage failed"
        [ -x "$HOME/.cargo/bin/garage" ] || die "garage not in ~/.cargo/bin after install"
        echo "$HOME/.cargo/bin/garage"
    fi
}


# True when the pid file names a live garage process.
running() { pid_running "$work/garage.pid" garage; }

g() { "$garage" -c "$work/garage.toml" "$@"; }

write_config() {
    local ports rpc s3 admin
    ports="$(free_ports 3)"
    rpc="$(sed -n 1p <<<"$ports")"
    s3="$(sed -n 2p <<<"$ports")"
    admin="$(sed -n 3p <<<"$ports")"
    mkdir -p "$work/meta" "$work/data"
    cat >"$work/garage.toml" <<EOF
# Throwaway single-node Garage written by scripts/garage.sh; delete freely.
metadata_dir = "$work/meta"
data_dir = "$work/data"
db_engine = "lmdb"
replication_factor = 1
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(random_hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$(random_hex 32)"
EOF
    chmod 600 "$work/garage.toml"
    echo "$s3" >"$work/s3.port"
}

start_server() {
    log "starting garage server (log: $work/garage.log)"
    # No inherited stdout: `eval "$(... start)"` must not wait on the server.
    "$garage" -c "$work/garage.toml" server </dev/null >>"$work/garage.log" 2>&1 &
    echo $! >"$work/garage.pid"
    wait_ready garage "$work/garage.log" g status
}

# Runs a CLI command until it succeeds (right after a layout change Garage
# may briefly refuse), for at most READY_TIMEOUT_S seconds.
retry() {
    local deadline=$((SECONDS + READY_TIMEOUT_S)) out
    until out="$("$@" 2>&1)"; do
        [ "$SECONDS" -lt "$deadline" ] || die "'$*' kept failing: $out"
        sleep 0.2
    done
}

set_up_cluster() {
    local node key_id secret
    node="$(g node id -q 2>/dev/null)"
    node="${node%%@*}"
    [ -n "$node" ] || die "could not read the node id"
    g layout assign "$node" -z dc1 -c 1G -t test >&2
    g layout apply --version 1 >&2
    retry g bucket create "$BUCKET"
    key_id="GK$(random_hex 12)"
    secret="$(random_hex 32)"
    retry g key import --yes -n "$KEY_NAME" "$key_id" "$secret"
    retry g bucket allow --read --write --owner "$BUCKET" --key "$KEY_NAME"
    {
        printf 'export FACTEUR_TEST_S3_ENDPOINT=%q\n' "http://127.0.0.1:$(cat "$work/s3.port")"
        printf 'export FACTEUR_TEST_S3_REGION=%q\n' garage
        printf 'export FACTEUR_TEST_S3_BUCKET=%q\n' "$BUCKET"
        printf 'export FACTEUR_TEST_S3_ACCESS_KEY=%q\n' "$key_id"
        printf 'export FACTEUR_TEST_S3_SECRET_KEY=%q\n' "$secret"
    } >"$work/env.tmp"
    chmod 600 "$work/env.tmp"
    mv "$work/env.tmp" "$work/env"
}

cmd_start() {
    if running && [ -f "$work/env" ]; then
        log "already running (pid $(cat "$work/garage.pid"))"
        cat "$work/env"
        return
    fi
    garage="$(find_garage)"
    local started=$SECONDS
    if [ -f "$work/env" ] && [ -f "$work/garage.toml" ]; then
        start_server # a stopped node: same config, same data
    else
        rm -rf "$work/meta" "$work/data" "$work/env"
        write_config
        start_server
        set_up_cluster
    fi
    log "garage ready in $((SECONDS - started))s on $(grep -m1 FACTEUR_TEST_S3_ENDPOINT "$work/env" | cut -d= -f2)"
    cat "$work/env"
}

cmd_stop() {
    if ! running; then
        log "not running"
        rm -f "$work/garage.pid"
        return
    fi
    stop_pidfile garage "$work/garage.pid"
}

[ $# -eq 2 ] || usage
mkdir -p "$2"
work="$(cd "$2" && pwd)"
case "$1" in
start) cmd_start ;;
stop) cmd_stop ;;
*) usage ;;
esac
