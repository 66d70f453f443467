//! Connections kept open between the short steps of one job.
//!
//! A job of many small steps (a staging load of hundreds of tables: its transaction, its index
//! builds, its swap preparation, its diff, each on a connection of its own) would otherwise open
//! and close a backend for every step. That costs a fork and an authentication on the server
//! each time, and it breaks the job's bound on connections: a backend whose client has closed
//! still holds its slot of `max_connections` until it has exited, which on a busy server can
//! overlap the next step's new connection, so the server sees more pgflip backends than
//! `--jobs` allows. A pool keeps the connections of finished steps for the next ones; how many
//! steps run at once stays the caller's semaphore's business.
//!
//! A connection goes back to the pool only when its user says it is clean ([`Pooled::reuse`]:
//! no transaction open, nothing set for the session). One dropped without it is closed, so an
//! error path can never hand an aborted transaction to the next step.

use std::ops::Deref;
use std::sync::Mutex;

use tokio_postgres::Client;

use super::Endpoint;
use crate::error::{DbResultExt, Result};

/// Open connections to one endpoint, waiting for their next step.
pub struct Pool {
    endpoint: Endpoint,
    /// Run on every new connection before its first use, e.g. a transaction importing a
    /// snapshot that all the steps read.
    setup: Option<(String, &'static str)>,
    idle: Mutex<Vec<Client>>,
}

/// A connection taken from a [`Pool`]: closed when dropped, unless given back with
/// [`Pooled::reuse`].
pub struct Pooled<'p> {
    pool: &'p Pool,
    client: Option<Client>,
}

impl Pool {
    pub fn new(endpoint: Endpoint) -> Self {
        Pool {
            endpoint,
            setup: None,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// A pool whose new connections first run `sql` (described as `what` in its errors). A
    /// connection given back must then be as `sql` left it, e.g. still in its transaction.
    pub fn with_setup(endpoint: Endpoint, sql: String, what: &'static str) -> Self {
        Pool {
            setup: Some((sql, what)),
            ..Pool::new(endpoint)
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// An idle connection, or a new one when none is idle. A connection the server closed
    /// while it waited (an idle-session timeout, a terminated backend) is skipped.
    pub async fn get(&self) -> Result<Pooled<'_>> {
        loop {
            let idle = self.idle.lock().expect("not poisoned").pop();
            match idle {
                Some(c) if c.is_closed() => continue,
                Some(c) => {
                    return Ok(Pooled {
                        pool: self,
                        client: Some(c),
                    })
                }
                None => {
                    let c = self.endpoint.connect().await?;
                    if let Some((sql, what)) = &self.setup {
                        c.batch_execute(sql).await.ctx(*what)?;
                    }
                    return Ok(Pooled {
                        pool: self,
                        client: Some(c),
                    });
                }
            }
        }
    }

    /// How many connections wait in the pool.
    pub fn idle(&self) -> usize {
        self.idle.lock().expect("not poisoned").len()
    }
}

impl Pooled<'_> {
    /// Gives the connection back for the next step. Only for a connection left as it was
    /// found: outside any transaction, with no session setting changed.
    pub fn reuse(mut self) {
        if let Some(c) = self.client.take() {
            if !c.is_closed() {
                self.pool.idle.lock().expect("not poisoned").push(c);
            }
        }
    }
}

impl Deref for Pooled<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .expect("present until reused or dropped")
    }
}
