//! What a flip refuses before it takes any lock (naming each object), and what it only warns
//! about.

use crate::error::{Error, Problem, Refusal, Result};
use crate::ident::{qualified, quote_ident};

use super::dependents::{self, Inventory};
use super::{FlipOptions, PlannedRelation};

/// Whether live's serial sequence `s` is handed over to green's column: green's default uses
/// it already, or green has no default and gets live's (which uses it).
pub fn takes_over_sequence(
    live_col: Option<&dependents::Column>,
    green_col: &dependents::Column,
    s: &dependents::OwnedSeq,
) -> bool {
    !s.identity
        && (green_col.default_seqs.contains(&s.seq)
            || (green_col.default_expr.is_none()
                && green_col.identity.is_empty()
                && live_col.is_some_and(|l| l.default_seqs.contains(&s.seq))))
}

/// Refusals (before any lock) and warnings.
pub fn check(inv: &Inventory, rels: &[PlannedRelation], opts: &FlipOptions) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for r in rels {
        for (side, oid, name) in [
            ("live", r.live_oid, &r.live),
            ("green", r.green_oid, &r.green),
        ] {
            let rel = &inv.rels()[&oid];
            if !matches!(rel.relkind.as_str(), "r" | "p" | "m" | "v") {
                problems.push(Problem::new(name.to_string(), format!(
                    "{side} relation {name} is not a table, partitioned table, materialized view or view (relkind '{}')",
                    rel.relkind
                )));
            }
            if rel.partition_or_inherited {
                problems.push(Problem::new(name.to_string(), format!(
                    "{side} table {name} is a partition or part of an inheritance tree (flip its partitioned table instead)"
                )));
            }
        }
        let (lk, gk) = (
            inv.rels()[&r.live_oid].relkind.as_str(),
            inv.rels()[&r.green_oid].relkind.as_str(),
        );
        if (lk == "m") != (gk == "m") || (lk == "v") != (gk == "v") {
            problems.push(Problem::new(r.live.to_string(), format!(
                "live {} and green {} are not the same kind of relation (relkind '{lk}' and '{gk}')",
                r.live, r.green
            )));
        }
        let live_cols: Vec<_> = inv.columns_of(r.live_oid).collect();
        let green_cols: Vec<_> = inv.columns_of(r.green_oid).collect();
        let find = |n: &str| green_cols.iter().find(|c| c.name == n);
        for u in inv
            .used_columns
            .iter()
            .filter(|u| u.rel == r.live_oid && !job_view(inv, opts, u.view))
        {
            let lc = live_cols.iter().find(|c| c.name == u.column);
            match (lc, find(&u.column)) {
                (Some(_), None) => problems.push(Problem::new(
                    u.user.clone(),
                    format!(
                        "{} uses column {} of {}, which green {} does not have",
                        u.user,
                        quote_ident(&u.column),
                        r.live,
                        r.green
                    ),
                )),
                (Some(l), Some(g)) if l.typ != g.typ || l.collation != g.collation => problems
                    .push(Problem::new(
                        u.user.clone(),
                        format!(
                            "{} uses column {} of {} ({}), which is {} in green {}",
                            u.user,
                            quote_ident(&u.column),
                            r.live,
                            l.typ,
                            g.typ,
                            r.green
                        ),
                    )),
                _ => {}
            }
        }
        // Indexes cannot be carried over cheaply: building one under the flip's lock would
        // block the application for the whole build. Green must have them already.
        let green_idx: Vec<_> = inv.indexes_of(r.green_oid).collect();
        for li in inv.indexes_of(r.live_oid) {
            let shape = index_shape(&li.def, &li.name);
            if !green_idx
                .iter()
                .any(|gi| index_shape(&gi.def, &gi.name) == shape)
            {
                let msg = format!(
                    "green {} lacks index {} of {} ({})",
                    r.green,
                    quote_ident(&li.name),
                    r.live,
                    li.def
                );
                if opts.allow_column_changes {
                    // A migration or a rollback: the structures may differ on purpose.
                    warnings.push(format!("{msg}; it stays with the retired table"));
                } else {
                    problems.push(Problem::new(
                        r.green.to_string(),
                        format!(
                        "{msg}; build it on green first (CREATE INDEX CONCURRENTLY): building it \
                         under the flip's lock would block the application"
                    ),
                    ));
                }
            }
        }
        if !opts.allow_column_changes {
            let shape = |c: &dependents::Column| {
                format!(
                    "{} {}{}{}{}",
                    quote_ident(&c.name),
                    c.typ,
                    c.collation
                        .as_ref()
                        .map(|x| format!(" COLLATE {x}"))
                        .unwrap_or_default(),
                    match c.identity.as_str() {
                        "a" => " GENERATED ALWAYS AS IDENTITY",
                        "d" => " GENERATED BY DEFAULT AS IDENTITY",
                        _ => "",
                    },
                    if c.generated == "s" { " GENERATED" } else { "" }
                )
            };
            let l: Vec<String> = live_cols.iter().map(|c| shape(c)).collect();
            let g: Vec<String> = green_cols.iter().map(|c| shape(c)).collect();
            if l != g {
                problems.push(Problem::new(
                    r.green.to_string(),
                    format!(
                    "green {} does not have the columns of live {}: live has ({}), green has ({})",
                    r.green,
                    r.live,
                    l.join(", "),
                    g.join(", ")
                ),
                ));
            }
        }
        for s in inv.sequences_of(r.live_oid) {
            let green_col = green_cols.iter().find(|c| c.name == s.column);
            let live_col = live_cols.iter().find(|c| c.name == s.column);
            let handled = match green_col {
                Some(gc) => {
                    takes_over_sequence(live_col.copied(), gc, s)
                        || inv
                            .sequences_of(r.green_oid)
                            .any(|gs| gs.column == s.column)
                }
                None => false,
            };
            if !handled {
                warnings.push(format!(
                    "sequence {} of {}.{} has no counterpart on green {}; it stays with the retired table",
                    qualified(&s.schema, &s.name),
                    r.live,
                    quote_ident(&s.column),
                    r.green
                ));
            }
        }
    }
    for u in &inv.unhandled {
        problems.push(Problem::new(
            u.object.clone(),
            format!("cannot carry over {}{}", u.object, u.why),
        ));
    }
    for v in inv.views.iter().filter(|v| !job_view(inv, opts, v.rel.oid)) {
        if v.rel.relkind == "m" && v.rel.populated {
            warnings.push(format!(
                "materialized view {} is re-created WITH DATA inside the flip: the application waits for its query",
                qualified(&v.rel.schema, &v.rel.name)
            ));
        }
    }
    if problems.is_empty() {
        Ok(warnings)
    } else {
        Err(Error::Refused(Refusal::new(
            "the flip cannot carry everything over (nothing was changed)",
            problems,
        )))
    }
}

