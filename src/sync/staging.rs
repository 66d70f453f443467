//! Staging tables are pgflip's own: it replaces or drops a relation under a staging or loading
//! name only when it created that relation and recorded it (its oid, in `pgflip.operations`).
//! A user's table that happens to carry the name (`--staging-name victim`, a table called
//! `customers_staging`) is refused, named, before anything is written.
//!
//! The names a staging table's indexes and sequences get are chosen here too, so that they
//! never collide with a relation left in the schema (another staging table of the same live
//! table, a user's object).
//!
//! And the mode's statements ([`unit_actions`]): the loading table beside the live one, filled,
//! indexed on parallel connections, then renamed to the staging name in one last transaction.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use super::plan::whole_copy;
use super::{drift, tables, Action, Strategy, TablePlan, Unit};
use crate::copy;
use crate::error::{DbResultExt, Error, Result};
use crate::ident::{derived_name, qualified, quote_ident, quote_literal, QuotedName};
use crate::plan::{Hazard, LockMode, Step};

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
        .flat_map(|&i| [plans[i].into.to_string(), plans[i].load_into.to_string()])
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
            QuotedName::list(&foreign),
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

/// `--staging-table`: per table, the loading table created `LIKE` the live one (its own
/// sequences, recorded in pgflip's state), the rows copied into it (whole, or in block ranges
/// after the unit commits), its index builds after the copy, and the last transaction that
/// names it the staging table.
pub(super) fn unit_actions(plans: &[TablePlan], order: &[usize], unit: &mut Unit) {
    let (actions, ranges, after, finish_steps) = (
        &mut unit.actions,
        &mut unit.ranges,
        &mut unit.after,
        &mut unit.finish,
    );
    for &i in order.iter().rev() {
        let p = &plans[i];
        if p.strategy == Strategy::Staging {
            let staging = p.into.clone();
            let loading = p.load_into.clone();
            let live = p.target.qualified();
            let staging_bare = p.staging.clone().unwrap_or_default();
            // Rows go into a loading table without indexes; the indexes are built after the
            // copy, in parallel, and the table is renamed to the staging name only when it is
            // complete. An interrupted run leaves at most the loading table, which the next run
            // drops.
            let mut taken = p.taken_names.clone();
            let index_builds = staging_index_builds(p, &loading, &mut taken);
            let including = if index_builds.is_some() {
                "INCLUDING ALL EXCLUDING INDEXES"
            } else {
                "INCLUDING ALL"
            };
            // Autovacuum stays off while loading: on a table filling up it would start, take
            // locks that the index builds and the final rename then wait behind.
            let mut sql = format!(
                "DROP TABLE IF EXISTS {staging}; DROP TABLE IF EXISTS {loading}; \
                 CREATE TABLE {loading} (LIKE {live} {including}) \
                 WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false)"
            );
            // LIKE copies serial defaults as they are: nextval() of the live table's sequence.
            // The staging table gets its own sequence so that loading or using it never moves
            // the live one.
            for c in &p.target.columns {
                let owned = p.target.sequences.iter().any(|s| s.column == c.name);
                if c.identity.is_empty()
                    && owned
                    && c.default
                        .as_deref()
                        .is_some_and(|d| d.starts_with("nextval("))
                {
                    let base = format!("{staging_bare}_{}", c.name);
                    let seq = qualified(&p.target.schema, &free_name(&base, "_seq", &mut taken));
                    let ty = if c.type_name == "smallint"
                        || c.type_name == "integer"
                        || c.type_name == "bigint"
                    {
                        c.type_name.clone()
                    } else {
                        "bigint".into()
                    };
                    sql.push_str(&format!(
                        "; CREATE SEQUENCE {seq} AS {ty} OWNED BY {loading}.{col}; \
                         ALTER TABLE {loading} ALTER COLUMN {col} SET DEFAULT nextval({lit}::regclass)",
                        col = quote_ident(&c.name),
                        lit = quote_literal(&seq)
                    ));
                }
            }
            // Every sequence of the staging table gets the live one's type and options: LIKE
            // makes identity sequences bigint, and a swap must not change them.
            for c in p.target.columns.iter().filter(|c| {
                !c.identity.is_empty() || p.target.sequences.iter().any(|s| s.column == c.name)
            }) {
                sql.push_str("; ");
                sql.push_str(&copy_sequence_options_sql(&live, &loading, &c.name));
            }
            // Recorded with its oid in the same transaction: pgflip replaces a staging table
            // only if it is one it created.
            sql.push_str("; ");
            sql.push_str(&crate::state::record_created_relation_sql(
                crate::state::OperationKind::Sync,
                crate::state::Phase::Loading,
                (&p.target.schema, &p.target.name),
                (&p.target.schema, &staging_bare),
                &loading,
            ));
            // What the live table holds as the load begins: the swap says what it received
            // since (those rows leave with the retired table).
            sql.push_str("; ");
            sql.push_str(&drift::record_marker_sql(
                (&p.target.schema, &staging_bare),
                drift::LOAD,
                &live,
            ));
            let mut step = Step::new(
                format!(
                    "{}create {loading} with the structure of {live}",
                    if p.replaces_staging {
                        format!("drop the previous {staging} (made by pgflip); ")
                    } else {
                        String::new()
                    }
                ),
                sql,
            )
            .lock(LockMode::AccessExclusive, staging.clone());
            if p.replaces_staging {
                step = step.hazard(Hazard::DeletesData);
            }
            actions.push(Action::Sql(step));
            let (builds, finish) = index_builds.unwrap_or_default();
            after.extend(builds);
            let mut fin = finish;
            // LIKE names identity sequences after the loading table: give them the names they
            // would have had under the staging name.
            for c in p.target.columns.iter().filter(|c| !c.identity.is_empty()) {
                let new_name = free_name(&format!("{staging_bare}_{}", c.name), "_seq", &mut taken);
                fin.push(Step::new(
                    format!(
                        "name the identity sequence of {staging}.{}",
                        quote_ident(&c.name)
                    ),
                    format!(
                        "DO $pgflip$BEGIN EXECUTE format('ALTER SEQUENCE %s RENAME TO %I', \
                         pg_get_serial_sequence({}, {}), {}); END$pgflip$",
                        quote_literal(&loading),
                        quote_literal(&c.name),
                        quote_literal(&new_name)
                    ),
                ));
            }
            fin.push(
                Step::new(
                    format!("rename the complete {loading} to {staging}; autovacuum on again"),
                    format!(
                        "ALTER TABLE {loading} RESET (autovacuum_enabled, \
                         toast.autovacuum_enabled); ALTER TABLE {loading} RENAME TO {}; {}",
                        quote_ident(&staging_bare),
                        crate::state::set_operation_phase_sql(
                            (&p.target.schema, &staging_bare),
                            crate::state::Phase::Staged
                        )
                    ),
                )
                .lock(LockMode::AccessExclusive, loading.clone()),
            );
            finish_steps.extend(fin);
        }
    }
    for &i in order {
        let p = &plans[i];
        if p.ranges.is_empty() {
            actions.push(whole_copy(p, i));
            continue;
        }
        let cols = p.column_list();
        let label = p.display.clone();
        // The loading table is committed first; each range is then its own COPY on
        // its own connections, so ranges load side by side.
        let copy_in = copy::copy_in_sql(&p.load_into, &cols, p.format);
        let n = p.ranges.len();
        for (k, r) in p.ranges.iter().enumerate() {
            let copy_out = copy::copy_out_sql(&p.source_select(Some(r)), p.format);
            ranges.push(Action::Copy {
                table: i,
                what: format!("{label}, range {} of {n} ({})", k + 1, r.describe()),
                step: Step::new(
                    format!(
                        "copy {} of {label} from the source (range {} of {n}, {:?} \
                             COPY, on its own connections)",
                        r.describe(),
                        k + 1,
                        p.format
                    ),
                    format!("{copy_in}  -- rows from the source: {copy_out}"),
                )
                .lock(LockMode::RowExclusive, p.load_into.clone())
                .outside_transaction(),
                copy_out,
                copy_in: copy_in.clone(),
            });
        }
    }
}

