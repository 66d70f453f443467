//! The flip: switch green relations in under the live names in one short transaction, keep the
//! retired (blue) ones for rollback, and carry over everything PostgreSQL binds by OID.
//!
//! Used by `sync --swap`, `rollback` (the same engine, run the other way), and later by
//! `migrate swap` and `green promote`.
//!
//! How it is shaped (DESIGN §5):
//! 1. [`plan_flip`] reads the catalog once ([`dependents::load`], a handful of set-based
//!    queries for all relations at once), refuses what it cannot carry over — naming the object —
//!    before any lock is taken, and renders the whole flip as a [`Plan`]: the `LOCK` steps, then
//!    the DDL, the generation record, and the steps that run after the commit (`VALIDATE
//!    CONSTRAINT`, the retired side's checksum). `--dry-run` prints this plan; execution runs
//!    the very same steps.
//! 2. [`flip`] checks the guardrails ([`guard`]), then runs the locked transaction: `BEGIN` and
//!    the timeouts; in a first round trip that makes the application wait for nothing, the
//!    generation's new schema and, when there is any, green locked, checked and given what
//!    concerns only itself (owner, grants, comments, triggers, ...); then the live relations'
//!    locks, a catalog-fingerprint check, all the DDL, the generation record and `COMMIT` as
//!    **one** query string: one round trip, so the live relations are locked only for as long
//!    as the server needs to run the moves. A lock timeout rolls back, backs off with jitter and retries up to `max_wait`,
//!    then fails naming the sessions in the way.
//!
//! The plan is rendered section by section (`render`): the locks and catalog checks
//! (`locks`), per pair the moves and what follows the table (`carry`), the dependent views
//! (`views`), the generation record and the steps after the commit (`record`); what is
//! refused or warned about before any lock is in `check`, GRANT / REVOKE rendering in
//! `acl`, the pairs of rollbacks and `sync --swap` in `pairs`.
//!
//! Choices worth knowing:
//! - Retired relations move to the generation's schema (`ALTER TABLE … SET SCHEMA`, catalog
//!   only) and keep their names; their indexes, constraints and owned sequences go with them,
//!   so green's can take the original names in the live schema.
//! - Dependent plain views that read a retired relation are re-pointed in place with `CREATE OR
//!   REPLACE VIEW` and their own definition (from `pg_get_viewdef` under `search_path = ''`):
//!   OID, owner, grants and comments stay, and views over them need nothing. Materialized views
//!   (and what reads them) are dropped and re-created in dependency order with their options,
//!   owner, grants and comments, `WITH DATA` inside the flip transaction when they were
//!   populated: their rows must come from green the moment the flip commits, so the refresh
//!   cannot happen later. This is the one part of a flip whose duration grows with data; a
//!   warning names each one (`sync --swap` and rollbacks build them beside first instead).
//! - Foreign keys of other tables are re-added `NOT VALID` inside the transaction (no scan under
//!   the lock) and validated after the commit (`SHARE UPDATE EXCLUSIVE`, does not block the
//!   application). The retired table's own foreign keys to tables outside the flip are dropped,
//!   so that the retired copy never blocks deletes in, or cascades from, live tables.
//! - Sequences: a serial sequence that green's default already uses is handed over (ownership
//!   and schema follow the live table); green's own identity / serial sequences take the live
//!   ones' names. Either way the sequence is moved forward to at least the largest value in use
//!   on both sides, so inserts after a flip (or a rollback) never collide; green's own
//!   sequences take over the live ones' grants (the application's USAGE for `nextval`).
//! - Also carried over: owner, table and column grants, comments, row-level security flags and
//!   policies, triggers (and their enabled state), replica identity, publication membership,
//!   storage parameters, column defaults green lacks. Indexes are not built under the lock: a
//!   green without one of live's indexes is refused (a rollback or migration only warns).
//! - Extended statistics ([`statistics`]): live's are retired with the table, the new live
//!   table gets the same ones under the same names (green's matching ones renamed, the others
//!   created: catalog only, filled by the next ANALYZE). A migration's green keeps its own.
//! - Pairs may be tables, partitioned tables, materialized views or views (a materialized
//!   view or a view only with its own kind: green pipelines switch a view whose new definition
//!   drops a column, together with what it reads). A partitioned table's partitions go with it: live's are retired into the
//!   generation's schema, green's take the names of live's partitions with the same bound.
//!   What binds to a single live partition by OID (a view of it, a foreign key to it) is
//!   refused.
//! - Triggers whose function lives in the `pgflip` schema are pgflip's own (migrate's capture
//!   triggers): never carried over to green, never a reason to refuse.
//! - A job may add statements to the locked transaction ([`FlipOptions::in_flip_before`], right
//!   after the locks; [`FlipOptions::in_flip_after`], before the generation record).

