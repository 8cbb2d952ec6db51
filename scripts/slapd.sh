#!/usr/bin/env bash
# Starts and stops a throwaway OpenLDAP server (slapd) on free loopback
# ports, for the LDAP directory tests.
#
#   eval "$(scripts/slapd.sh start <workdir>)"   # prints export lines
#   scripts/slapd.sh stop <workdir>
#   scripts/slapd.sh pause|resume <workdir>      # SIGSTOP / SIGCONT: slapd
#                                                # accepts TCP but never answers
#
# `start` prints only `export FACTEUR_TEST_LDAP...=...` lines on stdout:
#   FACTEUR_TEST_LDAP_URL            ldap://127.0.0.1:<port> (StartTLS offered)
#   FACTEUR_TEST_LDAPS_URL           ldaps://127.0.0.1:<port>
#   FACTEUR_TEST_LDAP_CA_FILE        the CA that signed the server certificate
#   FACTEUR_TEST_LDAP_BIND_DN        Facteur's service account
#   FACTEUR_TEST_LDAP_BIND_PASSWORD
#   FACTEUR_TEST_LDAP_BASE_DN
#   FACTEUR_TEST_LDAP_ADMIN_DN       the rootdn, for ldapadd/ldapmodify in tests
#   FACTEUR_TEST_LDAP_ADMIN_PASSWORD
# Progress goes to stderr, slapd's own log to <workdir>/slapd.log.
# Everything (config, database, TLS files, pid file) lives in <workdir>; the
# directory content comes from fixtures/ldap/base.ldif and mail.schema.
# Running `start` again on a live workdir prints the exports again; on a
# stopped one it restarts the same server, same ports, same data.
#
# Installs Debian's slapd and ldap-utils when slapd is missing. Only our own
# slapd is used: a system slapd the package may start listens on 389 and is
# stopped right after the install.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

READY_TIMEOUT_S=30
SUFFIX="dc=example,dc=org"
ADMIN_DN="cn=admin,$SUFFIX"
SERVICE_DN="cn=facteur,ou=services,$SUFFIX"
SERVICE_PASSWORD="service-secret-1" # hashed in fixtures/ldap/base.ldif
SCHEMA_DIR=/etc/ldap/schema
repo="$(cd "$(dirname "$0")/.." && pwd)"

log() { echo "slapd.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    echo "usage: $0 start|stop|pause|resume <workdir>" >&2
    exit 2
}

install_slapd() {
    if [ -x /usr/sbin/slapd ] && command -v ldapsearch >/dev/null 2>&1; then
        return
    fi
    log "installing slapd and ldap-utils"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2 || die "apt-get update failed"
    apt-get install -y slapd ldap-utils >&2 || die "apt-get install slapd ldap-utils failed"
    # The package may have started a system slapd (on 389, with its own
    # database). Ours never talks to it; stop it so it holds nothing.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet slapd 2>/dev/null; then
        log "stopping the system slapd started by the package"
        systemctl stop slapd >&2 || true
    elif command -v service >/dev/null 2>&1; then
        service slapd stop >/dev/null 2>&1 || true
    fi
}


# True when the pid file names a live slapd process.
running() { pid_running "$work/slapd.pid" slapd; }

# Where slapd runs from. Under an enforcing AppArmor profile for
# /usr/sbin/slapd (Ubuntu) the binary may not read our workdir, so a copy is
# run instead; the copy is no security boundary for a throwaway test server.
slapd_binary() {
    if [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ] &&
        [ -e /etc/apparmor.d/usr.sbin.slapd ]; then
        mkdir -p "$work/bin"
        cp /usr/sbin/slapd "$work/bin/slapd"
        echo "$work/bin/slapd"
    else
        echo /usr/sbin/slapd
    fi
}

