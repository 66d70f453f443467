//! `pgflip schema diff`: compare the source's schema with the target's and write, print,
//! check or apply the ALTER script. A thin layer over [`pgflip::schemadiff`]: connect, load
//! both snapshots (concurrently), build the diff, then render or execute it.

use std::path::PathBuf;

use clap::Args;

use pgflip::catalog::Filter;
use pgflip::ident::quote_ident;
use pgflip::schemadiff::{self, DiffOptions};

use super::common::{endpoints, Global};
use super::{exit, Output, SourceArgs, TargetArgs};

/// Compare two databases' schemas and write (or apply) the ALTER script.
#[derive(Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Only this schema (repeatable; default: every user schema).
    #[arg(long = "schema", value_name = "SCHEMA")]
    pub schemas: Vec<String>,
    /// Leave this schema out (repeatable).
    #[arg(long = "exclude-schema", value_name = "SCHEMA")]
    pub exclude_schemas: Vec<String>,
    /// Compare this schema of the source… (with --target-schema)
    #[arg(long, value_name = "SCHEMA", requires = "target_schema")]
    pub source_schema: Option<String>,
    /// …with this schema of the target; references to the source schema become this one.
    #[arg(long, value_name = "SCHEMA", requires = "source_schema")]
    pub target_schema: Option<String>,
    /// Write the script to this file.
    #[arg(long, short = 'o', value_name = "FILE", default_value = "alter.sql")]
    pub output: PathBuf,
    /// Execute the script against the target.
    #[arg(long, conflicts_with = "check")]
    pub apply: bool,
    /// Print a summary; exit 0 when nothing differs, 1 when something does.
    #[arg(long)]
    pub check: bool,
    /// Drop tables and columns the source lacks (default: rename them to tombstones).
    #[arg(long)]
    pub drop: bool,
    /// Plain (blocking) DDL instead of CONCURRENTLY / NOT VALID + VALIDATE.
    #[arg(long)]
    pub offline: bool,
    /// Let --apply run steps with these hazards (comma-separated, or `all`): deletes-data,
    /// rewrites-table, long-lock, replaces-data. builds-index, validates and access-exclusive
    /// (online-safe) are always allowed; --drop allows deletes-data.
    #[arg(long, value_name = "KIND,…", value_delimiter = ',')]
    pub allow_hazards: Vec<String>,
    /// Leave owners, grants and default privileges as the target has them (new objects get
    /// none). Without it they are aligned only for roles that exist on both servers.
    #[arg(long)]
    pub no_privileges: bool,
}

