//! How long does a flip stall the application? A steady pgbench-style load (reader and writer
//! connections running indexed SELECTs and UPDATEs in loops, every latency recorded) runs on a
//! throwaway local server while pgflip flips 1 table, then 50 tables. Prints p50 / p99 / max of
//! readers and writers before and during the flip, and the longest stall (worst latency during
//! the flip minus the normal p50). Goal: no statement stalled by more than 20 ms beyond its
//! normal latency for the 1-table flip.
//!
//! Run: `cargo bench --bench flip_stall` (add `--profile dev` to skip the release build: the
//! figures are server-side waits, not client CPU). `FLIP_STALL_ROWS` sets rows per table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgflip::events::NullSink;
use pgflip::flip::{self, FlipKind, FlipOptions, FlipPair, QualifiedName};
use pgflip::localpg::LocalServer;
use rand::{Rng, SeedableRng};

const READERS: usize = 4;
const WRITERS: usize = 2;

#[derive(Clone, Copy)]
struct Sample {
    start: Instant,
    latency: Duration,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn run(srv: &LocalServer, tables: usize, rows: i64) {
    let db = srv.create_database("flip_stall").expect("database");
    let setup = srv.connect(&db).await.expect("connect");
    let mut sql = String::new();
    for i in 0..tables {
        sql.push_str(&format!(
            "CREATE TABLE t{i} (id bigint PRIMARY KEY, v bigint NOT NULL, payload text); \
             INSERT INTO t{i} SELECT g, g, md5(g::text) FROM generate_series(1, {rows}) g; \
             CREATE VIEW t{i}_v AS SELECT id, v FROM t{i}; \
             CREATE TABLE t{i}_staging (LIKE t{i} INCLUDING ALL); \
             INSERT INTO t{i}_staging SELECT g, -g, md5(g::text) FROM generate_series(1, {rows}) g; \
             ANALYZE t{i}; ANALYZE t{i}_staging;"
        ));
    }
    setup.batch_execute(&sql).await.expect("load");

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let writers: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let mut handles = Vec::new();
    for w in 0..READERS + WRITERS {
        let is_writer = w >= READERS;
        let client = srv.connect(&db).await.expect("connect");
        let stop = stop.clone();
        let out = if is_writer {
            writers.clone()
        } else {
            readers.clone()
        };
        handles.push(tokio::spawn(async move {
            let mut local = Vec::new();
            let mut rng = rand::rngs::StdRng::from_entropy();
            while !stop.load(Ordering::Relaxed) {
                let t = rng.gen_range(0..tables);
                let id: i64 = rng.gen_range(1..=rows);
                let sql = if is_writer {
                    format!("UPDATE t{t} SET v = v + 1 WHERE id = $1")
                } else {
                    format!("SELECT v FROM t{t}_v WHERE id = $1")
                };
                let start = Instant::now();
                let r = client.execute(sql.as_str(), &[&id]).await;
                let latency = start.elapsed();
                if let Err(e) = r {
                    panic!("load query failed: {e}");
                }
                local.push(Sample { start, latency });
            }
            out.lock().unwrap().extend(local);
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    let flipper = srv.connect(&db).await.expect("connect");
    let pairs: Vec<FlipPair> = (0..tables)
        .map(|i| FlipPair {
            live: QualifiedName::new("public", format!("t{i}")),
            green: QualifiedName::new("public", format!("t{i}_staging")),
        })
        .collect();
    // Green's checksum is a full read taken before the locks; keep it out of the window we
    // measure as "during the flip" by planning first.
    let opts = FlipOptions::default();
    let plan_started = Instant::now();
    let fp = flip::plan_flip(&flipper, &pairs, FlipKind::Sync, &opts)
        .await
        .expect("plan");
    pgflip::state::ensure(&flipper).await.expect("state");
    let planned = plan_started.elapsed();
    let flip_start = Instant::now();
    let outcome = flip::execute(&flipper, &fp, &opts, &NullSink)
        .await
        .expect("flip");
    let flip_end = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.expect("load task");
    }

    println!(
        "\n== flip of {tables} table(s), {rows} rows each, {READERS} readers + {WRITERS} writers =="
    );
    println!(
        "planning (catalog + green checksums, no locks): {} ms; flip (locks → commit): {:.2} ms in {} attempt(s); whole execute incl. validation and retired checksums: {} ms",
        ms(planned),
        outcome.locked_ms,
        outcome.attempts,
        ms(flip_end - flip_start)
    );
    println!(
        "{:<7} {:>8} {:>9} {:>9} {:>9} | {:>8} {:>9} {:>9} {:>9} | {:>10} | {:>15}",
        "",
        "n before",
        "p50",
        "p99",
        "max",
        "n during",
        "p50",
        "p99",
        "max",
        "stall",
        "max after commit"
    );
    for (name, samples) in [("reader", &readers), ("writer", &writers)] {
        let samples = samples.lock().unwrap();
        let mut before: Vec<Duration> = samples
            .iter()
            .filter(|s| s.start + s.latency < flip_start)
            .map(|s| s.latency)
            .collect();
        // During: every statement overlapping the locked transaction (from sending it to its
        // commit); "after": overlapping the after-commit steps (validation, checksums).
        let lock_from = outcome.locked_at.expect("locked_at");
        let lock_to = lock_from + Duration::from_secs_f64(outcome.locked_ms / 1000.0);
        let mut during: Vec<Duration> = samples
            .iter()
            .filter(|s| s.start <= lock_to && s.start + s.latency >= lock_from)
            .map(|s| s.latency)
            .collect();
        let after_max = samples
            .iter()
            .filter(|s| s.start > lock_to && s.start <= flip_end)
            .map(|s| s.latency)
            .max()
            .unwrap_or_default();
        before.sort();
        during.sort();
        let normal = pct(&before, 0.5);
        let worst = during.last().copied().unwrap_or_default();
        println!(
            "{:<7} {:>8} {:>9} {:>9} {:>9} | {:>8} {:>9} {:>9} {:>9} | {:>7} ms | {:>12} ms",
            name,
            before.len(),
            ms(normal),
            ms(pct(&before, 0.99)),
            ms(before.last().copied().unwrap_or_default()),
            during.len(),
            ms(pct(&during, 0.5)),
            ms(pct(&during, 0.99)),
            ms(worst),
            ms(worst.saturating_sub(normal)),
            ms(after_max),
        );
    }
    drop(setup);
}

fn main() {
    let rows: i64 = std::env::var("FLIP_STALL_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let srv = LocalServer::start().expect("start a local PostgreSQL server");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        run(&srv, 1, rows).await;
        run(&srv, 50, (rows / 10).max(1000)).await;
    });
    srv.stop().ok();
}
