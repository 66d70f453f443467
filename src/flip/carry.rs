//! What follows the live table, pair by pair: the moves (live retired, green brought in under its
//! name) and everything PostgreSQL binds to the table that must come along (names of indexes and
//! constraints, keys, owner, sequences, storage parameters, defaults, grants, comments,
//! row-level security, triggers, replica identity, publications, extended statistics).
//!
//! What concerns only green is set on green before the live relations are locked when the job
//! allows it ([`super::render::carried_early`]): [`Pair::carry`] puts it there, under green's
//! current name ([`Pair::cq`]); [`Pair::push`] is for what needs the live relations' locks.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use crate::ident::{qualified, quote_ident, QuotedName};
use crate::plan::{LockMode, Step};

use super::acl::{acl_sql, column_acl_sql, literal_or_null};
use super::check::{index_shape, takes_over_sequence};
use super::dependents::{self, Rel};
use super::render::{carried_early, mode_of, Ctx};
use super::{statistics, FlipKind, PlannedRelation};

/// The steps of one pair.
pub struct Pair<'a> {
    c: &'a Ctx<'a>,
    r: &'a PlannedRelation,
    l: &'a Rel,
    g: &'a Rel,
    live_q: String,
    retired_q: String,
    /// Where what concerns only green is set: green's current name when that happens before the
    /// live relations are locked, else the new live table's.
    cq: String,
    /// `ALTER TABLE` also takes partitioned tables; materialized views need their keyword.
    lkw: &'static str,
    gkw: &'static str,
    is_mv: bool,
    /// A migration brings a new version with its own names, comments, triggers, policies,
    /// storage parameters and replica identity (the job sets them, from the source's schema); a
    /// rollback brings back a retired copy that kept its own. Only what access depends on
    /// (owner, grants) and what binds by OID follows the live table.
    own_structure: bool,
    early: bool,
    steps: RefCell<Vec<Step>>,
    before: RefCell<Vec<Step>>,
    /// Green's index matched with each of live's (live index OID -> green index name).
    matched_idx: RefCell<BTreeMap<u32, String>>,
    validate_later: RefCell<Vec<(QuotedName, String)>>,
    warnings: RefCell<Vec<String>>,
}

/// What [`Pair::finish`] hands back.
pub struct PairSteps {
    /// Under the live relations' locks, in order.
    pub steps: Vec<Step>,
    /// On green, before the live relations are locked.
    pub before: Vec<Step>,
    /// Constraints added `NOT VALID`, to validate after the commit: (table, constraint).
    pub validate_later: Vec<(QuotedName, String)>,
    pub warnings: Vec<String>,
}

