//! Dependency order of a snapshot's objects.
//!
//! The items to create form a graph whose edges are the snapshot's `pg_depend` edges, mapped
//! onto items (a column default's dependency is its table's, an index that enforces a
//! constraint is that constraint, an identity sequence is its table), plus a few edges the
//! server does not record but creation needs: a sequence's OWNED BY after its table, a
//! partitioned table's indexes, key constraints and triggers after its partitions (so that
//! nothing is cloned onto partitions under a generated name), a publication after its tables.
//! A topological sort that always takes the smallest ready item by (kind, schema, name) gives
//! a deterministic order. A cycle (rare: e.g. a function whose result is a view's row type and
//! that the view calls) is broken at its smallest item.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use crate::catalog::*;

/// A relation that indexes and triggers hang off.
#[derive(Debug, Clone, Copy)]
pub enum Relation<'a> {
    Table(&'a Table),
    View(&'a View),
}

impl Relation<'_> {
    pub fn schema(&self) -> &str {
        match self {
            Relation::Table(t) => &t.schema,
            Relation::View(v) => &v.schema,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Relation::Table(t) => &t.name,
            Relation::View(v) => &v.name,
        }
    }

    /// Quoted `schema.name`.
    pub fn sql_name(&self) -> crate::ident::QuotedName {
        crate::ident::QuotedName::qualified(self.schema(), self.name())
    }
}

/// Tie-break order: kind rank, then names.
type Key = (u8, String, String, String);

