//! `pgflip migrate` against real servers: prepare, the capture of preserved tables, status,
//! abort, swap and rollback; writers under load with an oracle; kill -9 at phase boundaries.

#[allow(unused_imports)]
use std::time::{Duration, Instant};

use crate::util::*;

fn pair(hint: &str) -> (TestDb, TestDb) {
    (
        fresh_db(&format!("{hint}_src")),
        fresh_db(&format!("{hint}_tgt")),
    )
}

/// Row count and checksum of every row of `rel`, in an order that needs no key.
fn digest(db: &TestDb, rel: &str) -> String {
    q(
        db,
        &format!(
            "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') \
             FROM {rel} x"
        ),
    )
}

/// The lines only one side has.
fn line_diff(a: &str, b: &str) -> String {
    let la: std::collections::BTreeSet<&str> = a.lines().collect();
    let lb: std::collections::BTreeSet<&str> = b.lines().collect();
    let mut out = String::new();
    for l in la.difference(&lb) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in lb.difference(&la) {
        out.push_str(&format!("+ {l}\n"));
    }
    out
}

fn prepare(src: &TestDb, tgt: &TestDb, extra: &[&str]) -> std::process::Output {
    prepare_env(src, tgt, extra, &[])
}

fn prepare_env(
    src: &TestDb,
    tgt: &TestDb,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let (s, t) = (src.url(), tgt.url());
    let mut args = vec!["migrate", "prepare", "--source", &s, "--target", &t];
    args.extend_from_slice(extra);
    pgflip_env(&args, env)
}

fn migrate(tgt: &TestDb, sub: &str, extra: &[&str]) -> std::process::Output {
    let t = tgt.url();
    let mut args = vec!["migrate", sub, "--target", &t];
    args.extend_from_slice(extra);
    pgflip(&args)
}

fn status_json(tgt: &TestDb) -> serde_json::Value {
    let o = migrate(tgt, "status", &["--json"]);
    serde_json::from_str(&ok(&o)).expect("status JSON")
}

/// The user's schema, without pgflip's own schema (created on first use, kept afterwards),
/// and a digest of every user table's rows.
fn user_dump(db: &TestDb) -> String {
    let mut out = db.pg_dump(&[
        "--exclude-schema=pgflip",
        "--exclude-schema=pgflip_backup_*",
        "--schema-only",
    ]);
    let tables = q(
        db,
        "SELECT string_agg(format('%I.%I', n.nspname, c.relname), E'\\n' ORDER BY n.nspname, c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pgflip', 'pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pgflip\\_%'",
    );
    for t in tables.lines() {
        out.push_str(&format!("\n{t}: {}", digest(db, t)));
    }
    out
}

/// Everything pgflip created for migrations, as text: empty when nothing is left behind.
fn leftovers(db: &TestDb) -> String {
    q(
        db,
        "SELECT string_agg(x, ', ' ORDER BY x) FROM ( \
           SELECT 'schema ' || nspname AS x FROM pg_namespace WHERE nspname LIKE 'pgflip\\_shadow%' \
           UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE 'pgflip\\_migrate%' \
           UNION ALL SELECT 'proc ' || proname FROM pg_proc WHERE proname LIKE 'migrate\\_%' \
           UNION ALL SELECT 'rel ' || relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = 'pgflip' AND relname LIKE 'migrate\\_%' \
           UNION ALL SELECT 'op ' || id FROM pgflip.operations WHERE kind = 'migrate') s",
    )
}

const SOURCE: &str = r#"
CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2) CHECK (price >= 0));
INSERT INTO products SELECT g, 'product ' || g, g * 1.5 FROM generate_series(1, 500) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, product_id int REFERENCES products, qty int NOT NULL DEFAULT 1);
CREATE INDEX orders_product_idx ON orders (product_id);
INSERT INTO orders (product_id, qty) SELECT 1 + g % 500, g FROM generate_series(1, 2000) g;
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, plan text NOT NULL DEFAULT 'free');
INSERT INTO users VALUES (1, 'source-only@example.com', 'pro');
CREATE TABLE "Mixed Case ""Table""" ("Id" int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "Value" text);
INSERT INTO "Mixed Case ""Table""" ("Value") VALUES ('x'), ('y');
CREATE SCHEMA sales;
CREATE TABLE sales.lines (a int, b text, note text, PRIMARY KEY (a, b));
INSERT INTO sales.lines SELECT g, 'b' || g, 'n' FROM generate_series(1, 100) g;
CREATE TABLE events (id int, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO events SELECT g, date '2025-06-01' + g FROM generate_series(1, 400) g;
"#;

const TARGET: &str = r#"
CREATE TABLE products (id int PRIMARY KEY, name text);
INSERT INTO products VALUES (1, 'old');
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO users SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 300) g;
CREATE TABLE shadows (id int PRIMARY KEY);
CREATE TABLE backups (id int PRIMARY KEY);
CREATE TABLE pgflip_x (id int);
INSERT INTO shadows VALUES (1); INSERT INTO backups VALUES (2);
"#;

