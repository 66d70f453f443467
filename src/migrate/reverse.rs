//! The schema step of a migration, and its undoing by a rollback.
//!
//! The flip brings tables back (with their own triggers, policies, comments and sequences),
//! but a migration's swap also changes what is not a table: it replaces functions and views,
//! creates the source's views and materialized views, drops what only the old version had. A
//! rollback must undo that too, or the old tables come back under the new version's views
//! (which may read columns the old tables lack: the flip would refuse).
//!
//! So each such generation carries, in its details (`schema_step`), the target's objects beyond
//! tables *before* the step ([`SchemaStep::before`]) and what the step created. A rollback
//! diffs that against the target as its moves will leave it, and runs the result inside its own
//! transaction: dependent views the old version had (or the step created) are dropped by the
//! flip and re-created here with their old definitions (the flip does not check or re-create
//! them, see `FlipOptions::job_views`), replaced functions get their old bodies, views the step
//! created go, schemas it created go when empty. The rollback records the state it replaces the
//! same way, so a rollback of the rollback redoes the step.
//!
//! What it does not undo, said by `rollback` and `migrate status`: types keep the migration's
//! version (an enum label cannot be removed), and the types, functions, sequences and
//! extensions the migration added stay (the retired tables may use them, and a rollback of the
//! rollback needs them); `cleanup` of the generations leaves them too.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::catalog::Snapshot;
use crate::error::{DbResultExt, Result};
use crate::flip::{dependents, FlipPair, QualifiedName};
use crate::ident::{quote_ident, quote_literal};
use crate::plan::Hazard;
use crate::schemadiff::{self, DiffOptions};

/// The GUC whose JSON object the flip merges into the generation's details.
const DETAILS_GUC: &str = "pgflip.generation_details";

/// What a rollback needs to undo a schema step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchemaStep {
    /// The target's objects beyond tables before the step ([`beyond_tables`]).
    pub before: Snapshot,
    /// Views and materialized views the step created (a rollback drops them).
    pub created_views: Vec<(String, String)>,
    /// Schemas the step (or the prepare before it) created: dropped by a rollback when empty.
    pub created_schemas: Vec<String>,
}

/// What a rollback adds to its flip.
#[derive(Debug, Clone, Default)]
pub struct ReverseStep {
    /// Right after the locks (schemas the moves need).
    pub before: Vec<String>,
    /// After the moves: the old definitions, and the details of the rollback's own step.
    pub after: Vec<String>,
    /// Dependent views the flip leaves to `after`.
    pub job_views: Vec<QualifiedName>,
    pub warnings: Vec<String>,
}

/// `snap` without tables and what belongs to them (owned and identity sequences), and
/// without what the schema step does not align (publications, `extras`): the flip takes care
/// of tables.
pub fn beyond_tables(snap: &Snapshot) -> Snapshot {
    let mut s = snap.clone();
    s.tables.clear();
    s.sequences.retain(|q| q.owned_by.is_none() && !q.identity);
    s.publications.clear();
    s.extras.clear();
    s.column_uses.clear();
    // A dependency is only followed between two objects the snapshot holds (the diff's
    // ordering): the others (every table's keys, indexes, TOAST...) were nearly all of it, and
    // the swap copies the step into the generation under its locks (470 kB for 500 small
    // tables, ~45 ms).
    schemadiff::prune_dependencies(&mut s);
    s
}

/// The step of a migration's swap: `before` is the target before the swap, `after` the
/// source's schema (in the target's words); `created_schemas` the schemas prepare created.
pub fn forward(
    before: &Snapshot,
    after: &Snapshot,
    created_schemas: Vec<String>,
    added: &[(String, String, String)],
) -> SchemaStep {
    let created_views = after
        .views
        .iter()
        .filter(|v| {
            !before
                .views
                .iter()
                .any(|x| x.schema == v.schema && x.name == v.name)
        })
        .map(|v| (v.schema.clone(), v.name.clone()))
        .collect();
    // What prepare added is not the old version's (the target has it since prepare).
    let is_added = |kind: &str, schema: &str, name: &str| {
        added
            .iter()
            .any(|(k, s, n)| k == kind && s == schema && n == name)
    };
    let mut b = beyond_tables(before);
    b.schemas.retain(|s| !created_schemas.contains(&s.name));
    b.extensions.retain(|e| !is_added("extension", "", &e.name));
    b.collations
        .retain(|c| !is_added("collation", &c.schema, &c.name));
    b.types.retain(|t| !is_added("type", &t.schema, &t.name));
    b.functions.retain(|f| {
        !is_added(
            "function",
            &f.schema,
            &format!("{}({})", f.name, f.identity_args),
        )
    });
    b.sequences
        .retain(|q| !is_added("sequence", &q.schema, &q.name));
    SchemaStep {
        before: b,
        created_views,
        created_schemas,
    }
}

