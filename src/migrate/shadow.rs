//! The source's tables rewritten into the target's shadow schemas, and their DDL.
//!
//! The source's catalog snapshot is taken as is and only the names that must move are moved:
//! the table's own schema, its partition / inheritance parents, its indexes (`ON s.t`), the
//! serial sequences it owns (and the `nextval` defaults that use them), its identity
//! sequence, and the foreign keys that reference another migrated table. Everything else keeps
//! pointing at the live schemas: types, domains, functions used by defaults and checks, tables
//! the migration leaves alone. That is what the swap needs: after it, the moved tables stand
//! in the live schemas and refer to the same objects the source's tables refer to.
//!
//! The DDL comes from [`crate::ddl`] (the same text `schema dump` and the schema diff write),
//! split into what prepare runs at each phase: structure before the rows, key constraints and
//! indexes after them, foreign keys last (`NOT VALID`, then validated).

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{ConstraintKind, Sequence, Snapshot, Table, TableKind};
use crate::ddl;
use crate::ident::qualified;
use crate::schemadiff::mapping::replace_qualified;

/// A source table rewritten for its shadow schema, with the DDL of each phase.
#[derive(Debug, Clone)]
pub struct ShadowTable {
    /// The source's table, unchanged (its schema is the live schema).
    pub source: Table,
    /// The same table with its names moved to the shadow schema.
    pub shadow: Table,
    /// Owned (serial) sequences, moved.
    pub sequences: Vec<Sequence>,
}

impl ShadowTable {
    /// Sequences, table, sequence ownership: everything before the rows.
    pub fn structure_sql(&self, parents: &[&Table]) -> String {
        let mut out = String::new();
        for s in &self.sequences {
            out.push_str(&ddl::create_sequence(s));
        }
        out.push_str(&ddl::create_table_with_parents(&self.shadow, parents));
        for s in &self.sequences {
            if let Some(o) = ddl::sequence_owned_by(s) {
                out.push_str(&o);
            }
        }
        out
    }

    /// Key constraints (primary key, unique, exclusion), CHECK constraints not written inside
    /// CREATE TABLE, indexes, replica identity: what is built after the rows.
    pub fn keys_sql(&self) -> String {
        let t = &self.shadow;
        let mut out = String::new();
        for c in &t.constraints {
            if c.kind != ConstraintKind::ForeignKey {
                out.push_str(&ddl::create_constraint(t, c));
            }
        }
        for i in &t.indexes {
            out.push_str(&ddl::create_index(i));
        }
        out.push_str(&ddl::replica_identity(t));
        out
    }

    /// Foreign keys: `(add NOT VALID, validate)` per constraint. A partitioned table cannot
    /// take a `NOT VALID` foreign key: it is added validated and has no second statement.
    pub fn foreign_keys_sql(&self) -> Vec<(String, Option<String>)> {
        let t = &self.shadow;
        let mut out = Vec::new();
        for c in t.foreign_keys() {
            if ddl::is_implied_constraint(c) {
                continue;
            }
            let name = crate::ident::quote_ident(&c.name);
            if t.kind == TableKind::Partitioned {
                out.push((ddl::create_constraint(t, c), None));
                continue;
            }
            let def = c.definition.trim_end_matches(" NOT VALID");
            let add = format!(
                "ALTER TABLE ONLY {} ADD CONSTRAINT {name} {def} NOT VALID;\n{}",
                t.sql_name(),
                ddl::comment_on(
                    "CONSTRAINT",
                    &format!("{name} ON {}", t.sql_name()),
                    c.comment.as_deref()
                )
            );
            let validate = c
                .validated
                .then(|| format!("ALTER TABLE {} VALIDATE CONSTRAINT {name}", t.sql_name()));
            out.push((add, validate));
        }
        out
    }

    /// Columns that take data (generated columns are computed by the server).
    pub fn data_columns(&self) -> Vec<&crate::catalog::Column> {
        self.source
            .columns
            .iter()
            .filter(|c| c.generated.is_none())
            .collect()
    }
}

