//! Materialized views under a flipped table, built beside before the flip's locks.
//!
//! Without this, a flip (`sync --swap`, a rollback) re-creates every populated materialized
//! view that reads a swapped table `WITH DATA` inside its locked transaction, so the
//! application waits for that view's query. Here, before the flip, each of them (and every
//! materialized view downstream of it) is built in a `pgflip_green_…` schema under its live
//! name, over the green side of the flip, with its indexes, owner, grants and comments (the
//! same code as `green create`); the flip then switches it as one more pair, so its lock time is
//! catalog changes only, and its rollback switches the old one back without building anything.
//!
//! How the green side is read under the live name: a green relation that already has the live
//! name in another schema (a rollback's retired table, a migrate shadow) is found through
//! `search_path`; a staging table (`t_staging`, same schema) is moved into the build schema
//! and renamed to the live name for the build, and put back in the same transaction. Each
//! built relation is checked in `pg_depend` not to read a live pair.
//!
//! Recorded as a green pipeline (operations of kind `green`) in the same transaction, so a
//! crash before the flip leaves something `green status` shows and `green cancel` removes; the
//! flip removes the records with the pairs, and a failed flip drops what was built.
//! Anything this does not cover (a materialized view that reads a pair through a plain view,
//! one not populated, a failure of the build) leaves the flip as it was: re-created under the
//! locks, with the flip's warning.

use std::collections::BTreeSet;

use chrono::Utc;
use tokio_postgres::Client;

use crate::catalog::{Filter, Snapshot};
use crate::error::{DbResultExt, Error, Result};
use crate::events::{Event, EventSink};
use crate::flip::{FlipPair, QualifiedName};
use crate::ident::{qualified, quote_ident, quote_literal};

use super::create::{create_sql, decorate_sql, Planned};
use super::pipeline::Graph;
use super::{Member, RelKind};

/// What was built beside: more pairs for the flip, and the SQL the flip runs after its moves.
#[derive(Debug, Clone)]
pub struct Beside {
    pub schema: String,
    pub pairs: Vec<FlipPair>,
    pub in_flip_after: String,
}

async fn oid_of(client: &Client, q: &QualifiedName) -> Result<u32> {
    Ok(client
        .query_one(
            "SELECT coalesce(pg_catalog.to_regclass($1)::pg_catalog.oid, 0)",
            &[&q.sql()],
        )
        .await
        .ctx("resolving a relation")?
        .get(0))
}

/// Builds, beside, the materialized views that read the live side of `pairs`. `None` when
/// there are none, or when they cannot be built beside (said in a warning; the flip then
/// re-creates them under its locks as before).
pub async fn build(
    client: &Client,
    pairs: &[FlipPair],
    leaving: &[QualifiedName],
    events: &dyn EventSink,
) -> Result<Option<Beside>> {
    let mut live = Vec::new();
    let mut flipped = BTreeSet::new();
    // Retired alone by the same flip (a rollback of a relation a green pipeline added): it
    // leaves, nothing to build for it.
    for q in leaving {
        flipped.insert(oid_of(client, q).await?);
    }
    for p in pairs {
        let (l, g) = (
            oid_of(client, &p.live).await?,
            oid_of(client, &p.green).await?,
        );
        if l == 0 || g == 0 {
            return Ok(None); // the flip says what is missing
        }
        live.push(l);
        flipped.insert(l);
        flipped.insert(g);
    }
    let graph = Graph::load(client).await?;
    let (mvs, _) = graph.downstream(&live);
    let mvs: BTreeSet<u32> = mvs.into_iter().filter(|m| !flipped.contains(m)).collect();
    if mvs.is_empty() {
        return Ok(None);
    }
    let give_up = |why: String| {
        events.emit(Event::Warning {
            message: format!(
                "materialized views under the flip are not built beside ({why}); the flip re-creates them under its locks"
            ),
        });
        Ok(None)
    };
    // Those reading through a plain view would need the view rebuilt too: not covered.
    let mut members: BTreeSet<u32> = mvs.clone();
    members.extend(live.iter().copied());
    let through: Vec<String> = graph
        .views_between(&members)
        .iter()
        .map(|(_, v, low)| format!("{} reads through view {}", graph.name(*low), graph.name(*v)))
        .collect();
    if !through.is_empty() {
        return give_up(through.join("; "));
    }
    let unpopulated: Vec<String> = client
        .query(
            "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.oid = ANY($1) AND NOT c.relispopulated",
            &[&mvs.iter().copied().collect::<Vec<u32>>()],
        )
        .await
        .ctx("reading materialized views")?
        .iter()
        .map(|r| graph.name(r.get(0)))
        .collect();
    if !unpopulated.is_empty() {
        return give_up(format!("not populated: {}", unpopulated.join(", ")));
    }
    let mut names = BTreeSet::new();
    for &m in &mvs {
        if !names.insert(graph.nodes[&m].name.name.clone()) {
            return give_up(format!(
                "two of them are named {}",
                graph.nodes[&m].name.name
            ));
        }
    }
    for p in pairs {
        if p.green.name != p.live.name && names.contains(&p.live.name) {
            return give_up(format!("{} has the name of one of them", p.live));
        }
    }

    match build_in(client, pairs, &graph, &mvs, &live, events).await {
        Ok(b) => Ok(Some(b)),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            give_up(e.to_string())
        }
    }
}

