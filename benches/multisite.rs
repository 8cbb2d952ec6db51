//! Renumbering between instances (issue #11 item 5): two `facteur serve`
//! processes on one store, 500 LMTP deliveries (two connections on each
//! instance) and 4 IMAP clients appending (two on each) at the same time,
//! one user. Prints how many messages there were, how many UIDs were
//! given to two messages (conflicts), and how many messages were
//! renumbered: shown or acknowledged under one UID first and under another
//! at the end (a client saw EXPUNGE, then the message again as new).
//!
//! Run with `cargo bench --bench multisite` (any profile: the figure is a
//! count, not a time; `--profile dev` saves a release build). Not in CI.
//!
//! - `fs` always; `garage` (the 3-node cluster, A on node 1, B on node 2)
//!   when `FACTEUR_TEST_GARAGE_CLUSTER_*` are set
//!   (`eval "$(scripts/garage-cluster.sh start /tmp/bench-cluster)"`).
//! - `FACTEUR_BENCH_TARGETS` (`fs,garage`), `FACTEUR_BENCH_DELIVERIES`
//!   (500), `FACTEUR_BENCH_APPENDS` (137, the 637 messages of the report).
//!
//! Latencies (`FACTEUR_BENCH_TARGETS=latency`): one instance, one client,
//! sequential operations, p50 and p90 of each: LMTP delivery (MAIL to the
//! final reply), APPEND, SELECT (of a mailbox of 50 messages, alternating
//! with another so that each is a real SELECT), UID STORE of one flag; on
//! fs, on the single-node Garage of scripts/garage.sh
//! (`FACTEUR_TEST_S3_*`) and on node 1 of the 3-node cluster. 50 of each
//! (`FACTEUR_BENCH_OPS`).
//!
//! The UID a message first had: its APPENDUID for an APPEND; for a
//! delivery, the UID under which one of two observers (a session on each
//! instance, reading new UIDs in a loop) first saw it. Its final UID: the
//! one a new session shows once everything settled. A conflict: a UID
//! value acknowledged or shown for two different messages.

#[path = "../tests/cluster/mod.rs"]
mod cluster;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::{
    Backend, GarageCluster, Imap, Instance, Lmtp, Site, contents_on, message, wait_until,
};

const LOGIN: &str = "bench@example.org";

fn main() {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let targets = var("FACTEUR_BENCH_TARGETS").unwrap_or_else(|| "fs,garage".into());
    let deliveries: usize = var("FACTEUR_BENCH_DELIVERIES").map_or(500, |v| v.parse().unwrap());
    let appends: usize = var("FACTEUR_BENCH_APPENDS").map_or(137, |v| v.parse().unwrap());
    for target in targets.split(',') {
        match target {
            "fs" => {
                let (site, store) = Site::with_fs();
                run("fs", &site, &store, &store, deliveries, appends);
            }
            "garage" => {
                let Some(cluster) = GarageCluster::from_env("garage renumbering") else {
                    continue;
                };
                let site = Site::new(&cluster.node(1));
                run(
                    "garage (3 nodes)",
                    &site,
                    &cluster.node(1),
                    &cluster.node(2),
                    deliveries,
                    appends,
                );
            }
            "latency" => {
                let ops: usize = var("FACTEUR_BENCH_OPS").map_or(50, |v| v.parse().unwrap());
                let (site, store) = Site::with_fs();
                latency("fs", &site, &store, ops);
                if let Some(store) = single_garage() {
                    latency("garage, 1 node", &Site::new(&store), &store, ops);
                }
                if let Some(cluster) = GarageCluster::from_env("garage latency") {
                    let store = cluster.node(1);
                    latency("garage, 3 nodes", &Site::new(&store), &store, ops);
                }
            }
            other => panic!("unknown target {other}"),
        }
    }
}

/// What the clients learned: for each message, the UIDs it was
/// acknowledged or shown under, in order.
#[derive(Default)]
struct Seen {
    uids: Mutex<HashMap<String, Vec<u32>>>,
}

impl Seen {
    fn record(&self, id: &str, uid: u32) {
        let mut all = self.uids.lock().unwrap();
        let v = all.entry(id.to_owned()).or_default();
        if v.last() != Some(&uid) {
            v.push(uid);
        }
    }
}

