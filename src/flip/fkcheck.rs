//! Foreign keys from outside an operation: no row may lose the row it references.
//!
//! In-place `sync` checks this before it deletes rows of a referenced table; a flip checks it
//! before taking any lock, because a flip re-attaches other tables' foreign keys `NOT VALID`
//! (no scan under the lock) and validates them only after its commit, when refusing is no
//! longer possible. Both use [`orphan_count_sql`], so both count the same rows the same way.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Result};
use crate::ident::{qualified, quote_ident};

/// SQL counting the rows of `child` (qualified) whose key `from_cols` — all non-null, as
/// `MATCH SIMPLE` checks it — references a row of `parent` (qualified, seen as `o`) for which
/// `lost` holds: the rows that the operation would leave without their parent.
pub fn orphan_count_sql(
    child: &str,
    from_cols: &[String],
    to_cols: &[String],
    parent: &str,
    lost: &str,
) -> String {
    let not_null: Vec<String> = from_cols
        .iter()
        .map(|c| format!("c.{} IS NOT NULL", quote_ident(c)))
        .collect();
    let refmatch: Vec<String> = from_cols
        .iter()
        .zip(to_cols)
        .map(|(f, t)| format!("o.{} = c.{}", quote_ident(t), quote_ident(f)))
        .collect();
    format!(
        "SELECT count(*) FROM {child} c WHERE {} AND EXISTS (SELECT 1 FROM {parent} o WHERE {} AND {lost})",
        not_null.join(" AND "),
        refmatch.join(" AND ")
    )
}

/// A relation a flip replaces: `live` (qualified, with its oid) by `green` (qualified, with
/// its oid).
pub struct Replaced<'a> {
    pub live_oid: u32,
    pub live: &'a str,
    pub green_oid: u32,
    pub green: &'a str,
}

/// Refuses a flip that would leave rows of a table outside it referencing a key that green
/// lacks, naming each constraint and its row count. `flipped`: every relation of the flip
/// (live and green), whose own foreign keys move with them.
pub async fn refuse_orphans(
    client: &Client,
    replaced: &[Replaced<'_>],
    flipped: &BTreeSet<u32>,
) -> Result<()> {
    let live: Vec<u32> = replaced.iter().map(|r| r.live_oid).collect();
    let inside: Vec<u32> = flipped.iter().copied().collect();
    // One query for all foreign keys; partitions' clones of a partitioned table's key are the
    // same rows seen twice (conparentid).
    let rows = client
        .query(
            "SELECT c.conname::text, n.nspname::text, r.relname::text, c.confrelid, \
                    ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(num, i) \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num ORDER BY k.i), \
                    ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(num, i) \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num ORDER BY k.i) \
             FROM pg_catalog.pg_constraint c \
             JOIN pg_catalog.pg_class r ON r.oid = c.conrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace \
             WHERE c.contype = 'f' AND c.conparentid = 0 \
               AND c.confrelid = ANY($1::oid[]) AND NOT c.conrelid = ANY($2::oid[]) \
             ORDER BY n.nspname, r.relname, c.conname",
            &[&live, &inside],
        )
        .await
        .ctx("reading the foreign keys that reference the flipped tables")?;
    let mut problems = Vec::new();
    for row in &rows {
        let name: String = row.get(0);
        let child = qualified(row.get(1), row.get(2));
        let parent_oid: u32 = row.get(3);
        let from_cols: Vec<String> = row.get(4);
        let to_cols: Vec<String> = row.get(5);
        let Some(r) = replaced.iter().find(|r| r.live_oid == parent_oid) else {
            continue;
        };
        let in_green: Vec<String> = to_cols
            .iter()
            .map(|t| format!("n.{0} = o.{0}", quote_ident(t)))
            .collect();
        let lost = format!(
            "NOT EXISTS (SELECT 1 FROM {} n WHERE {})",
            r.green,
            in_green.join(" AND ")
        );
        let sql = orphan_count_sql(&child, &from_cols, &to_cols, r.live, &lost);
        let n: i64 = client
            .query_one(&sql, &[])
            .await
            .ctx(format!(
                "checking that no row of {child} loses the row of {} it references",
                r.live
            ))?
            .get(0);
        if n > 0 {
            problems.push(format!(
                "{} is referenced by {child} (constraint {}): {n} row(s) of {child} reference \
                 rows of {} that {} does not have",
                r.live,
                quote_ident(&name),
                r.live,
                r.green
            ));
        }
    }
    problems.extend(outbound_orphans(client, replaced, flipped).await?);
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "{}. The flip would leave them without the row they reference; nothing was changed. \
         Bring the missing rows into the new table or the table it references (or sync the \
         referencing table too), or remove the referencing rows first",
        problems.join("; ")
    )))
}

