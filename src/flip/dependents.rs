//! What a flip must carry over: everything PostgreSQL binds to a relation by OID.
//!
//! A rename swap moves names, but views, foreign keys of other tables, triggers, policies,
//! grants, publication membership and sequence ownership stay attached to the *object*, i.e. to
//! the retired table. This module reads all of that for every relation of a flip at once, with a
//! fixed handful of set-based catalog queries (never one per table), inside one REPEATABLE READ
//! read-only transaction with `search_path = ''` so that every name that the server's own
//! deparsers (`pg_get_viewdef`, `pg_get_triggerdef`, `pg_get_constraintdef`, `pg_get_indexdef`,
//! `pg_get_expr`) print is schema-qualified and means the same thing when replayed.
//!
//! It also lists what the flip cannot carry over (a function whose signature uses the table's
//! row type, a rule, another table's policy that reads the table, partitions, ...), so that the
//! flip refuses before it takes any lock, naming the object.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio_postgres::Client;

pub use crate::catalog::scoped::deps::{Unhandled, UsedColumn, View};
use crate::catalog::scoped::{self, deps};
pub use crate::catalog::scoped::{
    Column, Constraint, Index, OwnedSeq, Partition, Policy, PubRel, Rel, Trigger,
};
use crate::error::{DbResultExt, Result};

/// Everything read from the catalog for one flip.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// The relations and what hangs on them, as [`scoped::load`] read them (the indexes of the
    /// dependent materialized views are with their [`View`] instead). Private: [`ByRel`] indexes
    /// it, so it does not change after [`load`].
    objects: scoped::Objects,
    by_rel: ByRel,
    pub views: Vec<View>,
    pub used_columns: Vec<UsedColumn>,
    /// Objects the flip cannot carry over.
    pub unhandled: Vec<Unhandled>,
    /// Extended statistics on the live and green relations (carried over by the flip).
    pub statistics: Vec<super::statistics::StatObj>,
    /// A hash of the catalog rows the flip depends on; checked again once the locks are held.
    pub fingerprint: String,
    /// The same for the green relations (and their partitions) alone, and for the rest.
    pub fingerprint_green: String,
    pub fingerprint_rest: String,
    /// Views taken out of `views` because they move alone (one-sided relations of the flip);
    /// still part of the fingerprint.
    pub moved_alone: Vec<u32>,
}

/// Positions in [`scoped::Objects`]' lists, by the OID of the relation they belong to (for
/// partitions, of their root), in list order: the flip looks each relation up several times,
/// and filtering whole lists per lookup was quadratic in the number of tables.
#[derive(Debug, Clone, Default)]
struct ByRel {
    columns: HashMap<u32, Vec<usize>>,
    indexes: HashMap<u32, Vec<usize>>,
    constraints: HashMap<u32, Vec<usize>>,
    triggers: HashMap<u32, Vec<usize>>,
    policies: HashMap<u32, Vec<usize>>,
    publications: HashMap<u32, Vec<usize>>,
    sequences: HashMap<u32, Vec<usize>>,
    partitions: HashMap<u32, Vec<usize>>,
}

fn positions<T>(items: &[T], key: impl Fn(&T) -> u32) -> HashMap<u32, Vec<usize>> {
    let mut out: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        out.entry(key(item)).or_default().push(i);
    }
    out
}

impl ByRel {
    fn of(o: &scoped::Objects) -> ByRel {
        ByRel {
            columns: positions(&o.columns, |c| c.rel),
            indexes: positions(&o.indexes, |c| c.rel),
            constraints: positions(&o.constraints, |c| c.rel),
            triggers: positions(&o.triggers, |c| c.rel),
            policies: positions(&o.policies, |c| c.rel),
            publications: positions(&o.publications, |c| c.rel),
            sequences: positions(&o.sequences, |c| c.rel),
            partitions: positions(&o.partitions, |p| p.root),
        }
    }
}

/// The items of `list` at the positions `index` has for `rel`.
fn lookup<'a, T>(
    index: &'a HashMap<u32, Vec<usize>>,
    list: &'a [T],
    rel: u32,
) -> impl Iterator<Item = &'a T> {
    index
        .get(&rel)
        .into_iter()
        .flatten()
        .map(move |&i| &list[i])
}

