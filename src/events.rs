//! Progress events. The library never prints: it reports what it is doing through an
//! [`EventSink`], and the binary renders events as progress bars, plain lines or JSON lines.

use std::time::Duration;

/// Something worth telling the user while a command runs.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A named phase of a command began (`"loading catalog"`, `"copying"`, `"flip"`).
    PhaseStarted { phase: String },
    /// A phase ended.
    PhaseFinished {
        phase: String,
        #[serde(with = "duration_ms")]
        elapsed: Duration,
    },
    /// A plan step is about to run.
    StepStarted {
        index: usize,
        total: usize,
        description: String,
    },
    /// A plan step finished.
    StepFinished {
        index: usize,
        #[serde(with = "duration_ms")]
        elapsed: Duration,
    },
    /// A table copy progressed (cumulative figures).
    TableProgress {
        table: String,
        rows: u64,
        bytes: u64,
    },
    /// A table copy finished.
    TableDone {
        table: String,
        rows: u64,
        bytes: u64,
        #[serde(with = "duration_ms")]
        elapsed: Duration,
    },
    /// A lock could not be taken in time; pgflip will retry after `retry_in`.
    LockAttemptFailed {
        attempt: u32,
        #[serde(with = "duration_ms")]
        retry_in: Duration,
        blockers: Vec<String>,
    },
    /// Something the user should know that does not stop the command.
    Warning { message: String },
    /// A sentence of narration (used by `demo` and verbose output).
    Info { message: String },
}

/// Receives events. Implementations must be cheap: events are sent from hot loops.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);
}

/// Drops every event.
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _event: Event) {}
}

impl<F: Fn(Event) + Send + Sync> EventSink for F {
    fn emit(&self, event: Event) {
        self(event)
    }
}

pub(crate) mod duration_ms {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
}