/// `oid` is a dependent view that the job re-creates itself ([`FlipOptions::job_views`]).
pub fn job_view(inv: &dependents::Inventory, opts: &FlipOptions, oid: u32) -> bool {
    oid != 0
        && inv.views.iter().any(|v| {
            v.rel.oid == oid
                && opts
                    .job_views
                    .iter()
                    .any(|q| q.schema == v.rel.schema && q.name == v.rel.name)
        })
}

/// `CREATE UNIQUE INDEX name ON schema.t USING btree (id)` without its name and table, to
/// match green's indexes with live's.
pub fn index_shape(def: &str, name: &str) -> String {
    let marker = format!("INDEX {} ON ", quote_ident(name));
    match def.find(&marker) {
        Some(i) => {
            let rest = &def[i + marker.len()..];
            let after_table = rest.find(" USING ").map(|j| &rest[j..]).unwrap_or(rest);
            format!("{}INDEX{}", &def[..i], after_table)
        }
        None => def.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_shapes_ignore_name_and_table() {
        let a = index_shape(
            "CREATE UNIQUE INDEX t_pkey ON public.t USING btree (id)",
            "t_pkey",
        );
        let b = index_shape(
            "CREATE UNIQUE INDEX t_staging_pkey ON public.t_staging USING btree (id)",
            "t_staging_pkey",
        );
        assert_eq!(a, b);
        let c = index_shape(
            "CREATE INDEX \"Odd Name\" ON \"My Schema\".\"T\" USING btree (a) WHERE (a > 0)",
            "Odd Name",
        );
        assert_eq!(c, "CREATE INDEX USING btree (a) WHERE (a > 0)");
        assert_ne!(a, c);
    }
}
