//! The `pgflip` state schema and the target lock.

use std::sync::Arc;

use pgflip::state;

use crate::util::*;

#[tokio::test]
async fn state_is_created_on_first_write_only() {
    let db = fresh_db("state_first_write");
    let c = db.client().await;
    let before = db.dump();
    assert!(!state::exists(&c).await.unwrap());
    assert_eq!(state::current_version(&c).await.unwrap(), None);
    // Reading twice creates nothing.
    assert_eq!(state::current_version(&c).await.unwrap(), None);
    assert_eq!(db.dump(), before, "a read-only look created something");

    let v = state::ensure(&c).await.unwrap();
    assert_eq!(v, state::latest_version());
    assert!(state::exists(&c).await.unwrap());
    let n: i64 = c
        .query_one("SELECT count(*) FROM pgflip.schema_version", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, state::MIGRATIONS.len() as i64);
    for t in ["runs", "generations", "generation_relations", "operations"] {
        let found: bool = c
            .query_one("SELECT to_regclass('pgflip.' || $1) IS NOT NULL", &[&t])
            .await
            .unwrap()
            .get(0);
        assert!(found, "pgflip.{t} missing");
    }
    // Idempotent.
    assert_eq!(state::ensure(&c).await.unwrap(), v);
}

#[tokio::test]
async fn upgrading_from_an_older_version_applies_the_newer_migrations() {
    let db = fresh_db("state_upgrade");
    let c = db.client().await;
    // An "older release": only the version table, no migration applied.
    assert_eq!(state::migrate_to(&c, 0).await.unwrap(), 0);
    assert_eq!(state::current_version(&c).await.unwrap(), Some(0));
    assert!(c
        .query_one("SELECT to_regclass('pgflip.generations') IS NULL", &[])
        .await
        .unwrap()
        .get::<_, bool>(0));
    assert_eq!(state::ensure(&c).await.unwrap(), state::latest_version());
    let versions: Vec<i32> = c
        .query("SELECT version FROM pgflip.schema_version ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i32> = state::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(versions, expected);
}

#[tokio::test]
async fn a_second_run_is_busy_and_names_the_first() {
    let db = fresh_db("state_busy");
    let first = Arc::new(db.client().await);
    let first_pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let lock = state::TargetLock::acquire(first.clone()).await.unwrap();

    let second = Arc::new(db.client().await);
    let err = match state::TargetLock::acquire(second.clone()).await {
        Err(e) => e,
        Ok(_) => panic!("second lock was granted"),
    };
    assert!(matches!(err, pgflip::Error::Busy { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("pid {first_pid}")),
        "{err}"
    );

    // Explicit release lets the second one in.
    lock.release().await.unwrap();
    let l2 = state::TargetLock::acquire(second.clone()).await.unwrap();
    l2.release().await.unwrap();
}

#[tokio::test]
async fn the_lock_goes_when_the_holding_connection_closes() {
    let db = fresh_db("state_lock_close");
    // Take the lock the way TargetLock does, on a connection we then close without unlocking
    // (as when pgflip is killed).
    let first = db.client().await;
    let got: bool = first
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&state::LOCK_CLASSID, &state::LOCK_OBJID_TARGET],
        )
        .await
        .unwrap()
        .get(0);
    assert!(got);
    let probe = Arc::new(db.client().await);
    assert!(state::TargetLock::acquire(probe).await.is_err());
    // The holder goes away a moment after the next run starts asking, as when a pgflip run
    // exits just before the next one starts: the next one waits for it instead of reporting
    // another run.
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        drop(first);
    });
    let second = Arc::new(db.client().await);
    let started = std::time::Instant::now();
    let lock = state::TargetLock::acquire(second.clone())
        .await
        .expect("a lock whose session ends within the grace period is taken");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "the lock was granted before its holder went away"
    );
    lock.release().await.unwrap();
}