/// One thing to create, borrowing from the snapshot.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    Schema(&'a Schema),
    Extension(&'a Extension),
    Collation(&'a Collation),
    Type(&'a TypeDef),
    Function(&'a Function),
    Sequence(&'a Sequence),
    Table(&'a Table),
    View(&'a View),
    SequenceOwnedBy(&'a Sequence),
    Constraint(&'a Table, &'a Constraint),
    /// An index and the relation it is on (a table or materialized view).
    Index(Relation<'a>, &'a Index),
    ReplicaIdentity(&'a Table),
    /// A trigger and the relation it is on.
    Trigger(Relation<'a>, &'a Trigger),
    Policy(&'a Table, &'a Policy),
    Publication(&'a Publication),
    /// Any other kind (operators, aggregates, rules, column settings, …).
    Extra(&'a Extra),
}

impl Item<'_> {
    /// Tie-break key among items whose dependencies are all met.
    fn key(&self) -> Key {
        let s = |x: &str| x.to_string();
        match self {
            Item::Schema(x) => (0, s(&x.name), String::new(), String::new()),
            Item::Extension(x) => (1, s(&x.name), String::new(), String::new()),
            Item::Collation(x) => (2, s(&x.schema), s(&x.name), String::new()),
            Item::Type(x) => (3, s(&x.schema), s(&x.name), String::new()),
            Item::Function(x) => (4, s(&x.schema), s(&x.name), s(&x.identity_args)),
            Item::Sequence(x) => (5, s(&x.schema), s(&x.name), String::new()),
            Item::Table(x) => (6, s(&x.schema), s(&x.name), String::new()),
            Item::View(x) => (7, s(&x.schema), s(&x.name), String::new()),
            Item::SequenceOwnedBy(x) => (8, s(&x.schema), s(&x.name), String::new()),
            Item::Constraint(t, c) => (
                match c.kind {
                    ConstraintKind::PrimaryKey
                    | ConstraintKind::Unique
                    | ConstraintKind::Exclusion => 9,
                    ConstraintKind::Check => 10,
                    ConstraintKind::ForeignKey => 12,
                },
                s(&t.schema),
                s(&t.name),
                s(&c.name),
            ),
            Item::Index(r, i) => (11, s(r.schema()), s(r.name()), s(&i.name)),
            Item::ReplicaIdentity(t) => (13, s(&t.schema), s(&t.name), String::new()),
            Item::Trigger(r, t) => (14, s(r.schema()), s(r.name()), s(&t.name)),
            Item::Policy(t, p) => (15, s(&t.schema), s(&t.name), s(&p.name)),
            Item::Publication(p) => (16, s(&p.name), String::new(), String::new()),
            Item::Extra(e) => (17, s(&e.kind), s(&e.identity), String::new()),
        }
    }

    /// A short label for the script's comments.
    pub fn describe(&self) -> String {
        use crate::ident::{qualified, quote_ident};
        match self {
            Item::Schema(x) => format!("Schema {}", quote_ident(&x.name)),
            Item::Extension(x) => format!("Extension {}", quote_ident(&x.name)),
            Item::Collation(x) => format!("Collation {}", qualified(&x.schema, &x.name)),
            Item::Type(x) => format!("Type {}", qualified(&x.schema, &x.name)),
            Item::Function(x) => format!(
                "{} {}",
                if x.is_procedure() {
                    "Procedure"
                } else {
                    "Function"
                },
                x.signature()
            ),
            Item::Sequence(x) => format!("Sequence {}", x.qualname().sql()),
            Item::Table(x) => format!("Table {}", x.sql_name()),
            Item::View(x) => format!(
                "{} {}",
                if x.materialized {
                    "Materialized view"
                } else {
                    "View"
                },
                x.sql_name()
            ),
            Item::SequenceOwnedBy(x) => format!("Sequence ownership {}", x.qualname().sql()),
            Item::Constraint(t, c) => {
                format!("Constraint {} on {}", quote_ident(&c.name), t.sql_name())
            }
            Item::Index(_, i) => format!("Index {}", qualified(&i.schema, &i.name)),
            Item::ReplicaIdentity(t) => format!("Replica identity of {}", t.sql_name()),
            Item::Trigger(r, t) => format!("Trigger {} on {}", quote_ident(&t.name), r.sql_name()),
            Item::Policy(t, p) => format!("Policy {} on {}", quote_ident(&p.name), t.sql_name()),
            Item::Publication(p) => format!("Publication {}", quote_ident(&p.name)),
            Item::Extra(e) => e.describe(),
        }
    }
}

struct Graph<'a> {
    items: Vec<Item<'a>>,
    by_ref: HashMap<ObjRef, usize>,
    edges: HashSet<(usize, usize)>,
}

impl<'a> Graph<'a> {
    fn add(&mut self, item: Item<'a>, refs: &[ObjRef]) -> usize {
        let id = self.items.len();
        self.items.push(item);
        for r in refs {
            self.by_ref.insert(*r, id);
        }
        id
    }

    /// `after` must come after `before`.
    fn edge(&mut self, after: usize, before: usize) {
        if after != before {
            self.edges.insert((after, before));
        }
    }
}

fn r(class: ObjClass, oid: u32) -> ObjRef {
    ObjRef { class, oid }
}

/// The snapshot's objects in an order in which they can be created.
pub fn ordered(snap: &Snapshot) -> Vec<Item<'_>> {
    let mut g = Graph {
        items: Vec::new(),
        by_ref: HashMap::new(),
        edges: HashSet::new(),
    };
    use ObjClass as C;
    let mut schema_ids: HashMap<&str, usize> = HashMap::new();
    for s in &snap.schemas {
        let id = g.add(Item::Schema(s), &[r(C::Namespace, s.oid)]);
        schema_ids.insert(&s.name, id);
    }
    let mut in_schema: Vec<(usize, &str)> = Vec::new();
    for e in &snap.extensions {
        let id = g.add(Item::Extension(e), &[r(C::Extension, e.oid)]);
        in_schema.push((id, &e.schema));
    }
    for c in &snap.collations {
        let id = g.add(Item::Collation(c), &[r(C::Collation, c.oid)]);
        in_schema.push((id, &c.schema));
    }
    for t in &snap.types {
        let mut refs = vec![r(C::Type, t.oid)];
        match &t.kind {
            TypeKind::Composite { relid, .. } => refs.push(r(C::Class, *relid)),
            TypeKind::Domain { constraints, .. } => {
                refs.extend(constraints.iter().map(|c| r(C::Constraint, c.oid)))
            }
            _ => {}
        }
        let id = g.add(Item::Type(t), &refs);
        in_schema.push((id, &t.schema));
    }
    for f in &snap.functions {
        let id = g.add(Item::Function(f), &[r(C::Proc, f.oid)]);
        in_schema.push((id, &f.schema));
    }
    let mut seq_ids: Vec<(usize, &Sequence)> = Vec::new();
    for s in snap.sequences.iter().filter(|s| !s.identity) {
        let id = g.add(Item::Sequence(s), &[r(C::Class, s.oid)]);
        in_schema.push((id, &s.schema));
        seq_ids.push((id, s));
    }
    let mut table_ids: HashMap<(&str, &str), usize> = HashMap::new();
    // Items that must wait for a partitioned table's partitions, and replica identities that
    // must wait for their index.
    let mut partitioned_subs: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut replica: Vec<(usize, u32)> = Vec::new();
    for t in &snap.tables {
        let qn = Relation::Table(t);
        let mut refs = vec![r(C::Class, t.oid)];
        // Identity sequences and inline CHECK constraints are part of the table. Constraints
        // and triggers cloned from a parent are made by the parent's: no item, no edges (their
        // edges would tie the partition to its parent's objects, which wait for it).
        refs.extend(
            snap.sequences
                .iter()
                .filter(|s| {
                    s.identity
                        && s.owned_by
                            .as_ref()
                            .is_some_and(|o| o.schema == t.schema && o.table == t.name)
                })
                .map(|s| r(C::Class, s.oid)),
        );
        refs.extend(
            t.constraints
                .iter()
                .filter(|c| crate::ddl::is_inline_check(c))
                .map(|c| r(C::Constraint, c.oid)),
        );
        let tid = g.add(Item::Table(t), &refs);
        in_schema.push((tid, &t.schema));
        table_ids.insert((&t.schema, &t.name), tid);
        let mut subs = Vec::new();
        for c in t
            .constraints
            .iter()
            .filter(|c| !crate::ddl::is_inline_check(c) && !crate::ddl::is_implied_constraint(c))
        {
            let mut refs = vec![r(C::Constraint, c.oid)];
            if let Some(i) = c.index.as_deref().and_then(|i| t.index(i)) {
                refs.push(r(C::Class, i.oid));
            }
            let id = g.add(Item::Constraint(t, c), &refs);
            g.edge(id, tid);
            subs.push(id);
        }
        for i in t.indexes.iter().filter(|i| i.constraint.is_none()) {
            let id = g.add(Item::Index(qn, i), &[r(C::Class, i.oid)]);
            g.edge(id, tid);
            subs.push(id);
        }
        for x in t.triggers.iter().filter(|x| !x.from_parent) {
            let id = g.add(Item::Trigger(qn, x), &[r(C::Trigger, x.oid)]);
            g.edge(id, tid);
            subs.push(id);
        }
        for p in &t.policies {
            let id = g.add(Item::Policy(t, p), &[r(C::Policy, p.oid)]);
            g.edge(id, tid);
        }
        if t.replica_identity == "i" && t.replica_identity_index.is_some() {
            let id = g.add(Item::ReplicaIdentity(t), &[]);
            g.edge(id, tid);
            if let Some(ix) = t.replica_identity_index.as_deref().and_then(|n| t.index(n)) {
                replica.push((id, ix.oid));
            }
        }
        if t.kind == TableKind::Partitioned {
            partitioned_subs.push((tid, subs));
        }
    }
    for v in &snap.views {
        let qn = Relation::View(v);
        let vid = g.add(Item::View(v), &[r(C::Class, v.oid)]);
        in_schema.push((vid, &v.schema));
        for i in v.indexes.iter() {
            let id = g.add(Item::Index(qn, i), &[r(C::Class, i.oid)]);
            g.edge(id, vid);
        }
        for x in &v.triggers {
            let id = g.add(Item::Trigger(qn, x), &[r(C::Trigger, x.oid)]);
            g.edge(id, vid);
        }
    }
    for (id, s) in seq_ids {
        if s.owned_by.is_some() {
            let oid = g.add(Item::SequenceOwnedBy(s), &[]);
            g.edge(oid, id);
            if let Some(o) = &s.owned_by {
                if let Some(&t) = table_ids.get(&(o.schema.as_str(), o.table.as_str())) {
                    g.edge(oid, t);
                }
            }
        }
    }
    for p in &snap.publications {
        let pid = g.add(Item::Publication(p), &[]);
        for t in &p.tables {
            if let Some(&tid) = table_ids.get(&(t.schema.as_str(), t.name.as_str())) {
                g.edge(pid, tid);
            }
        }
        for s in &p.schemas {
            if let Some(&sid) = schema_ids.get(s.as_str()) {
                g.edge(pid, sid);
            }
        }
    }
    let mut default_acls = Vec::new();
    for e in &snap.extras {
        let id = g.add(Item::Extra(e), &[e.own_ref()]);
        if let Some(schema) = &e.schema {
            in_schema.push((id, schema));
        }
        if e.class == ObjClass::DefaultAcl {
            default_acls.push(id);
        }
    }
    // Default privileges last (as pg_dump does): every object created after them would get
    // them instead of the privileges it has.
    for &d in &default_acls {
        for other in 0..g.items.len() {
            if !default_acls.contains(&other) {
                g.edge(d, other);
            }
        }
    }
    for (id, schema) in in_schema {
        if let Some(&sid) = schema_ids.get(schema) {
            g.edge(id, sid);
        }
    }
    // Inheritance and partitions: children after parents; a partitioned table's own
    // indexes, key constraints and triggers after all its partitions.
    for t in &snap.tables {
        let tid = table_ids[&(t.schema.as_str(), t.name.as_str())];
        for p in &t.parents {
            if let Some(&pid) = table_ids.get(&(p.schema.as_str(), p.name.as_str())) {
                g.edge(tid, pid);
            }
        }
    }
    let mut partitions: HashMap<usize, Vec<usize>> = HashMap::new();
    for t in snap.tables.iter().filter(|t| t.is_partition()) {
        let tid = table_ids[&(t.schema.as_str(), t.name.as_str())];
        for p in &t.parents {
            if let Some(&pid) = table_ids.get(&(p.schema.as_str(), p.name.as_str())) {
                partitions.entry(pid).or_default().push(tid);
            }
        }
    }
    for (tid, subs) in partitioned_subs {
        for &child in partitions.get(&tid).map(|v| v.as_slice()).unwrap_or(&[]) {
            for &s in &subs {
                g.edge(s, child);
            }
        }
    }
    for (id, ix_oid) in replica {
        if let Some(&ix) = g.by_ref.get(&r(C::Class, ix_oid)) {
            g.edge(id, ix);
        }
    }
    for d in &snap.dependencies {
        if let (Some(&from), Some(&to)) = (g.by_ref.get(&d.from), g.by_ref.get(&d.to)) {
            // A serial sequence depends on its column (OWNED BY) while the column default
            // depends on the sequence: the ownership is a separate item.
            if matches!(g.items[from], Item::Sequence(_)) && d.deptype == 'a' {
                if let Item::Table(_) = g.items[to] {
                    continue;
                }
            }
            g.edge(from, to);
        }
    }
    sort(g)
}

fn sort(g: Graph<'_>) -> Vec<Item<'_>> {
    let n = g.items.len();
    let keys: Vec<_> = g.items.iter().map(|i| i.key()).collect();
    let mut waiting = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut edges: Vec<_> = g.edges.into_iter().collect();
    edges.sort_unstable();
    for (after, before) in edges {
        waiting[after] += 1;
        dependents[before].push(after);
    }
    let mut ready: BinaryHeap<Reverse<(&Key, usize)>> = (0..n)
        .filter(|&i| waiting[i] == 0)
        .map(|i| Reverse((&keys[i], i)))
        .collect();
    let mut done = vec![false; n];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = match ready.pop() {
            Some(Reverse((_, i))) => i,
            None => {
                // A cycle: take the smallest item still waiting.
                (0..n)
                    .filter(|&i| !done[i])
                    .min_by(|&a, &b| keys[a].cmp(&keys[b]).then(a.cmp(&b)))
                    .expect("items remain")
            }
        };
        if done[next] {
            continue;
        }
        done[next] = true;
        out.push(g.items[next]);
        for &d in &dependents[next] {
            waiting[d] = waiting[d].saturating_sub(1);
            if waiting[d] == 0 && !done[d] {
                ready.push(Reverse((&keys[d], d)));
            }
        }
    }
    out
}
