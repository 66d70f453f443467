//! `migrate swap`: one flip of every pair, through the flip engine (DESIGN §5).
//!
//! Pairs are the migrated tables the target already has (live ↔ shadow; partitions too, so
//! that a partitioned table's partitions move with it). Inside the flip transaction, once every
//! lock is held (`in_flip_before`): the rejected-writes check (a write rejected by the new
//! version refuses the swap; no write can land after the check, the tables are locked) and the
//! capture triggers are dropped, so no write falls between the last forward and the switch.
//! After the moves (`in_flip_after`): the tables new in the source move from the shadow schema
//! into the live one, pgflip's helpers for this migration are dropped and the record is
//! deleted, all in the same transaction. The emptied shadow schemas are dropped after the
//! commit.

use std::sync::Arc;

use serde::Serialize;
use tokio_postgres::Client;

use crate::conn::Endpoint;
use crate::error::{Error, Result};
use crate::events::{Event, EventSink};
use crate::flip::{self, FlipKind, FlipOptions, FlipOutcome, FlipPair, QualifiedName};
use crate::ident::{qualified, quote_ident, quote_literal};

use super::capture;
use super::record::{self, Record};

/// How a swap behaves.
#[derive(Debug, Clone)]
pub struct SwapOptions {
    /// Lock timeout, deadline, statement timeout of the flip.
    pub flip: FlipOptions,
    /// Print the flip's plan, change nothing.
    pub dry_run: bool,
}

/// What a swap did.
#[derive(Debug, Clone, Serialize)]
pub struct SwapOutcome {
    pub id: i64,
    pub flip: Option<FlipOutcome>,
    /// With `dry_run`: the flip's script.
    pub script: Option<String>,
    pub warnings: Vec<String>,
}

/// The flip's pairs and the SQL of its hooks.
pub struct SwapPlan {
    pub pairs: Vec<FlipPair>,
    /// Tables new in the source: brought in alone (a rollback retires them).
    pub bring_in: Vec<FlipPair>,
    /// Target tables the source lacks: retired alone (a rollback brings them back).
    pub retire: Vec<QualifiedName>,
    pub before: Vec<String>,
    pub after: Vec<String>,
}

/// Pairs and hook SQL for `rec`.
pub fn plan(rec: &Record) -> SwapPlan {
    let mut pairs = Vec::new();
    let mut bring_in = Vec::new();
    let mut before = Vec::new();
    let mut after = Vec::new();
    before.push(format!(
        "DO $pgflip$ BEGIN IF EXISTS (SELECT 1 FROM {}) THEN \
         RAISE EXCEPTION 'pgflip: writes rejected by the new version since the last check; see {}'; \
         END IF; END $pgflip$",
        rec.rejected_sql(),
        quote_literal(&rec.rejected_sql()).trim_matches('\'')
    ));
    for (t, p) in rec.preserved() {
        before.extend(capture::drop_triggers_sql(t, p));
    }
    let on_target = |k: &(String, String)| {
        rec.tables
            .iter()
            .any(|t| t.on_target && t.schema == k.0 && t.name == k.1)
    };
    for t in &rec.tables {
        // A partition moves with its partitioned table when that is flipped.
        if let Some(root) = t.root.as_ref().filter(|r| on_target(r)) {
            let _ = root;
            continue;
        }
        if t.on_target && !t.partition {
            pairs.push(FlipPair {
                live: QualifiedName::new(t.schema.clone(), t.name.clone()),
                green: QualifiedName::new(t.shadow_schema.clone(), t.name.clone()),
            });
        } else {
            bring_in.push(FlipPair {
                live: QualifiedName::new(t.schema.clone(), t.name.clone()),
                green: QualifiedName::new(t.shadow_schema.clone(), t.name.clone()),
            });
        }
    }
    for m in &rec.matviews {
        if m.on_target {
            // Built beside over the new tables; flipped like a table (rollback flips it back).
            pairs.push(FlipPair {
                live: QualifiedName::new(m.schema.clone(), m.name.clone()),
                green: QualifiedName::new(m.shadow_schema.clone(), m.name.clone()),
            });
            continue;
        }
        after.push(format!(
            "ALTER MATERIALIZED VIEW {} SET SCHEMA {}",
            qualified(&m.shadow_schema, &m.name),
            quote_ident(&m.schema)
        ));
    }
    // The rest of the source's schema (functions, views, triggers, policies, comments, grants
    // of new tables…): catalog steps decided by the schema diff during prepare.
    if !rec.after_swap.is_empty() {
        after.push("SET LOCAL check_function_bodies = false".into());
        after.extend(rec.after_swap.iter().cloned());
    }
    for (_, p) in rec.preserved() {
        after.push(format!(
            "DROP FUNCTION {}()",
            qualified(crate::state::SCHEMA, &p.function)
        ));
    }
    // The shadow schemas are empty now (everything moved): dropped in the same transaction, so
    // a pgflip killed right after the commit leaves nothing behind. Not CASCADE: anything left
    // in one fails the swap, changing nothing, rather than being dropped unseen.
    for m in &rec.schemas {
        after.push(format!("DROP SCHEMA {}", quote_ident(&m.shadow)));
    }
    // What the rollback needs to undo the schema step goes with the generation.
    after.push(super::reverse::record_from_operation_sql(rec.id));
    after.push(format!("DROP TABLE {}", rec.rejected_sql()));
    after.push(format!("DROP SEQUENCE {}", rec.forwarded_sql()));
    after.push(rec.delete_sql());
    SwapPlan {
        pairs,
        bring_in,
        retire: rec
            .extra_tables
            .iter()
            .map(|(s, n)| QualifiedName::new(s.clone(), n.clone()))
            .collect(),
        before,
        after,
    }
}

