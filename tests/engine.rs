//! The shared engine: one lock-retry loop and its messages, failpoints at every job's phase
//! boundaries, structured refusals, the dry run of a sync with its swap.

use pgflip::events::NullSink;
use pgflip::flip::{self, FlipKind, FlipOptions, FlipPair, QualifiedName};

use crate::util::*;

fn staging_pair(table: &str) -> FlipPair {
    FlipPair {
        live: QualifiedName::new("public", table),
        green: QualifiedName::new("public", format!("{table}_staging")),
    }
}

#[tokio::test]
async fn lock_retry_lines_count_up_and_name_each_blocking_session_once() {
    let db = fresh_db("engine_lock_lines");
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10); \
         CREATE TABLE t_staging (LIKE t INCLUDING ALL); \
         CREATE TABLE u (id int PRIMARY KEY); CREATE TABLE u_staging (LIKE u INCLUDING ALL);",
    );
    let c = db.client().await;
    flip::flip(
        &c,
        &[staging_pair("t"), staging_pair("u")],
        FlipKind::Sync,
        &FlipOptions::default(),
        &NullSink,
    )
    .await
    .unwrap();
    // One session holding locks on both live tables: young at first (pgflip sends lock
    // requests that time out), then older than the 3 s old-transaction limit (pgflip waits
    // without sending any). The numbering must go on across both kinds of wait.
    let blocker = db.client().await;
    let pid = text(&blocker, "SELECT pg_backend_pid()").await;
    blocker
        .batch_execute("BEGIN; SELECT count(*) FROM t; SELECT count(*) FROM u")
        .await
        .unwrap();
    let out = pgflip(&[
        "rollback",
        "--target",
        &db.url(),
        "--latest",
        "--lock-timeout",
        "50ms",
        "--max-wait",
        "5s",
    ]);
    blocker.batch_execute("ROLLBACK").await.unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("lock not granted"))
        .collect();
    assert!(lines.len() >= 3, "{err}");
    let numbers: Vec<u32> = lines
        .iter()
        .map(|l| {
            let rest = &l[l.find("(attempt ").expect(l) + 9..];
            rest[..rest.find(')').unwrap()].parse().unwrap()
        })
        .collect();
    assert_eq!(
        numbers,
        (1..=lines.len() as u32).collect::<Vec<_>>(),
        "{err}"
    );
    for l in &lines {
        assert_eq!(l.matches("pid ").count(), 1, "{l}");
        assert!(l.contains(&format!("pid {pid} ")), "{l}");
    }
    // The final error names the session once too, with both relations.
    let last = err
        .lines()
        .rfind(|l| l.contains(&format!("pid {pid} ")))
        .unwrap();
    assert!(last.contains("locks on t, u)"), "{err}");
}

// ---- Fault tests: pgflip stopped dead (SIGKILL) at a phase boundary of each job ----

/// Runs pgflip with `point=exit` and checks that it died there (and only there).
fn killed_at(args: &[&str], point: &str) {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("{point}=exit");
    let out = pgflip_env(
        args,
        &[
            ("PGFLIP_FAILPOINTS", spec.as_str()),
            ("PGFLIP_FAILPOINT_DIR", dir.path().to_str().unwrap()),
        ],
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "pgflip was not stopped at {point}: {:?}\n{}",
        out.status,
        stderr(&out)
    );
    assert!(dir.path().join(format!("{point}.reached")).exists());
}

