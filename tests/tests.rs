//! Integration tests against real PostgreSQL servers started by the tests themselves.

mod util;

mod catalog;
mod ddl_roundtrip;
mod harness;
