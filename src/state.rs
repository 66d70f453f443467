//! pgflip's own records, kept in a schema named `pgflip` inside the target database.
//!
//! Keeping state in the target (not in a file on the operator's machine) means every operator
//! sees the same picture, and — the point of the design — each phase change can be written in
//! the same transaction as the work it describes: a crash can never leave the record and the
//! database disagreeing.
//!
//! Shape:
//! - The schema is created on the first *write* ([`ensure`]); read-only commands use [`exists`]
//!   and [`current_version`] and never create anything.
//! - `pgflip.schema_version` holds one row per applied migration. [`MIGRATIONS`] is an ordered
//!   list of SQL scripts; later releases only ever append to it. [`ensure`] applies the missing
//!   ones in one transaction, serialised by a transaction-level advisory lock so that two
//!   first runs racing each other do not both try.
//! - Two runs must never act on one target at once: [`TargetLock`] is a session-level advisory
//!   lock taken with `pg_try_advisory_lock(LOCK_CLASSID, LOCK_OBJID_TARGET)`. The two-int form
//!   with a pgflip-specific first key keeps clear of applications that use the one-bigint form
//!   (which PostgreSQL stores with `objsubid = 1`; the two-int form uses `objsubid = 2`), and
//!   advisory locks are per database, so a fixed key is "keyed on the target". A second run fails
//!   fast with [`Error::Busy`] naming the holder.

use std::sync::Arc;

use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Result};

/// First key of every pgflip advisory lock: the bytes "pgfl" as a big-endian int4.
pub const LOCK_CLASSID: i32 = 0x7067_666c;
/// Second key of the session lock that one pgflip run holds on a target while it acts on it.
pub const LOCK_OBJID_TARGET: i32 = 1;
/// Second key of the transaction lock that serialises state migrations.
pub const LOCK_OBJID_MIGRATE: i32 = 2;

/// The schema pgflip keeps its records in.
pub const SCHEMA: &str = "pgflip";

/// One step of the state schema's history.
pub struct Migration {
    pub version: i32,
    pub description: &'static str,
    pub sql: &'static str,
}

/// The state schema's migrations, oldest first. Append only: a release never edits a migration
/// that has shipped, it adds the next one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "runs, generations, generation relations, in-flight operations",
        sql: r#"
CREATE TABLE pgflip.runs (
    id             bigserial PRIMARY KEY,
    command        text NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at    timestamptz,
    status         text NOT NULL DEFAULT 'running',
    pgflip_version text NOT NULL,
    backend_pid    int NOT NULL DEFAULT pg_backend_pid(),
    client_addr    inet DEFAULT inet_client_addr()
);
CREATE TABLE pgflip.generations (
    id             bigserial PRIMARY KEY,
    label          text NOT NULL UNIQUE,
    created_at     timestamptz NOT NULL,
    kind           text NOT NULL,
    backup_schema  text NOT NULL,
    status         text NOT NULL DEFAULT 'active'
                   CHECK (status IN ('active', 'rolled_back', 'cleaned')),
    rollback_of    bigint REFERENCES pgflip.generations (id),
    rolled_back_by bigint REFERENCES pgflip.generations (id),
    cleaned_at     timestamptz,
    pgflip_version text NOT NULL,
    details        jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE pgflip.generation_relations (
    generation_id    bigint NOT NULL REFERENCES pgflip.generations (id),
    position         int NOT NULL,
    live_schema      text NOT NULL,
    live_name        text NOT NULL,
    green_schema     text NOT NULL,
    green_name       text NOT NULL,
    retired_schema   text NOT NULL,
    retired_name     text NOT NULL,
    live_rows        bigint,
    live_checksum    numeric,
    retired_rows     bigint,
    retired_checksum numeric,
    PRIMARY KEY (generation_id, position)
);
CREATE TABLE pgflip.operations (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL,
    phase        text NOT NULL,
    live_schema  text,
    live_name    text,
    green_schema text,
    green_name   text,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    details      jsonb NOT NULL DEFAULT '{}'
);
"#,
    },
    Migration {
        version: 2,
        description: "runs: outcome and error message",
        sql: r#"
ALTER TABLE pgflip.runs ADD COLUMN error text;
ALTER TABLE pgflip.runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('running', 'succeeded', 'failed'));
"#,
    },
    Migration {
        version: 3,
        description: "generation relations: checksum method",
        sql: r#"
ALTER TABLE pgflip.generation_relations ADD COLUMN checksum_method text
    CHECK (checksum_method IN ('md5', 'hash'));
"#,
    },
    Migration {
        version: 4,
        description: "green change watch; views of green status, in-flight operations, generations",
        sql: crate::green::watch::STATE_SQL,
    },
];

