//! Migrate benchmark: `pgflip migrate prepare` of a whole database against what a user would
//! otherwise run, and the swap's locked time for many tables.
//!
//! Two throwaway servers (source and target).
//!   1. prepare: 20 tables (one of 5 M rows, the others 250 k, a primary key and two indexes
//!      each; about 1 GB at scale 1) into an empty target database with `--jobs N`, against
//!      `pg_dump -Fc` of the source then `pg_restore -j N` into another empty database (the
//!      seed's method), with pgflip's peak memory (VmHWM);
//!      And two floors: the copy floor, the same rows streamed with nothing else (`COPY … TO
//!      STDOUT | COPY … FROM STDIN`, one stream per table, N at a time, into tables without
//!      indexes); and the floor of the same result, each table's rows streamed (binary), then
//!      its key and indexes built side by side, N tables at a time, largest first;
//!   2. swap: N tables (50 and 500, 100 rows each) that the target has too: `migrate prepare`,
//!      then `migrate swap --json`, whose `locked_ms` is the time the flip held its locks; then
//!      the same again on a second target under a steady load (4 readers and 2 writers, each
//!      sending a statement to a random table every 5 ms, every latency recorded): the worst
//!      added stall is the worst latency of a statement that overlapped the locked transaction
//!      minus the load's normal p50; the worst of the whole swap command is printed too.
//!
//! `PGFLIP_BENCH_SCALE` (default 1.0) scales the rows of part 1; `PGFLIP_BENCH_JOBS` (default 4)
//! the job count of both methods; `PGFLIP_BENCH_SWAP_TABLES` (default `50,500`) part 2;
//! `PGFLIP_BENCH_LOAD_INTERVAL_MS` (default 5) the load's pace (0: as fast as it can, which
//! saturates a small machine: see `swap_under_load`); `PGFLIP_BENCH_TRACE=1` prints, for every
//! load statement over 40 ms during the swap, what the server saw of it every 5 ms
//! (`pg_stat_activity`: state, wait event, blockers) and the CPU and run-queue time
//! (`/proc/…/schedstat`) of every backend and of this process's threads meanwhile, with the
//! server's log of lock waits (`log_lock_waits`, `deadlock_timeout` 20 ms) and slow statements.
//! Run: `cargo bench --bench migrate`.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgflip::conn::{Endpoint, EndpointArgs};
use pgflip::events::NullSink;
use pgflip::localpg::{LocalServer, ServerOptions};
use pgflip::migrate;
use pgflip::Side;
use rand::{Rng, SeedableRng};

mod common;
use common::{locked_cpu, pct, Sample};

fn psql(srv: &LocalServer, db: &str, sql: &str) {
    srv.psql(db, sql).unwrap_or_else(|e| panic!("{e}"));
}

/// Runs shell `lines` `jobs` at a time, in order (the largest table first), and returns the
/// wall time of them all.
fn run_shell_lines(lines: Vec<String>, jobs: usize) -> Duration {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lines = Arc::new(lines);
    let t = Instant::now();
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (next, lines) = (next.clone(), lines.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(line) = lines.get(i) else { break };
                sh(line);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a shell stream of the floor");
    }
    t.elapsed()
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
    let (t, peak, out, _) = pgflip_with(args, &[]);
    (t, peak, out)
}

/// [`pgflip`] with environment variables, also returning each line of stderr (its events) with
/// the time it arrived.
fn pgflip_with(
    args: &[&str],
    env: &[(&str, &str)],
) -> (Duration, u64, String, Vec<(Duration, String)>) {
    use std::io::BufRead;
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgflip"))
        .args(args)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pgflip");
    let stderr = child.stderr.take().expect("stderr");
    let lines = std::thread::spawn(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(|l| l.ok())
            .map(|l| (t.elapsed(), l))
            .collect::<Vec<_>>()
    });
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
    let lines = lines.join().expect("stderr reader");
    assert!(
        out.status.success(),
        "pgflip {args:?} failed: {}",
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    (
        t.elapsed(),
        peak.load(std::sync::atomic::Ordering::Relaxed),
        String::from_utf8_lossy(&out.stdout).to_string(),
        lines,
    )
}

