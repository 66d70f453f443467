//! Small tables sent as statements: many tables per round trip.
//!
//! A COPY costs the target two round trips of its own (the driver starts it, then reads its
//! end), and a COPY must not be pipelined behind a statement that may fail (rust-postgres issue
//! 789: a COPY FROM that fails before copy mode leaves an answer behind that the next request
//! takes for its own). With 2 000 tables of 10 rows those round trips, not the rows, were the
//! time. So a transaction shared by small tables (`batch_units`) is first tried in one message
//! per side and no COPY at all:
//!
//! - the source runs every table's query in one simple-query message, inside the snapshot's
//!   transaction and behind a savepoint (a query that fails, such as a data rule's SQL, must not
//!   abort the transaction that holds the snapshot), and answers in text;
//! - the target gets one message: BEGIN, the units' statements (locks, deletes, sequences,
//!   triggers) and, where their COPY was, `INSERT … VALUES` with each value a literal made by
//!   [`quote_literal`]; then COMMIT.
//!
//! Both are one transaction, as the units were, so readers see the old rows or the new ones.
//! Units lose their savepoints: if anything fails (a lock not granted in time, a bad row, a
//! query), the whole transaction is rolled back and the batch runs again through the COPY path
//! (`Prepared::run_batch`), which keeps one unit's failure to that unit, retries lock timeouts
//! alone, and reports errors as before. A failure therefore costs the batch a second attempt
//! (and a lock wait twice), never a different outcome.
//!
//! Text is the format of `pg_dump -a | psql`. It reads back as the same value when the source's
//! output settings are unambiguous ([`source_reads_back`]); `money` depends on `lc_monetary` on
//! both sides, so a table that binary COPY would have copied exactly keeps its COPY if it has one
//! ([`text_is_exact`]). Tables copied as text already (types that differ, user-defined types)
//! get exactly the values a text COPY would have given them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::{Action, Prepared, Stats, TablePlan, Unit, UnitOutcome};
use crate::copy::Format;
use crate::error::{DbResultExt, Result};
use crate::events::EventSink;
use crate::ident::quote_literal;
use crate::plan::Step;

const READ: &str = "SAVEPOINT pgflip_read";
const READ_DONE: &str = "RELEASE SAVEPOINT pgflip_read";
const READ_FAILED: &str = "ROLLBACK TO SAVEPOINT pgflip_read; RELEASE SAVEPOINT pgflip_read";

/// Whether the source's text output of dates, times and floating-point numbers reads back as the
/// same values on any server: ISO dates (read alike whatever the reader's DateStyle), intervals
/// with a sign on every field, and floats printed exactly (the default from PostgreSQL 12 on;
/// `extra_float_digits = 3` before). Read, never set: a data rule's expression formats values
/// with the session's settings, and a COPY would have used them too.
pub(super) async fn source_reads_back(src: &Client) -> Result<bool> {
    Ok(src
        .query_one(
            "SELECT current_setting('DateStyle') LIKE 'ISO%' \
               AND current_setting('IntervalStyle') IN ('postgres', 'iso_8601') \
               AND (current_setting('server_version_num')::int >= 120000 \
                    OR current_setting('extra_float_digits')::int >= 3)",
            &[],
        )
        .await
        .ctx("reading the source's output settings")?
        .get(0))
}

/// Whether text carries this table's values as exactly as its COPY would: a table copied in
/// binary must have no `money` column (its text depends on `lc_monetary` on both sides).
pub(super) fn text_is_exact(p: &TablePlan) -> bool {
    p.format == Format::Text
        || !p.columns.iter().any(|(c, _, _)| {
            p.target
                .column(c)
                .is_some_and(|col| col.type_name.starts_with("money"))
        })
}

/// Whether every unit of `batch` can go inline: statements and copies of inline tables only
/// (a merge's checks read their answer, and are never in a shared transaction anyway).
pub(super) fn batch_is_inline(tables: &[TablePlan], units: &[Unit], batch: &[usize]) -> bool {
    batch.len() > 1
        && batch.iter().all(|&u| {
            units[u].actions.iter().all(|a| match a {
                Action::Sql(_) => true,
                Action::Copy { table, .. } => tables[*table].inline,
                Action::Check { .. } => false,
            })
        })
}

/// The plan's word for it, ahead of the units' own steps (which say what runs if it fails).
pub(super) fn plan_step() -> Step {
    Step::new(
        "send this transaction's tables in one message: their rows read in one query on the \
         source, then the statements below with each COPY as INSERT … VALUES; if anything \
         fails, roll back and run them as below (a savepoint and a COPY per unit)",
        "-- INSERT INTO <table> (<columns>) VALUES (<literals>), … in place of each COPY",
    )
}

