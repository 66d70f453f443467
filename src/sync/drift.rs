//! What the live table received while its staging table was loaded and reviewed.
//!
//! A swap retires the live table: rows the application wrote to it after the staging load
//! began leave with it. So the staging load, and the `--show-diff` that follows it, record a
//! *marker* of the live table in the staging table's operation (`pgflip.operations.details`):
//! the snapshot of the statement that counted the live table's rows, and that count. Later,
//! one scan of the table says exactly what changed since:
//!
//! - `written`: rows whose version (`xmin`) the marker's snapshot does not see: inserted or
//!   updated since;
//! - `gone`: rows of the marked version that are no longer there unchanged (updated or
//!   deleted since): `rows then - (rows now - written)`.
//!
//! Both zero means the table holds exactly the row versions it held at the marker.
//!
//! Why not the statistics counters (`n_tup_ins` / `n_tup_upd` / `n_tup_del`): they are
//! published up to a second late (later still under load on 14's collector), are reset by
//! `pg_stat_reset`, and count the writes of transactions that rolled back. A snapshot is exact,
//! needs no trigger on the live table, and costs one read of the table at each end. Its one
//! blind spot: after a transaction-ID wraparound, a row frozen more than 2^31 transactions
//! before the marker can read as written (a false "changed", never a missed change).

use tokio_postgres::Client;

use crate::error::{DbResultExt, Result};
use crate::ident::quote_literal;

/// Key of the marker taken when the staging load began.
pub const LOAD: &str = "load_marker";
/// Key of the marker taken in the snapshot `--show-diff` compared in.
pub const DIFF: &str = "diff_marker";

/// A jsonb `{snapshot, rows, at}` of `live` (qualified), all read in one statement's snapshot.
fn marker_expr(live: &str) -> String {
    format!(
        "(SELECT pg_catalog.jsonb_build_object('snapshot', pg_catalog.pg_current_snapshot()::text, \
           'rows', pg_catalog.count(*), 'at', pg_catalog.clock_timestamp()) FROM ONLY {live})"
    )
}

/// SQL storing a marker of `live` under `key` in the operation of staging table `green`.
pub fn record_marker_sql(green: (&str, &str), key: &str, live: &str) -> String {
    format!(
        "UPDATE pgflip.operations SET details = details || \
         pg_catalog.jsonb_build_object({}, {}) WHERE green_schema = {} AND green_name = {}",
        quote_literal(key),
        marker_expr(live),
        quote_literal(green.0),
        quote_literal(green.1)
    )
}

/// Reads a marker of `live` in the caller's snapshot (a REPEATABLE READ transaction that then
/// runs the diff, so that the marker is exactly what the diff saw).
pub async fn read_marker(client: &Client, live: &str) -> Result<serde_json::Value> {
    Ok(client
        .query_one(&format!("SELECT {}", marker_expr(live)), &[])
        .await
        .ctx(format!("reading the state of {live}"))?
        .get(0))
}

/// Stores `marker` under `key` in the operation of staging table `green`.
pub async fn store_marker(
    client: &Client,
    green: (&str, &str),
    key: &str,
    marker: &serde_json::Value,
) -> Result<()> {
    client
        .execute(
            "UPDATE pgflip.operations SET details = details || jsonb_build_object($1::text, $2::jsonb) \
             WHERE green_schema = $3 AND green_name = $4",
            &[&key, marker, &green.0, &green.1],
        )
        .await
        .ctx("recording the state of the live table")?;
    Ok(())
}

/// The markers recorded for staging table `green`: (at the load, at the diff). None when
/// pgflip keeps no state or the staging table has no operation (loaded by an older pgflip).
pub async fn markers(
    client: &Client,
    green: (&str, &str),
) -> Result<(Option<serde_json::Value>, Option<serde_json::Value>)> {
    if !crate::state::exists(client).await? {
        return Ok((None, None));
    }
    let row = client
        .query_opt(
            "SELECT details -> $1::text, details -> $2::text FROM pgflip.operations \
             WHERE green_schema = $3 AND green_name = $4",
            &[&LOAD, &DIFF, &green.0, &green.1],
        )
        .await
        .ctx("reading the staging table's record")?;
    Ok(match row {
        Some(r) => (r.get(0), r.get(1)),
        None => (None, None),
    })
}