fn hooked(opts: &FlipOptions, sp: &SwapPlan) -> Result<FlipOptions> {
    let mut fo = opts.clone();
    fo.allow_column_changes = true;
    fo.in_flip_before = sp.before.clone();
    fo.in_flip_after = sp.after.clone();
    fo.bring_in_only = sp.bring_in.clone();
    fo.retire_only = sp.retire.clone();
    Ok(fo)
}

/// Swaps the prepared migration in. Holds pgflip's target lock.
pub async fn swap(
    target: &Endpoint,
    opts: &SwapOptions,
    events: &dyn EventSink,
) -> Result<SwapOutcome> {
    let client = Arc::new(target.connect().await?);
    if opts.dry_run {
        let rec = record::load_one(&client).await?;
        let sp = plan(&rec);
        let fo = hooked(&opts.flip, &sp)?;
        let fp = flip::plan_flip(&client, &sp.pairs, FlipKind::Migrate, &fo).await?;
        return Ok(SwapOutcome {
            id: rec.id,
            flip: None,
            script: Some(
                fp.plan
                    .to_script(&[format!("pgflip migrate swap (migration {})", rec.id)]),
            ),
            warnings: fp.warnings,
        });
    }
    crate::state::with_target_lock(client, "migrate swap", |c| async move {
        swap_locked(&c, opts, events).await
    })
    .await
}

async fn swap_locked(
    client: &Client,
    opts: &SwapOptions,
    events: &dyn EventSink,
) -> Result<SwapOutcome> {
    let rec = record::load_one(client).await?;
    let st = super::status::status_of(client, rec.clone()).await?;
    if !st.swap_allowed {
        return Err(Error::Refused(
            format!(
                "migration {} cannot be swapped: {}",
                rec.id,
                st.reasons.join("; ")
            )
            .into(),
        ));
    }
    crate::failpoint::hit("migrate.swap.checked").await?;
    let sp = plan(&rec);
    if sp.pairs.is_empty() && sp.bring_in.is_empty() && sp.retire.is_empty() {
        return Err(Error::Refused(
            format!(
                "migration {}: nothing to swap (no table to replace, bring in or retire)",
                rec.id
            )
            .into(),
        ));
    }
    let fo = hooked(&opts.flip, &sp)?;
    let outcome = flip::flip(client, &sp.pairs, FlipKind::Migrate, &fo, events).await?;
    crate::failpoint::hit("migrate.swap.flipped").await?;
    let mut warnings = Vec::new();
    for m in &rec.schemas {
        let sql = format!("DROP SCHEMA IF EXISTS {}", quote_ident(&m.shadow));
        if let Err(e) = client.batch_execute(&sql).await {
            let msg = format!(
                "the swap committed, but shadow schema {} could not be dropped: {e}",
                quote_ident(&m.shadow)
            );
            events.emit(Event::Warning {
                message: msg.clone(),
            });
            warnings.push(msg);
        }
    }
    Ok(SwapOutcome {
        id: rec.id,
        flip: Some(outcome),
        script: None,
        warnings,
    })
}
