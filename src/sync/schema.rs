//! `sync --schema-first` / `--schema-only`: create or align the synced tables on the target from
//! the source before (or instead of) copying rows, through the schema diff engine.
//!
//! pgsync does this with `pg_dump -t … | pg_restore --clean`: every selected table the target
//! has is dropped and recreated, its rows and whatever depends on it (views, foreign keys from
//! other tables) gone with it. pgflip never drops a user's table. It compares the two catalogs
//! restricted to the selected tables and what they need, and applies the diff as
//! `schema diff --apply` would:
//!
//! - a table only the source has is created, with the sequences its defaults use, the types
//!   its columns use and the functions its triggers call (when the target lacks them);
//! - a table both have is altered online and data-preserving (new columns added, indexes built
//!   CONCURRENTLY, constraints NOT VALID then validated; columns the source lacks kept as
//!   tombstones, never dropped);
//! - nothing outside the selection is looked at, so nothing else is created, altered or dropped
//!   (the target's other tables, its views, its extensions are invisible to the comparison);
//! - a step with a hazard that is not online-safe (a rewrite, a long ACCESS EXCLUSIVE lock,
//!   deleted data) refuses the whole step before anything is applied, unless the user allows
//!   it (`--allow-hazards`, as `schema diff --apply`).
//!
//! The source's owners and grants are not carried over (as pgsync's `--no-owner --no-acl`): a
//! new table belongs to the target's user.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::catalog::{Filter, ObjClass, Snapshot};
use crate::error::{Problem, Refusal};
use crate::ident::qualified;
use crate::schemadiff::{self, hazards, DiffOptions};
use crate::{Error, Result};

use super::{tables, SyncOptions};

/// The schema step, planned: the diff to apply and what was decided on the way.
#[derive(Debug, Clone)]
pub struct SchemaStep {
    /// The selected tables of the source (`schema.table`, quoted where needed).
    pub tables: Vec<String>,
    pub diff: schemadiff::Diff,
    /// Things left out of the comparison, said to the user (a foreign key to a table neither
    /// selected nor on the target).
    pub warnings: Vec<String>,
}

/// The source tables a sync selects, without requiring them on the target (the schema step
/// creates those the target lacks): the same names, patterns, groups and excludes as the data
/// sync resolves.
pub fn select_on_source(
    opts: &SyncOptions,
    listing: &[(u32, String, String)],
) -> Result<Vec<(u32, String, String)>> {
    let mut chosen: Vec<(u32, String, String)> = Vec::new();
    if opts.requests.is_empty() {
        chosen = tables::resolve(&[], &opts.exclude, &opts.scope, listing)?;
    } else {
        let all: Vec<String> = opts.requests.iter().map(|r| r.pattern.clone()).collect();
        tables::resolve(&all, &[], &opts.scope, listing)?;
        for r in &opts.requests {
            let found = tables::resolve(
                std::slice::from_ref(&r.pattern),
                if r.explicit { &[] } else { &opts.exclude },
                &opts.scope,
                listing,
            )?;
            for t in found {
                if !chosen.iter().any(|c| c.0 == t.0) {
                    chosen.push(t);
                }
            }
        }
    }
    if chosen.is_empty() {
        return Err(Error::InvalidInput(
            "no tables to sync (none matched, or every match was excluded)".into(),
        ));
    }
    Ok(chosen)
}

/// Plans the schema step: loads both catalogs, keeps the selected tables and what they need,
/// and compares. Reads only.
pub async fn plan(src: &Client, tgt: &Client, opts: &SyncOptions) -> Result<SchemaStep> {
    let listing = tables::list_tables(src).await?;
    let chosen = select_on_source(opts, &listing)?;
    let filter = Filter::default();
    let (src_snap, tgt_snap) = tokio::try_join!(
        schemadiff::load_snapshot(src, &filter),
        schemadiff::load_snapshot(tgt, &filter)
    )?;
    let keep: BTreeSet<(String, String)> = chosen
        .iter()
        .map(|(_, s, n)| (s.clone(), n.clone()))
        .collect();
    let (mut s, mut t, warnings) = restrict(&src_snap, &tgt_snap, &keep);
    schemadiff::compat::align_versions(&mut s, &mut t);
    let diff_opts = DiffOptions {
        drop: false,
        online: true,
        privileges: false,
        ..DiffOptions::default()
    };
    let diff = schemadiff::compare_snapshots(&s, &t, &diff_opts);
    Ok(SchemaStep {
        tables: chosen.iter().map(|(_, s, n)| qualified(s, n)).collect(),
        diff,
        warnings,
    })
}

