//! `migrate prepare`: build the source's version of every table beside the live ones.
//!
//! Phases (each ends at a failpoint `migrate.prepare.<phase>` and a saved record):
//! 1. `recorded`: the operation record, the shadow schemas, the rejected-writes table and the
//!    forwarded-writes counter, in one transaction; every name prepare will use is in the
//!    record from here on.
//! 2. `structure`: the shadow tables (and their serial sequences), empty, in one transaction;
//!    the preserved tables' keys are built now, because forwarding needs them.
//! 3. `captured`: the capture triggers on the preserved tables (under a short lock timeout).
//! 4. `copied`: the rows. The source's under one exported snapshot (each worker imports it),
//!    the preserved tables' from the live tables ([`super::capture::copy_live_rows`]); then
//!    the shadow sequences take the source's positions, read in the same snapshot.
//! 5. `indexed`: key constraints and indexes of the other tables, built after the data, in
//!    parallel; `ANALYZE`. A table's builds start as soon as its own rows are in, while other
//!    tables are still being copied ([`copy_and_index`]), so some are done before `copied`.
//! 6. `validated`: foreign keys added `NOT VALID`, then validated, so the swap checks nothing.
//!
//! Work on the target never uses more than `jobs` connections (one of them the coordinating
//! one, which holds pgflip's target lock and copies and builds too). A failure removes what was built (the same code as
//! `abort`) unless `keep_on_failure`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use crate::catalog::{Filter, Snapshot, Table, TableKind};
use crate::conn::Endpoint;
use crate::copy::{self, Format};
use crate::error::{DbResultExt, Error, Result};
use crate::events::{Event, EventSink};
use crate::failpoint;
use crate::ident::{qualified, quote_ident, quote_literal};
use crate::state;

use super::capture::{self, ColumnMap};
use super::objects;
use super::record::{self, Phase, Preserved, Record, SchemaMap, TableEntry};
use super::shadow::{self, ShadowTable};

/// What `prepare` is asked to do.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Schemas to migrate (empty: every user schema of the source).
    pub schemas: Vec<String>,
    /// Tables to leave alone (`name`, `schema.name`, `*` patterns).
    pub exclude: Vec<String>,
    /// Tables whose target rows are kept and kept in sync until the swap.
    pub preserved: Vec<String>,
    /// `(table, column, expression)`: values for new NOT NULL columns of preserved tables.
    pub column_defaults: Vec<(String, String, String)>,
    /// Connections to the target, at most.
    pub jobs: usize,
    pub keep_on_failure: bool,
    /// Leave the target's tables that the source lacks live (default: the swap retires them).
    pub keep_extra_tables: bool,
    pub lock_timeout: Duration,
    pub max_wait: Duration,
    /// Plan only: print what would be built, change nothing.
    pub dry_run: bool,
    /// Becomes `true` when the user interrupts: the build stops, its statements are
    /// cancelled, and what it built is removed as on a failure (unless `keep_on_failure`).
    pub interrupt: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            schemas: Vec::new(),
            exclude: Vec::new(),
            preserved: Vec::new(),
            column_defaults: Vec::new(),
            jobs: 4,
            keep_on_failure: false,
            keep_extra_tables: false,
            lock_timeout: Duration::from_millis(100),
            max_wait: Duration::from_secs(30),
            dry_run: false,
            interrupt: None,
        }
    }
}

/// What prepare built (or, with `dry_run`, would build).
#[derive(Debug, Clone, Serialize)]
pub struct PrepareReport {
    pub record: Record,
    /// With `dry_run`: the structure script.
    pub script: Option<String>,
    pub elapsed_ms: u64,
}

/// Everything decided before anything is written.
struct Planned {
    tables: Vec<ShadowTable>,
    entries: Vec<TableEntry>,
    schemas: Vec<(String, bool)>,
    maps: BTreeMap<(String, String), ColumnMap>,
    key_types: BTreeMap<(String, String), Vec<String>>,
    /// Source sequence (qualified) -> shadow sequence (qualified), for the positions.
    sequences: Vec<(String, String)>,
    /// The source's objects the target lacks that the tables may use, created before them
    /// ([`objects::additions`]), and what abort runs to remove them.
    additions: Vec<String>,
    addition_drops: Vec<String>,
    /// Schemas prepare creates (the live schemas the target lacks, and the additions').
    created_schemas: Vec<String>,
    added_objects: Vec<(String, String, String)>,
    /// The source's materialized views built beside: (live schema, name, CREATE in the shadow
    /// schema, whether the target has one of that name to replace).
    matviews: Vec<(String, String, String, bool)>,
    /// Target tables the source lacks, retired by the swap.
    extra_tables: Vec<(String, String)>,
}

fn excluded(patterns: &[String], schema: &str, name: &str) -> bool {
    let scope = crate::sync::SchemaScope::All;
    patterns
        .iter()
        .any(|p| crate::sync::tables::matches(p, schema, name, &scope))
}

fn find<'a>(tables: &'a [Table], spec: &str) -> Vec<&'a Table> {
    tables
        .iter()
        .filter(|t| {
            spec == t.name && t.schema == "public"
                || spec == format!("{}.{}", t.schema, t.name)
                || spec == t.sql_name()
        })
        .collect()
}

