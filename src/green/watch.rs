//! Knowing, without lag, whether a base table changed since green was refreshed.
//!
//! PostgreSQL's statistics counters are published late (PostgreSQL 14's collector up to a
//! second after a write; later versions when the writing session flushes), so green could look
//! converged right after a write. Instead, while a pipeline is in flight, every table under it
//! (and each of its partitions) carries a statement-level trigger, `pgflip_green_watch`, that
//! adds a row to `pgflip.green_changes` *in the writing transaction*. The row becomes visible
//! exactly when the write does, so counters read in the same snapshot as a build or a refresh
//! say exactly what that snapshot holds: any later committed write is counted, and nothing that
//! the snapshot already holds is.
//!
//! Why these choices:
//! - One row per writing transaction and table (deduplicated through a transaction-local
//!   setting), insert only, no index: writers never wait for each other or for pgflip, and no
//!   serializable application transaction can fail on a predicate lock because of it. pgflip
//!   folds the rows into one per table (same sum) when it creates or refreshes.
//! - The insert runs in an exception block: if it fails for any reason the application's
//!   write goes on (the change is then not counted). The function is `SECURITY DEFINER` so
//!   that application roles need no privilege on `pgflip`.
//! - `ENABLE ALWAYS`: a logical-replication apply or a `session_replication_role = replica`
//!   session writes too.
//! - The triggers are committed before the snapshot of the build or refresh is taken: a write
//!   that is not in the snapshot commits after it, so it fired the trigger (`CREATE TRIGGER`
//!   waits for the writers in flight, whose writes are then in the snapshot).
//! - Materialized views and foreign tables cannot carry triggers: under them green still reads
//!   the statistics counters and file nodes, which lag (the README says so).
//! - Installing and removing a trigger takes a strong lock on the application's table for a
//!   catalog change: each runs alone under a short `lock_timeout`, retried with backoff
//!   ([`crate::lockwait`]). Triggers no in-flight pipeline needs are removed by cancel, after
//!   promote, on a failed create, and by the next green command after a crash.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Result};
use crate::events::{Event, EventSink};
use crate::ident::{quote_literal, QuotedName};

/// Name of the trigger on watched tables.
pub const TRIGGER: &str = "pgflip_green_watch";

/// How long one trigger change may wait for its lock, in total, before giving up.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// `lock_timeout` of one attempt.
const LOCK_TIMEOUT_MS: u32 = 100;

/// State migration 4: the change table, the trigger function, the signature function shared by
/// `green status` and the `pgflip.green_status` view, and the read-only views.
pub const STATE_SQL: &str = r#"
CREATE TABLE pgflip.green_changes (
    relid   oid NOT NULL,
    changes bigint NOT NULL DEFAULT 1
);
COMMENT ON TABLE pgflip.green_changes IS
    'pgflip green: one row per transaction that wrote a table under a green pipeline (folded per table by pgflip)';

CREATE FUNCTION pgflip.green_bump() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $pgflip_fn$
DECLARE
    k text := 'pgflip.green_w' || TG_RELID::text;
BEGIN
    IF current_setting(k, true) IS DISTINCT FROM 'y' THEN
        BEGIN
            INSERT INTO pgflip.green_changes (relid) VALUES (TG_RELID);
            PERFORM set_config(k, 'y', true);
        EXCEPTION WHEN OTHERS THEN
            NULL; -- never fail the application's write
        END;
    END IF;
    RETURN NULL;
END
$pgflip_fn$;

-- A relation's signature: the trigger counter, the statistics counters and the file nodes,
-- summed over its partitions, and whether every one of them carries the watch trigger.
CREATE FUNCTION pgflip.green_signature(rel oid,
    OUT counter bigint, OUT stats bigint, OUT filenode bigint, OUT watched boolean,
    OUT present boolean)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $pgflip_fn$
    WITH t AS (
        SELECT c.oid, c.relkind, c.relfilenode FROM pg_catalog.pg_class c
         WHERE c.oid = rel
            OR c.oid IN (SELECT p.relid FROM pg_catalog.pg_partition_tree(rel::pg_catalog.regclass) p))
    SELECT
        (SELECT coalesce(sum(g.changes), 0)::bigint FROM pgflip.green_changes g
          WHERE g.relid IN (SELECT t.oid FROM t)),
        (SELECT coalesce(sum(s.n_tup_ins + s.n_tup_upd + s.n_tup_del), 0)::bigint
           FROM pg_catalog.pg_stat_all_tables s WHERE s.relid IN (SELECT t.oid FROM t)),
        (SELECT coalesce(sum(t.relfilenode::bigint), 0)::bigint FROM t),
        coalesce((SELECT bool_and(t.relkind IN ('r', 'p') AND EXISTS (
                      SELECT 1 FROM pg_catalog.pg_trigger tg
                       WHERE tg.tgrelid = t.oid AND tg.tgname = 'pgflip_green_watch'
                         AND tg.tgfoid = 'pgflip.green_bump()'::pg_catalog.regprocedure
                         AND tg.tgenabled = 'A'))
                    FROM t), false),
        EXISTS (SELECT 1 FROM t WHERE t.oid = rel)
