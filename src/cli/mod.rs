//! Command-line interface: argument definitions (their doc comments are the help text),
//! dispatch, and the mapping from library errors to exit codes.

mod common;
mod confirm;
mod demo;
mod generations;
mod green;
mod init;
mod migrate;
mod output;
mod schema;
mod schema_diff;
mod sync;

use clap::{CommandFactory, Parser, Subcommand};

pub use common::{Global, SourceArgs, TargetArgs};
pub use output::Output;

/// Blue-green deployments for PostgreSQL: build the new version beside the live one, see what
/// changes, flip it in with one short transaction, roll back in milliseconds.
#[derive(Parser, Debug)]
#[command(
    name = "pgflip",
    version,
    about,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy tables from a source database to a target (in place, or into staging tables with a
    /// row-level diff and an atomic swap).
    Sync(Box<sync::SyncArgs>),
    /// Write a commented pgflip.toml to start from (recognises Rails, Django, Laravel, Heroku).
    Init(init::InitArgs),
    /// Replace every table of a target database with the source's version (prepare / swap /
    /// start / abort / status).
    #[command(subcommand)]
    Migrate(migrate::MigrateCommand),
    /// Dump a database's schema, or diff two databases' schemas.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Rebuild materialized views and query-defined tables beside the live ones and promote them.
    #[command(subcommand)]
    Green(green::GreenCommand),
    /// What is in flight on a target, and its latest generations.
    Status(generations::StatusArgs),
    /// List the generations recorded on a target.
    List(generations::ListArgs),
    /// Flip a generation's retired relations back in.
    Rollback(generations::RollbackArgs),
    /// Drop retired generations (and tombstones).
    Cleanup(generations::CleanupArgs),
    /// Check that a generation's retired relations are intact.
    Verify(generations::VerifyArgs),
    /// Show what pgflip does, on two throwaway local servers it starts and removes.
    Demo(demo::DemoArgs),
    /// Print shell completions (e.g. `pgflip completions bash > /etc/bash_completion.d/pgflip`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
pub enum SchemaCommand {
    /// Print a database's schema as SQL, in dependency order.
    Dump(schema::DumpArgs),
    /// Compare two databases' schemas and write (or apply) the ALTER script.
    Diff(Box<schema_diff::DiffArgs>),
}

/// Exit codes (documented in the README).
pub mod exit {
    pub const OK: u8 = 0;
    /// `--check` found differences; `verify` found a mismatch.
    pub const DIFFERENCES: u8 = 1;
    /// Bad usage, bad configuration or bad input (unknown table, no primary key, ...).
    pub const USAGE: u8 = 2;
    /// Could not connect.
    pub const CONNECT: u8 = 3;
    /// The server rejected a statement, or the connection broke.
    pub const DATABASE: u8 = 4;
    /// Blocked: another pgflip run holds the target, a lock could not be taken in time, or a
    /// guardrail refused.
    pub const BLOCKED: u8 = 5;
    /// The command is not built yet.
    pub const NOT_BUILT: u8 = 6;
    /// Interrupted (Ctrl-C).
    pub const INTERRUPTED: u8 = 130;
}

fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<pgflip::Error>() {
        Some(e) => error_exit_code(e),
        None => exit::USAGE,
    }
}

/// The exit code of one of the library's errors.
fn error_exit_code(err: &pgflip::Error) -> u8 {
    use pgflip::Error as E;
    match err {
        E::Config(_) | E::InvalidInput(_) => exit::USAGE,
        E::Connect { .. } => exit::CONNECT,
        E::Server { .. }
        | E::Connection { .. }
        | E::Io { .. }
        | E::Failpoint(_)
        | E::AfterCommit { .. } => exit::DATABASE,
        E::Interrupted => exit::INTERRUPTED,
        E::Busy { .. } | E::LockTimeout { .. } | E::Refused(_) => exit::BLOCKED,
        E::NotImplemented(_) => exit::NOT_BUILT,
        _ => exit::USAGE,
    }
}

/// Parses the arguments; help and version go to stdout (exit 0), usage errors to stderr
/// (exit 2), and with `--json` a usage error is also reported as JSON on stdout.
fn parse() -> Result<Cli, u8> {
    let err = match Cli::try_parse() {
        Ok(cli) => return Ok(cli),
        Err(err) => err,
    };
    let code = err.exit_code().clamp(0, 255) as u8;
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    if code != exit::OK && json {
        let rendered = err.render().to_string();
        let message = rendered
            .lines()
            .next()
            .unwrap_or("usage error")
            .trim_start_matches("error: ");
        let out = Output {
            json: true,
            quiet: false,
            verbose: 0,
            color: false,
            color_stdout: false,
            stderr_tty: false,
        };
        out.json_line(&serde_json::json!({ "error": message, "exit_code": code }));
    }
    // clap writes help to stdout and errors to stderr; a closed pipe there is not our failure.
    let _ = err.print();
    Err(code)
}

