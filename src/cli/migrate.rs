//! `pgflip migrate prepare / swap / start / abort / status`: arguments and rendering of the
//! library's migration results.

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use pgflip::migrate::{self, MigrateStatus, PrepareOptions};
use pgflip::state;

use super::generations::{parse_duration, LockArgs};
use super::{exit, Global, Output, SourceArgs, TargetArgs};

#[derive(Subcommand, Debug)]
pub enum MigrateCommand {
    /// Build the source's version of every table beside the live ones, in the target.
    Prepare(Box<PrepareArgs>),
    /// Switch every table to the prepared version in one short transaction.
    Swap(SwapArgs),
    /// Prepare, then swap.
    Start(Box<PrepareArgs>),
    /// Remove everything prepare created; the target is left as it was.
    Abort(AbortArgs),
    /// Where the migration in flight stands, and whether a swap would be allowed.
    Status(AbortArgs),
}

#[derive(Args, Debug)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Tables whose target rows are kept: the application's writes to them are forwarded into
    /// the new version until the swap (`table` or `schema.table`; default: `preserved_tables`
    /// of pgflip.toml).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub preserved_tables: Vec<String>,
    /// Configuration file for `preserved_tables` (default: ./pgflip.toml when present).
    #[arg(long, value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,
    /// Schemas to migrate (repeatable; default: every user schema of the source).
    #[arg(long = "schema", value_name = "S")]
    pub schemas: Vec<String>,
    /// Leave out tables matching this pattern (repeatable; `*` matches anything).
    #[arg(long = "exclude-table", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Value of a new NOT NULL column of a preserved table: `table.column=EXPR`.
    #[arg(long = "column-default", value_name = "TABLE.COLUMN=EXPR")]
    pub column_defaults: Vec<String>,
    /// Connections to the target, at most (one of them coordinates).
    #[arg(long, short = 'j', value_name = "N", default_value_t = 4)]
    pub jobs: usize,
    /// Keep what a failed prepare built, for inspection (remove it with `migrate abort`).
    #[arg(long)]
    pub keep_on_failure: bool,
    /// Leave the target's tables that the source lacks live (default: the swap retires them
    /// with the generation; a rollback brings them back).
    #[arg(long)]
    pub keep_extra_tables: bool,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Args, Debug)]
pub struct SwapArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Args, Debug)]
pub struct AbortArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Longest a lock request may wait (removing a capture trigger locks its table briefly).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub lock_timeout: std::time::Duration,
    /// Give up retrying after this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub max_wait: std::time::Duration,
}

pub async fn run(cmd: MigrateCommand, g: &Global, out: &Output) -> anyhow::Result<u8> {
    match cmd {
        MigrateCommand::Prepare(a) => prepare(*a, g, out).await,
        MigrateCommand::Swap(a) => swap(a, g, out).await,
        MigrateCommand::Start(a) => {
            let target = a.target.clone();
            let lock = a.lock.clone();
            let code = prepare(*a, g, out).await?;
            if code != exit::OK || g.dry_run {
                return Ok(code);
            }
            swap(SwapArgs { target, lock }, g, out).await
        }
        MigrateCommand::Abort(a) => abort(a, g, out).await,
        MigrateCommand::Status(a) => status(a, g, out).await,
    }
}

fn parse_column_defaults(specs: &[String]) -> anyhow::Result<Vec<(String, String, String)>> {
    specs
        .iter()
        .map(|s| {
            let (lhs, expr) = s
                .split_once('=')
                .with_context(|| format!("--column-default {s:?}: expected table.column=EXPR"))?;
            let (table, column) = lhs
                .rsplit_once('.')
                .with_context(|| format!("--column-default {s:?}: expected table.column=EXPR"))?;
            Ok((table.to_string(), column.to_string(), expr.to_string()))
        })
        .collect()
}

