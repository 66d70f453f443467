//! `pgflip schema diff` against real databases: every case loads an "old" schema into the
//! target and a "new" one into the source, applies the diff, and checks that the two schemas
//! are then the same (`pg_dump --schema-only` as sets of lines, as the conformance script does)
//! and that a second comparison finds nothing. The scripts are also checked for the online
//! forms (CONCURRENTLY, NOT VALID + VALIDATE, ADD VALUE in place) and the dependency order.

use std::collections::BTreeSet;
use std::process::Output;

use crate::util::*;

struct Pair {
    src: TestDb,
    tgt: TestDb,
}

fn pair(hint: &str, old: &str, new: &str) -> Pair {
    let src = fresh_db(&format!("sd_{hint}_src"));
    let tgt = fresh_db(&format!("sd_{hint}_tgt"));
    if !old.is_empty() {
        tgt.psql(old);
    }
    if !new.is_empty() {
        src.psql(new);
    }
    Pair { src, tgt }
}

impl Pair {
    fn run(&self, extra: &[&str]) -> Output {
        let (s, t) = (self.src.url(), self.tgt.url());
        let mut args = vec!["schema", "diff", "--source", &s, "--target", &t];
        args.extend_from_slice(extra);
        pgflip(&args)
    }

    fn script(&self, extra: &[&str]) -> String {
        let mut args = vec!["--dry-run"];
        args.extend_from_slice(extra);
        let o = self.run(&args);
        assert!(o.status.success(), "dry-run failed: {}", stderr(&o));
        stdout(&o)
    }

    fn apply(&self, extra: &[&str]) {
        // These cases are about convergence; hazard gating has tests of its own.
        let mut args = vec!["--apply", "--allow-hazards", "all"];
        args.extend_from_slice(extra);
        let o = self.run(&args);
        assert!(o.status.success(), "apply failed: {}", stderr(&o));
    }

    fn check(&self, extra: &[&str]) -> i32 {
        let mut args = vec!["--check"];
        args.extend_from_slice(extra);
        self.run(&args).status.code().unwrap_or(-1)
    }

    fn assert_same_schema(&self) {
        let (a, b) = (schema_lines(&self.src), schema_lines(&self.tgt));
        let only_src: Vec<_> = a.difference(&b).collect();
        let only_tgt: Vec<_> = b.difference(&a).collect();
        assert!(
            only_src.is_empty() && only_tgt.is_empty(),
            "schemas differ:\nonly in source: {only_src:#?}\nonly in target: {only_tgt:#?}"
        );
    }

    /// Dry-run script, then apply with `extra`, then the schemas must match and `--check`
    /// must find nothing.
    fn converge(&self, extra: &[&str]) -> String {
        let script = self.script(extra);
        self.apply(extra);
        self.assert_same_schema();
        assert_eq!(self.check(&[]), 0, "differences left after apply");
        script
    }
}

fn schema_lines(db: &TestDb) -> BTreeSet<String> {
    db.pg_dump(&["--schema-only", "--no-owner"])
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("--"))
        .map(|l| l.trim_end().trim_end_matches(',').to_string())
        .collect()
}

fn pos(script: &str, needle: &str) -> usize {
    script
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in script:\n{script}"))
}

