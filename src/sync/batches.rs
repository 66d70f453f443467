//! `sync --in-batches`: one large table upserted in primary-key ranges, one short transaction
//! per range, resumable.
//!
//! For a table too large to replace in one transaction on a busy target (pgsync's
//! `--in-batches`, for backfills). Each batch is the next `--batch-size` rows of the source in
//! primary-key order: the batch's upper key is read first (`ORDER BY key OFFSET size - 1 LIMIT
//! 1`, an index scan), then the rows `key > last AND key <= upper` are copied into a temporary
//! table and upserted (`INSERT … ON CONFLICT (key) DO UPDATE`, only rows that differ), in one
//! transaction on the target that also records the batch's upper key in `pgflip.operations`
//! (kind `sync_batches`). So a batch is either wholly in, with its progress, or not at all; a
//! run killed anywhere leaves whole batches and a record of the last one, and a rerun with the
//! same table and condition continues after it. The last batch (no upper key: fewer rows than a
//! batch remain) also sets the sequences and deletes the record in its transaction.
//!
//! Unlike pgsync, which only copies keys above the target's largest (and so never revisits a
//! row), pgflip walks the whole source, so rows changed or missing below the target's largest
//! key are synced too; rows the target has and the source lacks stay (as `--overwrite`). With
//! `--sleep`, the run pauses between batches to leave the target's I/O to the application.
//! A batch that waits longer than `--lock-timeout` for a lock (a row the application holds)
//! is rolled back and retried with backoff until `--max-wait` ([`crate::lockwait::retry`]).
//!
//! Key values go into the source query as quoted literals cast to the key's type: COPY takes
//! no parameters, and the values are the source's own, read back as text.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::copy;
use crate::error::{DbResultExt, Error, Result};
use crate::events::{Event, EventSink};
use crate::ident::{quote_ident, quote_literal};

use super::{Prepared, Strategy, SyncReport, TablePlan};

/// `--in-batches` settings.
#[derive(Debug, Clone)]
pub struct Batches {
    /// Rows per batch (`--batch-size`).
    pub size: u64,
    /// Pause between batches (`--sleep`).
    pub sleep: Duration,
}

/// `pgflip.operations.kind` of an unfinished batched sync.
const KIND: crate::state::OperationKind = crate::state::OperationKind::SyncBatches;

