//! pgflip: blue-green deployments for PostgreSQL.
//!
//! The library does all the work and never prints; it reports progress through
//! [`events::EventSink`] and returns typed results that the `pgflip` binary renders. Every
//! command builds a [`plan::Plan`] first, then renders it (dry-run) or executes it.

pub mod catalog;
pub mod conn;
pub mod copy;
pub mod ddl;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod flip;
pub mod generations;
pub mod green;
pub mod ident;
pub mod localpg;
pub mod lockwait;
pub mod migrate;
pub mod pgversion;
pub mod plan;
pub mod rowdiff;
pub mod schemadiff;
pub mod state;
pub mod sync;

pub use error::{Error, Problem, Refusal, Result, Side};

/// pgflip's version, as recorded in scripts and state.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