/// The newest state version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

/// Whether the target has a pgflip schema at all. Reads only.
pub async fn exists(client: &Client) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT to_regclass('pgflip.schema_version') IS NOT NULL",
            &[],
        )
        .await
        .ctx("looking for pgflip state")?;
    Ok(row.get(0))
}

/// The state version recorded in the target, `None` when there is no pgflip state. Reads only.
pub async fn current_version(client: &Client) -> Result<Option<i32>> {
    if !exists(client).await? {
        return Ok(None);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM pgflip.schema_version",
            &[],
        )
        .await
        .ctx("reading the pgflip state version")?;
    Ok(Some(row.get(0)))
}

/// Creates or upgrades the pgflip schema to [`latest_version`]. Returns the version.
pub async fn ensure(client: &Client) -> Result<i32> {
    migrate_to(client, latest_version()).await
}

/// Applies the migrations up to and including `version`, in one transaction. Public so that
/// tests can build an "older release" state and check the upgrade path.
pub async fn migrate_to(client: &Client, version: i32) -> Result<i32> {
    if let Some(v) = current_version(client).await? {
        if v >= version {
            if v > latest_version() {
                return Err(Error::Config(format!(
                    "the target's pgflip state is version {v}, newer than this pgflip ({}) knows \
                     ({}): upgrade pgflip",
                    crate::VERSION,
                    latest_version()
                )));
            }
            return Ok(v);
        }
    }
    let mut sql = format!(
        "BEGIN;\nSELECT pg_advisory_xact_lock({LOCK_CLASSID}, {LOCK_OBJID_MIGRATE});\n\
         CREATE SCHEMA IF NOT EXISTS pgflip;\n\
         COMMENT ON SCHEMA pgflip IS 'pgflip state: runs, generations, in-flight operations';\n\
         CREATE TABLE IF NOT EXISTS pgflip.schema_version (\n\
             version int PRIMARY KEY,\n\
             description text NOT NULL,\n\
             applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),\n\
             pgflip_version text NOT NULL);\n"
    );
    // Each migration runs only if the row for its version is absent: the check happens inside
    // the transaction, after the advisory lock, so a concurrent first run cannot double-apply.
    for m in MIGRATIONS.iter().filter(|m| m.version <= version) {
        sql.push_str(&format!(
            "DO $pgflip_migration$ BEGIN\n\
             IF NOT EXISTS (SELECT 1 FROM pgflip.schema_version WHERE version = {v}) THEN\n\
             EXECUTE {body};\n\
             INSERT INTO pgflip.schema_version (version, description, pgflip_version)\n\
             VALUES ({v}, {d}, {pv});\n\
             END IF;\nEND $pgflip_migration$;\n",
            v = m.version,
            body = crate::ident::quote_literal(m.sql),
            d = crate::ident::quote_literal(m.description),
            pv = crate::ident::quote_literal(crate::VERSION),
        ));
    }
    sql.push_str("COMMIT;");
    if let Err(e) = client.batch_execute(&sql).await {
        let err = Error::db("creating or upgrading the pgflip state schema", e);
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(err);
    }
    current_version(client).await.map(|v| v.unwrap_or_default())
}

/// How long [`TargetLock::acquire`] waits for a lock held by a session that may be ending.
const TARGET_LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(1500);

