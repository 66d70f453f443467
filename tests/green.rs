//! `pgflip green`: build beside live, status and convergence, refresh, promote, rollback,
//! cancel, bad input and kill -9, against a real server.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

async fn text(c: &tokio_postgres::Client, sql: &str) -> String {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or("NULL").to_string();
        }
    }
    panic!("no row from {sql}")
}

/// A dump of everything but pgflip's own state (which the first write creates).
fn user_dump(db: &TestDb) -> String {
    db.pg_dump(&["--exclude-schema=pgflip"])
}

fn run_ok(args: &[&str]) -> String {
    let o = pgflip(args);
    assert!(
        o.status.success(),
        "pgflip {args:?} failed: {}\n{}",
        stderr(&o),
        stdout(&o)
    );
    stdout(&o)
}

fn status_json(db: &TestDb) -> Value {
    let s = run_ok(&["green", "status", "--target", &db.url(), "--json"]);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// The pipeline's members from `green status --json`, by live name.
fn member<'a>(status: &'a Value, live: &str) -> &'a Value {
    status["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["members"].as_array().unwrap())
        .find(|m| m["live"]["name"] == live)
        .unwrap_or_else(|| panic!("{live} not in {status}"))
}

/// A base table, a materialized view over it with a unique index, a second index, a grant to a
/// login role, comments and a storage parameter, a view over it and a materialized view over
/// that. Each relation carries its definition's version in a column.
fn setup(db: &TestDb, role: &str) {
    db.psql(&format!(
        r#"
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role} LOGIN; END IF;
END $$;
CREATE SCHEMA "My Schema";
GRANT USAGE ON SCHEMA "My Schema" TO {role};
CREATE TABLE "My Schema".base (id int PRIMARY KEY, grp int NOT NULL, amount int NOT NULL, note text);
INSERT INTO "My Schema".base SELECT g, g % 5, g, 'n' || g FROM generate_series(1, 100) g;
CREATE MATERIALIZED VIEW "My Schema"."Sales MV" WITH (autovacuum_enabled = false) AS
  SELECT grp, sum(amount)::int AS total, count(*)::int AS n, 1 AS version FROM "My Schema".base GROUP BY grp;
CREATE UNIQUE INDEX "Sales MV grp" ON "My Schema"."Sales MV" (grp);
CREATE INDEX sales_total ON "My Schema"."Sales MV" (total);
CREATE INDEX sales_n ON "My Schema"."Sales MV" (n);
COMMENT ON MATERIALIZED VIEW "My Schema"."Sales MV" IS 'sales per group';
COMMENT ON COLUMN "My Schema"."Sales MV".total IS 'sum of amounts';
GRANT SELECT ON "My Schema"."Sales MV" TO {role};
CREATE VIEW public.v_sales AS SELECT grp, total, version FROM "My Schema"."Sales MV";
GRANT SELECT ON public.v_sales TO {role};
CREATE MATERIALIZED VIEW public.mv_top AS SELECT grp, total, version FROM "My Schema"."Sales MV" WHERE total > 900;
CREATE UNIQUE INDEX mv_top_grp ON public.mv_top (grp);
GRANT SELECT ON public.mv_top TO {role};
"#
    ));
}

const NEW_QUERY: &str = "SELECT grp, sum(amount)::int AS total, 2 AS version FROM \"My Schema\".base WHERE amount > 10 GROUP BY grp";

