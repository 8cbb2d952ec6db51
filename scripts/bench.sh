#!/usr/bin/env bash
# One-command benchmark (issue #15): Dovecot (Maildir, passwd-file users
# with {PLAIN} passwords), Facteur on the fs store and Facteur on a
# one-node Garage, all throwaway and on loopback, with the same users and
# starting mail, under the same load (benches/load.rs), measured in
# alternating rounds (Dovecot, Facteur fs, Facteur Garage, again...).
# Prints medians over the rounds and Facteur/Dovecot ratios.
#
#   scripts/bench.sh [--quick] [--rounds N] [--minutes M] [--profile P] [--keep]
#
#   --quick      everything small (a few minutes on a quiet machine): to
#                check that it all runs, not for figures
#   --rounds N   rounds of the alternating measures (default 3, at least 3)
#   --minutes M  length of the long run whose last minute is compared with
#                its first (default 10; --quick: 0.5, in 10 s intervals)
#   --profile P  cargo profile of Facteur and the load generator (default
#                release; dev or test build faster, for trying the script)
#   --keep       keep the work directory (logs, JSON results) at the end
#
# FACTEUR_BENCH_FACTEUR and FACTEUR_BENCH_LOADGEN, when set, name a facteur
# binary and a load generator (benches/load.rs) executable already built.
#
# Needs: root or an installed Dovecot (scripts/dovecot.sh installs it),
# Garage (scripts/garage.sh), python3. Exits 1 if the load generator
# counted any error. The figures are only worth reading on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

QUICK=0
ROUNDS=3
MINUTES=""
PROFILE=release
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --minutes) MINUTES="$2"; shift ;;
    --profile) PROFILE="$2"; shift ;;
    --keep) KEEP=1 ;;
    *) echo "usage: $0 [--quick] [--rounds N] [--minutes M] [--profile P] [--keep]" >&2; exit 2 ;;
    esac
    shift
done
[ "$ROUNDS" -ge 3 ] || { echo "bench.sh: --rounds must be at least 3" >&2; exit 2; }

if [ "$QUICK" = 1 ]; then
    USERS=5          # users (each has a mailbox of MESSAGES messages)
    MESSAGES=20
    CLIENTS=8        # clients of the mix
    SECONDS_MIX=4    # length of each measure
    SECONDS_LOGIN=2
    BIG=300          # messages of the big mailbox
    DOWNLOAD=100     # messages of the full download
    IDLE_COUNTS="20 100"
    LMTP_MESSAGES=20
    MINUTES="${MINUTES:-0.5}"
    INTERVAL=10
    # Quick: cheaper password hashing, so that provisioning takes seconds.
    ARGON2="[crypto.argon2]
memory_kib = 8192
iterations = 1
parallelism = 1"
else
    USERS=100
    MESSAGES=100
    CLIENTS=100
    SECONDS_MIX=60
    SECONDS_LOGIN=20
    BIG=10000
    DOWNLOAD=1000
    IDLE_COUNTS="1000 10000"
    LMTP_MESSAGES=400
    MINUTES="${MINUTES:-10}"
    INTERVAL=60
    ARGON2="" # Facteur's defaults: 64 MiB, 3 passes
fi
LONG_SECONDS="$(python3 -c "print(round($MINUTES * 60))")"

log() { echo "bench.sh: $(date +%H:%M:%S) $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

case "$PROFILE" in
release | bench) BIN_DIR=release ;;
dev | test) BIN_DIR=debug ;;
*) BIN_DIR="$PROFILE" ;;
esac
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

# FACTEUR_BENCH_FACTEUR and FACTEUR_BENCH_LOADGEN name binaries already
# built (facteur, and the load bench's executable) to use instead.
if [ -n "${FACTEUR_BENCH_FACTEUR:-}" ]; then
    FACTEUR="$FACTEUR_BENCH_FACTEUR"
else
    log "building facteur (profile $PROFILE)"
    cargo build --profile "$PROFILE" --bin facteur >&2
    FACTEUR="$TARGET/$BIN_DIR/facteur"