/// Rewrites the `selected` source tables (by schema and name) into their shadow schemas.
/// `schema_map` maps each migrated live schema to its shadow schema; `owner` is who owns the
/// new tables when the source's owner does not exist on the target.
pub fn build(
    source: &Snapshot,
    selected: &BTreeSet<(String, String)>,
    schema_map: &BTreeMap<String, String>,
    target_roles: &[String],
    owner: &str,
) -> Vec<ShadowTable> {
    let moved =
        |schema: &str, name: &str| selected.contains(&(schema.to_string(), name.to_string()));
    let mut out = Vec::new();
    for t in &source.tables {
        if !moved(&t.schema, &t.name) {
            continue;
        }
        let shadow_schema = &schema_map[&t.schema];
        let take_owner = |o: &str| {
            if target_roles.iter().any(|r| r == o) {
                o.to_string()
            } else {
                owner.to_string()
            }
        };
        // Serial sequences owned by this table move with it.
        let sequences: Vec<Sequence> = source
            .sequences
            .iter()
            .filter(|s| {
                !s.identity
                    && s.owned_by
                        .as_ref()
                        .is_some_and(|o| o.schema == t.schema && o.table == t.name)
            })
            .map(|s| {
                let mut s = s.clone();
                s.schema = shadow_schema.clone();
                if let Some(o) = s.owned_by.as_mut() {
                    o.schema = shadow_schema.clone();
                }
                s.owner = take_owner(&s.owner);
                s.acl = None;
                s
            })
            .collect();
        let owned: Vec<String> = source
            .sequences
            .iter()
            .filter(|s| {
                s.owned_by
                    .as_ref()
                    .is_some_and(|o| o.schema == t.schema && o.table == t.name)
            })
            .map(|s| qualified(&s.schema, &s.name))
            .collect();
        let mut sh = t.clone();
        sh.schema = shadow_schema.clone();
        sh.owner = take_owner(&t.owner);
        sh.acl = None;
        sh.triggers.clear();
        sh.policies.clear();
        for p in sh.parents.iter_mut() {
            if moved(&p.schema, &p.name) {
                p.schema = schema_map[&p.schema].clone();
            }
        }
        for c in sh.columns.iter_mut() {
            c.acl.clear();
            if let Some(d) = c.default.as_mut() {
                if owned.iter().any(|q| d.contains(q.as_str())) {
                    *d = replace_qualified(d, &t.schema, shadow_schema);
                }
            }
            if let Some(q) = c.identity_sequence.as_mut() {
                q.schema = shadow_schema.clone();
            }
        }
        let on_live = format!(" ON {} ", qualified(&t.schema, &t.name));
        let on_only_live = format!(" ON ONLY {} ", qualified(&t.schema, &t.name));
        let on_shadow = format!(" ON {} ", qualified(shadow_schema, &t.name));
        let on_only_shadow = format!(" ON ONLY {} ", qualified(shadow_schema, &t.name));
        for i in sh.indexes.iter_mut() {
            i.schema = shadow_schema.clone();
            i.definition = i
                .definition
                .replacen(&on_only_live, &on_only_shadow, 1)
                .replacen(&on_live, &on_shadow, 1);
            if let Some(p) = i.parent_index.as_mut() {
                if let Some(s) = schema_map.get(&p.schema) {
                    p.schema = s.clone();
                }
            }
        }
        for c in sh.constraints.iter_mut() {
            if let Some(r) = c.references.as_mut() {
                if moved(&r.schema, &r.table) {
                    let from = r.schema.clone();
                    let to = schema_map[&r.schema].clone();
                    let old = format!(" REFERENCES {}(", qualified(&from, &r.table));
                    let new = format!(" REFERENCES {}(", qualified(&to, &r.table));
                    c.definition = c.definition.replacen(&old, &new, 1);
                    r.schema = to;
                }
            }
        }
        out.push(ShadowTable {
            source: t.clone(),
            shadow: sh,
            sequences,
        });
    }
    // Parents before their partitions and children.
    let mut ordered: Vec<ShadowTable> = Vec::with_capacity(out.len());
    let mut placed: BTreeSet<(String, String)> = BTreeSet::new();
    while !out.is_empty() {
        let before = out.len();
        let mut rest = Vec::new();
        for t in out {
            let ready = t.shadow.parents.iter().all(|p| {
                !schema_map.values().any(|s| s == &p.schema)
                    || placed.contains(&(p.schema.clone(), p.name.clone()))
            });
            if ready {
                placed.insert((t.shadow.schema.clone(), t.shadow.name.clone()));
                ordered.push(t);
            } else {
                rest.push(t);
            }
        }
        if rest.len() == before {
            // A parent outside the selection: create them anyway; the server will say what is
            // missing.
            ordered.extend(rest);
            break;
        }
        out = rest;
    }
    ordered
}

/// `pgflip_shadow_<op>_<schema>`, or `pgflip_shadow_<op>_<n>` when that would pass 63 bytes.
pub fn shadow_schema_name(op: i64, schema: &str, n: usize) -> String {
    let name = format!("pgflip_shadow_{op}_{schema}");
    if name.len() <= 63 {
        name
    } else {
        format!("pgflip_shadow_{op}_{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_schema_names_stay_within_63_bytes() {
        assert_eq!(shadow_schema_name(7, "public", 0), "pgflip_shadow_7_public");
        let long = "s".repeat(63);
        let n = shadow_schema_name(12, &long, 3);
        assert_eq!(n, "pgflip_shadow_12_3");
        assert!(shadow_schema_name(1, "Ünïcode Schema", 0).len() <= 63);
    }
}
