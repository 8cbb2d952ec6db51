#!/usr/bin/env bash
# Starts and stops a throwaway Postfix instance on loopback that hands all
# mail for the test domain to Facteur's LMTP server, for the end-to-end
# tests (tests/postfix.rs).
#
#   scripts/postfix.sh install                   # Debian's postfix, if missing
#   eval "$(scripts/postfix.sh start <workdir> <lmtp-port>)"
#   scripts/postfix.sh stop <workdir>
#
# `start` prints only `export FACTEUR_TEST_POSTFIX_...=...` lines on stdout:
#   FACTEUR_TEST_POSTFIX_CONFIG      config directory: `sendmail -C`,
#                                    `postqueue -c`, `postfix -c`
#   FACTEUR_TEST_POSTFIX_SMTP_PORT   smtpd on 127.0.0.1 (no auth, no TLS)
#   FACTEUR_TEST_POSTFIX_DOMAIN      the domain delivered over LMTP
#   FACTEUR_TEST_POSTFIX_LOG         Postfix's log (maillog_file)
# Progress goes to stderr.
#
# Everything the instance owns (config, queue, data, log) lives in
# <workdir>; /etc/postfix and the system's mail are never touched and the
# system Postfix is never started. The instance listens only on 127.0.0.1,
# delivers `@example.org` (FACTEUR_TEST_POSTFIX_DOMAIN) with
# `virtual_transport = lmtp:inet:127.0.0.1:<lmtp-port>`, sends nothing
# anywhere else, and retries deferred mail every second or two (tests wait
# for retries in seconds, not minutes).
#
# Postfix's daemons run as the `postfix` user and chdir into the queue, so
# <workdir> and every directory above it must be searchable by that user;
# `start` checks and says so.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

DOMAIN="${FACTEUR_TEST_POSTFIX_DOMAIN:-example.org}"
READY_TIMEOUT_S=30

log() { echo "postfix.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    echo "usage: $0 install | start <workdir> <lmtp-port> | stop <workdir>" >&2
    exit 2
}

cmd_install() {
    if [ -x /usr/sbin/postfix ] && [ -x /usr/sbin/sendmail ] && [ -x /usr/sbin/postqueue ]; then
        return
    fi
    log "installing Debian's postfix (debconf: No configuration)"
    export DEBIAN_FRONTEND=noninteractive
    # "No configuration" leaves /etc/postfix/main.cf unwritten and the
    # system instance unconfigured; we never start it.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update >&2 || die "apt-get update failed"
    apt-get install -y postfix >&2 || die "apt-get install postfix failed"
}

# `postfix -c` on our config directory.
pf() { /usr/sbin/postfix -c "$work/etc" "$@"; }

running() { pf status >/dev/null 2>&1; }

# The instance's configuration. Directories that hold Postfix's programs
# and its file list are Debian's; everything it writes is under $work.
write_config() {
    local lmtp_port=$1 smtp_port=$2
    mkdir -p "$work/etc" "$work/queue" "$work/data"
    chown postfix:postfix "$work/data"
    cat >"$work/etc/main.cf" <<EOF
# Throwaway Postfix written by scripts/postfix.sh; delete freely.
compatibility_level = 3.6
queue_directory = $work/queue
data_directory = $work/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = $work/postfix.log
maillog_file_prefixes = $work

myhostname = postfix.facteur.test
mydomain = facteur.test
myorigin = \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relay_domains =
alias_maps =
alias_database =
local_recipient_maps =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_banner = \$myhostname ESMTP (throwaway test Postfix)
disable_dns_lookups = yes
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled

# The test domain goes to Facteur; nothing else goes anywhere.
virtual_mailbox_domains = $DOMAIN
virtual_mailbox_maps =
virtual_transport = lmtp:inet:127.0.0.1:$lmtp_port
lmtp_lhlo_name = postfix.facteur.test
default_transport = error:this test instance delivers only to $DOMAIN
relay_transport = error:this test instance relays nothing
notify_classes =

# Retries within seconds (a production Postfix waits minutes).
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
lmtp_connection_cache_on_demand = no
EOF
    # Every service unchrooted: a chroot would need copies of /etc files
    # inside our queue directory.
    cat >"$work/etc/master.cf" <<EOF
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:$smtp_port inet n - n - - smtpd
pickup    unix  n       -       n       1       1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    {
        printf 'export FACTEUR_TEST_POSTFIX_CONFIG=%q\n' "$work/etc"
        printf 'export FACTEUR_TEST_POSTFIX_SMTP_PORT=%q\n' "$smtp_port"
        printf 'export FACTEUR_TEST_POSTFIX_DOMAIN=%q\n' "$DOMAIN"
        printf 'export FACTEUR_TEST_POSTFIX_LOG=%q\n' "$work/postfix.log"
    } >"$work/env"
}

# Waits until smtpd answers on its port.
wait_ready() {
    local port=$1 deadline=$((SECONDS + READY_TIMEOUT_S))
    until python3 - "$port" <<'PY' 2>/dev/null; do
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
assert s.recv(512).startswith(b"220")
PY
        [ "$SECONDS" -lt "$deadline" ] || {
            tail -n 20 "$work/postfix.log" >&2 2>/dev/null || true
            die "postfix smtpd not answering on 127.0.0.1:$port after ${READY_TIMEOUT_S}s"
        }
        sleep 0.1
    done
}

cmd_start() {
    local lmtp_port=$1
    [[ "$lmtp_port" =~ ^[0-9]+$ ]] || die "LMTP port '$lmtp_port' is not a number"
    cmd_install
    if ! runuser -u postfix -- test -x "$work"; then
        die "$work is not searchable by the postfix user (chmod o+x it and its parents)"
    fi
    if [ -f "$work/env" ] && running; then
        log "already running"
        cat "$work/env"
        return
    fi
    write_config "$lmtp_port" "$(free_ports 1)"
    local started=$SECONDS
    # `postfix check` creates the queue directories with their owners.
    pf check >&2 || die "postfix check failed"
    pf start >&2 || die "postfix start failed (log: $work/postfix.log)"
    # shellcheck disable=SC1091
    wait_ready "$(. "$work/env" && echo "$FACTEUR_TEST_POSTFIX_SMTP_PORT")"
    log "postfix ready in $((SECONDS - started))s (log: $work/postfix.log)"
    cat "$work/env"
}

cmd_stop() {
    if ! running; then
        log "not running"
        return
    fi
    pf stop >&2 || die "postfix stop failed"
    log "stopped"
}

case "${1:-}" in
install)
    [ $# -eq 1 ] || usage
    cmd_install
    ;;
start)
    [ $# -eq 3 ] || usage
    mkdir -p "$2"
    work="$(cd "$2" && pwd)"
    cmd_start "$3"
    ;;
stop)
    [ $# -eq 2 ] || usage
    [ -d "$2" ] || exit 0
    work="$(cd "$2" && pwd)"
    [ -f "$work/etc/main.cf" ] || exit 0
    cmd_stop
    ;;
*) usage ;;
esac
