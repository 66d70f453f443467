//! One-sided relations of a flip: a live table retired with nothing in its place (a
//! migration's target tables that the source lacks), and a table brought in under a name that
//! nothing holds (a migration's new tables). Both are recorded with the generation (an empty
//! green, or an empty retired name), so that a rollback does the opposite: it brings the
//! retired ones back and retires the ones brought in. A materialized view or view can be
//! one-sided too (a relation a green pipeline file adds, and its rollback): it moves with
//! `ALTER MATERIALIZED VIEW` / `ALTER VIEW`, and is not re-created as a dependent of the pairs
//! it reads.
//!
//! Only what a `SET SCHEMA` can carry is accepted: a table retired alone must not be read by a
//! view nor tied by a foreign key to a table that stays live (the view or key would follow it
//! into the generation's schema, or a retired table would constrain live rows); a partitioned
//! table goes only with all its partitions. The flip refuses otherwise, naming the object,
//! before any lock.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Result};
use crate::ident::QuotedName;
use crate::ident::{qualified, quote_ident};

use super::{dependents, FlipPair, QualifiedName};

/// One-sided relations, resolved.
#[derive(Debug, Clone, Default)]
pub struct OneSided {
    /// Live tables retired alone, with their oids.
    pub retire: Vec<(QualifiedName, u32)>,
    /// `(pair, oid of green)`: green moves to `live`'s name.
    pub bring_in: Vec<(FlipPair, u32)>,
    /// Materialized views and views among them (a green pipeline's new relations and their
    /// rollback), by oid, with the keyword that names their kind.
    pub kinds: std::collections::BTreeMap<u32, &'static str>,
}

impl OneSided {
    pub fn is_empty(&self) -> bool {
        self.retire.is_empty() && self.bring_in.is_empty()
    }

    pub fn oids(&self) -> impl Iterator<Item = u32> + '_ {
        self.retire
            .iter()
            .map(|(_, o)| *o)
            .chain(self.bring_in.iter().map(|(_, o)| *o))
    }

    /// The name of a one-sided table (where it is before the flip).
    pub fn name_of(&self, oid: u32) -> Option<QuotedName> {
        self.retire
            .iter()
            .find(|(_, o)| *o == oid)
            .map(|(q, _)| q.quoted())
            .or_else(|| {
                self.bring_in
                    .iter()
                    .find(|(_, o)| *o == oid)
                    .map(|(p, _)| p.green.quoted())
            })
    }

    /// `TABLE`, `MATERIALIZED VIEW` or `VIEW`.
    pub fn keyword(&self, oid: u32) -> &'static str {
        self.kinds.get(&oid).copied().unwrap_or("TABLE")
    }

    /// Whether `LOCK TABLE` cannot name it (its ALTER takes the lock instead).
    pub fn is_matview(&self, oid: u32) -> bool {
        self.kinds.get(&oid) == Some(&"MATERIALIZED VIEW")
    }

    /// The statements of the moves, under the flip's locks, into `backup` (quoted). With a
    /// schema swap (`(live schema, green's schema)`, [`super::FlipOptions::schema_swap`]), what
    /// the renames already moved is left out, and what is left is named where the renames put it.
    pub fn moves_sql(
        &self,
        backup: &str,
        swap: Option<&(String, String)>,
    ) -> Vec<(String, String)> {
        let swapped_live = |s: &str| swap.is_some_and(|(l, _)| l == s);
        // Where a schema is after the renames (the live one is the generation's now).
        let after = |s: &str| match swap {
            Some((_, g)) if g == s => swap.map(|(l, _)| l.clone()).unwrap_or_default(),
            _ => s.to_string(),
        };
        let mut out = Vec::new();
        for (q, o) in &self.retire {
            if swapped_live(&q.schema) {
                continue;
            }
            out.push((
                format!("retire {q} (nothing replaces it)"),
                format!("ALTER {} {} SET SCHEMA {backup}", self.keyword(*o), q.sql()),
            ));
        }
        for (p, o) in &self.bring_in {
            let kw = self.keyword(*o);
            let mut sql = String::new();
            let mut at = QualifiedName::new(after(&p.green.schema), p.green.name.clone());
            if p.green.name != p.live.name {
                sql.push_str(&format!(
                    "ALTER {kw} {} RENAME TO {}; ",
                    at.sql(),
                    quote_ident(&p.live.name)
                ));
                at.name = p.live.name.clone();
            }
            if at.schema != p.live.schema {
                sql.push_str(&format!(
                    "ALTER {kw} {} SET SCHEMA {}",
                    at.sql(),
                    quote_ident(&p.live.schema)
                ));
            }
            if !sql.is_empty() {
                out.push((format!("bring {} in as {}", p.green, p.live), sql));
            }
        }
        out
    }
}

