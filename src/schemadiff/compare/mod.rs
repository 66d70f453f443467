//! Pairing the objects of two snapshots and turning the differences into ordered steps.
//!
//! The script is built in three passes over the two dependency orders
//! ([`crate::ddl::ordered`]):
//!
//! 1. the target's items in reverse order: drop what the source lacks, what changed in a way
//!    PostgreSQL cannot ALTER, and everything that depends on those (a view over a column whose
//!    type changes, a trigger on a function whose result type changes); column removals;
//! 2. the source's items in order: create what is new or was dropped in pass 1, ALTER what
//!    exists on both sides (columns, sequences, owners, privileges, comments, enum values…);
//! 3. the target's items in reverse order again: drop the types, functions, sequences,
//!    collations, schemas and extensions that the source lacks, now that nothing uses them.
//!
//! Walking the real dependency orders rather than fixed sections is what makes "drop what
//! depends on a changed object first, recreate it after" come out right.

use std::collections::{HashMap, HashSet};

use crate::catalog::*;
use crate::ddl::{self, Item, Relation};
use crate::ident::QuotedName;
use crate::ident::{qualified, quote_ident, quote_literal, tombstone_name};
use crate::plan::{Hazard, LockMode, Step};

use super::order::{item_key, owner_key, relation_key, table_key, Graph, Key, KeyKind};
use super::steps::{
    column_acl_steps, comment_step, drop_step, meta_steps, sequence_option_changes, Meta,
};
use super::{Diff, DiffOptions};

mod alter;
mod create;
mod tables;
mod types;

use alter::view_appends;
use tables::{columns_rewritten, is_subsequence};

pub(super) struct Builder<'a> {
    src: &'a Snapshot,
    tgt: &'a Snapshot,
    sg: Graph<'a>,
    tg: Graph<'a>,
    opts: &'a DiffOptions,
    /// Drop (and recreate when the source has it).
    redo: HashSet<Key>,
    /// Tables whose column changes need their dependent views recreated.
    redo_tables: HashMap<Key, (u32, Vec<i16>)>,
    /// Tables whose defaults and inline checks are dropped in pass 1 and set again in pass 2
    /// (they use a function or sequence that is dropped).
    reset_defaults: HashSet<Key>,
    /// Source tables that have children (partitions or inheritance).
    parents: HashSet<Key>,
    /// New partitions of existing partitioned tables: created standalone with their indexes,
    /// then attached (attaching adopts matching indexes instead of building new ones).
    standalone: HashSet<Key>,
    /// Target items kept because a tombstone needs them.
    kept: HashSet<Key>,
    pre: Vec<Step>,
    main: Vec<Step>,
    validate: Vec<Step>,
    after: Vec<Step>,
    /// After validation: SET NOT NULL over a validated check.
    post: Vec<Step>,
    concurrent: Vec<Step>,
    footer: Vec<String>,
    unsupported: Vec<String>,
    /// Keys of the indexes built CONCURRENTLY (after the transactions): their settings follow.
    concurrent_indexes: HashSet<Key>,
}

/// The [`Extra`] kind that stands for a database's large objects (out of scope).
pub(super) const LARGE_OBJECTS: &str = "large objects";

pub(super) fn is_deferred_drop(key: &Key) -> bool {
    matches!(
        key.kind,
        KeyKind::Type
            | KeyKind::Function
            | KeyKind::Sequence
            | KeyKind::Collation
            | KeyKind::Schema
            | KeyKind::Extension
            | KeyKind::XDeferred
    )
}

