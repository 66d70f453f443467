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

use tokio_postgres::types::Json;
use tokio_postgres::Client;

use crate::catalog::AclItem;
use crate::error::{DbResultExt, Result};

#[derive(Debug, Clone)]
pub struct Rel {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub relkind: String,
    pub owner: String,
    /// `None` when the ACL is the default one (owner has everything).
    pub acl: Option<Vec<AclItem>>,
    pub comment: Option<String>,
    pub rls: bool,
    pub force_rls: bool,
    pub replident: String,
    /// A partition, or a parent or child in an inheritance tree (a partitioned table itself is
    /// not: its partitions move with it).
    pub partition_or_inherited: bool,
    pub reloptions: Vec<String>,
    pub populated: bool,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub rel: u32,
    pub num: i16,
    pub name: String,
    pub typ: String,
    pub collation: Option<String>,
    pub identity: String,
    pub generated: String,
    pub comment: Option<String>,
    pub acl: Vec<AclItem>,
    /// Sequences the column's default expression uses.
    pub default_seqs: Vec<u32>,
    /// The default expression (not for generated columns), schema-qualified.
    pub default_expr: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Index {
    pub oid: u32,
    pub rel: u32,
    pub name: String,
    pub def: String,
    /// Name of the constraint the index implements (primary key, unique, exclusion).
    pub constraint: Option<String>,
    pub replident: bool,
}

#[derive(Debug, Clone)]
pub struct Constraint {
    pub rel: u32,
    pub ref_rel: u32,
    pub name: String,
    pub contype: String,
    pub def: String,
    pub validated: bool,
}

#[derive(Debug, Clone)]
pub struct Trigger {
    pub rel: u32,
    pub name: String,
    pub def: String,
    pub enabled: String,
    /// Its function lives in the `pgflip` schema: one of pgflip's own (migrate's capture
    /// triggers). Never carried over to green.
    pub pgflip_owned: bool,
    /// Its table as `def` names it (`ON schema.table`), to create it on green instead.
    pub on: String,
}

/// A partition (at any depth) of a flipped partitioned table. Partitions move with their
/// table: live's are retired into the generation's schema, green's take the names of live's
/// partitions with the same bound.
#[derive(Debug, Clone)]
pub struct Partition {
    pub oid: u32,
    /// The flipped partitioned table at the top of the tree.
    pub root: u32,
    pub parent: u32,
    pub schema: String,
    pub name: String,
    /// `FOR VALUES …` or `DEFAULT`.
    pub bound: String,
    pub level: i32,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub rel: u32,
    pub name: String,
    pub permissive: bool,
    pub cmd: String,
    pub roles: Vec<String>,
    pub qual: Option<String>,
    pub check: Option<String>,
    /// Its expressions read a relation (a subquery; its own table's columns do not count):
    /// the names must be resolved after the moves, so it is created under the locks.
    pub reads_relations: bool,
}

#[derive(Debug, Clone)]
pub struct PubRel {
    pub rel: u32,
    pub publication: String,
    pub columns: Option<Vec<String>>,
    pub qual: Option<String>,
}

#[derive(Debug, Clone)]
pub struct OwnedSeq {
    pub seq: u32,
    pub schema: String,
    pub name: String,
    pub rel: u32,
    pub column: String,
    pub identity: bool,
    /// The sequence's own grants (`None`: default), which green's sequence must take over.
    pub acl: Option<Vec<AclItem>>,
    pub owner: String,
}

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

/// The [`AclItem`]s of column `idx`, an ACL as [`acl_json`] reads it.
fn parse_acl(r: &tokio_postgres::Row, idx: usize) -> Result<Vec<AclItem>> {
    let items = r
        .try_get::<_, Option<Json<Vec<AclItem>>>>(idx)
        .ctx("reading an ACL")?;
    Ok(items.map(|j| j.0).unwrap_or_default())
}

/// JSON of an ACL column, PUBLIC as `null` (never a role name: see [`AclItem`]).
fn acl_json(col: &str) -> String {
    crate::catalog::queries::acl_items(col)
}

const REL_COLUMNS: &str = "c.oid, n.nspname::text, c.relname::text, c.relkind::text, \
     pg_catalog.pg_get_userbyid(c.relowner)::text, c.relacl IS NULL, {acl}, \
     pg_catalog.obj_description(c.oid, 'pg_class'), c.relrowsecurity, c.relforcerowsecurity, \
     c.relreplident::text, (c.relispartition \
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid \
                     OR (i.inhparent = c.oid AND c.relkind <> 'p'))), \
     coalesce(c.reloptions, '{}')::text[], c.relispopulated";

fn rel_from_row(r: &tokio_postgres::Row) -> Result<Rel> {
    let default_acl: bool = r.get(5);
    Ok(Rel {
        oid: r.get(0),
        schema: r.get(1),
        name: r.get(2),
        relkind: r.get(3),
        owner: r.get(4),
        acl: if default_acl {
            None
        } else {
            Some(parse_acl(r, 6)?)
        },
        comment: r.get(7),
        rls: r.get(8),
        force_rls: r.get(9),
        replident: r.get(10),
        partition_or_inherited: r.get(11),
        reloptions: r.get(12),
        populated: r.get(13),
    })
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

    let rel_rows = client
        .query(
            &format!(
                "SELECT {rel_cols} FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = ANY($1) \
                    OR c.oid IN (SELECT conrelid FROM pg_catalog.pg_constraint WHERE contype = 'f' AND confrelid = ANY($1)) \
                    OR c.oid IN (SELECT confrelid FROM pg_catalog.pg_constraint WHERE contype = 'f' AND conrelid = ANY($1))"
            ),
            &[&tables],
        )
        .await
        .ctx("reading the relations")?;
    for r in &rel_rows {
        let rel = rel_from_row(r)?;
        inv.rels.insert(rel.oid, rel);
    }

    // Partitions of flipped partitioned tables, parents before children.
    let part_rows = client
        .query(
            "SELECT pt.relid::pg_catalog.oid, root.oid, pt.parentrelid::pg_catalog.oid, n.nspname::text, c.relname::text, \
               pg_catalog.pg_get_expr(c.relpartbound, c.oid), pt.level \
             FROM unnest($1::pg_catalog.oid[]) AS root(oid) \
             JOIN pg_catalog.pg_class rc ON rc.oid = root.oid AND rc.relkind = 'p' \
             CROSS JOIN LATERAL pg_catalog.pg_partition_tree(root.oid) pt \
             JOIN pg_catalog.pg_class c ON c.oid = pt.relid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE pt.level > 0 ORDER BY root.oid, pt.level, c.relname",
            &[&tables],
        )
        .await
        .ctx("reading partitions")?;
    for r in &part_rows {
        inv.partitions.push(Partition {
            oid: r.get(0),
            root: r.get(1),
            parent: r.get(2),
            schema: r.get(3),
            name: r.get(4),
            bound: r.get::<_, Option<String>>(5).unwrap_or_default(),
            level: r.get(6),
        });
    }

    // Columns (with their grants, comments and the sequences their defaults use).
    let col_rows = client
        .query(
            &format!(
                "SELECT a.attrelid, a.attnum, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                   CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation \
                        THEN (SELECT pg_catalog.quote_ident(co.collname) FROM pg_catalog.pg_collation co WHERE co.oid = a.attcollation) END, \
                   a.attidentity::text, a.attgenerated::text, pg_catalog.col_description(a.attrelid, a.attnum), \
                   {attacl}, \
                   coalesce((SELECT array_agg(d.refobjid) FROM pg_catalog.pg_attrdef ad \
                      JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.objid = ad.oid \
                       AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                     WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum), '{{}}')::oid[], \
                   CASE WHEN a.attgenerated = '' THEN (SELECT pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) \
                     FROM pg_catalog.pg_attrdef ad WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum) END \
                 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attrelid, a.attnum",
                attacl = acl_json("a.attacl")
            ),
            &[&tables],
        )
        .await
        .ctx("reading columns")?;
    for r in &col_rows {
        inv.columns.push(Column {
            rel: r.get(0),
            num: r.get(1),
            name: r.get(2),
            typ: r.get(3),
            collation: r.get(4),
            identity: r.get(5),
            generated: r.get(6),
            comment: r.get(7),
            acl: parse_acl(r, 8)?,
            default_seqs: r.get(9),
            default_expr: r.get(10),
        });
    }

    // Indexes of the tables and of the dependent materialized views.
    let mut with_views = tables.clone();
    with_views.extend(&view_oids);
    let idx_rows = client
        .query(
            "SELECT i.indexrelid, i.indrelid, ic.relname::text, pg_catalog.pg_get_indexdef(i.indexrelid), \
               (SELECT conname::text FROM pg_catalog.pg_constraint co WHERE co.conindid = i.indexrelid \
                  AND co.conrelid = i.indrelid AND co.contype IN ('p', 'u', 'x')), i.indisreplident \
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             WHERE i.indrelid = ANY($1) ORDER BY i.indrelid, ic.relname",
            &[&with_views],
        )
        .await
        .ctx("reading indexes")?;
    for r in &idx_rows {
        let idx = Index {
            oid: r.get(0),
            rel: r.get(1),
            name: r.get(2),
            def: r.get(3),
            constraint: r.get(4),
            replident: r.get(5),
        };
        if let Some(v) = inv.views.iter_mut().find(|v| v.rel.oid == idx.rel) {
            v.indexes.push(idx);
        } else {
            inv.indexes.push(idx);
        }
    }

    // Constraints of the tables, and foreign keys that reference them.
    let con_rows = client
        .query(
            "SELECT conrelid, confrelid, conname::text, contype::text, pg_catalog.pg_get_constraintdef(oid), convalidated \
             FROM pg_catalog.pg_constraint \
             WHERE (conrelid = ANY($1) OR (contype = 'f' AND confrelid = ANY($1))) AND contype <> 't' \
               AND conparentid = 0 \
             ORDER BY conrelid, conname",
            &[&tables],
        )
        .await
        .ctx("reading constraints")?;
    for r in &con_rows {
        inv.constraints.push(Constraint {
            rel: r.get(0),
            ref_rel: r.get(1),
            name: r.get(2),
            contype: r.get(3),
            def: r.get(4),
            validated: r.get(5),
        });
    }

    // Triggers (user ones; the foreign-key machinery's internal triggers follow the constraints).
    let trg_rows = client
        .query(
            "SELECT t.tgrelid, t.tgname::text, pg_catalog.pg_get_triggerdef(t.oid), t.tgenabled::text, \
               EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace \
                        WHERE p.oid = t.tgfoid AND pn.nspname = 'pgflip'), \
               (SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) \
                  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = t.tgrelid) \
             FROM pg_catalog.pg_trigger t WHERE t.tgrelid = ANY($1) AND NOT t.tgisinternal \
               AND t.tgparentid = 0 ORDER BY t.tgrelid, t.tgname",
            &[&tables],
        )
        .await
        .ctx("reading triggers")?;
    for r in &trg_rows {
        inv.triggers.push(Trigger {
            rel: r.get(0),
            name: r.get(1),
            def: r.get(2),
            enabled: r.get(3),
            pgflip_owned: r.get(4),
            on: r.get(5),
        });
    }

    // Row-level security policies.
    let pol_rows = client
        .query(
            "SELECT p.polrelid, p.polname::text, p.polpermissive, p.polcmd::text, \
               ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(r)) END \
                     FROM unnest(p.polroles) r ORDER BY 1), \
               pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), \
               EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass \
                  AND d.objid = p.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype = 'n' \
                  AND (d.refobjid <> p.polrelid OR d.refobjsubid = 0)) \
             FROM pg_catalog.pg_policy p WHERE p.polrelid = ANY($1) ORDER BY p.polrelid, p.polname",
            &[&tables],
        )
        .await
        .ctx("reading row-level security policies")?;
    for r in &pol_rows {
        inv.policies.push(Policy {
            rel: r.get(0),
            name: r.get(1),
            permissive: r.get(2),
            cmd: r.get(3),
            roles: r.get(4),
            qual: r.get(5),
            check: r.get(6),
            reads_relations: r.get(7),
        });
    }

    // Publication membership (explicit; FOR ALL TABLES / TABLES IN SCHEMA follow the name).
    // Column lists and row filters are 15+: before, neither column exists.
    let filters = crate::pgversion::server_version_num(client).await?
        >= crate::pgversion::PUBLICATION_FILTERS;
    let (cols, qual) = if filters {
        (
            "CASE WHEN pr.prattrs IS NULL THEN NULL ELSE ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
               WHERE a.attrelid = pr.prrelid AND a.attnum = ANY(pr.prattrs) ORDER BY a.attnum) END",
            "pg_catalog.pg_get_expr(pr.prqual, pr.prrelid)",
        )
    } else {
        ("NULL::text[]", "NULL::text")
    };
    let pub_rows = client
        .query(
            &format!(
                "SELECT pr.prrelid, p.pubname::text, {cols}, {qual} \
                 FROM pg_catalog.pg_publication_rel pr JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid \
                 WHERE pr.prrelid = ANY($1) ORDER BY pr.prrelid, p.pubname"
            ),
            &[&tables],
        )
        .await
        .ctx("reading publication membership")?;
    for r in &pub_rows {
        inv.publications.push(PubRel {
            rel: r.get(0),
            publication: r.get(1),
            columns: r.get(2),
            qual: r.get(3),
        });
    }

