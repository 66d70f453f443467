//! Staging tables are pgflip's own: it replaces or drops a relation under a staging or loading
//! name only when it created that relation and recorded it (its oid, in `pgflip.operations`).
//! A user's table that happens to carry the name (`--staging-name victim`, a table called
//! `customers_staging`) is refused, named, before anything is written.
//!
//! The names a staging table's indexes and sequences get are chosen here too, so that they
//! never collide with a relation left in the schema (another staging table of the same live
//! table, a user's object).

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use super::{Strategy, TablePlan};
use crate::error::{DbResultExt, Error, Result};
use crate::ident::derived_name;

/// Refuses staging and loading names held by relations pgflip did not create, and records, per
/// staging plan, whether a previous staging table is replaced and which names are taken.
pub(super) async fn check_and_reserve(client: &Client, plans: &mut [TablePlan]) -> Result<()> {
    let staged: Vec<usize> = (0..plans.len())
        .filter(|&i| plans[i].strategy == Strategy::Staging)
        .collect();
    if staged.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = staged
        .iter()
        .flat_map(|&i| [plans[i].into.clone(), plans[i].load_into.clone()])
        .collect();
    let rows = client
        .query(
            "SELECT pg_catalog.to_regclass(x)::oid FROM unnest($1::text[]) WITH ORDINALITY u(x, i) ORDER BY i",
            &[&names],
        )
        .await
        .ctx("looking for existing staging tables")?;
    let oids: Vec<Option<u32>> = rows.iter().map(|r| r.get(0)).collect();
    let created = crate::state::created_relation_oids(client).await?;
    let mut foreign = Vec::new();
    let mut dropped: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (k, &i) in staged.iter().enumerate() {
        for (name, oid) in [
            (&plans[i].into, oids[2 * k]),
            (&plans[i].load_into, oids[2 * k + 1]),
        ] {
            let Some(oid) = oid else { continue };
            if created.contains(&oid) {
                dropped
                    .entry(plans[i].target.schema.clone())
                    .or_default()
                    .push(oid);
            } else {
                foreign.push(name.clone());
            }
        }
        plans[i].replaces_staging = oids[2 * k].is_some();
    }
    if !foreign.is_empty() {
        return Err(Error::Refused(
            format!(
            "{} already exist{} and pgflip did not create {} (no record in pgflip.operations): \
             pgflip replaces only staging tables it created. Choose another --staging-name, or \
             rename or drop {} yourself; nothing was changed",
            foreign.join(", "),
            if foreign.len() == 1 { "s" } else { "" },
            if foreign.len() == 1 { "it" } else { "them" },
            if foreign.len() == 1 { "it" } else { "them" },
        )
            .into(),
        ));
    }
    // Names in use in each schema, except those that go with the replaced relations (their
    // indexes and owned sequences).
    let schemas: BTreeSet<String> = staged
        .iter()
        .map(|&i| plans[i].target.schema.clone())
        .collect();
    for schema in schemas {
        let gone: Vec<u32> = dropped.get(&schema).cloned().unwrap_or_default();
        let rows = client
            .query(
                "SELECT c.relname::text FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.oid <> ALL($2::oid[]) \
                   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                                   WHERE i.indexrelid = c.oid AND i.indrelid = ANY($2::oid[])) \
                   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                                   WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                                     AND d.objid = c.oid AND d.refobjid = ANY($2::oid[]) \
                                     AND d.deptype IN ('a', 'i'))",
                &[&schema, &gone],
            )
            .await
            .ctx("reading the names in use")?;
        let taken: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
        for &i in &staged {
            if plans[i].target.schema == schema {
                plans[i].taken_names = taken.clone();
            }
        }
    }
    Ok(())
}

/// `base` + `suffix` ([`derived_name`]), or with a number after the suffix when that name is
/// taken; the name returned is taken from then on.
pub(super) fn free_name(base: &str, suffix: &str, taken: &mut BTreeSet<String>) -> String {
    let mut name = derived_name(base, suffix);
    let mut n = 1;
    while taken.contains(&name) {
        n += 1;
        name = derived_name(base, &format!("{suffix}{n}"));
    }
    taken.insert(name.clone());
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_names_skip_taken_ones_and_stay_within_63_bytes() {
        let mut taken: BTreeSet<String> = ["t_pkey_staging".to_string()].into();
        assert_eq!(
            free_name("t_pkey", "_staging", &mut taken),
            "t_pkey_staging2"
        );
        assert_eq!(
            free_name("t_pkey", "_staging", &mut taken),
            "t_pkey_staging3"
        );
        let long = "x".repeat(63);
        let a = free_name(&long, "_staging", &mut taken);
        let b = free_name(&long, "_staging", &mut taken);
        assert!(a.len() <= 63 && b.len() <= 63 && a != b, "{a} {b}");
    }
}
