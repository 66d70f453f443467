//! Copy benchmark: `pgflip sync` of one indexed table against what a user would otherwise run.
//!
//! Two throwaway servers (source and target). Methods, each into the target's table:
//!   1. `pgflip sync T` (the binary; default mode: one transaction: TRUNCATE, drop the plain
//!      indexes and the key constraints nothing depends on, binary COPY, rebuild them), with its
//!      peak memory (VmHWM); and the same with the indexes maintained row by row during the COPY;
//!   2. `pgflip sync T --staging-table` (loads `T_staging`: the blue-green path), as one copy
//!      and split into block ranges copied in parallel; then `--staging-table --swap` (load
//!      beside, then the flip puts it under the live name);
//!   3. `pg_dump -Fc -t T | pg_restore` into a database without the table;
//!   4. text `COPY … TO STDOUT | COPY … FROM STDIN` (psql | psql) into the indexed table (what
//!      pgsync does);
//!   5. the floor: `COPY (FORMAT binary)` pipe into an unindexed table, then every index built
//!      at once on parallel connections.
//!
//! Then many small tables (the case: per-table overhead): `PGFLIP_BENCH_TABLES` (default
//! 2 000) tables of 10 rows each, `pgflip sync` of every table against `pg_dump -a | psql` of
//! the same data into the same (emptied) tables. Such tables are small: pgflip empties them with
//! DELETE under SHARE ROW EXCLUSIVE, up to 60 in one transaction.
//!
//! `PGFLIP_BENCH_PART=tables` runs only that part. `PGFLIP_BENCH_ROWS` (default 5 000 000) sets
//! the size; `PGFLIP_BENCH_QUICK=1` leaves out the
//! slow references (pg_dump | pg_restore, the text pipe, in place with the indexes kept) while
//! iterating. Run: `cargo bench --bench copy`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgflip::localpg::{LocalServer, ServerOptions};

const DDL: &str = "CREATE TABLE t (id bigint PRIMARY KEY, a int NOT NULL, b text NOT NULL, \
                   c timestamptz NOT NULL, d numeric(12,2)); \
                   CREATE INDEX t_a ON t (a); CREATE INDEX t_b ON t (b); CREATE INDEX t_c ON t (c)";
const INDEXES: [&str; 4] = [
    "ALTER TABLE t ADD PRIMARY KEY (id)",
    "CREATE INDEX t_a ON t (a)",
    "CREATE INDEX t_b ON t (b)",
    "CREATE INDEX t_c ON t (c)",
];

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

fn psql_cmd(srv: &LocalServer, db: &str) -> String {
    format!(
        "{} -X -q -h 127.0.0.1 -U postgres -p {} -d {db}",
        srv.client_tool("psql").display(),
        srv.port()
    )
}

/// Runs the pgflip binary, polling its VmHWM (peak resident memory) while it runs.
fn pgflip(args: &[&str]) -> (Duration, u64) {
    let t = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgflip"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .spawn()
        .expect("run pgflip");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0u64;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            for l in s.lines() {
                if let Some(v) = l.strip_prefix("VmHWM:") {
                    let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    peak_kb = peak_kb.max(kb);
                }
            }
        }
        if let Some(st) = child.try_wait().expect("wait") {
            assert!(st.success(), "pgflip failed");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (t.elapsed(), peak_kb)
}

