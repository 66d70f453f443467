//! How long does a flip stall the application? A steady pgbench-style load (reader and writer
//! connections running indexed SELECTs and UPDATEs in loops, every latency recorded) runs on a
//! throwaway local server while pgflip flips 1 table, then 50 tables. Prints p50 / p99 / max of
//! readers and writers before and during the flip, and the longest stall (worst latency during
//! the flip minus the normal p50). Goal: no statement stalled by more than 20 ms beyond its
//! normal latency for the 1-table flip.
//!
//! Run: `cargo bench --bench flip_stall` (add `--profile dev` to skip the release build: the
//! figures are server-side waits, not client CPU). `FLIP_STALL_ROWS` sets rows per table,
//! `FLIP_STALL_TABLES` the table counts (`1,50,500`), `FLIP_STALL_FLIPS` the flips per count.
//! `FLIP_STALL_STATEMENTS=1` loads `pg_stat_statements`, as many production servers have it, and
//! prints, per flip, where the server's time went outside the locked transaction, grouped by
//! kind of statement: the flip keeps the extension from recording its own statements under the
//! locks ([`FlipOptions::track_statements`]). `FLIP_STALL_STATEMENTS=all` records them too, to
//! see where the locked transaction's time goes; that costs the locked transaction itself
//! (2-4 ms at 50 tables): not for the figures.
//!
//! Before the flips, the same switch written by hand runs as many times under the same load (the floor:
//! the moves, the key renamed and the views re-pointed in one transaction, nothing checked,
//! carried or recorded), and the last line compares the medians: how much of the locked
//! window is pgflip's own, and how much is PostgreSQL's DDL.
//!
//! On a loaded machine wall-clock figures swing 2-3x from run to run, so each flip also prints
//! the CPU time the server spent on the locked transaction (`log_statement_stats` of the
//! flipping session, read back from the server log): what the locked transaction would take
//! on an idle machine, give or take I/O.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgflip::events::NullSink;
use pgflip::flip::{self, FlipKind, FlipOptions, FlipPair, QualifiedName};
use pgflip::localpg::{LocalServer, ServerOptions};
use rand::{Rng, SeedableRng};

mod common;
use common::{locked_cpu, pct, Sample};