fn plan(
    src: &Snapshot,
    tgt: &Snapshot,
    opts: &PrepareOptions,
    owner: &str,
    id: i64,
) -> Result<Planned> {
    // A partition goes with its partitioned table: excluding the parent excludes it too
    // (built alone, it would be attached to the live parent).
    let selected: BTreeSet<(String, String)> = src
        .tables
        .iter()
        .filter(|t| {
            let mut cur = *t;
            loop {
                if excluded(&opts.exclude, &cur.schema, &cur.name) {
                    return false;
                }
                match cur
                    .parents
                    .first()
                    .and_then(|q| src.table(&q.schema, &q.name))
                {
                    Some(p) => cur = p,
                    None => return true,
                }
            }
        })
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect();
    if selected.is_empty() {
        return Err(Error::InvalidInput(
            "the source has no tables to migrate (check --schema and --exclude-table)".into(),
        ));
    }
    let live_schemas: BTreeSet<String> = selected.iter().map(|(s, _)| s.clone()).collect();
    let mut map = BTreeMap::new();
    for (i, s) in live_schemas.iter().enumerate() {
        map.insert(s.clone(), shadow::shadow_schema_name(id, s, i));
    }
    let target_has_schema = |s: &str| tgt.schemas.iter().any(|x| x.name == s);
    let schemas: Vec<(String, bool)> = live_schemas
        .iter()
        .map(|s| (s.clone(), !target_has_schema(s)))
        .collect();
    let tables = shadow::build(src, &selected, &map, &tgt.roles, owner);

    // Preserved tables: on both sides, with a forwarding key, columns that can be filled.
    let mut unknown = Vec::new();
    let mut preserved: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut maps = BTreeMap::new();
    let mut key_types = BTreeMap::new();
    let mut problems = Vec::new();
    for spec in &opts.preserved {
        let s = find(&src.tables, spec);
        let t = find(&tgt.tables, spec);
        let (Some(s), Some(t)) = (s.first(), t.first()) else {
            unknown.push(spec.clone());
            continue;
        };
        if !selected.contains(&(s.schema.clone(), s.name.clone())) {
            problems.push(format!("preserved table {} is excluded", s.sql_name()));
            continue;
        }
        if t.kind == TableKind::Partitioned || t.is_partition() || s.kind == TableKind::Partitioned
        {
            problems.push(format!(
                "preserved table {}: partitioned tables cannot be preserved yet \
                 (--exclude-table {} keeps the target's table, rows and all, out of the migration)",
                t.sql_name(),
                root_name(tgt, t)
            ));
            continue;
        }
        match capture::forwarding_key(t, s) {
            Ok(key) => {
                let types = key
                    .iter()
                    .map(|k| t.column(k).map(|c| c.type_name.clone()).unwrap_or_default())
                    .collect();
                key_types.insert((t.schema.clone(), t.name.clone()), types);
                preserved.insert((t.schema.clone(), t.name.clone()), key);
            }
            Err(e) => problems.push(e),
        }
        match ColumnMap::new(t, s, &opts.column_defaults) {
            Ok(m) => {
                maps.insert((t.schema.clone(), t.name.clone()), m);
            }
            Err(e) => problems.push(e),
        }
    }
    if !unknown.is_empty() {
        return Err(Error::InvalidInput(format!(
            "--preserved-tables names tables that are not on both the source and the target: {}",
            unknown.join(", ")
        )));
    }
    if !problems.is_empty() {
        return Err(Error::InvalidInput(problems.join("; ")));
    }
    let entries = tables
        .iter()
        .map(|st| {
            let t = &st.source;
            let k = (t.schema.clone(), t.name.clone());
            TableEntry {
                schema: t.schema.clone(),
                name: t.name.clone(),
                shadow_schema: String::new(),
                on_target: tgt.table(&t.schema, &t.name).is_some(),
                partition: t.is_partition(),
                root: t.is_partition().then(|| {
                    let mut cur = t;
                    while let Some(parent) = cur
                        .parents
                        .first()
                        .and_then(|q| src.table(&q.schema, &q.name))
                    {
                        cur = parent;
                    }
                    (cur.schema.clone(), cur.name.clone())
                }),
                preserved: preserved.get(&k).map(|key| Preserved {
                    key: key.clone(),
                    function: String::new(),
                    trigger: String::new(),
                    truncate_trigger: String::new(),
                    copied_rows: None,
                }),
                rows: None,
                bytes: None,
            }
        })
        .collect();
    let mut sequences = Vec::new();
    for st in &tables {
        for s in &st.sequences {
            if let Some(orig) = src.sequences.iter().find(|o| {
                o.name == s.name
                    && o.owned_by.as_ref().is_some_and(|ob| {
                        ob.table == st.source.name && ob.schema == st.source.schema
                    })
            }) {
                sequences.push((qualified(&orig.schema, &orig.name), s.qualname().sql()));
            }
        }
        for c in &st.source.columns {
            if let (Some(q), Some(sq)) = (
                &c.identity_sequence,
                st.shadow
                    .column(&c.name)
                    .and_then(|x| x.identity_sequence.as_ref()),
            ) {
                sequences.push((q.sql(), sq.sql()));
            }
        }
    }
    let made: BTreeSet<String> = schemas
        .iter()
        .filter(|(_, created)| *created)
        .map(|(s, _)| s.clone())
        .collect();
    let (with, without) = objects::additions(src, tgt, &made);
    let additions: Vec<String> = objects::additions_plan(&with, &without)
        .steps
        .into_iter()
        .map(|s| s.sql)
        .collect();
    let addition_drops = objects::drops(&with, &without);
    let added_objects = objects::added(&with, &without);
    let created_schemas: Vec<String> = with
        .schemas
        .iter()
        .filter(|s| !tgt.schemas.iter().any(|x| x.name == s.name))
        .map(|s| s.name.clone())
        .collect();
    for q in &with.sequences {
        let n = qualified(&q.schema, &q.name);
        sequences.push((n.clone(), n));
    }
    let matviews = matviews_beside(src, tgt, &selected, &map);
    // Target tables the source lacks, in the schemas migrated (a schema only the target has is
    // not the migration's), not excluded; a partition only with its whole tree.
    let extra = |t: &Table| {
        live_schemas.contains(&t.schema)
            && src.table(&t.schema, &t.name).is_none()
            && !excluded(&opts.exclude, &t.schema, &t.name)
    };
    let extra_tables: Vec<(String, String)> = if opts.keep_extra_tables {
        Vec::new()
    } else {
        tgt.tables
            .iter()
            .filter(|t| {
                let mut cur = *t;
                loop {
                    if !extra(cur) {
                        return false;
                    }
                    match cur
                        .parents
                        .first()
                        .and_then(|q| tgt.table(&q.schema, &q.name))
                    {
                        Some(p) => cur = p,
                        None => return true,
                    }
                }
            })
            .map(|t| (t.schema.clone(), t.name.clone()))
            .collect()
    };
    Ok(Planned {
        tables,
        entries,
        schemas,
        maps,
        key_types,
        sequences,
        additions,
        addition_drops,
        created_schemas,
        added_objects,
        matviews,
        extra_tables,
    })
}