/// A session-level advisory lock on the target: while it is held, no other pgflip run acts on
/// the same database. Released by [`TargetLock::release`], or when the connection closes; a
/// guard dropped without `release` unlocks from a background task.
pub struct TargetLock {
    client: Option<Arc<Client>>,
}

impl TargetLock {
    /// Takes the lock or fails with [`Error::Busy`] naming the session that holds it.
    ///
    /// It tries for up to [`TARGET_LOCK_GRACE`] before giving up: a pgflip process that has
    /// just exited leaves its backend holding the lock until the server notices the closed
    /// socket, and a run started right after it must not be told another run is acting. A run
    /// that is really acting holds the lock far longer than that.
    pub async fn acquire(client: Arc<Client>) -> Result<TargetLock> {
        let deadline = std::time::Instant::now() + TARGET_LOCK_GRACE;
        loop {
            let got: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&LOCK_CLASSID, &LOCK_OBJID_TARGET],
                )
                .await
                .ctx("taking pgflip's lock on the target")?
                .get(0);
            if got {
                return Ok(TargetLock {
                    client: Some(client),
                });
            }
            if std::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err(Error::Busy {
            holder: describe_holder(&client)
                .await
                .unwrap_or_else(|e| format!("(could not tell who: {e})")),
        })
    }

    /// The connection that holds the lock.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("lock not released")
    }

    /// Releases the lock.
    pub async fn release(mut self) -> Result<()> {
        let client = self.client.take().expect("lock released twice");
        client
            .query_one(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&LOCK_CLASSID, &LOCK_OBJID_TARGET],
            )
            .await
            .ctx("releasing pgflip's lock on the target")?;
        Ok(())
    }
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Best effort: the lock also goes when the session ends.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = client
                        .query_one(
                            "SELECT pg_advisory_unlock($1, $2)",
                            &[&LOCK_CLASSID, &LOCK_OBJID_TARGET],
                        )
                        .await;
                });
            }
        }
    }
}

/// Runs `work` while holding the target lock, and records it in `pgflip.runs` as `command`
/// (which must not carry secrets: the CLI passes the subcommand and its table names). The lock
/// is released whatever happens, and neither an unlock failure nor a failure to record the
/// outcome hides the work's own error.
pub async fn with_target_lock<T, F, Fut>(client: Arc<Client>, command: &str, work: F) -> Result<T>
where
    F: FnOnce(Arc<Client>) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    with_target_lock_judged(client, command, work, |_| None).await
}

/// [`with_target_lock`] for work that can succeed in part: `failed` says what of a returned
/// value failed (a sync whose other tables went on), and the run is then recorded as failed
/// with that error while the value is still returned.
pub async fn with_target_lock_judged<T, F, Fut, J>(
    client: Arc<Client>,
    command: &str,
    work: F,
    failed: J,
) -> Result<T>
where
    F: FnOnce(Arc<Client>) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
    J: FnOnce(&T) -> Option<String>,
{
    let lock = TargetLock::acquire(client.clone()).await?;
    let run = match RunRecord::start(&client, command).await {
        Ok(run) => run,
        Err(e) => {
            let _ = lock.release().await;
            return Err(e);
        }
    };
    let result = work(client.clone()).await;
    let error = match &result {
        Err(e) => Some(e.to_string()),
        Ok(v) => failed(v),
    };
    run.finish(&client, error.as_deref()).await;
    let unlocked = lock.release().await;
    match (result, unlocked) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e),
        (Ok(v), Ok(())) => Ok(v),
    }
}

/// A run being recorded in `pgflip.runs`. The row is written before the work when the target
/// already has pgflip state, so a run killed half-way stays visible (as `running` with a dead
/// backend: `interrupted`); on a target without state the first write creates it, and the run
/// is recorded when it ends.
struct RunRecord {
    id: Option<i64>,
    command: String,
    started_at: chrono::DateTime<chrono::Utc>,
}

