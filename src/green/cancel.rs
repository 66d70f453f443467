//! `green cancel`: drop what `create` built — the pipeline's schema and its operation
//! records, in one transaction — and nothing else.
//!
//! `DROP SCHEMA … CASCADE` would also take any object of the user's that came to depend on a
//! green relation (a view someone made over it to look at it): cancel refuses then, naming
//! them, rather than drop what pgflip did not create.

use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Result};
use crate::ident::QuotedName;
use crate::ident::{quote_ident, quote_literal};
use crate::plan::{Hazard, LockMode, Plan, Step};

#[derive(Debug, Clone, Serialize)]
pub struct CancelOutcome {
    pub pipelines: Vec<String>,
    pub relations: Vec<String>,
    /// Tables whose change trigger was removed.
    pub unwatched: Vec<String>,
    pub plan: Plan,
}

/// Cancels the pipeline holding `rel` (or every pipeline). With `dry_run`, only plans.
pub async fn cancel(client: &Client, rel: Option<&str>, dry_run: bool) -> Result<CancelOutcome> {
    let selected = super::select(client, rel).await?;
    let gone: Vec<String> = selected.keys().cloned().collect();
    // The change triggers no pipeline needs once these are gone (and any a crash left).
    let unwatch = super::watch::unneeded(client, &gone).await?;
    if selected.is_empty() && unwatch.is_empty() {
        return Err(Error::InvalidInput(
            "no green relation is in flight: nothing to cancel".into(),
        ));
    }
    let mut plan = Plan::new("cancel green");
    let mut relations = Vec::new();
    for (i, (schema, members)) in selected.iter().enumerate() {
        let outside = crate::flip::generation::outside_dependents(client, schema).await?;
        if !outside.is_empty() {
            return Err(Error::Refused(crate::error::Refusal::new(
                format!(
                    "objects outside pgflip depend on green relations of {schema}, and dropping it would take them along (nothing was changed)"
                ),
                outside
                    .into_iter()
                    .map(|d| crate::error::Problem::new(schema.clone(), d))
                    .collect(),
            )));
        }
        let exists: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
                &[schema],
            )
            .await
            .ctx("looking for the green schema")?
            .get(0);
        if exists {
            plan.push(
                Step::new(
                    format!(
                        "drop green schema {schema} ({})",
                        members
                            .iter()
                            .map(|m| m.green.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    format!("DROP SCHEMA {} CASCADE", quote_ident(schema)),
                )
                .lock(LockMode::AccessExclusive, QuotedName::ident(schema))
                .hazard(Hazard::DeletesData)
                .in_transaction(i as u32),
            );
        }
        plan.push(
            Step::new(
                format!("forget the green operations of {schema}"),
                format!(
                    "DELETE FROM pgflip.operations WHERE kind = {} AND green_schema = {}",
                    quote_literal(super::KIND),
                    quote_literal(schema)
                ),
            )
            .in_transaction(i as u32),
        );
        relations.extend(members.iter().map(|m| m.live.to_string()));
    }
    // Each trigger in a transaction of its own: a strong lock on the application's table,
    // taken under the plan's short lock_timeout with retries.
    let mut unit = selected.len() as u32;
    for (_, table) in &unwatch {
        plan.push(
            Step::new(
                format!("remove the change trigger from {table}"),
                super::watch::drop_sql(table),
            )
            .lock(LockMode::AccessExclusive, table.clone())
            .in_transaction(unit),
        );
        unit += 1;
    }
    if !unwatch.is_empty() {
        plan.push(
            Step::new(
                "forget the change counters of unwatched tables",
                super::watch::forget_sql(),
            )
            .in_transaction(unit),
        );
    }
    if !dry_run {
        crate::failpoint::hit("green.cancel.before_drop").await?;
        let exec = crate::plan::ExecOptions::default();
        plan.execute(client, &exec, &crate::events::NullSink)
            .await?;
    }
    Ok(CancelOutcome {
        pipelines: gone,
        relations,
        unwatched: unwatch.into_iter().map(|(_, t)| t.into()).collect(),
        plan,
    })
}