/// Builds the source's version of every table in the target. Holds pgflip's target lock
/// throughout (the caller's [`state::with_target_lock`] is not used: dry runs take no lock).
pub async fn prepare(
    source: &Endpoint,
    target: &Endpoint,
    opts: &PrepareOptions,
    events: &dyn EventSink,
) -> Result<PrepareReport> {
    let started = Instant::now();
    let src = source.connect().await?;
    let tgt = Arc::new(target.connect().await?);
    crate::conn::refuse_same_database(&src, &tgt).await?;
    if opts.dry_run {
        return dry_run(&src, &tgt, opts, events, started).await;
    }
    let ep = source.clone();
    let tep = target.clone();
    let opts2 = opts.clone();
    let command = format!("migrate prepare (preserved: {})", opts.preserved.join(", "));
    state::with_target_lock(tgt, &command, move |tgt| async move {
        run(&src, &ep, &tep, tgt, &opts2, events, started).await
    })
    .await
}

async fn load_snapshots(
    src: &Client,
    tgt: &Client,
    opts: &PrepareOptions,
) -> Result<(Snapshot, Snapshot)> {
    let filter = Filter {
        include_schemas: opts.schemas.clone(),
        exclude_schemas: Vec::new(),
    };
    let s = Snapshot::load(src, &filter).await?;
    let t = Snapshot::load(tgt, &filter).await?;
    Ok((s, t))
}

async fn current_user(c: &Client) -> Result<String> {
    Ok(c.query_one("SELECT current_user::text", &[])
        .await
        .ctx("reading the current user")?
        .get(0))
}

