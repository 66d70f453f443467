//! Source and target on different PostgreSQL major versions (a major upgrade beside the live
//! database): `sync` and `schema diff --apply` from 14 to 18, and `schema diff` from 18 to 14
//! where 14 cannot express what the source has. Each test needs both versions' binaries
//! (`.ci/pg-versions` installs them; CI has them) and skips, saying why, without them.
//!
//! `migrate` from 14 to 18 too: prepare, abort, swap and rollback.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::*;

/// A database on a PostgreSQL 14 and one on an 18 server, with an 18 client that reads both;
/// `None` (the test skips) when either version is not installed.
fn pair(test: &str, src_major: u32, tgt_major: u32) -> Option<(TestDb, TestDb, PathBuf)> {
    let src = version_server(src_major, test)?;
    let tgt = version_server(tgt_major, test)?;
    let Some(client) = newest_client_bindir() else {
        eprintln!("skipping {test}: no PostgreSQL 18 psql / pg_dump (run `.ci/pg-versions`)");
        return None;
    };
    Some((
        TestDb::new(src, &format!("{test}_src")),
        TestDb::new(tgt, &format!("{test}_tgt")),
        client,
    ))
}

fn psql(db: &TestDb, client: &Path, sql: &str) -> String {
    let out = Command::new(client.join("psql"))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &db.url(),
        ])
        .args(["-c", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The whole database as pg_dump (18) sees it, for "nothing changed" checks.
fn dump(db: &TestDb, client: &Path) -> String {
    let out = Command::new(client.join("pg_dump"))
        .args(["-d", &db.url()])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn version(db: &TestDb, client: &Path) -> u32 {
    psql(
        db,
        client,
        "SELECT current_setting('server_version_num')::int / 10000",
    )
    .parse()
    .unwrap()
}

fn schema_diff(src: &TestDb, tgt: &TestDb, extra: &[&str]) -> Output {
    let (s, t) = (src.url(), tgt.url());
    let mut a = vec!["schema", "diff", "--source", &s, "--target", &t];
    a.extend_from_slice(extra);
    pgflip(&a)
}

/// Row count and checksum of every row's text, in an order that needs no key.
fn digest(db: &TestDb, client: &Path, rel: &str) -> String {
    psql(
        db,
        client,
        &format!(
            "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') \
             FROM {rel} x"
        ),
    )
}

const TABLES: &str = r#"
CREATE SCHEMA "Sales";
CREATE TYPE "Sales".status AS ENUM ('new', 'paid', 'shipped');
CREATE TABLE "Sales"."Order Lines" (
    "Order" int, line int, status "Sales".status NOT NULL DEFAULT 'new',
    qty int, price numeric(12, 2),
    total numeric GENERATED ALWAYS AS (qty * price) STORED,
    tags text[], meta jsonb, at timestamptz,
    PRIMARY KEY ("Order", line));
CREATE TABLE "select" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "from" text);
"#;

#[test]
fn sync_from_14_to_18_copies_every_row_and_a_failure_keeps_the_old_ones() {
    let Some((src, tgt, client)) = pair("xv_sync", 14, 18) else {
        return;
    };
    assert_eq!((version(&src, &client), version(&tgt, &client)), (14, 18));
    psql(&src, &client, TABLES);
    psql(&tgt, &client, TABLES);
    // Enough rows for the copy to be split into block ranges (TID range scans, 14+).
    psql(
        &src,
        &client,
        r#"INSERT INTO "Sales"."Order Lines" ("Order", line, status, qty, price, tags, meta, at)
           SELECT g / 10, g % 10, (ARRAY['new','paid','shipped'])[1 + g % 3]::"Sales".status, g % 7,
                  g * 0.25, ARRAY['t' || g, NULL], jsonb_build_object('g', g, 'odd', g % 2 = 1),
                  timestamptz '2024-01-01 00:00+00' + g * interval '1 minute'
           FROM generate_series(1, 30000) g;
           INSERT INTO "select" ("from") SELECT 'v' || g FROM generate_series(1, 7) g"#,
    );
    psql(
        &tgt,
        &client,
        r#"INSERT INTO "Sales"."Order Lines" ("Order", line, qty, price) VALUES (99999, 1, 1, 1);
           INSERT INTO "select" ("from") VALUES ('old')"#,
    );
    let o = pgflip(&[
        "sync",
        "--source",
        &src.url(),
        "--target",
        &tgt.url(),
        "--schemas",
        "public,Sales",
        "Sales.Order Lines",
        "select",
    ]);
    ok(&o);
    for rel in [r#""Sales"."Order Lines""#, r#""select""#] {
        assert_eq!(
            digest(&src, &client, rel),
            digest(&tgt, &client, rel),
            "{rel} equal on 14 and 18"
        );
    }
    // The identity sequence followed the source.
    psql(
        &tgt,
        &client,
        r#"INSERT INTO "select" ("from") VALUES ('next')"#,
    );
    assert_eq!(
        psql(
            &tgt,
            &client,
            r#"SELECT id FROM "select" WHERE "from" = 'next'"#
        ),
        "8"
    );

    // A failure part way (a row the target's CHECK refuses) leaves the 18 target as it was.
    psql(
        &src,
        &client,
        "CREATE TABLE t (id int PRIMARY KEY, v int); \
         INSERT INTO t SELECT g, g FROM generate_series(1, 10000) g",
    );
    psql(
        &tgt,
        &client,
        "CREATE TABLE t (id int PRIMARY KEY, v int CHECK (v <> 7000)); \
         INSERT INTO t VALUES (1, -1), (2, -2)",
    );
    let before = dump(&tgt, &client);
    let o = pgflip(&["sync", "--source", &src.url(), "--target", &tgt.url(), "t"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("check constraint"), "{}", stderr(&o));
    assert_eq!(dump(&tgt, &client), before, "old rows kept, nothing left");
}

/// A schema using most of what 14 has (odd identifiers included).
const SCHEMA_14: &str = r#"
CREATE SCHEMA app;
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN app.pos AS int CHECK (VALUE > 0);
CREATE TYPE app.pair AS (a int, b text);
CREATE SEQUENCE app.seq START 100 INCREMENT 5;
CREATE TABLE app."Customer" (
    id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    "E-mail" citext UNIQUE, mood app.mood DEFAULT 'ok', n app.pos,
    doubled int GENERATED ALWAYS AS (n * 2) STORED,
    created timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT "name check" CHECK (length("E-mail") > 3));
CREATE TABLE app.orders (
    id bigserial PRIMARY KEY, customer int REFERENCES app."Customer" ON DELETE CASCADE,
    amount numeric(10, 2), note text COLLATE "C", p app.pair);
CREATE INDEX orders_customer ON app.orders (customer) INCLUDE (amount) WHERE amount > 0;
CREATE TABLE app.events (id int, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE app.events_2024 PARTITION OF app.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE VIEW app.big_orders AS SELECT id, amount FROM app.orders WHERE amount > 100;
CREATE MATERIALIZED VIEW app.totals AS SELECT customer, sum(amount) AS s FROM app.orders GROUP BY customer;
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.amount := coalesce(NEW.amount, 0); RETURN NEW; END$$;
CREATE TRIGGER orders_touch BEFORE INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION app.touch();
ALTER TABLE app.orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY mine ON app.orders USING (customer > 0);
CREATE PUBLICATION app_pub FOR TABLE app.orders;
COMMENT ON TABLE app."Customer" IS 'people';
"#;

#[test]
fn schema_diff_apply_from_14_to_18_converges() {
    let Some((src, tgt, client)) = pair("xv_diff", 14, 18) else {
        return;
    };
    psql(&src, &client, SCHEMA_14);
    // The target has an older shape of part of it.
    psql(
        &tgt,
        &client,
        "CREATE SCHEMA app; CREATE TABLE app.orders (id bigserial PRIMARY KEY, amount numeric(8, 2), old_col int)",
    );
    let diff = |extra: &[&str]| schema_diff(&src, &tgt, extra);
    // A dry run changes nothing on the 18 target.
    let before = dump(&tgt, &client);
    let o = diff(&["--dry-run", "--drop"]);
    ok(&o);
    assert_eq!(dump(&tgt, &client), before, "dry run leaves the target");

    // The hazards are the point here (the type change rewrites, the matview is filled).
    ok(&diff(&[
        "--apply",
        "--drop",
        "--allow-hazards",
        "long-lock,replaces-data,rewrites-table",
    ]));
    let o = diff(&["--check", "--drop"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "converged after apply:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    // The applied schema works on 18 as on 14: the same rows go in and the same come out.
    let rows = r#"INSERT INTO app."Customer" ("E-mail", n) VALUES ('Ann@x.org', 2), ('bob@y.org', 3);
        INSERT INTO app.orders (customer, amount, note) VALUES (1, 150, 'a'), (2, NULL, 'b');
        INSERT INTO app.events VALUES (1, '2024-05-01');
        REFRESH MATERIALIZED VIEW app.totals"#;
    psql(&src, &client, rows);
    psql(&tgt, &client, rows);
    for rel in [
        r#"(SELECT id, "E-mail", mood, n, doubled FROM app."Customer")"#,
        // Columns named: added columns come last on the target, as schema diff adds them.
        "(SELECT id, customer, amount, note, p FROM app.orders)",
        "app.big_orders",
        "app.totals",
        "app.events",
    ] {
        assert_eq!(
            digest(&src, &client, rel),
            digest(&tgt, &client, rel),
            "{rel}"
        );
    }
    assert_eq!(
        psql(
            &tgt,
            &client,
            "SELECT count(*) FROM app.orders WHERE amount = 0"
        ),
        "1",
        "the trigger runs on 18"
    );
}

#[test]
fn schema_diff_from_18_to_14_refuses_what_14_cannot_express() {
    let Some((src, tgt, client)) = pair("xv_down", 18, 14) else {
        return;
    };
    // What 14 can express goes through: 18 -> 14 is not refused wholesale.
    psql(
        &src,
        &client,
        // An explicit ACL: on 18 the owner's part of it has MAINTAIN, which 14 lacks.
        r#"CREATE TABLE plain (id int PRIMARY KEY, "Name" text NOT NULL);
           GRANT SELECT ON plain TO PUBLIC"#,
    );
    let run = |extra: &[&str]| schema_diff(&src, &tgt, extra);
    ok(&run(&["--apply"]));
    assert_eq!(run(&["--check"]).status.code(), Some(0));

    // A virtual generated column (18) and UNIQUE NULLS NOT DISTINCT (15): named, with the
    // version, and nothing applied, not even the table 14 could take.
    psql(
        &src,
        &client,
        r#"CREATE TABLE "Odd Table" (a int, "Twice" int GENERATED ALWAYS AS (a * 2) VIRTUAL);
           CREATE TABLE uniq (k int, CONSTRAINT "k once" UNIQUE NULLS NOT DISTINCT (k));
           CREATE TABLE fine (id int)"#,
    );
    // A grant of MAINTAIN (17+); the owner's own MAINTAIN on 18 is no difference.
    ensure_role(&src, &client, "xv_maintainer");
    psql(&src, &client, "GRANT MAINTAIN ON plain TO xv_maintainer");
    let before = dump(&tgt, &client);
    for extra in [&["--apply"][..], &["--dry-run"]] {
        let o = run(extra);
        assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("PostgreSQL 14"), "{err}");
        assert!(
            err.contains(r#"column public."Odd Table"."Twice" uses a virtual generated column (PostgreSQL 18+)"#),
            "{err}"
        );
        assert!(
            err.contains(r#"constraint "k once" on table public.uniq uses UNIQUE NULLS NOT DISTINCT (PostgreSQL 15+)"#),
            "{err}"
        );
        assert!(
            err.contains(
                "the privileges on table public.plain uses a grant of MAINTAIN (PostgreSQL 17+)"
            ),
            "{err}"
        );
        assert!(err.contains("nothing was applied"), "{err}");
        assert_eq!(dump(&tgt, &client), before, "nothing applied");
    }
    assert_eq!(
        psql(
            &tgt,
            &client,
            "SELECT count(*) FROM pg_class WHERE relname IN ('Odd Table', 'uniq', 'fine')"
        ),
        "0"
    );
    // --check still reports the differences (it applies nothing).
    assert_eq!(run(&["--check"]).status.code(), Some(1));
}

fn ensure_role(db: &TestDb, client: &Path, role: &str) {
    psql(
        db,
        client,
        &format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN \
             CREATE ROLE {role} LOGIN; END IF; END $$"
        ),
    );
}

/// Everything pgflip created for migrations: empty when nothing is left behind.
fn migrate_leftovers(db: &TestDb, client: &Path) -> String {
    psql(
        db,
        client,
        "SELECT coalesce(string_agg(x, ', ' ORDER BY x), '') FROM ( \
           SELECT 'schema ' || nspname AS x FROM pg_namespace WHERE nspname LIKE 'pgflip\\_shadow%' \
           UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE 'pgflip\\_migrate%' \
           UNION ALL SELECT 'rel ' || relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = 'pgflip' AND relname LIKE 'migrate\\_%' \
           UNION ALL SELECT 'op ' || id FROM pgflip.operations WHERE kind = 'migrate') s",
    )
}

/// The user's schema (pg_dump 18, pgflip's own schemas left out) and every user table's rows.
fn user_state(db: &TestDb, client: &Path) -> String {
    let out = Command::new(client.join("pg_dump"))
        .args([
            "--schema-only",
            "--exclude-schema=pgflip",
            "--exclude-schema=pgflip_backup_*",
            "-d",
            &db.url(),
        ])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s: String = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n");
    let tables = psql(
        db,
        client,
        "SELECT string_agg(format('%I.%I', n.nspname, c.relname), E'\\n' ORDER BY n.nspname, c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pgflip', 'pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pgflip\\_%'",
    );
    for t in tables.lines() {
        s.push_str(&format!("\n{t}: {}", digest(db, client, t)));
    }
    s
}

/// The new version of the application's database, on 14 (what 14 has: enum, identity, stored
/// generated column, partitions, odd names).
const MIGRATE_SOURCE_14: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE products (id int PRIMARY KEY, name text NOT NULL, price numeric(10,2) CHECK (price >= 0),
    mood mood NOT NULL DEFAULT 'ok', doubled numeric GENERATED ALWAYS AS (price * 2) STORED);
INSERT INTO products (id, name, price) SELECT g, 'product ' || g, g * 1.5 FROM generate_series(1, 500) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, product_id int REFERENCES products, qty int NOT NULL DEFAULT 1);
CREATE INDEX orders_product_idx ON orders (product_id);
INSERT INTO orders (product_id, qty) SELECT 1 + g % 500, g FROM generate_series(1, 2000) g;
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, plan text NOT NULL DEFAULT 'free');
INSERT INTO users VALUES (1, 'source-only@example.com', 'pro');
CREATE TABLE "Mixed Case ""Table""" ("Id" int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "Value" text NOT NULL);
INSERT INTO "Mixed Case ""Table""" ("Value") VALUES ('x'), ('y');
CREATE TABLE events (id int, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO events SELECT g, date '2025-06-01' + g FROM generate_series(1, 400) g;
GRANT SELECT, INSERT, UPDATE, DELETE ON products, orders, users TO xv_mig_app;
GRANT USAGE ON SEQUENCE orders_id_seq TO xv_mig_app;
"#;

/// The live database, on 18, in its older shape. The enum is there already: migrate carries
/// tables, not types (README, "Migrate").
const MIGRATE_TARGET_18: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE products (id int PRIMARY KEY, name text);
INSERT INTO products VALUES (1, 'old');
CREATE TABLE orders (id bigserial PRIMARY KEY, product_id int, qty int);
INSERT INTO orders (product_id, qty) VALUES (1, 1), (1, 2);
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO users SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 300) g;
CREATE TABLE "Mixed Case ""Table""" ("Id" int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "Value" text);
INSERT INTO "Mixed Case ""Table""" ("Value") VALUES ('old');
CREATE TABLE events (id int, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO events VALUES (1, '2025-02-02');
GRANT SELECT, INSERT, UPDATE, DELETE ON products, orders, users TO xv_mig_app;
GRANT USAGE ON SEQUENCE orders_id_seq TO xv_mig_app;
"#;

/// `migrate` from a 14 source to an 18 target (the major-upgrade case): an abort leaves the
/// target as it was; prepare, a write to the preserved table, swap: every table is the
/// source's (rows and schema) with the preserved rows kept; rollback brings the old one back.
#[test]
fn migrate_from_14_to_18_swaps_and_rolls_back() {
    let Some((src, tgt, client)) = pair("xv_migrate", 14, 18) else {
        return;
    };
    assert_eq!((version(&src, &client), version(&tgt, &client)), (14, 18));
    ensure_role(&src, &client, "xv_mig_app");
    ensure_role(&tgt, &client, "xv_mig_app");
    psql(&src, &client, MIGRATE_SOURCE_14);
    psql(&tgt, &client, MIGRATE_TARGET_18);
    let (s, t) = (src.url(), tgt.url());
    let prepare = || {
        pgflip(&[
            "migrate",
            "prepare",
            "--source",
            &s,
            "--target",
            &t,
            "--preserved-tables",
            "users",
        ])
    };
    let before = user_state(&tgt, &client);

    // Abort after prepare: the 18 target as it was, nothing of the migration left.
    ok(&prepare());
    ok(&pgflip(&["migrate", "abort", "--target", &t]));
    assert_eq!(migrate_leftovers(&tgt, &client), "");
    assert_eq!(user_state(&tgt, &client), before, "abort leaves the target");

    ok(&prepare());
    // The application keeps writing the preserved table between prepare and swap.
    psql(
        &tgt,
        &client,
        "INSERT INTO users VALUES (301, 'late@example.com'); DELETE FROM users WHERE id = 5",
    );
    let users = digest(&tgt, &client, "(SELECT id, email FROM users)");
    let out = ok(&pgflip(&["migrate", "swap", "--target", &t]));
    assert!(out.contains("swapped"), "{out}");
    for rel in [
        "products",
        "orders",
        r#""Mixed Case ""Table""""#,
        "events",
        "events_2025",
        "events_2026",
    ] {
        assert_eq!(
            digest(&tgt, &client, rel),
            digest(&src, &client, rel),
            "{rel} on 18 as on 14"
        );
    }
    assert_eq!(
        digest(&tgt, &client, "(SELECT id, email FROM users)"),
        users
    );
    assert_eq!(
        psql(&tgt, &client, "SELECT DISTINCT plan FROM users"),
        "free"
    );
    assert_eq!(migrate_leftovers(&tgt, &client), "");
    // The schema is the source's (on 18: NOT NULL constraints named as 18 names them).
    let o = schema_diff(&src, &tgt, &["--check"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    // The application's role works, and new keys do not collide with copied ones.
    psql(
        &tgt,
        &client,
        "SET ROLE xv_mig_app; INSERT INTO orders (product_id) VALUES (3); RESET ROLE",
    );
    assert_eq!(psql(&tgt, &client, "SELECT max(id) FROM orders"), "2001");
    psql(&tgt, &client, "DELETE FROM orders WHERE id = 2001");

    // Rollback: the old version as it was, with the preserved table's writes it also got.
    ok(&pgflip(&["rollback", "--latest", "--target", &t]));
    psql(
        &tgt,
        &client,
        "DELETE FROM users WHERE id = 301; INSERT INTO users VALUES (5, 'user5@example.com')",
    );
    assert_eq!(user_state(&tgt, &client), before, "rollback restores 18's");
}
