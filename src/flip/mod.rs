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
//! 2. [`flip`] checks the guardrails ([`guard`]), then sends `BEGIN`, the timeouts, the locks,
//!    a catalog-fingerprint check, all the DDL, the generation record and `COMMIT` as **one**
//!    query string: one round trip, so the locks are held only for as long as the server needs
//!    to run catalog changes. A lock timeout rolls back, backs off with jitter and retries up
//!    to `max_wait`, then fails naming the sessions in the way.
//!
//! Choices worth knowing:
//! - Retired relations move to the generation's schema (`ALTER TABLE … SET SCHEMA`, catalog
//!   only) and keep their names; their indexes, constraints and owned sequences go with them,
//!   so green's can take the original names in the live schema.
//! - Dependent views are dropped and re-created (from `pg_get_viewdef` under `search_path = ''`)
//!   in dependency order with their options, owner, grants and comments. Materialized views are
//!   re-created `WITH DATA` inside the flip transaction when they were populated: their rows must
//!   come from green the moment the flip commits, so the refresh cannot happen later. This is
//!   the one part of a flip whose duration grows with data; a warning names each one.
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

pub mod dependents;
pub mod fkcheck;
pub mod generation;
pub mod guard;
pub mod onesided;
pub mod statistics;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Error, Problem, Refusal, Result};
use crate::events::{Event, EventSink};
use crate::ident::{qualified, quote_ident, quote_literal};
use crate::plan::{Hazard, LockMode, Plan, Step};

use dependents::{AclItem, Inventory, Rel};
pub use generation::Generation;

/// A schema-qualified relation name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> QualifiedName {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The quoted SQL form.
    pub fn sql(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql())
    }
}

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

/// How a flip behaves.
#[derive(Debug, Clone)]
pub struct FlipOptions {
    /// `lock_timeout` of each attempt: the longest any query of the application waits
    /// behind the flip's lock requests.
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
    /// Compute green's row count and checksum before the flip (a full read of green).
    pub checksums: bool,
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
            checksums: true,
            in_flip_before: Vec::new(),
            in_flip_after: Vec::new(),
            retire_only: Vec::new(),
            bring_in_only: Vec::new(),
            job_views: Vec::new(),
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

fn mode_of(rel: &Rel) -> &'static str {
    match rel.relkind.as_str() {
        "m" => "MATERIALIZED VIEW",
        "v" => "VIEW",
        _ => "TABLE",
    }
}

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
        checksums: false,
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
    let warnings = check(&inv, &relations, opts)?;
    if row_checks {
        refuse_orphans(client, &relations, &one).await?;
    }
    if opts.checksums {
        for r in relations.iter_mut() {
            let (rows, sum) =
                generation::checksum(client, &r.green.sql(), r.checksum_method).await?;
            r.green_rows = Some(rows);
            r.green_checksum = Some(sum);
        }
    }
    Ok(render(
        &inv,
        &one,
        relations,
        kind,
        opts,
        created_at,
        label,
        backup_schema,
        warnings,
    ))
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

/// Whether live's serial sequence `s` is handed over to green's column: green's default uses
/// it already, or green has no default and gets live's (which uses it).
fn takes_over_sequence(
    live_col: Option<&dependents::Column>,
    green_col: &dependents::Column,
    s: &dependents::OwnedSeq,
) -> bool {
    !s.identity
        && (green_col.default_seqs.contains(&s.seq)
            || (green_col.default_expr.is_none()
                && green_col.identity.is_empty()
                && live_col.is_some_and(|l| l.default_seqs.contains(&s.seq))))
}

/// Refusals (before any lock) and warnings.
fn check(inv: &Inventory, rels: &[PlannedRelation], opts: &FlipOptions) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for r in rels {
        for (side, oid, name) in [
            ("live", r.live_oid, &r.live),
            ("green", r.green_oid, &r.green),
        ] {
            let rel = &inv.rels[&oid];
            if !matches!(rel.relkind.as_str(), "r" | "p" | "m" | "v") {
                problems.push(Problem::new(name.to_string(), format!(
                    "{side} relation {name} is not a table, partitioned table, materialized view or view (relkind '{}')",
                    rel.relkind
                )));
            }
            if rel.partition_or_inherited {
                problems.push(Problem::new(name.to_string(), format!(
                    "{side} table {name} is a partition or part of an inheritance tree (flip its partitioned table instead)"
                )));
            }
        }
        let (lk, gk) = (
            inv.rels[&r.live_oid].relkind.as_str(),
            inv.rels[&r.green_oid].relkind.as_str(),
        );
        if (lk == "m") != (gk == "m") || (lk == "v") != (gk == "v") {
            problems.push(Problem::new(r.live.to_string(), format!(
                "live {} and green {} are not the same kind of relation (relkind '{lk}' and '{gk}')",
                r.live, r.green
            )));
        }
        let live_cols: Vec<_> = inv.columns_of(r.live_oid).collect();
        let green_cols: Vec<_> = inv.columns_of(r.green_oid).collect();
        let find = |n: &str| green_cols.iter().find(|c| c.name == n);
        for u in inv
            .used_columns
            .iter()
            .filter(|u| u.rel == r.live_oid && !job_view(inv, opts, u.view))
        {
            let lc = live_cols.iter().find(|c| c.name == u.column);
            match (lc, find(&u.column)) {
                (Some(_), None) => problems.push(Problem::new(
                    u.user.clone(),
                    format!(
                        "{} uses column {} of {}, which green {} does not have",
                        u.user,
                        quote_ident(&u.column),
                        r.live,
                        r.green
                    ),
                )),
                (Some(l), Some(g)) if l.typ != g.typ || l.collation != g.collation => problems
                    .push(Problem::new(
                        u.user.clone(),
                        format!(
                            "{} uses column {} of {} ({}), which is {} in green {}",
                            u.user,
                            quote_ident(&u.column),
                            r.live,
                            l.typ,
                            g.typ,
                            r.green
                        ),
                    )),
                _ => {}
            }
        }
        // Indexes cannot be carried over cheaply: building one under the flip's lock would
        // block the application for the whole build. Green must have them already.
        let green_idx: Vec<_> = inv.indexes_of(r.green_oid).collect();
        for li in inv.indexes_of(r.live_oid) {
            let shape = index_shape(&li.def, &li.name);
            if !green_idx
                .iter()
                .any(|gi| index_shape(&gi.def, &gi.name) == shape)
            {
                let msg = format!(
                    "green {} lacks index {} of {} ({})",
                    r.green,
                    quote_ident(&li.name),
                    r.live,
                    li.def
                );
                if opts.allow_column_changes {
                    // A migration or a rollback: the structures may differ on purpose.
                    warnings.push(format!("{msg}; it stays with the retired table"));
                } else {
                    problems.push(Problem::new(
                        r.green.to_string(),
                        format!(
                        "{msg}; build it on green first (CREATE INDEX CONCURRENTLY): building it \
                         under the flip's lock would block the application"
                    ),
                    ));
                }
            }
        }
        if !opts.allow_column_changes {
            let shape = |c: &dependents::Column| {
                format!(
                    "{} {}{}{}{}",
                    quote_ident(&c.name),
                    c.typ,
                    c.collation
                        .as_ref()
                        .map(|x| format!(" COLLATE {x}"))
                        .unwrap_or_default(),
                    match c.identity.as_str() {
                        "a" => " GENERATED ALWAYS AS IDENTITY",
                        "d" => " GENERATED BY DEFAULT AS IDENTITY",
                        _ => "",
                    },
                    if c.generated == "s" { " GENERATED" } else { "" }
                )
            };
            let l: Vec<String> = live_cols.iter().map(|c| shape(c)).collect();
            let g: Vec<String> = green_cols.iter().map(|c| shape(c)).collect();
            if l != g {
                problems.push(Problem::new(
                    r.green.to_string(),
                    format!(
                    "green {} does not have the columns of live {}: live has ({}), green has ({})",
                    r.green,
                    r.live,
                    l.join(", "),
                    g.join(", ")
                ),
                ));
            }
        }
        for s in inv.sequences_of(r.live_oid) {
            let green_col = green_cols.iter().find(|c| c.name == s.column);
            let live_col = live_cols.iter().find(|c| c.name == s.column);
            let handled = match green_col {
                Some(gc) => {
                    takes_over_sequence(live_col.copied(), gc, s)
                        || inv
                            .sequences_of(r.green_oid)
                            .any(|gs| gs.column == s.column)
                }
                None => false,
            };
            if !handled {
                warnings.push(format!(
                    "sequence {} of {}.{} has no counterpart on green {}; it stays with the retired table",
                    qualified(&s.schema, &s.name),
                    r.live,
                    quote_ident(&s.column),
                    r.green
                ));
            }
        }
    }
    for u in &inv.unhandled {
        problems.push(Problem::new(
            u.object.clone(),
            format!("cannot carry over {}{}", u.object, u.why),
        ));
    }
    for v in inv.views.iter().filter(|v| !job_view(inv, opts, v.rel.oid)) {
        if v.rel.relkind == "m" && v.rel.populated {
            warnings.push(format!(
                "materialized view {} is re-created WITH DATA inside the flip: the application waits for its query",
                qualified(&v.rel.schema, &v.rel.name)
            ));
        }
    }
    if problems.is_empty() {
        Ok(warnings)
    } else {
        Err(Error::Refused(Refusal::new(
            "the flip cannot carry everything over (nothing was changed)",
            problems,
        )))
    }
}

