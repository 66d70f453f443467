//! `pgflip sync`: copy tables from a source database into a target, in place or into
//! `<table>_staging`, with row-level diffs.
//!
//! The job runs in two halves so that the binary can ask for confirmation in between:
//! [`prepare`] connects, opens one exported snapshot on the source, resolves the tables, reads
//! their structure on both sides, checks everything that can be checked before writing (unknown
//! tables, missing keys, no shared columns, privileges, foreign keys), computes cross-server
//! diffs, and builds the [`Plan`]; [`Prepared::execute`] then runs it. `--dry-run` stops after
//! the first half and prints the same plan, so it can never differ from what would run.
//!
//! How rows are replaced (the default mode), and why:
//!
//! - Tables are grouped into *units*: the synced tables connected by foreign keys between them.
//!   Each unit is one transaction on one target connection, so a failure or an interruption
//!   leaves the old rows and no reader ever sees a half-filled table. Units run in parallel
//!   (`--jobs`), each reading through its own source connection that imports the one exported
//!   snapshot, so all tables are consistent with each other.
//! - A unit that no other table references is emptied with one `TRUNCATE ONLY` of all its tables
//!   (no CASCADE, ever) and reloaded with COPY, parents first. TRUNCATE inside the transaction
//!   gives a fresh file (no dead rows, no bloat, and WAL can be skipped), at the price of an
//!   ACCESS EXCLUSIVE lock held until COMMIT: readers wait and then see the new rows. The lock
//!   is taken under a short `lock_timeout` and the unit retried with backoff, so pgflip never
//!   queues in front of the application behind a long query. Use `--staging-table` when readers
//!   must never wait: the live table is then not touched at all.
//! - Small tables (at most [`DELETE_AT_MOST`] on both sides) are emptied with DELETE instead,
//!   after `LOCK … IN SHARE ROW EXCLUSIVE MODE`: readers do not wait and see the old rows until
//!   COMMIT, the application's writers wait until then. TRUNCATE's file work was most of the
//!   time of a sync of many small tables. Such units also share transactions (each behind a
//!   savepoint, so one failing unit rolls back alone): see `batch_units` and
//!   `Prepared::run_batch`. A shared transaction is first sent in one message per side, its
//!   rows as `INSERT … VALUES`, and only if that fails the savepoint-and-COPY way: see
//!   `inline`.
//! - A table referenced from a table outside the sync cannot be truncated. Its rows are merged
//!   instead: the source rows are copied into a temporary table, pgflip checks that no
//!   referencing row would lose its parent (failing, naming the referencing table, if one
//!   would), upserts changed rows, and deletes the rows the source lacks, children first.
//!   `--defer-constraints` makes the foreign keys touching the synced tables deferrable for the
//!   transaction only (restored before COMMIT, after the checks ran), so plain DELETE + COPY can
//!   be used; `--disable-integrity` sets `session_replication_role = replica` (superuser).
//! - Large tables are not split into ranges in this mode: one transaction is one connection,
//!   so ranges could only be parallel on the source side, and the target side (parsing,
//!   inserting, rebuilding indexes) is where the time goes. Parallelism comes from running
//!   units side by side.
//!
//! `--staging-table` never touches the live table. Rows go into `<staging>_pgflip_loading`,
//! created `LIKE` the live table without its indexes (so COPY does not maintain them row by
//! row); the indexes are then built on parallel connections, primary key / unique / exclusion
//! constraints attached (`USING INDEX`), serial columns given sequences of their own (LIKE would
//! leave them on the live sequence), and the table renamed to the staging name in one last short
//! transaction (retried alone on a lock timeout). So a staging table is either complete or
//! absent. Autovacuum is off on the loading table until that rename: it would otherwise start on
//! the filling table and hold locks the index builds and the rename wait behind. A failure after
//! the loading table was created drops it again; a killed run leaves only a loading table, which
//! the next run drops. (The previous staging table goes when the loading table is created:
//! after a failure in a split copy or an index build there is none.)
//!
//! Large tables are split in this mode (`split_larger_than`, default 256 MB of heap on the
//! source): the loading table is committed first, and the table is copied in ranges of heap
//! blocks (`ctid >= '(a,0)' AND ctid < '(b,0)'`, a TID Range Scan since PostgreSQL 14: any
//! table, no key needed), about the threshold each and at least one per job, each range a COPY
//! on its own pair of connections. Every range imports the one exported snapshot, so together
//! they are exactly the table as of the snapshot: a row committed later is in no range, and the
//! last range is open-ended, so blocks beyond the size read at planning are not lost. Filters
//! and data rules are part of every range's query. Every connection pair at work — a unit's
//! transaction, a range, an index build — holds one of `--jobs` slots, so ranges share the
//! parallelism with the other tables. A source older than 14 copies such tables whole (its
//! ctid ranges would each scan the whole table), and the plan says so.