$pgflip_fn$;

-- Every green relation in flight, and how fresh it is. "fresh" is what `pgflip green status`
-- calls converged, without its contents comparison (a hash reading both sides whole) and
-- without --max-lag: run `pgflip green status` for those.
CREATE VIEW pgflip.green_status AS
SELECT o.details->>'pipeline' AS pipeline,
       (o.details->>'position')::int AS position,
       format('%I.%I', o.live_schema, o.live_name) AS live,
       format('%I.%I', o.green_schema, o.green_name) AS green,
       o.details->>'kind' AS kind,
       (o.details->>'explicit')::boolean AS explicit,
       (o.details->>'definition_changed')::boolean AS definition_changed,
       (o.details->>'built_at')::timestamptz AS built_at,
       (o.details->>'refreshed_at')::timestamptz AS refreshed_at,
       s.base_changes,
       s.base_rewritten,
       s.base_unwatched,
       (s.base_changes > 0 OR s.base_rewritten <> '{}' OR s.base_unwatched <> '{}') AS stale,
       u.upstream_refreshed_later,
       NOT (s.base_changes > 0 OR s.base_rewritten <> '{}' OR s.base_unwatched <> '{}')
           AND u.upstream_refreshed_later = '{}' AS fresh,
       CASE WHEN s.base_changes > 0 OR s.base_rewritten <> '{}' OR s.base_unwatched <> '{}'
            THEN clock_timestamp() - (o.details->>'refreshed_at')::timestamptz END AS lag
  FROM pgflip.operations o
 CROSS JOIN LATERAL (
       SELECT coalesce(sum(CASE WHEN NOT g.present THEN 0
                                WHEN coalesce(b.watched, false) THEN
                                    CASE WHEN g.watched THEN g.counter - b.changes ELSE 0 END
                                ELSE abs(g.stats - b.changes) END), 0)::bigint AS base_changes,
              coalesce(array_agg(b.name ORDER BY b.name)
                       FILTER (WHERE NOT g.present OR g.filenode <> b.filenode), '{}') AS base_rewritten,
              coalesce(array_agg(b.name ORDER BY b.name)
                       FILTER (WHERE g.present AND coalesce(b.watched, false) AND NOT g.watched), '{}')
                  AS base_unwatched
         FROM jsonb_to_recordset(o.details->'base')
              AS b(oid oid, name text, changes bigint, filenode bigint, watched boolean)
        CROSS JOIN LATERAL pgflip.green_signature(b.oid) g) s
 CROSS JOIN LATERAL (
       SELECT coalesce(array_agg(format('%I.%I', x.live_schema, x.live_name)), '{}') AS upstream_refreshed_later
         FROM pgflip.operations x
        WHERE x.kind = 'green' AND x.green_schema = o.green_schema
          AND (o.details->'upstream') ? format('%I.%I', x.live_schema, x.live_name)
          AND (x.details->>'refreshed_at')::timestamptz > (o.details->>'refreshed_at')::timestamptz) u
 WHERE o.kind = 'green';
COMMENT ON VIEW pgflip.green_status IS
    'pgflip green: each green relation in flight and whether its base tables changed since its refresh';

-- What is prepared and waiting, for every job.
CREATE VIEW pgflip.operations_in_flight AS
SELECT o.id, o.kind, o.phase,
       CASE WHEN o.live_name IS NOT NULL THEN format('%I.%I', o.live_schema, o.live_name) END AS live,
       CASE WHEN o.green_name IS NOT NULL THEN format('%I.%I', o.green_schema, o.green_name) END AS green,
       o.created_at, o.updated_at, o.details
  FROM pgflip.operations o;
COMMENT ON VIEW pgflip.operations_in_flight IS 'pgflip: operations prepared and not yet flipped or cancelled';

