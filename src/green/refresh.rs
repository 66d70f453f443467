//! `green refresh`: bring green relations up to date with their base tables, upstream first.
//!
//! A materialized view is refreshed `CONCURRENTLY` when it has a unique index (someone may be
//! reading it: `status`, or a person comparing it by hand), plainly otherwise; a query-defined
//! table is emptied and refilled from its query in one transaction. Each member's new base
//! signature is recorded in the same transaction as its refresh, read (like at create) before
//! the refresh's snapshot.

use std::collections::BTreeSet;

use chrono::Utc;
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Result};
use crate::events::{Event, EventSink};

use super::{GreenRelation, RelKind};

#[derive(Debug, Clone, Serialize)]
pub struct RefreshOutcome {
    pub refreshed: Vec<String>,
    pub concurrently: Vec<String>,
}

/// The members to refresh: all of them, or `rel` and every member downstream of it.
fn selection<'a>(members: &'a [GreenRelation], rel: Option<&str>) -> Vec<&'a GreenRelation> {
    let Some(rel) = rel else {
        return members.iter().collect();
    };
    let mut chosen: BTreeSet<String> = members
        .iter()
        .filter(|m| m.live.to_string() == rel || m.live.name == rel || m.green.to_string() == rel)
        .map(|m| m.live.to_string())
        .collect();
    if chosen.is_empty() {
        return members.iter().collect();
    }
    // Members are in dependency order: one pass picks up everything downstream.
    for m in members {
        if m.member.upstream.iter().any(|u| chosen.contains(u)) {
            chosen.insert(m.live.to_string());
        }
    }
    members
        .iter()
        .filter(|m| chosen.contains(&m.live.to_string()))
        .collect()
}

pub async fn refresh(
    client: &Client,
    rel: Option<&str>,
    events: &dyn EventSink,
) -> Result<RefreshOutcome> {
    let selected = super::select(client, rel).await?;
    if selected.is_empty() {
        return Err(Error::InvalidInput(
            "no green relation is in flight: nothing to refresh".into(),
        ));
    }
    let mut out = RefreshOutcome {
        refreshed: Vec::new(),
        concurrently: Vec::new(),
    };
    super::watch::unwatch_unused(client, events).await?;
    for (schema, members) in &selected {
        let chosen = selection(members, rel);
        // Committed before each refresh's snapshot (a partition attached since create gets
        // one too), see `watch`.
        let bases: Vec<u32> = chosen
            .iter()
            .flat_map(|g| g.member.base.iter().map(|b| b.oid))
            .collect();
        super::watch::install(client, &bases, events).await?;
        super::watch::compact(client).await?;
        for g in chosen {
            let at = Utc::now();
            let sigs = super::all_signatures(client).await?;
            let green = g.green.sql();
            events.emit(Event::Info {
                message: format!("refreshing green {green}"),
            });
            let green_oid: u32 = client
                .query_one("SELECT pg_catalog.to_regclass($1)::pg_catalog.oid", &[&green])
                .await
                .ctx("finding the green relation")?
                .try_get::<_, Option<u32>>(0)
                .ctx("finding the green relation")?
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "green {green} is gone (dropped by hand?): cancel the pipeline and create it again"
                    ))
                })?;
            let work = async {
                client
                    .batch_execute(&format!(
                        // One snapshot for the refresh and the counters read after it.
                        "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL search_path = {}",
                        g.member.search_path
                    ))
                    .await
                    .ctx("starting the refresh")?;
                crate::failpoint::hit("green.refresh.before_refresh").await?;
                let reader = match g.member.kind {
                    // A view stores nothing: only its base signature is read again.
                    RelKind::View => green_oid,
                    RelKind::MaterializedView => {
                        let unique: bool = client
                            .query_one(
                                "SELECT c.relispopulated AND EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                                   WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indpred IS NULL \
                                     AND NOT (0 = ANY (i.indkey::int2[]))) \
                                 FROM pg_catalog.pg_class c WHERE c.oid = $1",
                                &[&green_oid],
                            )
                            .await
                            .ctx("looking for a unique index")?
                            .get(0);
                        client
                            .batch_execute(&format!(
                                "REFRESH MATERIALIZED VIEW {}{green}",
                                if unique { "CONCURRENTLY " } else { "" }
                            ))
                            .await
                            .map_err(|e| Error::db(format!("refreshing green {green}"), e))?;
                        if unique {
                            out.concurrently.push(g.live.to_string());
                        }
                        green_oid
                    }
                    RelKind::Table => {
                        client
                            .batch_execute(&format!(
                                "TRUNCATE {green}; INSERT INTO {green} {q}; \
                                 CREATE TEMPORARY VIEW pgflip_green_query AS {q}",
                                q = g.member.query
                            ))
                            .await
                            .map_err(|e| Error::db(format!("refilling green {green}"), e))?;
                        client
                            .query_one(
                                "SELECT 'pg_temp.pgflip_green_query'::pg_catalog.regclass::pg_catalog.oid",
                                &[],
                            )
                            .await
                            .ctx("reading what the query reads")?
                            .get(0)
                    }
                };
                let base = super::base_of(client, reader, schema, &sigs).await?;
                if g.member.kind == RelKind::Table {
                    client
                        .batch_execute("DROP VIEW pg_temp.pgflip_green_query")
                        .await
                        .ctx("dropping the temporary view")?;
                }
                let mut updated = g.clone();
                updated.member.base = base;
                updated.member.refreshed_at = at;
                client
                    .batch_execute(&super::update_member_sql(&updated, crate::state::Phase::Built))
                    .await
                    .ctx("recording the refresh")?;
                client
                    .batch_execute("COMMIT")
                    .await
                    .ctx("committing the refresh")?;
                Ok::<_, Error>(())
            }
            .await;
            if let Err(e) = work {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
            out.refreshed.push(g.live.to_string());
        }
    }
    Ok(out)
}
