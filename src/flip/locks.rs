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

/// What taking one uncontended lock may cost the server, in microseconds, on top of the
/// `lock_timeout` the lock step is given. Measured on PG 15 (a `DO` block locking N tables and
/// N views, nothing in its way): 0.022–0.045 ms a relation in a fresh session, 0.006–0.010 ms
/// once the session has looked the names up; about twice that on a loaded server. 0.25 ms is
/// over 3× the worst of those: generous enough never to fail a flip that nothing blocks, small
/// enough that a blocked attempt keeps the application waiting little longer than
/// `lock_timeout` (100 relations: 25 ms more).
const LOCK_WORK_PER_RELATION_US: u128 = 250;

/// The lock step's times in milliseconds, for `relations` locks.
struct LockBudget {
    lock_timeout: u128,
    /// How long the step first tries for a moment when none of its locks is held
    /// ([`lock_step`]), out of `lock_timeout`: a quarter of it, at most [`FIRST_TRY_MAX_MS`]
    /// (the gap it looks for is between short queries; past that, queueing is what gets the
    /// locks); 0 for one lock (a cycle needs two).
    first_try: u128,
    /// The server's own work of taking the locks.
    work: u128,
}

impl LockBudget {
    fn new(lock_timeout: std::time::Duration, relations: usize) -> Self {
        let lock_timeout = lock_timeout.as_millis().max(1);
        LockBudget {
            lock_timeout,
            first_try: if relations > 1 {
                (lock_timeout / 4).min(FIRST_TRY_MAX_MS)
            } else {
                0
            },
            work: (relations as u128 * LOCK_WORK_PER_RELATION_US).div_ceil(1000),
        }
    }

    /// The whole step's bound (its `statement_timeout`).
    fn total(&self) -> u128 {
        self.lock_timeout + self.work
    }
}

/// The most the lock step spends trying for a moment none of its locks is held.
const FIRST_TRY_MAX_MS: u128 = 25;

/// The one step that takes the live relations' locks, bounded as a whole by `lock_timeout`
/// (plus the locks' own work, below).
///
/// `lock_timeout` bounds each lock wait, not the step: a `LOCK` that waits for three relations
/// held by three short transactions one after the other can wait almost three times as long,
/// while the application's statements on the relations already locked queue behind it (a swap
/// held its locks 337 ms under a 100 ms lock timeout). So the statements run in one `DO`
/// block (a `statement_timeout` bounds each statement of a query string, so several `LOCK`
/// statements would each get the whole budget) under `statement_timeout` = the budget, and
/// the block turns its own timeout into `lock_not_available`, what a lock timeout raises: the
/// guard retries it like any lock timeout, while a `statement_timeout` later in the
/// transaction stays what it is. A cancel that arrives before the budget is spent cannot be
/// the timeout (the application's, an operator's, the user's Ctrl-C): it is raised again as
/// the cancel it is. Consecutive locks of one mode are one statement (it locks them in the
/// order named), which costs the locked transaction less than one statement each.
///
/// The budget is `lock_timeout` plus [`LOCK_WORK_PER_RELATION_US`] for each relation named: a
/// `statement_timeout` counts the server's own work of taking the locks (looking each name up,
/// the lock table), not only the waiting, and that work grows with the number of relations. A
/// budget of `lock_timeout` alone would let a flip of ~1,000 relations under the default 100
/// ms, or a small `--lock-timeout`, or a loaded server, time out with nothing in its way, on
/// every attempt until `max_wait`.
///
/// The block ends with `pg_sleep(0)`, which checks for interrupts: an uncontended `LOCK`
/// never does, so a timeout that fires while the last one does its work would otherwise be
/// raised only after the block, past its handler, as a bare `statement_timeout` the guard
/// does not retry (seen on PG 15: one `LOCK` of 1,000 tables under a 10 ms budget).
///
/// `LOCK TABLE` cannot name a materialized view. One is locked by `ALTER MATERIALIZED VIEW …
/// OWNER TO` its owner: that takes ACCESS EXCLUSIVE and, the owner being the same, changes
/// nothing (the server treats it as done, for dump restores). Taken here with the rest rather
/// than by the flip's first `ALTER` of it, several statements later: between those statements a
/// query that names a flipped materialized view and a locked view (in the other order) would
/// take the one and wait for the other, while the flip waits for the one — a deadlock on every
/// attempt while such queries run in a loop (seen with four readers of a four-view pipeline).
/// An owner changed since the plan is caught by the catalog check after the locks.
///
/// No order of several locks is safe from the application: a query takes its relations'
/// locks in the order it names them. While the flip waits in the queue for its first lock, a
/// query that starts takes the relations the flip has not asked for yet, then queues behind
/// the flip for the first one; when the flip gets that one it waits for those, and each waits
/// for the other until `lock_timeout` ends the attempt. Queries that join the flipped
/// relations in another order, arriving more often than the flip's first wait lasts, made
/// every attempt end that way (a green pipeline under four readers: 23 attempts in 30 s). So
/// with two or more locks the step first tries, for a quarter of `lock_timeout` (at most
/// [`FIRST_TRY_MAX_MS`]), to take them all at a moment none is held: each lock waits at most
/// 1 ms, a failed try releases what it took (its subtransaction) and the next begins after a
/// random pause under 2 ms. The application waits about a millisecond for a try at most. Then
/// the step queues for them as before, each under `lock_timeout`, within the same budget.
fn lock_step(locks: &[RelationLock], opts: &super::FlipOptions) -> Step {
    let b = LockBudget::new(opts.lock_timeout, locks.len());
    let (lock_timeout, first_try, budget) = (b.lock_timeout, b.first_try, b.total());
    let mut statements = String::new();
    let mut described = Vec::new();
    for run in locks.chunk_by(|a, b| a.mode == b.mode && a.owner.is_none() && b.owner.is_none()) {
        let mode = run[0].mode;
        match &run[0].owner {
            Some(owner) => statements.push_str(&format!(
                "ALTER MATERIALIZED VIEW {} OWNER TO {};\n",
                run[0].name,
                crate::ident::quote_ident(owner)
            )),
            None => {
                let names = QuotedName::list(run.iter().map(|l| &l.name));
                // One statement a line: the dry run reads as the plain LOCK statements it runs.
                statements.push_str(&format!("LOCK TABLE {names} IN {} MODE;\n", mode.as_sql()));
            }
        }
        described.extend(
            run.iter()
                .map(|l| format!("{} in {} mode ({})", l.name, l.mode.as_sql(), l.why)),
        );
    }
    // The first tries (statements, and what the description says of them).
    let (first, tries) = if first_try > 0 {
        (
            format!(
                "PERFORM pg_catalog.set_config('lock_timeout', '1ms', true);\n\
                 LOOP\n\
                 BEGIN\n\
                 {statements}\
                 PERFORM pg_catalog.set_config('lock_timeout', queued, true);\n\
                 PERFORM pg_catalog.pg_sleep(0);\n\
                 RETURN;\n\
                 EXCEPTION WHEN lock_not_available THEN\n\
                 EXIT WHEN pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp() >= interval '{first_try} milliseconds';\n\
                 PERFORM pg_catalog.pg_sleep(0.002 * pg_catalog.random());\n\
                 END;\n\
                 END LOOP;\n\
                 PERFORM pg_catalog.set_config('lock_timeout', queued, true);\n"
            ),
            format!(", the first {first_try} ms trying for a moment none is held"),
        )
    } else {
        (String::new(), String::new())
    };
    let within = format!(
        "within {budget} ms (lock_timeout {lock_timeout} ms + {} ms for taking {} lock(s){tries})",
        b.work,
        locks.len()
    );
    let sql = format!(
        "SET LOCAL statement_timeout = {budget};\n\
         DO $pgflip_locks$ DECLARE queued text := pg_catalog.current_setting('lock_timeout'); BEGIN\n\
         {first}\
         {statements}\
         PERFORM pg_catalog.pg_sleep(0);\n\
         EXCEPTION WHEN query_canceled THEN\n\
         IF pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp() < interval '{budget} milliseconds' THEN RAISE; END IF;\n\
         RAISE EXCEPTION 'pgflip: the flip''s locks were not all granted {}' USING ERRCODE = 'lock_not_available';\n\
         END $pgflip_locks$;\n\
         SET LOCAL statement_timeout = {}",
        within.replace('\'', "''"),
        opts.statement_timeout.as_millis().max(1)
    );
    let description = match described.as_slice() {
        [one] => format!("lock {one}, {within}"),
        _ => format!(
            "lock {} relations, all {within}: {}",
            described.len(),
            described.join(", ")
        ),
    };
    // The strongest mode the step takes, on every relation it names.
    let mode = if locks.iter().any(|l| l.mode == LockMode::AccessExclusive) {
        LockMode::AccessExclusive
    } else {
        locks[0].mode
    };
    Step::new(description, sql).lock(mode, QuotedName::list(locks.iter().map(|l| &l.name)))
}