mod batches;
pub mod config;
pub mod drift;
mod execute;
mod in_place;
mod inline;
mod plan;
mod preview;
pub mod rules;
pub mod schema;
mod selection;
mod staging;
pub mod swap;
pub mod tables;
mod triggers;

pub use plan::prepare;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::conn::{Endpoint, Pool, Pooled};
use crate::copy::{self, Format};
use crate::error::{DbResultExt, Error, Result};
use crate::events::EventSink;
use crate::ident::{quote_ident, quote_literal, QuotedName};
use crate::plan::{Plan, Step};
use crate::rowdiff::DiffSummary;

pub use batches::Batches;
pub use preview::plan_swap_after_load;
pub use rules::Rules;
pub use tables::SchemaScope;

/// How target rows are changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The target's rows are replaced by the source's.
    Replace,
    /// Upsert by primary key; target rows the source lacks stay.
    Overwrite,
    /// Insert only rows whose key the target lacks.
    Preserve,
}

/// One requested table or pattern, with the where clause its group gave it.
#[derive(Debug, Clone)]
pub struct Request {
    pub pattern: String,
    pub filter: Option<String>,
    /// Named exactly or through a group: `exclude` does not apply (it applies to patterns and
    /// to the every-table default).
    pub explicit: bool,
}

/// Everything a sync needs besides the two endpoints.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub requests: Vec<Request>,
    pub exclude: Vec<String>,
    pub scope: SchemaScope,
    pub mode: Mode,
    /// `--where`: applies to every table (a group's clause takes precedence).
    pub filter: Option<String>,
    pub defer_constraints: bool,
    pub disable_integrity: bool,
    /// The target's user triggers off while loading, restored in the same transaction.
    pub disable_user_triggers: bool,
    pub sequences: bool,
    pub rules: Rules,
    pub staging: bool,
    pub staging_name: Option<String>,
    pub show_diff: bool,
    pub diff_sample: usize,
    pub jobs: usize,
    pub lock_timeout: Duration,
    pub max_wait: Duration,
    /// Tables replaced by TRUNCATE with more (estimated) rows than this get their plain
    /// secondary indexes rebuilt after the copy instead of maintained row by row.
    pub rebuild_indexes_above: f64,
    /// `--staging-table`: tables whose heap on the source is larger than this many bytes are
    /// copied in block ranges on parallel connections; 0: never split.
    pub split_larger_than: u64,
    /// Stop at the first failing unit (the others roll back). Without it every unit runs and
    /// the report lists the failures, as pgsync does.
    pub fail_fast: bool,
    /// `--in-batches`: one table upserted in primary-key ranges, one transaction each,
    /// resumable (see [`batches`]).
    pub in_batches: Option<Batches>,
}

/// Default of [`SyncOptions::split_larger_than`].
pub const DEFAULT_SPLIT_LARGER_THAN: u64 = 256 * 1024 * 1024;

/// At most this many ranges per table, however small the threshold.
const MAX_RANGES: u64 = 1024;

/// Tables whose heap is at most this on both sides are emptied with DELETE instead of TRUNCATE
/// (under a SHARE ROW EXCLUSIVE lock: see `small_tables`). TRUNCATE makes a new file for the
/// table and each index, and unlinks the old ones at commit: about 7 ms a table on the
/// benchmark machine whatever its size, where DELETE of 10 rows took 0.6 ms and of 1 000 rows
/// (10 pages) 4.6 ms; at 10 000 rows (94 pages) TRUNCATE was cheaper again (27 against 35 ms).
/// 16 pages stays well below that crossing.
pub const DELETE_AT_MOST: u64 = 16 * 8192;