/// The index builds (parallel, after the copy) and constraint steps (in the final
/// transaction) that give a staging table the live table's indexes. `None` when an index
/// definition cannot be re-targeted safely: then `LIKE … INCLUDING ALL` builds them during the
/// copy instead.
fn staging_index_builds(
    p: &TablePlan,
    loading: &QuotedName,
    taken: &mut BTreeSet<String>,
) -> Option<(Vec<Step>, Vec<Step>)> {
    let live = p.target.qualified();
    let marker = format!(" ON {live} USING ");
    let mut builds = Vec::new();
    let mut finish = Vec::new();
    // Largest first (by the live table's index sizes): builds share the job slots, and the
    // longest one started last would finish alone on an idle machine.
    let mut indexes: Vec<&tables::Index> = p.target.indexes.iter().collect();
    indexes.sort_by_key(|i| std::cmp::Reverse(i.pages));
    for idx in indexes {
        let base = idx
            .constraint
            .as_ref()
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| idx.name.clone());
        let name = free_name(&base, "_staging", taken);
        let kind = idx.constraint.as_ref().map(|(_, k)| k.as_str());
        if kind == Some("x") {
            finish.push(
                Step::new(
                    format!(
                        "add exclusion constraint {} to {loading}",
                        quote_ident(&name)
                    ),
                    format!(
                        "ALTER TABLE {loading} ADD CONSTRAINT {} {}",
                        quote_ident(&name),
                        idx.constraint_definition.as_deref()?
                    ),
                )
                .hazard(Hazard::BuildsIndex),
            );
            continue;
        }
        let definition = idx.definition.as_deref()?;
        let at = definition.find(&marker)?;
        let rest = &definition[at + marker.len()..];
        let unique = definition.starts_with("CREATE UNIQUE INDEX ");
        builds.push(
            Step::new(
                format!("build index {} on {loading}", quote_ident(&name)),
                format!(
                    "CREATE {}INDEX {} ON {loading} USING {rest}",
                    if unique { "UNIQUE " } else { "" },
                    quote_ident(&name)
                ),
            )
            .lock(LockMode::Share, loading.clone())
            .hazard(Hazard::BuildsIndex)
            .outside_transaction(),
        );
        if let Some(k @ ("p" | "u")) = kind {
            let def = idx.constraint_definition.as_deref().unwrap_or_default();
            let mut opts = String::new();
            if def.contains(" DEFERRABLE") && !def.contains("NOT DEFERRABLE") {
                opts.push_str(" DEFERRABLE");
            }
            if def.contains("INITIALLY DEFERRED") {
                opts.push_str(" INITIALLY DEFERRED");
            }
            finish.push(Step::new(
                format!(
                    "make index {} the {} constraint of {loading}",
                    quote_ident(&name),
                    if k == "p" { "primary key" } else { "unique" }
                ),
                format!(
                    "ALTER TABLE {loading} ADD CONSTRAINT {n} {} USING INDEX {n}{opts}",
                    if k == "p" { "PRIMARY KEY" } else { "UNIQUE" },
                    n = quote_ident(&name)
                ),
            ));
        }
    }
    Some((builds, finish))
}