mod acl;
mod carry;
mod check;
pub mod dependents;
pub mod fkcheck;
pub mod generation;
pub mod guard;
mod locks;
pub mod onesided;
mod pairs;
mod record;
mod render;
pub mod statistics;
mod views;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::events::{Event, EventSink};
use crate::ident::quote_ident;
use crate::plan::{Plan, Step};

pub use crate::ident::QualifiedName;
pub use generation::Generation;
pub use pairs::{rollback_one_sided, rollback_pairs, staging_pairs};

/// One relation to switch: `green` takes `live`'s name, `live` is retired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlipPair {
    pub live: QualifiedName,
    pub green: QualifiedName,
}

/// What produced a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlipKind {
    Sync,
    Migrate,
    Green,
    Rollback,
}

impl FlipKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FlipKind::Sync => "sync",
            FlipKind::Migrate => "migrate",
            FlipKind::Green => "green",
            FlipKind::Rollback => "rollback",
        }
    }
}

/// Which row counts and checksums a flip records. Each is a full read of a relation, outside
/// any lock, but a read of a large database's tables takes long: a migration's swap should not
/// wait hours for it before it switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Checksums {
    /// Green's before the locks (its rows as they are switched in) and the retired side's after
    /// the commit.
    #[default]
    Both,
    /// The retired side's only, after the commit: the switch waits for no read of green, and
    /// `verify` can still tell whether a retired relation changed since the flip.
    Retired,
    /// None: nothing is read. `verify` can then tell only that the retired relations are there
    /// (and count their rows when asked), not that they are unchanged.
    None,
}

impl Checksums {
    pub fn as_str(self) -> &'static str {
        match self {
            Checksums::Both => "both",
            Checksums::Retired => "retired",
            Checksums::None => "none",
        }
    }

    /// The policy a flip recorded (`both` when it recorded none: every flip before this
    /// option took both).
    pub fn recorded(s: Option<&str>) -> Checksums {
        s.and_then(|s| s.parse().ok()).unwrap_or_default()
    }

    /// Whether green is read before the locks.
    pub fn reads_green(self) -> bool {
        self == Checksums::Both
    }

    /// The same policy without the read of green: for plans that are only shown, or made
    /// before green holds its rows.
    pub fn without_green(self) -> Checksums {
        match self {
            Checksums::Both => Checksums::Retired,
            other => other,
        }
    }
}

impl std::str::FromStr for Checksums {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Checksums, String> {
        match s {
            "both" => Ok(Checksums::Both),
            "retired" => Ok(Checksums::Retired),
            "none" => Ok(Checksums::None),
            _ => Err(format!("invalid checksums '{s}' (both, retired or none)")),
        }
    }
}