-- Every generation (flip) of every job, with the relations it switched.
CREATE VIEW pgflip.generations_summary AS
SELECT g.id, g.label, g.kind, g.created_at, g.status, g.backup_schema,
       g.rollback_of, g.rolled_back_by, g.cleaned_at,
       r.relations, coalesce(r.live, '{}') AS live_relations
  FROM pgflip.generations g
  LEFT JOIN LATERAL (
       SELECT count(*) AS relations,
              array_agg(format('%I.%I', x.live_schema, x.live_name) ORDER BY x.position) AS live
         FROM pgflip.generation_relations x WHERE x.generation_id = g.id) r ON true;
COMMENT ON VIEW pgflip.generations_summary IS 'pgflip: every generation of every job, newest last';
"#;

/// The tables among `oids` (and their partitions) that do not carry the watch trigger yet,
/// enabled always: `(oid, name, has a disabled one of ours)`.
async fn unwatched(client: &Client, oids: &[u32]) -> Result<Vec<(u32, String, bool)>> {
    let rows = client
        .query(
            "WITH b AS (SELECT DISTINCT unnest($1::pg_catalog.oid[]) AS oid), \
                  t AS (SELECT b.oid FROM b UNION \
                        SELECT p.relid FROM b, pg_catalog.pg_partition_tree(b.oid::pg_catalog.regclass) p) \
             SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_trigger tg WHERE tg.tgrelid = c.oid \
                             AND tg.tgname = $2 AND tg.tgfoid = 'pgflip.green_bump()'::pg_catalog.regprocedure) \
               FROM t JOIN pg_catalog.pg_class c ON c.oid = t.oid \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind IN ('r', 'p') AND NOT EXISTS ( \
                    SELECT 1 FROM pg_catalog.pg_trigger tg WHERE tg.tgrelid = c.oid AND tg.tgname = $2 \
                       AND tg.tgfoid = 'pgflip.green_bump()'::pg_catalog.regprocedure AND tg.tgenabled = 'A') \
              ORDER BY c.oid",
            &[&oids.to_vec(), &TRIGGER],
        )
        .await
        .ctx("looking for base tables to watch")?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Runs `sql` (one catalog change on `oid`) in its own transaction under a short
/// `lock_timeout`, retried with backoff while the lock is not granted.
async fn locked_change(
    client: &Client,
    oid: u32,
    sql: &str,
    what: &str,
    events: &dyn EventSink,
) -> Result<()> {
    crate::lockwait::retry(
        MAX_WAIT,
        events,
        || async {
            let r = client
                .batch_execute(&format!(
                    "BEGIN; SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'; {sql}; COMMIT"
                ))
                .await;
            match r {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(Error::db(what.to_string(), e))
                }
            }
        },
        || async move { crate::lockwait::blockers(client, &[oid]).await },
    )
    .await
}

/// Puts the watch trigger on every table among `oids` (and their partitions) that lacks it.
/// Returns the tables it was put on. Must run, committed, before the snapshot it protects.
pub async fn install(client: &Client, oids: &[u32], events: &dyn EventSink) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for (oid, name, ours_disabled) in unwatched(client, oids).await? {
        let sql = if ours_disabled {
            format!("ALTER TABLE {name} ENABLE ALWAYS TRIGGER {TRIGGER}")
        } else {
            format!(
                "CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {name} \
                 FOR EACH STATEMENT EXECUTE FUNCTION pgflip.green_bump(); \
                 ALTER TABLE {name} ENABLE ALWAYS TRIGGER {TRIGGER}"
            )
        };
        events.emit(Event::Info {
            message: format!("watching {name} for changes (trigger {TRIGGER})"),
        });
        locked_change(
            client,
            oid,
            &sql,
            &format!("putting the change trigger {TRIGGER} on {name}"),
            events,
        )
        .await?;
        done.push(name);
    }
    Ok(done)
}

/// What [`unwatch_unused`] did.
#[derive(Debug, Default, Clone)]
pub struct Unwatched {
    /// Tables whose trigger was removed.
    pub removed: Vec<String>,
    /// Tables whose trigger could not be removed now (the lock was not granted), with why.
    pub left: Vec<String>,
}

/// Removes the watch trigger from every table that no in-flight pipeline reads, and their
/// change rows. A trigger whose lock is not granted within the wait is left (and reported) for
/// the next green command; it only ever adds rows to `pgflip.green_changes`.
pub async fn unwatch_unused(client: &Client, events: &dyn EventSink) -> Result<Unwatched> {
    let mut out = Unwatched::default();
    if !exists(client).await? {
        return Ok(out);
    }
    for (oid, name) in unneeded(client, &[]).await? {
        let sql = drop_sql(&name);
        match locked_change(
            client,
            oid,
            &sql,
            &format!("removing the change trigger {TRIGGER} from {name}"),
            events,
        )
        .await
        {
            Ok(()) => out.removed.push(name.into()),
            Err(e @ Error::LockTimeout { .. }) => {
                let msg = format!(
                    "the change trigger {TRIGGER} stays on {name} for now ({e}); the next green command removes it"
                );
                events.emit(Event::Warning {
                    message: msg.clone(),
                });
                out.left.push(msg);
            }
            Err(e) => return Err(e),
        }
    }
    client
        .batch_execute(&forget_sql())
        .await
        .ctx("forgetting the changes of unwatched tables")?;
    Ok(out)
}

