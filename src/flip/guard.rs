//! Lock safety for the flip.
//!
//! An `ACCESS EXCLUSIVE` request that waits queues every later query of the table behind it, so
//! a flip must never wait long for a lock. Before trying, [`preflight`] refuses what will never
//! clear by itself (a prepared transaction holding a lock, green still being written), cancels
//! autovacuum on the tables (PostgreSQL would cancel it too, but only after `deadlock_timeout`,
//! longer than our lock timeout), and waits — without queueing — while a transaction older than
//! `old_transaction` holds a lock on them. [`run_locked`] then sends the whole flip as one query
//! string under `SET LOCAL lock_timeout`, the live relations' locks bounded as a whole by the
//! same timeout plus a small allowance a relation for the server's work of taking them (see
//! `locks::lock_step`); on a lock timeout (or a deadlock) it rolls back and
//! backs off through [`crate::lockwait::Retry`] until `max_wait`, then fails with
//! [`Error::LockTimeout`] naming the sessions that held the locks.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Problem, Refusal, Result};
use crate::events::EventSink;
use crate::lockwait::{blockers, is_lock_failure, Blocker, Retry};

use super::{FlipOptions, FlipPlan};

/// Checks before any lock is requested. Returns when trying makes sense.
pub async fn preflight(
    client: &Client,
    fp: &FlipPlan,
    opts: &FlipOptions,
    events: &dyn EventSink,
    retry: &mut Retry,
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
        let problems = prepared
            .iter()
            .map(|r| {
                let gid = r.get::<_, String>(0);
                Problem::new(
                    format!("prepared transaction '{gid}'"),
                    format!(
                        "prepared transaction '{gid}' (owner {}, prepared {}) holds a lock on {}",
                        r.get::<_, String>(1),
                        r.get::<_, String>(2),
                        r.get::<_, String>(3)
                    ),
                )
            })
            .collect();
        return Err(Error::Refused(Refusal::new(
            "prepared transactions hold locks on the relations to flip; COMMIT PREPARED or \
             ROLLBACK PREPARED them first",
            problems,
        )));
    }
    loop {
        let hs = blockers(client, &fp.watched_oids).await?;
        // Green must be complete: nobody may still be writing it. A migration's green is
        // written on purpose until the flip, by the application's own transactions through the
        // capture triggers (which the flip drops under its locks); those are waited out by the
        // lock on live, not refused.
        let writers: Vec<&Blocker> = hs
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
            return Err(Error::Refused(Refusal::new(
                "green is still being written (an unfinished load?)",
                writers
                    .iter()
                    .map(|h| Problem::new(format!("pid {}", h.pid), h.to_string()))
                    .collect(),
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
        let old: Vec<Blocker> = hs
            .into_iter()
            .filter(|h| h.backend_type != "autovacuum worker" && h.xact_age >= opts.old_transaction)
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        // Waiting without a lock request: the same backoff, deadline and report as a failed one.
        retry.back_off(old, events).await?;
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

/// The flip's transaction in its parts (SQL, `;`-separated).
pub struct Batches<'a> {
    /// Green locked, checked and prepared: before the live relations are locked (may be empty).
    pub prep: &'a str,
    /// The locks and the catalog check.
    pub locks: &'a str,
    /// The DDL and the records.
    pub rest: &'a str,
}

/// Runs the flip's transaction ([`Batches`]) with short lock timeouts, retrying on lock
/// timeouts until `max_wait`. The work on green goes first, on its own; then the locks and the
/// rest go as **one** query string, so the live relations are locked only as long as the
/// server needs; only when the failpoint `locked_point` is armed (fault tests) do they go as
/// two, with the failpoint between.
pub async fn run_locked(
    client: &Client,
    fp: &FlipPlan,
    parts: Batches<'_>,
    locked_point: &'static str,
    opts: &FlipOptions,
    events: &dyn EventSink,
) -> Result<LockStats> {
    let Batches { prep, locks, rest } = parts;
    let untracked = if !opts.track_statements && may_untrack(client).await? {
        " SET LOCAL pg_stat_statements.track_utility = off;"
    } else {
        ""
    };
    let begin = format!(
        "BEGIN; SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}; SET LOCAL search_path = ''; SET LOCAL jit = off;{untracked}\n",
        opts.lock_timeout.as_millis().max(1),
        opts.statement_timeout.as_millis().max(1),
    );
    // (jit off: the catalog check under the locks is estimated expensive for many tables, and
    // compiling it would hold the locks for nothing.)
    let split = crate::failpoint::armed(locked_point);
    // Without work on green, BEGIN goes with the locks (one round trip).
    let (first, begin) = if prep.is_empty() {
        (String::new(), begin)
    } else {
        (format!("{begin}{prep}"), String::new())
    };
    let batch = format!("{begin}{locks}{rest}COMMIT;");
    let mut retry = Retry::new(opts.max_wait);
    loop {
        crate::conn::cancel::check()?;
        preflight(client, fp, opts, events, &mut retry).await?;
        warm_names(client, fp).await;
        retry.requesting();
        let prepared = if first.is_empty() {
            Ok(())
        } else {
            client
                .batch_execute(&first)
                .await
                .map_err(|e| Error::db("flip transaction", e))
        };
        let t0 = Instant::now();
        let sent = if let Err(e) = prepared {
            Err(e)
        } else if split {
            match client.batch_execute(&format!("{begin}{locks}")).await {
                Ok(()) => match crate::failpoint::hit(locked_point).await {
                    Ok(()) => client
                        .batch_execute(&format!("{rest}COMMIT;"))
                        .await
                        .map_err(|e| Error::db("flip transaction", e)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(Error::db("flip transaction", e)),
            }
        } else {
            client
                .batch_execute(&batch)
                .await
                .map_err(|e| Error::db("flip transaction", e))
        };
        match sent {
            Ok(()) => {
                return Ok(LockStats {
                    attempts: retry.requests(),
                    locked: t0.elapsed(),
                    started: t0,
                })
            }
            Err(err) => {
                // Whatever happened, leave no transaction open (the batch stops at the error).
                let _ = client.batch_execute("ROLLBACK").await;
                // An interrupted pgflip stops: its cancel may have come as the lock step's
                // timeout (the step raises its own timeout as a lock timeout), and it is not
                // one to retry.
                if !is_lock_failure(&err) || crate::conn::cancel::interrupted() {
                    return Err(err);
                }
                let found = blockers(client, &fp.watched_oids).await.unwrap_or_default();
                retry.back_off(found, events).await?;
            }
        }
    }
}

/// Looks up, by name, every relation the locked transaction names, so the server's name cache
/// holds them before the locks are taken. `LOCK TABLE` and the DDL after it find each relation
/// by name, and the session has not done so before (planning reads the catalog by OID and in
/// SQL): each first lookup is an index scan of `pg_class` that otherwise runs with the
/// application waiting (about a third of the lock step at 500 tables). It takes no lock and
/// changes nothing; a failure only leaves the cache cold, so it is ignored. Names are built by
/// the server from the OIDs (`%I`), exactly as the plan quotes them.
async fn warm_names(client: &Client, fp: &FlipPlan) {
    let oids: Vec<u32> = fp.lock_oids.iter().chain(&fp.green_oids).copied().collect();
    if oids.is_empty() {
        return;
    }
    let _ = client
        .execute(
            "SELECT count(pg_catalog.to_regclass(pg_catalog.format('%I.%I', n.nspname, c.relname))) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = ANY($1::pg_catalog.oid[])",
            &[&oids],
        )
        .await;
}

/// Whether the flip's transaction can keep `pg_stat_statements` from recording its statements
/// ([`FlipOptions::track_statements`]): the extension is loaded and tracks utility statements,
/// and the role may change that (`track_utility` is superuser-only; from 15 on, a role can be
/// granted SET on it).
async fn may_untrack(client: &Client) -> Result<bool> {
    let privilege = if crate::pgversion::server_version_num(client).await? >= 150000 {
        "pg_catalog.has_parameter_privilege('pg_stat_statements.track_utility', 'SET')"
    } else {
        "(SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)"
    };
    let row = client
        .query_one(
            &format!(
                "SELECT CASE WHEN pg_catalog.current_setting('pg_stat_statements.track_utility', true) = 'on' \
                 THEN coalesce({privilege}, false) ELSE false END"
            ),
            &[],
        )
        .await
        .ctx("looking for pg_stat_statements")?;
    Ok(row.get(0))
}
