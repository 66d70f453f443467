//! Plans: what a command will do, as ordered SQL steps.
//!
//! Every command that changes a database builds a [`Plan`] first and then either renders it
//! (`--dry-run`, `--output`) or executes it, so dry-run output is exactly what would run. Each
//! [`Step`] carries the sentence a human reads, the lock it takes and its hazards, and the
//! transaction group it belongs to (`None` for statements such as `CREATE INDEX CONCURRENTLY`
//! that cannot run inside a transaction). Strong locks are taken under a short `lock_timeout`
//! and retried with jittered backoff, never queued behind a long query.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::events::{Event, EventSink};
use crate::ident::QuotedName;

/// Table-level lock modes, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LockMode {
    /// Takes no table lock worth mentioning (catalog-only on new objects, reads of pg_catalog).
    None,
    AccessShare,
    RowShare,
    RowExclusive,
    ShareUpdateExclusive,
    Share,
    ShareRowExclusive,
    Exclusive,
    AccessExclusive,
}

impl LockMode {
    /// The mode as PostgreSQL spells it.
    pub fn as_sql(self) -> &'static str {
        match self {
            LockMode::None => "no lock",
            LockMode::AccessShare => "ACCESS SHARE",
            LockMode::RowShare => "ROW SHARE",
            LockMode::RowExclusive => "ROW EXCLUSIVE",
            LockMode::ShareUpdateExclusive => "SHARE UPDATE EXCLUSIVE",
            LockMode::Share => "SHARE",
            LockMode::ShareRowExclusive => "SHARE ROW EXCLUSIVE",
            LockMode::Exclusive => "EXCLUSIVE",
            LockMode::AccessExclusive => "ACCESS EXCLUSIVE",
        }
    }

    /// Whether this mode blocks ordinary reads or writes of the application.
    pub fn blocks_application(self) -> bool {
        self >= LockMode::Share
    }
}

/// The lock one step takes, and on what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lock {
    pub mode: LockMode,
    /// The relation(s) or object the lock is on, quoted; empty for `LockMode::None`.
    pub on: QuotedName,
}

impl Lock {
    pub fn none() -> Lock {
        Lock {
            mode: LockMode::None,
            on: QuotedName::default(),
        }
    }

    pub fn new(mode: LockMode, on: QuotedName) -> Lock {
        Lock { mode, on }
    }
}

/// Why a step deserves attention before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hazard {
    /// Takes an ACCESS EXCLUSIVE lock: reads and writes of the relation wait.
    AccessExclusive,
    /// Rewrites the whole table.
    Rewrite,
    /// Builds an index (I/O and time proportional to the table).
    BuildsIndex,
    /// Scans the table to validate a constraint.
    Validates,
    /// Deletes data.
    DeletesData,
    /// Replaces the rows of a table.
    ReplacesData,
}

impl Hazard {
    pub fn describe(self) -> &'static str {
        match self {
            Hazard::AccessExclusive => "takes ACCESS EXCLUSIVE",
            Hazard::Rewrite => "rewrites the table",
            Hazard::BuildsIndex => "builds an index",
            Hazard::Validates => "validates a constraint",
            Hazard::DeletesData => "deletes data",
            Hazard::ReplacesData => "replaces the rows of a table",
        }
    }
}

/// One statement (or a few that belong together) and what it means.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// SQL to run; may hold several statements separated by `;`.
    pub sql: String,
    /// One sentence for humans: what this step does.
    pub description: String,
    pub lock: Lock,
    pub hazards: Vec<Hazard>,
    /// Transaction group: consecutive steps with the same `Some(n)` run in one transaction;
    /// `None` runs alone, outside any transaction.
    pub transaction: Option<u32>,
}

impl Step {
    pub fn new(description: impl Into<String>, sql: impl Into<String>) -> Step {
        Step {
            sql: sql.into(),
            description: description.into(),
            lock: Lock::none(),
            hazards: Vec::new(),
            transaction: Some(0),
        }
    }

