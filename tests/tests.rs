//! Integration tests against real PostgreSQL servers started by the tests themselves.

mod util;

mod cli;
mod conn;
mod flip;
mod harness;
mod state;
mod sync;
