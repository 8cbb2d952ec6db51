//! LMTP delivery under load (issue 5, "Performance"): several concurrent
//! connections delivering messages of mixed sizes (2 KiB to 1 MiB), each
//! message answered 250 only once durable. Reports messages per second,
//! MiB per second and p50/p99 latency for Facteur on the fs store, on
//! Garage, and for Dovecot's LMTP with the same workload in the same run,
//! then the ratios.
//!
//! Run with `cargo bench --bench lmtp` (release build; not part of CI).
//!
//! - Garage is measured when `FACTEUR_TEST_S3_*` are set
//!   (`eval "$(scripts/garage.sh start /tmp/bench-garage)"`).
//! - Dovecot: `DOVECOT_LMTP_PORT` and `DOVECOT_USER` from the environment
//!   if set (`eval "$(scripts/dovecot.sh start /tmp/bench-dovecot)"`);
//!   otherwise the bench starts `scripts/dovecot.sh` itself in a temporary
//!   directory and stops it at the end (`FACTEUR_BENCH_DOVECOT=0` skips).
//!
//! Options, from the environment:
//! - `FACTEUR_BENCH_TARGETS` (`fs,garage,dovecot`);
//! - `FACTEUR_BENCH_MESSAGES` (400): messages per target (plus a warm-up
//!   of 5 per connection, not counted);
//! - `FACTEUR_BENCH_CONNECTIONS` (4): concurrent LMTP connections;
//! - `FACTEUR_BENCH_ROUNDS` (3): rounds, each measuring every target in
//!   turn (interleaved, so a noisy neighbour hits all alike); the round
//!   with the median throughput is reported per target.
//!
//! The client speaks like Postfix: LHLO once per connection, then per
//! message MAIL, RCPT and DATA pipelined (RFC 2920), the body, the final
//! dot. Latency runs from sending MAIL to reading the recipient's reply.
//! The message mix is fixed by a seed, so every target gets the same
//! messages in the same order: half of them 2-8 KiB, 30 % 8-64 KiB, 15 %
//! 64-256 KiB, 5 % 256 KiB-1 MiB; text headers and a base64 body of
//! random bytes (incompressible beyond base64's 3/4, like attachments).
//! Facteur runs in this process on its own runtime; the client runs on
//! another.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use facteur::account::KeyringStore;
use facteur::config::Config;
use facteur::crypto::{KdfParams, Password};
use facteur::directory::users_file::hash_password;
use facteur::directory::{UserEntry, UsersFile};
use facteur::server::lmtp::{self, Listener, Settings};
use facteur::server::{Services, Shutdown, ShutdownTrigger};
use facteur::store::{FsStore, S3Settings, S3Store, SharedStore};

const WARMUP_PER_CONNECTION: usize = 5;

struct Options {
    targets: Vec<String>,
    messages: usize,
    connections: usize,
    rounds: usize,
}

impl Options {
    fn from_env() -> Options {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Options {
            targets: var("FACTEUR_BENCH_TARGETS")
                .unwrap_or_else(|| "fs,garage,dovecot".into())
                .split(',')
                .map(str::to_owned)
                .collect(),
            messages: var("FACTEUR_BENCH_MESSAGES").map_or(400, |v| v.parse().expect("messages")),
            rounds: var("FACTEUR_BENCH_ROUNDS").map_or(3, |v| v.parse().expect("rounds")),
            connections: var("FACTEUR_BENCH_CONNECTIONS")
                .map_or(4, |v| v.parse().expect("connections")),
        }
    }
}

/// The messages, in delivery order (the same for every target).
fn workload(count: usize) -> Vec<Arc<Vec<u8>>> {
    let mut rng = StdRng::seed_from_u64(0x1a7e_2033);
    (0..count)
        .map(|i| {
            let size = match rng.gen_range(0..100) {
                0..50 => rng.gen_range(2 << 10..8 << 10),
                50..80 => rng.gen_range(8 << 10..64 << 10),
                80..95 => rng.gen_range(64 << 10..256 << 10),
                _ => rng.gen_range(256 << 10..1 << 20),
            };
            Arc::new(message(&mut rng, i, size))
        })
        .collect()
}

