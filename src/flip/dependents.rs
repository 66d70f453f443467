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

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use crate::catalog::scoped::{self, acl_json, rel_from_row, REL_COLUMNS};
pub use crate::catalog::scoped::{
    Column, Constraint, Index, OwnedSeq, Partition, Policy, PubRel, Rel, Trigger,
};
use crate::catalog::AclItem;
use crate::error::{DbResultExt, Result};

/// A view or materialized view that reads (directly or through other views) a live relation.
#[derive(Debug, Clone)]
pub struct View {
    pub rel: Rel,
    /// 1 = reads a live relation directly; n = reads a view of depth n-1.
    pub depth: i32,
    pub def: String,
    /// The relations its query reads directly (views, materialized views, tables).
    pub reads: Vec<u32>,
    pub indexes: Vec<Index>,
    pub column_comments: Vec<(String, String)>,
    pub column_acl: Vec<(String, AclItem)>,
}

/// A column of a live relation that something outside the relation uses.
#[derive(Debug, Clone)]
pub struct UsedColumn {
    pub rel: u32,
    pub column: String,
    pub user: String,
    /// The view or materialized view that uses the column (0 for other users).
    pub view: u32,
}

/// An object bound to a flipped relation that the flip cannot carry over.
#[derive(Debug, Clone)]
pub struct Unhandled {
    /// The object as the server describes it (`pg_describe_object`).
    pub object: String,
    /// What binds it, e.g. ` (depends on table public.t)`.
    pub why: String,
}

/// Everything read from the catalog for one flip.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub rels: BTreeMap<u32, Rel>,
    pub columns: Vec<Column>,
    pub indexes: Vec<Index>,
    pub constraints: Vec<Constraint>,
    pub triggers: Vec<Trigger>,
    pub policies: Vec<Policy>,
    pub publications: Vec<PubRel>,
    pub sequences: Vec<OwnedSeq>,
    pub views: Vec<View>,
    pub partitions: Vec<Partition>,
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

impl Inventory {
    pub fn columns_of(&self, rel: u32) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(move |c| c.rel == rel)
    }
    pub fn indexes_of(&self, rel: u32) -> impl Iterator<Item = &Index> {
        self.indexes.iter().filter(move |c| c.rel == rel)
    }
    pub fn constraints_of(&self, rel: u32) -> impl Iterator<Item = &Constraint> {
        self.constraints.iter().filter(move |c| c.rel == rel)
    }
    pub fn triggers_of(&self, rel: u32) -> impl Iterator<Item = &Trigger> {
        self.triggers.iter().filter(move |c| c.rel == rel)
    }
    pub fn policies_of(&self, rel: u32) -> impl Iterator<Item = &Policy> {
        self.policies.iter().filter(move |c| c.rel == rel)
    }
    pub fn publications_of(&self, rel: u32) -> impl Iterator<Item = &PubRel> {
        self.publications.iter().filter(move |c| c.rel == rel)
    }
    pub fn sequences_of(&self, rel: u32) -> impl Iterator<Item = &OwnedSeq> {
        self.sequences.iter().filter(move |c| c.rel == rel)
    }
    /// Partitions of the flipped partitioned table `root`, parents before their children.
    pub fn partitions_of(&self, root: u32) -> impl Iterator<Item = &Partition> {
        self.partitions.iter().filter(move |p| p.root == root)
    }
    /// Foreign keys of tables outside `flipped` that reference one of `flipped`.
    pub fn inbound_fks<'a>(
        &'a self,
        flipped: &'a BTreeSet<u32>,
    ) -> impl Iterator<Item = &'a Constraint> {
        self.constraints.iter().filter(move |c| {
            c.contype == "f" && flipped.contains(&c.ref_rel) && !flipped.contains(&c.rel)
        })
    }
}

