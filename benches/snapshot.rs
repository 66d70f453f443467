//! Benchmark: catalog snapshot of a database with 2,000 tables of 20 columns and 3 indexes
//! each, against `pg_dump --schema-only` of the same database.
//!
//! `cargo bench --bench snapshot` (a plain binary: harness = false). Starts a throwaway
//! server, generates the schema with one DO block per batch, then times a few runs of each.

use std::process::Command;
use std::time::{Duration, Instant};

use pgflip::catalog::{Filter, Snapshot};
use pgflip::localpg::LocalServer;

const TABLES: usize = 2_000;
const COLUMNS: usize = 20;
const RUNS: usize = 5;

fn generator(from: usize, to: usize) -> String {
    // 20 columns of mixed types (id + 19), a primary key and 2 more indexes = 3 indexes.
    let mut cols = vec!["id bigint PRIMARY KEY".to_string()];
    let kinds = ["int", "text", "timestamptz", "numeric(12,2)", "boolean"];
    for c in 1..COLUMNS {
        let default = if c % 4 == 0 { " DEFAULT 0" } else { "" };
        let (ty, default) = match kinds[c % kinds.len()] {
            "int" => ("int", default),
            "numeric(12,2)" => ("numeric(12,2)", default),
            other => (other, ""),
        };
        cols.push(format!("c{c} {ty}{default}"));
    }
    format!(
        "DO $$ BEGIN FOR i IN {from}..{to} LOOP \
           EXECUTE format('CREATE TABLE bench.t%s ({cols})', i); \
           EXECUTE format('CREATE INDEX ON bench.t%s (c1)', i); \
           EXECUTE format('CREATE INDEX ON bench.t%s (c2, c3)', i); \
         END LOOP; END $$",
        cols = cols.join(", ")
    )
}

fn stats(mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    (d[0], d[d.len() / 2])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let srv = LocalServer::start().expect("start a local PostgreSQL server");
    let db = srv.create_database("bench").expect("create database");
    let t0 = Instant::now();
    srv.psql(&db, "CREATE SCHEMA bench").unwrap();
    for batch in (1..=TABLES).step_by(500) {
        srv.psql(&db, &generator(batch, (batch + 499).min(TABLES)))
            .expect("generate tables");
    }
    srv.psql(&db, "ANALYZE").unwrap();
    println!(
        "generated {TABLES} tables x {COLUMNS} columns x 3 indexes in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (load, load2, snap) = rt.block_on(async {
        let client = srv.connect(&db).await.unwrap();
        let second = srv.connect(&db).await.unwrap();
        let mut times = Vec::new();
        let mut times2 = Vec::new();
        let mut snap = None;
        for _ in 0..RUNS {
            let t = Instant::now();
            let s = Snapshot::load(&client, &Filter::default()).await.unwrap();
            times.push(t.elapsed());
            let t = Instant::now();
            let s2 = Snapshot::load_on(&[&client, &second], &Filter::default())
                .await
                .unwrap();
            times2.push(t.elapsed());
            assert_eq!(s.tables, s2.tables);
            snap = Some(s);
        }
        // Where the time goes: each catalog query alone.
        use pgflip::catalog::queries as q;
        let empty: Vec<String> = Vec::new();
        for (name, sql) in [
            (
                "globals",
                q::globals(snap.as_ref().map_or(0, |s| s.server_version)),
            ),
            ("types", q::types()),
            ("sequences", q::sequences()),
            ("relations", q::relations()),
            ("constraints", q::constraints()),
            ("indexes", q::indexes()),
            ("triggers+policies", q::triggers_and_policies()),
            ("functions", q::functions()),
        ] {
            client.batch_execute("SET search_path = ''").await.unwrap();
            let stmt = client
                .prepare(&format!("SELECT ({sql})::text"))
                .await
                .unwrap();
            let t = Instant::now();
            let row = client.query_one(&stmt, &[&empty, &empty]).await.unwrap();
            let len = row.get::<_, &str>(0).len();
            if std::env::var_os("EXPLAIN").is_some() {
                let plan = client
                    .query(
                        &format!("EXPLAIN (ANALYZE, COSTS OFF) {sql}"),
                        &[&empty, &empty],
                    )
                    .await
                    .unwrap();
                for r in plan {
                    println!("    {}", r.get::<_, &str>(0));
                }
            }
            println!("  query {name:<18} {} ({len} bytes)", ms(t.elapsed()));
        }
        // Not JSON: a row per column, and one row of arrays.
        let t = Instant::now();
        let n = client
            .query(
                &q::columns(snap.as_ref().map_or(0, |s| s.server_version)),
                &[&empty, &empty],
            )
            .await
            .unwrap()
            .len();
        println!("  query {:<18} {} ({n} rows)", "columns", ms(t.elapsed()));
        let t = Instant::now();
        client.query_one(&q::dependencies(), &[]).await.unwrap();
        println!("  query {:<18} {}", "dependencies", ms(t.elapsed()));
        client.batch_execute("RESET search_path").await.unwrap();
        (times, times2, snap.unwrap())
    });
    assert_eq!(snap.tables.len(), TABLES);
    let indexes: usize = snap.tables.iter().map(|t| t.indexes.len()).sum();
    let columns: usize = snap.tables.iter().map(|t| t.columns.len()).sum();
    let t = Instant::now();
    let sql = pgflip::ddl::render(&snap);
    let render = t.elapsed();

    let mut dump = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let out = Command::new(srv.client_tool("pg_dump"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "--schema-only"])
            .args(["-p", &srv.port().to_string(), "-d", &db])
            .output()
            .expect("run pg_dump");
        assert!(out.status.success());
        dump.push(t.elapsed());
    }
    let (lmin, lmed) = stats(load);
    let (l2min, l2med) = stats(load2);
    let (dmin, dmed) = stats(dump);
    println!("snapshot: {TABLES} tables, {columns} columns, {indexes} indexes");
    println!("queries per snapshot: {}", Snapshot::QUERY_COUNT);
    println!(
        "Snapshot::load       min {} median {} ({RUNS} runs)",
        ms(lmin),
        ms(lmed)
    );
    println!(
        "Snapshot::load_on, 2 connections: min {} median {} ({RUNS} runs)",
        ms(l2min),
        ms(l2med)
    );
    println!(
        "ddl::render          {} ({} bytes of SQL)",
        ms(render),
        sql.len()
    );
    println!(
        "pg_dump --schema-only min {} median {} ({RUNS} runs)",
        ms(dmin),
        ms(dmed)
    );
    println!(
        "snapshot is {:.1}x faster than pg_dump --schema-only (medians)",
        dmed.as_secs_f64() / lmed.as_secs_f64()
    );
    srv.stop().ok();
}