/// A message of about `size` octets, already dot-safe (base64 lines never
/// begin with a dot) and CRLF-terminated.
fn message(rng: &mut StdRng, i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Bench <bench@example.net>\r\nTo: user@example.org\r\n\
         Subject: benchmark message {i}\r\nMessage-ID: <{i}.bench@example.net>\r\n\
         Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    let raw_len = size.saturating_sub(m.len()) * 57 / 78;
    let raw: Vec<u8> = (0..raw_len).map(|_| rng.r#gen()).collect();
    for chunk in raw.chunks(57) {
        m.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(chunk)
                .as_bytes(),
        );
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// What one target measured.
struct Figures {
    messages: usize,
    bytes: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn mib_rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / (1 << 20) as f64
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l[((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1]
    }
}

/// One LMTP client connection, sending like Postfix.
struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    /// The server advertised SIZE (Dovecot does not by default).
    size: bool,
}

impl Client {
    async fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (r, w) = stream.into_split();
        let mut c = Client {
            reader: BufReader::new(r),
            writer: w,
            size: false,
        };
        c.expect("220").await;
        c.writer.write_all(b"LHLO bench.client\r\n").await.unwrap();
        c.size = c.expect("250").await.contains("SIZE");
        c
    }

    /// Reads one reply, all its lines.
    async fn expect(&mut self, code: &str) -> String {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).await.expect("read");
            assert!(n > 0, "connection closed waiting for {code}");
            assert!(line.starts_with(code), "expected {code}, got {line:?}");
            reply.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return reply;
            }
        }
    }

    async fn deliver(&mut self, rcpt: &str, message: &[u8]) -> Duration {
        let start = Instant::now();
        let size = if self.size {
            format!(" SIZE={}", message.len())
        } else {
            String::new()
        };
        let head = format!("MAIL FROM:<bench@example.net>{size}\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
        self.writer.write_all(head.as_bytes()).await.unwrap();
        self.expect("250").await;
        self.expect("250").await;
        self.expect("354").await;
        self.writer.write_all(message).await.unwrap();
        self.writer.write_all(b".\r\n").await.unwrap();
        self.expect("250").await;
        start.elapsed()
    }
}

/// Delivers the workload over `connections` connections (messages taken
/// in order from a shared queue) and measures.
async fn run(port: u16, rcpt: &str, messages: &[Arc<Vec<u8>>], connections: usize) -> Figures {
    // Warm-up: connections open, caches and the target's first files.
    let mut clients = Vec::new();
    for _ in 0..connections {
        let mut c = Client::connect(port).await;
        for m in messages.iter().take(WARMUP_PER_CONNECTION) {
            c.deliver(rcpt, m).await;
        }
        clients.push(c);
    }
    let all: Arc<[Arc<Vec<u8>>]> = messages.iter().cloned().collect();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        let (all, next, rcpt) = (all.clone(), next.clone(), rcpt.to_owned());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(m) = all.get(i) else { break };
                latencies.push(c.deliver(&rcpt, m).await);
            }
            let _ = c.writer.write_all(b"QUIT\r\n").await;
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(l) = tasks.join_next().await {
        latencies.extend(l.expect("client task"));
    }
    Figures {
        messages: messages.len(),
        bytes: messages.iter().map(|m| m.len() as u64).sum(),
        elapsed: start.elapsed(),
        latencies,
    }
}

