# Shared helpers of the scripts that start throwaway services for tests
# (garage.sh, slapd.sh, dovecot.sh, postfix.sh). Sourced, not run; the
# helpers below use the sourcing script's `log`, `die` and `running`.

# Prints N distinct free TCP ports on 127.0.0.1, one per line (the OS
# picks them; all sockets stay bound until every port is chosen).
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
PY
}

random_hex() { # number of bytes
    od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

# True when pid file $1 names a live process whose command line holds $2.
# A command line read as empty while the process is alive is taken as a
# yes: it reads so while a process replaces its program (Dovecot's master
# starts as doveconf, which executes dovecot), and answering "exited" then
# made a start fail now and then. A zombie is not alive.
pid_running() {
    local pid cmd state
    [ -f "$1" ] || return 1
    pid="$(cat "$1")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)"
    [ "$state" != Z ] || return 1
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
    [ -z "$cmd" ] || grep -q "$2" <<<"$cmd"
}

# Waits until the command "$@" succeeds, for at most READY_TIMEOUT_S
# seconds; dies (showing the tail of log file $2) if the server named $1
# exits meanwhile.
wait_ready() {
    local name="$1" logfile="$2" deadline=$((SECONDS + READY_TIMEOUT_S))
    shift 2
    until "$@" >/dev/null 2>&1; do
        running || {
            tail -n 20 "$logfile" >&2
            die "$name exited"
        }
        [ "$SECONDS" -lt "$deadline" ] || die "$name not ready after ${READY_TIMEOUT_S}s"
        sleep 0.05
    done
}

# Stops the process of pid file $2 (server $1): SIGTERM, then SIGKILL after
# 10 s; removes the pid file.
stop_pidfile() {
    local name="$1" pidfile="$2" pid
    pid="$(cat "$pidfile")"
    kill -TERM "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 10s; killing it"
        kill -KILL "$pid"
    fi
    rm -f "$pidfile"
    log "stopped (pid $pid)"
}