    pub fn lock(mut self, mode: LockMode, on: QuotedName) -> Step {
        self.lock = Lock::new(mode, on);
        if mode == LockMode::AccessExclusive && !self.hazards.contains(&Hazard::AccessExclusive) {
            self.hazards.push(Hazard::AccessExclusive);
        }
        self
    }

    pub fn hazard(mut self, h: Hazard) -> Step {
        if !self.hazards.contains(&h) {
            self.hazards.push(h);
        }
        self
    }

    /// Runs outside any transaction (e.g. `CREATE INDEX CONCURRENTLY`).
    pub fn outside_transaction(mut self) -> Step {
        self.transaction = None;
        self
    }

    pub fn in_transaction(mut self, group: u32) -> Step {
        self.transaction = Some(group);
        self
    }
}

/// An ordered list of steps.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub title: String,
    pub steps: Vec<Step>,
}

/// How plan execution treats locks.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// `lock_timeout` for each attempt.
    pub lock_timeout: Duration,
    /// `statement_timeout` for each statement (bounded so a stuck step cannot hold locks long).
    pub statement_timeout: Option<Duration>,
    /// Give up retrying lock timeouts after this long.
    pub max_wait: Duration,
    /// Failpoint hit after each transaction unit commits ([`crate::failpoint`]), so that a
    /// fault test can stop a job between its units.
    pub after_unit: Option<&'static str>,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            lock_timeout: Duration::from_millis(100),
            statement_timeout: None,
            max_wait: Duration::from_secs(30),
            after_unit: None,
        }
    }
}

/// SQLSTATE of `lock_not_available` (what `lock_timeout` raises).
pub const LOCK_NOT_AVAILABLE: &str = "55P03";

impl Plan {
    pub fn new(title: impl Into<String>) -> Plan {
        Plan {
            title: title.into(),
            steps: Vec::new(),
        }
    }

    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Maximal runs of consecutive steps that execute together: a transaction group, or a
    /// single step outside any transaction.
    pub fn units(&self) -> Vec<&[Step]> {
        let mut units = Vec::new();
        let mut start = 0;
        for i in 1..=self.steps.len() {
            let boundary = i == self.steps.len()
                || self.steps[i].transaction.is_none()
                || self.steps[i].transaction != self.steps[start].transaction;
            if boundary {
                units.push(&self.steps[start..i]);
                start = i;
            }
        }
        units
    }

    /// The plan as a SQL script with a comment before each step. `header` lines are written as
    /// comments at the top.
    pub fn to_script(&self, header: &[String]) -> String {
        let mut out = String::new();
        for line in header {
            let _ = writeln!(out, "-- {line}");
        }
        if !header.is_empty() {
            out.push('\n');
        }
        for unit in self.units() {
            let tx = unit[0].transaction.is_some();
            if tx {
                out.push_str("BEGIN;\n\n");
            }
            for step in unit {
                let _ = writeln!(out, "-- {}", step.description);
                if step.lock.mode != LockMode::None {
                    let _ = writeln!(
                        out,
                        "-- lock: {} on {}",
                        step.lock.mode.as_sql(),
                        step.lock.on
                    );
                }
                if !step.hazards.is_empty() {
                    let hz: Vec<_> = step.hazards.iter().map(|h| h.describe()).collect();
                    let _ = writeln!(out, "-- hazards: {}", hz.join(", "));
                }
                if !tx {
                    out.push_str("-- runs outside a transaction\n");
                }
                out.push_str(step.sql.trim_end());
                if !step.sql.trim_end().ends_with(';') {
                    out.push(';');
                }
                out.push_str("\n\n");
            }
            if tx {
                out.push_str("COMMIT;\n\n");
            }
        }
        out
    }