fn main() {
    if std::env::var("PGFLIP_BENCH_PART").as_deref() == Ok("tables") {
        let src = LocalServer::start().expect("source server");
        let tgt = LocalServer::start().expect("target server");
        many_small_tables(&src, &tgt);
        return;
    }
    let rows: u64 = std::env::var("PGFLIP_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let opts = ServerOptions {
        settings: vec![
            ("max_wal_size".into(), "8GB".into()),
            ("maintenance_work_mem".into(), "256MB".into()),
        ],
    };
    let src = LocalServer::start_with(opts.clone()).expect("source server");
    let tgt = LocalServer::start_with(opts).expect("target server");
    let sdb = src.create_database("bench_src").unwrap();
    eprintln!("loading {rows} rows on the source…");
    psql(&src, &sdb, DDL);
    psql(
        &src,
        &sdb,
        &format!(
            "INSERT INTO t SELECT g, (g::bigint * 7919) % 100000, md5(g::text), \
             '2020-01-01'::timestamptz + (g::bigint * 7919 % 1000000) * interval '1 min', (g % 100000) / 7.0 \
             FROM generate_series(1, {rows}) g"
        ),
    );
    psql(&src, &sdb, "VACUUM ANALYZE t");
    let size = src
        .psql(&sdb, "SELECT pg_size_pretty(pg_total_relation_size('t'))")
        .unwrap();
    eprintln!("source table: {} with indexes", size.trim());

    let tdb = tgt.create_database("bench_tgt").unwrap();
    psql(&tgt, &tdb, DDL);
    let t_url = tgt.url(&tdb);
    let s_url = src.url(&sdb);
    let fresh = |tgt: &LocalServer| {
        psql(tgt, &tdb, "DROP TABLE IF EXISTS t, t_staging");
        psql(tgt, &tdb, DDL);
        psql(tgt, &tdb, "CHECKPOINT");
    };

    let quick = std::env::var_os("PGFLIP_BENCH_QUICK").is_some();
    let mut results: Vec<(String, Duration, Option<u64>)> = Vec::new();
    let mut run = |name: &str, extra: &[&str]| {
        fresh(&tgt);
        let mut args = vec!["sync", "--source", &s_url, "--target", &t_url, "t"];
        args.extend_from_slice(extra);
        let (d, mem) = pgflip(&args);
        eprintln!("{name}: {:.2}s, peak {} MB", d.as_secs_f64(), mem / 1024);
        results.push((name.to_string(), d, Some(mem)));
    };

    // 1. pgflip sync (in place), and the same maintaining the indexes row by row during COPY.
    run("pgflip sync (in place; indexes rebuilt)", &[]);
    let n = tgt.psql(&tdb, "SELECT count(*) FROM t").unwrap();
    assert_eq!(n.trim(), rows.to_string());
    if !quick {
        run(
            "pgflip sync (in place; indexes kept in COPY)",
            &["--rebuild-indexes-above", "1e18"],
        );
    }

    // 2. pgflip sync --staging-table, whole and split into block ranges; then with --swap
    //    (load beside, then the flip).
    run(
        "pgflip sync --staging-table (one copy)",
        &["--staging-table", "--split-tables-larger-than", "off"],
    );
    run(
        "pgflip sync --staging-table (block ranges)",
        &["--staging-table"],
    );
    let n = tgt.psql(&tdb, "SELECT count(*) FROM t_staging").unwrap();
    assert_eq!(n.trim(), rows.to_string());
    run(
        "pgflip sync --staging-table --swap",
        &["--staging-table", "--swap"],
    );
    let n = tgt.psql(&tdb, "SELECT count(*) FROM t").unwrap();
    assert_eq!(n.trim(), rows.to_string());

    // 3. pg_dump | pg_restore into a database without the table.
    let rdb = tgt.create_database("bench_restore").unwrap();
    psql(&tgt, &rdb, "CHECKPOINT");
    let dump = format!(
        "{} -Fc -t t -h 127.0.0.1 -U postgres -p {} -d {sdb} | {} -h 127.0.0.1 -U postgres -p {} -d {rdb}",
        src.client_tool("pg_dump").display(),
        src.port(),
        tgt.client_tool("pg_restore").display(),
        tgt.port()
    );
    if !quick {
        let dump_restore = sh(&dump);
        eprintln!("pg_dump | pg_restore: {:.2}s", dump_restore.as_secs_f64());
        results.push(("pg_dump -Fc | pg_restore".into(), dump_restore, None));
    }

    // 4. Text COPY pipe into the indexed table.
    if !quick {
        fresh(&tgt);
        let text_pipe = sh(&format!(
            "{} -c 'COPY t TO STDOUT' | {} -c 'COPY t FROM STDIN'",
            psql_cmd(&src, &sdb),
            psql_cmd(&tgt, &tdb)
        ));
        eprintln!("text COPY pipe: {:.2}s", text_pipe.as_secs_f64());
        results.push((
            "text COPY pipe into indexed table (pgsync)".into(),
            text_pipe,
            None,
        ));
    }

    // 5. Floor: binary pipe into an unindexed table, then parallel index builds.
    psql(&tgt, &tdb, "DROP TABLE IF EXISTS t, t_staging");
    psql(
        &tgt,
        &tdb,
        "CREATE TABLE t (id bigint NOT NULL, a int NOT NULL, b text NOT NULL, c timestamptz NOT NULL, d numeric(12,2))",
    );
    psql(&tgt, &tdb, "CHECKPOINT");
    let t0 = Instant::now();
    sh(&format!(
        "{} -c 'COPY t TO STDOUT (FORMAT binary)' | {} -c 'COPY t FROM STDIN (FORMAT binary)'",
        psql_cmd(&src, &sdb),
        psql_cmd(&tgt, &tdb)
    ));
    let builds: Vec<String> = INDEXES
        .iter()
        .map(|i| format!("{} -c '{i}' &", psql_cmd(&tgt, &tdb)))
        .collect();
    sh(&format!("{} wait", builds.join(" ")));
    let floor = t0.elapsed();
    eprintln!(
        "floor (binary pipe + parallel index builds): {:.2}s",
        floor.as_secs_f64()
    );

    results.push((
        "floor: binary pipe + parallel index builds".into(),
        floor,
        None,
    ));

    let r = |d: Duration| d.as_secs_f64();
    let dump_restore = results
        .iter()
        .find(|(n, _, _)| n.starts_with("pg_dump"))
        .map(|(_, d, _)| *d);
    println!(
        "\ncopy benchmark, {rows} rows ({} with indexes on the source){}",
        size.trim(),
        if quick {
            "; quick: no slow references"
        } else {
            ""
        }
    );
    println!(
        "{:<48} {:>8}  {:>14}  {:>9}  {:>8}",
        "method", "seconds", "dump|restore/x", "x/floor", "peak MB"
    );
    for (name, d, mem) in &results {
        println!(
            "{name:<48} {:>8.2}  {:>14}  {:>9.2}  {:>8}",
            r(*d),
            dump_restore
                .map(|x| format!("{:.2}", r(x) / r(*d)))
                .unwrap_or_else(|| "-".into()),
            r(*d) / r(floor),
            mem.map(|m| (m / 1024).to_string())
                .unwrap_or_else(|| "-".into())
        );
    }

    many_small_tables(&src, &tgt);
}

