//! The first half of a sync: connect, resolve the tables, read both sides, check, and decide
//! everything ([`prepare`]); the units' statements are each mode's (`in_place`, `staging`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures_util::{StreamExt, TryStreamExt};
use tokio_postgres::Client;

use super::*;
use crate::conn::Endpoint;
use crate::copy;
use crate::error::{DbResultExt, Error, Result};
use crate::events::{Event, EventSink};
use crate::ident::{derived_name, qualified, quote_ident, quote_literal, staging_name, QuotedName};
use crate::plan::{Hazard, LockMode, Plan, Step};
use crate::rowdiff::{self, DiffSummary, RowSource};

/// Connects, resolves the tables and checks everything; builds the plan. Writes nothing.
pub async fn prepare(
    source: &Endpoint,
    target: &Endpoint,
    opts: SyncOptions,
    events: &dyn EventSink,
) -> Result<Prepared> {
    let started = Instant::now();
    let mut opts = opts;
    if opts.in_batches.is_some() {
        let clash: Vec<&str> = [
            (opts.staging, "--staging-table"),
            (opts.mode == Mode::Preserve, "--preserve"),
            (opts.show_diff, "--show-diff"),
            (opts.defer_constraints, "--defer-constraints"),
            (opts.disable_integrity, "--disable-integrity"),
            (opts.disable_user_triggers, "--disable-user-triggers"),
        ]
        .into_iter()
        .filter_map(|(on, f)| on.then_some(f))
        .collect();
        if !clash.is_empty() {
            return Err(Error::InvalidInput(format!(
                "--in-batches upserts one table batch by batch: {} do{} not apply",
                clash.join(", "),
                if clash.len() == 1 { "es" } else { "" }
            )));
        }
        // Batches upsert (rows the target has and the source lacks stay), whatever the mode.
        opts.mode = Mode::Overwrite;
    }
    if opts.staging && opts.mode != Mode::Replace {
        return Err(Error::InvalidInput(
            "--staging-table loads whole tables: --overwrite and --preserve do not apply".into(),
        ));
    }
    if opts.defer_constraints && opts.disable_integrity {
        return Err(Error::InvalidInput(
            "--defer-constraints and --disable-integrity exclude each other".into(),
        ));
    }
    events.emit(Event::PhaseStarted {
        phase: "loading tables".into(),
    });
    let coordinator = source.connect().await?;
    let tgt = target.connect().await?;
    crate::conn::refuse_same_database(&coordinator, &tgt).await?;
    coordinator
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .ctx("starting the source snapshot")?;
    let snapshot: String = coordinator
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .ctx("exporting the source snapshot")?
        .get(0);
    // Resolve names on the source; every table must exist on the target too.
    let (src_list, tgt_list) =
        futures_util::try_join!(tables::list_tables(&coordinator), tables::list_tables(&tgt))?;
    // Looked up once per source table: a scan of the list each time was quadratic.
    let tgt_names: HashMap<(&str, &str), u32> = tgt_list
        .iter()
        .map(|(oid, s, n)| ((s.as_str(), n.as_str()), *oid))
        .collect();
    let mut filters: BTreeMap<u32, Option<String>> = BTreeMap::new();
    selection::warn_unmatched(&opts, &src_list, events);
    if opts.requests.is_empty() {
        for (oid, s, n) in tables::resolve(&[], &opts.exclude, &opts.scope, &src_list)? {
            if tgt_names.contains_key(&(s.as_str(), n.as_str())) {
                filters.insert(oid, opts.filter.clone());
            }
        }
    } else {
        // All unknown names in one message, before resolving each with its own filter.
        let all: Vec<String> = opts.requests.iter().map(|r| r.pattern.clone()).collect();
        tables::resolve(&all, &[], &opts.scope, &src_list)?;
        for r in &opts.requests {
            let found = tables::resolve(
                std::slice::from_ref(&r.pattern),
                if r.explicit { &[] } else { &opts.exclude },
                &opts.scope,
                &src_list,
            )?;
            let exact = !r.pattern.contains('*')
                || found.len() == 1 && {
                    let (_, s, n) = &found[0];
                    r.pattern == *n || r.pattern == format!("{s}.{n}")
                };
            for (oid, s, n) in found {
                // A pattern takes the tables both sides have; a name must exist on both.
                if !exact && !tgt_names.contains_key(&(s.as_str(), n.as_str())) {
                    events.emit(Event::Warning {
                        message: format!(
                            "{} matches {:?} but is not on the target; skipped",
                            qualified(&s, &n),
                            r.pattern
                        ),
                    });
                    continue;
                }
                filters.insert(oid, r.filter.clone().or_else(|| opts.filter.clone()));
            }
        }
    }
    if filters.is_empty() {
        return Err(Error::InvalidInput(
            "no tables to sync (none matched, or every match was excluded)".into(),
        ));
    }
    let mut missing = Vec::new();
    let mut tgt_oids = Vec::new();
    for (oid, s, n) in &src_list {
        if filters.contains_key(oid) {
            match tgt_names.get(&(s.as_str(), n.as_str())) {
                Some(t) => tgt_oids.push(*t),
                None => missing.push(qualified(s, n)),
            }
        }
    }
    if !missing.is_empty() {
        return Err(Error::InvalidInput(format!(
            "table{} missing on the target: {} (pgflip sync copies rows, not schemas; create \
             {} first, e.g. with pgflip schema diff)",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            if missing.len() > 1 { "them" } else { "it" }
        )));
    }
    let src_oids: Vec<u32> = filters.keys().copied().collect();
    // Both sides at once; a sync never looks at the source's indexes.
    let (src_cat, tgt_cat) = futures_util::try_join!(
        tables::load(&coordinator, &src_oids, false),
        tables::load(&tgt, &tgt_oids, true)
    )?;
    // Where the time goes, planning and copying apart: `PGFLIP_LOG=pgflip::sync=debug`.
    tracing::debug!(elapsed = ?started.elapsed(), "sync: catalogs read");

    let rules = &opts.rules;
    let mut plans: Vec<TablePlan> = Vec::new();
    let tgt_tables: HashMap<(&str, &str), &tables::Table> = tgt_cat
        .tables
        .iter()
        .map(|t| ((t.schema.as_str(), t.name.as_str()), t))
        .collect();
    for st in &src_cat.tables {
        let tt = (*tgt_tables
            .get(&(st.schema.as_str(), st.name.as_str()))
            .expect("target table resolved above"))
        .clone();
        match plan_table(st.clone(), tt, filters[&st.oid].clone(), &opts, rules)? {
            Some(p) => plans.push(p),
            // pgsync's "No fields to copy": said, and the other tables go on.
            None => events.emit(Event::Warning {
                message: format!(
                    "{}: no columns in common with the target; skipped",
                    st.display()
                ),
            }),
        }
    }
    if plans.is_empty() {
        return Err(Error::InvalidInput(
            "no tables to sync (no table has a column in common with the target)".into(),
        ));
    }
    for p in &plans {
        for w in &p.warnings {
            events.emit(Event::Warning { message: w.clone() });
        }
    }

    tracing::debug!(elapsed = ?started.elapsed(), "sync: tables planned");
    staging::check_and_reserve(&tgt, &mut plans).await?;
    check_privileges(&coordinator, &tgt, &plans, &opts).await?;
    if opts.disable_integrity {
        let sup: bool = tgt
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .ctx("checking superuser")?
            .get(0);
        if !sup {
            return Err(Error::InvalidInput(
                "--disable-integrity sets session_replication_role = replica, which needs a \
                 superuser on the target; the target user is not one (use --defer-constraints)"
                    .into(),
            ));
        }
    }

    // Sequences: the source's positions, read once for all tables.
    if opts.sequences && !plans.is_empty() {
        read_sequences(&coordinator, &mut plans).await?;
    }
    if opts.staging && opts.split_larger_than > 0 {
        plan_ranges(&coordinator, &mut plans, &opts, events).await?;
    }

    if let Some(b) = &opts.in_batches {
        batches::check(&plans)?;
        let mut plan = Plan::new("pgflip sync");
        plan.push(
            Step::new(
                batches::describe(&plans[0], b),
                format!(
                    "-- per batch: BEGIN; COPY into a temporary table; {}; record the last key; COMMIT",
                    "INSERT … ON CONFLICT DO UPDATE"
                ),
            )
            .lock(LockMode::RowExclusive, plans[0].into.clone())
            .outside_transaction(),
        );
        let (readers, targets) = pools(source, target, &snapshot);
        return Ok(Prepared {
            source: source.clone(),
            target: target.clone(),
            opts,
            _coordinator: coordinator,
            tables: plans,
            units: Vec::new(),
            batches: Vec::new(),
            plan,
            started,
            readers,
            targets,
        });
    }

    tracing::debug!(elapsed = ?started.elapsed(), "sync: checked");
    if opts.mode == Mode::Replace && !opts.staging {
        small_tables(&coordinator, &tgt, &mut plans, &opts, events).await?;
        droppable_constraints(&tgt, &mut plans, &opts).await?;
    }

    // The definitions of the indexes a rebuild drops and builds again (large tables replaced in
    // place) or a staging table gets.
    let mut rebuilt: Vec<&mut tables::Table> = plans
        .iter_mut()
        .filter(|p| p.strategy == Strategy::Staging || p.large(&opts))
        .map(|p| &mut p.target)
        .collect();
    tables::index_definitions(&tgt, &mut rebuilt).await?;

    // Foreign keys between synced tables make units; from outside, they change strategies.
    let synced: BTreeSet<u32> = plans.iter().map(|p| p.target.oid).collect();
    for p in plans.iter_mut() {
        p.external_refs = tgt_cat
            .foreign_keys
            .iter()
            .filter(|fk| fk.to_oid == p.target.oid && !synced.contains(&fk.from_oid))
            .cloned()
            .collect();
    }
    tracing::debug!(elapsed = ?started.elapsed(), "sync: sizes and indexes read");
    let mut units = build_units(&mut plans, &tgt_cat.foreign_keys, &opts)?;
    if opts.disable_user_triggers && !opts.staging {
        triggers::wrap_units(&tgt, &plans, &mut units).await?;
    }

    // Cross-server diffs happen before anything is written (and in dry runs).
    if opts.show_diff && !opts.staging {
        events.emit(Event::PhaseStarted {
            phase: "diffing".into(),
        });
        let src_ep = source.clone();
        let tgt_ep = target.clone();
        let snap = snapshot.clone();
        let diffs: Vec<(usize, Option<DiffSummary>)> =
            futures_util::stream::iter(plans.iter().enumerate().map(|(i, p)| {
                let (src_ep, tgt_ep, snap) = (src_ep.clone(), tgt_ep.clone(), snap.clone());
                async move {
                    if p.target.primary_key.is_empty() {
                        return Ok::<_, Error>((i, None));
                    }
                    let s = open_snapshot_reader(&src_ep, &snap).await?;
                    let t = tgt_ep.connect().await?;
                    let d = rowdiff::cross_server(
                        &s,
                        &row_source(p, true),
                        &t,
                        &row_source(p, false),
                        p.source.estimated_rows.max(p.target.estimated_rows),
                        opts.diff_sample,
                    )
                    .await?;
                    Ok((i, Some(d)))
                }
            }))
            .buffer_unordered(opts.jobs.max(1))
            .try_collect()
            .await?;
        for (i, d) in diffs {
            plans[i].diff = d;
        }
    }

    let batches = batch_units(&units, opts.jobs);
    tracing::debug!(
        elapsed = ?started.elapsed(),
        transactions = batches.len(),
        small = plans.iter().filter(|p| p.small).count(),
        inline = plans.iter().filter(|p| p.inline).count(),
        "sync: planned"
    );
    let mut plan = Plan::new("pgflip sync");
    for (n, batch) in batches.iter().enumerate() {
        let tx = 2 * n as u32;
        let shared = batch.len() > 1;
        if inline::batch_is_inline(&plans, &units, batch) {
            plan.push(inline::plan_step().in_transaction(tx));
        }
        for &b in batch {
            let u = &units[b];
            if shared {
                plan.push(
                    Step::new(
                        format!(
                            "{}: a failure rolls back only this part of the shared transaction",
                            unit_names(&plans, u)
                        ),
                        SAVEPOINT,
                    )
                    .in_transaction(tx),
                );
            }
            for a in &u.actions {
                plan.push(a.step().clone().in_transaction(tx));
            }
            if shared {
                plan.push(
                    Step::new(format!("{} done", unit_names(&plans, u)), RELEASE)
                        .in_transaction(tx),
                );
            }
            for a in &u.ranges {
                plan.push(a.step().clone());
            }
            for s in &u.after {
                plan.push(s.clone());
            }
            for s in &u.finish {
                plan.push(s.clone().in_transaction(tx + 1));
            }
        }
    }
    let (readers, targets) = pools(source, target, &snapshot);
    Ok(Prepared {
        source: source.clone(),
        target: target.clone(),
        opts,
        _coordinator: coordinator,
        tables: plans,
        units,
        batches,
        plan,
        started,
        readers,
        targets,
    })
}

