//! `migrate status`: where the migration in flight stands, and whether a swap would be allowed.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{DbResultExt, Result};

use super::record::{self, Phase, Record};

/// A write a shadow table rejected.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub table: String,
    pub operation: String,
    pub sqlstate: Option<String>,
    pub message: Option<String>,
    pub row: Option<serde_json::Value>,
}

/// The migration in flight, as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateStatus {
    pub record: Record,
    /// Writes forwarded into the shadow tables so far.
    pub forwarded: i64,
    pub rejected: i64,
    /// The first rejected writes.
    pub rejected_samples: Vec<Rejected>,
    /// Preserved tables whose capture trigger is missing or disabled.
    pub missing_triggers: Vec<String>,
    /// Whether the prepare that wrote the record is still running.
    pub preparing: bool,
    pub swap_allowed: bool,
    /// Why not, when it is not.
    pub reasons: Vec<String>,
    /// What a rollback of this migration (once swapped) does not take back.
    pub rollback_keeps: Vec<String>,
}

/// The migrations in flight (none when nothing is prepared). Reads only.
pub async fn status(client: &Client) -> Result<Vec<MigrateStatus>> {
    let mut out = Vec::new();
    for rec in record::load(client).await? {
        out.push(status_of(client, rec).await?);
    }
    Ok(out)
}

pub(crate) async fn status_of(client: &Client, rec: Record) -> Result<MigrateStatus> {
    let forwarded: i64 = client
        .query_one(
            "SELECT CASE WHEN to_regclass($1) IS NULL THEN 0 ELSE \
             (SELECT coalesce(last_value, 0) FROM pg_catalog.pg_sequences \
              WHERE schemaname = 'pgflip' AND sequencename = $2) END",
            &[&rec.forwarded_sql(), &rec.forwarded_sequence],
        )
        .await
        .ctx("reading the forwarded-writes counter")?
        .get::<_, Option<i64>>(0)
        .unwrap_or(0);
    let has_rejected: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&rec.rejected_sql()])
        .await
        .ctx("looking for the rejected writes")?
        .get(0);
    let (rejected, rejected_samples) = if has_rejected {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {}", rec.rejected_sql()), &[])
            .await
            .ctx("counting rejected writes")?
            .get(0);
        let rows = client
            .query(
                &format!(
                    "SELECT table_name, operation, sqlstate, message, row_data FROM {} ORDER BY id LIMIT 5",
                    rec.rejected_sql()
                ),
                &[],
            )
            .await
            .ctx("reading rejected writes")?;
        (
            n,
            rows.iter()
                .map(|r| Rejected {
                    table: r.get(0),
                    operation: r.get(1),
                    sqlstate: r.get(2),
                    message: r.get(3),
                    row: r.get(4),
                })
                .collect(),
        )
    } else {
        (0, Vec::new())
    };
    let mut missing_triggers = Vec::new();
    for (t, p) in rec.preserved() {
        let ok: bool = client
            .query_one(
                "SELECT count(*) = 2 FROM pg_catalog.pg_trigger \
                 WHERE tgrelid = to_regclass($1) AND tgname IN ($2, $3) AND tgenabled = 'A'",
                &[&t.live_sql(), &p.trigger, &p.truncate_trigger],
            )
            .await
            .ctx("looking for the capture triggers")?
            .get(0);
        if !ok {
            missing_triggers.push(t.live_sql());
        }
    }
    let preparing = rec.phase != Phase::Prepared
        && record::backend_alive(client, rec.prepare_pid).await?
        && client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' \
                 AND classid = $1::int::oid AND objid = $2::int::oid AND pid = $3)",
                &[
                    &crate::state::LOCK_CLASSID,
                    &crate::state::LOCK_OBJID_TARGET,
                    &rec.prepare_pid,
                ],
            )
            .await
            .ctx("looking for the preparing session")?
            .get::<_, bool>(0);
    let mut reasons = Vec::new();
    if rec.phase != Phase::Prepared {
        reasons.push(if preparing {
            format!("prepare is still running ({})", rec.phase.as_str())
        } else {
            format!(
                "prepare stopped while {} (rerun prepare, or abort)",
                rec.phase.as_str()
            )
        });
    }
    if rejected > 0 {
        reasons.push(format!(
            "{rejected} write(s) of the application were rejected by the new version (see {})",
            rec.rejected_sql()
        ));
    }
    if rec.phase == Phase::Prepared && !missing_triggers.is_empty() {
        reasons.push(format!(
            "capture triggers are missing or disabled on {}: the shadow copies may have missed writes",
            missing_triggers.join(", ")
        ));
    }
    let mut rollback_keeps: Vec<String> = rec
        .added_objects
        .iter()
        .map(|(k, s, n)| {
            if s.is_empty() {
                format!("{k} {}", crate::ident::quote_ident(n))
            } else {
                format!("{k} {}.{n}", crate::ident::quote_ident(s))
            }
        })
        .collect();
    rollback_keeps.push("types as the swap changes them (enum labels cannot be removed)".into());
    Ok(MigrateStatus {
        rollback_keeps,
        swap_allowed: reasons.is_empty(),
        record: rec,
        forwarded,
        rejected,
        rejected_samples,
        missing_triggers,
        preparing,
        reasons,
    })
}