/// Refuses a schema step the target cannot take safely: differences the diff engine cannot
/// express, objects the target's version lacks, steps with hazards not allowed. Nothing has
/// been applied when this returns an error.
pub fn check(step: &SchemaStep, allowed: &hazards::Allowed) -> Result<()> {
    if !step.diff.unsupported.is_empty() {
        return Err(Error::Refused(Refusal::new(
            "the schema of the synced tables cannot be aligned safely; nothing was applied \
             (change these by hand)",
            step.diff
                .unsupported
                .iter()
                .map(|u| Problem::new(u.clone(), u.clone()))
                .collect(),
        )));
    }
    let refused = hazards::refused(&step.diff.plan, allowed);
    if !refused.is_empty() {
        let mut kinds: Vec<&str> = refused
            .iter()
            .flat_map(|r| r.hazards.iter().map(|k| k.name()))
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        return Err(Error::Refused(Refusal::new(
            format!(
                "nothing was applied and no rows were copied: {} schema step{} {} hazards not \
                 allowed (review them with --dry-run, then allow them with --allow-hazards {})",
                refused.len(),
                if refused.len() == 1 { "" } else { "s" },
                if refused.len() == 1 { "has" } else { "have" },
                kinds.join(",")
            ),
            refused
                .iter()
                .map(|r| {
                    let k: Vec<&str> = r.hazards.iter().map(|k| k.name()).collect();
                    Problem::new(
                        r.description.clone(),
                        format!("step {}: {}: {}", r.step, r.description, k.join(", ")),
                    )
                })
                .collect(),
        )));
    }
    Ok(())
}