# A CA and a server certificate for 127.0.0.1 signed by it (rustls refuses
# a self-signed CA certificate used as the server's own).
write_tls() {
    local tls="$work/tls"
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=Facteur test CA" \
        -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$tls/ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
        -CAcreateserial -days 30 -extfile "$tls/ext" -out "$tls/server.pem" 2>/dev/null
    chmod 600 "$tls"/*.key
}

write_config() {
    local ports ldap ldaps admin_password
    ports="$(free_ports 2)"
    ldap="$(sed -n 1p <<<"$ports")"
    ldaps="$(sed -n 2p <<<"$ports")"
    admin_password="$(random_hex 16)"
    rm -rf "$work/db"
    mkdir -p "$work/db"
    write_tls
    cat >"$work/slapd.conf" <<EOF
# Throwaway slapd written by scripts/slapd.sh; delete freely.
include $SCHEMA_DIR/core.schema
include $SCHEMA_DIR/cosine.schema
include $SCHEMA_DIR/inetorgperson.schema
include $SCHEMA_DIR/nis.schema
include $repo/fixtures/ldap/mail.schema

pidfile $work/slapd.pid
argsfile $work/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
loglevel stats

TLSCACertificateFile $work/tls/ca.pem
TLSCertificateFile $work/tls/server.pem
TLSCertificateKeyFile $work/tls/server.key

database mdb
suffix "$SUFFIX"
rootdn "$ADMIN_DN"
rootpw $admin_password
directory $work/db
index objectClass eq
index uid,mail,mailAlternateAddress eq
index member eq

# Users may bind (RFC 4513 §5.1.3) but nobody reads password hashes; the
# service account reads everything else, a user their own entry.
access to attrs=userPassword
    by anonymous auth
    by * none
access to dn.subtree="$SUFFIX"
    by dn.exact="$SERVICE_DN" read
    by self read
    by * none
EOF
    chmod 600 "$work/slapd.conf"
    "$slapd" -T add -f "$work/slapd.conf" -l "$repo/fixtures/ldap/base.ldif" >"$work/slapadd.log" 2>&1 ||
        {
            cat "$work/slapadd.log" >&2
            die "slapadd of fixtures/ldap/base.ldif failed"
        }
    echo "ldap://127.0.0.1:$ldap/ ldaps://127.0.0.1:$ldaps/" >"$work/listen"
    {
        printf 'export FACTEUR_TEST_LDAP_URL=%q\n' "ldap://127.0.0.1:$ldap"
        printf 'export FACTEUR_TEST_LDAPS_URL=%q\n' "ldaps://127.0.0.1:$ldaps"
        printf 'export FACTEUR_TEST_LDAP_CA_FILE=%q\n' "$work/tls/ca.pem"
        printf 'export FACTEUR_TEST_LDAP_BIND_DN=%q\n' "$SERVICE_DN"
        printf 'export FACTEUR_TEST_LDAP_BIND_PASSWORD=%q\n' "$SERVICE_PASSWORD"
        printf 'export FACTEUR_TEST_LDAP_BASE_DN=%q\n' "$SUFFIX"
        printf 'export FACTEUR_TEST_LDAP_ADMIN_DN=%q\n' "$ADMIN_DN"
        printf 'export FACTEUR_TEST_LDAP_ADMIN_PASSWORD=%q\n' "$admin_password"
    } >"$work/env.tmp"
    chmod 600 "$work/env.tmp"
    mv "$work/env.tmp" "$work/env"
}

start_server() {
    local listen url
    listen="$(cat "$work/listen")"
    url="${listen%% *}"
    log "starting slapd on $listen (log: $work/slapd.log)"
    # -d 0 keeps slapd in the foreground (so $! is its pid) with its log on
    # stderr; no inherited stdout, so `eval "$(... start)"` does not wait.
    "$slapd" -h "$listen" -f "$work/slapd.conf" -d 0 -s 0 </dev/null >>"$work/slapd.log" 2>&1 &
    echo $! >"$work/slapd.pid"
    wait_ready slapd "$work/slapd.log" ldapsearch -x -H "$url" -b "" -s base -LLL namingContexts
}

cmd_start() {
    if running && [ -f "$work/env" ]; then
        log "already running (pid $(cat "$work/slapd.pid"))"
        cat "$work/env"
        return
    fi
    install_slapd
    slapd="$(slapd_binary)"
    local started=$SECONDS
    if ! [ -f "$work/env" ] || ! [ -f "$work/slapd.conf" ]; then
        write_config
    fi
    start_server
    log "slapd ready in $((SECONDS - started))s"
    cat "$work/env"
}

cmd_stop() {
    if ! running; then
        log "not running"
        rm -f "$work/slapd.pid"
        return
    fi
    kill -CONT "$(cat "$work/slapd.pid")" 2>/dev/null || true # a paused slapd cannot exit
    stop_pidfile slapd "$work/slapd.pid"
}

cmd_signal() { # STOP or CONT
    running || die "not running"
    pid="$(cat "$work/slapd.pid")"
    kill -"$1" "$pid"
    # A signal is delivered asynchronously: a thread already running on the
    # other core may still answer a request after kill returns. Wait until
    # every thread shows the wanted state (T when stopped).
    for _ in $(seq 1 500); do
        all=yes
        for stat in /proc/"$pid"/task/*/stat; do
            state="$(sed 's/^.*) //' "$stat" 2>/dev/null | cut -d' ' -f1)"
            if [ "$1" = STOP ] && [ "$state" != T ] && [ "$state" != t ]; then all=no; fi
            if [ "$1" = CONT ] && { [ "$state" = T ] || [ "$state" = t ]; }; then all=no; fi
        done
        [ "$all" = yes ] && return 0
        sleep 0.01
    done
    die "slapd (pid $pid) did not reach the state for SIG$1"
}

[ $# -eq 2 ] || usage
mkdir -p "$2"
work="$(cd "$2" && pwd)"
case "$1" in
start) cmd_start ;;
stop) cmd_stop ;;
pause) cmd_signal STOP ;;
resume) cmd_signal CONT ;;
*) usage ;;
esac
