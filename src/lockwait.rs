//! Taking strong locks without queueing behind the application: the one retry loop.
//!
//! A statement that needs a strong lock runs under a short `lock_timeout`. When the lock is not
//! granted (or the server picks the statement as a deadlock victim), its transaction is rolled
//! back, pgflip backs off with jitter ([`crate::plan::backoff`]) and tries again, until a
//! deadline; then it fails with [`Error::LockTimeout`], naming the sessions in the way. Every job
//! (the flip, plan execution, sync's loads and swaps, the cleanup of a failed load) goes through
//! [`Retry`] or [`retry`], so the backoff, the deadline, the numbering of the attempts and the
//! report of the blockers are the same everywhere.
//!
//! Blockers are reported one per session: the locks a session holds on several relations, and
//! those its parallel workers hold for it, are one [`Blocker`].

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Result};
use crate::events::{Event, EventSink};
use crate::plan::{backoff, LOCK_NOT_AVAILABLE};

/// SQLSTATE of a deadlock: the server rolled our statement back to break it.
pub const DEADLOCK_DETECTED: &str = "40P01";

/// Whether `e` means "the lock was not granted in time" (retry) rather than a real failure.
pub fn is_lock_failure(e: &Error) -> bool {
    matches!(
        e.sqlstate(),
        Some(LOCK_NOT_AVAILABLE) | Some(DEADLOCK_DETECTED)
    )
}

/// A session holding locks that a pgflip statement waits for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blocker {
    pub pid: i32,
    pub application: String,
    pub backend_type: String,
    /// `active`, `idle in transaction`, …; `prepared` for a prepared transaction.
    pub state: String,
    #[serde(with = "crate::events::duration_ms")]
    pub xact_age: Duration,
    /// The start of its current query, or of the prepared transaction.
    pub query_start: String,
    /// Its current (or last) query, shortened.
    pub query: String,
    /// Relations it (or its parallel workers) holds locks on, by name.
    pub relations: Vec<String>,
    /// (relation oid, lock mode) pairs.
    #[serde(skip)]
    pub locks: Vec<(u32, String)>,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 4;
        let mut on = self
            .relations
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if self.relations.len() > SHOWN {
            on.push_str(&format!(" (+{} more)", self.relations.len() - SHOWN));
        }
        write!(
            f,
            "pid {} (application '{}', {}, transaction open {:.1}s, query started {}, locks on {on}): {}",
            self.pid,
            self.application,
            self.state,
            self.xact_age.as_secs_f64(),
            self.query_start,
            self.query
        )
    }
}

/// The sessions in the way, one per session; what [`Error::LockTimeout`] carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Blockers(pub Vec<Blocker>);

impl Blockers {
    /// Whether any blocker's description contains `needle` (`"pid 123"`).
    pub fn contains(&self, needle: &str) -> bool {
        self.0.iter().any(|b| b.to_string().contains(needle))
    }

    /// One line per session.
    pub fn lines(&self) -> Vec<String> {
        self.0.iter().map(Blocker::to_string).collect()
    }
}

impl fmt::Display for Blockers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none found any more)");
        }
        f.write_str(&self.lines().join("\n"))
    }
}

const BLOCKERS_SQL: &str = "\
SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.backend_type, ''), coalesce(a.state, '?'), \
       coalesce(extract(epoch FROM clock_timestamp() - a.xact_start), 0)::float8, \
       coalesce(to_char(a.query_start, 'YYYY-MM-DD HH24:MI:SS TZ'), '?'), \
       left(regexp_replace(coalesce(a.query, ''), '\\s+', ' ', 'g'), 100), \
       array_agg(DISTINCT l.relation::regclass::text), \
       array_agg(l.relation ORDER BY l.relation, l.mode), array_agg(l.mode ORDER BY l.relation, l.mode) \
FROM pg_catalog.pg_locks l \
JOIN pg_catalog.pg_stat_activity w ON w.pid = l.pid \
JOIN pg_catalog.pg_stat_activity a ON a.pid = coalesce(w.leader_pid, w.pid) \
WHERE l.granted AND l.locktype = 'relation' AND l.pid <> pg_catalog.pg_backend_pid() \
  AND coalesce(w.leader_pid, 0) <> pg_catalog.pg_backend_pid() \
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) \
  AND l.relation = ANY($1) \
GROUP BY a.pid, a.application_name, a.backend_type, a.state, a.xact_start, a.query_start, a.query \
ORDER BY a.pid";

/// Sessions other than ours holding granted locks on `oids`, one per session (parallel workers
/// folded into their leader).
pub async fn blockers(client: &Client, oids: &[u32]) -> Result<Vec<Blocker>> {
    let rows = client
        .query(BLOCKERS_SQL, &[&oids])
        .await
        .ctx("finding the sessions holding locks on the relations")?;
    Ok(rows
        .iter()
        .map(|r| {
            let rels: Vec<u32> = r.get(8);
            let modes: Vec<String> = r.get(9);
            Blocker {
                pid: r.get(0),
                application: r.get(1),
                backend_type: r.get(2),
                state: r.get(3),
                xact_age: Duration::from_secs_f64(r.get::<_, f64>(4).max(0.0)),
                query_start: r.get(5),
                query: r.get(6),
                relations: r.get(7),
                locks: rels.into_iter().zip(modes).collect(),
            }
        })
        .collect())
}

