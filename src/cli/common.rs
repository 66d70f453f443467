//! Options shared by every command: global conventions and the connection flags of each side.

use clap::Args;
use std::path::PathBuf;

use pgflip::conn::EndpointArgs;

/// Conventions every command follows.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Machine-readable output on stdout (JSON); logs and progress go to stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print what would be done, change nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More detail (repeat for debug logs).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Load connection settings from this .env file.
    #[arg(long = "env", value_name = "FILE", global = true)]
    pub env_file: Option<PathBuf>,
    /// Do not read ./.env.
    #[arg(long, global = true)]
    pub no_env_file: bool,
}

/// The database pgflip only reads.
#[derive(Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// Source database: a URL (postgresql://…) or a libpq key=value string.
    #[arg(long = "source", visible_alias = "from", value_name = "URL")]
    pub source: Option<String>,
    /// Source host (overrides the URL).
    #[arg(long, value_name = "HOST")]
    pub source_host: Option<String>,
    /// Source port (overrides the URL).
    #[arg(long, value_name = "PORT")]
    pub source_port: Option<u16>,
    /// Source database name (overrides the URL).
    #[arg(long, value_name = "NAME")]
    pub source_database: Option<String>,
    /// Source user name (overrides the URL).
    #[arg(long, value_name = "USER")]
    pub source_username: Option<String>,
    /// Source password (prefer ~/.pgpass or SOURCE_DB_PASSWORD: flags show in `ps`).
    #[arg(long, value_name = "PASSWORD", hide_env_values = true)]
    pub source_password: Option<String>,
}

impl SourceArgs {
    pub fn endpoint_args(&self) -> EndpointArgs {
        EndpointArgs {
            url: self.source.clone(),
            host: self.source_host.clone(),
            port: self.source_port,
            database: self.source_database.clone(),
            username: self.source_username.clone(),
            password: self.source_password.clone(),
        }
    }
}

/// The database pgflip changes.
#[derive(Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Target database: a URL (postgresql://…) or a libpq key=value string.
    #[arg(long = "target", visible_aliases = ["to", "dest"], value_name = "URL")]
    pub target: Option<String>,
    /// Target host (overrides the URL).
    #[arg(long, value_name = "HOST")]
    pub target_host: Option<String>,
    /// Target port (overrides the URL).
    #[arg(long, value_name = "PORT")]
    pub target_port: Option<u16>,
    /// Target database name (overrides the URL).
    #[arg(long, value_name = "NAME")]
    pub target_database: Option<String>,
    /// Target user name (overrides the URL).
    #[arg(long, value_name = "USER")]
    pub target_username: Option<String>,
    /// Target password (prefer ~/.pgpass or TARGET_DB_PASSWORD: flags show in `ps`).
    #[arg(long, value_name = "PASSWORD", hide_env_values = true)]
    pub target_password: Option<String>,
}

impl TargetArgs {
    pub fn endpoint_args(&self) -> EndpointArgs {
        EndpointArgs {
            url: self.target.clone(),
            host: self.target_host.clone(),
            port: self.target_port,
            database: self.target_database.clone(),
            username: self.target_username.clone(),
            password: self.target_password.clone(),
        }
    }
}
