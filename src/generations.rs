//! What a target holds and what pgflip keeps there: the orchestration behind `pgflip status`,
//! `pgflip rollback` and `pgflip cleanup`. Reads, plans and runs here; the binary only asks
//! for confirmation and renders the results.
//!
//! In-flight work is read from the typed operation records (`pgflip.operations`), written in
//! the same transaction as the work they describe, never guessed from relation names: a user's
//! own `orders_staging` table is not pgflip's staging table.

use std::sync::Arc;

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{DbResultExt, Problem, Refusal};
use crate::events::{Event, EventSink};
use crate::flip::generation::{self, CleanupSelect, Generation};
use crate::flip::{self, FlipKind, FlipOptions, FlipOutcome, FlipPair};
use crate::plan::{ExecOptions, Plan};
use crate::state::{self, Operation, OperationKind, Phase, Run};
use crate::{Error, Result};

/// The state of one target, as `pgflip status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The version of the `pgflip` schema, `None` when pgflip never recorded anything here.
    pub state_version: Option<i32>,
    /// Operations prepared and not yet flipped, cancelled or aborted, oldest first.
    pub in_flight: Vec<Operation>,
    /// Generations, newest first.
    pub generations: Vec<Generation>,
    /// The latest runs, newest first.
    pub runs: Vec<Run>,
}

impl Status {
    /// Staging tables loaded by `sync --staging-table` and waiting for their swap (or still
    /// loading): their operation records (`green` is the staging table).
    pub fn staging_tables(&self) -> impl Iterator<Item = &Operation> {
        self.in_flight
            .iter()
            .filter(|o| o.kind == OperationKind::Sync)
    }
}

/// Reads the target's state: in-flight operations, generations and the latest `runs` runs.
/// Reads only; works on a database pgflip never touched.
pub async fn status(client: &Client, runs: i64) -> Result<Status> {
    Ok(Status {
        state_version: state::current_version(client).await?,
        in_flight: state::operations(client).await?,
        generations: generation::list(client).await?,
        runs: state::runs(client, runs).await?,
    })
}

/// What a cleanup would drop: the generations chosen, oldest first, and the plan (one
/// transaction per generation).
#[derive(Debug, Clone, Serialize)]
pub struct Cleanup {
    pub generations: Vec<Generation>,
    pub plan: Plan,
}

impl Cleanup {
    pub fn is_empty(&self) -> bool {
        self.generations.is_empty()
    }

    pub fn labels(&self) -> Vec<&str> {
        self.generations.iter().map(|g| g.label.as_str()).collect()
    }
}

/// Plans the cleanup of the generations `select` picks. Refuses, naming each object, when
/// something outside a generation's schema still depends on what it keeps: `DROP SCHEMA …
/// CASCADE` would take it along. Reads only.
pub async fn plan_cleanup(client: &Client, select: &CleanupSelect) -> Result<Cleanup> {
    let all = generation::list(client).await?;
    let chosen = generation::select_for_cleanup(&all, select);
    let schemas: std::collections::BTreeSet<String> = client
        .query("SELECT nspname::text FROM pg_catalog.pg_namespace", &[])
        .await
        .ctx("listing schemas")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut problems = Vec::new();
    for gen in chosen.iter().filter(|g| schemas.contains(&g.backup_schema)) {
        for dep in generation::outside_dependents(client, &gen.backup_schema).await? {
            problems.push(Problem::new(
                gen.backup_schema.clone(),
                format!("generation {}: {dep}", gen.label),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(Error::Refused(Refusal::new(
            "cleanup would drop what objects outside pgflip's schemas still use; drop or \
             re-point them first",
            problems,
        )));
    }
    let plan = generation::cleanup_plan(&chosen, &|s| schemas.contains(s));
    Ok(Cleanup {
        generations: chosen,
        plan,
    })
}

/// Runs a cleanup under pgflip's target lock, recorded in `pgflip.runs` as `command`.
pub async fn cleanup(
    client: Client,
    command: &str,
    cleanup: &Cleanup,
    events: &dyn EventSink,
) -> Result<()> {
    run_locked(client, command, &cleanup.plan, events).await
}

/// Runs a plan of `cleanup` (generations or schema diff's tombstones) under the target lock.
pub async fn run_locked(
    client: Client,
    command: &str,
    plan: &Plan,
    events: &dyn EventSink,
) -> Result<()> {
    let opts = ExecOptions {
        // One transaction per generation: a fault test stops cleanup between two of them.
        after_unit: Some("cleanup.after_generation"),
        ..Default::default()
    };
    state::with_target_lock(Arc::new(client), command, |c| async move {
        plan.execute(&c, &opts, events).await
    })
    .await
}

/// Whether an operation is a staging table that is loaded and waiting for its swap.
pub fn is_staged(op: &Operation) -> bool {
    op.kind == OperationKind::Sync && op.phase == Phase::Staged
}

/// A rollback ready to run: the generation it undoes, the pairs it switches back and the
/// flip's options (one-sided moves, and a migration's reverse schema step in the flip's
/// transaction).
#[derive(Debug, Clone)]
pub struct Rollback {
    pub generation: Generation,
    pub pairs: Vec<FlipPair>,
    pub options: FlipOptions,
}

/// Prepares the rollback of the generation made at `timestamp` (the latest without one),
/// leaving the tables `keep_tables` as they are. `base` carries the caller's lock settings.
/// A migration's reverse schema step is computed here (it reads the target's catalog); its
/// warnings (what the rollback keeps) are emitted. Reads only.
pub async fn plan_rollback(
    client: &Client,
    timestamp: Option<&str>,
    keep_tables: &[String],
    base: FlipOptions,
    events: &dyn EventSink,
) -> Result<Rollback> {
    let gen = generation::find(client, timestamp).await?;
    let pairs = flip::rollback_pairs(&gen, keep_tables)?;
    let mut opts = base;
    (opts.retire_only, opts.bring_in_only) = flip::rollback_one_sided(&gen, keep_tables);
    opts.rollback_of = Some(gen.id);
    // Rolling back means the tables' columns may differ (migrations); dependents are checked.
    opts.allow_column_changes = true;
    // A migration's schema step (functions, views, ...) is undone in the same transaction.
    if let Some(step) = crate::migrate::reverse::reverse(
        client,
        gen.id,
        &pairs,
        &opts.retire_only,
        &opts.bring_in_only,
    )
    .await?
    {
        opts.in_flip_before.extend(step.before);
        opts.in_flip_after.extend(step.after);
        opts.job_views = step.job_views;
        for w in step.warnings {
            events.emit(Event::Warning { message: w });
        }
    }
    Ok(Rollback {
        generation: gen,
        pairs,
        options: opts,
    })
}

/// The rollback's flip as it would run, for `--dry-run` (checksums are not planned: they
/// would scan the tables).
pub async fn preview_rollback(client: &Client, rollback: &Rollback) -> Result<flip::FlipPlan> {
    let mut opts = rollback.options.clone();
    opts.checksums = opts.checksums.without_green();
    flip::plan_flip(client, &rollback.pairs, FlipKind::Rollback, &opts).await
}

/// Runs a rollback under pgflip's target lock, recorded in `pgflip.runs`.
pub async fn rollback(
    client: Client,
    rollback: &Rollback,
    events: &dyn EventSink,
) -> Result<FlipOutcome> {
    let command = format!("rollback {}", rollback.generation.label);
    state::with_target_lock(Arc::new(client), &command, |c| async move {
        flip::flip(
            &c,
            &rollback.pairs,
            FlipKind::Rollback,
            &rollback.options,
            events,
        )
        .await
    })
    .await
}
