//! Every object kind `pg_dump --schema-only` emits for user schemas, beyond tables, views,
//! functions and types: `schema dump` must round-trip each, and `schema diff` must converge a
//! change of each (or refuse by name, exit 2, when it cannot do so safely) — never "no
//! differences" when two databases differ in one of them.

use crate::util::*;

/// One of every kind, with awkward names (quotes, spaces, capitals, reserved words).
const KINDS: &str = r#"
CREATE SCHEMA "Odd Ops";
CREATE SCHEMA "select";
-- base type over internal I/O functions
CREATE TYPE "Odd Ops"."my Int";
CREATE FUNCTION "Odd Ops"."my in"(cstring) RETURNS "Odd Ops"."my Int" AS 'int4in' LANGUAGE internal IMMUTABLE STRICT;
CREATE FUNCTION "Odd Ops"."my out"("Odd Ops"."my Int") RETURNS cstring AS 'int4out' LANGUAGE internal IMMUTABLE STRICT;
CREATE TYPE "Odd Ops"."my Int" (INPUT = "Odd Ops"."my in", OUTPUT = "Odd Ops"."my out", INTERNALLENGTH = 4, PASSEDBYVALUE, ALIGNMENT = int4);
COMMENT ON TYPE "Odd Ops"."my Int" IS 'a base type';
CREATE CAST ("Odd Ops"."my Int" AS integer) WITHOUT FUNCTION AS IMPLICIT;
CREATE CAST (integer AS "Odd Ops"."my Int") WITHOUT FUNCTION AS ASSIGNMENT;
COMMENT ON CAST ("Odd Ops"."my Int" AS integer) IS 'binary';
-- operators, family, class
CREATE FUNCTION "Odd Ops"."abs lt"(int, int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT abs($1) < abs($2)';
CREATE FUNCTION "Odd Ops"."abs eq"(int, int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT abs($1) = abs($2)';
CREATE FUNCTION "Odd Ops"."abs cmp"(int, int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT CASE WHEN abs($1) < abs($2) THEN -1 WHEN abs($1) > abs($2) THEN 1 ELSE 0 END';
CREATE OPERATOR "Odd Ops".<<< (FUNCTION = "Odd Ops"."abs lt", LEFTARG = int, RIGHTARG = int, RESTRICT = scalarltsel, JOIN = scalarltjoinsel);
CREATE OPERATOR "Odd Ops".=== (FUNCTION = "Odd Ops"."abs eq", LEFTARG = int, RIGHTARG = int, COMMUTATOR = OPERATOR("Odd Ops".===), MERGES);
COMMENT ON OPERATOR "Odd Ops".===(int, int) IS 'equal in absolute value';
CREATE OPERATOR FAMILY "Odd Ops"."abs family" USING btree;
CREATE OPERATOR CLASS "Odd Ops"."abs ops" FOR TYPE int USING btree FAMILY "Odd Ops"."abs family" AS
  OPERATOR 1 "Odd Ops".<<<, OPERATOR 3 "Odd Ops".===, FUNCTION 1 "Odd Ops"."abs cmp"(int, int);
CREATE OPERATOR FAMILY "Odd Ops".loose USING hash;
ALTER OPERATOR FAMILY "Odd Ops".loose USING hash ADD FUNCTION 1 (int, int) hashint4(int);
-- aggregates
CREATE AGGREGATE "Odd Ops"."my Sum"(int) (SFUNC = int4pl, STYPE = int4, INITCOND = '0', PARALLEL = SAFE);
CREATE AGGREGATE "select"."pct"(float8 ORDER BY float8) (SFUNC = ordered_set_transition, STYPE = internal, FINALFUNC = percentile_cont_float8_final);
COMMENT ON AGGREGATE "Odd Ops"."my Sum"(int) IS 'sums';
-- text search
CREATE TEXT SEARCH PARSER "Odd Ops"."my parser" (START = prsd_start, GETTOKEN = prsd_nexttoken, END = prsd_end, LEXTYPES = prsd_lextype, HEADLINE = prsd_headline);
CREATE TEXT SEARCH TEMPLATE "Odd Ops"."my template" (INIT = dsimple_init, LEXIZE = dsimple_lexize);
CREATE TEXT SEARCH DICTIONARY "Odd Ops"."my dict" (TEMPLATE = "Odd Ops"."my template", stopwords = 'english', accept = false);
CREATE TEXT SEARCH CONFIGURATION "Odd Ops"."my config" (PARSER = "Odd Ops"."my parser");
ALTER TEXT SEARCH CONFIGURATION "Odd Ops"."my config" ADD MAPPING FOR asciiword, word WITH "Odd Ops"."my dict", simple;
-- conversion
CREATE CONVERSION "Odd Ops"."my conv" FOR 'LATIN1' TO 'UTF8' FROM iso8859_1_to_utf8;
-- tables, column settings, statistics, rules
CREATE TABLE "select"."Order Lines" ("Qty" int, note text, body text, n numeric);
ALTER TABLE "select"."Order Lines" ALTER COLUMN "Qty" SET STATISTICS 500, ALTER COLUMN note SET STORAGE EXTERNAL,
  ALTER COLUMN body SET COMPRESSION pglz, ALTER COLUMN n SET STATISTICS 0;
CREATE INDEX "lines by abs" ON "select"."Order Lines" (("Qty" + 1), "Qty" "Odd Ops"."abs ops");
ALTER INDEX "select"."lines by abs" ALTER COLUMN 1 SET STATISTICS 250;
CREATE STATISTICS "select"."Qty stats" (dependencies, ndistinct) ON "Qty", n FROM "select"."Order Lines";
ALTER STATISTICS "select"."Qty stats" SET STATISTICS 321;
COMMENT ON STATISTICS "select"."Qty stats" IS 'stats';
CREATE TABLE "select".audit (note text);
CREATE RULE "log note" AS ON INSERT TO "select"."Order Lines" DO ALSO INSERT INTO "select".audit VALUES (NEW.note);
CREATE RULE "no delete" AS ON DELETE TO "select".audit DO INSTEAD NOTHING;
ALTER TABLE "select".audit DISABLE RULE "no delete";
COMMENT ON RULE "log note" ON "select"."Order Lines" IS 'audit';
-- typed table
CREATE TYPE "select".person AS (name text, age int);
CREATE TABLE "select"."People" OF "select".person (PRIMARY KEY (name));
-- event trigger
CREATE FUNCTION "Odd Ops"."on ddl"() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN END$$;
CREATE EVENT TRIGGER "Odd ddl" ON ddl_command_end WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE') EXECUTE FUNCTION "Odd Ops"."on ddl"();
ALTER EVENT TRIGGER "Odd ddl" DISABLE;
-- foreign data
CREATE FOREIGN DATA WRAPPER "my fdw" OPTIONS (debug 'true');
CREATE SERVER "far away" TYPE 'x' VERSION '1' FOREIGN DATA WRAPPER "my fdw" OPTIONS (host 'example.org');
CREATE USER MAPPING FOR postgres SERVER "far away" OPTIONS (user 'remote');
CREATE USER MAPPING FOR PUBLIC SERVER "far away";
CREATE FOREIGN TABLE "select"."Remote Things" (id int NOT NULL, "Name" text OPTIONS (column_name 'name') DEFAULT 'x', CHECK (id > 0))
  SERVER "far away" OPTIONS (table_name 'things');
COMMENT ON FOREIGN TABLE "select"."Remote Things" IS 'far';
CREATE VIEW "select"."remote view" AS SELECT id, "Odd Ops"."my Sum"(id) OVER () FROM "select"."Remote Things";
-- default privileges
ALTER DEFAULT PRIVILEGES IN SCHEMA "select" GRANT SELECT ON TABLES TO PUBLIC;
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES GRANT USAGE ON SEQUENCES TO PUBLIC;
"#;

/// A change of every kind of [`KINDS`].
const CHANGES: &str = r#"
ALTER TABLE "select"."Order Lines" ALTER COLUMN "Qty" SET STATISTICS 100, ALTER COLUMN note SET STORAGE MAIN,
  ALTER COLUMN body SET COMPRESSION DEFAULT, ALTER COLUMN n SET STATISTICS -1, ALTER COLUMN body SET STATISTICS 7;
ALTER INDEX "select"."lines by abs" ALTER COLUMN 1 SET STATISTICS 50;
DROP STATISTICS "select"."Qty stats";
CREATE STATISTICS "select"."Qty stats" (mcv) ON "Qty", n FROM "select"."Order Lines";
ALTER OPERATOR "Odd Ops".<<<(int, int) SET (RESTRICT = eqsel);
COMMENT ON OPERATOR "Odd Ops".===(int, int) IS 'changed';
DROP VIEW "select"."remote view";
DROP AGGREGATE "Odd Ops"."my Sum"(int);
CREATE AGGREGATE "Odd Ops"."my Sum"(int) (SFUNC = int4pl, STYPE = int4, INITCOND = '10');
CREATE VIEW "select"."remote view" AS SELECT id, "Odd Ops"."my Sum"(id) OVER () FROM "select"."Remote Things";
DROP CAST (integer AS "Odd Ops"."my Int");
CREATE CAST (integer AS "Odd Ops"."my Int") WITHOUT FUNCTION;
ALTER TEXT SEARCH CONFIGURATION "Odd Ops"."my config" ALTER MAPPING FOR word WITH simple;
ALTER TEXT SEARCH DICTIONARY "Odd Ops"."my dict" (accept = true);
CREATE OR REPLACE RULE "no delete" AS ON DELETE TO "select".audit DO INSTEAD SELECT 1;
ALTER TABLE "select".audit ENABLE RULE "no delete";
ALTER EVENT TRIGGER "Odd ddl" ENABLE ALWAYS;
ALTER SERVER "far away" OPTIONS (SET host 'example.com');
ALTER FOREIGN TABLE "select"."Remote Things" ADD COLUMN extra date;
GRANT SELECT ON "select"."Remote Things" TO PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA "select" REVOKE SELECT ON TABLES FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA "select" GRANT INSERT ON TABLES TO PUBLIC;
DROP CONVERSION "Odd Ops"."my conv";
ALTER OPERATOR FAMILY "Odd Ops".loose USING hash DROP FUNCTION 1 (int, int);
"#;

/// `pg_dump --schema-only` without the per-run `\restrict` keys.
fn schema_text(db: &TestDb) -> String {
    db.schema_dump()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn diff(src: &TestDb, tgt: &TestDb, extra: &[&str]) -> std::process::Output {
    let (s, t) = (src.url(), tgt.url());
    let mut args = vec!["schema", "diff", "--source", &s, "--target", &t];
    args.extend_from_slice(extra);
    pgflip(&args)
}

/// Applies the diff from `src` to `tgt`; then `--check` must be clean and the pg_dumps equal.
fn converge(src: &TestDb, tgt: &TestDb, extra: &[&str]) {
    let mut args = vec!["--apply"];
    args.extend_from_slice(extra);
    let o = diff(src, tgt, &args);
    assert!(o.status.success(), "apply failed: {}", stderr(&o));
    let c = diff(src, tgt, &["--check"]);
    assert_eq!(c.status.code(), Some(0), "left after apply: {}", stdout(&c));
    assert_eq!(
        schema_text(src),
        schema_text(tgt),
        "pg_dump differs after apply"
    );
}

#[tokio::test]
async fn every_kind_round_trips_through_schema_dump() {
    let src = fresh_db("kinds_rt");
    src.psql(KINDS);
    let dump = pgflip::ddl::dump_database(&src.client().await, &Default::default())
        .await
        .expect("dump");
    for needle in [
        "CREATE OPERATOR \"Odd Ops\".<<<",
        "CREATE OPERATOR CLASS \"Odd Ops\".\"abs ops\"",
        "ALTER OPERATOR FAMILY \"Odd Ops\".loose USING hash ADD",
        "CREATE AGGREGATE \"select\".pct(double precision ORDER BY double precision)",
        "CREATE CAST (\"Odd Ops\".\"my Int\" AS integer) WITHOUT FUNCTION AS IMPLICIT",
        "ALTER TABLE ONLY \"select\".\"Order Lines\" ALTER COLUMN \"Qty\" SET STATISTICS 500",
        "ALTER INDEX \"select\".\"lines by abs\" ALTER COLUMN 1 SET STATISTICS 250",
        "CREATE STATISTICS \"select\".\"Qty stats\"",
        "CREATE EVENT TRIGGER \"Odd ddl\"",
        "CREATE FOREIGN TABLE \"select\".\"Remote Things\"",
        "ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA \"select\" GRANT SELECT ON TABLES TO PUBLIC",
        "CREATE TEXT SEARCH CONFIGURATION \"Odd Ops\".\"my config\"",
        "CREATE CONVERSION \"Odd Ops\".\"my conv\"",
        "ALTER TABLE \"select\".\"People\" OF \"select\".person",
    ] {
        assert!(dump.contains(needle), "{needle:?} missing from the dump:\n{dump}");
    }
    // Default privileges come last: objects created after them would get them.
    assert!(dump.rfind("ALTER DEFAULT PRIVILEGES").unwrap() > dump.find("CREATE VIEW").unwrap());
    let copy = fresh_db("kinds_rt_copy");
    copy.psql(&dump);
    assert_eq!(
        schema_text(&src),
        schema_text(&copy),
        "pg_dump of the copy differs"
    );
    let again = pgflip::ddl::dump_database(&copy.client().await, &Default::default())
        .await
        .expect("dump of the copy");
    assert_eq!(dump, again, "schema dump of the copy differs");
}

#[test]
fn every_kind_is_created_changed_and_dropped_by_schema_diff() {
    // Created from nothing.
    let src = fresh_db("kinds_src");
    src.psql(KINDS);
    let tgt = fresh_db("kinds_tgt");
    converge(&src, &tgt, &[]);

    // Changed: each kind differs; before the apply, --check sees it.
    let changed = fresh_db("kinds_changed");
    changed.psql(KINDS);
    changed.psql(CHANGES);
    assert_eq!(diff(&changed, &tgt, &["--check"]).status.code(), Some(1));
    let script = {
        let o = diff(&changed, &tgt, &["--dry-run"]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    for needle in [
        "SET STATISTICS 100",
        "SET STORAGE MAIN",
        "SET COMPRESSION DEFAULT",
        "ALTER COLUMN 1 SET STATISTICS 50",
        "(mcv)",
        "RESTRICT = eqsel",
        "INITCOND = '10'",
        "ENABLE ALWAYS",
        "example.com",
        "DROP CONVERSION IF EXISTS \"Odd Ops\".\"my conv\"",
        "IN SCHEMA \"select\" GRANT INSERT ON TABLES TO PUBLIC",
    ] {
        assert!(
            script.contains(needle),
            "{needle:?} not in the script:\n{script}"
        );
    }
    converge(&changed, &tgt, &[]);

    // Dropped (all but the base type, which cannot be dropped safely: see below).
    tgt.psql("DROP TYPE \"Odd Ops\".\"my Int\" CASCADE");
    let empty = fresh_db("kinds_empty");
    converge(&empty, &tgt, &["--drop"]);
}

/// Two databases that differ only in a per-column statistics target, an index column's
/// statistics target or a user operator are not the same ("no differences" was silent loss).
#[test]
fn a_difference_only_in_settings_or_operators_is_seen() {
    let base = "CREATE TABLE t (a int, b text); CREATE INDEX t_expr ON t ((a + 1));";
    for change in [
        "ALTER TABLE t ALTER COLUMN a SET STATISTICS 10",
        "ALTER TABLE t ALTER COLUMN b SET STORAGE MAIN",
        "ALTER INDEX t_expr ALTER COLUMN 1 SET STATISTICS 10",
        "CREATE OPERATOR public.### (FUNCTION = int4pl, LEFTARG = int, RIGHTARG = int)",
        "CREATE STATISTICS t_stats ON a, b FROM t",
    ] {
        let src = fresh_db("kinds_one_src");
        let tgt = fresh_db("kinds_one_tgt");
        src.psql(base);
        tgt.psql(base);
        src.psql(change);
        assert_eq!(
            diff(&src, &tgt, &["--check"]).status.code(),
            Some(1),
            "not seen: {change}"
        );
        converge(&src, &tgt, &[]);
    }
}

/// A kind that cannot be dropped or recreated safely is named, exit 2, and nothing applied.
#[test]
fn a_base_type_only_in_the_target_is_refused_by_name() {
    let src = fresh_db("kinds_base_src");
    let tgt = fresh_db("kinds_base_tgt");
    tgt.psql(KINDS);
    let before = tgt.dump();
    for mode in ["--check", "--apply", "--dry-run"] {
        let o = diff(&src, &tgt, &[mode, "--drop"]);
        assert_eq!(o.status.code(), Some(2), "{mode}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("Base type \"Odd Ops\".\"my Int\" (only in the target)"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(before, tgt.dump(), "something was applied");
}

/// User mappings are compared and created without their secret options.
#[tokio::test]
async fn user_mapping_passwords_never_leave_the_server() {
    let src = fresh_db("kinds_secret_src");
    src.psql(
        "CREATE FOREIGN DATA WRAPPER w; CREATE SERVER s FOREIGN DATA WRAPPER w; \
         CREATE USER MAPPING FOR postgres SERVER s OPTIONS (user 'remote', password 'hunter2');",
    );
    let dump = pgflip::ddl::dump_database(&src.client().await, &Default::default())
        .await
        .expect("dump");
    assert!(dump.contains("CREATE USER MAPPING FOR postgres SERVER s OPTIONS (\"user\" 'remote')"));
    assert!(!dump.contains("hunter2"));
    let tgt = fresh_db("kinds_secret_tgt");
    let o = diff(&src, &tgt, &["--dry-run", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).contains("hunter2") && stdout(&o).contains("USER MAPPING"));
}

/// `--apply` refuses a plan with hazards the user did not allow, lists them, applies nothing;
/// `--allow-hazards` lets it run; `--drop` allows data deletion; `--json` lists hazards per
/// statement.
#[test]
fn hazards_must_be_allowed_before_apply() {
    let src = fresh_db("hz_src");
    let tgt = fresh_db("hz_tgt");
    tgt.psql(
        "CREATE TABLE t (id int PRIMARY KEY, a int, old text); INSERT INTO t VALUES (1, 2, 'x');",
    );
    src.psql("CREATE TABLE t (id int PRIMARY KEY, a bigint);");
    let before = tgt.dump();

    let o = diff(&src, &tgt, &["--apply", "--drop"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("rewrites-table")
            && err.contains("nothing was applied")
            && err.contains("step "),
        "{err}"
    );
    assert!(
        !err.contains("deletes-data"),
        "--drop allows data deletion: {err}"
    );
    assert_eq!(before, tgt.dump(), "a refused plan changed the target");

    // Without --drop the column is kept as a tombstone: no deletion; the retype still needs
    // its allowance. Unknown kinds are a usage error.
    let o = diff(&src, &tgt, &["--apply", "--allow-hazards", "rewrite"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown hazard kind"), "{}", stderr(&o));

    let json = diff(&src, &tgt, &["--dry-run", "--json", "--drop"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&json).trim()).expect("json");
    let steps = v["plan"]["steps"].as_array().expect("steps");
    assert!(steps.iter().any(|s| s["hazards"]
        .as_array()
        .is_some_and(|h| h.iter().any(|x| x == "rewrite"))));

    let o = diff(
        &src,
        &tgt,
        &[
            "--apply",
            "--drop",
            "--allow-hazards",
            "rewrites-table,long-lock",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(diff(&src, &tgt, &["--check"]).status.code(), Some(0));
    assert_eq!(tgt.psql("SELECT a FROM t").trim(), "2");
}

/// A partition that gets attached while it has an index matching the parent's partitioned
/// index besides the one the source attaches: ATTACH adopts the first matching index, so the
/// plan must leave only the right one in place at the attach.
#[test]
fn attaching_a_partition_adopts_the_index_the_source_attached() {
    let old = "CREATE TABLE m (id int, d date NOT NULL) PARTITION BY RANGE (d);
         CREATE INDEX m_d ON m (d);
         CREATE TABLE m_2020 PARTITION OF m FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
         CREATE TABLE loose (id int, d date NOT NULL);
         CREATE INDEX \"Loose Mine\" ON loose (d);";
    let new = "CREATE TABLE m (id int, d date NOT NULL) PARTITION BY RANGE (d);
         CREATE INDEX m_d ON m (d);
         CREATE TABLE m_2020 PARTITION OF m FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
         CREATE TABLE m_2022 PARTITION OF m FOR VALUES FROM ('2022-01-01') TO ('2023-01-01');
         CREATE INDEX \"A m_2022\" ON m_2022 (d);
         CREATE TABLE loose PARTITION OF m FOR VALUES FROM ('2019-01-01') TO ('2020-01-01');
         CREATE INDEX \"Loose Mine\" ON loose (d);";
    let src = fresh_db("attach_src");
    let tgt = fresh_db("attach_tgt");
    tgt.psql(old);
    src.psql(new);
    converge(&src, &tgt, &["--allow-hazards", "all"]);
    let attached = tgt.psql(
        "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'm_d'::regclass",
    );
    assert_eq!(attached.trim(), "loose_d_idx,m_2020_d_idx,m_2022_d_idx");
}

/// Large objects are out of scope: a database that has them is named (exit 2), never compared
/// as if it had none.
#[test]
fn large_objects_are_named_not_passed_over() {
    let src = fresh_db("kinds_lo_src");
    let tgt = fresh_db("kinds_lo_tgt");
    src.psql(
        "CREATE TABLE t (id int); SELECT lo_from_bytea(0, 'x'); SELECT lo_from_bytea(0, 'y');",
    );
    let before = tgt.dump();
    for args in [
        &["--check"][..],
        &["--apply", "--allow-hazards", "all"],
        &["--dry-run"],
    ] {
        let o = diff(&src, &tgt, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("the source has 2 large objects"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(before, tgt.dump(), "something was applied");
    // The same from the target's side.
    let o = diff(&tgt, &src, &["--check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("the target has 2 large objects"),
        "{}",
        stderr(&o)
    );
}
