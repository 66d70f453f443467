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
use crate::error::{DbResultExt, Error, Result};
use crate::events::{Event, EventSink};
use crate::flip::{self, FlipKind, FlipOptions, FlipOutcome, FlipPair, QualifiedName};
use crate::ident::{qualified, quote_ident, quote_literal};

use super::capture;
use super::record::{self, Record};
use super::schemaswap::{self, SchemaSwap};

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
    /// The live schema swapped whole with its shadow schema (one rename each, [`schemaswap`]),
    /// if any; the other relations moved one by one.
    pub whole_schema: Option<String>,
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

/// Pairs and hook SQL for `rec`; with `whole`, the schema swapped whole (its emptied shadow
/// schema is not dropped: it is the live schema now).
pub fn plan(rec: &Record, whole: Option<&SchemaSwap>) -> SwapPlan {
    let mut pairs = Vec::new();
    let mut bring_in = Vec::new();
    let mut before = Vec::new();
    let mut after = Vec::new();
    // The checks under the locks, in one block (each DO costs a round of PL/pgSQL setup).
    before.push(format!(
        "DO $pgflip$ BEGIN IF EXISTS (SELECT 1 FROM {}) THEN \
         RAISE EXCEPTION 'pgflip: writes rejected by the new version since the last check; see {}'; \
         END IF; {} END $pgflip$",
        rec.rejected_sql(),
        quote_literal(&rec.rejected_sql()).trim_matches('\''),
        whole.map(SchemaSwap::recheck_plpgsql).unwrap_or_default()
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
        if whole.is_some_and(|w| w.shadow == m.shadow) {
            continue;
        }
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

fn hooked(opts: &FlipOptions, sp: &SwapPlan, whole: Option<&SchemaSwap>) -> Result<FlipOptions> {
    let mut fo = opts.clone();
    fo.schema_swap = whole.map(SchemaSwap::pair);
    fo.allow_column_changes = true;
    fo.in_flip_before = sp.before.clone();
    fo.in_flip_after = sp.after.clone();
    fo.bring_in_only = sp.bring_in.clone();
    fo.retire_only = sp.retire.clone();
    Ok(fo)
}

/// Relations the swap's one transaction locks (the flipped and moved relations, their
/// partitions, indexes, TOAST tables and their indexes, owned sequences, and the views that
/// read them), with the server's lock table size: `(needed, max_locks_per_transaction,
/// max_connections, max_prepared_transactions)`.
const LOCK_ESTIMATE_SQL: &str = "\
WITH RECURSIVE base AS ( \
    SELECT c.oid FROM pg_catalog.pg_class c WHERE c.oid = ANY($1::pg_catalog.oid[]) \
    UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN base b ON i.inhparent = b.oid \
), rels AS ( \
    SELECT oid FROM base \
    UNION SELECT x.indexrelid FROM pg_catalog.pg_index x WHERE x.indrelid IN (SELECT oid FROM base) \
    UNION SELECT c.reltoastrelid FROM pg_catalog.pg_class c \
          WHERE c.oid IN (SELECT oid FROM base) AND c.reltoastrelid <> 0 \
    UNION SELECT x.indexrelid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_index x ON x.indrelid = c.reltoastrelid \
          WHERE c.oid IN (SELECT oid FROM base) \
    UNION SELECT d.objid FROM pg_catalog.pg_depend d \
          WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
            AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
            AND d.refobjid IN (SELECT oid FROM base) AND d.deptype IN ('a', 'i') \
    UNION SELECT r.ev_class FROM pg_catalog.pg_depend d \
          JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid \
          WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
            AND d.refobjid IN (SELECT oid FROM base) \
) \
SELECT (SELECT count(*) FROM rels), \
       pg_catalog.current_setting('max_locks_per_transaction')::bigint, \
       pg_catalog.current_setting('max_connections')::bigint, \
       pg_catalog.current_setting('max_prepared_transactions')::bigint";

/// pgflip's own rows and tables the swap also locks (state, generation records).
const LOCK_ESTIMATE_SLACK: i64 = 16;

/// Refuses, before any lock, a swap whose one transaction would need more locks than the
/// server's shared lock table holds (`max_locks_per_transaction × (max_connections +
/// max_prepared_transactions)`): it would fail half-way with "out of shared memory" after
/// holding its locks, or starve every other session of locks meanwhile.
pub async fn check_lock_budget(client: &Client, sp: &SwapPlan) -> Result<()> {
    let mut names: Vec<String> = Vec::new();
    for p in sp.pairs.iter().chain(&sp.bring_in) {
        names.push(p.live.sql());
        names.push(p.green.sql());
    }
    names.extend(sp.retire.iter().map(|q| q.sql()));
    let row = client
        .query_one(
            "SELECT ARRAY(SELECT pg_catalog.to_regclass(n)::pg_catalog.oid \
             FROM unnest($1::text[]) n WHERE pg_catalog.to_regclass(n) IS NOT NULL)",
            &[&names],
        )
        .await
        .ctx("resolving the swap's relations")?;
    let oids: Vec<u32> = row.get(0);
    let r = client
        .query_one(LOCK_ESTIMATE_SQL, &[&oids])
        .await
        .ctx("estimating the swap's locks")?;
    let (rels, per, conns, prepared): (i64, i64, i64, i64) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    let needed = rels + LOCK_ESTIMATE_SLACK;
    let slots = conns + prepared;
    let capacity = per * slots;
    if needed > capacity {
        let at_least = (needed + slots - 1) / slots;
        return Err(Error::Refused(
            format!(
                "the swap would take about {needed} locks in one transaction, more than the server's lock table holds: \
                 max_locks_per_transaction = {per} × (max_connections {conns} + max_prepared_transactions {prepared}) = {capacity}. \
                 Raise max_locks_per_transaction to at least {at_least} (a restart), or migrate fewer tables at once \
                 (--exclude-table); nothing was changed"
            )
            .into(),
        ));
    }
    Ok(())
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
        let whole = schemaswap::choose(&client, &rec, &plan(&rec, None)).await?;
        let sp = plan(&rec, whole.as_ref());
        let fo = hooked(&opts.flip, &sp, whole.as_ref())?;
        let fp = flip::plan_flip(&client, &sp.pairs, FlipKind::Migrate, &fo).await?;
        return Ok(SwapOutcome {
            id: rec.id,
            flip: None,
            script: Some(
                fp.plan
                    .to_script(&[format!("pgflip migrate swap (migration {})", rec.id)]),
            ),
            whole_schema: whole.map(|w| w.live),
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
    let sp = plan(&rec, None);
    if sp.pairs.is_empty() && sp.bring_in.is_empty() && sp.retire.is_empty() {
        return Err(Error::Refused(
            format!(
                "migration {}: nothing to swap (no table to replace, bring in or retire)",
                rec.id
            )
            .into(),
        ));
    }
    check_lock_budget(client, &sp).await?;
    // One rename per schema instead of two moves per table, when a schema allows it.
    let whole = schemaswap::choose(client, &rec, &sp).await?;
    if let Some(w) = &whole {
        w.dress_shadow(client).await?;
    }
    let sp = plan(&rec, whole.as_ref());
    let fo = hooked(&opts.flip, &sp, whole.as_ref())?;
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
        whole_schema: whole.map(|w| w.live),
        warnings,
    })
}
