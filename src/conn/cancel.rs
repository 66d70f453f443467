//! Every open connection, so that an interrupt can stop the server's work too.
//!
//! Dropping a client does not stop its backend: a backend busy with a statement reads the
//! client's goodbye only when the statement ends, so an interrupted `INSERT … ON CONFLICT` went
//! on for seconds, holding its locks against the application. [`interrupt`] sends a cancel
//! request (a separate connection, as `pg_cancel_backend` would) for every connection still
//! open while the interrupted command unwinds, and [`wait_closed`] waits, bounded, for the
//! connections to close.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio_postgres::CancelToken;

/// How a cancel request reaches the server: as the connection did.
#[derive(Clone)]
pub(super) enum Via {
    Plain,
    Tls(Box<rustls::ClientConfig>),
}

static NEXT: AtomicU64 = AtomicU64::new(0);
static OPEN: Mutex<BTreeMap<u64, (CancelToken, Via)>> = Mutex::new(BTreeMap::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the process was interrupted: work not yet begun must not begin (a new connection,
/// a retry, the next table), even while the command is driven to see its statements end.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// [`crate::Error::Interrupted`] once the process was interrupted.
pub fn check() -> crate::Result<()> {
    if interrupted() {
        Err(crate::Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Registers an open connection; the returned id is passed to [`closed`] when its connection
/// task ends.
pub(super) fn opened(token: CancelToken, via: Via) -> u64 {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    OPEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, (token, via));
    id
}

pub(super) fn closed(id: u64) {
    OPEN.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
}

/// How many connections pgflip has open now.
pub fn open_connections() -> usize {
    OPEN.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Sends a cancel request for every open connection (each bounded by `wait`).
async fn send_cancels(wait: Duration) {
    let open: Vec<(CancelToken, Via)> = OPEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let sends = open.into_iter().map(|(token, via)| async move {
        let send = async {
            match via {
                Via::Plain => token.cancel_query(tokio_postgres::NoTls).await,
                Via::Tls(c) => {
                    token
                        .cancel_query(tokio_postgres_rustls::MakeRustlsConnect::new(*c))
                        .await
                }
            }
        };
        let _ = tokio::time::timeout(wait, send).await;
    });
    futures_util::future::join_all(sends).await;
}

/// Waits up to `wait` for every connection to close (their clients must have been dropped).
/// Returns how many were still open at the end.
pub async fn wait_closed(wait: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + wait;
    while open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    open_connections()
}

/// Stops the work `fut` was doing on the servers: cancels every running statement and keeps
/// driving `fut` until it has seen its statements end (it then unwinds through its own error
/// paths: transactions rolled back, nothing left active), for at most `wait`; then drops it.
/// Meanwhile no new work begins: [`check`] fails, so new connections, lock retries, plan
/// steps and sync units are refused. Once `fut` is dropped, work may begin again (a prepare
/// interrupted by Ctrl-C removes what it built).
///
/// Dropping `fut` first and cancelling afterwards is not enough: a dropped client's backend
/// may still be running its cancelled statement when pgflip exits, holding its locks for the
/// moment it takes the server to act on the cancel. Cancels are sent again every quarter
/// second, because `fut` may have started a statement after the first request (a cancel that
/// reaches an idle backend is ignored by the server). Returns `fut`'s output if it ended in
/// time.
pub async fn interrupt<F: std::future::Future>(fut: F, wait: Duration) -> Option<F::Output> {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + wait;
    let mut fut = Box::pin(fut);
    let out = loop {
        send_cancels(wait).await;
        let round = (tokio::time::Instant::now() + Duration::from_millis(250)).min(deadline);
        if let Ok(out) = tokio::time::timeout_at(round, &mut fut).await {
            break Some(out);
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
    };
    drop(fut);
    INTERRUPTED.store(false, Ordering::SeqCst);
    out
}