/// [`blockers`] of relations given by (quoted, qualified) name; names that do not resolve are
/// skipped.
pub async fn blockers_by_name(client: &Client, relations: &[&str]) -> Result<Vec<Blocker>> {
    let names: Vec<String> = relations.iter().map(|s| s.to_string()).collect();
    let rows = client
        .query(
            "SELECT coalesce(pg_catalog.to_regclass(r)::pg_catalog.oid, 0::pg_catalog.oid) FROM unnest($1::text[]) r",
            &[&names],
        )
        .await
        .ctx("looking up the locked relations")?;
    let oids: Vec<u32> = rows
        .iter()
        .map(|r| r.get::<_, u32>(0))
        .filter(|&o| o != 0)
        .collect();
    blockers(client, &oids).await
}

/// The state of one wait for locks: when it gives up, how many lock requests were sent, how
/// many times it backed off.
#[derive(Debug)]
pub struct Retry {
    started: Instant,
    deadline: Instant,
    requests: u32,
    waits: u32,
}

impl Retry {
    /// Starts waiting now; gives up `max_wait` from now.
    pub fn new(max_wait: Duration) -> Retry {
        let started = Instant::now();
        Retry {
            started,
            deadline: started + max_wait,
            requests: 0,
            waits: 0,
        }
    }

    /// Lock requests sent so far.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// Counts a lock request about to be sent.
    pub fn requesting(&mut self) {
        self.requests += 1;
    }

    /// Backs off after a failed (or, behind an old transaction, unsent) lock request: fails
    /// with [`Error::LockTimeout`] past the deadline, otherwise reports the blockers and
    /// sleeps. Waits are numbered 1, 2, 3… across both kinds.
    pub async fn back_off(&mut self, blockers: Vec<Blocker>, events: &dyn EventSink) -> Result<()> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(Error::LockTimeout {
                attempts: self.requests,
                waited_ms: now.duration_since(self.started).as_millis() as u64,
                blockers: Blockers(blockers),
            });
        }
        self.waits += 1;
        let retry_in = backoff(self.waits, self.deadline.saturating_duration_since(now));
        events.emit(Event::LockAttemptFailed {
            attempt: self.waits,
            retry_in,
            blockers: Blockers(blockers).lines(),
        });
        tokio::time::sleep(retry_in).await;
        Ok(())
    }
}

/// Runs `op` until it succeeds, fails with anything but a lock failure, or `max_wait` passes.
/// `op` must leave no transaction open when it fails (roll back in it). After each lock
/// failure, `find_blockers` names the sessions in the way (an error there names none).
pub async fn retry<T, Op, OpFut, Find, FindFut>(
    max_wait: Duration,
    events: &dyn EventSink,
    mut op: Op,
    mut find_blockers: Find,
) -> Result<T>
where
    Op: FnMut() -> OpFut,
    OpFut: Future<Output = Result<T>>,
    Find: FnMut() -> FindFut,
    FindFut: Future<Output = Result<Vec<Blocker>>>,
{
    let mut state = Retry::new(max_wait);
    loop {
        crate::conn::cancel::check()?;
        state.requesting();
        match op().await {
            Err(e) if is_lock_failure(&e) => {
                let found = find_blockers().await.unwrap_or_default();
                state.back_off(found, events).await?;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Event>>);
    impl EventSink for Collect {
        fn emit(&self, e: Event) {
            self.0.lock().unwrap().push(e);
        }
    }

    fn lock_error() -> Error {
        Error::Server {
            context: "t".into(),
            error: Box::new(crate::error::ServerError {
                sqlstate: LOCK_NOT_AVAILABLE.into(),
                severity: "ERROR".into(),
                message: "canceling statement due to lock timeout".into(),
                detail: None,
                hint: None,
            }),
        }
    }

    fn blocker(pid: i32, rels: &[&str]) -> Blocker {
        Blocker {
            pid,
            application: "psql".into(),
            backend_type: "client backend".into(),
            state: "idle in transaction".into(),
            xact_age: Duration::from_secs(2),
            query_start: "?".into(),
            query: "SELECT 1".into(),
            relations: rels.iter().map(|s| s.to_string()).collect(),
            locks: Vec::new(),
        }
    }

    #[tokio::test]
    async fn attempts_count_up_and_the_deadline_names_the_blockers_once_each() {
        let events = Collect::default();
        let mut tries = 0;
        let err = retry(
            Duration::from_millis(400),
            &events,
            || {
                tries += 1;
                async { Err::<(), _>(lock_error()) }
            },
            || async {
                Ok(vec![blocker(
                    7,
                    &["public.a", "public.b", "public.c", "public.d", "public.e"],
                )])
            },
        )
        .await
        .unwrap_err();
        let Error::LockTimeout {
            attempts, blockers, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(*attempts, tries);
        assert!(blockers.contains("pid 7"));
        assert_eq!(err.to_string().matches("pid 7").count(), 1, "{err}");
        assert!(err.to_string().contains("(+1 more)"), "{err}");
        let numbers: Vec<u32> = events
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                Event::LockAttemptFailed {
                    attempt, blockers, ..
                } => {
                    assert_eq!(blockers.len(), 1);
                    *attempt
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(!numbers.is_empty());
        assert_eq!(numbers, (1..=numbers.len() as u32).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn other_errors_and_success_end_the_loop_at_once() {
        let mut n = 0;
        let v = retry(
            Duration::from_secs(5),
            &crate::events::NullSink,
            || {
                n += 1;
                let now = n;
                async move {
                    if now < 3 {
                        Err(lock_error())
                    } else {
                        Ok(now)
                    }
                }
            },
            || async { Ok(Vec::new()) },
        )
        .await
        .unwrap();
        assert_eq!(v, 3);
        let e = retry(
            Duration::from_secs(5),
            &crate::events::NullSink,
            || async { Err::<(), _>(Error::InvalidInput("no".into())) },
            || async { Ok(Vec::new()) },
        )
        .await
        .unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)));
    }
}