/// `oid` is a dependent view that the job re-creates itself ([`FlipOptions::job_views`]).
fn job_view(inv: &dependents::Inventory, opts: &FlipOptions, oid: u32) -> bool {
    oid != 0
        && inv.views.iter().any(|v| {
            v.rel.oid == oid
                && opts
                    .job_views
                    .iter()
                    .any(|q| q.schema == v.rel.schema && q.name == v.rel.name)
        })
}

fn role_sql(r: &str) -> String {
    if r == "PUBLIC" {
        "PUBLIC".into()
    } else {
        quote_ident(r)
    }
}

fn literal_or_null(v: &Option<String>) -> String {
    v.as_deref()
        .map(quote_literal)
        .unwrap_or_else(|| "NULL".into())
}

/// GRANT / REVOKE statements that give `target` (currently `current` ACL, owned by `owner`)
/// exactly the ACL `wanted`.
fn acl_sql(
    object_kind: &str,
    target: &str,
    owner: &str,
    current: &Option<Vec<AclItem>>,
    wanted: &Option<Vec<AclItem>>,
) -> Vec<String> {
    if current == wanted {
        return Vec::new();
    }
    let mut revoke: BTreeSet<String> = BTreeSet::new();
    revoke.insert("PUBLIC".into());
    revoke.insert(owner.to_string());
    for a in current.iter().flatten() {
        revoke.insert(a.grantee.clone());
    }
    let mut out = vec![format!(
        "REVOKE ALL ON {object_kind} {target} FROM {}",
        revoke
            .iter()
            .map(|r| role_sql(r))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    match wanted {
        None => out.push(format!(
            "GRANT ALL ON {object_kind} {target} TO {}",
            role_sql(owner)
        )),
        Some(items) => {
            let mut by: BTreeMap<(String, bool), Vec<String>> = BTreeMap::new();
            for a in items {
                by.entry((a.grantee.clone(), a.grantable))
                    .or_default()
                    .push(a.privilege.clone());
            }
            for ((grantee, grantable), privs) in by {
                out.push(format!(
                    "GRANT {} ON {object_kind} {target} TO {}{}",
                    privs.join(", "),
                    role_sql(&grantee),
                    if grantable { " WITH GRANT OPTION" } else { "" }
                ));
            }
        }
    }
    out
}

fn column_acl_sql(
    target: &str,
    column: &str,
    current: &[AclItem],
    wanted: &[AclItem],
) -> Vec<String> {
    if current == wanted {
        return Vec::new();
    }
    let mut out = Vec::new();
    let revoke: BTreeSet<&str> = current.iter().map(|a| a.grantee.as_str()).collect();
    if !revoke.is_empty() {
        out.push(format!(
            "REVOKE ALL ({}) ON TABLE {target} FROM {}",
            quote_ident(column),
            revoke
                .iter()
                .map(|r| role_sql(r))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for a in wanted {
        out.push(format!(
            "GRANT {} ({}) ON TABLE {target} TO {}{}",
            a.privilege,
            quote_ident(column),
            role_sql(&a.grantee),
            if a.grantable {
                " WITH GRANT OPTION"
            } else {
                ""
            }
        ));
    }
    out
}

/// `CREATE UNIQUE INDEX name ON schema.t USING btree (id)` without its name and table, to
/// match green's indexes with live's.
fn index_shape(def: &str, name: &str) -> String {
    let marker = format!("INDEX {} ON ", quote_ident(name));
    match def.find(&marker) {
        Some(i) => {
            let rest = &def[i + marker.len()..];
            let after_table = rest.find(" USING ").map(|j| &rest[j..]).unwrap_or(rest);
            format!("{}INDEX{}", &def[..i], after_table)
        }
        None => def.to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
fn render(
    inv: &Inventory,
    one: &onesided::OneSided,
    relations: Vec<PlannedRelation>,
    kind: FlipKind,
    opts: &FlipOptions,
    created_at: DateTime<Utc>,
    label: String,
    backup_schema: String,
    mut warnings: Vec<String>,
) -> FlipPlan {
    let mut plan = Plan::new(format!(
        "flip {} relation(s) ({}), generation {label}",
        relations.len(),
        kind.as_str()
    ));
    let bk = quote_ident(&backup_schema);
    let live_set: BTreeSet<u32> = relations.iter().map(|r| r.live_oid).collect();
    let green_set: BTreeSet<u32> = relations.iter().map(|r| r.green_oid).collect();
    // One-sided tables count as flipped: keys between them and the pairs stay as they are.
    let flipped: BTreeSet<u32> = live_set
        .union(&green_set)
        .copied()
        .chain(one.oids())
        .collect();
    let name_of = |oid: u32| {
        inv.rels
            .get(&oid)
            .map(|r| qualified(&r.schema, &r.name))
            .or_else(|| one.name_of(oid))
            .unwrap_or_else(|| format!("relation {oid}"))
    };

    // ---- Locks: dependent views first (the application locks a view before the tables under
    // it, so taking them in that order cannot deadlock with it), then every table by OID.
    let mut lock_oids = Vec::new();
    let mut views_desc: Vec<&dependents::View> = inv.views.iter().collect();
    views_desc.sort_by_key(|v| (std::cmp::Reverse(v.depth), v.rel.oid));
    // (Materialized views cannot be named in LOCK TABLE, and a query of one never reaches the
    // tables under it, so their DROP takes their lock in order.)
    for v in views_desc.iter().filter(|v| v.rel.relkind == "v") {
        let q = qualified(&v.rel.schema, &v.rel.name);
        plan.push(
            Step::new(
                format!(
                    "lock {} {q} (it reads a flipped table and is re-created)",
                    mode_of(&v.rel).to_lowercase()
                ),
                format!("LOCK TABLE {q} IN ACCESS EXCLUSIVE MODE"),
            )
            .lock(LockMode::AccessExclusive, q.clone()),
        );
        lock_oids.push(v.rel.oid);
    }
    // Tables: flipped ones and holders of inbound foreign keys need ACCESS EXCLUSIVE; tables
    // that flipped ones reference need SHARE ROW EXCLUSIVE (their FK triggers change).
    let mut table_modes: BTreeMap<u32, LockMode> = BTreeMap::new();
    for &o in &flipped {
        table_modes.insert(o, LockMode::AccessExclusive);
    }
    for c in inv.inbound_fks(&live_set) {
        table_modes.insert(c.rel, LockMode::AccessExclusive);
    }
    for c in inv.constraints.iter().filter(|c| c.contype == "f") {
        if flipped.contains(&c.rel) && !flipped.contains(&c.ref_rel) {
            table_modes
                .entry(c.ref_rel)
                .or_insert(LockMode::ShareRowExclusive);
        }
    }
    for (&oid, &mode) in &table_modes {
        if inv.rels.get(&oid).is_some_and(|r| r.relkind == "m") || one.is_matview(oid) {
            // A flipped materialized view: LOCK TABLE cannot name one; its ALTER below takes
            // the ACCESS EXCLUSIVE lock, in plan order.
            continue;
        }
        let q = name_of(oid);
        let why = if live_set.contains(&oid) {
            "live, retired by the flip"
        } else if green_set.contains(&oid) {
            "green, brought in by the flip"
        } else if mode == LockMode::AccessExclusive {
            "its foreign key to a flipped table is re-pointed"
        } else {
            "a flipped table references it"
        };
        plan.push(
            Step::new(
                format!("lock {q} ({why})"),
                format!("LOCK TABLE {q} IN {} MODE", mode.as_sql()),
            )
            .lock(mode, q.clone()),
        );
        lock_oids.push(oid);
    }

    let fingerprint_oids = dependents::fingerprint_oids(inv);
    plan.push(Step::new(
        "check that the catalog did not change since the plan was made",
        format!(
            "DO $pgflip$ BEGIN IF ({}) IS DISTINCT FROM {} THEN RAISE EXCEPTION 'pgflip: the tables or their dependents changed while the flip was being prepared' USING ERRCODE = '{CATALOG_CHANGED}'; END IF; END $pgflip$",
            dependents::FINGERPRINT_SQL.replace("{oids}", &dependents::oid_array_literal(&fingerprint_oids)),
            quote_literal(&inv.fingerprint)
        ),
    ));
    // Fault tests stop a flip here, the locks held and nothing moved yet.
    let locks_end = plan.steps.len();
    for sql in &opts.in_flip_before {
        plan.push(Step::new(
            "the job's statement before the moves (under the flip's locks)",
            sql.clone(),
        ));
    }
    plan.push(Step::new(
        format!("create the generation's schema {backup_schema}"),
        format!(
            "CREATE SCHEMA {bk}; COMMENT ON SCHEMA {bk} IS {}",
            quote_literal(&format!(
                "pgflip generation {label}: relations retired by a {} flip",
                kind.as_str()
            ))
        ),
    ));

    // ---- Drop what is re-created: dependent views (deepest first) and inbound FKs.
    for v in &views_desc {
        let q = qualified(&v.rel.schema, &v.rel.name);
        plan.push(
            Step::new(
                format!(
                    "drop {} {q} (re-created over the new table below)",
                    mode_of(&v.rel).to_lowercase()
                ),
                format!("DROP {} {q}", mode_of(&v.rel)),
            )
            .lock(LockMode::AccessExclusive, q.clone()),
        );
    }
    // A table retired alone keeps its keys: it and what it references leave together.
    let retired_alone: BTreeSet<u32> = one.retire.iter().map(|(_, o)| *o).collect();
    let inbound: Vec<&dependents::Constraint> = inv
        .inbound_fks(&live_set)
        .filter(|c| !retired_alone.contains(&c.rel))
        .collect();
    for c in &inbound {
        let t = name_of(c.rel);
        plan.push(
            Step::new(
                format!(
                    "detach foreign key {} of {t} from the table being retired",
                    quote_ident(&c.name)
                ),
                format!("ALTER TABLE {t} DROP CONSTRAINT {}", quote_ident(&c.name)),
            )
            .lock(LockMode::AccessExclusive, t.clone()),
        );
    }

    let mut validate_later: Vec<(String, String)> = Vec::new();

    // ---- Per pair: retire live, bring green in, carry over what belongs to the table.
    for r in &relations {
        let l = &inv.rels[&r.live_oid];
        let g = &inv.rels[&r.green_oid];
        let live_q = r.live.sql();
        let retired_q = r.retired.sql();
        // `ALTER TABLE` also takes partitioned tables; materialized views need their keyword.
        let (lkw, gkw) = (mode_of(l), mode_of(g));
        let is_mv = l.relkind == "m";
        // A migration brings a new version with its own names, comments, triggers, policies,
        // storage parameters and replica identity (the job sets them, from the source's
        // schema); a rollback brings back a retired copy that kept its own. Only what access
        // depends on (owner, grants) and what binds by OID follows the live table.
        let own_structure = matches!(kind, FlipKind::Migrate | FlipKind::Rollback);
        let mut steps: Vec<Step> = Vec::new();
        let mut push = |d: String, sql: String| {
            steps.push(Step::new(d, sql).lock(LockMode::AccessExclusive, live_q.clone()))
        };
        push(
            format!(
                "retire {} into {backup_schema} (catalog only, names kept)",
                r.live
            ),
            format!("ALTER {lkw} {live_q} SET SCHEMA {bk}"),
        );
        // Partitions go with their table: live's into the generation's schema (names kept).
        for p in inv.partitions_of(r.live_oid) {
            push(
                format!(
                    "retire partition {} into {backup_schema}",
                    qualified(&p.schema, &p.name)
                ),
                format!(
                    "ALTER TABLE {} SET SCHEMA {bk}",
                    qualified(&p.schema, &p.name)
                ),
            );
        }
        // The retired copy must not constrain live tables: drop its FKs to tables outside the flip.
        for c in inv.constraints_of(r.live_oid).filter(|c| c.contype == "f") {
            if !flipped.contains(&c.ref_rel) {
                push(
                    format!(
                        "drop foreign key {} from the retired copy (re-created on the new table)",
                        quote_ident(&c.name)
                    ),
                    format!(
                        "ALTER TABLE {retired_q} DROP CONSTRAINT {}",
                        quote_ident(&c.name)
                    ),
                );
            }
        }
        if r.green.name != r.live.name {
            push(
                format!("rename green {} to {}", r.green, quote_ident(&r.live.name)),
                format!(
                    "ALTER {gkw} {} RENAME TO {}",
                    r.green.sql(),
                    quote_ident(&r.live.name)
                ),
            );
        }
        if r.green.schema != r.live.schema {
            push(
                format!("move green into schema {}", quote_ident(&r.live.schema)),
                format!(
                    "ALTER {gkw} {} SET SCHEMA {}",
                    qualified(&r.green.schema, &r.live.name),
                    quote_ident(&r.live.schema)
                ),
            );
        }
        // Green's partitions take the names (and schemas) of live's partitions with the same
        // bound under the same parent; the others follow green into live's schema.
        let live_parts: Vec<&dependents::Partition> = inv.partitions_of(r.live_oid).collect();
        let mut matched_parts: BTreeMap<u32, u32> = BTreeMap::new();
        matched_parts.insert(r.green_oid, r.live_oid);
        for gp in inv.partitions_of(r.green_oid) {
            let parent_match = matched_parts.get(&gp.parent).copied();
            let m = live_parts.iter().find(|lp| {
                Some(lp.parent) == parent_match
                    && lp.bound == gp.bound
                    && !matched_parts.values().any(|&v| v == lp.oid)
            });
            let (schema, name) = match m {
                Some(lp) => {
                    matched_parts.insert(gp.oid, lp.oid);
                    (lp.schema.clone(), lp.name.clone())
                }
                None => {
                    let schema = if gp.schema == r.green.schema {
                        r.live.schema.clone()
                    } else {
                        gp.schema.clone()
                    };
                    (schema, gp.name.clone())
                }
            };
            if name != gp.name {
                push(
                    format!(
                        "rename green's partition {} to {}",
                        qualified(&gp.schema, &gp.name),
                        quote_ident(&name)
                    ),
                    format!(
                        "ALTER TABLE {} RENAME TO {}",
                        qualified(&gp.schema, &gp.name),
                        quote_ident(&name)
                    ),
                );
            }
            if schema != gp.schema {
                push(
                    format!(
                        "move green's partition {} into schema {}",
                        quote_ident(&name),
                        quote_ident(&schema)
                    ),
                    format!(
                        "ALTER TABLE {} SET SCHEMA {}",
                        qualified(&gp.schema, &name),
                        quote_ident(&schema)
                    ),
                );
            }
        }
        // Indexes and index-backed constraints: green's take the names live's had.
        let mut used_live: BTreeSet<u32> = BTreeSet::new();
        let live_idx: Vec<_> = inv.indexes_of(r.live_oid).collect();
        for gi in inv.indexes_of(r.green_oid) {
            let shape = index_shape(&gi.def, &gi.name);
            let m = live_idx.iter().find(|li| {
                !used_live.contains(&li.oid)
                    && index_shape(&li.def, &li.name) == shape
                    && li.constraint.is_some() == gi.constraint.is_some()
            });
            if let Some(li) = m.filter(|_| !own_structure) {
                used_live.insert(li.oid);
                match (&gi.constraint, &li.constraint) {
                    (Some(gc), Some(lc)) if gc != lc => push(
                        format!(
                            "rename constraint {} to {}",
                            quote_ident(gc),
                            quote_ident(lc)
                        ),
                        format!(
                            "ALTER TABLE {live_q} RENAME CONSTRAINT {} TO {}",
                            quote_ident(gc),
                            quote_ident(lc)
                        ),
                    ),
                    (None, None) if gi.name != li.name => push(
                        format!(
                            "rename index {} to {}",
                            quote_ident(&gi.name),
                            quote_ident(&li.name)
                        ),
                        format!(
                            "ALTER INDEX {} RENAME TO {}",
                            qualified(&r.live.schema, &gi.name),
                            quote_ident(&li.name)
                        ),
                    ),
                    _ => {}
                }
            }
        }
        // NOT NULL constraints have names from PostgreSQL 18 on (pg_constraint contype 'n';
        // none before): green's take the names live's had, as the other constraints do. Names
        // of table constraints are per table, so this cannot clash with the retired table's.
        let live_nn: Vec<_> = inv
            .constraints_of(r.live_oid)
            .filter(|c| c.contype == "n")
            .collect();
        for gc in inv
            .constraints_of(r.green_oid)
            .filter(|c| c.contype == "n" && !own_structure)
        {
            if let Some(lc) = live_nn
                .iter()
                .find(|lc| lc.def == gc.def && lc.name != gc.name)
            {
                push(
                    format!(
                        "rename constraint {} to {}",
                        quote_ident(&gc.name),
                        quote_ident(&lc.name)
                    ),
                    format!(
                        "ALTER TABLE {live_q} RENAME CONSTRAINT {} TO {}",
                        quote_ident(&gc.name),
                        quote_ident(&lc.name)
                    ),
                );
            }
        }
        // Check and foreign-key constraints: rename matches, add what green lacks, and re-point
        // green's own FKs that reference a table being retired.
        let green_cons: Vec<_> = inv
            .constraints_of(r.green_oid)
            .filter(|c| c.contype == "c" || c.contype == "f")
            .collect();
        let mut used_green: BTreeSet<String> = BTreeSet::new();
        for lc in inv
            .constraints_of(r.live_oid)
            .filter(|c| c.contype == "c" || c.contype == "f")
        {
            let m = green_cons.iter().find(|gc| {
                !used_green.contains(&gc.name)
                    && gc.contype == lc.contype
                    && gc.def == lc.def
                    && !(gc.contype == "f"
                        && live_set.contains(&gc.ref_rel)
                        && gc.ref_rel != r.live_oid)
            });
            match m {
                Some(gc) => {
                    used_green.insert(gc.name.clone());
                    if gc.name != lc.name && !own_structure {
                        push(
                            format!(
                                "rename constraint {} to {}",
                                quote_ident(&gc.name),
                                quote_ident(&lc.name)
                            ),
                            format!(
                                "ALTER TABLE {live_q} RENAME CONSTRAINT {} TO {}",
                                quote_ident(&gc.name),
                                quote_ident(&lc.name)
                            ),
                        );
                    }
                }
                // A migration's new version has its own structure: live's checks and foreign
                // keys are not green's to take. A rollback's retired copy kept its checks and
                // the foreign keys among the flipped tables; only its foreign keys to tables
                // outside the flip were dropped (and come back here).
                None if kind == FlipKind::Migrate
                    || (opts.allow_column_changes
                        && (lc.contype == "c" || live_set.contains(&lc.ref_rel))) => {}
                None => {
                    let clash = green_cons.iter().find(|gc| gc.name == lc.name);
                    if let Some(gc) = clash {
                        used_green.insert(gc.name.clone());
                        push(
                            format!(
                                "drop green's constraint {} (re-added as live had it)",
                                quote_ident(&gc.name)
                            ),
                            format!(
                                "ALTER TABLE {live_q} DROP CONSTRAINT {}",
                                quote_ident(&gc.name)
                            ),
                        );
                    }
                    let def = lc.def.trim_end_matches(" NOT VALID");
                    push(
                        format!(
                            "add constraint {} as live had it (NOT VALID: validated after the commit)",
                            quote_ident(&lc.name)
                        ),
                        format!(
                            "ALTER TABLE {live_q} ADD CONSTRAINT {} {def} NOT VALID",
                            quote_ident(&lc.name)
                        ),
                    );
                    if lc.validated {
                        validate_later.push((live_q.clone(), lc.name.clone()));
                    }
                }
            }
        }
        // Green's FKs to tables that this flip retires would stay on the retired copies.
        for gc in green_cons.iter().filter(|gc| {
            gc.contype == "f" && !used_green.contains(&gc.name) && live_set.contains(&gc.ref_rel)
        }) {
            push(
                format!("re-point green's foreign key {} to the new table", quote_ident(&gc.name)),
                format!(
                    "ALTER TABLE {live_q} DROP CONSTRAINT {n}; ALTER TABLE {live_q} ADD CONSTRAINT {n} {} NOT VALID",
                    gc.def.trim_end_matches(" NOT VALID"),
                    n = quote_ident(&gc.name)
                ),
            );
            if gc.validated {
                validate_later.push((live_q.clone(), gc.name.clone()));
            }
        }
        // Owner.
        if l.owner != g.owner {
            push(
                format!("owner {}", quote_ident(&l.owner)),
                format!("ALTER {lkw} {live_q} OWNER TO {}", quote_ident(&l.owner)),
            );
        }
        // Sequences.
        let green_cols: Vec<_> = inv.columns_of(r.green_oid).collect();
        for s in inv.sequences_of(r.live_oid) {
            let retired_seq = qualified(&backup_schema, &s.name);
            let live_seq = qualified(&s.schema, &s.name);
            let gc = green_cols.iter().find(|c| c.name == s.column);
            let Some(gc) = gc else { continue };
            let col = quote_ident(&s.column);
            let lc = inv.columns_of(r.live_oid).find(|c| c.name == s.column);
            if takes_over_sequence(lc, gc, s) {
                push(
                    format!(
                        "hand sequence {live_seq} over to the new table (green's default uses it)"
                    ),
                    format!(
                        "ALTER SEQUENCE {retired_seq} OWNED BY NONE; ALTER SEQUENCE {retired_seq} SET SCHEMA {}; \
                         ALTER SEQUENCE {live_seq} OWNED BY {live_q}.{col}; \
                         SELECT pg_catalog.setval('{lit}', GREATEST((SELECT last_value FROM {live_seq}), (SELECT max({col})::bigint FROM {live_q}), 1))",
                        quote_ident(&s.schema),
                        lit = live_seq.replace('\'', "''"),
                    ),
                );
            } else if let Some(gs) = inv
                .sequences_of(r.green_oid)
                .find(|gs| gs.column == s.column)
            {
                let moved = qualified(&r.live.schema, &gs.name);
                let mut sql = String::new();
                if gs.name != s.name {
                    sql.push_str(&format!(
                        "ALTER SEQUENCE {moved} RENAME TO {}; ",
                        quote_ident(&s.name)
                    ));
                }
                let here = qualified(&r.live.schema, &s.name);
                if s.schema != r.live.schema {
                    sql.push_str(&format!(
                        "ALTER SEQUENCE {here} SET SCHEMA {}; ",
                        quote_ident(&s.schema)
                    ));
                }
                sql.push_str(&format!(
                    "SELECT pg_catalog.setval('{lit}', GREATEST((SELECT last_value FROM {retired_seq}), (SELECT last_value FROM {live_seq}), (SELECT max({col})::bigint FROM {live_q}), 1))",
                    lit = live_seq.replace('\'', "''")
                ));
                // The application's grants on the sequence (USAGE for nextval) come along.
                for g in acl_sql("SEQUENCE", &live_seq, &s.owner, &gs.acl, &s.acl) {
                    sql.push_str("; ");
                    sql.push_str(&g);
                }
                push(
                    format!("green's sequence for {col} takes the name {live_seq} and continues past both sides' values"),
                    sql,
                );
            }
        }
        // Storage parameters (fillfactor, autovacuum settings, ...): catalog only.
        if l.reloptions != g.reloptions && !own_structure {
            let key = |o: &String| o.split('=').next().unwrap_or_default().to_string();
            let live_keys: BTreeSet<String> = l.reloptions.iter().map(key).collect();
            let reset: Vec<String> = g
                .reloptions
                .iter()
                .map(key)
                .filter(|k| !live_keys.contains(k))
                .collect();
            if !reset.is_empty() {
                push(
                    "reset storage parameters live did not have".into(),
                    format!("ALTER {lkw} {live_q} RESET ({})", reset.join(", ")),
                );
            }
            if !l.reloptions.is_empty() {
                push(
                    "storage parameters as live had them".into(),
                    format!("ALTER {lkw} {live_q} SET ({})", l.reloptions.join(", ")),
                );
            }
        }
        // Defaults green lacks (e.g. a staging table made without them): as live had them.
        // After the sequences, so that a serial default finds its sequence back in place.
        // Not for a new version or a rollback: green's own structure is the one wanted.
        for lc in inv
            .columns_of(r.live_oid)
            .filter(|_| !opts.allow_column_changes)
        {
            let Some(expr) = &lc.default_expr else {
                continue;
            };
            if let Some(gc) = green_cols.iter().find(|c| c.name == lc.name) {
                if gc.default_expr.is_none() && gc.identity.is_empty() && gc.generated.is_empty() {
                    push(
                        format!("default of {} as live had it", quote_ident(&lc.name)),
                        format!(
                            "ALTER TABLE {live_q} ALTER COLUMN {} SET DEFAULT {expr}",
                            quote_ident(&lc.name)
                        ),
                    );
                }
            }
        }
        // Grants (table and columns).
        for s in acl_sql("TABLE", &live_q, &l.owner, &g.acl, &l.acl) {
            push("grants as live had them".into(), s);
        }
        for lc in inv.columns_of(r.live_oid) {
            let cur = green_cols
                .iter()
                .find(|c| c.name == lc.name)
                .map(|c| c.acl.clone())
                .unwrap_or_default();
            for s in column_acl_sql(&live_q, &lc.name, &cur, &lc.acl) {
                push(format!("column grants on {}", quote_ident(&lc.name)), s);
            }
            let gcomment = green_cols
                .iter()
                .find(|c| c.name == lc.name)
                .and_then(|c| c.comment.clone());
            if !own_structure
                && gcomment != lc.comment
                && green_cols.iter().any(|c| c.name == lc.name)
            {
                push(
                    format!("comment on column {}", quote_ident(&lc.name)),
                    format!(
                        "COMMENT ON COLUMN {live_q}.{} IS {}",
                        quote_ident(&lc.name),
                        literal_or_null(&lc.comment)
                    ),
                );
            }
        }
        if l.comment != g.comment && !own_structure {
            push(
                "comment".into(),
                format!(
                    "COMMENT ON {lkw} {live_q} IS {}",
                    literal_or_null(&l.comment)
                ),
            );
        }
        // Row-level security.
        if l.rls != g.rls && !own_structure {
            push(
                "row-level security as live had it".into(),
                format!(
                    "ALTER TABLE {live_q} {} ROW LEVEL SECURITY",
                    if l.rls { "ENABLE" } else { "DISABLE" }
                ),
            );
        }
        if l.force_rls != g.force_rls && !own_structure {
            push(
                "forced row-level security as live had it".into(),
                format!(
                    "ALTER TABLE {live_q} {} ROW LEVEL SECURITY",
                    if l.force_rls { "FORCE" } else { "NO FORCE" }
                ),
            );
        }
        let green_pols: BTreeSet<String> = inv
            .policies_of(r.green_oid)
            .map(|p| p.name.clone())
            .collect();
        for p in inv.policies_of(r.live_oid).filter(|_| !own_structure) {
            if green_pols.contains(&p.name) {
                continue;
            }
            let cmd = match p.cmd.as_str() {
                "r" => "SELECT",
                "a" => "INSERT",
                "w" => "UPDATE",
                "d" => "DELETE",
                _ => "ALL",
            };
            let mut sql = format!(
                "CREATE POLICY {} ON {live_q} AS {} FOR {cmd} TO {}",
                quote_ident(&p.name),
                if p.permissive {
                    "PERMISSIVE"
                } else {
                    "RESTRICTIVE"
                },
                p.roles.join(", ")
            );
            if let Some(q) = &p.qual {
                sql.push_str(&format!(" USING ({q})"));
            }
            if let Some(c) = &p.check {
                sql.push_str(&format!(" WITH CHECK ({c})"));
            }
            push(format!("policy {}", quote_ident(&p.name)), sql);
        }
        // Triggers.
        let green_trg: BTreeSet<String> = inv
            .triggers_of(r.green_oid)
            .map(|t| t.name.clone())
            .collect();
        for t in inv.triggers_of(r.live_oid) {
            // pgflip's own triggers (migrate's capture) belong to the job, not to the table.
            if own_structure || t.pgflip_owned || green_trg.contains(&t.name) {
                continue;
            }
            let mut sql = t.def.clone();
            let state = match t.enabled.as_str() {
                "D" => Some("DISABLE TRIGGER"),
                "R" => Some("ENABLE REPLICA TRIGGER"),
                "A" => Some("ENABLE ALWAYS TRIGGER"),
                _ => None,
            };
            if let Some(st) = state {
                sql.push_str(&format!(
                    "; ALTER TABLE {live_q} {st} {}",
                    quote_ident(&t.name)
                ));
            }
            push(format!("trigger {}", quote_ident(&t.name)), sql);
        }
        // Replica identity (tables only).
        if !is_mv && !own_structure && (l.replident != g.replident || l.replident == "i") {
            let how = match l.replident.as_str() {
                "n" => "NOTHING".to_string(),
                "f" => "FULL".to_string(),
                "i" => match live_idx.iter().find(|i| i.replident) {
                    Some(i) => format!("USING INDEX {}", quote_ident(&i.name)),
                    None => "DEFAULT".to_string(),
                },
                _ => "DEFAULT".to_string(),
            };
            push(
                format!("replica identity {how}"),
                format!("ALTER TABLE {live_q} REPLICA IDENTITY {how}"),
            );
        }
        // Publications.
        let green_pubs: BTreeSet<String> = inv
            .publications_of(r.green_oid)
            .map(|p| p.publication.clone())
            .collect();
        for p in inv.publications_of(r.live_oid) {
            let mut sql = format!(
                "ALTER PUBLICATION {pb} DROP TABLE {retired_q}",
                pb = quote_ident(&p.publication)
            );
            if !green_pubs.contains(&p.publication) {
                sql.push_str(&format!(
                    "; ALTER PUBLICATION {} ADD TABLE {live_q}",
                    quote_ident(&p.publication)
                ));
                if let Some(cols) = &p.columns {
                    sql.push_str(&format!(
                        " ({})",
                        cols.iter()
                            .map(|c| quote_ident(c))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                if let Some(q) = &p.qual {
                    sql.push_str(&format!(" WHERE ({q})"));
                }
            }
            push(
                format!(
                    "publication {} follows the table",
                    quote_ident(&p.publication)
                ),
                sql,
            );
        }
        // Extended statistics: retired with live, made again (or taken from green) under
        // live's names.
        let create = kind != FlipKind::Migrate && !opts.allow_column_changes;
        if !create {
            for s in statistics::unmatched(&inv.statistics, r.live_oid, r.green_oid) {
                warnings.push(format!(
                    "extended statistics {} stays with the retired table (green has no such statistics)",
                    s.sql_name()
                ));
            }
        }
        for (d, sql) in statistics::carry(
            &inv.statistics,
            r.live_oid,
            r.green_oid,
            &live_q,
            &bk,
            create,
        ) {
            push(d, sql);
        }
        for s in steps {
            plan.push(s);
        }
    }

    // ---- Tables retired or brought in alone: a schema move each.
    for (d, sql) in one.moves_sql(&bk) {
        plan.push(Step::new(d, sql));
    }

    // ---- Re-create dependent views over the new tables, shallowest first (not those the job
    // re-creates itself).
    for v in inv.views.iter().filter(|v| !job_view(inv, opts, v.rel.oid)) {
        let q = qualified(&v.rel.schema, &v.rel.name);
        let kw = mode_of(&v.rel);
        let with = if v.rel.reloptions.is_empty() {
            String::new()
        } else {
            format!(" WITH ({})", v.rel.reloptions.join(", "))
        };
        let mut sql = if v.rel.relkind == "m" {
            format!(
                "CREATE MATERIALIZED VIEW {q}{with} AS {} WITH {}DATA",
                v.def,
                if v.rel.populated { "" } else { "NO " }
            )
        } else {
            format!("CREATE VIEW {q}{with} AS {}", v.def)
        };
        sql.push_str(&format!(
            "; ALTER {kw} {q} OWNER TO {}",
            quote_ident(&v.rel.owner)
        ));
        for s in acl_sql("TABLE", &q, &v.rel.owner, &None, &v.rel.acl) {
            sql.push_str(&format!("; {s}"));
        }
        for (col, a) in &v.column_acl {
            sql.push_str(&format!(
                "; GRANT {} ({}) ON TABLE {q} TO {}",
                a.privilege,
                quote_ident(col),
                role_sql(&a.grantee)
            ));
        }
        if let Some(c) = &v.rel.comment {
            sql.push_str(&format!("; COMMENT ON {kw} {q} IS {}", quote_literal(c)));
        }
        for (col, c) in &v.column_comments {
            sql.push_str(&format!(
                "; COMMENT ON COLUMN {q}.{} IS {}",
                quote_ident(col),
                quote_literal(c)
            ));
        }
        for i in &v.indexes {
            sql.push_str(&format!("; {}", i.def));
        }
        let mut step = Step::new(
            format!("re-create {} {q} over the new table(s)", kw.to_lowercase()),
            sql,
        )
        .lock(LockMode::AccessExclusive, q.clone());
        if v.rel.relkind == "m" && v.rel.populated {
            step = step.hazard(Hazard::ReplacesData);
        }
        plan.push(step);
    }
    // ---- Re-attach other tables' foreign keys to the new tables.
    for c in &inbound {
        let t = name_of(c.rel);
        plan.push(
            Step::new(
                format!(
                    "re-attach foreign key {} of {t} to the new table (NOT VALID, validated after the commit)",
                    quote_ident(&c.name)
                ),
                format!(
                    "ALTER TABLE {t} ADD CONSTRAINT {} {} NOT VALID",
                    quote_ident(&c.name),
                    c.def.trim_end_matches(" NOT VALID")
                ),
            )
            .lock(LockMode::AccessExclusive, t.clone()),
        );
        if c.validated {
            validate_later.push((t, c.name.clone()));
        }
    }

    for sql in &opts.in_flip_after {
        plan.push(Step::new(
            "the job's statement after the moves (under the flip's locks)",
            sql.clone(),
        ));
    }

    // ---- The generation record, in the same transaction.
    let details = serde_json::json!({
        "warnings": warnings,
        "lock_timeout_ms": opts.lock_timeout.as_millis() as u64,
        // What must be validated after the commit: `verify` checks that it was.
        "validate_after": validate_later
            .iter()
            .map(|(t, c)| serde_json::json!({"table": t, "constraint": c}))
            .collect::<Vec<_>>(),
    });
    let mut rec = format!(
        "INSERT INTO pgflip.generations (label, created_at, kind, backup_schema, rollback_of, pgflip_version, details) \
         VALUES ({}, {}::timestamptz, {}, {}, {}, {}, {}::jsonb || jsonb_strip_nulls(jsonb_build_object('run_id', \
           pg_catalog.current_setting('pgflip.run_id', true))) \
           || coalesce(nullif(pg_catalog.current_setting('pgflip.generation_details', true), '')::jsonb, '{{}}'::jsonb))",
        quote_literal(&label),
        quote_literal(&created_at.to_rfc3339()),
        quote_literal(kind.as_str()),
        quote_literal(&backup_schema),
        opts.rollback_of.map(|i| i.to_string()).unwrap_or_else(|| "NULL".into()),
        quote_literal(crate::VERSION),
        quote_literal(&details.to_string()),
    );
    for (i, r) in relations.iter().enumerate() {
        rec.push_str(&format!(
            "; INSERT INTO pgflip.generation_relations (generation_id, position, live_schema, live_name, green_schema, green_name, \
               retired_schema, retired_name, live_rows, live_checksum, checksum_method) \
             SELECT id, {i}, {}, {}, {}, {}, {}, {}, {}, {}, {} FROM pgflip.generations WHERE label = {}",
            quote_literal(&r.live.schema),
            quote_literal(&r.live.name),
            quote_literal(&r.green.schema),
            quote_literal(&r.green.name),
            quote_literal(&r.retired.schema),
            quote_literal(&r.retired.name),
            r.green_rows.map(|n| n.to_string()).unwrap_or_else(|| "NULL".into()),
            r.green_checksum.as_deref().map(|c| format!("{}::numeric", quote_literal(c))).unwrap_or_else(|| "NULL".into()),
            quote_literal(r.checksum_method.as_str()),
            quote_literal(&label),
        ));
        rec.push_str(&format!(
            "; DELETE FROM pgflip.operations WHERE green_schema = {} AND green_name = {}",
            quote_literal(&r.green.schema),
            quote_literal(&r.green.name)
        ));
    }
    // One-sided relations: an empty green (retired alone) or an empty retired name (brought in
    // alone), so that a rollback knows to do the opposite.
    let sided = one
        .retire
        .iter()
        .map(|(q, _)| {
            (
                q.clone(),
                QualifiedName::new("", ""),
                QualifiedName::new(backup_schema.clone(), q.name.clone()),
            )
        })
        .chain(
            one.bring_in
                .iter()
                .map(|(p, _)| (p.live.clone(), p.green.clone(), QualifiedName::new("", ""))),
        );
    for (i, (live, green, retired)) in sided.enumerate() {
        rec.push_str(&format!(
            "; INSERT INTO pgflip.generation_relations (generation_id, position, live_schema, live_name, green_schema, green_name, \
               retired_schema, retired_name, checksum_method) \
             SELECT id, {}, {}, {}, {}, {}, {}, {}, 'md5' FROM pgflip.generations WHERE label = {}",
            relations.len() + i,
            quote_literal(&live.schema),
            quote_literal(&live.name),
            quote_literal(&green.schema),
            quote_literal(&green.name),
            quote_literal(&retired.schema),
            quote_literal(&retired.name),
            quote_literal(&label),
        ));
    }
    if let Some(of) = opts.rollback_of {
        rec.push_str(&format!(
            "; UPDATE pgflip.generations SET status = 'rolled_back', rolled_back_by = \
               (SELECT id FROM pgflip.generations WHERE label = {}) WHERE id = {of}",
            quote_literal(&label)
        ));
    }
    plan.push(Step::new(
        format!("record generation {label} in pgflip.generations"),
        rec,
    ));

    // ---- After the commit.
    for (t, c) in &validate_later {
        plan.push(
            Step::new(
                format!("validate constraint {} on {t}", quote_ident(c)),
                format!("ALTER TABLE {t} VALIDATE CONSTRAINT {}", quote_ident(c)),
            )
            .lock(LockMode::ShareUpdateExclusive, t.clone())
            .hazard(Hazard::Validates)
            .outside_transaction(),
        );
    }
    for (i, r) in relations.iter().enumerate() {
        plan.push(
            Step::new(
                format!("record the row count and checksum of retired {}", r.retired),
                format!(
                    "UPDATE pgflip.generation_relations gr SET retired_rows = s.n, retired_checksum = s.h::numeric \
                     FROM ({}) AS s(n, h) \
                     WHERE gr.position = {i} AND gr.generation_id = (SELECT id FROM pgflip.generations WHERE label = {})",
                    generation::checksum_sql(&r.retired.sql(), r.checksum_method),
                    quote_literal(&label)
                ),
            )
            .lock(LockMode::AccessShare, r.retired.sql())
            .outside_transaction(),
        );
    }

    for (i, (q, _)) in one.retire.iter().enumerate() {
        let retired = QualifiedName::new(backup_schema.clone(), q.name.clone());
        plan.push(
            Step::new(
                format!("record the row count and checksum of retired {retired}"),
                format!(
                    "UPDATE pgflip.generation_relations gr SET retired_rows = s.n, retired_checksum = s.h::numeric \
                     FROM ({}) AS s(n, h) \
                     WHERE gr.position = {} AND gr.generation_id = (SELECT id FROM pgflip.generations WHERE label = {})",
                    generation::checksum_sql(&retired.sql(), generation::ChecksumMethod::Md5),
                    relations.len() + i,
                    quote_literal(&label)
                ),
            )
            .lock(LockMode::AccessShare, retired.sql())
            .outside_transaction(),
        );
    }

    let mut watched: Vec<u32> = table_modes.keys().copied().collect();
    watched.extend(inv.views.iter().map(|v| v.rel.oid));
    watched.extend(inv.partitions.iter().map(|p| p.oid));
    FlipPlan {
        plan,
        kind,
        label,
        created_at,
        backup_schema,
        relations,
        warnings,
        lock_oids,
        watched_oids: watched,
        green_oids: green_set.into_iter().collect(),
        fingerprint: inv.fingerprint.clone(),
        fingerprint_oids,
        locks_end,
    }
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
    let locks = join(&fp.plan.steps[..fp.locks_end]);
    let rest = join(&fp.plan.steps[fp.locks_end..]);
    let after: Vec<&Step> = fp
        .plan
        .steps
        .iter()
        .filter(|s| s.transaction.is_none())
        .collect();
    crate::failpoint::hit(points.before_lock).await?;
    let stats = guard::run_locked(client, fp, &locks, &rest, points.locked, opts, events).await?;
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

/// The pairs that roll generation `gen` back: its retired relations return under their live
/// names, minus `keep` (tables whose current rows stay: they are simply not flipped back).
pub fn rollback_pairs(gen: &Generation, keep: &[String]) -> Result<Vec<FlipPair>> {
    if gen.status != "active" {
        return Err(Error::InvalidInput(format!(
            "generation {} is {}: there is nothing to roll back",
            gen.label,
            gen.status.replace('_', " ")
        )));
    }
    let mut pairs = Vec::new();
    let mut one_sided = 0;
    let mut unknown: Vec<&String> = keep.iter().collect();
    for r in &gen.relations {
        let matches = |k: &String| {
            k == &r.live_name
                || *k == format!("{}.{}", r.live_schema, r.live_name)
                || *k == r.live()
        };
        if keep.iter().any(matches) {
            unknown.retain(|k| !matches(k));
            continue;
        }
        if r.green_name.is_empty() || r.retired_name.is_empty() {
            // One-sided: see [`rollback_one_sided`].
            one_sided += 1;
            continue;
        }
        pairs.push(FlipPair {
            live: QualifiedName::new(r.live_schema.clone(), r.live_name.clone()),
            green: QualifiedName::new(r.retired_schema.clone(), r.retired_name.clone()),
        });
    }
    if !unknown.is_empty() {
        return Err(Error::InvalidInput(format!(
            "--keep-tables names tables that are not in generation {}: {}",
            gen.label,
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if pairs.is_empty() && one_sided == 0 {
        return Err(Error::InvalidInput(
            "every table of the generation is kept: nothing to roll back".into(),
        ));
    }
    Ok(pairs)
}

/// The one-sided relations that roll generation `gen` back, minus `keep`: `(retire_only,
/// bring_in_only)`. A table the generation retired alone comes back; one it brought in alone
/// is retired.
pub fn rollback_one_sided(
    gen: &Generation,
    keep: &[String],
) -> (Vec<QualifiedName>, Vec<FlipPair>) {
    let mut retire = Vec::new();
    let mut bring_in = Vec::new();
    for r in &gen.relations {
        let kept = keep.iter().any(|k| {
            k == &r.live_name
                || *k == format!("{}.{}", r.live_schema, r.live_name)
                || *k == r.live()
        });
        let live = QualifiedName::new(r.live_schema.clone(), r.live_name.clone());
        if kept {
            continue;
        }
        if r.green_name.is_empty() {
            bring_in.push(FlipPair {
                live,
                green: QualifiedName::new(r.retired_schema.clone(), r.retired_name.clone()),
            });
        } else if r.retired_name.is_empty() {
            retire.push(live);
        }
    }
    (retire, bring_in)
}

/// The pairs for swapping staging tables (`<table>_staging`, or `staging_names`) into `tables`:
/// what `sync --swap` hands to [`flip`]. A missing staging table is an error naming it.
pub async fn staging_pairs(client: &Client, tables: &[QualifiedName]) -> Result<Vec<FlipPair>> {
    let pairs: Vec<FlipPair> = tables
        .iter()
        .map(|t| FlipPair {
            live: t.clone(),
            green: QualifiedName::new(t.schema.clone(), crate::ident::staging_name(&t.name)),
        })
        .collect();
    let names: Vec<(String, String)> = pairs
        .iter()
        .map(|p| (p.green.schema.clone(), p.green.name.clone()))
        .collect();
    let oids = dependents::resolve(client, &names).await?;
    let missing: Vec<String> = pairs
        .iter()
        .zip(&oids)
        .filter(|(_, &o)| o == 0)
        .map(|(p, _)| format!("{} (for {})", p.green, p.live))
        .collect();
    if !missing.is_empty() {
        return Err(Error::InvalidInput(format!(
            "--swap needs a staging table, and there is none: {}; load it first with --staging-table",
            missing.join(", ")
        )));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_shapes_ignore_name_and_table() {
        let a = index_shape(
            "CREATE UNIQUE INDEX t_pkey ON public.t USING btree (id)",
            "t_pkey",
        );
        let b = index_shape(
            "CREATE UNIQUE INDEX t_staging_pkey ON public.t_staging USING btree (id)",
            "t_staging_pkey",
        );
        assert_eq!(a, b);
        let c = index_shape(
            "CREATE INDEX \"Odd Name\" ON \"My Schema\".\"T\" USING btree (a) WHERE (a > 0)",
            "Odd Name",
        );
        assert_eq!(c, "CREATE INDEX USING btree (a) WHERE (a > 0)");
        assert_ne!(a, c);
    }

    #[test]
    fn acl_statements_reproduce_the_wanted_acl() {
        let item = |g: &str, p: &str, o: bool| AclItem {
            grantee: g.into(),
            privilege: p.into(),
            grantable: o,
        };
        assert!(acl_sql("TABLE", "t", "o", &None, &None).is_empty());
        let wanted = Some(vec![
            item("o", "SELECT", false),
            item("Reader Role", "SELECT", false),
            item("w", "INSERT", true),
            item("PUBLIC", "SELECT", false),
        ]);
        let sql = acl_sql("TABLE", "t", "o", &None, &wanted);
        assert_eq!(sql[0], "REVOKE ALL ON TABLE t FROM PUBLIC, o");
        assert!(sql.contains(&"GRANT SELECT ON TABLE t TO \"Reader Role\"".to_string()));
        assert!(sql.contains(&"GRANT INSERT ON TABLE t TO w WITH GRANT OPTION".to_string()));
        assert!(sql.contains(&"GRANT SELECT ON TABLE t TO PUBLIC".to_string()));
        let back = acl_sql("TABLE", "t", "o", &wanted, &None);
        assert_eq!(back.last().unwrap(), "GRANT ALL ON TABLE t TO o");
    }
}