#[test]
fn prepare_builds_the_new_version_beside_the_live_tables_and_abort_removes_it() {
    let (src, tgt) = pair("mig_prep");
    src.psql(SOURCE);
    tgt.psql(TARGET);
    let before = user_dump(&tgt);
    let src_before = src.dump();

    ok(&prepare(
        &src,
        &tgt,
        &["--preserved-tables", "users", "--jobs", "3"],
    ));
    let st = status_json(&tgt);
    let m = &st["migrations"][0];
    assert_eq!(m["record"]["phase"], "prepared", "{st:#}");
    assert_eq!(m["swap_allowed"], true, "{st:#}");
    let id = m["record"]["id"].as_i64().unwrap();
    let sh = format!("pgflip_shadow_{id}_public");
    // Source rows in the shadow tables, the target's rows in the preserved one.
    assert_eq!(
        digest(&tgt, &format!("{sh}.products")),
        digest(&src, "products")
    );
    assert_eq!(
        digest(&tgt, &format!("{sh}.orders")),
        digest(&src, "orders")
    );
    assert_eq!(
        digest(&tgt, &format!("{sh}.\"Mixed Case \"\"Table\"\"\"")),
        digest(&src, "\"Mixed Case \"\"Table\"\"\"")
    );
    assert_eq!(
        digest(&tgt, &format!("pgflip_shadow_{id}_sales.lines")),
        digest(&src, "sales.lines")
    );
    assert_eq!(
        digest(&tgt, &format!("{sh}.events")),
        digest(&src, "events")
    );
    assert_eq!(
        digest(&tgt, &format!("(SELECT id, email FROM {sh}.users) ")),
        digest(&tgt, "users")
    );
    assert_eq!(
        q(&tgt, &format!("SELECT DISTINCT plan FROM {sh}.users")),
        "free"
    );
    // Structure: indexes keep their names, FKs point at shadow tables and are validated,
    // sequences have the source's positions.
    assert_eq!(
        q(&tgt, &format!("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = '{sh}.orders'::regclass ORDER BY 1")),
        format!("{sh}.orders_pkey\n{sh}.orders_product_idx")
    );
    assert_eq!(
        q(&tgt, &format!("SELECT confrelid::regclass::text || ' ' || convalidated FROM pg_constraint WHERE conrelid = '{sh}.orders'::regclass AND contype = 'f'")),
        format!("{sh}.products true")
    );
    assert_eq!(
        q(&tgt, &format!("SELECT last_value FROM {sh}.orders_id_seq")),
        "2000"
    );
    assert_eq!(
        q(
            &tgt,
            &format!("SELECT count(*) FROM pg_inherits WHERE inhparent = '{sh}.events'::regclass")
        ),
        "2"
    );
    // Writes to the preserved table are forwarded; the live tables are untouched otherwise.
    tgt.psql(
        "INSERT INTO users VALUES (1000, 'new@example.com'); \
         UPDATE users SET email = 'changed' WHERE id = 2; \
         UPDATE users SET id = 2000 WHERE id = 3; \
         DELETE FROM users WHERE id = 4;",
    );
    assert_eq!(
        digest(&tgt, &format!("(SELECT id, email FROM {sh}.users) ")),
        digest(&tgt, "users")
    );
    let st = status_json(&tgt);
    assert_eq!(st["migrations"][0]["forwarded"], 4, "{st:#}");
    assert_eq!(q(&tgt, "SELECT count(*) FROM products"), "1");
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM shadows") + &q(&tgt, "SELECT count(*) FROM backups"),
        "11"
    );

    // A second prepare is refused while one is prepared; nothing changes.
    let o = prepare(&src, &tgt, &[]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("prepared and waiting"),
        "{}",
        stderr(&o)
    );

    ok(&migrate(&tgt, "abort", &[]));
    assert_eq!(leftovers(&tgt), "");
    tgt.psql(
        "DELETE FROM users WHERE id IN (1000, 2000); \
         UPDATE users SET email = 'user2@example.com' WHERE id = 2; \
         INSERT INTO users VALUES (3, 'user3@example.com'), (4, 'user4@example.com');",
    );
    let after = user_dump(&tgt);
    assert!(
        after == before,
        "abort left the target changed:\n{}",
        line_diff(&before, &after)
    );
    assert!(src.dump() == src_before, "the source was written to");
    assert!(status_json(&tgt)["migrations"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let (src, tgt) = pair("mig_bad");
    src.psql(SOURCE);
    tgt.psql(TARGET);
    tgt.psql("CREATE TABLE nokey (a int); CREATE TABLE nokey2 (a int);");
    src.psql(
        "CREATE TABLE nokey (a int); CREATE TABLE nokey2 (a int PRIMARY KEY, must int NOT NULL);",
    );
    tgt.psql("ALTER TABLE nokey2 ADD PRIMARY KEY (a)");
    // A partitioned table on both sides (its key is fine): not preservable yet, by name.
    tgt.psql(
        "CREATE TABLE events (id int, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at); \
         CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); \
         INSERT INTO events VALUES (1, '2025-02-01');",
    );
    let before = tgt.dump();
    for (args, code, needle) in [
        (vec!["--preserved-tables", "nope"], 2, "nope"),
        (vec!["--preserved-tables", "nokey"], 2, "no primary key"),
        (vec!["--preserved-tables", "nokey2"], 2, "nokey2.must"),
        (
            vec!["--preserved-tables", "events"],
            2,
            "preserved table public.events: partitioned tables cannot be preserved",
        ),
        (
            vec!["--preserved-tables", "events_2025"],
            2,
            "--exclude-table public.events keeps the target's table",
        ),
    ] {
        let o = prepare(&src, &tgt, &args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    let t = tgt.url();
    let o = pgflip(&["migrate", "prepare", "--source", &t, "--target", &t]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("same database"), "{}", stderr(&o));
    assert!(tgt.dump() == before, "a refused prepare changed the target");
    // With a default for the new column, the table can be preserved.
    ok(&prepare(
        &src,
        &tgt,
        &[
            "--preserved-tables",
            "nokey2",
            "--column-default",
            "nokey2.must=42",
        ],
    ));
    ok(&migrate(&tgt, "abort", &[]));
    assert_eq!(leftovers(&tgt), "");
    // As the refusal says: excluded, the partitioned table stays out of the migration.
    ok(&prepare(&src, &tgt, &["--exclude-table", "public.events"]));
    let st = status_json(&tgt);
    let tables = st["migrations"][0]["record"]["tables"].as_array().unwrap();
    assert!(
        !tables
            .iter()
            .any(|t| t["name"] == "events" || t["name"] == "events_2025"),
        "{st:#}"
    );
    ok(&migrate(&tgt, "abort", &[]));
    assert_eq!(leftovers(&tgt), "");
}

/// Waits until no pgflip session is connected to `db` (a killed pgflip's backends end when
/// the server notices the closed connection).
fn wait_for_pgflip_sessions_to_end(db: &TestDb) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while q(
        db,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgflip%' AND datname = current_database()",
    ) != "0"
    {
        assert!(Instant::now() < deadline, "pgflip's sessions did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill_9_at_every_prepare_boundary_then_status_says_where_and_abort_or_rerun_finishes() {
    let (src, tgt) = pair("mig_kill");
    src.psql(SOURCE);
    tgt.psql(TARGET);
    let before = user_dump(&tgt);
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    for (i, (point, phase)) in [
        ("migrate.prepare.recorded", "preparing"),
        ("migrate.prepare.structure", "capturing"),
        ("migrate.prepare.captured", "copying"),
        ("migrate.prepare.copied", "indexing"),
        ("migrate.prepare.indexed", "validating"),
        ("migrate.prepare.validated", "prepared"),
    ]
    .into_iter()
    .enumerate()
    {
        let spec = format!("{point}=exit");
        let o = prepare_env(
            &src,
            &tgt,
            &["--preserved-tables", "users"],
            &[
                ("PGFLIP_FAILPOINTS", spec.as_str()),
                ("PGFLIP_FAILPOINT_DIR", dir_s.as_str()),
            ],
        );
        assert!(!o.status.success(), "{point}: pgflip was not killed");
        assert!(
            dir.path().join(format!("{point}.reached")).exists(),
            "{point} not reached"
        );
        wait_for_pgflip_sessions_to_end(&tgt);
        let st = status_json(&tgt);
        let m = &st["migrations"][0];
        assert_eq!(m["record"]["phase"], phase, "{point}: {st:#}");
        assert_eq!(m["preparing"], false, "{point}: {st:#}");
        assert_eq!(m["swap_allowed"], phase == "prepared", "{point}: {st:#}");
        // Writes to the preserved table keep working whatever state prepare died in.
        tgt.psql("UPDATE users SET email = email WHERE id = 1");
        if i % 2 == 1 && phase != "prepared" {
            // A rerun removes the leftovers and finishes.
            let o = prepare(&src, &tgt, &["--preserved-tables", "users"]);
            assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));
            ok(&o);
            assert_eq!(
                status_json(&tgt)["migrations"][0]["record"]["phase"],
                "prepared"
            );
        }
        ok(&migrate(&tgt, "abort", &[]));
        assert_eq!(leftovers(&tgt), "", "{point}");
        let after = user_dump(&tgt);
        assert!(after == before, "{point}: {}", line_diff(&before, &after));
    }
}

/// Writers on the preserved tables, each write mirrored into an oracle table in the same
/// transaction; returns the number of transactions and the first error an application saw.
async fn writer(
    url: String,
    n: i64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, Option<String>) {
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut done = 0u64;
    let mut seq = 0i64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        seq += 1;
        let r = (n * 7919 + seq * 104729) % 1000;
        let new_id = 1_000_000 * (n + 1) + seq;
        let old_id = 1 + (r * 13) % 3000;
        let org = format!("org{}", r % 7);
        let sql = match seq % 7 {
            0 | 1 => format!(
                "INSERT INTO users VALUES ({new_id}, 'w{n}-{seq}'); INSERT INTO oracle.users VALUES ({new_id}, 'w{n}-{seq}')"
            ),
            2 => format!(
                "UPDATE users SET email = 'u{n}-{seq}' WHERE id = {old_id}; UPDATE oracle.users SET email = 'u{n}-{seq}' WHERE id = {old_id}"
            ),
            3 => format!(
                "UPDATE users SET id = {new_id} WHERE id = {old_id}; UPDATE oracle.users SET id = {new_id} WHERE id = {old_id}"
            ),
            4 => format!("DELETE FROM users WHERE id = {old_id}; DELETE FROM oracle.users WHERE id = {old_id}"),
            5 => format!(
                "INSERT INTO memberships VALUES ('{org}', {new_id}, 'r{seq}'); INSERT INTO oracle.memberships VALUES ('{org}', {new_id}, 'r{seq}')"
            ),
            _ => format!(
                "UPDATE memberships SET uid = {new_id}, role = 'k{seq}' WHERE org = '{org}' AND uid = {old_id}; \
                 UPDATE oracle.memberships SET uid = {new_id}, role = 'k{seq}' WHERE org = '{org}' AND uid = {old_id}; \
                 DELETE FROM memberships WHERE org = '{org}' AND uid = {old_id} + 1; DELETE FROM oracle.memberships WHERE org = '{org}' AND uid = {old_id} + 1"
            ),
        };
        if let Err(e) = c.batch_execute(&format!("BEGIN; {sql}; COMMIT")).await {
            return (done, Some(e.to_string()));
        }
        done += 1;
    }
    (done, None)
}

const LOAD_SOURCE: &str = r#"
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, verified boolean NOT NULL DEFAULT false);
CREATE TABLE memberships (org text, uid bigint, role text, since date DEFAULT '2026-01-01', PRIMARY KEY (org, uid));
CREATE TABLE catalog (id int PRIMARY KEY, v text);
INSERT INTO catalog SELECT g, 'v' || g FROM generate_series(1, 5000) g;
"#;

