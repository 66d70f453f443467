//! `green status`: how each green relation compares with the live one, and whether the
//! pipeline has converged (so that promote would not move readers back in time).
//!
//! Converged means: green was refreshed after the last change of every base table under it (or
//! within `max_lag` of now), no green upstream was refreshed after it, and — when neither its
//! definition nor any upstream definition changed — its contents equal live's. Contents are
//! compared by row count and an order-independent hash of both sides read in one REPEATABLE
//! READ snapshot, so a write between the two reads cannot make equal contents look different.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{DbResultExt, Result};
use crate::flip::generation;
use crate::flip::QualifiedName;

use super::{GreenRelation, RelKind};

#[derive(Debug, Clone, Default)]
pub struct StatusOptions {
    /// Green may lag the base tables by this much and still count as converged.
    pub max_lag: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub live: QualifiedName,
    pub green: QualifiedName,
    pub kind: RelKind,
    /// Given a new definition (not rebuilt over the green upstream with its current one).
    pub explicit: bool,
    /// Added by the pipeline file: nothing live to compare with.
    pub new: bool,
    pub built_at: DateTime<Utc>,
    pub refreshed_at: DateTime<Utc>,
    pub live_rows: i64,
    pub green_rows: i64,
    /// Whether the contents are equal (`None` when the column sets differ).
    pub contents_equal: Option<bool>,
    pub columns_added: Vec<String>,
    pub columns_dropped: Vec<String>,
    pub columns_retyped: Vec<String>,
    /// Its definition, or one of its green upstream's, differs from live.
    pub definition_changed: bool,
    /// Changes to the base tables since green was refreshed: writing transactions per table
    /// (counted by pgflip's trigger, exact), or, under a materialized view or foreign table,
    /// rows inserted, updated or deleted (statistics counters, which lag).
    pub base_changes: i64,
    /// Base tables whose change trigger is missing (changes there cannot be known).
    pub base_unwatched: Vec<String>,
    /// Base tables truncated or rewritten (or materialized views refreshed) since then.
    pub base_rewritten: Vec<String>,
    /// How far behind the base tables green may be: time since its refresh, when they changed.
    pub lag_seconds: Option<f64>,
    pub converged: bool,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PipelineStatus {
    pub pipeline: String,
    pub members: Vec<MemberStatus>,
    pub converged: bool,
}

async fn columns(client: &Client, rel: &str) -> Result<Vec<(String, String)>> {
    Ok(client
        .query(
            "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute \
             WHERE attrelid = pg_catalog.to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&rel],
        )
        .await
        .ctx("reading columns")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Status of one pipeline (its members in order, as [`super::select`] gives them).
pub async fn pipeline_status(
    client: &Client,
    members: &[GreenRelation],
    opts: &StatusOptions,
) -> Result<PipelineStatus> {
    let now = Utc::now();
    let mut out: Vec<MemberStatus> = Vec::new();
    // Everything read in one snapshot: counts and hashes of both sides.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .ctx("starting the status snapshot")?;
    let res = async {
        for g in members {
            let live = g.live.sql();
            let green = g.green.sql();
            let lc = if g.member.new {
                Vec::new()
            } else {
                columns(client, &live).await?
            };
            let gc = columns(client, &green).await?;
            let columns_added: Vec<String> = gc
                .iter()
                .filter(|(n, _)| !lc.iter().any(|(l, _)| l == n))
                .map(|(n, t)| format!("{} {t}", crate::ident::quote_ident(n)))
                .collect();
            let columns_dropped: Vec<String> = lc
                .iter()
                .filter(|(n, _)| !gc.iter().any(|(x, _)| x == n))
                .map(|(n, t)| format!("{} {t}", crate::ident::quote_ident(n)))
                .collect();
            let columns_retyped: Vec<String> = lc
                .iter()
                .filter_map(|(n, t)| {
                    gc.iter()
                        .find(|(x, gt)| x == n && gt != t)
                        .map(|(_, gt)| format!("{} {t} → {gt}", crate::ident::quote_ident(n)))
                })
                .collect();
            let same_columns = lc == gc;
            let (live_rows, green_rows, contents_equal) = if g.member.new {
                let n: i64 = client
                    .query_one(&format!("SELECT count(*) FROM {green}"), &[])
                    .await
                    .ctx("counting rows")?
                    .get(0);
                (0, n, None)
            } else if same_columns {
                let oids: Vec<u32> = client
                    .query(
                        "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid UNION ALL SELECT pg_catalog.to_regclass($2)::pg_catalog.oid",
                        &[&live, &green],
                    )
                    .await
                    .ctx("resolving relations")?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let method = generation::checksum_method(client, &oids).await?;
                let (lr, lh) = generation::checksum(client, &g.live.quoted(), method).await?;
                let (gr, gh) = generation::checksum(client, &g.green.quoted(), method).await?;
                (lr, gr, Some(lr == gr && lh == gh))
            } else {
                let count = |rel: String| async move {
                    client
                        .query_one(&format!("SELECT count(*) FROM {rel}"), &[])
                        .await
                        .ctx("counting rows")
                        .map(|r| r.get::<_, i64>(0))
                };
                (count(live.clone()).await?, count(green.clone()).await?, None)
            };

            let oids: Vec<u32> = g.member.base.iter().map(|b| b.oid).collect();
            let current = super::signatures(client, &oids).await?;
            let mut base_changes = 0;
            let mut base_rewritten = Vec::new();
            let mut base_unwatched = Vec::new();
            for b in &g.member.base {
                match current.iter().find(|c| c.oid == b.oid) {
                    Some(c) => {
                        match (b.watched, c.watched) {
                            // Exact: counted by the trigger, in this snapshot.
                            (true, true) => base_changes += c.changes - b.changes,
                            // The trigger is gone (dropped by hand, or a partition attached
                            // since): changes cannot be known.
                            (true, false) => base_unwatched.push(b.name.clone()),
                            // Statistics counters (they lag).
                            _ => base_changes += (c.changes - b.changes).abs(),
                        }
                        if c.filenode != b.filenode {
                            base_rewritten.push(b.name.clone());
                        }
                    }
                    None => base_rewritten.push(format!("{} (dropped)", b.name)),
                }
            }
            let stale =
                base_changes > 0 || !base_rewritten.is_empty() || !base_unwatched.is_empty();
            let lag = (now - g.member.refreshed_at).to_std().unwrap_or_default();
            let upstream_later: Vec<String> = g
                .member
                .upstream
                .iter()
                .filter(|u| {
                    members.iter().any(|m| {
                        &m.live.to_string() == *u && m.member.refreshed_at > g.member.refreshed_at
                    })
                })
                .cloned()
                .collect();
            let definition_changed = g.member.definition_changed
                || g.member.upstream.iter().any(|u| {
                    out.iter()
                        .any(|m| &m.live.to_string() == u && m.definition_changed)
                });
            let mut not = Vec::new();
            if stale {
                let within = opts.max_lag.is_some_and(|m| lag <= m);
                if !within {
                    let mut what = Vec::new();
                    if base_changes > 0 {
                        what.push(format!("{base_changes} change(s)"));
                    }
                    if !base_unwatched.is_empty() {
                        what.push(format!(
                            "{} no longer watched (a partition attached since, or the trigger {} dropped)",
                            base_unwatched.join(", "),
                            super::watch::TRIGGER
                        ));
                    }
                    if !base_rewritten.is_empty() {
                        what.push(format!("{} rewritten", base_rewritten.join(", ")));
                    }
                    not.push(format!(
                        "its base tables changed since green was refreshed {:.0} s ago ({}): run `pgflip green refresh`",
                        lag.as_secs_f64(),
                        what.join("; ")
                    ));
                }
            }
            if !upstream_later.is_empty() {
                not.push(format!(
                    "its upstream {} was refreshed after it",
                    upstream_later.join(", ")
                ));
            }
            if !definition_changed && contents_equal == Some(false) {
                not.push(format!(
                    "the definition did not change but the contents differ from live ({live_rows} rows live, {green_rows} green): live may be stale, or the query is not deterministic"
                ));
            }
            if definition_changed {
                // Nothing more to compare: different definitions give different rows.
            } else if contents_equal.is_none() {
                not.push("the column set changed although the definition did not".into());
            }
            let converged = not.is_empty();
            let reason = if converged {
                if stale {
                    format!(
                        "refreshed {:.0} s ago, within --max-lag",
                        lag.as_secs_f64()
                    )
                } else if g.member.new {
                    "new (nothing live has its name yet), refreshed after the base tables' last change".to_string()
                } else if definition_changed {
                    "refreshed after the base tables' last change".to_string()
                } else {
                    "refreshed after the base tables' last change, same contents as live".to_string()
                }
            } else {
                not.join("; ")
            };
            out.push(MemberStatus {
                live: g.live.clone(),
                green: g.green.clone(),
                kind: g.member.kind,
                explicit: g.member.explicit,
                new: g.member.new,
                built_at: g.member.built_at,
                refreshed_at: g.member.refreshed_at,
                live_rows,
                green_rows,
                contents_equal,
                columns_added,
                columns_dropped,
                columns_retyped,
                definition_changed,
                base_changes,
                base_unwatched,
                base_rewritten,
                lag_seconds: stale.then_some(lag.as_secs_f64()),
                converged,
                reason,
            });
        }
        Ok::<_, crate::Error>(())
    }
    .await;
    let _ = client.batch_execute("COMMIT").await;
    res?;
    let converged = out.iter().all(|m| m.converged);
    Ok(PipelineStatus {
        pipeline: members
            .first()
            .map(|m| m.member.pipeline.clone())
            .unwrap_or_default(),
        members: out,
        converged,
    })
}

/// Status of the pipeline holding `rel`, or of every pipeline.
pub async fn status(
    client: &Client,
    rel: Option<&str>,
    opts: &StatusOptions,
) -> Result<Vec<PipelineStatus>> {
    let mut out = Vec::new();
    for (_, members) in super::select(client, rel).await? {
        out.push(pipeline_status(client, &members, opts).await?);
    }
    Ok(out)
}
