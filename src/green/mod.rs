//! `pgflip green`: rebuild materialized views and query-defined tables (and whole pipelines of
//! them) from new definitions beside the live ones, watch them converge, promote them at once.
//!
//! Shape (DESIGN §5b):
//! - One *pipeline* is everything one `green create` built: the relations given new
//!   definitions, plus every materialized view downstream of them, rebuilt with its current
//!   definition over the green upstream. All of it lives in one schema of its own,
//!   `pgflip_green_<time>` (the pipeline's id), under the live names, so that index and
//!   constraint names can be exactly the live ones and `cancel` is one `DROP SCHEMA`.
//! - Each member is an in-flight operation (`pgflip.operations`, kind `green`), whose details
//!   ([`Member`]) say what it was built from and when, and the *base signature* of the tables
//!   under it at that moment. Staleness is the base tables' change counters and file nodes
//!   compared with that signature. The counters of tables come from pgflip's change trigger
//!   ([`watch`]) and are read in the build's own snapshot, so they are exact; under a
//!   materialized view or foreign table (no triggers) they are the statistics counters, read
//!   *before* the build's snapshot, so a change can only make green look staler, never fresher.
//! - Nothing is built or refreshed under a lock of the live relations: `create` and `refresh`
//!   only read them, and `promote` is the flip (DESIGN §5) of every member at once.
//!
//! Modules: [`sqlfile`] reads pipeline files, [`pipeline`] finds the members and their order,
//! [`create`], [`status`], [`refresh`], [`promote`] and [`cancel`] are the commands.

pub mod beside;
pub mod cancel;
pub mod create;
pub mod pipeline;
pub mod promote;
pub mod refresh;
pub mod sqlfile;
pub mod status;
pub mod watch;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Result};
use crate::flip::QualifiedName;
use crate::ident::quote_literal;

/// `pgflip.operations.kind` of a green member.
pub const KIND: &str = crate::state::OperationKind::Green.as_str();

/// Prefix of the schemas green pipelines are built in.
pub const SCHEMA_PREFIX: &str = "pgflip_green_";

/// The schema a pipeline created at `at` is built in.
pub fn green_schema(at: DateTime<Utc>) -> String {
    format!(
        "{SCHEMA_PREFIX}{}",
        at.format("%Y%m%dt%H%M%S%.6fz").to_string().replace('.', "")
    )
}

/// What a green relation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelKind {
    MaterializedView,
    /// A table whose contents a query defines (a summary table).
    Table,
    /// A view in a pipeline: it stores nothing, but one whose new definition drops a column,
    /// or one between two members, switches with the rest.
    View,
}

impl RelKind {
    pub fn sql(self) -> &'static str {
        match self {
            RelKind::MaterializedView => "MATERIALIZED VIEW",
            RelKind::Table => "TABLE",
            RelKind::View => "VIEW",
        }
    }
}

/// The signature of one base relation: change counter and file node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseSig {
    pub oid: u32,
    pub name: String,
    /// When `watched`: writing transactions counted by pgflip's trigger ([`watch`]), exact in
    /// the snapshot it was read in. Otherwise (a materialized view or foreign table under the
    /// pipeline): inserted + updated + deleted rows from the statistics counters, which lag.
    /// Summed over partitions.
    pub changes: i64,
    /// Sum of the file nodes (all partitions): changes on TRUNCATE, rewrites and
    /// non-concurrent REFRESH.
    pub filenode: i64,
    /// Every relation of it carries the watch trigger.
    #[serde(default)]
    pub watched: bool,
}

/// What the operation record of one green member says (`pgflip.operations.details`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// The pipeline's schema (its id).
    pub pipeline: String,
    /// Dependency order within the pipeline (upstream first).
    pub position: i32,
    pub kind: RelKind,
    /// The query green was built from (as run, under `search_path`).
    pub query: String,
    pub search_path: String,
    /// Given a new definition by the user (not a downstream rebuild with its current one).
    pub explicit: bool,
    /// The definition differs from the live one's (for a table: always, it has none).
    pub definition_changed: bool,
    /// Live names (quoted) of the pipeline members it reads.
    pub upstream: Vec<String>,
    pub built_at: DateTime<Utc>,
    pub refreshed_at: DateTime<Utc>,
    pub base: Vec<BaseSig>,
    /// Live indexes not built on green (a column they use is gone), with the reason.
    #[serde(default)]
    pub skipped_indexes: Vec<String>,
    /// Columns of live that green no longer has.
    #[serde(default)]
    pub dropped_columns: Vec<String>,
    /// Nothing live has its name yet: a relation the pipeline file adds. Promote brings it in
    /// alone (a one-sided relation of the flip); rollback retires it.
    #[serde(default)]
    pub new: bool,
}