impl RunRecord {
    async fn start(client: &Client, command: &str) -> Result<RunRecord> {
        let started_at = chrono::Utc::now();
        let mut id = None;
        if exists(client).await? {
            // A writing run upgrades an older state first (it holds the target lock).
            ensure(client).await?;
            // The session remembers its run: a flip records it with its generation, so that a
            // run killed after its flip committed is known to have flipped.
            id = Some(
                client
                    .query_one(
                        "WITH r AS (INSERT INTO pgflip.runs (command, pgflip_version) VALUES ($1, $2) RETURNING id) \
                         SELECT id, pg_catalog.set_config('pgflip.run_id', id::text, false) FROM r",
                        &[&command, &crate::VERSION],
                    )
                    .await
                    .ctx("recording the run in pgflip.runs")?
                    .get(0),
            );
        }
        Ok(RunRecord {
            id,
            command: command.to_string(),
            started_at,
        })
    }

    /// Best effort: the work's outcome matters more than its record.
    async fn finish(self, client: &Client, error: Option<&str>) {
        let status = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        if error.is_some() {
            // A failed step may have left its transaction open and aborted.
            let _ = client.batch_execute("ROLLBACK").await;
        }
        let _ = match self.id {
            Some(id) => {
                client
                    .execute(
                        "UPDATE pgflip.runs SET finished_at = clock_timestamp(), status = $2, error = $3 \
                         WHERE id = $1",
                        &[&id, &status, &error],
                    )
                    .await
            }
            None => {
                if !matches!(current_version(client).await, Ok(Some(v)) if v >= 2) {
                    return;
                }
                client
                    .execute(
                        "INSERT INTO pgflip.runs (command, started_at, finished_at, status, pgflip_version, error) \
                         VALUES ($1, $2, clock_timestamp(), $3, $4, $5)",
                        &[&self.command, &self.started_at, &status, &crate::VERSION, &error],
                    )
                    .await
            }
        };
    }
}

/// A recorded run, newest first from [`runs`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    pub id: i64,
    pub command: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `running`, `succeeded`, `failed`, or `interrupted` (recorded as running, but its session
    /// is gone: pgflip was killed or lost its connection).
    pub status: String,
    pub pgflip_version: String,
    pub error: Option<String>,
    /// The generation this run's flip recorded (its flip committed), if any.
    pub generation: Option<String>,
}

/// The latest `limit` runs (empty without state). Reads only; works on every state version.
pub async fn runs(client: &Client, limit: i64) -> Result<Vec<Run>> {
    if !exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT r.id, r.command, r.started_at, r.finished_at, \
                    CASE WHEN r.status = 'running' AND NOT EXISTS \
                         (SELECT 1 FROM pg_catalog.pg_stat_activity a \
                          WHERE a.pid = r.backend_pid AND a.backend_start <= r.started_at) \
                         THEN 'interrupted' ELSE r.status END, \
                    r.pgflip_version, pg_catalog.to_jsonb(r) ->> 'error', \
                    (SELECT g.label FROM pgflip.generations g \
                     WHERE g.details ->> 'run_id' = r.id::text ORDER BY g.id DESC LIMIT 1) \
             FROM pgflip.runs r ORDER BY r.id DESC LIMIT $1",
            &[&limit],
        )
        .await
        .ctx("reading pgflip.runs")?;
    Ok(rows
        .iter()
        .map(|r| Run {
            id: r.get(0),
            command: r.get(1),
            started_at: r.get(2),
            finished_at: r.get(3),
            status: r.get(4),
            pgflip_version: r.get(5),
            error: r.get(6),
            generation: r.get(7),
        })
        .collect())
}

