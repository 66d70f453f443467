//! `pgflip sync` against two real servers: the shared test server is the source, the second
//! server the target, each test in fresh databases.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

fn sync(src: &TestDb, tgt: &TestDb, extra: &[&str]) -> std::process::Output {
    let (s, t) = (src.url(), tgt.url());
    let mut args = vec!["sync", "--source", &s, "--target", &t];
    args.extend_from_slice(extra);
    pgflip(&args)
}

/// Row count and a checksum of every row of `rel` (a relation or a parenthesized query), in an
/// order that needs no key.
fn digest(db: &TestDb, rel: &str) -> String {
    q(
        db,
        &format!(
            "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') \
             FROM {rel} x"
        ),
    )
}

/// The seed's example: source rows 1, 2, 3, 5; target rows 1, 2, 4; row 1 has a NULL on both
/// sides (unchanged), row 2 differs. New 2 (3, 5), updated 1 (2), deleted 1 (4).
const SEED_SOURCE: &str = "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric, note text); \
     INSERT INTO items VALUES (1, 'a', 10, NULL), (2, 'b', 21, 'x'), (3, 'c', 30, NULL), (5, 'e', 50, 'y')";
const SEED_TARGET: &str =
    "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric, note text); \
     INSERT INTO items VALUES (1, 'a', 10, NULL), (2, 'b', 20, 'x'), (4, 'd', 40, NULL)";

const SEED_SUMMARY: &str =
    "Diff Summary:\n  New rows:     2\n  Updated rows: 1\n  Deleted rows: 1\n";

#[test]
fn seed_example_staging_with_diff_leaves_live_untouched() {
    let (src, tgt) = server_pair("seed");
    src.psql(SEED_SOURCE);
    tgt.psql(SEED_TARGET);
    tgt.psql("CREATE INDEX items_name ON items (name); ALTER TABLE items ADD CONSTRAINT price_pos CHECK (price > 0); ALTER TABLE items ALTER COLUMN note SET DEFAULT 'n/a'");
    let live_before = q(
        &tgt,
        "SELECT string_agg(t::text, ';' ORDER BY id) FROM items t",
    );

    let out = ok(&sync(
        &src,
        &tgt,
        &["items", "--staging-table", "--show-diff"],
    ));
    assert!(out.contains(SEED_SUMMARY), "{out}");
    assert!(out.contains("✔ items - "), "{out}");
    assert!(out.contains("Completed in "), "{out}");

    assert_eq!(
        q(
            &tgt,
            "SELECT string_agg(t::text, ';' ORDER BY id) FROM items t"
        ),
        live_before,
        "live table untouched"
    );
    assert_eq!(
        q(
            &tgt,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM items_staging"
        ),
        "1,2,3,5"
    );
    // Same structure: columns, defaults, constraints, indexes.
    let shape = |rel: &str| {
        q(
            &tgt,
            &format!(
                "SELECT (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' ' || attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), ''), ', ' ORDER BY attnum) \
                   FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE attrelid = '{rel}'::regclass AND attnum > 0) \
                 || ' | ' || (SELECT string_agg(contype::text || ':' || pg_get_constraintdef(oid), ', ' ORDER BY contype, pg_get_constraintdef(oid)) FROM pg_constraint WHERE conrelid = '{rel}'::regclass) \
                 || ' | ' || (SELECT string_agg(d, ', ' ORDER BY d) FROM (SELECT regexp_replace(pg_get_indexdef(indexrelid), '^.* USING ', '') AS d FROM pg_index WHERE indrelid = '{rel}'::regclass) x)"
            ),
        )
    };
    assert_eq!(shape("items"), shape("items_staging"));

    // An existing staging table is replaced, not appended to.
    tgt.psql("INSERT INTO items_staging VALUES (99, 'stale', 1, NULL)");
    let out = ok(&sync(
        &src,
        &tgt,
        &["items", "--staging", "--diff", "--diff-sample", "5"],
    ));
    assert!(out.contains(SEED_SUMMARY), "{out}");
    assert!(out.contains("New keys (sample): 3, 5"), "{out}");
    assert!(out.contains("Updated keys (sample): 2"), "{out}");
    assert!(out.contains("Deleted keys (sample): 4"), "{out}");
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM items_staging WHERE id = 99"),
        "0"
    );
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'pgflip%'"
        ),
        "0",
        "nothing else left behind"
    );
}

