//! `pgflip migrate` of a realistic pair: what the new version has beyond its tables (enum,
//! domain, functions used by defaults, a view over two tables, a new materialized view, a
//! trigger, a policy, comments, a `uuid-ossp` default, PostGIS when the server has it) ends on
//! the target, `schema diff --check` is clean after the swap, and the source is read by a role
//! that may only SELECT.

use crate::util::*;

fn digest(db: &TestDb, rel: &str) -> String {
    q(
        db,
        &format!(
            "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') \
             FROM {rel} x"
        ),
    )
}

const SOURCE: &str = r#"
CREATE TYPE order_state AS ENUM ('new', 'paid', 'shipped', 'cancelled');
CREATE DOMAIN positive_qty AS int CHECK (VALUE > 0);
CREATE SEQUENCE invoice_no START 1000;
CREATE FUNCTION next_code() RETURNS text LANGUAGE sql AS $$ SELECT 'C-' || nextval('public.invoice_no') $$;
CREATE TABLE customers (id uuid PRIMARY KEY DEFAULT uuid_generate_v4(), name text NOT NULL, code text NOT NULL DEFAULT next_code());
COMMENT ON TABLE customers IS 'who buys';
COMMENT ON COLUMN customers.name IS 'display name';
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id uuid NOT NULL REFERENCES customers,
  state order_state NOT NULL DEFAULT 'new', qty positive_qty NOT NULL, updated_at timestamptz);
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY orders_visible ON orders FOR SELECT USING (state <> 'cancelled');
CREATE POLICY orders_write ON orders FOR ALL TO mig_rich_app USING (true) WITH CHECK (true);
CREATE VIEW order_view AS SELECT o.id, c.name, o.state, o.qty FROM orders o JOIN customers c ON c.id = o.customer_id;
CREATE MATERIALIZED VIEW order_totals AS SELECT customer_id, sum(qty)::bigint AS total FROM orders GROUP BY customer_id;
CREATE UNIQUE INDEX order_totals_customer ON order_totals (customer_id);
CREATE SCHEMA reports;
CREATE TABLE reports.daily (d date PRIMARY KEY);
CREATE SCHEMA sales;
CREATE TABLE sales.events (id int, at date NOT NULL, state order_state, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE sales.events_2025 PARTITION OF sales.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO customers (name) SELECT 'customer ' || g FROM generate_series(1, 50) g;
INSERT INTO orders (customer_id, qty, state)
  SELECT (SELECT id FROM customers ORDER BY name LIMIT 1 OFFSET g % 50), 1 + g % 7,
         (ARRAY['new','paid','shipped','cancelled']::order_state[])[1 + g % 4]
  FROM generate_series(1, 400) g;
INSERT INTO sales.events SELECT g, date '2025-03-01' + g, 'paid' FROM generate_series(1, 100) g;
REFRESH MATERIALIZED VIEW order_totals;
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, orders TO mig_rich_app;
GRANT SELECT ON order_view, order_totals TO mig_rich_app;
GRANT USAGE ON SEQUENCE orders_id_seq, invoice_no TO mig_rich_app;
GRANT EXECUTE ON FUNCTION next_code() TO mig_rich_app;
"#;

const TARGET: &str = r#"
CREATE SCHEMA reports;
CREATE TYPE order_state AS ENUM ('new', 'paid', 'cancelled');
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TABLE customers (id uuid PRIMARY KEY, name text);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id uuid REFERENCES customers, state order_state, qty int);
CREATE VIEW order_view AS SELECT o.id, o.state FROM orders o;
CREATE MATERIALIZED VIEW order_totals AS SELECT customer_id, count(*) AS total FROM orders GROUP BY customer_id;
INSERT INTO customers VALUES ('00000000-0000-0000-0000-000000000001', 'old');
INSERT INTO orders (customer_id, state, qty) VALUES ('00000000-0000-0000-0000-000000000001', 'paid', 3);
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, orders TO mig_rich_app;
GRANT SELECT ON order_view TO mig_rich_app;
GRANT USAGE ON SEQUENCE orders_id_seq TO mig_rich_app;
"#;

