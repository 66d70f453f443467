//! `pgflip status`, `list`, `rollback`, `cleanup` and `verify`: the commands over generations
//! (the records of flips, kept in the target's `pgflip` schema).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::json;

use pgflip::conn::Endpoint;
use pgflip::flip::{self, generation, Checksums, FlipOptions};
use pgflip::state;

use super::{exit, Global, Output, TargetArgs};

/// Parses `100ms`, `2s`, `1.5s`, `1m` or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "ms"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration '{s}' (e.g. 100ms, 2s)"))?;
    let ms = match unit {
        "ms" => v,
        "s" => v * 1000.0,
        "m" | "min" => v * 60_000.0,
        _ => return Err(format!("invalid duration unit in '{s}' (ms, s, m)")),
    };
    if ms.is_nan() || ms < 0.0 || !ms.is_finite() {
        return Err(format!("invalid duration '{s}'"));
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

/// Lock behaviour of commands that flip.
#[derive(Args, Debug, Clone)]
pub struct LockArgs {
    /// Longest a lock request of the flip may wait (so the longest the application waits behind
    /// it) before the attempt is rolled back and retried.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// Give up retrying after this long, naming the sessions in the way.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub max_wait: Duration,
    /// statement_timeout inside the flip transaction.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub statement_timeout: Duration,
    /// Row counts and checksums the flip records, each a full read of a relation outside any
    /// lock: `both` (green's before the switch, the retired side's after it), `retired` (only
    /// after the switch: it waits for no read), `none` (`verify` then checks only that the
    /// retired relations are there). Default: both; retired for `migrate swap` and `migrate start`.
    #[arg(long, value_name = "WHICH", value_parser = parse_checksums)]
    pub checksums: Option<Checksums>,
}

pub fn parse_checksums(s: &str) -> Result<Checksums, String> {
    s.parse()
}

impl LockArgs {
    pub fn flip_options(&self) -> FlipOptions {
        self.flip_options_or(Checksums::default())
    }

    /// [`LockArgs::flip_options`] for a job whose checksums default to `checksums`.
    pub fn flip_options_or(&self, checksums: Checksums) -> FlipOptions {
        FlipOptions {
            lock_timeout: self.lock_timeout,
            max_wait: self.max_wait,
            statement_timeout: self.statement_timeout,
            checksums: self.checksums.unwrap_or(checksums),
            ..FlipOptions::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Roll back the latest active generation.
    #[arg(
        long,
        conflicts_with = "timestamp",
        required_unless_present = "timestamp"
    )]
    pub latest: bool,
    /// Roll back this generation (its label, as `pgflip list` shows it).
    #[arg(long, value_name = "TS")]
    pub timestamp: Option<String>,
    /// Tables whose current rows are kept: they are not flipped back.
    #[arg(long, value_name = "TABLES", value_delimiter = ',')]
    pub keep_tables: Vec<String>,
    /// Do not ask before rolling back on a target that is not on this machine.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["before", "keep"])))]
pub struct CleanupArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Drop generations created before this date (YYYY-MM-DD, or an RFC 3339 time).
    #[arg(long, value_name = "DATE", conflicts_with = "keep")]
    pub before: Option<String>,
    /// Keep the newest N generations, drop the others.
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
    /// Drop the tombstones `schema diff` left (tables and columns renamed
    /// `<name>_dropped_<UTC time>`) retired before --before, instead of generations.
    #[arg(long, requires = "before", conflicts_with = "keep")]
    pub dropped: bool,
    /// Do not ask before dropping data on a target that is not on this machine.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The generation to verify (its label, as `pgflip list` shows it).
    #[arg(long, value_name = "TS", required_unless_present = "latest")]
    pub timestamp: Option<String>,
    /// Verify the latest active generation.
    #[arg(long, conflicts_with = "timestamp")]
    pub latest: bool,
    /// First complete what the flip's run left unrecorded (killed or failed after the flip
    /// committed): the retired side's row counts and checksums, and the validation of the
    /// foreign keys the flip re-attached.
    #[arg(long)]
    pub record: bool,
}

async fn connect(
    g: &Global,
    target: &TargetArgs,
) -> anyhow::Result<(Endpoint, tokio_postgres::Client)> {
    // Through the shared resolver, so that --env / ./.env apply here as everywhere.
    let ep = super::common::target_endpoint(g, target)?;
    let client = ep.connect().await?;
    Ok((ep, client))
}

fn relation_summary(g: &generation::Generation) -> String {
    g.relations
        .iter()
        .map(|r| r.live())
        .collect::<Vec<_>>()
        .join(", ")
}

fn human_bytes(b: i64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

pub async fn status(args: StatusArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let (ep, client) = connect(g, &args.target).await?;
    let st = pgflip::generations::status(&client, 5).await?;
    if out.json {
        let v = json!({
            "target": ep.describe(),
            "state_version": st.state_version,
            "in_flight": {
                "staging_tables": st.staging_tables().map(|o| json!({
                    "staging": o.green,
                    "live": o.live,
                    "phase": o.phase,
                })).collect::<Vec<_>>(),
                "operations": st.in_flight.iter().map(|o| json!({
                    "kind": o.kind,
                    "phase": o.phase,
                    "live": o.live,
                    "green": o.green,
                    "updated_at": o.updated_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                })).collect::<Vec<_>>(),
            },
            "generations": st.generations.iter().take(5).collect::<Vec<_>>(),
            "runs": st.runs,
        });
        out.println(&serde_json::to_string_pretty(&v)?);
        return Ok(exit::OK);
    }
    let mut s = format!("Target: {}\n", ep.describe());
    match st.state_version {
        None => {
            s.push_str("State: no pgflip state on this target (nothing has been flipped here)\n")
        }
        Some(v) => s.push_str(&format!("State: pgflip schema version {v}\n")),
    }
    s.push_str("\nIn flight:\n");
    if st.in_flight.is_empty() {
        s.push_str("  nothing\n");
    }
    for o in st.staging_tables() {
        s.push_str(&format!(
            "  {} — staging table {} {}\n",
            o.green,
            if pgflip::generations::is_staged(o) {
                "waiting for a swap into"
            } else {
                "still being loaded (or left by a load that was stopped) for"
            },
            o.live
        ));
    }
    for o in &st.in_flight {
        s.push_str(&format!(
            "  {} ({}): {} → {}, since {}\n",
            o.kind.as_str(),
            o.phase,
            o.green,
            o.live,
            o.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    if st.state_version.is_some() {
        let gens = &st.generations;
        let runs = &st.runs;
        s.push_str("\nLatest generations:\n");
        if gens.is_empty() {
            s.push_str("  none\n");
        }
        for g in gens.iter().take(5) {
            s.push_str(&format!(
                "  {}  {:<8}  {:<11}  {}  ({} {} {})\n",
                g.label,
                g.kind,
                g.status.replace('_', " "),
                g.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                relation_summary(g),
                if g.status == "cleaned" {
                    "dropped with"
                } else {
                    "kept in"
                },
                g.backup_schema
            ));
        }
        if let Some(g) = gens.first() {
            s.push_str(&format!(
                "\nLatest flip: generation {} ({}) — {} {} live.\n",
                g.label,
                g.kind,
                relation_summary(g),
                if g.relations.len() == 1 { "is" } else { "are" }
            ));
        }
        if !runs.is_empty() {
            s.push_str("\nLatest runs:\n");
        }
        for r in runs {
            let took = match r.finished_at {
                Some(f) => format!(
                    "{:.1}s",
                    (f - r.started_at).num_milliseconds().max(0) as f64 / 1000.0
                ),
                None => "-".into(),
            };
            s.push_str(&format!(
                "  {}  {:<11}  {:>7}  {}{}\n",
                r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                r.status,
                took,
                r.command,
                match &r.error {
                    Some(e) => format!(" — {}", e.lines().next().unwrap_or("")),
                    None => String::new(),
                }
            ));
            // The generation is written in the flip's own transaction: if it is there, the
            // flip committed, whatever happened to the run afterwards.
            if let (Some(label), true) = (&r.generation, r.status != "succeeded") {
                s.push_str(&format!(
                    "      its flip committed (generation {label}); `pgflip verify --timestamp {label} --record` \
                     completes what the run left unrecorded\n"
                ));
            }
        }
    }
    out.write_stdout(s.as_bytes());
    Ok(exit::OK)
}

pub async fn list(args: ListArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let (_ep, client) = connect(g, &args.target).await?;
    let gens = generation::list(&client).await?;
    if out.json {
        out.println(&serde_json::to_string_pretty(&gens)?);
        return Ok(exit::OK);
    }
    if gens.is_empty() {
        out.println("no generations on this target");
        return Ok(exit::OK);
    }
    let mut s = format!(
        "{:<24}  {:<20}  {:<8}  {:<11}  {:>10}  relations\n",
        "generation", "time (UTC)", "kind", "status", "size"
    );
    for g in &gens {
        s.push_str(&format!(
            "{:<24}  {:<20}  {:<8}  {:<11}  {:>10}  {}\n",
            g.label,
            g.created_at.format("%Y-%m-%d %H:%M:%S"),
            g.kind,
            g.status.replace('_', " "),
            if g.status != "active" {
                "-".to_string()
            } else {
                human_bytes(g.total_retired_bytes())
            },
            relation_summary(g)
        ));
    }
    out.write_stdout(s.as_bytes());
    Ok(exit::OK)
}

pub async fn rollback(args: RollbackArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let (ep, client) = connect(g, &args.target).await?;
    let events = out.events();
    let rb = pgflip::generations::plan_rollback(
        &client,
        args.timestamp.as_deref(),
        &args.keep_tables,
        args.lock.flip_options(),
        &events,
    )
    .await?;
    if g.dry_run {
        let fp = pgflip::generations::preview_rollback(&client, &rb).await?;
        print_plan(out, &fp)?;
        return Ok(exit::OK);
    }
    let gen = &rb.generation;
    super::confirm::confirm(
        &ep,
        &format!(
            "roll back generation {} ({})",
            gen.label,
            relation_summary(gen)
        ),
        args.yes,
    )?;
    let outcome = pgflip::generations::rollback(client, &rb, &events).await?;
    if out.json {
        out.println(&serde_json::to_string_pretty(&json!({
            "rolled_back": gen.label,
            "generation": outcome.generation,
            "attempts": outcome.attempts,
            "locked_ms": outcome.locked_ms,
            "warnings": outcome.warnings,
        }))?);
    } else {
        out.println(&format!(
            "Rolled back generation {}: {} {} back (locks held {:.1} ms). The rolled-back version is kept as generation {}; `pgflip rollback --timestamp {}` undoes this.",
            gen.label,
            relation_summary(&outcome.generation),
            if outcome.generation.relations.len() == 1 { "is" } else { "are" },
            outcome.locked_ms,
            outcome.generation.label,
            outcome.generation.label
        ));
    }
    Ok(exit::OK)
}

/// A plan that was not run: as JSON, or as its script under a "dry run" header.
pub(super) fn print_dry_run(out: &Output, plan: &pgflip::plan::Plan) -> anyhow::Result<()> {
    if out.json {
        out.println(&serde_json::to_string_pretty(plan)?);
    } else {
        out.write_stdout(
            plan.to_script(&[plan.title.clone(), "dry run: nothing was changed".into()])
                .as_bytes(),
        );
    }
    Ok(())
}

pub(super) fn print_plan(out: &Output, fp: &flip::FlipPlan) -> anyhow::Result<()> {
    if out.json {
        out.println(&serde_json::to_string_pretty(fp)?);
    } else {
        let mut header = vec![
            fp.plan.title.clone(),
            "dry run: nothing was changed".to_string(),
        ];
        for w in &fp.warnings {
            header.push(format!("warning: {w}"));
        }
        out.write_stdout(fp.plan.to_script(&header).as_bytes());
    }
    Ok(())
}

fn parse_date(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
        pgflip::Error::InvalidInput(format!(
            "invalid date '{s}' (use YYYY-MM-DD or an RFC 3339 time)"
        ))
    })?;
    Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
}

pub async fn cleanup(args: CleanupArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let (ep, client) = connect(g, &args.target).await?;
    if args.dropped {
        return cleanup_tombstones(&args, &ep, client, g, out).await;
    }
    let select = match (&args.before, args.keep) {
        (Some(d), _) => generation::CleanupSelect::Before(parse_date(d)?),
        (None, Some(n)) => generation::CleanupSelect::KeepNewest(n),
        (None, None) => unreachable!("clap requires one"),
    };
    let cleanup = pgflip::generations::plan_cleanup(&client, &select).await?;
    if g.dry_run {
        print_dry_run(out, &cleanup.plan)?;
        return Ok(exit::OK);
    }
    if !cleanup.is_empty() {
        let labels = cleanup.labels();
        super::confirm::confirm(
            &ep,
            &format!(
                "drop {} generation(s) and the tables they keep ({})",
                labels.len(),
                labels.join(", ")
            ),
            args.yes,
        )?;
        let command = format!("cleanup {}", labels.join(" "));
        pgflip::generations::cleanup(client, &command, &cleanup, &out.events()).await?;
    }
    if out.json {
        out.println(&serde_json::to_string_pretty(&json!({
            "cleaned": cleanup.labels()
        }))?);
    } else if out.quiet {
    } else if cleanup.is_empty() {
        out.println("nothing to clean up");
    } else {
        for gen in &cleanup.generations {
            out.println(&format!(
                "dropped generation {} ({}, {})",
                gen.label, gen.kind, gen.backup_schema
            ));
        }
    }
    Ok(exit::OK)
}

pub async fn verify(args: VerifyArgs, g: &Global, out: &Output) -> anyhow::Result<u8> {
    let (_ep, client) = connect(g, &args.target).await?;
    let mut gen = generation::find(&client, args.timestamp.as_deref()).await?;
    if args.record {
        let label = gen.label.clone();
        state::with_target_lock(Arc::new(client), &format!("verify --record {label}"), |c| {
            let gen = gen.clone();
            async move { generation::complete_record(&c, &gen).await }
        })
        .await?;
        let (_ep, c) = connect(g, &args.target).await?;
        gen = generation::find(&c, Some(&label)).await?;
        return print_verify(&c, &gen, out).await;
    }
    print_verify(&client, &gen, out).await
}

async fn print_verify(
    client: &tokio_postgres::Client,
    gen: &generation::Generation,
    out: &Output,
) -> anyhow::Result<u8> {
    let report = generation::verify(client, gen).await?;
    if out.json {
        out.println(&serde_json::to_string_pretty(&report)?);
    } else if report.ok {
        let mut s = format!("generation {} verified:\n", gen.label);
        for r in &report.relations {
            if r.compared {
                s.push_str(&format!(
                    "  ✔ {} — {} rows, checksum matches\n",
                    r.retired,
                    r.rows.unwrap_or_default()
                ));
            } else {
                s.push_str(&format!(
                    "  ✔ {} — present, {} rows (the flip took no checksums: whether it changed since cannot be told; `--record` takes them now)\n",
                    r.retired,
                    r.rows.unwrap_or_default()
                ));
            }
        }
        out.write_stdout(s.as_bytes());
    } else {
        let mut s = format!("generation {} does NOT match its record:\n", gen.label);
        for p in &report.problems {
            s.push_str(&format!("  ✘ {p}\n"));
        }
        out.write_stdout(s.as_bytes());
    }
    Ok(if report.ok {
        exit::OK
    } else {
        exit::DIFFERENCES
    })
}

/// `cleanup --dropped --before DATE`: drops the tombstones of `schema diff` retired before DATE.
async fn cleanup_tombstones(
    args: &CleanupArgs,
    ep: &Endpoint,
    client: tokio_postgres::Client,
    g: &Global,
    out: &Output,
) -> anyhow::Result<u8> {
    let before = parse_date(args.before.as_deref().expect("clap requires --before"))?;
    let plan = pgflip::schemadiff::tombstones::drop_before(&client, before).await?;
    if g.dry_run {
        print_dry_run(out, &plan)?;
        return Ok(exit::OK);
    }
    if !plan.is_empty() {
        super::confirm::confirm(
            ep,
            &format!("drop {} tombstone(s) of schema diff", plan.steps.len()),
            args.yes,
        )?;
        let command = format!("cleanup --dropped --before {before}");
        pgflip::generations::run_locked(client, &command, &plan, &out.events()).await?;
    }
    if out.json {
        out.println(&serde_json::to_string_pretty(&json!({
            "dropped": plan.steps.iter().map(|s| &s.description).collect::<Vec<_>>()
        }))?);
    } else if out.quiet {
    } else if plan.is_empty() {
        out.println("no tombstones to drop");
    } else {
        for step in &plan.steps {
            out.println(&step.description);
        }
    }
    Ok(exit::OK)
}
