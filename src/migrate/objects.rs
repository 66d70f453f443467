//! Everything of the new version that is not a table: types, enums, domains, functions,
//! sequences, extensions, views, materialized views, triggers, policies, comments and the
//! grants of new relations. The schema diff engine ([`crate::schemadiff`]) decides and orders
//! all of it; this module only chooses which two snapshots it compares, at two moments:
//!
//! - **Before the shadow tables** ([`additions`]): the source's objects that the target lacks
//!   and that tables may need (schemas, extensions, collations, types, functions, standalone
//!   sequences) and the enum labels the source added. The two snapshots compared differ by
//!   exactly those objects, so the diff is additive by construction: nothing live changes.
//!   What was created is recorded, so that abort drops it ([`drops`]).
//! - **Inside the swap** ([`after_swap`]): the source against the target *as it will be once
//!   the flip has moved the tables*: the target's snapshot with the migrated tables replaced by
//!   the shadow tables (read from the target's own catalog, so every oid and dependency is
//!   real) renamed into the live schemas, with what the flip carries over (owner and grants of
//!   the tables the target had). The diff of that pair is what the swap transaction runs after
//!   the moves: replaced functions, views, triggers, policies, comments, grants of new tables,
//!   and the drop of what only the old version had. It is catalog work only (the tables are the
//!   source's already), so nothing is built under the flip's locks.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{ObjClass, Snapshot, TypeKind};
use crate::ddl::{self, Item};
use crate::ident::{qualified, quote_ident};
use crate::plan::{Hazard, Plan};
use crate::schemadiff::{self, DiffOptions};

/// The diff options of both moments: plain DDL (the flip's transaction cannot take
/// `CONCURRENTLY`), tables and columns the source lacks kept, never dropped.
fn options() -> DiffOptions {
    DiffOptions {
        drop: false,
        online: false,
        ..DiffOptions::default()
    }
}