/// Small units share transactions: at most this many tables in one, so that the writers the
/// shared transaction makes wait (its SHARE ROW EXCLUSIVE locks) wait for a short time only,
/// and below PostgreSQL's 64 cached subtransactions a backend (each unit is a savepoint that
/// writes): beyond them every other session's snapshots must look subtransactions up in
/// pg_subtrans until the transaction ends.
const BATCH_TABLES: usize = 60;

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            requests: Vec::new(),
            exclude: Vec::new(),
            scope: SchemaScope::Only(vec!["public".into()]),
            mode: Mode::Replace,
            filter: None,
            defer_constraints: false,
            disable_integrity: false,
            disable_user_triggers: false,
            sequences: true,
            rules: Rules::default(),
            staging: false,
            staging_name: None,
            show_diff: false,
            diff_sample: 0,
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            lock_timeout: Duration::from_millis(500),
            max_wait: Duration::from_secs(30),
            rebuild_indexes_above: 100_000.0,
            split_larger_than: DEFAULT_SPLIT_LARGER_THAN,
            fail_fast: false,
            in_batches: None,
        }
    }
}

/// What happened to one table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableReport {
    /// `schema.table` as the user reads it.
    pub table: String,
    /// The relation rows went into (the staging table with `--staging-table`).
    pub into: String,
    pub rows: u64,
    pub bytes: u64,
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    pub format: Format,
    /// How rows were replaced: truncate, delete, merge, upsert, insert_missing, staging.
    pub strategy: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<DiffSummary>,
    pub warnings: Vec<String>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// The outcome of a sync (or of a dry run: nothing executed, `plan` filled).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncReport {
    pub tables: Vec<TableReport>,
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    pub dry_run: bool,
    /// Units that failed and were rolled back while the others went on (never with
    /// `fail_fast`, which returns the first failure as the error).
    pub failed: Vec<UnitFailure>,
    #[serde(skip)]
    pub plan: Plan,
}

/// One unit (a table, or tables tied by foreign keys, loaded in one transaction) that failed:
/// none of its rows were written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnitFailure {
    /// `schema.table` of each table of the unit.
    pub tables: Vec<String>,
    pub error: String,
    /// The error itself, for the caller's exit code.
    #[serde(skip)]
    pub cause: Arc<Error>,
}

/// What became of one unit (by index): its tables' reports, or the error that rolled it back
/// (shared by every unit of a transaction that failed as a whole).
type UnitOutcome = (usize, std::result::Result<Vec<TableReport>, Arc<Error>>);

/// Rows and bytes moved per table (index into `Prepared::tables`).
type Stats = BTreeMap<usize, (u64, u64)>;

fn add(stats: &mut Stats, table: usize, c: copy::CopyStats) {
    let e = stats.entry(table).or_default();
    e.0 += c.rows;
    e.1 += c.bytes;
}

/// How one table's rows get into the target.
#[derive(Debug, Clone, PartialEq)]
enum Strategy {
    /// Emptied by the unit's TRUNCATE, then COPY.
    Truncate,
    /// DELETE FROM, then COPY.
    DeleteAll,
    /// COPY into a temporary table, upsert, then delete what `delete` says.
    Merge { delete: MergeDelete, update: bool },
    /// A fresh staging table.
    Staging,
}

#[derive(Debug, Clone, PartialEq)]
enum MergeDelete {
    None,
    Missing,
    MissingWhere(String),
}

impl Strategy {
    fn name(&self) -> &'static str {
        match self {
            Strategy::Truncate => "truncate",
            Strategy::DeleteAll => "delete",
            Strategy::Merge {
                delete: MergeDelete::None,
                update: true,
            } => "upsert",
            Strategy::Merge {
                delete: MergeDelete::None,
                update: false,
            } => "insert_missing",
            Strategy::Merge { .. } => "merge",
            Strategy::Staging => "staging",
        }
    }
}