/// Live's own foreign keys to tables outside the flip move to green (re-added `NOT VALID`,
/// validated after the commit): green's rows must all have their parent row, or that
/// validation fails once refusing is no longer possible. One problem per constraint that some
/// green row breaks. A key whose columns green lacks is not moved, and not checked.
async fn outbound_orphans(
    client: &Client,
    replaced: &[Replaced<'_>],
    flipped: &BTreeSet<u32>,
) -> Result<Vec<String>> {
    let live: Vec<u32> = replaced.iter().map(|r| r.live_oid).collect();
    let green: Vec<u32> = replaced.iter().map(|r| r.green_oid).collect();
    let inside: Vec<u32> = flipped.iter().copied().collect();
    let rows = client
        .query(
            "SELECT c.conname::text, x.green, n.nspname::text, p.relname::text, \
                    ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(num, i) \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num ORDER BY k.i), \
                    ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(num, i) \
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num ORDER BY k.i) \
             FROM unnest($1::oid[], $2::oid[]) x(live, green) \
             JOIN pg_catalog.pg_constraint c ON c.conrelid = x.live \
             JOIN pg_catalog.pg_class p ON p.oid = c.confrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace \
             WHERE c.contype = 'f' AND c.conparentid = 0 AND NOT c.confrelid = ANY($3::oid[]) \
               AND NOT EXISTS (SELECT 1 FROM unnest(c.conkey) k(num) \
                               JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num \
                               WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute g \
                                                 WHERE g.attrelid = x.green AND g.attname = a.attname \
                                                   AND NOT g.attisdropped)) \
             ORDER BY 1",
            &[&live, &green, &inside],
        )
        .await
        .ctx("reading the foreign keys of the flipped tables")?;
    let mut problems = Vec::new();
    for row in &rows {
        let name: String = row.get(0);
        let green_oid: u32 = row.get(1);
        let parent = qualified(row.get(2), row.get(3));
        let from_cols: Vec<String> = row.get(4);
        let to_cols: Vec<String> = row.get(5);
        let Some(r) = replaced.iter().find(|r| r.green_oid == green_oid) else {
            continue;
        };
        let not_null: Vec<String> = from_cols
            .iter()
            .map(|c| format!("g.{} IS NOT NULL", quote_ident(c)))
            .collect();
        let refmatch: Vec<String> = from_cols
            .iter()
            .zip(&to_cols)
            .map(|(f, t)| format!("p.{} = g.{}", quote_ident(t), quote_ident(f)))
            .collect();
        let sql = format!(
            "SELECT count(*) FROM {} g WHERE {} AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {})",
            r.green,
            not_null.join(" AND "),
            refmatch.join(" AND ")
        );
        let n: i64 = client
            .query_one(&sql, &[])
            .await
            .ctx(format!(
                "checking that every row of {} has the row of {parent} it references",
                r.green
            ))?
            .get(0);
        if n > 0 {
            problems.push(format!(
                "{n} row(s) of {} reference rows of {parent} that do not exist (constraint {} \
                 of {}, which moves to the new table)",
                r.green,
                quote_ident(&name),
                r.live
            ));
        }
    }
    Ok(problems)
}
