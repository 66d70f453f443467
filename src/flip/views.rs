//! Dependent views over the flipped relations. A plain view that reads a retired relation is
//! re-pointed in place (`CREATE OR REPLACE VIEW` with its own definition: its OID, owner, grants
//! and comments stay, and what reads it needs nothing); materialized views, and whatever reads
//! one, are dropped before the moves and created again after them.

use std::collections::{BTreeMap, BTreeSet};

use crate::ident::{quote_ident, quote_literal, QuotedName};
use crate::plan::{Hazard, LockMode, Plan, Step};

use super::acl::{acl_sql, column_acl_sql};
use super::check::job_view;
use super::dependents::{self, Inventory};
use super::render::{mode_of, Ctx};
use super::FlipOptions;

/// What the flip does with a dependent view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewAction {
    /// Dropped before the moves and created again after them: materialized views (their rows
    /// must come from green), and whatever reads one of those.
    Recreate,
    /// A plain view that reads a retired relation directly: `CREATE OR REPLACE VIEW` with the
    /// same definition points it at the new relation and keeps its OID, owner, grants and
    /// comments (and what reads it).
    Replace,
    /// A plain view that reads only views replaced in place: it keeps reading them by OID and
    /// needs nothing, not even a lock.
    Keep,
}

/// The action for each dependent view (`inv.views` is ordered shallowest first, and a view is
/// always deeper than what it reads).
pub fn view_actions(
    inv: &Inventory,
    live: &BTreeSet<u32>,
    opts: &FlipOptions,
) -> BTreeMap<u32, ViewAction> {
    let mut out = BTreeMap::new();
    for v in &inv.views {
        // The job's own views ([`FlipOptions::job_views`]) are dropped here and re-created by
        // the job, from their new definitions.
        let job = job_view(inv, opts, v.rel.oid);
        let reads_recreated = v
            .reads
            .iter()
            .any(|o| out.get(o) == Some(&ViewAction::Recreate));
        let a = if v.rel.relkind == "m" || reads_recreated || job {
            ViewAction::Recreate
        } else if v.reads.iter().any(|o| live.contains(o)) {
            ViewAction::Replace
        } else {
            ViewAction::Keep
        };
        out.insert(v.rel.oid, a);
    }
    out
}

/// The dependent views a flip changes (not [`ViewAction::Keep`]), deepest first.
pub fn changed_deepest_first<'a>(
    inv: &'a Inventory,
    actions: &BTreeMap<u32, ViewAction>,
) -> Vec<&'a dependents::View> {
    let mut out: Vec<&dependents::View> = inv
        .views
        .iter()
        .filter(|v| actions[&v.rel.oid] != ViewAction::Keep)
        .collect();
    out.sort_by_key(|v| (std::cmp::Reverse(v.depth), v.rel.oid));
    out
}

/// Drops what is re-created (deepest first), before the moves.
pub fn push_drops(c: &Ctx, plan: &mut Plan) {
    let inv = c.inv;
    let actions = view_actions(inv, &c.live_set, c.opts);
    let action = |v: &dependents::View| actions[&v.rel.oid];
    let views_desc = changed_deepest_first(inv, &actions);
    for v in views_desc
        .iter()
        .filter(|v| action(v) == ViewAction::Recreate)
    {
        let q = QuotedName::qualified(&v.rel.schema, &v.rel.name);
        plan.push(
            Step::new(
                format!(
                    "drop {} {q} (re-created over the new table below)",
                    mode_of(&v.rel).to_lowercase()
                ),
                format!("DROP {} {q}", mode_of(&v.rel)),
            )
            .lock(LockMode::AccessExclusive, q.clone()),
        );
    }
}

/// Re-points or re-creates the dependent views over the new relations, shallowest first.
/// (Not the job's own views: the job re-creates them itself.)
pub fn push_re_creates(c: &Ctx, plan: &mut Plan) {
    let inv = c.inv;
    let actions = view_actions(inv, &c.live_set, c.opts);
    let action = |v: &dependents::View| actions[&v.rel.oid];
    // ---- Re-point or re-create dependent views over the new tables, shallowest first.
    for v in inv
        .views
        .iter()
        .filter(|v| !job_view(inv, c.opts, v.rel.oid))
    {
        let q = QuotedName::qualified(&v.rel.schema, &v.rel.name);
        let kw = mode_of(&v.rel);
        // (The options go with the definition: CREATE OR REPLACE sets exactly the ones given.)
        let with = if v.rel.reloptions.is_empty() {
            String::new()
        } else {
            format!(" WITH ({})", v.rel.reloptions.join(", "))
        };
        match action(v) {
            ViewAction::Keep => continue,
            ViewAction::Replace => {
                plan.push(
                    Step::new(
                        format!("re-point view {q} at the new table(s) (same definition; owner, grants and comments stay)"),
                        format!("CREATE OR REPLACE VIEW {q}{with} AS {}", v.def),
                    )
                    .lock(LockMode::AccessExclusive, q.clone()),
                );
                continue;
            }
            ViewAction::Recreate => {}
        }
        let mut sql = if v.rel.relkind == "m" {
            format!(
                "CREATE MATERIALIZED VIEW {q}{with} AS {} WITH {}DATA",
                v.def,
                if v.rel.populated { "" } else { "NO " }
            )
        } else {
            format!("CREATE VIEW {q}{with} AS {}", v.def)
        };
        sql.push_str(&format!(
            "; ALTER {kw} {q} OWNER TO {}",
            quote_ident(&v.rel.owner)
        ));
        for s in acl_sql("TABLE", q.as_str(), &v.rel.owner, &None, &v.rel.acl) {
            sql.push_str(&format!("; {s}"));
        }
        let mut column_acl: std::collections::BTreeMap<&str, Vec<_>> = Default::default();
        for (col, a) in &v.column_acl {
            column_acl.entry(col).or_default().push(a.clone());
        }
        for (col, acl) in column_acl {
            for s in column_acl_sql(q.as_str(), col, &[], &acl) {
                sql.push_str(&format!("; {s}"));
            }
        }
        if let Some(c) = &v.rel.comment {
            sql.push_str(&format!("; COMMENT ON {kw} {q} IS {}", quote_literal(c)));
        }
        for (col, c) in &v.column_comments {
            sql.push_str(&format!(
                "; COMMENT ON COLUMN {q}.{} IS {}",
                quote_ident(col),
                quote_literal(c)
            ));
        }
        for i in &v.indexes {
            sql.push_str(&format!("; {}", i.def));
        }
        let mut step = Step::new(
            format!("re-create {} {q} over the new table(s)", kw.to_lowercase()),
            sql,
        )
        .lock(LockMode::AccessExclusive, q.clone());
        if v.rel.relkind == "m" && v.rel.populated {
            step = step.hazard(Hazard::ReplacesData);
        }
        plan.push(step);
    }
}
