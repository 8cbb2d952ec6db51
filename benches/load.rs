//! The IMAP load generator's command line (issue #15): N concurrent
//! clients for S seconds against any IMAP server, every response checked;
//! ops/s and p50/p99 latency per command and in total, errors, and the
//! server's CPU seconds. The modes and checks: benches/loadgen/mod.rs.
//!
//! ```text
//! cargo bench --bench load -- --server 127.0.0.1:1143 \
//!     --users 'user%d:password' --user-count 100 --clients 100 --seconds 60 \
//!     [--keep-open] [--server-pid PID]... [--interval 60] [--json]
//! cargo bench --bench load -- --mode fill --messages 100 ...   # starting mail
//! cargo bench --bench load -- --mode logins|bigbox|idle ...
//! ```
//!
//! `--profile dev` (or `test`) builds faster than the default release
//! build when figures do not matter. Exits 1 when any error was counted.

#[path = "loadgen/mod.rs"]
mod loadgen;

use clap::Parser;

fn main() {
    // `cargo bench` adds `--bench` to the arguments of every bench target.
    let args = std::env::args().filter(|a| a != "--bench");
    let options = loadgen::Options::parse_from(args);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let report = runtime.block_on(loadgen::run(&options));
    report.print();
    if options.json {
        println!("LOADGEN-JSON {}", report.json());
    }
    std::process::exit(if report.errors == 0 { 0 } else { 1 });
}
