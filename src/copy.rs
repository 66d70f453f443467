//! Streaming COPY from one server to another.
//!
//! The source's `COPY (…) TO STDOUT` is forwarded chunk by chunk into the target's `COPY …
//! FROM STDIN`: no file, no buffering of a table, so memory stays flat whatever the table size
//! (the driver's own channels bound what is in flight). Binary format is used when every
//! column has the same built-in type on both sides (cheaper to produce and to parse); text
//! otherwise, since binary input checks type OIDs, which differ between databases for
//! user-defined types and arrays of them. Which transaction each side runs in is the caller's
//! business: this module only moves bytes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Client;

use crate::error::{DbResultExt, Result};
use crate::events::{Event, EventSink};

/// The wire format of one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Binary,
    Text,
}

impl Format {
    pub fn options(self) -> &'static str {
        match self {
            Format::Binary => "(FORMAT binary)",
            Format::Text => "(FORMAT text)",
        }
    }
}

/// What one copy moved.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CopyStats {
    pub rows: u64,
    pub bytes: u64,
}

/// `COPY (select) TO STDOUT (FORMAT …)`.
pub fn copy_out_sql(select: &str, format: Format) -> String {
    format!("COPY ({select}) TO STDOUT {}", format.options())
}

/// `COPY rel (cols) FROM STDIN (FORMAT …)`.
pub fn copy_in_sql(relation: &str, columns: &str, format: Format) -> String {
    format!(
        "COPY {relation} ({columns}) FROM STDIN {}",
        format.options()
    )
}

/// Streams `copy_out` on `source` into `copy_in` on `target`; reports cumulative progress for
/// `label` at most every 200 ms. Returns the rows the target accepted.
pub async fn stream(
    source: &Client,
    copy_out: &str,
    target: &Client,
    copy_in: &str,
    label: &str,
    events: &dyn EventSink,
) -> Result<CopyStats> {
    let sink = target
        .copy_in::<_, Bytes>(copy_in)
        .await
        .ctx(format!("starting COPY into {label} on the target"))?;
    let out = source
        .copy_out(copy_out)
        .await
        .ctx(format!("starting COPY of {label} on the source"))?;
    futures_util::pin_mut!(sink);
    futures_util::pin_mut!(out);
    let text = copy_in.ends_with("(FORMAT text)");
    let mut stats = CopyStats::default();
    let mut last = Instant::now();
    while let Some(chunk) = out.next().await {
        let chunk = chunk.ctx(format!("reading {label} from the source"))?;
        stats.bytes += chunk.len() as u64;
        if text {
            // In text COPY a raw newline only ever ends a row (newlines in values are escaped).
            stats.rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        }
        sink.feed(chunk)
            .await
            .ctx(format!("writing {label} to the target"))?;
        if last.elapsed() >= Duration::from_millis(200) {
            last = Instant::now();
            events.emit(Event::TableProgress {
                table: label.to_string(),
                rows: stats.rows,
                bytes: stats.bytes,
            });
        }
    }
    stats.rows = sink
        .as_mut()
        .finish()
        .await
        .ctx(format!("finishing COPY into {label} on the target"))?;
    Ok(stats)
}