fi
[ -x "$FACTEUR" ] || die "no $FACTEUR"
if [ -z "${FACTEUR_BENCH_LOADGEN:-}" ]; then
    log "building the load generator (profile $PROFILE)"
    cargo bench --profile "$PROFILE" --bench load --no-run >&2
fi
# The LMTP measure (last) runs benches/lmtp.rs: built now, so that no
# compilation runs while something is measured.
log "building the LMTP bench (profile $PROFILE)"
cargo bench --profile "$PROFILE" --bench lmtp --no-run >&2

W="$(mktemp -d /tmp/facteur-bench.XXXXXX)"
mkdir -p "$W/results"
PW="bench-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
# Many sockets: the load generator holds one per client, the servers theirs.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cleanup() {
    set +e
    for s in fs garage; do stop_facteur "$s" 2>/dev/null; done
    scripts/dovecot.sh stop "$W/dovecot" >/dev/null 2>&1
    scripts/garage.sh stop "$W/garage" >/dev/null 2>&1
    if [ "$KEEP" = 1 ]; then log "work directory kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

load() { # args of the load generator
    if [ -n "${FACTEUR_BENCH_LOADGEN:-}" ]; then
        "$FACTEUR_BENCH_LOADGEN" "$@"
    else
        cargo bench -q --profile "$PROFILE" --bench load -- "$@"
    fi
}

# --- Dovecot ------------------------------------------------------------
log "starting Dovecot"
eval "$(scripts/dovecot.sh start "$W/dovecot")"
# Our users (same password as on Facteur) next to the script's one, and
# limits high enough for the IDLE measure; then a restart to read them.
MAIL_OWNER="$(stat -c %U "$W/dovecot/mail")"
{
    for i in $(seq 1 "$USERS") big; do
        u="user$i"
        [ "$i" = big ] && u=big
        mkdir -p "$W/dovecot/mail/$u"
        printf '%s:{PLAIN}%s::::%s::\n' "$u" "$PW" "$W/dovecot/mail/$u"
    done
} >>"$W/dovecot/users"
chown -R "$MAIL_OWNER:$(id -gn "$MAIL_OWNER")" "$W/dovecot/mail"
cat >>"$W/dovecot/dovecot.conf" <<EOF
# Added by scripts/bench.sh: room for the IDLE measure. Dovecot's own
# definition of the imap service sets process_limit = 1024, which the
# default_ one does not override: 10,000 sessions need it raised here.
default_process_limit = 11000
default_client_limit = 40000
default_vsz_limit = 0
service imap {
  process_limit = 11000
}
EOF
sed -i 's/^mail_max_userip_connections = .*/mail_max_userip_connections = 12000/' "$W/dovecot/dovecot.conf"
scripts/dovecot.sh stop "$W/dovecot" >/dev/null 2>&1
eval "$(scripts/dovecot.sh start "$W/dovecot")"
dovecot_addr() { echo "127.0.0.1:$DOVECOT_IMAP_PORT"; }
dovecot_pids() { cat "$W/dovecot/dovecot.pid"; }
restart_dovecot() {
    scripts/dovecot.sh stop "$W/dovecot" >/dev/null 2>&1
    scripts/dovecot.sh start "$W/dovecot" >/dev/null
}

# --- Garage -------------------------------------------------------------
log "starting Garage"
eval "$(scripts/garage.sh start "$W/garage")"

# --- Facteur, fs and Garage ---------------------------------------------
write_facteur() { # name, [store] section
    local d="$W/$1"
    mkdir -p "$d"
    cat >"$d/facteur.toml" <<EOF
cluster_secret = "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
$2
[directory]
backend = "static"
users_file = "users.toml"
[crypto]
recovery_key = false
# Every waiting login is served: the load generator counts a refusal.
argon2_queue = 20000
$ARGON2
[lmtp]
listen = []
[imap]
starttls_listen = ["127.0.0.1:0"]
tls_listen = []
max_connections = 12000
max_connections_per_ip = 12000
# Every client comes from 127.0.0.1: attempts in flight count as failures
# until they succeed, so the defaults (10 per address, 5 per login) would
# delay a burst of logins, by design.
login_failures_per_ip = 100000
login_failures_per_login = 100000
EOF
}

