//! Identity keys of snapshot items and the dependency edges between them.
//!
//! Two snapshots are paired by keys that do not involve oids (oids differ between databases):
//! schema-qualified names, `(table, name)` for constraints, triggers and policies, name plus
//! identity arguments for functions. The same keys carry the `pg_depend` edges of one snapshot,
//! folded onto items exactly as [`crate::ddl::ordered`] folds them, so that "everything that
//! depends on this changed object" is a walk over keys.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::catalog::*;
use crate::ddl::{Item, Relation};

/// What kind of object a [`Key`] names. Declared in the alphabetical order of the words they
/// were spelled with when keys were strings, so that keys still sort as they did (plans list
/// some steps in key order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum KeyKind {
    Collation,
    Constraint,
    Extension,
    /// An [`Extra`] nothing else uses: dropped in dependency order.
    Extra,
    Function,
    Index,
    Matview,
    /// The `OWNED BY` of a sequence.
    Owned,
    Policy,
    Publication,
    /// A table's `REPLICA IDENTITY`.
    Replica,
    Schema,
    Sequence,
    Table,
    Trigger,
    Type,
    View,
    /// An [`Extra`] that others may use: dropped after the tables have been altered.
    XDeferred,
}

/// The identity of a snapshot item across databases: its kind and the names that pair it (no
/// oids, which differ between databases).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub kind: KeyKind,
    pub parts: Vec<String>,
}

