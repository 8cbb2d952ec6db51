#!/usr/bin/env bash
# Starts and stops a throwaway Dovecot (IMAP and LMTP) on free loopback
# ports: the reference server for the differential MIME tests
# (tests/dovecot_mime.rs) and for benchmarks against LMTP delivery.
#
#   eval "$(scripts/dovecot.sh start <workdir>)"   # prints export lines
#   scripts/dovecot.sh stop <workdir>
#
# `start` prints only `export DOVECOT_...=...` lines on stdout:
#   DOVECOT_IMAP_PORT     plaintext IMAP on 127.0.0.1 (AUTHENTICATE PLAIN
#                         and LOGIN allowed, no TLS)
#   DOVECOT_LMTP_PORT     LMTP on 127.0.0.1; any domain reaches the user
#                         (RCPT TO:<$DOVECOT_USER@example.org>)
#   DOVECOT_LMTP_SOCKET   the same LMTP service on a Unix socket
#   DOVECOT_USER          the user of the MIME tests (passwd-file, {PLAIN}
#                         password), without quota
#   DOVECOT_QUOTA_USER    a user with a 10 KiB storage quota and a 6-message
#                         quota (`count` quota with vsizes: RFC822.SIZE;
#                         tests/imap_quota.rs)
#   DOVECOT_PASSWORD      both users' password
#   DOVECOT_MAILDIR       the user's Maildir
# and waits until the IMAP port answers its greeting. Progress goes to
# stderr, Dovecot's own log to <workdir>/dovecot.log. Everything (config,
# base_dir, state_dir, users file, Maildir) lives in <workdir>; running
# `start` again on a live workdir prints the exports again, on a stopped one
# restarts the same server with the same ports and mail.
#
# Installs Debian's dovecot-imapd and dovecot-lmtpd when dovecot is missing
# (checked against Dovecot 2.3.19.1, Debian 12). Run as root, mail is owned
# by the system user `facteur-dovecot` (created if missing): Dovecot never
# gives mail access to UID 0. Run as another user, everything runs as that
# user.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

READY_TIMEOUT_S=30
MAIL_USER=facteur-dovecot
DOVECOT_USER=facteur
DOVECOT_QUOTA_USER=facteur-quota

log() { echo "dovecot.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    echo "usage: $0 start|stop <workdir>" >&2
    exit 2
}

install_dovecot() {
    if [ -x /usr/sbin/dovecot ] && [ -x /usr/lib/dovecot/imap ] && [ -x /usr/lib/dovecot/lmtp ]; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "dovecot is not installed and installing it needs root"
    log "installing dovecot-imapd and dovecot-lmtpd"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || die "apt-get update failed"
    apt-get install -y -q dovecot-imapd dovecot-lmtpd >&2 ||
        die "apt-get install dovecot-imapd dovecot-lmtpd failed"
    # The package may have started a system Dovecot (on 143/993/…). Ours
    # never talks to it; stop it so it holds nothing.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet dovecot 2>/dev/null; then
        log "stopping the system dovecot started by the package"
        systemctl stop dovecot >&2 || true
    elif command -v service >/dev/null 2>&1; then
        service dovecot stop >/dev/null 2>&1 || true
    fi
}

# True when the pid file names a live dovecot master process.
running() { pid_running "$work/dovecot.pid" dovecot; }

# Sets mail_user, internal_user and login_user: who owns the mail, who runs
# auth, who runs the login processes.
choose_users() {
    if [ "$(id -u)" = 0 ]; then
        if ! getent passwd "$MAIL_USER" >/dev/null; then
            log "creating system user $MAIL_USER"
            useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin "$MAIL_USER" >&2
        fi
        mail_user="$MAIL_USER"
        internal_user=dovecot
        login_user=dovenull
    else
        mail_user="$(id -un)"
        internal_user="$mail_user"
        login_user="$mail_user"
    fi
}

# Dovecot's unprivileged processes must reach <workdir>: a mktemp -d parent
# is 0700. Give search (x, not read) permission on the ancestors that lack
# it; nothing is listed or readable through them.
open_path() {
    [ "$(id -u)" = 0 ] || return 0
    local d="$work"
    while [ "$d" != / ]; do
        if [ -n "$(find "$d" -maxdepth 0 ! -perm -o+x)" ]; then
            chmod o+x "$d"
        fi
        d="$(dirname "$d")"
    done
}

