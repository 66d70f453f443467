//! The default mode's statements: the live tables' rows replaced (or merged) in the unit's
//! transaction. Strategies are chosen here once the foreign keys are known; see the module
//! documentation of `sync` for why each.

use super::plan::whole_copy;
use super::*;
use crate::copy;
use crate::error::{Error, Result};
use crate::ident::{qualified, quote_ident, quote_literal, QuotedName};
use crate::plan::{Hazard, LockMode, Step};

/// Picks each table's strategy for whole-table replacement; whether the unit is small (DELETE
/// under SHARE ROW EXCLUSIVE, and it may share a transaction with other such units).
pub(super) fn choose_strategies(
    plans: &mut [TablePlan],
    order: &[usize],
    unit_fks: &[&tables::ForeignKey],
    opts: &SyncOptions,
) -> Result<bool> {
    let has_external = order.iter().any(|&i| !plans[i].external_refs.is_empty());
    // Strategies for whole-table replacement, now that foreign keys are known. A unit that
    // tables outside the sync reference cannot be truncated; without flags every table of it is
    // merged (upserts parents first, deletes children first), so no reference ever breaks.
    // A unit of small tables only, nothing referencing it from outside: DELETE under SHARE ROW
    // EXCLUSIVE instead of TRUNCATE (see `small_tables`), and it may share a transaction with
    // other such units. --defer-constraints and --disable-integrity keep their own path.
    let small = !has_external
        && !opts.defer_constraints
        && !opts.disable_integrity
        && order
            .iter()
            .all(|&i| plans[i].small && plans[i].filter.is_none());
    let in_unit = |oid: u32| order.iter().any(|&i| plans[i].target.oid == oid);
    let all_no_action = unit_fks
        .iter()
        .filter(|fk| in_unit(fk.to_oid))
        .all(|fk| fk.on_delete == "a");
    for &i in order {
        if plans[i].filter.is_some() {
            continue; // --where: merge within the filter, decided in plan_table
        }
        let p = &plans[i];
        plans[i].strategy = if small {
            Strategy::DeleteAll
        } else if !has_external {
            Strategy::Truncate
        } else if opts.disable_integrity || (opts.defer_constraints && all_no_action) {
            Strategy::DeleteAll
        } else if p.target.primary_key.is_empty() {
            let fk = order
                .iter()
                .flat_map(|&j| plans[j].external_refs.iter())
                .next()
                .expect("has_external");
            return Err(Error::InvalidInput(format!(
                "{} has no primary key and its rows are referenced (from {}, constraint {}), \
                 so pgflip cannot replace them without breaking references; use \
                 --defer-constraints or --disable-integrity",
                p.display,
                fk.from,
                quote_ident(&fk.name)
            )));
        } else {
            Strategy::Merge {
                delete: MergeDelete::Missing,
                update: true,
            }
        };
    }
    Ok(small)
}