/// Comparable text of an item without owner, privileges and comments (those are ALTERed).
pub(super) fn core(snap: &Snapshot, item: &Item) -> String {
    match *item {
        Item::Schema(_) => String::new(),
        Item::Extension(e) => format!("{} {}", e.schema, e.version),
        Item::Collation(c) => {
            let mut c = c.clone();
            c.owner.clear();
            c.comment = None;
            ddl::create_collation(&c)
        }
        Item::Type(t) => {
            let mut t = t.clone();
            t.owner.clear();
            t.acl = None;
            t.comment = None;
            match &mut t.kind {
                TypeKind::Domain { constraints, .. } => {
                    for c in constraints {
                        c.comment = None;
                    }
                }
                TypeKind::Composite { attributes, .. } => {
                    for a in attributes {
                        a.comment = None;
                    }
                }
                _ => {}
            }
            ddl::create_type(&t)
        }
        Item::Function(f) => f.definition.clone(),
        Item::Extra(e) => e.create.clone(),
        Item::Sequence(s) => format!("{:?}", s.options),
        Item::Table(_) => String::new(),
        Item::View(v) => {
            let defaults: Vec<_> = v.columns.iter().map(|c| (&c.name, &c.default)).collect();
            format!("{} {:?} {:?}", v.definition, v.reloptions, defaults)
        }
        Item::Constraint(_, c) => format!(
            "{:?} {}",
            c.kind,
            c.definition.trim_end_matches(" NOT VALID")
        ),
        Item::Index(_, i) => i.definition.clone(),
        Item::Trigger(_, t) => t.definition.clone(),
        Item::Policy(t, p) => {
            let mut p = p.clone();
            p.comment = None;
            ddl::create_policy(t, &p)
        }
        _ => ddl::render_item(snap, item),
    }
}

pub(super) fn table_lock(t: &Table) -> (LockMode, QuotedName) {
    (LockMode::AccessExclusive, t.sql_name())
}

pub(super) fn alter(t: &Table, desc: impl Into<String>, sql: impl Into<String>) -> Step {
    let (m, on) = table_lock(t);
    Step::new(desc, sql).lock(m, on)
}

pub(crate) fn compare(src: &Snapshot, tgt: &Snapshot, opts: &DiffOptions) -> Diff {
    // The two graphs are independent and half of the comparison's time: one on another core.
    let (sg, tg) = std::thread::scope(|s| {
        let sg = s.spawn(|| Graph::new(src));
        let tg = Graph::new(tgt);
        (sg.join().expect("graph of the source"), tg)
    });
    let mut b = Builder {
        src,
        tgt,
        sg,
        tg,
        opts,
        redo: HashSet::new(),
        redo_tables: HashMap::new(),
        reset_defaults: HashSet::new(),
        kept: HashSet::new(),
        standalone: HashSet::new(),
        parents: src
            .tables
            .iter()
            .flat_map(|t| t.parents.iter().map(|p| table_key(&p.schema, &p.name)))
            .collect(),
        pre: Vec::new(),
        main: Vec::new(),
        validate: Vec::new(),
        after: Vec::new(),
        post: Vec::new(),
        concurrent: Vec::new(),
        footer: Vec::new(),
        unsupported: Vec::new(),
        concurrent_indexes: HashSet::new(),
    };
    b.classify();
    b.find_unsupported();
    b.pass_drop();
    b.pass_create();
    b.pass_final_drops();
    b.finish()
}

