//! Lock safety for the flip.
//!
//! An `ACCESS EXCLUSIVE` request that waits queues every later query of the table behind it, so
//! a flip must never wait long for a lock. Before trying, [`preflight`] refuses what will never
//! clear by itself (a prepared transaction holding a lock, green still being written), cancels
//! autovacuum on the tables (PostgreSQL would cancel it too, but only after `deadlock_timeout`,
//! longer than our lock timeout), and waits — without queueing — while a transaction older than
//! `old_transaction` holds a lock on them. [`run_locked`] then sends the whole flip as one query
//! string under `SET LOCAL lock_timeout`; on a lock timeout (or a deadlock) it rolls back, backs
//! off with jitter ([`crate::plan::backoff`]) and retries until `max_wait`, then fails with
//! [`Error::LockTimeout`] naming the sessions that held the locks.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Result};
use crate::events::{Event, EventSink};
use crate::plan::{backoff, LOCK_NOT_AVAILABLE};

use super::{FlipOptions, FlipPlan};

const DEADLOCK_DETECTED: &str = "40P01";

/// A session holding a lock on one of the flip's relations.
#[derive(Debug, Clone)]
pub struct Holder {
    pub pid: i32,
    pub application: String,
    pub backend_type: String,
    pub xact_age: Duration,
    pub description: String,
    /// (relation, lock mode) pairs.
    pub locks: Vec<(u32, String)>,
}

/// Sessions (other than ours) holding granted locks on `oids`.
pub async fn holders(client: &Client, oids: &[u32]) -> Result<Vec<Holder>> {
    let rows = client
        .query(
            "SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.backend_type, ''), \
                    coalesce(extract(epoch FROM clock_timestamp() - a.xact_start), 0)::float8, \
                    coalesce(to_char(a.query_start, 'YYYY-MM-DD HH24:MI:SS TZ'), '?'), \
                    coalesce(a.state, '?'), \
                    left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 100), \
                    array_agg(l.mode || ' on ' || l.relation::regclass::text ORDER BY l.relation, l.mode), \
                    array_agg(l.relation ORDER BY l.relation, l.mode), array_agg(l.mode ORDER BY l.relation, l.mode) \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.granted AND l.locktype = 'relation' AND l.pid <> pg_backend_pid() \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.relation = ANY($1) \
             GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1",
            &[&oids],
        )
        .await
        .ctx("finding the sessions holding locks on the tables")?;
    Ok(rows
        .iter()
        .map(|r| {
            let pid: i32 = r.get(0);
            let app: String = r.get(1);
            let btype: String = r.get(2);
            let age: f64 = r.get(3);
            let qstart: String = r.get(4);
            let state: String = r.get(5);
            let query: String = r.get(6);
            let modes: Vec<String> = r.get(7);
            let rels: Vec<u32> = r.get(8);
            let lock_modes: Vec<String> = r.get(9);
            Holder {
                pid,
                application: app.clone(),
                backend_type: btype,
                xact_age: Duration::from_secs_f64(age.max(0.0)),
                description: format!(
                    "pid {pid} (application '{app}', {state}, transaction open {age:.1}s, query started {qstart}, holds {}): {query}",
                    modes.join(", ")
                ),
                locks: rels.into_iter().zip(lock_modes).collect(),
            }
        })
        .collect())
}