/// What `relation` (the live table, or the retired one after a swap) changed since `marker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    /// Rows inserted or updated since.
    pub written: u64,
    /// Rows of the marked version updated or deleted since.
    pub gone: u64,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.written > 0 || self.gone > 0
    }

    /// "12 rows written (inserted or updated) and 3 rows gone (updated or deleted)".
    pub fn describe(&self) -> String {
        let rows = |n: u64| if n == 1 { "row" } else { "rows" };
        format!(
            "{} {} written (inserted or updated) and {} {} gone (updated or deleted)",
            self.written,
            rows(self.written),
            self.gone,
            rows(self.gone)
        )
    }
}

/// Counts what `relation` (qualified) changed since `marker`, in one read of it.
pub async fn changes_since(
    client: &Client,
    relation: &str,
    marker: &serde_json::Value,
) -> Result<Changes> {
    let snapshot = marker
        .get("snapshot")
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_string();
    let then = marker.get("rows").and_then(|r| r.as_i64()).unwrap_or(0);
    // xmin is a 32-bit xid: it gets the epoch of the current snapshot's xmax (every committed
    // row this statement sees is below it), or the previous epoch when that would put it at or
    // past xmax. Xids below 3 (bootstrap, frozen) are older than any snapshot.
    let sql = format!(
        "WITH m AS (SELECT $1::text::pg_catalog.pg_snapshot AS snap, x.nx, (x.nx >> 32) << 32 AS base \
                    FROM (SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::bigint AS nx) x) \
         SELECT pg_catalog.count(*)::bigint, \
                (pg_catalog.count(*) FILTER (WHERE f.fx >= 3 \
                   AND NOT pg_catalog.pg_visible_in_snapshot(f.fx::text::pg_catalog.xid8, m.snap)))::bigint \
         FROM ONLY {relation} t CROSS JOIN m \
         CROSS JOIN LATERAL (SELECT CASE WHEN t.xmin::text::bigint < 3 THEN 0 \
                                         WHEN m.base + t.xmin::text::bigint >= m.nx \
                                           THEN m.base + t.xmin::text::bigint - 4294967296 \
                                         ELSE m.base + t.xmin::text::bigint END AS fx) f"
    );
    let row = client
        .query_one(&sql, &[&snapshot])
        .await
        .ctx(format!("counting the changes to {relation}"))?;
    let (now, written): (i64, i64) = (row.get(0), row.get(1));
    Ok(Changes {
        written: written.max(0) as u64,
        gone: (then - (now - written)).max(0) as u64,
    })
}

/// The markers of one swapped table, read before the flip (the flip deletes the operation).
#[derive(Debug, Clone)]
pub struct Marked {
    /// The live table (quoted, qualified), as the generation names it.
    pub live: String,
    pub load: Option<serde_json::Value>,
    pub diff: Option<serde_json::Value>,
}

/// What one table received while its staging table waited, counted on the retired table once
/// the swap committed: nothing writes to it any more, so the count is exact up to the flip.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Received {
    /// The live table (quoted, qualified).
    pub table: String,
    /// Where those rows are now.
    pub retired: String,
    /// Since the staging load began (None: the staging table carries no marker).
    pub since_load: Option<Changes>,
    /// Since the diff `--show-diff` showed (None: no diff was shown).
    pub since_diff: Option<Changes>,
}

/// Counts, for every swapped table with a marker, what it received since the staging load
/// (and since the diff), on its retired table; records the counts in the generation's
/// `details.live_changes`.
pub async fn after_swap(
    client: &Client,
    generation: &crate::flip::Generation,
    marked: &[Marked],
) -> Result<Vec<Received>> {
    let mut out = Vec::new();
    for m in marked {
        if m.load.is_none() && m.diff.is_none() {
            continue;
        }
        let Some(r) = generation.relations.iter().find(|r| r.live() == m.live) else {
            continue;
        };
        let retired = r.retired();
        let since_load = match &m.load {
            Some(v) => Some(changes_since(client, &retired, v).await?),
            None => None,
        };
        let since_diff = match &m.diff {
            Some(v) => Some(changes_since(client, &retired, v).await?),
            None => None,
        };
        out.push(Received {
            table: m.live.clone(),
            retired,
            since_load,
            since_diff,
        });
    }
    if !out.is_empty() {
        let v = serde_json::to_value(&out).expect("plain data");
        client
            .execute(
                "UPDATE pgflip.generations SET details = details || jsonb_build_object('live_changes', $1::jsonb) \
                 WHERE label = $2",
                &[&v, &generation.label],
            )
            .await
            .ctx("recording the live tables' changes in the generation")?;
    }
    Ok(out)
}