/// Facteur's LMTP server on `store`, with one user `bench`, running on its
/// own runtime until dropped.
struct Facteur {
    port: u16,
    _trigger: ShutdownTrigger,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn start_facteur(store: SharedStore) -> Facteur {
    let dir = tempfile::tempdir().unwrap();
    // A fresh cluster secret per run: user ids differ, and the Garage
    // bucket may hold an earlier run's user.
    let config = Config::parse(
        &format!(
            "cluster_secret = \"{:032x}\"\n\
         [store]\nbackend = \"memory\"\n\
         [directory]\nbackend = \"static\"\nusers_file = \"users.toml\"\n\
         [crypto.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n",
            rand::random::<u128>()
        ),
        dir.path(),
    )
    .unwrap();
    let mut file = UsersFile::default();
    file.add(UserEntry {
        login: "bench".into(),
        password: hash_password(&Password::new("pw"), &KdfParams::TEST).unwrap(),
        addresses: vec!["bench@example.org".into()],
        aliases: vec![],
        quota: None,
        quota_messages: None,
    })
    .unwrap();
    file.save(&dir.path().join("users.toml")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("facteur")
        .build()
        .unwrap();
    let (port, trigger) = runtime.block_on(async {
        let mut services = Services::from_config(&config).unwrap();
        services.store = store.clone();
        // A fresh secret per run: the Garage bucket outlives runs.
        let secret: [u8; 16] = rand::random();
        services.keyrings = KeyringStore::new(store, &secret);
        services
            .keyrings
            .create(
                &services.user_id("bench"),
                &Password::new("pw"),
                &KdfParams::TEST,
                false,
            )
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(lmtp::serve(
            Listener::Tcp(listener),
            lmtp::backend(&services),
            Settings::from_config(&config.lmtp),
            shutdown,
        ));
        (port, trigger)
    });
    Facteur {
        port,
        _trigger: trigger,
        _runtime: runtime,
        _dir: dir,
    }
}

/// A Dovecot the bench started itself; stopped on drop.
struct OwnDovecot(tempfile::TempDir);

impl Drop for OwnDovecot {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script("dovecot.sh"))
            .args(["stop", self.0.path().join("dovecot").to_str().unwrap()])
            .status();
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Dovecot's LMTP port and recipient, from the environment or a Dovecot
/// started here.
fn dovecot() -> Option<(u16, String, Option<OwnDovecot>)> {
    if let (Ok(port), Ok(user)) = (
        std::env::var("DOVECOT_LMTP_PORT"),
        std::env::var("DOVECOT_USER"),
    ) {
        return Some((
            port.parse().expect("DOVECOT_LMTP_PORT"),
            format!("{user}@example.org"),
            None,
        ));
    }
    if std::env::var("FACTEUR_BENCH_DOVECOT").is_ok_and(|v| v == "0")
        || !script("dovecot.sh").exists()
    {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let own = OwnDovecot(dir);
    let out = std::process::Command::new(script("dovecot.sh"))
        .args(["start", own.0.path().join("dovecot").to_str().unwrap()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("lmtp bench: scripts/dovecot.sh start failed; Dovecot not measured");
        return None;
    }
    let env: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Some((
        env.get("DOVECOT_LMTP_PORT")?.parse().ok()?,
        format!("{}@example.org", env.get("DOVECOT_USER")?),
        Some(own),
    ))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    >> 20
            })
        })
        .unwrap_or(0);
    format!(
        "{} CPUs ({cpu}), {mem} GiB RAM",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

fn main() {
    let opts = Options::from_env();
    let messages = workload(opts.messages);
    let total: u64 = messages.iter().map(|m| m.len() as u64).sum();
    println!("LMTP delivery benchmark: {}", machine());
    println!(
        "{} messages, {:.1} MiB in all (mean {:.0} KiB), {} connections, one recipient each",
        messages.len(),
        total as f64 / (1 << 20) as f64,
        total as f64 / messages.len() as f64 / 1024.0,
        opts.connections
    );
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Every target is started once, then measured in interleaved rounds
    // (a noisy neighbour hits all targets alike); the round with the
    // median throughput is reported for each.
    let store_dir = tempfile::tempdir().unwrap();
    let mut servers: Vec<(String, u16, String)> = Vec::new();
    let mut keep_facteur = Vec::new();
    let mut keep_dovecot = Vec::new();
    for target in &opts.targets {
        match target.as_str() {
            "fs" => {
                let store = Arc::new(FsStore::open(store_dir.path()).unwrap());
                let f = start_facteur(store);
                servers.push(("facteur/fs".into(), f.port, "bench@example.org".into()));
                keep_facteur.push(f);
            }
            "garage" => {
                let Some(settings) = S3Settings::from_test_env() else {
                    println!(
                        "facteur/garage: skipped (FACTEUR_TEST_S3_* not set; see scripts/garage.sh)"
                    );
                    continue;
                };
                let f = start_facteur(Arc::new(S3Store::new(settings).unwrap()));
                servers.push(("facteur/garage".into(), f.port, "bench@example.org".into()));
                keep_facteur.push(f);
            }
            "dovecot" => {
                let Some((port, rcpt, own)) = dovecot() else {
                    println!(
                        "dovecot: skipped (no DOVECOT_LMTP_PORT, and scripts/dovecot.sh did not start one)"
                    );
                    continue;
                };
                servers.push(("dovecot".into(), port, rcpt));
                keep_dovecot.push(own);
            }
            other => panic!("unknown target {other}"),
        }
    }
    let mut rounds: Vec<Vec<Figures>> = servers.iter().map(|_| Vec::new()).collect();
    for round in 0..opts.rounds {
        for ((name, port, rcpt), figures) in servers.iter().zip(&mut rounds) {
            let f = client.block_on(run(*port, rcpt, &messages, opts.connections));
            println!(
                "round {round}: {name}: {:.0} msg/s, p50 {:.1} ms, p99 {:.1} ms",
                f.rate(),
                f.percentile(0.5).as_secs_f64() * 1e3,
                f.percentile(0.99).as_secs_f64() * 1e3
            );
            figures.push(f);
        }
    }
    let results: Vec<(String, Figures)> = servers
        .iter()
        .zip(rounds)
        .map(|((name, _, _), mut figures)| {
            figures.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
            let median = figures.swap_remove(figures.len() / 2);
            (name.clone(), median)
        })
        .collect();
    drop(keep_facteur);
    drop(keep_dovecot);
    println!();
    println!("| target | msg/s | MiB/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, f) in &results {
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} | {:.1} |",
            f.rate(),
            f.mib_rate(),
            f.percentile(0.5).as_secs_f64() * 1e3,
            f.percentile(0.99).as_secs_f64() * 1e3
        );
    }
    if let Some((_, d)) = results.iter().find(|(n, _)| n == "dovecot") {
        println!();
        println!("Ratios to Dovecot (throughput: higher is better; latency: lower is better):");
        for (name, f) in results.iter().filter(|(n, _)| n != "dovecot") {
            println!(
                "  {name}: throughput x{:.2}, p50 x{:.2}, p99 x{:.2}",
                f.rate() / d.rate(),
                f.percentile(0.5).as_secs_f64() / d.percentile(0.5).as_secs_f64(),
                f.percentile(0.99).as_secs_f64() / d.percentile(0.99).as_secs_f64()
            );
        }
    }
}