/// SQL giving the sequence of `table.column` (identity or serial, if it has one) the type and
/// options of `live.column`'s sequence. Both tables are qualified; a column without a sequence
/// on either side is left alone.
fn copy_sequence_options_sql(live: &str, table: &str, column: &str) -> String {
    format!(
        "DO $pgflip$DECLARE s record; t text; BEGIN \
         t := pg_catalog.pg_get_serial_sequence({table}, {col}); \
         SELECT pg_catalog.format_type(q.seqtypid, NULL) AS ty, q.* INTO s FROM pg_catalog.pg_sequence q \
          WHERE q.seqrelid = pg_catalog.pg_get_serial_sequence({live}, {col})::pg_catalog.regclass; \
         IF FOUND AND t IS NOT NULL THEN \
           EXECUTE format('ALTER SEQUENCE %s AS %s INCREMENT BY %s MINVALUE %s MAXVALUE %s START WITH %s RESTART WITH %s CACHE %s %sCYCLE', \
             t, s.ty, s.seqincrement, s.seqmin, s.seqmax, s.seqstart, s.seqstart, s.seqcache, \
             CASE WHEN s.seqcycle THEN '' ELSE 'NO ' END); \
         END IF; END$pgflip$",
        live = quote_literal(live),
        table = quote_literal(table),
        col = quote_literal(column),
    )
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
