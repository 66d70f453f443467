//! `pgflip schema dump`: a database's schema as SQL in dependency order (or the snapshot as
//! JSON with `--json`). A thin layer over [`pgflip::ddl`], which does the work.

use std::path::PathBuf;

use clap::Args;

use pgflip::catalog::{Filter, Snapshot};

use super::{exit, Global, Output, SourceArgs};

/// Print a database's schema as SQL, in dependency order.
#[derive(Args, Debug)]
pub struct DumpArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Only this schema (repeatable; default: every user schema).
    #[arg(long = "schema", value_name = "SCHEMA")]
    pub schemas: Vec<String>,
    /// Leave this schema out (repeatable).
    #[arg(long = "exclude-schema", value_name = "SCHEMA")]
    pub exclude_schemas: Vec<String>,
    /// Write to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub async fn dump(args: DumpArgs, global: &Global, out: &Output) -> anyhow::Result<u8> {
    let client = super::common::source_endpoint(global, &args.source)?
        .connect()
        .await?;
    let filter = Filter {
        include_schemas: args.schemas,
        exclude_schemas: args.exclude_schemas,
    };
    let snap = Snapshot::load(&client, &filter).await?;
    for s in &filter.include_schemas {
        if snap.schema(s).is_none() {
            return Err(pgflip::Error::InvalidInput(format!(
                "schema {} does not exist in the source database",
                pgflip::ident::quote_ident(s)
            ))
            .into());
        }
    }
    let text = if out.json {
        let mut s = serde_json::to_string_pretty(&snap)?;
        s.push('\n');
        s
    } else {
        pgflip::ddl::render(&snap)
    };
    match args.output {
        Some(path) => std::fs::write(&path, text)
            .map_err(|e| pgflip::Error::io(format!("writing {}", path.display()), e))?,
        None => out.write_stdout(text.as_bytes()),
    }
    Ok(exit::OK)
}
