//! What do readers wait when the query behind a materialized view changes? Readers (through a
//! view, by key) and writers (on the base table) loop on a throwaway local server while the
//! definition is replaced twice for each shape: with `pgflip green create` + `green promote`,
//! and by hand the only way plain PostgreSQL offers (`BEGIN; DROP MATERIALIZED VIEW …;
//! CREATE MATERIALIZED VIEW … AS …; indexes, view, grants; COMMIT`). Shapes: one materialized
//! view of GREEN_BENCH_ROWS rows (default 1,000,000), and a 10-relation pipeline (that view and
//! nine materialized views over it). Prints the worst added stall (worst latency minus the
//! normal p50) of readers and writers, and the ratio by hand / pgflip.
//! Goal (issue #11): ≤ 20 ms for one view, ≤ 50 ms for the pipeline, ≥ 100× shorter than by hand.
//!
//! Run: `cargo bench --profile dev --bench green_promote` (the figures are server-side waits;
//! `--profile dev` skips the release build). `GREEN_BENCH_ROWS` sizes the base table.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgflip::events::NullSink;
use pgflip::green;
use pgflip::localpg::LocalServer;
use rand::{Rng, SeedableRng};

mod common;
use common::{pct, Sample};

const READERS: usize = 4;
const WRITERS: usize = 2;

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The live relations: `mv0` (one row per base row) with a unique index, a view over it that
/// readers use, a grant; with `pipeline`, `mv1` … `mv9` over `mv0`.
fn definitions(version: i32, pipeline: bool) -> Vec<(String, String, String)> {
    let mut out = vec![(
        "mv0".to_string(),
        format!("SELECT id, grp, amount * {version} AS x, {version} AS version FROM events"),
        "CREATE UNIQUE INDEX mv0_id ON mv0 (id)".to_string(),
    )];
    if pipeline {
        for i in 1..10 {
            out.push((
                format!("mv{i}"),
                format!(
                    "SELECT grp, sum(x) AS total, max(version) AS version FROM mv0 WHERE grp % 10 = {i} GROUP BY grp"
                ),
                format!("CREATE UNIQUE INDEX mv{i}_grp ON mv{i} (grp)"),
            ));
        }
    }
    out
}

/// Creates every relation of `version`, and the view readers use.
fn create_sql(version: i32, pipeline: bool) -> String {
    let mut sql = String::new();
    for (name, q, idx) in definitions(version, pipeline) {
        sql.push_str(&format!(
            "CREATE MATERIALIZED VIEW {name} AS {q}; {idx}; GRANT SELECT ON {name} TO PUBLIC; "
        ));
    }
    sql.push_str("CREATE VIEW v AS SELECT id, x, version FROM mv0; GRANT SELECT ON v TO PUBLIC; ");
    sql
}

/// The by-hand replacement, one transaction.
fn by_hand_sql(version: i32, pipeline: bool) -> String {
    let mut sql = "BEGIN; DROP VIEW v; ".to_string();
    for (name, _, _) in definitions(version, pipeline).iter().rev() {
        sql.push_str(&format!("DROP MATERIALIZED VIEW {name}; "));
    }
    sql.push_str(&create_sql(version, pipeline));
    sql.push_str("COMMIT;");
    sql
}

struct Load {
    stop: Arc<AtomicBool>,
    samples: [Arc<Mutex<Vec<Sample>>>; 2],
    errors: Arc<AtomicU64>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

async fn start_load(srv: &LocalServer, db: &str, rows: i64) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let samples: [Arc<Mutex<Vec<Sample>>>; 2] = [Arc::default(), Arc::default()];
    let errors = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for w in 0..READERS + WRITERS {
        let writer = w >= READERS;
        let client = srv.connect(db).await.expect("connect");
        let (stop, out, errors) = (
            stop.clone(),
            samples[writer as usize].clone(),
            errors.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut local = Vec::new();
            let mut rng = rand::rngs::StdRng::from_entropy();
            while !stop.load(Ordering::Relaxed) {
                let id: i64 = rng.gen_range(1..=rows);
                let sql = if writer {
                    "UPDATE events SET amount = amount + 1 WHERE id = $1"
                } else {
                    "SELECT x FROM v WHERE id = $1"
                };
                let start = Instant::now();
                if client.execute(sql, &[&id]).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                local.push(Sample {
                    start,
                    latency: start.elapsed(),
                });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            out.lock().unwrap().extend(local);
        }));
    }
    Load {
        stop,
        samples,
        errors,
        handles,
    }
}

/// Worst added stall of readers and writers over `[from, to]`, against their p50 before `t0`.
fn stall(load: &Load, t0: Instant, from: Instant, to: Instant) -> [Duration; 2] {
    let mut out = [Duration::ZERO; 2];
    for (k, s) in load.samples.iter().enumerate() {
        let s = s.lock().unwrap();
        let mut before: Vec<Duration> = s
            .iter()
            .filter(|x| x.start + x.latency < t0)
            .map(|x| x.latency)
            .collect();
        before.sort();
        let normal = pct(&before, 0.5);
        let worst = s
            .iter()
            .filter(|x| x.start <= to && x.start + x.latency >= from)
            .map(|x| x.latency)
            .max()
            .unwrap_or_default();
        out[k] = worst.saturating_sub(normal);
    }
    out
}

