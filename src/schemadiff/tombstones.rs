//! Tombstones: tables and columns that `schema diff` renamed to `<name>_dropped_<UTC ts>`
//! instead of dropping them. They are found by name (the timestamp in the name says when they
//! were retired), so no state needs to be kept for them, and removed later on purpose:
//! `pgflip cleanup --dropped --before DATE` builds its plan with [`drop_before`].

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::DbResultExt;
use crate::ident::QuotedName;
use crate::ident::{is_tombstone, quote_ident};
use crate::plan::{Hazard, LockMode, Plan, Step};
use crate::Result;

/// One tombstoned table or column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tombstone {
    pub schema: String,
    pub table: String,
    /// `None` for a whole table.
    pub column: Option<String>,
    /// When it was retired (from its name).
    pub at: DateTime<Utc>,
}

/// The time encoded in a tombstone name.
pub fn tombstone_time(name: &str) -> Option<DateTime<Utc>> {
    if !is_tombstone(name) {
        return None;
    }
    let ts = &name[name.len() - 16..];
    NaiveDateTime::parse_from_str(&ts.to_ascii_uppercase(), "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|n| n.and_utc())
}

/// Every tombstone of the database, oldest first.
pub async fn list(client: &Client) -> Result<Vec<Tombstone>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 \
               AND NOT a.attisdropped AND a.attname ~ '_dropped_[0-9]{8}t[0-9]{6}z$' \
             WHERE c.relkind IN ('r', 'p') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname !~ '^pg_toast' \
               AND (c.relname ~ '_dropped_[0-9]{8}t[0-9]{6}z$' OR a.attname IS NOT NULL)",
            &[],
        )
        .await
        .ctx("listing tombstones")?;
    let mut out = Vec::new();
    for r in rows {
        let (schema, table, column): (String, String, Option<String>) =
            (r.get(0), r.get(1), r.get(2));
        if let Some(at) = tombstone_time(&table) {
            // A tombstoned table goes whole; its columns need no entry of their own.
            if !out
                .iter()
                .any(|t: &Tombstone| t.column.is_none() && t.schema == schema && t.table == table)
            {
                out.push(Tombstone {
                    schema,
                    table,
                    column: None,
                    at,
                });
            }
        } else if let Some(at) = column.as_deref().and_then(tombstone_time) {
            out.push(Tombstone {
                schema,
                table,
                column,
                at,
            });
        }
    }
    out.sort_by(|a, b| (a.at, &a.schema, &a.table).cmp(&(b.at, &b.schema, &b.table)));
    Ok(out)
}

/// The plan that drops every tombstone retired before `before`.
pub async fn drop_before(client: &Client, before: DateTime<Utc>) -> Result<Plan> {
    let mut plan = Plan::new("drop tombstones");
    for t in list(client).await?.into_iter().filter(|t| t.at < before) {
        let table = QuotedName::qualified(&t.schema, &t.table);
        let step = match &t.column {
            None => Step::new(
                format!("Drop tombstone table {table}"),
                format!("DROP TABLE IF EXISTS {table};"),
            ),
            Some(c) => Step::new(
                format!("Drop tombstone column {} of {table}", quote_ident(c)),
                format!(
                    "ALTER TABLE {table} DROP COLUMN IF EXISTS {};",
                    quote_ident(c)
                ),
            ),
        };
        plan.push(
            step.lock(LockMode::AccessExclusive, table)
                .hazard(Hazard::DeletesData),
        );
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_time_of_a_tombstone() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let name = crate::ident::tombstone_name("orders", at);
        assert_eq!(tombstone_time(&name), Some(at));
        assert_eq!(tombstone_time("orders"), None);
    }
}
