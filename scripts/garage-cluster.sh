#!/usr/bin/env bash
# Starts and stops a throwaway 3-node Garage cluster on loopback, one node
# per zone (dc1, dc2, dc3), replication factor 3, consistency mode
# "consistent": the layout of a 3-site deployment, for the multi-site tests
# (tests/multisite.rs).
#
#   eval "$(scripts/garage-cluster.sh start <workdir>)"   # prints exports
#   scripts/garage-cluster.sh kill <workdir> <n>      # SIGKILL node n (1-3)
#   scripts/garage-cluster.sh restart <workdir> <n>   # start node n again
#   scripts/garage-cluster.sh wait-healthy <workdir>  # every node sees all 3
#   scripts/garage-cluster.sh stop <workdir>          # stops every node
#
# `start` prints only `export FACTEUR_TEST_GARAGE_CLUSTER_...=...` lines on
# stdout:
#   ..._ENDPOINTS  the three nodes' S3 endpoints, space-separated, node 1
#                  first;
#   ..._REGION, ..._BUCKET, ..._ACCESS_KEY, ..._SECRET_KEY;
#   ..._DIR        the workdir, for `kill` and `restart`;
#   ..._SCRIPT     this script's absolute path.
# Progress goes to stderr, each node's log to <workdir>/node<n>/garage.log.
# Node n keeps its config, metadata, data and pid file in <workdir>/node<n>;
# `restart` brings it back with its data, on the same ports. After a
# restart the other nodes take 5-30 s to reconnect to it: a test waits on a
# condition, not on `restart` returning.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

GARAGE_VERSION="${GARAGE_VERSION:-2.5.0}"
BUCKET=facteur-test
KEY_NAME=facteur-test
READY_TIMEOUT_S=60
NODES="1 2 3"

log() { echo "garage-cluster.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    echo "usage: $0 start|stop|wait-healthy <workdir> | kill|restart <workdir> <1-3>" >&2
    exit 2
}

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

# The node that `running` (used by lib.sh's wait_ready) checks.
node=1
running() { pid_running "$work/node$node/garage.pid" garage; }
node_running() { pid_running "$work/node$1/garage.pid" garage; }