fn roles(db: &TestDb) {
    db.psql(
        "DO $$ BEGIN \
         IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mig_rich_app') THEN CREATE ROLE mig_rich_app LOGIN; END IF; \
         IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mig_rich_reader') THEN CREATE ROLE mig_rich_reader LOGIN; END IF; \
         END $$",
    );
}

fn check(src: &TestDb, tgt: &TestDb) -> std::process::Output {
    let (s, t) = (src.url(), tgt.url());
    pgflip(&["schema", "diff", "--source", &s, "--target", &t, "--check"])
}

#[test]
fn a_realistic_migration_ends_with_the_sources_schema_read_by_a_select_only_role() {
    let src = fresh_db("mig_rich_src");
    let tgt = fresh_db("mig_rich_tgt");
    roles(&src);
    src.psql("CREATE EXTENSION \"uuid-ossp\"");
    src.psql(SOURCE);
    let postgis = has_extension(
        &src,
        "postgis",
        "the PostGIS part of the realistic migration",
    );
    if postgis {
        src.psql(
            "CREATE EXTENSION postgis; \
             CREATE TABLE sales.shops (id int PRIMARY KEY, at geometry(Point, 4326) NOT NULL); \
             CREATE INDEX shops_at ON sales.shops USING gist (at); \
             INSERT INTO sales.shops SELECT g, ST_SetSRID(ST_MakePoint(g, g), 4326) FROM generate_series(1, 30) g;",
        );
    }
    // The source is read by a role that may only read it.
    src.psql(
        "GRANT USAGE ON SCHEMA public, sales, reports TO mig_rich_reader; \
         GRANT SELECT ON ALL TABLES IN SCHEMA public, sales, reports TO mig_rich_reader; \
         GRANT SELECT ON ALL SEQUENCES IN SCHEMA public, sales TO mig_rich_reader;",
    );
    tgt.psql(TARGET);
    let reader = src.url().replacen("postgres@", "mig_rich_reader@", 1);
    let t = tgt.url();
    let before = tgt.pg_dump(&["--schema-only", "--exclude-schema=pgflip*"]);
    let view_before = q(&tgt, "SELECT pg_get_viewdef('order_view'::regclass)");
    let totals_before = q(&tgt, "SELECT pg_get_viewdef('order_totals'::regclass)");
    let touch_before = q(&tgt, "SELECT prosrc FROM pg_proc WHERE proname = 'touch'");

    // Abort first: everything prepare added (extension, type, functions, sequence) goes again.
    let s = src.url();
    ok(&pgflip(&[
        "migrate", "prepare", "--source", &s, "--target", &t,
    ]));
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_extension WHERE extname = 'uuid-ossp'"
        ),
        "1"
    );
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM orders"),
        "1",
        "live untouched"
    );
    ok(&pgflip(&["migrate", "abort", "--target", &t]));
    let after_abort = tgt.pg_dump(&["--schema-only", "--exclude-schema=pgflip*"]);
    // PostgreSQL cannot remove an enum label: the one prepare added stays.
    let expected = before.replace(
        "'new',\n    'paid',\n    'cancelled'",
        "'new',\n    'paid',\n    'shipped',\n    'cancelled'",
    );
    assert_eq!(after_abort, expected, "abort left the target changed");

    // A policy that hides rows from the reading role is an error, never a silent partial
    // copy (row_security is off on the source sessions); nothing is left on the target.
    let o = pgflip(&["migrate", "prepare", "--source", &reader, "--target", &t]);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(stderr(&o).contains("row-level security"), "{}", stderr(&o));
    assert_eq!(
        tgt.pg_dump(&["--schema-only", "--exclude-schema=pgflip*"]),
        expected,
        "a failed prepare left the target changed"
    );
    src.psql("ALTER ROLE mig_rich_reader BYPASSRLS");
    ok(&pgflip(&[
        "migrate", "prepare", "--source", &reader, "--target", &t,
    ]));
    // Status says beforehand what a rollback will keep.
    let st = ok(&pgflip(&["migrate", "status", "--target", &t]));
    assert!(
        st.contains("a rollback after the swap restores the old views")
            && st.contains("next_code()")
            && st.contains("enum labels cannot be removed"),
        "{st}"
    );
    // The materialized view whose definition changed was built beside during prepare: the
    // swap's locked transaction builds and refreshes nothing.
    let dry = ok(&pgflip(&["migrate", "swap", "--dry-run", "--target", &t]));
    assert!(
        dry.contains("order_totals")
            && !dry.contains("CREATE MATERIALIZED VIEW")
            && !dry.contains("REFRESH"),
        "{dry}"
    );
    let out = ok(&pgflip(&["migrate", "swap", "--target", &t]));
    assert!(out.contains("swapped"), "{out}");
    let o = check(&src, &tgt);
    assert_eq!(
        o.status.code(),
        Some(0),
        "schema diff after the swap:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    for rel in [
        "customers",
        "orders",
        "order_view",
        "order_totals",
        "sales.events",
    ] {
        assert_eq!(digest(&tgt, rel), digest(&src, rel), "{rel}");
    }
    if postgis {
        assert_eq!(digest(&tgt, "sales.shops"), digest(&src, "sales.shops"));
    }
    // The application's role reads and writes the new version; defaults, trigger, policy work.
    let app = tgt.url().replacen("postgres@", "mig_rich_app@", 1);
    let out = psql_url(
        &app,
        &[
            "INSERT INTO customers (name) VALUES ('new one') RETURNING code",
            "INSERT INTO orders (customer_id, qty) SELECT id, 2 FROM customers WHERE name = 'new one'",
            "UPDATE orders SET qty = 3 WHERE customer_id = (SELECT id FROM customers WHERE name = 'new one') \
             RETURNING updated_at IS NOT NULL",
            "SELECT count(*) FROM order_view WHERE name = 'new one'",
            "SELECT count(*) FROM order_totals",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("C-"),
        "default from the new function: {out}"
    );
    assert_eq!(lines[1], "t", "the new trigger ran: {out}");
    assert_eq!(lines[2], "1", "the new view reads the new tables: {out}");

    // Rollback brings the old version back, beyond its tables too: the old view definition,
    // the old trigger function's body; the migration's materialized view and the schema it
    // created go. What it cannot take back (the added enum label, the domain, function,
    // sequence and extension the retired tables use) stays, and the rollback says so.
    let o = pgflip(&["rollback", "--latest", "--target", &t]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("keeps what the migration added") && stderr(&o).contains("next_code"),
        "{}",
        stderr(&o)
    );
    assert_eq!(q(&tgt, "SELECT count(*) FROM orders"), "1");
    assert_eq!(
        q(&tgt, "SELECT pg_get_viewdef('order_view'::regclass)"),
        view_before
    );
    assert_eq!(
        q(&tgt, "SELECT prosrc FROM pg_proc WHERE proname = 'touch'"),
        touch_before
    );
    assert_eq!(
        q(&tgt, "SELECT pg_get_viewdef('order_totals'::regclass)"),
        totals_before,
        "the old materialized view is flipped back"
    );
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'sales'"
        ),
        "0",
        "the empty schema the migration created is dropped"
    );
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'reports'"
        ),
        "1",
        "an empty schema the migration did not create stays"
    );
    let out = psql_url(
        &app,
        &[
            "SELECT count(*) FROM order_view",
            "INSERT INTO orders (customer_id, state, qty) VALUES ('00000000-0000-0000-0000-000000000001', 'paid', 1) RETURNING qty",
        ],
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), ["1", "1"], "{out}");
    // Only what the rollback said it keeps differs from the target before the migration.
    let mut dump = tgt.pg_dump(&["--schema-only", "--exclude-schema=pgflip*"]);
    for kept in [
        "next_code()",
        "positive_qty",
        "invoice_no",
        "uuid-ossp",
        "uuid_generate",
        "postgis",
        "EXTENSION",
        "orders_id_seq", // moved past the new version's values
    ] {
        dump = dump
            .split("\n\n")
            .filter(|b| !b.contains(kept))
            .collect::<Vec<_>>()
            .join("\n\n");
    }
    let mut want = expected.clone();
    for kept in ["orders_id_seq", "EXTENSION"] {
        want = want
            .split("\n\n")
            .filter(|b| !b.contains(kept))
            .collect::<Vec<_>>()
            .join("\n\n");
    }
    // Grants follow the live relation in every flip (the application's access never depends
    // on which version is live): those the migration gave stay on the old relations.
    let norm = |d: &str| {
        d.lines()
            .filter(|l| {
                !l.is_empty()
                    && *l != "--"
                    && !l.contains("TO mig_rich_reader;")
                    && !l.contains("ON TABLE public.order_totals TO mig_rich_app")
                    && !l.contains("TABLE order_totals; Type: ACL")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (dump, want) = (norm(&dump), norm(&want));
    assert_eq!(dump, want, "{}", line_diff(&want, &dump));

    // The rollback of the rollback redoes the migration's schema step.
    ok(&pgflip(&["rollback", "--latest", "--target", &t]));
    let o = check(&src, &tgt);
    assert_eq!(
        o.status.code(),
        Some(0),
        "schema diff after the rollback of the rollback:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    // (The one built beside is flipped back in, with its rows as built.)
    assert_eq!(digest(&tgt, "order_totals"), digest(&src, "order_totals"));
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM order_view WHERE name = 'new one'"
        ),
        "1"
    );
}

/// Runs SQL through psql as the URL's user.
fn psql_url(url: &str, statements: &[&str]) -> String {
    let bin = server().bindir().join("psql");
    let psql = if bin.exists() {
        bin
    } else {
        newest_client_bindir()
            .map(|d| d.join("psql"))
            .unwrap_or_else(|| "psql".into())
    };
    let mut cmd = std::process::Command::new(psql);
    cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", url]);
    for s in statements {
        cmd.args(["-c", s]);
    }
    let o = cmd.output().expect("psql");
    assert!(
        o.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// 63 bytes, mixed case: the longest name PostgreSQL keeps.
const LONG: &str = "Long_Mixed_Case_Table_Name_That_Uses_All_Sixty_Three_Bytes_Abcd";

fn odd_tables(extra_rows: i32) -> String {
    let mut sql = String::new();
    for t in [
        "shadows", "backups", "shadow_x", "backup_x", "pgflip_x", LONG,
    ] {
        sql.push_str(&format!(
            "CREATE TABLE \"{t}\" (id int PRIMARY KEY, v text); \
             INSERT INTO \"{t}\" SELECT g, 'v' || g FROM generate_series(1, {extra_rows}) g;"
        ));
    }
    sql
}

/// Every user relation with its row count, and the tables' structure: what must come back.
fn tables_and_rows(db: &TestDb) -> String {
    let rels = q(
        db,
        "SELECT string_agg(format('%I.%I', n.nspname, c.relname), E'\\n' ORDER BY 1) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' \
           AND n.nspname <> 'pgflip' AND n.nspname NOT LIKE 'pgflip\\_%'",
    );
    let mut out = db.pg_dump(&["--schema-only", "--exclude-schema=pgflip*"]);
    for r in rels.lines() {
        out.push_str(&format!("\n{r}: {}", digest(db, r)));
    }
    // pg_dump breaks ties by oid, and a rollback brings back other oids: compare as a set of
    // lines (with their counts).
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

#[test]
fn extra_tables_are_retired_and_come_back_on_rollback_twenty_cycles_and_odd_names_survive() {
    let src = fresh_db("mig_extra_src");
    let tgt = fresh_db("mig_extra_tgt");
    src.psql(&format!(
        "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, 'new' FROM generate_series(1, 20) g; \
         CREATE TABLE added (id int PRIMARY KEY, a_id int REFERENCES a); INSERT INTO added SELECT g, g FROM generate_series(1, 20) g; \
         {}",
        odd_tables(7)
    ));
    tgt.psql(&format!(
        "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a VALUES (1, 'old'); \
         CREATE TABLE old_only (id int PRIMARY KEY, a_id int REFERENCES a); INSERT INTO old_only VALUES (1, 1); \
         CREATE TABLE \"Old Only \"\"2\"\"\" (id int); INSERT INTO \"Old Only \"\"2\"\"\" VALUES (5); \
         {}",
        odd_tables(3)
    ));
    let (s, t) = (src.url(), tgt.url());
    let before = tables_and_rows(&tgt);
    let start = |extra: &[&str]| {
        let mut args = vec!["migrate", "start", "--source", &s, "--target", &t];
        args.extend_from_slice(extra);
        ok(&pgflip(&args))
    };
    let rollback = || ok(&pgflip(&["rollback", "--latest", "--target", &t]));
    let is_source = |db: &TestDb| {
        for r in [
            "a", "added", "shadows", "backups", "shadow_x", "backup_x", "pgflip_x",
        ] {
            assert_eq!(digest(db, r), digest(&src, r), "{r}");
        }
        let long = format!("\"{LONG}\"");
        assert_eq!(digest(db, &long), digest(&src, &long));
        assert_eq!(q(db, "SELECT to_regclass('public.old_only') IS NULL"), "t");
        let o = check(&src, db);
        assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    };

    // The swap retires what the source lacks, with the generation.
    start(&[]);
    is_source(&tgt);
    let backup = q(
        &tgt,
        "SELECT backup_schema FROM pgflip.generations ORDER BY id DESC LIMIT 1",
    );
    assert_eq!(
        q(&tgt, &format!("SELECT count(*) FROM \"{backup}\".old_only")),
        "1"
    );
    // Rollback: the target's own tables come back, the added one is retired.
    rollback();
    let now = tables_and_rows(&tgt);
    assert!(
        now == before,
        "rollback did not restore the target:\n{}",
        line_diff(&before, &now)
    );
    // Rollback of the rollback: the new version again.
    rollback();
    is_source(&tgt);
    // A second migration right after, and its rollback.
    start(&[]);
    is_source(&tgt);
    rollback();
    is_source(&tgt);

    // From a clean start: 20 migrate / rollback cycles on one target.
    let tgt2 = fresh_db("mig_cycles_tgt");
    tgt2.psql(&format!(
        "CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a VALUES (1, 'old'); \
         CREATE TABLE old_only (id int PRIMARY KEY, a_id int REFERENCES a); INSERT INTO old_only VALUES (1, 1); \
         {}",
        odd_tables(3)
    ));
    let before2 = tables_and_rows(&tgt2);
    let t2 = tgt2.url();
    for i in 0..20 {
        ok(&pgflip(&[
            "migrate", "start", "--source", &s, "--target", &t2,
        ]));
        is_source(&tgt2);
        ok(&pgflip(&["rollback", "--latest", "--target", &t2]));
        let now = tables_and_rows(&tgt2);
        assert!(
            now == before2,
            "cycle {i}: the rollback did not restore the target:\n{}",
            line_diff(&before2, &now)
        );
    }
    assert_eq!(q(&tgt2, "SELECT count(*) FROM pgflip.generations"), "40");
    // With --keep-extra-tables the target's own tables stay live.
    ok(&pgflip(&[
        "migrate",
        "start",
        "--source",
        &s,
        "--target",
        &t2,
        "--keep-extra-tables",
    ]));
    assert_eq!(digest(&tgt2, "a"), digest(&src, "a"));
    assert_eq!(q(&tgt2, "SELECT count(*) FROM old_only"), "1");
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
