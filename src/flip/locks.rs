//! The flip's locks and catalog checks, in the order they are taken: green first (when work is
//! done on it before the live relations are locked), then the dependent views, deepest first
//! (the application locks a view before the tables under it, so taking them in that order
//! cannot deadlock with it), then every table by OID; then the check that the catalog is still
//! what the plan was made from.

use std::collections::{BTreeMap, BTreeSet};

use crate::ident::{quote_literal, QuotedName};
use crate::plan::{LockMode, Plan, Step};

use super::dependents;
use super::render::{mode_of, Ctx};
use super::views::{view_actions, ViewAction};
use super::CATALOG_CHANGED;

/// Where the locking part of the plan ends, and what it locks.
pub struct Locks {
    /// Steps before the live relations are locked (green locked, checked, prepared).
    pub prep_end: usize,
    /// Steps up to the catalog check: the locks are held after them.
    pub locks_end: usize,
    /// Relations the live locks take, in lock order (after green, when it is prepared first).
    pub lock_oids: Vec<u32>,
    /// Tables locked, whatever the mode.
    pub tables: Vec<u32>,
    pub fingerprint_oids: Vec<u32>,
}

/// A statement that fails with [`CATALOG_CHANGED`] when the fingerprint `sql` computes is not
/// `expected`.
fn catalog_check(sql: &str, expected: &str) -> String {
    format!(
        "DO $pgflip$ BEGIN IF ({sql}) IS DISTINCT FROM {} THEN RAISE EXCEPTION 'pgflip: the tables or their dependents changed while the flip was being prepared' USING ERRCODE = '{CATALOG_CHANGED}'; END IF; END $pgflip$",
        quote_literal(expected)
    )
}