impl Inventory {
    /// An inventory of `objects` (indexed here, once).
    fn new(objects: scoped::Objects) -> Inventory {
        Inventory {
            by_rel: ByRel::of(&objects),
            objects,
            ..Inventory::default()
        }
    }
    /// What [`scoped::load`] read (the dependent materialized views' indexes excepted).
    pub fn objects(&self) -> &scoped::Objects {
        &self.objects
    }
    pub fn rels(&self) -> &BTreeMap<u32, Rel> {
        &self.objects.rels
    }
    pub fn columns_of(&self, rel: u32) -> impl Iterator<Item = &Column> {
        lookup(&self.by_rel.columns, &self.objects.columns, rel)
    }
    pub fn indexes_of(&self, rel: u32) -> impl Iterator<Item = &Index> {
        lookup(&self.by_rel.indexes, &self.objects.indexes, rel)
    }
    pub fn constraints_of(&self, rel: u32) -> impl Iterator<Item = &Constraint> {
        lookup(&self.by_rel.constraints, &self.objects.constraints, rel)
    }
    pub fn triggers_of(&self, rel: u32) -> impl Iterator<Item = &Trigger> {
        lookup(&self.by_rel.triggers, &self.objects.triggers, rel)
    }
    pub fn policies_of(&self, rel: u32) -> impl Iterator<Item = &Policy> {
        lookup(&self.by_rel.policies, &self.objects.policies, rel)
    }
    pub fn publications_of(&self, rel: u32) -> impl Iterator<Item = &PubRel> {
        lookup(&self.by_rel.publications, &self.objects.publications, rel)
    }
    pub fn sequences_of(&self, rel: u32) -> impl Iterator<Item = &OwnedSeq> {
        lookup(&self.by_rel.sequences, &self.objects.sequences, rel)
    }
    /// Partitions of the flipped partitioned table `root`, parents before their children.
    pub fn partitions_of(&self, root: u32) -> impl Iterator<Item = &Partition> {
        lookup(&self.by_rel.partitions, &self.objects.partitions, root)
    }
    /// Every partition of every flipped partitioned table.
    pub fn partitions(&self) -> &[Partition] {
        &self.objects.partitions
    }
    /// Foreign keys of tables outside `flipped` that reference one of `flipped`.
    pub fn inbound_fks<'a>(
        &'a self,
        flipped: &'a BTreeSet<u32>,
    ) -> impl Iterator<Item = &'a Constraint> {
        self.objects.constraints.iter().filter(move |c| {
            c.contype == "f" && flipped.contains(&c.ref_rel) && !flipped.contains(&c.rel)
        })
    }
    /// Foreign keys of `flipped` relations that reference a table outside them.
    pub fn outbound_fks<'a>(
        &'a self,
        flipped: &'a BTreeSet<u32>,
    ) -> impl Iterator<Item = &'a Constraint> {
        self.objects.constraints.iter().filter(move |c| {
            c.contype == "f" && flipped.contains(&c.rel) && !flipped.contains(&c.ref_rel)
        })
    }
}

/// SQL that hashes the catalog rows a flip depends on (dependency rows, the relations' and
/// their columns' catalog rows, comments). `{oids}` is replaced by an `oid[]` expression.
///
/// It runs under the flip's locks, so it is made cheap: per catalog, the count and the sum of
/// a 64-bit hash of each row's identity (and `xmin`, which changes when the row does), summed
/// in any order, instead of formatting, sorting and hashing text (about half the time at 50
/// tables). System columns never change and are left out. The OIDs come through a scalar
/// subquery: with the array as a literal, the planner estimated each element against each
/// catalog's statistics and chose sequential scans of `pg_attribute` and `pg_description`;
/// as a subquery's value the larger catalogs are read by index, and planning and running the
/// check took half the time (0.93 against 1.75 ms for 100 relations).
pub const FINGERPRINT_SQL: &str = "SELECT md5(concat_ws(',', \
  (SELECT count(*) || ':' || coalesce(sum(pg_catalog.hashint8extended((classid::int8 << 32) | objid::int8, \
       (refobjid::int8 << 24) + (objsubid::int8 << 12) + (refobjsubid::int8 << 4) + pg_catalog.ascii(deptype::text))), 0) \
     FROM pg_catalog.pg_depend WHERE {mine}refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND refobjid = ANY({oids})), \
  (SELECT count(*) || ':' || coalesce(sum(pg_catalog.hashint8extended(oid::int8, xmin::text::int8)), 0) \
     FROM pg_catalog.pg_class WHERE oid = ANY({oids})), \
  (SELECT count(*) || ':' || coalesce(sum(pg_catalog.hashint8extended((attrelid::int8 << 16) | attnum, xmin::text::int8)), 0) \
     FROM pg_catalog.pg_attribute WHERE attrelid = ANY({oids}) AND attnum > 0), \
  (SELECT count(*) || ':' || coalesce(sum(pg_catalog.hashtext(objoid || '.' || objsubid || '.' || description)), 0) \
     FROM pg_catalog.pg_description \
     WHERE classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND objoid = ANY({oids}))))";