#[test]
fn cross_server_diff_equals_the_in_database_diff() {
    let (src, tgt) = server_pair("xdiff");
    src.psql(SEED_SOURCE);
    tgt.psql(SEED_TARGET);
    // A bigger table too, so chunks matter: 20 000 rows, 1% changed on each kind.
    let big = "CREATE TABLE big (a int, b text, v float8, t timestamptz, PRIMARY KEY (a, b)); \
               INSERT INTO big SELECT g, 'k' || (g % 7), g / 3.0, '2024-01-01'::timestamptz + g * interval '1 min' FROM generate_series(1, 20000) g";
    src.psql(big);
    tgt.psql(big);
    src.psql("UPDATE big SET v = v + 1 WHERE a % 100 = 1; DELETE FROM big WHERE a % 100 = 2; INSERT INTO big SELECT g, 'new', 0, NULL FROM generate_series(30001, 30200) g");
    tgt.psql("ANALYZE; SET TimeZone = 'America/New_York'");

    let before = tgt.dump();
    let o = sync(
        &src,
        &tgt,
        &["items", "big", "--show-diff", "--dry-run", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(tgt.dump(), before, "--dry-run --show-diff changes nothing");
    let find = |v: &serde_json::Value, t: &str| {
        v["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["table"] == t)
            .unwrap()["diff"]
            .clone()
    };
    let cross_items = find(&v, "public.items");
    assert_eq!(cross_items["method"], "chunk_checksums");
    assert_eq!(
        (
            &cross_items["new"],
            &cross_items["updated"],
            &cross_items["deleted"]
        ),
        (&2.into(), &1.into(), &1.into())
    );
    let cross_big = find(&v, "public.big");
    assert_eq!(
        (
            &cross_big["new"],
            &cross_big["updated"],
            &cross_big["deleted"]
        ),
        (&200.into(), &200.into(), &200.into()),
        "{cross_big}"
    );
    let table_bytes: u64 = q(
        &src,
        "SELECT sum(length(b::text) + length(a::text) + 40) FROM big",
    )
    .parse()
    .unwrap();
    assert!(
        cross_big["bytes_moved"].as_u64().unwrap() < table_bytes,
        "{cross_big} vs {table_bytes}"
    );

    let o = sync(
        &src,
        &tgt,
        &["items", "big", "--staging", "--show-diff", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    for t in ["public.items", "public.big"] {
        let d = find(&v, t);
        assert_eq!(d["method"], "one_pass");
        let c = if t == "public.items" {
            &cross_items
        } else {
            &cross_big
        };
        for k in ["new", "updated", "deleted"] {
            assert_eq!(d[k], c[k], "{t} {k}");
        }
    }
}

#[test]
fn replace_copies_mixed_case_composite_generated_and_sequences() {
    let (src, tgt) = server_pair("replace");
    let ddl = r#"CREATE SCHEMA "Sales";
        CREATE TABLE "Sales"."Line Items" ("Order" int, line serial, qty int, price numeric,
            total numeric GENERATED ALWAYS AS (qty * price) STORED, PRIMARY KEY ("Order", line));
        CREATE TABLE "select" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "from" text)"#;
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql(r#"ALTER TABLE "Sales"."Line Items" ADD COLUMN src_only text;
        INSERT INTO "Sales"."Line Items" ("Order", qty, price) SELECT g / 3, g, 1.5 FROM generate_series(1, 50) g;
        INSERT INTO "select" ("from") SELECT 'v' || g FROM generate_series(1, 7) g"#);
    tgt.psql(
        r#"ALTER TABLE "Sales"."Line Items" ADD COLUMN tgt_only text DEFAULT 'kept';
        INSERT INTO "Sales"."Line Items" ("Order", qty, price) VALUES (999, 1, 1);
        INSERT INTO "select" ("from") VALUES ('old')"#,
    );

    let o = sync(
        &src,
        &tgt,
        &["Sales.Line Items", "select", "--schemas", "public,Sales"],
    );
    ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("src_only") && err.contains("exists only on the source"),
        "{err}"
    );
    assert!(
        err.contains("tgt_only") && err.contains("missing on the source"),
        "{err}"
    );
    assert_eq!(
        q(
            &tgt,
            r#"SELECT count(*), sum(total), min(tgt_only), max(line) FROM "Sales"."Line Items""#
        ),
        "50|1912.5|kept|50"
    );
    // A partitioned table is read and replaced through its partitions.
    let parted = "CREATE TABLE parted (id int, k int, PRIMARY KEY (id, k)) PARTITION BY LIST (k); \
                  CREATE TABLE parted_1 PARTITION OF parted FOR VALUES IN (1); \
                  CREATE TABLE parted_2 PARTITION OF parted FOR VALUES IN (2)";
    src.psql(parted);
    tgt.psql(parted);
    src.psql("INSERT INTO parted SELECT g, 1 + g % 2 FROM generate_series(1, 10) g");
    tgt.psql("INSERT INTO parted VALUES (100, 1)");
    ok(&sync(&src, &tgt, &["parted", "--show-diff"]));
    assert_eq!(q(&tgt, "SELECT count(*), max(id) FROM parted"), "10|10");
    let o = sync(&src, &tgt, &["parted", "--staging"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("partitioned"), "{}", stderr(&o));
    // Sequences follow the source: the next values do not collide.
    tgt.psql(r#"INSERT INTO "Sales"."Line Items" ("Order", qty, price) VALUES (1, 1, 1); INSERT INTO "select" ("from") VALUES ('next')"#);
    assert_eq!(
        q(&tgt, r#"SELECT max(line) FROM "Sales"."Line Items""#),
        "51"
    );
    assert_eq!(
        q(&tgt, r#"SELECT id FROM "select" WHERE "from" = 'next'"#),
        "8"
    );
    // --no-sequences leaves them alone.
    ok(&sync(&src, &tgt, &["select", "--no-sequences"]));
    tgt.psql(r#"INSERT INTO "select" ("from") VALUES ('after')"#);
    assert_eq!(
        q(&tgt, r#"SELECT id FROM "select" WHERE "from" = 'after'"#),
        "9"
    );
}

#[test]
fn indexes_rebuilt_after_a_large_load_are_the_same_indexes() {
    let (src, tgt) = server_pair("rebuild");
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, a text, b int); CREATE INDEX t_a ON t (lower(a)) WHERE b > 0; \
               CREATE UNIQUE INDEX t_b ON t (b); COMMENT ON INDEX t_a IS 'why a'; \
               CREATE INDEX t_clustered ON t (a); CLUSTER t USING t_clustered";
    src.psql(ddl);
    tgt.psql(ddl);
    // Key constraints are dropped and added again too, unless something depends on them (here
    // a view grouping by the primary key, on the target only).
    tgt.psql(
        "ALTER TABLE t ADD CONSTRAINT t_u UNIQUE (a) DEFERRABLE; \
         COMMENT ON INDEX t_pkey IS 'the key'; \
         CREATE VIEW by_key AS SELECT id, a FROM t GROUP BY id",
    );
    // Above DELETE_AT_MOST on the source: truncated, so the indexes can be rebuilt (small
    // tables are emptied with DELETE and keep theirs).
    src.psql("INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 5000) g");
    let shape = || {
        q(&tgt, "SELECT string_agg(pg_get_indexdef(indexrelid) || indisclustered || coalesce(obj_description(indexrelid, 'pg_class'), ''), ' / ' ORDER BY indexrelid::regclass::text) FROM pg_index WHERE indrelid = 't'::regclass") + " | " +
        &q(&tgt, "SELECT string_agg(conname || ':' || contype::text || ':' || pg_get_constraintdef(oid) || condeferrable || condeferred, ' / ' ORDER BY conname) FROM pg_constraint WHERE conrelid = 't'::regclass") + " | " +
        &q(&tgt, "SELECT string_agg(attname || attnotnull, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0")
    };
    let before = shape();
    let out = ok(&sync(
        &src,
        &tgt,
        &["t", "--rebuild-indexes-above", "0", "--dry-run"],
    ));
    assert!(
        out.contains("DROP INDEX public.t_a") && out.contains("DROP INDEX public.t_b"),
        "{out}"
    );
    assert!(
        !out.contains("DROP INDEX public.t_clustered"),
        "the clustering index is kept: {out}"
    );
    assert!(
        out.contains("ALTER TABLE public.t DROP CONSTRAINT t_u")
            && out.contains("ALTER TABLE public.t ADD CONSTRAINT t_u UNIQUE (a) DEFERRABLE")
            && !out.contains("DROP CONSTRAINT t_pkey"),
        "the view depends on the primary key: it stays: {out}"
    );
    ok(&sync(&src, &tgt, &["t", "--rebuild-indexes-above", "0"]));
    assert_eq!(q(&tgt, "SELECT count(*) FROM t WHERE b > 0"), "5000");
    assert_eq!(q(&tgt, "SELECT count(*) FROM by_key"), "5000");
    assert_eq!(shape(), before);
    // Without the view the primary key is dropped for the load too, and comes back as it was
    // (its index's comment included).
    tgt.psql("DROP VIEW by_key");
    let before = shape();
    let out = ok(&sync(
        &src,
        &tgt,
        &["t", "--rebuild-indexes-above", "0", "--dry-run"],
    ));
    assert!(
        out.contains("ALTER TABLE public.t DROP CONSTRAINT t_pkey")
            && out.contains("ALTER TABLE public.t ADD CONSTRAINT t_pkey PRIMARY KEY (id)"),
        "{out}"
    );
    src.psql("UPDATE t SET a = a || '!' WHERE id % 2 = 0");
    ok(&sync(&src, &tgt, &["t", "--rebuild-indexes-above", "0"]));
    assert_eq!(digest(&tgt, "t"), digest(&src, "t"));
    assert_eq!(shape(), before);
    // A unique index that the new rows violate: the whole replacement rolls back.
    src.psql("DROP INDEX t_b; UPDATE t SET b = 1 WHERE id = 2");
    let dump = tgt.dump();
    let o = sync(&src, &tgt, &["t", "--rebuild-indexes-above", "0"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert_eq!(tgt.dump(), dump);
}

#[test]
fn a_failure_in_the_middle_leaves_the_old_rows() {
    let (src, tgt) = server_pair("atomic");
    src.psql("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 10000) g");
    tgt.psql("CREATE TABLE t (id int PRIMARY KEY, v int CHECK (v <> 7000)); INSERT INTO t VALUES (1, -1), (2, -2)");
    let before = tgt.dump();
    let o = sync(&src, &tgt, &["t"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("check constraint"), "{}", stderr(&o));
    assert_eq!(tgt.dump(), before, "old rows kept");

    // A type mismatch: text on the source that the target's int cannot take.
    src.psql("CREATE TABLE u (id int PRIMARY KEY, v text); INSERT INTO u SELECT g, g::text FROM generate_series(1, 5000) g; UPDATE u SET v = 'oops' WHERE id = 4000");
    tgt.psql("CREATE TABLE u (id int PRIMARY KEY, v int); INSERT INTO u VALUES (1, 1)");
    let before = tgt.dump();
    let o = sync(&src, &tgt, &["u"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("copied as text"),
        "type difference is a warning: {}",
        stderr(&o)
    );
    assert_eq!(tgt.dump(), before);
}

#[test]
fn dry_run_changes_neither_database() {
    let (src, tgt) = server_pair("dry");
    src.psql(SEED_SOURCE);
    tgt.psql(SEED_TARGET);
    let (sb, tb) = (src.dump(), tgt.dump());
    for extra in [
        &["items"][..],
        &["items", "--staging"],
        &["--overwrite"],
        &["items", "--where", "id > 2"],
    ] {
        let mut a = extra.to_vec();
        a.push("--dry-run");
        let out = ok(&sync(&src, &tgt, &a));
        assert!(out.contains("BEGIN;") && out.contains("COPY"), "{out}");
        assert!(out.contains("-- lock: "), "locks are listed: {out}");
    }
    // A small table is emptied with DELETE under SHARE ROW EXCLUSIVE (writers wait, readers
    // go on); each step says its lock.
    let out = ok(&sync(&src, &tgt, &["items", "--dry-run"]));
    assert!(
        out.contains(
            "-- lock: SHARE ROW EXCLUSIVE on public.items\n\
             LOCK TABLE ONLY public.items IN SHARE ROW EXCLUSIVE MODE;"
        ) && out.contains(
            "-- lock: ROW EXCLUSIVE on public.items\n\
             -- hazards: replaces the rows of a table\n\
             DELETE FROM ONLY public.items;"
        ),
        "{out}"
    );
    assert!(
        out.find("LOCK TABLE") < out.find("DELETE FROM") && !out.contains("TRUNCATE"),
        "{out}"
    );
    assert_eq!(src.dump(), sb);
    assert_eq!(tgt.dump(), tb);

    // A table larger than the threshold on either side is truncated (ACCESS EXCLUSIVE: readers
    // wait, then see the new rows).
    let big = "CREATE TABLE big (id int PRIMARY KEY, v text); \
               INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 5000) g";
    src.psql(big);
    tgt.psql("CREATE TABLE big (id int PRIMARY KEY, v text)");
    let out = ok(&sync(&src, &tgt, &["big", "--dry-run"]));
    assert!(
        out.contains("-- lock: ACCESS EXCLUSIVE on public.big\n")
            && out.contains("TRUNCATE ONLY public.big;")
            && !out.contains("DELETE FROM")
            && !out.contains("SHARE ROW EXCLUSIVE"),
        "{out}"
    );
    // Small tables share transactions, each behind a savepoint, spread over --jobs
    // transactions; a large one has its own.
    let few = "CREATE TABLE few (id int PRIMARY KEY)";
    src.psql(few);
    tgt.psql(few);
    let (sb, tb) = (src.dump(), tgt.dump());
    let out = ok(&sync(
        &src,
        &tgt,
        &["items", "few", "big", "--dry-run", "--jobs", "1"],
    ));
    assert_eq!(out.matches("BEGIN;").count(), 2, "{out}");
    assert_eq!(out.matches("\nSAVEPOINT pgflip_unit;").count(), 2, "{out}");
    assert_eq!(
        out.matches("RELEASE SAVEPOINT pgflip_unit;").count(),
        2,
        "{out}"
    );
    let out = ok(&sync(
        &src,
        &tgt,
        &["items", "few", "--dry-run", "--jobs", "2"],
    ));
    assert_eq!(out.matches("BEGIN;").count(), 2, "{out}");
    assert!(!out.contains("SAVEPOINT"), "{out}");
    assert_eq!(src.dump(), sb);
    assert_eq!(tgt.dump(), tb, "dry runs write nothing");
}

#[test]
fn overwrite_preserve_and_where() {
    let (src, tgt) = server_pair("modes");
    src.psql(SEED_SOURCE);
    tgt.psql(SEED_TARGET);
    let rows = |db: &TestDb| {
        q(
            db,
            "SELECT string_agg(id || ':' || price, ',' ORDER BY id) FROM items",
        )
    };

    ok(&sync(&src, &tgt, &["items", "--preserve"]));
    assert_eq!(rows(&tgt), "1:10,2:20,3:30,4:40,5:50");
    ok(&sync(&src, &tgt, &["items", "--overwrite"]));
    assert_eq!(rows(&tgt), "1:10,2:21,3:30,4:40,5:50");
    tgt.psql("UPDATE items SET price = price * 100; INSERT INTO items VALUES (6, 'f', 1, NULL)");
    ok(&sync(
        &src,
        &tgt,
        &["items", "--where", "id >= 3 AND id <> 5"],
    ));
    assert_eq!(
        rows(&tgt),
        "1:1000,2:2100,3:30,5:5000",
        "4 and 6 match the where clause and the source lacks them"
    );
    ok(&sync(&src, &tgt, &["items"]));
    assert_eq!(rows(&tgt), rows(&src));

    // No primary key where one is needed: a clear error, nothing changed.
    src.psql("CREATE TABLE nopk (a int, b text); INSERT INTO nopk VALUES (1, 'x')");
    tgt.psql("CREATE TABLE nopk (a int, b text); INSERT INTO nopk VALUES (2, 'y')");
    let before = tgt.dump();
    for flag in ["--overwrite", "--preserve"] {
        let o = sync(&src, &tgt, &["nopk", flag]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("public.nopk has no primary key") && stderr(&o).contains(flag),
            "{}",
            stderr(&o)
        );
    }
    let o = sync(&src, &tgt, &["nopk", "--where", "a > 0"]);
    assert!(stderr(&o).contains("--where needs one"), "{}", stderr(&o));
    assert_eq!(tgt.dump(), before);
    // --show-diff on a table without a key: a warning, no diff, the sync still happens.
    let o = sync(&src, &tgt, &["nopk", "--show-diff"]);
    ok(&o);
    assert!(
        stderr(&o).contains("no primary key on the target; no diff"),
        "{}",
        stderr(&o)
    );
    assert_eq!(q(&tgt, "SELECT a FROM nopk"), "1");
}

#[test]
fn bad_input_is_named_and_changes_nothing() {
    let (src, tgt) = server_pair("badinput");
    src.psql(SEED_SOURCE);
    tgt.psql(SEED_TARGET);
    src.psql("CREATE TABLE only_src (id int); CREATE TABLE disjoint (a int)");
    tgt.psql("CREATE TABLE disjoint (b int)");
    tgt.psql("DO $$ BEGIN CREATE ROLE sync_reader LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; GRANT SELECT ON items TO sync_reader");
    let before = tgt.dump();
    let o = sync(&src, &tgt, &["items", "nope", "Items"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(r#"unknown tables on the source: "nope", "Items""#),
        "{}",
        stderr(&o)
    );
    let o = sync(&src, &tgt, &["only_src"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("missing on the target: public.only_src"),
        "{}",
        stderr(&o)
    );
    let o = sync(&src, &tgt, &["disjoint"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no columns in common"),
        "{}",
        stderr(&o)
    );
    let o = sync(&src, &tgt, &["items", "--swap"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("items_staging"), "{}", stderr(&o));
    let dead = "postgresql://postgres@127.0.0.1:1/x";
    let o = pgflip(&["sync", "--source", &src.url(), "--target", dead, "items"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("could not connect to target"),
        "{}",
        stderr(&o)
    );
    assert_eq!(tgt.dump(), before);

    // Permission denied: a role that may read but not write.
    let url = tgt.url().replace("postgres@", "sync_reader@");
    let o = pgflip(&["sync", "--source", &src.url(), "--target", &url, "items"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("permission denied") && stderr(&o).contains("items"),
        "{}",
        stderr(&o)
    );
    assert_eq!(tgt.dump(), before);
}

#[test]
fn a_remote_target_needs_confirmation() {
    let (src, tgt) = server_pair("confirm");
    src.psql(SEED_SOURCE);
    tgt.psql(SEED_TARGET);
    // 0.0.0.0 reaches this machine but is not one of the names pgflip treats as local.
    let remote = tgt.url().replace("127.0.0.1", "0.0.0.0");
    let before = tgt.dump();
    let o = pgflip(&["sync", "--source", &src.url(), "--target", &remote, "items"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
    assert_eq!(tgt.dump(), before);
    let o = pgflip(&[
        "sync",
        "--source",
        &src.url(),
        "--target",
        &remote,
        "items",
        "--yes",
    ]);
    ok(&o);
    assert_eq!(q(&tgt, "SELECT count(*) FROM items"), "4");
}

#[test]
fn foreign_keys_from_other_tables() {
    let (src, tgt) = server_pair("fk");
    let ddl = "CREATE TABLE parent (id int PRIMARY KEY, v text); \
               CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent); \
               CREATE TABLE cascading (id int PRIMARY KEY, parent_id int REFERENCES parent ON DELETE CASCADE)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO parent VALUES (1, 'one'), (3, 'three')");
    tgt.psql("INSERT INTO parent VALUES (1, 'uno'), (2, 'dos'); INSERT INTO child VALUES (10, 2); INSERT INTO cascading VALUES (20, 1)");
    let fks = |db: &TestDb| {
        q(db, "SELECT string_agg(conname || ':' || condeferrable || condeferred || ':' || pg_get_constraintdef(oid), ',' ORDER BY conname) FROM pg_constraint WHERE contype = 'f'")
    };
    let fk_before = fks(&tgt);
    let before = tgt.dump();

    // child references parent 2, which the source lacks: refuse, naming child.
    let o = sync(&src, &tgt, &["parent"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("referenced by public.child")
            && stderr(&o).contains("child_parent_id_fkey"),
        "{}",
        stderr(&o)
    );
    assert_eq!(tgt.dump(), before, "target unchanged");
    // Deferring does not make dangling references valid: still refused, at commit, FKs restored.
    let o = sync(&src, &tgt, &["parent", "--defer-constraints"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("child_parent_id_fkey"),
        "{}",
        stderr(&o)
    );
    assert_eq!(tgt.dump(), before);

    // Once the source has every referenced row: the default merges, and nothing cascades.
    src.psql("INSERT INTO parent VALUES (2, 'two')");
    ok(&sync(&src, &tgt, &["parent"]));
    assert_eq!(
        q(
            &tgt,
            "SELECT string_agg(id || v, ',' ORDER BY id) FROM parent"
        ),
        "1one,2two,3three"
    );
    assert_eq!(q(&tgt, "SELECT count(*) FROM cascading"), "1", "no cascade");
    assert_eq!(fks(&tgt), fk_before);

    // --defer-constraints: delete + copy inside one transaction with the FKs deferred; the
    // cascading FK cannot be deferred, so that table is merged. FKs restored afterwards.
    src.psql("UPDATE parent SET v = upper(v)");
    ok(&sync(&src, &tgt, &["parent", "--defer-constraints"]));
    assert_eq!(
        q(&tgt, "SELECT string_agg(v, ',' ORDER BY id) FROM parent"),
        "ONE,TWO,THREE"
    );
    assert_eq!(q(&tgt, "SELECT count(*) FROM cascading"), "1", "no cascade");
    assert_eq!(fks(&tgt), fk_before, "foreign keys restored");

    // Syncing parent and child together: one transaction, locked together, emptied children
    // first (small tables: DELETE, no CASCADE), loaded parents first.
    src.psql("INSERT INTO child VALUES (11, 3); DELETE FROM parent WHERE id = 2");
    tgt.psql("DELETE FROM cascading");
    let o = sync(&src, &tgt, &["parent", "child", "cascading", "--dry-run"]);
    let plan = stdout(&o);
    assert!(
        plan.contains("LOCK TABLE ONLY public.parent, ONLY public.c")
            && plan.contains("IN SHARE ROW EXCLUSIVE MODE")
            && !plan.contains("CASCADE")
            && !plan.contains("TRUNCATE"),
        "{plan}"
    );
    let at = |s: &str| plan.find(s).unwrap_or_else(|| panic!("{s} in {plan}"));
    assert!(at("DELETE FROM ONLY public.child") < at("DELETE FROM ONLY public.parent"));
    assert!(at("COPY public.parent") < at("COPY public.child"), "{plan}");
    assert_eq!(plan.matches("BEGIN;").count(), 1, "{plan}");
    ok(&sync(&src, &tgt, &["parent", "child", "cascading"]));
    assert_eq!(
        q(
            &tgt,
            "SELECT string_agg(id || ':' || parent_id, ',') FROM child"
        ),
        "11:3"
    );

    // --disable-integrity lets dangling references through (superuser only).
    tgt.psql("INSERT INTO parent VALUES (7, 'x'); INSERT INTO child VALUES (12, 7)");
    ok(&sync(&src, &tgt, &["parent", "--disable-integrity"]));
    assert_eq!(q(&tgt, "SELECT count(*) FROM parent WHERE id = 7"), "0");
    assert_eq!(fks(&tgt), fk_before);
}

#[test]
fn groups_with_variables_and_data_rules() {
    let (src, tgt) = server_pair("groups");
    let ddl = "CREATE TABLE products (id int PRIMARY KEY, name text); \
               CREATE TABLE reviews (id int PRIMARY KEY, product_id int, body text); \
               CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL, phone text, token text, score int, born date)";
    src.psql(ddl);
    tgt.psql(ddl);
    // `born` lies outside random_date's range (1970-01-01 and the 10,000 days after), so a
    // random date can never equal it.
    src.psql("INSERT INTO products VALUES (1, 'p1'), (2, 'p2'); \
              INSERT INTO reviews VALUES (1, 1, 'good'), (2, 2, 'bad'), (3, 1, 'ok'); \
              INSERT INTO users SELECT g, 'real' || g || '@corp.com', '0123', 'tok' || g, g, '1960-01-01' FROM generate_series(1, 20) g");
    tgt.psql("INSERT INTO products VALUES (1, 'old'), (2, 'keep'); INSERT INTO reviews VALUES (9, 1, 'stale'), (8, 2, 'keep')");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgflip.toml");
    std::fs::write(
        &cfg,
        r#"
[groups]
product = { products = "where id = {1}", reviews = "product_id = {1}" }
[data_rules]
email = "unique_email"
"users.phone" = "null"
token = { value = "redacted" }
score = { statement = "score * 10" }
born = "random_date"
"#,
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    // The variable is a quoted literal: an injection attempt is just a value that matches nothing.
    let o = sync(&src, &tgt, &["--config", cfg, "product:1' OR '1'='1"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    ok(&sync(&src, &tgt, &["--config", cfg, "product:1"]));
    assert_eq!(
        q(
            &tgt,
            "SELECT string_agg(id || name, ',' ORDER BY id) FROM products"
        ),
        "1p1,2keep"
    );
    assert_eq!(
        q(
            &tgt,
            "SELECT string_agg(id || body, ',' ORDER BY id) FROM reviews"
        ),
        "1good,3ok,8keep"
    );

    ok(&sync(&src, &tgt, &["--config", cfg, "users"]));
    assert_eq!(
        q(&tgt, "SELECT count(DISTINCT email), bool_and(email LIKE 'email%@example.org'), count(phone), min(token), max(token), sum(score), bool_and(born >= '1970-01-01' AND born < date '1970-01-01' + 10000) FROM users"),
        "20|t|0|redacted|redacted|2100|t"
    );
    ok(&sync(&src, &tgt, &["--config", cfg, "users", "--no-rules"]));
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM users WHERE email LIKE 'real%'"),
        "20"
    );
}

#[test]
fn kill_9_during_a_large_copy_keeps_the_old_rows() {
    let (src, tgt) = server_pair("kill");
    let rows: u64 = std::env::var("PGFLIP_TEST_KILL_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    src.psql(&format!("CREATE TABLE big (id bigint PRIMARY KEY, pad text); INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, {rows}) g"));
    tgt.psql("CREATE TABLE big (id bigint PRIMARY KEY, pad text); INSERT INTO big VALUES (1, 'old'), (2, 'old')");
    let (s, t) = (src.url(), tgt.url());
    let split = ["big", "--staging", "--split-tables-larger-than", "16MB"];
    for mode in [&["big"][..], &["big", "--staging"], &split[..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgflip"))
            .args(["sync", "--source", &s, "--target", &t])
            .args(mode)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = q(&tgt, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgflip' AND query LIKE 'COPY%' AND state = 'active'");
            if n != "0" {
                break;
            }
            assert!(Instant::now() < deadline, "the copy never started");
            assert!(
                child.try_wait().unwrap().is_none(),
                "pgflip ended before it was killed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy finished before the kill; use more rows"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(
            q(
                &tgt,
                "SELECT string_agg(id || pad, ',' ORDER BY id) FROM big"
            ),
            "1old,2old",
            "the live table keeps its old rows"
        );
        assert_eq!(
            q(
                &tgt,
                "SELECT count(*) FROM pg_class WHERE relname = 'big_staging'"
            ),
            "0",
            "no staging table, half-filled or not"
        );
    }
    // A rerun succeeds (waiting for the killed sessions to go) and leaves nothing behind.
    ok(&sync(&src, &tgt, &["big"]));
    assert_eq!(q(&tgt, "SELECT count(*) FROM big"), rows.to_string());
    ok(&sync(&src, &tgt, &["big", "--staging"]));
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM big_staging"),
        rows.to_string()
    );
    ok(&sync(&src, &tgt, &split));
    assert_eq!(digest(&tgt, "big_staging"), digest(&src, "big"));
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '%pgflip_loading%'"
        ),
        "0"
    );
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'pgflip%' OR relpersistence = 't'"
        ),
        "0"
    );
    // pgflip has exited; its backends go as soon as the server has seen the sockets close,
    // which on a loaded machine can take a moment.
    let mut left = String::new();
    for _ in 0..100 {
        left = q(
            &tgt,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgflip'",
        );
        if left == "0" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        left, "0",
        "pgflip backends still on the target 10 s after it exited"
    );
}

#[test]
fn staging_gets_every_index_and_its_own_sequences() {
    let (src, tgt) = server_pair("staging_struct");
    let ddl = "CREATE EXTENSION IF NOT EXISTS btree_gist; \
               CREATE TABLE \"Odd \"\"Name\" (id serial PRIMARY KEY, ident bigint GENERATED BY DEFAULT AS IDENTITY, \
               code text UNIQUE, during tstzrange, flag bool DEFAULT true, \
               EXCLUDE USING gist (during WITH &&), UNIQUE (ident) DEFERRABLE INITIALLY DEFERRED); \
               CREATE INDEX partial_idx ON \"Odd \"\"Name\" (lower(code)) WHERE flag";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO \"Odd \"\"Name\" (code, during) SELECT 'c' || g, tstzrange(now() + g * interval '1 h', now() + (g + 1) * interval '1 h') FROM generate_series(1, 100) g");
    tgt.psql("INSERT INTO \"Odd \"\"Name\" (code) VALUES ('live')");
    let live_seq = q(&tgt, "SELECT last_value FROM \"Odd \"\"Name_id_seq\"");
    ok(&sync(&src, &tgt, &["Odd \"Name", "--staging"]));
    let staging = "\"Odd \"\"Name_staging\"";
    assert_eq!(q(&tgt, &format!("SELECT count(*) FROM {staging}")), "100");
    let defs = |rel: &str| {
        q(
            &tgt,
            &format!(
                "SELECT string_agg(d, ' / ' ORDER BY d) FROM (SELECT regexp_replace(pg_get_indexdef(indexrelid), '^.* USING ', '') || ' ' || indisunique AS d FROM pg_index WHERE indrelid = '{rel}'::regclass \
                 UNION ALL SELECT contype::text || pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = '{rel}'::regclass) x"
            ),
        )
    };
    assert_eq!(defs("\"Odd \"\"Name\""), defs(staging));
    // Inserting into staging uses its own sequences; the live ones do not move.
    tgt.psql(&format!("INSERT INTO {staging} (code) VALUES ('new')"));
    assert_eq!(
        q(
            &tgt,
            &format!("SELECT id, ident FROM {staging} WHERE code = 'new'")
        ),
        "101|101"
    );
    assert_eq!(
        q(&tgt, "SELECT last_value FROM \"Odd \"\"Name_id_seq\""),
        live_seq
    );
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '%pgflip_loading%'"
        ),
        "0"
    );
    // Dry run lists the parallel index builds outside the transaction.
    let out = ok(&sync(&src, &tgt, &["Odd \"Name", "--staging", "--dry-run"]));
    assert!(
        out.contains("-- runs outside a transaction\nCREATE UNIQUE INDEX"),
        "{out}"
    );
}

#[test]
fn every_shared_table_by_default_with_excludes_schemas_and_config_endpoints() {
    let (src, tgt) = server_pair("alltables");
    let ddl = "CREATE SCHEMA other; CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE audit_log (id int); \
               CREATE TABLE b (id int); CREATE TABLE other.c (id int)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("CREATE TABLE only_on_source (id int); INSERT INTO a VALUES (1); INSERT INTO audit_log VALUES (1); \
              INSERT INTO b VALUES (1); INSERT INTO other.c VALUES (1)");
    let counts = || {
        q(&tgt, "SELECT concat((SELECT count(*) FROM a), (SELECT count(*) FROM audit_log), (SELECT count(*) FROM b), (SELECT count(*) FROM other.c))")
    };
    // Endpoints from pgflip.toml in the current directory.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pgflip.toml"),
        format!(
            "source = {:?}\ntarget = {:?}\nexclude = [\"audit_*\"]\n",
            src.url(),
            tgt.url()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pgflip"))
            .arg("sync")
            .args(args)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    ok(&run(&[]));
    assert_eq!(
        counts(),
        "1010",
        "public tables both sides have, minus the excluded ones"
    );
    ok(&run(&["--exclude", "b", "--all-schemas", "--json"]));
    assert_eq!(
        counts(),
        "1111",
        "--exclude replaces the file's exclude (audit_log is back)"
    );
    tgt.psql("TRUNCATE a, audit_log, b, other.c");
    ok(&run(&["--schemas", "other"]));
    assert_eq!(counts(), "0001");
    ok(&run(&[
        "*",
        "--schemas",
        "public,other",
        "--exclude",
        "other.*",
    ]));
    assert_eq!(counts(), "1111", "the command line's exclude only");
}

#[test]
fn readers_see_the_old_rows_or_the_new_rows_never_a_mix() {
    let (src, tgt) = server_pair("readers");
    src.psql("CREATE TABLE r (id int PRIMARY KEY, v text); INSERT INTO r SELECT g, 'new' FROM generate_series(1, 300000) g");
    tgt.psql("CREATE TABLE r (id int PRIMARY KEY, v text); INSERT INTO r SELECT g, 'old' FROM generate_series(1, 1000) g");
    let (s, t) = (src.url(), tgt.url());
    let child = std::thread::spawn(move || pgflip(&["sync", "--source", &s, "--target", &t, "r"]));
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = q(
            &tgt,
            "SELECT count(*) || ':' || min(v) || ':' || max(v) FROM r",
        );
        seen.insert(v);
        if child.is_finished() || Instant::now() > deadline {
            break;
        }
    }
    ok(&child.join().unwrap());
    seen.insert(q(
        &tgt,
        "SELECT count(*) || ':' || min(v) || ':' || max(v) FROM r",
    ));
    for v in &seen {
        assert!(
            v == "1000:old:old" || v == "300000:new:new",
            "a reader saw {v}"
        );
    }
    assert!(seen.contains("300000:new:new"));
}

const SPLIT: [&str; 3] = ["--staging", "--split-tables-larger-than", "1MB"];

#[test]
fn staging_split_into_block_ranges_copies_every_row_once() {
    let (src, tgt) = server_pair("split");
    let ddl = "CREATE TABLE k (id bigint PRIMARY KEY, email text, pad text); \
               CREATE TABLE nokey (a int, b text)";
    src.psql(ddl);
    tgt.psql(ddl);
    // Holes in the blocks (deleted rows) and duplicates in the table without a key.
    src.psql(
        "INSERT INTO k SELECT g, 'real' || g || '@corp.com', repeat(md5(g::text), 6) FROM generate_series(1, 20000) g; \
         DELETE FROM k WHERE id % 7 = 0; \
         INSERT INTO nokey SELECT g % 5000, repeat('n', 200) FROM generate_series(1, 20000) g",
    );
    tgt.psql("INSERT INTO k VALUES (1, 'live', 'live'); INSERT INTO nokey VALUES (-1, 'live')");
    let live = (digest(&tgt, "k"), digest(&tgt, "nokey"));

    let mut args = vec!["k", "nokey"];
    args.extend(SPLIT);
    let plan = ok(&sync(&src, &tgt, &[&args[..], &["--dry-run"]].concat()));
    for t in ["public.k", "public.nokey"] {
        assert!(
            plan.contains(&format!("of {t} from the source (range 1 of ")),
            "{t} is split: {plan}"
        );
    }
    assert!(plan.contains("ctid >= '(") && plan.contains("to the end of public.nokey"));
    assert!(plan.contains("-- runs outside a transaction\nCOPY public.k_staging_pgflip_loading"));

    ok(&sync(&src, &tgt, &args));
    assert_eq!(digest(&tgt, "k_staging"), digest(&src, "k"));
    assert_eq!(digest(&tgt, "nokey_staging"), digest(&src, "nokey"));
    assert_eq!((digest(&tgt, "k"), digest(&tgt, "nokey")), live);
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '%pgflip_loading%'"
        ),
        "0"
    );

    // --where applies to every range.
    let mut args = vec!["k", "--where", "id % 3 = 0"];
    args.extend(SPLIT);
    ok(&sync(&src, &tgt, &args));
    assert_eq!(
        digest(&tgt, "k_staging"),
        digest(&src, "(SELECT * FROM k WHERE id % 3 = 0)")
    );

    // Data rules too.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pgflip.toml");
    std::fs::write(&cfg, "[data_rules]\n\"k.email\" = \"unique_email\"\n").unwrap();
    let mut args = vec!["k", "--config", cfg.to_str().unwrap()];
    args.extend(SPLIT);
    ok(&sync(&src, &tgt, &args));
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*), count(DISTINCT email), \
             bool_and(email = 'email' || id || '@example.org') FROM k_staging"
        ),
        format!("{0}|{0}|t", q(&src, "SELECT count(*) FROM k"))
    );
    assert_eq!(
        digest(&tgt, "(SELECT id, pad FROM k_staging)"),
        digest(&src, "(SELECT id, pad FROM k)")
    );
}

#[test]
fn split_ranges_read_the_snapshot_not_later_rows() {
    let (src, tgt) = server_pair("split_snap");
    let ddl = "CREATE TABLE t (id bigint PRIMARY KEY, v int, pad text)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO t SELECT g, g, repeat('p', 200) FROM generate_series(1, 20000) g");
    let at_snapshot = digest(&src, "t");
    // A session holding a lock on t_staging (pgflip's, from an earlier load) makes the sync
    // wait after its snapshot is taken.
    ok(&sync(&src, &tgt, &["t", "--staging-table"]));
    let srv = tgt.srv;
    let db = tgt.name.clone();
    let holder = std::thread::spawn(move || {
        let _ = srv.psql(
            &db,
            "BEGIN; LOCK TABLE t_staging IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120); COMMIT",
        );
    });
    wait_for(&tgt, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 't_staging' AND l.granted AND l.mode = 'AccessExclusiveLock'");
    let (s, t) = (src.url(), tgt.url());
    let child = Command::new(env!("CARGO_BIN_EXE_pgflip"))
        .args(["sync", "--source", &s, "--target", &t, "t"])
        .args(SPLIT)
        .args(["--lock-timeout", "60s", "--max-wait", "90s"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&tgt, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgflip' AND wait_event_type = 'Lock'");
    // Committed after the snapshot: new rows (in every range, the last one too), updates,
    // deletes. None of it may show.
    src.psql(
        "INSERT INTO t SELECT g, g, repeat('q', 200) FROM generate_series(20001, 30000) g; \
         UPDATE t SET v = -v WHERE id % 100 = 0; DELETE FROM t WHERE id % 11 = 0",
    );
    q(&tgt, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()");
    holder.join().unwrap();
    let o = child.wait_with_output().unwrap();
    ok(&o);
    assert_eq!(digest(&tgt, "t_staging"), at_snapshot);
}

/// Polls `sql` (a count) on `db` until it is not zero.
fn wait_for(db: &TestDb, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while q(db, sql) == "0" {
        assert!(Instant::now() < deadline, "timed out waiting for: {sql}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_failing_range_fails_the_sync_and_leaves_no_loading_table() {
    let (src, tgt) = server_pair("split_fail");
    src.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v int, pad text); \
              INSERT INTO t SELECT g, g, repeat('p', 200) FROM generate_series(1, 20000) g",
    );
    // The staging table is built LIKE the live one, CHECK included: one range breaks it.
    tgt.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v int CHECK (v <> 15000), pad text); \
              INSERT INTO t VALUES (1, 1, 'live')",
    );
    let before = tgt.pg_dump(&["--exclude-schema=pgflip"]);
    let mut args = vec!["t"];
    args.extend(SPLIT);
    let o = sync(&src, &tgt, &args);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert_eq!(q(&tgt, "SELECT count(*) FROM pgflip.operations"), "0");
    let err = stderr(&o);
    assert!(
        err.contains("check constraint") && err.contains("range "),
        "the message names the constraint and the range: {err}"
    );
    assert_eq!(
        tgt.pg_dump(&["--exclude-schema=pgflip"]),
        before,
        "no staging or loading table left, live untouched"
    );
    // Fixed at the source, a rerun goes through.
    src.psql("UPDATE t SET v = -1 WHERE v = 15000");
    ok(&sync(&src, &tgt, &args));
    assert_eq!(digest(&tgt, "t_staging"), digest(&src, "t"));
}

/// A sync holds pgflip's target lock: a second pgflip run on the same target is refused while
/// the first one is at work (naming it), and every run is on record in `pgflip.runs`.
#[tokio::test]
async fn a_second_run_on_the_same_target_is_refused_and_runs_are_recorded() {
    let (src, tgt) = server_pair("sync_lock");
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    src.psql(&format!(
        "{ddl}; INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g"
    ));
    tgt.psql(ddl);
    // State first (as after any swap), so the run is recorded from its start.
    let c = std::sync::Arc::new(tgt.client().await);
    pgflip::state::ensure(&c).await.unwrap();

    // The first run waits on a writer's lock held on the live table (a small table: its LOCK
    // … SHARE ROW EXCLUSIVE retries under lock_timeout; readers would not hold it up), holding
    // pgflip's target lock all the while.
    let blocker = tgt.client().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE t IN ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let (s, t) = (src.url(), tgt.url());
    let first = Command::new(env!("CARGO_BIN_EXE_pgflip"))
        .args([
            "sync",
            "--source",
            &s,
            "--target",
            &t,
            "t",
            "--max-wait",
            "30s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // pg_locks shows every database of the server, and other tests share it: only
        // pgflip's target lock on this database counts.
        let held = q(
            &tgt,
            &format!(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND classid = {}::oid AND objid = {}::oid AND objsubid = 2",
                pgflip::state::LOCK_CLASSID,
                pgflip::state::LOCK_OBJID_TARGET
            ),
        );
        if held != "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first sync never took pgflip's lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = sync(&src, &tgt, &["t"]);
    assert_eq!(second.status.code(), Some(5), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("another pgflip run is acting on this target: pid"),
        "{}",
        stderr(&second)
    );
    assert_eq!(q(&tgt, "SELECT count(*) FROM t"), "0");

    blocker.batch_execute("ROLLBACK").await.unwrap();
    let out = first.wait_with_output().unwrap();
    ok(&out);
    assert_eq!(digest(&tgt, "t"), digest(&src, "t"));
    let runs = pgflip::state::runs(&c, 5).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].command, "sync public.t");
    assert_eq!(runs[0].status, "succeeded");
    // The lock is gone with the run.
    let l = pgflip::state::TargetLock::acquire(c.clone()).await.unwrap();
    l.release().await.unwrap();
}

/// Small tables are emptied with DELETE under SHARE ROW EXCLUSIVE, several units in one
/// transaction: while it is open readers read the old rows without waiting, writers wait, and
/// every table changes at COMMIT. A failure before COMMIT (or a kill) leaves every old row; a
/// table whose lock is not granted in time is rolled back to its savepoint and loaded alone
/// afterwards, while the others commit.
#[tokio::test]
async fn small_tables_share_a_transaction_that_holds_writers_and_not_readers() {
    let (src, tgt) = server_pair("small_tx");
    let ddl = "CREATE TABLE s1 (id int PRIMARY KEY, v text); \
               CREATE TABLE s2 (id int PRIMARY KEY, v text); \
               CREATE TABLE s3 (id int PRIMARY KEY, v text)";
    src.psql(&format!(
        "{ddl}; INSERT INTO s1 SELECT g, 'new' FROM generate_series(1, 5) g; \
         INSERT INTO s2 SELECT g, 'new' FROM generate_series(1, 5) g; \
         INSERT INTO s3 SELECT g, 'new' FROM generate_series(1, 5) g"
    ));
    tgt.psql(ddl);
    let reset = || {
        tgt.psql(
            "DELETE FROM s1; DELETE FROM s2; DELETE FROM s3; \
             INSERT INTO s1 SELECT g, 'old' FROM generate_series(1, 3) g; \
             INSERT INTO s2 SELECT g, 'old' FROM generate_series(1, 3) g; \
             INSERT INTO s3 SELECT g, 'old' FROM generate_series(1, 3) g",
        )
    };
    let state = || {
        q(
            &tgt,
            "SELECT (SELECT count(*) || min(v) || max(v) FROM s1) || ',' || \
                    (SELECT count(*) || min(v) || max(v) FROM s2) || ',' || \
                    (SELECT count(*) || min(v) || max(v) FROM s3)",
        )
    };
    const OLD: &str = "3oldold,3oldold,3oldold";
    const NEW: &str = "5newnew,5newnew,5newnew";
    let (s, t) = (src.url(), tgt.url());
    let args = [
        "sync", "--source", &s, "--target", &t, "s1", "s2", "s3", "--jobs", "1",
    ];
    let spawn = |points: &str, dir: &std::path::Path, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pgflip"))
            .args(args)
            .args(extra)
            .env("PGFLIP_FAILPOINTS", points)
            .env("PGFLIP_FAILPOINT_DIR", dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let plan = ok(&pgflip(&[&args[..], &["--dry-run"]].concat()));
    assert_eq!(plan.matches("BEGIN;").count(), 1, "one transaction: {plan}");
    assert_eq!(
        plan.matches("IN SHARE ROW EXCLUSIVE MODE;").count(),
        3,
        "{plan}"
    );

    // Paused before COMMIT: every table loaded, nothing committed.
    reset();
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn("sync.before_commit=pause", dir.path(), &[]);
    let paused = dir.path().join("sync.before_commit.paused");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !paused.exists() {
        assert!(Instant::now() < deadline, "never paused");
        if let Some(st) = child.try_wait().unwrap() {
            panic!("sync ended ({st}) before its commit");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = tgt.client().await;
    // Readers do not wait, and see the old rows (never an empty table).
    c.batch_execute("SET statement_timeout = '10s'")
        .await
        .unwrap();
    assert_eq!(state(), OLD);
    // Writers wait until COMMIT (and locking reads, on the rows the DELETE took).
    c.batch_execute("SET lock_timeout = '200ms'").await.unwrap();
    for w in [
        "INSERT INTO s2 VALUES (100, 'app')",
        "SELECT FROM s3 WHERE id = 1 FOR SHARE",
    ] {
        let e = c
            .batch_execute(w)
            .await
            .expect_err("waits for the sync's COMMIT");
        assert_eq!(e.code().map(|c| c.code()), Some("55P03"), "{w}: {e}");
    }
    // What pgflip holds: SHARE ROW EXCLUSIVE (and DELETE's ROW EXCLUSIVE) on each table, all in
    // one backend; never ACCESS EXCLUSIVE. (The server reports a statement's error before it
    // releases the statement's locks: the writer's own are left out, and asking its backend
    // something first waits for that.)
    let writer = text(&c, "SELECT pg_backend_pid()").await;
    let held = q(
        &tgt,
        &format!(
            "SELECT count(DISTINCT pid) || ':' || string_agg(DISTINCT mode, ',' ORDER BY mode) || ':' || \
                    count(DISTINCT relation) FROM pg_locks \
             WHERE relation IN ('s1'::regclass, 's2'::regclass, 's3'::regclass) AND granted \
             AND pid <> {writer}"
        ),
    );
    assert_eq!(held, "1:RowExclusiveLock,ShareRowExclusiveLock:3");
    std::fs::remove_file(&paused).unwrap();
    ok(&child.wait_with_output().unwrap());
    assert_eq!(state(), NEW);
    c.batch_execute("INSERT INTO s2 VALUES (100, 'app')")
        .await
        .expect("writers go on after COMMIT");

    // A failure before COMMIT, or a kill: every table keeps its old rows.
    for point in ["sync.before_commit=error", "sync.before_commit=exit"] {
        reset();
        let out = spawn(point, dir.path(), &[]).wait_with_output().unwrap();
        assert!(!out.status.success(), "{point}");
        assert_eq!(state(), OLD, "{point}");
    }

    // A table held by a writer: the others commit without it, it is loaded alone once free.
    reset();
    let writer = tgt.client().await;
    writer
        .batch_execute("BEGIN; LOCK TABLE s2 IN ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let child = spawn("", dir.path(), &["--max-wait", "60s"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while state() != "5newnew,3oldold,5newnew" {
        assert!(
            Instant::now() < deadline,
            "s1 and s3 never committed: {}",
            state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.batch_execute("ROLLBACK").await.unwrap();
    let out = ok(&child.wait_with_output().unwrap());
    assert!(out.contains("✔ s2 - "), "{out}");
    assert_eq!(state(), NEW);
}

/// Small tables sharing a transaction go to the target as `INSERT … VALUES` with literals, in
/// one message (issue 13's many small tables). Every value must arrive exactly as a COPY would
/// have brought it, whatever the target's DateStyle and IntervalStyle; a table with an INSERT
/// rule on the target keeps its COPY (COPY ignores rules); and the path must really be taken.
#[test]
fn small_tables_sent_as_literals_arrive_exactly() {
    let (src, tgt) = server_pair("inline");
    let ddl = r#"CREATE TYPE mood AS ENUM ('sad', 'ok', 'it''s \ fine');
        CREATE TABLE "Odd ""Values""" (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            f8 float8, f4 real, n numeric, ts timestamptz, t timestamp, d date, iv interval,
            b bytea, s text, j jsonb, ia int[], ta text[], u uuid, ok bool, m mood, cash money);
        CREATE TABLE plain (id int PRIMARY KEY, v text);
        CREATE TABLE ruled (id int PRIMARY KEY, v text)"#;
    src.psql(ddl);
    tgt.psql(ddl);
    tgt.psql("CREATE RULE quiet AS ON INSERT TO ruled DO INSTEAD NOTHING");
    src.psql(
        r#"INSERT INTO "Odd ""Values""" (f8, f4, n, ts, t, d, iv, b, s, j, ia, ta, u, ok, m, cash)
           OVERRIDING SYSTEM VALUE VALUES
           (0.1, 0.1, 12345678901234567890.000000000001, '2024-02-29 23:59:59.999999+05:30',
            '1999-12-31 12:00', 'infinity', '-1 year +2 mons -3 days +04:05:06.7', '\x00275c0a'::bytea,
            E'quote '' backslash \\ newline \n tab \t unicode é€', '{"a": [1, "x\"y"]}',
            '{1,NULL,3}', '{"a,b","c\"d",NULL,"e\\f"}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            true, 'it''s \ fine', 12.34),
           (1e-300, '-Infinity', 'NaN', '-infinity', '0001-01-01 BC', '2000-01-01',
            '-00:00:00.000001', '', '', 'null', '{}', '{}', NULL, false, 'sad', -0.01),
           (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL);
           INSERT INTO plain SELECT g, 'new ' || g FROM generate_series(1, 5) g;
           INSERT INTO ruled SELECT g, 'new ' || g FROM generate_series(1, 5) g"#,
    );
    tgt.psql(
        r#"INSERT INTO plain VALUES (99, 'old'); INSERT INTO "Odd ""Values""" (s) VALUES ('old')"#,
    );
    // A reader of another DateStyle and IntervalStyle: ISO dates and postgres-style intervals
    // still read back as the same values.
    tgt.psql(&format!(
        "ALTER DATABASE {} SET DateStyle = 'SQL, DMY'; ALTER DATABASE {0} SET IntervalStyle = 'sql_standard'",
        tgt.name
    ));
    let (s, t) = (src.url(), tgt.url());
    let run = |extra: &[&str]| {
        let mut args = vec!["sync", "--source", &s, "--target", &t, "--jobs", "1"];
        args.extend_from_slice(extra);
        let o = pgflip_env(&args, &[("PGFLIP_LOG", "pgflip::sync=debug")]);
        ok(&o);
        stderr(&o)
    };
    let err = run(&["--exclude", "ruled"]);
    let sent = err
        .lines()
        .find(|l| l.contains("sent inline"))
        .unwrap_or_default();
    assert!(
        sent.contains("Values") && sent.contains("plain"),
        "both tables in one message: {err}"
    );
    let rows = r#"(SELECT id, f8, f4, n, ts, t, d, iv, b, s, j, ia, ta, u, ok, m::text, cash::numeric
                   FROM "Odd ""Values""")"#;
    let as_iso = |db: &TestDb| {
        q(
            db,
            &format!(
                "SET DateStyle = ISO; SET IntervalStyle = postgres; SET TimeZone = UTC; \
                 SELECT count(*) || ':' || md5(string_agg(x::text, ',' ORDER BY x::text)) FROM {rows} x"
            ),
        )
    };
    assert_eq!(as_iso(&src), as_iso(&tgt));
    assert_eq!(digest(&src, "plain"), digest(&tgt, "plain"));
    // COPY ignores rules: a table with an INSERT rule keeps its COPY, and its shared
    // transaction too.
    let err = run(&["ruled", "plain"]);
    assert!(!err.contains("sent inline"), "{err}");
    assert_eq!(q(&tgt, "SELECT count(*) FROM ruled"), "5");
    assert_eq!(digest(&src, "plain"), digest(&tgt, "plain"));
    // The identity continues after the copied rows.
    assert_eq!(
        q(
            &tgt,
            r#"INSERT INTO "Odd ""Values""" (s) VALUES ('next') RETURNING id"#
        ),
        "4"
    );
}

/// A large in-database diff (staging beside live) is split by key range over spare
/// connections, each part diffed at once in one shared snapshot: the counts are those of the
/// single pass, with a text first key column (split at sampled text values, quotes in them)
/// and with more connections than distinct first-key values (empty parts); rows written after
/// the snapshot are not counted.
#[tokio::test]
async fn a_large_diff_split_over_connections_counts_what_one_pass_counts() {
    let db = fresh_db("split_diff");
    // 250,000 rows (over rowdiff::SPLIT_MIN_ROWS), key (region text, id int); 1% changed on
    // each kind.
    db.psql(
        "CREATE TABLE live (region text, id int, v int, note text, PRIMARY KEY (region, id)); \
         INSERT INTO live SELECT 'r''' || (g % 5), g, g, md5(g::text) FROM generate_series(1, 250000) g; \
         CREATE TABLE staging (LIKE live INCLUDING ALL); INSERT INTO staging SELECT * FROM live; \
         UPDATE staging SET v = -v WHERE id % 100 = 1; DELETE FROM staging WHERE id % 100 = 2; \
         INSERT INTO staging SELECT 'new', g, 0, NULL FROM generate_series(1, 2500) g; \
         ANALYZE live; ANALYZE staging",
    );
    let key = vec!["region".to_string(), "id".to_string()];
    let cols: Vec<(String, bool)> = ["v", "note"]
        .iter()
        .map(|c| (c.to_string(), false))
        .collect();
    let c = db.client().await;
    let mut helpers = Vec::new();
    for _ in 0..7 {
        helpers.push(db.client().await);
    }
    let writer = db.client().await;
    let diff = |n: usize| {
        let (c, helpers, key, cols, writer) = (&c, &helpers, &key, &cols, &writer);
        async move {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .unwrap();
            // The snapshot is taken by the transaction's first query, before this write.
            c.query_one("SELECT 1", &[]).await.unwrap();
            writer
                .batch_execute("INSERT INTO staging VALUES ('late', 1, 1, NULL)")
                .await
                .unwrap();
            let refs: Vec<&tokio_postgres::Client> = helpers.iter().take(n).collect();
            let d = pgflip::rowdiff::in_database(c, &refs, "staging", "live", key, cols, 0)
                .await
                .unwrap();
            c.batch_execute("COMMIT").await.unwrap();
            writer
                .batch_execute("DELETE FROM staging WHERE region = 'late'")
                .await
                .unwrap();
            d
        }
    };
    let one = diff(0).await;
    assert_eq!((one.new, one.updated, one.deleted), (2500, 2500, 2500));
    assert_eq!(one.parts, None);
    let two = diff(1).await;
    assert_eq!((two.new, two.updated, two.deleted), (2500, 2500, 2500));
    assert_eq!(two.parts, Some(2));
    // Six distinct regions for eight connections: repeated bounds make fewer parts.
    let many = diff(7).await;
    assert_eq!((many.new, many.updated, many.deleted), (2500, 2500, 2500));
    let parts = many.parts.expect("split");
    assert!((2..=7).contains(&parts), "{parts} parts");
    // The helpers' transactions are over: they are idle, not idle in transaction.
    assert_eq!(
        text(
            &c,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state = 'idle in transaction'"
        )
        .await,
        "0"
    );
}

/// Through `pgflip sync`: a large table's diff is split over the `--jobs` slots no other table
/// is using (and gives the counts of the single pass); a small table's is not.
#[test]
fn sync_splits_a_large_tables_diff_over_spare_jobs_and_not_a_small_ones() {
    let (src, tgt) = server_pair("split_diff_sync");
    let ddl = "CREATE TABLE big (id int PRIMARY KEY, v int); \
               CREATE TABLE small (id int PRIMARY KEY, v int)";
    src.psql(&format!(
        "{ddl}; INSERT INTO big SELECT g, g FROM generate_series(1, 250000) g; \
         INSERT INTO small SELECT g, g FROM generate_series(1, 100) g; \
         UPDATE big SET v = -v WHERE id % 1000 = 1; DELETE FROM big WHERE id % 1000 = 2; \
         INSERT INTO big SELECT g, 0 FROM generate_series(300001, 300250) g"
    ));
    tgt.psql(&format!(
        "{ddl}; INSERT INTO big SELECT g, g FROM generate_series(1, 250000) g; \
         INSERT INTO small SELECT g, g FROM generate_series(1, 100) g; ANALYZE"
    ));
    let v: serde_json::Value = serde_json::from_str(&ok(&sync(
        &src,
        &tgt,
        &[
            "big",
            "small",
            "--staging-table",
            "--show-diff",
            "--jobs",
            "3",
            "--json",
        ],
    )))
    .unwrap();
    let diff = |t: &str| {
        v["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["table"] == t)
            .unwrap()["diff"]
            .clone()
    };
    let big = diff("public.big");
    assert_eq!(
        (&big["new"], &big["updated"], &big["deleted"]),
        (&250.into(), &250.into(), &250.into()),
        "{big}"
    );
    let parts = big["parts"].as_u64().expect("split");
    assert!((2..=3).contains(&parts), "{big}");
    let small = diff("public.small");
    assert_eq!(small["new"], 0, "{small}");
    assert!(small.get("parts").is_none(), "{small}");
}