/// One relation the lock step takes.
struct RelationLock {
    name: QuotedName,
    mode: LockMode,
    why: String,
    /// A materialized view's owner: it is locked by a no-op `OWNER TO` ([`lock_step`]).
    owner: Option<String>,
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
        if inv.rels().get(&oid).is_some_and(|r| r.relkind == "m") {
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
    // (Dependent materialized views are not locked here: a query of one never reaches the
    // tables under it, so their DROP takes their lock in order.)
    // In lock order; taken by one step ([`lock_step`]).
    let mut locks: Vec<RelationLock> = Vec::new();
    for v in views_desc.iter().filter(|v| v.rel.relkind == "v") {
        locks.push(RelationLock {
            name: QuotedName::qualified(&v.rel.schema, &v.rel.name),
            mode: LockMode::AccessExclusive,
            why: format!(
                "{}: it reads a flipped table and is {}",
                mode_of(&v.rel).to_lowercase(),
                if action(v) == ViewAction::Replace {
                    "re-pointed"
                } else {
                    "re-created"
                }
            ),
            owner: None,
        });
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
    for c in inv.outbound_fks(flipped) {
        table_modes
            .entry(c.ref_rel)
            .or_insert(LockMode::ShareRowExclusive);
    }
    for (&oid, &mode) in table_modes.iter().filter(|(o, _)| !early_green.contains(o)) {
        let rel = inv.rels().get(&oid);
        let owner = match rel {
            Some(r) if r.relkind == "m" => Some(r.owner.clone()),
            // A one-sided materialized view (not in the inventory): its ALTER below takes the
            // lock, in plan order.
            _ if one.is_matview(oid) => continue,
            _ => None,
        };
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
        locks.push(RelationLock {
            name: q,
            mode,
            why: why.to_string(),
            owner,
        });
        lock_oids.push(oid);
    }
    if !locks.is_empty() {
        plan.push(lock_step(&locks, c.opts));
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
            .filter(|o| green_part.binary_search(o).is_err())
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
