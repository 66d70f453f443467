//! The pairs of the flips other jobs ask for: a rollback's (a generation's retired relations
//! back under their live names), and `sync --swap`'s (each table and its staging table).

use tokio_postgres::Client;

use crate::error::{Error, Result};

use super::{dependents, FlipPair, Generation, QualifiedName};

/// The pairs that roll generation `gen` back: its retired relations return under their live
/// names, minus `keep` (tables whose current rows stay: they are simply not flipped back).
pub fn rollback_pairs(gen: &Generation, keep: &[String]) -> Result<Vec<FlipPair>> {
    if gen.status != "active" {
        return Err(Error::InvalidInput(format!(
            "generation {} is {}: there is nothing to roll back",
            gen.label,
            gen.status.replace('_', " ")
        )));
    }
    let mut pairs = Vec::new();
    let mut one_sided = 0;
    let mut unknown: Vec<&String> = keep.iter().collect();
    for r in &gen.relations {
        let matches = |k: &String| {
            k == &r.live_name
                || *k == format!("{}.{}", r.live_schema, r.live_name)
                || *k == r.live()
        };
        if keep.iter().any(matches) {
            unknown.retain(|k| !matches(k));
            continue;
        }
        if r.green_name.is_empty() || r.retired_name.is_empty() {
            // One-sided: see [`rollback_one_sided`].
            one_sided += 1;
            continue;
        }
        pairs.push(FlipPair {
            live: QualifiedName::new(r.live_schema.clone(), r.live_name.clone()),
            green: QualifiedName::new(r.retired_schema.clone(), r.retired_name.clone()),
        });
    }
    if !unknown.is_empty() {
        return Err(Error::InvalidInput(format!(
            "--keep-tables names tables that are not in generation {}: {}",
            gen.label,
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if pairs.is_empty() && one_sided == 0 {
        return Err(Error::InvalidInput(
            "every table of the generation is kept: nothing to roll back".into(),
        ));
    }
    Ok(pairs)
}

/// The one-sided relations that roll generation `gen` back, minus `keep`: `(retire_only,
/// bring_in_only)`. A table the generation retired alone comes back; one it brought in alone
/// is retired.
pub fn rollback_one_sided(
    gen: &Generation,
    keep: &[String],
) -> (Vec<QualifiedName>, Vec<FlipPair>) {
    let mut retire = Vec::new();
    let mut bring_in = Vec::new();
    for r in &gen.relations {
        let kept = keep.iter().any(|k| {
            k == &r.live_name
                || *k == format!("{}.{}", r.live_schema, r.live_name)
                || *k == r.live()
        });
        let live = QualifiedName::new(r.live_schema.clone(), r.live_name.clone());
        if kept {
            continue;
        }
        if r.green_name.is_empty() {
            bring_in.push(FlipPair {
                live,
                green: QualifiedName::new(r.retired_schema.clone(), r.retired_name.clone()),
            });
        } else if r.retired_name.is_empty() {
            retire.push(live);
        }
    }
    (retire, bring_in)
}

/// The pairs for swapping staging tables (`<table>_staging`, or `staging_names`) into `tables`:
/// what `sync --swap` hands to [`flip`]. A missing staging table is an error naming it.
pub async fn staging_pairs(client: &Client, tables: &[QualifiedName]) -> Result<Vec<FlipPair>> {
    let pairs: Vec<FlipPair> = tables
        .iter()
        .map(|t| FlipPair {
            live: t.clone(),
            green: QualifiedName::new(t.schema.clone(), crate::ident::staging_name(&t.name)),
        })
        .collect();
    let names: Vec<(String, String)> = pairs
        .iter()
        .map(|p| (p.green.schema.clone(), p.green.name.clone()))
        .collect();
    let oids = dependents::resolve(client, &names).await?;
    let missing: Vec<String> = pairs
        .iter()
        .zip(&oids)
        .filter(|(_, &o)| o == 0)
        .map(|(p, _)| format!("{} (for {})", p.green, p.live))
        .collect();
    if !missing.is_empty() {
        return Err(Error::InvalidInput(format!(
            "--swap needs a staging table, and there is none: {}; load it first with --staging-table",
            missing.join(", ")
        )));
    }
    Ok(pairs)
}