/// When the phase whose event line contains `phase` started, from `lines` of [`pgflip_with`].
fn phase_at(lines: &[(Duration, String)], phase: &str) -> Option<Duration> {
    lines
        .iter()
        .find(|(_, l)| l.contains("phase_started") && l.contains(phase))
        .map(|(t, _)| *t)
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
    let (prep, peak_kb, _, events) = pgflip_with(
        &[
            "migrate", "prepare", "--source", &s_url, "--target", &t_url, "--jobs", &j, "--json",
        ],
        &[],
    );
    // pgflip's own copy phase (rows only: from "copying rows" to "building indexes").
    let copy_phase = match (
        phase_at(&events, "copying rows"),
        phase_at(&events, "building indexes"),
    ) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => Duration::ZERO,
    };
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
    // The copy floor: every row streamed once, source to target, `jobs` tables at a time, into
    // tables without indexes or keys (what no method moving the rows can beat).
    let fdb = tgt.create_database("bench_mig_floor").unwrap();
    let mut bare = String::new();
    for i in 0..20 {
        bare.push_str(&format!(
            "CREATE TABLE t{i:02} (id bigint, a int NOT NULL, b text NOT NULL, c timestamptz NOT NULL, d numeric(12,2));"
        ));
    }
    psql(&tgt, &fdb, &bare);
    let psql_bin = src.client_tool("psql");
    let one = |port: u16, db: &str, sql: &str| {
        format!(
            "{} -X -q -h 127.0.0.1 -U postgres -p {port} -d {db} -c '{sql}'",
            psql_bin.display()
        )
    };
    let lines: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "{} | {}",
                one(src.port(), &sdb, &format!("COPY t{i:02} TO STDOUT")),
                one(tgt.port(), &fdb, &format!("COPY t{i:02} FROM STDIN"))
            )
        })
        .collect();
    // `jobs` streams at a time, the largest table first (as pgflip orders its work).
    let floor = run_shell_lines(lines, jobs);
    // The floor of the same result: each table's rows streamed once (binary), then its key and
    // indexes built, `jobs` tables at a time, largest first: the least work that leaves the
    // target with the same tables and indexes (no catalogs read, no ANALYZE, no foreign keys;
    // the sync bench's floor is the same for one table).
    let idb = tgt.create_database("bench_mig_floor_idx").unwrap();
    psql(&tgt, &idb, &bare);
    let lines: Vec<String> = (0..20)
        .map(|i| {
            let copy = format!(
                "{} | {}",
                one(
                    src.port(),
                    &sdb,
                    &format!("COPY t{i:02} TO STDOUT (FORMAT binary)")
                ),
                one(
                    tgt.port(),
                    &idb,
                    &format!("COPY t{i:02} FROM STDIN (FORMAT binary)")
                )
            );
            // The three builds side by side (the key's index built as a plain unique one,
            // then attached), as pgflip builds a table's indexes.
            let key = one(
                tgt.port(),
                &idb,
                &format!("CREATE UNIQUE INDEX t{i:02}_pkey ON t{i:02} (id)"),
            );
            let a = one(tgt.port(), &idb, &format!("CREATE INDEX ON t{i:02} (a)"));
            let c = one(tgt.port(), &idb, &format!("CREATE INDEX ON t{i:02} (c)"));
            let attach = one(
                tgt.port(),
                &idb,
                &format!(
                    "ALTER TABLE t{i:02} ADD CONSTRAINT t{i:02}_pkey PRIMARY KEY USING INDEX t{i:02}_pkey"
                ),
            );
            format!("{copy} && ({key} & {a} & {c} & wait) && {attach}")
        })
        .collect();
    let floor_idx = run_shell_lines(lines, jobs);
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
        "  copy floor (COPY only, {jobs} at a time, no indexes) {:>8.2} s",
        floor.as_secs_f64()
    );
    println!(
        "  floor of the same result (binary COPY, then each table's key and indexes side by side, {jobs} tables at a time) {:>8.2} s",
        floor_idx.as_secs_f64()
    );
    println!(
        "  ratio (pg_dump+pg_restore / pgflip): {:.2}x  (goal >= 2)",
        seed.as_secs_f64() / prep.as_secs_f64()
    );
    println!(
        "  ratio (pgflip / copy floor): {:.2}x  (goal <= 1.15; pgflip also builds 3 indexes per table, the floor none)",
        prep.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  ratio (pgflip / floor of the same result): {:.2}x  (goal <= 1.15 if the floor must build the same indexes)",
        prep.as_secs_f64() / floor_idx.as_secs_f64()
    );
    println!(
        "  pgflip's copy phase alone {:.2} s: ratio to the copy floor {:.2}x",
        copy_phase.as_secs_f64(),
        copy_phase.as_secs_f64() / floor.as_secs_f64()
    );
    // Where prepare's time went: each phase from its start to the next one's.
    let starts: Vec<(Duration, String)> = events
        .iter()
        .filter(|(_, l)| l.contains("phase_started"))
        .map(|(t, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            (*t, v["phase"].as_str().unwrap_or("?").to_string())
        })
        .collect();
    let mut breakdown = Vec::new();
    for (i, (t, name)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map(|(n, _)| *n).unwrap_or(prep);
        breakdown.push(format!(
            "{name} {:.2} s",
            end.saturating_sub(*t).as_secs_f64()
        ));
    }
    println!("  pgflip's phases: {}", breakdown.join(", "));

    // ---- 2. the swap's locked time, then the stall of a steady load during a swap.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for n in swap_sizes {
        let sdb = src.create_database(&format!("bench_swap{n}_src")).unwrap();
        let mut ddl = String::new();
        for i in 0..n {
            ddl.push_str(&format!(
                "CREATE TABLE s{i:04} (id int PRIMARY KEY, v text); \
                 INSERT INTO s{i:04} SELECT g, 'v' || g FROM generate_series(1, 100) g;"
            ));
        }
        psql(&src, &sdb, &ddl);
        let s_url = src.url(&sdb);
        for loaded in [false, true] {
            let tdb = tgt
                .create_database(&format!(
                    "bench_swap{n}_tgt{}",
                    if loaded { "_load" } else { "" }
                ))
                .unwrap();
            psql(&tgt, &tdb, &ddl);
            let t_url = tgt.url(&tdb);
            pgflip(&[
                "migrate", "prepare", "--source", &s_url, "--target", &t_url, "--jobs", &j,
            ]);
            if !loaded {
                // The server's own time for the locked transaction (log_statement_stats).
                let data_dir = tgt.psql(&tdb, "SHOW data_directory").unwrap();
                let log = std::path::Path::new(data_dir.trim())
                    .parent()
                    .expect("server dir")
                    .join("server.log");
                // Every session of this database (only pgflip's swap) logs its statistics.
                psql(
                    &tgt,
                    &tdb,
                    &format!(
                        "ALTER DATABASE {tdb} SET log_statement_stats = on; \
                         ALTER DATABASE {tdb} SET log_min_error_statement = log"
                    ),
                );
                let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                let (total, _, out) = pgflip(&["migrate", "swap", "--target", &t_url, "--json"]);
                let cpu = locked_cpu(&log, from);
                let v: serde_json::Value = serde_json::from_str(&out).expect("swap JSON");
                println!(
                    "swap of {n} tables: locks held {:.1} ms (goal {}; whole command {:.2} s, {} attempt(s){})",
                    v["flip"]["locked_ms"].as_f64().unwrap_or(f64::NAN),
                    if n <= 50 { "<= 20 ms" } else { "<= 80 ms" },
                    total.as_secs_f64(),
                    v["flip"]["attempts"],
                    v["whole_schema"]
                        .as_str()
                        .map(|s| format!(", schema {s} swapped whole"))
                        .unwrap_or_default()
                );
                println!(
                    "  the server's own time for it: {}",
                    cpu.map(|(c, e)| format!(
                        "{c:.1} ms CPU, {e:.1} ms elapsed (load-independent: CPU)"
                    ))
                    .unwrap_or_else(|| "no statistics in the server log".into())
                );
                continue;
            }
            rt.block_on(swap_under_load(&tgt, &tdb, n, &t_url));
        }
    }
}

