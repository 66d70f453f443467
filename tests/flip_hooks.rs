//! What other jobs need from the flip: statements inside its transaction, partitioned tables
//! and materialized views as pairs, and pgflip's own triggers left behind.

use pgflip::events::NullSink;
use pgflip::flip::{self, FlipKind, FlipOptions, FlipPair, QualifiedName};

use crate::util::*;

fn pair(live: (&str, &str), green: (&str, &str)) -> FlipPair {
    FlipPair {
        live: QualifiedName::new(live.0, live.1),
        green: QualifiedName::new(green.0, green.1),
    }
}

/// Rolls the latest generation back and cleans every generation up, through the binary.
fn rollback_and_cleanup(db: &TestDb) {
    let out = pgflip(&["rollback", "--target", &db.url(), "--latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = pgflip(&["cleanup", "--target", &db.url(), "--keep", "0"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Schemas pgflip created and left (backup schemas after cleanup must be gone).
async fn leftover_backup_schemas(c: &tokio_postgres::Client) -> String {
    text(
        c,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgflip\\_backup\\_%'",
    )
    .await
}

#[tokio::test]
async fn statements_run_inside_the_flip_before_and_after_the_moves() {
    let db = fresh_db("flip_hooks_sql");
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'blue' FROM generate_series(1, 3) g; \
         CREATE TABLE t_staging (LIKE t INCLUDING ALL); INSERT INTO t_staging SELECT g, 'green' FROM generate_series(1, 5) g; \
         CREATE TABLE hook_log (at text, v text, n bigint, locked bool);",
    );
    let c = db.client().await;
    // What the statements see: before the moves, `t` is still blue; after, green. Both run
    // while the flip holds ACCESS EXCLUSIVE on t.
    let seen = |at: &str| {
        format!(
            "INSERT INTO public.hook_log SELECT '{at}', min(v), count(*), \
               EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE pid = pg_catalog.pg_backend_pid() \
                        AND relation = 'public.t'::pg_catalog.regclass AND mode = 'AccessExclusiveLock' AND granted) \
             FROM public.t"
        )
    };
    let opts = FlipOptions {
        in_flip_before: vec![seen("before")],
        in_flip_after: vec![seen("after")],
        ..FlipOptions::default()
    };
    let pairs = [pair(("public", "t"), ("public", "t_staging"))];
    let out = flip::flip(&c, &pairs, FlipKind::Migrate, &opts, &NullSink)
        .await
        .unwrap();
    assert_eq!(
        text(
            &c,
            "SELECT string_agg(format('%s:%s:%s:%s', at, v, n, locked), ' ' ORDER BY at DESC) FROM hook_log"
        )
        .await,
        "before:blue:3:t after:green:5:t"
    );
    assert_eq!(out.generation.kind, "migrate");
    // The plan shows them, in their place.
    let fp = flip::plan_flip(
        &c,
        &[pair(("public", "t"), ("public", "hook_log"))],
        FlipKind::Migrate,
        &FlipOptions {
            checksums: pgflip::flip::Checksums::Retired,
            allow_column_changes: true,
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    let sql: Vec<&str> = fp.plan.steps.iter().map(|s| s.sql.as_str()).collect();
    let pos = |needle: &str| {
        sql.iter()
            .position(|s| s.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in {sql:#?}"))
    };
    assert!(pos("LOCK TABLE") < pos("'before'"));
    assert!(pos("'before'") < pos("SET SCHEMA"));
    assert!(pos("SET SCHEMA") < pos("'after'"));
    assert!(pos("'after'") < pos("INSERT INTO pgflip.generations"));

    // A statement that fails aborts the whole flip: nothing moved, nothing recorded.
    db.psql("CREATE TABLE t_staging (LIKE t INCLUDING ALL)");
    let before = db.dump();
    let err = flip::flip(
        &c,
        &[pair(("public", "t"), ("public", "t_staging"))],
        FlipKind::Migrate,
        &FlipOptions {
            in_flip_after: vec![
                "DO $$ BEGIN RAISE EXCEPTION 'final check failed' USING ERRCODE = 'P0001'; END $$"
                    .into(),
            ],
            ..FlipOptions::default()
        },
        &NullSink,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("final check failed"), "{err}");
    assert_eq!(db.dump(), before);
    rollback_and_cleanup(&db);
    assert_eq!(text(&c, "SELECT min(v) FROM t").await, "blue");
    assert_eq!(leftover_backup_schemas(&c).await, "0");
}

#[tokio::test]
async fn pgflips_own_triggers_stay_behind_and_do_not_refuse_the_flip() {
    let db = fresh_db("flip_hooks_trg");
    db.psql(
        "CREATE SCHEMA pgflip; \
         CREATE TABLE public.capture_log (id int, v text); \
         CREATE FUNCTION pgflip.capture() RETURNS trigger LANGUAGE plpgsql AS \
           $f$ BEGIN INSERT INTO public.capture_log VALUES (NEW.id, NEW.v); RETURN NEW; END $f$; \
         CREATE FUNCTION public.app_audit() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN RETURN NEW; END $f$; \
         CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'blue'); \
         CREATE TABLE t_staging (id int PRIMARY KEY, w text); INSERT INTO t_staging VALUES (1, 'green'); \
         CREATE TRIGGER pgflip_capture AFTER INSERT OR UPDATE OF v ON t FOR EACH ROW EXECUTE FUNCTION pgflip.capture(); \
         CREATE TRIGGER app_audit BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION public.app_audit();",
    );
    let c = db.client().await;
    // Green lacks column v, which only pgflip's trigger uses: not a reason to refuse. (A sync
    // flip: a migration's new version brings its own triggers instead of carrying live's.)
    let out = flip::flip(
        &c,
        &[pair(("public", "t"), ("public", "t_staging"))],
        FlipKind::Sync,
        &FlipOptions {
            allow_column_changes: true,
            ..FlipOptions::default()
        },
        &NullSink,
    )
    .await
    .unwrap();
    assert_eq!(
        text(
            &c,
            "SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'public.t'::regclass"
        )
        .await,
        "app_audit"
    );
    // The capture trigger stayed on the retired table, where it was.
    assert_eq!(
        text(
            &c,
            &format!(
                "SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = '{}.t'::regclass",
                quote(&out.generation.backup_schema)
            )
        )
        .await,
        "app_audit,pgflip_capture"
    );
    c.batch_execute("INSERT INTO t VALUES (2, 'new')")
        .await
        .unwrap();
    assert_eq!(text(&c, "SELECT count(*) FROM capture_log").await, "0");

    // A user's trigger whose column green lacks is still refused.
    db.psql(
        "CREATE TABLE u (id int PRIMARY KEY, v text); CREATE TABLE u_staging (id int PRIMARY KEY); \
         CREATE TRIGGER app_upd BEFORE UPDATE OF v ON u FOR EACH ROW EXECUTE FUNCTION public.app_audit();",
    );
    let err = flip::flip(
        &c,
        &[pair(("public", "u"), ("public", "u_staging"))],
        FlipKind::Migrate,
        &FlipOptions {
            allow_column_changes: true,
            ..FlipOptions::default()
        },
        &NullSink,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("app_upd"), "{err}");
}

fn quote(s: &str) -> String {
    pgflip::ident::quote_ident(s)
}

/// Partition names and bounds of `rel`, with the rows in each.
async fn partitions(c: &tokio_postgres::Client, rel: &str) -> String {
    text(
        c,
        &format!(
            "SELECT string_agg(format('%s %s', t.relid::regclass, pg_get_expr(k.relpartbound, k.oid)), '; ' ORDER BY t.relid::regclass::text) \
             FROM pg_partition_tree('{rel}') t JOIN pg_class k ON k.oid = t.relid WHERE t.level > 0"
        ),
    )
    .await
}

#[tokio::test]
async fn a_partitioned_table_flips_with_its_partitions_and_rolls_back() {
    let db = fresh_db("flip_hooks_part");
    db.psql(
        "CREATE TABLE m (id int, day date NOT NULL, v text, PRIMARY KEY (id, day, v)) PARTITION BY RANGE (day); \
         CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); \
         CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01') PARTITION BY LIST (v); \
         CREATE TABLE m_2026_a PARTITION OF m_2026 FOR VALUES IN ('blue', 'green'); \
         CREATE TABLE m_rest PARTITION OF m DEFAULT; \
         INSERT INTO m VALUES (1, '2025-05-01', 'both'), (2, '2026-05-01', 'blue'), (3, '2030-01-01', 'blue'); \
         CREATE VIEW v_m AS SELECT id, v FROM m; \
         CREATE TABLE refs (id int, day date, v text, FOREIGN KEY (id, day, v) REFERENCES m); \
         INSERT INTO refs VALUES (1, '2025-05-01', 'both'); \
         -- Green in the same schema, partitions named differently, one bound live lacks.
         CREATE TABLE m_staging (LIKE m INCLUDING ALL) PARTITION BY RANGE (day); \
         CREATE TABLE m_staging_2025 PARTITION OF m_staging FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); \
         CREATE TABLE m_staging_2026 PARTITION OF m_staging FOR VALUES FROM ('2026-01-01') TO ('2027-01-01') PARTITION BY LIST (v); \
         CREATE TABLE m_staging_2026_a PARTITION OF m_staging_2026 FOR VALUES IN ('blue', 'green'); \
         CREATE TABLE m_staging_2024 PARTITION OF m_staging FOR VALUES FROM ('2024-01-01') TO ('2025-01-01'); \
         CREATE TABLE m_staging_rest PARTITION OF m_staging DEFAULT; \
         INSERT INTO m_staging VALUES (1, '2025-05-01', 'both'), (2, '2026-05-01', 'green'), (4, '2024-05-01', 'green'), (5, '2031-01-01', 'green');",
    );
    let c = db.client().await;
    let live_parts = partitions(&c, "m").await;
    let out = flip::flip(
        &c,
        &[pair(("public", "m"), ("public", "m_staging"))],
        FlipKind::Sync,
        &FlipOptions::default(),
        &NullSink,
    )
    .await
    .unwrap();
    assert_eq!(out.generation.relations[0].live_rows, Some(4));
    assert_eq!(
        text(
            &c,
            "SELECT string_agg(format('%s/%s', id, v), ',' ORDER BY id) FROM v_m"
        )
        .await,
        "1/both,2/green,4/green,5/green"
    );
    // Green's partitions took live's names; the one live lacked kept its own.
    assert_eq!(
        partitions(&c, "m").await,
        "m_2025 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); \
         m_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
         m_2026_a FOR VALUES IN ('blue', 'green'); m_rest DEFAULT; \
         m_staging_2024 FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"
    );
    assert_eq!(
        text(&c, "SELECT tableoid::regclass FROM m WHERE id = 2").await,
        "m_2026_a"
    );
    // Live's partitions went with it into the generation's schema.
    let bk = quote(&out.generation.backup_schema);
    assert_eq!(
        text(
            &c,
            &format!("SELECT count(*) FROM pg_partition_tree('{bk}.m') WHERE level > 0")
        )
        .await,
        "4"
    );
    assert_eq!(
        text(
            &c,
            &format!("SELECT string_agg(v, ',' ORDER BY id) FROM {bk}.m")
        )
        .await,
        "both,blue,blue"
    );
    // The inbound foreign key follows the live table.
    assert_eq!(
        text(&c, "SELECT confrelid::regclass FROM pg_constraint WHERE conrelid = 'refs'::regclass AND contype = 'f' AND conparentid = 0").await,
        "m"
    );

    rollback_and_cleanup(&db);
    assert_eq!(partitions(&c, "m").await, live_parts);
    assert_eq!(
        text(
            &c,
            "SELECT string_agg(format('%s/%s', id, v), ',' ORDER BY id) FROM v_m"
        )
        .await,
        "1/both,2/blue,3/blue"
    );
    assert_eq!(leftover_backup_schemas(&c).await, "0");
}

#[tokio::test]
async fn a_partitioned_table_from_a_shadow_schema_and_a_view_on_a_partition_is_refused() {
    let db = fresh_db("flip_hooks_part_shadow");
    db.psql(
        "CREATE TABLE m (id int PRIMARY KEY, v text) PARTITION BY HASH (id); \
         CREATE TABLE m_h0 PARTITION OF m FOR VALUES WITH (MODULUS 2, REMAINDER 0); \
         CREATE TABLE m_h1 PARTITION OF m FOR VALUES WITH (MODULUS 2, REMAINDER 1); \
         INSERT INTO m SELECT g, 'blue' FROM generate_series(1, 10) g; \
         CREATE SCHEMA shadow; \
         CREATE TABLE shadow.m (id int PRIMARY KEY, v text) PARTITION BY HASH (id); \
         CREATE TABLE shadow.m_h0 PARTITION OF shadow.m FOR VALUES WITH (MODULUS 2, REMAINDER 0); \
         CREATE TABLE shadow.m_h1 PARTITION OF shadow.m FOR VALUES WITH (MODULUS 2, REMAINDER 1); \
         INSERT INTO shadow.m SELECT g, 'green' FROM generate_series(1, 12) g; \
         CREATE VIEW v_h0 AS SELECT * FROM m_h0;",
    );
    let c = db.client().await;
    let pairs = [pair(("public", "m"), ("shadow", "m"))];
    let before = db.dump();
    let err = flip::flip(
        &c,
        &pairs,
        FlipKind::Migrate,
        &FlipOptions::default(),
        &NullSink,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, pgflip::Error::Refused(_)) && err.to_string().contains("v_h0"),
        "{err}"
    );
    assert_eq!(db.dump(), before);

    db.psql("DROP VIEW v_h0");
    flip::flip(
        &c,
        &pairs,
        FlipKind::Migrate,
        &FlipOptions::default(),
        &NullSink,
    )
    .await
    .unwrap();
    assert_eq!(
        text(&c, "SELECT count(*) FROM public.m_h0 WHERE v = 'green'").await,
        text(&c, "SELECT count(*) FROM public.m_h0").await
    );
    assert_eq!(text(&c, "SELECT count(*) FROM public.m").await, "12");
    assert_eq!(
        text(
            &c,
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'shadow'::regnamespace"
        )
        .await,
        "0"
    );
    rollback_and_cleanup(&db);
    assert_eq!(
        text(&c, "SELECT count(*) FROM public.m WHERE v = 'blue'").await,
        "10"
    );
    assert_eq!(
        text(&c, "SELECT string_agg(relid::regclass::text, ',' ORDER BY relid::regclass::text) FROM pg_partition_tree('public.m')").await,
        "m,m_h0,m_h1"
    );
    assert_eq!(leftover_backup_schemas(&c).await, "0");
}

#[tokio::test]
async fn a_materialized_view_flips_with_its_indexes_grants_and_dependents() {
    let db = fresh_db("flip_hooks_mv");
    let role = format!("mv_reader_{}", &db.name[db.name.len().saturating_sub(6)..]);
    db.psql(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN CREATE ROLE {role}; END IF; END $$; \
         CREATE TABLE base (id int PRIMARY KEY, amount int); INSERT INTO base SELECT g, g FROM generate_series(1, 10) g; \
         CREATE MATERIALIZED VIEW \"Totals\" AS SELECT id % 2 AS k, sum(amount) AS s FROM base GROUP BY 1; \
         CREATE UNIQUE INDEX totals_k ON \"Totals\" (k); \
         COMMENT ON MATERIALIZED VIEW \"Totals\" IS 'the totals'; \
         GRANT SELECT ON \"Totals\" TO {role}; \
         CREATE VIEW over_totals AS SELECT k, s FROM \"Totals\"; \
         CREATE MATERIALIZED VIEW \"Totals_green\" AS SELECT id % 2 AS k, sum(amount) * 10 AS s FROM base GROUP BY 1; \
         CREATE UNIQUE INDEX totals_green_k ON \"Totals_green\" (k);"
    ));
    let c = db.client().await;
    let out = flip::flip(
        &c,
        &[pair(("public", "Totals"), ("public", "Totals_green"))],
        FlipKind::Green,
        &FlipOptions::default(),
        &NullSink,
    )
    .await
    .unwrap();
    assert_eq!(out.generation.relations[0].live_rows, Some(2));
    assert_eq!(text(&c, "SELECT sum(s) FROM over_totals").await, "550");
    assert_eq!(
        text(&c, "SELECT string_agg(indexrelid::regclass::text, ',') FROM pg_index WHERE indrelid = '\"Totals\"'::regclass").await,
        "totals_k"
    );
    assert_eq!(
        text(
            &c,
            "SELECT obj_description('\"Totals\"'::regclass, 'pg_class')"
        )
        .await,
        "the totals"
    );
    assert_eq!(
        text(
            &c,
            &format!("SELECT has_table_privilege('{role}', '\"Totals\"', 'SELECT')")
        )
        .await,
        "t"
    );
    assert_eq!(
        text(
            &c,
            "SELECT relkind FROM pg_class WHERE oid = '\"Totals\"'::regclass"
        )
        .await,
        "m"
    );
    // A materialized view cannot be named in LOCK TABLE; the plan does not try.
    let fp = flip::plan_flip(
        &c,
        &[pair(
            ("public", "Totals"),
            (&out.generation.backup_schema, "Totals"),
        )],
        FlipKind::Rollback,
        &FlipOptions {
            checksums: pgflip::flip::Checksums::Retired,
            ..FlipOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(
        !fp.plan
            .steps
            .iter()
            .any(|s| s.sql.contains("LOCK TABLE public.\"Totals\"")),
        "{:#?}",
        fp.plan.steps
    );

    // A table and a materialized view are not a pair.
    db.psql("CREATE TABLE \"Totals_table\" (k int, s bigint)");
    let err = flip::flip(
        &c,
        &[pair(("public", "Totals"), ("public", "Totals_table"))],
        FlipKind::Green,
        &FlipOptions::default(),
        &NullSink,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not the same kind"), "{err}");
    db.psql("DROP TABLE \"Totals_table\"");

    rollback_and_cleanup(&db);
    assert_eq!(text(&c, "SELECT sum(s) FROM over_totals").await, "55");
    assert_eq!(
        text(
            &c,
            &format!("SELECT has_table_privilege('{role}', '\"Totals\"', 'SELECT')")
        )
        .await,
        "t"
    );
    assert_eq!(leftover_backup_schemas(&c).await, "0");
}
