//! Whole-schema swap: when a live schema holds nothing but the relations the swap replaces or
//! retires (and their indexes, owned sequences and row types), and its shadow schema nothing but
//! their new versions, the swap renames the live schema to the generation's schema and the shadow
//! schema to the live one's name: two renames instead of two `SET SCHEMA` per relation, which is
//! most of the locked transaction's time for many tables (issue #10). The generation records the
//! same names either way (retired relations in the generation's schema, new ones under the live
//! names), so a rollback, which moves relation by relation, needs nothing new.
//!
//! What binds to a schema by OID rather than by name would follow the wrong schema, so the
//! swap is only used when neither schema holds anything else: no function, type (beyond the
//! relations' row types), operator, collation, text-search object, conversion, extended
//! statistics, extension, schema-level default privileges or publication of the schema. The
//! shadow schema is given the live schema's owner, privileges and comment before the locks (the
//! application goes on finding the schema it had); a second check under the locks, by the
//! schemas' OIDs, refuses the swap when an object appeared in either schema meanwhile.
//!
//! Only one schema per swap (the generation has one schema, which the live one becomes): the one
//! with the most relations; the other schemas' relations move one by one as before. Known race:
//! an object created in the live schema by a transaction that commits between that check and the
//! swap's commit ends up in the generation's schema (DDL during a migration's swap is outside
//! what pgflip supports; `rollback` brings the schema back whole, not that object).

use tokio_postgres::Client;

use crate::error::{DbResultExt, Result};
use crate::ident::{quote_ident, quote_literal};

use super::record::Record;
use super::swap::SwapPlan;

/// A chosen schema swap.
#[derive(Debug, Clone)]
pub struct SchemaSwap {
    pub live: String,
    pub shadow: String,
    /// OIDs of the two schemas (their names change in the transaction).
    live_oid: u32,
    shadow_oid: u32,
    /// Objects in the two schemas when checked (pg_class, pg_type rows), compared under the
    /// locks.
    counts: (i64, i64),
}

/// Objects in the two schemas `$1` (names) other than the relations `$2` (and their
/// partitions, indexes, owned sequences, TOAST, row types): one row per object, named.
const FOREIGN_OBJECTS_SQL: &str = "\
WITH RECURSIVE ns AS (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = ANY($1::text[])), \
listed AS ( \
    SELECT unnest($2::pg_catalog.oid[]) AS oid \
    UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN listed l ON i.inhparent = l.oid \
), own AS ( \
    SELECT oid FROM listed \
    UNION SELECT x.indexrelid FROM pg_catalog.pg_index x WHERE x.indrelid IN (SELECT oid FROM listed) \
    UNION SELECT d.objid FROM pg_catalog.pg_depend d \
          WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
            AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
            AND d.refobjid IN (SELECT oid FROM listed) AND d.deptype IN ('a', 'i') \
) \
SELECT 'relation ' || c.oid::pg_catalog.regclass::text FROM pg_catalog.pg_class c \
 WHERE c.relnamespace IN (SELECT oid FROM ns) AND c.oid NOT IN (SELECT oid FROM own) \
UNION ALL \
SELECT 'sequence ' || s.oid::pg_catalog.regclass::text || ' of ' || t.oid::pg_catalog.regclass::text || ' in another schema' \
  FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class s ON s.oid = d.objid JOIN pg_catalog.pg_class t ON t.oid = d.refobjid \
 WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
   AND s.relkind = 'S' AND s.relnamespace <> t.relnamespace \
   AND (s.relnamespace IN (SELECT oid FROM ns) OR t.relnamespace IN (SELECT oid FROM ns)) \