#[test]
fn seed_examples_converge() {
    let p = pair(
        "seed",
        "CREATE TABLE extra (id int PRIMARY KEY);
         CREATE TABLE users (id int PRIMARY KEY, name text, legacy text, age text);
         CREATE TABLE orders (id int PRIMARY KEY, user_id int, total numeric);
         CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
         CREATE INDEX orders_total ON orders (total);",
        "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, age integer, email text);
         CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users(id), total numeric CHECK (total >= 0));
         CREATE TABLE missing (id int PRIMARY KEY, note text);
         CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 2';
         CREATE FUNCTION trg() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
         CREATE INDEX orders_user ON orders (user_id);
         CREATE TRIGGER t BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION trg();",
    );
    assert_eq!(p.check(&[]), 1);
    let s = p.converge(&["--drop"]);
    for needle in [
        "CREATE TABLE public.missing",
        "DROP TABLE IF EXISTS public.extra",
        "ADD COLUMN email text",
        "DROP COLUMN IF EXISTS legacy",
        "ALTER COLUMN age TYPE integer",
        "CREATE OR REPLACE FUNCTION public.f()",
        "FOREIGN KEY (user_id) REFERENCES public.users(id) NOT VALID",
        "VALIDATE CONSTRAINT orders_user_id_fkey",
        "CREATE INDEX CONCURRENTLY orders_user ON public.orders",
        "DROP INDEX IF EXISTS public.orders_total",
        "CREATE TRIGGER t BEFORE INSERT ON public.orders",
        "deletes data",
        "-- lock: ACCESS EXCLUSIVE on public.users",
    ] {
        pos(&s, needle);
    }
    // SET NOT NULL goes through a validated check. From 18, where a NOT NULL is a named
    // constraint, it is ADD CONSTRAINT <the source's name> NOT NULL.
    let set_not_null = if s.contains("ALTER COLUMN name SET NOT NULL") {
        "ALTER COLUMN name SET NOT NULL"
    } else {
        "ADD CONSTRAINT users_name_not_null NOT NULL name;"
    };
    assert!(pos(&s, "CHECK (name IS NOT NULL) NOT VALID") < pos(&s, set_not_null));
}

#[test]
fn identical_databases_give_an_empty_script_and_check_0() {
    let sql = "CREATE SCHEMA app; CREATE TABLE app.t (id serial PRIMARY KEY, v text);
               CREATE VIEW app.v AS SELECT id FROM app.t;";
    let p = pair("identical", sql, sql);
    assert_eq!(p.check(&[]), 0);
    let s = p.script(&[]);
    assert!(!s.contains("BEGIN"), "{s}");
    assert!(s.contains("End of script: 0 statements"), "{s}");
}

