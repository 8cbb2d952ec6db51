#!/usr/bin/env bash
# Runs Facteur's whole test suite on a fresh Debian machine: installs what
# the tests need (Garage, via cargo), starts a throwaway single-node Garage
# and a 3-node one (the multi-site tests) on loopback ports, then runs
# formatting, lint and every test against them.
# Everything it starts lives in a temporary directory and is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# A fresh clone builds once: incremental caches would only take disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# The binary's allocator, jemalloc, is built from C with make.
if ! command -v make >/dev/null; then
    echo "== installing make (jemalloc's build)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q make >&2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/facteur-test.XXXXXX")"
cleanup() {
    scripts/garage.sh stop "$work/garage" >&2 || true
    scripts/garage-cluster.sh stop "$work/garage-cluster" >&2 || true
    scripts/slapd.sh stop "$work/slapd" >&2 || true
    scripts/dovecot.sh stop "$work/dovecot" >&2 || true
    # Postfix instances a killed test could not stop itself.
    for d in "$work"/postfix/*/postfix; do
        [ -d "$d" ] && { scripts/postfix.sh stop "$d" >&2 || true; }
    done
    rm -rf "$work"
}
trap cleanup EXIT

# Starts a throwaway service with scripts/$1 in directory $2 and takes its
# exports; tries a second time if the first start fails (an `eval "$(...)"`
# alone would hide the failure and leave the tests to fail without it),
# from a fresh directory, and stops the suite if the second fails too.
start_service() {
    local exports attempt
    for attempt in 1 2; do
        if exports="$(scripts/"$1" start "$2")"; then
            eval "$exports"
            return
        fi
        echo "== $1 start failed (attempt $attempt)" >&2
        scripts/"$1" stop "$2" >&2 || true
        # Start over with fresh ports and files.
        rm -rf "$2"
    done
    exit 1
}

echo "== starting a throwaway Garage" >&2
start_service garage.sh "$work/garage"
# The S3 variants of the tests fail rather than skip when Garage is missing.
export FACTEUR_REQUIRE_S3=1
echo "== starting a throwaway 3-node Garage (one node per zone)" >&2
start_service garage-cluster.sh "$work/garage-cluster"
# The multi-site tests (tests/multisite.rs) fail rather than skip without it.
export FACTEUR_REQUIRE_GARAGE_CLUSTER=1
echo "== starting a throwaway slapd" >&2
start_service slapd.sh "$work/slapd"
export FACTEUR_REQUIRE_LDAP=1
echo "== starting a throwaway Dovecot" >&2
start_service dovecot.sh "$work/dovecot"
# The differential MIME test (tests/dovecot_mime.rs) fails rather than skips.
export FACTEUR_REQUIRE_DOVECOT=1
echo "== installing Postfix for the end-to-end LMTP tests" >&2
scripts/postfix.sh install
# tests/postfix.rs starts one throwaway Postfix per test, each pointed at
# the LMTP port its test listens on, under this directory (which the
# postfix user must be able to enter).
mkdir -p "$work/postfix"
chmod o+x "$work" "$work/postfix"
export FACTEUR_TEST_POSTFIX=1 FACTEUR_TEST_POSTFIX_DIR="$work/postfix"
export FACTEUR_REQUIRE_POSTFIX=1
echo "== installing mbsync (isync), a real IMAP client for the end-to-end tests" >&2
if ! command -v mbsync >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q isync >&2
fi
export FACTEUR_REQUIRE_MBSYNC=1
echo "== installing fail2ban, whose fail2ban-regex checks doc/fail2ban/ against a real log" >&2
if ! command -v fail2ban-regex >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q fail2ban >&2
fi
export FACTEUR_REQUIRE_FAIL2BAN=1
echo "== installing systemd-analyze, which checks doc/deploy/facteur.service" >&2
if ! command -v systemd-analyze >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd >&2
fi
export FACTEUR_REQUIRE_SYSTEMD_ANALYZE=1

# The build needs a few GiB; say how much there is, so a full disk shows as one.
echo "== free disk where the build goes: $(df -Ph . | awk 'NR==2 {print $4}')" >&2
echo "== cargo fmt --check" >&2
cargo fmt --check
echo "== cargo clippy" >&2
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test" >&2
set +e
# Unit and integration tests; the benchmark (benches/) is run by hand
# with `cargo bench`, never here.
cargo test --locked --no-fail-fast --lib --bins --tests 2>&1 | tee "$work/test.log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; s += $8 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$work/test.log"
exit "$status"