pub async fn run(args: DiffArgs, global: &Global, out: &Output) -> anyhow::Result<u8> {
    let allowed = schemadiff::hazards::Allowed::from_args(&args.allow_hazards, args.drop)
        .map_err(pgflip::Error::InvalidInput)?;
    let (src_ep, tgt_ep) = endpoints(global, &args.source, &args.target)?;
    let (src_client, tgt_client) = tokio::try_join!(src_ep.connect(), tgt_ep.connect())?;
    // One database against itself is a mistake, unless two of its schemas are compared.
    if args.source_schema.is_none() || args.source_schema == args.target_schema {
        pgflip::conn::refuse_same_database(&src_client, &tgt_client).await?;
    }
    let tgt_client = std::sync::Arc::new(tgt_client);
    // Applying: pgflip's target lock is held from before the target is read until the script
    // has run, so no other pgflip run changes the target between the comparison and the apply.
    let held = if args.apply && !global.dry_run {
        Some(pgflip::state::TargetLock::acquire(tgt_client.clone()).await?)
    } else {
        None
    };
    let mut src_filter = Filter {
        include_schemas: args.schemas.clone(),
        exclude_schemas: args.exclude_schemas.clone(),
    };
    let mut tgt_filter = src_filter.clone();
    if let (Some(a), Some(b)) = (&args.source_schema, &args.target_schema) {
        src_filter.include_schemas = vec![a.clone()];
        tgt_filter.include_schemas = vec![b.clone()];
    }
    let (src_snap, tgt_snap) = tokio::try_join!(
        schemadiff::load_snapshot(&src_client, &src_filter),
        schemadiff::load_snapshot(&tgt_client, &tgt_filter)
    )?;
    for s in &src_filter.include_schemas {
        if src_snap.schema(s).is_none() {
            return Err(pgflip::Error::InvalidInput(format!(
                "schema {} does not exist in the source database ({})",
                quote_ident(s),
                src_ep.describe()
            ))
            .into());
        }
    }
    if let Some(b) = &args.target_schema {
        if tgt_snap.schema(b).is_none() {
            return Err(pgflip::Error::InvalidInput(format!(
                "schema {} does not exist in the target database ({})",
                quote_ident(b),
                tgt_ep.describe()
            ))
            .into());
        }
    }
    let mut src_snap = match (&args.source_schema, &args.target_schema) {
        (Some(a), Some(b)) => schemadiff::mapping::remap(&src_snap, a, b)?,
        _ => src_snap,
    };
    // Across major versions the same view deparses differently: compare in the target's words.
    schemadiff::compat::deparse_views_on_target(&mut src_snap, &tgt_snap, &tgt_client).await?;
    let opts = DiffOptions {
        drop: args.drop,
        online: !args.offline,
        privileges: !args.no_privileges,
        ..DiffOptions::default()
    };
    let diff = schemadiff::compare_snapshots(&src_snap, &tgt_snap, &opts);
    if !diff.unsupported.is_empty() {
        return Err(pgflip::Error::InvalidInput(format!(
            "schema diff cannot align these objects safely; change them by hand (nothing was applied):\n  {}",
            diff.unsupported.join("\n  ")
        ))
        .into());
    }

    if args.check {
        if out.json {
            out.json_line(&serde_json::json!({
                "differences": diff.plan.steps.len(),
                "statements": diff.plan.steps,
                "roles": diff.roles,
            }));
        } else if diff.is_empty() {
            out.println("No differences: the target's schema matches the source's.");
            for l in diff.roles.header_lines() {
                out.info(&l);
            }
        } else {
            out.println(&format!(
                "{} difference{} to apply:",
                diff.plan.steps.len(),
                if diff.plan.steps.len() == 1 { "" } else { "s" }
            ));
            for s in &diff.plan.steps {
                out.println(&format!("  {}", s.description));
            }
        }
        return Ok(if diff.is_empty() {
            exit::OK
        } else {
            exit::DIFFERENCES
        });
    }

    // A script the target's version cannot run is refused whole, before anything is applied.
    let missing = schemadiff::compat::unsupported(&src_snap, tgt_snap.server_version);
    if !missing.is_empty() {
        return Err(pgflip::Error::InvalidInput(format!(
            "the target ({}) runs PostgreSQL {}, which cannot express {} object{} of the source; \
             nothing was applied:\n  {}",
            tgt_ep.describe(),
            schemadiff::compat::major(tgt_snap.server_version),
            missing.len(),
            if missing.len() == 1 { "" } else { "s" },
            missing
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join("\n  ")
        ))
        .into());
    }

    let mut scope = if let (Some(a), Some(b)) = (&args.source_schema, &args.target_schema) {
        format!(
            "source schema {} -> target schema {}",
            quote_ident(a),
            quote_ident(b)
        )
    } else if args.schemas.is_empty() {
        "every user schema".to_string()
    } else {
        let s: Vec<String> = args.schemas.iter().map(|s| quote_ident(s)).collect();
        format!("schemas {}", s.join(", "))
    };
    if !args.exclude_schemas.is_empty() {
        let s: Vec<String> = args
            .exclude_schemas
            .iter()
            .map(|s| quote_ident(s))
            .collect();
        scope.push_str(&format!(" except {}", s.join(", ")));
    }
    let mut header = vec![
        format!("pgflip {} schema diff", pgflip::VERSION),
        format!("source: {}", src_ep.describe()),
        format!("target: {}", tgt_ep.describe()),
        format!("scope:  {scope}"),
        format!(
            "time:   {}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
        ),
        if args.drop {
            "mode:   --drop (tables and columns the source lacks are dropped)".to_string()
        } else {
            "mode:   tables and columns the source lacks are kept as tombstones".to_string()
        },
    ];
    if args.no_privileges {
        header.push(
            "privileges: --no-privileges (owners and grants left as the target has them)".into(),
        );
    }
    header.extend(diff.roles.header_lines());
    let script = diff.to_script(&header);

    if global.dry_run {
        if out.json {
            out.json_line(&serde_json::to_value(&diff)?);
        } else {
            out.write_stdout(script.as_bytes());
        }
        return Ok(exit::OK);
    }
    if args.apply {
        let refused = schemadiff::hazards::refused(&diff.plan, &allowed);
        if !refused.is_empty() {
            if out.json {
                out.json_line(&serde_json::json!({ "refused": refused }));
            }
            let lines: Vec<String> = refused
                .iter()
                .map(|r| {
                    let kinds: Vec<String> = r
                        .hazards
                        .iter()
                        .map(|k| format!("{} ({})", k.name(), k.describe()))
                        .collect();
                    format!("step {}: {}: {}", r.step, r.description, kinds.join(", "))
                })
                .collect();
            let mut names: Vec<&str> = refused
                .iter()
                .flat_map(|r| r.hazards.iter().map(|k| k.name()))
                .collect();
            names.sort_unstable();
            names.dedup();
            return Err(pgflip::Error::InvalidInput(format!(
                "nothing was applied: {} step{} {} hazards not allowed:\n  {}\n\
                 Review the plan (--dry-run), then allow them with --allow-hazards {}",
                refused.len(),
                if refused.len() == 1 { "" } else { "s" },
                if refused.len() == 1 { "has" } else { "have" },
                lines.join("\n  "),
                names.join(",")
            ))
            .into());
        }
        if !diff.is_empty() {
            let events = out.events();
            let plan = &diff.plan;
            // Advisory locks nest within a session: this records the run in `pgflip.runs`
            // (when the target has pgflip state) under the lock already held.
            pgflip::state::with_target_lock(tgt_client.clone(), "schema diff --apply", |c| {
                let events = &events;
                async move { schemadiff::apply(&c, plan, events).await }
            })
            .await?;
        }
        if let Some(lock) = held {
            lock.release().await?;
        }
        if out.json {
            out.json_line(&serde_json::json!({
                "applied": diff.plan.steps.len(),
                "statements": diff.plan.steps,
                "roles": diff.roles,
                "commented_drops": diff.commented_drops,
            }));
        } else {
            out.info(&format!(
                "Applied {} statement{} to the target.",
                diff.plan.steps.len(),
                if diff.plan.steps.len() == 1 { "" } else { "s" }
            ));
            for l in diff.roles.header_lines() {
                out.info(&l);
            }
        }
        return Ok(exit::OK);
    }
    std::fs::write(&args.output, &script)
        .map_err(|e| pgflip::Error::io(format!("writing {}", args.output.display()), e))?;
    if out.json {
        out.json_line(&serde_json::json!({
            "output": args.output.display().to_string(),
            "statements": diff.plan.steps,
            "roles": diff.roles,
            "commented_drops": diff.commented_drops,
        }));
    } else {
        out.info(&format!(
            "Wrote {} statement{} to {}.",
            diff.plan.steps.len(),
            if diff.plan.steps.len() == 1 { "" } else { "s" },
            args.output.display()
        ));
    }
    Ok(exit::OK)
}