/// Oids (by class) of source objects that use a relation, directly or through another such
/// object: a function returning a table's row type cannot exist before the table does.
fn uses_relations(src: &Snapshot) -> BTreeSet<(ObjClass, u32)> {
    let mut out: BTreeSet<(ObjClass, u32)> = BTreeSet::new();
    loop {
        let before = out.len();
        for d in &src.dependencies {
            if d.to.class == ObjClass::Class || out.contains(&(d.to.class, d.to.oid)) {
                out.insert((d.from.class, d.from.oid));
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// The labels of `new` keep `old`'s in the same order (only additions): `ALTER TYPE … ADD
/// VALUE` can bring the target there without touching a row.
fn labels_extend(old: &[String], new: &[String]) -> bool {
    let mut it = new.iter();
    old.iter().all(|o| it.any(|n| n == o)) && new.len() > old.len()
}

/// `(with, without)`: two snapshots whose diff creates, in dependency order, the source's
/// objects the target lacks that tables may use. `without` is the target's schemas,
/// extensions and collations; `with` adds the source's new ones and its other new objects.
/// Schemas in `made` are created by prepare itself (with its record): both sides have them.
pub fn additions(src: &Snapshot, tgt: &Snapshot, made: &BTreeSet<String>) -> (Snapshot, Snapshot) {
    let later = uses_relations(src);
    let mut without = Snapshot {
        filter: tgt.filter.clone(),
        server_version: tgt.server_version,
        schemas: tgt.schemas.clone(),
        extensions: tgt.extensions.clone(),
        collations: tgt.collations.clone(),
        roles: tgt.roles.clone(),
        ..Snapshot::default()
    };
    without.schemas.extend(
        src.schemas
            .iter()
            .filter(|s| made.contains(&s.name) && !tgt.schemas.iter().any(|x| x.name == s.name))
            .cloned(),
    );
    let mut with = without.clone();
    with.dependencies = src.dependencies.clone();
    for s in &src.schemas {
        if !without.schemas.iter().any(|x| x.name == s.name) {
            with.schemas.push(s.clone());
        }
    }
    for e in &src.extensions {
        if !tgt.extensions.iter().any(|x| x.name == e.name) {
            with.extensions.push(e.clone());
        }
    }
    for c in &src.collations {
        if !tgt
            .collations
            .iter()
            .any(|x| x.schema == c.schema && x.name == c.name)
        {
            with.collations.push(c.clone());
        }
    }
    for t in &src.types {
        if later.contains(&(ObjClass::Type, t.oid)) {
            continue;
        }
        match tgt
            .types
            .iter()
            .find(|x| x.schema == t.schema && x.name == t.name)
        {
            None => with.types.push(t.clone()),
            Some(old) => {
                if let (TypeKind::Enum { labels: ol }, TypeKind::Enum { labels: nl }) =
                    (&old.kind, &t.kind)
                {
                    if labels_extend(ol, nl) {
                        let mut grown = old.clone();
                        grown.kind = t.kind.clone();
                        without.types.push(old.clone());
                        with.types.push(grown);
                    }
                }
            }
        }
    }
    for f in &src.functions {
        if later.contains(&(ObjClass::Proc, f.oid)) {
            continue;
        }
        if !tgt
            .functions
            .iter()
            .any(|x| x.schema == f.schema && x.name == f.name && x.identity_args == f.identity_args)
        {
            with.functions.push(f.clone());
        }
    }
    for s in &src.sequences {
        if s.owned_by.is_none()
            && !s.identity
            && !tgt
                .sequences
                .iter()
                .any(|x| x.schema == s.schema && x.name == s.name)
        {
            with.sequences.push(s.clone());
        }
    }
    (with, without)
}

/// The plan of [`additions`].
pub fn additions_plan(with: &Snapshot, without: &Snapshot) -> Plan {
    schemadiff::diff(with, without, &options())
}

/// `DROP … IF EXISTS` of what `with` has and `without` lacks, dependents first: what abort
/// runs to remove the additions. (Enum labels cannot be removed from an enum: added ones stay.)
pub fn drops(with: &Snapshot, without: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    for item in ddl::ordered(with).into_iter().rev() {
        let sql = match item {
            Item::Schema(s) if !without.schemas.iter().any(|x| x.name == s.name) => {
                format!("DROP SCHEMA IF EXISTS {}", quote_ident(&s.name))
            }
            Item::Extension(e) if !without.extensions.iter().any(|x| x.name == e.name) => {
                format!("DROP EXTENSION IF EXISTS {}", quote_ident(&e.name))
            }
            Item::Collation(c) => {
                format!("DROP COLLATION IF EXISTS {}", qualified(&c.schema, &c.name))
            }
            Item::Type(t)
                if !without
                    .types
                    .iter()
                    .any(|x| x.schema == t.schema && x.name == t.name) =>
            {
                let kw = if matches!(t.kind, TypeKind::Domain { .. }) {
                    "DOMAIN"
                } else {
                    "TYPE"
                };
                format!("DROP {kw} IF EXISTS {}", qualified(&t.schema, &t.name))
            }
            Item::Function(f) => format!(
                "DROP {} IF EXISTS {}({})",
                if f.is_procedure() {
                    "PROCEDURE"
                } else {
                    "FUNCTION"
                },
                qualified(&f.schema, &f.name),
                f.identity_args
            ),
            Item::Sequence(s) => {
                format!("DROP SEQUENCE IF EXISTS {}", qualified(&s.schema, &s.name))
            }
            _ => continue,
        };
        out.push(sql);
    }
    out
}

/// What `with` has and `without` lacks, as `(kind, schema, name)` (a function's name with its
/// arguments): what prepare adds ([`additions`]).
pub fn added(with: &Snapshot, without: &Snapshot) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for e in &with.extensions {
        if !without.extensions.iter().any(|x| x.name == e.name) {
            out.push(("extension".into(), String::new(), e.name.clone()));
        }
    }
    for c in &with.collations {
        if !without
            .collations
            .iter()
            .any(|x| x.schema == c.schema && x.name == c.name)
        {
            out.push(("collation".into(), c.schema.clone(), c.name.clone()));
        }
    }
    for t in &with.types {
        if !without
            .types
            .iter()
            .any(|x| x.schema == t.schema && x.name == t.name)
        {
            out.push(("type".into(), t.schema.clone(), t.name.clone()));
        }
    }
    for f in &with.functions {
        out.push((
            "function".into(),
            f.schema.clone(),
            format!("{}({})", f.name, f.identity_args),
        ));
    }
    for q in &with.sequences {
        out.push(("sequence".into(), q.schema.clone(), q.name.clone()));
    }
    out
}

/// One migrated table for [`after_swap`]: where it is built and whether the target has it.
pub struct Moved<'a> {
    pub schema: &'a str,
    pub name: &'a str,
    pub shadow_schema: &'a str,
    pub on_target: bool,
}

/// The target as the flip will leave it: `live` (the target's user schemas) with the migrated
/// tables the target has (and the sequences they own) taken out, and `shadow` (the target's
/// shadow schemas, loaded by name) renamed into the live schemas, with the owner and grants
/// the flip carries over from the tables they replace.
pub fn after_swap_target(
    live: &Snapshot,
    shadow: &Snapshot,
    moved: &[Moved<'_>],
) -> crate::Result<Snapshot> {
    let replaced: BTreeSet<(&str, &str)> = moved
        .iter()
        .filter(|m| m.on_target)
        .map(|m| (m.schema, m.name))
        .collect();
    let mut out = live.clone();
    let retired: BTreeMap<(String, String), crate::catalog::Table> = live
        .tables
        .iter()
        .filter(|t| replaced.contains(&(t.schema.as_str(), t.name.as_str())))
        .map(|t| ((t.schema.clone(), t.name.clone()), t.clone()))
        .collect();
    out.tables
        .retain(|t| !replaced.contains(&(t.schema.as_str(), t.name.as_str())));
    out.sequences.retain(|s| {
        !s.owned_by
            .as_ref()
            .is_some_and(|o| replaced.contains(&(o.schema.as_str(), o.table.as_str())))
    });
    let mut pairs: BTreeMap<&str, &str> = BTreeMap::new();
    for m in moved {
        pairs.insert(m.shadow_schema, m.schema);
    }
    let mut renamed = shadow.clone();
    for (from, to) in &pairs {
        renamed = schemadiff::mapping::remap(&renamed, from, to)?;
    }
    for mut t in renamed.tables {
        if let Some(old) = retired.get(&(t.schema.clone(), t.name.clone())) {
            // The flip: owner, table grants, and the grants of the columns live had.
            t.owner = old.owner.clone();
            t.acl = old.acl.clone();
            for c in t.columns.iter_mut() {
                if let Some(oc) = old.columns.iter().find(|x| x.name == c.name) {
                    c.acl = oc.acl.clone();
                }
            }
        }
        out.tables.push(t);
    }
    out.sequences.extend(renamed.sequences);
    for mut v in renamed.views {
        // A materialized view built beside for one the target has: the flip switches the two,
        // carrying owner and grants over as for a table.
        if let Some(i) = out
            .views
            .iter()
            .position(|x| x.materialized && x.schema == v.schema && x.name == v.name)
        {
            let old = out.views.remove(i);
            v.owner = old.owner;
            v.acl = old.acl;
        }
        out.views.push(v);
    }
    out.types.extend(renamed.types);
    out.functions.extend(renamed.functions);
    out.dependencies.extend(shadow.dependencies.iter().copied());
    for (k, v) in &shadow.column_uses {
        out.column_uses.insert(*k, v.clone());
    }
    Ok(out)
}

/// What the swap transaction runs after the moves so that the target's schema is the
/// source's, and the warnings about it (a step that would build or scan under the locks).
pub struct AfterSwap {
    pub statements: Vec<String>,
    pub warnings: Vec<String>,
    /// Differences the diff cannot make safely (by name).
    pub unsupported: Vec<String>,
}

/// The diff of `source` against [`after_swap_target`].
pub fn after_swap(source: &Snapshot, after: &Snapshot) -> AfterSwap {
    // Across major versions, what differs only by each version's defaults (the owner's
    // MAINTAIN from 17, schema public's owner and privileges from 15) is no difference: as
    // in `schema diff`, or the swap would revoke MAINTAIN from every table's owner on a 17+
    // target and give its schema public the older version's defaults.
    let (mut source, mut after) = (source.clone(), after.clone());
    schemadiff::compat::align_versions(&mut source, &mut after);
    let diff = schemadiff::compare_snapshots(&source, &after, &options());
    let mut warnings = Vec::new();
    let mut statements = Vec::new();
    for s in &diff.plan.steps {
        if s.hazards.iter().any(|h| {
            matches!(
                h,
                Hazard::Rewrite | Hazard::BuildsIndex | Hazard::Validates | Hazard::ReplacesData
            )
        }) {
            warnings.push(format!(
                "the swap will {} under its locks: {}",
                s.hazards
                    .iter()
                    .filter(|h| **h != Hazard::AccessExclusive)
                    .map(|h| h.describe())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.description
            ));
        }
        statements.push(s.sql.clone());
    }
    AfterSwap {
        statements,
        warnings,
        unsupported: diff.unsupported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_labels_extend_only_by_additions_in_order() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(labels_extend(&v(&["a", "b"]), &v(&["a", "x", "b"])));
        assert!(labels_extend(&v(&["a", "b"]), &v(&["a", "b", "c"])));
        assert!(!labels_extend(&v(&["a", "b"]), &v(&["b", "a", "c"])));
        assert!(!labels_extend(&v(&["a", "b"]), &v(&["a", "c"])));
        assert!(!labels_extend(&v(&["a", "b"]), &v(&["a", "b"])));
    }
}