/// Empty (TRUNCATE, or DELETE for small units), drop what a large table's load rebuilds, load
/// parents first, rebuild, then merge: check references from outside and delete children first.
pub(super) fn unit_actions(
    plans: &[TablePlan],
    order: &[usize],
    opts: &SyncOptions,
    unit: &mut Unit,
) {
    let small = unit.shares_transaction;
    let actions = &mut unit.actions;
    // Clear.
    let truncated: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| plans[i].strategy == Strategy::Truncate)
        .collect();
    if !truncated.is_empty() {
        let names = QuotedName::list(truncated.iter().map(|&i| &plans[i].into));
        let entries: Vec<String> = truncated
            .iter()
            .map(|&i| only(&plans[i].target.kind, &plans[i].into))
            .collect();
        let mut step = Step::new(
            format!(
                "empty {} (inside the transaction: readers wait, then see the new rows)",
                names
            ),
            format!("TRUNCATE {}", entries.join(", ")),
        )
        .hazard(Hazard::ReplacesData);
        step = step.lock(LockMode::AccessExclusive, names.clone());
        actions.push(Action::Sql(step));
    }
    if small {
        let names = QuotedName::list(order.iter().map(|&i| &plans[i].into));
        let entries: Vec<String> = order
            .iter()
            .map(|&i| only(&plans[i].target.kind, &plans[i].into))
            .collect();
        actions.push(Action::Sql(
            Step::new(
                format!(
                    "hold writes to {} until COMMIT (readers go on, seeing the old rows until \
                     then)",
                    names
                ),
                format!(
                    "LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
                    entries.join(", ")
                ),
            )
            .lock(LockMode::ShareRowExclusive, names.clone()),
        ));
    }
    for &i in order.iter().rev() {
        let p = &plans[i];
        if p.strategy == Strategy::DeleteAll {
            actions.push(Action::Sql(
                Step::new(
                    format!(
                        "delete every row of {}{}",
                        p.into,
                        if small {
                            " (inside the transaction: readers see the old rows until COMMIT)"
                        } else {
                            ""
                        }
                    ),
                    format!("DELETE FROM {}", only(&p.target.kind, &p.into)),
                )
                .lock(LockMode::RowExclusive, p.into.clone())
                .hazard(Hazard::ReplacesData),
            ));
        }
    }

    // Large tables emptied by TRUNCATE: their plain secondary indexes are dropped and rebuilt
    // after the copy, in the same transaction (readers are locked out by the TRUNCATE anyway,
    // so nobody sees the table without them). A sorted build is several times cheaper than
    // inserting millions of random keys one by one.
    let mut rebuild = Vec::new();
    for &i in order {
        let p = &plans[i];
        if p.strategy != Strategy::Truncate || !p.large(opts) {
            continue;
        }
        // Key constraints that nothing depends on first: the table has its key back as early
        // as possible in the rebuild.
        for idx in p.target.indexes.iter().filter(|x| {
            x.plain
                && p.droppable.contains(&x.name)
                && matches!(&x.constraint, Some((_, k)) if k == "p" || k == "u")
        }) {
            let Some(((con, _), def)) = idx
                .constraint
                .as_ref()
                .zip(idx.constraint_definition.as_ref())
            else {
                continue;
            };
            let name = qualified(&p.target.schema, &idx.name);
            let con = quote_ident(con);
            actions.push(Action::Sql(
                Step::new(
                    format!(
                        "drop constraint {con} of {} for the load (added again after it)",
                        p.into
                    ),
                    format!("ALTER TABLE {} DROP CONSTRAINT {con}", p.into),
                )
                .lock(LockMode::AccessExclusive, p.into.clone()),
            ));
            let mut sql = format!("ALTER TABLE {} ADD CONSTRAINT {con} {def}", p.into);
            if let Some(c) = &idx.comment {
                sql.push_str(&format!(
                    "; COMMENT ON INDEX {name} IS {}",
                    quote_literal(c)
                ));
            }
            rebuild.push(Action::Sql(
                Step::new(format!("add constraint {con} of {} again", p.into), sql)
                    .lock(LockMode::AccessExclusive, p.into.clone())
                    .hazard(Hazard::BuildsIndex),
            ));
        }
        for idx in p
            .target
            .indexes
            .iter()
            .filter(|x| x.constraint.is_none() && x.plain)
        {
            // Read for every large table (`index_definitions`); an index dropped since is not
            // rebuilt.
            let Some(mut sql) = idx.definition.clone() else {
                continue;
            };
            let name = qualified(&p.target.schema, &idx.name);
            actions.push(Action::Sql(
                Step::new(
                    format!("drop index {name} for the load (rebuilt after it)"),
                    format!("DROP INDEX {name}"),
                )
                .lock(LockMode::AccessExclusive, p.into.clone()),
            ));
            if let Some(c) = &idx.comment {
                sql.push_str(&format!(
                    "; COMMENT ON INDEX {name} IS {}",
                    quote_literal(c)
                ));
            }
            rebuild.push(Action::Sql(
                Step::new(format!("rebuild index {name}"), sql)
                    .lock(LockMode::AccessExclusive, p.into.clone())
                    .hazard(Hazard::BuildsIndex),
            ));
        }
    }
    // Load, parents first.
    for (n, &i) in order.iter().enumerate() {
        let p = &plans[i];
        match &p.strategy {
            Strategy::Truncate | Strategy::DeleteAll => actions.push(whole_copy(p, i)),
            Strategy::Merge { update, .. } => {
                let cols = p.column_list();
                let copy_out = copy::copy_out_sql(&p.source_select(None), p.format);
                let label = p.display.clone();
                let tmp = quote_ident(&format!("pgflip_load_{n}"));
                actions.push(Action::Sql(Step::new(
                    format!("create a temporary table for the source rows of {label}"),
                    format!(
                        "CREATE TEMP TABLE {tmp} ON COMMIT DROP AS SELECT {cols} FROM {} WITH NO DATA",
                        p.into
                    ),
                )));
                let copy_in = copy::copy_in_sql(&tmp, &cols, p.format);
                actions.push(Action::Copy {
                    table: i,
                    what: label.clone(),
                    step: Step::new(
                        format!("copy the rows of {label} from the source into {tmp}"),
                        format!("{copy_in}  -- rows from the source: {copy_out}"),
                    ),
                    copy_out,
                    copy_in,
                });
                let (pk, non_key) = p.key_and_other_columns();
                let conflict = if *update {
                    on_conflict_update(&non_key)
                } else {
                    "DO NOTHING".to_string()
                };
                actions.push(Action::Sql(
                    Step::new(
                        if *update {
                            format!("insert new and update changed rows of {label}")
                        } else {
                            format!("insert the rows of {label} whose key the target lacks")
                        },
                        format!(
                            "INSERT INTO {} AS t ({cols}){} SELECT {cols} FROM {tmp} ON CONFLICT ({}) {conflict}",
                            p.into,
                            p.overriding(),
                            pk.join(", ")
                        ),
                    )
                    .lock(LockMode::RowExclusive, p.into.clone()),
                ));
            }
            Strategy::Staging => unreachable!("staging units are the staging module's"),
        }
    }

    actions.extend(rebuild);

    // Merges: check references from outside, then delete what the source lacks, children first.
    for (n, &i) in order.iter().enumerate().rev() {
        let p = &plans[i];
        let Strategy::Merge { delete, .. } = &p.strategy else {
            continue;
        };
        if *delete == MergeDelete::None {
            continue;
        }
        let tmp = quote_ident(&format!("pgflip_load_{n}"));
        let cond = match delete {
            MergeDelete::MissingWhere(f) => format!("({f}) AND "),
            _ => String::new(),
        };
        let pk_match: Vec<String> = p
            .target
            .primary_key
            .iter()
            .map(|k| format!("n.{0} = o.{0}", quote_ident(k)))
            .collect();
        let doomed = format!(
            "{cond}NOT EXISTS (SELECT 1 FROM {tmp} n WHERE {})",
            pk_match.join(" AND ")
        );
        if !opts.disable_integrity {
            for fk in &p.external_refs {
                if opts.defer_constraints && fk.on_delete == "a" {
                    continue; // deferred: checked at the end of the transaction
                }
                let sql = crate::flip::fkcheck::orphan_count_sql(
                    &fk.from,
                    &fk.from_columns,
                    &fk.to_columns,
                    &only(&p.target.kind, &p.into),
                    &doomed,
                );
                actions.push(Action::Check {
                    step: Step::new(
                        format!(
                            "check that no row of {} loses the row of {} it references",
                            fk.from, p.display
                        ),
                        sql,
                    ),
                    message: format!(
                        "{} is referenced by {} (constraint {}): {{n}} row(s) of {} reference \
                         rows of {} that the source does not have. Sync {} too, or use \
                         --defer-constraints (still checked at commit) or --disable-integrity",
                        p.display,
                        fk.from,
                        quote_ident(&fk.name),
                        fk.from,
                        p.display,
                        fk.from
                    ),
                });
            }
        }
        actions.push(Action::Sql(
            Step::new(
                format!(
                    "delete the rows of {} that the source does not have",
                    p.display
                ),
                format!(
                    "DELETE FROM {} o WHERE {doomed}",
                    only(&p.target.kind, &p.into)
                ),
            )
            .lock(LockMode::RowExclusive, p.into.clone())
            .hazard(Hazard::DeletesData),
        ));
    }
}