async fn prepare(a: PrepareArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let (source, target) = super::common::endpoints(g, &a.source, &a.target)?;
    // The command line wins; otherwise pgflip.toml's list (a team keeps it with the project).
    let preserved = if a.preserved_tables.is_empty() {
        pgflip::sync::config::Config::load(a.config.as_deref())?.preserved_tables
    } else {
        a.preserved_tables.clone()
    };
    let opts = PrepareOptions {
        schemas: a.schemas.clone(),
        exclude: a.exclude.clone(),
        preserved,
        column_defaults: parse_column_defaults(&a.column_defaults)?,
        jobs: a.jobs.max(1),
        keep_on_failure: a.keep_on_failure,
        keep_extra_tables: a.keep_extra_tables,
        lock_timeout: a.lock.lock_timeout.max(std::time::Duration::from_millis(1)),
        max_wait: a.lock.max_wait,
        dry_run: g.dry_run,
        interrupt: None,
    };
    let events = out.events();
    let report = with_interrupt(opts, |opts| async move {
        migrate::prepare(&source, &target, &opts, &events).await
    })
    .await?;
    if out.json {
        out.println(&serde_json::to_string_pretty(&report)?);
        return Ok(exit::OK);
    }
    if let Some(script) = &report.script {
        out.println(script.trim_end());
        return Ok(exit::OK);
    }
    let r = &report.record;
    let rows: i64 = r.tables.iter().filter_map(|t| t.rows).sum();
    let bytes: i64 = r.tables.iter().filter_map(|t| t.bytes).sum();
    let mut s = format!(
        "Migration {} prepared in {} ms: {} tables, {} rows ({}) in {}\n",
        r.id,
        report.elapsed_ms,
        r.tables.len(),
        rows,
        super::output::human_bytes(bytes.max(0) as u64),
        r.schemas
            .iter()
            .map(|m| pgflip::ident::quote_ident(&m.shadow))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (t, p) in r.preserved() {
        s.push_str(&format!(
            "  preserved {}: {} live rows copied, writes forwarded by ({})\n",
            t.live_sql(),
            p.copied_rows.unwrap_or(0),
            p.key.join(", ")
        ));
    }
    s.push_str("Next: `pgflip migrate status`, then `pgflip migrate swap` (or `migrate abort`).");
    out.println(&s);
    Ok(exit::OK)
}

/// Runs `f` with `opts.interrupt` set from SIGINT / SIGTERM: prepare then removes what it
/// built itself (a second signal interrupts at once, as for any command).
async fn with_interrupt<F, Fut, T>(mut opts: PrepareOptions, f: F) -> pgflip::Result<T>
where
    F: FnOnce(PrepareOptions) -> Fut,
    Fut: std::future::Future<Output = pgflip::Result<T>>,
{
    use std::sync::atomic::Ordering;
    let (tx, rx) = tokio::sync::watch::channel(false);
    #[cfg(unix)]
    let listener = {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered before the hand-off, so that no signal falls between the two.
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                opts.interrupt = Some(rx);
                super::COMMAND_HANDLES_INTERRUPT.store(true, Ordering::SeqCst);
                Some(tokio::spawn(async move {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    let _ = tx.send(true);
                }))
            }
            _ => None,
        }
    };
    #[cfg(not(unix))]
    let listener: Option<tokio::task::JoinHandle<()>> = {
        let _ = (tx, rx);
        None
    };
    let r = f(opts).await;
    super::COMMAND_HANDLES_INTERRUPT.store(false, Ordering::SeqCst);
    if let Some(l) = listener {
        l.abort();
    }
    r
}

async fn swap(a: SwapArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let target = super::common::target_endpoint(g, &a.target)?;
    let opts = migrate::SwapOptions {
        // A migration switches a whole database: its swap does not wait for a read of every
        // table first (the retired side is still read after the commit, for `verify`).
        flip: a.lock.flip_options_or(pgflip::flip::Checksums::Retired),
        dry_run: g.dry_run,
    };
    let events = out.events();
    let outcome = migrate::swap(&target, &opts, &events).await?;
    drop(events);
    if out.json {
        out.println(&serde_json::to_string_pretty(&outcome)?);
        return Ok(exit::OK);
    }
    match &outcome.flip {
        None => out.println(outcome.script.as_deref().unwrap_or("").trim_end()),
        Some(f) => out.println(&format!(
            "Migration {} swapped: {} tables in one transaction (locks held {:.1} ms, {} attempt(s)); \
             generation {} keeps the previous tables in {} (`pgflip rollback --timestamp {}`).",
            outcome.id,
            f.generation.relations.len(),
            f.locked_ms,
            f.attempts,
            f.generation.label,
            pgflip::ident::quote_ident(&f.generation.backup_schema),
            f.generation.label
        )),
    }
    Ok(exit::OK)
}