/// How a flip behaves.
#[derive(Debug, Clone)]
pub struct FlipOptions {
    /// `lock_timeout` of each attempt: the longest any query of the application waits
    /// behind the flip's lock requests, plus, for the step that locks the live relations,
    /// 0.25 ms a relation for the server's work of taking the locks.
    pub lock_timeout: Duration,
    /// Give up retrying after this long.
    pub max_wait: Duration,
    /// `statement_timeout` inside the flip transaction.
    pub statement_timeout: Duration,
    /// A transaction holding locks on the relations for longer than this is waited for
    /// without trying (a lock attempt would only queue behind it).
    pub old_transaction: Duration,
    /// Allow green's structure (columns, indexes) to differ from live's: migrations and
    /// rollbacks. Columns that dependents use must still match; live's indexes that green
    /// lacks are reported as warnings instead of refused.
    pub allow_column_changes: bool,
    /// The generation being rolled back (rollback only).
    pub rollback_of: Option<i64>,
    /// Which row counts and checksums the generation records ([`Checksums`]).
    pub checksums: Checksums,
    /// SQL run inside the flip transaction right after the locks are taken (and the catalog
    /// check), before any relation moves: a job's last checks and the removal of what it
    /// installed on the live relations (migrate's capture triggers). An error aborts the flip.
    pub in_flip_before: Vec<String>,
    /// SQL run inside the flip transaction after the moves and the re-pointing, before the
    /// generation is recorded. A JSON object it puts in `pgflip.generation_details` (`SET
    /// LOCAL`) is merged into the generation's details (a migration's schema step, which its
    /// rollback undoes).
    pub in_flip_after: Vec<String>,
    /// Live tables retired with nothing in their place ([`onesided`]): a migration's target
    /// tables the source lacks; a rollback of tables a flip brought in alone.
    pub retire_only: Vec<QualifiedName>,
    /// Tables brought in under a name nothing holds (`green` becomes `live`): a migration's
    /// new tables; a rollback of tables a flip retired alone.
    pub bring_in_only: Vec<FlipPair>,
    /// Dependent views and materialized views the job re-creates itself, in
    /// `in_flip_after`, from a schema step (a rollback of a migration gives them back their
    /// old definitions): the flip drops them with the other dependents but neither checks the
    /// columns they use nor re-creates them.
    pub job_views: Vec<QualifiedName>,
    /// `(live schema, green's schema)`: instead of two `SET SCHEMA` per relation, the live
    /// schema is renamed to the generation's schema and green's schema to the live one's name
    /// (a migration whose live schema holds only the relations it replaces or retires, and whose
    /// green schema only their new versions: the job checks both, before and under the locks).
    /// The flip leaves out the moves the renames make; the rest follows the relations as usual.
    pub schema_swap: Option<(String, String)>,
    /// Let `pg_stat_statements` record the flip's own statements. Off by default, where the
    /// server has the extension and the role may set `pg_stat_statements.track_utility` (a
    /// superuser, or from 15 on a role granted SET on it): each of the flip's one-off DDL
    /// statements would be a new entry, its text written to the extension's file while the
    /// application waits on the locks (2–4 ms of the locked transaction at 50 tables), and
    /// hundreds of them per flip would push the application's own statements out.
    pub track_statements: bool,
}

impl Default for FlipOptions {
    fn default() -> Self {
        FlipOptions {
            lock_timeout: Duration::from_millis(100),
            max_wait: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(30),
            old_transaction: Duration::from_secs(3),
            allow_column_changes: false,
            rollback_of: None,
            checksums: Checksums::Both,
            in_flip_before: Vec::new(),
            in_flip_after: Vec::new(),
            retire_only: Vec::new(),
            bring_in_only: Vec::new(),
            job_views: Vec::new(),
            schema_swap: None,
            track_statements: false,
        }
    }
}

/// One relation of a planned flip.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedRelation {
    pub live: QualifiedName,
    pub green: QualifiedName,
    pub retired: QualifiedName,
    #[serde(skip)]
    pub live_oid: u32,
    #[serde(skip)]
    pub green_oid: u32,
    pub green_rows: Option<i64>,
    pub green_checksum: Option<String>,
    /// How green's rows (now) and the retired side's (after the commit) are hashed.
    pub checksum_method: generation::ChecksumMethod,
}

/// A flip, fully planned: what `--dry-run` prints and what [`execute`] runs.
#[derive(Debug, Clone, Serialize)]
pub struct FlipPlan {
    pub plan: Plan,
    pub kind: FlipKind,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub backup_schema: String,
    pub relations: Vec<PlannedRelation>,
    pub warnings: Vec<String>,
    /// Relations locked before the DDL, in lock order.
    #[serde(skip)]
    pub lock_oids: Vec<u32>,
    /// Relations whose granted locks are reported when an attempt times out.
    #[serde(skip)]
    pub watched_oids: Vec<u32>,
    #[serde(skip)]
    pub green_oids: Vec<u32>,
    #[serde(skip)]
    pub fingerprint: String,
    #[serde(skip)]
    pub fingerprint_oids: Vec<u32>,
    /// Number of steps that prepare green before the live relations are locked (0: none).
    #[serde(skip)]
    pub prep_end: usize,
    /// Number of steps up to the catalog check: the locks are held after them.
    #[serde(skip)]
    pub locks_end: usize,
}