/// Pushes the locks and checks onto `plan`: `first` (what needs no lock of the flip's
/// relations), then green's lock, check and `carried` (what is set on green before the live
/// relations are locked), when there is any; then the rest.
pub fn push(c: &Ctx, plan: &mut Plan, first: Vec<Step>, carried: Vec<Step>) -> Locks {
    let (inv, one, live_set, green_set, flipped) =
        (c.inv, c.one, &c.live_set, &c.green_set, &c.flipped);
    let name_of = |oid: u32| c.name_of(oid);
    for s in first {
        plan.push(s);
    }
    // ---- Before the live relations are locked (same transaction): lock green, check that it
    // is as planned, and set on it what concerns only itself. The application does not use
    // green, so none of this makes it wait.
    let early_green: BTreeSet<u32> = if carried.is_empty() {
        BTreeSet::new()
    } else {
        green_set.clone()
    };
    for &oid in &early_green {
        if inv.rels.get(&oid).is_some_and(|r| r.relkind == "m") {
            continue; // (its first ALTER below takes the lock)
        }
        let q = name_of(oid);
        plan.push(
            Step::new(
                format!("lock {q} (green, brought in by the flip; prepared before the live relations are locked)"),
                format!("LOCK TABLE {q} IN ACCESS EXCLUSIVE MODE"),
            )
            .lock(LockMode::AccessExclusive, q.clone()),
        );
    }
    if !early_green.is_empty() {
        let green_oids: Vec<u32> = early_green.iter().copied().collect();
        plan.push(Step::new(
            "check that green did not change since the plan was made",
            catalog_check(
                &dependents::fingerprint_sql(&dependents::green_part(inv, &green_oids), false),
                &inv.fingerprint_green,
            ),
        ));
    }
    for s in carried {
        plan.push(s);
    }
    let prep_end = plan.steps.len();

    // ---- Locks: dependent views first (the application locks a view before the tables under
    // it, so taking them in that order cannot deadlock with it), then every table by OID.
    let mut lock_oids = Vec::new();
    let actions = view_actions(inv, live_set, c.opts);
    let action = |v: &dependents::View| actions[&v.rel.oid];
    // Views kept as they are need no lock: nothing about them changes.
    let mut views_desc: Vec<&dependents::View> = inv
        .views
        .iter()
        .filter(|v| action(v) != ViewAction::Keep)
        .collect();
    views_desc.sort_by_key(|v| (std::cmp::Reverse(v.depth), v.rel.oid));
    // (Materialized views cannot be named in LOCK TABLE, and a query of one never reaches the
    // tables under it, so their DROP takes their lock in order.)
    // (relation, mode, why), in lock order: consecutive ones of one mode are taken by one
    // statement (it locks them in the order named), which costs the locked transaction less
    // than one statement each.
    let mut locks: Vec<(QuotedName, LockMode, String)> = Vec::new();
    for v in views_desc.iter().filter(|v| v.rel.relkind == "v") {
        locks.push((
            QuotedName::qualified(&v.rel.schema, &v.rel.name),
            LockMode::AccessExclusive,
            format!(
                "{}: it reads a flipped table and is {}",
                mode_of(&v.rel).to_lowercase(),
                if action(v) == ViewAction::Replace {
                    "re-pointed"
                } else {
                    "re-created"
                }
            ),
        ));
        lock_oids.push(v.rel.oid);
    }
    // Tables: flipped ones and holders of inbound foreign keys need ACCESS EXCLUSIVE; tables
    // that flipped ones reference need SHARE ROW EXCLUSIVE (their FK triggers change).
    let mut table_modes: BTreeMap<u32, LockMode> = BTreeMap::new();
    for &o in flipped {
        table_modes.insert(o, LockMode::AccessExclusive);
    }
    for c in inv.inbound_fks(live_set) {
        table_modes.insert(c.rel, LockMode::AccessExclusive);
    }
    for c in inv.constraints.iter().filter(|c| c.contype == "f") {
        if flipped.contains(&c.rel) && !flipped.contains(&c.ref_rel) {
            table_modes
                .entry(c.ref_rel)
                .or_insert(LockMode::ShareRowExclusive);
        }
    }
    for (&oid, &mode) in table_modes.iter().filter(|(o, _)| !early_green.contains(o)) {
        if inv.rels.get(&oid).is_some_and(|r| r.relkind == "m") || one.is_matview(oid) {
            // A flipped materialized view: LOCK TABLE cannot name one; its ALTER below takes
            // the ACCESS EXCLUSIVE lock, in plan order.
            continue;
        }
        let q = name_of(oid);
        let why = if live_set.contains(&oid) {
            "live, retired by the flip"
        } else if green_set.contains(&oid) {
            "green, brought in by the flip"
        } else if mode == LockMode::AccessExclusive {
            "its foreign key to a flipped table is re-pointed"
        } else {
            "a flipped table references it"
        };
        locks.push((q, mode, why.to_string()));
        lock_oids.push(oid);
    }
    for run in locks.chunk_by(|a, b| a.1 == b.1) {
        let mode = run[0].1;
        let names = QuotedName::list(run.iter().map(|l| &l.0));
        let description = match run {
            [(q, _, why)] => format!("lock {q} ({why})"),
            _ => format!(
                "lock {} relations in {} mode: {}",
                run.len(),
                mode.as_sql(),
                run.iter()
                    .map(|(q, _, why)| format!("{q} ({why})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        plan.push(
            Step::new(
                description,
                format!("LOCK TABLE {names} IN {} MODE", mode.as_sql()),
            )
            .lock(mode, names),
        );
    }

    let fingerprint_oids = dependents::fingerprint_oids(inv);
    let check = if early_green.is_empty() {
        catalog_check(
            &dependents::fingerprint_sql(&fingerprint_oids, false),
            &inv.fingerprint,
        )
    } else {
        // Green was checked above and has changed since (by this transaction): the rest.
        let green_oids: Vec<u32> = early_green.iter().copied().collect();
        let green_part = dependents::green_part(inv, &green_oids);
        let rest: Vec<u32> = fingerprint_oids
            .iter()
            .filter(|o| !green_part.contains(o))
            .copied()
            .collect();
        catalog_check(
            &dependents::fingerprint_sql(&rest, true),
            &inv.fingerprint_rest,
        )
    };
    plan.push(Step::new(
        "check that the catalog did not change since the plan was made",
        check,
    ));
    // Fault tests stop a flip here, the locks held and nothing moved yet.
    let locks_end = plan.steps.len();
    Locks {
        prep_end,
        locks_end,
        lock_oids,
        tables: table_modes.keys().copied().collect(),
        fingerprint_oids,
    }
}