async fn run(srv: &LocalServer, rows: i64, pipeline: bool) {
    let label = if pipeline {
        "10-relation pipeline"
    } else {
        "one materialized view"
    };
    let db = srv.create_database("green_bench").expect("database");
    let c = srv.connect(&db).await.expect("connect");
    let mut setup = format!(
        "CREATE TABLE events (id bigint PRIMARY KEY, grp int NOT NULL, amount bigint NOT NULL); \
         INSERT INTO events SELECT g, g % 1000, g % 97 FROM generate_series(1, {rows}) g; ANALYZE events; "
    );
    setup.push_str(&create_sql(1, pipeline));
    c.batch_execute(&setup).await.expect("setup");
    pgflip::state::ensure(&c).await.expect("state");

    // Readers and writers run during every replacement; each replacement loads the machine
    // the same way (the build), so only what readers *wait* differs.
    let mut load = start_load(srv, &db, rows).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t0 = Instant::now();

    // pgflip: create (no lock on live: not a stall), then promote.
    let mut pg = Vec::new();
    let mut locked = Vec::new();
    for version in [2, 3] {
        let defs = vec![green::sqlfile::Definition {
            name: "mv0".into(),
            query: definitions(version, pipeline)[0].1.clone(),
            kind: None,
        }];
        let built = Instant::now();
        green::create::create(&c, &defs, &Default::default(), &NullSink)
            .await
            .expect("green create");
        let build_time = built.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let opts = green::promote::PromoteOptions {
            force: true, // the writers keep the base table moving
            ..Default::default()
        };
        let from = Instant::now();
        let o = green::promote::promote(&c, Some("mv0"), &opts, &NullSink)
            .await
            .expect("green promote");
        let to = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let lock_from = o.flip.locked_at.expect("locked_at");
        let lock_to = lock_from + Duration::from_secs_f64(o.flip.locked_ms / 1000.0);
        locked.push((
            format!("pgflip version {version}, during its locked transaction"),
            lock_from,
            lock_to,
        ));
        pg.push((
            format!(
                "pgflip version {version}: green build {} ms (beside, no lock on live); promote {} ms, locked transaction {:.1} ms",
                build_time.as_millis(),
                to.duration_since(from).as_millis(),
                o.flip.locked_ms,
            ),
            from,
            to,
        ));
        // Keep the retired versions from piling up (not timed).
        let gen = pgflip::flip::generation::find(&c, None).await.expect("gen");
        c.batch_execute(&format!(
            "DROP SCHEMA \"{}\" CASCADE",
            gen.backup_schema.replace('"', "\"\"")
        ))
        .await
        .expect("drop retired");
        c.execute(
            "UPDATE pgflip.generations SET status = 'cleaned', cleaned_at = now() WHERE id = $1",
            &[&gen.id],
        )
        .await
        .expect("mark cleaned");
    }

    // By hand: one transaction that drops and re-creates.
    let mut hand = Vec::new();
    for version in [4, 5] {
        let from = Instant::now();
        c.batch_execute(&by_hand_sql(version, pipeline))
            .await
            .expect("by hand");
        let to = Instant::now();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        hand.push((
            format!(
                "by hand version {version}: transaction {} ms",
                to.duration_since(from).as_millis()
            ),
            from,
            to,
        ));
    }
    load.stop.store(true, Ordering::Relaxed);
    let handles = std::mem::take(&mut load.handles);
    for h in handles {
        h.await.expect("load task");
    }
    let stalls = |v: &[(String, Instant, Instant)]| {
        v.iter()
            .map(|(what, from, to)| {
                let s = stall(&load, t0, *from, *to);
                println!(
                    "{label}: {what}; worst added stall: reader {} ms, writer {} ms",
                    ms(s[0]),
                    ms(s[1])
                );
                s
            })
            .collect::<Vec<_>>()
    };
    let (pg, locked, hand) = (stalls(&pg), stalls(&locked), stalls(&hand));
    let worst = |v: &[[Duration; 2]], k: usize| v.iter().map(|s| s[k]).max().unwrap_or_default();
    let (pr, lr, hr) = (worst(&pg, 0), worst(&locked, 0), worst(&hand, 0));
    let ratio = |a: Duration| hr.as_secs_f64() / a.as_secs_f64().max(0.0001);
    println!(
        "{label}: worst added reader stall: by hand {} ms; pgflip during its locked transaction {} ms (by hand / pgflip = {:.0}x), over the whole promote call (convergence check and hashes included) {} ms ({:.0}x); goal ≤ {} ms and ≥ 100x. Writers: pgflip {} ms, by hand {} ms. Query errors: {}",
        ms(hr),
        ms(lr),
        ratio(lr),
        ms(pr),
        ratio(pr),
        if pipeline { 50 } else { 20 },
        ms(worst(&pg, 1)),
        ms(worst(&hand, 1)),
        load.errors.load(Ordering::Relaxed)
    );
}

fn main() {
    let rows: i64 = std::env::var("GREEN_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let srv = LocalServer::start().expect("start a local PostgreSQL server");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        run(&srv, rows, false).await;
        run(&srv, rows, true).await;
    });
    srv.stop().ok();
}
