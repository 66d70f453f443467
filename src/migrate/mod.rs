//! `pgflip migrate`: replace every table of a target database with the source's version, keep
//! chosen ("preserved") tables live, and switch in one short transaction (DESIGN §5a).
//!
//! How it is shaped:
//! - [`prepare`] builds the source's tables in shadow schemas of the target
//!   (`pgflip_shadow_<op>_<schema>`, one per migrated schema, names kept), copies the source's
//!   rows under one exported snapshot, builds indexes after the data, adds foreign keys `NOT
//!   VALID` and validates them. Preserved tables get their capture trigger *before* their rows
//!   are copied from the live table ([`capture`]), so every committed write lands in the
//!   shadow exactly once.
//! - Everything prepare will create is named in the operation record ([`record`]) *before* it
//!   is created, in the same transaction as the shadow schemas: whatever point a crash stops
//!   prepare at, [`abort`] knows what to remove (it drops only what the record names, with `IF
//!   EXISTS`).
//! - [`swap`] is one flip of all pairs through the flip engine; the capture triggers are
//!   dropped, and the last checks made, inside the flip transaction (`in_flip_before`), so no
//!   write can fall between the last forward and the switch.

pub mod abort;
pub mod capture;
pub mod objects;
pub mod prepare;
pub mod record;
pub mod reverse;
pub mod schemaswap;
pub mod shadow;
pub mod status;
pub mod swap;

use std::time::Duration;

use tokio_postgres::Client;

use crate::error::{DbResultExt, Result};
use crate::events::EventSink;

pub use abort::abort;
pub use prepare::{prepare, PrepareOptions, PrepareReport};
pub use record::{Phase, Record};
pub use status::{status, MigrateStatus};
pub use swap::{swap, SwapOptions, SwapOutcome};

/// The `kind` of migrate rows in `pgflip.operations`.
pub const OPERATION_KIND: &str = crate::state::OperationKind::Migrate.as_str();

/// Runs `sql` in its own transaction under a short `lock_timeout`, retrying a lock timeout with
/// jittered backoff until `max_wait`: statements that take a strong lock on a live table
/// (creating or dropping a capture trigger) must never queue in front of the application for
/// long.
pub(crate) async fn run_locked_retry(
    client: &Client,
    sql: &str,
    what: &str,
    lock_timeout: Duration,
    max_wait: Duration,
    events: &dyn EventSink,
) -> Result<()> {
    let body = format!(
        "BEGIN; SET LOCAL lock_timeout = '{}ms'; {sql}; COMMIT",
        lock_timeout.as_millis().max(1)
    );
    // The one lock-retry loop (crate::lockwait): same backoff, deadline and report as every job.
    crate::lockwait::retry(
        max_wait,
        events,
        || async {
            let r = client.batch_execute(&body).await.ctx(what.to_string());
            if r.is_err() {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            r
        },
        || async { Ok(Vec::new()) },
    )
    .await
}