const READERS: usize = 4;
const WRITERS: usize = 2;

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Groups a statement by its kind: the first words, and for `ALTER` what it does.
fn statement_kind(q: &str) -> String {
    let w: Vec<&str> = q.split_whitespace().collect();
    let head = w.iter().take(2).copied().collect::<Vec<_>>().join(" ");
    match w.first().copied() {
        Some("ALTER") => {
            let verb = w
                .iter()
                .skip(3)
                .position(|x| {
                    matches!(
                        *x,
                        "SET"
                            | "RENAME"
                            | "OWNER"
                            | "ADD"
                            | "DROP"
                            | "ALTER"
                            | "RESET"
                            | "REPLICA"
                            | "ENABLE"
                            | "DISABLE"
                            | "VALIDATE"
                            | "FORCE"
                            | "NO"
                    )
                })
                .map(|i| {
                    w[3 + i..]
                        .iter()
                        .take(2)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            format!("{head} … {verb}")
        }
        Some("INSERT") | Some("DELETE") | Some("UPDATE") => {
            w.iter().take(3).copied().collect::<Vec<_>>().join(" ")
        }
        _ => head,
    }
}

/// Prints where the server's time went during one flip (from `pg_stat_statements`).
async fn print_statements(client: &tokio_postgres::Client, flip: usize, locked_ms: f64) {
    let rows = client
        .query(
            "SELECT query, calls, total_exec_time, total_plan_time FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND userid = (SELECT oid FROM pg_roles WHERE rolname = current_user) \
               AND toplevel",
            &[],
        )
        .await
        .expect("pg_stat_statements");
    let mut by: std::collections::BTreeMap<String, (i64, f64)> = Default::default();
    for r in &rows {
        let q: String = r.get(0);
        // The load's own statements.
        if q.starts_with("SELECT v FROM") || q.starts_with("UPDATE t") {
            continue;
        }
        let e = by.entry(statement_kind(&q)).or_default();
        e.0 += r.get::<_, i64>(1);
        e.1 += r.get::<_, f64>(2) + r.get::<_, f64>(3);
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
    println!("flip {flip}: server time by statement kind (locked transaction {locked_ms:.2} ms; also the guardrails and after-commit steps):");
    for (k, (calls, t)) in v.iter().take(25) {
        println!("  {t:>9.2} ms  {calls:>6} x  {k}");
    }
}

async fn run(srv: &LocalServer, tables: usize, rows: i64, flips: usize) {
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
    pgflip::state::ensure(&flipper).await.expect("state");
    // The locked transaction's CPU time, from the server log (see `locked_cpu`).
    flipper
        .batch_execute("SET log_statement_stats = on; SET log_min_error_statement = log")
        .await
        .expect("statement stats");
    let data_dir: String = flipper
        .query_one("SHOW data_directory", &[])
        .await
        .expect("data directory")
        .get(0);
    let log = std::path::Path::new(&data_dir)
        .parent()
        .expect("server dir")
        .join("server.log");
    let statements = std::env::var("FLIP_STALL_STATEMENTS").is_ok_and(|v| v == "1" || v == "all");
    let track_statements = std::env::var("FLIP_STALL_STATEMENTS").is_ok_and(|v| v == "all");
    if statements {
        flipper
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .expect("pg_stat_statements");
    }
    let first_pairs: Vec<FlipPair> = (0..tables)
        .map(|i| FlipPair {
            live: QualifiedName::new("public", format!("t{i}")),
            green: QualifiedName::new("public", format!("t{i}_staging")),
        })
        .collect();
    // The floor: the same switch written by hand, under the same load. First, so that the
    // catalog bloat the flips leave behind (dead pg_class, pg_type, pg_depend rows) slows
    // pgflip, not the floor.
    let mut floors = Vec::new();
    for n in 0..flips {
        floors.push(bare_swap(&flipper, &log, tables, n).await);
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // The first flip swaps the staging tables in; the next ones roll back, back and forth
    // (each one a full flip: same engine, dependents re-created).
    let mut windows = Vec::new();
    for n in 0..flips {
        let (pairs, kind, opts) = if n == 0 {
            (
                first_pairs.clone(),
                FlipKind::Sync,
                FlipOptions {
                    track_statements,
                    ..FlipOptions::default()
                },
            )
        } else {
            let gen = flip::generation::find(&flipper, None)
                .await
                .expect("generation");
            let opts = FlipOptions {
                rollback_of: Some(gen.id),
                allow_column_changes: true,
                track_statements,
                ..FlipOptions::default()
            };
            (
                flip::rollback_pairs(&gen, &[]).expect("pairs"),
                FlipKind::Rollback,
                opts,
            )
        };
        // Green's checksum is a full read taken before the locks: planning is kept out of the
        // flip's window.
        let plan_started = Instant::now();
        let fp = flip::plan_flip(&flipper, &pairs, kind, &opts)
            .await
            .expect("plan");
        let planned = plan_started.elapsed();
        if statements {
            flipper
                .batch_execute("SELECT pg_stat_statements_reset()")
                .await
                .expect("reset");
        }
        let log_from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let flip_start = Instant::now();
        let outcome = flip::execute(&flipper, &fp, &opts, &NullSink)
            .await
            .expect("flip");
        let flip_end = Instant::now();
        if statements {
            print_statements(&flipper, n + 1, outcome.locked_ms).await;
        }
        let lock_from = outcome.locked_at.expect("locked_at");
        let lock_to = lock_from + Duration::from_secs_f64(outcome.locked_ms / 1000.0);
        let cpu = locked_cpu(&log, log_from);
        windows.push((
            planned, flip_start, lock_from, lock_to, flip_end, outcome, cpu,
        ));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.expect("load task");
    }

    println!(
        "\n== {flips} flips of {tables} table(s), {rows} rows each, {READERS} readers + {WRITERS} writers looping =="
    );
    let first_start = windows[0].1;
    let mut worst_stall = [Duration::ZERO; 2];
    let mut normals = [Duration::ZERO; 2];
    let mut floor_stall = [Duration::ZERO; 2];
    for (k, (name, samples)) in [("reader", &readers), ("writer", &writers)]
        .iter()
        .enumerate()
    {
        let samples = samples.lock().unwrap();
        let mut before: Vec<Duration> = samples
            .iter()
            .filter(|s| s.start + s.latency < first_start)
            .map(|s| s.latency)
            .collect();
        before.sort();
        let normal = pct(&before, 0.5);
        normals[k] = normal;
        println!(
            "{name}: before the flips: n={} p50={} p99={} max={} ms",
            before.len(),
            ms(normal),
            ms(pct(&before, 0.99)),
            ms(before.last().copied().unwrap_or_default())
        );
        for (i, (_, _, lock_from, lock_to, flip_end, _, _)) in windows.iter().enumerate() {
            // During: statements overlapping the locked transaction (sent → committed).
            let mut during: Vec<Duration> = samples
                .iter()
                .filter(|s| s.start <= *lock_to && s.start + s.latency >= *lock_from)
                .map(|s| s.latency)
                .collect();
            during.sort();
            let after_max = samples
                .iter()
                .filter(|s| s.start > *lock_to && s.start <= *flip_end)
                .map(|s| s.latency)
                .max()
                .unwrap_or_default();
            let worst = during.last().copied().unwrap_or_default();
            // Where the worst one lay against the locked window: a stall that began before the
            // locks or ended well after the commit was not (only) the locks.
            let placement = samples
                .iter()
                .filter(|s| s.start <= *lock_to && s.start + s.latency >= *lock_from)
                .max_by_key(|s| s.latency)
                .map(|s| {
                    let signed = |a: Instant, b: Instant| {
                        if a >= b {
                            (a - b).as_secs_f64() * 1000.0
                        } else {
                            -((b - a).as_secs_f64() * 1000.0)
                        }
                    };
                    format!(
                        " (it started {:+.2} ms from the locks' start, ended {:+.2} ms from the commit)",
                        signed(s.start, *lock_from),
                        signed(s.start + s.latency, *lock_to)
                    )
                })
                .unwrap_or_default();
            let stall = worst.saturating_sub(normal);
            worst_stall[k] = worst_stall[k].max(stall);
            println!(
                "  flip {}: during the locked transaction n={} p50={} p99={} max={} ms{placement}, stall beyond p50 {} ms; max during after-commit steps {} ms",
                i + 1,
                during.len(),
                ms(pct(&during, 0.5)),
                ms(pct(&during, 0.99)),
                ms(worst),
                ms(stall),
                ms(after_max)
            );
        }
    }
    for (k, samples) in [&readers, &writers].iter().enumerate() {
        let samples = samples.lock().unwrap();
        for (from, to, _) in &floors {
            let worst = samples
                .iter()
                .filter(|s| s.start <= *to && s.start + s.latency >= *from)
                .map(|s| s.latency)
                .max()
                .unwrap_or_default();
            floor_stall[k] = floor_stall[k].max(worst.saturating_sub(normals[k]));
        }
    }
    for (i, (planned, flip_start, lock_from, lock_to, flip_end, outcome, cpu)) in
        windows.iter().enumerate()
    {
        println!(
            "flip {}: planning {} ms (catalog, green checksums; no locks), guardrails {} ms, locked transaction {} ms ({} attempt; server: {}), after-commit steps {} ms",
            i + 1,
            ms(*planned),
            ms(lock_from.saturating_duration_since(*flip_start)),
            ms(lock_to.saturating_duration_since(*lock_from)),
            outcome.attempts,
            cpu.map(|(c, e)| format!("{c:.2} ms CPU, {e:.2} ms elapsed"))
                .unwrap_or_else(|| "no statistics in the server log".into()),
            ms(flip_end.saturating_duration_since(*lock_to)),
        );
    }
    println!(
        "longest stall beyond normal p50 over {flips} flips: reader {} ms, writer {} ms",
        ms(worst_stall[0]),
        ms(worst_stall[1])
    );
    for (i, (from, to, cpu)) in floors.iter().enumerate() {
        println!(
            "floor {}: the same switch by hand (bare DDL) {} ms (server: {})",
            i + 1,
            ms(to.saturating_duration_since(*from)),
            cpu.map(|(c, e)| format!("{c:.2} ms CPU, {e:.2} ms elapsed"))
                .unwrap_or_else(|| "no statistics in the server log".into()),
        );
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let flip_ms = median(windows.iter().map(|w| w.5.locked_ms).collect());
    let floor_ms = median(
        floors
            .iter()
            .map(|(f, t, _)| t.saturating_duration_since(*f).as_secs_f64() * 1000.0)
            .collect(),
    );
    let flip_cpu = median(windows.iter().filter_map(|w| w.6.map(|c| c.0)).collect());
    let floor_cpu = median(floors.iter().filter_map(|f| f.2.map(|c| c.0)).collect());
    println!(
        "locked transaction, median: pgflip {flip_ms:.2} ms, by hand {floor_ms:.2} ms ({:.2}x); server CPU {flip_cpu:.2} / {floor_cpu:.2} ms ({:.2}x); longest stall by hand: reader {} ms, writer {} ms",
        flip_ms / floor_ms,
        flip_cpu / floor_cpu,
        ms(floor_stall[0]),
        ms(floor_stall[1])
    );
    drop(setup);
}

/// What a user would otherwise run to switch the tables in: per table a copy built beside (before
/// the clock starts), then one transaction that locks the views and tables, retires each
/// table into a schema of its own, renames the copy and its key into its place and re-points
/// the view; nothing checked, nothing carried, nothing recorded. Returns the transaction's
/// window and the server's CPU for it.
async fn bare_swap(
    client: &tokio_postgres::Client,
    log: &std::path::Path,
    tables: usize,
    n: usize,
) -> (Instant, Instant, Option<(f64, f64)>) {
    let mut prep = format!("CREATE SCHEMA floor_bk{n};");
    for i in 0..tables {
        prep.push_str(&format!(
            "CREATE TABLE t{i}_f{n} (LIKE t{i} INCLUDING ALL); \
             INSERT INTO t{i}_f{n} SELECT * FROM t{i}; ANALYZE t{i}_f{n};"
        ));
    }
    client.batch_execute(&prep).await.expect("floor copies");
    let views: Vec<String> = (0..tables).map(|i| format!("public.t{i}_v")).collect();
    let live: Vec<String> = (0..tables).map(|i| format!("public.t{i}")).collect();
    let mut sql = format!(
        "BEGIN; SET LOCAL lock_timeout = '5s'; LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE;",
        views.join(", "),
        live.join(", ")
    );
    for i in 0..tables {
        sql.push_str(&format!(
            "ALTER TABLE public.t{i} SET SCHEMA floor_bk{n}; \
             ALTER TABLE public.t{i}_f{n} RENAME TO t{i}; \
             ALTER TABLE public.t{i} RENAME CONSTRAINT t{i}_f{n}_pkey TO t{i}_pkey; \
             CREATE OR REPLACE VIEW public.t{i}_v AS SELECT id, v FROM public.t{i};"
        ));
    }
    sql.push_str("COMMIT;");
    let log_from = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let from = Instant::now();
    client.batch_execute(&sql).await.expect("bare swap");
    let to = Instant::now();
    (from, to, locked_cpu(log, log_from))
}

fn main() {
    let rows: i64 = std::env::var("FLIP_STALL_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut opts = ServerOptions::default();
    if std::env::var("FLIP_STALL_STATEMENTS").is_ok_and(|v| v == "1" || v == "all") {
        for (k, v) in [
            ("shared_preload_libraries", "pg_stat_statements"),
            ("pg_stat_statements.track", "top"),
            ("pg_stat_statements.max", "20000"),
        ] {
            opts.settings.push((k.into(), v.into()));
        }
    }
    let srv = LocalServer::start_with(opts).expect("start a local PostgreSQL server");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // FLIP_STALL_TABLES: the table counts to measure, e.g. `1,50,500` (default `1,50`). One
    // table gets FLIP_STALL_ROWS rows; more tables get a tenth of it each (at least 1,000).
    let counts: Vec<usize> = std::env::var("FLIP_STALL_TABLES")
        .unwrap_or_else(|_| "1,50".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let flips: Option<usize> = std::env::var("FLIP_STALL_FLIPS")
        .ok()
        .and_then(|v| v.parse().ok());
    rt.block_on(async {
        for &tables in &counts {
            if tables <= 1 {
                run(&srv, 1, rows, flips.unwrap_or(5)).await;
            } else {
                run(&srv, tables, (rows / 10).max(1000), flips.unwrap_or(3)).await;
            }
        }
    });
    srv.stop().ok();
}