async fn build_in(
    client: &Client,
    pairs: &[FlipPair],
    graph: &Graph,
    mvs: &BTreeSet<u32>,
    live: &[u32],
    events: &dyn EventSink,
) -> Result<Beside> {
    let order = graph.order(mvs);
    let saved_path: String = client
        .query_one("SELECT pg_catalog.current_setting('search_path')", &[])
        .await
        .ctx("reading search_path")?
        .get(0);
    // Deparsed with the live schemas first, so that the pairs' names print unqualified.
    let mut live_schemas: Vec<String> = Vec::new();
    for p in pairs {
        let s = quote_ident(&p.live.schema);
        if !live_schemas.contains(&s) {
            live_schemas.push(s);
        }
    }
    for &m in &order {
        let s = quote_ident(&graph.nodes[&m].name.schema);
        if !live_schemas.contains(&s) {
            live_schemas.push(s);
        }
    }
    let live_path = if saved_path.trim().is_empty() {
        live_schemas.join(", ")
    } else {
        format!("{}, {saved_path}", live_schemas.join(", "))
    };
    let now = Utc::now();
    let schema = super::green_schema(now);
    let mut green_schemas: Vec<String> = Vec::new();
    for p in pairs.iter().filter(|p| p.green.name == p.live.name) {
        let s = quote_ident(&p.green.schema);
        if !green_schemas.contains(&s) {
            green_schemas.push(s);
        }
    }
    let build_path = std::iter::once(quote_ident(&schema))
        .chain(green_schemas)
        .chain(std::iter::once(live_path.clone()))
        .collect::<Vec<_>>()
        .join(", ");

    let filter = Filter {
        include_schemas: order
            .iter()
            .map(|m| graph.nodes[m].name.schema.clone())
            .collect(),
        exclude_schemas: Vec::new(),
    };
    let snap = Snapshot::load(client, &filter).await?;
    crate::state::ensure(client).await?;

    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL lock_timeout = '1s'; \
             SET LOCAL search_path = {live_path}"
        ))
        .await
        .ctx("starting the build beside")?;
    let mut planned = Vec::new();
    for &m in &order {
        let def: String = client
            .query_one(
                "SELECT pg_catalog.pg_get_viewdef($1::pg_catalog.oid)",
                &[&m],
            )
            .await
            .ctx("reading a definition")?
            .get(0);
        let mut upstream: Vec<u32> = graph.upstream_members(m, mvs).into_iter().collect();
        upstream.sort();
        planned.push(Planned {
            oid: m,
            live: graph.nodes[&m].name.clone(),
            kind: RelKind::MaterializedView,
            query: def.trim().trim_end_matches(';').to_string(),
            explicit: false,
            upstream,
        });
    }
    let mut sql = format!(
        "CREATE SCHEMA {s}; COMMENT ON SCHEMA {s} IS {}; ",
        quote_literal("pgflip: materialized views built beside for a flip"),
        s = quote_ident(&schema)
    );
    // Staging tables under another name: into the build schema, under the live name.
    let moved: Vec<&FlipPair> = pairs
        .iter()
        .filter(|p| p.green.name != p.live.name)
        .collect();
    for p in &moved {
        sql.push_str(&format!(
            "ALTER TABLE {} SET SCHEMA {}; ALTER TABLE {} RENAME TO {}; ",
            p.green.sql(),
            quote_ident(&schema),
            qualified(&schema, &p.green.name),
            quote_ident(&p.live.name)
        ));
    }
    sql.push_str(&format!("SET LOCAL search_path = {build_path}"));
    client
        .batch_execute(&sql)
        .await
        .ctx("preparing the build beside")?;
    let mut out = Vec::new();
    for (pos, p) in planned.iter().enumerate() {
        let green = qualified(&schema, &p.live.name);
        events.emit(Event::Info {
            message: format!(
                "building {} beside, over the new version of what it reads",
                p.live
            ),
        });
        client
            .batch_execute(&create_sql(&snap, p, &green))
            .await
            .map_err(|e| Error::db(format!("building {} beside", p.live), e))?;
        for (what, sql) in decorate_sql(&snap, p, &green) {
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| Error::db(format!("building {} beside: {what}", p.live), e))?;
        }
        let reads_live: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_rewrite rw JOIN pg_catalog.pg_depend d \
                   ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = rw.oid \
                  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                 WHERE rw.ev_class = pg_catalog.to_regclass($1) AND d.refobjid = ANY($2)",
                &[&green, &live.iter().copied().chain(mvs.iter().copied()).collect::<Vec<u32>>()],
            )
            .await
            .ctx("checking what it reads")?
            .get(0);
        if reads_live > 0 {
            return Err(Error::Refused(crate::error::Refusal::new(
                "a materialized view built beside would still read the live relation",
                vec![crate::error::Problem::new(
                    p.live.to_string(),
                    format!(
                        "{} would still read a live relation (it names it with its schema)",
                        p.live
                    ),
                )],
            )));
        }
        let member = Member {
            pipeline: schema.clone(),
            position: pos as i32,
            kind: RelKind::MaterializedView,
            query: p.query.clone(),
            search_path: build_path.clone(),
            explicit: false,
            definition_changed: false,
            upstream: p
                .upstream
                .iter()
                .map(|u| graph.nodes[u].name.to_string())
                .collect(),
            built_at: now,
            refreshed_at: now,
            base: Vec::new(),
            skipped_indexes: Vec::new(),
            dropped_columns: Vec::new(),
            new: false,
        };
        let details = serde_json::to_value(&member)
            .map_err(|e| Error::Config(format!("encoding the record: {e}")))?;
        client
            .batch_execute(&crate::state::record_operation_sql(
                crate::state::OperationKind::Green,
                crate::state::Phase::Built,
                (&p.live.schema, &p.live.name),
                (&schema, &p.live.name),
                &details,
            ))
            .await
            .ctx("recording what was built beside")?;
        out.push(FlipPair {
            live: p.live.clone(),
            green: QualifiedName::new(schema.clone(), p.live.name.clone()),
        });
    }
    let mut back = String::new();
    for p in &moved {
        back.push_str(&format!(
            "ALTER TABLE {} RENAME TO {}; ALTER TABLE {} SET SCHEMA {}; ",
            qualified(&schema, &p.live.name),
            quote_ident(&p.green.name),
            qualified(&schema, &p.green.name),
            quote_ident(&p.green.schema)
        ));
    }
    back.push_str("COMMIT");
    client
        .batch_execute(&back)
        .await
        .ctx("finishing the build beside")?;
    Ok(Beside {
        pairs: out,
        in_flip_after: format!(
            "DO $pgflip$ BEGIN DROP SCHEMA {}; EXCEPTION WHEN dependent_objects_still_exist THEN NULL; END $pgflip$",
            quote_ident(&schema)
        ),
        schema,
    })
}

/// Drops what [`build`] made, if the flip did not take it (its records are still there: a
/// committed flip removes them in its transaction).
pub async fn discard(client: &Client, b: &Beside) -> Result<()> {
    client
        .batch_execute(&format!(
            "DO $pgflip$ BEGIN \
               IF EXISTS (SELECT 1 FROM pgflip.operations WHERE kind = {k} AND green_schema = {l}) THEN \
                 DROP SCHEMA IF EXISTS {s} CASCADE; \
                 DELETE FROM pgflip.operations WHERE kind = {k} AND green_schema = {l}; \
               END IF; END $pgflip$",
            s = quote_ident(&b.schema),
            k = quote_literal(super::KIND),
            l = quote_literal(&b.schema)
        ))
        .await
        .map_err(|e| Error::db("dropping the materialized views built beside", e))
}