/// Everything decided about one table before anything is written.
#[derive(Debug, Clone)]
struct TablePlan {
    display: String,
    source: tables::Table,
    target: tables::Table,
    /// Where rows end up: the live table or the staging table.
    into: QuotedName,
    /// Where COPY writes: `into`, or the loading table that becomes the staging table.
    load_into: QuotedName,
    staging: Option<String>,
    /// Shared columns, in target order: (name, source expression, compare as text).
    columns: Vec<(String, String, bool)>,
    format: Format,
    filter: Option<String>,
    strategy: Strategy,
    /// (target sequence expression, last_value, is_called).
    sequences: Vec<(String, i64, bool)>,
    /// Foreign keys from tables outside the sync that reference this one.
    external_refs: Vec<tables::ForeignKey>,
    warnings: Vec<String>,
    diff: Option<DiffSummary>,
    /// Block ranges `[from, to)` of the source heap, each copied on its own connections (a
    /// missing bound is open); empty: one copy of the whole table.
    ranges: Vec<BlockRange>,
    /// Why a table above the split threshold is copied whole (said in the plan).
    unsplit: Option<String>,
    /// A staging table pgflip created earlier is replaced (its rows are dropped).
    replaces_staging: bool,
    /// Names in use in the target schema that the staging table's indexes and sequences must
    /// not take.
    taken_names: BTreeSet<String>,
    /// Small enough on both sides to be emptied with DELETE (see [`DELETE_AT_MOST`]), and
    /// nothing on the target fires on DELETE that would not have fired on TRUNCATE.
    small: bool,
    /// Indexes of primary key and unique constraints that nothing depends on (no foreign key,
    /// view, comment), so that a large truncated table can have them dropped for the load and
    /// added again after it, like its plain indexes (see `droppable_constraints`).
    droppable: BTreeSet<String>,
    /// A small table whose rows may go to the target as `INSERT … VALUES` with literals instead
    /// of a COPY, when its transaction is shared (see [`inline`]): no INSERT rule or row level
    /// security on the target (COPY ignores the first and refuses the second), and text output
    /// on the source that reads back as the same values (see `inline::source_reads_back`).
    inline: bool,
}

/// A range of heap blocks: `ctid >= '(from,0)' AND ctid < '(to,0)'`, read by a TID Range Scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockRange {
    from: Option<u64>,
    to: Option<u64>,
}

impl BlockRange {
    fn condition(&self) -> String {
        let mut c = Vec::new();
        if let Some(f) = self.from {
            c.push(format!("ctid >= '({f},0)'::tid"));
        }
        if let Some(t) = self.to {
            c.push(format!("ctid < '({t},0)'::tid"));
        }
        c.join(" AND ")
    }

    fn describe(&self) -> String {
        match (self.from, self.to) {
            (None, Some(t)) => format!("blocks 0 to {t}"),
            (Some(f), Some(t)) => format!("blocks {f} to {t}"),
            (Some(f), None) => format!("blocks {f} to the end"),
            (None, None) => "every block".into(),
        }
    }
}

/// `pieces` ranges over a heap of `blocks` blocks. The first starts at the beginning and the
/// last has no end, so rows in blocks the size estimate did not count are still copied.
fn block_ranges(blocks: u64, pieces: u64) -> Vec<BlockRange> {
    let pieces = pieces.min(blocks).max(1);
    if pieces == 1 {
        return Vec::new();
    }
    let bound = |i: u64| blocks * i / pieces;
    (0..pieces)
        .map(|i| BlockRange {
            from: (i > 0).then(|| bound(i)),
            to: (i + 1 < pieces).then(|| bound(i + 1)),
        })
        .collect()
}

impl TablePlan {
    /// Large enough that, when TRUNCATE empties it, its indexes are dropped for the load and
    /// built again after it (sorted builds instead of millions of random inserts).
    fn large(&self, opts: &SyncOptions) -> bool {
        self.target.kind == "r"
            && self.source.estimated_rows.max(self.target.estimated_rows)
                >= opts.rebuild_indexes_above
    }

    /// The primary key's columns, quoted, and the other columns: what an upsert matches on and
    /// what it sets.
    fn key_and_other_columns(&self) -> (Vec<String>, Vec<&(String, String, bool)>) {
        let key = self
            .target
            .primary_key
            .iter()
            .map(|k| quote_ident(k))
            .collect();
        let others = self
            .columns
            .iter()
            .filter(|(c, _, _)| !self.target.primary_key.contains(c))
            .collect();
        (key, others)
    }

    fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(c, _, _)| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn source_select(&self, range: Option<&BlockRange>) -> String {
        let exprs: Vec<String> = self
            .columns
            .iter()
            .map(|(c, e, _)| {
                if e == &quote_ident(c) {
                    e.clone()
                } else {
                    format!("{e} AS {}", quote_ident(c))
                }
            })
            .collect();
        let mut s = format!(
            "SELECT {} FROM {}",
            exprs.join(", "),
            only(&self.source.kind, &self.source.qualified())
        );
        let mut conds = Vec::new();
        if let Some(f) = &self.filter {
            conds.push(format!("({f})"));
        }
        if let Some(r) = range {
            conds.push(r.condition());
        }
        if !conds.is_empty() {
            s.push_str(&format!(" WHERE {}", conds.join(" AND ")));
        }
        s
    }

