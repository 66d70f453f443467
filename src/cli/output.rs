//! Rendering: human text or JSON on stdout, logs and progress on stderr.
//!
//! Conventions every command follows through this one type, so that no command has to think
//! about them:
//! - stdout carries only the command's result (text, or JSON with `--json`); narration, progress
//!   and logs go to stderr, so `pgflip … --json | jq` always sees clean JSON;
//! - colour only on a terminal, never when `NO_COLOR` is set to a non-empty value;
//! - a reader that goes away (`pgflip list | head -1`) ends the program successfully instead of
//!   panicking, and a closed stderr is ignored rather than fatal;
//! - progress events from the library ([`pgflip::events::Event`]) become indicatif bars on a
//!   terminal, plain lines when stderr is a file or a pipe, and JSON lines with `--json`.
//!
//! Nothing in the binary uses `println!` / `eprintln!`: both panic on a closed stream.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pgflip::events::{Event, EventSink};

use super::Global;

/// How the user asked to see things, and what the terminal allows.
#[derive(Debug, Clone)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
    pub verbose: u8,
    /// Colour allowed on stderr.
    pub color: bool,
    /// Colour allowed on stdout.
    pub color_stdout: bool,
    /// stderr is a terminal (progress bars are drawn).
    pub stderr_tty: bool,
}

/// `NO_COLOR` set to anything but the empty string turns colour off (https://no-color.org).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