/// Who holds the target lock: pid, application, client address, since when.
pub async fn describe_holder(client: &Client) -> Result<String> {
    let rows = client
        .query(
            "SELECT a.pid, coalesce(a.application_name, ''), \
                    coalesce(host(a.client_addr), 'local socket'), \
                    coalesce(to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS TZ'), '?'), \
                    coalesce(a.usename::text, '?') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid = $1::int::oid AND l.objid = $2::int::oid AND l.objsubid = 2",
            &[&LOCK_CLASSID, &LOCK_OBJID_TARGET],
        )
        .await
        .ctx("finding who holds pgflip's lock")?;
    if rows.is_empty() {
        return Ok("a session that has just released it (try again)".into());
    }
    Ok(rows
        .iter()
        .map(|r| {
            format!(
                "pid {} (application '{}', user {}, client {}, connected since {})",
                r.get::<_, i32>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(4),
                r.get::<_, String>(2),
                r.get::<_, String>(3)
            )
        })
        .collect::<Vec<_>>()
        .join("; "))
}

/// What kind of job an in-flight operation belongs to (`pgflip.operations.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// A staging table of `sync --staging-table`, waiting for its swap.
    Sync,
    /// A whole-database migration (`pgflip migrate prepare`).
    Migrate,
    /// A member of a green pipeline (`pgflip green create`).
    Green,
    /// `sync --in-batches` interrupted: the last batch committed, for a rerun to continue
    /// after it (phase `copying`).
    SyncBatches,
}

