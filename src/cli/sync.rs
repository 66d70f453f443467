//! `pgflip sync`: arguments, confirmation, and rendering of the library's sync report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use pgflip::flip::{self, Checksums, FlipOptions, FlipPair, QualifiedName};
use pgflip::state::{self, TargetLock};
use pgflip::sync::{
    self,
    config::{self, Config},
    Mode, Request, Rules, SchemaScope, SyncOptions,
};

use super::{exit, Global, Output, SourceArgs, TargetArgs};

/// Copy tables from a source database to a target: in place in one transaction, or into
/// `<table>_staging` with a row-level diff.
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Tables (`table`, `schema.table`, `*` patterns, `a,b`) or groups of pgflip.toml
    /// (`group`, `group:value`). None: every table both sides have. A last argument starting
    /// with `WHERE` is a condition for them, as `--where`.
    #[arg(value_name = "TABLE|GROUP")]
    pub tables: Vec<String>,
    /// Read these names as tables even where a group has the same name (`a,b`).
    #[arg(short = 't', long = "tables", value_name = "A,B")]
    pub force_tables: Vec<String>,
    /// Read these names as groups of pgflip.toml (`g`, `g:value`, `g1,g2`).
    #[arg(short = 'g', long = "groups", value_name = "G,H")]
    pub force_groups: Vec<String>,
    /// Use pgflip.NAME.toml (pgsync's `--db`).
    #[arg(long, value_name = "NAME", conflicts_with = "config")]
    pub db: Option<String>,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Configuration file (default: ./pgflip.toml when present).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Leave out tables matching these patterns (repeatable, `a*,b`); replaces the `exclude`
    /// of pgflip.toml. Tables named exactly or through a group are never excluded.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Schemas that unqualified names and "every table" refer to (default: public).
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub schemas: Vec<String>,
    /// Every user schema.
    #[arg(long, conflicts_with = "schemas")]
    pub all_schemas: bool,
    /// Upsert by primary key; keep target rows the source lacks.
    #[arg(long, conflicts_with_all = ["preserve", "staging", "swap"])]
    pub overwrite: bool,
    /// Insert only rows whose primary key the target lacks.
    #[arg(long, conflicts_with_all = ["staging", "swap"])]
    pub preserve: bool,
    /// Only rows matching this SQL condition are replaced (needs a primary key).
    #[arg(long = "where", value_name = "SQL")]
    pub where_clause: Option<String>,
    /// Make the foreign keys touching the synced tables deferrable for the transaction (they
    /// are still checked before commit, and restored).
    #[arg(long)]
    pub defer_constraints: bool,
    /// Skip triggers and foreign key checks (session_replication_role = replica; superuser).
    #[arg(long, conflicts_with = "defer_constraints")]
    pub disable_integrity: bool,
    /// The target's user triggers do not fire while rows are loaded (turned off and back on, as
    /// they were, in the same transaction; foreign keys are still checked).
    #[arg(long, conflicts_with = "disable_integrity")]
    pub disable_user_triggers: bool,
    /// Do not copy the positions of sequences owned by synced columns.
    #[arg(long)]
    pub no_sequences: bool,
    /// Ignore the data rules of the configuration file.
    #[arg(long)]
    pub no_rules: bool,
    /// Load into `<table>_staging` (same structure as the live table), leaving the live table
    /// untouched; an existing staging table is replaced.
    #[arg(long = "staging-table", visible_alias = "staging")]
    pub staging: bool,
    /// Name of the staging table (default: `<table>_staging`).
    #[arg(long, value_name = "NAME", requires = "staging")]
    pub staging_name: Option<String>,
    /// Show new / updated / deleted row counts by primary key.
    #[arg(long = "show-diff", visible_alias = "diff")]
    pub show_diff: bool,
    /// Also show up to N example keys of each kind of difference.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub diff_sample: usize,
    /// Swap the staging table into the live table (the flip engine).
    #[arg(long)]
    pub swap: bool,
    /// With --swap alone: swap even when the live table changed since the diff `--show-diff`
    /// showed (the rows written since stay in the retired table, which the generation keeps).
    #[arg(long, requires = "swap", conflicts_with = "staging")]
    pub force: bool,
    /// Tables copied at once (default: number of cores).
    #[arg(long, short = 'j', value_name = "N", value_parser = parse_jobs)]
    pub jobs: Option<usize>,
    /// Do not ask before replacing data (or swapping) on a target that is not on this machine.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Longest a lock request may wait (so the longest the application waits behind it)
    /// before the attempt is rolled back and retried: `100ms`, `1s`.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = super::generations::parse_duration)]
    pub lock_timeout: Duration,
    /// Give up retrying locks after this long, naming the sessions in the way.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::generations::parse_duration)]
    pub max_wait: Duration,
    /// Row counts and checksums the flip records, each a full read of a relation outside any
    /// lock: `both` (green's before the switch, the retired side's after it), `retired` (only
    /// after the switch: it waits for no read), `none` (`verify` then checks only that the
    /// retired relations are there). Default: both (with --swap).
    #[arg(long, value_name = "WHICH", value_parser = super::generations::parse_checksums, requires = "swap")]
    pub checksums: Option<Checksums>,
    /// With --staging-table: tables whose data on the source is larger than SIZE (`256MB`,
    /// `1GB`) are split into ranges of blocks (at least one per job, about SIZE each), copied
    /// in parallel on connections of their own under the same snapshot; `0` or `off`: never.
    /// Needs PostgreSQL 14 on the source (TID range scans); an older source copies whole.
    #[arg(long, value_name = "SIZE", default_value = "256MB", value_parser = parse_size)]
    pub split_tables_larger_than: u64,
    /// Tables replaced in place with more estimated rows than this get their plain indexes
    /// rebuilt after the copy (tuning; benchmarks and tests).
    #[arg(long, value_name = "ROWS", hide = true)]
    pub rebuild_indexes_above: Option<f64>,
    /// Stop at the first table that fails (tables being loaded roll back; those already
    /// committed stay). Without it the other tables go on and the summary lists the failures.
    #[arg(long)]
    pub fail_fast: bool,
    /// Create or align the synced tables (and the sequences, types and trigger functions they
    /// need) on the target from the source, then copy the rows. Never drops a table: tables
    /// the target has are altered online, keeping their data.
    #[arg(long, conflicts_with_all = ["schema_only", "preserve"])]
    pub schema_first: bool,
    /// Only create or align the synced tables' schema (as --schema-first); copy no rows.
    #[arg(long, conflicts_with_all = ["preserve", "overwrite", "staging", "swap", "where_clause", "show_diff", "in_batches"])]
    pub schema_only: bool,
    /// With --schema-first / --schema-only: let the schema step run steps with these hazards
    /// (`rewrites-table`, `long-lock`, `deletes-data`, `replaces-data`, or `all`), as
    /// `schema diff --apply --allow-hazards`. Online-safe steps are always allowed.
    #[arg(long, value_name = "KIND,…", value_delimiter = ',')]
    pub allow_hazards: Vec<String>,
    /// Sync one large table in primary-key batches, each upserted in its own short
    /// transaction; a rerun after an interruption continues after the last batch committed.
    #[arg(long, conflicts_with_all = ["staging", "swap", "preserve", "show_diff"])]
    pub in_batches: bool,
    /// Rows per batch with --in-batches.
    #[arg(long, value_name = "N", default_value_t = 10_000, requires = "in_batches", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Pause between batches with --in-batches (seconds, fractions allowed).
    #[arg(long, value_name = "SECONDS", requires = "in_batches", value_parser = parse_seconds)]
    pub sleep: Option<Duration>,
}

