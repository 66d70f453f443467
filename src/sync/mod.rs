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
//!   `Prepared::run_batch`.
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
mod preview;
pub mod rules;
pub mod schema;
mod selection;
mod staging;
pub mod tables;
mod triggers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;
use tokio_postgres::{Client, Statement};

use crate::conn::Endpoint;
use crate::copy::{self, Format};
use crate::error::{DbResultExt, Error, Result};
use crate::events::{Event, EventSink};
use crate::ident::QuotedName;
use crate::ident::{derived_name, qualified, quote_ident, quote_literal, staging_name};
use crate::plan::{Hazard, LockMode, Plan, Step};
use crate::rowdiff::{self, DiffSummary, RowSource};

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
    /// Where rows end up: the live table or the staging table (qualified).
    into: String,
    /// Where COPY writes: `into`, or the loading table that becomes the staging table.
    load_into: String,
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
    /// Holds the exported snapshot open until the copies have imported it.
    _coordinator: Client,
    snapshot: String,
    tables: Vec<TablePlan>,
    units: Vec<Unit>,
    /// The transactions: indexes into `units`, one each, or several small ones together.
    batches: Vec<Vec<usize>>,
    plan: Plan,
    started: Instant,
    /// In-place units reuse connection pairs (source reader inside the snapshot, target):
    /// opening two connections and importing the snapshot per unit was most of the time of a
    /// sync of many small tables. A pair is taken inside a slot, so there are never more pairs
    /// than `jobs`; one whose unit failed is dropped (its transaction rolls back with it).
    idle: std::sync::Mutex<Vec<(Client, Client)>>,
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
    c.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        quote_literal(snapshot)
    ))
    .await
    .ctx("importing the source snapshot")?;
    Ok(c)
}

