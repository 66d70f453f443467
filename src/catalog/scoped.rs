//! The catalog of a set of relations, by OID: what the flip reads of the relations it switches
//! and of the tables around them (their rows in `pg_class`, partitions, columns, indexes,
//! constraints, triggers, policies, publication membership, owned sequences, and the column
//! grants of the views over them). A fixed handful of set-based queries, whatever the number of
//! relations; the caller chooses the snapshot and runs them under `search_path = ''`, so that
//! every expression the server prints is schema-qualified.
//!
//! The flat, OID-keyed model the flip works with; [`super::Snapshot`] is the schema-wide one
//! that schema diff and sync read. What the flip makes of these (dependents, what it cannot
//! carry over, its fingerprint) is in [`crate::flip::dependents`].

pub mod deps;

use std::collections::BTreeMap;

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

/// What [`load`] reads.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub rels: BTreeMap<u32, Rel>,
    pub partitions: Vec<Partition>,
    pub columns: Vec<Column>,
    /// Of the tables and of the views (materialized views have indexes).
    pub indexes: Vec<Index>,
    pub constraints: Vec<Constraint>,
    pub triggers: Vec<Trigger>,
    pub policies: Vec<Policy>,
    pub publications: Vec<PubRel>,
    pub sequences: Vec<OwnedSeq>,
    /// Grants on the columns of the views: (view, column, grant).
    pub view_column_acl: Vec<(u32, String, AclItem)>,
}

/// Reads the catalog of `tables` (with the tables that hold foreign keys to them and that they
/// reference) and the indexes and column grants of `views`, in the caller's snapshot.
pub async fn load(client: &Client, tables: &[u32], views: &[u32]) -> Result<Objects> {
    let mut out = Objects::default();
    relations(client, tables, &mut out).await?;
    partitions(client, tables, &mut out).await?;
    columns(client, tables, &mut out).await?;
    let mut with_views = tables.to_vec();
    with_views.extend(views);
    indexes(client, &with_views, &mut out).await?;
    constraints(client, tables, &mut out).await?;
    triggers(client, tables, &mut out).await?;
    policies(client, tables, &mut out).await?;
    publications(client, tables, &mut out).await?;
    owned_sequences(client, tables, &mut out).await?;
    view_column_grants(client, views, &mut out).await?;
    Ok(out)
}

/// The [`AclItem`]s of column `idx`, an ACL as [`acl_json`] reads it.
pub(crate) fn parse_acl(r: &tokio_postgres::Row, idx: usize) -> Result<Vec<AclItem>> {
    let items = r
        .try_get::<_, Option<Json<Vec<AclItem>>>>(idx)
        .ctx("reading an ACL")?;
    Ok(items.map(|j| j.0).unwrap_or_default())
}

/// JSON of an ACL column, PUBLIC as `null` (never a role name: see [`AclItem`]).
pub(crate) fn acl_json(col: &str) -> String {
    crate::catalog::queries::acl_items(col)
}

pub(crate) const REL_COLUMNS: &str = "c.oid, n.nspname::text, c.relname::text, c.relkind::text, \
     pg_catalog.pg_get_userbyid(c.relowner)::text, c.relacl IS NULL, {acl}, \
     pg_catalog.obj_description(c.oid, 'pg_class'), c.relrowsecurity, c.relforcerowsecurity, \
     c.relreplident::text, (c.relispartition \
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid \
                     OR (i.inhparent = c.oid AND c.relkind <> 'p'))), \
     coalesce(c.reloptions, '{}')::text[], c.relispopulated";

pub(crate) fn rel_from_row(r: &tokio_postgres::Row) -> Result<Rel> {
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

/// The relations, and the tables that hold foreign keys to them or that they reference.
async fn relations(client: &Client, tables: &[u32], out: &mut Objects) -> Result<()> {
    let rel_cols = REL_COLUMNS.replace("{acl}", &acl_json("c.relacl"));
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
        out.rels.insert(rel.oid, rel);
    }
    Ok(())
}

/// Partitions of the partitioned tables among `tables`, parents before children.
async fn partitions(client: &Client, tables: &[u32], out: &mut Objects) -> Result<()> {
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
        out.partitions.push(Partition {
            oid: r.get(0),
            root: r.get(1),
            parent: r.get(2),
            schema: r.get(3),
            name: r.get(4),
            bound: r.get::<_, Option<String>>(5).unwrap_or_default(),
            level: r.get(6),
        });
    }
    Ok(())
}

/// Columns, with their grants, comments and the sequences their defaults use.
async fn columns(client: &Client, tables: &[u32], out: &mut Objects) -> Result<()> {
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
        out.columns.push(Column {
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
    Ok(())
}

/// Indexes of the relations.
async fn indexes(client: &Client, with_views: &[u32], out: &mut Objects) -> Result<()> {
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
        out.indexes.push(Index {
            oid: r.get(0),
            rel: r.get(1),
            name: r.get(2),
            def: r.get(3),
            constraint: r.get(4),
            replident: r.get(5),
        });
    }
    Ok(())
}

/// Constraints of the tables, and foreign keys that reference them.
async fn constraints(client: &Client, tables: &[u32], out: &mut Objects) -> Result<()> {
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
        out.constraints.push(Constraint {
            rel: r.get(0),
            ref_rel: r.get(1),
            name: r.get(2),
            contype: r.get(3),
            def: r.get(4),
            validated: r.get(5),
        });
    }
    Ok(())
}

/// User triggers (the foreign-key machinery's internal triggers follow the constraints).
async fn triggers(client: &Client, tables: &[u32], out: &mut Objects) -> Result<()> {
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
        out.triggers.push(Trigger {
            rel: r.get(0),
            name: r.get(1),
            def: r.get(2),
            enabled: r.get(3),
            pgflip_owned: r.get(4),
            on: r.get(5),
        });
    }
    Ok(())
}

/// Row-level security policies.
async fn policies(client: &Client, tables: &[u32], out: &mut Objects) -> Result<()> {
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
        out.policies.push(Policy {
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
    Ok(())
}

/// Explicit publication membership (FOR ALL TABLES / TABLES IN SCHEMA follow the name).
async fn publications(client: &Client, tables: &[u32], out: &mut Objects) -> Result<()> {
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
        out.publications.push(PubRel {
            rel: r.get(0),
            publication: r.get(1),
            columns: r.get(2),
            qual: r.get(3),
        });
    }
    Ok(())
}

/// Sequences owned by columns (serial: 'a', identity: 'i').
async fn owned_sequences(client: &Client, tables: &[u32], out: &mut Objects) -> Result<()> {
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
        out.sequences.push(OwnedSeq {
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
    Ok(())
}

/// Grants on the columns of views.
async fn view_column_grants(client: &Client, views: &[u32], out: &mut Objects) -> Result<()> {
    // Grants on the columns of dependent views.
    let view_col_acl = client
        .query(
            &format!(
                "SELECT a.attrelid, a.attname::text, {} FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND a.attacl IS NOT NULL",
                acl_json("a.attacl")
            ),
            &[&views],
        )
        .await
        .ctx("reading view column grants")?;
    for r in &view_col_acl {
        let rel: u32 = r.get(0);
        let col: String = r.get(1);
        for item in parse_acl(r, 2)? {
            out.view_column_acl.push((rel, col.clone(), item));
        }
    }
    Ok(())
}