fn run(
    label: &str,
    site: &Site,
    on_a: &Backend,
    on_b: &Backend,
    deliveries: usize,
    appends: usize,
) {
    site.add_user(LOGIN);
    let a = site.instance("a", on_a);
    let b = site.instance("b", on_b);
    let seen = Seen::default();
    // APPENDs answered OK without APPENDUID (RFC 4315 §3 wants one).
    let no_uid = Mutex::new(0usize);
    let acked = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let mut load_time = Duration::ZERO;
    let mut last = Default::default();
    std::thread::scope(|s| {
        let mut load = Vec::new();
        for (n, instance) in [&a, &b, &a, &b].into_iter().enumerate() {
            let count = deliveries / 4 + usize::from(n < deliveries % 4);
            let acked = &acked;
            load.push(s.spawn(move || {
                let mut c = Lmtp::connect(instance.lmtp).unwrap();
                for i in 0..count {
                    let id = format!("lmtp-{n}-{i}");
                    let (code, text) = c.deliver(LOGIN, &message(&id)).unwrap();
                    assert_eq!(code, 250, "{text}");
                    acked.lock().unwrap().push(id);
                }
            }));
            let count = appends / 4 + usize::from(n < appends % 4);
            let (seen, no_uid) = (&seen, &no_uid);
            load.push(s.spawn(move || {
                let mut c = instance.login(LOGIN);
                for i in 0..count {
                    let id = format!("imap-{n}-{i}");
                    let r = c.append("INBOX", &message(&id));
                    assert!(r.ok(), "{r:?}");
                    match r.append_uid() {
                        Some((_, uid)) => seen.record(&id, uid),
                        None => *no_uid.lock().unwrap() += 1,
                    }
                    acked.lock().unwrap().push(id);
                }
            }));
        }
        for instance in [&a, &b] {
            let (seen, done) = (&seen, &done);
            s.spawn(move || observe(instance, seen, done));
        }
        for h in load {
            h.join().unwrap();
        }
        load_time = started.elapsed();
        // The observers go on until every message shows once and two
        // listings a second apart agree (no fix-up pending).
        let acked = acked.lock().unwrap().clone();
        let mut previous = None;
        last = wait_until(
            Duration::from_secs(120),
            "every message shown once, settled",
            || {
                let contents = contents_on(a.imap, LOGIN)?;
                contents.each_once(&acked)?;
                let same = previous.as_ref() == Some(&contents);
                previous = Some(contents.clone());
                if same {
                    Ok(contents)
                } else {
                    std::thread::sleep(Duration::from_secs(1));
                    Err("not settled".into())
                }
            },
        );
        done.store(true, Ordering::SeqCst);
    });
    let acked = acked.into_inner().unwrap();
    let last: cluster::Contents = last;
    let finals: HashMap<String, u32> = last.mailboxes["INBOX"]
        .1
        .iter()
        .map(|m| (m.id.clone(), m.uid))
        .collect();
    let seen = seen.uids.into_inner().unwrap();
    let mut renumbered = 0;
    let mut by_uid: BTreeMap<u32, HashSet<&str>> = BTreeMap::new();
    for id in &acked {
        let final_uid = finals[id];
        let uids = seen.get(id).map(Vec::as_slice).unwrap_or(&[]);
        if uids.first().is_some_and(|first| *first != final_uid) {
            renumbered += 1;
        }
        for uid in uids.iter().chain([&final_uid]) {
            by_uid.entry(*uid).or_default().insert(id);
        }
    }
    let conflicts = by_uid.values().filter(|ids| ids.len() > 1).count();
    let never_seen = acked.iter().filter(|id| !seen.contains_key(*id)).count();
    println!(
        "{label}: {} messages ({deliveries} LMTP, {appends} APPEND) in {:.1} s; \
         {conflicts} UID conflicts; {renumbered} messages renumbered ({:.1} %); \
         {never_seen} never seen by the observers before the end; {} APPENDs without \
         APPENDUID",
        acked.len(),
        load_time.as_secs_f64(),
        100.0 * renumbered as f64 / acked.len() as f64,
        no_uid.into_inner().unwrap()
    );
}

