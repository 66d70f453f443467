//! The second half of a sync: [`Prepared::execute`] runs the units, each transaction on a
//! connection pair of its own, within `--jobs` slots.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio_postgres::{Client, Statement};

use super::*;
use crate::copy;
use crate::error::{DbResultExt, Error, Result};
use crate::events::{Event, EventSink};
use crate::rowdiff;

impl Prepared {
    /// Runs the units side by side. Every connection pair at work (a unit's transaction, one
    /// range of a large table, an index build) holds one of `jobs` slots, so the ranges of a
    /// large table share the parallelism with the other tables. Connections are opened only
    /// inside a slot and closed before it is given back, so the copies hold at most `jobs`
    /// connections to each server whatever the number of tables (the README's bound:
    /// `--jobs` + 2, with the coordinator and the caller's lock connection). Each unit commits
    /// on its own. A failing unit rolls back; the others go on and the report lists it
    /// (`failed`); with `fail_fast` the first failure stops the others (their transactions roll
    /// back) and is returned.
    pub async fn execute(self, events: &dyn EventSink) -> Result<SyncReport> {
        events.emit(Event::PhaseStarted {
            phase: "copying".into(),
        });
        if let Some(b) = &self.opts.in_batches {
            return batches::execute(&self, b, events).await;
        }
        if self.tables.iter().any(|p| p.strategy == Strategy::Staging) {
            // Staging tables are recorded in pgflip's state as they are created.
            let c = self.targets.get().await?;
            crate::state::ensure(&c).await?;
            c.reuse();
        }
        let slots = Semaphore::new(self.opts.jobs.max(1));
        let this = &self;
        let mut failed = Vec::new();
        let outcomes: Vec<Vec<UnitOutcome>> = if self.opts.fail_fast {
            futures_util::future::try_join_all(
                self.batches
                    .iter()
                    .map(|b| this.run_batch(b, &slots, events)),
            )
            .await?
        } else {
            futures_util::future::join_all(
                self.batches
                    .iter()
                    .map(|b| this.run_batch(b, &slots, events)),
            )
            .await
            .into_iter()
            .zip(&self.batches)
            .map(|(outcome, batch)| match outcome {
                Ok(per_unit) => per_unit,
                // The shared transaction itself failed (its COMMIT, its connection): none of
                // its units was written.
                Err(e) => {
                    let e = Arc::new(e);
                    batch.iter().map(|&u| (u, Err(e.clone()))).collect()
                }
            })
            .collect()
        };
        let mut results = Vec::new();
        for (u, outcome) in outcomes.into_iter().flatten() {
            match outcome {
                Ok(r) => results.push(r),
                Err(e) => failed.push(UnitFailure {
                    tables: self.units[u]
                        .tables
                        .iter()
                        .map(|&i| self.tables[i].display.clone())
                        .collect(),
                    error: e.to_string(),
                    cause: e,
                }),
            }
        }
        tracing::debug!(elapsed = ?self.started.elapsed(), "sync: executed");
        let mut tables: Vec<TableReport> = results.into_iter().flatten().collect();
        tables.sort_by(|a, b| a.table.cmp(&b.table));
        failed.sort_by(|a, b| a.tables.cmp(&b.tables));
        Ok(SyncReport {
            tables,
            elapsed: self.started.elapsed(),
            dry_run: false,
            failed,
            plan: self.plan.clone(),
        })
    }

    pub(super) async fn run_unit_with_retry(
        &self,
        unit: &Unit,
        slots: &Semaphore,
        events: &dyn EventSink,
    ) -> Result<Vec<TableReport>> {
        let names: Vec<&str> = unit
            .tables
            .iter()
            .map(|&i| self.tables[i].into.as_str())
            .collect();
        crate::lockwait::retry(
            self.opts.max_wait,
            events,
            || self.run_unit(unit, slots, events),
            || async {
                let _slot = slots.acquire().await.expect("never closed");
                let t = self.targets.get().await?;
                let found = crate::lockwait::blockers_by_name(&t, &names).await?;
                t.reuse();
                Ok(found)
            },
        )
        .await
    }