#[test]
fn dry_run_changes_nothing_and_writes_no_file() {
    let p = pair(
        "dryrun",
        "CREATE TABLE a (id int);",
        "CREATE TABLE b (id int);",
    );
    let dir = tempfile::tempdir().unwrap();
    let before = p.tgt.dump();
    let (s, t) = (p.src.url(), p.tgt.url());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pgflip"))
        .args([
            "schema",
            "diff",
            "--source",
            &s,
            "--target",
            &t,
            "--dry-run",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("CREATE TABLE public.b"));
    assert_eq!(p.tgt.dump(), before);
    assert!(!dir.path().join("alter.sql").exists());
}

#[test]
fn writes_alter_sql_by_default_with_a_header_without_password() {
    let p = pair("output", "", "CREATE TABLE b (id int);");
    let dir = tempfile::tempdir().unwrap();
    let t = p.tgt.url().replace("postgres@", "postgres:sekrit123@");
    let s = p.src.url();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pgflip"))
        .args(["schema", "diff", "--source", &s, "--target", &t])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(dir.path().join("alter.sql")).unwrap();
    assert!(text.starts_with("-- pgflip "), "{text}");
    assert!(text.contains("-- source: ") && text.contains("-- target: "));
    assert!(text.contains("CREATE TABLE public.b"));
    assert!(text.contains("End of script"));
    assert!(!text.contains("sekrit123"));
    assert!(!stdout(&o).contains("sekrit123") && !stderr(&o).contains("sekrit123"));
    // Nothing applied.
    assert_eq!(p.check(&[]), 1);
}

#[tokio::test]
async fn tombstones_by_default_then_cleanup() {
    let p = pair(
        "tombstones",
        "CREATE TABLE gone (id int PRIMARY KEY, v text);
         CREATE TABLE kept (id int PRIMARY KEY, old_col text NOT NULL);
         INSERT INTO gone VALUES (1, 'x'); INSERT INTO kept VALUES (1, 'y');",
        "CREATE TABLE kept (id int PRIMARY KEY);",
    );
    let s = p.script(&[]);
    assert!(s.contains("RENAME TO gone_dropped_"), "{s}");
    assert!(
        s.contains("RENAME COLUMN old_col TO old_col_dropped_"),
        "{s}"
    );
    assert!(s.contains("-- DROP TABLE public.gone_dropped_"), "{s}");
    assert!(!s.contains("DROP TABLE IF EXISTS"), "{s}");
    p.apply(&[]);
    // Data kept, the live schema matches, a second diff is empty.
    let c = p.tgt.client().await;
    let stones = pgflip::schemadiff::tombstones::list(&c).await.unwrap();
    assert_eq!(stones.len(), 2, "{stones:?}");
    let gone = stones.iter().find(|t| t.column.is_none()).unwrap();
    let n: i64 = c
        .query_one(
            &format!(
                "SELECT count(*) FROM {}",
                pgflip::ident::qualified(&gone.schema, &gone.table)
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // The renamed column no longer blocks inserts.
    p.tgt.psql("INSERT INTO kept (id) VALUES (2);");
    assert_eq!(p.check(&[]), 0);
    assert_eq!(p.script(&[]).matches("BEGIN").count(), 0);
    // Cleanup through the command: nothing is older than yesterday; a dry run for tomorrow
    // changes nothing; then everything older than tomorrow goes.
    let url = p.tgt.url();
    let day = |d: i64| {
        (chrono::Utc::now() + chrono::Duration::days(d))
            .format("%Y-%m-%d")
            .to_string()
    };
    let (yesterday, tomorrow) = (day(-1), day(1));
    let o = pgflip(&[
        "cleanup",
        "--dropped",
        "--before",
        &yesterday,
        "--target",
        &url,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("no tombstones to drop"),
        "{}",
        stdout(&o)
    );
    let before = p.tgt.dump();
    let o = pgflip(&[
        "cleanup",
        "--dropped",
        "--before",
        &tomorrow,
        "--target",
        &url,
        "--dry-run",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("DROP TABLE IF EXISTS public.gone_dropped_"),
        "{}",
        stdout(&o)
    );
    assert_eq!(before, p.tgt.dump(), "--dry-run changed the target");
    let o = pgflip(&[
        "cleanup",
        "--dropped",
        "--before",
        &tomorrow,
        "--target",
        &url,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));
    assert!(pgflip::schemadiff::tombstones::list(&c)
        .await
        .unwrap()
        .is_empty());
    p.assert_same_schema();
}

#[test]
fn enums_gain_values_in_place_at_the_right_position() {
    let p = pair(
        "enum_add",
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE t (m mood DEFAULT 'sad');",
        "CREATE TYPE mood AS ENUM ('angry', 'sad', 'ok', 'happy', 'ecstatic');
         CREATE TABLE t (m mood DEFAULT 'sad');",
    );
    let s = p.converge(&[]);
    pos(&s, "ADD VALUE 'angry' BEFORE 'sad'");
    pos(&s, "ADD VALUE 'ok' AFTER 'sad'");
    pos(&s, "ADD VALUE 'ecstatic' AFTER 'happy'");
    assert!(!s.contains("CREATE TYPE"), "{s}");
    assert!(s.contains("-- runs outside a transaction"));

    // A removed value: the type is recreated and the column moved over.
    let p = pair(
        "enum_remove",
        "CREATE TYPE mood AS ENUM ('sad', 'meh', 'happy');
         CREATE TABLE t (m mood DEFAULT 'sad'); INSERT INTO t VALUES ('happy');",
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE TABLE t (m mood DEFAULT 'sad');",
    );
    let s = p.converge(&[]);
    pos(&s, "CREATE TYPE public.mood AS ENUM");
    assert_eq!(p.tgt.psql("SELECT m FROM t").trim(), "happy");
}

#[test]
fn domains_composite_and_range_types() {
    let p = pair(
        "types",
        "CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
         CREATE TYPE pair AS (a int, b text);
         CREATE TYPE fr AS RANGE (subtype = float8);
         CREATE TABLE t (n posint, p pair);",
        "CREATE DOMAIN posint AS integer DEFAULT 1 NOT NULL CONSTRAINT big CHECK (VALUE > 10);
         CREATE TYPE pair AS (a int, c date);
         CREATE TYPE fr AS RANGE (subtype = float8);
         CREATE TYPE ir AS RANGE (subtype = int4);
         CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%');
         CREATE TABLE t (n posint, p pair, e email);",
    );
    let s = p.converge(&["--drop"]);
    pos(&s, "ALTER DOMAIN public.posint ADD CONSTRAINT big");
    pos(&s, "ALTER TYPE public.pair ADD ATTRIBUTE c date");
    pos(&s, "CREATE TYPE public.ir AS RANGE");
}

#[test]
fn sequences_and_their_options() {
    let p = pair(
        "sequences",
        "CREATE SEQUENCE s1 INCREMENT 1; CREATE SEQUENCE gone_seq;
         CREATE TABLE t (id serial);",
        "CREATE SEQUENCE s1 INCREMENT 5 MINVALUE 5 MAXVALUE 5000 CACHE 10 CYCLE START 7;
         CREATE SEQUENCE s2 AS smallint;
         CREATE TABLE t (id serial, n bigint DEFAULT nextval('s2'));",
    );
    let s = p.converge(&["--drop"]);
    pos(&s, "ALTER SEQUENCE public.s1 INCREMENT BY 5");
    pos(&s, "DROP SEQUENCE IF EXISTS public.gone_seq");
    // The sequence exists before the default that uses it.
    assert!(pos(&s, "CREATE SEQUENCE public.s2") < pos(&s, "nextval('public.s2'"));
}

#[test]
fn columns_default_not_null_identity_generated_collation() {
    let p = pair(
        "columns",
        "CREATE TABLE t (id int, a text DEFAULT 'x', b int NOT NULL, c text,
                         g int GENERATED ALWAYS AS (b * 2) STORED,
                         i int GENERATED BY DEFAULT AS IDENTITY, k int);",
        "CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY, a text DEFAULT 'y', b int, c text COLLATE \"C\",
                         g int GENERATED ALWAYS AS (b * 3) STORED,
                         i int GENERATED ALWAYS AS IDENTITY (INCREMENT 2), k int NOT NULL);",
    );
    let s = p.converge(&["--drop"]);
    pos(&s, "ADD GENERATED ALWAYS AS IDENTITY");
    pos(&s, "SET DEFAULT 'y'::text");
    pos(&s, "ALTER COLUMN b DROP NOT NULL");
    pos(&s, "COLLATE \"C\"");
    pos(&s, "SET GENERATED ALWAYS SET INCREMENT BY 2");
    pos(&s, "CHECK (k IS NOT NULL) NOT VALID");
}

#[test]
fn partitions_attach_detach_and_new() {
    let p = pair(
        "partitions",
        "CREATE TABLE m (id int, d date NOT NULL) PARTITION BY RANGE (d);
         CREATE TABLE m_2020 PARTITION OF m FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
         CREATE TABLE m_2021 PARTITION OF m FOR VALUES FROM ('2021-01-01') TO ('2022-01-01');
         CREATE TABLE loose (id int, d date NOT NULL);",
        "CREATE TABLE m (id int, d date NOT NULL, extra text) PARTITION BY RANGE (d);
         CREATE TABLE m_2020 PARTITION OF m FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
         CREATE TABLE m_2022 PARTITION OF m FOR VALUES FROM ('2022-01-01') TO ('2023-01-01');
         CREATE TABLE m_2021 (id int, d date NOT NULL);
         CREATE TABLE loose (id int, d date NOT NULL, extra text);
         ALTER TABLE m ATTACH PARTITION loose FOR VALUES FROM ('2019-01-01') TO ('2020-01-01');
         CREATE INDEX m_d ON m (d);",
    );
    let s = p.converge(&["--drop"]);
    pos(&s, "DETACH PARTITION public.m_2021");
    pos(&s, "ATTACH PARTITION public.loose");
    // A new partition of an existing table: created on its own, then attached.
    assert!(pos(&s, "CREATE TABLE public.m_2022") < pos(&s, "ATTACH PARTITION public.m_2022"));
    // No CONCURRENTLY on a partitioned table.
    assert!(!s.contains("CONCURRENTLY m_d"), "{s}");
}

#[test]
fn constraints_of_all_kinds() {
    let p = pair(
        "constraints",
        "CREATE EXTENSION IF NOT EXISTS btree_gist;
         CREATE TABLE p (id int PRIMARY KEY, code text);
         CREATE TABLE c (id int, pid int, r int4range, CONSTRAINT old_check CHECK (id > 0));",
        "CREATE EXTENSION IF NOT EXISTS btree_gist;
         CREATE TABLE p (id int PRIMARY KEY, code text UNIQUE);
         CREATE TABLE c (id int PRIMARY KEY, pid int REFERENCES p(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
                         r int4range, CONSTRAINT new_check CHECK (id > 1),
                         CONSTRAINT no_overlap EXCLUDE USING gist (r WITH &&));",
    );
    let s = p.converge(&["--drop"]);
    pos(&s, "ADD CONSTRAINT p_code_key UNIQUE (code)");
    pos(&s, "ADD CONSTRAINT c_pkey PRIMARY KEY (id)");
    pos(&s, "DEFERRABLE INITIALLY DEFERRED NOT VALID");
    pos(&s, "ADD CONSTRAINT new_check CHECK ((id > 1)) NOT VALID");
    pos(&s, "EXCLUDE USING gist");
    pos(&s, "DROP CONSTRAINT IF EXISTS old_check");
}

#[test]
fn indexes_concurrently_only_on_existing_plain_tables() {
    let p = pair(
        "indexes",
        "CREATE TABLE t (a int, b text); CREATE INDEX t_changed ON t (a);",
        "CREATE TABLE t (a int, b text); CREATE INDEX t_changed ON t (a, b);
         CREATE UNIQUE INDEX t_b ON t (lower(b)) WHERE a > 0;
         CREATE TABLE n (x int); CREATE INDEX n_x ON n (x);
         CREATE MATERIALIZED VIEW mv AS SELECT a FROM t; CREATE INDEX mv_a ON mv (a);",
    );
    let s = p.converge(&["--drop"]);
    pos(&s, "CREATE UNIQUE INDEX CONCURRENTLY t_b ON public.t");
    pos(&s, "CREATE INDEX CONCURRENTLY t_changed ON public.t");
    pos(&s, "CREATE INDEX n_x ON public.n");
    pos(&s, "CREATE INDEX mv_a ON public.mv");
    assert!(pos(&s, "DROP INDEX IF EXISTS public.t_changed") < pos(&s, "CONCURRENTLY t_changed"));
}

#[test]
fn views_over_a_retyped_column_are_dropped_first_and_recreated_after() {
    let p = pair(
        "views",
        "CREATE TABLE t (id int, v int);
         CREATE VIEW v1 AS SELECT id, v FROM t;
         CREATE VIEW v2 AS SELECT v FROM v1;
         CREATE MATERIALIZED VIEW mv AS SELECT id FROM t;
         CREATE VIEW app AS SELECT id FROM t;",
        "CREATE TABLE t (id int, v bigint);
         CREATE VIEW v1 AS SELECT id, v FROM t;
         CREATE VIEW v2 AS SELECT v FROM v1;
         CREATE MATERIALIZED VIEW mv AS SELECT id, v FROM t;
         CREATE VIEW app AS SELECT id, v FROM t;",
    );
    let s = p.converge(&["--drop"]);
    let retype = pos(&s, "ALTER COLUMN v TYPE bigint");
    assert!(pos(&s, "DROP VIEW IF EXISTS public.v2") < pos(&s, "DROP VIEW IF EXISTS public.v1"));
    assert!(pos(&s, "DROP VIEW IF EXISTS public.v1") < retype);
    assert!(retype < pos(&s, "CREATE VIEW public.v1"));
    assert!(pos(&s, "CREATE VIEW public.v1") < pos(&s, "CREATE VIEW public.v2"));
    pos(&s, "CREATE MATERIALIZED VIEW public.mv");
}

#[test]
fn only_what_uses_a_retyped_or_dropped_column_is_recreated() {
    let common = "CREATE VIEW uses_a AS SELECT id, a FROM t;
         CREATE VIEW over_uses_a AS SELECT a FROM uses_a;
         CREATE VIEW uses_b AS SELECT id, b FROM t;
         CREATE VIEW whole AS SELECT t AS r FROM t;
         CREATE VIEW counts AS SELECT count(*) AS n FROM t;
         CREATE MATERIALIZED VIEW mv_b AS SELECT b FROM t;
         ALTER TABLE t ENABLE ROW LEVEL SECURITY;
         CREATE POLICY p_a ON t USING (a > 0);
         CREATE POLICY p_b ON t USING (b > 0);";
    let p = pair(
        "views_narrow",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, a int, b int, gone text);
             CREATE VIEW uses_gone AS SELECT id, gone FROM t;
             {common}"
        ),
        &format!("CREATE TABLE t (id int PRIMARY KEY, a bigint, b int); {common}"),
    );
    let s = p.converge(&["--drop"]);
    let retype = pos(&s, "ALTER COLUMN a TYPE bigint");
    assert!(pos(&s, "DROP VIEW IF EXISTS public.over_uses_a") < retype);
    assert!(pos(&s, "DROP VIEW IF EXISTS public.uses_a") < retype);
    assert!(retype < pos(&s, "CREATE VIEW public.uses_a"));
    assert!(pos(&s, "DROP POLICY") < retype);
    assert!(
        pos(&s, "DROP VIEW IF EXISTS public.uses_gone") < pos(&s, "DROP COLUMN IF EXISTS gone")
    );
    for untouched in ["uses_b", "whole", "counts", "mv_b", "p_b"] {
        assert!(
            !s.lines().any(
                |l| !l.starts_with("--") && l.contains(&format!(" {untouched}"))
                    || l.contains(&format!(".{untouched} "))
                    || l.contains(&format!(".{untouched};"))
            ),
            "{untouched} should not be touched:\n{s}"
        );
    }
}

#[test]
fn functions_and_procedures() {
    let p = pair(
        "functions",
        "CREATE FUNCTION body() RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION ret() RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION def() RETURNS int LANGUAGE sql AS 'SELECT 1';
         CREATE TABLE t (a int DEFAULT def());
         CREATE PROCEDURE proc(x int) LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION gone(x int) RETURNS int LANGUAGE sql AS 'SELECT x';",
        "CREATE FUNCTION body() RETURNS int LANGUAGE sql AS 'SELECT 2';
         CREATE FUNCTION ret() RETURNS bigint LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION def() RETURNS bigint LANGUAGE sql AS 'SELECT 1';
         CREATE TABLE t (a int DEFAULT def());
         CREATE PROCEDURE proc(x int) LANGUAGE sql AS 'SELECT 2';
         CREATE PROCEDURE newproc() LANGUAGE plpgsql AS 'BEGIN NULL; END';",
    );
    let s = p.converge(&["--drop"]);
    pos(&s, "CREATE OR REPLACE FUNCTION public.body()");
    pos(&s, "DROP FUNCTION IF EXISTS public.ret()");
    pos(&s, "CREATE OR REPLACE PROCEDURE public.proc(");
    pos(&s, "CREATE OR REPLACE PROCEDURE public.newproc()");
    pos(&s, "DROP FUNCTION IF EXISTS public.gone(x integer)");
    // The default that uses def() goes before def() is dropped, and comes back after.
    let drop_default = pos(&s, "ALTER COLUMN a DROP DEFAULT");
    let drop_fn = pos(&s, "DROP FUNCTION IF EXISTS public.def()");
    assert!(drop_default < drop_fn);
    assert!(drop_fn < pos(&s, "SET DEFAULT public.def()"));
}

#[test]
fn triggers_and_their_enabled_state() {
    let f = "CREATE FUNCTION tf() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
             CREATE TABLE t (a int);";
    let p = pair(
        "triggers",
        &format!(
            "{f} CREATE TRIGGER a BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION tf();
                  CREATE TRIGGER b BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION tf();"
        ),
        &format!(
            "{f} CREATE TRIGGER a BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION tf();
                  ALTER TABLE t DISABLE TRIGGER a;
                  CREATE TRIGGER b BEFORE DELETE ON t FOR EACH ROW EXECUTE FUNCTION tf();
                  CREATE TRIGGER c AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION tf();
                  ALTER TABLE t ENABLE ALWAYS TRIGGER c;"
        ),
    );
    let s = p.converge(&[]);
    pos(&s, "ALTER TABLE public.t DISABLE TRIGGER a");
    pos(&s, "DROP TRIGGER IF EXISTS b ON public.t");
    pos(&s, "ENABLE ALWAYS TRIGGER c");
}

#[test]
fn rls_policies_owners_grants_comments() {
    let p = pair(
        "security",
        "DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sd_reader') THEN CREATE ROLE sd_reader; END IF; END$$;
         CREATE TABLE t (id int, owner_name text);
         CREATE POLICY old_p ON t USING (true);
         GRANT SELECT ON t TO sd_reader;
         COMMENT ON TABLE t IS 'old';",
        "DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sd_reader') THEN CREATE ROLE sd_reader; END IF; END$$;
         CREATE SCHEMA s AUTHORIZATION sd_reader;
         CREATE TABLE t (id int, owner_name text);
         ALTER TABLE t OWNER TO sd_reader;
         ALTER TABLE t ENABLE ROW LEVEL SECURITY; ALTER TABLE t FORCE ROW LEVEL SECURITY;
         CREATE POLICY mine ON t FOR SELECT TO sd_reader USING (owner_name = current_user);
         GRANT INSERT, UPDATE (owner_name) ON t TO sd_reader;
         COMMENT ON TABLE t IS 'new';
         COMMENT ON COLUMN t.id IS 'the id';",
    );
    let s = p.converge(&[]);
    pos(&s, "ENABLE ROW LEVEL SECURITY");
    pos(&s, "FORCE ROW LEVEL SECURITY");
    pos(&s, "CREATE POLICY mine ON public.t");
    pos(&s, "DROP POLICY IF EXISTS old_p ON public.t");
    pos(&s, "ALTER TABLE public.t OWNER TO sd_reader");
    pos(&s, "GRANT INSERT ON TABLE public.t TO sd_reader");
    pos(
        &s,
        "GRANT UPDATE (owner_name) ON TABLE public.t TO sd_reader",
    );
    pos(&s, "COMMENT ON TABLE public.t IS 'new'");
    pos(&s, "COMMENT ON COLUMN public.t.id IS 'the id'");
    let owner = p
        .tgt
        .psql("SELECT tableowner FROM pg_tables WHERE tablename = 't'");
    assert_eq!(owner.trim(), "sd_reader");
}

#[test]
fn schemas_and_extensions() {
    let p = pair(
        "schemas",
        "CREATE SCHEMA old_s; CREATE TABLE old_s.t (a int);",
        "CREATE SCHEMA new_s; CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA new_s;
         CREATE TABLE new_s.t (a new_s.citext);
         COMMENT ON SCHEMA new_s IS 'fresh';",
    );
    let s = p.converge(&["--drop"]);
    assert!(pos(&s, "CREATE SCHEMA new_s") < pos(&s, "CREATE EXTENSION IF NOT EXISTS citext"));
    assert!(pos(&s, "DROP TABLE IF EXISTS old_s.t") < pos(&s, "DROP SCHEMA IF EXISTS old_s"));
}

#[test]
fn schema_mapping_rewrites_references() {
    let p = pair(
        "mapping",
        "CREATE SCHEMA b;",
        "CREATE SCHEMA a;
         CREATE TABLE a.customers (id serial PRIMARY KEY);
         CREATE TABLE a.orders (id serial PRIMARY KEY, customer int REFERENCES a.customers(id));
         CREATE VIEW a.big AS SELECT o.id FROM a.orders o JOIN a.customers c ON c.id = o.customer;
         CREATE FUNCTION a.n() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM a.orders';",
    );
    let args = ["--source-schema", "a", "--target-schema", "b"];
    let s = p.script(&args);
    pos(&s, "nextval('b.orders_id_seq'::regclass)");
    pos(&s, "REFERENCES b.customers(id)");
    pos(&s, "FROM (b.orders o");
    pos(&s, "FROM b.orders");
    assert!(!s.contains(" a."), "{s}");
    p.apply(&args);
    assert_eq!(p.check(&args), 0);
    p.tgt.psql(
        "INSERT INTO b.customers DEFAULT VALUES; INSERT INTO b.orders (customer) VALUES (1);",
    );
    assert_eq!(p.tgt.psql("SELECT b.n()").trim(), "1");
}

#[test]
fn json_output_lists_statements_with_metadata() {
    let p = pair(
        "json",
        "CREATE TABLE t (a int);",
        "CREATE TABLE t (a int, b int); CREATE INDEX t_a ON t (a);",
    );
    let o = p.run(&["--dry-run", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let steps = v["plan"]["steps"].as_array().unwrap();
    assert!(steps
        .iter()
        .any(|s| s["sql"].as_str().unwrap().contains("ADD COLUMN b")));
    let idx = steps
        .iter()
        .find(|s| s["sql"].as_str().unwrap().contains("CONCURRENTLY"))
        .unwrap();
    assert!(idx["transaction"].is_null());
    assert_eq!(idx["lock"]["mode"], "SHARE_UPDATE_EXCLUSIVE");
    assert!(idx["hazards"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h == "builds_index"));
}

#[test]
fn errors_are_clear_and_apply_nothing() {
    let p = pair("errors", "", "CREATE TABLE t (a int);");
    let before = p.tgt.dump();
    // A schema that does not exist.
    let o = p.run(&["--apply", "--schema", "nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("schema nope does not exist"),
        "{}",
        stderr(&o)
    );
    // Unreachable server.
    let s = p.src.url();
    let o = pgflip(&[
        "schema",
        "diff",
        "--source",
        &s,
        "--target",
        "postgresql://postgres@127.0.0.1:1/x",
        "--apply",
    ]);
    assert!(o.status.code().unwrap() >= 2);
    assert!(stderr(&o).contains("target"), "{}", stderr(&o));
    // Bad credentials: a role that does not exist.
    let bad = p.tgt.url().replace("postgres@", "no_such_user_sd:pw@");
    let o = pgflip(&[
        "schema", "diff", "--source", &s, "--target", &bad, "--apply",
    ]);
    assert!(o.status.code().unwrap() >= 2, "{}", stderr(&o));
    assert!(!stderr(&o).contains(":pw@"));
    assert_eq!(p.tgt.dump(), before);
}

#[test]
fn a_failure_mid_apply_rolls_the_transaction_back() {
    let p = pair(
        "rollback",
        "CREATE TABLE t (a text); INSERT INTO t VALUES ('not a number');",
        "CREATE TABLE newer (id int); CREATE TABLE t (a integer);",
    );
    let before = p.tgt.dump();
    let o = p.run(&["--apply"]);
    assert!(o.status.code().unwrap() >= 2, "{}", stderr(&o));
    assert_eq!(p.tgt.dump(), before, "a failed apply left changes behind");
}

#[test]
fn a_failed_concurrent_index_build_leaves_no_invalid_index() {
    let p = pair(
        "invalid_index",
        "CREATE TABLE t (a int); INSERT INTO t VALUES (1), (1);",
        "CREATE TABLE t (a int); CREATE UNIQUE INDEX t_a ON t (a);",
    );
    let o = p.run(&["--apply"]);
    assert!(o.status.code().unwrap() >= 2, "{}", stderr(&o));
    let n = p
        .tgt
        .psql("SELECT count(*) FROM pg_index WHERE NOT indisvalid");
    assert_eq!(n.trim(), "0");
    assert_eq!(
        p.tgt
            .psql("SELECT count(*) FROM pg_indexes WHERE indexname = 't_a'")
            .trim(),
        "0"
    );
}

#[test]
fn awkward_identifiers_and_63_byte_tombstones() {
    let long = "t".repeat(63);
    let p = pair(
        "awkward",
        &format!(
            "CREATE SCHEMA \"My Schema\";
             CREATE TABLE \"My Schema\".\"Order\" (\"select\" int, \"we\"\"ird\" text, \"ünï\" int);
             CREATE TABLE \"{long}\" (id int);
             CREATE TABLE keep (\"{long}\" int, id int);"
        ),
        "CREATE SCHEMA \"My Schema\";
         CREATE TABLE \"My Schema\".\"Order\" (\"select\" bigint, \"we\"\"ird\" text NOT NULL, \"new col\" int);
         CREATE INDEX \"Idx Order\" ON \"My Schema\".\"Order\" (\"select\");
         CREATE TABLE keep (id int);",
    );
    let s = p.script(&[]);
    pos(
        &s,
        "ALTER TABLE \"My Schema\".\"Order\" ALTER COLUMN \"select\" TYPE bigint",
    );
    pos(&s, "CONCURRENTLY \"Idx Order\" ON \"My Schema\".\"Order\"");
    p.apply(&[]);
    // Tombstones fit in 63 bytes and are ignored by the next comparison.
    let names = p.tgt.psql(
        "SELECT relname FROM pg_class WHERE relname LIKE '%\\_dropped\\_%'
         UNION ALL SELECT attname FROM pg_attribute WHERE attname LIKE '%\\_dropped\\_%'",
    );
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for n in names {
        assert!(n.len() <= 63 && pgflip::ident::is_tombstone(n), "{n}");
    }
    assert_eq!(p.check(&[]), 0);
}