/// One green relation as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct GreenRelation {
    pub live: QualifiedName,
    pub green: QualifiedName,
    pub phase: crate::state::Phase,
    pub member: Member,
}

/// Every green relation recorded on the target, by pipeline then position. Reads only.
pub async fn load(client: &Client) -> Result<Vec<GreenRelation>> {
    if !crate::state::exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT live_schema, live_name, green_schema, green_name, phase, details \
             FROM pgflip.operations WHERE kind = $1 ORDER BY green_schema, (details->>'position')::int, id",
            &[&KIND],
        )
        .await
        .ctx("reading green operations")?;
    let mut out = Vec::new();
    for r in rows {
        let details: serde_json::Value = r.get(5);
        let member: Member = serde_json::from_value(details)
            .map_err(|e| Error::Config(format!("a green operation record cannot be read: {e}")))?;
        out.push(GreenRelation {
            live: QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            green: QualifiedName::new(r.get::<_, String>(2), r.get::<_, String>(3)),
            phase: crate::state::Phase::parse(&r.get::<_, String>(4)).ok_or_else(|| {
                Error::Config(format!(
                    "a green operation record has phase '{}', which this pgflip does not know",
                    r.get::<_, String>(4)
                ))
            })?,
            member,
        });
    }
    Ok(out)
}

/// The pipelines, each in dependency order.
pub fn pipelines(all: Vec<GreenRelation>) -> BTreeMap<String, Vec<GreenRelation>> {
    let mut by: BTreeMap<String, Vec<GreenRelation>> = BTreeMap::new();
    for g in all {
        by.entry(g.member.pipeline.clone()).or_default().push(g);
    }
    for v in by.values_mut() {
        v.sort_by_key(|g| g.member.position);
    }
    by
}

/// Resolves a relation name as the user typed it (`mv`, `s.mv`, `"Odd".mv`) with the server's
/// own rules (quoting, case folding, `search_path`). `None` when no such relation exists.
pub async fn resolve(client: &Client, name: &str) -> Result<Option<(QualifiedName, String)>> {
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = pg_catalog.to_regclass($1)",
            &[&name],
        )
        .await;
    match row {
        Ok(Some(r)) => Ok(Some((
            QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            r.get(2),
        ))),
        Ok(None) => Ok(None),
        // A malformed name (`a.b.c.d`, an unclosed quote): the server's parser says why.
        Err(e) if e.code().is_some() => Err(Error::InvalidInput(format!(
            "{name:?} is not a relation name: {}",
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default()
        ))),
        Err(e) => Err(Error::db("resolving a relation name", e)),
    }
}

