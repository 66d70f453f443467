//! `pgflip green`: build beside live, status and convergence, refresh, promote, rollback,
//! cancel, bad input and kill -9, against a real server.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

/// A dump of everything but pgflip's own state (which the first write creates).
fn user_dump(db: &TestDb) -> String {
    db.pg_dump(&["--exclude-schema=pgflip"])
}

/// `util::pgflip`. Green sees base-table writes the moment they commit (its change trigger),
/// so no test waits for statistics to settle.
fn pgflip(args: &[&str]) -> std::process::Output {
    crate::util::pgflip(args)
}

/// The one row of `pgflip.green_status`: live, base changes, stale, fresh.
async fn sql_view(c: &tokio_postgres::Client) -> (String, i64, bool, bool) {
    let r = c
        .query_one(
            "SELECT live, base_changes, stale, fresh FROM pgflip.green_status",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// The tables carrying pgflip's change trigger.
async fn watched(c: &tokio_postgres::Client) -> Vec<String> {
    c.query(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = 'pgflip_green_watch' ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
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
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; -- another test made it meanwhile
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

    assert_eq!(watched(&c).await, vec!["\"My Schema\".base"]);
    assert_eq!(
        sql_view(&c).await,
        ("\"My Schema\".\"Sales MV\"".to_string(), 0, false, true)
    );

    // A base table changes after create: not converged at once (no statistics lag), and the
    // writing transaction is counted, by the CLI and by the SQL view alike.
    db.psql("UPDATE \"My Schema\".base SET amount = amount + 1 WHERE id <= 3");
    let st = status_json(&db);
    let m = member(&st, "Sales MV");
    assert_eq!(m["converged"], false, "{st}");
    assert_eq!(m["base_changes"], 1, "{st}");
    assert!(
        m["reason"].as_str().unwrap().contains("green refresh"),
        "{st}"
    );
    assert_eq!(
        sql_view(&c).await,
        ("\"My Schema\".\"Sales MV\"".to_string(), 1, true, false)
    );
    // Two statements in one transaction count once; a rolled-back write not at all.
    db.psql(
        "BEGIN; UPDATE \"My Schema\".base SET note = note WHERE id = 1; \
         DELETE FROM \"My Schema\".base WHERE id = -1; COMMIT; \
         BEGIN; UPDATE \"My Schema\".base SET note = 'x'; ROLLBACK;",
    );
    assert_eq!(member(&status_json(&db), "Sales MV")["base_changes"], 2);
    // The trigger never fails the application's write: a role with no right on pgflip's
    // state writes, and so does anyone when pgflip's change table refuses the row.
    db.psql(
        "GRANT UPDATE, SELECT ON \"My Schema\".base TO green_reader; \
         SET ROLE green_reader; UPDATE \"My Schema\".base SET note = note WHERE id = 2; RESET ROLE; \
         REVOKE UPDATE, SELECT ON \"My Schema\".base FROM green_reader; \
         ALTER TABLE pgflip.green_changes ADD CONSTRAINT refuse CHECK (false) NOT VALID; \
         UPDATE \"My Schema\".base SET note = note WHERE id = 3; \
         ALTER TABLE pgflip.green_changes DROP CONSTRAINT refuse;",
    );
    assert_eq!(member(&status_json(&db), "Sales MV")["base_changes"], 3);
    // The other read-only views.
    assert_eq!(
        text(
            &c,
            "SELECT string_agg(kind || ' ' || live, ',') FROM pgflip.operations_in_flight"
        )
        .await,
        "green \"My Schema\".\"Sales MV\""
    );
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
    // A write right after the refresh is seen right away.
    db.psql("INSERT INTO \"My Schema\".base VALUES (1000, 1, 1, 'late')");
    let st = status_json(&db);
    assert_eq!(member(&st, "Sales MV")["converged"], false, "{st}");
    assert_eq!(member(&st, "Sales MV")["base_changes"], 1, "{st}");
    run_ok(&["green", "cancel", "--target", &db.url()]);
    assert!(watched(&c).await.is_empty(), "cancel removes the trigger");
    assert_eq!(
        text(&c, "SELECT count(*) FROM pgflip.green_changes").await,
        "0"
    );
    assert_eq!(
        text(&c, "SELECT count(*) FROM pgflip.green_status").await,
        "0"
    );
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
    assert!(!db.dump().contains("SCHEMA pgflip_green_"));
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
        "green.create.after_watch",
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
        let deadline = Instant::now() + Duration::from_secs(90);
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
        } else if point == "green.create.before_build" {
            assert_eq!(in_flight, 0, "{point}: {st}");
            assert_eq!(st["leftover_triggers"], serde_json::json!([]), "{point}");
        } else {
            // Killed once the change trigger was committed: status says so, cancel removes it.
            assert_eq!(in_flight, 0, "{point}: {st}");
            assert_eq!(
                st["leftover_triggers"],
                serde_json::json!(["\"My Schema\".base"]),
                "{point}: {st}"
            );
            let out = run_ok(&["green", "cancel", "--target", &db.url()]);
            assert!(
                out.contains("Removed pgflip's change trigger from \"My Schema\".base"),
                "{out}"
            );
        }
        assert!(watched(&c).await.is_empty(), "{point}");
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

/// Waits until no pgflip session is left on the server (a killed run's backend goes a moment
/// after the process).
async fn no_pgflip_sessions(c: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while text(
        c,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgflip'",
    )
    .await
        != "0"
    {
        assert!(Instant::now() < deadline, "pgflip's session is still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn green_killed_during_refresh_and_cancel_then_a_rerun_finishes_and_nothing_is_left() {
    let db = fresh_db("green_kill_rc");
    setup(&db, "green_reader");
    let c = db.client().await;
    let url = db.url();
    // Schemas only: the test writes to the base table, which moves rows in a data dump.
    let schema_dump = || db.pg_dump(&["--exclude-schema=pgflip", "--schema-only"]);
    let before = schema_dump();
    run_ok(&[
        "green",
        "create",
        "\"My Schema\".\"Sales MV\"",
        "--query",
        NEW_QUERY,
        "--target",
        &url,
    ]);
    db.psql("UPDATE \"My Schema\".base SET amount = amount + 100 WHERE id = 50");
    let fp = tempfile::tempdir().unwrap();
    let dir = fp.path().to_str().unwrap().to_string();
    let killed = |args: &[&str], point: &str| {
        let o = pgflip_env(
            args,
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
    };

    // Killed inside the refresh's transaction: nothing of it happened; status still says
    // stale, naming the change; a rerun refreshes.
    killed(
        &["green", "refresh", "--target", &url],
        "green.refresh.before_refresh",
    );
    no_pgflip_sessions(&c).await;
    let st = status_json(&db);
    let m = member(&st, "Sales MV");
    assert_eq!(m["converged"], false, "{st}");
    assert_eq!(m["base_changes"], 1, "{st}");
    run_ok(&["green", "refresh", "--target", &url]);
    let st = status_json(&db);
    let m = member(&st, "Sales MV");
    assert_eq!(m["converged"], true, "{st}");
    assert_eq!(m["base_changes"], 0, "{st}");
    // The refreshed green holds the change (group 0: ids 5, 10, … 100; id 50 gained 100).
    let green_schema = st["pipelines"][0]["pipeline"].as_str().unwrap().to_string();
    assert_eq!(
        text(
            &c,
            &format!(
                "SELECT (SELECT total FROM \"{green_schema}\".\"Sales MV\" WHERE grp = 0) \
                      - (SELECT sum(amount) FROM \"My Schema\".base WHERE grp = 0 AND amount > 10)"
            )
        )
        .await,
        "0"
    );

    // Killed before cancel drops anything: the pipeline is still there, whole; a rerun
    // cancels it and nothing pgflip made is left.
    killed(
        &["green", "cancel", "--target", &url],
        "green.cancel.before_drop",
    );
    no_pgflip_sessions(&c).await;
    let st = status_json(&db);
    assert_eq!(st["pipelines"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(member(&st, "Sales MV")["converged"], true, "{st}");
    assert_eq!(watched(&c).await, vec!["\"My Schema\".base"]);
    run_ok(&["green", "cancel", "--target", &url]);
    assert!(watched(&c).await.is_empty());
    assert_eq!(status_json(&db)["pipelines"].as_array().unwrap().len(), 0);
    assert_eq!(schema_dump(), before, "something was left behind");
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

const LIVE_IDX: &str = "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'My Schema' AND tablename = 'Sales MV'";

#[tokio::test]
async fn green_promote_switches_the_view_and_its_dependents_and_rollback_brings_the_old_back() {
    let db = fresh_db("green_promote");
    setup(&db, "green_reader");
    let c = db.client().await;
    assert_eq!(text(&c, LIVE_IDX).await, "Sales MV grp,sales_n,sales_total");
    run_ok(&[
        "green",
        "create",
        "\"My Schema\".\"Sales MV\"",
        "--query",
        NEW_QUERY,
        "--target",
        &db.url(),
    ]);
    // Dry run: the flip's plan, nothing changed.
    let plan = run_ok(&[
        "green",
        "promote",
        "mv_top",
        "--target",
        &db.url(),
        "--dry-run",
    ]);
    assert!(plan.contains("ALTER MATERIALIZED VIEW"), "{plan}");
    assert!(
        !plan.contains("CREATE MATERIALIZED VIEW"),
        "nothing is built under the locks: {plan}"
    );
    assert_eq!(
        text(&c, "SELECT DISTINCT version FROM public.v_sales").await,
        "1"
    );

    let out = run_ok(&[
        "green",
        "promote",
        "\"My Schema\".\"Sales MV\"",
        "--target",
        &db.url(),
    ]);
    assert!(out.contains("Promoted green"), "{out}");
    // The role reads the new contents through the view; names of indexes unchanged (the one
    // on the dropped column stays with the retired relation).
    let reader = db.srv.url(&db.name).replace("postgres@", "green_reader@");
    let o = std::process::Command::new(db.srv.client_tool("psql"))
        .args([&reader, "-XAtc", "SELECT DISTINCT version FROM public.v_sales; SELECT DISTINCT version FROM public.mv_top"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "2\n2\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(text(&c, LIVE_IDX).await, "Sales MV grp,sales_total");
    assert_eq!(
        text(
            &c,
            "SELECT obj_description('\"My Schema\".\"Sales MV\"'::regclass, 'pg_class')"
        )
        .await,
        "sales per group"
    );
    // Nothing of green is left: no schema, no operation; a generation of kind green.
    assert_eq!(
        text(
            &c,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgflip\\_green\\_%'"
        )
        .await,
        "0"
    );
    assert_eq!(
        text(&c, "SELECT count(*) FROM pgflip.operations").await,
        "0"
    );
    assert_eq!(
        text(&c, "SELECT kind || ':' || (SELECT count(*) FROM pgflip.generation_relations r WHERE r.generation_id = g.id) FROM pgflip.generations g").await,
        "green:2"
    );
    // The refreshing job keeps working on the new one (it has its unique index).
    db.psql("REFRESH MATERIALIZED VIEW CONCURRENTLY \"My Schema\".\"Sales MV\"");

    // Rollback brings the old contents, index and dependents back.
    run_ok(&["rollback", "--latest", "--target", &db.url()]);
    assert_eq!(
        text(&c, "SELECT DISTINCT version FROM public.v_sales").await,
        "1"
    );
    assert_eq!(
        text(&c, "SELECT DISTINCT version FROM public.mv_top").await,
        "1"
    );
    assert_eq!(text(&c, LIVE_IDX).await, "Sales MV grp,sales_n,sales_total");
    let o = std::process::Command::new(db.srv.client_tool("psql"))
        .args([&reader, "-XAtc", "SELECT count(*) FROM public.v_sales"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "5\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    run_ok(&["cleanup", "--keep", "0", "--target", &db.url()]);
    assert_eq!(
        text(
            &c,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgflip\\_%'"
        )
        .await,
        "0"
    );
}

/// a → b, a → c, b + c → d; each carries its definition's version; v_d is a view over d.
/// Updates of public.src as the statistics counters show them.
fn diamond(db: &TestDb) {
    db.psql(
        r#"CREATE TABLE public.src (k int PRIMARY KEY, v int NOT NULL);
           INSERT INTO public.src SELECT g, g FROM generate_series(1, 3000) g;
           CREATE MATERIALIZED VIEW public.a AS SELECT k, v, 1 AS version FROM public.src;
           CREATE UNIQUE INDEX a_k ON public.a (k);
           CREATE MATERIALIZED VIEW public.b AS SELECT k, version FROM public.a WHERE k % 2 = 0;
           CREATE MATERIALIZED VIEW public.c AS SELECT k, version FROM public.a WHERE k % 3 = 0;
           CREATE MATERIALIZED VIEW public.d AS SELECT b.k, b.version AS bv, c.version AS cv FROM public.b JOIN public.c USING (k);
           CREATE UNIQUE INDEX d_k ON public.d (k);
           CREATE VIEW public.v_d AS SELECT * FROM public.d;"#,
    );
}

#[tokio::test]
async fn green_diamond_pipeline_switches_all_at_once_under_readers_and_rolls_back() {
    let db = fresh_db("green_diamond");
    diamond(&db);
    let c = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pipeline.sql");
    // A new definition of a; b given again (its name for a resolves to green a); c and d are
    // rebuilt over the green upstream with their current definitions.
    std::fs::write(
        &f,
        "-- version 2\nCREATE MATERIALIZED VIEW a AS SELECT k, v, 2 AS version FROM src WITH DATA;\n\
         CREATE MATERIALIZED VIEW public.b AS SELECT k, version FROM a WHERE k % 2 = 0;\n",
    )
    .unwrap();
    let out = run_ok(&[
        "green",
        "create",
        "--file",
        f.to_str().unwrap(),
        "--target",
        &db.url(),
    ]);
    assert!(out.contains("public.d"), "{out}");
    let st = status_json(&db);
    let names: Vec<&str> = st["pipelines"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["live"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.first(), Some(&"a"), "upstream first: {names:?}");
    assert_eq!(names.last(), Some(&"d"), "{names:?}");
    assert_eq!(names.len(), 4);
    assert_eq!(st["pipelines"][0]["converged"], true, "{st}");
    assert_eq!(member(&st, "c")["explicit"], false);

    // Readers join b and c (and read d through v_d) in a loop: never an error, never a mix.
    use std::sync::atomic::{AtomicU64, Ordering};
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Reads that saw version 1 and version 2: the test moves on once readers have seen what
    // it waits for (however loaded the machine), never after a fixed sleep.
    let seen_v: std::sync::Arc<[AtomicU64; 3]> = std::sync::Arc::new(Default::default());
    let reads_of = |v: usize| seen_v[v].load(Ordering::Relaxed);
    async fn until(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "readers never {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut readers = Vec::new();
    for _ in 0..4 {
        let client = db.client().await;
        let stop = stop.clone();
        let seen_v = seen_v.clone();
        readers.push(tokio::spawn(async move {
            let (mut n, mut errors, mut mixed) = (0u64, Vec::new(), Vec::new());
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client
                    .query_one(
                        "SELECT min(b.version), max(b.version), min(c.version), max(c.version), \
                                (SELECT min(bv) FROM public.v_d), (SELECT max(cv) FROM public.v_d), \
                                (SELECT max(version) FROM public.a) \
                         FROM public.b JOIN public.c USING (k)",
                        &[],
                    )
                    .await
                {
                    Ok(r) => {
                        let vals: Vec<i32> = (0..7).map(|i| r.get::<_, i32>(i)).collect();
                        if vals.iter().any(|v| *v != vals[0]) {
                            mixed.push(vals.clone());
                        } else if (1..=2).contains(&vals[0]) {
                            seen_v[vals[0] as usize].fetch_add(1, Ordering::Relaxed);
                        }
                        seen.insert(vals[0]);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
                n += 1;
            }
            (n, errors, mixed, seen)
        }));
    }
    until("read version 1", || reads_of(1) >= 20).await;
    let url = db.url();
    let promote = tokio::task::spawn_blocking(move || {
        let o = pgflip(&["green", "promote", "--all", "--target", &url, "--json"]);
        (o.status.success(), stdout(&o), stderr(&o))
    })
    .await
    .unwrap();
    assert!(promote.0, "{} {}", promote.1, promote.2);
    let locked: Value = serde_json::from_str(&promote.1).unwrap();
    assert_eq!(
        locked["generation"]["relations"].as_array().unwrap().len(),
        4
    );
    until("read version 2", || reads_of(2) >= 20).await;
    let url = db.url();
    let rb = tokio::task::spawn_blocking(move || {
        let o = pgflip(&["rollback", "--latest", "--target", &url]);
        (o.status.success(), stderr(&o))
    })
    .await
    .unwrap();
    assert!(rb.0, "{}", rb.1);
    let ones = reads_of(1);
    until("read version 1 again", || reads_of(1) >= ones + 20).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    let mut seen_all = std::collections::BTreeSet::new();
    for r in readers {
        let (n, errors, mixed, seen) = r.await.unwrap();
        assert!(errors.is_empty(), "readers got errors: {errors:?}");
        assert!(mixed.is_empty(), "readers saw a mix of versions: {mixed:?}");
        total += n;
        seen_all.extend(seen);
    }
    assert!(total > 20, "readers barely ran ({total})");
    assert_eq!(
        seen_all,
        std::collections::BTreeSet::from([1, 2]),
        "both versions were read"
    );
    // Rolled back: version 1 everywhere, the retired pipeline intact for another promote.
    assert_eq!(text(&c, "SELECT max(bv) FROM public.v_d").await, "1");
    assert_eq!(
        text(
            &c,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgflip\\_green\\_%'"
        )
        .await,
        "0"
    );
}

#[tokio::test]
async fn green_promote_refuses_until_converged_then_force_and_wait() {
    let db = fresh_db("green_wait");
    diamond(&db);
    let url = db.url();
    run_ok(&[
        "green",
        "create",
        "a",
        "--query",
        "SELECT k, v, 2 AS version FROM public.src",
        "--target",
        &url,
    ]);
    db.psql("UPDATE public.src SET v = v + 1 WHERE k = 1");
    let before = user_dump(&db);
    // Not converged: refused (exit 5), named, nothing changed; --wait gives up at its timeout.
    let o = pgflip(&["green", "promote", "a", "--target", &url]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("has not converged"), "{}", stderr(&o));
    assert!(stderr(&o).contains("public.a"), "{}", stderr(&o));
    // With --json the members that have not converged come as data, each naming its relation.
    let o = pgflip(&["--json", "green", "promote", "a", "--target", &url]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON error");
    assert_eq!(v["problems"][0]["object"], "public.a", "{v}");
    let t = Instant::now();
    let o = pgflip(&[
        "green",
        "promote",
        "a",
        "--wait",
        "--timeout",
        "1s",
        "--target",
        &url,
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("did not converge within"),
        "{}",
        stderr(&o)
    );
    assert!(t.elapsed() < Duration::from_secs(15));
    assert_eq!(user_dump(&db), before);

    // --wait: a refresh meanwhile (by another run: the waiting one does not hold the target)
    // lets it through.
    let url2 = url.clone();
    let waiter = std::thread::spawn(move || {
        pgflip(&[
            "green",
            "promote",
            "a",
            "--wait",
            "--timeout",
            "60s",
            "--target",
            &url2,
        ])
    });
    std::thread::sleep(Duration::from_millis(1500));
    run_ok(&["green", "refresh", "--target", &url]);
    let o = waiter.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let c = db.client().await;
    assert_eq!(text(&c, "SELECT max(bv) FROM public.v_d").await, "2");
    run_ok(&["rollback", "--latest", "--target", &url]);

    // --force promotes without convergence.
    run_ok(&[
        "green",
        "create",
        "a",
        "--query",
        "SELECT k, v, 3 AS version FROM public.src",
        "--target",
        &url,
    ]);
    db.psql("UPDATE public.src SET v = v + 1 WHERE k = 2");
    let o = pgflip(&["green", "promote", "a", "--force", "--target", &url]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("without convergence"), "{}", stderr(&o));
    assert_eq!(text(&c, "SELECT max(bv) FROM public.v_d").await, "3");
}

#[tokio::test]
async fn green_dropped_column_with_a_dependent_view_is_refused_unless_the_view_is_in_the_pipeline()
{
    let db = fresh_db("green_dropcol");
    setup(&db, "green_reader");
    db.psql(
        r#"CREATE TABLE public.summary (grp int PRIMARY KEY, total bigint NOT NULL, label text, version int NOT NULL);
           INSERT INTO public.summary SELECT grp, sum(amount), 'old' || grp, 1 FROM "My Schema".base GROUP BY grp;
           CREATE VIEW public.v_labels AS SELECT grp, label FROM public.summary;
           GRANT SELECT ON public.summary, public.v_labels TO green_reader;
           -- A materialized view that reads Sales MV through a view.
           CREATE VIEW public.v_mid AS SELECT grp, version FROM "My Schema"."Sales MV";
           CREATE MATERIALIZED VIEW public.mv_via AS SELECT grp, version FROM public.v_mid;"#,
    );
    let c = db.client().await;
    let url = db.url();
    let before = user_dump(&db);
    run_ok(&[
        "green",
        "create",
        "summary",
        "--query",
        "SELECT grp, sum(amount) AS total, 2 AS version FROM \"My Schema\".base GROUP BY grp",
        "--target",
        &url,
    ]);
    let o = pgflip(&["green", "promote", "summary", "--target", &url]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("v_labels") && stderr(&o).contains("label"),
        "the dependent and its column are named: {}",
        stderr(&o)
    );
    run_ok(&["green", "cancel", "--target", &url]);
    assert_eq!(user_dump(&db), before);

    // With the view's new definition in the pipeline, it switches with the table.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.sql");
    std::fs::write(
        &f,
        "CREATE TABLE summary AS SELECT grp, sum(amount) AS total, 2 AS version FROM \"My Schema\".base GROUP BY grp;\n\
         CREATE OR REPLACE VIEW v_labels AS SELECT grp, 'new' || grp AS label FROM summary;\n",
    )
    .unwrap();
    run_ok(&[
        "green",
        "create",
        "--file",
        f.to_str().unwrap(),
        "--target",
        &url,
    ]);
    run_ok(&["green", "promote", "summary", "--target", &url]);
    let reader = db.srv.url(&db.name).replace("postgres@", "green_reader@");
    let o = std::process::Command::new(db.srv.client_tool("psql"))
        .args([&reader, "-XAtc", "SELECT min(label) FROM public.v_labels"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "new0\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        text(&c, "SELECT max(version) FROM public.summary").await,
        "2"
    );
    run_ok(&["rollback", "--latest", "--target", &url]);
    assert_eq!(
        text(&c, "SELECT min(label) FROM public.v_labels").await,
        "old0"
    );
    assert_eq!(
        text(&c, "SELECT max(version) FROM public.summary").await,
        "1"
    );

    // A materialized view reading a changed one through a view: the view is rebuilt in green
    // too, and both switch.
    let out = run_ok(&[
        "green",
        "create",
        "\"My Schema\".\"Sales MV\"",
        "--query",
        NEW_QUERY,
        "--target",
        &url,
    ]);
    assert!(
        out.contains("public.v_mid") && out.contains("public.mv_via"),
        "{out}"
    );
    run_ok(&["green", "promote", "--all", "--target", &url]);
    assert_eq!(
        text(&c, "SELECT DISTINCT version FROM public.mv_via").await,
        "2"
    );
    assert_eq!(
        text(&c, "SELECT DISTINCT version FROM public.v_mid").await,
        "2"
    );
    run_ok(&["rollback", "--latest", "--target", &url]);
    assert_eq!(
        text(&c, "SELECT DISTINCT version FROM public.mv_via").await,
        "1"
    );
}

#[tokio::test]
async fn green_promote_of_a_slow_view_builds_nothing_under_the_locks_and_survives_kill_9() {
    let db = fresh_db("green_slow");
    // A query that takes about 2 s to run.
    db.psql(
        "CREATE TABLE public.slow_base (k int PRIMARY KEY);
         INSERT INTO public.slow_base SELECT generate_series(1, 4);
         CREATE MATERIALIZED VIEW public.slow AS SELECT k, 1 AS version FROM public.slow_base WHERE pg_sleep(0.5)::text = '';
         CREATE UNIQUE INDEX slow_k ON public.slow (k);
         CREATE VIEW public.v_slow AS SELECT * FROM public.slow;",
    );
    let c = db.client().await;
    let url = db.url();
    let q = "SELECT k, 2 AS version FROM public.slow_base WHERE pg_sleep(0.5)::text = ''";
    let t = Instant::now();
    run_ok(&["green", "create", "slow", "--query", q, "--target", &url]);
    let build = t.elapsed();
    assert!(
        build >= Duration::from_millis(1900),
        "the query did not run: {build:?}"
    );
    let before = user_dump(&db);

    // Killed before the flip and right after it: wholly before, or wholly after.
    let fp = tempfile::tempdir().unwrap();
    let dir = fp.path().to_str().unwrap().to_string();
    for point in ["green.promote.before_flip", "green.promote.after_flip"] {
        let o = pgflip_env(
            &["green", "promote", "slow", "--target", &url],
            &[
                ("PGFLIP_FAILPOINTS", &format!("{point}=exit")),
                ("PGFLIP_FAILPOINT_DIR", &dir),
            ],
        );
        assert!(!o.status.success());
        assert!(
            fp.path().join(format!("{point}.reached")).exists(),
            "{point}"
        );
        let deadline = Instant::now() + Duration::from_secs(90);
        while text(
            &c,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgflip'",
        )
        .await
            != "0"
        {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if point == "green.promote.before_flip" {
            assert_eq!(user_dump(&db), before, "{point}");
            let st = status_json(&db);
            assert_eq!(st["pipelines"].as_array().unwrap().len(), 1, "{st}");
        } else {
            // The flip committed: green is live, nothing of it is left in flight.
            assert_eq!(
                text(&c, "SELECT max(version) FROM public.v_slow").await,
                "2"
            );
            let st = status_json(&db);
            assert_eq!(st["pipelines"].as_array().unwrap().len(), 0, "{st}");
            // Killed before it removed its change trigger: status names it, and the next
            // green command (this create) removes it before watching again.
            assert_eq!(
                st["leftover_triggers"],
                serde_json::json!(["public.slow_base"]),
                "{st}"
            );
            run_ok(&["rollback", "--latest", "--target", &url]);
            run_ok(&["green", "create", "slow", "--query", q, "--target", &url]);
        }
    }

    // The locks are held for the catalog changes only, not for the query: running it takes
    // at least 2 s (four rows, 0.5 s each), so a build under the locks would hold them longer.
    // (The bound is the query's own least duration, not a timing goal, so that a loaded
    // machine cannot fail it.)
    let out = run_ok(&["green", "promote", "slow", "--target", &url, "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let locked = v["locked_ms"].as_f64().unwrap();
    assert!(
        locked < 2000.0,
        "locks held {locked} ms, the query takes at least 2 s (create took {build:?})"
    );
    assert!(watched(&c).await.is_empty(), "promote removes its trigger");
    assert_eq!(
        text(&c, "SELECT max(version) FROM public.v_slow").await,
        "2"
    );
}

#[tokio::test]
async fn sync_swap_builds_a_slow_materialized_view_beside_and_rollback_switches_it_back() {
    let db = fresh_db("green_sync_mv");
    setup(&db, "green_reader");
    // A table with a staging table, a materialized view over it whose query takes at least
    // 2 s (four rows, 0.5 s each), a chained one over that, a view readers use.
    db.psql(
        r#"CREATE TABLE public.tsync (k int PRIMARY KEY, v text NOT NULL);
           INSERT INTO public.tsync SELECT g, 'old' FROM generate_series(1, 4) g;
           CREATE TABLE public.tsync_staging (LIKE public.tsync INCLUDING ALL);
           INSERT INTO public.tsync_staging SELECT g, 'new' FROM generate_series(1, 4) g;
           CREATE MATERIALIZED VIEW public.slow_mv AS SELECT k, v FROM tsync WHERE pg_sleep(0.5)::text = '';
           CREATE UNIQUE INDEX slow_mv_k ON public.slow_mv (k);
           COMMENT ON MATERIALIZED VIEW public.slow_mv IS 'slow';
           GRANT SELECT ON public.slow_mv TO green_reader;
           CREATE MATERIALIZED VIEW public.chained AS SELECT count(*) AS n, min(v) AS v FROM public.slow_mv;
           CREATE VIEW public.v_slow AS SELECT k, v FROM public.slow_mv;"#,
    );
    let c = db.client().await;
    let url = db.url();
    let values = |rel: &'static str| {
        let c = &c;
        async move { text(c, &format!("SELECT string_agg(DISTINCT v, ',') FROM {rel}")).await }
    };
    let o = pgflip(&["sync", "--target", &url, "tsync", "--swap", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let locked = v["swap"]["locked_ms"].as_f64().unwrap();
    assert!(
        locked < 2000.0,
        "locks held {locked} ms: the materialized view was built under them"
    );
    let warnings = v["swap"]["warnings"].to_string();
    assert!(!warnings.contains("WITH DATA"), "{warnings}");
    assert_eq!(values("public.slow_mv").await, "new");
    assert_eq!(values("public.v_slow").await, "new");
    assert_eq!(values("public.chained").await, "new");
    // Kept: index name, comment, grant; the staging table is the live one now.
    assert_eq!(
        text(
            &c,
            "SELECT string_agg(indexname, ',') FROM pg_indexes WHERE tablename = 'slow_mv' AND schemaname = 'public'"
        )
        .await,
        "slow_mv_k"
    );
    assert_eq!(
        text(
            &c,
            "SELECT obj_description('public.slow_mv'::regclass, 'pg_class')"
        )
        .await,
        "slow"
    );
    assert_eq!(
        text(
            &c,
            "SELECT has_table_privilege('green_reader', 'public.slow_mv', 'SELECT')"
        )
        .await,
        "t"
    );
    assert_eq!(
        text(&c, "SELECT count(*) FROM pgflip.operations").await,
        "0"
    );
    // Rolled back: the old versions switch back, nothing rebuilt under the locks either.
    assert_eq!(
        text(
            &c,
            "SELECT string_agg(live_name, ',' ORDER BY live_name) FROM pgflip.generation_relations"
        )
        .await,
        "chained,slow_mv,tsync",
        "the materialized views switched as pairs"
    );
    assert_eq!(
        text(
            &c,
            "SELECT kind || ' ' || relations || ' ' || array_to_string(live_relations, ',') FROM pgflip.generations_summary"
        )
        .await,
        "sync 3 public.tsync,public.slow_mv,public.chained"
    );
    let o = pgflip(&["rollback", "--latest", "--target", &url, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let locked = out
        .split("\"locked_ms\":")
        .nth(1)
        .and_then(|r| r.split([',', '\n', '}']).next())
        .and_then(|n| n.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no locked_ms in {out}"));
    assert!(locked < 2000.0, "rollback held its locks {locked} ms");
    assert_eq!(values("public.slow_mv").await, "old");
    assert_eq!(values("public.v_slow").await, "old");
    assert_eq!(values("public.chained").await, "old");
    assert_eq!(values("public.tsync").await, "old");
    run_ok(&["cleanup", "--keep", "0", "--target", &url]);
    assert_eq!(
        text(
            &c,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgflip\\_%'"
        )
        .await,
        "0"
    );
}

/// A pipeline file that changes one materialized view and adds a new one reading it (odd
/// names): create builds both in the pipeline's schema, status shows the new one as new,
/// promote brings it in alone under its name, rollback retires it and brings the old one back;
/// cancel before promote leaves the dump as it was.
#[tokio::test]
async fn green_pipeline_file_adds_a_new_materialized_view_and_rollback_retires_it() {
    let db = fresh_db("green_new_rel");
    setup(&db, "green_reader");
    let c = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.sql");
    std::fs::write(
        &file,
        format!(
            "CREATE MATERIALIZED VIEW \"My Schema\".\"Sales MV\" AS {NEW_QUERY};\n\
             CREATE MATERIALIZED VIEW \"My Schema\".\"Top Groups\" AS \
               SELECT grp, total, version FROM \"Sales MV\" WHERE total > 500;\n"
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let before = user_dump(&db);

    // Cancel before promote leaves nothing.
    run_ok(&["green", "create", "--file", file, "--target", &db.url()]);
    assert_eq!(
        text(&c, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname LIKE 'pgflip\\_green\\_%' AND c.relname = 'Top Groups'").await,
        "1"
    );
    // Someone takes the name meanwhile: promote refuses, naming it, and changes nothing.
    db.psql("CREATE TABLE \"My Schema\".\"Top Groups\" (x int)");
    let o = pgflip(&[
        "green",
        "promote",
        "\"My Schema\".\"Top Groups\"",
        "--target",
        &db.url(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("that name is taken"), "{}", stderr(&o));
    assert_eq!(
        text(
            &c,
            "SELECT DISTINCT version FROM \"My Schema\".\"Sales MV\""
        )
        .await,
        "1"
    );
    db.psql("DROP TABLE \"My Schema\".\"Top Groups\"");
    run_ok(&["green", "cancel", "--target", &db.url()]);
    assert_eq!(user_dump(&db), before);
    assert_eq!(
        text(&c, "SELECT count(*) FROM pgflip.operations").await,
        "0"
    );

    // Create, status, promote.
    run_ok(&["green", "create", "--file", file, "--target", &db.url()]);
    let st = status_json(&db);
    let top = member(&st, "Top Groups");
    assert_eq!(top["new"], true, "{st}");
    assert_eq!(top["converged"], true, "{st}");
    assert_eq!(member(&st, "Sales MV")["new"], false, "{st}");
    // The SQL view has a row for it too.
    assert_eq!(
        text(&c, "SELECT fresh::text FROM pgflip.green_status WHERE live = '\"My Schema\".\"Top Groups\"'").await,
        "true"
    );
    assert_eq!(
        text(
            &c,
            "SELECT to_regclass('\"My Schema\".\"Top Groups\"') IS NULL"
        )
        .await,
        "t"
    );
    let out = run_ok(&[
        "green",
        "promote",
        "\"My Schema\".\"Top Groups\"",
        "--target",
        &db.url(),
    ]);
    assert!(out.contains("Promoted green"), "{out}");
    assert_eq!(
        text(&c, "SELECT string_agg(DISTINCT version::text, ',') || ':' || count(*) FROM \"My Schema\".\"Top Groups\"").await,
        text(&c, "SELECT '2:' || count(*) FROM \"My Schema\".\"Sales MV\" WHERE total > 500").await
    );
    assert_eq!(
        text(&c, "SELECT relkind::text || ':' || pg_get_userbyid(relowner) FROM pg_class WHERE oid = '\"My Schema\".\"Top Groups\"'::regclass").await,
        "m:postgres"
    );
    // It reads the promoted version, not a retired one.
    assert_eq!(
        text(&c, "SELECT d.refobjid::regclass::text FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid WHERE r.ev_class = '\"My Schema\".\"Top Groups\"'::regclass AND d.refobjid <> r.ev_class LIMIT 1").await,
        "\"My Schema\".\"Sales MV\""
    );
    assert_eq!(
        text(
            &c,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgflip\\_green\\_%'"
        )
        .await,
        "0"
    );
    assert_eq!(
        text(&c, "SELECT count(*) FROM pgflip.operations").await,
        "0"
    );

    // Rollback: the new one leaves the live schema, the changed one is back.
    run_ok(&["rollback", "--latest", "--target", &db.url()]);
    assert_eq!(
        text(
            &c,
            "SELECT to_regclass('\"My Schema\".\"Top Groups\"') IS NULL"
        )
        .await,
        "t"
    );
    assert_eq!(
        text(&c, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname LIKE 'pgflip\\_backup\\_%' AND c.relname = 'Top Groups'").await,
        "1"
    );
    assert_eq!(
        text(
            &c,
            "SELECT DISTINCT version FROM \"My Schema\".\"Sales MV\""
        )
        .await,
        "1"
    );
    assert_eq!(
        text(&c, "SELECT DISTINCT version FROM public.mv_top").await,
        "1"
    );
    run_ok(&["cleanup", "--keep", "0", "--target", &db.url()]);
    assert_eq!(
        text(
            &c,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgflip\\_%'"
        )
        .await,
        "0"
    );
}
