//! Renders a checked flip as a [`Plan`], section by section, in the order it runs:
//! 1. the generation's schema, which needs no lock of the flip's relations;
//! 2. green locked, checked and prepared, when there is work to do on it ([`locks`]);
//! 3. the live relations' locks and the catalog check ([`locks`]);
//! 4. the job's statements (and a schema swap), the views to re-create dropped ([`views`]) and
//!    the inbound foreign keys detached;
//! 5. per pair, the moves and what follows the table ([`carry`]);
//! 6. relations retired or brought in alone ([`super::onesided`]), the views re-pointed or
//!    re-created ([`views`]), the inbound foreign keys re-attached, the job's statements;
//! 7. the generation record, then the steps after the commit ([`record`]).
//!
//! Steps 1 and 2 run in the flip's transaction before the live relations are locked: the
//! application waits only for 3 to 7.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::ident::{quote_ident, quote_literal, QuotedName};
use crate::plan::{LockMode, Plan, Step};

use super::carry::Pair;
use super::dependents::{self, Inventory, Rel};
use super::{locks, onesided, record, views};
use super::{FlipKind, FlipOptions, FlipPlan, PlannedRelation};

/// What every section of the rendering reads.
pub struct Ctx<'a> {
    pub inv: &'a Inventory,
    pub one: &'a onesided::OneSided,
    pub relations: &'a [PlannedRelation],
    pub kind: FlipKind,
    pub opts: &'a FlipOptions,
    pub label: &'a str,
    pub backup_schema: &'a str,
    /// The generation's schema, quoted.
    pub bk: String,
    pub live_set: BTreeSet<u32>,
    pub green_set: BTreeSet<u32>,
    /// Live, green and one-sided relations: keys between them stay as they are.
    pub flipped: BTreeSet<u32>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        inv: &'a Inventory,
        one: &'a onesided::OneSided,
        relations: &'a [PlannedRelation],
        kind: FlipKind,
        opts: &'a FlipOptions,
        label: &'a str,
        backup_schema: &'a str,
    ) -> Ctx<'a> {
        let live_set: BTreeSet<u32> = relations.iter().map(|r| r.live_oid).collect();
        let green_set: BTreeSet<u32> = relations.iter().map(|r| r.green_oid).collect();
        let flipped = live_set
            .union(&green_set)
            .copied()
            .chain(one.oids())
            .collect();
        Ctx {
            inv,
            one,
            relations,
            kind,
            opts,
            label,
            backup_schema,
            bk: quote_ident(backup_schema),
            live_set,
            green_set,
            flipped,
        }
    }

    /// The quoted name of a relation of the flip.
    pub fn name_of(&self, oid: u32) -> QuotedName {
        self.inv
            .rels()
            .get(&oid)
            .map(|r| QuotedName::qualified(&r.schema, &r.name))
            .or_else(|| self.one.name_of(oid))
            .unwrap_or_else(|| QuotedName::ident(&format!("relation {oid}")))
    }
}

/// The keyword `ALTER` / `DROP` / `COMMENT ON` need for a relation.
pub fn mode_of(rel: &Rel) -> &'static str {
    match rel.relkind.as_str() {
        "m" => "MATERIALIZED VIEW",
        "v" => "VIEW",
        _ => "TABLE",
    }
}

/// Whether what concerns only green (owner, grants, comments, triggers, policies, storage
/// parameters, replica identity, defaults, per-table constraint names) is set on green before
/// the live relations are locked, in the same transaction, so that the application waits only
/// for the moves. Not for a migration: until its flip, the application's own transactions
/// write green through the capture triggers, and locking green first could deadlock with
/// them. Not for green pipelines (their relations are built and checked by their own job).
pub fn carried_early(kind: FlipKind) -> bool {
    matches!(kind, FlipKind::Sync | FlipKind::Rollback)
}