/// `--sleep`: seconds as pgsync takes them (`1`, `0.5`).
fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(Duration::from_secs_f64(x)),
        _ => Err(format!("'{s}' is not a number of seconds")),
    }
}

/// `--jobs`: at least 1.
fn parse_jobs(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a number of jobs")),
    }
}

pub async fn run(args: SyncArgs, global: &Global, out: &Output) -> anyhow::Result<u8> {
    // --swap alone copies nothing: options about copying would be silently ignored.
    if args.swap && !args.staging {
        let copying: Vec<&str> = [
            (args.where_clause.is_some(), "--where"),
            (args.defer_constraints, "--defer-constraints"),
            (args.disable_integrity, "--disable-integrity"),
            (args.no_sequences, "--no-sequences"),
            (args.no_rules, "--no-rules"),
            (args.show_diff, "--show-diff"),
            (args.diff_sample > 0, "--diff-sample"),
            (args.jobs.is_some(), "--jobs"),
        ]
        .into_iter()
        .filter_map(|(on, flag)| on.then_some(flag))
        .collect();
        if !copying.is_empty() {
            return Err(pgflip::Error::InvalidInput(format!(
                "--swap without --staging-table swaps the staging tables already loaded and \
                 copies nothing: {} do{} not apply",
                copying.join(", "),
                if copying.len() == 1 { "es" } else { "" }
            ))
            .into());
        }
    }
    let config_path = match &args.db {
        Some(db) => Some(Config::named_file(db)?),
        None => args.config.clone(),
    };
    let cfg = Config::load(config_path.as_deref())?;
    // pgflip.toml's source / target stand in for --source / --target when neither the URL nor
    // the host flag is given; everything then goes through the shared resolver (--env, .env,
    // libpq defaults). `$(command)` values run only when used.
    let mut src_args = args.source.clone();
    if src_args.source.is_none() && src_args.source_host.is_none() {
        if let Some(v) = &cfg.source {
            src_args.source = Some(config::value(v, "source")?);
        }
    }
    let mut tgt_args = args.target.clone();
    if tgt_args.target.is_none() && tgt_args.target_host.is_none() {
        if let Some(v) = &cfg.target {
            tgt_args.target = Some(config::value(v, "target")?);
        }
    }
    let (requests, positional_where) = requests(&args, &cfg)?;
    let where_clause = match (args.where_clause.clone(), positional_where) {
        (Some(_), Some(_)) => {
            return Err(pgflip::Error::InvalidInput(
                "a condition is given twice (--where and a WHERE argument)".into(),
            )
            .into())
        }
        (Some(w), None) | (None, Some(w)) => Some(config::strip_where(&w).to_string()),
        (None, None) => None,
    };
    // --exclude on the command line replaces the file's list (pgsync's habit), commas split.
    let exclude = sync::tables::split_list(if args.exclude.is_empty() {
        &cfg.exclude
    } else {
        &args.exclude
    });

    // --swap without --staging-table: nothing to copy; flip the staging tables already there.
    if args.swap && !args.staging {
        let target = super::common::target_endpoint(global, &tgt_args)?;
        if !global.dry_run {
            super::confirm::confirm(
                &target,
                "swap staging tables into the live tables",
                args.yes,
            )?;
        }
        let scope = scope(&args);
        let patterns: Vec<String> = requests.iter().map(|r| r.pattern.clone()).collect();
        let client = Arc::new(target.connect().await?);
        let tables = swap_tables(&client, &patterns, &exclude, &scope).await?;
        let pairs = flip::staging_pairs(&client, &tables).await?;
        return swap_and_report(client, &pairs, &args, global, out, None).await;
    }
    let (source, target) = super::common::endpoints(global, &src_args, &tgt_args)?;
    if !out.json && !out.quiet {
        super::output::write_stderr(&format!(
            "From: {}\nTo: {}\n",
            short_endpoint(&source),
            short_endpoint(&target)
        ));
    }

    let defaults = SyncOptions::default();
    let opts = SyncOptions {
        requests,
        exclude,
        scope: scope(&args),
        mode: if args.overwrite {
            Mode::Overwrite
        } else if args.preserve {
            Mode::Preserve
        } else {
            Mode::Replace
        },
        filter: where_clause,
        defer_constraints: args.defer_constraints,
        disable_integrity: args.disable_integrity,
        disable_user_triggers: args.disable_user_triggers,
        sequences: !args.no_sequences,
        rules: if args.no_rules {
            Rules::default()
        } else {
            Rules::from_config(&cfg.data_rules)?
        },
        staging: args.staging,
        staging_name: args.staging_name.clone(),
        show_diff: args.show_diff,
        diff_sample: args.diff_sample,
        // The swap is the flip engine's, run below once the rows are in (sync::prepare only
        // copies).
        jobs: args.jobs.unwrap_or(defaults.jobs).max(1),
        lock_timeout: args.lock_timeout.max(Duration::from_millis(1)),
        max_wait: args.max_wait,
        rebuild_indexes_above: args
            .rebuild_indexes_above
            .unwrap_or(defaults.rebuild_indexes_above),
        split_larger_than: args.split_tables_larger_than,
        fail_fast: args.fail_fast,
        in_batches: args.in_batches.then(|| sync::Batches {
            size: args.batch_size,
            sleep: args.sleep.unwrap_or_default(),
        }),
    };

    // The swap replaces the live rows: asked before any work (the staging load included).
    if args.swap && !global.dry_run {
        super::confirm::confirm(
            &target,
            "swap staging tables into the live tables",
            args.yes,
        )?;
    }

    // pgflip's target lock, held from before the target is read until the last write (and the
    // swap): no other pgflip run acts on the target meanwhile. A dry run only reads.
    let lock_client = Arc::new(target.connect().await?);
    // One database named twice is refused before the target lock is taken, so that the answer
    // is that mistake, never a wait for (or a report of) the run's own lock on it.
    pgflip::conn::refuse_same_database(&source.connect().await?, &lock_client).await?;
    let held = if global.dry_run {
        None
    } else {
        Some(TargetLock::acquire(lock_client.clone()).await?)
    };
    let sink = out.events();
    if args.schema_first || args.schema_only {
        let done = schema_step(
            &args,
            global,
            out,
            (&source, &target),
            &lock_client,
            &opts,
            &sink,
        )
        .await?;
        if done {
            if let Some(lock) = held {
                lock.release().await?;
            }
            return Ok(exit::OK);
        }
    }
    let prepared = sync::prepare(&source, &target, opts, &sink).await?;
    // What --swap flips: the staging tables this run loads, as planned (never resolved again).
    let swap_pairs = prepared.staging_pairs();

    if global.dry_run {
        let report = prepared.dry_run_report();
        // With --swap the dry run shows the flip the load ends with too.
        let swap = if args.swap {
            let opts = FlipOptions {
                lock_timeout: args.lock_timeout.max(Duration::from_millis(1)),
                max_wait: args.max_wait,
                checksums: args.checksums.unwrap_or_default(),
                ..FlipOptions::default()
            };
            Some(sync::plan_swap_after_load(&lock_client, &swap_pairs, &opts).await?)
        } else {
            None
        };
        if out.json {
            let mut v = serde_json::json!({
                "dry_run": true,
                "tables": report.tables,
                "plan": report.plan,
            });
            if let Some(fp) = &swap {
                v["swap"] = serde_json::to_value(fp)?;
            }
            out.println(&serde_json::to_string_pretty(&v)?);
        } else {
            for t in &report.tables {
                if let Some(d) = &t.diff {
                    out.println(&format!("{}:", short(&t.table)));
                    out.write_stdout(pgflip::rowdiff::render_summary(d).as_bytes());
                }
            }
            let header = vec![
                format!(
                    "pgflip {} sync plan (dry run: nothing was changed)",
                    pgflip::VERSION
                ),
                format!("source: {}", source.describe()),
                format!("target: {}", target.describe()),
            ];
            out.write_stdout(report.plan.to_script(&header).as_bytes());
            if let Some(fp) = &swap {
                out.write_stdout(
                    fp.plan
                        .to_script(&[
                            fp.plan.title.clone(),
                            "then the swap, planned against the staging tables' structure \
                             (dry run: nothing was changed; the swap checks the loaded rows)"
                                .into(),
                        ])
                        .as_bytes(),
                );
            }
        }
        return Ok(exit::OK);
    }

    if prepared.replaces_live_data() {
        super::confirm::confirm(
            prepared.target(),
            &format!(
                "replace rows of {} table(s)",
                prepared.dry_run_report().tables.len()
            ),
            args.yes,
        )?;
    }

    let names: Vec<String> = prepared
        .dry_run_report()
        .tables
        .iter()
        .map(|t| t.table.clone())
        .collect();
    let command = run_label(
        if args.staging {
            "sync --staging-table"
        } else {
            "sync"
        },
        &names,
    );
    // Advisory locks nest within a session: this records the run under the lock already held.
    let sink_ref = &sink;
    // A run whose other tables went on after some failed is recorded as failed, naming them.
    let report = state::with_target_lock_judged(
        lock_client.clone(),
        &command,
        |_| async move { prepared.execute(sink_ref).await },
        |r: &sync::SyncReport| {
            (!r.failed.is_empty()).then(|| {
                r.failed
                    .iter()
                    .map(|f| format!("{}: {}", f.tables.join(", "), f.error))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        },
    )
    .await?;
    drop(sink);
    if !report.failed.is_empty() {
        if let Some(lock) = held {
            lock.release().await?;
        }
        return Ok(report_failures(&report, args.swap, out));
    }
    if args.swap {
        let code = swap_and_report(
            lock_client.clone(),
            &swap_pairs,
            &args,
            global,
            out,
            Some(&report),
        )
        .await?;
        if let Some(lock) = held {
            lock.release().await?;
        }
        return Ok(code);
    }
    if let Some(lock) = held {
        lock.release().await?;
    }
    if out.json {
        out.println(&serde_json::to_string_pretty(&report)?);
    } else if !out.quiet {
        out.write_stdout(render_report(&report).as_bytes());
    }
    Ok(exit::OK)
}

/// `--schema-first` / `--schema-only`: plans the schema step of the selected tables, prints it
/// (dry run) or checks and applies it. `true` when the command is done (schema only, or a dry
/// run whose data plan needs the schema applied first).
async fn schema_step(
    args: &SyncArgs,
    global: &Global,
    out: &Output,
    (source, target): (&pgflip::conn::Endpoint, &pgflip::conn::Endpoint),
    lock_client: &Arc<tokio_postgres::Client>,
    opts: &SyncOptions,
    sink: &dyn pgflip::events::EventSink,
) -> anyhow::Result<bool> {
    use pgflip::events::Event;
    let allowed = pgflip::schemadiff::hazards::Allowed::from_args(&args.allow_hazards, false)
        .map_err(pgflip::Error::InvalidInput)?;
    let src_client = source.connect().await?;
    let step = sync::schema::plan(&src_client, lock_client, opts).await?;
    drop(src_client);
    for w in &step.warnings {
        sink.emit(Event::Warning { message: w.clone() });
    }
    let n = step.diff.plan.steps.len();
    if global.dry_run {
        if out.json {
            out.println(&serde_json::to_string_pretty(&serde_json::json!({
                "dry_run": true,
                "schema": { "tables": step.tables, "plan": step.diff.plan },
            }))?);
        } else {
            let header = vec![
                format!(
                    "pgflip {} sync schema step (dry run: nothing was changed)",
                    pgflip::VERSION
                ),
                format!("tables: {}", step.tables.join(", ")),
            ];
            out.write_stdout(step.diff.to_script(&header).as_bytes());
            if args.schema_first && n > 0 {
                out.info(
                    "The rows are planned once the schema is applied (rerun without --dry-run).",
                );
            }
        }
        return Ok(args.schema_only || n > 0);
    }
    sync::schema::check(&step, &allowed)?;
    if n > 0 {
        super::confirm::confirm(
            target,
            &format!(
                "create or alter {} table(s) and what they need ({n} statement(s))",
                step.tables.len()
            ),
            args.yes,
        )?;
        let plan = &step.diff.plan;
        let label = run_label(
            if args.schema_only {
                "sync --schema-only"
            } else {
                "sync --schema-first"
            },
            &step.tables,
        );
        // Under the target lock already held (advisory locks nest): recorded in pgflip.runs.
        state::with_target_lock(lock_client.clone(), &label, |c| async move {
            pgflip::schemadiff::apply(&c, plan, sink).await
        })
        .await?;
    }
    if args.schema_only && out.json {
        out.println(&serde_json::to_string_pretty(&serde_json::json!({
            "schema": { "tables": step.tables, "applied": n, "statements": step.diff.plan.steps },
        }))?);
    } else if !out.quiet && !out.json {
        out.info(&format!(
            "Schema: {} statement{} applied for {} table{}{}",
            n,
            if n == 1 { "" } else { "s" },
            step.tables.len(),
            if step.tables.len() == 1 { "" } else { "s" },
            if n == 0 { " (already aligned)" } else { ":" }
        ));
        for s in &step.diff.plan.steps {
            out.info(&format!("  {}", s.description));
        }
    }
    Ok(args.schema_only)
}

/// The schemas names and patterns refer to.
fn scope(args: &SyncArgs) -> SchemaScope {
    if args.all_schemas {
        SchemaScope::All
    } else if !args.schemas.is_empty() {
        SchemaScope::Only(args.schemas.clone())
    } else {
        SchemaScope::Only(vec!["public".into()])
    }
}

/// The requests the arguments make, and the condition of a last `WHERE …` argument (pgsync's
/// `pgsync posts "WHERE id < 100"`). A positional name is a group when pgflip.toml has one of
/// that name (`group` or `group:value`), else a table; `-t` and `-g` say which outright.
fn requests(args: &SyncArgs, cfg: &Config) -> anyhow::Result<(Vec<Request>, Option<String>)> {
    let mut positional = args.tables.clone();
    let mut condition = None;
    if positional.len() > 1 {
        let last = positional.last().expect("more than one");
        if config::strip_where(last).len() != last.trim().len() {
            condition = positional.pop();
        }
    }
    let mut out = Vec::new();
    let mut table = |name: String, filter: Option<String>, group: bool| {
        let explicit = group || !name.contains('*');
        out.push(Request {
            pattern: name,
            filter,
            explicit,
        });
    };
    for arg in sync::tables::split_list(&positional) {
        let group = cfg.is_group(&arg);
        for (pattern, filter) in cfg.expand(&arg)? {
            table(pattern, filter, group);
        }
    }
    for name in sync::tables::split_list(&args.force_tables) {
        table(name, None, false);
    }
    for arg in sync::tables::split_list(&args.force_groups) {
        if !cfg.is_group(&arg) {
            let name = arg.split(':').next().unwrap_or(&arg);
            return Err(pgflip::Error::InvalidInput(format!(
                "no group {name:?} in {}",
                cfg.path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the configuration (no pgflip.toml found)".into())
            ))
            .into());
        }
        for (pattern, filter) in cfg.expand(&arg)? {
            table(pattern, filter, true);
        }
    }
    Ok((out, condition))
}

/// `host:port/database`, as pgsync's `From:` / `To:` lines (never a user or password).
fn short_endpoint(e: &pgflip::conn::Endpoint) -> String {
    format!("{}:{}/{}", e.host(), e.port(), e.database())
}

/// `256MB`, `1GB`, `512kB`, `1.5GB`, a number of bytes, or `0` / `off` (PostgreSQL's units,
/// powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].trim());
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 256MB, 1GB, 0)"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (kB, MB, GB, TB)")),
    };
    Ok((n * mult as f64) as u64)
}