/// `pgflip sync` of every table of a database of many 10-row tables against `pg_dump -a | psql`
/// into the same tables, emptied before each (untimed).
fn many_small_tables(src: &LocalServer, tgt: &LocalServer) {
    let tables: u64 = std::env::var("PGFLIP_BENCH_TABLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let sdb = src.create_database("bench_many_src").unwrap();
    let tdb = tgt.create_database("bench_many_tgt").unwrap();
    let ddl = format!(
        "DO $$BEGIN FOR i IN 1..{tables} LOOP \
           EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, a text, b timestamptz)', i); \
         END LOOP; END$$"
    );
    psql(src, &sdb, &ddl);
    psql(tgt, &tdb, &ddl);
    psql(
        src,
        &sdb,
        &format!(
            "DO $$BEGIN FOR i IN 1..{tables} LOOP \
               EXECUTE format('INSERT INTO t%s SELECT g, md5(g::text), now() FROM generate_series(1, 10) g', i); \
             END LOOP; END$$"
        ),
    );
    psql(src, &sdb, "VACUUM ANALYZE");
    let empty = || {
        psql(
            tgt,
            &tdb,
            &format!(
                "DO $$BEGIN FOR i IN 1..{tables} LOOP \
                   EXECUTE format('TRUNCATE t%s', i); END LOOP; END$$"
            ),
        );
        psql(tgt, &tdb, "CHECKPOINT");
    };
    let (s_url, t_url) = (src.url(&sdb), tgt.url(&tdb));
    empty();
    let (t_pgflip, _) = pgflip(&["sync", "--source", &s_url, "--target", &t_url]);
    let n = tgt
        .psql(&tdb, &format!("SELECT count(*) FROM t{tables}"))
        .unwrap();
    assert_eq!(n.trim(), "10");
    empty();
    let t_dump = sh(&format!(
        "{} -a -h 127.0.0.1 -U postgres -p {} -d {sdb} | {} -v ON_ERROR_STOP=1 >/dev/null",
        src.client_tool("pg_dump").display(),
        src.port(),
        psql_cmd(tgt, &tdb)
    ));
    let n = tgt
        .psql(&tdb, &format!("SELECT count(*) FROM t{tables}"))
        .unwrap();
    assert_eq!(n.trim(), "10");
    println!("\nmany small tables: {tables} tables of 10 rows");
    println!(
        "{:<48} {:>8}  {:>14}  {:>12}",
        "method", "seconds", "x/dump|psql", "ms per table"
    );
    for (name, d) in [
        ("pgflip sync (every table)", t_pgflip),
        ("pg_dump -a | psql", t_dump),
    ] {
        println!(
            "{name:<48} {:>8.2}  {:>14.2}  {:>12.2}",
            d.as_secs_f64(),
            d.as_secs_f64() / t_dump.as_secs_f64(),
            d.as_secs_f64() * 1000.0 / tables as f64
        );
    }
}
