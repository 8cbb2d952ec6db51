# Shared helpers of the scripts that start throwaway services for tests
# (garage.sh, slapd.sh). Sourced, not run.

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
pid_running() {
    local pid
    [ -f "$1" ] || return 1
    pid="$(cat "$1")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$2"
}
