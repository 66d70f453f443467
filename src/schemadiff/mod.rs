//! `pgflip schema diff`: compare two databases' schemas and build the plan that makes the
//! target's schema match the source's, without losing data by default.
//!
//! The work is split by concern: [`compare`] pairs the objects of two catalog snapshots and
//! orders the steps (drops in reverse dependency order, creates and ALTERs in dependency
//! order), [`steps`] builds single statements, [`mapping`] renames a schema of the source to
//! the target's (`--source-schema A --target-schema B`), [`tombstones`] finds and removes the
//! `<name>_dropped_<ts>` tables and columns that a diff leaves instead of dropping.
//!
//! Everything here is pure over two [`Snapshot`]s except loading and [`apply`], so the
//! comparison can be benchmarked and tested without a server.

mod compare;
pub mod compat;
pub mod hazards;
pub mod mapping;
mod order;
pub mod roles;
mod steps;
pub mod tombstones;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::catalog::Snapshot;
use crate::events::EventSink;
use crate::plan::{ExecOptions, Plan};
use crate::Result;

/// How a diff is built.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Drop tables and columns the source lacks instead of renaming them to tombstones.
    pub drop: bool,
    /// The time stamped into tombstone names.
    pub at: DateTime<Utc>,
    /// New indexes on existing tables CONCURRENTLY, new constraints NOT VALID then VALIDATE,
    /// SET NOT NULL through a validated check.
    pub online: bool,
    /// Compare owners, grants and default privileges (of roles both servers have; see
    /// [`roles`]). `false` (`--no-privileges`) leaves them as the target has them.
    pub privileges: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            drop: false,
            at: Utc::now(),
            online: true,
            privileges: true,
        }
    }
}

