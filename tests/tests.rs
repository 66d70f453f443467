//! Integration tests against real PostgreSQL servers started by the tests themselves.

mod util;

mod catalog;
mod cli;
mod conn;
mod ddl_roundtrip;
mod engine;
mod flip;
mod flip_hooks;
mod harness;
mod schemadiff;
mod state;
mod sync;
