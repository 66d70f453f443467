//! The library's one error type.
//!
//! Server errors keep the SQLSTATE, message, detail and hint as PostgreSQL sent them, so callers
//! can match on codes and users see the server's own words. Nothing that reaches an error may
//! contain a password: connection errors carry a redacted endpoint description only.

use std::fmt;

/// Which side of a command a database is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// A database pgflip only reads.
    Source,
    /// The database pgflip changes.
    Target,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// An error reported by the PostgreSQL server, kept whole.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerError {
    /// Five-character SQLSTATE, e.g. `55P03` for a lock timeout.
    pub sqlstate: String,
    pub severity: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.sqlstate)?;
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT: {h}")?;
        }
        Ok(())
    }
}

/// One thing a guardrail found wrong, with the object it is about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The object the problem is about, named as SQL names it (quoted where needed), when
    /// there is one.
    pub object: Option<String>,
    /// What is wrong with it, and what to do.
    pub message: String,
}

impl Problem {
    pub fn new(object: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            object: Some(object.into()),
            message: message.into(),
        }
    }
}

/// Why a guardrail refused: a summary and, when it found several things, each of them as data,
/// so that `--json` can give them as an array and a caller can act on each.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    pub summary: String,
    pub problems: Vec<Problem>,
}

impl Refusal {
    pub fn new(summary: impl Into<String>, problems: Vec<Problem>) -> Refusal {
        Refusal {
            summary: summary.into(),
            problems,
        }
    }
}

/// A refusal with one reason and no list.
impl From<String> for Refusal {
    fn from(summary: String) -> Refusal {
        Refusal::new(summary, Vec::new())
    }
}

impl From<&str> for Refusal {
    fn from(summary: &str) -> Refusal {
        Refusal::new(summary, Vec::new())
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)?;
        if !self.problems.is_empty() {
            f.write_str(":")?;
        }
        for p in &self.problems {
            write!(f, "\n  - {}", p.message)?;
        }
        Ok(())
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options given do not make a usable configuration (bad URL, conflicting flags, ...).
    #[error("{0}")]
    Config(String),

    /// The user asked for something that does not exist or cannot be done as asked: an unknown
    /// table, a table without a primary key where one is needed, mismatched columns. Nothing was
    /// changed.
    #[error("{0}")]
    InvalidInput(String),

    /// Connecting failed. `endpoint` never contains a password.
    #[error("could not connect to {side} ({endpoint}): {reason}")]
    Connect {
        side: Side,
        endpoint: String,
        reason: String,
        /// The server's SQLSTATE when the server refused (28P01 wrong password, 3D000 no such
        /// database, 53300 too many connections…): the cause as data, for scripts. The
        /// driver's error itself is not kept, since its text may echo what the URL held.
        sqlstate: Option<String>,
    },

    /// The server rejected a statement.
    #[error("{context}: {error}")]
    Server {
        context: String,
        error: Box<ServerError>,
    },

    /// The connection broke or the protocol failed outside a server error.
    #[error("{context}: {message}")]
    Connection { context: String, message: String },

    /// Another pgflip run holds the target.
    #[error("another pgflip run is acting on this target: {holder}")]
    Busy { holder: String },

    /// A lock could not be taken before the deadline.
    #[error("gave up after {attempts} attempts over {waited_ms} ms waiting for locks; blocking sessions:\n{blockers}")]
    LockTimeout {
        /// Lock requests sent (0: it never tried, an old transaction was in the way).
        attempts: u32,
        waited_ms: u64,
        /// The sessions in the way, one per session.
        blockers: crate::lockwait::Blockers,
    },

    /// pgflip refuses to go on because it would be unsafe (a guardrail). Nothing was changed.
    #[error("refusing to continue: {0}")]
    Refused(Refusal),

    /// The flip committed, but a step that must follow it (validating re-attached foreign
    /// keys, recording the retired side's checksum) failed. The generation records it and
    /// `verify` names it.
    #[error("the flip committed (generation {generation}), but {failed}; `pgflip verify --timestamp {generation}` shows what is left")]
    AfterCommit { generation: String, failed: String },

    /// A failpoint configured to fail was hit (test builds only; see [`crate::failpoint`]).
    #[error("failpoint {0} hit")]
    Failpoint(&'static str),

    /// A feature pgflip does not have yet.
    #[error("{0} is not built yet")]
    NotImplemented(&'static str),

    /// The user interrupted the job (Ctrl-C, SIGTERM); what it built was handled as on a
    /// failure.
    #[error("interrupted")]
    Interrupted,

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The server's error, when this is one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Error::Server { error, .. } => Some(error.as_ref()),
            _ => None,
        }
    }

    /// The SQLSTATE, when the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Connect { sqlstate, .. } => sqlstate.as_deref(),
            _ => self.server_error().map(|e| e.sqlstate.as_str()),
        }
    }

    /// Wraps a driver error with what pgflip was doing.
    pub fn db(context: impl Into<String>, err: tokio_postgres::Error) -> Error {
        let context = context.into();
        match err.as_db_error() {
            Some(db) => Error::Server {
                context,
                error: Box::new(ServerError {
                    sqlstate: db.code().code().to_string(),
                    severity: db.severity().to_string(),
                    message: db.message().to_string(),
                    detail: db.detail().map(str::to_string),
                    hint: db.hint().map(str::to_string),
                }),
            },
            None => Error::Connection {
                context,
                message: err.to_string(),
            },
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Adds context to driver results: `client.query(..).await.ctx("loading columns")?`.
pub trait DbResultExt<T> {
    fn ctx(self, context: impl Into<String>) -> Result<T>;
}

impl<T> DbResultExt<T> for std::result::Result<T, tokio_postgres::Error> {
    fn ctx(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::db(context, e))
    }
}
