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
use crate::ident::{qualified, quote_ident, quote_literal, tombstone_name};
use crate::plan::{Hazard, LockMode, Step};

use super::order::{item_key, owner_key, table_key, Graph, Key, KeyKind};
use super::steps::{
    column_acl_steps, comment_step, drop_step, meta_steps, sequence_option_changes, Meta,
};
use super::{Diff, DiffOptions};

struct Builder<'a> {
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
const LARGE_OBJECTS: &str = "large objects";

fn is_deferred_drop(key: &Key) -> bool {
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
fn core(snap: &Snapshot, item: &Item) -> String {
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

fn table_lock(t: &Table) -> (LockMode, String) {
    (LockMode::AccessExclusive, t.sql_name())
}

fn alter(t: &Table, desc: impl Into<String>, sql: impl Into<String>) -> Step {
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
    fn in_src(&self, key: &Key) -> Option<Item<'a>> {
        self.sg.pos.get(key).map(|&i| self.sg.items[i])
    }

    fn in_tgt(&self, key: &Key) -> Option<Item<'a>> {
        self.tg.pos.get(key).map(|&i| self.tg.items[i])
    }

    /// Decides what is recreated.
    fn classify(&mut self) {
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
    fn find_unsupported(&mut self) {
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

    fn is_gone(&self, key: &Key) -> bool {
        !self.sg.pos.contains_key(key)
    }

    /// Pass 1: drops in reverse dependency order of the target.
    fn pass_drop(&mut self) {
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

    fn drop_table(&mut self, t: &'a Table) {
        let name = t.sql_name();
        // Sequences owned by the table that the source keeps must survive the drop.
        for s in self.tgt.owned_sequences(&t.schema, &t.name) {
            if !s.identity && self.src.sequence(&s.schema, &s.name).is_some() {
                self.main.push(Step::new(
                    format!("Detach sequence {} from {name}", s.qualname().sql()),
                    format!("ALTER SEQUENCE {} OWNED BY NONE;", s.qualname().sql()),
                ));
            }
        }
        // Partitions the source keeps leave the parent first.
        for p in &self.tgt.tables {
            if p.is_partition()
                && p.parents
                    .first()
                    .is_some_and(|q| q.schema == t.schema && q.name == t.name)
                && !self.redo.contains(&table_key(&p.schema, &p.name))
            {
                self.main.push(alter(
                    t,
                    format!("Detach partition {} from {name}", p.sql_name()),
                    format!("ALTER TABLE {name} DETACH PARTITION {};", p.sql_name()),
                ));
                self.drop_detached_subitems(p);
            }
        }
        if self.opts.drop {
            if let Some(s) = drop_step(&Item::Table(t)) {
                self.main.push(s);
            }
            return;
        }
        let stone = tombstone_name(&t.name, self.opts.at);
        if let Some(parent) = t.parents.first().filter(|_| t.is_partition()) {
            if !self.redo.contains(&table_key(&parent.schema, &parent.name)) {
                self.main.push(alter(
                    t,
                    format!("Detach partition {name} before keeping it as a tombstone"),
                    format!("ALTER TABLE {} DETACH PARTITION {name};", parent.sql()),
                ));
            }
        }
        self.main.push(alter(
            t,
            format!(
                "Keep table {name} (the source lacks it) as tombstone {}",
                quote_ident(&stone)
            ),
            format!("ALTER TABLE {name} RENAME TO {};", quote_ident(&stone)),
        ));
        self.footer
            .push(format!("DROP TABLE {};", qualified(&t.schema, &stone)));
    }

    /// A detached partition keeps the indexes and constraints it had through its parent;
    /// those that are recreated must go now (before the detach they could not be dropped).
    fn drop_detached_subitems(&mut self, p: &'a Table) {
        for c in &p.constraints {
            let k = item_key(&Item::Constraint(p, c));
            let inherited = c.from_parent
                || c.index
                    .as_deref()
                    .and_then(|i| p.index(i))
                    .is_some_and(|i| i.parent_index.is_some());
            if inherited && self.redo.contains(&k) && !ddl::is_implied_constraint(c) {
                self.main.push(alter(
                    p,
                    format!(
                        "Drop constraint {} of detached {}",
                        quote_ident(&c.name),
                        p.sql_name()
                    ),
                    format!(
                        "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {};",
                        p.sql_name(),
                        quote_ident(&c.name)
                    ),
                ));
            }
        }
        for i in p
            .indexes
            .iter()
            .filter(|i| i.constraint.is_none() && i.parent_index.is_some())
        {
            let k = item_key(&Item::Index(Relation::Table(p), i));
            if self.redo.contains(&k) {
                self.main.push(alter(
                    p,
                    format!(
                        "Drop index {} of detached {}",
                        quote_ident(&i.name),
                        p.sql_name()
                    ),
                    format!("DROP INDEX IF EXISTS {};", qualified(&i.schema, &i.name)),
                ));
            }
        }
    }

    /// Pass 1 part of a table both sides have: removals.
    fn table_pre(&mut self, s: &'a Table, t: &'a Table, key: &Key) {
        let name = t.sql_name();
        if (s.is_partition() || t.is_partition())
            && (s.parents != t.parents || s.partition_bound != t.partition_bound)
        {
            if let Some(p) = t.parents.first().filter(|_| t.is_partition()) {
                if !self.redo.contains(&table_key(&p.schema, &p.name))
                    && self.tgt.table(&p.schema, &p.name).is_some()
                {
                    self.main.push(alter(
                        t,
                        format!("Detach partition {}", t.sql_name()),
                        format!("ALTER TABLE {} DETACH PARTITION {};", p.sql(), t.sql_name()),
                    ));
                    self.drop_detached_subitems(t);
                }
            }
        }
        let reset = self.reset_defaults.contains(key);
        for c in t.constraints.iter().filter(|c| ddl::is_inline_check(c)) {
            let keep = s.constraints.iter().any(|x| {
                ddl::is_inline_check(x) && x.name == c.name && x.definition == c.definition
            });
            if !keep || reset {
                self.main.push(alter(
                    t,
                    format!("Drop check constraint {} on {name}", quote_ident(&c.name)),
                    format!(
                        "ALTER TABLE {name} DROP CONSTRAINT IF EXISTS {};",
                        quote_ident(&c.name)
                    ),
                ));
            }
        }
        for c in &t.columns {
            if crate::ident::is_tombstone(&c.name) {
                continue;
            }
            let col = quote_ident(&c.name);
            let sc = s.column(&c.name);
            let inherited = !c.is_local || t.is_partition();
            if reset && c.default.is_some() && c.identity.is_none() && c.generated.is_none() {
                self.main.push(alter(
                    t,
                    format!("Drop the default of {name}.{col} (it uses an object being replaced)"),
                    format!("ALTER TABLE {name} ALTER COLUMN {col} DROP DEFAULT;"),
                ));
            }
            let regenerated = sc.is_some_and(|sc| {
                sc.generated != c.generated || sc.generated_virtual != c.generated_virtual
            });
            if (sc.is_some() && !regenerated) || inherited {
                continue;
            }
            for q in &self.tgt.sequences {
                let owned = q.owned_by.as_ref().is_some_and(|o| {
                    o.schema == t.schema && o.table == t.name && o.column == c.name
                });
                if owned && !q.identity && self.src.sequence(&q.schema, &q.name).is_some() {
                    self.main.push(Step::new(
                        format!("Detach sequence {} from {name}.{col}", q.qualname().sql()),
                        format!("ALTER SEQUENCE {} OWNED BY NONE;", q.qualname().sql()),
                    ));
                }
            }
            if self.opts.drop || regenerated {
                self.main.push(
                    alter(
                        t,
                        format!("Drop column {col} of {name}"),
                        format!("ALTER TABLE {name} DROP COLUMN IF EXISTS {col};"),
                    )
                    .hazard(Hazard::DeletesData),
                );
            } else {
                let stone = tombstone_name(&c.name, self.opts.at);
                let mut sql = String::new();
                if c.identity.is_some() {
                    sql.push_str(&format!(
                        "ALTER TABLE {name} ALTER COLUMN {col} DROP IDENTITY;\n"
                    ));
                }
                if c.not_null {
                    sql.push_str(&format!(
                        "ALTER TABLE {name} ALTER COLUMN {col} DROP NOT NULL;\n"
                    ));
                }
                sql.push_str(&format!(
                    "ALTER TABLE {name} RENAME COLUMN {col} TO {};",
                    quote_ident(&stone)
                ));
                self.main.push(alter(
                    t,
                    format!(
                        "Keep column {col} of {name} (the source lacks it) as tombstone {}",
                        quote_ident(&stone)
                    ),
                    sql,
                ));
                self.footer.push(format!(
                    "ALTER TABLE {name} DROP COLUMN {};",
                    quote_ident(&stone)
                ));
            }
        }
    }

    /// An enum losing or reordering values: renamed away, recreated in pass 2, columns moved
    /// over, the old type dropped in pass 3.
    fn enum_rename(&mut self, t: &'a TypeDef) {
        let old = format!("{}_pgflip_old", t.name);
        self.main.push(Step::new(
            format!(
                "Rename enum {} out of the way to recreate it",
                t.qualname().sql()
            ),
            format!(
                "ALTER TYPE {} RENAME TO {};",
                t.qualname().sql(),
                quote_ident(&old)
            ),
        ));
    }

    /// Pass 2: creates and alters in dependency order of the source.
    fn pass_create(&mut self) {
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
    fn existing(&self, key: &Key) -> bool {
        self.tg.pos.contains_key(key) && !self.redo.contains(key)
    }

    fn create(&mut self, item: Item<'a>, key: &Key, recreated: bool) {
        let what = item.describe();
        let verb = if recreated { "Recreate" } else { "Create" };
        match item {
            Item::Table(t) if t.is_partition() && !recreated => {
                let parent = &t.parents[0];
                if self.existing(&table_key(&parent.schema, &parent.name)) {
                    self.standalone.insert(key.clone());
                    let mut alone = t.clone();
                    alone.partition_bound = None;
                    alone.parents.clear();
                    for c in &mut alone.columns {
                        c.is_local = true;
                    }
                    // ATTACH wants the parent's CHECK constraints already there.
                    for c in &mut alone.constraints {
                        if c.kind == ConstraintKind::Check {
                            c.is_local = true;
                            c.from_parent = false;
                        }
                    }
                    alone
                        .constraints
                        .retain(|c| c.kind == ConstraintKind::Check);
                    let parent_table = self.src.table(&parent.schema, &parent.name);
                    for c in &mut alone.columns {
                        if let Some(pc) = parent_table.and_then(|p| p.column(&c.name)) {
                            if c.default.is_none() {
                                c.default = pc.default.clone();
                            }
                        }
                    }
                    self.main.push(Step::new(
                        format!("{verb} {what} on its own (attached below)"),
                        ddl::create_table(&alone),
                    ));
                    self.after.push(
                        alter(
                            t,
                            format!("Attach partition {} to {}", t.sql_name(), parent.sql()),
                            format!(
                                "ALTER TABLE {} ATTACH PARTITION {} {};",
                                parent.sql(),
                                t.sql_name(),
                                t.partition_bound.as_deref().unwrap_or("DEFAULT")
                            ),
                        )
                        .hazard(Hazard::Validates),
                    );
                    return;
                }
            }
            Item::Index(Relation::Table(t), i)
                if self.standalone.contains(&table_key(&t.schema, &t.name)) =>
            {
                let mut i = i.clone();
                let attached = i.parent_index.take().is_some();
                let sql = ddl::create_index(&i);
                if !sql.is_empty() {
                    // Only the indexes the attach must adopt exist before it: an unattached one
                    // that matches a parent's index would be adopted instead.
                    if attached {
                        self.main.push(Step::new(format!("{verb} {what}"), sql));
                    } else {
                        self.after.push(Step::new(format!("{verb} {what}"), sql));
                    }
                }
                return;
            }
            Item::Constraint(t, c) if self.standalone.contains(&table_key(&t.schema, &t.name)) => {
                let mut t = t.clone();
                for i in &mut t.indexes {
                    i.parent_index = None;
                }
                let sql = ddl::create_constraint(&t, c);
                if !sql.is_empty() {
                    self.main.push(Step::new(format!("{verb} {what}"), sql));
                }
                return;
            }
            Item::Type(t) if recreated && matches!(t.kind, TypeKind::Enum { .. }) => {
                self.main
                    .push(Step::new(format!("{verb} {what}"), ddl::create_type(t)));
                self.enum_move_columns(t);
                return;
            }
            Item::View(v) if v.materialized => {
                self.main.push(
                    Step::new(
                        format!("{verb} {what}"),
                        ddl::create_view_with_data(v, true),
                    )
                    .hazard(Hazard::ReplacesData),
                );
                return;
            }
            Item::Index(r, i) => {
                let sql = ddl::create_index(i);
                if sql.is_empty() {
                    return;
                }
                let rk = super::order::relation_key(&r);
                let partitioned =
                    matches!(r, Relation::Table(t) if t.kind == TableKind::Partitioned);
                let needed = self.index_needed(i);
                if self.opts.online
                    && self.existing(&rk)
                    && !partitioned
                    && i.parent_index.is_none()
                    && !needed
                {
                    let def = i.definition.replacen(" INDEX ", " INDEX CONCURRENTLY ", 1);
                    self.concurrent_indexes.insert(item_key(&Item::Index(r, i)));
                    self.concurrent.push(
                        Step::new(
                            format!(
                                "Build index {} without blocking writes",
                                qualified(&i.schema, &i.name)
                            ),
                            format!("{def};"),
                        )
                        .lock(LockMode::ShareUpdateExclusive, r.sql_name())
                        .hazard(Hazard::BuildsIndex)
                        .outside_transaction(),
                    );
                    if let Some(c) = &i.comment {
                        self.after.push(comment_step(
                            "INDEX",
                            &qualified(&i.schema, &i.name),
                            Some(c),
                        ));
                    }
                } else {
                    let lock = if self.existing(&rk) {
                        LockMode::Share
                    } else {
                        LockMode::None
                    };
                    self.main.push(
                        Step::new(format!("{verb} {what}"), sql)
                            .lock(lock, r.sql_name())
                            .hazard(Hazard::BuildsIndex),
                    );
                }
                return;
            }
            Item::Constraint(t, c) => {
                let sql = ddl::create_constraint(t, c);
                if sql.is_empty() {
                    return;
                }
                let tk = table_key(&t.schema, &t.name);
                let online_kind =
                    matches!(c.kind, ConstraintKind::ForeignKey | ConstraintKind::Check);
                if self.opts.online
                    && online_kind
                    && c.validated
                    && self.existing(&tk)
                    && t.kind == TableKind::Ordinary
                    && !t.is_partition()
                {
                    let def = format!("{} NOT VALID", c.definition);
                    let cn = quote_ident(&c.name);
                    let name = t.sql_name();
                    let only = if c.kind == ConstraintKind::Check && c.no_inherit {
                        "ONLY "
                    } else {
                        ""
                    };
                    let mut sql = format!("ALTER TABLE {only}{name} ADD CONSTRAINT {cn} {def};\n");
                    sql.push_str(&ddl::comment_on(
                        "CONSTRAINT",
                        &format!("{cn} ON {name}"),
                        c.comment.as_deref(),
                    ));
                    let lock = if c.kind == ConstraintKind::ForeignKey {
                        LockMode::ShareRowExclusive
                    } else {
                        LockMode::AccessExclusive
                    };
                    self.main.push(
                        Step::new(format!("{verb} {what} without checking existing rows"), sql)
                            .lock(lock, name.clone()),
                    );
                    self.validate.push(
                        Step::new(
                            format!("Validate constraint {cn} on {name}"),
                            format!("ALTER TABLE {name} VALIDATE CONSTRAINT {cn};"),
                        )
                        .lock(LockMode::ShareUpdateExclusive, name)
                        .hazard(Hazard::Validates),
                    );
                } else {
                    let lock = if self.existing(&tk) {
                        LockMode::AccessExclusive
                    } else {
                        LockMode::None
                    };
                    let mut s = Step::new(format!("{verb} {what}"), sql).lock(lock, t.sql_name());
                    if self.existing(&tk) {
                        s = s.hazard(Hazard::Validates);
                    }
                    self.main.push(s);
                }
                return;
            }
            _ => {}
        }
        let sql = match item {
            // Owners that exist on the target, which the script is for.
            Item::Extra(e) => ddl::create_extra(e, &self.tgt.roles),
            _ => ddl::render_item(self.src, &item),
        };
        if sql.trim().is_empty() {
            return;
        }
        let mut step = Step::new(format!("{verb} {what}"), sql);
        if let Item::Extra(e) = item {
            if owner_key(&item).is_some_and(|o| self.concurrent_indexes.contains(&o)) {
                self.concurrent.push(step.outside_transaction());
                return;
            }
            if e.rewrites
                && e.on
                    .as_ref()
                    .is_some_and(|_| owner_key(&item).is_some_and(|o| self.existing(&o)))
            {
                step = step.hazard(Hazard::Rewrite);
            }
        }
        if let Some(o) = owner_key(&item) {
            if self.existing(&o) {
                if let Some(r) = o.schema_and_name() {
                    step = step.lock(LockMode::AccessExclusive, qualified(r.0, r.1));
                }
            }
        }
        let _ = key;
        self.main.push(step);
    }

    /// Unique indexes that a foreign key or replica identity needs are built in the
    /// transaction (so that what needs them can follow).
    fn index_needed(&self, i: &Index) -> bool {
        if !i.unique {
            return false;
        }
        let oid = i.oid;
        let r = ObjRef {
            class: ObjClass::Class,
            oid,
        };
        self.src
            .dependencies
            .iter()
            .any(|d| d.to == r && d.from.class == ObjClass::Constraint)
            || self.src.tables.iter().any(|t| {
                t.replica_identity_index.as_deref() == Some(&i.name) && t.schema == i.schema
            })
    }

    fn enum_move_columns(&mut self, e: &'a TypeDef) {
        let ty = e.qualname().sql();
        for t in &self.tgt.tables {
            for c in &t.columns {
                let uses = c.type_name == ty || c.type_name == format!("{ty}[]");
                if !uses || !c.is_local || t.is_partition() {
                    continue;
                }
                let name = t.sql_name();
                let col = quote_ident(&c.name);
                let mut sql = String::new();
                if c.default.is_some() {
                    sql.push_str(&format!(
                        "ALTER TABLE {name} ALTER COLUMN {col} DROP DEFAULT;\n"
                    ));
                }
                sql.push_str(&format!(
                    "ALTER TABLE {name} ALTER COLUMN {col} TYPE {} USING {col}::text::{};\n",
                    c.type_name, c.type_name
                ));
                let default = self
                    .src
                    .table(&t.schema, &t.name)
                    .and_then(|s| s.column(&c.name))
                    .and_then(|s| s.default.clone())
                    .or_else(|| c.default.clone());
                if let Some(d) = default {
                    sql.push_str(&format!(
                        "ALTER TABLE {name} ALTER COLUMN {col} SET DEFAULT {d};\n"
                    ));
                }
                self.main.push(
                    alter(
                        t,
                        format!("Move column {col} of {name} to the recreated enum {ty}"),
                        sql,
                    )
                    .hazard(Hazard::Rewrite),
                );
            }
        }
        let old = qualified(&e.schema, &format!("{}_pgflip_old", e.name));
        self.after.push(Step::new(
            format!("Drop the replaced enum {old}"),
            format!("DROP TYPE IF EXISTS {old};"),
        ));
    }

    #[allow(clippy::collapsible_match)] // one arm per kind reads better than guards
    fn alter_item(&mut self, s_item: Item<'a>, t_item: Item<'a>, key: &Key) {
        let roles = &self.tgt.roles;
        match (s_item, t_item) {
            (Item::Schema(s), Item::Schema(t)) => {
                let name = quote_ident(&s.name);
                self.main.extend(meta_steps(
                    Meta {
                        kind: "SCHEMA",
                        name: name.clone(),
                        acl_object: Some(format!("SCHEMA {name}")),
                        owner: (&s.owner, &t.owner),
                        acl: (s.acl.as_ref(), t.acl.as_ref()),
                        comment: (s.comment.as_deref(), t.comment.as_deref()),
                    },
                    roles,
                    None,
                ));
            }
            (Item::Extension(s), Item::Extension(t)) => {
                let name = quote_ident(&s.name);
                if s.schema != t.schema {
                    self.main.push(Step::new(
                        format!("Move extension {name} to schema {}", quote_ident(&s.schema)),
                        format!(
                            "ALTER EXTENSION {name} SET SCHEMA {};",
                            quote_ident(&s.schema)
                        ),
                    ));
                }
                if s.version != t.version {
                    self.main.push(Step::new(
                        format!("Update extension {name} to version {}", s.version),
                        format!(
                            "ALTER EXTENSION {name} UPDATE TO {};",
                            quote_literal(&s.version)
                        ),
                    ));
                }
                if s.comment != t.comment {
                    self.main
                        .push(comment_step("EXTENSION", &name, s.comment.as_deref()));
                }
            }
            (Item::Collation(s), Item::Collation(t)) => {
                let name = qualified(&s.schema, &s.name);
                self.main.extend(meta_steps(
                    Meta {
                        kind: "COLLATION",
                        name,
                        acl_object: None,
                        owner: (&s.owner, &t.owner),
                        acl: (None, None),
                        comment: (s.comment.as_deref(), t.comment.as_deref()),
                    },
                    roles,
                    None,
                ));
            }
            (Item::Type(s), Item::Type(t)) => self.alter_type(s, t),
            (Item::Function(s), Item::Function(t)) => {
                let kind = if s.is_procedure() {
                    "PROCEDURE"
                } else {
                    "FUNCTION"
                };
                if s.definition != t.definition {
                    self.main.push(Step::new(
                        format!("Replace {} {}", kind.to_lowercase(), s.signature()),
                        format!("{};", s.definition.trim_end()),
                    ));
                }
                self.main.extend(meta_steps(
                    Meta {
                        kind,
                        name: s.signature(),
                        acl_object: Some(format!("{kind} {}", s.signature())),
                        owner: (&s.owner, &t.owner),
                        acl: (s.acl.as_ref(), t.acl.as_ref()),
                        comment: (s.comment.as_deref(), t.comment.as_deref()),
                    },
                    roles,
                    None,
                ));
            }
            (Item::Sequence(s), Item::Sequence(t)) => {
                let name = s.qualname().sql();
                let changes = sequence_option_changes(&s.options, &t.options);
                if !changes.is_empty() {
                    if s.options.min > t.options.min {
                        // The current value must stay within the new bounds.
                        self.main.push(Step::new(
                            format!("Move sequence {name} up to its new MINVALUE if below it"),
                            format!(
                                "SELECT pg_catalog.setval({}, {}, false) FROM {name} WHERE last_value < {};",
                                quote_literal(&name),
                                s.options.min,
                                s.options.min
                            ),
                        ));
                    }
                    self.main.push(
                        Step::new(
                            format!("Change the options of sequence {name}"),
                            format!("ALTER SEQUENCE {name} {};", changes.join(" ")),
                        )
                        .lock(LockMode::AccessExclusive, name.clone()),
                    );
                }
                if s.owned_by.is_none() && t.owned_by.is_some() {
                    self.main.push(Step::new(
                        format!("Detach sequence {name} from its column"),
                        format!("ALTER SEQUENCE {name} OWNED BY NONE;"),
                    ));
                }
                self.main.extend(meta_steps(
                    Meta {
                        kind: "SEQUENCE",
                        name: name.clone(),
                        acl_object: Some(format!("SEQUENCE {name}")),
                        owner: (&s.owner, &t.owner),
                        acl: (s.acl.as_ref(), t.acl.as_ref()),
                        comment: (s.comment.as_deref(), t.comment.as_deref()),
                    },
                    roles,
                    None,
                ));
            }
            (Item::SequenceOwnedBy(s), Item::SequenceOwnedBy(t)) => {
                if ddl::sequence_owned_by(s) != ddl::sequence_owned_by(t) {
                    if let Some(sql) = ddl::sequence_owned_by(s) {
                        self.main.push(Step::new(
                            format!("Set the owner column of sequence {}", s.qualname().sql()),
                            sql,
                        ));
                    }
                }
            }
            (Item::Table(s), Item::Table(t)) => self.alter_table(s, t, key),
            (Item::View(s), Item::View(t)) => {
                let name = s.sql_name();
                let kind = if s.materialized {
                    "MATERIALIZED VIEW"
                } else {
                    "VIEW"
                };
                if core(self.src, &s_item) != core(self.tgt, &t_item) {
                    // Only new columns at the end: CREATE OR REPLACE keeps dependents.
                    let body = s.definition.trim().trim_end_matches(';');
                    self.main.push(Step::new(
                        format!("Replace view {name} (columns appended)"),
                        format!("CREATE OR REPLACE VIEW {name} AS\n{body};"),
                    ));
                }
                self.main.extend(meta_steps(
                    Meta {
                        kind,
                        name: name.clone(),
                        acl_object: Some(format!("TABLE {name}")),
                        owner: (&s.owner, &t.owner),
                        acl: (s.acl.as_ref(), t.acl.as_ref()),
                        comment: (s.comment.as_deref(), t.comment.as_deref()),
                    },
                    roles,
                    None,
                ));
                for c in &s.columns {
                    let tc = t.columns.iter().find(|x| x.name == c.name);
                    if c.comment.as_deref() != tc.and_then(|x| x.comment.as_deref()) {
                        self.main.push(comment_step(
                            "COLUMN",
                            &format!("{name}.{}", quote_ident(&c.name)),
                            c.comment.as_deref(),
                        ));
                    }
                    if let Some(tc) = tc {
                        if let Some(st) = column_acl_steps(&name, c, tc, roles) {
                            self.main.push(st);
                        }
                    }
                }
            }
            (Item::Constraint(st, s), Item::Constraint(tt, t)) => {
                let cn = quote_ident(&s.name);
                let name = st.sql_name();
                let si = s.index.as_deref().and_then(|i| st.index(i));
                let ti = t.index.as_deref().and_then(|i| tt.index(i));
                if let (Some(si), Some(ti)) = (si, ti) {
                    if let (Some(p), None) = (&si.parent_index, &ti.parent_index) {
                        self.after.push(Step::new(
                            format!(
                                "Attach index {} to {}",
                                qualified(&si.schema, &si.name),
                                p.sql()
                            ),
                            format!(
                                "ALTER INDEX {} ATTACH PARTITION {};",
                                p.sql(),
                                qualified(&si.schema, &si.name)
                            ),
                        ));
                    }
                }
                if s.validated && !t.validated {
                    self.validate.push(
                        Step::new(
                            format!("Validate constraint {cn} on {name}"),
                            format!("ALTER TABLE {name} VALIDATE CONSTRAINT {cn};"),
                        )
                        .lock(LockMode::ShareUpdateExclusive, name.clone())
                        .hazard(Hazard::Validates),
                    );
                }
                if s.comment != t.comment {
                    self.main.push(comment_step(
                        "CONSTRAINT",
                        &format!("{cn} ON {name}"),
                        s.comment.as_deref(),
                    ));
                }
                if let (Some(si), Some(ti)) = (
                    s.index.as_deref().and_then(|i| st.index(i)),
                    t.index
                        .as_deref()
                        .and_then(|i| st.index(i).and(Some(i)))
                        .and_then(|i| {
                            self.tgt
                                .table(&st.schema, &st.name)
                                .and_then(|tt| tt.index(i))
                        }),
                ) {
                    if si.comment != ti.comment {
                        self.main.push(comment_step(
                            "INDEX",
                            &qualified(&si.schema, &si.name),
                            si.comment.as_deref(),
                        ));
                    }
                }
            }
            (Item::Index(_, s), Item::Index(_, t)) => {
                if let (Some(p), None) = (&s.parent_index, &t.parent_index) {
                    self.after.push(Step::new(
                        format!(
                            "Attach index {} to {}",
                            qualified(&s.schema, &s.name),
                            p.sql()
                        ),
                        format!(
                            "ALTER INDEX {} ATTACH PARTITION {};",
                            p.sql(),
                            qualified(&s.schema, &s.name)
                        ),
                    ));
                }
                if s.comment != t.comment && s.constraint.is_none() {
                    self.main.push(comment_step(
                        "INDEX",
                        &qualified(&s.schema, &s.name),
                        s.comment.as_deref(),
                    ));
                }
            }
            (Item::Trigger(r, s), Item::Trigger(_, t)) => {
                let rel = r.sql_name();
                let tn = quote_ident(&s.name);
                if s.enabled != t.enabled && !s.from_parent {
                    let state = match s.enabled.as_str() {
                        "D" => "DISABLE TRIGGER",
                        "R" => "ENABLE REPLICA TRIGGER",
                        "A" => "ENABLE ALWAYS TRIGGER",
                        _ => "ENABLE TRIGGER",
                    };
                    self.main.push(
                        Step::new(
                            format!("Set trigger {tn} on {rel}: {}", state.to_lowercase()),
                            format!("ALTER TABLE {rel} {state} {tn};"),
                        )
                        .lock(LockMode::ShareRowExclusive, rel.clone()),
                    );
                }
                if s.comment != t.comment {
                    self.main.push(comment_step(
                        "TRIGGER",
                        &format!("{tn} ON {rel}"),
                        s.comment.as_deref(),
                    ));
                }
            }
            (Item::Policy(st, s), Item::Policy(_, t)) => {
                if s.comment != t.comment {
                    self.main.push(comment_step(
                        "POLICY",
                        &format!("{} ON {}", quote_ident(&s.name), st.sql_name()),
                        s.comment.as_deref(),
                    ));
                }
            }
            (Item::ReplicaIdentity(s), Item::ReplicaIdentity(t)) => {
                let sql = ddl::replica_identity(s);
                if sql != ddl::replica_identity(t) && !sql.is_empty() {
                    self.main.push(alter(
                        s,
                        format!("Set the replica identity of {}", s.sql_name()),
                        sql,
                    ));
                }
            }
            (Item::Extra(s), Item::Extra(t)) => {
                if let (Some(kind), Some(name)) = (&s.meta_kind, &s.meta_name) {
                    self.main.extend(meta_steps(
                        Meta {
                            kind,
                            name: name.clone(),
                            acl_object: s.acl_object.clone(),
                            owner: (
                                s.owner.as_deref().unwrap_or(""),
                                t.owner.as_deref().unwrap_or(""),
                            ),
                            acl: (s.acl.as_ref(), t.acl.as_ref()),
                            comment: (s.comment.as_deref(), t.comment.as_deref()),
                        },
                        roles,
                        None,
                    ));
                }
            }
            _ => {}
        }
    }

    fn alter_type(&mut self, s: &'a TypeDef, t: &'a TypeDef) {
        let name = s.qualname().sql();
        let mut kind = "TYPE";
        match (&s.kind, &t.kind) {
            (TypeKind::Enum { labels: sl }, TypeKind::Enum { labels: tl }) => {
                let mut present: Vec<&String> = tl.iter().collect();
                for (i, l) in sl.iter().enumerate() {
                    if present.contains(&l) {
                        continue;
                    }
                    let pos = if i > 0 {
                        format!(" AFTER {}", quote_literal(&sl[i - 1]))
                    } else if let Some(next) = sl.iter().find(|x| present.contains(x)) {
                        format!(" BEFORE {}", quote_literal(next))
                    } else {
                        String::new()
                    };
                    self.pre.push(
                        Step::new(
                            format!("Add value {} to enum {name}", quote_literal(l)),
                            format!("ALTER TYPE {name} ADD VALUE {}{pos};", quote_literal(l)),
                        )
                        .outside_transaction(),
                    );
                    present.push(l);
                }
            }
            (
                TypeKind::Domain {
                    default: sd,
                    not_null: sn,
                    constraints: sc,
                    ..
                },
                TypeKind::Domain {
                    default: td,
                    not_null: tn,
                    constraints: tc,
                    ..
                },
            ) => {
                kind = "DOMAIN";
                if sd != td {
                    self.main.push(Step::new(
                        format!("Change the default of domain {name}"),
                        match sd {
                            Some(d) => format!("ALTER DOMAIN {name} SET DEFAULT {d};"),
                            None => format!("ALTER DOMAIN {name} DROP DEFAULT;"),
                        },
                    ));
                }
                if sn != tn {
                    self.main.push(
                        Step::new(
                            format!("Change NOT NULL of domain {name}"),
                            format!(
                                "ALTER DOMAIN {name} {} NOT NULL;",
                                if *sn { "SET" } else { "DROP" }
                            ),
                        )
                        .hazard(Hazard::Validates),
                    );
                }
                for c in tc {
                    if !sc
                        .iter()
                        .any(|x| x.name == c.name && x.definition == c.definition)
                    {
                        self.main.push(Step::new(
                            format!("Drop constraint {} of domain {name}", quote_ident(&c.name)),
                            format!(
                                "ALTER DOMAIN {name} DROP CONSTRAINT IF EXISTS {};",
                                quote_ident(&c.name)
                            ),
                        ));
                    }
                }
                for c in sc {
                    let cn = quote_ident(&c.name);
                    match tc
                        .iter()
                        .find(|x| x.name == c.name && x.definition == c.definition)
                    {
                        None => self.main.push(
                            Step::new(
                                format!("Add constraint {cn} to domain {name}"),
                                format!(
                                    "ALTER DOMAIN {name} ADD CONSTRAINT {cn} {};",
                                    c.definition
                                ),
                            )
                            .hazard(Hazard::Validates),
                        ),
                        Some(x) => {
                            if x.comment != c.comment {
                                self.main.push(comment_step(
                                    "CONSTRAINT",
                                    &format!("{cn} ON DOMAIN {name}"),
                                    c.comment.as_deref(),
                                ));
                            }
                        }
                    }
                }
            }
            (
                TypeKind::Composite { attributes: sa, .. },
                TypeKind::Composite { attributes: ta, .. },
            ) => {
                for a in ta {
                    if !sa.iter().any(|x| x.name == a.name) {
                        self.main.push(Step::new(
                            format!("Drop attribute {} of type {name}", quote_ident(&a.name)),
                            format!("ALTER TYPE {name} DROP ATTRIBUTE {};", quote_ident(&a.name)),
                        ));
                    }
                }
                for a in sa {
                    let an = quote_ident(&a.name);
                    let coll = a
                        .collation
                        .as_ref()
                        .map(|c| format!(" COLLATE {c}"))
                        .unwrap_or_default();
                    match ta.iter().find(|x| x.name == a.name) {
                        None => self.main.push(Step::new(
                            format!("Add attribute {an} to type {name}"),
                            format!(
                                "ALTER TYPE {name} ADD ATTRIBUTE {an} {}{coll};",
                                a.type_name
                            ),
                        )),
                        Some(x) => {
                            if x.type_name != a.type_name || x.collation != a.collation {
                                self.main.push(Step::new(
                                    format!("Change the type of attribute {an} of type {name}"),
                                    format!(
                                        "ALTER TYPE {name} ALTER ATTRIBUTE {an} TYPE {}{coll};",
                                        a.type_name
                                    ),
                                ));
                            }
                            if x.comment != a.comment {
                                self.main.push(comment_step(
                                    "COLUMN",
                                    &format!("{name}.{an}"),
                                    a.comment.as_deref(),
                                ));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        self.main.extend(meta_steps(
            Meta {
                kind,
                name: name.clone(),
                acl_object: Some(format!("{kind} {name}")),
                owner: (&s.owner, &t.owner),
                acl: (s.acl.as_ref(), t.acl.as_ref()),
                comment: (s.comment.as_deref(), t.comment.as_deref()),
            },
            &self.tgt.roles,
            None,
        ));
    }

    fn alter_table(&mut self, s: &'a Table, t: &'a Table, key: &Key) {
        let name = s.sql_name();
        let reset = self.reset_defaults.contains(key);
        // Partition bound and inheritance.
        if !(s.is_partition() || t.is_partition()) && s.parents != t.parents {
            for p in &t.parents {
                if !s.parents.contains(p) {
                    self.main.push(alter(
                        s,
                        format!("Stop inheriting from {}", p.sql()),
                        format!("ALTER TABLE {name} NO INHERIT {};", p.sql()),
                    ));
                }
            }
            for p in &s.parents {
                if !t.parents.contains(p) {
                    self.main.push(alter(
                        s,
                        format!("Inherit from {}", p.sql()),
                        format!("ALTER TABLE {name} INHERIT {};", p.sql()),
                    ));
                }
            }
        }
        let mut attach = None;
        if s.is_partition() && (s.parents != t.parents || s.partition_bound != t.partition_bound) {
            if let Some(p) = s.parents.first().filter(|_| s.is_partition()) {
                attach = Some(
                    alter(
                        s,
                        format!("Attach partition {name}"),
                        format!(
                            "ALTER TABLE {} ATTACH PARTITION {name} {};",
                            p.sql(),
                            s.partition_bound.as_deref().unwrap_or("DEFAULT")
                        ),
                    )
                    .hazard(Hazard::Validates),
                );
            }
        }
        // Columns follow the parent only when the table already was its partition.
        let partition = s.is_partition() && t.is_partition();
        let plain = s.kind == TableKind::Ordinary && !partition && s.parents.is_empty();
        let children = self.parents.contains(key);
        for c in &s.columns {
            if crate::ident::is_tombstone(&c.name) {
                continue;
            }
            let col = quote_ident(&c.name);
            // A column only inherited in the target disappears with its parent's (not a
            // partition's: detached, it keeps its columns).
            let parent_drops = |tc: &Column| {
                !tc.is_local
                    && !t.is_partition()
                    && t.parents.iter().all(|p| {
                        self.src
                            .table(&p.schema, &p.name)
                            .is_none_or(|pt| pt.column(&c.name).is_none())
                    })
            };
            let tc = t.column(&c.name).filter(|tc| {
                tc.generated == c.generated
                    && tc.generated_virtual == c.generated_virtual
                    && !parent_drops(tc)
            });
            let Some(tc) = tc else {
                if (c.is_local || s.is_partition()) && !partition {
                    let mut st = alter(
                        s,
                        format!("Add column {col} to {name}"),
                        format!(
                            "ALTER TABLE {name} ADD COLUMN {};",
                            ddl::column_definition(c)
                        ),
                    );
                    if c.generated.is_some() || c.identity.is_some() {
                        st = st.hazard(Hazard::Rewrite);
                    }
                    self.main.push(st);
                    if let Some(cm) = &c.comment {
                        self.main
                            .push(comment_step("COLUMN", &format!("{name}.{col}"), Some(cm)));
                    }
                    if !c.acl.is_empty() {
                        self.main.push(Step::new(
                            format!("Grant on column {col} of {name}"),
                            ddl::column_grants(&name, &s.owner, c),
                        ));
                    }
                }
                continue;
            };
            let mut have_default = if reset { None } else { tc.default.clone() };
            let inherited = (!c.is_local && !s.is_partition()) || partition;
            if (c.type_name != tc.type_name || c.collation != tc.collation) && !inherited {
                let mut sql = String::new();
                if have_default.is_some() {
                    sql.push_str(&format!(
                        "ALTER TABLE {name} ALTER COLUMN {col} DROP DEFAULT;\n"
                    ));
                    have_default = None;
                }
                let coll = c
                    .collation
                    .as_ref()
                    .map(|x| format!(" COLLATE {x}"))
                    .unwrap_or_default();
                sql.push_str(&format!(
                    "ALTER TABLE {name} ALTER COLUMN {col} TYPE {}{coll} USING {};",
                    c.type_name,
                    cast_expr(&col, &tc.type_name, &c.type_name)
                ));
                self.main.push(
                    alter(
                        s,
                        format!("Change the type of {name}.{col} to {}", c.type_name),
                        sql,
                    )
                    .hazard(Hazard::Rewrite),
                );
            }
            // Identity.
            match (c.identity, tc.identity) {
                (Some(si), None) => {
                    let mut opts = Vec::new();
                    if let Some(q) = &c.identity_sequence {
                        opts.push(format!("SEQUENCE NAME {}", q.sql()));
                    }
                    if let Some(o) = &c.identity_options {
                        opts.push(ddl::sequence_options(o));
                    }
                    if have_default.is_some() {
                        self.main.push(alter(
                            s,
                            format!("Drop the default of {name}.{col}"),
                            format!("ALTER TABLE {name} ALTER COLUMN {col} DROP DEFAULT;"),
                        ));
                    }
                    if !tc.not_null {
                        self.main.push(
                            alter(
                                s,
                                format!("Set {name}.{col} NOT NULL"),
                                format!("ALTER TABLE {name} ALTER COLUMN {col} SET NOT NULL;"),
                            )
                            .hazard(Hazard::Validates),
                        );
                    }
                    self.main.push(alter(
                        s,
                        format!("Make {name}.{col} an identity column"),
                        format!(
                            "ALTER TABLE {name} ALTER COLUMN {col} ADD GENERATED {} AS IDENTITY ({});",
                            identity_sql(si),
                            opts.join(" ")
                        ),
                    ));
                    continue;
                }
                (None, Some(_)) => {
                    self.main.push(alter(
                        s,
                        format!("Drop identity of {name}.{col}"),
                        format!("ALTER TABLE {name} ALTER COLUMN {col} DROP IDENTITY;"),
                    ));
                }
                (Some(si), Some(ti)) => {
                    let mut parts = Vec::new();
                    if si != ti {
                        parts.push(format!("SET GENERATED {}", identity_sql(si)));
                    }
                    if let (Some(so), Some(to)) = (&c.identity_options, &tc.identity_options) {
                        let changes = sequence_option_changes(so, to);
                        match &tc.identity_sequence {
                            // `ALTER COLUMN … SET` cannot change the sequence's type (`LIKE …
                            // INCLUDING ALL` makes it bigint): the sequence itself can.
                            Some(seq) if so.data_type != to.data_type => {
                                self.main.push(alter(
                                    s,
                                    format!("Change the identity sequence of {name}.{col}"),
                                    format!("ALTER SEQUENCE {} {};", seq.sql(), changes.join(" ")),
                                ));
                            }
                            _ => {
                                for o in changes {
                                    if !o.starts_with("AS ") {
                                        parts.push(format!("SET {o}"));
                                    }
                                }
                            }
                        }
                    }
                    if !parts.is_empty() {
                        self.main.push(alter(
                            s,
                            format!("Change identity of {name}.{col}"),
                            format!("ALTER TABLE {name} ALTER COLUMN {col} {};", parts.join(" ")),
                        ));
                    }
                }
                (None, None) => {}
            }
            if c.identity.is_none() && c.generated.is_none() && c.default != have_default {
                match &c.default {
                    Some(d) => self.main.push(alter(
                        s,
                        format!("Set the default of {name}.{col}"),
                        format!("ALTER TABLE {name} ALTER COLUMN {col} SET DEFAULT {d};"),
                    )),
                    None => self.main.push(alter(
                        s,
                        format!("Drop the default of {name}.{col}"),
                        format!("ALTER TABLE {name} ALTER COLUMN {col} DROP DEFAULT;"),
                    )),
                }
            }
            let parent_same = partition
                && s.parents
                    .first()
                    .and_then(|p| self.src.table(&p.schema, &p.name))
                    .and_then(|p| p.column(&c.name))
                    .is_some_and(|p| p.not_null == c.not_null)
                && t.parents
                    .first()
                    .and_then(|p| self.tgt.table(&p.schema, &p.name))
                    .and_then(|p| p.column(&c.name))
                    .is_some_and(|p| p.not_null == tc.not_null);
            if c.not_null != tc.not_null
                && !parent_same
                && !(c.identity.is_some() && tc.identity.is_none())
            {
                // On 18+ a NOT NULL is a named constraint: name it as the source does (a plain
                // SET NOT NULL would take a default name, or a suffixed one if taken).
                let set_not_null = match (&c.not_null_name, self.tgt.server_version >= 180000) {
                    (Some(nn), true) => format!(
                        "ALTER TABLE {name} ADD CONSTRAINT {} NOT NULL {col};",
                        quote_ident(nn)
                    ),
                    _ => format!("ALTER TABLE {name} ALTER COLUMN {col} SET NOT NULL;"),
                };
                if c.not_null {
                    if self.opts.online && plain && !children {
                        // Not "_not_null": 18 names a column's NOT NULL constraint that way.
                        let check = crate::ident::derived_name(
                            &s.name,
                            &format!("_{}_not_null_check", c.name),
                        );
                        let ck = quote_ident(&check);
                        self.main.push(alter(s, format!("Check {name}.{col} IS NOT NULL for new rows (existing rows are validated next)"), format!("ALTER TABLE {name} ADD CONSTRAINT {ck} CHECK ({col} IS NOT NULL) NOT VALID;")));
                        self.validate.push(
                            Step::new(
                                format!("Validate that {name}.{col} has no NULL"),
                                format!("ALTER TABLE {name} VALIDATE CONSTRAINT {ck};"),
                            )
                            .lock(LockMode::ShareUpdateExclusive, name.clone())
                            .hazard(Hazard::Validates),
                        );
                        self.post.push(alter(
                            s,
                            format!("Set {name}.{col} NOT NULL (the validated check spares the scan) and drop the check"),
                            format!("{set_not_null}\nALTER TABLE {name} DROP CONSTRAINT {ck};"),
                        ));
                    } else {
                        self.main.push(
                            alter(s, format!("Set {name}.{col} NOT NULL"), set_not_null)
                                .hazard(Hazard::Validates),
                        );
                    }
                } else if !(s
                    .primary_key
                    .as_ref()
                    .is_some_and(|pk| pk.contains(&c.name)))
                {
                    self.main.push(alter(
                        s,
                        format!("Drop NOT NULL of {name}.{col}"),
                        format!("ALTER TABLE {name} ALTER COLUMN {col} DROP NOT NULL;"),
                    ));
                }
            }
            // Both sides name their NOT NULL constraints (18+): the same name.
            if let (true, true, Some(sn), Some(tn)) =
                (c.not_null, tc.not_null, &c.not_null_name, &tc.not_null_name)
            {
                // Renamed while the target's constraint is its own (an inherited one cannot
                // be renamed): a table attached below (detached first if it was a partition)
                // is renamed before the attach.
                let own = attach.is_some() || !inherited_not_null(t, tc);
                if sn != tn && (own || !inherited_not_null(s, c)) {
                    self.main.push(alter(
                        s,
                        format!(
                            "Rename the NOT NULL constraint of {name}.{col} to {}",
                            quote_ident(sn)
                        ),
                        format!(
                            "ALTER TABLE {name} RENAME CONSTRAINT {} TO {};",
                            quote_ident(tn),
                            quote_ident(sn)
                        ),
                    ));
                }
            }
            if c.comment != tc.comment {
                self.main.push(comment_step(
                    "COLUMN",
                    &format!("{name}.{col}"),
                    c.comment.as_deref(),
                ));
            }
            if let Some(st) = column_acl_steps(&name, c, tc, &self.tgt.roles) {
                self.main.push(st);
            }
        }
        if let Some(a) = attach {
            // After everything of this pass: the new parent and the partition's own indexes
            // (which the attach adopts) exist by then.
            self.standalone.insert(key.clone());
            // ATTACH adopts, for each index of the parent, the first matching index of the
            // partition (by oid). An index of the target that must stay unattached but matches
            // one would be adopted in place of the one the source attaches: it is dropped
            // before the attach and built again after it.
            let parent = s
                .parents
                .first()
                .and_then(|p| self.src.table(&p.schema, &p.name));
            let mut rebuild = Vec::new();
            for ti in t.indexes.iter().filter(|i| i.constraint.is_none()) {
                let Some(si) = s.index(&ti.name) else {
                    continue;
                };
                if si.parent_index.is_some() || si.definition != ti.definition {
                    continue;
                }
                if parent.is_some_and(|p| p.indexes.iter().any(|pi| same_index_shape(pi, si))) {
                    let qn = qualified(&ti.schema, &ti.name);
                    self.main.push(alter(
                        s,
                        format!("Drop index {qn} before the attach (it would be adopted)"),
                        format!("DROP INDEX {qn};"),
                    ));
                    rebuild.push(si);
                }
            }
            self.after.push(a);
            for si in rebuild {
                self.after.push(
                    alter(
                        s,
                        format!(
                            "Build index {} again, unattached",
                            qualified(&si.schema, &si.name)
                        ),
                        ddl::create_index(si),
                    )
                    .hazard(Hazard::BuildsIndex),
                );
            }
        }
        // Inline checks that are new or changed.
        for c in s.constraints.iter().filter(|c| ddl::is_inline_check(c)) {
            let keep = t.constraints.iter().any(|x| {
                ddl::is_inline_check(x) && x.name == c.name && x.definition == c.definition
            });
            if keep && !reset {
                if let Some(x) = t.constraint(&c.name) {
                    if x.comment != c.comment {
                        self.main.push(comment_step(
                            "CONSTRAINT",
                            &format!("{} ON {name}", quote_ident(&c.name)),
                            c.comment.as_deref(),
                        ));
                    }
                }
                continue;
            }
            let cn = quote_ident(&c.name);
            if self.opts.online && plain {
                self.main.push(alter(
                    s,
                    format!("Add check {cn} on {name} without checking existing rows"),
                    format!(
                        "ALTER TABLE {name} ADD CONSTRAINT {cn} {} NOT VALID;",
                        c.definition
                    ),
                ));
                self.validate.push(
                    Step::new(
                        format!("Validate constraint {cn} on {name}"),
                        format!("ALTER TABLE {name} VALIDATE CONSTRAINT {cn};"),
                    )
                    .lock(LockMode::ShareUpdateExclusive, name.clone())
                    .hazard(Hazard::Validates),
                );
            } else {
                self.main.push(
                    alter(
                        s,
                        format!("Add check {cn} on {name}"),
                        format!("ALTER TABLE {name} ADD CONSTRAINT {cn} {};", c.definition),
                    )
                    .hazard(Hazard::Validates),
                );
            }
            if let Some(cm) = &c.comment {
                self.main.push(comment_step(
                    "CONSTRAINT",
                    &format!("{cn} ON {name}"),
                    Some(cm),
                ));
            }
        }
        if s.reloptions != t.reloptions {
            let gone: Vec<String> = t
                .reloptions
                .iter()
                .filter_map(|o| o.split('=').next())
                .filter(|k| !s.reloptions.iter().any(|x| x.split('=').next() == Some(k)))
                .map(|k| k.to_string())
                .collect();
            if !gone.is_empty() {
                self.main.push(alter(
                    s,
                    format!("Reset storage parameters of {name}"),
                    format!("ALTER TABLE {name} RESET ({});", gone.join(", ")),
                ));
            }
            if !s.reloptions.is_empty() {
                self.main.push(alter(
                    s,
                    format!("Set storage parameters of {name}"),
                    format!("ALTER TABLE {name} SET ({});", s.reloptions.join(", ")),
                ));
            }
        }
        if s.unlogged != t.unlogged {
            self.main.push(
                alter(
                    s,
                    format!(
                        "Make {name} {}",
                        if s.unlogged { "unlogged" } else { "logged" }
                    ),
                    format!(
                        "ALTER TABLE {name} SET {};",
                        if s.unlogged { "UNLOGGED" } else { "LOGGED" }
                    ),
                )
                .hazard(Hazard::Rewrite),
            );
        }
        if s.rls_enabled != t.rls_enabled {
            let v = if s.rls_enabled { "ENABLE" } else { "DISABLE" };
            self.main.push(alter(
                s,
                format!("{} row-level security on {name}", v.to_lowercase()),
                format!("ALTER TABLE {name} {v} ROW LEVEL SECURITY;"),
            ));
        }
        if s.rls_forced != t.rls_forced {
            let v = if s.rls_forced { "FORCE" } else { "NO FORCE" };
            self.main.push(alter(
                s,
                format!("{} row-level security on {name}", v.to_lowercase()),
                format!("ALTER TABLE {name} {v} ROW LEVEL SECURITY;"),
            ));
        }
        if s.replica_identity != t.replica_identity && s.replica_identity != "i" {
            let v = match s.replica_identity.as_str() {
                "f" => "FULL",
                "n" => "NOTHING",
                _ => "DEFAULT",
            };
            self.main.push(alter(
                s,
                format!("Set replica identity of {name} to {v}"),
                format!("ALTER TABLE ONLY {name} REPLICA IDENTITY {v};"),
            ));
        }
        self.main.extend(meta_steps(
            Meta {
                kind: "TABLE",
                name: name.clone(),
                acl_object: Some(format!("TABLE {name}")),
                owner: (&s.owner, &t.owner),
                acl: (s.acl.as_ref(), t.acl.as_ref()),
                comment: (s.comment.as_deref(), t.comment.as_deref()),
            },
            &self.tgt.roles,
            Some(&name),
        ));
    }

    /// Pass 3: drops of what the source lacks and nothing uses any more.
    fn pass_final_drops(&mut self) {
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

    fn finish(mut self) -> Diff {
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

fn identity_sql(i: Identity) -> &'static str {
    match i {
        Identity::Always => "ALWAYS",
        Identity::ByDefault => "BY DEFAULT",
    }
}

/// Whether the target's columns of a table change in a way that views over it cannot survive.
/// The target's columns (attnums) that the change retypes, re-collates, regenerates or drops
/// (a tombstone rename keeps its dependents working, so tombstones do not count).
fn columns_rewritten(s: &Table, t: &Table) -> Vec<i16> {
    t.columns
        .iter()
        .filter(|tc| match s.column(&tc.name) {
            None => !crate::ident::is_tombstone(&tc.name),
            Some(sc) => {
                sc.type_name != tc.type_name
                    || sc.collation != tc.collation
                    || sc.generated != tc.generated
                    || sc.generated_virtual != tc.generated_virtual
            }
        })
        .map(|tc| tc.num)
        .collect()
}

/// A plain view whose new definition only appends columns (CREATE OR REPLACE works).
fn view_appends(s: &View, t: &View) -> bool {
    !s.materialized
        && !t.materialized
        && s.reloptions == t.reloptions
        && t.columns.len() <= s.columns.len()
        && t.columns.iter().zip(&s.columns).all(|(a, b)| {
            a.name == b.name && a.type_name == b.type_name && a.collation == b.collation
        })
        && s.columns
            .iter()
            .map(|c| &c.default)
            .eq(t
                .columns
                .iter()
                .map(|c| &c.default)
                .chain(std::iter::repeat_n(
                    &None,
                    s.columns.len() - t.columns.len(),
                )))
}

/// Type family for choosing a conversion: within a family (or from / to text) a direct cast
/// exists; across families the value goes through its text form.
fn family(t: &str) -> &'static str {
    let t = t.trim_end_matches("[]");
    let base = t.split('(').next().unwrap_or(t).trim();
    match base {
        "smallint" | "integer" | "bigint" | "numeric" | "real" | "double precision" | "money" => {
            "num"
        }
        "text" | "character varying" | "character" | "\"char\"" | "name" | "citext" => "text",
        "timestamp without time zone"
        | "timestamp with time zone"
        | "date"
        | "interval"
        | "time without time zone"
        | "time with time zone" => "time",
        "json" | "jsonb" => "json",
        "boolean" => "bool",
        "uuid" => "uuid",
        "bytea" => "bytea",
        _ if t.contains('.') => "user",
        _ => "other",
    }
}

/// `USING` expression that converts `col` from `from` to `to`.
fn cast_expr(col: &str, from: &str, to: &str) -> String {
    let (f, t) = (family(from), family(to));
    let arrays = from.ends_with("[]") || to.ends_with("[]");
    if !arrays && f != "user" && t != "user" && (f == t || f == "text" || t == "text") {
        format!("{col}::{to}")
    } else {
        format!("{col}::text::{to}")
    }
}

fn is_subsequence(small: &[String], big: &[String]) -> bool {
    let mut it = big.iter();
    small.iter().all(|x| it.any(|y| y == x))
}

/// A column whose NOT NULL comes from a parent (a partition's, an inherited column's): its
/// constraint is renamed on the parent, not here.
fn inherited_not_null(t: &Table, c: &Column) -> bool {
    !c.is_local || c.inherit_count > 0 || t.is_partition()
}

/// Whether a partition's index matches a partitioned index closely enough for ATTACH
/// PARTITION to adopt it: the same access method, keys, opclasses and predicate (what follows
/// the table name in `pg_get_indexdef`) and the same uniqueness.
fn same_index_shape(parent: &Index, part: &Index) -> bool {
    let shape = |d: &str| d.split_once(" USING ").map(|(_, r)| r.to_string());
    parent.unique == part.unique
        && shape(&parent.definition).is_some()
        && shape(&parent.definition) == shape(&part.definition)
}