    // Sequences owned by columns (serial: 'a', identity: 'i').
    let seq_rows = client
        .query(
            &format!("SELECT s.oid, n.nspname::text, s.relname::text, d.refobjid, a.attname::text, d.deptype = 'i', \
                    s.relacl IS NULL, {}, pg_catalog.pg_get_userbyid(s.relowner)::text \
             FROM pg_catalog.pg_depend d \
             JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
             WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
               AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
               AND d.refobjid = ANY($1) AND d.deptype IN ('a', 'i') ORDER BY d.refobjid, a.attnum", acl_json("s.relacl")),
            &[&tables],
        )
        .await
        .ctx("reading owned sequences")?;
    for r in &seq_rows {
        inv.sequences.push(OwnedSeq {
            seq: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            rel: r.get(3),
            column: r.get(4),
            identity: r.get(5),
            acl: if r.get::<_, bool>(6) {
                None
            } else {
                Some(parse_acl(r, 7)?)
            },
            owner: r.get(8),
        });
    }

    // Grants on the columns of dependent views.
    let view_col_acl = client
        .query(
            &format!(
                "SELECT a.attrelid, a.attname::text, {} FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND a.attacl IS NOT NULL",
                acl_json("a.attacl")
            ),
            &[&view_oids],
        )
        .await
        .ctx("reading view column grants")?;
    for r in &view_col_acl {
        let rel: u32 = r.get(0);
        let col: String = r.get(1);
        if let Some(v) = inv.views.iter_mut().find(|v| v.rel.oid == rel) {
            for item in parse_acl(r, 2)? {
                v.column_acl.push((col.clone(), item));
            }
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