impl Prepared {
    /// Runs `batch` (small units sharing a transaction) in one message per side. `None` when it
    /// did not commit: nothing was written, and the caller runs the batch the COPY way.
    pub(super) async fn run_inline(
        &self,
        batch: &[usize],
        slots: &Semaphore,
        events: &dyn EventSink,
    ) -> Result<Option<Vec<UnitOutcome>>> {
        let started = Instant::now();
        let _slot = slots.acquire().await.expect("never closed");
        crate::conn::cancel::check()?;
        let (src, tgt) = self.take_pair().await?;
        // Every copy of the batch, in the order of the units' actions.
        let copies: Vec<usize> = batch
            .iter()
            .flat_map(|&u| self.units[u].actions.iter())
            .filter_map(|a| match a {
                Action::Copy { table, .. } => Some(*table),
                _ => None,
            })
            .collect();
        let mut read = String::from(READ);
        for &t in &copies {
            read.push_str("; ");
            read.push_str(&self.tables[t].source_select(None));
        }
        read.push_str("; ");
        read.push_str(READ_DONE);
        let answer = match src.simple_query(&read).await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "sync: reading a batch inline failed; copying instead");
                // The COPY path meets the same error and reports it for its unit.
                src.batch_execute(READ_FAILED)
                    .await
                    .ctx("ending a failed read on the source")?;
                src.reuse();
                tgt.reuse();
                return Ok(None);
            }
        };
        let (inserts, stats) = self.inserts(&copies, &answer);
        let mut sql = format!(
            "BEGIN; SET LOCAL lock_timeout = {}",
            self.opts.lock_timeout.as_millis().max(1)
        );
        for &u in batch {
            for a in &self.units[u].actions {
                let statement = match a {
                    Action::Sql(step) => Some(step.sql.as_str()),
                    Action::Copy { table, .. } => inserts.get(table).map(String::as_str),
                    Action::Check { .. } => unreachable!("see can_inline"),
                };
                if let Some(s) = statement {
                    sql.push_str("; ");
                    sql.push_str(s);
                }
            }
        }
        if let Err(e) = tgt.batch_execute(&sql).await {
            tracing::debug!(error = %e, "sync: a batch inline failed; copying instead");
            let _ = tgt.batch_execute("ROLLBACK").await;
            // Interrupted: stop here, as the COPY path would.
            crate::conn::cancel::check()?;
            src.reuse();
            tgt.reuse();
            return Ok(None);
        }
        crate::failpoint::hit("sync.before_commit").await?;
        tgt.batch_execute("COMMIT")
            .await
            .ctx("committing on the target")?;
        src.reuse();
        tgt.reuse();
        let names: Vec<String> = batch
            .iter()
            .map(|&u| super::unit_names(&self.tables, &self.units[u]))
            .collect();
        tracing::debug!(tables = %names.join(", "), "sync: sent inline");
        let by_unit = batch
            .iter()
            .map(|&u| {
                let unit = &self.units[u];
                let reports = self.in_place_reports(unit, &stats, started, events);
                (u, Ok::<_, Arc<crate::Error>>(reports))
            })
            .collect();
        Ok(Some(by_unit))
    }

    /// The `INSERT … VALUES` of each copied table that has rows (by table), from the source's
    /// answer to the read (one statement per table of `copies`, behind the savepoint), and the
    /// rows and bytes of each.
    fn inserts(
        &self,
        copies: &[usize],
        answer: &[SimpleQueryMessage],
    ) -> (BTreeMap<usize, String>, Stats) {
        let mut inserts: BTreeMap<usize, String> = BTreeMap::new();
        let mut stats = Stats::new();
        // The first answer is the savepoint's; each table's rows come before its own end.
        let mut statement = 0usize;
        for m in answer {
            match m {
                SimpleQueryMessage::CommandComplete(_) => statement += 1,
                SimpleQueryMessage::Row(row) => {
                    let Some(&t) = statement.checked_sub(1).and_then(|i| copies.get(i)) else {
                        continue;
                    };
                    let p = &self.tables[t];
                    let sql = inserts.entry(t).or_insert_with(|| {
                        format!(
                            "INSERT INTO {} ({}){} VALUES ",
                            p.load_into,
                            p.column_list(),
                            p.overriding()
                        )
                    });
                    let e = stats.entry(t).or_default();
                    if e.0 > 0 {
                        sql.push_str(", ");
                    }
                    sql.push('(');
                    for i in 0..row.len() {
                        if i > 0 {
                            sql.push_str(", ");
                        }
                        match row.get(i) {
                            Some(v) => {
                                e.1 += v.len() as u64;
                                sql.push_str(&quote_literal(v));
                            }
                            None => sql.push_str("NULL"),
                        }
                    }
                    sql.push(')');
                    e.0 += 1;
                }
                _ => {}
            }
        }
        (inserts, stats)
    }
}
