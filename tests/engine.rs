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
