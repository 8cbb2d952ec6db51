//! The admin escrow slot, end to end through the binary: a key pair made
//! by `facteur admin escrow-keygen`, its public half configured, keyrings
//! that get a slot sealed to it (new ones at creation, existing ones at
//! their next unlock), and a user who lost both the password and the
//! recovery key given a new password with the offline secret half.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_facteur");

const CONFIG: &str = "cluster_secret = \"0123456789abcdef0123456789abcdef\"\n\
    [store]\nbackend = \"fs\"\npath = \"store\"\n\
    [directory]\nbackend = \"static\"\nusers_file = \"users.toml\"\n\
    [crypto.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n";

fn run(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(["--config", "facteur.toml"])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[track_caller]
fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "failed: {out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[track_caller]
fn fails(o: &Output, expected: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(expected), "expected {expected:?} in {err:?}");
}

fn keyring_has_escrow(dir: &Path) -> Vec<bool> {
    let mut found = Vec::new();
    for entry in walkdir(&dir.join("store")) {
        if entry.ends_with("keyring") {
            let text = std::fs::read_to_string(&entry).unwrap();
            found.push(text.contains("\"escrow\""));
        }
    }
    found
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_user_who_lost_password_and_recovery_key_is_rekeyed_with_the_escrow_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("facteur.toml"), CONFIG).unwrap();

    // Bob exists before escrow is configured.
    ok(&run(
        d,
        &["user", "add", "bob", "--no-recovery"],
        "bob-password\n",
    ));
    assert_eq!(keyring_has_escrow(d), [false]);

    let out = ok(&run(d, &["admin", "escrow-keygen", "escrow.key"], ""));
    let mode = std::fs::metadata(d.join("escrow.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    let public = out
        .lines()
        .find_map(|l| l.strip_prefix("escrow_public_key = "))
        .expect("the public key is printed")
        .trim_matches('"')
        .to_owned();
    assert_eq!(public.len(), 64);
    // A second keygen never overwrites the first key.
    fails(
        &run(d, &["admin", "escrow-keygen", "escrow.key"], ""),
        "escrow.key",
    );
    std::fs::write(
        d.join("facteur.toml"),
        format!("{CONFIG}[crypto]\nescrow_public_key = \"{public}\"\n"),
    )
    .unwrap();

    // New keyrings get the slot at creation.
    ok(&run(
        d,
        &["user", "add", "alice", "--no-recovery"],
        "alice-password\n",
    ));
    assert_eq!(keyring_has_escrow(d).iter().filter(|e| **e).count(), 1);

    // Alice forgot her password and has no recovery key.
    fails(
        &run(d, &["user", "passwd", "alice"], "forgotten\nnew-password\n"),
        "wrong password",
    );
    ok(&run(
        d,
        &["user", "passwd", "alice", "--escrow-key", "escrow.key"],
        "alice-new-password\n",
    ));
    ok(&run(
        d,
        &["user", "passwd", "alice"],
        "alice-new-password\nalice-third-password\n",
    ));

    // Bob's keyring has no slot yet: escrow cannot open it ...
    fails(
        &run(
            d,
            &["user", "passwd", "bob", "--escrow-key", "escrow.key"],
            "x-password\n",
        ),
        "no escrow slot",
    );
    // ... until his next unlock adds it.
    ok(&run(
        d,
        &["user", "passwd", "bob"],
        "bob-password\nbob-password-2\n",
    ));
    assert_eq!(keyring_has_escrow(d), [true, true]);
    ok(&run(
        d,
        &["user", "passwd", "bob", "--escrow-key", "escrow.key"],
        "bob-password-3\n",
    ));

    // Another admin key opens nothing.
    ok(&run(d, &["admin", "escrow-keygen", "other.key"], ""));
    fails(
        &run(
            d,
            &["user", "passwd", "bob", "--escrow-key", "other.key"],
            "x-password\n",
        ),
        "does not open",
    );

    // A malformed key in the configuration is refused up front.
    std::fs::write(
        d.join("facteur.toml"),
        format!("{CONFIG}[crypto]\nescrow_public_key = \"abcd\"\n"),
    )
    .unwrap();
    fails(&run(d, &["user", "list"], ""), "escrow_public_key");
}