/// The human report: a diff summary block and a `✔ table - 0.5s` line per table, then the total.
fn render_report(report: &sync::SyncReport) -> String {
    let mut text = String::new();
    for t in &report.tables {
        if let Some(d) = &t.diff {
            text.push_str(&pgflip::rowdiff::render_summary(d));
            text.push('\n');
        }
        text.push_str(&format!(
            "✔ {} - {:.1}s\n",
            short(&t.table),
            t.elapsed.as_secs_f64()
        ));
    }
    for f in &report.failed {
        let names: Vec<&str> = f.tables.iter().map(|t| short(t)).collect();
        text.push_str(&format!("✘ {} - {}\n", names.join(", "), f.error));
    }
    if report.failed.is_empty() {
        text.push_str(&format!(
            "Completed in {:.1}s\n",
            report.elapsed.as_secs_f64()
        ));
    } else {
        text.push_str(&format!(
            "Completed in {:.1}s with {} failure{}\n",
            report.elapsed.as_secs_f64(),
            report.failed.len(),
            if report.failed.len() == 1 { "" } else { "s" }
        ));
    }
    text
}

/// A run where some tables failed (the others went on, pgsync's default): the report with
/// them, each failure on stderr, nothing swapped; the exit code of the first failure.
fn report_failures(report: &sync::SyncReport, swap: bool, out: &Output) -> u8 {
    if out.json {
        match serde_json::to_string_pretty(report) {
            Ok(text) => out.println(&text),
            Err(e) => out.error_message(&e.to_string(), exit::USAGE),
        }
    } else if !out.quiet {
        out.write_stdout(render_report(report).as_bytes());
    }
    for f in &report.failed {
        let names: Vec<&str> = f.tables.iter().map(|t| short(t)).collect();
        super::output::write_stderr(&format!(
            "pgflip: error: {}: {}\n",
            names.join(", "),
            f.error
        ));
    }
    if swap {
        super::output::write_stderr(
            "pgflip: error: nothing was swapped: not every staging table was loaded\n",
        );
    }
    super::error_exit_code(&report.failed[0].cause)
}