UNION ALL \
SELECT 'type ' || t.oid::pg_catalog.regtype::text FROM pg_catalog.pg_type t \
 WHERE t.typnamespace IN (SELECT oid FROM ns) AND t.typrelid = 0 \
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.oid = t.typelem AND e.typrelid <> 0 AND e.typarray = t.oid) \
UNION ALL SELECT 'function ' || p.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc p WHERE p.pronamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT 'operator ' || o.oid::pg_catalog.regoperator::text FROM pg_catalog.pg_operator o WHERE o.oprnamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT 'operator class ' || o.opcname FROM pg_catalog.pg_opclass o WHERE o.opcnamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT 'operator family ' || o.opfname FROM pg_catalog.pg_opfamily o WHERE o.opfnamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT 'collation ' || o.collname FROM pg_catalog.pg_collation o WHERE o.collnamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT 'conversion ' || o.conname FROM pg_catalog.pg_conversion o WHERE o.connamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT 'text search configuration ' || o.cfgname FROM pg_catalog.pg_ts_config o WHERE o.cfgnamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT 'text search dictionary ' || o.dictname FROM pg_catalog.pg_ts_dict o WHERE o.dictnamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT 'text search parser ' || o.prsname FROM pg_catalog.pg_ts_parser o WHERE o.prsnamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT 'text search template ' || o.tmplname FROM pg_catalog.pg_ts_template o WHERE o.tmplnamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT 'extended statistics ' || o.stxname FROM pg_catalog.pg_statistic_ext o WHERE o.stxnamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT 'extension ' || o.extname FROM pg_catalog.pg_extension o WHERE o.extnamespace IN (SELECT oid FROM ns) \
UNION ALL SELECT 'default privileges of the schema' FROM pg_catalog.pg_default_acl o WHERE o.defaclnamespace IN (SELECT oid FROM ns)";

/// Publications of whole schemas (PostgreSQL 15 and later).
const PUBLISHED_SCHEMAS_SQL: &str = "\
SELECT 'publication ' || p.pubname FROM pg_catalog.pg_publication_namespace n \
  JOIN pg_catalog.pg_publication p ON p.oid = n.pnpubid \
  JOIN pg_catalog.pg_namespace s ON s.oid = n.pnnspid WHERE s.nspname = ANY($1::text[])";

/// What is compared under the locks: relations and types in the two schemas (what DDL in them
/// adds first), by the schemas' OIDs.
fn counts_sql(live_oid: u32, shadow_oid: u32) -> String {
    format!(
        "(SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace IN ({live_oid}, {shadow_oid})), \
         (SELECT count(*) FROM pg_catalog.pg_type WHERE typnamespace IN ({live_oid}, {shadow_oid})) \
         + (SELECT count(*) FROM pg_catalog.pg_proc WHERE pronamespace IN ({live_oid}, {shadow_oid}))"
    )
}

/// Chooses the schema to swap whole, if any: checked here, before any lock. `Ok(None)`: every
/// relation moves one by one.
pub async fn choose(client: &Client, rec: &Record, sp: &SwapPlan) -> Result<Option<SchemaSwap>> {
    let names: Vec<(String, String)> = sp
        .pairs
        .iter()
        .chain(&sp.bring_in)
        .flat_map(|p| {
            [
                (p.live.schema.clone(), p.live.name.clone()),
                (p.green.schema.clone(), p.green.name.clone()),
            ]
        })
        .chain(sp.retire.iter().map(|q| (q.schema.clone(), q.name.clone())))
        .collect();
    let mut candidates: Vec<(usize, &super::record::SchemaMap)> = rec
        .schemas
        .iter()
        .filter(|m| !m.created_live && !rec.created_schemas.contains(&m.live))
        .map(|m| (names.iter().filter(|(s, _)| *s == m.live).count(), m))
        .filter(|(n, _)| *n > 0)
        .collect();
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    let version = crate::pgversion::server_version_num(client).await?;
    for (_, m) in candidates {
        let listed: Vec<String> = names
            .iter()
            .filter(|(s, _)| *s == m.live || *s == m.shadow)
            .map(|(s, n)| crate::ident::qualified(s, n))
            .collect();
        let schemas = vec![m.live.clone(), m.shadow.clone()];
        let row = client
            .query_one(
                "SELECT ARRAY(SELECT pg_catalog.to_regclass(n)::pg_catalog.oid \
                 FROM unnest($1::text[]) n WHERE pg_catalog.to_regclass(n) IS NOT NULL)",
                &[&listed],
            )
            .await
            .ctx("resolving the relations of a schema swap")?;
        let oids: Vec<u32> = row.get(0);
        let mut foreign = client
            .query(FOREIGN_OBJECTS_SQL, &[&schemas, &oids])
            .await
            .ctx("looking for objects a schema swap would carry along")?;
        if version >= 150000 {
            foreign.extend(
                client
                    .query(PUBLISHED_SCHEMAS_SQL, &[&schemas])
                    .await
                    .ctx("looking for publications of the schemas")?,
            );
        }
        if !foreign.is_empty() {
            continue;
        }
        // The renames need the schemas' owners' rights (and CREATE on the database); the
        // shadow schema is given the live one's owner.
        let r = client
            .query_one(
                &format!(
                    "SELECT l.oid, s.oid, \
                            pg_catalog.pg_has_role(l.nspowner, 'MEMBER') AND pg_catalog.pg_has_role(s.nspowner, 'MEMBER') \
                            AND pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'), {} \
                       FROM pg_catalog.pg_namespace l, pg_catalog.pg_namespace s \
                      WHERE l.nspname = $1 AND s.nspname = $2",
                    counts_sql_named()
                ),
                &[&m.live, &m.shadow],
            )
            .await
            .ctx("reading the schemas of a schema swap")?;
        if !r.get::<_, bool>(2) {
            continue;
        }
        return Ok(Some(SchemaSwap {
            live: m.live.clone(),
            shadow: m.shadow.clone(),
            live_oid: r.get(0),
            shadow_oid: r.get(1),
            counts: (r.get(3), r.get(4)),
        }));
    }
    Ok(None)
}