    fn overriding(&self) -> &'static str {
        let always = self
            .columns
            .iter()
            .any(|(c, _, _)| self.target.column(c).is_some_and(|col| col.identity == "a"));
        if always {
            " OVERRIDING SYSTEM VALUE"
        } else {
            ""
        }
    }
}

/// One target transaction.
#[derive(Debug, Clone)]
struct Unit {
    /// Indexes into the table plans, parents first.
    tables: Vec<usize>,
    actions: Vec<Action>,
    /// Copies run after the unit's transaction commits (which created the loading tables),
    /// in parallel, each on its own connections: the block ranges of large tables.
    ranges: Vec<Action>,
    /// Statements run after the copies, in parallel on their own connections (index builds of
    /// staging tables).
    after: Vec<Step>,
    /// Statements of one last transaction (constraints, the rename of a complete staging table).
    finish: Vec<Step>,
    /// Small tables only: the unit may run in a transaction shared with other such units, each
    /// behind a savepoint of its own.
    shares_transaction: bool,
}

#[derive(Debug, Clone)]
enum Action {
    Sql(Step),
    Copy {
        table: usize,
        /// Names the copy in errors: the table, and its range.
        what: String,
        step: Step,
        copy_out: String,
        copy_in: String,
    },
    /// A query returning a count that must be zero; the message names what would break.
    Check {
        step: Step,
        message: String,
    },
}

impl Action {
    fn step(&self) -> &Step {
        match self {
            Action::Sql(s) | Action::Copy { step: s, .. } | Action::Check { step: s, .. } => s,
        }
    }
}

/// Connected, resolved, checked and planned; nothing written yet.
pub struct Prepared {
    source: Endpoint,
    target: Endpoint,
    opts: SyncOptions,
    /// Holds the exported snapshot open while readers may still import it (`readers`).
    _coordinator: Client,
    tables: Vec<TablePlan>,
    units: Vec<Unit>,
    /// The transactions: indexes into `units`, one each, or several small ones together.
    batches: Vec<Vec<usize>>,
    plan: Plan,
    started: Instant,
    /// Connections kept between the steps of the run: source readers inside the snapshot, and
    /// target connections. Opening two connections and importing the snapshot per unit was
    /// most of the time of a sync of many small tables, and a staging load's four or so steps a
    /// table, each closing its connection, left backends exiting beside the next step's new
    /// ones (more pgflip backends than `--jobs` on a busy server). A connection is taken inside
    /// a slot, so neither pool ever holds more than `jobs`; one whose step failed is dropped,
    /// its transaction rolled back with it.
    readers: Pool,
    targets: Pool,
}

/// The run's pools: readers import `snapshot` once, when they connect.
fn pools(source: &Endpoint, target: &Endpoint, snapshot: &str) -> (Pool, Pool) {
    (
        Pool::with_setup(
            source.clone(),
            snapshot_reader_sql(snapshot),
            "importing the source snapshot",
        ),
        Pool::new(target.clone()),
    )
}

fn snapshot_reader_sql(snapshot: &str) -> String {
    format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        quote_literal(snapshot)
    )
}

/// Hosts pgflip treats as "this machine" (no confirmation needed).
pub fn is_local(endpoint: &Endpoint) -> bool {
    let hosts = endpoint.config.get_hosts();
    if hosts.is_empty() {
        return true;
    }
    hosts.iter().all(|h| match h {
        tokio_postgres::config::Host::Unix(_) => true,
        tokio_postgres::config::Host::Tcp(h) => {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h == "localhost" || h.starts_with("127.") || h == "::1" || h.starts_with('/')
        }
    })
}

async fn open_snapshot_reader(source: &Endpoint, snapshot: &str) -> Result<Client> {
    let c = source.connect().await?;
    c.batch_execute(&snapshot_reader_sql(snapshot))
        .await
        .ctx("importing the source snapshot")?;
    Ok(c)
}