const LOAD_TARGET: &str = r#"
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
CREATE TABLE memberships (org text, uid bigint, role text, PRIMARY KEY (org, uid));
CREATE TABLE catalog (id int PRIMARY KEY, v text);
INSERT INTO users SELECT g, 'user' || g FROM generate_series(1, 12000) g;
INSERT INTO memberships SELECT 'org' || (g % 7), g, 'member' FROM generate_series(1, 8000) g;
CREATE SCHEMA oracle;
CREATE TABLE oracle.users AS SELECT * FROM users;
CREATE TABLE oracle.memberships AS SELECT * FROM memberships;
"#;

fn assert_same_rows(db: &TestDb, a: &str, b: &str) {
    let missing = q(
        db,
        &format!("SELECT count(*) FROM (SELECT * FROM {b} y EXCEPT ALL SELECT * FROM {a} z) x"),
    );
    let extra = q(
        db,
        &format!("SELECT count(*) FROM (SELECT * FROM {a} y EXCEPT ALL SELECT * FROM {b} z) x"),
    );
    assert_eq!(
        (missing.as_str(), extra.as_str()),
        ("0", "0"),
        "{a} vs {b}: rows missing / extra"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_lost_writes_on_preserved_tables_from_before_prepare_to_after_swap_with_pauses_at_every_boundary(
) {
    let (src, tgt) = pair("mig_load");
    src.psql(LOAD_SOURCE);
    tgt.psql(LOAD_TARGET);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for n in 0..3 {
        writers.push(tokio::spawn(writer(tgt.url(), n, stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let points = [
        "migrate.prepare.recorded",
        "migrate.prepare.structure",
        "migrate.prepare.captured",
        "migrate.prepare.copied",
        "migrate.prepare.indexed",
        "migrate.prepare.validated",
    ];
    let spec = points.map(|p| format!("{p}=pause")).join(";");
    let (s, t) = (src.url(), tgt.url());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgflip"))
        .args([
            "migrate",
            "prepare",
            "--source",
            &s,
            "--target",
            &t,
            "--preserved-tables",
            "users,memberships",
            "--jobs",
            "3",
        ])
        .env("PGFLIP_FAILPOINTS", &spec)
        .env("PGFLIP_FAILPOINT_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for p in points {
        let paused = dir.path().join(format!("{p}.paused"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !paused.exists() {
            assert!(Instant::now() < deadline, "{p} never paused");
            if let Some(st) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "prepare ended ({st}) before {p}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the writers run while pgflip stands still at the boundary.
        tokio::time::sleep(Duration::from_millis(250)).await;
        std::fs::remove_file(&paused).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prepare failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = status_json(&tgt);
    let m = &st["migrations"][0];
    assert_eq!(m["rejected"], 0, "{st:#}");
    assert!(m["forwarded"].as_i64().unwrap() > 50, "{st:#}");

    // The swap, paused after its checks while the writers go on, then under their load.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgflip"))
        .args(["migrate", "swap", "--target", &t])
        .env("PGFLIP_FAILPOINTS", "migrate.swap.checked=pause")
        .env("PGFLIP_FAILPOINT_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let paused = dir.path().join("migrate.swap.checked.paused");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !paused.exists() {
        assert!(Instant::now() < deadline, "the swap never paused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    std::fs::remove_file(&paused).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "swap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in writers {
        let (n, err) = w.await.unwrap();
        assert_eq!(err, None, "a writer saw an error");
        total += n;
    }
    assert!(total > 100, "the writers hardly ran ({total})");
    // The live tables are now the new version's, and hold exactly the oracle's rows.
    assert_eq!(q(&tgt, "SELECT count(*) FROM users WHERE verified"), "0");
    assert_same_rows(&tgt, "(SELECT id, email FROM users)", "oracle.users");
    assert_same_rows(
        &tgt,
        "(SELECT org, uid, role FROM memberships)",
        "oracle.memberships",
    );
    assert_eq!(digest(&tgt, "catalog"), digest(&src, "catalog"));
    assert_eq!(leftovers(&tgt), "");
    assert!(status_json(&tgt)["migrations"]
        .as_array()
        .unwrap()
        .is_empty());
}

const SWAP_SOURCE: &str = r#"
CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2) CHECK (price >= 0));
INSERT INTO products SELECT g, 'product ' || g, g * 1.5 FROM generate_series(1, 500) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, product_id int REFERENCES products, qty int NOT NULL DEFAULT 1);
CREATE INDEX orders_product_idx ON orders (product_id);
INSERT INTO orders (product_id, qty) SELECT 1 + g % 500, g FROM generate_series(1, 2000) g;
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, plan text NOT NULL DEFAULT 'free');
INSERT INTO users VALUES (1, 'source-only@example.com', 'pro');
CREATE TABLE "Mixed Case ""Table""" ("Id" int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "Value" text);
INSERT INTO "Mixed Case ""Table""" ("Value") VALUES ('x'), ('y');
CREATE SCHEMA sales;
CREATE TABLE sales.lines (a int, b text, note text, PRIMARY KEY (a, b));
INSERT INTO sales.lines SELECT g, 'b' || g, 'n' FROM generate_series(1, 100) g;
CREATE TABLE events (id int, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO events SELECT g, date '2025-06-01' + g FROM generate_series(1, 400) g;
GRANT SELECT, INSERT, UPDATE, DELETE ON products, orders, users TO mig_app;
GRANT USAGE ON SEQUENCE orders_id_seq TO mig_app;
GRANT USAGE ON SCHEMA sales TO mig_app;
GRANT SELECT ON sales.lines TO mig_app;
"#;

const SWAP_TARGET: &str = r#"
CREATE TABLE products (id int PRIMARY KEY, name text);
INSERT INTO products VALUES (1, 'old');
CREATE TABLE orders (id bigserial PRIMARY KEY, product_id int, qty int);
INSERT INTO orders (product_id, qty) VALUES (1, 1), (1, 2);
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO users SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 300) g;
CREATE TABLE "Mixed Case ""Table""" ("Id" int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "Value" text);
INSERT INTO "Mixed Case ""Table""" ("Value") VALUES ('old');
CREATE SCHEMA sales;
CREATE TABLE sales.lines (a int, b text, PRIMARY KEY (a, b));
CREATE TABLE events (id int, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO events VALUES (1, '2025-02-02');
GRANT SELECT, INSERT, UPDATE, DELETE ON products, orders, users TO mig_app;
GRANT USAGE ON SEQUENCE orders_id_seq TO mig_app;
GRANT USAGE ON SCHEMA sales TO mig_app;
GRANT SELECT ON sales.lines TO mig_app;
"#;

fn ensure_role(db: &TestDb) {
    db.psql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mig_app') THEN \
         CREATE ROLE mig_app LOGIN; END IF; END $$",
    );
}

#[test]
fn swap_switches_every_table_keeps_preserved_rows_and_rollback_brings_the_old_version_back() {
    let (src, tgt) = pair("mig_swap");
    ensure_role(&src);
    src.psql(SWAP_SOURCE);
    tgt.psql(SWAP_TARGET);
    let before = user_dump(&tgt);
    ok(&prepare(&src, &tgt, &["--preserved-tables", "users"]));
    // Between prepare and swap the application keeps writing the preserved table.
    tgt.psql("INSERT INTO users VALUES (301, 'late@example.com'); DELETE FROM users WHERE id = 5;");
    let users_before_swap = digest(&tgt, "(SELECT id, email FROM users)");
    // Dry run prints the flip and changes nothing.
    let dry = ok(&migrate(&tgt, "swap", &["--dry-run"]));
    assert!(dry.contains("DROP TRIGGER"), "{dry}");
    assert_eq!(
        status_json(&tgt)["migrations"][0]["record"]["phase"],
        "prepared"
    );

    let out = ok(&migrate(&tgt, "swap", &[]));
    assert!(out.contains("swapped"), "{out}");
    for t in [
        "products",
        "orders",
        "\"Mixed Case \"\"Table\"\"\"",
        "sales.lines",
        "events",
        "events_2025",
    ] {
        assert_eq!(digest(&tgt, t), digest(&src, t), "{t}");
    }
    assert_eq!(
        digest(&tgt, "(SELECT id, email FROM users)"),
        users_before_swap
    );
    assert_eq!(q(&tgt, "SELECT DISTINCT plan FROM users"), "free");
    assert_eq!(leftovers(&tgt), "");
    // The swap read no table before switching (`--checksums retired` is migrate's default):
    // the generation has the retired side's counts only, and `verify` checks them.
    assert_eq!(
        q(&tgt, "SELECT g.details ->> 'checksums' || '/' || count(gr.live_checksum) || '/' || count(gr.retired_checksum) \
                 FROM pgflip.generations g JOIN pgflip.generation_relations gr ON gr.generation_id = g.id \
                 WHERE g.kind = 'migrate' AND gr.retired_name <> '' GROUP BY g.id"),
        format!("retired/0/{}", q(&tgt, "SELECT count(*) FROM pgflip.generation_relations gr JOIN pgflip.generations g ON g.id = gr.generation_id WHERE g.kind = 'migrate' AND gr.retired_name <> ''"))
    );
    ok(&pgflip(&["verify", "--target", &tgt.url(), "--latest"]));
    // The application's role still works, and inserts do not collide with copied keys.
    tgt.psql(
        "SET ROLE mig_app; INSERT INTO orders (product_id) VALUES (3); \
         INSERT INTO users VALUES (302, 'after@example.com'); SELECT count(*) FROM sales.lines; RESET ROLE;",
    );
    assert_eq!(q(&tgt, "SELECT max(id) FROM orders"), "2001");
    // The schema is the source's.
    let (s, t) = (src.url(), tgt.url());
    let o = pgflip(&["schema", "diff", "--source", &s, "--target", &t, "--check"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "schema diff after the swap:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );

    // Rollback: the old version, with its rows, as it was.
    tgt.psql("DELETE FROM orders WHERE id = 2001; DELETE FROM users WHERE id = 302;");
    ok(&pgflip(&["rollback", "--latest", "--target", &t]));
    let before_with_writes = before.clone();
    // The preserved table's writes made after prepare stay in the retired (new-version) copy;
    // the rolled-back live table is the target's own, which the writes reached too.
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM users WHERE id IN (301, 5)"),
        "1"
    );
    tgt.psql(
        "DELETE FROM users WHERE id = 301; INSERT INTO users VALUES (5, 'user5@example.com');",
    );
    let after_fixed = user_dump(&tgt);
    assert!(
        after_fixed == before_with_writes,
        "rollback did not restore the target:\n{}",
        line_diff(&before, &after_fixed)
    );
    // Rollback of the rollback: the new version again.
    ok(&pgflip(&["rollback", "--latest", "--target", &t]));
    assert_eq!(digest(&tgt, "products"), digest(&src, "products"));
}

#[test]
fn a_write_the_new_version_rejects_is_recorded_never_fails_the_application_and_refuses_the_swap() {
    let (src, tgt) = pair("mig_reject");
    src.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL CHECK (email LIKE '%@%'));",
    );
    tgt.psql(
        "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL); \
         INSERT INTO users VALUES (1, 'a@x'), (2, 'b@x');",
    );
    ok(&prepare(&src, &tgt, &["--preserved-tables", "users"]));
    // The application's write succeeds; the new version's CHECK rejects it in the shadow.
    tgt.psql("INSERT INTO users VALUES (3, 'no-at-sign')");
    assert_eq!(
        q(&tgt, "SELECT email FROM users WHERE id = 3"),
        "no-at-sign"
    );
    let st = status_json(&tgt);
    let m = &st["migrations"][0];
    assert_eq!(m["rejected"], 1, "{st:#}");
    assert_eq!(m["swap_allowed"], false, "{st:#}");
    assert_eq!(m["rejected_samples"][0]["sqlstate"], "23514", "{st:#}");
    let human = ok(&migrate(&tgt, "status", &[]));
    assert!(human.contains("rejected"), "{human}");
    let o = migrate(&tgt, "swap", &[]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("rejected"), "{}", stderr(&o));
    assert_eq!(q(&tgt, "SELECT count(*) FROM users"), "3");
    ok(&migrate(&tgt, "abort", &[]));
    assert_eq!(leftovers(&tgt), "");
}

#[test]
fn a_blocked_swap_gives_up_by_its_deadline_names_the_blocker_and_changes_nothing() {
    let (src, tgt) = pair("mig_block");
    src.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'new');",
    );
    tgt.psql(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'old');",
    );
    ok(&prepare(&src, &tgt, &["--preserved-tables", "items"]));
    let mut blocker = std::process::Command::new(tgt.srv.client_tool("psql"))
        .args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-p", &tgt.srv.port().to_string(), "-d", &tgt.name])
        .args(["-c", "BEGIN; SET application_name = 'long_reader'; SELECT count(*) FROM items; SELECT pg_sleep(60); COMMIT;"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let o = migrate(
        &tgt,
        "swap",
        &["--max-wait", "2s", "--lock-timeout", "50ms"],
    );
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(5), "{}\n{}", stdout(&o), stderr(&o));
    // The blocker would hold for a minute: giving up well before is the 2 s deadline's doing
    // (loose, for loaded machines).
    assert!(took < Duration::from_secs(20), "gave up after {took:?}");
    assert!(stderr(&o).contains("long_reader"), "{}", stderr(&o));
    // Everything as it was: still prepared, still forwarding.
    tgt.psql("UPDATE items SET v = 'changed' WHERE id = 1");
    let st = status_json(&tgt);
    assert_eq!(st["migrations"][0]["swap_allowed"], true, "{st:#}");
    assert_eq!(st["migrations"][0]["forwarded"], 1, "{st:#}");
    tgt.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'long_reader'");
    let _ = blocker.wait();
    ok(&migrate(&tgt, "swap", &[]));
    assert_eq!(q(&tgt, "SELECT v FROM items"), "changed");
    assert_eq!(leftovers(&tgt), "");
}

#[test]
fn kill_9_at_every_swap_boundary_leaves_the_target_wholly_before_or_after() {
    let (src, tgt) = pair("mig_kill_swap");
    src.psql(SOURCE);
    tgt.psql(TARGET);
    let before = user_dump(&tgt);
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let (products_before, users_before) = (digest(&tgt, "products"), digest(&tgt, "users"));
    ok(&prepare(&src, &tgt, &["--preserved-tables", "users"]));
    let t = tgt.url();
    let swap_killed_at = |point: &str| {
        let spec = format!("{point}=exit");
        let o = pgflip_env(
            &["migrate", "swap", "--target", &t],
            &[
                ("PGFLIP_FAILPOINTS", spec.as_str()),
                ("PGFLIP_FAILPOINT_DIR", dir_s.as_str()),
            ],
        );
        assert!(!o.status.success(), "{point}: pgflip was not killed");
        assert!(
            dir.path().join(format!("{point}.reached")).exists(),
            "{point} not reached"
        );
        wait_for_pgflip_sessions_to_end(&tgt);
    };
    // Killed before the flip: wholly before; status says prepared, the swap is allowed.
    swap_killed_at("migrate.swap.checked");
    let st = status_json(&tgt);
    assert_eq!(st["migrations"][0]["record"]["phase"], "prepared", "{st:#}");
    assert_eq!(st["migrations"][0]["swap_allowed"], true, "{st:#}");
    assert_eq!(digest(&tgt, "products"), products_before);
    assert_eq!(digest(&tgt, "users"), users_before);
    assert_eq!(q(&tgt, "SELECT to_regclass('public.orders') IS NULL"), "t");
    tgt.psql("INSERT INTO users VALUES (900, 'between@example.com')");
    // Killed right after the commit: wholly after; nothing of the migration is left.
    swap_killed_at("migrate.swap.flipped");
    assert_eq!(status_json(&tgt)["migrations"], serde_json::json!([]));
    assert_eq!(leftovers(&tgt), "");
    assert_eq!(digest(&tgt, "orders"), digest(&src, "orders"));
    assert_eq!(
        q(&tgt, "SELECT email FROM users WHERE id = 900"),
        "between@example.com"
    );
    // The generation is an ordinary one: rollback brings the old tables back.
    ok(&pgflip(&["rollback", "--latest", "--target", &t]));
    tgt.psql("DELETE FROM users WHERE id = 900");
    // The schema the migration created is empty after the rollback: dropped by it.
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'sales'"
        ),
        "0"
    );
    let after = user_dump(&tgt);
    assert!(after == before, "{}", line_diff(&before, &after));
}

/// One application write to the preserved table `users`, mirrored into the oracle table in
/// the same transaction.
fn app_write(db: &TestDb, id: i32) {
    db.psql(&format!(
        "BEGIN; \
         INSERT INTO users VALUES ({id}, 'w{id}@example.com'); \
         INSERT INTO app_oracle VALUES ({id}, 'w{id}@example.com'); \
         UPDATE users SET email = 'u{id}@example.com' WHERE id = {id} % 300 + 1; \
         UPDATE app_oracle SET email = 'u{id}@example.com' WHERE id = {id} % 300 + 1; \
         COMMIT"
    ));
}

/// `user_dump` without the lines of the tables the application writes to.
fn dump_without_app_tables(db: &TestDb) -> String {
    user_dump(db)
        .lines()
        .filter(|l| !l.starts_with("public.users:") && !l.starts_with("public.app_oracle:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_target_server_restart_during_prepare_fails_it_clearly_and_abort_or_rerun_keeps_every_write() {
    // The target on a server of its own: restarting the shared one would break other tests.
    // Commits wait for the WAL (the test servers do not, by default), so that an immediate
    // shutdown loses no committed write, as on a production server.
    let srv: &'static pgflip::localpg::LocalServer = Box::leak(Box::new(
        pgflip::localpg::LocalServer::start_with(pgflip::localpg::ServerOptions {
            settings: vec![("synchronous_commit".into(), "on".into())],
        })
        .expect("start a server to restart"),
    ));
    let src = fresh_db("mig_restart_src");
    let tgt = TestDb::new(srv, "mig_restart_tgt");
    src.psql(SOURCE);
    tgt.psql(TARGET);
    tgt.psql(
        "CREATE TABLE app_oracle (id int PRIMARY KEY, email text NOT NULL); \
         INSERT INTO app_oracle SELECT * FROM users",
    );
    let before = dump_without_app_tables(&tgt);
    let dir = tempfile::tempdir().unwrap();
    let mut next_id = 1000;
    // keep: `--keep-on-failure`, so that status, abort and a rerun see what prepare left;
    // without it prepare removes what it built itself, from a new session.
    for (point, phase, immediate, keep, rerun) in [
        (
            "migrate.prepare.structure",
            "capturing",
            false,
            false,
            false,
        ),
        ("migrate.prepare.captured", "copying", true, true, false),
        ("migrate.prepare.copied", "indexing", false, true, true),
        ("migrate.prepare.indexed", "validating", true, false, false),
    ] {
        let (s, t) = (src.url(), tgt.url());
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgflip"))
            .args([
                "migrate",
                "prepare",
                "--source",
                &s,
                "--target",
                &t,
                "--preserved-tables",
                "users",
            ])
            .args(if keep {
                &["--keep-on-failure"][..]
            } else {
                &[]
            })
            .env("NO_COLOR", "1")
            .env("PGFLIP_FAILPOINTS", format!("{point}=pause"))
            .env("PGFLIP_FAILPOINT_DIR", dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let paused = dir.path().join(format!("{point}.paused"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !paused.exists() {
            assert!(Instant::now() < deadline, "{point} never paused");
            if let Some(st) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "prepare ended ({st}) before {point}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut written = Vec::new();
        for _ in 0..3 {
            app_write(&tgt, next_id);
            written.push(next_id);
            next_id += 1;
        }
        if immediate {
            srv.stop_immediate().expect("immediate shutdown");
        } else {
            srv.stop().expect("fast shutdown");
        }
        srv.restart().expect("start the target server again");
        for _ in 0..3 {
            app_write(&tgt, next_id);
            written.push(next_id);
            next_id += 1;
        }
        std::fs::remove_file(&paused).unwrap();
        // Prepare fails, and promptly: its target sessions are gone.
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{point}: prepare hangs after the target server restarted");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{point}: prepare succeeded across a restart: {err}"
        );
        assert!(
            err.contains("connection") || err.contains("terminat") || err.contains("shut"),
            "{point}: the error does not say the connection was lost: {err}"
        );
        let st = status_json(&tgt);
        if keep {
            let m = &st["migrations"][0];
            assert_eq!(m["record"]["phase"], phase, "{point}: {st:#}");
            assert_eq!(m["preparing"], false, "{point}: {st:#}");
            assert_eq!(m["swap_allowed"], false, "{point}: {st:#}");
            assert!(leftovers(&tgt).contains("trigger "), "{point}");
        } else {
            assert!(!err.contains("failed too"), "{point}: {err}");
            assert_eq!(st["migrations"], serde_json::json!([]), "{point}: {st:#}");
            assert_eq!(leftovers(&tgt), "", "{point}");
        }
        // The application goes on writing whatever state prepare was left in.
        app_write(&tgt, next_id);
        written.push(next_id);
        next_id += 1;
        if rerun {
            let o = prepare(&src, &tgt, &["--preserved-tables", "users"]);
            assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));
            ok(&o);
            assert_eq!(
                status_json(&tgt)["migrations"][0]["record"]["phase"],
                "prepared"
            );
            app_write(&tgt, next_id);
            written.push(next_id);
            next_id += 1;
            // The new version's preserved table holds every write, from both sides of the
            // restart: what a swap would bring in.
            let shadow = q(
                &tgt,
                "SELECT format('%I.users', nspname) FROM pg_namespace                  WHERE nspname LIKE 'pgflip\\_shadow\\_%\\_public'",
            );
            assert_eq!(
                q(
                    &tgt,
                    &format!(
                        "SELECT count(*) FROM ((SELECT id, email FROM {shadow} EXCEPT TABLE app_oracle) \
                         UNION ALL (TABLE app_oracle EXCEPT SELECT id, email FROM {shadow})) d"
                    )
                ),
                "0",
                "{point}: the shadow of users and the oracle differ"
            );
        }
        if keep {
            ok(&migrate(&tgt, "abort", &[]));
        }
        assert_eq!(leftovers(&tgt), "", "{point}");
        let after = dump_without_app_tables(&tgt);
        assert!(after == before, "{point}: {}", line_diff(&before, &after));
        // Every write, before the restart and after it, is there, and nothing else changed.
        assert_eq!(
            q(
                &tgt,
                "SELECT count(*) FROM ((TABLE users EXCEPT TABLE app_oracle) \
                 UNION ALL (TABLE app_oracle EXCEPT TABLE users)) d"
            ),
            "0",
            "{point}: users and the oracle differ"
        );
        let ids = written
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            q(
                &tgt,
                &format!("SELECT count(*) FROM users WHERE id IN ({ids})")
            ),
            written.len().to_string(),
            "{point}"
        );
    }
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM users"),
        (300 + next_id - 1000).to_string()
    );
}

#[test]
fn a_swap_needing_more_locks_than_the_server_holds_is_refused_before_any_lock() {
    // A server with a small lock table: 10 × (10 + 0) = 100 locks for everyone together.
    let srv: &'static pgflip::localpg::LocalServer = Box::leak(Box::new(
        pgflip::localpg::LocalServer::start_with(pgflip::localpg::ServerOptions {
            settings: vec![
                ("max_locks_per_transaction".into(), "10".into()),
                ("max_connections".into(), "10".into()),
                ("max_prepared_transactions".into(), "0".into()),
            ],
        })
        .expect("start a server with a small lock table"),
    ));
    let src = TestDb::new(srv, "mig_locks_src");
    let tgt = TestDb::new(srv, "mig_locks_tgt");
    // 30 tables on both sides, each with its key: the swap locks 4 relations per table.
    let tables = |v: i32| -> String {
        (0..30)
            .map(|i| {
                format!("CREATE TABLE t{i} (id int PRIMARY KEY, v int); INSERT INTO t{i} VALUES (1, {v});")
            })
            .collect()
    };
    src.psql(&tables(1));
    tgt.psql(&tables(2));
    ok(&prepare(&src, &tgt, &[]));
    let before = digest(&tgt, "t7");
    let o = migrate(&tgt, "swap", &[]);
    assert_eq!(o.status.code(), Some(5), "{}\n{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("max_locks_per_transaction = 10")
            && err.contains("(max_connections 10 + max_prepared_transactions 0) = 100")
            && err.contains("Raise max_locks_per_transaction to at least 14"),
        "{err}"
    );
    // Nothing changed: the old tables are live, the migration is still prepared.
    assert_eq!(digest(&tgt, "t7"), before);
    assert_eq!(q(&tgt, "SELECT count(*) FROM pgflip.generations"), "0");
    let st = status_json(&tgt);
    assert_eq!(st["migrations"][0]["record"]["phase"], "prepared", "{st:#}");
    ok(&migrate(&tgt, "abort", &[]));
    assert_eq!(leftovers(&tgt), "");
}