impl<'a> Pair<'a> {
    pub fn new(c: &'a Ctx<'a>, r: &'a PlannedRelation) -> Pair<'a> {
        let l = &c.inv.rels()[&r.live_oid];
        let g = &c.inv.rels()[&r.green_oid];
        let live_q = r.live.sql();
        let early = carried_early(c.kind);
        Pair {
            c,
            r,
            l,
            g,
            retired_q: r.retired.sql(),
            cq: if early { r.green.sql() } else { live_q.clone() },
            live_q,
            lkw: mode_of(l),
            gkw: mode_of(g),
            is_mv: l.relkind == "m",
            own_structure: matches!(c.kind, FlipKind::Migrate | FlipKind::Rollback),
            early,
            steps: RefCell::default(),
            before: RefCell::default(),
            matched_idx: RefCell::default(),
            validate_later: RefCell::default(),
            warnings: RefCell::default(),
        }
    }

    /// Every step of the pair, in order.
    pub fn render(c: &'a Ctx<'a>, r: &'a PlannedRelation) -> PairSteps {
        let p = Pair::new(c, r);
        p.moves();
        p.names();
        p.constraints();
        p.owner_and_sequences();
        p.storage_and_defaults();
        p.grants_and_comments();
        p.row_security();
        p.triggers();
        p.replica_identity();
        p.publications();
        p.statistics();
        PairSteps {
            steps: p.steps.into_inner(),
            before: p.before.into_inner(),
            validate_later: p.validate_later.into_inner(),
            warnings: p.warnings.into_inner(),
        }
    }

    /// A step under the live relations' locks, on the live table.
    fn push(&self, d: String, sql: String) {
        self.steps
            .borrow_mut()
            .push(Step::new(d, sql).lock(LockMode::AccessExclusive, self.r.live.quoted()));
    }

    /// A step that concerns only green: before the live relations are locked when the job
    /// allows it, else like [`Pair::push`].
    fn carry(&self, d: String, sql: String) {
        let (target, target_name) = if self.early {
            (&self.before, self.r.green.quoted())
        } else {
            (&self.steps, self.r.live.quoted())
        };
        target
            .borrow_mut()
            .push(Step::new(d, sql).lock(LockMode::AccessExclusive, target_name));
    }

    /// Retires live (with its partitions, into the generation's schema), drops the retired
    /// copy's foreign keys to tables outside the flip, and brings green in under live's name
    /// (its partitions under the names of live's with the same bound).
    pub fn moves(&self) {
        let Pair {
            c,
            r,
            live_q,
            retired_q,
            lkw,
            gkw,
            ..
        } = self;
        let inv = c.inv;
        let bk = &c.bk;
        let backup_schema = c.backup_schema;
        let flipped = &c.flipped;
        // With a schema swap, the renames have moved whatever was in the two schemas already:
        // what is left is named where the renames put it.
        let swap = c.opts.schema_swap.as_ref();
        let swapped_live = |s: &str| swap.is_some_and(|(l, _)| l == s);
        let after = |s: &str| match swap {
            Some((l, g)) if g == s => l.clone(),
            _ => s.to_string(),
        };
        if !swapped_live(&r.live.schema) {
            self.push(
                format!(
                    "retire {} into {backup_schema} (catalog only, names kept)",
                    r.live
                ),
                format!("ALTER {lkw} {live_q} SET SCHEMA {bk}"),
            );
        }
        // Partitions go with their table: live's into the generation's schema (names kept).
        for p in inv.partitions_of(r.live_oid) {
            if swapped_live(&p.schema) {
                continue;
            }
            self.push(
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
                self.push(
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
        let green_schema = after(&r.green.schema);
        if r.green.name != r.live.name {
            self.push(
                format!("rename green {} to {}", r.green, quote_ident(&r.live.name)),
                format!(
                    "ALTER {gkw} {} RENAME TO {}",
                    qualified(&green_schema, &r.green.name),
                    quote_ident(&r.live.name)
                ),
            );
        }
        if green_schema != r.live.schema {
            self.push(
                format!("move green into schema {}", quote_ident(&r.live.schema)),
                format!(
                    "ALTER {gkw} {} SET SCHEMA {}",
                    qualified(&green_schema, &r.live.name),
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
            let at = after(&gp.schema);
            if name != gp.name {
                self.push(
                    format!(
                        "rename green's partition {} to {}",
                        qualified(&gp.schema, &gp.name),
                        quote_ident(&name)
                    ),
                    format!(
                        "ALTER TABLE {} RENAME TO {}",
                        qualified(&at, &gp.name),
                        quote_ident(&name)
                    ),
                );
            }
            if schema != at {
                self.push(
                    format!(
                        "move green's partition {} into schema {}",
                        quote_ident(&name),
                        quote_ident(&schema)
                    ),
                    format!(
                        "ALTER TABLE {} SET SCHEMA {}",
                        qualified(&at, &name),
                        quote_ident(&schema)
                    ),
                );
            }
        }
    }

    /// Green's indexes, index-backed constraints and NOT NULL constraints take the names live's
    /// had.
    pub fn names(&self) {
        let Pair {
            c, r, live_q, cq, ..
        } = self;
        let own_structure = self.own_structure;
        let inv = c.inv;
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
                self.matched_idx
                    .borrow_mut()
                    .insert(li.oid, gi.name.clone());
                match (&gi.constraint, &li.constraint) {
                    (Some(gc), Some(lc)) if gc != lc => self.push(
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
                    (None, None) if gi.name != li.name => self.push(
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
                self.carry(
                    format!(
                        "rename constraint {} to {}",
                        quote_ident(&gc.name),
                        quote_ident(&lc.name)
                    ),
                    format!(
                        "ALTER TABLE {cq} RENAME CONSTRAINT {} TO {}",
                        quote_ident(&gc.name),
                        quote_ident(&lc.name)
                    ),
                );
            }
        }
    }

    /// Check and foreign-key constraints: rename matches, add what green lacks, and re-point
    /// green's own foreign keys that reference a table being retired.
    pub fn constraints(&self) {
        let Pair {
            c, r, live_q, cq, ..
        } = self;
        let own_structure = self.own_structure;
        let inv = c.inv;
        let kind = c.kind;
        let opts = c.opts;
        let live_set = &c.live_set;
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
                        // (Names of check and foreign-key constraints are per table.)
                        self.carry(
                            format!(
                                "rename constraint {} to {}",
                                quote_ident(&gc.name),
                                quote_ident(&lc.name)
                            ),
                            format!(
                                "ALTER TABLE {cq} RENAME CONSTRAINT {} TO {}",
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
                        self.push(
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
                    self.push(
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
                        self.validate_later
                            .borrow_mut()
                            .push((r.live.quoted(), lc.name.clone()));
                    }
                }
            }
        }
        // Green's FKs to tables that this flip retires would stay on the retired copies.
        for gc in green_cons.iter().filter(|gc| {
            gc.contype == "f" && !used_green.contains(&gc.name) && live_set.contains(&gc.ref_rel)
        }) {
            self.push(
                format!("re-point green's foreign key {} to the new table", quote_ident(&gc.name)),
                format!(
                    "ALTER TABLE {live_q} DROP CONSTRAINT {n}; ALTER TABLE {live_q} ADD CONSTRAINT {n} {} NOT VALID",
                    gc.def.trim_end_matches(" NOT VALID"),
                    n = quote_ident(&gc.name)
                ),
            );
            if gc.validated {
                self.validate_later
                    .borrow_mut()
                    .push((r.live.quoted(), gc.name.clone()));
            }
        }
    }

    /// The owner, and the sequences of live's columns: handed over, or green's own take their
    /// names and continue past both sides' values.
    pub fn owner_and_sequences(&self) {
        let Pair {
            c,
            r,
            l,
            g,
            live_q,
            cq,
            gkw,
            ..
        } = self;
        let inv = c.inv;
        let backup_schema = c.backup_schema;
        // Owner.
        if l.owner != g.owner {
            self.carry(
                format!("owner {}", quote_ident(&l.owner)),
                format!("ALTER {gkw} {cq} OWNER TO {}", quote_ident(&l.owner)),
            );
        }
        // Sequences.
        let green_cols: Vec<_> = inv.columns_of(r.green_oid).collect();
        for s in inv.sequences_of(r.live_oid) {
            let retired_seq = qualified(backup_schema, &s.name);
            let live_seq = qualified(&s.schema, &s.name);
            let gc = green_cols.iter().find(|c| c.name == s.column);
            let Some(gc) = gc else { continue };
            let col = quote_ident(&s.column);
            let lc = inv.columns_of(r.live_oid).find(|c| c.name == s.column);
            if takes_over_sequence(lc, gc, s) {
                self.push(
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
                self.push(
                    format!("green's sequence for {col} takes the name {live_seq} and continues past both sides' values"),
                    sql,
                );
            }
        }
    }

    /// Storage parameters, and the column defaults green lacks.
    pub fn storage_and_defaults(&self) {
        let Pair {
            c,
            r,
            l,
            g,
            cq,
            gkw,
            ..
        } = self;
        let own_structure = self.own_structure;
        let inv = c.inv;
        let opts = c.opts;
        let green_cols: Vec<_> = inv.columns_of(r.green_oid).collect();
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
                self.carry(
                    "reset storage parameters live did not have".into(),
                    format!("ALTER {gkw} {cq} RESET ({})", reset.join(", ")),
                );
            }
            if !l.reloptions.is_empty() {
                self.carry(
                    "storage parameters as live had them".into(),
                    format!("ALTER {gkw} {cq} SET ({})", l.reloptions.join(", ")),
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
                    self.carry(
                        format!("default of {} as live had it", quote_ident(&lc.name)),
                        format!(
                            "ALTER TABLE {cq} ALTER COLUMN {} SET DEFAULT {expr}",
                            quote_ident(&lc.name)
                        ),
                    );
                }
            }
        }
    }

    /// Table and column grants, and comments.
    pub fn grants_and_comments(&self) {
        let Pair {
            c,
            r,
            l,
            g,
            cq,
            gkw,
            ..
        } = self;
        let own_structure = self.own_structure;
        let inv = c.inv;
        let green_cols: Vec<_> = inv.columns_of(r.green_oid).collect();
        // Grants (table and columns).
        for s in acl_sql("TABLE", cq, &l.owner, &g.acl, &l.acl) {
            self.carry("grants as live had them".into(), s);
        }
        for lc in inv.columns_of(r.live_oid) {
            let cur = green_cols
                .iter()
                .find(|c| c.name == lc.name)
                .map(|c| c.acl.clone())
                .unwrap_or_default();
            for s in column_acl_sql(cq, &lc.name, &cur, &lc.acl) {
                self.carry(format!("column grants on {}", quote_ident(&lc.name)), s);
            }
            let gcomment = green_cols
                .iter()
                .find(|c| c.name == lc.name)
                .and_then(|c| c.comment.clone());
            if !own_structure
                && gcomment != lc.comment
                && green_cols.iter().any(|c| c.name == lc.name)
            {
                self.carry(
                    format!("comment on column {}", quote_ident(&lc.name)),
                    format!(
                        "COMMENT ON COLUMN {cq}.{} IS {}",
                        quote_ident(&lc.name),
                        literal_or_null(&lc.comment)
                    ),
                );
            }
        }
        if l.comment != g.comment && !own_structure {
            self.carry(
                "comment".into(),
                format!("COMMENT ON {gkw} {cq} IS {}", literal_or_null(&l.comment)),
            );
        }
    }

    /// Row-level security flags and policies.
    pub fn row_security(&self) {
        let Pair {
            c,
            r,
            l,
            g,
            live_q,
            cq,
            ..
        } = self;
        let own_structure = self.own_structure;
        let inv = c.inv;
        // Row-level security.
        if l.rls != g.rls && !own_structure {
            self.carry(
                "row-level security as live had it".into(),
                format!(
                    "ALTER TABLE {cq} {} ROW LEVEL SECURITY",
                    if l.rls { "ENABLE" } else { "DISABLE" }
                ),
            );
        }
        if l.force_rls != g.force_rls && !own_structure {
            self.carry(
                "forced row-level security as live had it".into(),
                format!(
                    "ALTER TABLE {cq} {} ROW LEVEL SECURITY",
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
            // A policy whose expressions read a relation is created after the moves, so that
            // its names resolve to the new relations.
            let on = if p.reads_relations { &live_q } else { &cq };
            let mut sql = format!(
                "CREATE POLICY {} ON {on} AS {} FOR {cmd} TO {}",
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
            if p.reads_relations {
                self.push(format!("policy {}", quote_ident(&p.name)), sql);
            } else {
                self.carry(format!("policy {}", quote_ident(&p.name)), sql);
            }
        }
    }

    /// Triggers (pgflip's own stay behind).
    pub fn triggers(&self) {
        let Pair {
            c, r, live_q, cq, ..
        } = self;
        let own_structure = self.own_structure;
        let early = self.early;
        let inv = c.inv;
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
            // On green before the locks when its definition names its table exactly once.
            let marker = format!(" ON {} ", t.on);
            let retarget = early && t.def.matches(&marker).count() == 1;
            let on = if retarget { &cq } else { &live_q };
            let mut sql = if retarget {
                t.def.replacen(&marker, &format!(" ON {cq} "), 1)
            } else {
                t.def.clone()
            };
            let state = match t.enabled.as_str() {
                "D" => Some("DISABLE TRIGGER"),
                "R" => Some("ENABLE REPLICA TRIGGER"),
                "A" => Some("ENABLE ALWAYS TRIGGER"),
                _ => None,
            };
            if let Some(st) = state {
                sql.push_str(&format!("; ALTER TABLE {on} {st} {}", quote_ident(&t.name)));
            }
            if retarget {
                self.carry(format!("trigger {}", quote_ident(&t.name)), sql);
            } else {
                self.push(format!("trigger {}", quote_ident(&t.name)), sql);
            }
        }
    }

    /// Replica identity (tables only).
    pub fn replica_identity(&self) {
        let Pair {
            c,
            r,
            l,
            g,
            live_q,
            cq,
            ..
        } = self;
        let is_mv = self.is_mv;
        let own_structure = self.own_structure;
        let inv = c.inv;
        let live_idx: Vec<_> = inv.indexes_of(r.live_oid).collect();
        let matched_idx = self.matched_idx.borrow();
        // Replica identity (tables only).
        if !is_mv && !own_structure && (l.replident != g.replident || l.replident == "i") {
            // Green's index matched with live's keeps the flag through its rename.
            let live_ri = live_idx.iter().find(|i| i.replident);
            let green_ri = live_ri.and_then(|i| matched_idx.get(&i.oid));
            let how = |index: &str| match l.replident.as_str() {
                "n" => "NOTHING".to_string(),
                "f" => "FULL".to_string(),
                "i" => match live_ri {
                    Some(_) => format!("USING INDEX {}", quote_ident(index)),
                    None => "DEFAULT".to_string(),
                },
                _ => "DEFAULT".to_string(),
            };
            match green_ri {
                Some(gname) if l.replident == "i" => self.carry(
                    format!("replica identity {}", how(gname)),
                    format!("ALTER TABLE {cq} REPLICA IDENTITY {}", how(gname)),
                ),
                _ if l.replident != "i" => self.carry(
                    format!("replica identity {}", how("")),
                    format!("ALTER TABLE {cq} REPLICA IDENTITY {}", how("")),
                ),
                _ => {
                    let name = live_ri.map(|i| i.name.clone()).unwrap_or_default();
                    self.push(
                        format!("replica identity {}", how(&name)),
                        format!("ALTER TABLE {live_q} REPLICA IDENTITY {}", how(&name)),
                    )
                }
            }
        }
    }

    /// Publication membership.
    pub fn publications(&self) {
        let Pair {
            c,
            r,
            live_q,
            retired_q,
            ..
        } = self;
        let inv = c.inv;
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
            self.push(
                format!(
                    "publication {} follows the table",
                    quote_ident(&p.publication)
                ),
                sql,
            );
        }
    }

    /// Extended statistics: retired with live, made again (or taken from green) under live's
    /// names.
    pub fn statistics(&self) {
        let Pair { c, r, live_q, .. } = self;
        let inv = c.inv;
        let kind = c.kind;
        let opts = c.opts;
        let bk = &c.bk;
        // Extended statistics: retired with live, made again (or taken from green) under
        // live's names.
        let create = kind != FlipKind::Migrate && !opts.allow_column_changes;
        if !create {
            for s in statistics::unmatched(&inv.statistics, r.live_oid, r.green_oid) {
                self.warnings.borrow_mut().push(format!(
                    "extended statistics {} stays with the retired table (green has no such statistics)",
                    s.sql_name()
                ));
            }
        }
        for (d, sql) in
            statistics::carry(&inv.statistics, r.live_oid, r.green_oid, live_q, bk, create)
        {
            self.push(d, sql);
        }
    }
}
