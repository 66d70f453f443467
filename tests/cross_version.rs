//! Source and target on different PostgreSQL major versions (a major upgrade beside the live
//! database): `sync` and `schema diff --apply` from 14 to 18, and `schema diff` from 18 to 14
//! where 14 cannot express what the source has. Each test needs both versions' binaries
//! (`.ci/pg-versions` installs them; CI has them) and skips, saying why, without them.
//!
//! `migrate` across versions belongs here too once migrate exists.

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

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "pgflip failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
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
        r#"CREATE TABLE plain (id int PRIMARY KEY, "Name" text NOT NULL)"#,
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