impl<'a> Builder<'a> {
    pub(super) fn in_src(&self, key: &Key) -> Option<Item<'a>> {
        self.sg.pos.get(key).map(|&i| self.sg.items[i])
    }

    pub(super) fn in_tgt(&self, key: &Key) -> Option<Item<'a>> {
        self.tg.pos.get(key).map(|&i| self.tg.items[i])
    }

    /// Decides what is recreated.
    pub(super) fn classify(&mut self) {
        let mut start: HashSet<Key> = HashSet::new();
        for (i, key) in self.tg.keys.iter().enumerate() {
            let t_item = self.tg.items[i];
            let Some(s_item) = self.in_src(key) else {
                start.insert(key.clone());
                continue;
            };
            let recreate = match (s_item, t_item) {
                (Item::Table(s), Item::Table(t)) => {
                    if s.kind != t.kind || s.partition_key != t.partition_key {
                        true
                    } else {
                        let cols = columns_rewritten(s, t);
                        if !cols.is_empty() {
                            self.redo_tables.insert(key.clone(), (t.oid, cols));
                        }
                        false
                    }
                }
                (Item::Function(s), Item::Function(t)) => {
                    s.definition != t.definition && (s.result != t.result || s.kind != t.kind)
                }
                (Item::View(s), Item::View(t)) => {
                    core(self.src, &s_item) != core(self.tgt, &t_item) && !view_appends(s, t)
                }
                (Item::Type(s), Item::Type(t)) => match (&s.kind, &t.kind) {
                    (TypeKind::Enum { labels: sl }, TypeKind::Enum { labels: tl }) => {
                        !is_subsequence(tl, sl)
                    }
                    (TypeKind::Domain { base: sb, .. }, TypeKind::Domain { base: tb, .. }) => {
                        sb != tb
                    }
                    (TypeKind::Composite { .. }, TypeKind::Composite { .. }) => false,
                    _ => core(self.src, &s_item) != core(self.tgt, &t_item),
                },
                (Item::Constraint(_, sc), Item::Constraint(_, tc)) => {
                    core(self.src, &s_item) != core(self.tgt, &t_item)
                        || (!sc.validated && tc.validated)
                }
                (Item::Extension(_), _)
                | (Item::Schema(_), _)
                | (Item::Sequence(_), _)
                | (Item::SequenceOwnedBy(_), _)
                | (Item::ReplicaIdentity(_), _) => false,
                _ => core(self.src, &s_item) != core(self.tgt, &t_item),
            };
            if recreate {
                start.insert(key.clone());
            }
        }
        let mut closure = self.tg.dependent_closure(&start);
        // Views, materialized views and policies (and what hangs off them) that use a column
        // being retyped or dropped: PostgreSQL refuses the ALTER while they exist. Those that
        // use only other columns of the table stay as they are.
        let mut view_start = HashSet::new();
        for (tk, (table_oid, cols)) in &self.redo_tables {
            for d in self
                .tg
                .dependents
                .get(tk)
                .map(|v| v.as_slice())
                .unwrap_or(&[])
            {
                let user_oid = match self.in_tgt(d) {
                    Some(Item::View(v)) => v.oid,
                    Some(Item::Policy(_, p)) => p.oid,
                    _ => continue,
                };
                // Without a record of the columns used, assume the worst.
                let uses_one = self.tgt.column_uses.get(&user_oid).is_none_or(|uses| {
                    uses.iter()
                        .any(|(rel, num)| rel == table_oid && cols.contains(num))
                });
                if uses_one {
                    view_start.insert(d.clone());
                }
            }
        }
        closure.extend(self.tg.dependent_closure(&view_start));
        closure.extend(view_start);
        self.redo = start;
        self.redo.extend(closure);
        // Tables that use a function or sequence being dropped: their defaults go first.
        for (i, key) in self.tg.keys.iter().enumerate() {
            if let Item::Table(_) = self.tg.items[i] {
                if self.in_src(key).is_none() {
                    continue;
                }
                let uses = self
                    .tg
                    .requires
                    .get(key)
                    .map(|v| v.as_slice())
                    .unwrap_or(&[]);
                if uses.iter().any(|u| {
                    matches!(u.kind, KeyKind::Function | KeyKind::Sequence) && self.redo.contains(u)
                }) {
                    self.reset_defaults.insert(key.clone());
                }
            }
        }
        // Tombstones keep what they use.
        if !self.opts.drop {
            let stones: HashSet<Key> = self
                .tg
                .keys
                .iter()
                .filter(|k| k.kind == KeyKind::Table && self.redo.contains(*k))
                .cloned()
                .collect();
            let mut kept = self.tg.requirement_closure(&stones);
            // Sequences owned by tombstoned tables or columns stay with them.
            for s in &self.tgt.sequences {
                if let Some(o) = &s.owned_by {
                    let tk = table_key(&o.schema, &o.table);
                    let col_gone = matches!(self.in_src(&tk), Some(Item::Table(t)) if t.column(&o.column).is_none());
                    if stones.contains(&tk) || col_gone {
                        kept.insert(item_key(&Item::Sequence(s)));
                        kept.extend(
                            self.tg.requirement_closure(&HashSet::from([item_key(
                                &Item::Sequence(s),
                            )])),
                        );
                    }
                }
            }
            self.kept = kept;
        }
    }

    /// Differences in kinds that cannot be dropped, recreated or created safely: reported by
    /// name instead of applied or passed over.
    pub(super) fn find_unsupported(&mut self) {
        for (side, snap) in [("source", self.src), ("target", self.tgt)] {
            for e in snap.extras.iter().filter(|e| e.kind == LARGE_OBJECTS) {
                self.unsupported.push(format!(
                    "the {side} has {} (schema diff covers databases without large objects)",
                    e.identity
                ));
            }
        }
        for (i, key) in self.tg.keys.iter().enumerate() {
            if let Item::Extra(t) = self.tg.items[i] {
                if t.kind == LARGE_OBJECTS {
                    continue;
                }
                let droppable =
                    t.diffable && t.drop.as_deref().is_some_and(|d| !d.trim().is_empty());
                if self.redo.contains(key) && !droppable {
                    let why = if self.in_src(key).is_some() {
                        "differs"
                    } else {
                        "only in the target"
                    };
                    self.unsupported.push(format!("{} ({why})", t.describe()));
                }
            }
        }
        for (i, key) in self.sg.keys.iter().enumerate() {
            if let Item::Extra(s) = self.sg.items[i] {
                if !s.diffable && s.kind != LARGE_OBJECTS && self.in_tgt(key).is_none() {
                    self.unsupported
                        .push(format!("{} (only in the source)", s.describe()));
                }
            }
        }
    }

    pub(super) fn is_gone(&self, key: &Key) -> bool {
        !self.sg.pos.contains_key(key)
    }

    /// Pass 1: drops in reverse dependency order of the target.
    pub(super) fn pass_drop(&mut self) {
        for i in (0..self.tg.items.len()).rev() {
            let item = self.tg.items[i];
            let key = self.tg.keys[i].clone();
            if let Some(o) = owner_key(&item) {
                // Goes with its relation; but a foreign key between two dropped tables must
                // go first, or the referenced table cannot be dropped.
                let fk =
                    matches!(item, Item::Constraint(_, c) if c.kind == ConstraintKind::ForeignKey);
                if self.redo.contains(&o) && !(fk && self.opts.drop) {
                    continue;
                }
            }
            let dropping = self.redo.contains(&key);
            match item {
                Item::Table(t) => {
                    if dropping {
                        self.drop_table(t);
                    } else if let Some(Item::Table(s)) = self.in_src(&key) {
                        self.table_pre(s, t, &key);
                    }
                }
                _ if dropping => {
                    if is_deferred_drop(&key) && self.is_gone(&key) {
                        continue; // pass 3
                    }
                    if let Item::Type(t) = item {
                        if matches!(t.kind, TypeKind::Enum { .. }) && !self.is_gone(&key) {
                            self.enum_rename(t);
                            continue;
                        }
                    }
                    if let Some(s) = drop_step(&item) {
                        self.main.push(s);
                    }
                }
                _ => {}
            }
        }
    }

    /// Pass 2: creates and alters in dependency order of the source.
    pub(super) fn pass_create(&mut self) {
        for i in 0..self.sg.items.len() {
            let item = self.sg.items[i];
            let key = self.sg.keys[i].clone();
            let t_item = self.in_tgt(&key);
            // Ownership of a sequence by a recreated table must be set again.
            let owner_recreated = matches!(item, Item::SequenceOwnedBy(q)
                if q.owned_by.as_ref().is_some_and(|o| self.redo.contains(&table_key(&o.schema, &o.table))));
            if t_item.is_none() || self.redo.contains(&key) || owner_recreated {
                self.create(item, &key, t_item.is_some());
            } else if let Some(t_item) = t_item {
                self.alter_item(item, t_item, &key);
            }
        }
    }

    /// Whether the relation `key` exists in the target and stays (so new indexes and
    /// constraints on it are built online).
    pub(super) fn existing(&self, key: &Key) -> bool {
        self.tg.pos.contains_key(key) && !self.redo.contains(key)
    }

    /// Pass 3: drops of what the source lacks and nothing uses any more.
    pub(super) fn pass_final_drops(&mut self) {
        for i in (0..self.tg.items.len()).rev() {
            let key = &self.tg.keys[i];
            if !is_deferred_drop(key) || !self.is_gone(key) {
                continue;
            }
            let item = self.tg.items[i];
            if let Item::Schema(s) = item {
                if s.name == "public" && !self.opts.drop {
                    continue;
                }
            }
            let Some(step) = drop_step(&item) else {
                continue;
            };
            if self.kept.contains(key) {
                self.footer.push(step.sql.clone());
                continue;
            }
            self.after.push(step);
        }
    }

    pub(super) fn finish(mut self) -> Diff {
        let mut steps = Vec::new();
        steps.append(&mut self.pre);
        steps.extend(self.main.into_iter().map(|s| s.in_transaction(1)));
        steps.extend(self.after.into_iter().map(|s| s.in_transaction(1)));
        steps.extend(self.validate.into_iter().map(|s| s.in_transaction(2)));
        steps.extend(self.post.into_iter().map(|s| s.in_transaction(3)));
        steps.append(&mut self.concurrent);
        Diff {
            plan: crate::plan::Plan {
                title: "schema diff".into(),
                steps,
            },
            commented_drops: self.footer,
            unsupported: self.unsupported,
            roles: Default::default(),
        }
    }
}
