//! `migrate abort`: remove everything prepare created, whatever phase it reached.
//!
//! Only what the record names is dropped, each with `IF EXISTS` (a crash may have stopped
//! prepare before a piece existed): the capture triggers and functions (first, under a short
//! lock timeout with retries, since they sit on live tables), then the shadow schemas, the
//! rejected-writes table, the forwarded-writes counter, live schemas prepare created (only if
//! empty), and the record itself, in one transaction.

use std::time::Duration;

use tokio_postgres::Client;

use crate::error::Result;
use crate::events::{Event, EventSink};
use crate::ident::{quote_ident, quote_literal};

use super::capture;
use super::record::{self, Record};

/// What abort removed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AbortReport {
    pub id: i64,
    pub phase: String,
    pub dropped_schemas: Vec<String>,
    pub dropped_triggers: usize,
}

/// Aborts the migration in flight on `client`'s database. The caller holds the target lock.
pub async fn abort(
    client: &Client,
    lock_timeout: Duration,
    max_wait: Duration,
    events: &dyn EventSink,
) -> Result<AbortReport> {
    let rec = record::load_one(client).await?;
    abort_record(client, &rec, lock_timeout, max_wait, events).await?;
    Ok(AbortReport {
        id: rec.id,
        phase: rec.phase.as_str().to_string(),
        dropped_schemas: rec.schemas.iter().map(|m| m.shadow.clone()).collect(),
        dropped_triggers: rec.preserved().count() * 2,
    })
}

/// Removes what `rec` names.
pub async fn abort_record(
    client: &Client,
    rec: &Record,
    lock_timeout: Duration,
    max_wait: Duration,
    events: &dyn EventSink,
) -> Result<()> {
    events.emit(Event::PhaseStarted {
        phase: format!("aborting migration {}", rec.id),
    });
    crate::failpoint::hit("migrate.abort.start").await?;
    for (t, p) in rec.preserved() {
        // The live table may be gone (dropped by the application): nothing to remove there.
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t.live_sql()])
            .await
            .map(|r| r.get(0))
            .unwrap_or(true);
        let sql = if exists {
            capture::remove_sql(t, p)
        } else {
            format!(
                "DROP FUNCTION IF EXISTS {}()",
                crate::ident::qualified(crate::state::SCHEMA, &p.function)
            )
        };
        super::run_locked_retry(
            client,
            &sql,
            &format!("removing the capture trigger of {}", t.live_sql()),
            lock_timeout,
            max_wait,
            events,
        )
        .await?;
    }
    crate::failpoint::hit("migrate.abort.triggers").await?;
    let mut sql = String::new();
    for m in &rec.schemas {
        sql.push_str(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE;\n",
            quote_ident(&m.shadow)
        ));
    }
    // What prepare added for the new tables (types, functions, ...), dependents first.
    for d in &rec.added_drops {
        sql.push_str(d);
        sql.push_str(";\n");
    }
    sql.push_str(&format!(
        "DROP TABLE IF EXISTS {};\nDROP SEQUENCE IF EXISTS {};\n",
        rec.rejected_sql(),
        rec.forwarded_sql()
    ));
    for m in rec.schemas.iter().filter(|m| m.created_live) {
        // Only when empty: something else may have been put there since.
        sql.push_str(&format!(
            "DO $pgflip$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
             JOIN pg_catalog.pg_namespace n ON d.refobjid = n.oid AND d.refclassid = 'pg_catalog.pg_namespace'::regclass \
             WHERE n.nspname = {lit}) AND EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = {lit}) \
             THEN EXECUTE 'DROP SCHEMA ' || pg_catalog.quote_ident({lit}); END IF; END $pgflip$;\n",
            lit = quote_literal(&m.live)
        ));
    }
    sql.push_str(&rec.delete_sql());
    super::run_locked_retry(
        client,
        &sql,
        &format!("removing migration {}", rec.id),
        lock_timeout,
        max_wait,
        events,
    )
    .await?;
    Ok(())
}