/// [`counts_sql`] over the schemas `l` and `s` of the query that reads them.
fn counts_sql_named() -> &'static str {
    "(SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace IN (l.oid, s.oid)), \
     (SELECT count(*) FROM pg_catalog.pg_type WHERE typnamespace IN (l.oid, s.oid)) \
     + (SELECT count(*) FROM pg_catalog.pg_proc WHERE pronamespace IN (l.oid, s.oid))"
}

impl SchemaSwap {
    /// `(live, shadow)` for [`crate::flip::FlipOptions::schema_swap`].
    pub fn pair(&self) -> (String, String) {
        (self.live.clone(), self.shadow.clone())
    }

    /// Gives the shadow schema the live schema's owner, privileges and comment, before the
    /// locks: once renamed, it is the schema the application finds.
    pub async fn dress_shadow(&self, client: &Client) -> Result<()> {
        let r = client
            .query_one(
                "SELECT l.nspowner::pg_catalog.regrole::text, l.nspacl IS NULL, \
                        pg_catalog.obj_description(l.oid, 'pg_namespace'), \
                        ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::pg_catalog.regrole::text END \
                                     || ' ' || a.privilege_type || ' ' || a.is_grantable::text \
                                FROM pg_catalog.aclexplode(l.nspacl) WITH ORDINALITY a ORDER BY a.ordinality) \
                   FROM pg_catalog.pg_namespace l WHERE l.oid = $1",
                &[&self.live_oid],
            )
            .await
            .ctx("reading the live schema's owner and privileges")?;
        let owner: String = r.get(0);
        let default_acl: bool = r.get(1);
        let comment: Option<String> = r.get(2);
        let grants: Vec<String> = r.get(3);
        // regrole::text is already quoted as an identifier when it needs to be.
        let sh = quote_ident(&self.shadow);
        let mut sql = format!("BEGIN; ALTER SCHEMA {sh} OWNER TO {owner}; ");
        if !default_acl {
            sql.push_str(&format!(
                "REVOKE ALL ON SCHEMA {sh} FROM PUBLIC; REVOKE ALL ON SCHEMA {sh} FROM {owner}; "
            ));
            for g in &grants {
                let mut it = g.rsplitn(3, ' ');
                let (grantable, privilege, grantee) =
                    (it.next(), it.next(), it.next().unwrap_or_default());
                let privilege = match privilege {
                    Some("USAGE") => "USAGE",
                    Some("CREATE") => "CREATE",
                    _ => continue,
                };
                sql.push_str(&format!(
                    "GRANT {privilege} ON SCHEMA {sh} TO {grantee}{}; ",
                    if grantable == Some("true") {
                        " WITH GRANT OPTION"
                    } else {
                        ""
                    }
                ));
            }
        }
        sql.push_str(&format!(
            "COMMENT ON SCHEMA {sh} IS {}; COMMIT",
            comment
                .as_deref()
                .map(quote_literal)
                .unwrap_or_else(|| "NULL".into())
        ));
        client
            .batch_execute(&sql)
            .await
            .ctx("giving the shadow schema the live schema's owner and privileges")
    }

    /// The check under the locks, by OID: nothing appeared in either schema since [`choose`]
    /// (PL/pgSQL, for the swap's one `DO` block of checks).
    pub fn recheck_plpgsql(&self) -> String {
        format!(
            "IF (SELECT ({c}) IS DISTINCT FROM ({a}::bigint, {b}::bigint)) THEN \
             RAISE EXCEPTION 'pgflip: objects were created in schema % or % while the swap was prepared; run the swap again', \
             {l}, {s}; END IF;",
            c = counts_sql(self.live_oid, self.shadow_oid),
            a = self.counts.0,
            b = self.counts.1,
            l = quote_literal(&self.live),
            s = quote_literal(&self.shadow),
        )
    }
}
