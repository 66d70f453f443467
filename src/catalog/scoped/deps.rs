//! What depends on a set of relations, by OID: the views and materialized views that read them
//! (transitively), the objects bound to them that a flip cannot carry over, and the columns
//! other objects use. Read in the caller's snapshot, under `search_path = ''`.

use tokio_postgres::Client;

use super::{acl_json, rel_from_row, Index, Rel, REL_COLUMNS};
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

/// The views and materialized views that read `live`, transitively, shallowest first (leaving
/// out those in `skip`, whose readers are still found through them).
pub async fn views_reading(client: &Client, live: &[u32], skip: &[u32]) -> Result<Vec<View>> {
    let rel_cols = REL_COLUMNS.replace("{acl}", &acl_json("c.relacl"));
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
            &[&live],
        )
        .await
        .ctx("finding the views that read the tables")?;
    let mut out = Vec::new();
    for r in &view_rows {
        let rel = rel_from_row(r)?;
        if skip.contains(&rel.oid) {
            continue;
        }
        let comments: serde_json::Value = r.get(16);
        out.push(View {
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
    Ok(out)
}

/// What binds to `watched` (relations, their row types; the views among them: `views`) that a
/// flip cannot carry over. Handled, so left out: view rules (re-created), foreign keys
/// (re-added), and the relations' own parts (indexes, constraints, triggers, policies,
/// sequences, publication membership), which depend automatically ('a') or internally. `live`:
/// the relations whose non-view rules count too.
/// (`dd`: two index lookups of pg_depend; one `OR` of both made it a scan per relation,
/// seconds for a few hundred tables.)
pub async fn unhandled(
    client: &Client,
    watched: &[u32],
    views: &[u32],
    live: &[u32],
) -> Result<Vec<Unhandled>> {
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
            &[&watched, &views, &live],
        )
        .await
        .ctx("looking for dependents the flip cannot carry over")?;
    Ok(unhandled
        .iter()
        .map(|r| Unhandled {
            object: r.get(0),
            why: r.get(1),
        })
        .collect())
}

/// What binds to the partitions `parts` by OID (a view, a foreign key of another table, a
/// function of its row type).
pub async fn partition_dependents(client: &Client, parts: &[u32]) -> Result<Vec<Unhandled>> {
    if parts.is_empty() {
        return Ok(Vec::new());
    }
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
            &[&parts],
        )
        .await
        .ctx("looking for dependents of the partitions")?;
    Ok(rows
        .iter()
        .map(|r| Unhandled {
            object: r.get(0),
            why: r.get(1),
        })
        .collect())
}

/// The columns of `live` that other objects use (views, policies, triggers, foreign keys of
/// other tables, publication column lists), leaving out the views of `flipped` and pgflip's
/// own triggers.
pub async fn used_columns(
    client: &Client,
    live: &[u32],
    flipped: &[u32],
) -> Result<Vec<UsedColumn>> {
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
            &[&live, &flipped],
        )
        .await
        .ctx("reading which columns the dependents use")?;
    Ok(used
        .iter()
        .map(|r| UsedColumn {
            rel: r.get(0),
            column: r.get(1),
            user: r.get(2),
            view: r.get(3),
        })
        .collect())
}
