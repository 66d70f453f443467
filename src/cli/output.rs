//! Rendering: human text or JSON on stdout, logs and progress on stderr, colour only on a
//! terminal and never with NO_COLOR, and a closed pipe treated as success.

use std::io::{IsTerminal, Write};

use super::Global;

pub struct Output {
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
    pub color: bool,
}

impl Output {
    pub fn new(g: &Global) -> Output {
        let color = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Output {
            json: g.json,
            quiet: g.quiet,
            verbose: g.verbose,
            color,
        }
    }

    pub fn init_logging(&self) {
        let level = match (self.quiet, self.verbose) {
            (true, _) => "error",
            (_, 0) => "warn",
            (_, 1) => "info",
            _ => "debug",
        };
        let filter = tracing_subscriber::EnvFilter::try_from_env("PGFLIP_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(self.color)
            .without_time()
            .try_init();
    }

    /// Writes to stdout; a reader that went away (`pgflip list | head`) ends the program
    /// successfully instead of panicking.
    pub fn write_stdout(&self, bytes: &[u8]) {
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout.write_all(bytes).and_then(|_| stdout.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("pgflip: error: writing to stdout: {e}");
            std::process::exit(super::exit::DATABASE as i32);
        }
    }

    pub fn println(&self, line: &str) {
        self.write_stdout(format!("{line}\n").as_bytes());
    }

    /// Prints the whole cause chain once, on stderr (or as JSON on stdout with --json).
    pub fn error(&self, err: &anyhow::Error) {
        let chain: Vec<String> = err.chain().map(|c| c.to_string()).collect();
        if self.json {
            let v = serde_json::json!({ "error": chain.join(": ") });
            self.println(&v.to_string());
        }
        let prefix = if self.color {
            "\x1b[31merror\x1b[0m"
        } else {
            "error"
        };
        eprintln!("pgflip: {prefix}: {}", chain.join(": "));
    }
}