/// Both snapshots cut down to the selected tables and what they need. The source keeps the
/// selected tables, the sequences they own or whose defaults call them, and the types,
/// collations and functions they depend on (transitively, through `pg_depend`); the target
/// keeps only objects of the same names, so an object the target has and the selection does
/// not need is invisible to the comparison and can never be altered or dropped.
fn restrict(
    src: &Snapshot,
    tgt: &Snapshot,
    keep: &BTreeSet<(String, String)>,
) -> (Snapshot, Snapshot, Vec<String>) {
    let mut warnings = Vec::new();
    let table_oids: BTreeSet<u32> = src
        .tables
        .iter()
        .filter(|t| keep.contains(&(t.schema.clone(), t.name.clone())))
        .map(|t| t.oid)
        .collect();
    let seq_oids: BTreeSet<u32> = src.sequences.iter().map(|s| s.oid).collect();
    // What the selected tables depend on: types, collations, functions, sequences, and what
    // those depend on in turn. Never another table (a foreign key's referenced table is not
    // part of this table's schema) and never an extension's members.
    let mut needed: BTreeSet<(ObjClass, u32)> = BTreeSet::new();
    // Triggers, constraints, indexes and policies are objects of their own in `pg_depend`:
    // the functions a trigger calls or a check uses hang off them, not off the table.
    let mut frontier: Vec<(ObjClass, u32)> = Vec::new();
    for t in src.tables.iter().filter(|t| table_oids.contains(&t.oid)) {
        frontier.push((ObjClass::Class, t.oid));
        frontier.extend(t.triggers.iter().map(|x| (ObjClass::Trigger, x.oid)));
        frontier.extend(t.constraints.iter().map(|x| (ObjClass::Constraint, x.oid)));
        frontier.extend(t.indexes.iter().map(|x| (ObjClass::Class, x.oid)));
        frontier.extend(t.policies.iter().map(|x| (ObjClass::Policy, x.oid)));
    }
    let mut edges: std::collections::HashMap<(ObjClass, u32), Vec<(ObjClass, u32)>> =
        Default::default();
    for d in src.dependencies.iter().filter(|d| d.deptype != 'e') {
        edges
            .entry((d.from.class, d.from.oid))
            .or_default()
            .push((d.to.class, d.to.oid));
    }
    while let Some(from) = frontier.pop() {
        for &to in edges.get(&from).into_iter().flatten() {
            let d_to_class = to.0;
            let wanted = match d_to_class {
                ObjClass::Type | ObjClass::Collation | ObjClass::Proc => true,
                ObjClass::Class => seq_oids.contains(&to.1),
                _ => false,
            };
            if wanted && needed.insert(to) {
                frontier.push(to);
            }
        }
    }
    let has = |class: ObjClass, oid: u32| needed.contains(&(class, oid));

    let mut s = src.clone();
    s.tables
        .retain(|t| keep.contains(&(t.schema.clone(), t.name.clone())));
    s.sequences.retain(|q| {
        has(ObjClass::Class, q.oid)
            || q.owned_by
                .as_ref()
                .is_some_and(|o| keep.contains(&(o.schema.clone(), o.table.clone())))
    });
    s.types.retain(|t| has(ObjClass::Type, t.oid));
    s.collations.retain(|c| has(ObjClass::Collation, c.oid));
    s.functions.retain(|f| has(ObjClass::Proc, f.oid));
    s.views.clear();
    s.publications.clear();
    s.extensions.clear();
    s.extras.clear();
    // A foreign key to a table that is neither synced nor on the target could not be created:
    // left out, and said.
    for t in &mut s.tables {
        let name = qualified(&t.schema, &t.name);
        t.constraints.retain(|c| match &c.references {
            Some(r) => {
                let ok = keep.contains(&(r.schema.clone(), r.table.clone()))
                    || tgt.table(&r.schema, &r.table).is_some();
                if !ok {
                    warnings.push(format!(
                        "{name}: foreign key {} left out: {} is neither synced nor on the target",
                        crate::ident::quote_ident(&c.name),
                        qualified(&r.schema, &r.table)
                    ));
                }
                ok
            }
            None => true,
        });
    }
    let schemas: BTreeSet<String> = s
        .tables
        .iter()
        .map(|t| t.schema.clone())
        .chain(s.sequences.iter().map(|q| q.schema.clone()))
        .chain(s.types.iter().map(|q| q.schema.clone()))
        .chain(s.collations.iter().map(|q| q.schema.clone()))
        .chain(s.functions.iter().map(|q| q.schema.clone()))
        .collect();
    s.schemas.retain(|x| schemas.contains(&x.name));

    let named = |schema: &str, name: &str, set: &[(String, String)]| {
        set.iter().any(|(a, b)| a == schema && b == name)
    };
    let tables: Vec<(String, String)> = s
        .tables
        .iter()
        .map(|x| (x.schema.clone(), x.name.clone()))
        .collect();
    let seqs: Vec<(String, String)> = s
        .sequences
        .iter()
        .map(|x| (x.schema.clone(), x.name.clone()))
        .collect();
    let types: Vec<(String, String)> = s
        .types
        .iter()
        .map(|x| (x.schema.clone(), x.name.clone()))
        .collect();
    let colls: Vec<(String, String)> = s
        .collations
        .iter()
        .map(|x| (x.schema.clone(), x.name.clone()))
        .collect();
    let mut t = tgt.clone();
    t.tables.retain(|x| named(&x.schema, &x.name, &tables));
    t.sequences.retain(|x| named(&x.schema, &x.name, &seqs));
    t.types.retain(|x| named(&x.schema, &x.name, &types));
    t.collations.retain(|x| named(&x.schema, &x.name, &colls));
    t.functions.retain(|x| {
        s.functions
            .iter()
            .any(|f| f.schema == x.schema && f.name == x.name && f.identity_args == x.identity_args)
    });
    t.schemas.retain(|x| schemas.contains(&x.name));
    t.views.clear();
    t.publications.clear();
    t.extensions.clear();
    t.extras.clear();
    (s, t, warnings)
}