/// The result of a flip.
#[derive(Debug, Clone, Serialize)]
pub struct FlipOutcome {
    pub generation: Generation,
    pub attempts: u32,
    /// Time from sending the locked transaction to its commit (what readers may wait).
    pub locked_ms: f64,
    /// When the successful locked transaction was sent (for latency accounting).
    #[serde(skip)]
    pub locked_at: Option<std::time::Instant>,
    pub warnings: Vec<String>,
}

/// SQLSTATE pgflip raises inside the flip transaction when the catalog changed since planning.
pub const CATALOG_CHANGED: &str = "PF001";

/// Builds a flip plan. Reads the catalog (and, with `opts.checksums`, green's rows); changes
/// nothing.
pub async fn plan_flip(
    client: &Client,
    pairs: &[FlipPair],
    kind: FlipKind,
    opts: &FlipOptions,
) -> Result<FlipPlan> {
    plan(client, pairs, kind, opts, true).await
}

/// Plans a flip whose green relations do not hold their rows yet: for a dry run that shows the
/// flip a load will end with. The checks that read rows (orphaned foreign keys, checksums) are
/// left out; the real flip makes them. Runs inside the caller's open transaction, so that
/// green relations it created (and will roll back) are seen.
pub async fn plan_flip_before_load(
    client: &Client,
    pairs: &[FlipPair],
    kind: FlipKind,
    opts: &FlipOptions,
) -> Result<FlipPlan> {
    let opts = FlipOptions {
        checksums: opts.checksums.without_green(),
        ..opts.clone()
    };
    plan(client, pairs, kind, &opts, false).await
}

async fn plan(
    client: &Client,
    pairs: &[FlipPair],
    kind: FlipKind,
    opts: &FlipOptions,
    row_checks: bool,
) -> Result<FlipPlan> {
    if pairs.is_empty() && opts.retire_only.is_empty() && opts.bring_in_only.is_empty() {
        return Err(Error::InvalidInput("nothing to flip".into()));
    }
    let mut seen = BTreeSet::new();
    for p in pairs {
        if p.live == p.green {
            return Err(Error::InvalidInput(format!(
                "{} cannot be flipped with itself",
                p.live
            )));
        }
        for n in [&p.live, &p.green] {
            if !seen.insert(n.clone()) {
                return Err(Error::InvalidInput(format!(
                    "{n} appears more than once in the flip"
                )));
            }
        }
    }
    let mut names: Vec<(String, String)> = Vec::new();
    for p in pairs {
        names.push((p.live.schema.clone(), p.live.name.clone()));
        names.push((p.green.schema.clone(), p.green.name.clone()));
        // What green's rename would collide with, in green's schema.
        names.push((p.green.schema.clone(), p.live.name.clone()));
    }
    let oids = dependents::resolve(client, &names).await?;
    let mut live_oids = Vec::new();
    let mut green_oids = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let (l, g, clash) = (oids[3 * i], oids[3 * i + 1], oids[3 * i + 2]);
        if l == 0 {
            return Err(Error::InvalidInput(format!(
                "live table {} does not exist",
                p.live
            )));
        }
        if g == 0 {
            return Err(Error::InvalidInput(format!(
                "green table {} does not exist (nothing to swap into {})",
                p.green, p.live
            )));
        }
        if p.green.schema != p.live.schema && clash != 0 && clash != g {
            return Err(Error::Refused(
                format!(
                    "cannot bring {} in as {}: schema {} already has a relation named {}",
                    p.green,
                    p.live,
                    quote_ident(&p.green.schema),
                    quote_ident(&p.live.name)
                )
                .into(),
            ));
        }
        live_oids.push(l);
        green_oids.push(g);
    }
    let one = onesided::resolve(client, &opts.retire_only, &opts.bring_in_only, &live_oids).await?;
    // Without the row checks, green is planned before its load, inside the caller's
    // transaction (see `plan_flip_before_load`).
    let mut inv = if row_checks {
        dependents::load(client, &live_oids, &green_oids).await?
    } else {
        dependents::load_in_transaction(client, &live_oids, &green_oids).await?
    };
    // A one-sided materialized view or view that reads a pair (a green pipeline's new relation,
    // and its rollback) moves by itself: it is not a dependent to re-create.
    let one_oids: BTreeSet<u32> = one.oids().collect();
    inv.moved_alone = inv
        .views
        .iter()
        .map(|v| v.rel.oid)
        .filter(|o| one_oids.contains(o))
        .collect();
    inv.views.retain(|v| !one_oids.contains(&v.rel.oid));
    let created_at = Utc::now();
    let backup_schema = crate::ident::backup_schema(created_at);
    let label = backup_schema
        .trim_start_matches("pgflip_backup_")
        .to_string();

    let mut both = Vec::new();
    let mut groups = Vec::new();
    for (i, (&l, &g)) in live_oids.iter().zip(&green_oids).enumerate() {
        both.extend([l, g]);
        groups.extend([i as i32, i as i32]);
    }
    let methods = generation::checksum_methods(client, &both, &groups).await?;
    let mut relations = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        relations.push(PlannedRelation {
            live: p.live.clone(),
            green: p.green.clone(),
            retired: QualifiedName::new(backup_schema.clone(), p.live.name.clone()),
            live_oid: live_oids[i],
            green_oid: green_oids[i],
            green_rows: None,
            green_checksum: None,
            checksum_method: methods[i],
        });
    }
    let warnings = check::check(&inv, &relations, opts)?;
    if row_checks {
        refuse_orphans(client, &relations, &one).await?;
    }
    if opts.checksums.reads_green() {
        for r in relations.iter_mut() {
            let (rows, sum) =
                generation::checksum(client, &r.green.quoted(), r.checksum_method).await?;
            r.green_rows = Some(rows);
            r.green_checksum = Some(sum);
        }
    }
    let ctx = render::Ctx::new(&inv, &one, &relations, kind, opts, &label, &backup_schema);
    Ok(render::render(&ctx, created_at, warnings))
}

