//! Benchmark of `pgflip schema diff` (not a test): two databases of 2,000 tables (20 columns,
//! 3 indexes each) that differ in 1% (20 tables: an added column, a changed type, a new index,
//! a dropped constraint), compared end to end with the binary (`--dry-run`), the library
//! comparison alone, and migra on the same pair when `migra` is on PATH.
//!
//! Run: `cargo bench --bench schemadiff` (PGFLIP_BENCH_TABLES overrides the table count).

use std::process::Command;
use std::time::{Duration, Instant};

use pgflip::catalog::Filter;
use pgflip::localpg::LocalServer;
use pgflip::schemadiff::{compare_snapshots, load_snapshot, DiffOptions};

fn generate(tables: usize, changed: usize, variant: bool) -> String {
    let cols: Vec<String> = (1..=19)
        .map(|c| {
            let ty = match c % 4 {
                0 => "integer",
                1 => "text",
                2 => "timestamptz",
                _ => "numeric(12,2)",
            };
            format!("c{c} {ty}")
        })
        .collect();
    format!(
        "DO $$
DECLARE i int;
BEGIN
  FOR i IN 1..{tables} LOOP
    EXECUTE format('CREATE TABLE public.t%s (id bigserial PRIMARY KEY, {cols}, CONSTRAINT t%s_c4_check CHECK (c4 >= 0))', i, i);
    EXECUTE format('CREATE INDEX t%s_c1 ON public.t%s (c1)', i, i);
    EXECUTE format('CREATE INDEX t%s_c2_c3 ON public.t%s (c2, c3)', i, i);
    IF {variant} AND i <= {changed} THEN
      CASE i % 4
        WHEN 0 THEN EXECUTE format('ALTER TABLE public.t%s ADD COLUMN extra text', i);
        WHEN 1 THEN EXECUTE format('ALTER TABLE public.t%s ALTER COLUMN c4 TYPE bigint', i);
        WHEN 2 THEN EXECUTE format('CREATE INDEX t%s_c5 ON public.t%s (c5)', i, i);
        ELSE EXECUTE format('ALTER TABLE public.t%s DROP CONSTRAINT t%s_c4_check', i, i);
      END CASE;
    END IF;
  END LOOP;
END $$;",
        cols = cols.join(", ")
    )
}

fn best_of(n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..n).map(|_| f()).min().unwrap()
}

fn main() {
    let tables: usize = std::env::var("PGFLIP_BENCH_TABLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let changed = tables / 100;
    let srv = LocalServer::start().expect("start a local PostgreSQL server");
    let old = srv.create_database("bench_old").unwrap();
    let new = srv.create_database("bench_new").unwrap();
    let t = Instant::now();
    srv.psql(&old, &generate(tables, changed, false)).unwrap();
    srv.psql(&new, &generate(tables, changed, true)).unwrap();
    // What autovacuum does some time after bulk DDL: without it the catalog's statistics
    // are stale and the snapshot's dependency query is planned with nested loops (quadratic).
    if std::env::var("PGFLIP_BENCH_NO_ANALYZE").is_err() {
        srv.psql(&old, "ANALYZE").unwrap();
        srv.psql(&new, "ANALYZE").unwrap();
    }
    println!(
        "generated 2 databases of {tables} tables (20 columns, 3 indexes each), {changed} changed, in {:.1?}",
        t.elapsed()
    );
    let (src_url, tgt_url) = (srv.url(&new), srv.url(&old));

    // End to end: the binary, as a user runs it.
    let exe = env!("CARGO_BIN_EXE_pgflip");
    let mut script = String::new();
    let e2e = best_of(3, || {
        let t = Instant::now();
        let o = Command::new(exe)
            .args([
                "schema",
                "diff",
                "--source",
                &src_url,
                "--target",
                &tgt_url,
                "--dry-run",
            ])
            .output()
            .unwrap();
        let d = t.elapsed();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        script = String::from_utf8_lossy(&o.stdout).into_owned();
        d
    });
    let statements = script.matches("\n-- ").count();
    println!("pgflip schema diff --dry-run (end to end): {e2e:.2?} ({} script lines, ~{statements} comment lines)", script.lines().count());

    // Library: load both snapshots, then compare.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (src, tgt, load) = rt.block_on(async {
        let a = srv.connect(&new).await.unwrap();
        let b = srv.connect(&old).await.unwrap();
        let f = Filter::default();
        let t = Instant::now();
        let (s, g) = tokio::try_join!(load_snapshot(&a, &f), load_snapshot(&b, &f)).unwrap();
        (s, g, t.elapsed())
    });
    println!("library: both snapshots loaded concurrently: {load:.2?}");
    let opts = DiffOptions::default();
    let mut steps = 0;
    let cmp = best_of(5, || {
        let t = Instant::now();
        let d = compare_snapshots(&src, &tgt, &opts);
        steps = d.plan.steps.len();
        t.elapsed()
    });
    println!("library: compare_snapshots alone: {cmp:.2?} ({steps} steps)");

    // migra on the same pair.
    let port = srv.port();
    let m_src = format!("postgresql+psycopg2://postgres@127.0.0.1:{port}/{new}");
    let m_tgt = format!("postgresql+psycopg2://postgres@127.0.0.1:{port}/{old}");
    let has_migra = Command::new("migra").arg("--help").output().is_ok();
    if has_migra {
        let migra = best_of(1, || {
            let t = Instant::now();
            let o = Command::new("migra")
                .args(["--unsafe", &m_tgt, &m_src])
                .output()
                .unwrap();
            let d = t.elapsed();
            // migra exits 2 when there are differences.
            assert!(
                o.status.code() == Some(2) || o.status.success(),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
            d
        });
        println!("migra --unsafe (same pair): {migra:.2?}");
        println!(
            "speed-up of pgflip (end to end) over migra: {:.1}x",
            migra.as_secs_f64() / e2e.as_secs_f64()
        );
    } else {
        println!("migra not on PATH: skipped");
    }
}