/// [`FINGERPRINT_SQL`] for `oids`. With `skip_own_rows`, dependency rows written by the
/// running transaction are left out: the flip's own work on green (a trigger that calls a
/// function, a policy) must not count as a change of the live relations it refers to.
pub fn fingerprint_sql(oids: &[u32], skip_own_rows: bool) -> String {
    FINGERPRINT_SQL
        .replace(
            "{oids}",
            &format!("(SELECT {})::pg_catalog.oid[]", oid_array_literal(oids)),
        )
        .replace(
            "{mine}",
            if skip_own_rows {
                // (txid_current_if_assigned: NULL outside a writing transaction; its low 32 bits
                // are the xid, on every supported version.)
                "xmin::text::bigint IS DISTINCT FROM pg_catalog.txid_current_if_assigned() % 4294967296 AND "
            } else {
                ""
            },
        )
}

/// `'{1,2,3}'::oid[]`.
pub fn oid_array_literal(oids: &[u32]) -> String {
    let body: Vec<String> = oids.iter().map(|o| o.to_string()).collect();
    format!("'{{{}}}'::pg_catalog.oid[]", body.join(","))
}

/// Resolves `(schema, name)` pairs to relation OIDs (0 when absent), in order.
pub async fn resolve(client: &Client, names: &[(String, String)]) -> Result<Vec<u32>> {
    let schemas: Vec<&str> = names.iter().map(|(s, _)| s.as_str()).collect();
    let rels: Vec<&str> = names.iter().map(|(_, n)| n.as_str()).collect();
    let rows = client
        .query(
            "SELECT coalesce(c.oid, 0::oid) FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(s, r, i) \
             LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = u.s \
             LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = u.r \
             ORDER BY u.i",
            &[&schemas, &rels],
        )
        .await
        .ctx("looking up the relations to flip")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Reads everything the flip of `live` (and into it, `green`) needs, in one consistent snapshot.
/// (JIT off: these catalog queries are cheap to run but estimated expensive, and compiling them
/// took seconds for a few hundred tables.)
pub async fn load(client: &Client, live: &[u32], green: &[u32]) -> Result<Inventory> {
    client
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL search_path = ''; SET LOCAL jit = off",
        )
        .await
        .ctx("starting the catalog snapshot")?;
    let res = load_in_snapshot(client, live, green).await;
    let _ = client.batch_execute("COMMIT").await;
    res
}

/// [`load`] inside the caller's open transaction (which sees what it created), leaving the
/// transaction's settings as they were.
pub async fn load_in_transaction(
    client: &Client,
    live: &[u32],
    green: &[u32],
) -> Result<Inventory> {
    client
        .batch_execute("SAVEPOINT pgflip_catalog; SET LOCAL search_path = ''; SET LOCAL jit = off")
        .await
        .ctx("starting the catalog read")?;
    let res = load_in_snapshot(client, live, green).await;
    // Rolling back to the savepoint undoes the SET LOCALs (the reads changed nothing).
    let restored = client
        .batch_execute("ROLLBACK TO SAVEPOINT pgflip_catalog; RELEASE SAVEPOINT pgflip_catalog")
        .await
        .ctx("ending the catalog read");
    let inv = res?;
    restored?;
    Ok(inv)
}