/// Checks that the planned sync can run in batches: one table, a primary key that is the
/// same on both sides, upserted.
pub(super) fn check(plans: &[TablePlan]) -> Result<()> {
    if plans.len() != 1 {
        return Err(Error::InvalidInput(format!(
            "--in-batches syncs one table at a time; {} were selected ({}): name one",
            plans.len(),
            plans
                .iter()
                .map(|p| p.display.clone())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let p = &plans[0];
    if p.target.primary_key.is_empty() {
        return Err(Error::InvalidInput(format!(
            "--in-batches walks the primary key: {} has none on the target",
            p.display
        )));
    }
    if p.source.primary_key != p.target.primary_key {
        return Err(Error::InvalidInput(format!(
            "--in-batches walks the primary key: {} has ({}) on the source and ({}) on the target",
            p.display,
            p.source.primary_key.join(", "),
            p.target.primary_key.join(", ")
        )));
    }
    for k in &p.target.primary_key {
        if !p.columns.iter().any(|(c, _, _)| c == k) {
            return Err(Error::InvalidInput(format!(
                "--in-batches: key column {} of {} is not copied from the source",
                quote_ident(k),
                p.display
            )));
        }
    }
    Ok(())
}

/// What the plan shows for a batched sync (no SQL runs from it: each batch's bounds are only
/// known when it starts).
pub(super) fn describe(p: &TablePlan, b: &Batches) -> String {
    format!(
        "copy {} in batches of {} rows by primary key ({}), each upserted in its own \
         transaction that records its last key in pgflip.operations{}; a rerun after an \
         interruption continues after the last batch recorded",
        p.display,
        b.size,
        p.target
            .primary_key
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", "),
        if b.sleep.is_zero() {
            String::new()
        } else {
            format!(", sleeping {:?} between batches", b.sleep)
        }
    )
}

/// The key of a row as text, one value per key column.
type Key = Vec<String>;

/// What an unfinished run recorded, if it synced the same table with the same condition.
async fn recorded(tgt: &Client, p: &TablePlan) -> Result<Option<Key>> {
    let row = tgt
        .query_opt(
            "SELECT details FROM pgflip.operations \
             WHERE kind = $1 AND live_schema = $2 AND live_name = $3",
            &[&KIND.as_str(), &p.target.schema, &p.target.name],
        )
        .await
        .ctx("reading the progress of an earlier batched sync")?;
    let Some(row) = row else { return Ok(None) };
    let details: serde_json::Value = row.get(0);
    let same_filter = details.get("filter").and_then(|f| f.as_str()) == p.filter.as_deref();
    let same_key = details.get("key_columns") == Some(&serde_json::json!(p.target.primary_key));
    if !same_filter || !same_key {
        return Ok(None);
    }
    Ok(details
        .get("last_key")
        .and_then(|k| serde_json::from_value(k.clone()).ok()))
}

/// `ROW(k1, k2)` (ROW even for one column, to compare with a ROW literal).
fn key_row(p: &TablePlan) -> String {
    let cols: Vec<String> = p
        .target
        .primary_key
        .iter()
        .map(|k| quote_ident(k))
        .collect();
    format!("ROW({})", cols.join(", "))
}

/// `('v1'::type1, 'v2'::type2)`, typed as the source's key columns.
fn key_literal(p: &TablePlan, key: &Key) -> String {
    let vals: Vec<String> = p
        .target
        .primary_key
        .iter()
        .zip(key)
        .map(|(k, v)| {
            let ty = p
                .source
                .column(k)
                .map(|c| c.type_name.clone())
                .unwrap_or_else(|| "text".into());
            format!("{}::{ty}", quote_literal(v))
        })
        .collect();
    format!("ROW({})", vals.join(", "))
}

/// The source's condition for rows after `after` (and up to `upto`), with the user's filter.
fn range_condition(p: &TablePlan, after: Option<&Key>, upto: Option<&Key>) -> Vec<String> {
    let mut conds = Vec::new();
    if let Some(f) = &p.filter {
        conds.push(format!("({f})"));
    }
    if let Some(a) = after {
        conds.push(format!("{} > {}", key_row(p), key_literal(p, a)));
    }
    if let Some(u) = upto {
        conds.push(format!("{} <= {}", key_row(p), key_literal(p, u)));
    }
    conds
}

/// The key of the `size`-th source row after `after`: the batch's upper bound, or `None` when
/// fewer rows remain (the last batch takes them all).
async fn upper_bound(
    src: &Client,
    p: &TablePlan,
    after: Option<&Key>,
    size: u64,
) -> Result<Option<Key>> {
    let texts: Vec<String> = p
        .target
        .primary_key
        .iter()
        .enumerate()
        // Named apart from the key columns: `ORDER BY id` would otherwise sort the text.
        .map(|(i, k)| format!("{}::text AS pgflip_key_{i}", quote_ident(k)))
        .collect();
    let conds = range_condition(p, after, None);
    let sql = format!(
        "SELECT {} FROM {}{} ORDER BY {} OFFSET {} LIMIT 1",
        texts.join(", "),
        super::only(&p.source.kind, &p.source.qualified()),
        if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        },
        p.target
            .primary_key
            .iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", "),
        size.saturating_sub(1)
    );
    let row = src.query_opt(&sql, &[]).await.ctx(format!(
        "finding the next batch of {} on the source",
        p.display
    ))?;
    Ok(row.map(|r| (0..p.target.primary_key.len()).map(|i| r.get(i)).collect()))
}

/// The source's SELECT of one batch (the plan's columns and data rules).
fn batch_select(p: &TablePlan, after: Option<&Key>, upto: Option<&Key>) -> String {
    let mut s = p.source_select(None);
    let conds = range_condition(p, after, upto);
    // `source_select` adds the user's filter itself; only the key bounds are added here.
    let bounds: Vec<&String> = conds.iter().skip(usize::from(p.filter.is_some())).collect();
    if !bounds.is_empty() {
        let joined = bounds
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" AND ");
        if p.filter.is_some() {
            s.push_str(&format!(" AND {joined}"));
        } else {
            s.push_str(&format!(" WHERE {joined}"));
        }
    }
    s
}

/// The upsert of the batch's rows from the temporary table (only rows that differ are updated).
fn upsert_sql(p: &TablePlan, tmp: &str) -> String {
    let cols = p.column_list();
    let (pk, non_key) = p.key_and_other_columns();
    let conflict = super::on_conflict_update(&non_key);
    format!(
        "INSERT INTO {} AS t ({cols}){} SELECT {cols} FROM {tmp} ON CONFLICT ({}) {conflict}",
        p.into,
        p.overriding(),
        pk.join(", ")
    )
}