#[test]
fn ctrl_c_during_prepare_removes_what_it_built_unless_keep_on_failure() {
    let (src, tgt) = pair("mig_sigint");
    src.psql(SOURCE);
    tgt.psql(TARGET);
    let before = user_dump(&tgt);
    let (s, t) = (src.url(), tgt.url());
    // (point, --keep-on-failure, the phase status then shows)
    for (point, keep, phase) in [
        ("migrate.prepare.captured", false, ""),
        ("migrate.prepare.indexed", false, ""),
        ("migrate.prepare.copied", true, "indexing"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "migrate",
            "prepare",
            "--source",
            &s,
            "--target",
            &t,
            "--preserved-tables",
            "users",
        ];
        if keep {
            args.push("--keep-on-failure");
        }
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgflip"))
            .args(&args)
            .env("NO_COLOR", "1")
            .env("PGFLIP_FAILPOINTS", format!("{point}=pause"))
            .env("PGFLIP_FAILPOINT_DIR", dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let paused = dir.path().join(format!("{point}.paused"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !paused.exists() {
            assert!(Instant::now() < deadline, "{point} never paused");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Ctrl-C, as a terminal sends it.
        let st = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(130), "{point}: {err}");
        assert!(err.contains("interrupted"), "{point}: {err}");
        wait_for_pgflip_sessions_to_end(&tgt);
        if keep {
            // Kept for inspection: status says where it stopped; abort removes it.
            assert!(!err.contains("removing what it built"), "{point}: {err}");
            let st = status_json(&tgt);
            assert_eq!(st["migrations"][0]["record"]["phase"], phase, "{st:#}");
            assert_eq!(st["migrations"][0]["swap_allowed"], false, "{st:#}");
            ok(&migrate(&tgt, "abort", &[]));
        } else {
            assert!(
                err.contains("prepare interrupted; removing what it built"),
                "{point}: {err}"
            );
        }
        assert_eq!(leftovers(&tgt), "", "{point}");
        let after = user_dump(&tgt);
        assert!(after == before, "{point}: {}", line_diff(&before, &after));
        // The application's writes work as before (no capture trigger left behind).
        tgt.psql(
            "INSERT INTO users VALUES (777, 'after@example.com'); DELETE FROM users WHERE id = 777",
        );
    }
}

#[test]
fn preserved_tables_come_from_pgflip_toml_unless_the_command_line_names_them() {
    let (src, tgt) = pair("mig_toml");
    src.psql(SOURCE);
    tgt.psql(TARGET);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgflip.toml");
    std::fs::write(&file, "preserved_tables = [\"users\"]\n").unwrap();
    let file_s = file.to_str().unwrap();
    let preserved = |tgt: &TestDb| -> Vec<String> {
        let st = status_json(tgt);
        st["migrations"][0]["record"]["tables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| !t["preserved"].is_null())
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    ok(&prepare(&src, &tgt, &["--config", file_s]));
    assert_eq!(preserved(&tgt), ["users"]);
    ok(&migrate(&tgt, "abort", &[]));
    // The command line wins over the file (whose table does not exist).
    std::fs::write(&file, "preserved_tables = [\"nope\"]\n").unwrap();
    ok(&prepare(
        &src,
        &tgt,
        &["--config", file_s, "--preserved-tables", "users"],
    ));
    assert_eq!(preserved(&tgt), ["users"]);
    ok(&migrate(&tgt, "abort", &[]));
    // A table the file names that does not exist is refused like one on the command line.
    let o = prepare(&src, &tgt, &["--config", file_s]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    assert_eq!(leftovers(&tgt), "");
}

/// The live schema's owner, privileges and comment.
fn schema_attributes(db: &TestDb, schema: &str) -> String {
    q(
        db,
        &format!(
            "SELECT nspowner::regrole || ' ' || coalesce(nspacl::text, 'default') || ' ' \
                    || coalesce(obj_description(oid, 'pg_namespace'), 'no comment') \
             FROM pg_namespace WHERE nspname = '{schema}'"
        ),
    )
}

/// A live schema holding nothing but the migrated tables is swapped whole (one rename per
/// schema under the locks instead of two moves per table): a view and a foreign key of a schema
/// not migrated follow the new tables, the schema keeps its owner, privileges and comment, the
/// application's role keeps working; rollback and rollback of the rollback work. A schema that
/// holds anything else (here a function) is moved table by table.
#[test]
fn a_schema_holding_only_migrated_tables_is_swapped_whole_and_rolls_back() {
    let (src, tgt) = pair("mig_whole");
    ensure_role(&tgt);
    src.psql(
        "CREATE TABLE a (id serial PRIMARY KEY, v text NOT NULL, w int DEFAULT 7); \
         INSERT INTO a (v) SELECT 'new ' || g FROM generate_series(1, 50) g; \
         CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a); \
         INSERT INTO b SELECT g, g FROM generate_series(1, 20) g; \
         CREATE TABLE fresh (id int PRIMARY KEY); INSERT INTO fresh VALUES (1); \
         GRANT SELECT, INSERT ON a TO mig_app; GRANT USAGE ON SEQUENCE a_id_seq TO mig_app;",
    );
    tgt.psql(
        "CREATE TABLE a (id serial PRIMARY KEY, v text NOT NULL); \
         INSERT INTO a (v) SELECT 'old ' || g FROM generate_series(1, 5) g; \
         CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a); INSERT INTO b VALUES (1, 1); \
         CREATE TABLE gone (id int PRIMARY KEY); INSERT INTO gone VALUES (9); \
         COMMENT ON SCHEMA public IS 'the application''s schema'; \
         GRANT USAGE, CREATE ON SCHEMA public TO mig_app; \
         GRANT SELECT, INSERT ON a TO mig_app; GRANT USAGE ON SEQUENCE a_id_seq TO mig_app; \
         CREATE SCHEMA keep; GRANT USAGE ON SCHEMA keep TO mig_app; \
         CREATE VIEW keep.av AS SELECT id, v FROM public.a; GRANT SELECT ON keep.av TO mig_app; \
         CREATE TABLE keep.k (a_id int REFERENCES public.a); INSERT INTO keep.k VALUES (1);",
    );
    let before = user_dump(&tgt);
    let attributes = schema_attributes(&tgt, "public");
    ok(&prepare(&src, &tgt, &["--schema", "public"]));
    let dry = ok(&migrate(&tgt, "swap", &["--dry-run"]));
    assert!(
        dry.contains("ALTER SCHEMA public RENAME TO pgflip_backup_"),
        "{dry}"
    );
    assert!(!dry.contains("ALTER TABLE public.a SET SCHEMA"), "{dry}");

    let out: serde_json::Value =
        serde_json::from_str(&ok(&migrate(&tgt, "swap", &["--json"]))).expect("swap JSON");
    assert_eq!(out["whole_schema"], "public", "{out:#}");
    for t in ["a", "b", "fresh"] {
        assert_eq!(digest(&tgt, t), digest(&src, t), "{t}");
    }
    assert_eq!(q(&tgt, "SELECT to_regclass('public.gone') IS NULL"), "t");
    // The schema's privileges and comment are the source's now (the schema step; the role is
    // the source's too: one server), its owner the target's.
    assert_eq!(
        schema_attributes(&tgt, "public"),
        schema_attributes(&src, "public")
    );
    // The view and the foreign key of the schema not migrated read the new table.
    assert_eq!(q(&tgt, "SELECT count(*) FROM keep.av"), "50");
    assert_eq!(
        q(
            &tgt,
            "SELECT confrelid = 'public.a'::regclass FROM pg_constraint WHERE conrelid = 'keep.k'::regclass AND contype = 'f'"
        ),
        "t"
    );
    assert_eq!(leftovers(&tgt), "");
    tgt.psql(
        "SET ROLE mig_app; INSERT INTO a (v) VALUES ('by the app'); SELECT count(*) FROM keep.av; RESET ROLE;",
    );
    assert_eq!(q(&tgt, "SELECT max(id) FROM a"), "51");
    tgt.psql("DELETE FROM a WHERE id = 51");

    // Rollback: the old version, the schema as it was (owner, privileges, comment).
    let t = tgt.url();
    ok(&pgflip(&["rollback", "--latest", "--target", &t]));
    let after = user_dump(&tgt);
    assert!(after == before, "{}", line_diff(&before, &after));
    assert_eq!(schema_attributes(&tgt, "public"), attributes);
    assert_eq!(q(&tgt, "SELECT count(*) FROM keep.av"), "5");
    // Rollback of the rollback: the new version again.
    ok(&pgflip(&["rollback", "--latest", "--target", &t]));
    assert_eq!(digest(&tgt, "a"), digest(&src, "a"));
    assert_eq!(q(&tgt, "SELECT count(*) FROM keep.av"), "50");

    // A live schema holding anything else is not renamed: its relations move one by one.
    let (src2, tgt2) = pair("mig_whole_not");
    src2.psql("CREATE TABLE a (id int PRIMARY KEY); INSERT INTO a VALUES (1), (2);");
    tgt2.psql(
        "CREATE TABLE a (id int PRIMARY KEY); CREATE FUNCTION app_f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
    );
    ok(&prepare(&src2, &tgt2, &["--keep-extra-tables"]));
    let out: serde_json::Value =
        serde_json::from_str(&ok(&migrate(&tgt2, "swap", &["--json"]))).expect("swap JSON");
    assert_eq!(out["whole_schema"], serde_json::Value::Null, "{out:#}");
    assert_eq!(digest(&tgt2, "a"), digest(&src2, "a"));
}

/// The issue's connection budget: prepare never holds more than `--jobs` sessions on the
/// target, so the application's budget is known in advance. A server-side sampler (its own
/// database, so it is not counted) reads `pg_stat_activity` every 2 ms for as long as pgflip
/// runs; superusers ignore connection limits, hence sampling rather than a limit.
#[test]
fn prepare_never_holds_more_target_sessions_than_jobs() {
    let (src, tgt) = pair("mig_budget");
    let mut ddl = String::new();
    for i in 0..12 {
        ddl.push_str(&format!(
            "CREATE TABLE t{i} (id bigint PRIMARY KEY, a int, b text, c timestamptz DEFAULT now());
             CREATE INDEX ON t{i} (a); CREATE INDEX ON t{i} (b); CREATE INDEX ON t{i} (c, a);
             INSERT INTO t{i} (id, a, b) SELECT g, g % 997, md5(g::text) FROM generate_series(1, 40000) g;\n"
        ));
    }
    src.psql(&ddl);
    tgt.psql(
        "CREATE TABLE t0 (id bigint PRIMARY KEY, a int, b text, c timestamptz DEFAULT now());",
    );
    let mon = fresh_db("mig_budget_mon");
    mon.psql(
        "CREATE FUNCTION peak_sessions(db text) RETURNS int LANGUAGE plpgsql AS $$
         DECLARE n int; mx int := 0; seen bool := false; t0 timestamptz := clock_timestamp();
         BEGIN
           LOOP
             PERFORM pg_stat_clear_snapshot();
             SELECT count(*) INTO n FROM pg_stat_activity
              WHERE datname = db AND application_name LIKE 'pgflip%';
             mx := greatest(mx, n);
             seen := seen OR n > 0;
             EXIT WHEN (seen AND n = 0) OR clock_timestamp() > t0 + interval '180 s';
             PERFORM pg_sleep(0.002);
           END LOOP;
           RETURN mx;
         END $$;",
    );
    let sampler = {
        let mon_name = mon.name.clone();
        let tgt_name = tgt.name.clone();
        let srv = mon.srv;
        std::thread::spawn(move || {
            srv.psql(&mon_name, &format!("SELECT peak_sessions('{tgt_name}')"))
                .expect("sampler")
        })
    };
    // The sampler starts counting at pgflip's first session; give it time to begin its loop.
    std::thread::sleep(Duration::from_millis(300));
    ok(&prepare(&src, &tgt, &["--jobs", "2"]));
    let peak: i32 = sampler
        .join()
        .expect("sampler thread")
        .trim()
        .parse()
        .expect("peak count");
    assert!(
        (1..=2).contains(&peak),
        "prepare --jobs 2 held {peak} sessions on the target at once"
    );
    let st = status_json(&tgt);
    assert_eq!(st["migrations"][0]["record"]["phase"], "prepared", "{st:#}");
    ok(&migrate(&tgt, "abort", &[]));
    assert_eq!(leftovers(&tgt), "", "abort left something behind");
}