/// The statement (inside the flip, before the generation is recorded) that hands `step` to
/// the generation's details.
pub fn record_sql(step: &SchemaStep) -> Result<String> {
    let json = serde_json::json!({ "schema_step": step }).to_string();
    Ok(format!(
        "SELECT pg_catalog.set_config({}, {}, true)",
        quote_literal(DETAILS_GUC),
        quote_literal(&json)
    ))
}

/// Keeps `step` in migration `operation`'s details (beside the record: the swap hands it to
/// the generation; `status` does not carry it).
pub async fn save_for_operation(client: &Client, operation: i64, step: &SchemaStep) -> Result<()> {
    let json = serde_json::to_string(step)
        .map_err(|e| crate::Error::Config(format!("recording the schema step: {e}")))?;
    client
        .execute(
            "UPDATE pgflip.operations SET details = details || jsonb_build_object('schema_step', $1::text::jsonb) \
             WHERE id = $2",
            &[&json, &operation],
        )
        .await
        .ctx("recording the schema step")?;
    Ok(())
}

/// The same, from a migration record's details (kept there from prepare to the swap).
pub fn record_from_operation_sql(operation: i64) -> String {
    format!(
        "SELECT pg_catalog.set_config({}, pg_catalog.jsonb_build_object('schema_step', details -> 'schema_step')::text, true) \
         FROM pgflip.operations WHERE id = {operation} AND details ? 'schema_step'",
        quote_literal(DETAILS_GUC)
    )
}

/// The schema step recorded with generation `id`, if any.
pub async fn load(client: &Client, id: i64) -> Result<Option<SchemaStep>> {
    let row = client
        .query_opt(
            "SELECT details -> 'schema_step' FROM pgflip.generations WHERE id = $1 AND details ? 'schema_step'",
            &[&id],
        )
        .await
        .ctx("reading the generation's schema step")?;
    let Some(row) = row else { return Ok(None) };
    let v: serde_json::Value = row.get(0);
    let step = serde_json::from_value(v).map_err(|e| {
        crate::Error::Config(format!("generation {id}: unreadable schema step: {e}"))
    })?;
    Ok(Some(step))
}

