//! Extended statistics follow the table through a flip: after `sync --staging-table --swap`
//! the live table has the statistics objects it had (same names, kinds, columns, targets,
//! comments), a rollback brings the original objects back, and cleanup leaves none behind.

use pgflip::events::NullSink;
use pgflip::flip::{self, FlipKind, FlipOptions, FlipPair, QualifiedName};

use crate::util::*;

const TABLE: &str = r#"
CREATE TABLE "Odd T" (id int PRIMARY KEY, a int, "B" text);
CREATE STATISTICS "Odd T stats" (ndistinct, dependencies) ON a, "B" FROM "Odd T";
ALTER STATISTICS "Odd T stats" SET STATISTICS 200;
COMMENT ON STATISTICS "Odd T stats" IS 'a with B';
CREATE STATISTICS expr_stats ON (a + 1) FROM "Odd T";
"#;

/// Every statistics object: schema, name, table, definition body, target, comment.
const STATS: &str = "SELECT string_agg(pg_catalog.format('%s.%s on %s: %s [%s] %s', n.nspname, s.stxname, s.stxrelid::regclass, \
     regexp_replace(pg_get_statisticsobjdef(s.oid), '^.* ON ', ''), COALESCE(s.stxstattarget::int, -1), \
     COALESCE(obj_description(s.oid, 'pg_statistic_ext'), '-')), ' | ' ORDER BY n.nspname, s.stxname) \
     FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace";

/// The live table's statistics, with the oid of each object.
const LIVE: &str = "SELECT string_agg(s.stxname || '=' || s.oid || ' ' || regexp_replace(pg_get_statisticsobjdef(s.oid), '^.* ON ', '') \
     || ' ' || s.stxkind::text || ' [' || COALESCE(s.stxstattarget::int, -1) || '] ' || COALESCE(obj_description(s.oid, 'pg_statistic_ext'), '-'), ' | ' ORDER BY s.stxname) \
     FROM pg_statistic_ext s WHERE s.stxrelid = 'public.\"Odd T\"'::regclass AND s.stxnamespace = 'public'::regnamespace";

fn without_oids(s: &str) -> String {
    s.split(" | ")
        .map(|x| {
            let (name, rest) = x.split_once('=').unwrap();
            format!("{name} {}", rest.split_once(' ').unwrap().1)
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "pgflip failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    format!("{}{}", stdout(o), stderr(o))
}

fn rollback_and_cleanup(tgt: &TestDb, original: &str) {
    let out = ok(&pgflip(&["rollback", "--target", &tgt.url(), "--latest"]));
    assert!(!out.contains("stays with the retired table"), "{out}");
    // The original objects (same oids) are on the live table again.
    assert_eq!(q(tgt, LIVE), original);
    assert_eq!(q(tgt, "SELECT count(*) FROM \"Odd T\""), "1");
    ok(&pgflip(&["cleanup", "--target", &tgt.url(), "--keep", "0"]));
    assert_eq!(q(tgt, LIVE), original);
    assert_eq!(
        q(tgt, "SELECT count(*) FROM pg_statistic_ext"),
        "2",
        "{}",
        q(tgt, STATS)
    );
}

#[test]
fn extended_statistics_follow_a_staging_swap_and_its_rollback() {
    let src = TestDb::new(server(), "xstats_swap_src");
    let tgt = TestDb::new(second_server(), "xstats_swap_tgt");
    src.psql(TABLE);
    tgt.psql(TABLE);
    src.psql(
        "INSERT INTO \"Odd T\" SELECT g, g % 7, 'b' || (g % 3) FROM generate_series(1, 500) g",
    );
    tgt.psql("INSERT INTO \"Odd T\" VALUES (1, 1, 'live')");
    let original = q(&tgt, LIVE);
    assert_eq!(
        without_oids(&original),
        "Odd T stats a, \"B\" FROM \"Odd T\" {d,f} [200] a with B | expr_stats (a + 1) FROM \"Odd T\" {e} [-1] -"
    );

    let (s, t) = (src.url(), tgt.url());
    let out = ok(&pgflip(&[
        "sync",
        "--source",
        &s,
        "--target",
        &t,
        "Odd T",
        "--staging-table",
        "--swap",
    ]));
    assert!(!out.contains("stays with the retired table"), "{out}");
    assert_eq!(q(&tgt, "SELECT count(*) FROM \"Odd T\""), "500");
    // The live table has the same objects under the same names (new ones: it is a new table)…
    let after = q(&tgt, LIVE);
    assert_eq!(without_oids(&after), without_oids(&original));
    assert_ne!(after, original);
    // …and they work: ANALYZE fills them.
    tgt.psql("ANALYZE \"Odd T\"");
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_stats_ext WHERE schemaname = 'public' AND tablename = 'Odd T'"
        ),
        "2"
    );
    // The retired table kept the originals, beside it in the generation's schema.
    let retired = q(
        &tgt,
        "SELECT string_agg(n.nspname || ':' || s.stxname || ':' || c.relnamespace::regnamespace, '|' ORDER BY s.stxname) \
         FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace JOIN pg_class c ON c.oid = s.stxrelid \
         WHERE n.nspname LIKE 'pgflip\\_backup%'",
    );
    let bk: Vec<&str> = retired.split('|').collect();
    assert_eq!(bk.len(), 2, "{retired}");
    for b in &bk {
        let parts: Vec<&str> = b.split(':').collect();
        assert_eq!(parts[0], parts[2], "{retired}");
    }

    rollback_and_cleanup(&tgt, &original);
}

#[tokio::test]
async fn a_green_without_the_statistics_gets_them_created_in_the_flip() {
    let db = fresh_db("xstats_create");
    db.psql(TABLE);
    db.psql(
        "INSERT INTO \"Odd T\" VALUES (1, 1, 'live'); \
         CREATE TABLE \"Odd T_staging\" (LIKE \"Odd T\" INCLUDING ALL EXCLUDING STATISTICS); \
         INSERT INTO \"Odd T_staging\" VALUES (1, 1, 'green'), (2, 2, 'green');",
    );
    let original = q(&db, LIVE);
    let c = db.client().await;
    let fp = flip::flip(
        &c,
        &[FlipPair {
            live: QualifiedName::new("public", "Odd T"),
            green: QualifiedName::new("public", "Odd T_staging"),
        }],
        FlipKind::Sync,
        &FlipOptions::default(),
        &NullSink,
    )
    .await
    .unwrap();
    assert!(
        !fp.warnings.iter().any(|w| w.contains("statistics")),
        "{:?}",
        fp.warnings
    );
    assert_eq!(q(&db, "SELECT count(*) FROM \"Odd T\""), "2");
    let after = q(&db, LIVE);
    assert_eq!(without_oids(&after), without_oids(&original));
    assert_eq!(
        q(&db, "SELECT stxowner::regrole FROM pg_statistic_ext WHERE stxname = 'Odd T stats' AND stxnamespace = 'public'::regnamespace"),
        "postgres"
    );
    rollback_and_cleanup(&db, &original);
}