/// SQL that hashes the catalog rows a flip depends on (dependency rows, the relations' and
/// their columns' catalog rows, comments). `{oids}` is replaced by an `oid[]` expression.
///
/// It runs under the flip's locks, so it is made cheap: per catalog, the count and the sum of
/// a 64-bit hash of each row's identity (and `xmin`, which changes when the row does), summed
/// in any order, instead of formatting, sorting and hashing text (about half the time at 50
/// tables). System columns never change and are left out.
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
        .replace("{oids}", &oid_array_literal(oids))
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
    let mut inv = Inventory::default();
    let live_v: Vec<u32> = live.to_vec();
    let acl = acl_json("c.relacl");
    let rel_cols = REL_COLUMNS.replace("{acl}", &acl);

    // Views and materialized views that read the live relations, transitively.
    let view_rows = client
        .query(
            &format!(
                "WITH RECURSIVE deps(oid, depth) AS ( \
                   SELECT DISTINCT r.ev_class, 1 FROM pg_catalog.pg_depend d \
                     JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid \
                    WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = ANY($1) \
                      AND r.ev_class <> d.refobjid \
                   UNION \
                   SELECT r.ev_class, deps.depth + 1 FROM deps \
                     JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = deps.oid \
                     JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid \
                    WHERE r.ev_class <> deps.oid AND deps.depth < 100) \
                 SELECT {rel_cols}, max(deps.depth)::int, pg_catalog.pg_get_viewdef(c.oid), \
                   (SELECT coalesce(jsonb_agg(jsonb_build_array(a.attname, pg_catalog.col_description(c.oid, a.attnum))), '[]') \
                      FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                       AND pg_catalog.col_description(c.oid, a.attnum) IS NOT NULL), \
                   ARRAY(SELECT DISTINCT rd.refobjid FROM pg_catalog.pg_rewrite rr JOIN pg_catalog.pg_depend rd \
                      ON rd.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND rd.objid = rr.oid \
                     AND rd.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                    WHERE rr.ev_class = c.oid AND rd.refobjid <> c.oid)::pg_catalog.oid[] \
                 FROM deps JOIN pg_catalog.pg_class c ON c.oid = deps.oid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 GROUP BY c.oid, n.nspname ORDER BY max(deps.depth), c.oid"
            ),
            &[&live_v],
        )
        .await
        .ctx("finding the views that read the tables")?;
    let mut view_oids = Vec::new();
    // A view or materialized view that is itself flipped (a pipeline: a materialized view
    // over another one, both switched at once) moves with its pair instead of being
    // re-created; what reads it is found through it.
    let flipped_v: Vec<u32> = live.iter().chain(green.iter()).copied().collect();
    for r in &view_rows {
        let rel = rel_from_row(r)?;
        if flipped_v.contains(&rel.oid) {
            continue;
        }
        let comments: serde_json::Value = r.get(16);
        view_oids.push(rel.oid);
        inv.views.push(View {
            depth: r.get(14),
            def: r
                .get::<_, String>(15)
                .trim()
                .trim_end_matches(';')
                .to_string(),
            reads: r.get(17),
            indexes: Vec::new(),
            column_comments: comments
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    (
                        p[0].as_str().unwrap_or_default().to_string(),
                        p[1].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            column_acl: Vec::new(),
            rel,
        });
    }

    // Tables that hold foreign keys to the live relations, and tables the live / green
    // relations reference: they are locked too.
    let mut tables: Vec<u32> = live.iter().chain(green.iter()).copied().collect();
    tables.sort();
    tables.dedup();

    let objects = scoped::load(client, &tables, &view_oids).await?;
    inv.rels = objects.rels;
    inv.partitions = objects.partitions;
    inv.columns = objects.columns;
    inv.constraints = objects.constraints;
    inv.triggers = objects.triggers;
    inv.policies = objects.policies;
    inv.publications = objects.publications;
    inv.sequences = objects.sequences;
    // The indexes of the dependent materialized views go with their view.
    for idx in objects.indexes {
        if let Some(v) = inv.views.iter_mut().find(|v| v.rel.oid == idx.rel) {
            v.indexes.push(idx);
        } else {
            inv.indexes.push(idx);
        }
    }
    for (rel, col, item) in objects.view_column_acl {
        if let Some(v) = inv.views.iter_mut().find(|v| v.rel.oid == rel) {
            v.column_acl.push((col, item));
        }
    }

    // What the flip cannot carry over: anything else that depends on the live relations, on
    // their row types, or on the dependent views. Handled: view rules (re-created), foreign
    // keys (re-added), and the relations' own parts (indexes, constraints, triggers, policies,
    // sequences, publication membership), which depend automatically ('a') or internally.
    // (`dd`: two index lookups of pg_depend; one `OR` of both made it a scan per relation,
    // seconds for a few hundred tables.)
    let mut watched = live_v.clone();
    watched.extend(&view_oids);
    let unhandled = client
        .query(
            "WITH w AS (SELECT c.oid, c.reltype FROM pg_catalog.pg_class c WHERE c.oid = ANY($1)), \
             dd AS (SELECT d.* FROM w JOIN pg_catalog.pg_depend d \
                      ON d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = w.oid \
                    UNION ALL \
                    SELECT d.* FROM w JOIN pg_catalog.pg_depend d \
                      ON d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.refobjid = w.reltype) \
             SELECT DISTINCT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid), \
               ' (depends on ' || pg_catalog.pg_describe_object(d.refclassid, d.refobjid, 0) || ')' \
             FROM dd d \
             WHERE d.deptype = 'n' \
               AND NOT (d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class rc ON rc.oid = r.ev_class \
                     WHERE r.oid = d.objid AND r.ev_type = '1' AND rc.relkind IN ('v', 'm'))) \
               AND NOT (d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_constraint co WHERE co.oid = d.objid AND co.contype = 'f')) \
               AND NOT (d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_type t WHERE t.oid = d.objid AND t.typelem = d.refobjid)) \
               AND NOT (d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_policy p WHERE p.oid = d.objid AND p.polrelid = d.refobjid)) \
               AND NOT (d.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass AND EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.oid = d.objid AND t.tgrelid = d.refobjid)) \
               AND NOT (d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_constraint co WHERE co.oid = d.objid AND co.conrelid = d.refobjid)) \
               AND NOT (d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_attrdef ad WHERE ad.oid = d.objid AND ad.adrelid = d.refobjid)) \
               AND NOT (d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_index ix WHERE ix.indexrelid = d.objid AND ix.indrelid = d.refobjid)) \
               AND NOT (d.classid = 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass AND EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_statistic_ext sx WHERE sx.oid = d.objid AND sx.stxrelid = d.refobjid)) \
             UNION \
             SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid), \
               ' (on ' || pg_catalog.pg_describe_object(d.refclassid, d.refobjid, 0) || ', which is re-created)' \
             FROM pg_catalog.pg_depend d \
             WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = ANY($2) AND d.deptype = 'a' \
               AND ((d.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass AND NOT EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
                     JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace \
                     WHERE t.oid = d.objid AND pn.nspname = 'pgflip')) \
                 OR (d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid AND r.ev_type <> '1')) \
                 OR d.classid = 'pg_catalog.pg_publication_rel'::pg_catalog.regclass \
                 OR d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass) \
             UNION \
             SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid), \
               ' (on ' || pg_catalog.pg_describe_object(d.refclassid, d.refobjid, 0) || ')' \
             FROM pg_catalog.pg_depend d \
             WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = ANY($3) AND d.deptype = 'a' \
               AND d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid AND r.ev_type <> '1') \
             ORDER BY 1",
            &[&watched, &view_oids, &live_v],
        )
        .await
        .ctx("looking for dependents the flip cannot carry over")?;
    inv.unhandled = unhandled
        .iter()
        .map(|r| Unhandled {
            object: r.get(0),
            why: r.get(1),
        })
        .collect();

    // Partitions move by name: what binds to a live partition by OID (a view, a foreign key
    // of another table, a function of its row type) would stay with the retired copy.
    let live_parts: Vec<u32> = inv
        .partitions
        .iter()
        .filter(|p| live.contains(&p.root))
        .map(|p| p.oid)
        .collect();
    if !live_parts.is_empty() {
        let rows = client
            .query(
                "WITH w AS (SELECT c.oid, c.reltype FROM pg_catalog.pg_class c WHERE c.oid = ANY($1)) \
                 SELECT DISTINCT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid), \
                   ' (depends on partition ' || pg_catalog.pg_describe_object(d.refclassid, d.refobjid, 0) || ')' \
                 FROM pg_catalog.pg_depend d \
                 WHERE ((d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid IN (SELECT oid FROM w)) \
                     OR (d.refclassid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.refobjid IN (SELECT reltype FROM w))) \
                   AND d.deptype = 'n' \
                   AND NOT (d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND EXISTS ( \
                         SELECT 1 FROM pg_catalog.pg_constraint co WHERE co.oid = d.objid AND co.conparentid <> 0)) \
                   AND NOT (d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND EXISTS ( \
                         SELECT 1 FROM pg_catalog.pg_type t WHERE t.oid = d.objid AND t.typelem = d.refobjid)) \
                 ORDER BY 1",
                &[&live_parts],
            )
            .await
            .ctx("looking for dependents of the partitions")?;
        inv.unhandled.extend(rows.iter().map(|r| Unhandled {
            object: r.get(0),
            why: r.get(1),
        }));
    }
    // One object can be found by several of the searches above; it is one problem.
    inv.unhandled.sort_by(|a, b| a.object.cmp(&b.object));
    inv.unhandled.dedup_by(|a, b| a.object == b.object);

    let flipped: Vec<u32> = live.iter().chain(green).copied().collect();
    inv.statistics = super::statistics::load(client, &flipped).await?;

    // Columns of the live relations that other objects use (views, policies, triggers,
    // foreign keys of other tables, publication column lists).
    let used = client
        .query(
            "SELECT DISTINCT d.refobjid, a.attname::text, CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
                THEN (SELECT pg_catalog.pg_describe_object('pg_catalog.pg_class'::pg_catalog.regclass, r.ev_class, 0) \
                      FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid) \
                ELSE pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) END, \
                coalesce((SELECT r.ev_class FROM pg_catalog.pg_rewrite r \
                          WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND r.oid = d.objid), 0::pg_catalog.oid) \
             FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = ANY($1) AND d.refobjsubid > 0 \
               AND d.classid IN ('pg_catalog.pg_rewrite'::pg_catalog.regclass, 'pg_catalog.pg_policy'::pg_catalog.regclass, \
                                 'pg_catalog.pg_trigger'::pg_catalog.regclass, 'pg_catalog.pg_publication_rel'::pg_catalog.regclass) \
               AND NOT (d.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass AND EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
                     JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace \
                     WHERE t.oid = d.objid AND pn.nspname = 'pgflip')) \
               AND NOT (d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid AND r.ev_class = ANY($2))) \
             UNION \
             SELECT co.confrelid, a.attname::text, pg_catalog.pg_describe_object('pg_catalog.pg_constraint'::pg_catalog.regclass, co.oid, 0), 0::pg_catalog.oid \
             FROM pg_catalog.pg_constraint co JOIN pg_catalog.pg_attribute a ON a.attrelid = co.confrelid AND a.attnum = ANY(co.confkey) \
             WHERE co.contype = 'f' AND co.confrelid = ANY($1) AND co.conrelid <> co.confrelid",
            &[&live_v, &flipped_v],
        )
        .await
        .ctx("reading which columns the dependents use")?;
    inv.used_columns = used
        .iter()
        .map(|r| UsedColumn {
            rel: r.get(0),
            column: r.get(1),
            user: r.get(2),
            view: r.get(3),
        })
        .collect();

    let all = fingerprint_oids(&inv);
    inv.fingerprint = fingerprint(client, &all).await?;
    // The same in two parts, for a flip that works on green before it locks the rest.
    let green_part = green_part(&inv, green);
    let rest: Vec<u32> = all
        .iter()
        .filter(|o| !green_part.contains(o))
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
        inv.partitions
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
    let mut all: Vec<u32> = inv.rels.keys().copied().collect();
    all.extend(inv.views.iter().map(|v| v.rel.oid));
    all.extend(inv.partitions.iter().map(|p| p.oid));
    all.extend(inv.moved_alone.iter().copied());
    all.sort();
    all.dedup();
    all
}
