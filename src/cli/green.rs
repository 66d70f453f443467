//! `pgflip green create / status / refresh / promote / cancel`: a thin layer over
//! [`pgflip::green`], which does the work.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use pgflip::green::{self, sqlfile::Definition};
use pgflip::state;

use super::generations::{parse_duration, print_dry_run, print_plan, LockArgs};
use super::{exit, Global, Output, TargetArgs};

#[derive(Subcommand, Debug)]
pub enum GreenCommand {
    /// Build the new version of a materialized view or query-defined table (and every
    /// materialized view downstream of it) beside the live one.
    Create(CreateArgs),
    /// Compare green with live: row counts, contents, columns, staleness, convergence.
    Status(StatusArgs),
    /// Bring green up to date with its base tables, upstream first.
    Refresh(RelArgs),
    /// Switch the whole pipeline in at once, through the flip (refuses unless converged).
    Promote(PromoteArgs),
    /// Drop what create built; nothing is left behind.
    Cancel(RelArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The live materialized view or table (with --query).
    #[arg(value_name = "REL", required_unless_present = "file")]
    pub rel: Option<String>,
    /// The new query of REL (for a table: the query that fills it).
    #[arg(long, value_name = "SQL", requires = "rel", conflicts_with = "file")]
    pub query: Option<String>,
    /// A file of `CREATE MATERIALIZED VIEW name AS query;` statements: new definitions of
    /// existing relations, built together as one pipeline.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Build only the relations given, not the materialized views downstream of them
    /// (promote then refuses while one of those would read a retired relation).
    #[arg(long)]
    pub only: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// A live (or green) relation: the pipeline holding it. Default: every pipeline.
    #[arg(value_name = "REL")]
    pub rel: Option<String>,
    /// Green may lag its base tables by this much and still count as converged.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_lag: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct RelArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// A live (or green) relation: the pipeline holding it. Default: every pipeline.
    #[arg(value_name = "REL")]
    pub rel: Option<String>,
}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// A live (or green) relation: the pipeline holding it.
    #[arg(
        value_name = "REL",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    pub rel: Option<String>,
    /// Every pipeline in flight, in one flip.
    #[arg(long)]
    pub all: bool,
    /// Promote even if green has not converged.
    #[arg(long)]
    pub force: bool,
    /// Wait for convergence (polling) instead of refusing.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long (exit 5).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "wait", default_value = "5m")]
    pub timeout: Duration,
    /// Green may lag its base tables by this much and still count as converged.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_lag: Option<Duration>,
    #[command(flatten)]
    pub lock: LockArgs,
}

async fn connect(g: &Global, target: &TargetArgs) -> anyhow::Result<tokio_postgres::Client> {
    Ok(super::common::target_endpoint(g, target)?.connect().await?)
}

pub async fn run(cmd: GreenCommand, g: &Global, out: &Output) -> anyhow::Result<u8> {
    match cmd {
        GreenCommand::Create(a) => create(a, g, out).await,
        GreenCommand::Status(a) => status(a, g, out).await,
        GreenCommand::Refresh(a) => refresh(a, g, out).await,
        GreenCommand::Promote(a) => promote(a, g, out).await,
        GreenCommand::Cancel(a) => cancel(a, g, out).await,
    }
}