/// Waits until no session of a (killed) pgflip is left on the server, so that what its
/// transaction did is settled.
async fn settled(c: &tokio_postgres::Client) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while text(
        c,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgflip'",
    )
    .await
        != "0"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "pgflip's session is still there"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn status(db: &TestDb) -> String {
    let out = pgflip(&["status", "--target", &db.url()]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

fn sync_dbs(hint: &str) -> (TestDb, TestDb) {
    let src = TestDb::new(server(), &format!("{hint}_src"));
    let tgt = TestDb::new(second_server(), &format!("{hint}_tgt"));
    let ddl = "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a (id));";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO a VALUES (1, 'src'), (2, 'src'); INSERT INTO b VALUES (1, 2);");
    tgt.psql("INSERT INTO a VALUES (1, 'tgt'); INSERT INTO b VALUES (1, 1);");
    (src, tgt)
}

#[tokio::test]
async fn sync_killed_before_its_commit_or_its_swap_leaves_the_target_wholly_before() {
    let (src, tgt) = sync_dbs("engine_fault_sync");
    let (s, t) = (src.url(), tgt.url());
    let c = tgt.client().await;
    let before = tgt.dump();
    // In place: killed with the copy sent but not committed.
    killed_at(
        &["sync", "--source", &s, "--target", &t, "a", "b"],
        "sync.before_commit",
    );
    settled(&c).await;
    assert_eq!(
        tgt.dump(),
        before,
        "a killed in-place sync changed the target"
    );
    let st = status(&tgt);
    assert!(!st.contains("a_staging"), "{st}");

    // Staging and swap: killed with the staging tables loaded, before the swap. The live
    // tables are untouched and status shows the staging tables waiting.
    killed_at(
        &[
            "sync",
            "--source",
            &s,
            "--target",
            &t,
            "a",
            "b",
            "--staging-table",
            "--swap",
        ],
        "sync.before_swap",
    );
    settled(&c).await;
    assert_eq!(
        text(&c, "SELECT string_agg(v, ',' ORDER BY id) FROM a").await,
        "tgt"
    );
    assert_eq!(text(&c, "SELECT count(*) FROM a_staging").await, "2");
    assert!(flip::generation::list(&c).await.unwrap().is_empty());
    let st = status(&tgt);
    assert!(st.contains("a_staging") && st.contains("b_staging"), "{st}");
    // A rerun of the swap finishes the job.
    let o = pgflip(&["sync", "--target", &t, "a", "b", "--swap"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        text(&c, "SELECT string_agg(v, ',' ORDER BY id) FROM a").await,
        "src,src"
    );
}

#[tokio::test]
async fn a_flip_killed_holding_its_locks_leaves_the_target_wholly_before() {
    let (src, tgt) = sync_dbs("engine_fault_flip");
    let (s, t) = (src.url(), tgt.url());
    let o = pgflip(&[
        "sync",
        "--source",
        &s,
        "--target",
        &t,
        "a",
        "b",
        "--staging-table",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = tgt.client().await;
    for point in ["flip.before_lock", "flip.locked"] {
        killed_at(&["sync", "--target", &t, "a", "b", "--swap"], point);
        settled(&c).await;
        assert_eq!(
            text(&c, "SELECT string_agg(v, ',' ORDER BY id) FROM a").await,
            "tgt",
            "{point}"
        );
        assert!(flip::generation::list(&c).await.unwrap().is_empty());
        let st = status(&tgt);
        assert!(st.contains("a_staging"), "{point}: {st}");
        assert!(!st.contains("Latest flip"), "{point}: {st}");
    }
    let o = pgflip(&["sync", "--target", &t, "a", "b", "--swap"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(flip::generation::list(&c).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_rollback_killed_after_its_commit_is_wholly_done_and_status_says_so() {
    let db = fresh_db("engine_fault_rollback");
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'blue'); \
         CREATE TABLE t_staging (LIKE t INCLUDING ALL); INSERT INTO t_staging VALUES (1, 'green');",
    );
    let c = db.client().await;
    let gen = flip::flip(
        &c,
        &[staging_pair("t")],
        FlipKind::Sync,
        &FlipOptions::default(),
        &NullSink,
    )
    .await
    .unwrap()
    .generation;
    // Killed before the locks: nothing happened.
    killed_at(
        &["rollback", "--target", &db.url(), "--latest"],
        "rollback.locked",
    );
    settled(&c).await;
    assert_eq!(text(&c, "SELECT v FROM t").await, "green");
    assert!(status(&db).contains(&format!("Latest flip: generation {} (sync)", gen.label)));
    // Killed right after the commit: wholly rolled back, only the retired side's checksum
    // (after-commit bookkeeping) is missing.
    killed_at(
        &["rollback", "--target", &db.url(), "--latest"],
        "rollback.after_commit",
    );
    settled(&c).await;
    assert_eq!(text(&c, "SELECT v FROM t").await, "blue");
    let gens = flip::generation::list(&c).await.unwrap();
    assert_eq!(gens[1].label, gen.label);
    assert_eq!(gens[1].status, "rolled_back");
    let st = status(&db);
    assert!(
        st.contains(&format!(
            "Latest flip: generation {} (rollback)",
            gens[0].label
        )),
        "{st}"
    );
}

#[tokio::test]
async fn cleanup_killed_between_generations_leaves_each_wholly_dropped_or_kept() {
    let db = fresh_db("engine_fault_cleanup");
    db.psql(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE t_staging (LIKE t INCLUDING ALL); \
         CREATE TABLE u (id int PRIMARY KEY); CREATE TABLE u_staging (LIKE u INCLUDING ALL);",
    );
    let c = db.client().await;
    for table in ["t", "u"] {
        flip::flip(
            &c,
            &[staging_pair(table)],
            FlipKind::Sync,
            &FlipOptions::default(),
            &NullSink,
        )
        .await
        .unwrap();
        // Generation labels are per second.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    killed_at(
        &["cleanup", "--target", &db.url(), "--keep", "0"],
        "cleanup.after_generation",
    );
    settled(&c).await;
    let gens = flip::generation::list(&c).await.unwrap();
    let statuses: Vec<&str> = gens.iter().map(|g| g.status.as_str()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "cleaned").count(),
        1,
        "{statuses:?}"
    );
    for g in &gens {
        let exists = text(
            &c,
            &format!(
                "SELECT count(*) FROM pg_namespace WHERE nspname = '{}'",
                g.backup_schema
            ),
        )
        .await;
        assert_eq!(
            exists == "1",
            g.status != "cleaned",
            "{}: {}",
            g.label,
            g.status
        );
    }
    // A rerun finishes.
    let o = pgflip(&["cleanup", "--target", &db.url(), "--keep", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        text(
            &c,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgflip\\_backup\\_%'"
        )
        .await,
        "0"
    );
}

#[tokio::test]
async fn schema_diff_apply_killed_at_its_boundaries_is_wholly_before_or_after() {
    let src = TestDb::new(server(), "engine_fault_sd_src");
    let tgt = TestDb::new(second_server(), "engine_fault_sd_tgt");
    src.psql(
        "CREATE TABLE t (id int PRIMARY KEY, a text, b int NOT NULL DEFAULT 0); \
         CREATE INDEX t_a ON t (a); CREATE VIEW v AS SELECT id, b FROM t; \
         CREATE TABLE n (id int);",
    );
    tgt.psql("CREATE TABLE t (id int PRIMARY KEY, a text); INSERT INTO t VALUES (1, 'x');");
    let (s, t) = (src.url(), tgt.url());
    let check = || pgflip(&["schema", "diff", "--source", &s, "--target", &t, "--check"]);
    let before = tgt.dump();
    killed_at(
        &["schema", "diff", "--source", &s, "--target", &t, "--apply"],
        "schemadiff.before_apply",
    );
    let c = tgt.client().await;
    settled(&c).await;
    assert_eq!(tgt.dump(), before);
    assert_ne!(check().status.code(), Some(0));
    killed_at(
        &["schema", "diff", "--source", &s, "--target", &t, "--apply"],
        "schemadiff.after_unit",
    );
    settled(&c).await;
    // Killed after the transaction committed: all of it is there, and what is left is the
    // index built outside any transaction (CONCURRENTLY), which a rerun builds.
    let o = check();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("1 difference to apply"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("Build index public.t_a"),
        "{}",
        stdout(&o)
    );
    assert_eq!(text(&c, "SELECT count(*) FROM v").await, "1");
    let o = pgflip(&["schema", "diff", "--source", &s, "--target", &t, "--apply"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = check();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(text(&c, "SELECT b FROM t WHERE id = 1").await, "0");
}

/// A refused flip gives each of its problems as data: `--json` puts them in an array, each with
/// the object it names, and nothing on the target changes.
#[tokio::test]
async fn a_refused_flip_gives_its_problems_as_a_json_array() {
    let (src, tgt) = sync_dbs("engine_refusal_json");
    let ddl = "CREATE TABLE \"Odd Items\" (id int PRIMARY KEY, v text)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO \"Odd Items\" SELECT g, 'new' FROM generate_series(1, 50) g");
    tgt.psql("INSERT INTO \"Odd Items\" SELECT g, 'old' FROM generate_series(1, 40) g");
    // Two things bound to the live table that no flip can carry over: a function of its row
    // type, and a rule.
    tgt.psql(
        "CREATE FUNCTION item_label(i \"Odd Items\") RETURNS text LANGUAGE sql AS $$ SELECT i.v $$; \
         CREATE TABLE audit (id int); \
         CREATE RULE odd_audit AS ON DELETE TO \"Odd Items\" DO ALSO INSERT INTO audit VALUES (old.id);",
    );
    let before = tgt.dump();
    let o = pgflip(&[
        "sync",
        "--source",
        &src.url(),
        "--target",
        &tgt.url(),
        "Odd Items",
        "--staging-table",
        "--swap",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}\n{}", stdout(&o), stderr(&o));
    let last = stdout(&o)
        .lines()
        .last()
        .map(str::to_owned)
        .unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert_eq!(v["exit_code"], 5, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("the flip cannot carry everything over"),
        "{v}"
    );
    let problems = v["problems"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(problems.len(), 2, "{v}");
    let objects: Vec<&str> = problems
        .iter()
        .map(|p| p["object"].as_str().unwrap_or_else(|| panic!("{v}")))
        .collect();
    assert!(
        objects
            .iter()
            .any(|o| o.starts_with("function public.item_label(")),
        "{v}"
    );
    assert!(
        objects
            .iter()
            .any(|o| o.starts_with("rule odd_audit on table")),
        "{v}"
    );
    for p in problems {
        assert!(
            p["message"].as_str().unwrap().contains("cannot carry over"),
            "{v}"
        );
    }
    // Refused before anything moved: live is the old version, the staging table pgflip loaded
    // is the only thing added, and a later sync without the swap is unaffected.
    assert_eq!(
        text(
            &tgt.client().await,
            "SELECT count(*) || ' ' || min(v) FROM \"Odd Items\""
        )
        .await,
        "40 old"
    );
    let after = tgt.dump();
    let added: Vec<&str> = after
        .lines()
        .filter(|l| !before.lines().any(|b| b == *l))
        .collect();
    assert!(
        added
            .iter()
            .all(|l| !l.contains("\"Odd Items\" ") || l.contains("staging")),
        "the refused swap changed the live table: {added:?}"
    );
}

/// `sync --staging-table --swap --dry-run` shows the whole plan: the load, then the flip with
/// its locks, its moves and its generation record; and it changes nothing on the target, not
/// even pgflip's state.
#[tokio::test]
async fn a_sync_swap_dry_run_shows_the_flip_and_changes_nothing() {
    let (src, tgt) = sync_dbs("engine_swap_dry_run");
    tgt.psql("CREATE VIEW a_names AS SELECT id, v FROM a");
    let before = tgt.dump();
    let args = |json: bool| {
        let mut v = vec![
            "sync".to_string(),
            "--source".into(),
            src.url(),
            "--target".into(),
            tgt.url(),
            "a".into(),
            "--staging-table".into(),
            "--swap".into(),
            "--dry-run".into(),
        ];
        if json {
            v.push("--json".into());
        }
        v
    };
    let run = |json: bool| {
        let a = args(json);
        pgflip(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run(false);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = stdout(&o);
    // The load, then the flip: its lock, the moves and the view re-pointed, the record.
    let load_at = plan.find("a_staging").unwrap_or_else(|| panic!("{plan}"));
    let flip_at = plan
        .find("LOCK TABLE")
        .unwrap_or_else(|| panic!("no lock in the dry run:\n{plan}"));
    assert!(load_at < flip_at, "{plan}");
    assert!(plan.contains("ACCESS EXCLUSIVE"), "{plan}");
    assert!(
        plan.contains("ALTER TABLE public.a SET SCHEMA pgflip_backup_"),
        "{plan}"
    );
    assert!(plan.contains("RENAME TO a"), "{plan}");
    assert!(plan.contains("a_names"), "{plan}");
    assert!(plan.contains("pgflip.generations"), "{plan}");
    // JSON: the flip is its own member.
    let o = run(true);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["dry_run"], true, "{v}");
    assert!(!v["swap"].is_null(), "{v}");
    assert!(v["swap"].to_string().contains("pgflip.generations"), "{v}");
    // Nothing changed, and no staging table was left by the planning.
    assert_eq!(tgt.dump(), before);
    assert_eq!(
        text(
            &tgt.client().await,
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'a_staging%' \
             OR relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'pgflip')"
        )
        .await,
        "0"
    );
    // The dry run showed what the real run then does.
    let o = pgflip(&[
        "sync",
        "--source",
        &src.url(),
        "--target",
        &tgt.url(),
        "a",
        "--staging-table",
        "--swap",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        text(
            &tgt.client().await,
            "SELECT string_agg(v, ',' ORDER BY id) FROM a_names"
        )
        .await,
        "src,src"
    );
}
