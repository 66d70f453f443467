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

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "pgflip failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

fn q(db: &TestDb, sql: &str) -> String {
    db.psql(sql).trim().to_string()
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
    let mut out = db.pg_dump(&["--exclude-schema=pgflip", "--schema-only"]);
    let tables = q(
        db,
        "SELECT string_agg(format('%I.%I', n.nspname, c.relname), ' ' ORDER BY n.nspname, c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pgflip', 'pg_catalog', 'information_schema')",
    );
    for t in tables.split_whitespace() {
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
    let before = tgt.dump();
    for (args, code, needle) in [
        (vec!["--preserved-tables", "nope"], 2, "nope"),
        (vec!["--preserved-tables", "nokey"], 2, "no primary key"),
        (vec!["--preserved-tables", "nokey2"], 2, "nokey2.must"),
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
}
