//! Integration tests against real PostgreSQL servers started by the tests themselves.

mod util;

mod catalog;
mod cli;
mod conn;
mod cross_version;
mod ddl_roundtrip;
mod engine;
mod flip;
mod flip_hooks;
mod flip_statistics;
mod green;
mod harness;
mod migrate;
mod migrate_schema;
mod safety;
mod schema_kinds;
mod schema_roles;
mod schemadiff;
mod state;
mod sync;
mod sync_pgsync;