/// The reverse of generation `id`'s schema step, for a rollback flipping `pairs` (and the
/// one-sided `retire` / `bring_in`). `None` when the generation has no schema step.
pub async fn reverse(
    client: &Client,
    id: i64,
    pairs: &[FlipPair],
    retire: &[QualifiedName],
    bring_in: &[FlipPair],
) -> Result<Option<ReverseStep>> {
    let Some(step) = load(client, id).await? else {
        return Ok(None);
    };
    let now = Snapshot::load(client, &step.before.filter).await?;
    // Relations the flip itself moves (tables, flipped materialized views): never the step's.
    let moved: BTreeSet<(String, String)> = pairs
        .iter()
        .map(|p| (p.live.schema.clone(), p.live.name.clone()))
        .chain(retire.iter().map(|q| (q.schema.clone(), q.name.clone())))
        .chain(
            bring_in
                .iter()
                .map(|p| (p.live.schema.clone(), p.live.name.clone())),
        )
        .collect();
    // Dependents the flip drops: those the old version had or the step created are re-created
    // here with their old definitions (or not at all); the others the flip re-creates.
    let mut names = Vec::new();
    for p in pairs {
        names.push((p.live.schema.clone(), p.live.name.clone()));
        names.push((p.green.schema.clone(), p.green.name.clone()));
    }
    let oids = dependents::resolve(client, &names).await?;
    let (live, green): (Vec<u32>, Vec<u32>) = (
        oids.iter()
            .step_by(2)
            .copied()
            .filter(|o| *o != 0)
            .collect(),
        oids.iter()
            .skip(1)
            .step_by(2)
            .copied()
            .filter(|o| *o != 0)
            .collect(),
    );
    let mut job: BTreeSet<(String, String)> = BTreeSet::new();
    if !live.is_empty() && live.len() == green.len() {
        let inv = dependents::load(client, &live, &green).await?;
        for v in &inv.views {
            let k = (v.rel.schema.clone(), v.rel.name.clone());
            let known = step
                .before
                .views
                .iter()
                .any(|x| x.schema == k.0 && x.name == k.1)
                || step.created_views.iter().any(|c| c == &k);
            if known && !moved.contains(&k) {
                job.insert(k);
            }
        }
    }

    // The target once the rollback's moves are done: no tables (the flip's), no job views.
    let mut x = beyond_tables(&now);
    x.views.retain(|v| {
        let k = (v.schema.clone(), v.name.clone());
        !job.contains(&k) && !moved.contains(&k)
    });
    // The old version, with what the step does not undo taken as it is now.
    let mut want = step.before.clone();
    want.views
        .retain(|v| !moved.contains(&(v.schema.clone(), v.name.clone())));
    let mut kept = Vec::new();
    for s in &x.schemas {
        if !want.schemas.iter().any(|w| w.name == s.name) {
            want.schemas.push(s.clone());
        }
    }
    for e in &x.extensions {
        if !want.extensions.iter().any(|w| w.name == e.name) {
            kept.push(format!("extension {}", quote_ident(&e.name)));
            want.extensions.push(e.clone());
        }
    }
    for c in &x.collations {
        if !want
            .collations
            .iter()
            .any(|w| w.schema == c.schema && w.name == c.name)
        {
            want.collations.push(c.clone());
        }
    }
    for t in &x.types {
        match want
            .types
            .iter_mut()
            .find(|w| w.schema == t.schema && w.name == t.name)
        {
            Some(w) => {
                if w.kind != t.kind {
                    kept.push(format!(
                        "type {} (as the migration changed it)",
                        crate::ident::qualified(&t.schema, &t.name)
                    ));
                }
                *w = t.clone();
            }
            None => {
                kept.push(format!(
                    "type {}",
                    crate::ident::qualified(&t.schema, &t.name)
                ));
                want.types.push(t.clone());
            }
        }
    }
    for f in &x.functions {
        if !want
            .functions
            .iter()
            .any(|w| w.schema == f.schema && w.name == f.name && w.identity_args == f.identity_args)
        {
            kept.push(format!(
                "function {}({})",
                crate::ident::qualified(&f.schema, &f.name),
                f.identity_args
            ));
            want.functions.push(f.clone());
        }
    }
    for q in &x.sequences {
        if !want
            .sequences
            .iter()
            .any(|w| w.schema == q.schema && w.name == q.name)
        {
            kept.push(format!(
                "sequence {}",
                crate::ident::qualified(&q.schema, &q.name)
            ));
            want.sequences.push(q.clone());
        }
    }
    for v in &x.views {
        let k = (v.schema.clone(), v.name.clone());
        let made = step.created_views.iter().any(|c| c == &k);
        if !made && !want.views.iter().any(|w| w.schema == k.0 && w.name == k.1) {
            want.views.push(v.clone());
        }
    }
    want.roles = x.roles.clone();
    want.server_version = x.server_version;

    let opts = DiffOptions {
        drop: false,
        online: false,
        ..DiffOptions::default()
    };
    let diff = schemadiff::compare_snapshots(&want, &x, &opts);
    let mut out = ReverseStep {
        job_views: job
            .iter()
            .map(|(s, n)| QualifiedName::new(s.clone(), n.clone()))
            .collect(),
        ..ReverseStep::default()
    };
    out.after
        .push("SET LOCAL check_function_bodies = false".into());
    for s in &diff.plan.steps {
        if s.hazards.iter().any(|h| {
            matches!(
                h,
                Hazard::ReplacesData | Hazard::Rewrite | Hazard::BuildsIndex
            )
        }) {
            out.warnings.push(format!(
                "the rollback will {} under its locks: {}",
                s.hazards
                    .iter()
                    .filter(|h| **h != Hazard::AccessExclusive)
                    .map(|h| h.describe())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.description
            ));
        }
        // A schema the moves need (a rollback of a rollback brings tables back into it).
        if s.sql.trim_start().starts_with("CREATE SCHEMA") {
            out.before.push(s.sql.clone());
        } else {
            out.after.push(s.sql.clone());
        }
    }
    if !diff.unsupported.is_empty() {
        out.warnings.push(format!(
            "the rollback cannot restore these objects; change them by hand: {}",
            diff.unsupported.join(", ")
        ));
    }
    // Schemas the step created, now empty: dropped (one that still holds something stays).
    for s in &step.created_schemas {
        if !step.before.schemas.iter().any(|w| &w.name == s) {
            out.after.push(format!(
                "DO $pgflip$ BEGIN DROP SCHEMA {}; \
                 EXCEPTION WHEN dependent_objects_still_exist OR invalid_schema_name THEN NULL; END $pgflip$",
                quote_ident(s)
            ));
        }
    }
    if !kept.is_empty() {
        out.warnings.push(format!(
            "the rollback keeps what the migration added or changed that it cannot take back (the retired tables may use it): {}",
            kept.join(", ")
        ));
    }
    // This rollback's own step, so that rolling it back redoes the migration's.
    let created_schemas: Vec<String> = want
        .schemas
        .iter()
        .filter(|s| !now.schemas.iter().any(|n| n.name == s.name))
        .map(|s| s.name.clone())
        .collect();
    let created_views = want
        .views
        .iter()
        .filter(|v| {
            !now.views
                .iter()
                .any(|n| n.schema == v.schema && n.name == v.name)
        })
        .map(|v| (v.schema.clone(), v.name.clone()))
        .collect();
    out.after.push(record_sql(&SchemaStep {
        before: beyond_tables(&now),
        created_views,
        created_schemas,
    })?);
    Ok(Some(out))
}