impl OperationKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            OperationKind::Sync => "sync",
            OperationKind::Migrate => "migrate",
            OperationKind::Green => "green",
            OperationKind::SyncBatches => "sync_batches",
        }
    }

    pub fn parse(s: &str) -> Option<OperationKind> {
        [
            OperationKind::Sync,
            OperationKind::Migrate,
            OperationKind::Green,
            OperationKind::SyncBatches,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Where an in-flight operation stands. One set of words for every kind, so that `status`,
/// each job and the fault tests read the same record the same way. Each phase is written in the
/// transaction that does its work, so the record and the database never disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// sync: the staging table is being created and loaded (under a `_pgflip_loading` name).
    Loading,
    /// sync: the staging table is complete, under its staging name, waiting for its swap.
    Staged,
    /// migrate: shadow schemas and pgflip's helpers are being created.
    Preparing,
    /// migrate: capture triggers are being installed on the preserved tables.
    Capturing,
    /// migrate: rows are being copied into the shadow tables.
    Copying,
    /// migrate: indexes and key constraints are being built.
    Indexing,
    /// migrate: foreign keys are being added and validated.
    Validating,
    /// migrate: everything is built; preserved tables are kept in sync until the swap.
    Prepared,
    /// green: built (and refreshed), waiting for its promote.
    Built,
}

impl Phase {
    const ALL: [Phase; 9] = [
        Phase::Loading,
        Phase::Staged,
        Phase::Preparing,
        Phase::Capturing,
        Phase::Copying,
        Phase::Indexing,
        Phase::Validating,
        Phase::Prepared,
        Phase::Built,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Staged => "staged",
            Phase::Preparing => "preparing",
            Phase::Capturing => "capturing",
            Phase::Copying => "copying",
            Phase::Indexing => "indexing",
            Phase::Validating => "validating",
            Phase::Prepared => "prepared",
            Phase::Built => "built",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SQL that records (or updates) an in-flight operation — something prepared and waiting, such
/// as a staging table awaiting its swap — to be sent in the same transaction as the work it
/// describes. The flip deletes the row of the green relation it brings in, in its own
/// transaction. Needs the state schema ([`ensure`]).
pub fn record_operation_sql(
    kind: OperationKind,
    phase: Phase,
    live: (&str, &str),
    green: (&str, &str),
    details: &serde_json::Value,
) -> String {
    use crate::ident::quote_literal as l;
    format!(
        "DELETE FROM pgflip.operations WHERE green_schema = {gs} AND green_name = {gn}; \
         INSERT INTO pgflip.operations (kind, phase, live_schema, live_name, green_schema, green_name, details) \
         VALUES ({}, {}, {}, {}, {gs}, {gn}, {}::jsonb)",
        l(kind.as_str()),
        l(phase.as_str()),
        l(live.0),
        l(live.1),
        l(&details.to_string()),
        gs = l(green.0),
        gn = l(green.1),
    )
}

/// SQL recording that pgflip has just created `rel` (qualified; in the same transaction) as
/// the staging table `staging` of `live`, in phase `phase`. The relation's oid is recorded: a
/// relation keeps it through renames, and pgflip replaces or drops a relation under a name the
/// user can see only if its oid is recorded here ([`created_relation_oids`]).
pub fn record_created_relation_sql(
    kind: OperationKind,
    phase: Phase,
    live: (&str, &str),
    staging: (&str, &str),
    rel: &str,
) -> String {
    use crate::ident::quote_literal as l;
    format!(
        "{}; UPDATE pgflip.operations SET details = details || \
         jsonb_build_object('oid', {}::regclass::oid::bigint) \
         WHERE green_schema = {} AND green_name = {}",
        record_operation_sql(kind, phase, live, staging, &serde_json::json!({})),
        l(rel),
        l(staging.0),
        l(staging.1)
    )
}

/// SQL moving the operation of green relation `green` to `phase`.
pub fn set_operation_phase_sql(green: (&str, &str), phase: Phase) -> String {
    use crate::ident::quote_literal as l;
    format!(
        "UPDATE pgflip.operations SET phase = {}, updated_at = clock_timestamp() \
         WHERE green_schema = {} AND green_name = {}",
        l(phase.as_str()),
        l(green.0),
        l(green.1)
    )
}

/// SQL forgetting the operation of green relation `green` (dropped by pgflip).
pub fn forget_operation_sql(green: (&str, &str)) -> String {
    use crate::ident::quote_literal as l;
    format!(
        "DELETE FROM pgflip.operations WHERE green_schema = {} AND green_name = {}",
        l(green.0),
        l(green.1)
    )
}

/// The oids of the relations pgflip created and recorded with
/// [`record_created_relation_sql`] that still exist (empty without state). Reads only.
pub async fn created_relation_oids(client: &Client) -> Result<std::collections::BTreeSet<u32>> {
    if !exists(client).await? {
        return Ok(Default::default());
    }
    let rows = client
        .query(
            "SELECT c.oid FROM pgflip.operations o \
             JOIN pg_catalog.pg_class c ON c.oid::bigint = (o.details ->> 'oid')::bigint \
             WHERE o.details ? 'oid'",
            &[],
        )
        .await
        .ctx("reading the relations pgflip created")?;
    Ok(rows.iter().map(|r| r.get::<_, u32>(0)).collect())
}

/// An in-flight operation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Operation {
    pub kind: OperationKind,
    pub phase: Phase,
    pub live: String,
    pub green: String,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub details: serde_json::Value,
}

/// The in-flight operations (empty without state). Reads only.
pub async fn operations(client: &Client) -> Result<Vec<Operation>> {
    if !exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT kind, phase, coalesce(live_schema, ''), coalesce(live_name, ''), \
                    coalesce(green_schema, ''), coalesce(green_name, ''), updated_at, details \
             FROM pgflip.operations ORDER BY id",
            &[],
        )
        .await
        .ctx("reading in-flight operations")?;
    rows.iter()
        .map(|r| {
            let (kind, phase): (String, String) = (r.get(0), r.get(1));
            // A kind or phase this pgflip does not know was written by a newer one: say so
            // rather than show the record as something it is not.
            let unknown = |what: &str, v: &str| {
                Error::Config(format!(
                    "pgflip.operations holds an operation with {what} '{v}', which this pgflip \
                     ({}) does not know: it was written by a newer pgflip; use that one",
                    crate::VERSION
                ))
            };
            Ok(Operation {
                kind: OperationKind::parse(&kind).ok_or_else(|| unknown("kind", &kind))?,
                phase: Phase::parse(&phase).ok_or_else(|| unknown("phase", &phase))?,
                live: crate::ident::qualified(r.get(2), r.get(3)),
                green: crate::ident::qualified(r.get(4), r.get(5)),
                updated_at: r.get(6),
                details: r.get(7),
            })
        })
        .collect()
}
