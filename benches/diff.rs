//! Diff benchmark, 1 million rows (`PGFLIP_BENCH_ROWS`) with 1% changed.
//!
//! 1. Inside one database (staging beside live): pgflip's one-pass `FULL JOIN` with
//!    `count(*) FILTER (…)`, alone and split by key range over two connections (what sync
//!    runs with a spare `--jobs` slot), against the staging-table proposal's three queries
//!    (new, deleted, updated), each timed as the best of a few runs.
//! 2. Across two servers: pgflip's chunk-checksum diff (bytes received, time) against copying
//!    the table to the target (`pgflip sync --staging-table`, bytes of the COPY) and diffing
//!    there.
//!
//! Run: `cargo bench --bench diff`.

use std::time::{Duration, Instant};

use pgflip::conn::{Endpoint, EndpointArgs};
use pgflip::events::NullSink;
use pgflip::localpg::{LocalServer, ServerOptions};
use pgflip::rowdiff::{self, RowSource};
use pgflip::sync::{self, Request, SyncOptions};
use pgflip::Side;

const DDL: &str =
    "CREATE TABLE live (id bigint PRIMARY KEY, a int, b text, c timestamptz, d numeric)";

fn fill(rel: &str, rows: u64) -> String {
    format!(
        "INSERT INTO {rel} SELECT g, g % 1000, md5(g::text), '2020-01-01'::timestamptz + g * interval '1 s', g / 3.0 \
         FROM generate_series(1, {rows}) g"
    )
}

/// 1% of the rows changed: a third updated, a third deleted, a third new.
fn change(rel: &str, rows: u64) -> String {
    format!(
        "UPDATE {rel} SET b = 'changed' WHERE id % 300 = 0; DELETE FROM {rel} WHERE id % 300 = 1; \
         INSERT INTO {rel} SELECT g, 0, 'new', NULL, NULL FROM generate_series({a}, {b}) g; ANALYZE {rel}",
        a = rows + 1,
        b = rows + rows / 300
    )
}

async fn best<F, Fut>(runs: usize, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        f().await;
        best = best.min(t.elapsed());
    }
    best
}