/// A diff: the plan, and the drops of tombstones it left (listed commented out).
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub plan: Plan,
    pub commented_drops: Vec<String>,
    /// Differences schema diff cannot apply safely, by name (a base type that only the target
    /// has, a security label): the diff must not be taken as complete while this is non-empty.
    pub unsupported: Vec<String>,
    /// Owners and grants kept on the target or not applied because of roles only one server
    /// has (listed in the script's header).
    pub roles: roles::RoleNotes,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.plan.is_empty()
    }

    /// The script: `header` lines as comments, the steps, the commented-out drops, a footer.
    pub fn to_script(&self, header: &[String]) -> String {
        let mut out = self.plan.to_script(header);
        if !self.plan.is_empty() {
            // After the header: the settings the statements rely on (qualified names, bodies
            // that refer to objects created later).
            let split = out.find("\n\n").map(|i| i + 2).unwrap_or(0);
            out.insert_str(split, &format!("{}\n", crate::ddl::PREAMBLE));
        }
        if !self.commented_drops.is_empty() {
            out.push_str(
                "-- Kept instead of dropped (tombstones). Drop them once nothing needs them,\n\
                 -- or later with `pgflip cleanup --dropped --before DATE`:\n",
            );
            for d in &self.commented_drops {
                for line in d.lines() {
                    out.push_str("-- ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "-- End of script: {} statement{}.\n",
            self.plan.steps.len(),
            if self.plan.steps.len() == 1 { "" } else { "s" }
        ));
        out
    }
}

/// Tables and columns whose names are tombstones play no part in a comparison.
pub fn strip_tombstones(snap: &mut Snapshot) {
    use crate::ident::is_tombstone;
    snap.tables.retain(|t| !is_tombstone(&t.name));
    for t in &mut snap.tables {
        t.columns.retain(|c| !is_tombstone(&c.name));
    }
    snap.sequences.retain(|s| {
        !s.owned_by
            .as_ref()
            .is_some_and(|o| is_tombstone(&o.table) || is_tombstone(&o.column))
    });
}

fn has_tombstones(snap: &Snapshot) -> bool {
    use crate::ident::is_tombstone;
    snap.tables
        .iter()
        .any(|t| is_tombstone(&t.name) || t.columns.iter().any(|c| is_tombstone(&c.name)))
}

/// The plan that turns `target`'s schema into `source`'s.
/// Drops the dependencies a diff never follows: those with an end that is not one of the
/// snapshot's objects (migrate's schema step keeps a snapshot without tables).
pub fn prune_dependencies(snap: &mut Snapshot) {
    order::prune_dependencies(snap)
}

pub fn diff(source: &Snapshot, target: &Snapshot, opts: &DiffOptions) -> Plan {
    compare_snapshots(source, target, opts).plan
}

/// Like [`diff`], with the commented-out tombstone drops.
pub fn compare_snapshots(source: &Snapshot, target: &Snapshot, opts: &DiffOptions) -> Diff {
    // Copies (80,000 columns for 2,000 tables) only when there is a tombstone to leave out.
    let stripped = |snap: &Snapshot| {
        has_tombstones(snap).then(|| {
            let mut c = snap.clone();
            strip_tombstones(&mut c);
            c
        })
    };
    let (s, t) = (stripped(source), stripped(target));
    let (s, t) = (s.as_ref().unwrap_or(source), t.as_ref().unwrap_or(target));
    match roles::reconcile(s, t, opts.privileges) {
        Some((s, notes)) => {
            let mut diff = compare::compare(&s, t, opts);
            diff.unsupported.extend(notes.refused.iter().cloned());
            diff.roles = notes;
            diff
        }
        None => compare::compare(s, t, opts),
    }
}

/// [`Snapshot::load`] for a comparison (one place to tune loading for diffs).
pub async fn load_snapshot(client: &Client, filter: &crate::catalog::Filter) -> Result<Snapshot> {
    Snapshot::load(client, filter).await
}

/// Runs a diff's plan against the target. A failed `CREATE INDEX CONCURRENTLY` leaves an
/// invalid index behind: those of this plan are dropped before the error is returned.
pub async fn apply(client: &Client, plan: &Plan, events: &dyn EventSink) -> Result<()> {
    let opts = ExecOptions {
        after_unit: Some("schemadiff.after_unit"),
        ..ExecOptions::default()
    };
    crate::failpoint::hit("schemadiff.before_apply").await?;
    client
        .batch_execute(SESSION_SETUP)
        .await
        .map_err(|e| crate::Error::db("preparing the target session", e))?;
    let result = plan.execute(client, &opts, events).await;
    if result.is_err() {
        for step in plan.steps.iter().filter(|s| s.transaction.is_none()) {
            if let Some(name) = concurrent_index_name(&step.sql) {
                let _ = client
                    .batch_execute(&format!(
                        "DO $$DECLARE r regclass; BEGIN \
                         SELECT i.indexrelid::regclass INTO r FROM pg_catalog.pg_index i \
                         JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
                         WHERE i.indrelid = pg_catalog.to_regclass({table}) AND c.relname = {name} \
                         AND NOT i.indisvalid; \
                         IF r IS NOT NULL THEN EXECUTE pg_catalog.format('DROP INDEX %s', r); END IF; END$$;",
                        table = crate::ident::quote_literal(step.lock.on.as_str()),
                        name = crate::ident::quote_literal(&name)
                    ))
                    .await;
            }
        }
    }
    result
}

/// What [`crate::ddl::PREAMBLE`] sets, for a session that runs a plan: every name in the
/// statements is qualified, and function bodies may refer to objects created later.
const SESSION_SETUP: &str =
    "SET check_function_bodies = false; SELECT pg_catalog.set_config('search_path', '', false);";

/// The qualified index name of a `CREATE [UNIQUE] INDEX CONCURRENTLY name ON …` statement.
fn concurrent_index_name(sql: &str) -> Option<String> {
    let rest = sql.split_once(" INDEX CONCURRENTLY ")?.1;
    let name = rest.split_once(" ON ")?.0.trim();
    Some(
        match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            Some(q) => q.replace("\"\"", "\""),
            None => name.to_string(),
        },
    )
}