add_facteur_users() { # name
    local d="$W/$1" i
    for i in $(seq 1 "$USERS") big; do
        local u="user$i"
        [ "$i" = big ] && u=big
        echo "$PW" | "$FACTEUR" --config "$d/facteur.toml" user add "$u" --address "$u@example.org" --no-recovery \
            >/dev/null 2>>"$d/user-add.log" || die "facteur user add $u ($1): see $d/user-add.log"
    done
}

start_facteur() { # name
    local d="$W/$1" deadline=$((SECONDS + 120))
    : >"$d/stdout"
    "$FACTEUR" --config "$d/facteur.toml" serve --http 127.0.0.1:0 \
        </dev/null >"$d/stdout" 2>>"$d/server.log" &
    echo $! >"$d/pid"
    until grep -q '^facteur: ready' "$d/stdout"; do
        kill -0 "$(cat "$d/pid")" 2>/dev/null || { tail "$d/server.log" >&2; die "facteur ($1) exited"; }
        [ "$SECONDS" -lt "$deadline" ] || die "facteur ($1) not ready after 120 s"
        sleep 0.1
    done
    sed -n 's/^facteur: imap (starttls) listening on //p' "$d/stdout" >"$d/addr"
}

stop_facteur() { # name
    local d="$W/$1" pid
    [ -f "$d/pid" ] || return 0
    pid="$(cat "$d/pid")"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$d/pid"
}

write_facteur fs '[store]
backend = "fs"
path = "store"'
write_facteur garage "[store]
backend = \"s3\"
[store.s3]
endpoint = \"$FACTEUR_TEST_S3_ENDPOINT\"
region = \"$FACTEUR_TEST_S3_REGION\"
bucket = \"$FACTEUR_TEST_S3_BUCKET\"
access_key_id = \"$FACTEUR_TEST_S3_ACCESS_KEY\"
secret_access_key = { env = \"FACTEUR_TEST_S3_SECRET_KEY\" }"
log "creating $USERS users (and 'big') on Facteur fs and Facteur Garage"
add_facteur_users fs &
adding_fs=$!
add_facteur_users garage &
wait "$!" || die "creating users on Facteur Garage failed"
wait "$adding_fs" || die "creating users on Facteur fs failed"
start_facteur fs
start_facteur garage

SERVERS="dovecot fs garage"
addr() { # server
    case "$1" in
    dovecot) dovecot_addr ;;
    *) cat "$W/$1/addr" ;;
    esac
}
# The processes whose CPU is counted: Dovecot's master (its children with
# it), Facteur, and Garage too for Facteur on Garage.
pids() { # server
    case "$1" in
    dovecot) dovecot_pids ;;
    fs) cat "$W/fs/pid" ;;
    garage) cat "$W/garage/pid"; cat "$W/garage/garage.pid" ;;
    esac
}
# The processes whose memory an IDLE connection costs (not Garage's).
memory_pids() { # server
    case "$1" in
    garage) cat "$W/garage/pid" ;;
    *) pids "$1" ;;
    esac
}
# The server's CPU time so far, in clock ticks.
cpu_ticks() { # server
    local p t=0 v
    for p in $(pids "$1"); do
        v="$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null)" || v=0
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
# Waits until the server is idle (under 5 % of a core over 2 s), at most 5
# minutes: what a fill leaves running in the background (Facteur writes
# the index pages of the summary pages its snapshots paged out, until the
# account's grace period after the fill's last logout) must not run into
# the next server's measures.
settle() { # server
    local prev now i hz
    hz="$(getconf CLK_TCK)"
    prev="$(cpu_ticks "$1")"
    for i in $(seq 1 150); do
        sleep 2
        now="$(cpu_ticks "$1")"
        # (A process that ended makes the difference negative: not idle.)
        if [ $((now - prev)) -ge 0 ] && [ $((now - prev)) -lt $((hz / 10)) ]; then
            log "$1 idle after the fill ($((i * 2)) s)"
            return
        fi
        prev="$now"
    done
    log "$1 still busy 5 minutes after the fill; going on"
}
pid_args() { local p; for p in $(pids "$1"); do printf -- '--server-pid %s ' "$p"; done; }
restart() { # server
    case "$1" in
    dovecot) restart_dovecot ;;
    *) stop_facteur "$1"; start_facteur "$1" ;;
    esac
}