const SAVEPOINT: &str = "SAVEPOINT pgflip_unit";
/// Around the parsing of a shared transaction's copies on the source, whose transaction holds
/// the snapshot: a statement that does not parse (a data rule's SQL) must not abort it.
const PREPARING: &str = "SAVEPOINT pgflip_prepare";
const RELEASE: &str = "RELEASE SAVEPOINT pgflip_unit";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT pgflip_unit";

fn unit_names(plans: &[TablePlan], u: &Unit) -> String {
    u.tables
        .iter()
        .map(|&i| plans[i].display.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ONLY rel` for a plain table (its inheritance children are tables of their own); a
/// partitioned table is read and emptied through its partitions.
fn only(kind: &str, rel: &str) -> String {
    if kind == "p" {
        rel.to_string()
    } else {
        format!("ONLY {rel}")
    }
}

fn qualified_constraint(fk: &tables::ForeignKey) -> String {
    // SET CONSTRAINTS takes schema-qualified constraint names; the schema is the table's.
    let schema = fk.from.rsplit_once('.').map(|(s, _)| s).unwrap_or("public");
    format!("{schema}.{}", quote_ident(&fk.name))
}

impl Prepared {
    /// The plan that [`Prepared::execute`] would run.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Whether executing changes live tables (not only staging tables).
    pub fn replaces_live_data(&self) -> bool {
        !self.opts.staging
    }

    pub fn target(&self) -> &Endpoint {
        &self.target
    }

    /// The report of a dry run: the tables, their diffs, and the plan; nothing executed.
    pub fn dry_run_report(&self) -> SyncReport {
        SyncReport {
            tables: self
                .tables
                .iter()
                .map(|p| self.report_for(p, 0, 0, Duration::ZERO))
                .collect(),
            elapsed: self.started.elapsed(),
            dry_run: true,
            failed: Vec::new(),
            plan: self.plan.clone(),
        }
    }

    fn report_for(&self, p: &TablePlan, rows: u64, bytes: u64, elapsed: Duration) -> TableReport {
        TableReport {
            table: p.display.clone(),
            into: p.into.to_string(),
            rows,
            bytes,
            elapsed,
            format: p.format,
            strategy: p.strategy.name(),
            diff: p.diff.clone(),
            warnings: p.warnings.clone(),
        }
    }
}

/// Prepares and executes in one call (no confirmation step); `dry_run` stops after planning.
pub async fn run(
    source: &Endpoint,
    target: &Endpoint,
    opts: SyncOptions,
    dry_run: bool,
    events: &dyn EventSink,
) -> Result<SyncReport> {
    let prepared = prepare(source, target, opts, events).await?;
    if dry_run {
        return Ok(prepared.dry_run_report());
    }
    prepared.execute(events).await
}

/// The `ON CONFLICT` action of an upsert: update the non-key columns of a row whose values
/// differ (compared as text where the type has no equality), or nothing when there are none.
pub(crate) fn on_conflict_update(non_key: &[&(String, String, bool)]) -> String {
    if non_key.is_empty() {
        return "DO NOTHING".to_string();
    }
    let sets: Vec<String> = non_key
        .iter()
        .map(|(c, _, _)| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
        .collect();
    let cmp = |alias: &str| {
        non_key
            .iter()
            .map(|(c, _, t)| {
                let q = format!("{alias}.{}", quote_ident(c));
                if *t {
                    format!("{q}::text")
                } else {
                    q
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "DO UPDATE SET {} WHERE ROW({}) IS DISTINCT FROM ROW({})",
        sets.join(", "),
        cmp("t"),
        cmp("EXCLUDED")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ranges_cover_every_block_once_and_leave_the_end_open() {
        let r = block_ranges(1000, 3);
        assert_eq!(
            r,
            vec![
                BlockRange {
                    from: None,
                    to: Some(333)
                },
                BlockRange {
                    from: Some(333),
                    to: Some(666)
                },
                BlockRange {
                    from: Some(666),
                    to: None
                },
            ]
        );
        assert_eq!(r[0].condition(), "ctid < '(333,0)'::tid");
        assert_eq!(
            r[1].condition(),
            "ctid >= '(333,0)'::tid AND ctid < '(666,0)'::tid"
        );
        assert_eq!(r[2].condition(), "ctid >= '(666,0)'::tid");
        // Never more ranges than blocks; one range is no split at all.
        assert_eq!(block_ranges(2, 8).len(), 2);
        assert!(block_ranges(1, 8).is_empty());
        assert!(block_ranges(0, 8).is_empty());
    }
}