async fn load_in_snapshot(client: &Client, live: &[u32], green: &[u32]) -> Result<Inventory> {
    // Views and materialized views that read the live relations, transitively. A view or
    // materialized view that is itself flipped (a pipeline: a materialized view over another
    // one, both switched at once) moves with its pair instead of being re-created; what reads
    // it is found through it.
    let flipped_v: Vec<u32> = live.iter().chain(green.iter()).copied().collect();
    let mut views = deps::views_reading(client, live, &flipped_v).await?;
    let view_oids: Vec<u32> = views.iter().map(|v| v.rel.oid).collect();

    // Tables that hold foreign keys to the live relations, and tables the live / green
    // relations reference: they are locked too.
    let mut tables: Vec<u32> = live.iter().chain(green.iter()).copied().collect();
    tables.sort();
    tables.dedup();

    let mut objects = scoped::load(client, &tables, &view_oids).await?;
    // The indexes and column grants of the dependent materialized views go with their view.
    let view_at: HashMap<u32, usize> = view_oids.iter().enumerate().map(|(i, &o)| (o, i)).collect();
    for idx in std::mem::take(&mut objects.indexes) {
        match view_at.get(&idx.rel) {
            Some(&i) => views[i].indexes.push(idx),
            None => objects.indexes.push(idx),
        }
    }
    for (rel, col, item) in std::mem::take(&mut objects.view_column_acl) {
        if let Some(&i) = view_at.get(&rel) {
            views[i].column_acl.push((col, item));
        }
    }
    let mut inv = Inventory::new(objects);
    inv.views = views;

    // What the flip cannot carry over; partitions move by name, so what binds to a live
    // partition by OID would stay with the retired copy.
    let mut watched = live.to_vec();
    watched.extend(&view_oids);
    inv.unhandled = deps::unhandled(client, &watched, &view_oids, live).await?;
    let live_parts: Vec<u32> = inv
        .partitions()
        .iter()
        .filter(|p| live.contains(&p.root))
        .map(|p| p.oid)
        .collect();
    inv.unhandled
        .extend(deps::partition_dependents(client, &live_parts).await?);
    // One object can be found by several of the searches above; it is one problem.
    inv.unhandled.sort_by(|a, b| a.object.cmp(&b.object));
    inv.unhandled.dedup_by(|a, b| a.object == b.object);

    inv.statistics = super::statistics::load(client, &flipped_v).await?;

    inv.used_columns = deps::used_columns(client, live, &flipped_v).await?;

    let all = fingerprint_oids(&inv);
    inv.fingerprint = fingerprint(client, &all).await?;
    // The same in two parts, for a flip that works on green before it locks the rest.
    let green_part = green_part(&inv, green);
    let rest: Vec<u32> = all
        .iter()
        .filter(|o| green_part.binary_search(o).is_err())
        .copied()
        .collect();
    inv.fingerprint_green = fingerprint(client, &green_part).await?;
    inv.fingerprint_rest = fingerprint(client, &rest).await?;
    Ok(inv)
}

/// The catalog fingerprint of `oids` (see [`FINGERPRINT_SQL`]).
pub async fn fingerprint(client: &Client, oids: &[u32]) -> Result<String> {
    let sql = fingerprint_sql(oids, false);
    let row = client
        .query_one(&sql, &[])
        .await
        .ctx("fingerprinting the catalog")?;
    Ok(row.get(0))
}

/// The green relations and their partitions.
pub fn green_part(inv: &Inventory, green: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = green.to_vec();
    out.extend(
        inv.partitions()
            .iter()
            .filter(|p| green.contains(&p.root))
            .map(|p| p.oid),
    );
    out.sort();
    out.dedup();
    out
}

/// All relation OIDs the fingerprint covers.
pub fn fingerprint_oids(inv: &Inventory) -> Vec<u32> {
    let mut all: Vec<u32> = inv.rels().keys().copied().collect();
    all.extend(inv.views.iter().map(|v| v.rel.oid));
    all.extend(inv.partitions().iter().map(|p| p.oid));
    all.extend(inv.moved_alone.iter().copied());
    all.sort();
    all.dedup();
    all
}