/// `public.items` reads as `items`, as users name it (`public."Line Items"` as
/// `"Line Items"`).
fn short(table: &str) -> &str {
    table.strip_prefix("public.").unwrap_or(table)
}

/// The live tables `--swap` acts on, resolved on the target: the requested ones (all of them
/// must have a staging table: the flip says which lacks one), or with no table argument every
/// table in scope that has a `<table>_staging` beside it. `synced`: only these (`schema.table`,
/// as the sync report names them).
async fn swap_tables(
    client: &tokio_postgres::Client,
    patterns: &[String],
    exclude: &[String],
    scope: &SchemaScope,
) -> anyhow::Result<Vec<QualifiedName>> {
    let listing = sync::tables::list_tables(client).await?;
    let names: std::collections::BTreeSet<(String, String)> = listing
        .iter()
        .map(|(_, s, n)| (s.clone(), n.clone()))
        .collect();
    let is_staging_of_other = |s: &str, n: &str| {
        names
            .iter()
            .any(|(ls, ln)| ls == s && pgflip::ident::staging_name(ln) == n)
    };
    let chosen = sync::tables::resolve(patterns, exclude, scope, &listing)?;
    let mut out = Vec::new();
    for (_, s, n) in chosen {
        if patterns.is_empty() {
            // "Every table": the staging tables themselves are not candidates, and tables
            // without one are simply not in flight.
            if is_staging_of_other(&s, &n)
                || !names.contains(&(s.clone(), pgflip::ident::staging_name(&n)))
            {
                continue;
            }
        }
        out.push(QualifiedName::new(s, n));
    }
    if out.is_empty() {
        return Err(pgflip::Error::InvalidInput(
            "--swap: no staging tables to swap (load them with --staging-table)".into(),
        )
        .into());
    }
    Ok(out)
}