# run NAME SERVER ARGS...: the load generator, its JSON in results/NAME.json.
run() {
    local name="$1" server="$2" out
    shift 2
    # shellcheck disable=SC2046
    out="$(load --server "$(addr "$server")" --users "user%d:$PW" --user-count "$USERS" \
        $(pid_args "$server") --json "$@" 2>&1)" || true
    echo "$out" >"$W/results/$name.txt"
    grep '^LOADGEN-JSON ' <<<"$out" | sed 's/^LOADGEN-JSON //' >"$W/results/$name.json" || true
    if ! [ -s "$W/results/$name.json" ]; then
        echo '{"errors": 1, "error_samples": ["the load generator printed no result; see '"$W/results/$name.txt"'"]}' \
            >"$W/results/$name.json"
    fi
    local errors
    errors="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["errors"])' "$W/results/$name.json")"
    log "$name: $errors errors"
    [ "$errors" = 0 ] || sed -n '/errors:/,$p' "$W/results/$name.txt" | head -25 >&2
}

# --- Starting mail --------------------------------------------------------
for s in $SERVERS; do
    log "starting mail on $s: $USERS users x $MESSAGES messages, 'big' x $BIG"
    run "fill-$s" "$s" --mode fill --messages "$MESSAGES" --clients 4
    load --server "$(addr "$s")" --users "big:$PW" --user-count 1 --mode fill \
        --messages "$BIG" --clients 8 >"$W/results/fill-big-$s.txt" 2>&1 ||
        die "filling 'big' on $s failed: $(tail -5 "$W/results/fill-big-$s.txt")"
    settle "$s"
done

# --- Alternating rounds ---------------------------------------------------
for r in $(seq 1 "$ROUNDS"); do
    for s in $SERVERS; do
        log "round $r/$ROUNDS: $s"
        run "mix-$s-$r" "$s" --clients "$CLIENTS" --seconds "$SECONDS_MIX" --warm-up
        run "kept-$s-$r" "$s" --clients "$CLIENTS" --seconds "$SECONDS_MIX" --keep-open --warm-up
        run "login1-$s-$r" "$s" --mode logins --user-count 1 --clients 4 --seconds "$SECONDS_LOGIN"
        run "loginN-$s-$r" "$s" --mode logins --clients "$CLIENTS" --seconds "$SECONDS_LOGIN"
        restart "$s"
        # shellcheck disable=SC2046
        out="$(load --server "$(addr "$s")" --users "big:$PW" --user-count 1 $(pid_args "$s") \
            --mode bigbox --messages "$BIG" --download "$DOWNLOAD" --json 2>&1)" || true
        echo "$out" >"$W/results/big-$s-$r.txt"
        grep '^LOADGEN-JSON ' <<<"$out" | sed 's/^LOADGEN-JSON //' >"$W/results/big-$s-$r.json" ||
            echo '{"errors": 1, "error_samples": ["no result"]}' >"$W/results/big-$s-$r.json"
    done
done

# --- IDLE memory ------------------------------------------------------------
for n in $IDLE_COUNTS; do
    for s in $SERVERS; do
        log "$n sessions in IDLE on $s"
        restart "$s"
        # shellcheck disable=SC2046
        out="$(load --server "$(addr "$s")" --users "user%d:$PW" --user-count "$USERS" \
            $(for p in $(memory_pids "$s"); do printf -- '--server-pid %s ' "$p"; done) \
            --mode idle --clients "$n" --seconds 5 --json 2>&1)" || true
        echo "$out" >"$W/results/idle-$n-$s.txt"
        grep '^LOADGEN-JSON ' <<<"$out" | sed 's/^LOADGEN-JSON //' >"$W/results/idle-$n-$s.json" ||
            echo '{"errors": 1, "error_samples": ["no result; see idle-'"$n-$s"'.txt"]}' >"$W/results/idle-$n-$s.json"
    done
done

# --- Long run: ops per CPU second, first interval against the last ---------
for s in $SERVERS; do
    log "long run on $s: $MINUTES min in ${INTERVAL} s intervals"
    restart "$s"
    run "long-$s" "$s" --clients "$CLIENTS" --seconds "$LONG_SECONDS" --interval "$INTERVAL" --warm-up