impl Output {
    pub fn new(g: &Global) -> Output {
        let stderr_tty = std::io::stderr().is_terminal();
        Output {
            json: g.json,
            quiet: g.quiet,
            verbose: g.verbose,
            color: stderr_tty && !no_color(),
            color_stdout: std::io::stdout().is_terminal() && !no_color() && !g.json,
            stderr_tty,
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

    /// Writes to stdout; a reader that went away ends the program successfully (exit 0)
    /// instead of panicking. Servers started by `demo` are still removed: `exit` runs the
    /// local servers' atexit hook, and their watchdogs catch anything else.
    pub fn write_stdout(&self, bytes: &[u8]) {
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout.write_all(bytes).and_then(|_| stdout.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            write_stderr(&format!("pgflip: error: writing to stdout: {e}\n"));
            std::process::exit(super::exit::USAGE as i32);
        }
    }

    /// One line of the command's result on stdout.
    pub fn println(&self, line: &str) {
        self.write_stdout(format!("{line}\n").as_bytes());
    }

    /// One JSON value as one line on stdout.
    pub fn json_line(&self, value: &serde_json::Value) {
        self.println(&value.to_string());
    }

    /// Narration on stderr (hidden by `-q`).
    pub fn info(&self, line: &str) {
        if !self.quiet {
            write_stderr(&format!("{line}\n"));
        }
    }

    /// Prints the whole cause chain once on stderr; with `--json` also
    /// `{"error": "...", "exit_code": N}` on stdout, so a script reading stdout always gets JSON.
    /// What the error carries as data goes there too: a refusal's `problems` (each with the
    /// `object` it names), a lock timeout's `blockers`, a server error's `sqlstate`.
    pub fn error(&self, err: &anyhow::Error, exit_code: u8) {
        let chain: Vec<String> = err.chain().map(|c| c.to_string()).collect();
        let message = chain.join(": ");
        let mut json = serde_json::json!({ "error": message, "exit_code": exit_code });
        match err.downcast_ref::<pgflip::Error>() {
            Some(pgflip::Error::Refused(refusal)) if !refusal.problems.is_empty() => {
                json["problems"] = serde_json::json!(refusal.problems);
            }
            Some(pgflip::Error::LockTimeout { blockers, .. }) => {
                json["blockers"] = serde_json::json!(blockers.0);
            }
            Some(e) => {
                if let Some(code) = e.sqlstate() {
                    json["sqlstate"] = serde_json::json!(code);
                }
            }
            None => {}
        }
        self.error_json(&message, &json);
    }

    pub fn error_message(&self, message: &str, exit_code: u8) {
        self.error_json(
            message,
            &serde_json::json!({ "error": message, "exit_code": exit_code }),
        );
    }

    fn error_json(&self, message: &str, json: &serde_json::Value) {
        if self.json {
            self.json_line(json);
        }
        let prefix = paint(self.color, RED, "error");
        write_stderr(&format!("pgflip: {prefix}: {message}\n"));
    }

    /// Wraps `text` in an ANSI style when colour is allowed on stdout.
    pub fn style(&self, style: &str, text: &str) -> String {
        paint(self.color_stdout, style, text)
    }

    /// The event renderer the commands hand to the library.
    pub fn events(&self) -> EventRenderer {
        EventRenderer::new(self)
    }
}

pub const BOLD: &str = "1";
pub const DIM: &str = "2";
pub const RED: &str = "31";
pub const GREEN: &str = "32";
pub const YELLOW: &str = "33";
pub const CYAN: &str = "36";

fn paint(enabled: bool, style: &str, text: &str) -> String {
    if enabled {
        format!("\x1b[{style}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Writes to stderr, ignoring failures: a closed stderr must not turn into a panic.
pub fn write_stderr(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(text.as_bytes()).and_then(|_| e.flush());
}

/// `1.5 MiB`-style sizes for progress lines.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// One JSON object per event, one per line, on stderr.
    Json,
    /// indicatif spinners on a terminal.
    Bars,
    /// Plain lines (stderr is a file or a pipe): no per-row progress, only what finished.
    Plain,
}

/// Renders the library's progress events on stderr. Cheap to call from hot loops: progress
/// updates only touch an in-memory bar that indicatif redraws at its own rate.
pub struct EventRenderer {
    mode: Mode,
    /// Where finished lines go: stderr, or a buffer in unit tests.
    sink: Box<dyn Fn(&str) + Send + Sync>,
    quiet: bool,
    verbose: u8,
    color: bool,
    multi: MultiProgress,
    tables: Mutex<HashMap<String, ProgressBar>>,
    step: Mutex<Option<(usize, usize, String, ProgressBar)>>,
}

impl EventRenderer {
    fn new(out: &Output) -> EventRenderer {
        let mode = if out.json {
            Mode::Json
        } else if out.stderr_tty {
            Mode::Bars
        } else {
            Mode::Plain
        };
        let target = if mode == Mode::Bars && !out.quiet {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        EventRenderer {
            mode,
            sink: Box::new(write_stderr),
            quiet: out.quiet,
            verbose: out.verbose,
            color: out.color,
            multi: MultiProgress::with_draw_target(target),
            tables: Mutex::new(HashMap::new()),
            step: Mutex::new(None),
        }
    }

    /// A line on stderr that does not tear the progress bars.
    fn line(&self, text: &str) {
        let text = format!("{text}\n");
        if self.mode == Mode::Bars {
            self.multi.suspend(|| (self.sink)(&text));
        } else {
            (self.sink)(&text);
        }
    }

    fn spinner_style(&self) -> ProgressStyle {
        let template = if self.color {
            "{spinner:.cyan} {msg} {elapsed:.dim}"
        } else {
            "{spinner} {msg} {elapsed}"
        };
        ProgressStyle::with_template(template).expect("valid progress template")
    }

    fn tick(&self) -> String {
        paint(self.color, GREEN, "✔")
    }

    fn table_line(table: &str, rows: u64, bytes: u64) -> String {
        format!("{table}: {rows} rows, {}", human_bytes(bytes))
    }
}

impl EventSink for EventRenderer {
    fn emit(&self, event: Event) {
        if self.quiet {
            return;
        }
        if self.mode == Mode::Json {
            if let Ok(s) = serde_json::to_string(&event) {
                self.line(&s);
            }
            return;
        }
        match event {
            Event::Warning { message } => self.line(&format!(
                "pgflip: {}: {message}",
                paint(self.color, YELLOW, "warning")
            )),
            Event::Info { message } => self.line(&message),
            Event::PhaseStarted { phase } => {
                if self.verbose > 0 {
                    self.line(&format!("» {phase}"));
                }
            }
            Event::PhaseFinished { phase, elapsed } => {
                if self.verbose > 0 {
                    self.line(&format!("» {phase} done in {}", human_duration(elapsed)));
                }
            }
            Event::StepStarted {
                index,
                total,
                description,
            } => {
                let label = format!("[{}/{total}] {description}", index + 1);
                if self.mode == Mode::Bars {
                    let pb = self.multi.add(ProgressBar::new_spinner());
                    pb.set_style(self.spinner_style());
                    pb.set_message(label.clone());
                    pb.enable_steady_tick(Duration::from_millis(100));
                    let mut step = self.step.lock().expect("step lock");
                    if let Some((.., old)) = step.take() {
                        old.finish_and_clear();
                    }
                    *step = Some((index, total, description, pb));
                } else {
                    self.line(&label);
                }
            }
            Event::StepFinished { index, elapsed } => {
                let current = self.step.lock().expect("step lock").take();
                match current {
                    Some((i, total, description, pb)) if i == index => {
                        pb.finish_and_clear();
                        self.line(&format!(
                            "{} [{}/{total}] {description} ({})",
                            self.tick(),
                            index + 1,
                            human_duration(elapsed)
                        ));
                    }
                    other => {
                        if let Some((.., pb)) = other {
                            pb.finish_and_clear();
                        }
                        if self.verbose > 0 || self.mode == Mode::Bars {
                            self.line(&format!(
                                "  step {} done in {}",
                                index + 1,
                                human_duration(elapsed)
                            ));
                        }
                    }
                }
            }
            Event::TableProgress { table, rows, bytes } => {
                if self.mode != Mode::Bars {
                    return;
                }
                let mut tables = self.tables.lock().expect("table bars");
                let pb = tables.entry(table.clone()).or_insert_with(|| {
                    let pb = self.multi.add(ProgressBar::new_spinner());
                    pb.set_style(self.spinner_style());
                    pb.enable_steady_tick(Duration::from_millis(100));
                    pb
                });
                pb.set_message(Self::table_line(&table, rows, bytes));
            }
            Event::TableDone {
                table,
                rows,
                bytes,
                elapsed,
            } => {
                if let Some(pb) = self.tables.lock().expect("table bars").remove(&table) {
                    pb.finish_and_clear();
                }
                self.line(&format!(
                    "{} {} in {}",
                    self.tick(),
                    Self::table_line(&table, rows, bytes),
                    human_duration(elapsed)
                ));
            }
            Event::LockAttemptFailed {
                attempt,
                retry_in,
                blockers,
            } => {
                let who = if blockers.is_empty() {
                    String::new()
                } else {
                    format!("; blocked by {}", blockers.join(", "))
                };
                self.line(&format!(
                    "pgflip: {}: lock not granted (attempt {attempt}), retrying in {}{who}",
                    paint(self.color, YELLOW, "waiting"),
                    human_duration(retry_in)
                ));
            }
            // Events added later still reach the user, if only in their JSON form.
            other => {
                if let Ok(s) = serde_json::to_string(&other) {
                    self.line(&s);
                }
            }
        }
    }
}

impl Drop for EventRenderer {
    fn drop(&mut self) {
        // Bars left running (a command failed mid-copy) must not stay on the screen.
        if let Ok(tables) = self.tables.get_mut() {
            for (_, pb) in tables.drain() {
                pb.finish_and_clear();
            }
        }
        if let Ok(Some((.., pb))) = self.step.get_mut().map(Option::take) {
            pb.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn renderer(json: bool, quiet: bool, verbose: u8) -> (EventRenderer, Arc<Mutex<String>>) {
        let out = Output {
            json,
            quiet,
            verbose,
            color: false,
            color_stdout: false,
            stderr_tty: false,
        };
        let buf = Arc::new(Mutex::new(String::new()));
        let mut r = EventRenderer::new(&out);
        let b = buf.clone();
        r.sink = Box::new(move |s| b.lock().unwrap().push_str(s));
        (r, buf)
    }

    fn copy_events(r: &EventRenderer) {
        r.emit(Event::StepStarted {
            index: 0,
            total: 2,
            description: "create staging table".into(),
        });
        r.emit(Event::StepFinished {
            index: 0,
            elapsed: Duration::from_millis(12),
        });
        r.emit(Event::TableProgress {
            table: "public.orders".into(),
            rows: 10,
            bytes: 100,
        });
        r.emit(Event::TableDone {
            table: "public.orders".into(),
            rows: 1000,
            bytes: 3 * 1024 * 1024,
            elapsed: Duration::from_millis(1500),
        });
        r.emit(Event::Warning {
            message: "column x is missing".into(),
        });
    }

    #[test]
    fn plain_lines_when_not_on_a_terminal() {
        let (r, buf) = renderer(false, false, 0);
        copy_events(&r);
        let text = buf.lock().unwrap().clone();
        assert_eq!(
            text,
            "[1/2] create staging table\n\
             ✔ public.orders: 1000 rows, 3.0 MiB in 1.5s\n\
             pgflip: warning: column x is missing\n"
        );
    }

    #[test]
    fn json_lines_with_json() {
        let (r, buf) = renderer(true, false, 0);
        copy_events(&r);
        let text = buf.lock().unwrap().clone();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "step_started",
                "step_finished",
                "table_progress",
                "table_done",
                "warning"
            ]
        );
        assert_eq!(events[3]["rows"], 1000);
    }

    #[test]
    fn bars_finish_with_one_line_each() {
        let (mut r, buf) = renderer(false, false, 0);
        // Bars mode, drawn nowhere: the bars' bookkeeping still runs.
        r.mode = Mode::Bars;
        copy_events(&r);
        // A step whose start was missed, and events for a table that never started.
        r.emit(Event::StepFinished {
            index: 5,
            elapsed: Duration::from_millis(3),
        });
        r.emit(Event::TableProgress {
            table: "t".into(),
            rows: 1,
            bytes: 1,
        });
        assert!(r.tables.lock().unwrap().contains_key("t"));
        drop(r);
        let text = buf.lock().unwrap().clone();
        assert_eq!(
            text,
            "✔ [1/2] create staging table (12ms)\n\
             ✔ public.orders: 1000 rows, 3.0 MiB in 1.5s\n\
             pgflip: warning: column x is missing\n\
             \x20 step 6 done in 3ms\n"
        );
    }

    #[test]
    fn quiet_hides_everything_even_warnings() {
        let (r, buf) = renderer(false, true, 0);
        copy_events(&r);
        assert_eq!(buf.lock().unwrap().as_str(), "");
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn paint_only_when_enabled() {
        assert_eq!(paint(false, RED, "x"), "x");
        assert_eq!(paint(true, RED, "x"), "\x1b[31mx\x1b[0m");
    }
}