/// Resolves and checks `retire` and `bring_in`; `flipped_live` are the oids of the pairs' live
/// tables (retired by the same flip, so keys between them and retired tables are fine).
pub async fn resolve(
    client: &Client,
    retire: &[QualifiedName],
    bring_in: &[FlipPair],
    flipped_live: &[u32],
) -> Result<OneSided> {
    if retire.is_empty() && bring_in.is_empty() {
        return Ok(OneSided::default());
    }
    let mut names: Vec<(String, String)> = retire
        .iter()
        .map(|q| (q.schema.clone(), q.name.clone()))
        .collect();
    for p in bring_in {
        names.push((p.green.schema.clone(), p.green.name.clone()));
        names.push((p.live.schema.clone(), p.live.name.clone()));
    }
    let oids = dependents::resolve(client, &names).await?;
    let mut problems = Vec::new();
    let mut out = OneSided::default();
    for (q, &o) in retire.iter().zip(&oids) {
        if o == 0 {
            problems.push(format!("{q} does not exist (nothing to retire)"));
        }
        out.retire.push((q.clone(), o));
    }
    for (i, p) in bring_in.iter().enumerate() {
        let (g, l) = (oids[retire.len() + 2 * i], oids[retire.len() + 2 * i + 1]);
        if g == 0 {
            problems.push(format!("{} does not exist (nothing to bring in)", p.green));
        }
        if l != 0 {
            problems.push(format!(
                "cannot bring {} in as {}: that name is taken",
                p.green, p.live
            ));
        }
        out.bring_in.push((p.clone(), g));
    }
    let all: Vec<u32> = out.oids().filter(|o| *o != 0).collect();
    if !all.is_empty() {
        for r in client
            .query(
                "SELECT oid, relkind::text FROM pg_catalog.pg_class WHERE oid = ANY($1::oid[]) AND relkind IN ('m', 'v')",
                &[&all],
            )
            .await
            .ctx("reading the kinds of one-sided relations")?
        {
            let kind: String = r.get(1);
            out.kinds.insert(
                r.get(0),
                if kind == "m" { "MATERIALIZED VIEW" } else { "VIEW" },
            );
        }
    }
    if problems.is_empty() && !out.retire.is_empty() {
        let retired: Vec<u32> = out.retire.iter().map(|(_, o)| *o).collect();
        let mut gone: Vec<u32> = retired.clone();
        gone.extend(flipped_live);
        let rows = client
            .query(
                "WITH r AS (SELECT unnest($1::oid[]) AS oid), g AS (SELECT unnest($2::oid[]) AS oid) \
                 SELECT format('view %s reads %s', v.ev_class::regclass, d.refobjid::regclass) \
                   FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_rewrite v ON v.oid = d.objid \
                  WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refobjid IN (SELECT oid FROM r) \
                    AND v.ev_class <> d.refobjid \
                 UNION \
                 SELECT format('foreign key %I of %s ties it to %s, which stays', c.conname, c.conrelid::regclass, \
                               CASE WHEN c.conrelid IN (SELECT oid FROM r) THEN c.confrelid::regclass ELSE c.conrelid::regclass END) \
                   FROM pg_catalog.pg_constraint c \
                  WHERE c.contype = 'f' AND ((c.confrelid IN (SELECT oid FROM r) AND c.conrelid NOT IN (SELECT oid FROM g)) \
                     OR (c.conrelid IN (SELECT oid FROM r) AND c.confrelid NOT IN (SELECT oid FROM g))) \
                 UNION \
                 SELECT format('partition %s of %s would stay behind', i.inhrelid::regclass, i.inhparent::regclass) \
                   FROM pg_catalog.pg_inherits i \
                  WHERE i.inhparent IN (SELECT oid FROM r) AND i.inhrelid NOT IN (SELECT oid FROM r) \
                 UNION \
                 SELECT format('%s is a partition of %s, which stays', i.inhrelid::regclass, i.inhparent::regclass) \
                   FROM pg_catalog.pg_inherits i \
                  WHERE i.inhrelid IN (SELECT oid FROM r) AND i.inhparent NOT IN (SELECT oid FROM g)",
                &[&retired, &gone],
            )
            .await
            .ctx("checking the tables retired alone")?;
        for r in rows {
            problems.push(r.get::<_, String>(0));
        }
    }
    let names: BTreeSet<String> = out
        .retire
        .iter()
        .map(|(q, _)| qualified(&q.schema, &q.name))
        .collect();
    if !problems.is_empty() {
        return Err(Error::Refused(format!(
            "the flip cannot retire or bring in these tables alone ({}; nothing was changed):\n  - {}",
            names.into_iter().collect::<Vec<_>>().join(", "),
            problems.join("\n  - ")
        ).into()));
    }
    Ok(out)
}
