//! `green promote`: switch every relation of a pipeline in at once, through the flip engine.
//!
//! Before any lock: the pipeline must have converged (unless forced; `--wait` polls until it
//! has), and no materialized view outside the pipeline may read one of its relations (the
//! flip would have to re-create it, with its data, under the locks). Then one flip of all the
//! members: live ones retired into the generation's schema, green ones moved in under the
//! live names with their indexes (already named as live's), dependent views re-pointed,
//! grants, owner, comments and RLS as live had them, a generation of kind `green` recorded and
//! the operation records removed, in one transaction. Rollback is the ordinary `rollback`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{Error, Problem, Refusal, Result};
use crate::events::{Event, EventSink};
use crate::flip::{self, FlipKind, FlipOptions, FlipOutcome, FlipPair, FlipPlan};

use super::pipeline::Graph;
use super::status::{pipeline_status, PipelineStatus, StatusOptions};
use super::GreenRelation;

#[derive(Debug, Clone, Default)]
pub struct PromoteOptions {
    /// Promote even when not converged.
    pub force: bool,
    /// Wait (up to this long) for convergence instead of refusing.
    pub wait: Option<Duration>,
    /// How often `wait` looks again.
    pub poll: Option<Duration>,
    pub status: StatusOptions,
    pub flip: FlipOptions,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromoteOutcome {
    pub status: Vec<PipelineStatus>,
    pub flip: FlipOutcome,
}

/// The members to promote: the pipeline holding `rel`, or every pipeline (`rel` = `None`).
async fn members(client: &Client, rel: Option<&str>) -> Result<Vec<GreenRelation>> {
    let selected = super::select(client, rel).await?;
    if selected.is_empty() {
        return Err(Error::InvalidInput(
            "no green relation is in flight: nothing to promote".into(),
        ));
    }
    Ok(selected.into_values().flatten().collect())
}

fn pairs(members: &[GreenRelation]) -> Vec<FlipPair> {
    members
        .iter()
        .filter(|m| !m.member.new)
        .map(|m| FlipPair {
            live: m.live.clone(),
            green: m.green.clone(),
        })
        .collect()
}

/// Materialized views outside the pipeline that read one of its live relations (directly or
/// through views): promote would leave them reading a retired relation, or rebuild them under
/// the locks. Refused, named.
async fn outside_readers(client: &Client, members: &[GreenRelation]) -> Result<Vec<Problem>> {
    let graph = Graph::load(client).await?;
    let live: Vec<u32> = graph
        .nodes
        .values()
        .filter(|n| members.iter().any(|m| m.live == n.name))
        .map(|n| n.oid)
        .collect();
    let live_set: BTreeSet<u32> = live.iter().copied().collect();
    let (mvs, _) = graph.downstream(&live);
    Ok(mvs
        .iter()
        .filter(|o| !live_set.contains(o))
        .map(|o| {
            let reads: Vec<String> = graph
                .upstream_members(*o, &live_set)
                .iter()
                .map(|u| graph.name(*u))
                .collect();
            let name = graph.name(*o);
            Problem::new(name.clone(), format!("{name} (reads {})", reads.join(", ")))
        })
        .collect())
}

/// Checks convergence (waiting for it with `opts.wait`), unless forced. Reads only: `--wait`
/// runs it without the target lock first, so that a `green refresh` can run meanwhile.
pub async fn check_converged(
    client: &Client,
    rel: Option<&str>,
    opts: &PromoteOptions,
    events: &dyn EventSink,
) -> Result<Vec<PipelineStatus>> {
    let started = Instant::now();
    loop {
        let mut statuses = Vec::new();
        for (_, m) in super::select(client, rel).await? {
            statuses.push(pipeline_status(client, &m, &opts.status).await?);
        }
        let waiting: Vec<Problem> = statuses
            .iter()
            .flat_map(|p| p.members.iter())
            .filter(|m| !m.converged)
            .map(|m| Problem::new(m.live.to_string(), format!("{}: {}", m.live, m.reason)))
            .collect();
        let reasons = || {
            waiting
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        };
        if waiting.is_empty() || opts.force {
            if !waiting.is_empty() {
                events.emit(Event::Warning {
                    message: format!("promoting without convergence (--force): {}", reasons()),
                });
            }
            return Ok(statuses);
        }
        match opts.wait {
            Some(limit) if started.elapsed() < limit => {
                events.emit(Event::Info {
                    message: format!("waiting for convergence: {}", reasons()),
                });
                let poll = opts.poll.unwrap_or(Duration::from_millis(500));
                tokio::time::sleep(poll.min(limit.saturating_sub(started.elapsed()))).await;
            }
            Some(limit) => {
                return Err(Error::Refused(Refusal::new(
                    format!(
                        "green did not converge within {:.1} s (nothing was changed)",
                        limit.as_secs_f64()
                    ),
                    waiting,
                )))
            }
            None => {
                return Err(Error::Refused(Refusal::new(
                    "green has not converged (nothing was changed; `pgflip green refresh`, `--wait`, or `--force`)",
                    waiting,
                )))
            }
        }
    }
}

fn flip_options(opts: &PromoteOptions, members: &[GreenRelation]) -> FlipOptions {
    let mut fo = FlipOptions {
        // The new definition may add, drop or retype columns; dependents that use a column
        // green lacks are still refused by the flip, by name.
        allow_column_changes: true,
        ..opts.flip.clone()
    };
    // Relations the file adds come in alone under their names (one-sided: the generation
    // records them with no retired side, so that rollback retires them); their records go in
    // the same transaction, as the flip does for its pairs.
    for m in members.iter().filter(|m| m.member.new) {
        fo.bring_in_only.push(FlipPair {
            live: m.live.clone(),
            green: m.green.clone(),
        });
        fo.in_flip_after.push(format!(
            "DELETE FROM pgflip.operations WHERE kind = {} AND green_schema = {} AND green_name = {}",
            crate::ident::quote_literal(super::KIND),
            crate::ident::quote_literal(&m.green.schema),
            crate::ident::quote_literal(&m.green.name)
        ));
    }
    // The pipeline's schema is empty once its members moved in: dropped in the same
    // transaction, unless something else was put in it (then it stays, for `cancel`).
    let schemas: BTreeSet<&str> = members.iter().map(|m| m.green.schema.as_str()).collect();
    for s in schemas {
        fo.in_flip_after.push(format!(
            "DO $pgflip$ BEGIN DROP SCHEMA {}; EXCEPTION WHEN dependent_objects_still_exist THEN NULL; END $pgflip$",
            crate::ident::quote_ident(s)
        ));
    }
    fo
}

/// The flip plan promote would run (for `--dry-run`), after the same refusals.
pub async fn plan(client: &Client, rel: Option<&str>, opts: &PromoteOptions) -> Result<FlipPlan> {
    let members = members(client, rel).await?;
    let outside = outside_readers(client, &members).await?;
    if !outside.is_empty() {
        return Err(refuse_outside(outside));
    }
    flip::plan_flip(
        client,
        &pairs(&members),
        FlipKind::Green,
        &flip_options(opts, &members),
    )
    .await
}

fn refuse_outside(outside: Vec<Problem>) -> Error {
    Error::Refused(Refusal::new(
        "materialized views outside the pipeline read relations it retires; promote would have to rebuild them under its locks. \
         Create the pipeline without --only so that they are rebuilt in green (nothing was changed)",
        outside,
    ))
}

/// Promotes the pipeline holding `rel` (or every pipeline). The caller holds the target lock.
pub async fn promote(
    client: &Client,
    rel: Option<&str>,
    opts: &PromoteOptions,
    events: &dyn EventSink,
) -> Result<PromoteOutcome> {
    let members = members(client, rel).await?;
    let outside = outside_readers(client, &members).await?;
    if !outside.is_empty() {
        return Err(refuse_outside(outside));
    }
    let status = check_converged(client, rel, opts, events).await?;
    crate::failpoint::hit("green.promote.before_flip").await?;
    let fo = flip_options(opts, &members);
    let outcome = flip::flip(client, &pairs(&members), FlipKind::Green, &fo, events).await?;
    crate::failpoint::hit("green.promote.after_flip").await?;
    // The pipeline is gone: its change triggers too (one whose lock is not granted now is
    // left, said so, for the next green command).
    if let Err(e) = super::watch::unwatch_unused(client, events).await {
        events.emit(Event::Warning {
            message: format!(
                "promoted, but the change triggers could not be removed ({e}); the next green command removes them"
            ),
        });
    }
    Ok(PromoteOutcome {
        status,
        flip: outcome,
    })
}