/// The machine's CPU pressure (PSI): µs during which some runnable task waited for a core.
fn cpu_pressure_us() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    let some = s.lines().find(|l| l.starts_with("some"))?;
    some.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Per thread or backend: (CPU ns, run-queue wait ns) from `/proc/…/schedstat`.
type SchedSnap = (Instant, Vec<(String, (u64, u64))>);

fn schedstat(path: &str) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A steady load (readers selecting, writers updating a random row of a random table, in
/// loops) while `migrate swap` runs; prints the worst added stall of each.
#[allow(clippy::type_complexity)]
async fn swap_under_load(tgt: &LocalServer, db: &str, tables: usize, t_url: &str) {
    const READERS: usize = 4;
    const WRITERS: usize = 2;
    // Each client sends a statement every `interval` (PGFLIP_BENCH_LOAD_INTERVAL_MS, default
    // 5 ms: 1,200 statements a second in all); 0 is the old saturating loop.
    let interval = Duration::from_micros(
        (std::env::var("PGFLIP_BENCH_LOAD_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(5.0)
            * 1000.0)
            .max(1.0) as u64,
    );
    let stop = Arc::new(AtomicBool::new(false));
    // Each statement of the load, with its backend's pid.
    let samples: [Arc<Mutex<Vec<(Sample, i32)>>>; 2] = [Arc::default(), Arc::default()];
    let mut handles = Vec::new();
    let mut load_pids = Vec::new();
    // Diagnosis (PGFLIP_BENCH_TRACE=1): what the server saw of every session of this database
    // every few ms (state, wait event, blockers), to tell a wait in the server from a wait in
    // this process; and the server's own log of lock waits and slow statements.
    let trace = std::env::var("PGFLIP_BENCH_TRACE").is_ok_and(|v| v == "1");
    let log_path = {
        let d = tgt.psql(db, "SHOW data_directory").unwrap();
        std::path::Path::new(d.trim())
            .parent()
            .expect("server dir")
            .join("server.log")
    };
    if trace {
        psql(
            tgt,
            db,
            &format!(
                "ALTER DATABASE {db} SET log_lock_waits = on; ALTER DATABASE {db} SET deadlock_timeout = '20ms'; \
                 ALTER DATABASE {db} SET log_min_duration_statement = 40"
            ),
        );
    }
    let log_from = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
    let activity: Arc<Mutex<Vec<(Instant, i32, String)>>> = Arc::default();
    let sched: Arc<Mutex<Vec<SchedSnap>>> = Arc::default();
    let sampler = trace.then(|| {
        let (stop, activity, cfg, sched) = (stop.clone(), activity.clone(), tgt.config(db), sched.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async move {
                    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.expect("connect");
                    tokio::spawn(conn);
                    while !stop.load(Ordering::Relaxed) {
                        let rows = c
                            .query(
                                "SELECT pid, concat_ws(' ', state, wait_event_type, wait_event, \
                                   CASE WHEN wait_event_type = 'Lock' THEN 'blocked by ' || pg_blocking_pids(pid)::text END, \
                                   round(extract(epoch FROM clock_timestamp() - query_start) * 1000) || ' ms:', \
                                   left(regexp_replace(query, '\\s+', ' ', 'g'), 90)) \
                                 FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                                &[],
                            )
                            .await
                            .expect("pg_stat_activity");
                        let now = Instant::now();
                        let mut a = Vec::new();
                        let mut snap = Vec::new();
                        for r in rows {
                            let pid: i32 = r.get(0);
                            if let Some(x) = schedstat(&format!("/proc/{pid}/schedstat")) {
                                snap.push((format!("backend {pid}"), x));
                            }
                            a.push((now, pid, r.get::<_, Option<String>>(1).unwrap_or_default()));
                        }
                        activity.lock().unwrap().extend(a);
                        // This process's threads (the load's runtime workers, pgflip's thread).
                        for t in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
                            let d = t.path();
                            let comm = std::fs::read_to_string(d.join("comm")).unwrap_or_default();
                            if let Some(x) = schedstat(&d.join("schedstat").to_string_lossy()) {
                                snap.push((format!("thread {}-{}", comm.trim(), t.file_name().to_string_lossy()), x));
                            }
                        }
                        sched.lock().unwrap().push((now, snap));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
        })
    });
    for w in 0..READERS + WRITERS {
        let is_writer = w >= READERS;
        let client = tgt.connect(db).await.expect("connect");
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        load_pids.push((pid, is_writer));
        let (stop, out) = (stop.clone(), samples[is_writer as usize].clone());
        handles.push(tokio::spawn(async move {
            let mut local = Vec::new();
            let mut rng = rand::rngs::StdRng::from_entropy();
            // A steady rate, not as fast as possible: a closed loop with no pause keeps both
            // cores of a small machine saturated, and then single backends wait for a core
            // for hundreds of ms (the scheduler's run queue, not a lock), before, during and
            // after a swap alike; that measured the machine, not the swap.
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = rng.gen_range(0..tables);
                let id: i32 = rng.gen_range(1..=100);
                // Names resolved at each statement (no cached plan across the swap).
                let sql = if is_writer {
                    format!("UPDATE s{t:04} SET v = v || '' WHERE id = {id}")
                } else {
                    format!("SELECT v FROM s{t:04} WHERE id = {id}")
                };
                let start = Instant::now();
                let r = client.simple_query(&sql).await;
                let latency = start.elapsed();
                if let Err(e) = r {
                    panic!("load statement failed: {e}");
                }
                local.push((Sample { start, latency }, pid));
            }
            out.lock().unwrap().extend(local);
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The swap runs in this process (the library, as the CLI runs it), so that the locked
    // transaction's window is known exactly.
    let target = Endpoint::resolve(
        Side::Target,
        &EndpointArgs {
            url: Some(t_url.to_string()),
            ..Default::default()
        },
    )
    .expect("target");
    let opts = migrate::SwapOptions {
        flip: pgflip::flip::FlipOptions::default(),
        dry_run: false,
    };
    // On a runtime of its own, on a blocking thread: pgflip's planning is CPU work that would
    // otherwise hold up the load's tasks on this runtime's workers (a stall of the bench's
    // client, not of the server).
    let psi0 = cpu_pressure_us();
    let started = Instant::now();
    let outcome = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(migrate::swap(&target, &opts, &NullSink))
    })
    .await
    .expect("swap thread")
    .expect("swap");
    let ended = Instant::now();
    let psi1 = cpu_pressure_us();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.expect("load task");
    }
    if let Some(s) = sampler {
        s.join().expect("sampler");
    }
    let f = outcome.flip.expect("flip outcome");
    let lock_from = f.locked_at.expect("locked_at");
    let lock_to = lock_from + Duration::from_secs_f64(f.locked_ms / 1000.0);
    println!(
        "swap of {tables} tables under load ({READERS} readers + {WRITERS} writers, a statement every {:.1} ms each): locks held {:.1} ms ({} attempt(s); locked transaction sent {:.0} ms after the swap began), whole swap {:.2} s{}; some task waited for a core {} of the swap",
        ms(interval),
        f.locked_ms,
        f.attempts,
        lock_from.saturating_duration_since(started).as_secs_f64() * 1000.0,
        (ended - started).as_secs_f64(),
        outcome
            .whole_schema
            .as_deref()
            .map(|s| format!(" (schema {s} swapped whole)"))
            .unwrap_or_default(),
        match (psi0, psi1) {
            (Some(a), Some(b)) => format!(
                "{:.0}%",
                (b - a) as f64 / 1e4 / (ended - started).as_secs_f64()
            ),
            _ => "(no /proc/pressure/cpu)".into(),
        }
    );
    let off = |t: Instant| {
        if t >= started {
            (t - started).as_secs_f64() * 1000.0
        } else {
            -((started - t).as_secs_f64() * 1000.0)
        }
    };
    for (name, s) in ["readers", "writers"].iter().zip(&samples) {
        let s: Vec<Sample> = s.lock().unwrap().iter().map(|x| x.0).collect();
        let mut before: Vec<Duration> = s
            .iter()
            .filter(|x| x.start + x.latency < started)
            .map(|x| x.latency)
            .collect();
        before.sort();
        // During the locked transaction (sent -> committed), and during the whole swap.
        let worst_in = |from: Instant, to: Instant| {
            s.iter()
                .filter(|x| x.start <= to && x.start + x.latency >= from)
                .map(|x| x.latency)
                .max()
                .unwrap_or_default()
        };
        let (locked, whole) = (worst_in(lock_from, lock_to), worst_in(started, ended));
        // Where the worst statement of the whole swap began, from the swap's start.
        let at = s
            .iter()
            .filter(|x| x.start <= ended && x.start + x.latency >= started)
            .max_by_key(|x| x.latency)
            .map(|x| off(x.start))
            .unwrap_or_default();
        let normal = pct(&before, 0.5);
        println!(
            "  {name}: normal p50 {:.2} ms, p99 {:.2} ms; worst overlapping the locked transaction {:.1} ms: added stall {:.1} ms (goal {}); worst during the whole swap {:.1} ms (began {at:.0} ms after the swap began)",
            ms(normal),
            ms(pct(&before, 0.99)),
            ms(locked),
            ms(locked.saturating_sub(normal)),
            if tables <= 50 { "<= 20 ms" } else { "<= 80 ms" },
            ms(whole),
        );
    }
    if !trace {
        return;
    }
    // Every slow statement of the load during the swap, with what the server saw meanwhile.
    println!(
        "  trace: swap {:.0}..{:.0} ms, locked {:.1}..{:.1} ms",
        0.0,
        off(ended),
        off(lock_from),
        off(lock_to)
    );
    let activity = activity.lock().unwrap();
    for (is_writer, s) in samples.iter().enumerate() {
        for (x, pid) in s.lock().unwrap().iter() {
            let end = x.start + x.latency;
            if x.latency < Duration::from_millis(40) || end < started || x.start > ended {
                continue;
            }
            println!(
                "  slow {} pid {pid}: {:.0}..{:.0} ms ({:.1} ms)",
                if is_writer == 1 { "writer" } else { "reader" },
                off(x.start),
                off(end),
                ms(x.latency)
            );
            // CPU time and run-queue wait (runnable, no core) of every thread and backend
            // over the statement: a wait in the scheduler shows as run-queue time, a wait on
            // a lock or a socket as neither.
            {
                let sched = sched.lock().unwrap();
                let a = sched.iter().rev().find(|(t, _)| *t <= x.start);
                let b = sched.iter().find(|(t, _)| *t >= end);
                if let (Some((ta, a)), Some((tb, b))) = (a, b) {
                    let mut parts = Vec::new();
                    for (k, (run, wait)) in b {
                        if let Some((_, (run0, wait0))) = a.iter().find(|(k0, _)| k0 == k) {
                            let (r, w) = ((run - run0) as f64 / 1e6, (wait - wait0) as f64 / 1e6);
                            if r >= 5.0 || w >= 5.0 || *k == format!("backend {pid}") {
                                parts.push(format!("{k}: cpu {r:.0} runq {w:.0}"));
                            }
                        }
                    }
                    println!(
                        "    sched over {:.0}..{:.0} ms (ms): {}",
                        off(*ta),
                        off(*tb),
                        parts.join("; ")
                    );
                }
            }
            let mut last: std::collections::HashMap<i32, String> = Default::default();
            for (t, p, what) in activity
                .iter()
                .filter(|(t, _, _)| *t >= x.start && *t <= end)
            {
                let mine = p == pid;
                let other = !load_pids.iter().any(|(lp, _)| lp == p);
                if !(mine || other) {
                    continue;
                }
                // Only changes of state (ignoring the running-time figure).
                let key = match what.split_once(" ms:") {
                    Some((head, q)) => {
                        format!("{}{q}", head.rsplit_once(' ').map(|h| h.0).unwrap_or(""))
                    }
                    None => what.clone(),
                };
                if last.get(p) == Some(&key) {
                    continue;
                }
                last.insert(*p, key);
                println!(
                    "    {:>7.1} ms {} {p}: {what}",
                    off(*t),
                    if mine { "this" } else { "other" }
                );
            }
        }
    }
    let log = std::fs::read(&log_path).unwrap_or_default();
    let log = String::from_utf8_lossy(&log[(log_from as usize).min(log.len())..]).into_owned();
    for l in log.lines().filter(|l| {
        l.contains("still waiting") || l.contains("acquired") || l.contains("duration:")
    }) {
        println!("  server log: {}", l.chars().take(300).collect::<String>());
    }
}