    /// Runs the plan against `client`. Each transaction group commits as a whole or not at all;
    /// a lock timeout rolls the unit back and retries it with jittered backoff until
    /// `opts.max_wait`, then fails naming the sessions that blocked it.
    pub async fn execute(
        &self,
        client: &Client,
        opts: &ExecOptions,
        events: &dyn EventSink,
    ) -> Result<()> {
        let total = self.steps.len();
        let mut index = 0;
        for unit in self.units() {
            crate::conn::cancel::check()?;
            run_unit_with_retry(client, unit, index, total, opts, events).await?;
            if let Some(point) = opts.after_unit {
                crate::failpoint::hit(point).await?;
            }
            index += unit.len();
        }
        Ok(())
    }
}

async fn run_unit_with_retry(
    client: &Client,
    unit: &[Step],
    first_index: usize,
    total: usize,
    opts: &ExecOptions,
    events: &dyn EventSink,
) -> Result<()> {
    let lock_targets: Vec<&str> = unit
        .iter()
        .map(|s| s.lock.on.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    crate::lockwait::retry(
        opts.max_wait,
        events,
        || async {
            let r = run_unit(client, unit, first_index, total, opts, events).await;
            if r.is_err() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            r
        },
        || crate::lockwait::blockers_by_name(client, &lock_targets),
    )
    .await
}

/// Exponential backoff with full jitter: 50 ms doubling up to 2 s, never past the deadline.
pub fn backoff(attempt: u32, remaining: Duration) -> Duration {
    let cap = Duration::from_millis(50u64.saturating_mul(1 << attempt.min(6)).min(2000));
    let jittered = rand::thread_rng().gen_range(cap / 2..=cap);
    jittered.min(remaining)
}

async fn run_unit(
    client: &Client,
    unit: &[Step],
    first_index: usize,
    total: usize,
    opts: &ExecOptions,
    events: &dyn EventSink,
) -> Result<()> {
    let tx = unit[0].transaction.is_some();
    let mut settings = format!(
        "SET lock_timeout = {}",
        opts.lock_timeout.as_millis().max(1)
    );
    if let Some(st) = opts.statement_timeout {
        let _ = write!(
            settings,
            "; SET statement_timeout = {}",
            st.as_millis().max(1)
        );
    }
    if tx {
        settings = format!("BEGIN; {}", settings.replace("SET ", "SET LOCAL "));
    }
    client
        .batch_execute(&settings)
        .await
        .map_err(|e| Error::db("setting timeouts", e))?;
    for (i, step) in unit.iter().enumerate() {
        let t0 = Instant::now();
        events.emit(Event::StepStarted {
            index: first_index + i,
            total,
            description: step.description.clone(),
        });
        client.batch_execute(&step.sql).await.map_err(|e| {
            Error::db(
                format!("step {} ({})", first_index + i + 1, step.description),
                e,
            )
        })?;
        events.emit(Event::StepFinished {
            index: first_index + i,
            elapsed: t0.elapsed(),
        });
    }
    if tx {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| Error::db("committing", e))?;
    } else {
        client
            .batch_execute("RESET lock_timeout; RESET statement_timeout")
            .await
            .map_err(|e| Error::db("resetting timeouts", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_group_consecutive_transactions() {
        let mut p = Plan::new("t");
        p.push(Step::new("a", "SELECT 1"));
        p.push(Step::new("b", "SELECT 2"));
        p.push(Step::new("c", "CREATE INDEX CONCURRENTLY i ON t (a)").outside_transaction());
        p.push(Step::new("d", "SELECT 3").in_transaction(1));
        let sizes: Vec<usize> = p.units().iter().map(|u| u.len()).collect();
        assert_eq!(sizes, vec![2, 1, 1]);
        let script = p.to_script(&["header".into()]);
        assert!(script.starts_with("-- header\n"));
        assert_eq!(script.matches("BEGIN;").count(), 2);
        assert!(script.contains("-- runs outside a transaction\nCREATE INDEX CONCURRENTLY"));
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 1..20 {
            let d = backoff(attempt, Duration::from_secs(60));
            assert!(d <= Duration::from_secs(2));
            assert!(backoff(attempt, Duration::from_millis(10)) <= Duration::from_millis(10));
        }
    }
}