/// Connects, resolves the tables and checks everything; builds the plan. Writes nothing.
pub async fn prepare(
    source: &Endpoint,
    target: &Endpoint,
    opts: SyncOptions,
    events: &dyn EventSink,
) -> Result<Prepared> {
    let started = Instant::now();
    let mut opts = opts;
    if opts.in_batches.is_some() {
        let clash: Vec<&str> = [
            (opts.staging, "--staging-table"),
            (opts.mode == Mode::Preserve, "--preserve"),
            (opts.show_diff, "--show-diff"),
            (opts.defer_constraints, "--defer-constraints"),
            (opts.disable_integrity, "--disable-integrity"),
            (opts.disable_user_triggers, "--disable-user-triggers"),
        ]
        .into_iter()
        .filter_map(|(on, f)| on.then_some(f))
        .collect();
        if !clash.is_empty() {
            return Err(Error::InvalidInput(format!(
                "--in-batches upserts one table batch by batch: {} do{} not apply",
                clash.join(", "),
                if clash.len() == 1 { "es" } else { "" }
            )));
        }
        // Batches upsert (rows the target has and the source lacks stay), whatever the mode.
        opts.mode = Mode::Overwrite;
    }
    if opts.staging && opts.mode != Mode::Replace {
        return Err(Error::InvalidInput(
            "--staging-table loads whole tables: --overwrite and --preserve do not apply".into(),
        ));
    }
    if opts.defer_constraints && opts.disable_integrity {
        return Err(Error::InvalidInput(
            "--defer-constraints and --disable-integrity exclude each other".into(),
        ));
    }
    events.emit(Event::PhaseStarted {
        phase: "loading tables".into(),
    });
    let coordinator = source.connect().await?;
    let tgt = target.connect().await?;
    crate::conn::refuse_same_database(&coordinator, &tgt).await?;
    coordinator
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .ctx("starting the source snapshot")?;
    let snapshot: String = coordinator
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .ctx("exporting the source snapshot")?
        .get(0);
    // Resolve names on the source; every table must exist on the target too.
    let (src_list, tgt_list) =
        futures_util::try_join!(tables::list_tables(&coordinator), tables::list_tables(&tgt))?;
    // Looked up once per source table: a scan of the list each time was quadratic.
    let tgt_names: HashMap<(&str, &str), u32> = tgt_list
        .iter()
        .map(|(oid, s, n)| ((s.as_str(), n.as_str()), *oid))
        .collect();
    let mut filters: BTreeMap<u32, Option<String>> = BTreeMap::new();
    selection::warn_unmatched(&opts, &src_list, events);
    if opts.requests.is_empty() {
        for (oid, s, n) in tables::resolve(&[], &opts.exclude, &opts.scope, &src_list)? {
            if tgt_names.contains_key(&(s.as_str(), n.as_str())) {
                filters.insert(oid, opts.filter.clone());
            }
        }
    } else {
        // All unknown names in one message, before resolving each with its own filter.
        let all: Vec<String> = opts.requests.iter().map(|r| r.pattern.clone()).collect();
        tables::resolve(&all, &[], &opts.scope, &src_list)?;
        for r in &opts.requests {
            let found = tables::resolve(
                std::slice::from_ref(&r.pattern),
                if r.explicit { &[] } else { &opts.exclude },
                &opts.scope,
                &src_list,
            )?;
            let exact = !r.pattern.contains('*')
                || found.len() == 1 && {
                    let (_, s, n) = &found[0];
                    r.pattern == *n || r.pattern == format!("{s}.{n}")
                };
            for (oid, s, n) in found {
                // A pattern takes the tables both sides have; a name must exist on both.
                if !exact && !tgt_names.contains_key(&(s.as_str(), n.as_str())) {
                    events.emit(Event::Warning {
                        message: format!(
                            "{} matches {:?} but is not on the target; skipped",
                            qualified(&s, &n),
                            r.pattern
                        ),
                    });
                    continue;
                }
                filters.insert(oid, r.filter.clone().or_else(|| opts.filter.clone()));
            }
        }
    }
    if filters.is_empty() {
        return Err(Error::InvalidInput(
            "no tables to sync (none matched, or every match was excluded)".into(),
        ));
    }
    let mut missing = Vec::new();
    let mut tgt_oids = Vec::new();
    for (oid, s, n) in &src_list {
        if filters.contains_key(oid) {
            match tgt_names.get(&(s.as_str(), n.as_str())) {
                Some(t) => tgt_oids.push(*t),
                None => missing.push(qualified(s, n)),
            }
        }
    }
    if !missing.is_empty() {
        return Err(Error::InvalidInput(format!(
            "table{} missing on the target: {} (pgflip sync copies rows, not schemas; create \
             {} first, e.g. with pgflip schema diff)",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            if missing.len() > 1 { "them" } else { "it" }
        )));
    }
    let src_oids: Vec<u32> = filters.keys().copied().collect();
    // Both sides at once; a sync never looks at the source's indexes.
    let (src_cat, tgt_cat) = futures_util::try_join!(
        tables::load(&coordinator, &src_oids, false),
        tables::load(&tgt, &tgt_oids, true)
    )?;
    // Where the time goes, planning and copying apart: `PGFLIP_LOG=pgflip::sync=debug`.
    tracing::debug!(elapsed = ?started.elapsed(), "sync: catalogs read");

    let rules = &opts.rules;
    let mut plans: Vec<TablePlan> = Vec::new();
    let tgt_tables: HashMap<(&str, &str), &tables::Table> = tgt_cat
        .tables
        .iter()
        .map(|t| ((t.schema.as_str(), t.name.as_str()), t))
        .collect();
    for st in &src_cat.tables {
        let tt = (*tgt_tables
            .get(&(st.schema.as_str(), st.name.as_str()))
            .expect("target table resolved above"))
        .clone();
        match plan_table(st.clone(), tt, filters[&st.oid].clone(), &opts, rules)? {
            Some(p) => plans.push(p),
            // pgsync's "No fields to copy": said, and the other tables go on.
            None => events.emit(Event::Warning {
                message: format!(
                    "{}: no columns in common with the target; skipped",
                    st.display()
                ),
            }),
        }
    }
    if plans.is_empty() {
        return Err(Error::InvalidInput(
            "no tables to sync (no table has a column in common with the target)".into(),
        ));
    }
    for p in &plans {
        for w in &p.warnings {
            events.emit(Event::Warning { message: w.clone() });
        }
    }

    staging::check_and_reserve(&tgt, &mut plans).await?;
    check_privileges(&coordinator, &tgt, &plans, &opts).await?;
    if opts.disable_integrity {
        let sup: bool = tgt
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .ctx("checking superuser")?
            .get(0);
        if !sup {
            return Err(Error::InvalidInput(
                "--disable-integrity sets session_replication_role = replica, which needs a \
                 superuser on the target; the target user is not one (use --defer-constraints)"
                    .into(),
            ));
        }
    }

    // Sequences: the source's positions, read once for all tables.
    if opts.sequences && !plans.is_empty() {
        read_sequences(&coordinator, &mut plans).await?;
    }
    if opts.staging && opts.split_larger_than > 0 {
        plan_ranges(&coordinator, &mut plans, &opts, events).await?;
    }

    if let Some(b) = &opts.in_batches {
        batches::check(&plans)?;
        let mut plan = Plan::new("pgflip sync");
        plan.push(
            Step::new(
                batches::describe(&plans[0], b),
                format!(
                    "-- per batch: BEGIN; COPY into a temporary table; {}; record the last key; COMMIT",
                    "INSERT … ON CONFLICT DO UPDATE"
                ),
            )
            .lock(LockMode::RowExclusive, QuotedName::already_quoted(plans[0].into.clone()))
            .outside_transaction(),
        );
        return Ok(Prepared {
            source: source.clone(),
            target: target.clone(),
            opts,
            _coordinator: coordinator,
            snapshot,
            tables: plans,
            units: Vec::new(),
            batches: Vec::new(),
            plan,
            started,
            idle: Default::default(),
        });
    }

    if opts.mode == Mode::Replace && !opts.staging {
        small_tables(&coordinator, &tgt, &mut plans, &opts, events).await?;
        droppable_constraints(&tgt, &mut plans, &opts).await?;
    }

    // The definitions of the indexes a rebuild drops and builds again (large tables replaced in
    // place) or a staging table gets.
    let mut rebuilt: Vec<&mut tables::Table> = plans
        .iter_mut()
        .filter(|p| p.strategy == Strategy::Staging || p.large(&opts))
        .map(|p| &mut p.target)
        .collect();
    tables::index_definitions(&tgt, &mut rebuilt).await?;

    // Foreign keys between synced tables make units; from outside, they change strategies.
    let synced: BTreeSet<u32> = plans.iter().map(|p| p.target.oid).collect();
    for p in plans.iter_mut() {
        p.external_refs = tgt_cat
            .foreign_keys
            .iter()
            .filter(|fk| fk.to_oid == p.target.oid && !synced.contains(&fk.from_oid))
            .cloned()
            .collect();
    }
    let mut units = build_units(&mut plans, &tgt_cat.foreign_keys, &opts)?;
    if opts.disable_user_triggers && !opts.staging {
        triggers::wrap_units(&tgt, &plans, &mut units).await?;
    }

    // Cross-server diffs happen before anything is written (and in dry runs).
    if opts.show_diff && !opts.staging {
        events.emit(Event::PhaseStarted {
            phase: "diffing".into(),
        });
        let src_ep = source.clone();
        let tgt_ep = target.clone();
        let snap = snapshot.clone();
        let diffs: Vec<(usize, Option<DiffSummary>)> =
            futures_util::stream::iter(plans.iter().enumerate().map(|(i, p)| {
                let (src_ep, tgt_ep, snap) = (src_ep.clone(), tgt_ep.clone(), snap.clone());
                async move {
                    if p.target.primary_key.is_empty() {
                        return Ok::<_, Error>((i, None));
                    }
                    let s = open_snapshot_reader(&src_ep, &snap).await?;
                    let t = tgt_ep.connect().await?;
                    let d = rowdiff::cross_server(
                        &s,
                        &row_source(p, true),
                        &t,
                        &row_source(p, false),
                        p.source.estimated_rows.max(p.target.estimated_rows),
                        opts.diff_sample,
                    )
                    .await?;
                    Ok((i, Some(d)))
                }
            }))
            .buffer_unordered(opts.jobs.max(1))
            .try_collect()
            .await?;
        for (i, d) in diffs {
            plans[i].diff = d;
        }
    }

    let batches = batch_units(&units, opts.jobs);
    tracing::debug!(elapsed = ?started.elapsed(), "sync: planned");
    let mut plan = Plan::new("pgflip sync");
    for (n, batch) in batches.iter().enumerate() {
        let tx = 2 * n as u32;
        let shared = batch.len() > 1;
        for &b in batch {
            let u = &units[b];
            if shared {
                plan.push(
                    Step::new(
                        format!(
                            "{}: a failure rolls back only this part of the shared transaction",
                            unit_names(&plans, u)
                        ),
                        SAVEPOINT,
                    )
                    .in_transaction(tx),
                );
            }
            for a in &u.actions {
                plan.push(a.step().clone().in_transaction(tx));
            }
            if shared {
                plan.push(
                    Step::new(format!("{} done", unit_names(&plans, u)), RELEASE)
                        .in_transaction(tx),
                );
            }
            for a in &u.ranges {
                plan.push(a.step().clone());
            }
            for s in &u.after {
                plan.push(s.clone());
            }
            for s in &u.finish {
                plan.push(s.clone().in_transaction(tx + 1));
            }
        }
    }
    Ok(Prepared {
        source: source.clone(),
        target: target.clone(),
        opts,
        _coordinator: coordinator,
        snapshot,
        tables: plans,
        units,
        batches,
        plan,
        started,
        idle: Default::default(),
    })
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

/// The transactions of a run: every unit alone, except the small ones (`shares_transaction`),
/// which go together, up to [`BATCH_TABLES`] tables a transaction and spread over at least
/// `jobs` transactions so that every connection has work. The others first: they take longer.
/// A transaction per unit cost the commit and the round trips of a whole transaction for every
/// 10-row table.
fn batch_units(units: &[Unit], jobs: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = (0..units.len())
        .filter(|&u| !units[u].shares_transaction)
        .map(|u| vec![u])
        .collect();
    let shared: Vec<usize> = (0..units.len())
        .filter(|&u| units[u].shares_transaction)
        .collect();
    let tables: usize = shared.iter().map(|&u| units[u].tables.len()).sum();
    let per = tables.div_ceil(jobs.max(1)).clamp(1, BATCH_TABLES);
    let mut batch = Vec::new();
    let mut n = 0;
    for u in shared {
        if n > 0 && n + units[u].tables.len() > per {
            out.push(std::mem::take(&mut batch));
            n = 0;
        }
        batch.push(u);
        n += units[u].tables.len();
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

fn row_source(p: &TablePlan, source_side: bool) -> RowSource {
    RowSource {
        relation: if source_side {
            p.source.qualified()
        } else {
            p.into.clone()
        },
        key: p.target.primary_key.clone(),
        values: p
            .columns
            .iter()
            .map(|(c, e, _)| {
                if source_side {
                    e.clone()
                } else {
                    quote_ident(c)
                }
            })
            .collect(),
        filter: p.filter.clone(),
    }
}

fn plan_table(
    st: tables::Table,
    tt: tables::Table,
    filter: Option<String>,
    opts: &SyncOptions,
    rules: &Rules,
) -> Result<Option<TablePlan>> {
    let display = st.display();
    let mut warnings = Vec::new();
    let mut columns = Vec::new();
    let mut binary = true;
    for tc in &tt.columns {
        if tc.generated {
            continue;
        }
        let Some(sc) = st.column(&tc.name) else {
            warnings.push(format!(
                "{display}: column {} is missing on the source; the target keeps its default",
                quote_ident(&tc.name)
            ));
            continue;
        };
        if sc.type_name != tc.type_name {
            warnings.push(format!(
                "{display}: column {} is {} on the source and {} on the target; copied as text",
                quote_ident(&tc.name),
                sc.type_name,
                tc.type_name
            ));
            binary = false;
        } else if sc.type_oid != tc.type_oid || sc.type_oid >= 16384 {
            // User-defined types: binary COPY carries OIDs that differ between databases.
            binary = false;
        }
        let rule = rules.for_column(&st.schema, &st.name, &sc.name);
        let expr = match rule {
            Some(r) => r.expression(&sc.name, &sc.type_name, &st.primary_key),
            None => quote_ident(&sc.name),
        };
        columns.push((
            tc.name.clone(),
            expr,
            rowdiff::compare_as_text(&tc.type_name),
        ));
    }
    for sc in &st.columns {
        if tt.column(&sc.name).is_none() {
            warnings.push(format!(
                "{display}: column {} exists only on the source; not copied",
                quote_ident(&sc.name)
            ));
        } else if tt.column(&sc.name).is_some_and(|c| c.generated) && !sc.generated {
            warnings.push(format!(
                "{display}: column {} is generated on the target; not copied",
                quote_ident(&sc.name)
            ));
        }
    }
    if columns.is_empty() {
        return Ok(None);
    }
    let needs_pk = match opts.mode {
        Mode::Overwrite => Some("--overwrite"),
        Mode::Preserve => Some("--preserve"),
        Mode::Replace if filter.is_some() && !opts.staging => Some("--where"),
        Mode::Replace if opts.show_diff => Some("--show-diff"),
        Mode::Replace => None,
    };
    if tt.primary_key.is_empty() {
        if let Some(flag) = needs_pk {
            if flag == "--show-diff" {
                warnings.push(format!(
                    "{display}: no primary key on the target; no diff for this table"
                ));
            } else {
                return Err(Error::InvalidInput(format!(
                    "{display} has no primary key on the target; {flag} needs one to match rows"
                )));
            }
        }
    } else {
        for k in &tt.primary_key {
            if !columns.iter().any(|(c, _, _)| c == k) {
                return Err(Error::InvalidInput(format!(
                    "{display}: primary key column {} is not on the source",
                    quote_ident(k)
                )));
            }
        }
    }
    let (into, staging, load_into) = if opts.staging {
        if tt.kind == "p" {
            return Err(Error::InvalidInput(format!(
                "{display} is partitioned; staging tables of partitioned tables are not \
                 supported yet"
            )));
        }
        let name = match &opts.staging_name {
            Some(n) => n.clone(),
            None => staging_name(&tt.name),
        };
        if name == tt.name {
            return Err(Error::InvalidInput(format!(
                "the staging name {name:?} is the live table's own name"
            )));
        }
        let loading = qualified(&tt.schema, &derived_name(&name, "_pgflip_loading"));
        (qualified(&tt.schema, &name), Some(name), loading)
    } else {
        (tt.qualified(), None, tt.qualified())
    };
    let strategy = if opts.staging {
        Strategy::Staging
    } else {
        match opts.mode {
            Mode::Overwrite => Strategy::Merge {
                delete: MergeDelete::None,
                update: true,
            },
            Mode::Preserve => Strategy::Merge {
                delete: MergeDelete::None,
                update: false,
            },
            Mode::Replace => match &filter {
                Some(f) => Strategy::Merge {
                    delete: MergeDelete::MissingWhere(f.clone()),
                    update: true,
                },
                None => Strategy::Truncate,
            },
        }
    };
    Ok(Some(TablePlan {
        display,
        source: st,
        target: tt,
        into,
        load_into,
        staging,
        columns,
        format: if binary { Format::Binary } else { Format::Text },
        filter,
        strategy,
        sequences: Vec::new(),
        external_refs: Vec::new(),
        warnings,
        diff: None,
        ranges: Vec::new(),
        unsplit: None,
        replaces_staging: false,
        taken_names: BTreeSet::new(),
        small: false,
        droppable: BTreeSet::new(),
    }))
}

async fn check_privileges(
    src: &Client,
    tgt: &Client,
    plans: &[TablePlan],
    opts: &SyncOptions,
) -> Result<()> {
    let src_oids: Vec<u32> = plans.iter().map(|p| p.source.oid).collect();
    let on_src = async {
        src.query(
            "SELECT c.oid::regclass::text FROM unnest($1::oid[]) o JOIN pg_class c ON c.oid = o \
             WHERE NOT has_table_privilege(c.oid, 'SELECT')",
            &[&src_oids],
        )
        .await
        .ctx("checking privileges on the source")
    };
    let tgt_oids: Vec<u32> = plans.iter().map(|p| p.target.oid).collect();
    let (privs, what) = if opts.staging {
        ("SELECT", "SELECT (staging tables are built LIKE it)")
    } else {
        match opts.mode {
            Mode::Replace => (
                "INSERT, DELETE, TRUNCATE, SELECT, UPDATE",
                "INSERT, DELETE, TRUNCATE, SELECT and UPDATE",
            ),
            Mode::Overwrite => ("INSERT, UPDATE, SELECT", "INSERT, UPDATE and SELECT"),
            Mode::Preserve => ("INSERT, SELECT", "INSERT and SELECT"),
        }
    };
    // has_table_privilege with a list is true when ANY is held: check each one.
    let on_tgt = async {
        tgt.query(
            "SELECT c.oid::regclass::text FROM unnest($1::oid[]) o JOIN pg_class c ON c.oid = o \
             WHERE NOT (SELECT bool_and(has_table_privilege(c.oid, trim(p))) \
                        FROM unnest(string_to_array($2, ',')) p)",
            &[&tgt_oids, &privs],
        )
        .await
        .ctx("checking privileges on the target")
    };
    let (src_rows, rows) = futures_util::try_join!(on_src, on_tgt)?;
    if let Some(r) = src_rows.first() {
        return Err(Error::InvalidInput(format!(
            "permission denied: the source user may not SELECT from {}",
            r.get::<_, String>(0)
        )));
    }
    if let Some(r) = rows.first() {
        return Err(Error::InvalidInput(format!(
            "permission denied: the target user needs {what} on {}",
            r.get::<_, String>(0)
        )));
    }
    if opts.staging {
        let schemas: Vec<String> = plans.iter().map(|p| p.target.schema.clone()).collect();
        let rows = tgt
            .query(
                "SELECT s FROM unnest($1::text[]) s WHERE NOT has_schema_privilege(s, 'CREATE')",
                &[&schemas],
            )
            .await
            .ctx("checking schema privileges on the target")?;
        if let Some(r) = rows.first() {
            return Err(Error::InvalidInput(format!(
                "permission denied: the target user may not create tables in schema {}",
                r.get::<_, String>(0)
            )));
        }
    }
    Ok(())
}

/// Reads `last_value, is_called` of every owned sequence of a copied column on the source in
/// one statement, and pairs each with the target's sequence of the same column.
async fn read_sequences(src: &Client, plans: &mut [TablePlan]) -> Result<()> {
    let mut parts = Vec::new();
    let mut index = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        for s in &p.source.sequences {
            if p.columns.iter().any(|(c, _, _)| c == &s.column)
                && p.target.sequences.iter().any(|t| t.column == s.column)
            {
                parts.push(format!(
                    "SELECT {} AS i, {} AS c, last_value, is_called FROM {}",
                    index.len(),
                    quote_literal(&s.column),
                    s.sequence
                ));
                index.push(i);
            }
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let rows = src
        .query(&parts.join(" UNION ALL "), &[])
        .await
        .ctx("reading sequence positions on the source")?;
    for r in rows {
        let n: i32 = r.get(0);
        let col: String = r.get(1);
        let p = &mut plans[index[n as usize]];
        let seq_expr = match &p.staging {
            // The staging table's own sequence, whatever it is called.
            Some(_) => format!(
                "pg_get_serial_sequence({}, {})",
                quote_literal(&p.load_into),
                quote_literal(&col)
            ),
            None => {
                let t = p
                    .target
                    .sequences
                    .iter()
                    .find(|t| t.column == col)
                    .expect("paired above");
                format!("{}::regclass", quote_literal(&t.sequence))
            }
        };
        p.sequences.push((seq_expr, r.get(2), r.get(3)));
    }
    Ok(())
}

/// Marks the tables small enough to be emptied with DELETE rather than TRUNCATE (see
/// [`DELETE_AT_MOST`]). Sizes are the files as they are (`pg_relation_size`): `relpages` is only
/// as recent as the last VACUUM, and unknown for a table truncated since. Only plain tables (a
/// partitioned table's own size is 0 whatever its partitions hold) with no user trigger or rule
/// on DELETE or TRUNCATE on the target: DELETE would fire row triggers that TRUNCATE does not,
/// and skip the TRUNCATE ones. One query per side, whatever the number of tables.
///
/// The guarantee stays: the DELETE and the COPY are one transaction, so readers see the old rows
/// until COMMIT and the new ones after, never an empty table, and — unlike under TRUNCATE's
/// ACCESS EXCLUSIVE lock — they do not wait. The unit first takes SHARE ROW EXCLUSIVE on its
/// tables: readers (ACCESS SHARE) and `SELECT … FOR UPDATE` (ROW SHARE) go on, the application's
/// writers (ROW EXCLUSIVE) wait until COMMIT and then write on the new rows. Without that lock a
/// row inserted during the load would stay beside the source's (the target would not be the
/// source) or collide with one of them.
async fn small_tables(
    src: &Client,
    tgt: &Client,
    plans: &mut [TablePlan],
    opts: &SyncOptions,
    events: &dyn EventSink,
) -> Result<()> {
    let candidates: Vec<usize> = (0..plans.len())
        .filter(|&i| {
            let p = &plans[i];
            p.strategy == Strategy::Truncate && p.target.kind == "r" && p.source.kind == "r"
        })
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let src_oids: Vec<u32> = candidates.iter().map(|&i| plans[i].source.oid).collect();
    let on_src = async {
        src.query(
            "SELECT o FROM unnest($1::oid[]) o WHERE pg_relation_size(o) <= $2",
            &[&src_oids, &(DELETE_AT_MOST as i64)],
        )
        .await
        .ctx("reading table sizes on the source")
    };
    let tgt_oids: Vec<u32> = candidates.iter().map(|&i| plans[i].target.oid).collect();
    let names: Vec<&str> = candidates.iter().map(|&i| plans[i].into.as_str()).collect();
    // pg_relation_size takes (and at once releases) ACCESS SHARE on each table: a table locked
    // by a migration must not hold the planning up without limit.
    let sql = format!(
        "BEGIN; SET LOCAL lock_timeout = {}",
        opts.lock_timeout.as_millis().max(1)
    );
    let on_tgt = crate::lockwait::retry(
        opts.max_wait,
        events,
        || async {
            tgt.batch_execute(&sql)
                .await
                .ctx("reading table sizes on the target")?;
            let r = tgt
                .query(
                    "SELECT o FROM unnest($1::oid[]) o \
                     WHERE pg_relation_size(o) <= $2 \
                       AND NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = o \
                                       AND NOT t.tgisinternal AND t.tgenabled <> 'D' \
                                       AND t.tgtype::int & (8 | 32) <> 0) \
                       AND NOT EXISTS (SELECT FROM pg_rewrite w WHERE w.ev_class = o \
                                       AND w.ev_type = '4')",
                    &[&tgt_oids, &(DELETE_AT_MOST as i64)],
                )
                .await
                .ctx("reading table sizes on the target");
            let _ = tgt
                .batch_execute(if r.is_ok() { "COMMIT" } else { "ROLLBACK" })
                .await;
            r
        },
        || crate::lockwait::blockers_by_name(tgt, &names),
    );
    let (src_rows, tgt_rows) = futures_util::try_join!(on_src, on_tgt)?;
    let small_src: BTreeSet<u32> = src_rows.iter().map(|r| r.get(0)).collect();
    let small_tgt: BTreeSet<u32> = tgt_rows.iter().map(|r| r.get(0)).collect();
    for i in candidates {
        let p = &mut plans[i];
        p.small = small_src.contains(&p.source.oid) && small_tgt.contains(&p.target.oid);
    }
    Ok(())
}

/// Finds, for the large tables that will be truncated, the primary key and unique constraints
/// that can be dropped for the load and added again after it in the same transaction: a COPY
/// into a table without indexes, then each index built sorted (with PostgreSQL's parallel
/// workers) was 2.57 s against 2.95 s with the primary key maintained row by row during the
/// COPY (1 M rows, bench table). Only constraints that nothing else depends on: no foreign key
/// uses the index, no view depends on the constraint (a GROUP BY on the key), no comment on the
/// constraint, not inherited from a partitioned parent, and the index neither the replica
/// identity nor the clustering index (`plain`). Readers are locked out by the TRUNCATE until
/// COMMIT, so nobody sees the table without its key; writers too, so no duplicate gets in.
async fn droppable_constraints(
    tgt: &Client,
    plans: &mut [TablePlan],
    opts: &SyncOptions,
) -> Result<()> {
    let large: Vec<u32> = plans
        .iter()
        .filter(|p| p.strategy == Strategy::Truncate && !p.small && p.large(opts))
        .map(|p| p.target.oid)
        .collect();
    if large.is_empty() {
        return Ok(());
    }
    let rows = tgt
        .query(
            "SELECT con.conrelid, i.relname::text FROM pg_constraint con \
             JOIN pg_class i ON i.oid = con.conindid \
             WHERE con.conrelid = ANY($1::oid[]) AND con.contype IN ('p', 'u') \
               AND con.conparentid = 0 \
               AND obj_description(con.oid, 'pg_constraint') IS NULL \
               AND NOT EXISTS (SELECT FROM pg_depend d \
                               WHERE d.refclassid = 'pg_constraint'::regclass \
                                 AND d.refobjid = con.oid AND d.deptype <> 'i') \
               AND NOT EXISTS (SELECT FROM pg_depend d \
                               WHERE d.refclassid = 'pg_class'::regclass \
                                 AND d.refobjid = con.conindid)",
            &[&large],
        )
        .await
        .ctx("reading the target's key constraints")?;
    for r in rows {
        let (oid, index): (u32, String) = (r.get(0), r.get(1));
        if let Some(p) = plans.iter_mut().find(|p| p.target.oid == oid) {
            p.droppable.insert(index);
        }
    }
    Ok(())
}

/// Splits the tables whose source heap is above the threshold into block ranges. The sizes are
/// read in the snapshot's transaction; a table that grew since is still copied whole, as the
/// last range is open-ended, and every range reads the snapshot, never a later row.
async fn plan_ranges(
    src: &Client,
    plans: &mut [TablePlan],
    opts: &SyncOptions,
    events: &dyn EventSink,
) -> Result<()> {
    let oids: Vec<u32> = plans
        .iter()
        .filter(|p| p.source.kind == "r")
        .map(|p| p.source.oid)
        .collect();
    let rows = src
        .query(
            "SELECT o, pg_relation_size(o), current_setting('block_size')::bigint,                     current_setting('server_version_num')::int              FROM unnest($1::oid[]) o",
            &[&oids],
        )
        .await
        .ctx("reading table sizes on the source")?;
    for r in rows {
        let (oid, size, block, version): (u32, i64, i64, i32) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let size = size.max(0) as u64;
        if size <= opts.split_larger_than {
            continue;
        }
        let p = plans
            .iter_mut()
            .find(|p| p.source.oid == oid)
            .expect("oid of a planned table");
        if version < 140000 {
            // Before 14 a ctid range is a full scan per range; one copy reads the table once.
            let why = format!(
                "not split: the source is PostgreSQL {}.{}, and TID range scans need 14",
                version / 10000,
                version % 10000 / 100
            );
            events.emit(Event::Warning {
                message: format!("{}: {why}", p.display),
            });
            p.unsplit = Some(why);
            continue;
        }
        // Ranges of about the threshold each, and at least one per job so that a single large
        // table keeps every connection busy.
        let pieces = size
            .div_ceil(opts.split_larger_than)
            .max(opts.jobs as u64)
            .min(MAX_RANGES);
        p.ranges = block_ranges(size / block.max(1) as u64, pieces);
    }
    Ok(())
}

/// Groups tables into units (connected by foreign keys between synced tables, in the default
/// mode), orders each unit parents first, picks strategies and writes the actions.
fn build_units(
    plans: &mut [TablePlan],
    fks: &[tables::ForeignKey],
    opts: &SyncOptions,
) -> Result<Vec<Unit>> {
    let by_oid: BTreeMap<u32, usize> = plans
        .iter()
        .enumerate()
        .map(|(i, p)| (p.target.oid, i))
        .collect();
    let internal: Vec<&tables::ForeignKey> = fks
        .iter()
        .filter(|fk| {
            by_oid.contains_key(&fk.from_oid)
                && by_oid.contains_key(&fk.to_oid)
                && fk.from_oid != fk.to_oid
        })
        .collect();
    // Union-find over internal FKs (only replacing needs them together).
    let mut parent: Vec<usize> = (0..plans.len()).collect();
    fn find(p: &mut [usize], x: usize) -> usize {
        let mut r = x;
        while p[r] != r {
            r = p[r];
        }
        p[x] = r;
        r
    }
    let grouped = opts.mode == Mode::Replace && !opts.staging;
    if grouped {
        for fk in &internal {
            let a = find(&mut parent, by_oid[&fk.from_oid]);
            let b = find(&mut parent, by_oid[&fk.to_oid]);
            if a != b {
                parent[a] = b;
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..plans.len() {
        let r = find(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    let mut units = Vec::new();
    for (_, members) in groups {
        // Parents first (Kahn's algorithm over internal FKs of the unit).
        let set: BTreeSet<usize> = members.iter().copied().collect();
        let mut order = Vec::new();
        let mut remaining: BTreeSet<usize> = set.clone();
        while !remaining.is_empty() {
            let ready: Vec<usize> = remaining
                .iter()
                .copied()
                .filter(|&t| {
                    !internal.iter().any(|fk| {
                        by_oid[&fk.from_oid] == t
                            && remaining.contains(&by_oid[&fk.to_oid])
                            && by_oid[&fk.to_oid] != t
                    })
                })
                .collect();
            if ready.is_empty() {
                if !(opts.defer_constraints || opts.disable_integrity) {
                    let names: Vec<String> = remaining
                        .iter()
                        .map(|&i| plans[i].display.clone())
                        .collect();
                    return Err(Error::InvalidInput(format!(
                        "tables {} reference each other in a cycle; loading them needs \
                         --defer-constraints or --disable-integrity",
                        names.join(", ")
                    )));
                }
                order.extend(remaining.iter().copied());
                break;
            }
            for t in ready {
                remaining.remove(&t);
                order.push(t);
            }
        }
        let unit_fks: Vec<&tables::ForeignKey> = fks
            .iter()
            .filter(|fk| {
                by_oid.get(&fk.from_oid).is_some_and(|i| set.contains(i))
                    || by_oid.get(&fk.to_oid).is_some_and(|i| set.contains(i))
            })
            .collect();
        units.push(unit_actions(plans, order, &unit_fks, opts)?);
    }
    Ok(units)
}

fn unit_actions(
    plans: &mut [TablePlan],
    order: Vec<usize>,
    unit_fks: &[&tables::ForeignKey],
    opts: &SyncOptions,
) -> Result<Unit> {
    let mut actions = Vec::new();
    let mut ranges = Vec::new();
    let mut after = Vec::new();
    let mut finish_steps = Vec::new();
    let replacing = opts.mode == Mode::Replace && !opts.staging;
    let has_external = order.iter().any(|&i| !plans[i].external_refs.is_empty());

    // Strategies for whole-table replacement, now that foreign keys are known. A unit that
    // tables outside the sync reference cannot be truncated; without flags every table of it is
    // merged (upserts parents first, deletes children first), so no reference ever breaks.
    // A unit of small tables only, nothing referencing it from outside: DELETE under SHARE ROW
    // EXCLUSIVE instead of TRUNCATE (see `small_tables`), and it may share a transaction with
    // other such units. --defer-constraints and --disable-integrity keep their own path.
    let small = replacing
        && !has_external
        && !opts.defer_constraints
        && !opts.disable_integrity
        && order
            .iter()
            .all(|&i| plans[i].small && plans[i].filter.is_none());
    if replacing {
        let in_unit = |oid: u32| order.iter().any(|&i| plans[i].target.oid == oid);
        let all_no_action = unit_fks
            .iter()
            .filter(|fk| in_unit(fk.to_oid))
            .all(|fk| fk.on_delete == "a");
        for &i in &order {
            if plans[i].filter.is_some() {
                continue; // --where: merge within the filter, decided in plan_table
            }
            let p = &plans[i];
            plans[i].strategy = if small {
                Strategy::DeleteAll
            } else if !has_external {
                Strategy::Truncate
            } else if opts.disable_integrity || (opts.defer_constraints && all_no_action) {
                Strategy::DeleteAll
            } else if p.target.primary_key.is_empty() {
                let fk = order
                    .iter()
                    .flat_map(|&j| plans[j].external_refs.iter())
                    .next()
                    .expect("has_external");
                return Err(Error::InvalidInput(format!(
                    "{} has no primary key and its rows are referenced (from {}, constraint {}), \
                     so pgflip cannot replace them without breaking references; use \
                     --defer-constraints or --disable-integrity",
                    p.display,
                    fk.from,
                    quote_ident(&fk.name)
                )));
            } else {
                Strategy::Merge {
                    delete: MergeDelete::Missing,
                    update: true,
                }
            };
        }
    }

    let deferred: Vec<&&tables::ForeignKey> = if opts.defer_constraints {
        unit_fks.iter().filter(|fk| !fk.deferrable).collect()
    } else {
        Vec::new()
    };
    if opts.disable_integrity && replacing {
        actions.push(Action::Sql(Step::new(
            "disable triggers and foreign key checks for this transaction (superuser)",
            "SET LOCAL session_replication_role = replica",
        )));
    }
    for fk in &deferred {
        actions.push(Action::Sql(
            Step::new(
                format!(
                    "make foreign key {} of {} deferrable for this transaction",
                    quote_ident(&fk.name),
                    fk.from
                ),
                format!(
                    "ALTER TABLE {} ALTER CONSTRAINT {} DEFERRABLE; SET CONSTRAINTS {} DEFERRED",
                    fk.from,
                    quote_ident(&fk.name),
                    qualified_constraint(fk)
                ),
            )
            .lock(
                LockMode::AccessExclusive,
                QuotedName::already_quoted(fk.from.clone()),
            ),
        ));
    }

    // Clear.
    let truncated: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| plans[i].strategy == Strategy::Truncate)
        .collect();
    if !truncated.is_empty() {
        let names: Vec<String> = truncated.iter().map(|&i| plans[i].into.clone()).collect();
        let entries: Vec<String> = truncated
            .iter()
            .map(|&i| only(&plans[i].target.kind, &plans[i].into))
            .collect();
        let mut step = Step::new(
            format!(
                "empty {} (inside the transaction: readers wait, then see the new rows)",
                names.join(", ")
            ),
            format!("TRUNCATE {}", entries.join(", ")),
        )
        .hazard(Hazard::ReplacesData);
        step = step.lock(
            LockMode::AccessExclusive,
            QuotedName::already_quoted(names.join(", ")),
        );
        actions.push(Action::Sql(step));
    }
    if small {
        let names: Vec<String> = order.iter().map(|&i| plans[i].into.clone()).collect();
        let entries: Vec<String> = order
            .iter()
            .map(|&i| only(&plans[i].target.kind, &plans[i].into))
            .collect();
        actions.push(Action::Sql(
            Step::new(
                format!(
                    "hold writes to {} until COMMIT (readers go on, seeing the old rows until \
                     then)",
                    names.join(", ")
                ),
                format!(
                    "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
                    entries.join(", ")
                ),
            )
            .lock(
                LockMode::ShareRowExclusive,
                QuotedName::already_quoted(names.join(", ")),
            ),
        ));
    }
    for &i in order.iter().rev() {
        let p = &plans[i];
        if p.strategy == Strategy::DeleteAll {
            actions.push(Action::Sql(
                Step::new(
                    format!(
                        "delete every row of {}{}",
                        p.into,
                        if small {
                            " (inside the transaction: readers see the old rows until COMMIT)"
                        } else {
                            ""
                        }
                    ),
                    format!("DELETE FROM {}", only(&p.target.kind, &p.into)),
                )
                .lock(
                    LockMode::RowExclusive,
                    QuotedName::already_quoted(p.into.clone()),
                )
                .hazard(Hazard::ReplacesData),
            ));
        }
        if p.strategy == Strategy::Staging {
            let staging = p.into.clone();
            let loading = p.load_into.clone();
            let live = p.target.qualified();
            let staging_bare = p.staging.clone().unwrap_or_default();
            // Rows go into a loading table without indexes; the indexes are built after the
            // copy, in parallel, and the table is renamed to the staging name only when it is
            // complete. An interrupted run leaves at most the loading table, which the next run
            // drops.
            let mut taken = p.taken_names.clone();
            let index_builds = staging_index_builds(p, &loading, &mut taken);
            let including = if index_builds.is_some() {
                "INCLUDING ALL EXCLUDING INDEXES"
            } else {
                "INCLUDING ALL"
            };
            // Autovacuum stays off while loading: on a table filling up it would start, take
            // locks that the index builds and the final rename then wait behind.
            let mut sql = format!(
                "DROP TABLE IF EXISTS {staging}; DROP TABLE IF EXISTS {loading}; \
                 CREATE TABLE {loading} (LIKE {live} {including}) \
                 WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false)"
            );
            // LIKE copies serial defaults as they are: nextval() of the live table's sequence.
            // The staging table gets its own sequence so that loading or using it never moves
            // the live one.
            for c in &p.target.columns {
                let owned = p.target.sequences.iter().any(|s| s.column == c.name);
                if c.identity.is_empty()
                    && owned
                    && c.default
                        .as_deref()
                        .is_some_and(|d| d.starts_with("nextval("))
                {
                    let base = format!("{staging_bare}_{}", c.name);
                    let seq = qualified(
                        &p.target.schema,
                        &staging::free_name(&base, "_seq", &mut taken),
                    );
                    let ty = if c.type_name == "smallint"
                        || c.type_name == "integer"
                        || c.type_name == "bigint"
                    {
                        c.type_name.clone()
                    } else {
                        "bigint".into()
                    };
                    sql.push_str(&format!(
                        "; CREATE SEQUENCE {seq} AS {ty} OWNED BY {loading}.{col}; \
                         ALTER TABLE {loading} ALTER COLUMN {col} SET DEFAULT nextval({lit}::regclass)",
                        col = quote_ident(&c.name),
                        lit = quote_literal(&seq)
                    ));
                }
            }
            // Every sequence of the staging table gets the live one's type and options: LIKE
            // makes identity sequences bigint, and a swap must not change them.
            for c in p.target.columns.iter().filter(|c| {
                !c.identity.is_empty() || p.target.sequences.iter().any(|s| s.column == c.name)
            }) {
                sql.push_str("; ");
                sql.push_str(&copy_sequence_options_sql(&live, &loading, &c.name));
            }
            // Recorded with its oid in the same transaction: pgflip replaces a staging table
            // only if it is one it created.
            sql.push_str("; ");
            sql.push_str(&crate::state::record_created_relation_sql(
                crate::state::OperationKind::Sync,
                crate::state::Phase::Loading,
                (&p.target.schema, &p.target.name),
                (&p.target.schema, &staging_bare),
                &loading,
            ));
            // What the live table holds as the load begins: the swap says what it received
            // since (those rows leave with the retired table).
            sql.push_str("; ");
            sql.push_str(&drift::record_marker_sql(
                (&p.target.schema, &staging_bare),
                drift::LOAD,
                &live,
            ));
            let mut step = Step::new(
                format!(
                    "{}create {loading} with the structure of {live}",
                    if p.replaces_staging {
                        format!("drop the previous {staging} (made by pgflip); ")
                    } else {
                        String::new()
                    }
                ),
                sql,
            )
            .lock(
                LockMode::AccessExclusive,
                QuotedName::already_quoted(staging.clone()),
            );
            if p.replaces_staging {
                step = step.hazard(Hazard::DeletesData);
            }
            actions.push(Action::Sql(step));
            let (builds, finish) = index_builds.unwrap_or_default();
            after.extend(builds);
            let mut fin = finish;
            // LIKE names identity sequences after the loading table: give them the names they
            // would have had under the staging name.
            for c in p.target.columns.iter().filter(|c| !c.identity.is_empty()) {
                let new_name =
                    staging::free_name(&format!("{staging_bare}_{}", c.name), "_seq", &mut taken);
                fin.push(Step::new(
                    format!(
                        "name the identity sequence of {staging}.{}",
                        quote_ident(&c.name)
                    ),
                    format!(
                        "DO $pgflip$BEGIN EXECUTE format('ALTER SEQUENCE %s RENAME TO %I', \
                         pg_get_serial_sequence({}, {}), {}); END$pgflip$",
                        quote_literal(&loading),
                        quote_literal(&c.name),
                        quote_literal(&new_name)
                    ),
                ));
            }
            fin.push(
                Step::new(
                    format!("rename the complete {loading} to {staging}; autovacuum on again"),
                    format!(
                        "ALTER TABLE {loading} RESET (autovacuum_enabled, \
                         toast.autovacuum_enabled); ALTER TABLE {loading} RENAME TO {}; {}",
                        quote_ident(&staging_bare),
                        crate::state::set_operation_phase_sql(
                            (&p.target.schema, &staging_bare),
                            crate::state::Phase::Staged
                        )
                    ),
                )
                .lock(
                    LockMode::AccessExclusive,
                    QuotedName::already_quoted(loading.clone()),
                ),
            );
            finish_steps.extend(fin);
        }
    }

    // Large tables emptied by TRUNCATE: their plain secondary indexes are dropped and rebuilt
    // after the copy, in the same transaction (readers are locked out by the TRUNCATE anyway,
    // so nobody sees the table without them). A sorted build is several times cheaper than
    // inserting millions of random keys one by one.
    let mut rebuild = Vec::new();
    for &i in &order {
        let p = &plans[i];
        if p.strategy != Strategy::Truncate || !p.large(opts) {
            continue;
        }
        // Key constraints that nothing depends on first: the table has its key back as early
        // as possible in the rebuild.
        for idx in p.target.indexes.iter().filter(|x| {
            x.plain
                && p.droppable.contains(&x.name)
                && matches!(&x.constraint, Some((_, k)) if k == "p" || k == "u")
        }) {
            let Some(((con, _), def)) = idx
                .constraint
                .as_ref()
                .zip(idx.constraint_definition.as_ref())
            else {
                continue;
            };
            let name = qualified(&p.target.schema, &idx.name);
            let con = quote_ident(con);
            actions.push(Action::Sql(
                Step::new(
                    format!(
                        "drop constraint {con} of {} for the load (added again after it)",
                        p.into
                    ),
                    format!("ALTER TABLE {} DROP CONSTRAINT {con}", p.into),
                )
                .lock(
                    LockMode::AccessExclusive,
                    QuotedName::already_quoted(p.into.clone()),
                ),
            ));
            let mut sql = format!("ALTER TABLE {} ADD CONSTRAINT {con} {def}", p.into);
            if let Some(c) = &idx.comment {
                sql.push_str(&format!(
                    "; COMMENT ON INDEX {name} IS {}",
                    quote_literal(c)
                ));
            }
            rebuild.push(Action::Sql(
                Step::new(format!("add constraint {con} of {} again", p.into), sql)
                    .lock(
                        LockMode::AccessExclusive,
                        QuotedName::already_quoted(p.into.clone()),
                    )
                    .hazard(Hazard::BuildsIndex),
            ));
        }
        for idx in p
            .target
            .indexes
            .iter()
            .filter(|x| x.constraint.is_none() && x.plain)
        {
            // Read for every large table (`index_definitions`); an index dropped since is not
            // rebuilt.
            let Some(mut sql) = idx.definition.clone() else {
                continue;
            };
            let name = qualified(&p.target.schema, &idx.name);
            actions.push(Action::Sql(
                Step::new(
                    format!("drop index {name} for the load (rebuilt after it)"),
                    format!("DROP INDEX {name}"),
                )
                .lock(
                    LockMode::AccessExclusive,
                    QuotedName::already_quoted(p.into.clone()),
                ),
            ));
            if let Some(c) = &idx.comment {
                sql.push_str(&format!(
                    "; COMMENT ON INDEX {name} IS {}",
                    quote_literal(c)
                ));
            }
            rebuild.push(Action::Sql(
                Step::new(format!("rebuild index {name}"), sql)
                    .lock(
                        LockMode::AccessExclusive,
                        QuotedName::already_quoted(p.into.clone()),
                    )
                    .hazard(Hazard::BuildsIndex),
            ));
        }
    }

    // Load, parents first.
    for (n, &i) in order.iter().enumerate() {
        let p = &plans[i];
        let cols = p.column_list();
        let copy_out = copy::copy_out_sql(&p.source_select(None), p.format);
        let label = p.display.clone();
        match &p.strategy {
            Strategy::Staging if !p.ranges.is_empty() => {
                // The loading table is committed first; each range is then its own COPY on
                // its own connections, so ranges load side by side.
                let copy_in = copy::copy_in_sql(&p.load_into, &cols, p.format);
                let n = p.ranges.len();
                for (k, r) in p.ranges.iter().enumerate() {
                    let copy_out = copy::copy_out_sql(&p.source_select(Some(r)), p.format);
                    ranges.push(Action::Copy {
                        table: i,
                        what: format!("{label}, range {} of {n} ({})", k + 1, r.describe()),
                        step: Step::new(
                            format!(
                                "copy {} of {label} from the source (range {} of {n}, {:?} \
                                 COPY, on its own connections)",
                                r.describe(),
                                k + 1,
                                p.format
                            ),
                            format!("{copy_in}  -- rows from the source: {copy_out}"),
                        )
                        .lock(
                            LockMode::RowExclusive,
                            QuotedName::already_quoted(p.load_into.clone()),
                        )
                        .outside_transaction(),
                        copy_out,
                        copy_in: copy_in.clone(),
                    });
                }
            }
            Strategy::Truncate | Strategy::DeleteAll | Strategy::Staging => {
                let copy_in = copy::copy_in_sql(&p.load_into, &cols, p.format);
                actions.push(Action::Copy {
                    table: i,
                    what: label.clone(),
                    step: Step::new(
                        format!(
                            "copy the rows of {label} from the source ({:?} COPY{})",
                            p.format,
                            p.unsplit
                                .as_deref()
                                .map(|u| format!("; {u}"))
                                .unwrap_or_default()
                        ),
                        format!("{copy_in}  -- rows from the source: {copy_out}"),
                    )
                    .lock(
                        LockMode::RowExclusive,
                        QuotedName::already_quoted(p.load_into.clone()),
                    ),
                    copy_out,
                    copy_in,
                });
            }
            Strategy::Merge { update, .. } => {
                let tmp = quote_ident(&format!("pgflip_load_{n}"));
                actions.push(Action::Sql(Step::new(
                    format!("create a temporary table for the source rows of {label}"),
                    format!(
                        "CREATE TEMP TABLE {tmp} ON COMMIT DROP AS SELECT {cols} FROM {} WITH NO DATA",
                        p.into
                    ),
                )));
                let copy_in = copy::copy_in_sql(&tmp, &cols, p.format);
                actions.push(Action::Copy {
                    table: i,
                    what: label.clone(),
                    step: Step::new(
                        format!("copy the rows of {label} from the source into {tmp}"),
                        format!("{copy_in}  -- rows from the source: {copy_out}"),
                    ),
                    copy_out,
                    copy_in,
                });
                let (pk, non_key) = p.key_and_other_columns();
                let conflict = if *update {
                    on_conflict_update(&non_key)
                } else {
                    "DO NOTHING".to_string()
                };
                actions.push(Action::Sql(
                    Step::new(
                        if *update {
                            format!("insert new and update changed rows of {label}")
                        } else {
                            format!("insert the rows of {label} whose key the target lacks")
                        },
                        format!(
                            "INSERT INTO {} AS t ({cols}){} SELECT {cols} FROM {tmp} ON CONFLICT ({}) {conflict}",
                            p.into,
                            p.overriding(),
                            pk.join(", ")
                        ),
                    )
                    .lock(LockMode::RowExclusive, QuotedName::already_quoted(p.into.clone())),
                ));
            }
        }
    }

    actions.extend(rebuild);

    // Merges: check references from outside, then delete what the source lacks, children first.
    for (n, &i) in order.iter().enumerate().rev() {
        let p = &plans[i];
        let Strategy::Merge { delete, .. } = &p.strategy else {
            continue;
        };
        if *delete == MergeDelete::None {
            continue;
        }
        let tmp = quote_ident(&format!("pgflip_load_{n}"));
        let cond = match delete {
            MergeDelete::MissingWhere(f) => format!("({f}) AND "),
            _ => String::new(),
        };
        let pk_match: Vec<String> = p
            .target
            .primary_key
            .iter()
            .map(|k| format!("n.{0} = o.{0}", quote_ident(k)))
            .collect();
        let doomed = format!(
            "{cond}NOT EXISTS (SELECT 1 FROM {tmp} n WHERE {})",
            pk_match.join(" AND ")
        );
        if !opts.disable_integrity {
            for fk in &p.external_refs {
                if opts.defer_constraints && fk.on_delete == "a" {
                    continue; // deferred: checked at the end of the transaction
                }
                let sql = crate::flip::fkcheck::orphan_count_sql(
                    &fk.from,
                    &fk.from_columns,
                    &fk.to_columns,
                    &only(&p.target.kind, &p.into),
                    &doomed,
                );
                actions.push(Action::Check {
                    step: Step::new(
                        format!(
                            "check that no row of {} loses the row of {} it references",
                            fk.from, p.display
                        ),
                        sql,
                    ),
                    message: format!(
                        "{} is referenced by {} (constraint {}): {{n}} row(s) of {} reference \
                         rows of {} that the source does not have. Sync {} too, or use \
                         --defer-constraints (still checked at commit) or --disable-integrity",
                        p.display,
                        fk.from,
                        quote_ident(&fk.name),
                        fk.from,
                        p.display,
                        fk.from
                    ),
                });
            }
        }
        actions.push(Action::Sql(
            Step::new(
                format!(
                    "delete the rows of {} that the source does not have",
                    p.display
                ),
                format!(
                    "DELETE FROM {} o WHERE {doomed}",
                    only(&p.target.kind, &p.into)
                ),
            )
            .lock(
                LockMode::RowExclusive,
                QuotedName::already_quoted(p.into.clone()),
            )
            .hazard(Hazard::DeletesData),
        ));
    }

    for &i in &order {
        let p = &plans[i];
        for (seq, v, called) in &p.sequences {
            actions.push(Action::Sql(Step::new(
                format!("set the sequence of {} to the source's position", p.display),
                format!("SELECT setval({seq}, {v}, {called})"),
            )));
        }
    }
    if !deferred.is_empty() {
        let mut sql = String::from("SET CONSTRAINTS ALL IMMEDIATE");
        for fk in &deferred {
            sql.push_str(&format!(
                "; ALTER TABLE {} ALTER CONSTRAINT {} NOT DEFERRABLE",
                fk.from,
                quote_ident(&fk.name)
            ));
        }
        actions.push(Action::Sql(
            Step::new(
                "check the deferred foreign keys now and make them NOT DEFERRABLE again",
                sql,
            )
            .hazard(Hazard::Validates),
        ));
    }
    Ok(Unit {
        tables: order,
        actions,
        ranges,
        after,
        finish: finish_steps,
        shares_transaction: small,
    })
}

/// The index builds (parallel, after the copy) and constraint steps (in the final
/// transaction) that give a staging table the live table's indexes. `None` when an index
/// definition cannot be re-targeted safely: then `LIKE … INCLUDING ALL` builds them during the
/// copy instead.
fn staging_index_builds(
    p: &TablePlan,
    loading: &str,
    taken: &mut BTreeSet<String>,
) -> Option<(Vec<Step>, Vec<Step>)> {
    let live = p.target.qualified();
    let marker = format!(" ON {live} USING ");
    let mut builds = Vec::new();
    let mut finish = Vec::new();
    // Largest first (by the live table's index sizes): builds share the job slots, and the
    // longest one started last would finish alone on an idle machine.
    let mut indexes: Vec<&tables::Index> = p.target.indexes.iter().collect();
    indexes.sort_by_key(|i| std::cmp::Reverse(i.pages));
    for idx in indexes {
        let base = idx
            .constraint
            .as_ref()
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| idx.name.clone());
        let name = staging::free_name(&base, "_staging", taken);
        let kind = idx.constraint.as_ref().map(|(_, k)| k.as_str());
        if kind == Some("x") {
            finish.push(
                Step::new(
                    format!(
                        "add exclusion constraint {} to {loading}",
                        quote_ident(&name)
                    ),
                    format!(
                        "ALTER TABLE {loading} ADD CONSTRAINT {} {}",
                        quote_ident(&name),
                        idx.constraint_definition.as_deref()?
                    ),
                )
                .hazard(Hazard::BuildsIndex),
            );
            continue;
        }
        let definition = idx.definition.as_deref()?;
        let at = definition.find(&marker)?;
        let rest = &definition[at + marker.len()..];
        let unique = definition.starts_with("CREATE UNIQUE INDEX ");
        builds.push(
            Step::new(
                format!("build index {} on {loading}", quote_ident(&name)),
                format!(
                    "CREATE {}INDEX {} ON {loading} USING {rest}",
                    if unique { "UNIQUE " } else { "" },
                    quote_ident(&name)
                ),
            )
            .lock(
                LockMode::Share,
                QuotedName::already_quoted(loading.to_string()),
            )
            .hazard(Hazard::BuildsIndex)
            .outside_transaction(),
        );
        if let Some(k @ ("p" | "u")) = kind {
            let def = idx.constraint_definition.as_deref().unwrap_or_default();
            let mut opts = String::new();
            if def.contains(" DEFERRABLE") && !def.contains("NOT DEFERRABLE") {
                opts.push_str(" DEFERRABLE");
            }
            if def.contains("INITIALLY DEFERRED") {
                opts.push_str(" INITIALLY DEFERRED");
            }
            finish.push(Step::new(
                format!(
                    "make index {} the {} constraint of {loading}",
                    quote_ident(&name),
                    if k == "p" { "primary key" } else { "unique" }
                ),
                format!(
                    "ALTER TABLE {loading} ADD CONSTRAINT {n} {} USING INDEX {n}{opts}",
                    if k == "p" { "PRIMARY KEY" } else { "UNIQUE" },
                    n = quote_ident(&name)
                ),
            ));
        }
    }
    Some((builds, finish))
}

/// SQL giving the sequence of `table.column` (identity or serial, if it has one) the type and
/// options of `live.column`'s sequence. Both tables are qualified; a column without a sequence
/// on either side is left alone.
fn copy_sequence_options_sql(live: &str, table: &str, column: &str) -> String {
    format!(
        "DO $pgflip$DECLARE s record; t text; BEGIN \
         t := pg_catalog.pg_get_serial_sequence({table}, {col}); \
         SELECT pg_catalog.format_type(q.seqtypid, NULL) AS ty, q.* INTO s FROM pg_catalog.pg_sequence q \
          WHERE q.seqrelid = pg_catalog.pg_get_serial_sequence({live}, {col})::pg_catalog.regclass; \
         IF FOUND AND t IS NOT NULL THEN \
           EXECUTE format('ALTER SEQUENCE %s AS %s INCREMENT BY %s MINVALUE %s MAXVALUE %s START WITH %s RESTART WITH %s CACHE %s %sCYCLE', \
             t, s.ty, s.seqincrement, s.seqmin, s.seqmax, s.seqstart, s.seqstart, s.seqcache, \
             CASE WHEN s.seqcycle THEN '' ELSE 'NO ' END); \
         END IF; END$pgflip$",
        live = quote_literal(live),
        table = quote_literal(table),
        col = quote_literal(column),
    )
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
            into: p.into.clone(),
            rows,
            bytes,
            elapsed,
            format: p.format,
            strategy: p.strategy.name(),
            diff: p.diff.clone(),
            warnings: p.warnings.clone(),
        }
    }

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
            crate::state::ensure(&self.target.connect().await?).await?;
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

    async fn run_unit_with_retry(
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
                let t = self.target.connect().await?;
                crate::lockwait::blockers_by_name(&t, &names).await
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
    async fn run_batch(
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
            self.idle.lock().expect("not poisoned").push((src, tgt));
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
    async fn unit_failed(
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

    /// A connection pair for an in-place transaction: an idle one, or two new connections (the
    /// source one inside the snapshot).
    async fn take_pair(&self) -> Result<(Client, Client)> {
        let pooled = self.idle.lock().expect("not poisoned").pop();
        match pooled {
            Some(pair) => Ok(pair),
            None => Ok((
                open_snapshot_reader(&self.source, &self.snapshot).await?,
                self.target.connect().await?,
            )),
        }
    }

    fn progress(&self, unit: &Unit) -> BTreeMap<usize, copy::Progress> {
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
    async fn prepare_copies(
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
    async fn run_actions(
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
    fn in_place_reports(
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

    async fn run_unit(
        &self,
        unit: &Unit,
        slots: &Semaphore,
        events: &dyn EventSink,
    ) -> Result<Vec<TableReport>> {
        let t0 = Instant::now();
        let progress = self.progress(unit);
        let mut stats: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
        // Every connection of the unit is opened inside a slot and closed before the slot is
        // given back, so that pgflip holds at most `jobs` connections to each server for the
        // copies, however many tables there are (the application's connections are counted
        // against the same max_connections).
        {
            let _slot = slots.acquire().await.expect("never closed");
            // Interrupted while this unit waited for its slot: it must not begin.
            crate::conn::cancel::check()?;
            // Staging units open more connections for their ranges and index builds while
            // this pair would sit idle: only in-place units (one transaction, nothing after it)
            // keep theirs for the next unit.
            let reuse = unit.ranges.is_empty() && unit.after.is_empty() && unit.finish.is_empty();
            let (src, tgt) = if reuse {
                self.take_pair().await?
            } else {
                (
                    open_snapshot_reader(&self.source, &self.snapshot).await?,
                    self.target.connect().await?,
                )
            };
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
            if reuse {
                // The source transaction stays open: the next unit reads the same snapshot.
                self.idle.lock().expect("not poisoned").push((src, tgt));
            } else {
                let _ = src.batch_execute("COMMIT").await;
            }
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
        let tgt = if diffing {
            _slot = slots.acquire().await.expect("never closed");
            Some(self.target.connect().await?)
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
                    let diff = rowdiff::in_database(
                        tgt,
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
        Ok(reports)
    }

    /// After the unit's transaction: the range copies, then the index builds, then the
    /// finishing transaction, each on connections of its own opened in a slot. Returns what
    /// the ranges moved per table.
    async fn load_and_finish(
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
            let src = open_snapshot_reader(&self.source, &self.snapshot).await?;
            let tgt = self.target.connect().await?;
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
            let c = self.target.connect().await?;
            c.batch_execute(&step.sql)
                .await
                .ctx(step.description.clone())
        }))
        .await?;
        if !unit.finish.is_empty() {
            let _slot = slots.acquire().await.expect("never closed");
            let tgt = &self.target.connect().await?;
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
        }
        Ok(moved)
    }

    /// Drops the loading tables of a unit that failed after creating them. The failed copies'
    /// sessions may still be ending, so the lock is retried (short lock_timeout) until
    /// `max_wait`; if that fails too, the next run drops them.
    async fn drop_loading_tables(&self, unit: &Unit, slots: &Semaphore, events: &dyn EventSink) {
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