impl Key {
    fn new(kind: KeyKind, parts: &[&str]) -> Key {
        Key {
            kind,
            parts: parts.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// The schema and name of a schema-qualified key (tables, views, constraints' tables…).
    pub fn schema_and_name(&self) -> Option<(&str, &str)> {
        match self.parts.as_slice() {
            [schema, name, ..] => Some((schema, name)),
            _ => None,
        }
    }
}

pub(crate) fn table_key(schema: &str, name: &str) -> Key {
    Key::new(KeyKind::Table, &[schema, name])
}

pub(crate) fn view_key(v: &View) -> Key {
    Key::new(
        if v.materialized {
            KeyKind::Matview
        } else {
            KeyKind::View
        },
        &[&v.schema, &v.name],
    )
}

pub(crate) fn relation_key(r: &Relation) -> Key {
    match r {
        Relation::Table(t) => table_key(&t.schema, &t.name),
        Relation::View(v) => view_key(v),
    }
}

/// The identity of an item across databases.
pub(crate) fn item_key(item: &Item) -> Key {
    use KeyKind as K;
    match item {
        Item::Schema(x) => Key::new(K::Schema, &[&x.name]),
        Item::Extension(x) => Key::new(K::Extension, &[&x.name]),
        Item::Collation(x) => Key::new(K::Collation, &[&x.schema, &x.name]),
        Item::Type(x) => Key::new(K::Type, &[&x.schema, &x.name]),
        Item::Function(x) => Key::new(K::Function, &[&x.schema, &x.name, &x.identity_args]),
        Item::Sequence(x) => Key::new(K::Sequence, &[&x.schema, &x.name]),
        Item::Table(x) => table_key(&x.schema, &x.name),
        Item::View(x) => view_key(x),
        Item::SequenceOwnedBy(x) => Key::new(K::Owned, &[&x.schema, &x.name]),
        Item::Constraint(t, c) => Key::new(K::Constraint, &[&t.schema, &t.name, &c.name]),
        Item::Index(_, i) => Key::new(K::Index, &[&i.schema, &i.name]),
        Item::ReplicaIdentity(t) => Key::new(K::Replica, &[&t.schema, &t.name]),
        Item::Trigger(r, t) => Key::new(K::Trigger, &[r.schema(), r.name(), &t.name]),
        Item::Policy(t, p) => Key::new(K::Policy, &[&t.schema, &t.name, &p.name]),
        Item::Publication(p) => Key::new(K::Publication, &[&p.name]),
        Item::Extra(e) => extra_key(e),
    }
}

/// Extras that others may use are dropped last ([`super::compare`] defers `XDeferred` keys).
pub(crate) fn extra_key(e: &Extra) -> Key {
    Key::new(
        if e.deferred {
            KeyKind::XDeferred
        } else {
            KeyKind::Extra
        },
        &[&e.kind, &e.identity],
    )
}

/// The key of the relation an extra belongs to.
fn extra_owner_key(e: &Extra) -> Option<Key> {
    // A rule may use other tables, which may be dropped before its own: it is dropped by
    // itself, in dependency order.
    if e.class == ObjClass::Rule {
        return None;
    }
    let on = e.on.as_ref()?;
    let kind = match on.kind.as_str() {
        "table" => KeyKind::Table,
        "matview" => KeyKind::Matview,
        "view" => KeyKind::View,
        "index" => KeyKind::Index,
        // A relation of a kind the snapshot does not model as an item: nothing to go with.
        _ => return None,
    };
    Some(Key::new(kind, &[&on.schema, &on.name]))
}

/// The relation a sub-item hangs off (dropped with it).
pub(crate) fn owner_key(item: &Item) -> Option<Key> {
    match item {
        Item::Constraint(t, _) | Item::ReplicaIdentity(t) | Item::Policy(t, _) => {
            Some(table_key(&t.schema, &t.name))
        }
        Item::Index(r, _) | Item::Trigger(r, _) => Some(relation_key(r)),
        Item::Extra(e) => extra_owner_key(e),
        _ => None,
    }
}

/// Whether a change of what this item depends on forces it to be dropped and recreated.
/// Tables, sequences, schemas and extensions are altered in place, never recreated for that.
pub(crate) fn recreatable(key: &Key) -> bool {
    !matches!(
        key.kind,
        KeyKind::Table
            | KeyKind::Sequence
            | KeyKind::Schema
            | KeyKind::Extension
            | KeyKind::Owned
            | KeyKind::Replica
    )
}

/// The items of one snapshot in creation order, with their keys and dependency edges.
pub(crate) struct Graph<'a> {
    pub items: Vec<Item<'a>>,
    pub keys: Vec<Key>,
    pub pos: HashMap<Key, usize>,
    /// key → keys of items that depend on it.
    pub dependents: HashMap<Key, Vec<Key>>,
    /// key → keys of items it depends on.
    pub requires: HashMap<Key, Vec<Key>>,
}

impl<'a> Graph<'a> {
    pub fn new(snap: &'a Snapshot) -> Graph<'a> {
        let items = crate::ddl::ordered(snap);
        let keys: Vec<Key> = items.iter().map(item_key).collect();
        let pos = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        let refs = ref_keys(snap);
        let mut dependents: HashMap<Key, Vec<Key>> = HashMap::new();
        let mut requires: HashMap<Key, Vec<Key>> = HashMap::new();
        let mut seen = HashSet::new();
        let mut add = |from: Key, to: Key| {
            if from != to && seen.insert((from.clone(), to.clone())) {
                dependents.entry(to.clone()).or_default().push(from.clone());
                requires.entry(from).or_default().push(to);
            }
        };
        for d in &snap.dependencies {
            if let (Some(f), Some(t)) = (refs.get(&d.from), refs.get(&d.to)) {
                add(f.clone(), t.clone());
            }
        }
        for (item, key) in items.iter().zip(&keys) {
            if let Some(o) = owner_key(item) {
                add(key.clone(), o);
            }
        }
        Graph {
            items,
            keys,
            pos,
            dependents,
            requires,
        }
    }

    /// Every item that depends, directly or through other recreatable items, on one of
    /// `start`, excluding the starting items themselves; never walks into tables and the like.
    pub fn dependent_closure(&self, start: &HashSet<Key>) -> HashSet<Key> {
        let mut out = HashSet::new();
        let mut queue: VecDeque<&Key> = start.iter().collect();
        while let Some(k) = queue.pop_front() {
            for d in self.dependents.get(k).map(|v| v.as_slice()).unwrap_or(&[]) {
                if recreatable(d) && !start.contains(d) && out.insert(d.clone()) {
                    queue.push_back(d);
                }
            }
        }
        out
    }

    /// Every item that one of `start` needs, transitively.
    pub fn requirement_closure(&self, start: &HashSet<Key>) -> HashSet<Key> {
        let mut out = HashSet::new();
        let mut queue: VecDeque<&Key> = start.iter().collect();
        while let Some(k) = queue.pop_front() {
            for d in self.requires.get(k).map(|v| v.as_slice()).unwrap_or(&[]) {
                if out.insert(d.clone()) {
                    queue.push_back(d);
                }
            }
        }
        out
    }
}

/// Drops the dependencies no ordering ever follows: those with an end that is not one of the
/// snapshot's objects (ordering looks both ends up, here and in `ddl::order`).
pub(super) fn prune_dependencies(snap: &mut Snapshot) {
    let refs = ref_keys(snap);
    snap.dependencies
        .retain(|d| refs.contains_key(&d.from) && refs.contains_key(&d.to));
}

/// Which item key each catalog row of the snapshot belongs to.
fn ref_keys(snap: &Snapshot) -> HashMap<ObjRef, Key> {
    use ObjClass as C;
    let r = |class, oid| ObjRef { class, oid };
    let mut m = HashMap::new();
    for s in &snap.schemas {
        m.insert(r(C::Namespace, s.oid), item_key(&Item::Schema(s)));
    }
    for e in &snap.extensions {
        m.insert(r(C::Extension, e.oid), item_key(&Item::Extension(e)));
    }
    for c in &snap.collations {
        m.insert(r(C::Collation, c.oid), item_key(&Item::Collation(c)));
    }
    for t in &snap.types {
        let key = item_key(&Item::Type(t));
        m.insert(r(C::Type, t.oid), key.clone());
        match &t.kind {
            TypeKind::Composite { relid, .. } => {
                m.insert(r(C::Class, *relid), key.clone());
            }
            TypeKind::Domain { constraints, .. } => {
                for c in constraints {
                    m.insert(r(C::Constraint, c.oid), key.clone());
                }
            }
            _ => {}
        }
    }
    for f in &snap.functions {
        m.insert(r(C::Proc, f.oid), item_key(&Item::Function(f)));
    }
    for s in &snap.sequences {
        let key = match (&s.owned_by, s.identity) {
            (Some(o), true) => table_key(&o.schema, &o.table),
            _ => item_key(&Item::Sequence(s)),
        };
        m.insert(r(C::Class, s.oid), key);
    }
    for t in &snap.tables {
        let tk = table_key(&t.schema, &t.name);
        m.insert(r(C::Class, t.oid), tk.clone());
        for c in &t.constraints {
            let key = if crate::ddl::is_inline_check(c) || crate::ddl::is_implied_constraint(c) {
                tk.clone()
            } else {
                item_key(&Item::Constraint(t, c))
            };
            if let Some(i) = c.index.as_deref().and_then(|i| t.index(i)) {
                m.insert(r(C::Class, i.oid), key.clone());
            }
            m.insert(r(C::Constraint, c.oid), key);
        }
        for i in t.indexes.iter().filter(|i| i.constraint.is_none()) {
            m.insert(
                r(C::Class, i.oid),
                item_key(&Item::Index(Relation::Table(t), i)),
            );
        }
        for x in &t.triggers {
            let key = if x.from_parent {
                tk.clone()
            } else {
                item_key(&Item::Trigger(Relation::Table(t), x))
            };
            m.insert(r(C::Trigger, x.oid), key);
        }
        for p in &t.policies {
            m.insert(r(C::Policy, p.oid), item_key(&Item::Policy(t, p)));
        }
    }
    for e in &snap.extras {
        m.insert(e.own_ref(), extra_key(e));
    }
    for v in &snap.views {
        m.insert(r(C::Class, v.oid), view_key(v));
        for i in &v.indexes {
            m.insert(
                r(C::Class, i.oid),
                item_key(&Item::Index(Relation::View(v), i)),
            );
        }
        for x in &v.triggers {
            m.insert(
                r(C::Trigger, x.oid),
                item_key(&Item::Trigger(Relation::View(v), x)),
            );
        }
    }
    m
}
