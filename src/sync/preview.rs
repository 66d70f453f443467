//! The swap a `sync --staging-table --swap` ends with, shown by its dry run.
//!
//! The flip is planned from the catalog, so it needs the staging tables to exist. A dry run
//! must change nothing, so the staging tables not loaded yet are created empty, with the live
//! table's structure, inside a transaction that is always rolled back; the flip is planned in
//! that transaction. What it shows may differ from the real swap only where the load itself
//! decides (the staging table's own serial sequences); the checks that read rows (rows of other
//! tables that would lose the row they reference, checksums) are made by the real swap.

use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Result};
use crate::flip::{self, FlipKind, FlipOptions, FlipPair, FlipPlan};

use super::{Prepared, Strategy};

impl Prepared {
    /// The live tables and the staging tables that a `--swap` after this load flips.
    pub fn staging_pairs(&self) -> Vec<FlipPair> {
        self.tables
            .iter()
            .filter(|p| p.strategy == Strategy::Staging)
            .filter_map(|p| {
                let staging = p.staging.as_ref()?;
                Some(FlipPair {
                    live: flip::QualifiedName::new(p.target.schema.clone(), p.target.name.clone()),
                    green: flip::QualifiedName::new(p.target.schema.clone(), staging.clone()),
                })
            })
            .collect()
    }
}

/// Plans the flip of `pairs` as it would run once the staging tables are loaded, without
/// changing anything: see the module's comment.
pub async fn plan_swap_after_load(
    client: &Client,
    pairs: &[FlipPair],
    opts: &FlipOptions,
) -> Result<FlipPlan> {
    // A short lock_timeout: LIKE reads the live table's definition under ACCESS SHARE, which
    // must not queue behind a long lock (and make readers queue behind the dry run).
    client
        .batch_execute("BEGIN; SET LOCAL lock_timeout = '1s'")
        .await
        .ctx("starting the dry run's transaction")?;
    let mut created: Vec<u32> = Vec::new();
    let planned = async {
        for p in pairs {
            let exists: bool = client
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&p.green.sql()])
                .await
                .ctx("looking for the staging table")?
                .get(0);
            if !exists {
                client
                    .batch_execute(&format!(
                        "CREATE TABLE {} (LIKE {} INCLUDING ALL)",
                        p.green.sql(),
                        p.live.sql()
                    ))
                    .await
                    .ctx(format!(
                        "creating an empty {} to plan the swap (rolled back)",
                        p.green
                    ))?;
                let oid: u32 = client
                    .query_one("SELECT $1::text::regclass::oid", &[&p.green.sql()])
                    .await
                    .ctx("reading the oid of the planned staging table")?
                    .get(0);
                created.push(oid);
            }
        }
        flip::plan_flip_before_load(client, pairs, FlipKind::Sync, opts).await
    }
    .await;
    let rolled_back = client
        .batch_execute("ROLLBACK")
        .await
        .ctx("rolling back the dry run's transaction");
    rolled_back?;
    // A dry run must change nothing. Should anything in planning ever end the transaction
    // early, what it created would have been committed: remove it and say so.
    let left: Vec<String> = client
        .query(
            "SELECT oid::regclass::text FROM pg_catalog.pg_class WHERE oid = ANY($1)",
            &[&created],
        )
        .await
        .ctx("checking that the dry run left nothing")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !left.is_empty() {
        for rel in &left {
            client
                .batch_execute(&format!("DROP TABLE {rel}"))
                .await
                .ctx(format!("removing {rel}, which the dry run created"))?;
        }
        return Err(Error::Refused(
            format!(
                "internal error: the dry run's transaction ended early; removed {} again",
                left.join(", ")
            )
            .into(),
        ));
    }
    planned
}