/// The relations every in-flight pipeline but those in `gone` (pipeline schemas) reads, with
/// their partitions, as a `WITH` clause defining `tree(oid)`.
fn needed_sql(gone: &[String]) -> String {
    let gone: Vec<String> = gone.iter().map(|g| quote_literal(g)).collect();
    format!(
        "WITH need AS ( \
           SELECT DISTINCT (b->>'oid')::pg_catalog.oid AS oid FROM pgflip.operations o, \
                  jsonb_array_elements(o.details->'base') b \
            WHERE o.kind = 'green' AND o.green_schema <> ALL (ARRAY[{}]::text[])), \
         tree AS (SELECT need.oid FROM need UNION \
                  SELECT p.relid FROM need, pg_catalog.pg_partition_tree(need.oid::pg_catalog.regclass) p)",
        gone.join(", ")
    )
}

/// Deletes the change rows of tables that carry no watch trigger and that no pipeline reads.
pub fn forget_sql() -> String {
    format!(
        "{} DELETE FROM pgflip.green_changes g WHERE g.relid NOT IN (SELECT oid FROM tree) \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger tg WHERE tg.tgrelid = g.relid \
               AND tg.tgname = {} AND tg.tgfoid = 'pgflip.green_bump()'::pg_catalog.regprocedure)",
        needed_sql(&[]),
        quote_literal(TRIGGER)
    )
}

/// Tables carrying the watch trigger that no in-flight pipeline reads once the pipelines in
/// `gone` are gone: `(oid, name)`.
pub async fn unneeded(client: &Client, gone: &[String]) -> Result<Vec<(u32, QuotedName)>> {
    if !exists(client).await? {
        return Ok(Vec::new());
    }
    Ok(client
        .query(
            &format!(
                "{} SELECT tg.tgrelid, n.nspname::text, c.relname::text \
                 FROM pg_catalog.pg_trigger tg JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE tg.tgname = $1 AND tg.tgfoid = 'pgflip.green_bump()'::pg_catalog.regprocedure \
                   AND tg.tgrelid NOT IN (SELECT oid FROM tree) ORDER BY 1",
                needed_sql(gone)
            ),
            &[&TRIGGER],
        )
        .await
        .ctx("looking for change triggers no pipeline needs")?
        .iter()
        .map(|r| (r.get(0), QuotedName::qualified(r.get(1), r.get(2))))
        .collect())
}

/// `DROP TRIGGER` of the watch trigger on `table`.
pub fn drop_sql(table: &QuotedName) -> String {
    format!("DROP TRIGGER {TRIGGER} ON {table}")
}

/// Folds the change rows into one per table (same sums), so that reading them stays cheap.
/// Rows of writes still in flight are not seen and stay as they are.
pub async fn compact(client: &Client) -> Result<()> {
    client
        .batch_execute(
            "WITH d AS (DELETE FROM pgflip.green_changes RETURNING relid, changes) \
             INSERT INTO pgflip.green_changes (relid, changes) \
             SELECT relid, sum(changes)::bigint FROM d GROUP BY relid",
        )
        .await
        .ctx("folding the change counters")
}

/// Whether the state has the change trigger's function (state version 4 and later).
async fn exists(client: &Client) -> Result<bool> {
    Ok(client
        .query_one(
            "SELECT pg_catalog.to_regprocedure('pgflip.green_bump()') IS NOT NULL",
            &[],
        )
        .await
        .ctx("looking for pgflip's change trigger")?
        .get(0))
}

/// The tables that carry pgflip's watch trigger.
pub async fn watched_tables(client: &Client) -> Result<BTreeSet<String>> {
    if !exists(client).await? {
        return Ok(BTreeSet::new());
    }
    Ok(client
        .query(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_trigger tg \
             JOIN pg_catalog.pg_class c ON c.oid = tg.tgrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE tg.tgname = $1 AND tg.tgfoid = 'pgflip.green_bump()'::pg_catalog.regprocedure",
            &[&TRIGGER],
        )
        .await
        .ctx("listing watched tables")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
