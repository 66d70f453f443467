//! `green create`: build the new version of one relation, or of a pipeline, in a schema of its
//! own, beside the live one.
//!
//! The build is one REPEATABLE READ transaction: every member reads the same snapshot of the
//! base tables (a pipeline is consistent with itself), the operation records are written in it,
//! and a crash or a failing query anywhere leaves nothing behind (the server rolls it back).
//! It only reads the live relations (ACCESS SHARE, like any query), never locks them
//! otherwise, and builds each green relation with the live one's storage parameters, then its
//! indexes (same names, same definitions where the columns still exist), owner, grants and
//! comments, so that promote has nothing left to build.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use serde::Serialize;
use tokio_postgres::Client;

use crate::catalog::{Filter, Snapshot};
use crate::error::{DbResultExt, Error, Result};
use crate::events::{Event, EventSink};
use crate::flip::QualifiedName;
use crate::ident::{qualified, quote_ident, quote_literal};
use crate::plan::{Plan, Step};

use super::pipeline::Graph;
use super::sqlfile::Definition;
use super::{GreenRelation, Member, RelKind};

/// How `create` behaves.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Build only the relations given, not the materialized views downstream of them (promote
    /// then refuses while one of those would read a retired relation).
    pub only: bool,
    /// Plan only.
    pub dry_run: bool,
}

/// What `create` built (or, with `dry_run`, would build).
#[derive(Debug, Clone, Serialize)]
pub struct CreateOutcome {
    pub pipeline: String,
    pub members: Vec<GreenRelation>,
    pub plan: Plan,
    /// Materialized views downstream that `--only` left out.
    pub left_out: Vec<String>,
    pub warnings: Vec<String>,
}

/// One member, before it is built.
pub(super) struct Planned {
    pub(super) oid: u32,
    pub(super) live: QualifiedName,
    pub(super) kind: RelKind,
    pub(super) query: String,
    pub(super) explicit: bool,
    pub(super) upstream: Vec<u32>,
}

/// `pg_get_indexdef` text of a live index, pointed at `green` (same name: it lives in another
/// schema).
pub fn index_on(def: &str, index_name: &str, green: &str) -> Option<String> {
    let marker = format!("INDEX {} ON ", quote_ident(index_name));
    let i = def.find(&marker)?;
    let rest = &def[i + marker.len()..];
    let j = rest.find(" USING ")?;
    Some(format!("{}{marker}{green}{}", &def[..i], &rest[j..]))
}

/// SQLSTATEs of an index or constraint that cannot be built because the column set or types
/// changed: undefined column, undefined function / operator class, datatype mismatch.
const SKIPPABLE: &[&str] = &["42703", "42883", "42704", "42804"];