#[tokio::test]
async fn green_create_builds_beside_live_with_everything_and_cancel_leaves_nothing() {
    let db = fresh_db("green_create");
    setup(&db, "green_reader");
    let c = db.client().await;
    let before = user_dump(&db);
    let live_oid = text(&c, "SELECT '\"My Schema\".\"Sales MV\"'::regclass::oid").await;

    let out = run_ok(&[
        "green",
        "create",
        "\"My Schema\".\"Sales MV\"",
        "--query",
        NEW_QUERY,
        "--target",
        &db.url(),
    ]);
    assert!(out.contains("public.mv_top"), "{out}");
    let schema = text(
        &c,
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pgflip\\_green\\_%'",
    )
    .await;
    // Live untouched: same object, old contents.
    assert_eq!(
        text(&c, "SELECT '\"My Schema\".\"Sales MV\"'::regclass::oid").await,
        live_oid
    );
    assert_eq!(
        text(
            &c,
            "SELECT DISTINCT version FROM \"My Schema\".\"Sales MV\""
        )
        .await,
        "1"
    );
    // Green: new contents, the indexes whose columns still exist (same names), owner, grants,
    // comments and storage parameters.
    let g = format!("{schema}.\"Sales MV\"");
    assert_eq!(
        text(&c, &format!("SELECT DISTINCT version FROM {g}")).await,
        "2"
    );
    assert_eq!(
        text(
            &c,
            &format!("SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname = '{schema}' AND tablename = 'Sales MV'")
        )
        .await,
        "Sales MV grp,sales_total"
    );
    assert_eq!(
        text(
            &c,
            &format!("SELECT has_table_privilege('green_reader', '{g}', 'SELECT')")
        )
        .await,
        "t"
    );
    assert_eq!(
        text(
            &c,
            &format!("SELECT obj_description('{g}'::regclass, 'pg_class')")
        )
        .await,
        "sales per group"
    );
    assert_eq!(
        text(&c, &format!("SELECT col_description('{g}'::regclass, 2)")).await,
        "sum of amounts"
    );
    assert_eq!(
        text(
            &c,
            &format!("SELECT reloptions::text FROM pg_class WHERE oid = '{g}'::regclass")
        )
        .await,
        "{autovacuum_enabled=false}"
    );
    // The downstream materialized view is rebuilt over the green upstream.
    assert_eq!(
        text(
            &c,
            &format!(
                "SELECT string_agg(DISTINCT d.refobjid::regclass::text, ',') FROM pg_rewrite rw JOIN pg_depend d ON d.objid = rw.oid \
                 AND d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> rw.ev_class \
                 WHERE rw.ev_class = '{schema}.mv_top'::regclass"
            )
        )
        .await,
        g
    );
    assert_eq!(
        text(&c, &format!("SELECT DISTINCT version FROM {schema}.mv_top")).await,
        "2"
    );

    // Status: converged (nothing changed since), definition changed, the dropped column named.
    let st = status_json(&db);
    let m = member(&st, "Sales MV");
    assert_eq!(m["converged"], true, "{st}");
    assert_eq!(m["definition_changed"], true);
    assert_eq!(m["live_rows"], 5);
    assert_eq!(m["columns_dropped"][0], "n integer");
    let top = member(&st, "mv_top");
    assert_eq!(top["explicit"], false);
    assert_eq!(
        top["definition_changed"], true,
        "changed through its upstream"
    );
    assert_eq!(top["contents_equal"], false);
    let human = run_ok(&["green", "status", "--target", &db.url()]);
    assert!(human.contains("converged: yes"), "{human}");
    // The in-flight operations show in `pgflip status`.
    let s = run_ok(&["status", "--target", &db.url()]);
    assert!(s.contains("Sales MV"), "{s}");

    // A second create for the same relation is refused.
    let o = pgflip(&[
        "green",
        "create",
        "\"My Schema\".\"Sales MV\"",
        "--query",
        NEW_QUERY,
        "--target",
        &db.url(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("already in flight"), "{}", stderr(&o));

    // Dry-run cancel changes nothing; cancel leaves nothing behind.
    run_ok(&["green", "cancel", "--target", &db.url(), "--dry-run"]);
    assert_eq!(
        text(
            &c,
            &format!("SELECT count(*) FROM pg_namespace WHERE nspname = '{schema}'")
        )
        .await,
        "1"
    );
    run_ok(&["green", "cancel", "mv_top", "--target", &db.url()]);
    assert_eq!(user_dump(&db), before, "cancel left something behind");
    assert_eq!(
        text(&c, "SELECT count(*) FROM pgflip.operations").await,
        "0"
    );
    let out = run_ok(&["green", "status", "--target", &db.url()]);
    assert!(out.contains("No green relation is in flight"), "{out}");
}

#[tokio::test]
async fn green_convergence_follows_the_base_tables_and_refresh() {
    let db = fresh_db("green_converge");
    setup(&db, "green_reader");
    let c = db.client().await;
    // Same definition: converged means the same contents as live.
    let same = "SELECT grp, sum(amount)::int AS total, count(*)::int AS n, 1 AS version FROM \"My Schema\".base GROUP BY grp";
    run_ok(&[
        "green",
        "create",
        "\"My Schema\".\"Sales MV\"",
        "--query",
        same,
        "--only",
        "--target",
        &db.url(),
    ]);
    let st = status_json(&db);
    let m = member(&st, "Sales MV");
    assert_eq!(m["definition_changed"], false, "{st}");
    assert_eq!(m["contents_equal"], true, "{st}");
    assert_eq!(m["converged"], true, "{st}");

    // A base table changes after create: not converged, and the change is counted.
    db.psql("UPDATE \"My Schema\".base SET amount = amount + 1 WHERE id <= 3");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = status_json(&db);
        let m = member(&st, "Sales MV");
        if m["converged"] == false {
            assert_eq!(m["base_changes"], 3, "{st}");
            assert!(
                m["reason"].as_str().unwrap().contains("green refresh"),
                "{st}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a base change was never seen: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // --max-lag accepts it.
    let s = run_ok(&[
        "green",
        "status",
        "--target",
        &db.url(),
        "--json",
        "--max-lag",
        "60m",
    ]);
    assert!(s.contains("\"converged\": true"), "{s}");

    // Refresh (concurrently: it has a unique index): converged only once live is refreshed too
    // (same definition, so the contents must match).
    let out = run_ok(&["green", "refresh", "--target", &db.url()]);
    assert!(out.contains("concurrently"), "{out}");
    let st = status_json(&db);
    let m = member(&st, "Sales MV");
    assert_eq!(m["base_changes"], 0, "{st}");
    assert_eq!(m["contents_equal"], false, "live is stale now: {st}");
    assert_eq!(m["converged"], false, "{st}");
    db.psql("REFRESH MATERIALIZED VIEW \"My Schema\".\"Sales MV\"");
    let st = status_json(&db);
    assert_eq!(member(&st, "Sales MV")["converged"], true, "{st}");
    let _ = c;
    run_ok(&["green", "cancel", "--target", &db.url()]);
}

#[tokio::test]
async fn green_bad_input_is_a_clear_error_and_changes_nothing() {
    let db = fresh_db("green_bad");
    setup(&db, "green_reader");
    db.psql("CREATE SEQUENCE public.some_seq");
    // (pgflip's own state schema may be created by the first command that writes.)
    let before = user_dump(&db);
    let url = db.url();
    let cases: &[(&[&str], &str)] = &[
        (
            &["green", "create", "public.v_sales", "--query", "SELECT 1"],
            "is a view",
        ),
        (
            &["green", "create", "public.some_seq", "--query", "SELECT 1"],
            "not a materialized view nor a table",
        ),
        (
            &["green", "create", "public.nope", "--query", "SELECT 1"],
            "does not exist",
        ),
        (
            &[
                "green",
                "create",
                "\"My Schema\".\"Sales MV\"",
                "--query",
                "SELECT grp, 1/0 AS total FROM \"My Schema\".base",
            ],
            "division by zero",
        ),
        (
            &[
                "green",
                "create",
                "\"My Schema\".\"Sales MV\"",
                "--query",
                "SELECT no_such_column FROM \"My Schema\".base",
            ],
            "no_such_column",
        ),
        (&["green", "status", "public.nope"], "no green version"),
        (&["green", "cancel", "public.mv_top"], "no green version"),
        (&["green", "promote", "public.mv_top"], "no green version"),
        (&["green", "refresh"], "nothing to refresh"),
    ];
    for (args, want) in cases {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--target", &url]);
        let o = pgflip(&a);
        assert!(!o.status.success(), "{a:?} succeeded");
        assert!(
            stderr(&o).contains(want),
            "{a:?}: expected {want:?} in: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    // A file with something else than CREATE MATERIALIZED VIEW.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.sql");
    std::fs::write(&f, "DROP TABLE \"My Schema\".base;").unwrap();
    let o = pgflip(&[
        "green",
        "create",
        "--file",
        f.to_str().unwrap(),
        "--target",
        &url,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("pipeline file"), "{}", stderr(&o));
    assert_eq!(user_dump(&db), before, "bad input changed the database");
    assert!(!db.dump().contains("pgflip_green_"));
}

#[tokio::test]
async fn green_killed_at_each_create_phase_leaves_nothing_or_a_cancellable_green() {
    let db = fresh_db("green_kill");
    setup(&db, "green_reader");
    let c = db.client().await;
    let before = user_dump(&db);
    let fp = tempfile::tempdir().unwrap();
    let dir = fp.path().to_str().unwrap().to_string();
    let sessions = || async {
        text(
            &c,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgflip'",
        )
        .await
    };
    for point in [
        "green.create.before_build",
        "green.create.before_commit",
        "green.create.after_commit",
    ] {
        let o = pgflip_env(
            &[
                "green",
                "create",
                "\"My Schema\".\"Sales MV\"",
                "--query",
                NEW_QUERY,
                "--target",
                &db.url(),
            ],
            &[
                ("PGFLIP_FAILPOINTS", &format!("{point}=exit")),
                ("PGFLIP_FAILPOINT_DIR", &dir),
            ],
        );
        assert!(!o.status.success(), "{point}: not killed");
        assert!(
            fp.path().join(format!("{point}.reached")).exists(),
            "{point}"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while sessions().await != "0" {
            assert!(Instant::now() < deadline, "pgflip's session is still there");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let st = status_json(&db);
        let in_flight = st["pipelines"].as_array().unwrap().len();
        if point == "green.create.after_commit" {
            assert_eq!(in_flight, 1, "{point}: {st}");
            assert_eq!(member(&st, "Sales MV")["converged"], true);
            run_ok(&["green", "cancel", "--target", &db.url()]);
        } else {
            assert_eq!(in_flight, 0, "{point}: {st}");
        }
        assert_eq!(user_dump(&db), before, "{point}: something was left behind");
    }
    // After all that, a normal create works.
    run_ok(&[
        "green",
        "create",
        "\"My Schema\".\"Sales MV\"",
        "--query",
        NEW_QUERY,
        "--target",
        &db.url(),
    ]);
    run_ok(&["green", "cancel", "--target", &db.url()]);
    assert_eq!(user_dump(&db), before);
}

#[tokio::test]
async fn green_query_defined_table_keeps_its_key_and_grants() {
    let db = fresh_db("green_table");
    setup(&db, "green_reader");
    db.psql(
        r#"CREATE TABLE public.summary (grp int PRIMARY KEY, total bigint NOT NULL, label text, version int NOT NULL);
           CREATE INDEX summary_label ON public.summary (label);
           INSERT INTO public.summary SELECT grp, sum(amount), 'g' || grp, 1 FROM "My Schema".base GROUP BY grp;
           GRANT SELECT ON public.summary TO green_reader;
           COMMENT ON TABLE public.summary IS 'filled by a job';"#,
    );
    let c = db.client().await;
    let before = user_dump(&db);
    run_ok(&[
        "green",
        "create",
        "summary",
        "--query",
        "SELECT grp, sum(amount) AS total, 2 AS version FROM \"My Schema\".base GROUP BY grp",
        "--target",
        &db.url(),
    ]);
    let schema = text(
        &c,
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pgflip\\_green\\_%'",
    )
    .await;
    let g = format!("{schema}.summary");
    assert_eq!(
        text(&c, &format!("SELECT conname FROM pg_constraint WHERE conrelid = '{g}'::regclass AND contype = 'p'")).await,
        "summary_pkey"
    );
    assert_eq!(
        text(&c, &format!("SELECT attnotnull FROM pg_attribute WHERE attrelid = '{g}'::regclass AND attname = 'total'")).await,
        "t"
    );
    // The index on the dropped column is left out (and said so); grants and comment kept.
    assert_eq!(
        text(&c, &format!("SELECT count(*) FROM pg_indexes WHERE schemaname = '{schema}' AND indexname = 'summary_label'")).await,
        "0"
    );
    assert_eq!(
        text(
            &c,
            &format!("SELECT has_table_privilege('green_reader', '{g}', 'SELECT')")
        )
        .await,
        "t"
    );
    assert_eq!(
        text(&c, &format!("SELECT sum(version) FROM {g}")).await,
        "10"
    );
    let st = status_json(&db);
    let m = member(&st, "summary");
    assert_eq!(m["kind"], "table");
    assert_eq!(m["columns_dropped"][0], "label text");
    assert_eq!(m["converged"], true, "{st}");
    // Refresh refills it from its query.
    db.psql("INSERT INTO \"My Schema\".base VALUES (1000, 7, 1, 'x')");
    run_ok(&["green", "refresh", "summary", "--target", &db.url()]);
    assert_eq!(text(&c, &format!("SELECT count(*) FROM {g}")).await, "6");
    let st = status_json(&db);
    assert_eq!(member(&st, "summary")["converged"], true, "{st}");
    db.psql("DELETE FROM \"My Schema\".base WHERE id = 1000");
    run_ok(&["green", "cancel", "--target", &db.url()]);
    assert_eq!(user_dump(&db), before);
}