#[tokio::test]
async fn an_unlock_failure_does_not_hide_the_work_error() {
    let db = fresh_db("state_unlock_err");
    let c = Arc::new(db.client().await);
    let res: pgflip::Result<()> = state::with_target_lock(c.clone(), "test", |c| async move {
        // Kill our own session: both the work and the unlock then fail.
        let _ = c
            .batch_execute("SELECT pg_terminate_backend(pg_backend_pid())")
            .await;
        Err(pgflip::Error::Refused("the work's own error".into()))
    })
    .await;
    let err = res.unwrap_err();
    assert!(err.to_string().contains("the work's own error"), "{err}");
}
#[tokio::test]
async fn status_on_a_fresh_database_creates_nothing() {
    let db = fresh_db("state_status_fresh");
    let before = db.dump();
    let out = pgflip(&["status", "--target", &db.url()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("no pgflip state"), "{}", stdout(&out));
    assert_eq!(db.dump(), before);
}

#[tokio::test]
async fn runs_are_recorded_with_their_outcome() {
    let db = fresh_db("state_runs");
    let c = Arc::new(db.client().await);
    // Without state, a run that fails before writing anything records nothing (and creates
    // nothing).
    let before = db.pg_dump(&[]);
    let res: pgflip::Result<()> = state::with_target_lock(c.clone(), "first", |_| async move {
        Err(pgflip::Error::Refused("refused early".into()))
    })
    .await;
    assert!(res.is_err());
    assert!(!state::exists(&c).await.unwrap());
    assert_eq!(db.pg_dump(&[]), before);

    // A run that creates the state is recorded at its end.
    state::with_target_lock(c.clone(), "creates state", |c| async move {
        state::ensure(&c).await.map(|_| ())
    })
    .await
    .unwrap();
    // With state, the row is written first: a failure in a transaction is recorded as failed
    // with its message, and the aborted transaction is not left open.
    let res: pgflip::Result<()> = state::with_target_lock(c.clone(), "fails", |c| async move {
        c.batch_execute("BEGIN; SELECT 1/0")
            .await
            .map_err(|e| pgflip::Error::db("dividing", e))
    })
    .await;
    assert!(res.is_err());
    let runs = state::runs(&c, 10).await.unwrap();
    let got: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r.command.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(got, [("fails", "failed"), ("creates state", "succeeded")]);
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap()
            .contains("division by zero"),
        "{:?}",
        runs[0].error
    );
    assert!(runs.iter().all(|r| r.finished_at.is_some()));

    // A run whose session dies half-way (pgflip killed) shows as interrupted.
    let doomed = Arc::new(db.client().await);
    let res: pgflip::Result<()> =
        state::with_target_lock(doomed.clone(), "killed", |c| async move {
            let _ = c
                .batch_execute("SELECT pg_terminate_backend(pg_backend_pid())")
                .await;
            Err(pgflip::Error::Refused("gone".into()))
        })
        .await;
    assert!(res.is_err());
    let mut latest = state::runs(&c, 1).await.unwrap();
    for _ in 0..50 {
        if latest[0].status == "interrupted" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        latest = state::runs(&c, 1).await.unwrap();
    }
    assert_eq!(
        (latest[0].command.as_str(), latest[0].status.as_str()),
        ("killed", "interrupted")
    );
    let s = stdout(&pgflip(&["status", "--target", &db.url()]));
    assert!(s.contains("Latest runs:"), "{s}");
    assert!(s.contains("interrupted") && s.contains("killed"), "{s}");
    assert!(
        s.contains("failed") && s.contains("division by zero"),
        "{s}"
    );
}

#[tokio::test]
async fn schema_diff_apply_holds_the_target_lock_and_is_recorded() {
    let src = fresh_db("state_sd_src");
    let tgt = fresh_db("state_sd_tgt");
    src.psql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    tgt.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let c = Arc::new(tgt.client().await);
    state::ensure(&c).await.unwrap();
    let before = tgt.dump();

    // Another pgflip run holds the target: the apply is refused (exit 5, holder named) and
    // nothing changes.
    let holder = state::TargetLock::acquire(c.clone()).await.unwrap();
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let args = [
        "schema",
        "diff",
        "--source",
        &src.url(),
        "--target",
        &tgt.url(),
        "--apply",
    ];
    let out = pgflip(&args);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("pid {pid}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(tgt.dump(), before);
    holder.release().await.unwrap();

    let out = pgflip(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs = state::runs(&c, 5).await.unwrap();
    assert_eq!(runs[0].command, "schema diff --apply");
    assert_eq!(runs[0].status, "succeeded");
    // The lock was released at the end (not left to the session's end).
    let l = state::TargetLock::acquire(c.clone()).await.unwrap();
    l.release().await.unwrap();
    let out = pgflip(&[
        "schema",
        "diff",
        "--source",
        &src.url(),
        "--target",
        &tgt.url(),
        "--check",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}