    /// Runs one transaction: a unit alone (retried on lock timeouts), or small units together
    /// on one connection pair, each behind a savepoint on both sides. A unit that fails is
    /// rolled back to its savepoint and the others go on in the same transaction (with
    /// `fail_fast` the whole transaction rolls back and the error is returned); a unit that
    /// could not get its locks in time is rolled back likewise and run again alone afterwards,
    /// under the retries of [`crate::lockwait`], so that one busy table neither holds up the
    /// others nor has them all retried.
    pub(super) async fn run_batch(
        &self,
        batch: &[usize],
        slots: &Semaphore,
        events: &dyn EventSink,
    ) -> Result<Vec<UnitOutcome>> {
        if let [u] = batch {
            let r = self
                .run_unit_with_retry(&self.units[*u], slots, events)
                .await;
            return match r {
                Ok(r) => Ok(vec![(*u, Ok(r))]),
                Err(e) if self.opts.fail_fast => Err(e),
                Err(e) => Ok(vec![(*u, Err(Arc::new(e)))]),
            };
        }
        // Small tables only: one message per side (see `inline`); the COPY way below when that
        // did not commit.
        if inline::batch_is_inline(&self.tables, &self.units, batch) {
            if let Some(outcomes) = self.run_inline(batch, slots, events).await? {
                return Ok(outcomes);
            }
        }
        let mut outcomes = Vec::new();
        let mut alone = Vec::new();
        let mut done = Vec::new();
        {
            let _slot = slots.acquire().await.expect("never closed");
            let (src, tgt) = self.take_pair().await?;
            let (statements, prepared_on_src) = self.prepare_copies(batch, &src, &tgt).await?;
            // Round trips were most of the time of a 10-row table: each unit's savepoint, lock
            // and deletes go to the target in one message, behind the end of the previous
            // unit's COPY when that was its last action (the server runs them in order: a COPY
            // that fails at its end leaves the statements behind it nothing to do, and their
            // unit starts again once the failed one is rolled back). Meanwhile the source runs
            // the unit's savepoint and starts its first COPY. The target's COPY starts once its
            // statements succeeded (see `copy::send_into`).
            let mut pending = format!(
                "BEGIN; SET LOCAL lock_timeout = {}",
                self.opts.lock_timeout.as_millis().max(1)
            );
            // The previous unit, its COPY sent and not finished: (unit, table, copy, stats, start).
            let mut sent: Option<(usize, usize, copy::Sent, Stats, Instant)> = None;
            let mut k = 0;
            while k < batch.len() {
                let u = batch[k];
                let unit = &self.units[u];
                let prepared = &statements[k];
                let started = Instant::now();
                let progress = self.progress(unit);
                let mut stats = BTreeMap::new();
                let lead = unit
                    .actions
                    .iter()
                    .take_while(|a| matches!(a, Action::Sql(_)))
                    .count();
                let mut sql = vec![std::mem::replace(&mut pending, RELEASE.into())];
                sql.push(SAVEPOINT.into());
                sql.extend(unit.actions[..lead].iter().map(|a| a.step().sql.clone()));
                let sql = sql.join("; ");
                let what: Vec<&str> = unit.actions[..lead]
                    .iter()
                    .map(|a| a.step().description.as_str())
                    .collect();
                let src_sql = match (k, prepared_on_src) {
                    (0, true) => format!("RELEASE {PREPARING}; {SAVEPOINT}"),
                    (0, false) => {
                        format!("ROLLBACK TO {PREPARING}; RELEASE {PREPARING}; {SAVEPOINT}")
                    }
                    _ => format!("{RELEASE}; {SAVEPOINT}"),
                };
                let first = match (&unit.actions.get(lead), prepared.get(lead)) {
                    (Some(Action::Copy { table, what, .. }), Some(Some((out, inn)))) => {
                        Some((*table, what.as_str(), out, inn))
                    }
                    _ => None,
                };
                let finishing = async {
                    let (pu, table, copy, stats, started) = sent.take()?;
                    Some((pu, table, copy.finish().await, stats, started))
                };
                let (finished, on_tgt, (on_src, out)) = futures_util::join!(
                    finishing,
                    tgt.batch_execute(&sql),
                    futures_util::future::join(src.batch_execute(&src_sql), async {
                        let (_, what, out, _) = first?;
                        Some(copy::start_out(&src, out, what).await)
                    })
                );
                on_src.ctx("starting a unit on the source")?;
                if let Some((pu, table, finished, mut pstats, pstarted)) = finished {
                    match finished {
                        Ok(c) => {
                            add(&mut pstats, table, c);
                            done.push((pu, pstats, pstarted));
                        }
                        Err(e) => {
                            // This unit's statements found the transaction aborted: nothing of
                            // it ran. Roll the previous unit back, then start this one again.
                            drop(out);
                            self.unit_failed(pu, e, &src, &tgt, &mut alone, &mut outcomes)
                                .await?;
                            continue;
                        }
                    }
                }
                let copied = match (&on_tgt, first, out) {
                    (Ok(()), Some((table, what, _, inn)), Some(out)) => {
                        let sent = match out {
                            Ok(out) => {
                                let format = self.tables[table].format;
                                copy::send_into(
                                    out,
                                    &tgt,
                                    inn,
                                    format,
                                    what,
                                    &progress[&table],
                                    events,
                                )
                                .await
                            }
                            Err(e) => Err(e),
                        };
                        Some((table, sent))
                    }
                    // The statements failed (their error is the unit's): the source's COPY is
                    // dropped, and the client drains it.
                    _ => None,
                };
                let rest = lead + usize::from(first.is_some());
                let outcome = match (on_tgt.ctx(what.join("; ")), copied) {
                    // The unit's statements failed (its lock not granted, say), or its COPY.
                    (Err(e), _) | (Ok(()), Some((_, Err(e)))) => Err(e),
                    (Ok(()), Some((table, Ok(copy))))
                        if rest == unit.actions.len() && k + 1 < batch.len() =>
                    {
                        sent = Some((u, table, copy, stats, started));
                        k += 1;
                        continue;
                    }
                    (Ok(()), Some((table, Ok(copy)))) => match copy.finish().await {
                        Ok(c) => {
                            add(&mut stats, table, c);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    (Ok(()), None) => Ok(()),
                };
                let outcome = match outcome {
                    Ok(()) => {
                        self.run_actions(
                            &unit.actions[rest..],
                            prepared.get(rest..).unwrap_or_default(),
                            &src,
                            &tgt,
                            &progress,
                            &mut stats,
                            events,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => done.push((u, stats, started)),
                    Err(e) => {
                        self.unit_failed(u, e, &src, &tgt, &mut alone, &mut outcomes)
                            .await?
                    }
                }
                k += 1;
            }
            crate::failpoint::hit("sync.before_commit").await?;
            // The source keeps its transaction (the snapshot) for the next user of the pair.
            let (on_src, on_tgt) = futures_util::future::join(
                src.batch_execute(RELEASE),
                tgt.batch_execute(&format!("{pending}; COMMIT")),
            )
            .await;
            on_tgt.ctx("committing on the target")?;
            on_src.ctx("ending the last unit on the source")?;
            src.reuse();
            tgt.reuse();
        }
        // Each table's time runs from its unit's start to the shared COMMIT.
        for (u, stats, started) in done {
            let unit = &self.units[u];
            outcomes.push((u, Ok(self.in_place_reports(unit, &stats, started, events))));
        }
        for u in alone {
            match self
                .run_unit_with_retry(&self.units[u], slots, events)
                .await
            {
                Ok(r) => outcomes.push((u, Ok(r))),
                Err(e) if self.opts.fail_fast => return Err(e),
                Err(e) => outcomes.push((u, Err(Arc::new(e)))),
            }
        }
        Ok(outcomes)
    }

    /// Rolls a failed unit of a shared transaction back to its savepoint on both sides (the
    /// savepoint stays: the next unit releases it). A unit whose lock was not granted is run
    /// again alone afterwards (`alone`); another failure is returned with `fail_fast`, and
    /// listed otherwise.
    pub(super) async fn unit_failed(
        &self,
        u: usize,
        e: Error,
        src: &Client,
        tgt: &Client,
        alone: &mut Vec<usize>,
        outcomes: &mut Vec<UnitOutcome>,
    ) -> Result<()> {
        tgt.batch_execute(ROLLBACK_TO)
            .await
            .ctx("rolling a failed unit back on the target")?;
        src.batch_execute(ROLLBACK_TO)
            .await
            .ctx("rolling a failed unit back on the source")?;
        if crate::lockwait::is_lock_failure(&e) {
            alone.push(u);
        } else if self.opts.fail_fast {
            return Err(e);
        } else {
            outcomes.push((u, Err(Arc::new(e))));
        }
        Ok(())
    }

    /// A connection pair for a unit's transaction: a source reader inside the snapshot and a
    /// target connection, idle ones first.
    pub(super) async fn take_pair(&self) -> Result<(Pooled<'_>, Pooled<'_>)> {
        Ok((self.readers.get().await?, self.targets.get().await?))
    }

    pub(super) fn progress(&self, unit: &Unit) -> BTreeMap<usize, copy::Progress> {
        unit.tables
            .iter()
            .map(|&i| (i, copy::Progress::new(self.tables[i].display.clone())))
            .collect()
    }

    /// Parses every COPY of a shared transaction on both connections before it begins, all at
    /// once (the client pipelines them), so that each copy then starts in one round trip and
    /// right behind its unit's statements. Parsing a COPY takes no lock. On the source, whose
    /// transaction holds the snapshot, they are parsed behind [`PREPARING`] (the first unit
    /// releases it, or rolls back to it when one failed: `false`, and none is used); a copy
    /// that did not parse runs from its text, and fails alone as before.
    pub(super) async fn prepare_copies(
        &self,
        batch: &[usize],
        src: &Client,
        tgt: &Client,
    ) -> Result<(Vec<Vec<Option<(Statement, Statement)>>>, bool)> {
        let copies: Vec<Vec<Option<(&str, &str)>>> = batch
            .iter()
            .map(|&u| {
                self.units[u]
                    .actions
                    .iter()
                    .map(|a| match a {
                        Action::Copy {
                            copy_out, copy_in, ..
                        } => Some((copy_out.as_str(), copy_in.as_str())),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        let on_src = futures_util::future::join_all(
            copies
                .iter()
                .flatten()
                .flatten()
                .map(|(out, _)| src.prepare(out)),
        );
        let on_tgt = futures_util::future::join_all(
            copies
                .iter()
                .flatten()
                .flatten()
                .map(|(_, inn)| tgt.prepare(inn)),
        );
        let (begun, outs, ins) = futures_util::join!(src.batch_execute(PREPARING), on_src, on_tgt);
        begun.ctx("starting a unit on the source")?;
        let parsed = outs.iter().all(|r| r.is_ok());
        let mut pairs = outs.into_iter().zip(ins).map(|(o, i)| match (o, i) {
            (Ok(o), Ok(i)) if parsed => Some((o, i)),
            _ => None,
        });
        let statements = copies
            .iter()
            .map(|actions| {
                actions
                    .iter()
                    .map(|c| c.and_then(|_| pairs.next().flatten()))
                    .collect()
            })
            .collect();
        Ok((statements, parsed))
    }

    /// A unit's statements and copies, in the transaction already open on `tgt`; `prepared`
    /// holds the copies' statements parsed beforehand (aligned with `actions`, or empty).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_actions(
        &self,
        actions: &[Action],
        prepared: &[Option<(Statement, Statement)>],
        src: &Client,
        tgt: &Client,
        progress: &BTreeMap<usize, copy::Progress>,
        stats: &mut BTreeMap<usize, (u64, u64)>,
        events: &dyn EventSink,
    ) -> Result<()> {
        for (k, a) in actions.iter().enumerate() {
            match a {
                Action::Sql(step) => {
                    tgt.batch_execute(&step.sql)
                        .await
                        .ctx(step.description.clone())?;
                }
                Action::Copy {
                    table,
                    what,
                    copy_out,
                    copy_in,
                    ..
                } => {
                    let s = match prepared.get(k) {
                        Some(Some((out, inn))) => {
                            let format = self.tables[*table].format;
                            copy::stream_prepared(
                                src,
                                out,
                                tgt,
                                inn,
                                format,
                                what,
                                &progress[table],
                                events,
                            )
                            .await?
                        }
                        _ => {
                            copy::stream(
                                src,
                                copy_out,
                                tgt,
                                copy_in,
                                what,
                                &progress[table],
                                events,
                            )
                            .await?
                        }
                    };
                    let e = stats.entry(*table).or_default();
                    e.0 += s.rows;
                    e.1 += s.bytes;
                }
                Action::Check { step, message } => {
                    let n: i64 = tgt
                        .query_one(&step.sql, &[])
                        .await
                        .ctx(step.description.clone())?
                        .get(0);
                    if n > 0 {
                        return Err(Error::InvalidInput(message.replace("{n}", &n.to_string())));
                    }
                }
            }
        }
        Ok(())
    }

    /// The reports of an in-place unit that committed.
    pub(super) fn in_place_reports(
        &self,
        unit: &Unit,
        stats: &BTreeMap<usize, (u64, u64)>,
        t0: Instant,
        events: &dyn EventSink,
    ) -> Vec<TableReport> {
        unit.tables
            .iter()
            .map(|&i| {
                let p = &self.tables[i];
                let (rows, bytes) = stats.get(&i).copied().unwrap_or_default();
                let r = self.report_for(p, rows, bytes, t0.elapsed());
                events.emit(Event::TableDone {
                    table: p.display.clone(),
                    rows,
                    bytes,
                    elapsed: r.elapsed,
                });
                r
            })
            .collect()
    }

    pub(super) async fn run_unit(
        &self,
        unit: &Unit,
        slots: &Semaphore,
        events: &dyn EventSink,
    ) -> Result<Vec<TableReport>> {
        let t0 = Instant::now();
        let progress = self.progress(unit);
        let mut stats: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
        // Every connection of the unit is taken inside a slot and given back (or closed) before
        // the slot is, so that pgflip holds at most `jobs` connections to each server for the
        // copies, however many tables there are (the application's connections are counted
        // against the same max_connections).
        {
            let _slot = slots.acquire().await.expect("never closed");
            // Interrupted while this unit waited for its slot: it must not begin.
            crate::conn::cancel::check()?;
            let (src, tgt) = self.take_pair().await?;
            tgt.batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = {}",
                self.opts.lock_timeout.as_millis().max(1)
            ))
            .await
            .ctx("starting the target transaction")?;
            self.run_actions(
                &unit.actions,
                &[],
                &src,
                &tgt,
                &progress,
                &mut stats,
                events,
            )
            .await?;
            crate::failpoint::hit("sync.before_commit").await?;
            tgt.batch_execute("COMMIT")
                .await
                .ctx("committing on the target")?;
            // The source transaction stays open: the next step reads the same snapshot.
            src.reuse();
            tgt.reuse();
        }
        // The loading tables are committed from here on: a failure drops them again, so that
        // nothing half-filled stays behind.
        match self.load_and_finish(unit, slots, &progress, events).await {
            Ok(more) => {
                for (i, (rows, bytes)) in more {
                    let e = stats.entry(i).or_default();
                    e.0 += rows;
                    e.1 += bytes;
                }
            }
            Err(e) => {
                self.drop_loading_tables(unit, slots, events).await;
                return Err(e);
            }
        }
        let diffing = self.opts.show_diff && self.opts.staging;
        let _slot;
        let mut spare = Vec::new();
        let mut helpers = Vec::new();
        let tgt = if diffing {
            _slot = slots.acquire().await.expect("never closed");
            // Slots no other unit is using right now split a large diff (rowdiff::in_database
            // decides by the live table's size, as here); a unit of small tables takes none.
            let splits = unit.tables.iter().any(|&i| {
                let t = &self.tables[i].target;
                !t.primary_key.is_empty() && t.estimated_rows >= rowdiff::SPLIT_MIN_ROWS
            });
            while splits && spare.len() + 1 < self.opts.jobs {
                match slots.try_acquire() {
                    Ok(s) => spare.push(s),
                    Err(_) => break,
                }
            }
            for _ in &spare {
                helpers.push(self.targets.get().await?);
            }
            Some(self.targets.get().await?)
        } else {
            None
        };
        let mut reports = Vec::new();
        for &i in &unit.tables {
            let p = &self.tables[i];
            let (rows, bytes) = stats.get(&i).copied().unwrap_or_default();
            let mut r = self.report_for(p, rows, bytes, t0.elapsed());
            if let Some(tgt) = &tgt {
                if p.target.primary_key.is_empty() {
                    r.diff = None;
                } else {
                    let cols: Vec<(String, bool)> = p
                        .columns
                        .iter()
                        .filter(|(c, _, _)| !p.target.primary_key.contains(c))
                        .map(|(c, _, t)| (c.clone(), *t))
                        .collect();
                    // The diff and the marker of the live table read one snapshot: a later
                    // `--swap` compares the live table with exactly what this diff saw.
                    tgt.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        .await
                        .ctx("starting the diff")?;
                    let marker = drift::read_marker(tgt, &p.target.qualified()).await?;
                    let helper_refs: Vec<&tokio_postgres::Client> =
                        helpers.iter().map(|h| &**h).collect();
                    let diff = rowdiff::in_database(
                        tgt,
                        &helper_refs,
                        &p.into,
                        &p.target.qualified(),
                        &p.target.primary_key,
                        &cols,
                        self.opts.diff_sample,
                    )
                    .await;
                    let _ = tgt.batch_execute("COMMIT").await;
                    r.diff = Some(diff?);
                    if let Some(staging) = &p.staging {
                        drift::store_marker(tgt, (&p.target.schema, staging), drift::DIFF, &marker)
                            .await?;
                    }
                }
            }
            r.elapsed = t0.elapsed();
            events.emit(Event::TableDone {
                table: p.display.clone(),
                rows,
                bytes,
                elapsed: r.elapsed,
            });
            reports.push(r);
        }
        if let Some(tgt) = tgt {
            tgt.reuse();
        }
        for h in helpers {
            h.reuse();
        }
        Ok(reports)
    }

    /// After the unit's transaction: the range copies, then the index builds, then the
    /// finishing transaction, each on connections taken in a slot. Returns what the ranges
    /// moved per table.
    pub(super) async fn load_and_finish(
        &self,
        unit: &Unit,
        slots: &Semaphore,
        progress: &BTreeMap<usize, copy::Progress>,
        events: &dyn EventSink,
    ) -> Result<BTreeMap<usize, (u64, u64)>> {
        let mut moved: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
        let copies = futures_util::future::try_join_all(unit.ranges.iter().map(|a| async move {
            let Action::Copy {
                table,
                what,
                copy_out,
                copy_in,
                ..
            } = a
            else {
                unreachable!("ranges are copies")
            };
            let _slot = slots.acquire().await.expect("never closed");
            let (src, tgt) = self.take_pair().await?;
            let s = copy::stream(
                &src,
                copy_out,
                &tgt,
                copy_in,
                what,
                &progress[table],
                events,
            )
            .await?;
            src.reuse();
            tgt.reuse();
            Ok::<_, Error>((*table, s))
        }))
        .await?;
        for (i, s) in copies {
            let e = moved.entry(i).or_default();
            e.0 += s.rows;
            e.1 += s.bytes;
        }
        futures_util::future::try_join_all(unit.after.iter().map(|step| async move {
            let _slot = slots.acquire().await.expect("never closed");
            let c = self.targets.get().await?;
            c.batch_execute(&step.sql)
                .await
                .ctx(step.description.clone())?;
            c.reuse();
            Ok::<_, Error>(())
        }))
        .await?;
        if !unit.finish.is_empty() {
            let _slot = slots.acquire().await.expect("never closed");
            let pooled = self.targets.get().await?;
            let tgt = &*pooled;
            let sql: Vec<&str> = unit.finish.iter().map(|s| s.sql.as_str()).collect();
            let sql = format!(
                "BEGIN; SET LOCAL lock_timeout = {}; {}; COMMIT",
                self.opts.lock_timeout.as_millis().max(1),
                sql.join("; ")
            );
            // A lock timeout here retries this short transaction, not the whole copy.
            let names: Vec<&str> = unit.finish.iter().map(|s| s.lock.on.as_str()).collect();
            crate::lockwait::retry(
                self.opts.max_wait,
                events,
                || async {
                    let r = tgt
                        .batch_execute(&sql)
                        .await
                        .ctx("finishing the staging tables");
                    if r.is_err() {
                        let _ = tgt.batch_execute("ROLLBACK").await;
                    }
                    r
                },
                || crate::lockwait::blockers_by_name(tgt, &names),
            )
            .await?;
            pooled.reuse();
        }
        Ok(moved)
    }

    /// Drops the loading tables of a unit that failed after creating them. The failed copies'
    /// sessions may still be ending, so the lock is retried (short lock_timeout) until
    /// `max_wait`; if that fails too, the next run drops them.
    pub(super) async fn drop_loading_tables(
        &self,
        unit: &Unit,
        slots: &Semaphore,
        events: &dyn EventSink,
    ) {
        let staged: Vec<&TablePlan> = unit
            .tables
            .iter()
            .map(|&i| &self.tables[i])
            .filter(|p| p.strategy == Strategy::Staging)
            .collect();
        if staged.is_empty() {
            return;
        }
        let loading: Vec<&str> = staged.iter().map(|p| p.load_into.as_str()).collect();
        let mut sql = format!(
            "SET lock_timeout = {}; BEGIN; DROP TABLE IF EXISTS {}",
            self.opts.lock_timeout.as_millis().max(1),
            loading.join(", ")
        );
        for p in &staged {
            sql.push_str("; ");
            sql.push_str(&crate::state::forget_operation_sql((
                &p.target.schema,
                p.staging.as_deref().unwrap_or_default(),
            )));
        }
        sql.push_str("; COMMIT");
        // Quietly: this is the aftermath of a failure already reported.
        let outcome = crate::lockwait::retry(
            self.opts.max_wait,
            &crate::events::NullSink,
            || async {
                let _slot = slots.acquire().await.expect("never closed");
                self.target
                    .connect()
                    .await?
                    .batch_execute(&sql)
                    .await
                    .ctx("dropping the loading tables")
            },
            || async { Ok(Vec::new()) },
        )
        .await;
        if let Err(e) = outcome {
            events.emit(Event::Warning {
                message: format!(
                    "could not drop {} after the failure ({e}); the next run drops it",
                    loading.join(", ")
                ),
            });
        }
    }
}