# g N ARGS: the garage CLI against node N.
g() {
    local n="$1"
    shift
    "$garage" -c "$work/node$n/garage.toml" "$@"
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

write_configs() {
    local secret token ports n rpc s3 admin
    secret="$(random_hex 32)"
    token="$(random_hex 32)"
    ports="$(free_ports 9)"
    for n in $NODES; do
        rpc="$(sed -n "$((3 * n - 2))p" <<<"$ports")"
        s3="$(sed -n "$((3 * n - 1))p" <<<"$ports")"
        admin="$(sed -n "$((3 * n))p" <<<"$ports")"
        mkdir -p "$work/node$n/meta" "$work/node$n/data"
        cat >"$work/node$n/garage.toml" <<EOF
# Node $n of a throwaway 3-node Garage written by scripts/garage-cluster.sh;
# delete freely.
metadata_dir = "$work/node$n/meta"
data_dir = "$work/node$n/data"
db_engine = "lmdb"
replication_factor = 3
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$token"
EOF
        chmod 600 "$work/node$n/garage.toml"
        echo "$s3" >"$work/node$n/s3.port"
        echo "127.0.0.1:$rpc" >"$work/node$n/rpc.addr"
    done
}

# Starts node $1 and waits until its CLI answers.
start_node() {
    node="$1"
    log "starting node $node (log: $work/node$node/garage.log)"
    # No inherited stdout: `eval "$(... start)"` must not wait on the server.
    "$garage" -c "$work/node$node/garage.toml" server \
        </dev/null >>"$work/node$node/garage.log" 2>&1 &
    echo $! >"$work/node$node/garage.pid"
    wait_ready "garage node $node" "$work/node$node/garage.log" g "$node" status
}

node_id() {
    local id
    id="$(g "$1" node id -q 2>/dev/null)"
    id="${id%%@*}"
    [ -n "$id" ] || die "could not read the id of node $1"
    echo "$id"
}

set_up_cluster() {
    local n id key_id secret endpoints=""
    for n in 2 3; do
        retry g 1 node connect "$(node_id "$n")@$(cat "$work/node$n/rpc.addr")"
    done
    for n in $NODES; do
        id="$(node_id "$n")"
        retry g 1 layout assign "$id" -z "dc$n" -c 1G -t "node$n"
    done
    retry g 1 layout apply --version 1
    retry g 1 bucket create "$BUCKET"
    key_id="GK$(random_hex 12)"
    secret="$(random_hex 32)"
    retry g 1 key import --yes -n "$KEY_NAME" "$key_id" "$secret"
    retry g 1 bucket allow --read --write --owner "$BUCKET" --key "$KEY_NAME"
    for n in $NODES; do
        endpoints="$endpoints${endpoints:+ }http://127.0.0.1:$(cat "$work/node$n/s3.port")"
    done
    {
        printf 'export FACTEUR_TEST_GARAGE_CLUSTER_ENDPOINTS=%q\n' "$endpoints"
        printf 'export FACTEUR_TEST_GARAGE_CLUSTER_REGION=%q\n' garage
        printf 'export FACTEUR_TEST_GARAGE_CLUSTER_BUCKET=%q\n' "$BUCKET"
        printf 'export FACTEUR_TEST_GARAGE_CLUSTER_ACCESS_KEY=%q\n' "$key_id"
        printf 'export FACTEUR_TEST_GARAGE_CLUSTER_SECRET_KEY=%q\n' "$secret"
        printf 'export FACTEUR_TEST_GARAGE_CLUSTER_DIR=%q\n' "$work"
        printf 'export FACTEUR_TEST_GARAGE_CLUSTER_SCRIPT=%q\n' "$script"
    } >"$work/env.tmp"
    chmod 600 "$work/env.tmp"
    mv "$work/env.tmp" "$work/env"
}

# Waits until the bucket answers through every node (the layout reached
# them all): a test may start on any endpoint.
wait_bucket() {
    local n
    for n in $NODES; do
        retry g "$n" bucket info "$BUCKET"
    done
}

cmd_start() {
    local n all=1
    for n in $NODES; do node_running "$n" || all=0; done
    if [ "$all" = 1 ] && [ -f "$work/env" ]; then
        log "already running"
        cat "$work/env"
        return
    fi
    garage="$(find_garage)"
    local started=$SECONDS
    if [ -f "$work/env" ]; then
        for n in $NODES; do node_running "$n" || start_node "$n"; done
    else
        for n in $NODES; do
            [ -f "$work/node$n/garage.pid" ] && node_running "$n" &&
                stop_pidfile "garage node $n" "$work/node$n/garage.pid"
        done
        rm -rf "$work"/node*
        write_configs
        for n in $NODES; do start_node "$n"; done
        set_up_cluster
    fi
    wait_bucket
    log "cluster ready in $((SECONDS - started))s"
    cat "$work/env"
}

cmd_stop() {
    local n
    for n in $NODES; do
        if node_running "$n"; then
            stop_pidfile "garage node $n" "$work/node$n/garage.pid"
        else
            rm -f "$work/node$n/garage.pid"
        fi
    done
}

cmd_kill() {
    local n="$1" pid
    node_running "$n" || die "node $n is not running"
    pid="$(cat "$work/node$n/garage.pid")"
    kill -KILL "$pid"
    # Gone (not a zombie of a parent that never waits) before returning,
    # so that the caller's next request meets a dead node.
    for _ in $(seq 100); do
        node_running "$n" || break
        sleep 0.05
    done
    rm -f "$work/node$n/garage.pid"
    log "killed node $n (pid $pid)"
}

cmd_restart() {
    local n="$1"
    node_running "$n" && die "node $n is running"
    garage="$(find_garage)"
    start_node "$n"
    log "node $n restarted"
}

# Waits until each node reports the three nodes healthy (after a restart
# the others reconnect 5-30 s later; until then a second failure loses the
# quorum).
cmd_wait_healthy() {
    local n deadline=$((SECONDS + 90)) out
    garage="$(find_garage)"
    for n in $NODES; do
        until out="$(g "$n" status 2>&1)" && ! grep -q "FAILED NODES" <<<"$out" &&
            [ "$(grep -c '127.0.0.1:' <<<"$out")" -ge 3 ]; do
            [ "$SECONDS" -lt "$deadline" ] || die "node $n does not see 3 healthy nodes: $out"
            sleep 0.2
        done
    done
}

script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
[ $# -ge 2 ] || usage
mkdir -p "$2"
work="$(cd "$2" && pwd)"
case "$1" in
start | stop)
    [ $# -eq 2 ] || usage
    "cmd_$1"
    ;;
wait-healthy)
    [ $# -eq 2 ] || usage
    cmd_wait_healthy
    ;;
kill | restart)
    [ $# -eq 3 ] || usage
    case "$3" in 1 | 2 | 3) ;; *) usage ;; esac
    "cmd_$1" "$3"
    ;;
*) usage ;;
esac