/// What `pgflip.runs` says a sync did: the subcommand and the first tables (never endpoints).
fn run_label(what: &str, tables: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut label = format!(
        "{what} {}",
        tables
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    if tables.len() > SHOWN {
        label.push_str(&format!(" (and {} more)", tables.len() - SHOWN));
    }
    label
}

/// Flips the staging tables of `pairs` into their live tables in one transaction (pgflip's
/// target lock held) and prints `Successfully swapped <table>_staging to <table>` per table
/// (with the sync report first, when there is one).
async fn swap_and_report(
    client: Arc<tokio_postgres::Client>,
    pairs: &[FlipPair],
    args: &SyncArgs,
    global: &Global,
    out: &Output,
    report: Option<&sync::SyncReport>,
) -> anyhow::Result<u8> {
    let opts = FlipOptions {
        lock_timeout: args.lock_timeout.max(Duration::from_millis(1)),
        max_wait: args.max_wait,
        checksums: args.checksums.unwrap_or_default(),
        ..FlipOptions::default()
    };
    let when = match report {
        Some(_) => sync::swap::When::AfterLoad,
        None => sync::swap::When::OnItsOwn { force: args.force },
    };
    if global.dry_run {
        let fp = sync::swap::plan(&client, pairs, when, &opts).await?;
        if out.json {
            out.println(&serde_json::to_string_pretty(&fp)?);
        } else {
            out.write_stdout(
                fp.plan
                    .to_script(&[fp.plan.title.clone(), "dry run: nothing was changed".into()])
                    .as_bytes(),
            );
        }
        return Ok(exit::OK);
    }
    let events = out.events();
    let sync::swap::Swapped { outcome, received } =
        sync::swap::swap(client, pairs, when, &opts, &events).await?;
    let lines: Vec<String> = pairs
        .iter()
        .map(|p| {
            format!(
                "Successfully swapped {} to {}",
                short(&p.green.sql()),
                short(&p.live.sql())
            )
        })
        .collect();
    if out.json {
        let mut v = match report {
            Some(r) => serde_json::to_value(r)?,
            None => serde_json::json!({}),
        };
        v["swap"] = serde_json::json!({
            "swapped": pairs.iter().map(|p| serde_json::json!({
                "staging": p.green.sql(),
                "table": p.live.sql(),
            })).collect::<Vec<_>>(),
            "generation": outcome.generation,
            "locked_ms": outcome.locked_ms,
            "attempts": outcome.attempts,
            "warnings": outcome.warnings,
            "live_changes": received,
        });
        out.println(&serde_json::to_string_pretty(&v)?);
    } else if !out.quiet {
        let mut text = String::new();
        if let Some(report) = report {
            text.push_str(&render_report(report));
        }
        for l in &lines {
            text.push_str(l);
            text.push('\n');
        }
        for r in &received {
            text.push_str(&render_received(r));
        }
        text.push_str(&format!(
            "Generation {} keeps the previous rows (`pgflip rollback --timestamp {}` brings them back).\n",
            outcome.generation.label, outcome.generation.label
        ));
        out.write_stdout(text.as_bytes());
    }
    Ok(exit::OK)
}

/// What a swapped live table received while its staging table waited.
fn render_received(r: &sync::drift::Received) -> String {
    let mut text = String::new();
    let table = short(&r.table);
    match r.since_load {
        Some(c) if c.any() => text.push_str(&format!(
            "{table} received {} since the staging load began; they are in the retired table {}\n",
            c.describe(),
            r.retired
        )),
        Some(_) => text.push_str(&format!(
            "{table} received no writes since the staging load began\n"
        )),
        None => {}
    }
    if let Some(c) = r.since_diff.filter(|c| c.any()) {
        text.push_str(&format!(
            "{table} changed since the diff was shown: {}\n",
            c.describe()
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_in_postgres_units() {
        assert_eq!(parse_size("256MB"), Ok(256 << 20));
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5 GB"), Ok(3 << 29));
        assert_eq!(parse_size("64kB"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("off"), Ok(0));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