/// The transactions of a run: every unit alone, except the small ones (`shares_transaction`),
/// which go together, up to [`BATCH_TABLES`] tables a transaction and spread over at least
/// `jobs` transactions so that every connection has work. The others first: they take longer.
/// A transaction per unit cost the commit and the round trips of a whole transaction for every
/// 10-row table.
fn batch_units(units: &[Unit], jobs: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = (0..units.len())
        .filter(|&u| !units[u].shares_transaction)
        .map(|u| vec![u])
        .collect();
    let shared: Vec<usize> = (0..units.len())
        .filter(|&u| units[u].shares_transaction)
        .collect();
    let tables: usize = shared.iter().map(|&u| units[u].tables.len()).sum();
    let per = tables.div_ceil(jobs.max(1)).clamp(1, BATCH_TABLES);
    let mut batch = Vec::new();
    let mut n = 0;
    for u in shared {
        if n > 0 && n + units[u].tables.len() > per {
            out.push(std::mem::take(&mut batch));
            n = 0;
        }
        batch.push(u);
        n += units[u].tables.len();
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

fn row_source(p: &TablePlan, source_side: bool) -> RowSource {
    RowSource {
        relation: if source_side {
            p.source.qualified().into()
        } else {
            p.into.to_string()
        },
        key: p.target.primary_key.clone(),
        values: p
            .columns
            .iter()
            .map(|(c, e, _)| {
                if source_side {
                    e.clone()
                } else {
                    quote_ident(c)
                }
            })
            .collect(),
        filter: p.filter.clone(),
    }
}

fn plan_table(
    st: tables::Table,
    tt: tables::Table,
    filter: Option<String>,
    opts: &SyncOptions,
    rules: &Rules,
) -> Result<Option<TablePlan>> {
    let display = st.display();
    let mut warnings = Vec::new();
    let mut columns = Vec::new();
    let mut binary = true;
    for tc in &tt.columns {
        if tc.generated {
            continue;
        }
        let Some(sc) = st.column(&tc.name) else {
            warnings.push(format!(
                "{display}: column {} is missing on the source; the target keeps its default",
                quote_ident(&tc.name)
            ));
            continue;
        };
        if sc.type_name != tc.type_name {
            warnings.push(format!(
                "{display}: column {} is {} on the source and {} on the target; copied as text",
                quote_ident(&tc.name),
                sc.type_name,
                tc.type_name
            ));
            binary = false;
        } else if sc.type_oid != tc.type_oid || sc.type_oid >= 16384 {
            // User-defined types: binary COPY carries OIDs that differ between databases.
            binary = false;
        }
        let rule = rules.for_column(&st.schema, &st.name, &sc.name);
        let expr = match rule {
            Some(r) => r.expression(&sc.name, &sc.type_name, &st.primary_key),
            None => quote_ident(&sc.name),
        };
        columns.push((
            tc.name.clone(),
            expr,
            rowdiff::compare_as_text(&tc.type_name),
        ));
    }
    for sc in &st.columns {
        if tt.column(&sc.name).is_none() {
            warnings.push(format!(
                "{display}: column {} exists only on the source; not copied",
                quote_ident(&sc.name)
            ));
        } else if tt.column(&sc.name).is_some_and(|c| c.generated) && !sc.generated {
            warnings.push(format!(
                "{display}: column {} is generated on the target; not copied",
                quote_ident(&sc.name)
            ));
        }
    }
    if columns.is_empty() {
        return Ok(None);
    }
    let needs_pk = match opts.mode {
        Mode::Overwrite => Some("--overwrite"),
        Mode::Preserve => Some("--preserve"),
        Mode::Replace if filter.is_some() && !opts.staging => Some("--where"),
        Mode::Replace if opts.show_diff => Some("--show-diff"),
        Mode::Replace => None,
    };
    if tt.primary_key.is_empty() {
        if let Some(flag) = needs_pk {
            if flag == "--show-diff" {
                warnings.push(format!(
                    "{display}: no primary key on the target; no diff for this table"
                ));
            } else {
                return Err(Error::InvalidInput(format!(
                    "{display} has no primary key on the target; {flag} needs one to match rows"
                )));
            }
        }
    } else {
        for k in &tt.primary_key {
            if !columns.iter().any(|(c, _, _)| c == k) {
                return Err(Error::InvalidInput(format!(
                    "{display}: primary key column {} is not on the source",
                    quote_ident(k)
                )));
            }
        }
    }
    let (into, staging, load_into) = if opts.staging {
        if tt.kind == "p" {
            return Err(Error::InvalidInput(format!(
                "{display} is partitioned; staging tables of partitioned tables are not \
                 supported yet"
            )));
        }
        let name = match &opts.staging_name {
            Some(n) => n.clone(),
            None => staging_name(&tt.name),
        };
        if name == tt.name {
            return Err(Error::InvalidInput(format!(
                "the staging name {name:?} is the live table's own name"
            )));
        }
        let loading = QuotedName::qualified(&tt.schema, &derived_name(&name, "_pgflip_loading"));
        (
            QuotedName::qualified(&tt.schema, &name),
            Some(name),
            loading,
        )
    } else {
        (tt.qualified(), None, tt.qualified())
    };
    let strategy = if opts.staging {
        Strategy::Staging
    } else {
        match opts.mode {
            Mode::Overwrite => Strategy::Merge {
                delete: MergeDelete::None,
                update: true,
            },
            Mode::Preserve => Strategy::Merge {
                delete: MergeDelete::None,
                update: false,
            },
            Mode::Replace => match &filter {
                Some(f) => Strategy::Merge {
                    delete: MergeDelete::MissingWhere(f.clone()),
                    update: true,
                },
                None => Strategy::Truncate,
            },
        }
    };
    Ok(Some(TablePlan {
        display,
        source: st,
        target: tt,
        into,
        load_into,
        staging,
        columns,
        format: if binary { Format::Binary } else { Format::Text },
        filter,
        strategy,
        sequences: Vec::new(),
        external_refs: Vec::new(),
        warnings,
        diff: None,
        ranges: Vec::new(),
        unsplit: None,
        replaces_staging: false,
        taken_names: BTreeSet::new(),
        small: false,
        droppable: BTreeSet::new(),
        inline: false,
    }))
}

async fn check_privileges(
    src: &Client,
    tgt: &Client,
    plans: &[TablePlan],
    opts: &SyncOptions,
) -> Result<()> {
    let src_oids: Vec<u32> = plans.iter().map(|p| p.source.oid).collect();
    let on_src = async {
        src.query(
            "SELECT c.oid::regclass::text FROM unnest($1::oid[]) o JOIN pg_class c ON c.oid = o \
             WHERE NOT has_table_privilege(c.oid, 'SELECT')",
            &[&src_oids],
        )
        .await
        .ctx("checking privileges on the source")
    };
    let tgt_oids: Vec<u32> = plans.iter().map(|p| p.target.oid).collect();
    let (privs, what) = if opts.staging {
        ("SELECT", "SELECT (staging tables are built LIKE it)")
    } else {
        match opts.mode {
            Mode::Replace => (
                "INSERT, DELETE, TRUNCATE, SELECT, UPDATE",
                "INSERT, DELETE, TRUNCATE, SELECT and UPDATE",
            ),
            Mode::Overwrite => ("INSERT, UPDATE, SELECT", "INSERT, UPDATE and SELECT"),
            Mode::Preserve => ("INSERT, SELECT", "INSERT and SELECT"),
        }
    };
    // has_table_privilege with a list is true when ANY is held: check each one.
    let on_tgt = async {
        tgt.query(
            "SELECT c.oid::regclass::text FROM unnest($1::oid[]) o JOIN pg_class c ON c.oid = o \
             WHERE NOT (SELECT bool_and(has_table_privilege(c.oid, trim(p))) \
                        FROM unnest(string_to_array($2, ',')) p)",
            &[&tgt_oids, &privs],
        )
        .await
        .ctx("checking privileges on the target")
    };
    let (src_rows, rows) = futures_util::try_join!(on_src, on_tgt)?;
    if let Some(r) = src_rows.first() {
        return Err(Error::InvalidInput(format!(
            "permission denied: the source user may not SELECT from {}",
            r.get::<_, String>(0)
        )));
    }
    if let Some(r) = rows.first() {
        return Err(Error::InvalidInput(format!(
            "permission denied: the target user needs {what} on {}",
            r.get::<_, String>(0)
        )));
    }
    if opts.staging {
        let schemas: Vec<String> = plans.iter().map(|p| p.target.schema.clone()).collect();
        let rows = tgt
            .query(
                "SELECT s FROM unnest($1::text[]) s WHERE NOT has_schema_privilege(s, 'CREATE')",
                &[&schemas],
            )
            .await
            .ctx("checking schema privileges on the target")?;
        if let Some(r) = rows.first() {
            return Err(Error::InvalidInput(format!(
                "permission denied: the target user may not create tables in schema {}",
                r.get::<_, String>(0)
            )));
        }
    }
    Ok(())
}

/// Reads `last_value, is_called` of every owned sequence of a copied column on the source in
/// one statement, and pairs each with the target's sequence of the same column.
async fn read_sequences(src: &Client, plans: &mut [TablePlan]) -> Result<()> {
    let mut parts = Vec::new();
    let mut index = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        for s in &p.source.sequences {
            if p.columns.iter().any(|(c, _, _)| c == &s.column)
                && p.target.sequences.iter().any(|t| t.column == s.column)
            {
                parts.push(format!(
                    "SELECT {} AS i, {} AS c, last_value, is_called FROM {}",
                    index.len(),
                    quote_literal(&s.column),
                    s.sequence
                ));
                index.push(i);
            }
        }
    }
    if parts.is_empty() {
        return Ok(());
    }
    let rows = src
        .query(&parts.join(" UNION ALL "), &[])
        .await
        .ctx("reading sequence positions on the source")?;
    for r in rows {
        let n: i32 = r.get(0);
        let col: String = r.get(1);
        let p = &mut plans[index[n as usize]];
        let seq_expr = match &p.staging {
            // The staging table's own sequence, whatever it is called.
            Some(_) => format!(
                "pg_get_serial_sequence({}, {})",
                quote_literal(&p.load_into),
                quote_literal(&col)
            ),
            None => {
                let t = p
                    .target
                    .sequences
                    .iter()
                    .find(|t| t.column == col)
                    .expect("paired above");
                format!("{}::regclass", quote_literal(&t.sequence))
            }
        };
        p.sequences.push((seq_expr, r.get(2), r.get(3)));
    }
    Ok(())
}

/// Marks the tables small enough to be emptied with DELETE rather than TRUNCATE (see
/// [`DELETE_AT_MOST`]). Sizes are the files as they are (`pg_relation_size`): `relpages` is only
/// as recent as the last VACUUM, and unknown for a table truncated since. Only plain tables (a
/// partitioned table's own size is 0 whatever its partitions hold) with no user trigger or rule
/// on DELETE or TRUNCATE on the target: DELETE would fire row triggers that TRUNCATE does not,
/// and skip the TRUNCATE ones. One query per side, whatever the number of tables.
///
/// The guarantee stays: the DELETE and the COPY are one transaction, so readers see the old rows
/// until COMMIT and the new ones after, never an empty table, and — unlike under TRUNCATE's
/// ACCESS EXCLUSIVE lock — they do not wait. The unit first takes SHARE ROW EXCLUSIVE on its
/// tables: readers (ACCESS SHARE) and `SELECT … FOR UPDATE` (ROW SHARE) go on, the application's
/// writers (ROW EXCLUSIVE) wait until COMMIT and then write on the new rows. Without that lock a
/// row inserted during the load would stay beside the source's (the target would not be the
/// source) or collide with one of them.
async fn small_tables(
    src: &Client,
    tgt: &Client,
    plans: &mut [TablePlan],
    opts: &SyncOptions,
    events: &dyn EventSink,
) -> Result<()> {
    let candidates: Vec<usize> = (0..plans.len())
        .filter(|&i| {
            let p = &plans[i];
            p.strategy == Strategy::Truncate && p.target.kind == "r" && p.source.kind == "r"
        })
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let src_oids: Vec<u32> = candidates.iter().map(|&i| plans[i].source.oid).collect();
    let on_src = async {
        let sizes = src
            .query(
                "SELECT o FROM unnest($1::oid[]) o WHERE pg_relation_size(o) <= $2",
                &[&src_oids, &(DELETE_AT_MOST as i64)],
            )
            .await
            .ctx("reading table sizes on the source")?;
        Ok::<_, Error>((sizes, inline::source_reads_back(src).await?))
    };
    let tgt_oids: Vec<u32> = candidates.iter().map(|&i| plans[i].target.oid).collect();
    let names: Vec<&str> = candidates.iter().map(|&i| plans[i].into.as_str()).collect();
    // pg_relation_size takes (and at once releases) ACCESS SHARE on each table: a table locked
    // by a migration must not hold the planning up without limit.
    let sql = format!(
        "BEGIN; SET LOCAL lock_timeout = {}",
        opts.lock_timeout.as_millis().max(1)
    );
    let on_tgt = crate::lockwait::retry(
        opts.max_wait,
        events,
        || async {
            tgt.batch_execute(&sql)
                .await
                .ctx("reading table sizes on the target")?;
            let r = tgt
                .query(
                    "SELECT o, NOT c.relrowsecurity \
                            AND NOT EXISTS (SELECT FROM pg_rewrite w WHERE w.ev_class = o \
                                            AND w.ev_type = '3') \
                     FROM unnest($1::oid[]) o JOIN pg_class c ON c.oid = o \
                     WHERE pg_relation_size(o) <= $2 \
                       AND NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = o \
                                       AND NOT t.tgisinternal AND t.tgenabled <> 'D' \
                                       AND t.tgtype::int & (8 | 32) <> 0) \
                       AND NOT EXISTS (SELECT FROM pg_rewrite w WHERE w.ev_class = o \
                                       AND w.ev_type = '4')",
                    &[&tgt_oids, &(DELETE_AT_MOST as i64)],
                )
                .await
                .ctx("reading table sizes on the target");
            let _ = tgt
                .batch_execute(if r.is_ok() { "COMMIT" } else { "ROLLBACK" })
                .await;
            r
        },
        || crate::lockwait::blockers_by_name(tgt, &names),
    );
    let ((src_rows, reads_back), tgt_rows) = futures_util::try_join!(on_src, on_tgt)?;
    let small_src: BTreeSet<u32> = src_rows.iter().map(|r| r.get(0)).collect();
    // Small on the target, and whether an INSERT there does what COPY does.
    let small_tgt: BTreeMap<u32, bool> = tgt_rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for i in candidates {
        let p = &mut plans[i];
        p.small = small_src.contains(&p.source.oid) && small_tgt.contains_key(&p.target.oid);
        p.inline = p.small && reads_back && small_tgt[&p.target.oid] && inline::text_is_exact(p);
    }
    Ok(())
}

/// Finds, for the large tables that will be truncated, the primary key and unique constraints
/// that can be dropped for the load and added again after it in the same transaction: a COPY
/// into a table without indexes, then each index built sorted (with PostgreSQL's parallel
/// workers) was 2.57 s against 2.95 s with the primary key maintained row by row during the
/// COPY (1 M rows, bench table). Only constraints that nothing else depends on: no foreign key
/// uses the index, no view depends on the constraint (a GROUP BY on the key), no comment on the
/// constraint, not inherited from a partitioned parent, and the index neither the replica
/// identity nor the clustering index (`plain`). Readers are locked out by the TRUNCATE until
/// COMMIT, so nobody sees the table without its key; writers too, so no duplicate gets in.
async fn droppable_constraints(
    tgt: &Client,
    plans: &mut [TablePlan],
    opts: &SyncOptions,
) -> Result<()> {
    let large: Vec<u32> = plans
        .iter()
        .filter(|p| p.strategy == Strategy::Truncate && !p.small && p.large(opts))
        .map(|p| p.target.oid)
        .collect();
    if large.is_empty() {
        return Ok(());
    }
    let rows = tgt
        .query(
            "SELECT con.conrelid, i.relname::text FROM pg_constraint con \
             JOIN pg_class i ON i.oid = con.conindid \
             WHERE con.conrelid = ANY($1::oid[]) AND con.contype IN ('p', 'u') \
               AND con.conparentid = 0 \
               AND obj_description(con.oid, 'pg_constraint') IS NULL \
               AND NOT EXISTS (SELECT FROM pg_depend d \
                               WHERE d.refclassid = 'pg_constraint'::regclass \
                                 AND d.refobjid = con.oid AND d.deptype <> 'i') \
               AND NOT EXISTS (SELECT FROM pg_depend d \
                               WHERE d.refclassid = 'pg_class'::regclass \
                                 AND d.refobjid = con.conindid)",
            &[&large],
        )
        .await
        .ctx("reading the target's key constraints")?;
    for r in rows {
        let (oid, index): (u32, String) = (r.get(0), r.get(1));
        if let Some(p) = plans.iter_mut().find(|p| p.target.oid == oid) {
            p.droppable.insert(index);
        }
    }
    Ok(())
}

/// Splits the tables whose source heap is above the threshold into block ranges. The sizes are
/// read in the snapshot's transaction; a table that grew since is still copied whole, as the
/// last range is open-ended, and every range reads the snapshot, never a later row.
async fn plan_ranges(
    src: &Client,
    plans: &mut [TablePlan],
    opts: &SyncOptions,
    events: &dyn EventSink,
) -> Result<()> {
    let oids: Vec<u32> = plans
        .iter()
        .filter(|p| p.source.kind == "r")
        .map(|p| p.source.oid)
        .collect();
    let rows = src
        .query(
            "SELECT o, pg_relation_size(o), current_setting('block_size')::bigint,                     current_setting('server_version_num')::int              FROM unnest($1::oid[]) o",
            &[&oids],
        )
        .await
        .ctx("reading table sizes on the source")?;
    for r in rows {
        let (oid, size, block, version): (u32, i64, i64, i32) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let size = size.max(0) as u64;
        if size <= opts.split_larger_than {
            continue;
        }
        let p = plans
            .iter_mut()
            .find(|p| p.source.oid == oid)
            .expect("oid of a planned table");
        if version < 140000 {
            // Before 14 a ctid range is a full scan per range; one copy reads the table once.
            let why = format!(
                "not split: the source is PostgreSQL {}.{}, and TID range scans need 14",
                version / 10000,
                version % 10000 / 100
            );
            events.emit(Event::Warning {
                message: format!("{}: {why}", p.display),
            });
            p.unsplit = Some(why);
            continue;
        }
        // Ranges of about the threshold each, and at least one per job so that a single large
        // table keeps every connection busy.
        let pieces = size
            .div_ceil(opts.split_larger_than)
            .max(opts.jobs as u64)
            .min(MAX_RANGES);
        p.ranges = block_ranges(size / block.max(1) as u64, pieces);
    }
    Ok(())
}

/// Groups tables into units (connected by foreign keys between synced tables, in the default
/// mode), orders each unit parents first, picks strategies and writes the actions.
fn build_units(
    plans: &mut [TablePlan],
    fks: &[tables::ForeignKey],
    opts: &SyncOptions,
) -> Result<Vec<Unit>> {
    let by_oid: BTreeMap<u32, usize> = plans
        .iter()
        .enumerate()
        .map(|(i, p)| (p.target.oid, i))
        .collect();
    let internal: Vec<&tables::ForeignKey> = fks
        .iter()
        .filter(|fk| {
            by_oid.contains_key(&fk.from_oid)
                && by_oid.contains_key(&fk.to_oid)
                && fk.from_oid != fk.to_oid
        })
        .collect();
    // Union-find over internal FKs (only replacing needs them together).
    let mut parent: Vec<usize> = (0..plans.len()).collect();
    fn find(p: &mut [usize], x: usize) -> usize {
        let mut r = x;
        while p[r] != r {
            r = p[r];
        }
        p[x] = r;
        r
    }
    let grouped = opts.mode == Mode::Replace && !opts.staging;
    if grouped {
        for fk in &internal {
            let a = find(&mut parent, by_oid[&fk.from_oid]);
            let b = find(&mut parent, by_oid[&fk.to_oid]);
            if a != b {
                parent[a] = b;
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..plans.len() {
        let r = find(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    let mut units = Vec::new();
    for (_, members) in groups {
        // Parents first (Kahn's algorithm over internal FKs of the unit).
        let set: BTreeSet<usize> = members.iter().copied().collect();
        let mut order = Vec::new();
        let mut remaining: BTreeSet<usize> = set.clone();
        while !remaining.is_empty() {
            let ready: Vec<usize> = remaining
                .iter()
                .copied()
                .filter(|&t| {
                    !internal.iter().any(|fk| {
                        by_oid[&fk.from_oid] == t
                            && remaining.contains(&by_oid[&fk.to_oid])
                            && by_oid[&fk.to_oid] != t
                    })
                })
                .collect();
            if ready.is_empty() {
                if !(opts.defer_constraints || opts.disable_integrity) {
                    let names: Vec<String> = remaining
                        .iter()
                        .map(|&i| plans[i].display.clone())
                        .collect();
                    return Err(Error::InvalidInput(format!(
                        "tables {} reference each other in a cycle; loading them needs \
                         --defer-constraints or --disable-integrity",
                        names.join(", ")
                    )));
                }
                order.extend(remaining.iter().copied());
                break;
            }
            for t in ready {
                remaining.remove(&t);
                order.push(t);
            }
        }
        let unit_fks: Vec<&tables::ForeignKey> = fks
            .iter()
            .filter(|fk| {
                by_oid.get(&fk.from_oid).is_some_and(|i| set.contains(i))
                    || by_oid.get(&fk.to_oid).is_some_and(|i| set.contains(i))
            })
            .collect();
        units.push(unit_actions(plans, order, &unit_fks, opts)?);
    }
    Ok(units)
}

/// A unit's transaction and what follows it: the statements both modes share (foreign keys
/// made deferrable for the transaction, sequences) around each mode's own (`in_place`,
/// `staging`).
fn unit_actions(
    plans: &mut [TablePlan],
    order: Vec<usize>,
    unit_fks: &[&tables::ForeignKey],
    opts: &SyncOptions,
) -> Result<Unit> {
    let mut unit = Unit {
        tables: Vec::new(),
        actions: Vec::new(),
        ranges: Vec::new(),
        after: Vec::new(),
        finish: Vec::new(),
        shares_transaction: false,
    };
    let replacing = opts.mode == Mode::Replace && !opts.staging;
    if replacing {
        unit.shares_transaction = in_place::choose_strategies(plans, &order, unit_fks, opts)?;
    }
    let actions = &mut unit.actions;

    let deferred: Vec<&&tables::ForeignKey> = if opts.defer_constraints {
        unit_fks.iter().filter(|fk| !fk.deferrable).collect()
    } else {
        Vec::new()
    };
    if opts.disable_integrity && replacing {
        actions.push(Action::Sql(Step::new(
            "disable triggers and foreign key checks for this transaction (superuser)",
            "SET LOCAL session_replication_role = replica",
        )));
    }
    for fk in &deferred {
        actions.push(Action::Sql(
            Step::new(
                format!(
                    "make foreign key {} of {} deferrable for this transaction",
                    quote_ident(&fk.name),
                    fk.from
                ),
                format!(
                    "ALTER TABLE {} ALTER CONSTRAINT {} DEFERRABLE; SET CONSTRAINTS {} DEFERRED",
                    fk.from,
                    quote_ident(&fk.name),
                    qualified_constraint(fk)
                ),
            )
            .lock(LockMode::AccessExclusive, fk.from.clone()),
        ));
    }

    if opts.staging {
        staging::unit_actions(plans, &order, &mut unit);
    } else {
        in_place::unit_actions(plans, &order, opts, &mut unit);
    }
    let actions = &mut unit.actions;

    for &i in &order {
        let p = &plans[i];
        for (seq, v, called) in &p.sequences {
            actions.push(Action::Sql(Step::new(
                format!("set the sequence of {} to the source's position", p.display),
                format!("SELECT setval({seq}, {v}, {called})"),
            )));
        }
    }
    if !deferred.is_empty() {
        let mut sql = String::from("SET CONSTRAINTS ALL IMMEDIATE");
        for fk in &deferred {
            sql.push_str(&format!(
                "; ALTER TABLE {} ALTER CONSTRAINT {} NOT DEFERRABLE",
                fk.from,
                quote_ident(&fk.name)
            ));
        }
        actions.push(Action::Sql(
            Step::new(
                "check the deferred foreign keys now and make them NOT DEFERRABLE again",
                sql,
            )
            .hazard(Hazard::Validates),
        ));
    }
    unit.tables = order;
    Ok(unit)
}

/// The COPY of a whole table into where its rows go (the live table, or the loading table of a
/// staging table): both modes' load of a table that is not merged or split.
pub(super) fn whole_copy(p: &TablePlan, i: usize) -> Action {
    let cols = p.column_list();
    let copy_out = copy::copy_out_sql(&p.source_select(None), p.format);
    let label = p.display.clone();
    let copy_in = copy::copy_in_sql(&p.load_into, &cols, p.format);
    Action::Copy {
        table: i,
        what: label.clone(),
        step: Step::new(
            format!(
                "copy the rows of {label} from the source ({:?} COPY{})",
                p.format,
                p.unsplit
                    .as_deref()
                    .map(|u| format!("; {u}"))
                    .unwrap_or_default()
            ),
            format!("{copy_in}  -- rows from the source: {copy_out}"),
        )
        .lock(LockMode::RowExclusive, p.load_into.clone()),
        copy_out,
        copy_in,
    }
}