pub async fn create(
    client: &Client,
    defs: &[Definition],
    opts: &CreateOptions,
    events: &dyn EventSink,
) -> Result<CreateOutcome> {
    if defs.is_empty() {
        return Err(Error::InvalidInput("nothing to build".into()));
    }
    let (explicit, added) = resolve_named(client, defs).await?;
    let graph = Graph::load(client).await?;
    let (members, left_out) = pipeline_members(&graph, &explicit, opts)?;
    // Nothing of it may be in flight already.
    let in_flight = super::load(client).await?;
    refuse_in_flight(&graph, &members, &in_flight)?;
    let order = graph.order(&members);
    let live_path = live_search_path(client, &graph, &order).await?;
    let mut planned =
        plan_existing(client, &graph, &order, &members, &explicit, &live_path).await?;
    plan_added(&mut planned, added, &graph, &order, &in_flight)?;

    // The live relations' indexes, grants, owner, comments and storage parameters.
    let filter = Filter {
        include_schemas: planned.iter().map(|p| p.live.schema.clone()).collect(),
        exclude_schemas: Vec::new(),
    };
    let snap = Snapshot::load(client, &filter).await?;

    let now = Utc::now();
    let schema = super::green_schema(now);
    let build_path = format!("{}, {live_path}", quote_ident(&schema));
    let plan = build_plan(&snap, &planned, &schema);
    if opts.dry_run {
        return Ok(CreateOutcome {
            pipeline: schema,
            members: Vec::new(),
            plan,
            left_out,
            warnings: Vec::new(),
        });
    }

    crate::state::ensure(client).await?;
    crate::failpoint::hit("green.create.before_build").await?;
    // Triggers a crashed run left on tables no pipeline reads.
    super::watch::unwatch_unused(client, events).await?;
    events.emit(Event::PhaseStarted {
        phase: "green build".into(),
    });
    let started = std::time::Instant::now();
    // The tables under the pipeline carry the change trigger, committed, before the build's
    // snapshot is taken (see `watch`).
    let bases = probe(client, &planned, &schema, &build_path).await?;
    let watched = async {
        super::watch::install(client, &bases, events).await?;
        crate::failpoint::hit("green.create.after_watch").await?;
        super::watch::compact(client).await?;
        // Read before the build's snapshot: a change after this can only make green look
        // staler (for the bases that cannot be watched).
        super::all_signatures(client).await
    }
    .await;
    let sigs = match watched {
        Ok(s) => s,
        Err(e) => {
            let _ = super::watch::unwatch_unused(client, events).await;
            return Err(e);
        }
    };
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL search_path = {build_path}"
        ))
        .await
        .ctx("starting the green build")?;
    let result = build(
        client,
        &snap,
        &planned,
        &schema,
        &build_path,
        now,
        &sigs,
        &plan,
        events,
    )
    .await;
    let (members, warnings) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            let _ = super::watch::unwatch_unused(client, events).await;
            return Err(e);
        }
    };
    if let Err(e) = crate::failpoint::hit("green.create.before_commit").await {
        let _ = client.batch_execute("ROLLBACK").await;
        let _ = super::watch::unwatch_unused(client, events).await;
        return Err(e);
    }
    if let Err(e) = client.batch_execute("COMMIT").await {
        let _ = client.batch_execute("ROLLBACK").await;
        let _ = super::watch::unwatch_unused(client, events).await;
        return Err(Error::db("committing the green build", e));
    }
    crate::failpoint::hit("green.create.after_commit").await?;
    events.emit(Event::PhaseFinished {
        phase: "green build".into(),
        elapsed: started.elapsed(),
    });
    for w in &warnings {
        events.emit(Event::Warning { message: w.clone() });
    }
    Ok(CreateOutcome {
        pipeline: schema,
        members,
        plan,
        left_out,
        warnings,
    })
}

/// What a pipeline file names: existing relations by OID, and relations it adds, each with its
/// new kind and definition.
type Named = (
    BTreeMap<u32, (QualifiedName, RelKind, String)>,
    Vec<(QualifiedName, RelKind, String)>,
);

/// Resolves what the user named, refusing what green cannot rebuild.
async fn resolve_named(client: &Client, defs: &[Definition]) -> Result<Named> {
    let mut explicit: BTreeMap<u32, (QualifiedName, RelKind, String)> = BTreeMap::new();
    let mut added: Vec<(QualifiedName, RelKind, String)> = Vec::new();
    for d in defs {
        let Some((q, relkind)) = super::resolve(client, &d.name).await? else {
            let Some(kind) = d.kind else {
                return Err(Error::InvalidInput(format!(
                    "relation {} does not exist (green rebuilds an existing materialized view or table; a new one needs a CREATE statement in a pipeline file; nothing was changed)",
                    d.name
                )));
            };
            let q = new_name(client, &d.name).await?;
            if added.iter().any(|(a, _, _)| a == &q) {
                return Err(Error::InvalidInput(format!("{q} is defined twice")));
            }
            added.push((q, kind, d.query.clone()));
            continue;
        };
        let kind = match relkind.as_str() {
            "m" => RelKind::MaterializedView,
            "r" => RelKind::Table,
            "v" if d.kind == Some(RelKind::View) => RelKind::View,
            "v" => {
                return Err(Error::InvalidInput(format!(
                    "{q} is a view, not a materialized view nor a table: a view holds no data, change it with CREATE OR REPLACE VIEW (nothing was changed)"
                )))
            }
            "p" => {
                return Err(Error::InvalidInput(format!(
                    "{q} is a partitioned table: green does not rebuild partitioned tables (nothing was changed)"
                )))
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "{q} is not a materialized view nor a table (relkind '{other}'; nothing was changed)"
                )))
            }
        };
        if let Some(k) = d.kind {
            if k != kind {
                return Err(Error::InvalidInput(format!(
                    "{q} is a {}, but the file creates it as a {} (nothing was changed)",
                    kind.sql().to_lowercase(),
                    k.sql().to_lowercase()
                )));
            }
        }
        if q.schema == crate::state::SCHEMA || q.schema.starts_with("pgflip_") {
            return Err(Error::InvalidInput(format!(
                "{q} belongs to pgflip; name the live relation"
            )));
        }
        let oid: u32 = client
            .query_one(
                "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
                &[&d.name],
            )
            .await
            .ctx("resolving a relation")?
            .get(0);
        if explicit
            .insert(oid, (q.clone(), kind, d.query.clone()))
            .is_some()
        {
            return Err(Error::InvalidInput(format!("{q} is defined twice")));
        }
    }
    Ok((explicit, added))
}