/// Checks before any lock is requested. Returns when trying makes sense.
pub async fn preflight(
    client: &Client,
    fp: &FlipPlan,
    opts: &FlipOptions,
    events: &dyn EventSink,
    deadline: Instant,
) -> Result<()> {
    // Prepared transactions never go away by themselves. Their locks have no pid; the
    // transaction id lock of the same virtual transaction leads to the gid.
    let prepared = client
        .query(
            "SELECT DISTINCT coalesce(p.gid, '?'), coalesce(p.owner::text, '?'), coalesce(p.prepared::text, '?'), \
                    l.relation::regclass::text \
             FROM pg_locks l \
             LEFT JOIN pg_locks x ON x.virtualtransaction = l.virtualtransaction AND x.locktype = 'transactionid' \
             LEFT JOIN pg_prepared_xacts p ON p.transaction = x.transactionid \
             WHERE l.locktype = 'relation' AND l.pid IS NULL AND l.granted AND l.relation = ANY($1) \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             ORDER BY 1",
            &[&fp.watched_oids],
        )
        .await
        .ctx("looking for prepared transactions")?;
    if !prepared.is_empty() {
        let list: Vec<String> = prepared
            .iter()
            .map(|r| {
                format!(
                    "prepared transaction '{}' (owner {}, prepared {}) holds a lock on {}",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                    r.get::<_, String>(3)
                )
            })
            .collect();
        return Err(Error::Refused(format!(
            "{}; COMMIT PREPARED or ROLLBACK PREPARED it first",
            list.join("; ")
        )));
    }
    loop {
        let hs = holders(client, &fp.watched_oids).await?;
        // Green must be complete: nobody may still be writing it. A migration's green is
        // written on purpose until the flip, by the application's own transactions through the
        // capture triggers (which the flip drops under its locks); those are waited out by the
        // lock on live, not refused.
        let writers: Vec<&Holder> = hs
            .iter()
            .filter(|h| {
                fp.kind != crate::flip::FlipKind::Migrate
                    && h.backend_type != "autovacuum worker"
                    && h.locks
                        .iter()
                        .any(|(rel, mode)| fp.green_oids.contains(rel) && mode != "AccessShareLock")
            })
            .collect();
        if !writers.is_empty() {
            return Err(Error::Refused(format!(
                "green is still being written (an unfinished load?): {}",
                writers
                    .iter()
                    .map(|h| h.description.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        // Autovacuum would hold our lock request up; cancel it as PostgreSQL itself would.
        for h in hs.iter().filter(|h| h.backend_type == "autovacuum worker") {
            let _ = client
                .execute(
                    "SELECT pg_cancel_backend($1) FROM pg_stat_activity WHERE pid = $1 \
                     AND query NOT LIKE '%to prevent wraparound%'",
                    &[&h.pid],
                )
                .await;
        }
        let old: Vec<&Holder> = hs
            .iter()
            .filter(|h| h.backend_type != "autovacuum worker" && h.xact_age >= opts.old_transaction)
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        let described: Vec<String> = old.iter().map(|h| h.description.clone()).collect();
        if Instant::now() >= deadline {
            return Err(Error::LockTimeout {
                attempts: 0,
                waited_ms: opts.max_wait.as_millis() as u64,
                blockers: described.join("\n"),
            });
        }
        let wait = backoff(3, deadline.saturating_duration_since(Instant::now()));
        events.emit(Event::LockAttemptFailed {
            attempt: 0,
            retry_in: wait,
            blockers: described,
        });
        tokio::time::sleep(wait).await;
    }
}

/// Figures from the locked part of a flip.
#[derive(Debug, Clone, Copy)]
pub struct LockStats {
    pub attempts: u32,
    /// Duration of the successful attempt, from sending it to the commit.
    pub locked: Duration,
    /// When the successful attempt was sent.
    pub started: Instant,
}

/// Runs `body` (the flip's transaction: locks, checks, DDL, records) as one query string in a
/// transaction with short lock timeouts, retrying on lock timeouts until `max_wait`.
pub async fn run_locked(
    client: &Client,
    fp: &FlipPlan,
    body: &str,
    opts: &FlipOptions,
    events: &dyn EventSink,
) -> Result<LockStats> {
    let started = Instant::now();
    let deadline = started + opts.max_wait;
    let batch = format!(
        "BEGIN; SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}; SET LOCAL search_path = '';\n{body}COMMIT;",
        opts.lock_timeout.as_millis().max(1),
        opts.statement_timeout.as_millis().max(1),
    );
    let mut attempt = 0u32;
    loop {
        preflight(client, fp, opts, events, deadline).await?;
        attempt += 1;
        let t0 = Instant::now();
        match client.batch_execute(&batch).await {
            Ok(()) => {
                return Ok(LockStats {
                    attempts: attempt,
                    locked: t0.elapsed(),
                    started: t0,
                })
            }
            Err(e) => {
                let err = Error::db("flip transaction", e);
                // Whatever happened, leave no transaction open (the batch stops at the error).
                let _ = client.batch_execute("ROLLBACK").await;
                let code = err.sqlstate().map(str::to_string);
                if code.as_deref() != Some(LOCK_NOT_AVAILABLE)
                    && code.as_deref() != Some(DEADLOCK_DETECTED)
                {
                    return Err(err);
                }
                let blockers: Vec<String> = holders(client, &fp.watched_oids)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .map(|h| h.description)
                    .collect();
                if Instant::now() >= deadline {
                    return Err(Error::LockTimeout {
                        attempts: attempt,
                        waited_ms: started.elapsed().as_millis() as u64,
                        blockers: if blockers.is_empty() {
                            "(none found any more)".into()
                        } else {
                            blockers.join("\n")
                        },
                    });
                }
                let retry_in = backoff(attempt, deadline.saturating_duration_since(Instant::now()));
                events.emit(Event::LockAttemptFailed {
                    attempt,
                    retry_in,
                    blockers,
                });
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}