async fn create(a: CreateArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let defs = match (&a.file, &a.query, &a.rel) {
        (Some(path), _, _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| pgflip::Error::io(format!("reading {}", path.display()), e))?;
            green::sqlfile::parse_file(&text)?
        }
        (None, Some(q), Some(rel)) => vec![Definition {
            name: rel.clone(),
            query: q.trim().trim_end_matches(';').to_string(),
            kind: None,
        }],
        _ => {
            return Err(pgflip::Error::InvalidInput(
                "green create needs REL --query SQL, or --file FILE".into(),
            )
            .into())
        }
    };
    let client = connect(g, &a.target).await?;
    let opts = green::create::CreateOptions {
        only: a.only,
        dry_run: g.dry_run,
    };
    if g.dry_run {
        let o = green::create::create(&client, &defs, &opts, &pgflip::events::NullSink).await?;
        print_dry_run(out, &o.plan)?;
        return Ok(exit::OK);
    }
    let events = out.events();
    let command = format!(
        "green create {}",
        defs.iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let o = state::with_target_lock(Arc::new(client), &command, |c| async move {
        green::create::create(&c, &defs, &opts, &events).await
    })
    .await?;
    if out.json {
        out.println(&serde_json::to_string_pretty(&json!({
            "pipeline": o.pipeline,
            "members": o.members,
            "left_out": o.left_out,
            "warnings": o.warnings,
        }))?);
    } else {
        out.println(&format!(
            "Built green in schema {} (nothing live was locked):",
            o.pipeline
        ));
        for m in &o.members {
            out.println(&format!(
                "  {} → {} ({}{})",
                m.live,
                m.green,
                if m.member.explicit {
                    "new definition"
                } else {
                    "current definition over the green upstream"
                },
                if m.member.dropped_columns.is_empty() {
                    String::new()
                } else {
                    format!("; drops column(s) {}", m.member.dropped_columns.join(", "))
                }
            ));
        }
        for l in &o.left_out {
            out.println(&format!(
                "  left out (--only): {l}; promote refuses while it reads a relation of the pipeline"
            ));
        }
        out.println("Next: `pgflip green status`, then `pgflip green promote`.");
    }
    Ok(exit::OK)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub(super) fn render_status(out: &Output, all: &[green::status::PipelineStatus]) {
    if all.is_empty() {
        out.println("No green relation is in flight.");
        return;
    }
    for p in all {
        out.println(&format!(
            "Pipeline {}: converged: {}",
            p.pipeline,
            yes_no(p.converged)
        ));
        for m in &p.members {
            out.println(&format!(
                "  {} ({}, {}): built {}, refreshed {}",
                m.live,
                match m.kind {
                    green::RelKind::MaterializedView => "materialized view",
                    green::RelKind::Table => "table",
                    green::RelKind::View => "view",
                },
                if m.definition_changed {
                    "definition changed"
                } else {
                    "same definition"
                },
                m.built_at.format("%Y-%m-%d %H:%M:%S UTC"),
                m.refreshed_at.format("%Y-%m-%d %H:%M:%S UTC"),
            ));
            out.println(&format!(
                "    rows: live {}, green {}; contents equal: {}",
                m.live_rows,
                m.green_rows,
                match m.contents_equal {
                    Some(b) => yes_no(b),
                    None => "n/a (columns differ)",
                }
            ));
            let mut cols = Vec::new();
            if !m.columns_added.is_empty() {
                cols.push(format!("added {}", m.columns_added.join(", ")));
            }
            if !m.columns_dropped.is_empty() {
                cols.push(format!("dropped {}", m.columns_dropped.join(", ")));
            }
            if !m.columns_retyped.is_empty() {
                cols.push(format!("retyped {}", m.columns_retyped.join(", ")));
            }
            out.println(&format!(
                "    columns: {}",
                if cols.is_empty() {
                    "unchanged".to_string()
                } else {
                    cols.join("; ")
                }
            ));
            out.println(&format!(
                "    base tables since refresh: {} change(s){}{}{}",
                m.base_changes,
                if m.base_rewritten.is_empty() {
                    String::new()
                } else {
                    format!(", rewritten: {}", m.base_rewritten.join(", "))
                },
                if m.base_unwatched.is_empty() {
                    String::new()
                } else {
                    format!(", not watched: {}", m.base_unwatched.join(", "))
                },
                match m.lag_seconds {
                    Some(s) => format!(" (green up to {s:.0} s behind)"),
                    None => String::new(),
                }
            ));
            out.println(&format!(
                "    converged: {} ({})",
                yes_no(m.converged),
                m.reason
            ));
        }
    }
}

async fn status(a: StatusArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let client = connect(g, &a.target).await?;
    let opts = green::status::StatusOptions { max_lag: a.max_lag };
    let all = green::status::status(&client, a.rel.as_deref(), &opts).await?;
    // Change triggers that an interrupted run left on tables no pipeline reads.
    let leftover: Vec<String> = green::watch::unneeded(&client, &[])
        .await?
        .into_iter()
        .map(|(_, t)| t.into())
        .collect();
    if out.json {
        out.println(&serde_json::to_string_pretty(
            &json!({ "pipelines": all, "leftover_triggers": leftover }),
        )?);
    } else {
        render_status(out, &all);
        if !leftover.is_empty() {
            out.println(&format!(
                "pgflip's change trigger was left on {} by an interrupted run: `pgflip green cancel` removes it.",
                leftover.join(", ")
            ));
        }
    }
    Ok(exit::OK)
}

async fn refresh(a: RelArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let client = connect(g, &a.target).await?;
    if g.dry_run {
        let sel = green::select(&client, a.rel.as_deref()).await?;
        out.println(&format!(
            "dry run: would refresh, upstream first: {}",
            sel.values()
                .flatten()
                .map(|m| m.green.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Ok(exit::OK);
    }
    let events = out.events();
    let rel = a.rel.clone();
    let command = format!("green refresh {}", a.rel.as_deref().unwrap_or("(all)"));
    let o = state::with_target_lock(Arc::new(client), &command, |c| async move {
        green::refresh::refresh(&c, rel.as_deref(), &events).await
    })
    .await?;
    if out.json {
        out.println(&serde_json::to_string_pretty(&o)?);
    } else {
        out.println(&format!(
            "Refreshed green: {}{}",
            o.refreshed.join(", "),
            if o.concurrently.is_empty() {
                String::new()
            } else {
                format!(" (concurrently: {})", o.concurrently.join(", "))
            }
        ));
    }
    Ok(exit::OK)
}

async fn promote(a: PromoteArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let client = connect(g, &a.target).await?;
    let opts = green::promote::PromoteOptions {
        force: a.force,
        wait: a.wait.then_some(a.timeout),
        poll: None,
        status: green::status::StatusOptions { max_lag: a.max_lag },
        flip: a.lock.flip_options(),
    };
    let rel = if a.all { None } else { a.rel.clone() };
    if g.dry_run {
        let mut o = opts.clone();
        o.flip.checksums = o.flip.checksums.without_green();
        let fp = green::promote::plan(&client, rel.as_deref(), &o).await?;
        print_plan(out, &fp)?;
        return Ok(exit::OK);
    }
    let events = out.events();
    if opts.wait.is_some() {
        // Wait without holding the target lock, so that a refresh can run meanwhile; promote
        // checks again under the lock.
        green::promote::check_converged(&client, rel.as_deref(), &opts, &events).await?;
    }
    let mut opts = opts;
    opts.wait = None;
    let command = format!("green promote {}", rel.as_deref().unwrap_or("--all"));
    let o = state::with_target_lock(Arc::new(client), &command, |c| async move {
        green::promote::promote(&c, rel.as_deref(), &opts, &events).await
    })
    .await?;
    if out.json {
        out.println(&serde_json::to_string_pretty(&json!({
            "generation": o.flip.generation,
            "attempts": o.flip.attempts,
            "locked_ms": o.flip.locked_ms,
            "warnings": o.flip.warnings,
            "status": o.status,
        }))?);
    } else {
        out.println(&format!(
            "Promoted green: {} (generation {}, locks held {:.1} ms). The previous version is kept; `pgflip rollback --timestamp {}` brings it back.",
            o.flip
                .generation
                .relations
                .iter()
                .map(|r| r.live())
                .collect::<Vec<_>>()
                .join(", "),
            o.flip.generation.label,
            o.flip.locked_ms,
            o.flip.generation.label
        ));
    }
    Ok(exit::OK)
}

async fn cancel(a: RelArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let client = connect(g, &a.target).await?;
    if g.dry_run {
        let o = green::cancel::cancel(&client, a.rel.as_deref(), true).await?;
        print_dry_run(out, &o.plan)?;
        return Ok(exit::OK);
    }
    let rel = a.rel.clone();
    let command = format!("green cancel {}", a.rel.as_deref().unwrap_or("(all)"));
    let o = state::with_target_lock(Arc::new(client), &command, |c| async move {
        green::cancel::cancel(&c, rel.as_deref(), false).await
    })
    .await?;
    if out.json {
        out.println(&serde_json::to_string_pretty(&json!({
            "cancelled": o.pipelines,
            "relations": o.relations,
            "unwatched": o.unwatched,
        }))?);
    } else {
        if !o.pipelines.is_empty() {
            out.println(&format!(
                "Cancelled green for {} (dropped {}).",
                o.relations.join(", "),
                o.pipelines.join(", ")
            ));
        }
        if !o.unwatched.is_empty() {
            out.println(&format!(
                "Removed pgflip's change trigger from {}.",
                o.unwatched.join(", ")
            ));
        }
    }
    Ok(exit::OK)
}