/// The pipeline: the given relations and every materialized view downstream (only the given
/// ones with `--only`: the others are returned as left out).
fn pipeline_members(
    graph: &Graph,
    explicit: &BTreeMap<u32, (QualifiedName, RelKind, String)>,
    opts: &CreateOptions,
) -> Result<(BTreeSet<u32>, Vec<String>)> {
    let roots: Vec<u32> = explicit.keys().copied().collect();
    let (downstream_mvs, _views) = graph.downstream(&roots);
    let mut members: BTreeSet<u32> = roots.iter().copied().collect();
    let mut left_out = Vec::new();
    for m in &downstream_mvs {
        if members.contains(m) {
            continue;
        }
        if opts.only {
            left_out.push(graph.name(*m));
        } else {
            members.insert(*m);
        }
    }
    // Views between two members (a materialized view reading a changed one through a view)
    // are rebuilt too, over the green upstream, and switch with the rest.
    if !opts.only {
        members.extend(graph.views_to_include(&members));
    }
    let between = graph.views_between(&members);
    if !between.is_empty() {
        return Err(Error::InvalidInput(format!(
            "materialized views that read another member of the pipeline through a view are not supported yet (nothing was changed): {}",
            between
                .iter()
                .map(|(up, v, low)| format!("{} reads {} through view {}", graph.name(*low), graph.name(*up), graph.name(*v)))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    let mut by_name: BTreeMap<&str, &QualifiedName> = BTreeMap::new();
    for m in &members {
        let n = &graph.nodes[m].name;
        if let Some(other) = by_name.insert(n.name.as_str(), n) {
            return Err(Error::InvalidInput(format!(
                "{other} and {n} have the same name: one pipeline cannot hold both (build them one at a time)"
            )));
        }
    }
    Ok((members, left_out))
}

fn refuse_in_flight(
    graph: &Graph,
    members: &BTreeSet<u32>,
    in_flight: &[GreenRelation],
) -> Result<()> {
    for g in in_flight {
        if members.iter().any(|m| graph.nodes[m].name == g.live) {
            return Err(Error::InvalidInput(format!(
                "a green version of {} is already in flight (pipeline {}): promote or cancel it first",
                g.live, g.member.pipeline
            )));
        }
    }
    Ok(())
}

/// The session's search_path with the members' schemas first, so that the members' printed
/// definitions resolve as they do live.
async fn live_search_path(client: &Client, graph: &Graph, order: &[u32]) -> Result<String> {
    let saved_path: String = client
        .query_one("SELECT pg_catalog.current_setting('search_path')", &[])
        .await
        .ctx("reading search_path")?
        .get(0);
    let mut member_schemas: Vec<String> = Vec::new();
    for m in order {
        let s = quote_ident(&graph.nodes[m].name.schema);
        if !member_schemas.contains(&s) {
            member_schemas.push(s);
        }
    }
    let live_path = if saved_path.trim().is_empty() {
        member_schemas.join(", ")
    } else {
        format!("{}, {saved_path}", member_schemas.join(", "))
    };
    Ok(live_path)
}

/// The existing members in build order: the named ones with their new definition, the others
/// with their current one.
async fn plan_existing(
    client: &Client,
    graph: &Graph,
    order: &[u32],
    members: &BTreeSet<u32>,
    explicit: &BTreeMap<u32, (QualifiedName, RelKind, String)>,
    live_path: &str,
) -> Result<Vec<Planned>> {
    // Current definitions of the downstream members, printed so that the names of pipeline
    // members are unqualified (and resolve to green under the build's search_path).
    let mut planned = Vec::new();
    for &m in order {
        let node = &graph.nodes[&m];
        let upstream: Vec<u32> = graph.upstream_members(m, members).into_iter().collect();
        let (kind, query, is_explicit) = match explicit.get(&m) {
            Some((_, k, q)) => (*k, q.clone(), true),
            None => {
                let kind = if node.relkind == "v" {
                    RelKind::View
                } else {
                    RelKind::MaterializedView
                };
                client
                    .batch_execute(&format!(
                        "BEGIN READ ONLY; SET LOCAL search_path = {live_path}"
                    ))
                    .await
                    .ctx("reading a definition")?;
                let def = client
                    .query_one(
                        "SELECT pg_catalog.pg_get_viewdef($1::pg_catalog.oid)",
                        &[&m],
                    )
                    .await;
                let _ = client.batch_execute("COMMIT").await;
                let def: String = def.ctx("reading a definition")?.get(0);
                (kind, def.trim().trim_end_matches(';').to_string(), false)
            }
        };
        planned.push(Planned {
            oid: m,
            live: node.name.clone(),
            kind,
            query,
            explicit: is_explicit,
            upstream,
        });
    }
    Ok(planned)
}

fn plan_added(
    planned: &mut Vec<Planned>,
    added: Vec<(QualifiedName, RelKind, String)>,
    graph: &Graph,
    order: &[u32],
    in_flight: &[GreenRelation],
) -> Result<()> {
    // New relations, in file order after every existing member: they may read changed members
    // and each other (earlier in the file); no existing relation reads them yet.
    for (q, kind, query) in added {
        if order.iter().any(|m| graph.nodes[m].name.name == q.name)
            || planned.iter().any(|p: &Planned| p.live.name == q.name)
        {
            return Err(Error::InvalidInput(format!(
                "{q} has the name of another member of the pipeline: one pipeline cannot hold both (nothing was changed)"
            )));
        }
        if let Some(g) = in_flight.iter().find(|g| g.live == q) {
            return Err(Error::InvalidInput(format!(
                "a green version of {} is already in flight (pipeline {}): promote or cancel it first",
                g.live, g.member.pipeline
            )));
        }
        planned.push(Planned {
            oid: 0,
            live: q,
            kind,
            query,
            explicit: true,
            upstream: Vec::new(),
        });
    }
    Ok(())
}

/// The statements of the build, in order: green's schema, then each member and what decorates
/// it.
fn build_plan(snap: &Snapshot, planned: &[Planned], schema: &str) -> Plan {
    let mut plan = Plan::new(format!(
        "build green for {} relation(s) in schema {schema}",
        planned.len()
    ));
    plan.push(
        Step::new(
            format!("create schema {schema} for the pipeline"),
            format!(
                "CREATE SCHEMA {s}; COMMENT ON SCHEMA {s} IS {}",
                quote_literal(
                    "pgflip green pipeline: new versions of live relations, waiting for promote"
                ),
                s = quote_ident(schema)
            ),
        )
        .in_transaction(0),
    );
    for p in planned {
        let green = qualified(schema, &p.live.name);
        plan.push(
            Step::new(
                format!(
                    "build green {} for {} ({})",
                    green,
                    p.live,
                    if p.explicit {
                        "new definition"
                    } else {
                        "current definition, over the green upstream"
                    }
                ),
                create_sql(snap, p, &green),
            )
            .in_transaction(0),
        );
        for (d, sql) in decorate_sql(snap, p, &green) {
            plan.push(Step::new(d, sql).in_transaction(0));
        }
    }
    plan
}

/// Where a relation the file adds goes: its schema as written, or the first schema of
/// `search_path` (where CREATE would put it).
async fn new_name(client: &Client, name: &str) -> Result<QualifiedName> {
    let row = client
        .query_one(
            "SELECT p[1], p[2], p[3] FROM (SELECT pg_catalog.parse_ident($1) AS p) x",
            &[&name],
        )
        .await
        .map_err(|e| {
            Error::InvalidInput(format!(
                "{name:?} is not a relation name: {}",
                e.as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_default()
            ))
        })?;
    let (a, b, c): (Option<String>, Option<String>, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    let q = match (a, b, c) {
        (Some(n), None, None) => {
            let s: Option<String> = client
                .query_one("SELECT pg_catalog.current_schema()::text", &[])
                .await
                .ctx("reading search_path")?
                .get(0);
            let Some(s) = s else {
                return Err(Error::InvalidInput(format!(
                    "{name} is new and search_path names no schema to put it in: qualify it (nothing was changed)"
                )));
            };
            QualifiedName::new(s, n)
        }
        (Some(s), Some(n), None) => QualifiedName::new(s, n),
        _ => {
            return Err(Error::InvalidInput(format!(
                "{name:?} is not a relation name of this database (nothing was changed)"
            )))
        }
    };
    if q.schema == crate::state::SCHEMA || q.schema.starts_with("pgflip_") {
        return Err(Error::InvalidInput(format!(
            "{q} would belong to pgflip; name a schema of the application"
        )));
    }
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = $1)",
            &[&q.schema],
        )
        .await
        .ctx("reading schemas")?
        .get(0);
    if !exists {
        return Err(Error::InvalidInput(format!(
            "schema {} of new relation {q} does not exist (nothing was changed)",
            quote_ident(&q.schema)
        )));
    }
    Ok(q)
}

/// The base tables the pipeline will read, found before anything is built: every member is
/// created as a plain view (no data) under the build's names in a transaction that is rolled
/// back. A query that does not parse or names something unknown fails here, before any
/// trigger is put on the application's tables.
async fn probe(
    client: &Client,
    planned: &[Planned],
    schema: &str,
    build_path: &str,
) -> Result<Vec<u32>> {
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL search_path = {build_path}; CREATE SCHEMA {}",
            quote_ident(schema)
        ))
        .await
        .ctx("starting the green probe")?;
    let res = async {
        let mut bases: BTreeSet<u32> = BTreeSet::new();
        let mut failed = false;
        for p in planned {
            let green = qualified(schema, &p.live.name);
            if failed {
                // Downstream of a member that could not be probed: what live reads.
                bases.extend(super::base_oids(client, p.oid, schema).await?);
                continue;
            }
            client
                .batch_execute("SAVEPOINT pgflip_probe")
                .await
                .ctx("savepoint")?;
            if let Err(e) = client
                .batch_execute(&format!("CREATE VIEW {green} AS {}", p.query))
                .await
            {
                let err = Error::db(
                    format!(
                        "building green {green} for {} failed (nothing was changed)",
                        p.live
                    ),
                    e,
                );
                // A new definition that is wrong is the user's error, said now. A downstream
                // member that cannot be built over it (a column the new query drops) is left
                // to the build, which reports the first error in pipeline order (a query that
                // fails when it runs, say, rather than a consequence of it).
                if p.explicit {
                    return Err(err);
                }
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT pgflip_probe")
                    .await
                    .ctx("savepoint")?;
                failed = true;
                bases.extend(super::base_oids(client, p.oid, schema).await?);
                continue;
            }
            let oid: u32 = client
                .query_one(
                    "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
                    &[&green],
                )
                .await
                .ctx("finding the probe view")?
                .get(0);
            bases.extend(super::base_oids(client, oid, schema).await?);
        }
        Ok::<_, Error>(bases.into_iter().collect())
    }
    .await;
    let _ = client.batch_execute("ROLLBACK").await;
    res
}

pub(super) fn create_sql(snap: &Snapshot, p: &Planned, green: &str) -> String {
    let reloptions = match p.kind {
        RelKind::MaterializedView | RelKind::View => snap
            .view(&p.live.schema, &p.live.name)
            .map(|v| v.reloptions.clone()),
        RelKind::Table => snap
            .table(&p.live.schema, &p.live.name)
            .map(|t| t.reloptions.clone()),
    }
    .unwrap_or_default();
    let with = if reloptions.is_empty() {
        String::new()
    } else {
        format!(" WITH ({})", reloptions.join(", "))
    };
    format!(
        "CREATE {} {green}{with} AS {}{}",
        p.kind.sql(),
        p.query,
        if p.kind == RelKind::View {
            ""
        } else {
            "\nWITH DATA"
        }
    )
}

/// Indexes and key constraints (first), then owner, grants and comments, as live has them.
pub(super) fn decorate_sql(snap: &Snapshot, p: &Planned, green: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let kind = p.kind.sql();
    let (owner, acl, comment, columns, indexes, constraints) = match p.kind {
        RelKind::MaterializedView | RelKind::View => {
            match snap.view(&p.live.schema, &p.live.name) {
                Some(v) => (
                    v.owner.clone(),
                    v.acl.clone(),
                    v.comment.clone(),
                    v.columns.clone(),
                    v.indexes.clone(),
                    Vec::new(),
                ),
                None => return out,
            }
        }
        RelKind::Table => match snap.table(&p.live.schema, &p.live.name) {
            Some(t) => (
                t.owner.clone(),
                t.acl.clone(),
                t.comment.clone(),
                t.columns.clone(),
                t.indexes.clone(),
                t.constraints.clone(),
            ),
            None => return out,
        },
    };
    for c in columns.iter().filter(|c| c.not_null) {
        out.push((
            format!("column:{}", c.name),
            format!(
                "ALTER TABLE {green} ALTER COLUMN {} SET NOT NULL",
                quote_ident(&c.name)
            ),
        ));
    }
    for c in constraints.iter().filter(|c| {
        matches!(
            c.kind,
            crate::catalog::ConstraintKind::PrimaryKey
                | crate::catalog::ConstraintKind::Unique
                | crate::catalog::ConstraintKind::Exclusion
        )
    }) {
        out.push((
            format!("constraint {}", quote_ident(&c.name)),
            format!(
                "ALTER TABLE {green} ADD CONSTRAINT {} {}",
                quote_ident(&c.name),
                c.definition
            ),
        ));
    }
    for i in indexes.iter().filter(|i| i.constraint.is_none()) {
        if let Some(def) = index_on(&i.definition, &i.name, green) {
            out.push((format!("index {}", quote_ident(&i.name)), def));
        }
    }
    out.push((
        "owner".into(),
        format!("ALTER {kind} {green} OWNER TO {}", quote_ident(&owner)),
    ));
    let grants = crate::ddl::grants_for(&format!("TABLE {green}"), &owner, acl.as_ref());
    if !grants.is_empty() {
        out.push(("grants".into(), grants));
    }
    for c in &columns {
        let g = crate::ddl::column_grants(green, &owner, c);
        if !g.is_empty() {
            out.push((format!("column:{}", c.name), g));
        }
        if let Some(cm) = &c.comment {
            out.push((
                format!("column:{}", c.name),
                format!(
                    "COMMENT ON COLUMN {green}.{} IS {}",
                    quote_ident(&c.name),
                    quote_literal(cm)
                ),
            ));
        }
    }
    if let Some(cm) = &comment {
        out.push((
            "comment".into(),
            format!("COMMENT ON {kind} {green} IS {}", quote_literal(cm)),
        ));
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn build(
    client: &Client,
    snap: &Snapshot,
    planned: &[Planned],
    schema: &str,
    build_path: &str,
    now: chrono::DateTime<Utc>,
    sigs: &BTreeMap<u32, super::BaseSig>,
    plan: &Plan,
    events: &dyn EventSink,
) -> Result<(Vec<GreenRelation>, Vec<String>)> {
    client
        .batch_execute(&plan.steps[0].sql)
        .await
        .ctx("creating the green schema")?;
    let member_oids: BTreeSet<u32> = planned.iter().map(|p| p.oid).collect();
    let mut warnings = Vec::new();
    let mut out: Vec<GreenRelation> = Vec::new();
    let mut effective_changed: BTreeMap<u32, bool> = BTreeMap::new();
    for (pos, p) in planned.iter().enumerate() {
        let green_q = QualifiedName::new(schema, p.live.name.clone());
        let green = green_q.sql();
        events.emit(Event::Info {
            message: format!("building green {green} for {}", p.live),
        });
        client
            .batch_execute(&create_sql(snap, p, &green))
            .await
            .map_err(|e| {
                Error::db(
                    format!(
                        "building green {} for {} failed (nothing was changed)",
                        green, p.live
                    ),
                    e,
                )
            })?;
        let green_oid: u32 = client
            .query_one(
                "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
                &[&green],
            )
            .await
            .ctx("finding the green relation")?
            .get(0);
        // What it reads: for a table, through a temporary view of its query.
        let reader = match p.kind {
            RelKind::MaterializedView | RelKind::View => green_oid,
            RelKind::Table => {
                client
                    .batch_execute(&format!(
                        "CREATE TEMPORARY VIEW pgflip_green_query AS {}",
                        p.query
                    ))
                    .await
                    .ctx("reading what the query reads")?;
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
        let reads_live: Vec<String> = client
            .query(
                "SELECT DISTINCT d.refobjid FROM pg_catalog.pg_rewrite rw JOIN pg_catalog.pg_depend d \
                   ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = rw.oid \
                  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                 WHERE rw.ev_class = $1",
                &[&reader],
            )
            .await
            .ctx("reading what green reads")?
            .iter()
            .map(|r| r.get::<_, u32>(0))
            .filter(|o| member_oids.contains(o))
            .map(|o| {
                planned
                    .iter()
                    .find(|x| x.oid == o)
                    .map(|x| x.live.to_string())
                    .unwrap_or_default()
            })
            .collect();
        if !reads_live.is_empty() {
            return Err(Error::InvalidInput(format!(
                "green {} for {} would read the live {} instead of its green version: inside a pipeline, \
                 name its members as search_path finds them (without their schema); nothing was changed",
                green,
                p.live,
                reads_live.join(", ")
            )));
        }
        let new_upstream: Vec<String> = if p.oid == 0 {
            client
                .query(
                    "SELECT DISTINCT c.relname::text FROM pg_catalog.pg_rewrite rw JOIN pg_catalog.pg_depend d \
                       ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = rw.oid \
                      AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                     JOIN pg_catalog.pg_class c ON c.oid = d.refobjid \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                     WHERE rw.ev_class = $1 AND n.nspname = $2 AND c.oid <> $1",
                    &[&reader, &schema],
                )
                .await
                .ctx("reading what green reads")?
                .iter()
                .filter_map(|r| {
                    let n: String = r.get(0);
                    planned.iter().find(|x| x.live.name == n).map(|x| x.live.to_string())
                })
                .collect()
        } else {
            Vec::new()
        };
        let base = super::base_of(client, reader, schema, sigs).await?;
        if p.kind == RelKind::Table {
            client
                .batch_execute("DROP VIEW pg_temp.pgflip_green_query")
                .await
                .ctx("dropping the temporary view")?;
        }

        // Columns: which of live's are gone.
        let cols = |oid: u32| async move {
            client
                .query(
                    "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute \
                     WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    &[&oid],
                )
                .await
                .ctx("reading columns")
                .map(|rows| {
                    rows.iter()
                        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                        .collect::<Vec<_>>()
                })
        };
        let live_cols = cols(p.oid).await?;
        let green_cols = cols(green_oid).await?;
        let dropped: Vec<String> = live_cols
            .iter()
            .filter(|(n, _)| !green_cols.iter().any(|(g, _)| g == n))
            .map(|(n, _)| quote_ident(n))
            .collect();

        // Indexes, constraints, owner, grants, comments. An index or key whose column is gone
        // (or changed type beyond its operator class) is left out and reported; any other
        // failure (a unique index the new rows violate) fails the build.
        let mut skipped = Vec::new();
        for (what, sql) in decorate_sql(snap, p, &green) {
            if let Some(col) = what.strip_prefix("column:") {
                if !green_cols.iter().any(|(g, _)| g == col) {
                    continue;
                }
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| Error::db(format!("building green {green}: {}", sql.trim()), e))?;
                continue;
            }
            client
                .batch_execute("SAVEPOINT pgflip_green_item")
                .await
                .ctx("savepoint")?;
            match client.batch_execute(&sql).await {
                Ok(()) => {
                    client
                        .batch_execute("RELEASE SAVEPOINT pgflip_green_item")
                        .await
                        .ctx("savepoint")?;
                }
                Err(e) if e.code().is_some_and(|c| SKIPPABLE.contains(&c.code())) => {
                    client
                        .batch_execute("ROLLBACK TO SAVEPOINT pgflip_green_item")
                        .await
                        .ctx("savepoint")?;
                    let msg = e
                        .as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_default();
                    skipped.push(format!("{what} ({msg})"));
                }
                Err(e) => {
                    return Err(Error::db(
                        format!(
                            "building green {green} for {}: {what} (nothing was changed)",
                            p.live
                        ),
                        e,
                    ))
                }
            }
        }
        for s in &skipped {
            warnings.push(format!(
                "green {} has no {s}: it stays with the retired relation at promote",
                p.live
            ));
        }

        // Whether the definition changed: the server's own deparse of both, green's members
        // named as live ones.
        let definition_changed = match p.kind {
            _ if p.oid == 0 => true,
            RelKind::Table => true,
            RelKind::MaterializedView | RelKind::View => {
                client
                    .batch_execute("SET LOCAL search_path = ''")
                    .await
                    .ctx("search_path")?;
                let row = client
                    .query_one(
                        "SELECT pg_catalog.pg_get_viewdef($1::pg_catalog.oid), pg_catalog.pg_get_viewdef($2::pg_catalog.oid)",
                        &[&p.oid, &green_oid],
                    )
                    .await
                    .ctx("comparing definitions")?;
                client
                    .batch_execute(&format!("SET LOCAL search_path = {build_path}"))
                    .await
                    .ctx("search_path")?;
                let (live_def, mut green_def): (String, String) = (row.get(0), row.get(1));
                for x in planned {
                    green_def = green_def.replace(&qualified(schema, &x.live.name), &x.live.sql());
                }
                live_def != green_def
            }
        };
        let upstream_changed = p
            .upstream
            .iter()
            .any(|u| effective_changed.get(u).copied().unwrap_or(false));
        effective_changed.insert(p.oid, definition_changed || upstream_changed);

        let member = Member {
            pipeline: schema.to_string(),
            position: pos as i32,
            kind: p.kind,
            query: p.query.clone(),
            search_path: build_path.to_string(),
            explicit: p.explicit,
            definition_changed,
            upstream: p
                .upstream
                .iter()
                .filter_map(|u| planned.iter().find(|x| x.oid == *u))
                .map(|x| x.live.to_string())
                .chain(new_upstream)
                .collect(),
            built_at: now,
            refreshed_at: now,
            base,
            skipped_indexes: skipped,
            dropped_columns: dropped,
            new: p.oid == 0,
        };
        let details = serde_json::to_value(&member)
            .map_err(|e| Error::Config(format!("encoding the green record: {e}")))?;
        client
            .batch_execute(&crate::state::record_operation_sql(
                crate::state::OperationKind::Green,
                crate::state::Phase::Built,
                (&p.live.schema, &p.live.name),
                (schema, &p.live.name),
                &details,
            ))
            .await
            .ctx("recording the green operation")?;
        out.push(GreenRelation {
            live: p.live.clone(),
            green: green_q,
            phase: crate::state::Phase::Built,
            member,
        });
    }
    Ok((out, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_definitions_are_pointed_at_green() {
        assert_eq!(
            index_on(
                "CREATE UNIQUE INDEX mv_id ON public.mv USING btree (id)",
                "mv_id",
                "pgflip_green_x.mv"
            )
            .unwrap(),
            "CREATE UNIQUE INDEX mv_id ON pgflip_green_x.mv USING btree (id)"
        );
        assert_eq!(
            index_on(
                "CREATE INDEX \"Odd Idx\" ON \"S\".\"M v\" USING gist (g) WHERE (a > 0)",
                "Odd Idx",
                "g.\"M v\""
            )
            .unwrap(),
            "CREATE INDEX \"Odd Idx\" ON g.\"M v\" USING gist (g) WHERE (a > 0)"
        );
    }
}