/// The pipeline that `rel` (a live or green name, as typed) belongs to, or every pipeline when
/// `rel` is `None`. An unknown name is an error naming what is in flight.
pub async fn select(
    client: &Client,
    rel: Option<&str>,
) -> Result<BTreeMap<String, Vec<GreenRelation>>> {
    let all = pipelines(load(client).await?);
    let Some(rel) = rel else {
        return Ok(all);
    };
    let target = resolve(client, rel).await?.map(|(q, _)| q);
    let found = all.iter().find(|(_, members)| {
        members.iter().any(|m| {
            Some(&m.live) == target.as_ref()
                || Some(&m.green) == target.as_ref()
                || m.live.name == rel
                || m.live.to_string() == rel
        })
    });
    match found {
        Some((k, v)) => Ok(BTreeMap::from([(k.clone(), v.clone())])),
        None => Err(Error::InvalidInput(format!(
            "no green version of {rel} is in flight{}",
            if all.is_empty() {
                String::new()
            } else {
                format!(
                    " (in flight: {})",
                    all.values()
                        .flatten()
                        .map(|m| m.live.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        ))),
    }
}

/// SQL reading the signature of the relations `$1` (oid[]), through the state's
/// `pgflip.green_signature` (which the `pgflip.green_status` view uses too).
pub const SIGNATURE_SQL: &str = "SELECT b.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), \
       CASE WHEN s.watched THEN s.counter ELSE s.stats END, s.filenode, s.watched \
     FROM unnest($1::pg_catalog.oid[]) AS b(oid) \
     JOIN pg_catalog.pg_class c ON c.oid = b.oid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     CROSS JOIN LATERAL pgflip.green_signature(b.oid) s \
     ORDER BY b.oid";

/// Reads the signatures of `oids` (in the caller's snapshot, for the watched ones).
pub async fn signatures(client: &Client, oids: &[u32]) -> Result<Vec<BaseSig>> {
    let rows = client
        .query(SIGNATURE_SQL, &[&oids.to_vec()])
        .await
        .ctx("reading the base tables' change counters")?;
    Ok(rows
        .iter()
        .map(|r| BaseSig {
            oid: r.get(0),
            name: r.get(1),
            changes: r.get(2),
            filenode: r.get(3),
            watched: r.get(4),
        })
        .collect())
}

/// The statistics counters of every materialized view and foreign table (the bases that
/// cannot be watched), read before a build's snapshot: a change after it can then only make
/// green look staler. Which ones a member reads is only known once it is built.
pub async fn all_signatures(client: &Client) -> Result<BTreeMap<u32, BaseSig>> {
    let oids: Vec<u32> = client
        .query(
            "SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('m', 'f') \
               AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'",
            &[],
        )
        .await
        .ctx("listing tables")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(signatures(client, &oids)
        .await?
        .into_iter()
        .map(|s| (s.oid, s))
        .collect())
}

/// SQL giving the base relations of relation `$1`: what it reads, through views and through
/// the members of its own pipeline (relations in schema `$2`), down to tables, foreign tables
/// and materialized views outside the pipeline.
pub const BASE_SQL: &str = "WITH RECURSIVE r(oid) AS ( \
       SELECT $1::pg_catalog.oid \
       UNION \
       SELECT d.refobjid FROM r \
         JOIN pg_catalog.pg_class rc ON rc.oid = r.oid \
         JOIN pg_catalog.pg_rewrite rw ON rw.ev_class = r.oid \
         JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
           AND d.objid = rw.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
           AND d.refobjid <> r.oid \
        WHERE r.oid = $1 OR rc.relkind = 'v' \
           OR rc.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $2)) \
     SELECT c.oid FROM r JOIN pg_catalog.pg_class c ON c.oid = r.oid \
      WHERE c.relkind IN ('r', 'p', 'm', 'f') AND c.oid <> $1 \
        AND c.relnamespace <> (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $2) \
      ORDER BY 1";

/// The base relations of `oid` (see [`BASE_SQL`]) and their signatures: read now (in the
/// caller's snapshot) for watched tables, taken from `sigs` (read before the snapshot) for the
/// others.
pub async fn base_of(
    client: &Client,
    oid: u32,
    schema: &str,
    sigs: &BTreeMap<u32, BaseSig>,
) -> Result<Vec<BaseSig>> {
    let oids: Vec<u32> = base_oids(client, oid, schema).await?;
    let mut out = signatures(client, &oids).await?;
    for s in &mut out {
        if !s.watched {
            if let Some(pre) = sigs.get(&s.oid) {
                s.changes = pre.changes;
            }
        }
    }
    Ok(out)
}

/// The base relations of `oid` (see [`BASE_SQL`]).
pub async fn base_oids(client: &Client, oid: u32, schema: &str) -> Result<Vec<u32>> {
    Ok(client
        .query(BASE_SQL, &[&oid, &schema])
        .await
        .ctx("finding the base tables")?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// SQL that updates a member's recorded details (in the same transaction as the work).
pub fn update_member_sql(g: &GreenRelation, phase: crate::state::Phase) -> String {
    format!(
        "UPDATE pgflip.operations SET phase = {}, details = {}::jsonb, updated_at = clock_timestamp() \
         WHERE kind = {} AND green_schema = {} AND green_name = {}",
        quote_literal(phase.as_str()),
        quote_literal(&serde_json::to_string(&g.member).unwrap_or_default()),
        quote_literal(KIND),
        quote_literal(&g.green.schema),
        quote_literal(&g.green.name),
    )
}
