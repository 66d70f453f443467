//! Integration tests against real PostgreSQL servers started by the tests themselves.

mod util;

mod catalog;
mod cli;
mod ddl_roundtrip;
mod harness;
mod state;
mod schemadiff;