/// A session on `instance` reading the UIDs above the highest it saw, in
/// a loop, until `done` (and once more after).
fn observe(instance: &Instance, seen: &Seen, done: &AtomicBool) {
    let mut c: Imap = instance.login(LOGIN);
    let r = c.run("SELECT INBOX");
    assert!(r.ok(), "{r:?}");
    let mut from = 1;
    let mut last_round = false;
    loop {
        if done.load(Ordering::SeqCst) {
            last_round = true;
        }
        let r = c.run("NOOP");
        assert!(r.ok(), "{r:?}");
        let r = c.run(&format!(
            "UID FETCH {from}:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
        ));
        assert!(r.ok(), "{r:?}");
        for line in &r.lines {
            if let Some((uid, id)) = fetched(line) {
                // `n:*` answers the last message even below n.
                if uid >= from {
                    seen.record(&id, uid);
                    from = from.max(uid + 1);
                }
            }
        }
        if last_round {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn fetched(line: &str) -> Option<(u32, String)> {
    if !line.starts_with("* ") || !line.contains(" FETCH (") {
        return None;
    }
    let uid = line[line.find("UID ")? + 4..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let lower = line.to_ascii_lowercase();
    let start = lower.find("message-id: <")? + "message-id: <".len();
    Some((uid, line[start..].split('@').next()?.to_owned()))
}

/// The single-node Garage of scripts/garage.sh, if its variables are set.
fn single_garage() -> Option<Backend> {
    let var = |k: &str| std::env::var(format!("FACTEUR_TEST_S3_{k}")).ok();
    Some(Backend::S3 {
        endpoint: var("ENDPOINT")?,
        region: var("REGION").unwrap_or_else(|| "garage".into()),
        bucket: var("BUCKET")?,
        access_key: var("ACCESS_KEY")?,
        secret_key: var("SECRET_KEY")?,
    })
}

/// p50 and p90 of `times`, in ms.
fn percentiles(times: &mut [Duration]) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    format!("p50 {:.1} ms, p90 {:.1} ms", at(0.5), at(0.9))
}

fn timed<T>(times: &mut Vec<Duration>, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let v = f();
    times.push(started.elapsed());
    v
}

fn latency(label: &str, site: &Site, store: &Backend, ops: usize) {
    site.add_user(LOGIN);
    let a = site.instance("a", store);
    let mut lmtp = Lmtp::connect(a.lmtp).unwrap();
    let mut imap = a.login(LOGIN);
    let r = imap.run("CREATE Other");
    assert!(r.ok(), "{r:?}");
    let (mut deliver, mut append, mut select, mut store_flag) = (vec![], vec![], vec![], vec![]);
    // Warm-up: the account open, the connections' first requests.
    for i in 0..5 {
        let (code, _) = lmtp.deliver(LOGIN, &message(&format!("warm-{i}"))).unwrap();
        assert_eq!(code, 250);
        assert!(
            imap.append("Other", &message(&format!("warm-other-{i}")))
                .ok()
        );
    }
    for i in 0..ops {
        let (code, text) = timed(&mut deliver, || {
            lmtp.deliver(LOGIN, &message(&format!("lat-lmtp-{i}")))
                .unwrap()
        });
        assert_eq!(code, 250, "{text}");
    }
    for i in 0..ops {
        let r = timed(&mut append, || {
            imap.append("INBOX", &message(&format!("lat-imap-{i}")))
        });
        assert!(r.ok(), "{r:?}");
    }
    for i in 0..ops {
        let mailbox = if i % 2 == 0 { "INBOX" } else { "Other" };
        let r = timed(&mut select, || imap.run(&format!("SELECT {mailbox}")));
        assert!(r.ok(), "{r:?}");
    }
    let r = imap.run("SELECT INBOX");
    assert!(r.ok(), "{r:?}");
    for i in 0..ops {
        let sign = if i % 2 == 0 { '+' } else { '-' };
        let r = timed(&mut store_flag, || {
            imap.run(&format!(
                "STORE {} {sign}FLAGS.SILENT (\\Flagged)",
                1 + i % 5
            ))
        });
        assert!(r.ok(), "{r:?}");
    }
    println!(
        "{label}: LMTP delivery {}; APPEND {}; SELECT {}; STORE {}",
        percentiles(&mut deliver),
        percentiles(&mut append),
        percentiles(&mut select),
        percentiles(&mut store_flag)
    );
}
