//! The connected server's major version, for the few statements whose text differs by
//! version (catalog columns that newer versions added). Read from `server_version_num`, never
//! assumed: pgflip supports PostgreSQL 14 to 18.

use tokio_postgres::Client;

use crate::error::{DbResultExt, Result};

/// `pg_publication_rel.prattrs` / `prqual` and `pg_publication_namespace`: column lists, row
/// filters and `TABLES IN SCHEMA` of publications.
pub const PUBLICATION_FILTERS: i32 = 150000;

/// The server's `server_version_num` (140012 for 14.12).
pub async fn server_version_num(client: &Client) -> Result<i32> {
    Ok(client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int",
            &[],
        )
        .await
        .ctx("reading the server's version")?
        .get(0))
}