#[tokio::main]
async fn main() {
    let rows: u64 = std::env::var("PGFLIP_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let opts = ServerOptions {
        settings: vec![("max_wal_size".into(), "4GB".into())],
    };
    let src = LocalServer::start_with(opts.clone()).expect("source server");
    let tgt = LocalServer::start_with(opts).expect("target server");
    let sdb = src.create_database("diff_src").unwrap();
    let tdb = tgt.create_database("diff_tgt").unwrap();
    eprintln!("loading {rows} rows on each side…");
    src.psql(
        &sdb,
        &format!("{DDL}; {}; {}", fill("live", rows), change("live", rows)),
    )
    .unwrap();
    tgt.psql(
        &tdb,
        &format!("{DDL}; {}; ANALYZE live", fill("live", rows)),
    )
    .unwrap();
    // In-database pair: staging = the changed rows beside live, on the target.
    tgt.psql(
        &tdb,
        &format!(
            "CREATE TABLE staging (LIKE live INCLUDING ALL); {}; {}",
            fill("staging", rows),
            change("staging", rows)
        ),
    )
    .unwrap();

    let c = tgt.connect(&tdb).await.unwrap();
    let key = vec!["id".to_string()];
    let cols: Vec<(String, bool)> = ["a", "b", "c", "d"]
        .iter()
        .map(|c| (c.to_string(), false))
        .collect();
    let one = rowdiff::one_pass_sql("staging", "live", &key, &cols);
    let three = rowdiff::three_queries_sql("staging", "live", &key, &cols);
    let r = c.query_one(&one, &[]).await.unwrap();
    let counts: (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    let mut three_counts = Vec::new();
    for q in &three {
        three_counts.push(c.query_one(q.as_str(), &[]).await.unwrap().get::<_, i64>(0));
    }
    assert_eq!(
        (counts.0, counts.2, counts.1),
        (three_counts[0], three_counts[1], three_counts[2]),
        "both ways agree"
    );
    let t_one = best(3, || async {
        c.query_one(&one, &[]).await.unwrap();
    })
    .await;
    let t_three = best(3, || async {
        for q in &three {
            c.query_one(q.as_str(), &[]).await.unwrap();
        }
    })
    .await;
    // What `pgflip sync --staging-table --diff` runs: the one pass split over this connection
    // and a second one (one part per spare `--jobs` slot; 2 by default on this machine).
    let helper = tgt.connect(&tdb).await.unwrap();
    let split = || async {
        c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .unwrap();
        let d = rowdiff::in_database(&c, &[&helper], "staging", "live", &key, &cols, 0)
            .await
            .unwrap();
        c.batch_execute("COMMIT").await.unwrap();
        d
    };
    let d = split().await;
    assert_eq!(
        (d.new as i64, d.updated as i64, d.deleted as i64),
        counts,
        "the split diff agrees with the single pass"
    );
    assert_eq!(d.parts, Some(2), "the diff was split over both connections");
    let t_split = best(3, || async {
        split().await;
    })
    .await;

    // Across servers.
    let s = src.connect(&sdb).await.unwrap();
    let rs = RowSource {
        relation: "public.live".into(),
        key: key.clone(),
        values: ["id", "a", "b", "c", "d"]
            .iter()
            .map(|c| c.to_string())
            .collect(),
        filter: None,
    };
    let t0 = Instant::now();
    let cross = rowdiff::cross_server(&s, &rs, &c, &rs, rows as f64, 0)
        .await
        .unwrap();
    let t_cross = t0.elapsed();
    assert_eq!(
        (cross.new as i64, cross.updated as i64, cross.deleted as i64),
        counts,
        "the cross-server diff agrees with the one-pass diff"
    );

    let ep = |srv: &LocalServer, db: &str, side| {
        Endpoint::resolve(
            side,
            &EndpointArgs {
                url: Some(srv.url(db)),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let t0 = Instant::now();
    let report = sync::run(
        &ep(&src, &sdb, Side::Source),
        &ep(&tgt, &tdb, Side::Target),
        SyncOptions {
            requests: vec![Request {
                pattern: "live".into(),
                filter: None,
                explicit: true,
            }],
            staging: true,
            show_diff: true,
            ..Default::default()
        },
        false,
        &NullSink,
    )
    .await
    .unwrap();
    let t_copy = t0.elapsed();
    let copied = &report.tables[0];
    let d = copied.diff.as_ref().unwrap();
    assert_eq!((d.new as i64, d.updated as i64, d.deleted as i64), counts);

    println!(
        "\ndiff benchmark, {rows} rows, 1% changed (new {}, updated {}, deleted {})",
        counts.0, counts.1, counts.2
    );
    println!("in one database (staging vs live), best of 3:");
    println!(
        "  one pass (FULL JOIN + count FILTER): {:>8.3}s",
        t_one.as_secs_f64()
    );
    println!(
        "  three queries (proposal):            {:>8.3}s",
        t_three.as_secs_f64()
    );
    println!(
        "  one pass, split over 2 connections:  {:>8.3}s",
        t_split.as_secs_f64()
    );
    println!(
        "  speed-up, one pass:                  {:>8.2}x",
        t_three.as_secs_f64() / t_one.as_secs_f64()
    );
    println!(
        "  speed-up, split (what sync runs):    {:>8.2}x",
        t_three.as_secs_f64() / t_split.as_secs_f64()
    );
    println!("across two servers:");
    println!(
        "  chunk checksums:        {:>8.3}s, {:>12} bytes received",
        t_cross.as_secs_f64(),
        cross.bytes_moved.unwrap_or(0)
    );
    println!(
        "  copy to staging + diff: {:>8.3}s, {:>12} bytes copied",
        t_copy.as_secs_f64(),
        copied.bytes
    );
}