pub fn main() -> std::process::ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return std::process::ExitCode::from(code),
    };
    let out = Output::new(&cli.global);
    out.init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.error_message(&format!("starting the async runtime: {e}"), exit::USAGE);
            return std::process::ExitCode::from(exit::USAGE);
        }
    };
    // Ctrl-C (or SIGTERM) is raced against the command: the statements running on the servers
    // are cancelled (a backend busy with a statement would otherwise go on, holding its locks)
    // and the command is driven until it has seen them end, then dropped, so that whatever it
    // holds (connections, transactions, the demo's servers) is released by its destructors;
    // the process exits with 130 once its connections are gone (or after a few seconds).
    let result = runtime.block_on(async {
        let mut command = Box::pin(run(cli, &out));
        let r = tokio::select! {
            biased;
            _ = interrupted() => None,
            r = &mut command => Some(r),
        };
        if r.is_none() {
            let wait = std::time::Duration::from_secs(5);
            // Whatever the command returns now is the interrupt's doing: exit 130 regardless.
            let _ = pgflip::conn::cancel::interrupt(command, wait).await;
            pgflip::conn::cancel::wait_closed(wait).await;
        }
        r
    });
    // A blocking read of stdin (demo --keep) must not hold the exit.
    runtime.shutdown_background();
    let code = match result {
        Some(Ok(code)) => code,
        Some(Err(err)) => {
            let code = exit_code(&err);
            out.error(&err, code);
            code
        }
        None => {
            out.error_message("interrupted", exit::INTERRUPTED);
            exit::INTERRUPTED
        }
    };
    std::process::ExitCode::from(code)
}

/// Set by a command that handles an interrupt itself (`migrate prepare` cleans up what it
/// built, then returns): the first SIGINT or SIGTERM is left to it; a second one interrupts
/// as usual.
pub(crate) static COMMAND_HANDLES_INTERRUPT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// SIGINT or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        use std::sync::atomic::Ordering;
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if !COMMAND_HANDLES_INTERRUPT.swap(false, Ordering::SeqCst) {
                    return;
                }
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Global flags that mean nothing for the command given are refused, not ignored.
fn meaningless_flags(cli: &Cli) -> Option<String> {
    let g = &cli.global;
    let reads_only = match &cli.command {
        Command::Status(_) => Some("status"),
        Command::List(_) => Some("list"),
        Command::Completions { .. } => Some("completions"),
        Command::Schema(SchemaCommand::Dump(_)) => Some("schema dump"),
        Command::Verify(a) if !a.record => Some("verify"),
        _ => None,
    };
    if let (Some(cmd), true) = (reads_only, g.dry_run) {
        return Some(format!("{cmd} changes nothing: --dry-run does not apply"));
    }
    if let Command::Demo(_) = &cli.command {
        if g.dry_run || g.quiet {
            return Some(
                "demo shows what pgflip does, on servers of its own that it removes afterwards: \
                 --dry-run and --quiet do not apply"
                    .into(),
            );
        }
    }
    None
}

async fn run(cli: Cli, out: &Output) -> anyhow::Result<u8> {
    if let Some(m) = meaningless_flags(&cli) {
        return Err(pgflip::Error::InvalidInput(m).into());
    }
    match cli.command {
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "pgflip", &mut buf);
            out.write_stdout(&buf);
            Ok(exit::OK)
        }
        Command::Demo(args) => demo::run(&args, out).await,
        Command::Sync(args) => sync::run(*args, &cli.global, out).await,
        Command::Init(args) => init::run(&args, out),
        Command::Migrate(c) => migrate::run(c, &cli.global, out).await,
        Command::Schema(SchemaCommand::Dump(args)) => schema::dump(args, &cli.global, out).await,
        Command::Schema(SchemaCommand::Diff(args)) => {
            schema_diff::run(*args, &cli.global, out).await
        }
        Command::Green(c) => green::run(c, &cli.global, out).await,
        Command::Status(a) => generations::status(a, &cli.global, out).await,
        Command::List(a) => generations::list(a, &cli.global, out).await,
        Command::Rollback(a) => generations::rollback(a, &cli.global, out).await,
        Command::Cleanup(a) => generations::cleanup(a, &cli.global, out).await,
        Command::Verify(a) => generations::verify(a, &cli.global, out).await,
    }
}