/// Rows of tables outside the flip must keep the rows they reference (checked before any lock:
/// their foreign keys are only validated after the commit).
async fn refuse_orphans(
    client: &Client,
    relations: &[PlannedRelation],
    one: &onesided::OneSided,
) -> Result<()> {
    let names: Vec<(String, String)> = relations
        .iter()
        .map(|r| (r.live.sql(), r.green.sql()))
        .collect();
    let replaced: Vec<fkcheck::Replaced> = relations
        .iter()
        .zip(&names)
        .map(|(r, (live, green))| fkcheck::Replaced {
            live_oid: r.live_oid,
            live,
            green_oid: r.green_oid,
            green,
        })
        .collect();
    // Tables retired alone leave with the flip: their rows reference nothing live afterwards.
    let flipped: BTreeSet<u32> = relations
        .iter()
        .flat_map(|r| [r.live_oid, r.green_oid])
        .chain(one.oids())
        .collect();
    fkcheck::refuse_orphans(client, &replaced, &flipped).await
}

/// Plans and executes a flip. The caller holds the target lock ([`crate::state::TargetLock`]).
/// Creates the pgflip state schema when it is missing (once the plan is accepted).
pub async fn flip(
    client: &Client,
    pairs: &[FlipPair],
    kind: FlipKind,
    opts: &FlipOptions,
    events: &dyn EventSink,
) -> Result<FlipOutcome> {
    // Materialized views that read a swapped table are built beside first (green's pipeline
    // machinery), so that the locked transaction only switches them (issue #11).
    let beside = match kind {
        FlipKind::Sync | FlipKind::Rollback => {
            // The job's own views are dropped and re-created by the job: nothing to build.
            let leaving: Vec<QualifiedName> = opts
                .retire_only
                .iter()
                .chain(&opts.job_views)
                .cloned()
                .collect();
            crate::green::beside::build(client, pairs, &leaving, events).await?
        }
        _ => None,
    };
    let Some(b) = beside else {
        return flip_planned(client, pairs, kind, opts, events).await;
    };
    let mut all = pairs.to_vec();
    all.extend(b.pairs.iter().cloned());
    let mut o = opts.clone();
    o.in_flip_after.push(b.in_flip_after.clone());
    let r = flip_planned(client, &all, kind, &o, events).await;
    if r.is_err() {
        let _ = crate::green::beside::discard(client, &b).await;
    }
    r
}