async fn abort(a: AbortArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let target = super::common::target_endpoint(g, &a.target)?;
    let client = Arc::new(target.connect().await?);
    if g.dry_run {
        let rec = migrate::record::load_one(&client).await?;
        out.println(&format!(
            "Would remove migration {} ({}): schemas {}, capture triggers on {} table(s).",
            rec.id,
            rec.phase.as_str(),
            rec.schemas
                .iter()
                .map(|m| pgflip::ident::quote_ident(&m.shadow))
                .collect::<Vec<_>>()
                .join(", "),
            rec.preserved().count()
        ));
        return Ok(exit::OK);
    }
    let events = out.events();
    let report = state::with_target_lock(client, "migrate abort", |c| async move {
        migrate::abort(&c, a.lock_timeout, a.max_wait, &events).await
    })
    .await?;
    if out.json {
        out.println(&serde_json::to_string_pretty(&report)?);
    } else {
        out.println(&format!(
            "Migration {} aborted (it was {}): removed {} and the capture triggers.",
            report.id,
            report.phase,
            report
                .dropped_schemas
                .iter()
                .map(|s| pgflip::ident::quote_ident(s))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(exit::OK)
}

/// Human lines for one migration's status (also used by the top-level `status`).
pub fn describe(st: &MigrateStatus) -> String {
    let r = &st.record;
    let rows: i64 = r.tables.iter().filter_map(|t| t.rows).sum();
    let bytes: i64 = r.tables.iter().filter_map(|t| t.bytes).sum();
    let mut s = format!(
        "Migration {} ({}), from {}\n  {} tables, {} rows copied ({}), in {}\n",
        r.id,
        r.phase.as_str(),
        r.source,
        r.tables.len(),
        rows,
        super::output::human_bytes(bytes.max(0) as u64),
        r.schemas
            .iter()
            .map(|m| pgflip::ident::quote_ident(&m.shadow))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let preserved: Vec<String> = r.preserved().map(|(t, _)| t.live_sql()).collect();
    if !preserved.is_empty() {
        s.push_str(&format!(
            "  preserved: {}; {} write(s) forwarded, {} rejected\n",
            preserved.join(", "),
            st.forwarded,
            st.rejected
        ));
    }
    for x in &st.rejected_samples {
        s.push_str(&format!(
            "    rejected {} on {}: {} ({})\n",
            x.operation,
            x.table,
            x.message.as_deref().unwrap_or(""),
            x.sqlstate.as_deref().unwrap_or("")
        ));
    }
    s.push_str(&format!(
        "  a rollback after the swap restores the old views, materialized views and functions, and keeps: {}\n",
        st.rollback_keeps.join(", ")
    ));
    if st.swap_allowed {
        s.push_str("  swap: allowed\n");
    } else {
        s.push_str(&format!("  swap: not allowed: {}\n", st.reasons.join("; ")));
    }
    s
}

async fn status(a: AbortArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let target = super::common::target_endpoint(g, &a.target)?;
    let client = target.connect().await?;
    let all = migrate::status(&client).await?;
    if out.json {
        out.println(&serde_json::to_string_pretty(&json!({
            "target": target.describe(),
            "migrations": all,
        }))?);
        return Ok(exit::OK);
    }
    if all.is_empty() {
        out.println("No migration in flight on this target.");
    }
    for st in &all {
        out.println(describe(st).trim_end());
    }
    Ok(exit::OK)
}
