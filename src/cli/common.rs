//! Options shared by every command: global conventions and the connection flags of each side,
//! and the one call every command makes to turn them into endpoints ([`source_endpoint`],
//! [`target_endpoint`], [`endpoints`]), so that `--env`, `./.env` and the precedence of
//! `pgflip::conn` apply the same way everywhere.

use clap::Args;
use std::path::PathBuf;

use pgflip::conn::{Endpoint, EndpointArgs, Env};
use pgflip::Side;

/// Conventions every command follows (listed under their own heading in every `--help`).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
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
    /// Load connection settings from this .env file (instead of ./.env). Real environment
    /// variables and flags still win over it.
    #[arg(long = "env", value_name = "FILE", global = true)]
    pub env_file: Option<PathBuf>,
    /// Do not read ./.env.
    #[arg(long, global = true, conflicts_with = "env_file")]
    pub no_env_file: bool,
}

impl Global {
    /// The environment connections are resolved in: the process's, plus the .env layer.
    pub fn conn_env(&self) -> anyhow::Result<Env> {
        Ok(Env::load(self.env_file.as_deref(), !self.no_env_file)?)
    }
}

/// Resolves the source (flags > environment > .env > libpq defaults) and logs any warning.
pub fn source_endpoint(global: &Global, args: &SourceArgs) -> anyhow::Result<Endpoint> {
    resolve(Side::Source, &args.endpoint_args(), &global.conn_env()?)
}

/// Resolves the target (flags > environment > .env > libpq defaults) and logs any warning.
pub fn target_endpoint(global: &Global, args: &TargetArgs) -> anyhow::Result<Endpoint> {
    resolve(Side::Target, &args.endpoint_args(), &global.conn_env()?)
}

/// Both sides, reading the .env file once. Each must be named by a flag, its own variables or
/// the .env file (libpq's `PG*` variables only complete a named side).
pub fn endpoints(
    global: &Global,
    source: &SourceArgs,
    target: &TargetArgs,
) -> anyhow::Result<(Endpoint, Endpoint)> {
    let env = global.conn_env()?;
    // libpq's PG* variables and defaults would make both sides the same database.
    for (side, args, how) in [
        (
            Side::Source,
            source.endpoint_args(),
            "--source URL, SOURCE_DATABASE_URL",
        ),
        (
            Side::Target,
            target.endpoint_args(),
            "--target URL, TARGET_DATABASE_URL",
        ),
    ] {
        if !Endpoint::is_named(side, &args, &env) {
            return Err(pgflip::Error::InvalidInput(format!(
                "no {side} given ({how}, a .env file or pgflip.toml)"
            ))
            .into());
        }
    }
    Ok((
        resolve(Side::Source, &source.endpoint_args(), &env)?,
        resolve(Side::Target, &target.endpoint_args(), &env)?,
    ))
}

fn resolve(side: Side, args: &EndpointArgs, env: &Env) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::resolve_with(side, args, env)?;
    for w in &endpoint.warnings {
        tracing::warn!("{side}: {w}");
    }
    tracing::debug!("{side}: {}", endpoint.describe());
    Ok(endpoint)
}

/// The database pgflip only reads.
#[derive(Args, Clone, Default)]
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
    #[arg(long, value_name = "PASSWORD")]
    pub source_password: Option<String>,
}

// Debug through EndpointArgs, which redacts: these structs hold passwords.
impl std::fmt::Debug for SourceArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SourceArgs({:?})", self.endpoint_args())
    }
}

impl std::fmt::Debug for TargetArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TargetArgs({:?})", self.endpoint_args())
    }
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
#[derive(Args, Clone, Default)]
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
    #[arg(long, value_name = "PASSWORD")]
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The connection flags as a command would flatten them.
    #[derive(Parser, Debug)]
    struct Probe {
        #[command(flatten)]
        global: Global,
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        target: TargetArgs,
    }

    fn parse(args: &[&str]) -> Result<Probe, clap::Error> {
        Probe::try_parse_from(std::iter::once("pgflip").chain(args.iter().copied()))
    }

    #[test]
    fn aliases_and_split_flags_reach_the_endpoint_args() {
        for (src, tgt) in [
            ("--source", "--target"),
            ("--from", "--to"),
            ("--from", "--dest"),
        ] {
            let p = parse(&[src, "postgresql://a/x", tgt, "host=b dbname=y"]).unwrap();
            assert_eq!(
                p.source.endpoint_args().url.as_deref(),
                Some("postgresql://a/x")
            );
            assert_eq!(
                p.target.endpoint_args().url.as_deref(),
                Some("host=b dbname=y")
            );
        }
        let p = parse(&[
            "--source-host",
            "h",
            "--source-port",
            "6000",
            "--source-database",
            "d",
            "--source-username",
            "u",
            "--source-password",
            "pw-from-flag",
            "--target-host",
            "th",
        ])
        .unwrap();
        let a = p.source.endpoint_args();
        assert_eq!(
            (
                a.host.as_deref(),
                a.port,
                a.database.as_deref(),
                a.username.as_deref()
            ),
            (Some("h"), Some(6000), Some("d"), Some("u"))
        );
        assert_eq!(a.password.as_deref(), Some("pw-from-flag"));
        assert!(
            !format!("{p:?}").contains("pw-from-flag"),
            "Debug must redact"
        );
        assert!(parse(&["--source-port", "notaport"]).is_err());
        assert!(parse(&["--env", "x.env", "--no-env-file"]).is_err());
    }

    #[test]
    fn env_file_flag_is_a_layer_below_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deploy.env");
        std::fs::write(
            &file,
            "TARGET_DATABASE_URL=postgresql://envfile_user:pw@envfile-host:6543/envfile_db\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let p = parse(&["--env", f, "--target-database", "from_flag"]).unwrap();
        let ep = target_endpoint(&p.global, &p.target).unwrap();
        assert_eq!(ep.describe(), "envfile-host:6543, database from_flag");
        assert_eq!(ep.user(), "envfile_user");

        let p = parse(&["--env", "/nonexistent/deploy.env"]).unwrap();
        let err = source_endpoint(&p.global, &p.source)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/deploy.env"), "{err}");
    }
}