done

# --- LMTP, through benches/lmtp.rs (in-process Facteur, same Dovecot) ------
for c in 1 4 10; do
    log "LMTP, $c connections (cargo bench --bench lmtp)"
    FACTEUR_BENCH_CONNECTIONS=$c FACTEUR_BENCH_MESSAGES=$LMTP_MESSAGES FACTEUR_BENCH_ROUNDS=$ROUNDS \
        cargo bench -q --profile "$PROFILE" --bench lmtp >"$W/results/lmtp-$c.txt" 2>&1 ||
        log "lmtp bench with $c connections failed: see $W/results/lmtp-$c.txt"
done

# --- The table ----------------------------------------------------------------
python3 - "$W/results" "$ROUNDS" "$IDLE_COUNTS" "$CLIENTS" "$SECONDS_MIX" "$MINUTES" <<'PY'
import json, os, re, statistics, sys

res, rounds, idle_counts = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
clients, seconds, minutes = sys.argv[4], sys.argv[5], sys.argv[6]
servers = ["dovecot", "fs", "garage"]
names = {"dovecot": "Dovecot", "fs": "Facteur fs", "garage": "Facteur Garage"}
errors = 0
samples = []

def load(name):
    global errors
    path = os.path.join(res, name + ".json")
    try:
        d = json.load(open(path))
    except (OSError, ValueError):
        d = {"errors": 1, "error_samples": [f"{name}: no result"]}
    errors += d.get("errors", 0)
    samples.extend(f"{name}: {e}" for e in d.get("error_samples", [])[:5])
    return d

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"

def ratio(f, d):
    return "-" if f is None or not d else f"x{f / d:.2f}"

def row(label, values, digits=1):
    d = values.get("dovecot")
    cells = [f"{label:38}", f"{fmt(d, digits):>12}"]
    for s in ("fs", "garage"):
        cells += [f"{fmt(values.get(s), digits):>14}", f"{ratio(values.get(s), d):>7}"]
    print(" ".join(cells))

def header(title):
    print()
    print(title)
    print(" ".join([f"{'':38}", f"{'Dovecot':>12}", f"{'Facteur fs':>14}", f"{'F/D':>7}",
                    f"{'Facteur Garage':>14}", f"{'F/D':>7}"]))

for kind, title in [("mix", "one connection per loop"), ("kept", "sessions kept open")]:
    runs = {s: [load(f"{kind}-{s}-{r}") for r in range(1, rounds + 1)] for s in servers}
    header(f"Mail-client mix, {title}: {clients} clients x {seconds} s, median of {rounds} rounds")
    row("ops/s (all commands)", {s: med([x.get("ops_per_s") for x in runs[s]]) for s in servers})
    row("ops per server CPU second", {s: med([x["ops"] / x["cpu_seconds"] if x.get("cpu_seconds") else None for x in runs[s]]) for s in servers})
    commands = []
    for s in servers:
        for x in runs[s]:
            for c in x.get("commands", {}):
                if c not in commands:
                    commands.append(c)
    for c in commands:
        row(f"  {c} ops/s", {s: med([x.get("commands", {}).get(c, {}).get("ops_per_s") for x in runs[s]]) for s in servers})
    for c in commands:
        row(f"  {c} p50 ms", {s: med([x.get("commands", {}).get(c, {}).get("p50_ms") for x in runs[s]]) for s in servers}, 2)
        row(f"  {c} p99 ms", {s: med([x.get("commands", {}).get(c, {}).get("p99_ms") for x in runs[s]]) for s in servers}, 2)
    row("errors (all rounds)", {s: sum(x.get("errors", 0) for x in runs[s]) for s in servers}, 0)

header(f"Logins (connect, LOGIN, LOGOUT), median of {rounds} rounds")
for kind, label in [("login1", "logins/s, same user, 4 clients"), ("loginN", f"logins/s, many users, {clients} clients")]:
    runs = {s: [load(f"{kind}-{s}-{r}") for r in range(1, rounds + 1)] for s in servers}
    row(label, {s: med([x.get("commands", {}).get("LOGIN", {}).get("ops_per_s") for x in runs[s]]) for s in servers})
    row("  LOGIN p99 ms", {s: med([x.get("commands", {}).get("LOGIN", {}).get("p99_ms") for x in runs[s]]) for s in servers}, 2)