async fn dry_run(
    src: &Client,
    tgt: &Client,
    opts: &PrepareOptions,
    _events: &dyn EventSink,
    started: Instant,
) -> Result<PrepareReport> {
    let (s, t) = load_snapshots(src, tgt, opts).await?;
    let owner = current_user(tgt).await?;
    let p = plan(&s, &t, opts, &owner, 0)?;
    let rec = new_record(&p, 0, "(source)", 0);
    let mut script = String::new();
    for a in &p.additions {
        script.push_str(a.trim_end());
        script.push('\n');
    }
    for m in &rec.schemas {
        script.push_str(&format!("CREATE SCHEMA {};\n", quote_ident(&m.shadow)));
    }
    for st in &p.tables {
        script.push_str(&structure_of(&p, st));
    }
    for st in &p.tables {
        script.push_str(&st.keys_sql());
    }
    for st in &p.tables {
        for (add, _) in st.foreign_keys_sql() {
            script.push_str(&add);
        }
    }
    Ok(PrepareReport {
        record: rec,
        script: Some(script),
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

fn structure_of(p: &Planned, st: &ShadowTable) -> String {
    let parents: Vec<&Table> = st
        .shadow
        .parents
        .iter()
        .filter_map(|q| {
            p.tables
                .iter()
                .find(|x| x.shadow.schema == q.schema && x.shadow.name == q.name)
                .map(|x| &x.shadow)
        })
        .collect();
    st.structure_sql(&parents)
}

fn new_record(p: &Planned, id: i64, source: &str, pid: i32) -> Record {
    let schemas: Vec<SchemaMap> = p
        .schemas
        .iter()
        .enumerate()
        .map(|(i, (live, created))| SchemaMap {
            live: live.clone(),
            shadow: shadow::shadow_schema_name(id, live, i),
            created_live: *created,
        })
        .collect();
    let mut tables = p.entries.clone();
    let mut n = 0;
    for t in tables.iter_mut() {
        t.shadow_schema = schemas
            .iter()
            .find(|m| m.live == t.schema)
            .map(|m| m.shadow.clone())
            .unwrap_or_default();
        if let Some(pr) = t.preserved.as_mut() {
            n += 1;
            pr.function = format!("migrate_{id}_capture_{n}");
            pr.trigger = format!("pgflip_migrate_{id}_capture");
            pr.truncate_trigger = format!("pgflip_migrate_{id}_truncate");
        }
    }
    Record {
        id,
        phase: Phase::Preparing,
        source: source.to_string(),
        schemas,
        tables,
        forwarded_sequence: format!("migrate_{id}_forwarded"),
        rejected_table: format!("migrate_{id}_rejected"),
        prepare_pid: pid,
        added_drops: p.addition_drops.clone(),
        matviews: p
            .matviews
            .iter()
            .map(|(schema, name, _, on_target)| record::MatviewEntry {
                schema: schema.clone(),
                name: name.clone(),
                on_target: *on_target,
                shadow_schema: shadow::shadow_schema_name(
                    id,
                    schema,
                    p.schemas.iter().position(|(l, _)| l == schema).unwrap_or(0),
                ),
            })
            .collect(),
        after_swap: Vec::new(),
        extra_tables: p.extra_tables.clone(),
        created_schemas: p.created_schemas.clone(),
        added_objects: p.added_objects.clone(),
    }
}

async fn run(
    src: &Client,
    source: &Endpoint,
    target: &Endpoint,
    tgt: Arc<Client>,
    opts: &PrepareOptions,
    events: &dyn EventSink,
    started: Instant,
) -> Result<PrepareReport> {
    // A migration already in flight: a prepared one must be swapped or aborted first; one whose
    // prepare died (this run holds the target lock, so nobody else is preparing) is removed.
    for old in record::load(&tgt).await? {
        if old.phase == Phase::Prepared {
            return Err(Error::Refused(
                format!(
                "migration {} is prepared and waiting for its swap: run `pgflip migrate swap` or \
                 `pgflip migrate abort` first",
                old.id
            )
                .into(),
            ));
        }
        events.emit(Event::Warning {
            message: format!(
                "migration {} was interrupted while {}; removing what it built before starting again",
                old.id,
                old.phase.as_str()
            ),
        });
        super::abort::abort_record(&tgt, &old, opts.lock_timeout, opts.max_wait, events).await?;
    }
    events.emit(Event::PhaseStarted {
        phase: "reading catalogs".into(),
    });
    let (s, t) = load_snapshots(src, &tgt, opts).await?;
    let owner = current_user(&tgt).await?;
    // Refusals come before anything is written; the names need the record's id.
    plan(&s, &t, opts, &owner, 0)?;
    state::ensure(&tgt).await?;

    // 1. The record, with every name, and the shadow schemas: one transaction.
    tgt.batch_execute("BEGIN").await.ctx("starting prepare")?;
    let res: Result<(Planned, Record)> = async {
        let id: i64 = tgt
            .query_one(
                "INSERT INTO pgflip.operations (kind, phase) VALUES ($1, 'preparing') RETURNING id",
                &[&super::OPERATION_KIND],
            )
            .await
            .ctx("recording the migration")?
            .get(0);
        let pid: i32 = tgt
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .ctx("reading the session")?
            .get(0);
        let p = plan(&s, &t, opts, &owner, id)?;
        let rec = new_record(&p, id, &source.describe(), pid);
        let mut sql = String::new();
        for m in &rec.schemas {
            sql.push_str(&format!("CREATE SCHEMA {};\n", quote_ident(&m.shadow)));
            if m.created_live {
                sql.push_str(&format!("CREATE SCHEMA {};\n", quote_ident(&m.live)));
            }
        }
        sql.push_str(&format!(
            "CREATE SEQUENCE {};\n\
             CREATE TABLE {} (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp(), \
             table_name text NOT NULL, operation text NOT NULL, row_data jsonb, sqlstate text, message text);\n",
            rec.forwarded_sql(),
            rec.rejected_sql()
        ));
        sql.push_str(&rec.save_sql()?);
        tgt.batch_execute(&sql).await.ctx("creating the shadow schemas")?;
        Ok((p, rec))
    }
    .await;
    let (p, mut rec) = match res {
        Ok(r) => {
            tgt.batch_execute("COMMIT")
                .await
                .ctx("committing the migration record")?;
            r
        }
        Err(e) => {
            let _ = tgt.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    };
    events.emit(Event::Info {
        message: format!(
            "migration {} recorded; building in {}",
            rec.id,
            rec.schemas
                .iter()
                .map(|m| quote_ident(&m.shadow))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });

    let built = {
        let mut built = Box::pin(build(
            src, source, target, &tgt, &s, &p, &mut rec, opts, events,
        ));
        match opts.interrupt.clone() {
            None => built.await,
            Some(mut rx) => tokio::select! {
                r = &mut built => r,
                _ = rx.wait_for(|v| *v) => {
                    // The statements still running on the servers are cancelled and the build is
                    // driven until it has seen them end (then dropped, its workers' connections
                    // with it); this session's transaction, if one was open, is ended before the
                    // cleanup below.
                    let _ = crate::conn::cancel::interrupt(built, Duration::from_secs(2)).await;
                    let _ = tgt.batch_execute("ROLLBACK").await;
                    Err(Error::Interrupted)
                }
            },
        }
    };
    match built {
        Ok(()) => Ok(PrepareReport {
            record: rec,
            script: None,
            elapsed_ms: started.elapsed().as_millis() as u64,
        }),
        Err(e) => {
            if !opts.keep_on_failure && !matches!(e, Error::Failpoint(_)) {
                events.emit(Event::Warning {
                    message: format!(
                        "prepare {}; removing what it built (migration {})",
                        if matches!(e, Error::Interrupted) {
                            "interrupted"
                        } else {
                            "failed"
                        },
                        rec.id
                    ),
                });
                let removed = if tgt.is_closed() {
                    // The target's server restarted (or the network dropped us): the session is
                    // gone, and with it the target lock. A new session takes the lock again
                    // before removing anything, so no other run is acting meanwhile.
                    remove_on_new_session(target, &rec, opts, events).await
                } else {
                    super::abort::abort_record(&tgt, &rec, opts.lock_timeout, opts.max_wait, events)
                        .await
                };
                if let Err(ae) = removed {
                    events.emit(Event::Warning {
                        message: format!(
                            "removing migration {} failed too ({ae}); run `pgflip migrate abort`",
                            rec.id
                        ),
                    });
                }
            }
            Err(e)
        }
    }
}

/// Removes what a failed prepare built, from a new session under the target lock.
async fn remove_on_new_session(
    target: &Endpoint,
    rec: &Record,
    opts: &PrepareOptions,
    events: &dyn EventSink,
) -> Result<()> {
    let tgt = Arc::new(target.connect().await?);
    let command = format!("migrate abort (prepare of migration {} failed)", rec.id);
    state::with_target_lock(tgt, &command, move |tgt| async move {
        super::abort::abort_record(&tgt, rec, opts.lock_timeout, opts.max_wait, events).await
    })
    .await
}

#[allow(clippy::too_many_arguments)]
async fn build(
    src: &Client,
    source: &Endpoint,
    target: &Endpoint,
    tgt: &Client,
    s: &Snapshot,
    p: &Planned,
    rec: &mut Record,
    opts: &PrepareOptions,
    events: &dyn EventSink,
) -> Result<()> {
    failpoint::hit("migrate.prepare.recorded").await?;

    // 2a. What the new tables may use and the target lacks (types, functions, extensions…):
    // additive only, in a transaction of its own (an enum label added in a transaction cannot
    // be used by a default in the same one). The record already names what abort drops.
    if !p.additions.is_empty() {
        events.emit(Event::PhaseStarted {
            phase: "creating types, functions and other objects the new tables use".into(),
        });
        let mut sql = String::from(
            "BEGIN;\nSET LOCAL check_function_bodies = false;\nSET LOCAL search_path = '';\n",
        );
        for a in &p.additions {
            sql.push_str(a.trim_end().trim_end_matches(';'));
            sql.push_str(";\n");
        }
        sql.push_str("COMMIT");
        if let Err(e) = tgt
            .batch_execute(&sql)
            .await
            .ctx("creating the objects the new tables use")
        {
            let _ = tgt.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }

    // 2. Structure (and the preserved tables' keys).
    events.emit(Event::PhaseStarted {
        phase: "creating shadow tables".into(),
    });
    let mut sql = String::from("BEGIN;\n");
    for st in &p.tables {
        sql.push_str(&structure_of(p, st));
    }
    for (st, e) in p.tables.iter().zip(&rec.tables) {
        if e.preserved.is_some() {
            sql.push_str(&st.keys_sql());
        }
    }
    rec.phase = Phase::Capturing;
    sql.push_str(&rec.save_sql()?);
    sql.push_str(";\nCOMMIT");
    if let Err(e) = tgt
        .batch_execute(&sql)
        .await
        .ctx("creating the shadow tables")
    {
        let _ = tgt.batch_execute("ROLLBACK").await;
        return Err(e);
    }
    failpoint::hit("migrate.prepare.structure").await?;

    // 3. Capture triggers, before any live row is read.
    for e in &rec.tables {
        if let Some(pr) = &e.preserved {
            let map = &p.maps[&(e.schema.clone(), e.name.clone())];
            super::run_locked_retry(
                tgt,
                &capture::install_sql(rec, e, pr, map),
                &format!("installing the capture trigger on {}", e.live_sql()),
                opts.lock_timeout,
                opts.max_wait,
                events,
            )
            .await?;
        }
    }
    rec.phase = Phase::Copying;
    rec.save(tgt).await?;
    failpoint::hit("migrate.prepare.captured").await?;

    // 4 and 5. Rows, then keys and indexes: one pool of `jobs` workers (the coordinating
    // connection is one of them). A table's indexes start as soon as its rows are in, while
    // other tables are still being copied (as pg_restore -j does); the `copied` boundary is
    // when the last table's rows are in.
    copy_and_index(src, source, target, tgt, p, rec, opts, events).await?;
    rec.phase = Phase::Validating;
    rec.save(tgt).await?;
    failpoint::hit("migrate.prepare.indexed").await?;

    // 6. Foreign keys: NOT VALID (no scan, brief lock), then validated.
    events.emit(Event::PhaseStarted {
        phase: "validating foreign keys".into(),
    });
    let mut validations = Vec::new();
    for st in &p.tables {
        for (add, validate) in st.foreign_keys_sql() {
            super::run_locked_retry(
                tgt,
                add.trim_end().trim_end_matches(';'),
                &format!("adding a foreign key to {}", st.shadow.sql_name()),
                opts.lock_timeout,
                opts.max_wait,
                events,
            )
            .await?;
            if let Some(v) = validate {
                validations.push(v);
            }
        }
    }
    for v in validations {
        tgt.batch_execute(&v)
            .await
            .ctx("validating a foreign key of the new version")?;
    }
    // 7. New materialized views, built over the shadow tables (never under the swap's locks),
    // then the schema steps the swap will run after its moves.
    for (schema, name, sql, _) in &p.matviews {
        tgt.batch_execute(sql).await.ctx(format!(
            "building materialized view {}",
            qualified(schema, name)
        ))?;
    }
    let AfterSwapPlan { after: plan, step } = after_swap_plan(tgt, s, rec).await?;
    for w in &plan.warnings {
        events.emit(Event::Warning { message: w.clone() });
    }
    if !plan.unsupported.is_empty() {
        events.emit(Event::Warning {
            message: format!(
                "schema diff cannot align these objects; after the swap, change them by hand: {}",
                plan.unsupported.join(", ")
            ),
        });
    }
    rec.after_swap = plan.statements;
    super::reverse::save_for_operation(tgt, rec.id, &step).await?;
    rec.phase = Phase::Prepared;
    rec.save(tgt).await?;
    failpoint::hit("migrate.prepare.validated").await?;
    events.emit(Event::Info {
        message: format!("migration {} prepared", rec.id),
    });
    Ok(())
}

/// The top of `t`'s partition tree on the target (`t` itself when it is not a partition).
fn root_name(tgt: &Snapshot, t: &Table) -> String {
    let mut cur = t;
    while let Some(parent) = cur
        .parents
        .first()
        .and_then(|q| tgt.table(&q.schema, &q.name))
    {
        cur = parent;
    }
    cur.sql_name().into()
}

fn root_of(p: &Planned, t: &Table) -> String {
    let mut cur = t;
    while let Some(parent) = cur.parents.first().and_then(|q| {
        p.tables
            .iter()
            .find(|x| x.shadow.schema == q.schema && x.shadow.name == q.name)
    }) {
        cur = &parent.shadow;
    }
    cur.sql_name().into()
}

/// The size of each relation named in `names` (quoted, qualified), its partitions included;
/// 0 for what cannot be read.
async fn table_sizes(c: &Client, names: &[String]) -> Vec<i64> {
    let rows = c
        .query(
            "SELECT pg_catalog.coalesce((SELECT pg_catalog.sum(pg_catalog.pg_table_size(t.relid)) \
               FROM pg_catalog.pg_partition_tree(pg_catalog.to_regclass(x.n)) t), 0)::bigint \
             FROM unnest($1::text[]) WITH ORDINALITY AS x(n, o) ORDER BY x.o",
            &[&names],
        )
        .await;
    rows.map(|r| r.iter().map(|r| r.get::<_, i64>(0)).collect())
        .unwrap_or_default()
}

enum CopyTask {
    /// Source table (qualified) into shadow table.
    Source(usize),
    /// Preserved: live rows into the shadow table.
    Live(usize),
}

/// The work of a table family after its rows: one task per plain index, then the rest.
#[derive(Default)]
struct Family {
    indexes: Vec<String>,
    rest: String,
    /// Copies of this family not finished yet.
    copies: usize,
}

/// What the workers of [`copy_and_index`] share.
struct Work {
    copies: VecDeque<(CopyTask, String)>,
    /// Index tasks of families whose rows are in: `(label, sql)`.
    ready: VecDeque<(String, String)>,
    families: BTreeMap<String, Family>,
    /// Copies not finished (queued or running).
    copies_left: usize,
    /// Copy results by table entry: `(rows, bytes)`.
    results: BTreeMap<usize, (i64, i64)>,
    /// A worker failed: the others stop taking work.
    failed: bool,
}

impl Work {
    /// A family's index tasks, queued once all its copies are done.
    fn release(&mut self, root: &str) {
        if let Some(f) = self.families.get_mut(root) {
            if f.copies == 0 {
                let f = self.families.remove(root).expect("family");
                for (n, sql) in f.indexes.into_iter().enumerate() {
                    self.ready
                        .push_back((format!("{root} (index {})", n + 1), sql));
                }
                self.ready.push_back((root.to_string(), f.rest));
            }
        }
    }
}

enum Next {
    Copy(CopyTask, String),
    Sql(String, String),
    /// Nothing ready now; copies are still running elsewhere.
    Wait,
    Done,
}

/// Copies the rows (the source's under one exported snapshot) and builds the keys and indexes
/// of every table, on `jobs` target connections, the coordinating one (`tgt`) among them.
///
/// A table family's index tasks are queued once its rows are in, and workers take copies first,
/// then ready index tasks: the builds of tables already copied overlap the copy of the others.
/// A plain (unpartitioned) table gets one task per plain index (CREATE INDEX takes SHARE:
/// several build side by side), then its key constraints and `ANALYZE` (ALTER TABLE waits for
/// those builds by its lock); a partitioned table and its partitions (whose indexes attach to
/// the parent's) stay one task, as does a table whose replica identity names an index.
///
/// When the last copy is done, the coordinating worker (between two of its tasks) reads the
/// source's sequence positions in the snapshot, ends it, sets the shadow sequences, records the
/// `indexing` phase and hits `migrate.prepare.copied`; the other workers go on building.
#[allow(clippy::too_many_arguments)]
async fn copy_and_index(
    src: &Client,
    source: &Endpoint,
    target: &Endpoint,
    tgt: &Client,
    p: &Planned,
    rec: &mut Record,
    opts: &PrepareOptions,
    events: &dyn EventSink,
) -> Result<()> {
    events.emit(Event::PhaseStarted {
        phase: "copying rows".into(),
    });
    // The families' work after the copy.
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut members: BTreeMap<String, usize> = BTreeMap::new();
    for st in &p.tables {
        *members.entry(root_of(p, &st.shadow)).or_default() += 1;
    }
    for (st, e) in p.tables.iter().zip(&rec.tables) {
        let root = root_of(p, &st.shadow);
        let alone = members.get(&root) == Some(&1)
            && st.shadow.kind != TableKind::Partitioned
            && crate::ddl::replica_identity(&st.shadow).is_empty();
        let entry = families.entry(root).or_default();
        if e.preserved.is_none() {
            if alone {
                for c in &st.shadow.constraints {
                    if c.kind != crate::catalog::ConstraintKind::ForeignKey {
                        entry
                            .rest
                            .push_str(&crate::ddl::create_constraint(&st.shadow, c));
                    }
                }
                for i in &st.shadow.indexes {
                    entry.indexes.push(crate::ddl::create_index(i));
                }
            } else {
                entry.rest.push_str(&st.keys_sql());
            }
        }
        if st.shadow.kind != TableKind::Partitioned {
            entry
                .rest
                .push_str(&format!("ANALYZE {};\n", st.shadow.sql_name()));
        }
    }
    // The copies, largest source table first (the longest copy starts first, as with
    // pg_restore -j); preserved tables' live rows by the live table's size.
    let mut copies = Vec::new();
    for (i, e) in rec.tables.iter().enumerate() {
        let root = root_of(p, &p.tables[i].shadow);
        if e.preserved.is_some() {
            copies.push((CopyTask::Live(i), root, e.live_sql(), false));
        } else if !e.partition {
            copies.push((
                CopyTask::Source(i),
                root,
                p.tables[i].source.sql_name().into(),
                true,
            ));
        }
    }
    let on_source: Vec<String> = copies.iter().filter(|c| c.3).map(|c| c.2.clone()).collect();
    let on_target: Vec<String> = copies
        .iter()
        .filter(|c| !c.3)
        .map(|c| c.2.clone())
        .collect();
    let (mut src_sizes, mut tgt_sizes) = (
        table_sizes(src, &on_source).await.into_iter(),
        table_sizes(tgt, &on_target).await.into_iter(),
    );
    let mut sized: Vec<(i64, CopyTask, String)> = copies
        .into_iter()
        .map(|(task, root, _, from_source)| {
            let size = if from_source {
                src_sizes.next()
            } else {
                tgt_sizes.next()
            };
            (size.unwrap_or(0), task, root)
        })
        .collect();
    sized.sort_by_key(|(size, _, _)| std::cmp::Reverse(*size));
    // (Sizes are read before the snapshot's transaction: an error there would end it.)
    src.batch_execute("SET row_security = off; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .ctx("starting the source snapshot")?;
    let snapshot: String = src
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .ctx("exporting the source snapshot")?
        .get(0);
    let snapshot = &snapshot;
    for (_, _, root) in &sized {
        if let Some(f) = families.get_mut(root) {
            f.copies += 1;
        }
    }
    let mut work = Work {
        copies_left: sized.len(),
        copies: sized.into_iter().map(|(_, t, r)| (t, r)).collect(),
        ready: VecDeque::new(),
        families,
        results: BTreeMap::new(),
        failed: false,
    };
    // Families without a copy of their own (nothing to wait for) are released with the
    // last copy, as before.
    let work = Mutex::new({
        if work.copies_left == 0 {
            let roots: Vec<String> = work.families.keys().cloned().collect();
            for r in roots {
                work.release(&r);
            }
        }
        work
    });
    let next = || -> Next {
        let Ok(mut w) = work.lock() else {
            return Next::Done;
        };
        if w.failed {
            return Next::Done;
        }
        if let Some((t, r)) = w.copies.pop_front() {
            return Next::Copy(t, r);
        }
        if let Some((l, sql)) = w.ready.pop_front() {
            return Next::Sql(l, sql);
        }
        if w.copies_left > 0 {
            Next::Wait
        } else {
            Next::Done
        }
    };
    let copy_done = |root: &str, i: usize, rows: i64, bytes: i64| {
        if let Ok(mut w) = work.lock() {
            w.results.insert(i, (rows, bytes));
            w.copies_left -= 1;
            if let Some(f) = w.families.get_mut(root) {
                f.copies -= 1;
            }
            w.release(root);
            if w.copies_left == 0 {
                let rest: Vec<String> = w.families.keys().cloned().collect();
                for r in rest {
                    w.release(&r);
                }
            }
        }
    };
    let copies_left = || work.lock().map(|w| w.copies_left).unwrap_or(0);
    let failed = || work.lock().map(|w| w.failed).unwrap_or(true);
    // The boundary: all rows in. Run by the coordinating worker, on its own connection.
    let boundary = rec.clone();
    let boundary = Mutex::new(Some(boundary));
    let finish_copy = || async {
        let Some(mut r) = boundary.lock().ok().and_then(|mut b| b.take()) else {
            return Ok::<Option<Record>, Error>(None);
        };
        // Sequence positions, read in the same snapshot.
        let mut setvals = String::new();
        for (from, to) in &p.sequences {
            let row = src
                .query_one(&format!("SELECT last_value, is_called FROM {from}"), &[])
                .await
                .ctx(format!("reading sequence {from} on the source"))?;
            let v: i64 = row.get(0);
            let called: bool = row.get(1);
            setvals.push_str(&format!(
                "SELECT pg_catalog.setval({}, {v}, {called});\n",
                quote_literal(to)
            ));
        }
        src.batch_execute("COMMIT")
            .await
            .ctx("ending the source snapshot")?;
        let results = work.lock().map(|w| w.results.clone()).unwrap_or_default();
        for (i, (rows, bytes)) in results {
            let e = &mut r.tables[i];
            e.rows = Some(rows);
            e.bytes = Some(bytes);
            if let Some(pr) = e.preserved.as_mut() {
                pr.copied_rows = Some(rows);
            }
        }
        if !setvals.is_empty() {
            tgt.batch_execute(&setvals)
                .await
                .ctx("setting the shadow sequences to the source's positions")?;
        }
        r.phase = Phase::Indexing;
        r.save(tgt).await?;
        failpoint::hit("migrate.prepare.copied").await?;
        events.emit(Event::PhaseStarted {
            phase: "building indexes".into(),
        });
        Ok(Some(r))
    };
    let recr = &*rec;
    let worker = |coordinating: bool| {
        let (next, copy_done, copies_left, finish_copy, work, failed) = (
            &next,
            &copy_done,
            &copies_left,
            &finish_copy,
            &work,
            &failed,
        );
        async move {
            let mut own: Option<Client> = None;
            let mut sc: Option<Client> = None;
            let mut finished: Option<Record> = None;
            let res: Result<()> = async {
                loop {
                    if coordinating && finished.is_none() && copies_left() == 0 && !failed() {
                        finished = finish_copy().await?;
                    }
                    let task = next();
                    let t: &Client = match (&task, coordinating) {
                        (Next::Wait | Next::Done, _) => tgt,
                        (_, true) => tgt,
                        (_, false) => {
                            if own.is_none() {
                                own = Some(target.connect().await?);
                            }
                            own.as_ref().expect("connected")
                        }
                    };
                    match task {
                        Next::Done => break,
                        Next::Wait => tokio::time::sleep(Duration::from_millis(10)).await,
                        Next::Sql(label, sql) => {
                            t.batch_execute(&sql)
                                .await
                                .ctx(format!("building indexes: {label}"))?;
                        }
                        Next::Copy(CopyTask::Live(i), root) => {
                            let e = &recr.tables[i];
                            let pr = e.preserved.as_ref().expect("preserved");
                            let k = (e.schema.clone(), e.name.clone());
                            let started = Instant::now();
                            let rows = capture::copy_live_rows(
                                t,
                                e,
                                &pr.key,
                                &p.key_types[&k],
                                &p.maps[&k],
                            )
                            .await?;
                            events.emit(Event::TableDone {
                                table: e.live_sql(),
                                rows: rows as u64,
                                bytes: 0,
                                elapsed: started.elapsed(),
                            });
                            copy_done(&root, i, rows, 0);
                        }
                        Next::Copy(CopyTask::Source(i), root) => {
                            if sc.is_none() {
                                let c = source.connect().await?;
                                // row_security off: a policy must never hide source rows from
                                // the copy; a role it would hide rows from gets an error instead.
                                c.batch_execute(&format!(
                                    "SET row_security = off; \
                                     BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                                     SET TRANSACTION SNAPSHOT {}",
                                    quote_literal(snapshot)
                                ))
                                .await
                                .ctx("importing the source snapshot")?;
                                sc = Some(c);
                            }
                            let s = sc.as_ref().expect("connected");
                            let st = &p.tables[i];
                            let cols = st.data_columns();
                            let names = cols
                                .iter()
                                .map(|c| quote_ident(&c.name))
                                .collect::<Vec<_>>()
                                .join(", ");
                            let format = if cols.iter().all(|c| c.type_oid < 16384) {
                                Format::Binary
                            } else {
                                Format::Text
                            };
                            let only = if st.source.kind == TableKind::Partitioned {
                                ""
                            } else {
                                "ONLY "
                            };
                            let out = copy::copy_out_sql(
                                &format!("SELECT {names} FROM {only}{}", st.source.sql_name()),
                                format,
                            );
                            let inn = copy::copy_in_sql(&st.shadow.sql_name(), &names, format);
                            let label = st.source.sql_name();
                            let progress = copy::Progress::new(label.clone());
                            let started = Instant::now();
                            let stats =
                                copy::stream(s, &out, t, &inn, &label, &progress, events).await?;
                            events.emit(Event::TableDone {
                                table: label.into(),
                                rows: stats.rows,
                                bytes: stats.bytes,
                                elapsed: started.elapsed(),
                            });
                            copy_done(&root, i, stats.rows as i64, stats.bytes as i64);
                            // This worker's copies are over when none is queued: its source
                            // transaction ends now rather than with the last build.
                            if work.lock().map(|w| w.copies.is_empty()).unwrap_or(true) {
                                if let Some(s) = sc.take() {
                                    let _ = s.batch_execute("COMMIT").await;
                                }
                            }
                        }
                    }
                }
                if coordinating && finished.is_none() && !failed() {
                    finished = finish_copy().await?;
                }
                Ok(())
            }
            .await;
            if res.is_err() {
                if let Ok(mut w) = work.lock() {
                    w.failed = true;
                }
            }
            if let Some(s) = sc {
                let _ = s.batch_execute("COMMIT").await;
            }
            res.map(|()| finished)
        }
    };
    let n = opts.jobs.max(1);
    let mut futs = Vec::new();
    for k in 0..n {
        futs.push(worker(k == 0));
    }
    let mut finished = None;
    let mut first_err = None;
    for r in futures_util::future::join_all(futs).await {
        match r {
            Ok(Some(rr)) => finished = Some(rr),
            Ok(None) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    *rec = finished.expect("the coordinating worker records the end of the copy");
    Ok(())
}

/// `text` with every reference to the relation `from` (quoted as the server prints it)
/// replaced by `to`, where it stands alone as a name.
fn replace_relation(text: &str, from: &str, to: &str) -> String {
    let ident = |c: char| c.is_alphanumeric() || c == '_' || c == '$' || c == '"' || c == '.';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        out.push_str(&rest[..i]);
        let before = out.chars().last();
        let after = rest[i + from.len()..].chars().next();
        if before.is_some_and(ident) || after.is_some_and(ident) {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}

/// The source's materialized views in a migrated schema that read only tables: built in the
/// shadow schema over the shadow tables during prepare, so that the swap only moves them (one
/// the target lacks) or flips it with the target's (one the target has, whatever its
/// definition: its rows must come from the new tables): nothing is built under the swap's
/// locks. (One that reads a view is left to the swap's schema step and the flip, which
/// re-create it under the locks, with a warning.)
fn matviews_beside(
    src: &Snapshot,
    tgt: &Snapshot,
    selected: &BTreeSet<(String, String)>,
    map: &BTreeMap<String, String>,
) -> Vec<(String, String, String, bool)> {
    let view_oids: BTreeSet<u32> = src.views.iter().map(|v| v.oid).collect();
    let mut out = Vec::new();
    for v in src.views.iter().filter(|v| v.materialized) {
        let Some(shadow) = map.get(&v.schema) else {
            continue;
        };
        let on_target = match tgt
            .views
            .iter()
            .find(|x| x.schema == v.schema && x.name == v.name)
        {
            Some(x) if x.materialized => true,
            // A plain view becomes a materialized one: the schema step's.
            Some(_) => continue,
            None if tgt.table(&v.schema, &v.name).is_some() => continue,
            None => false,
        };
        let reads_views = src.dependencies.iter().any(|d| {
            d.from.oid == v.oid
                && d.from.class == crate::catalog::ObjClass::Class
                && d.to.oid != v.oid
                && view_oids.contains(&d.to.oid)
        });
        if reads_views {
            continue;
        }
        let mut def = v.definition.trim_end().trim_end_matches(';').to_string();
        for (s, n) in selected {
            if let Some(sh) = map.get(s) {
                def = replace_relation(&def, &qualified(s, n), &qualified(sh, n));
            }
        }
        let q = qualified(shadow, &v.name);
        let with = if v.reloptions.is_empty() {
            String::new()
        } else {
            format!(" WITH ({})", v.reloptions.join(", "))
        };
        let mut sql = format!("CREATE MATERIALIZED VIEW {q}{with} AS {def} WITH DATA;\n");
        let on = format!(" ON {} ", qualified(&v.schema, &v.name));
        for i in &v.indexes {
            sql.push_str(&i.definition.replacen(&on, &format!(" ON {q} "), 1));
            sql.push_str(";\n");
        }
        out.push((v.schema.clone(), v.name.clone(), sql, on_target));
    }
    out
}

/// The schema steps of the swap: the source against the target as the flip will leave it.
async fn after_swap_plan(tgt: &Client, source: &Snapshot, rec: &Record) -> Result<AfterSwapPlan> {
    // The source's schemas only: a schema only the target has is not the migration's.
    let live_filter = Filter {
        include_schemas: source.schemas.iter().map(|s| s.name.clone()).collect(),
        exclude_schemas: Vec::new(),
    };
    let shadow_filter = Filter {
        include_schemas: rec.schemas.iter().map(|m| m.shadow.clone()).collect(),
        exclude_schemas: Vec::new(),
    };
    let live = Snapshot::load(tgt, &live_filter).await?;
    let shadow = Snapshot::load(tgt, &shadow_filter).await?;
    let moved: Vec<objects::Moved<'_>> = rec
        .tables
        .iter()
        .map(|t| objects::Moved {
            schema: &t.schema,
            name: &t.name,
            shadow_schema: &t.shadow_schema,
            on_target: t.on_target,
        })
        .collect();
    let mut after = objects::after_swap_target(&live, &shadow, &moved)?;
    let mut src = source.clone();
    // Tables outside the migration (excluded, or only on the target) are not the schema
    // step's to change: neither side has them.
    let migrated: BTreeSet<(String, String)> = rec
        .tables
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect();
    for snap in [&mut src, &mut after] {
        snap.tables
            .retain(|t| migrated.contains(&(t.schema.clone(), t.name.clone())));
        snap.sequences.retain(|q| {
            q.owned_by
                .as_ref()
                .is_none_or(|o| migrated.contains(&(o.schema.clone(), o.table.clone())))
        });
    }
    // Across major versions the same view deparses differently: compare in the target's words.
    crate::schemadiff::compat::deparse_views_on_target(&mut src, &after, tgt).await?;
    let step =
        super::reverse::forward(&live, &src, rec.created_schemas.clone(), &rec.added_objects);
    Ok(AfterSwapPlan {
        after: objects::after_swap(&src, &after),
        step,
    })
}

/// The swap's schema step, and what its rollback needs to undo it.
struct AfterSwapPlan {
    after: objects::AfterSwap,
    step: super::reverse::SchemaStep,
}