async fn flip_planned(
    client: &Client,
    pairs: &[FlipPair],
    kind: FlipKind,
    opts: &FlipOptions,
    events: &dyn EventSink,
) -> Result<FlipOutcome> {
    let mut replans = 0;
    loop {
        // Plan (and refuse) before writing anything, even pgflip's own state.
        let fp = plan_flip(client, pairs, kind, opts).await?;
        crate::state::ensure(client).await?;
        match execute(client, &fp, opts, events).await {
            Err(e) if e.sqlstate() == Some(CATALOG_CHANGED) && replans < 3 => {
                replans += 1;
                events.emit(Event::Warning {
                    message: "the catalog changed while the flip was prepared; planning again"
                        .into(),
                });
            }
            other => return other,
        }
    }
}

/// The failpoints of a flip ([`crate::failpoint`]): `flip.*`, or `rollback.*` for a rollback.
struct Points {
    /// Planned, guardrails not yet checked, nothing locked.
    before_lock: &'static str,
    /// Inside the transaction: the locks held, the catalog checked, nothing moved.
    locked: &'static str,
    /// Committed; validation and the retired side's checksum not yet done.
    after_commit: &'static str,
}

impl Points {
    fn of(kind: FlipKind) -> Points {
        match kind {
            FlipKind::Rollback => Points {
                before_lock: "rollback.before_lock",
                locked: "rollback.locked",
                after_commit: "rollback.after_commit",
            },
            _ => Points {
                before_lock: "flip.before_lock",
                locked: "flip.locked",
                after_commit: "flip.after_commit",
            },
        }
    }
}

/// Executes a planned flip: guardrails, the locked transaction (with retries), then the
/// after-commit steps.
pub async fn execute(
    client: &Client,
    fp: &FlipPlan,
    opts: &FlipOptions,
    events: &dyn EventSink,
) -> Result<FlipOutcome> {
    events.emit(Event::PhaseStarted {
        phase: "flip".into(),
    });
    let started = std::time::Instant::now();
    for w in &fp.warnings {
        events.emit(Event::Warning { message: w.clone() });
    }
    let points = Points::of(fp.kind);
    let join = |steps: &[Step]| {
        let mut body = String::new();
        for s in steps.iter().filter(|s| s.transaction.is_some()) {
            body.push_str(s.sql.trim_end().trim_end_matches(';'));
            body.push_str(";\n");
        }
        body
    };
    let prep = join(&fp.plan.steps[..fp.prep_end]);
    let locks = join(&fp.plan.steps[fp.prep_end..fp.locks_end]);
    let rest = join(&fp.plan.steps[fp.locks_end..]);
    let after: Vec<&Step> = fp
        .plan
        .steps
        .iter()
        .filter(|s| s.transaction.is_none())
        .collect();
    crate::failpoint::hit(points.before_lock).await?;
    let stats = guard::run_locked(
        client,
        fp,
        guard::Batches {
            prep: &prep,
            locks: &locks,
            rest: &rest,
        },
        points.locked,
        opts,
        events,
    )
    .await?;
    crate::failpoint::hit(points.after_commit).await?;
    let warnings = fp.warnings.clone();
    // After the commit: validation and the retired side's checksum. A failure here cannot undo
    // the flip: every step is still tried, the failures are recorded with the generation (so
    // that `verify` names them), and the run fails.
    let exec = crate::plan::ExecOptions {
        lock_timeout: opts.lock_timeout,
        statement_timeout: None,
        max_wait: opts.max_wait,
        after_unit: None,
    };
    let mut failed = Vec::new();
    for s in after {
        let mut post = Plan::new("after the flip");
        post.push((*s).clone());
        if let Err(e) = post.execute(client, &exec, events).await {
            failed.push(format!("{}: {e}", s.description));
        }
    }
    if !failed.is_empty() {
        generation::record_after_commit_failures(client, &fp.label, &failed).await?;
        return Err(Error::AfterCommit {
            generation: fp.label.clone(),
            failed: format!("a step after it failed: {}", failed.join("; ")),
        });
    }
    let generation = generation::find(client, Some(&fp.label)).await?;
    events.emit(Event::PhaseFinished {
        phase: "flip".into(),
        elapsed: started.elapsed(),
    });
    Ok(FlipOutcome {
        generation,
        attempts: stats.attempts,
        locked_ms: stats.locked.as_secs_f64() * 1000.0,
        locked_at: Some(stats.started),
        warnings,
    })
}
