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

const SEP: char = '\u{1}';

fn k(parts: &[&str]) -> String {
    let mut s = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            s.push(SEP);
        }
        s.push_str(p);
    }
    s
}

pub(crate) fn table_key(schema: &str, name: &str) -> String {
    k(&["table", schema, name])
}

pub(crate) fn view_key(v: &View) -> String {
    k(&[
        if v.materialized { "matview" } else { "view" },
        &v.schema,
        &v.name,
    ])
}

pub(crate) fn relation_key(r: &Relation) -> String {
    match r {
        Relation::Table(t) => table_key(&t.schema, &t.name),
        Relation::View(v) => view_key(v),
    }
}

/// The identity of an item across databases.
pub(crate) fn item_key(item: &Item) -> String {
    match item {
        Item::Schema(x) => k(&["schema", &x.name]),
        Item::Extension(x) => k(&["extension", &x.name]),
        Item::Collation(x) => k(&["collation", &x.schema, &x.name]),
        Item::Type(x) => k(&["type", &x.schema, &x.name]),
        Item::Function(x) => k(&["function", &x.schema, &x.name, &x.identity_args]),
        Item::Sequence(x) => k(&["sequence", &x.schema, &x.name]),
        Item::Table(x) => table_key(&x.schema, &x.name),
        Item::View(x) => view_key(x),
        Item::SequenceOwnedBy(x) => k(&["owned", &x.schema, &x.name]),
        Item::Constraint(t, c) => k(&["constraint", &t.schema, &t.name, &c.name]),
        Item::Index(_, i) => k(&["index", &i.schema, &i.name]),
        Item::ReplicaIdentity(t) => k(&["replica", &t.schema, &t.name]),
        Item::Trigger(r, t) => k(&["trigger", r.schema(), r.name(), &t.name]),
        Item::Policy(t, p) => k(&["policy", &t.schema, &t.name, &p.name]),
        Item::Publication(p) => k(&["publication", &p.name]),
        Item::Extra(e) => extra_key(e),
    }
}

/// Extras that others may use are dropped last ([`super::compare`] defers `xdeferred` keys).
pub(crate) fn extra_key(e: &Extra) -> String {
    k(&[
        if e.deferred { "xdeferred" } else { "extra" },
        &e.kind,
        &e.identity,
    ])
}

/// The key of the relation an extra belongs to.
fn extra_owner_key(e: &Extra) -> Option<String> {
    // A rule may use other tables, which may be dropped before its own: it is dropped by
    // itself, in dependency order.
    if e.class == ObjClass::Rule {
        return None;
    }
    let on = e.on.as_ref()?;
    Some(match on.kind.as_str() {
        "table" => table_key(&on.schema, &on.name),
        kind => k(&[kind, &on.schema, &on.name]),
    })
}

/// The relation a sub-item hangs off (dropped with it).
pub(crate) fn owner_key(item: &Item) -> Option<String> {
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
pub(crate) fn recreatable(key: &str) -> bool {
    !(key.starts_with("table\u{1}")
        || key.starts_with("sequence\u{1}")
        || key.starts_with("schema\u{1}")
        || key.starts_with("extension\u{1}")
        || key.starts_with("owned\u{1}")
        || key.starts_with("replica\u{1}"))
}

/// The items of one snapshot in creation order, with their keys and dependency edges.
pub(crate) struct Graph<'a> {
    pub items: Vec<Item<'a>>,
    pub keys: Vec<String>,
    pub pos: HashMap<String, usize>,
    /// key → keys of items that depend on it.
    pub dependents: HashMap<String, Vec<String>>,
    /// key → keys of items it depends on.
    pub requires: HashMap<String, Vec<String>>,
}

impl<'a> Graph<'a> {
    pub fn new(snap: &'a Snapshot) -> Graph<'a> {
        let items = crate::ddl::ordered(snap);
        let keys: Vec<String> = items.iter().map(item_key).collect();
        let pos = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        let refs = ref_keys(snap);
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        let mut requires: HashMap<String, Vec<String>> = HashMap::new();
        let mut seen = HashSet::new();
        let mut add = |from: String, to: String| {
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
    pub fn dependent_closure(&self, start: &HashSet<String>) -> HashSet<String> {
        let mut out = HashSet::new();
        let mut queue: VecDeque<&String> = start.iter().collect();
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
    pub fn requirement_closure(&self, start: &HashSet<String>) -> HashSet<String> {
        let mut out = HashSet::new();
        let mut queue: VecDeque<&String> = start.iter().collect();
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

/// Which item key each catalog row of the snapshot belongs to.
fn ref_keys(snap: &Snapshot) -> HashMap<ObjRef, String> {
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
