//! Streaming COPY from one server to another.
//!
//! The source's `COPY (…) TO STDOUT` is forwarded chunk by chunk into the target's `COPY …
//! FROM STDIN`: no file, no buffering of a table, so memory stays flat whatever the table size
//! (the driver's own channels bound what is in flight). Binary format is used when every
//! column has the same built-in type on both sides (cheaper to produce and to parse); text
//! otherwise, since binary input checks type OIDs, which differ between databases for
//! user-defined types and arrays of them. Which transaction each side runs in is the caller's
//! business: this module only moves bytes. Several copies may feed one table at once (block
//! ranges of a large table): they share one [`Progress`], so the table's progress is their sum.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::{Client, CopyInSink, CopyOutStream, Statement, ToStatement};

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

/// Bytes forwarded to the target per CopyData message.
const BATCH: usize = 64 * 1024;

/// The running totals of one table, shared by every copy into it.
pub struct Progress {
    label: String,
    rows: AtomicU64,
    bytes: AtomicU64,
    last: Mutex<Instant>,
}

impl Progress {
    pub fn new(label: impl Into<String>) -> Progress {
        Progress {
            label: label.into(),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    fn add(&self, rows: u64, bytes: u64, events: &dyn EventSink) {
        let rows = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        let bytes = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        // At most every 200 ms per table, however many copies feed it.
        if last.elapsed() >= Duration::from_millis(200) {
            *last = Instant::now();
            events.emit(Event::TableProgress {
                table: self.label.clone(),
                rows,
                bytes,
            });
        }
    }
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

/// Streams `copy_out` on `source` into `copy_in` on `target`, adding to `progress`; `what`
/// names the copy in errors. Returns what this copy moved (the rows the target accepted).
pub async fn stream(
    source: &Client,
    copy_out: &str,
    target: &Client,
    copy_in: &str,
    what: &str,
    progress: &Progress,
    events: &dyn EventSink,
) -> Result<CopyStats> {
    let format = if copy_in.ends_with(Format::Text.options()) {
        Format::Text
    } else {
        Format::Binary
    };
    send(
        source, copy_out, target, copy_in, format, what, progress, events,
    )
    .await?
    .finish()
    .await
}

/// [`stream`] with both statements prepared beforehand (on `source` and `target`): the driver
/// parses a statement given as text in a round trip of its own before running it, which
/// counted for many small tables.
#[allow(clippy::too_many_arguments)]
pub async fn stream_prepared(
    source: &Client,
    copy_out: &Statement,
    target: &Client,
    copy_in: &Statement,
    format: Format,
    what: &str,
    progress: &Progress,
    events: &dyn EventSink,
) -> Result<CopyStats> {
    send(
        source, copy_out, target, copy_in, format, what, progress, events,
    )
    .await?
    .finish()
    .await
}

/// A copy whose rows have all been read from the source and handed to the target's connection;
/// the target's answer (the rows it took, or its error) is not read yet. The caller may send more behind it
/// before [`Sent::finish`]: the client sends requests in the order they are issued, so what is
/// issued after this copy reaches the server after its end. Dropped unfinished, the copy is
/// aborted.
pub struct Sent {
    sink: Pin<Box<CopyInSink<Bytes>>>,
    stats: CopyStats,
    what: String,
}

impl Sent {
    /// Ends the copy and reads the target's answer: what this copy moved.
    pub async fn finish(mut self) -> Result<CopyStats> {
        self.stats.rows = self
            .sink
            .as_mut()
            .finish()
            .await
            .ctx(format!("finishing COPY into {} on the target", self.what))?;
        Ok(self.stats)
    }
}

/// Starts `copy_out` (prepared) on the source; [`send_into`] forwards its rows. The caller may
/// issue it right behind other statements on the source without waiting for them.
pub async fn start_out(source: &Client, copy_out: &Statement, what: &str) -> Result<CopyOutStream> {
    source
        .copy_out(copy_out)
        .await
        .ctx(format!("starting COPY of {what} on the source"))
}

/// Starts `copy_in` (prepared) on the target and forwards the rows of `out` into it, up to their
/// end: the caller finishes it ([`Sent::finish`]), possibly together with what comes next (one
/// round trip less per copy, which counted for many small tables). The target's COPY must not
/// be issued behind a statement that may fail: the driver's COPY FROM would then leave an
/// answer behind that the next request takes for its own (rust-postgres issue 789).
#[allow(clippy::too_many_arguments)]
pub async fn send_into(
    out: CopyOutStream,
    target: &Client,
    copy_in: &Statement,
    format: Format,
    what: &str,
    progress: &Progress,
    events: &dyn EventSink,
) -> Result<Sent> {
    let sink = target
        .copy_in::<_, Bytes>(copy_in)
        .await
        .ctx(format!("starting COPY into {what} on the target"))?;
    forward(out, Box::pin(sink), format, what, progress, events).await
}

#[allow(clippy::too_many_arguments)]
async fn send<O, I>(
    source: &Client,
    copy_out: &O,
    target: &Client,
    copy_in: &I,
    format: Format,
    what: &str,
    progress: &Progress,
    events: &dyn EventSink,
) -> Result<Sent>
where
    O: ?Sized + ToStatement,
    I: ?Sized + ToStatement,
{
    // Both started at once: one round trip instead of two, which counted for many small tables.
    // (Whichever fails, the other is dropped: an unfinished COPY FROM is aborted, an unread
    // COPY TO is drained by the driver.)
    let (sink, out) = futures_util::future::join(
        target.copy_in::<_, Bytes>(copy_in),
        source.copy_out(copy_out),
    )
    .await;
    let sink = Box::pin(sink.ctx(format!("starting COPY into {what} on the target"))?);
    let out = out.ctx(format!("starting COPY of {what} on the source"))?;
    forward(out, sink, format, what, progress, events).await
}

/// Forwards the rows of `out` into `sink`, up to their end.
async fn forward(
    out: CopyOutStream,
    mut sink: Pin<Box<CopyInSink<Bytes>>>,
    format: Format,
    what: &str,
    progress: &Progress,
    events: &dyn EventSink,
) -> Result<Sent> {
    futures_util::pin_mut!(out);
    let text = format == Format::Text;
    let mut stats = CopyStats::default();
    // The source sends one message per row; forwarding them in batches of BATCH bytes makes one
    // CopyData message (and one progress update) of many rows, instead of the driver's 4 kB.
    let mut batch = BytesMut::with_capacity(BATCH);
    let mut rows = 0u64;
    loop {
        let chunk = out
            .next()
            .await
            .transpose()
            .ctx(format!("reading {what} from the source"))?;
        if let Some(chunk) = &chunk {
            if text {
                // In text COPY a raw newline only ever ends a row (newlines in values are escaped).
                rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
            }
            batch.extend_from_slice(chunk);
        }
        if batch.len() >= BATCH || (chunk.is_none() && !batch.is_empty()) {
            let data = batch.split().freeze();
            let bytes = data.len() as u64;
            sink.feed(data)
                .await
                .ctx(format!("writing {what} to the target"))?;
            stats.bytes += bytes;
            stats.rows += rows;
            progress.add(rows, bytes, events);
            rows = 0;
        }
        if chunk.is_none() {
            break;
        }
    }
    Ok(Sent {
        sink,
        stats,
        what: what.to_string(),
    })
}