/// Records the batch ending at `last` (or, for the last batch, forgets the run), as SQL sent in
/// the batch's own transaction.
fn progress_sql(p: &TablePlan, last: Option<&Key>, batches: u64, rows: u64) -> String {
    let live = (p.target.schema.as_str(), p.target.name.as_str());
    match last {
        Some(k) => crate::state::record_operation_sql(
            KIND,
            crate::state::Phase::Copying,
            live,
            live,
            &serde_json::json!({
                "last_key": k,
                "key_columns": p.target.primary_key,
                "filter": p.filter,
                "batches": batches,
                "rows": rows,
            }),
        ),
        None => format!(
            "DELETE FROM pgflip.operations WHERE kind = {} AND live_schema = {} AND live_name = {}",
            quote_literal(KIND.as_str()),
            quote_literal(live.0),
            quote_literal(live.1)
        ),
    }
}

/// Runs a prepared batched sync.
pub(super) async fn execute(
    prepared: &Prepared,
    b: &Batches,
    events: &dyn EventSink,
) -> Result<SyncReport> {
    let p = &prepared.tables[0];
    debug_assert!(matches!(p.strategy, Strategy::Merge { .. }));
    let t0 = Instant::now();
    let src = prepared.source.connect().await?;
    let tgt = prepared.target.connect().await?;
    crate::state::ensure(&tgt).await?;
    let mut after = recorded(&tgt, p).await?;
    if let Some(k) = &after {
        events.emit(Event::Info {
            message: format!(
                "{}: resuming after key ({}), where an interrupted run stopped",
                p.display,
                k.join(", ")
            ),
        });
    }
    let progress = copy::Progress::new(p.display.clone());
    let names = [p.into.as_str()];
    let tmp = quote_ident("pgflip_batch");
    let cols = p.column_list();
    let (mut rows, mut bytes, mut n) = (0u64, 0u64, 0u64);
    loop {
        let upto = upper_bound(&src, p, after.as_ref(), b.size).await?;
        n += 1;
        let copy_out =
            copy::copy_out_sql(&batch_select(p, after.as_ref(), upto.as_ref()), p.format);
        let copy_in = copy::copy_in_sql(&tmp, &cols, p.format);
        let what = format!("{}, batch {n}", p.display);
        let attempt = || async {
            tgt.batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = {}; \
                 CREATE TEMP TABLE {tmp} ON COMMIT DROP AS SELECT {cols} FROM {} WITH NO DATA",
                prepared.opts.lock_timeout.as_millis().max(1),
                p.into
            ))
            .await
            .ctx(format!("starting {what} on the target"))?;
            let s = copy::stream(&src, &copy_out, &tgt, &copy_in, &what, &progress, events).await?;
            let mut sql = upsert_sql(p, &tmp);
            if upto.is_none() {
                for (seq, v, called) in &p.sequences {
                    sql.push_str(&format!("; SELECT setval({seq}, {v}, {called})"));
                }
            }
            sql.push_str("; ");
            sql.push_str(&progress_sql(p, upto.as_ref(), n, rows + s.rows));
            tgt.batch_execute(&sql)
                .await
                .ctx(format!("upserting {what}"))?;
            crate::failpoint::hit("sync.before_batch_commit").await?;
            tgt.batch_execute("COMMIT")
                .await
                .ctx(format!("committing {what}"))?;
            Ok::<_, Error>(s)
        };
        // A batch whose locks (the table's, or a row the application holds) are not granted
        // within lock_timeout is rolled back and tried again with backoff, until --max-wait;
        // nothing of it was committed, so the retry copies it whole again.
        let s = crate::lockwait::retry(
            prepared.opts.max_wait,
            events,
            || async {
                let r = attempt().await;
                if r.is_err() {
                    let _ = tgt.batch_execute("ROLLBACK").await;
                }
                r
            },
            || crate::lockwait::blockers_by_name(&tgt, &names),
        )
        .await?;
        rows += s.rows;
        bytes += s.bytes;
        events.emit(Event::Info {
            message: format!(
                "{}: batch {n} done ({} rows{}), {rows} rows so far",
                p.display,
                s.rows,
                match &upto {
                    Some(k) => format!(", up to key ({})", k.join(", ")),
                    None => ", the last".into(),
                }
            ),
        });
        if upto.is_none() {
            break;
        }
        after = upto;
        crate::failpoint::hit("sync.between_batches").await?;
        if !b.sleep.is_zero() {
            tokio::time::sleep(b.sleep).await;
        }
    }
    let elapsed = t0.elapsed();
    events.emit(Event::TableDone {
        table: p.display.clone(),
        rows,
        bytes,
        elapsed,
    });
    let mut report = prepared.report_for(p, rows, bytes, elapsed);
    report.strategy = "batches";
    Ok(SyncReport {
        tables: vec![report],
        elapsed: prepared.started.elapsed(),
        dry_run: false,
        failed: Vec::new(),
        plan: prepared.plan.clone(),
    })
}
