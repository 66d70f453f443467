//! Migrate benchmark: `pgflip migrate prepare` of a whole database against what a user would
//! otherwise run, and the swap's locked time for many tables.
//!
//! Two throwaway servers (source and target).
//!   1. prepare: 20 tables (one of 5 M rows, the others 250 k, a primary key and two indexes
//!      each; about 1 GB at scale 1) into an empty target database with `--jobs N`, against
//!      `pg_dump -Fc` of the source then `pg_restore -j N` into another empty database (the
//!      seed's method), with pgflip's peak memory (VmHWM);
//!   2. swap: N tables (50 and 500, 100 rows each) that the target has too: `migrate prepare`,
//!      then `migrate swap --json`, whose `locked_ms` is the time the flip held its locks.
//!
//! `PGFLIP_BENCH_SCALE` (default 1.0) scales the rows of part 1; `PGFLIP_BENCH_JOBS` (default 4)
//! the job count of both methods; `PGFLIP_BENCH_SWAP_TABLES` (default `50,500`) part 2.
//! Run: `cargo bench --bench migrate`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgflip::localpg::{LocalServer, ServerOptions};

fn psql(srv: &LocalServer, db: &str, sql: &str) {
    srv.psql(db, sql).unwrap_or_else(|e| panic!("{e}"));
}

fn sh(cmd: &str) -> Duration {
    let t = Instant::now();
    let st = Command::new("bash")
        .args(["-o", "pipefail", "-c", cmd])
        .status()
        .expect("bash");
    assert!(st.success(), "failed: {cmd}");
    t.elapsed()
}

/// Runs the pgflip binary; returns its time, peak memory (kB) and stdout.
fn pgflip(args: &[&str]) -> (Duration, u64, String) {
    let t = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_pgflip"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pgflip");
    let status_file = format!("/proc/{}/status", child.id());
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (p2, f2) = (peak.clone(), status_file.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let poller = std::thread::spawn(move || {
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(s) = std::fs::read_to_string(&f2) {
                for l in s.lines() {
                    if let Some(v) = l.strip_prefix("VmHWM:") {
                        let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                        p2.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let out = child.wait_with_output().expect("wait");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = poller.join();
    assert!(
        out.status.success(),
        "pgflip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        t.elapsed(),
        peak.load(std::sync::atomic::Ordering::Relaxed),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

fn table_sql(name: &str, rows: u64) -> String {
    format!(
        "CREATE TABLE {name} (id bigint PRIMARY KEY, a int NOT NULL, b text NOT NULL, c timestamptz NOT NULL, d numeric(12,2)); \
         INSERT INTO {name} SELECT g, g % 1000, md5(g::text), timestamptz '2025-01-01' + g * interval '1 second', g / 7.0 \
           FROM generate_series(1, {rows}) g; \
         CREATE INDEX {name}_a ON {name} (a); CREATE INDEX {name}_c ON {name} (c); ANALYZE {name};"
    )
}

fn main() {
    let scale: f64 = std::env::var("PGFLIP_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let jobs: usize = std::env::var("PGFLIP_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let swap_sizes: Vec<usize> = std::env::var("PGFLIP_BENCH_SWAP_TABLES")
        .unwrap_or_else(|_| "50,500".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let opts = ServerOptions {
        settings: vec![
            ("max_wal_size".into(), "8GB".into()),
            ("maintenance_work_mem".into(), "256MB".into()),
            ("max_locks_per_transaction".into(), "1024".into()),
        ],
    };
    let src = LocalServer::start_with(opts.clone()).expect("source server");
    let tgt = LocalServer::start_with(opts).expect("target server");

    // ---- 1. prepare vs pg_dump -Fc | pg_restore -j N.
    let sdb = src.create_database("bench_mig_src").unwrap();
    let big = (5_000_000.0 * scale) as u64;
    let small = (250_000.0 * scale) as u64;
    eprintln!("loading 20 tables ({big} + 19 × {small} rows) on the source…");
    psql(&src, &sdb, &table_sql("t00", big));
    for i in 1..20 {
        psql(&src, &sdb, &table_sql(&format!("t{i:02}"), small));
    }
    let size: i64 = src
        .psql(&sdb, "SELECT pg_database_size(current_database())")
        .unwrap()
        .trim()
        .parse()
        .unwrap_or(0);
    let s_url = src.url(&sdb);
    let j = jobs.to_string();
    let tdb = tgt.create_database("bench_mig_tgt").unwrap();
    let t_url = tgt.url(&tdb);
    let (prep, peak_kb, _) = pgflip(&[
        "migrate", "prepare", "--source", &s_url, "--target", &t_url, "--jobs", &j,
    ]);
    let rdb = tgt.create_database("bench_mig_restore").unwrap();
    let dump_file = std::env::temp_dir().join(format!("pgflip-bench-{}.dump", std::process::id()));
    let dump = sh(&format!(
        "{} -Fc -h 127.0.0.1 -U postgres -p {} -d {sdb} -f {}",
        src.client_tool("pg_dump").display(),
        src.port(),
        dump_file.display()
    ));
    let restore = sh(&format!(
        "{} -j {jobs} -h 127.0.0.1 -U postgres -p {} -d {rdb} {}",
        tgt.client_tool("pg_restore").display(),
        tgt.port(),
        dump_file.display()
    ));
    let _ = std::fs::remove_file(&dump_file);
    let seed = dump + restore;
    println!(
        "prepare of {:.0} MB (20 tables, {big} rows in the largest), {jobs} jobs:",
        size as f64 / 1e6
    );
    println!(
        "  pgflip migrate prepare      {:>8.2} s  (peak memory {} MB)",
        prep.as_secs_f64(),
        peak_kb / 1024
    );
    println!(
        "  pg_dump -Fc | pg_restore -j {:>8.2} s  (dump {:.2} s + restore {:.2} s)",
        seed.as_secs_f64(),
        dump.as_secs_f64(),
        restore.as_secs_f64()
    );
    println!(
        "  ratio (pg_dump+pg_restore / pgflip): {:.2}x",
        seed.as_secs_f64() / prep.as_secs_f64()
    );

    // ---- 2. the swap's locked time.
    for n in swap_sizes {
        let sdb = src.create_database(&format!("bench_swap{n}_src")).unwrap();
        let tdb = tgt.create_database(&format!("bench_swap{n}_tgt")).unwrap();
        let mut ddl = String::new();
        for i in 0..n {
            ddl.push_str(&format!(
                "CREATE TABLE s{i:04} (id int PRIMARY KEY, v text); \
                 INSERT INTO s{i:04} SELECT g, 'v' || g FROM generate_series(1, 100) g;"
            ));
        }
        psql(&src, &sdb, &ddl);
        psql(&tgt, &tdb, &ddl);
        let (s_url, t_url) = (src.url(&sdb), tgt.url(&tdb));
        pgflip(&[
            "migrate", "prepare", "--source", &s_url, "--target", &t_url, "--jobs", &j,
        ]);
        let (total, _, out) = pgflip(&["migrate", "swap", "--target", &t_url, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("swap JSON");
        println!(
            "swap of {n} tables: locks held {:.1} ms (whole command {:.2} s, {} attempt(s))",
            v["flip"]["locked_ms"].as_f64().unwrap_or(f64::NAN),
            total.as_secs_f64(),
            v["flip"]["attempts"]
        );
    }
}