# The mixes and the long run first log every user in once, untimed
# (--warm-up: LOGIN, LIST, EXAMINE of each mailbox, LOGOUT); the long run
# follows a restart, so its warm-up is each user's first session
# (Facteur: one Argon2 each, keys unlocked, mailboxes opened).
def first_logins(x):
    n, t = x.get("warm_up_users"), x.get("warm_up_seconds")
    return n / t if n and t else None
long = {s: load(f"long-{s}") for s in servers}
row("first sessions after a restart (LOGIN, LIST, EXAMINE each), per s", {s: first_logins(long[s]) for s in servers})

header(f"Big mailbox, cold (server restarted), ms, median of {rounds} rounds")
runs = {s: [load(f"big-{s}-{r}") for r in range(1, rounds + 1)] for s in servers}
steps = []
for s in servers:
    for x in runs[s]:
        for st in x.get("steps", []):
            if st["step"] not in steps:
                steps.append(st["step"])
def step_ms(x, st):
    return next((y["ms"] for y in x.get("steps", []) if y["step"] == st), None)
for st in steps:
    row(st, {s: med([step_ms(x, st) for x in runs[s]]) for s in servers})
row("server CPU seconds", {s: med([x.get("cpu_seconds") for x in runs[s]]) for s in servers}, 2)
# Round 1 is the first search and download of the mailbox since it was
# filled: Facteur's index pages and body packs were written after the
# fill's snapshots (doc/storage.md, "Index pages"), or are written now if
# they were not.
for st in [st for st in steps if st.startswith("SEARCH") or st.startswith("FETCH 1:") and "BODY" in st]:
    row(f"{st}, round 1", {s: step_ms(runs[s][0], st) if runs[s] else None for s in servers})
print("(round 1: the first search and download since the fill)")

header("Memory per connection in IDLE, KiB (server PSS rise from a tenth of the sessions to all)")
for n in idle_counts:
    vals = {}
    for s in servers:
        x = load(f"idle-{n}-{s}")
        per = x.get("rss_per_connection")
        vals[s] = None if per is None else per / 1024
        if x.get("clients") is not None and str(x.get("clients")) != n:
            samples.append(f"idle-{n}-{s}: only {x.get('clients')} sessions reached IDLE")
    row(f"{n} sessions in IDLE", vals)

header(f"Ops per server CPU second over a {minutes} min run: first interval, last interval")
def per_cpu(x, i):
    iv = x.get("intervals") or []
    if not iv:
        return None
    v = iv[i]
    return v["ops"] / v["cpu_seconds"] if v["cpu_seconds"] else None
row("first interval", {s: per_cpu(long[s], 0) for s in servers})
row("last interval", {s: per_cpu(long[s], -1) for s in servers})
row("last / first", {s: (per_cpu(long[s], -1) / per_cpu(long[s], 0)) if per_cpu(long[s], 0) and per_cpu(long[s], -1) else None for s in servers}, 2)

header("LMTP delivery (cargo bench --bench lmtp: Facteur in process, the same Dovecot), median round")
for c in ("1", "4", "10"):
    try:
        text = open(os.path.join(res, f"lmtp-{c}.txt")).read()
    except OSError:
        text = ""
    vals = {}
    for s, target in [("dovecot", "dovecot"), ("fs", "facteur/fs"), ("garage", "facteur/garage")]:
        m = re.search(r"^\| " + re.escape(target) + r" \| (\d+) \|", text, re.M)
        vals[s] = float(m.group(1)) if m else None
    if all(v is None for v in vals.values()):
        print(f"{c} connection(s): not measured (the bench failed: see results/lmtp-{c}.txt)")
    else:
        row(f"{c} connection(s), msg/s", vals, 0)

print()
print(f"load-generator errors: {errors}")
for s in samples[:20]:
    print(f"  {s}")
sys.exit(1 if errors else 0)
PY
