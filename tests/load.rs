//! The load generator of benches/load.rs against the real `facteur serve`
//! (fs store, port 0) for a few seconds: a handful of clients, two of them
//! on each user so that sessions of one mailbox meet, then sessions kept
//! open. Every response is checked by the generator (benches/loadgen);
//! the test wants zero errors and every command of the mix run. No timing
//! is asserted.

#[path = "../benches/loadgen/mod.rs"]
mod loadgen;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use clap::Parser;
use loadgen::{Cmd, Options};

const BIN: &str = env!("CARGO_BIN_EXE_facteur");
const PASSWORD: &str = "load-password";
const USERS: usize = 2;

/// `facteur serve` on the fs store with users user1..user2, stopped on drop.
struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "cluster_secret = \"{:032x}\"\n\
             [store]\nbackend = \"fs\"\npath = \"store\"\n\
             [directory]\nbackend = \"static\"\nusers_file = \"users.toml\"\n\
             [crypto.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n\
             [lmtp]\nlisten = []\n\
             [imap]\nstarttls_listen = [\"127.0.0.1:0\"]\ntls_listen = []\n",
            rand::random::<u128>()
        );
        std::fs::write(dir.path().join("facteur.toml"), config).unwrap();
        for n in 1..=USERS {
            let mut add = Command::new(BIN)
                .args([
                    "--config",
                    "facteur.toml",
                    "user",
                    "add",
                    &format!("user{n}"),
                ])
                .current_dir(dir.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            writeln!(add.stdin.take().unwrap(), "{PASSWORD}").unwrap();
            let out = add.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "user add: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut child = Command::new(BIN)
            .args(["--config", "facteur.toml", "serve", "--http", "127.0.0.1:0"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(a) = line.strip_prefix("facteur: imap (starttls) listening on ") {
                addr = Some(a.to_owned());
            }
            if line == "facteur: ready" {
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Server {
            child,
            addr: addr.expect("serve printed its IMAP address"),
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn options(server: &Server, extra: &[&str]) -> Options {
    let pid = server.child.id().to_string();
    let mut args = vec![
        "load",
        "--server",
        &server.addr,
        "--server-pid",
        &pid,
        "--user-count",
        "2",
    ];
    let users = format!("user%d:{PASSWORD}");
    args.extend(["--users", &users]);
    args.extend_from_slice(extra);
    Options::parse_from(args)
}

fn assert_clean(report: &loadgen::Report, expected: &[Cmd]) {
    report.print();
    assert_eq!(report.errors, 0, "errors: {:#?}", report.error_samples);
    for cmd in expected {
        assert!(report.ran(*cmd) > 0, "{} never ran", cmd.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mail_client_mix_runs_without_errors_against_facteur() {
    let server = Server::start();

    let fill = loadgen::run(&options(
        &server,
        &["--mode", "fill", "--messages", "12", "--clients", "3"],
    ))
    .await;
    assert_clean(&fill, &[]);
    assert_eq!(fill.appended, 24);

    let mix = loadgen::run(&options(
        &server,
        &["--clients", "4", "--seconds", "4", "--interval", "2"],
    ))
    .await;
    assert_clean(&mix, &Cmd::mix(false));
    assert_eq!(mix.intervals.len(), 2, "one CPU sample per interval");

    let kept = loadgen::run(&options(
        &server,
        &[
            "--clients",
            "2",
            "--seconds",
            "4",
            "--keep-open",
            "--warm-up",
        ],
    ))
    .await;
    assert_clean(&kept, &Cmd::mix(true));
    assert!(
        kept.ran(Cmd::Login) <= 2,
        "LOGIN once per kept session, the warm-up's not counted"
    );
    assert!(
        kept.warm_up.is_some_and(|(users, s)| users == 2 && s > 0.0),
        "{:?}",
        kept.warm_up
    );
    // A warm-up that fails is counted as errors, not hidden.
    let refused = loadgen::run(&options(
        &server,
        &[
            "--mode",
            "logins",
            "--clients",
            "1",
            "--seconds",
            "0.2",
            "--warm-up",
            "--users",
            "nobody%d:wrong",
        ],
    ))
    .await;
    assert!(refused.errors >= 2, "{:?}", refused.error_samples);
    assert!(
        refused
            .error_samples
            .iter()
            .any(|e| e.starts_with("warm-up: Login")),
        "{:?}",
        refused.error_samples
    );

    let big = loadgen::run(&options(
        &server,
        &["--mode", "bigbox", "--messages", "12", "--download", "10"],
    ))
    .await;
    assert_clean(&big, &[]);
    assert_eq!(big.steps.len(), 5, "{:?}", big.steps);

    let idle = loadgen::run(&options(
        &server,
        &["--mode", "idle", "--clients", "6", "--seconds", "0.2"],
    ))
    .await;
    assert_clean(&idle, &[]);
    assert_eq!(idle.clients, 6);
    assert!(
        idle.rss.is_some_and(|(before, _)| before > 0),
        "server memory read"
    );
    assert!(idle.rss_per_connection().is_some());
}