write_config() {
    local ports imap lmtp password
    ports="$(free_ports 2)"
    imap="$(sed -n 1p <<<"$ports")"
    lmtp="$(sed -n 2p <<<"$ports")"
    password="$(random_hex 16)"
    rm -rf "$work/run" "$work/state" "$work/mail"
    mkdir -p "$work/run" "$work/state" "$work/mail"
    chmod 0755 "$work/run"
    # Read by the auth process, which runs as the internal user.
    {
        printf '%s:{PLAIN}%s::::%s::\n' "$DOVECOT_USER" "$password" "$work/mail/$DOVECOT_USER"
        printf '%s:{PLAIN}%s::::%s::userdb_quota_rule=*:storage=10K:messages=6\n' \
            "$DOVECOT_QUOTA_USER" "$password" "$work/mail/$DOVECOT_QUOTA_USER"
    } >"$work/users"
    chmod 0640 "$work/users"
    chgrp "$(id -gn "$internal_user")" "$work/users"
    mkdir -p "$work/mail/$DOVECOT_USER" "$work/mail/$DOVECOT_QUOTA_USER"
    chown -R "$mail_user:$(id -gn "$mail_user")" "$work/mail"
    cat >"$work/dovecot.conf" <<EOF
# Throwaway Dovecot written by scripts/dovecot.sh; delete freely.
protocols = imap lmtp
listen = 127.0.0.1
base_dir = $work/run
state_dir = $work/state
instance_name = facteur-test-$(random_hex 4)
log_path = $work/dovecot.log
info_log_path = $work/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = $internal_user
default_login_user = $login_user
mail_uid = $mail_user
mail_gid = $(id -gn "$mail_user")
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
mail_max_userip_connections = 1000

# QUOTA (RFC 9208) as tests/imap_quota.rs compares it: one root "", usage
# counted as the sum of RFC822.SIZE; only DOVECOT_QUOTA_USER has a limit.
mail_plugins = \$mail_plugins quota
protocol imap {
  mail_plugins = \$mail_plugins imap_quota
}
plugin {
  quota = count
  quota_vsizes = yes
}

passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%n $work/users
}
userdb {
  driver = passwd-file
  args = username_format=%n $work/users
}

service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $imap
  }
  inet_listener imaps {
    port = 0
  }
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $lmtp
  }
  unix_listener lmtp {
    mode = 0666
  }
}
service stats {
  unix_listener stats-writer {
    mode = 0666
  }
}
EOF
    echo "$imap" >"$work/imap.port"
    {
        printf 'export DOVECOT_IMAP_PORT=%q\n' "$imap"
        printf 'export DOVECOT_LMTP_PORT=%q\n' "$lmtp"
        printf 'export DOVECOT_LMTP_SOCKET=%q\n' "$work/run/lmtp"
        printf 'export DOVECOT_USER=%q\n' "$DOVECOT_USER"
        printf 'export DOVECOT_QUOTA_USER=%q\n' "$DOVECOT_QUOTA_USER"
        printf 'export DOVECOT_PASSWORD=%q\n' "$password"
        printf 'export DOVECOT_MAILDIR=%q\n' "$work/mail/$DOVECOT_USER/Maildir"
    } >"$work/env.tmp"
    chmod 600 "$work/env.tmp"
    mv "$work/env.tmp" "$work/env"
}

# True when the IMAP port sends a greeting ("* OK ...").
imap_answers() {
    local port line
    port="$(cat "$work/imap.port")"
    # shellcheck disable=SC2016
    line="$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" && read -r -t 1 l <&3 && echo "$l" && echo "a LOGOUT" >&3' "$port" 2>/dev/null)" ||
        return 1
    [[ "$line" == "* OK"* ]]
}

start_server() {
    log "starting dovecot (log: $work/dovecot.log)"
    # -F keeps the master in the foreground (so $! is its pid); no inherited
    # stdout, so `eval "$(... start)"` does not wait on it.
    /usr/sbin/dovecot -F -c "$work/dovecot.conf" </dev/null >>"$work/dovecot.log" 2>&1 &
    echo $! >"$work/dovecot.pid"
    wait_ready dovecot "$work/dovecot.log" imap_answers
}

cmd_start() {
    if running && [ -f "$work/env" ]; then
        log "already running (pid $(cat "$work/dovecot.pid"))"
        cat "$work/env"
        return
    fi
    install_dovecot
    choose_users
    open_path
    local started=$SECONDS
    if ! [ -f "$work/env" ] || ! [ -f "$work/dovecot.conf" ]; then
        write_config
    fi
    start_server
    log "dovecot ready in $((SECONDS - started))s on port $(cat "$work/imap.port")"
    cat "$work/env"
}

cmd_stop() {
    if ! running; then
        log "not running"
        rm -f "$work/dovecot.pid"
        return
    fi
    stop_pidfile dovecot "$work/dovecot.pid"
}

[ $# -eq 2 ] || usage
mkdir -p "$2"
work="$(cd "$2" && pwd)"
case "$1" in
start) cmd_start ;;
stop) cmd_stop ;;
*) usage ;;
esac
