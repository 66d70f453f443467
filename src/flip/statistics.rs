//! Extended statistics (`CREATE STATISTICS`) follow the table through a flip.
//!
//! A statistics object is bound to its table by OID and does not move with `ALTER TABLE … SET
//! SCHEMA`. So in the flip, live's object is moved into the generation's schema beside its
//! retired table (catalog only), and the new live table gets the same object under the same
//! name: green's own matching one is renamed (that is how a rollback gets the original back),
//! otherwise it is created. Creating one is catalog only too: it holds no data until the next
//! `ANALYZE`, so nothing is computed while the flip holds its locks.

use tokio_postgres::Client;

use crate::error::{DbResultExt, Result};
use crate::ident::{qualified, quote_ident, quote_literal};

/// One extended statistics object of a flipped relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatObj {
    pub rel: u32,
    pub schema: String,
    pub name: String,
    /// What follows the name in `pg_get_statisticsobjdef`, without ` FROM <table>`:
    /// ` (kinds) ON columns`. Equal bodies make the same object on equal columns.
    pub body: String,
    /// `SET STATISTICS` target; -1 for the default.
    pub target: i32,
    pub owner: String,
    pub comment: Option<String>,
}

impl StatObj {
    pub fn sql_name(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

/// The statistics objects of `rels` (read under the loader's empty `search_path`, so every
/// name the server prints is qualified).
pub(crate) async fn load(client: &Client, rels: &[u32]) -> Result<Vec<StatObj>> {
    let rows = client
        .query(
            "SELECT s.stxrelid, n.nspname::text, s.stxname::text, \
               pg_catalog.substr(d.def, pg_catalog.length(d.prefix) + 1, \
                 pg_catalog.length(d.def) - pg_catalog.length(d.prefix) - pg_catalog.length(d.suffix)), \
               COALESCE(s.stxstattarget::int, -1), pg_catalog.pg_get_userbyid(s.stxowner)::text, \
               pg_catalog.obj_description(s.oid, 'pg_statistic_ext') \
             FROM pg_catalog.pg_statistic_ext s \
             JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace \
             CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_statisticsobjdef(s.oid) AS def, \
               'CREATE STATISTICS ' || pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(s.stxname) AS prefix, \
               ' FROM ' || s.stxrelid::pg_catalog.regclass::text AS suffix) d \
             WHERE s.stxrelid = ANY($1) ORDER BY s.stxrelid, n.nspname, s.stxname",
            &[&rels],
        )
        .await
        .ctx("reading extended statistics")?;
    Ok(rows
        .iter()
        .map(|r| StatObj {
            rel: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            body: r.get(3),
            target: r.get(4),
            owner: r.get(5),
            comment: r.get(6),
        })
        .collect())
}

/// `live`'s statistics objects that green has no match for.
pub(crate) fn unmatched(stats: &[StatObj], live: u32, green: u32) -> Vec<&StatObj> {
    let mut used: Vec<&StatObj> = Vec::new();
    let mut out = Vec::new();
    for s in stats.iter().filter(|s| s.rel == live) {
        match stats
            .iter()
            .find(|g| g.rel == green && g.body == s.body && !used.contains(g))
        {
            Some(g) => used.push(g),
            None => out.push(s),
        }
    }
    out
}

/// `(description, SQL)` steps that retire `live`'s statistics objects into `backup` (quoted)
/// and give the table now named `live_q` the same ones. `create` is false when green's
/// structure is its own (a migration): then only green's matching objects take live's names.
pub(crate) fn carry(
    stats: &[StatObj],
    live: u32,
    green: u32,
    live_q: &str,
    backup: &str,
    create: bool,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut used: Vec<&StatObj> = Vec::new();
    for s in stats.iter().filter(|s| s.rel == live) {
        let name = s.sql_name();
        out.push((
            format!("retire extended statistics {name} with its table"),
            format!("ALTER STATISTICS {name} SET SCHEMA {backup}"),
        ));
        let m = stats
            .iter()
            .find(|g| g.rel == green && g.body == s.body && !used.contains(g));
        match m {
            Some(g) => {
                used.push(g);
                let mut at = g.sql_name();
                if g.schema != s.schema {
                    out.push((
                        format!(
                            "move green's extended statistics {at} into schema {}",
                            quote_ident(&s.schema)
                        ),
                        format!(
                            "ALTER STATISTICS {at} SET SCHEMA {}",
                            quote_ident(&s.schema)
                        ),
                    ));
                    at = qualified(&s.schema, &g.name);
                }
                if g.name != s.name {
                    out.push((
                        format!(
                            "rename green's extended statistics {at} to {}",
                            quote_ident(&s.name)
                        ),
                        format!("ALTER STATISTICS {at} RENAME TO {}", quote_ident(&s.name)),
                    ));
                }
                // `LIKE … INCLUDING STATISTICS` copies neither the target nor the owner.
                let mut meta = Vec::new();
                if g.target != s.target {
                    meta.push(format!(
                        "ALTER STATISTICS {name} SET STATISTICS {}",
                        s.target
                    ));
                }
                if g.owner != s.owner {
                    meta.push(format!(
                        "ALTER STATISTICS {name} OWNER TO {}",
                        quote_ident(&s.owner)
                    ));
                }
                if g.comment != s.comment {
                    meta.push(format!(
                        "COMMENT ON STATISTICS {name} IS {}",
                        s.comment
                            .as_deref()
                            .map(quote_literal)
                            .unwrap_or_else(|| "NULL".into())
                    ));
                }
                if !meta.is_empty() {
                    out.push((
                        format!("give extended statistics {name} live's target, owner and comment"),
                        meta.join("; "),
                    ));
                }
            }
            None if create => {
                let mut sql = format!("CREATE STATISTICS {name}{} FROM {live_q}", s.body);
                if s.target >= 0 {
                    sql.push_str(&format!(
                        "; ALTER STATISTICS {name} SET STATISTICS {}",
                        s.target
                    ));
                }
                sql.push_str(&format!(
                    "; ALTER STATISTICS {name} OWNER TO {}",
                    quote_ident(&s.owner)
                ));
                if let Some(c) = &s.comment {
                    sql.push_str(&format!(
                        "; COMMENT ON STATISTICS {name} IS {}",
                        quote_literal(c)
                    ));
                }
                out.push((
                    format!("create extended statistics {name} on the new table (catalog only: filled by the next ANALYZE)"),
                    sql,
                ));
            }
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(rel: u32, schema: &str, name: &str, body: &str) -> StatObj {
        StatObj {
            rel,
            schema: schema.into(),
            name: name.into(),
            body: body.into(),
            target: -1,
            owner: "o".into(),
            comment: None,
        }
    }

    #[test]
    fn live_statistics_are_retired_and_made_again_or_taken_from_green() {
        let stats = vec![
            st(1, "public", "S one", " (ndistinct) ON a, b"),
            st(1, "public", "s2", " ON a, c"),
            st(2, "stage", "s2_green", " ON a, c"),
        ];
        let steps = carry(&stats, 1, 2, "public.t", "bk", true);
        let sql: Vec<&str> = steps.iter().map(|s| s.1.as_str()).collect();
        assert_eq!(
            sql,
            [
                "ALTER STATISTICS public.\"S one\" SET SCHEMA bk",
                "CREATE STATISTICS public.\"S one\" (ndistinct) ON a, b FROM public.t; ALTER STATISTICS public.\"S one\" OWNER TO o",
                "ALTER STATISTICS public.s2 SET SCHEMA bk",
                "ALTER STATISTICS stage.s2_green SET SCHEMA public",
                "ALTER STATISTICS public.s2_green RENAME TO s2",
            ]
        );
        // A migration's green keeps its own structure: nothing created for it.
        let steps = carry(&stats, 1, 3, "public.t", "bk", false);
        assert_eq!(steps.len(), 2);
    }
}