/// The whole plan of a checked flip.
pub fn render(c: &Ctx, created_at: DateTime<Utc>, mut warnings: Vec<String>) -> FlipPlan {
    let (inv, one, kind, opts) = (c.inv, c.one, c.kind, c.opts);
    let (label, backup_schema, bk) = (c.label, c.backup_schema, &c.bk);
    let mut plan = Plan::new(format!(
        "flip {} relation(s) ({}), generation {label}",
        c.relations.len(),
        kind.as_str()
    ));

    // Per pair, first: what is set on green before the locks must be known to lock green first.
    let mut validate_later: Vec<(QuotedName, String)> = Vec::new();
    let mut pair_steps: Vec<Step> = Vec::new();
    let mut carried: Vec<Step> = Vec::new();
    for r in c.relations {
        let p = Pair::render(c, r);
        pair_steps.extend(p.steps);
        carried.extend(p.before);
        validate_later.extend(p.validate_later);
        warnings.extend(p.warnings);
    }

    // A table retired alone keeps its keys: it and what it references leave together.
    let retired_alone: BTreeSet<u32> = one.retire.iter().map(|(_, o)| *o).collect();
    let inbound: Vec<&dependents::Constraint> = inv
        .inbound_fks(&c.live_set)
        .filter(|k| !retired_alone.contains(&k.rel))
        .collect();
    for k in inbound.iter().filter(|k| k.validated) {
        validate_later.push((c.name_of(k.rel), k.name.clone()));
    }

    // ---- Before the live relations are locked, in the same transaction: the generation's
    // schema, new and empty until the moves. (Not the generation record: its id comes from a
    // sequence, which a flip that does not get its locks must leave as it was.)
    let comment = quote_literal(&format!(
        "pgflip generation {label}: relations retired by a {} flip",
        kind.as_str()
    ));
    let mut first = Vec::new();
    if opts.schema_swap.is_none() {
        first.push(Step::new(
            format!("create the generation's schema {backup_schema} (before the live relations are locked: it is empty until the moves)"),
            format!("CREATE SCHEMA {bk}; COMMENT ON SCHEMA {bk} IS {comment}"),
        ));
    }

    let locks = locks::push(c, &mut plan, first, carried);
    for sql in &opts.in_flip_before {
        plan.push(Step::new(
            "the job's statement before the moves (under the flip's locks)",
            sql.clone(),
        ));
    }
    // One rename per schema retires every live relation and brings every green one in.
    if let Some((live, green)) = &opts.schema_swap {
        plan.push(Step::new(
            format!(
                "swap whole schemas: {} becomes the generation's schema {backup_schema}, {} takes its name (catalog only)",
                quote_ident(live),
                quote_ident(green)
            ),
            format!(
                "ALTER SCHEMA {l} RENAME TO {bk}; ALTER SCHEMA {g} RENAME TO {l}; COMMENT ON SCHEMA {bk} IS {comment}",
                l = quote_ident(live),
                g = quote_ident(green)
            ),
        ));
    }

    // ---- Drop what is re-created: dependent views (deepest first) and inbound FKs.
    views::push_drops(c, &mut plan);
    for k in &inbound {
        let t = c.name_of(k.rel);
        plan.push(
            Step::new(
                format!(
                    "detach foreign key {} of {t} from the table being retired",
                    quote_ident(&k.name)
                ),
                format!("ALTER TABLE {t} DROP CONSTRAINT {}", quote_ident(&k.name)),
            )
            .lock(LockMode::AccessExclusive, t.clone()),
        );
    }

    for s in pair_steps {
        plan.push(s);
    }

    // ---- Tables retired or brought in alone: a schema move each.
    for (d, sql) in one.moves_sql(bk, opts.schema_swap.as_ref()) {
        plan.push(Step::new(d, sql));
    }

    views::push_re_creates(c, &mut plan);

    // ---- Re-attach other tables' foreign keys to the new tables.
    for k in &inbound {
        let t = c.name_of(k.rel);
        plan.push(
            Step::new(
                format!(
                    "re-attach foreign key {} of {t} to the new table (NOT VALID, validated after the commit)",
                    quote_ident(&k.name)
                ),
                format!(
                    "ALTER TABLE {t} ADD CONSTRAINT {} {} NOT VALID",
                    quote_ident(&k.name),
                    k.def.trim_end_matches(" NOT VALID")
                ),
            )
            .lock(LockMode::AccessExclusive, t.clone()),
        );
    }

    for sql in &opts.in_flip_after {
        plan.push(Step::new(
            "the job's statement after the moves (under the flip's locks)",
            sql.clone(),
        ));
    }

    plan.push(record::step(c, created_at, &warnings, &validate_later));
    record::push_after_commit(c, &mut plan, &validate_later);

    let mut watched = locks.tables;
    watched.extend(inv.views.iter().map(|v| v.rel.oid));
    watched.extend(inv.partitions().iter().map(|p| p.oid));
    FlipPlan {
        plan,
        kind,
        label: label.to_string(),
        created_at,
        backup_schema: backup_schema.to_string(),
        relations: c.relations.to_vec(),
        warnings,
        lock_oids: locks.lock_oids,
        watched_oids: watched,
        green_oids: c.green_set.iter().copied().collect(),
        fingerprint: inv.fingerprint.clone(),
        fingerprint_oids: locks.fingerprint_oids,
        prep_end: locks.prep_end,
        locks_end: locks.locks_end,
    }
}
