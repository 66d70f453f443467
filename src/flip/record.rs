//! The generation record, written in the flip's own transaction, and the steps after the
//! commit (validating the constraints added `NOT VALID`, the retired side's row count and
//! checksum).

use crate::ident::{quote_ident, quote_literal, QuotedName};
use crate::plan::{Hazard, LockMode, Plan, Step};

use super::generation;
use super::render::Ctx;
use super::QualifiedName;

/// The generation record, a step of the flip's transaction. `warnings` and `validate_later`
/// ((table, constraint)) go into it.
pub fn step(
    c: &Ctx,
    created_at: chrono::DateTime<chrono::Utc>,
    warnings: &[String],
    validate_later: &[(QuotedName, String)],
) -> Step {
    let (one, opts, kind, relations) = (c.one, c.opts, c.kind, c.relations);
    let (label, backup_schema) = (c.label, c.backup_schema.to_string());
    // ---- The generation record, in the same transaction.
    let details = serde_json::json!({
        "warnings": warnings,
        "lock_timeout_ms": opts.lock_timeout.as_millis() as u64,
        // Which checksums were taken by choice: `verify` says what it can check.
        "checksums": opts.checksums.as_str(),
        // What must be validated after the commit: `verify` checks that it was.
        "validate_after": validate_later
            .iter()
            .map(|(t, c)| serde_json::json!({"table": t.as_str(), "constraint": c}))
            .collect::<Vec<_>>(),
    });
    // One statement: the generation row, then (in data-modifying CTEs of the same statement)
    // one row per relation, the operations the flip ends and, for a rollback, the generation it
    // rolls back. Under the locks every statement costs, so the record costs one, for 500
    // relations as for one.
    let mut rec = format!(
        "WITH g AS (INSERT INTO pgflip.generations (label, created_at, kind, backup_schema, rollback_of, pgflip_version, details) \
         VALUES ({}, {}::timestamptz, {}, {}, {}, {}, {}::jsonb || jsonb_strip_nulls(jsonb_build_object('run_id', \
           pg_catalog.current_setting('pgflip.run_id', true))) \
           || coalesce(nullif(pg_catalog.current_setting('pgflip.generation_details', true), '')::jsonb, '{{}}'::jsonb)) \
         RETURNING id)",
        quote_literal(label),
        quote_literal(&created_at.to_rfc3339()),
        quote_literal(kind.as_str()),
        quote_literal(&backup_schema),
        opts.rollback_of.map(|i| i.to_string()).unwrap_or_else(|| "NULL".into()),
        quote_literal(crate::VERSION),
        quote_literal(&details.to_string()),
    );
    let null = || "NULL".to_string();
    let mut rows: Vec<String> = relations
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "({i}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                quote_literal(&r.live.schema),
                quote_literal(&r.live.name),
                quote_literal(&r.green.schema),
                quote_literal(&r.green.name),
                quote_literal(&r.retired.schema),
                quote_literal(&r.retired.name),
                r.green_rows.map(|n| n.to_string()).unwrap_or_else(null),
                r.green_checksum
                    .as_deref()
                    .map(quote_literal)
                    .unwrap_or_else(null),
                quote_literal(r.checksum_method.as_str()),
            )
        })
        .collect();
    // One-sided relations: an empty green (retired alone) or an empty retired name (brought in
    // alone), so that a rollback knows to do the opposite.
    let sided = one
        .retire
        .iter()
        .map(|(q, _)| {
            (
                q.clone(),
                QualifiedName::new("", ""),
                QualifiedName::new(backup_schema.clone(), q.name.clone()),
            )
        })
        .chain(
            one.bring_in
                .iter()
                .map(|(p, _)| (p.live.clone(), p.green.clone(), QualifiedName::new("", ""))),
        );
    for (i, (live, green, retired)) in sided.enumerate() {
        rows.push(format!(
            "({}, {}, {}, {}, {}, {}, {}, NULL, NULL, 'md5')",
            relations.len() + i,
            quote_literal(&live.schema),
            quote_literal(&live.name),
            quote_literal(&green.schema),
            quote_literal(&green.name),
            quote_literal(&retired.schema),
            quote_literal(&retired.name),
        ));
    }
    if !rows.is_empty() {
        rec.push_str(&format!(
            ", r AS (INSERT INTO pgflip.generation_relations (generation_id, position, live_schema, live_name, green_schema, green_name, \
               retired_schema, retired_name, live_rows, live_checksum, checksum_method) \
             SELECT g.id, v.position, v.live_schema, v.live_name, v.green_schema, v.green_name, v.retired_schema, v.retired_name, \
               v.live_rows::bigint, v.live_checksum::numeric, v.checksum_method \
             FROM g, (VALUES {}) AS v(position, live_schema, live_name, green_schema, green_name, \
               retired_schema, retired_name, live_rows, live_checksum, checksum_method))",
            rows.join(", "),
        ));
    }
    if !relations.is_empty() {
        let greens: Vec<String> = relations
            .iter()
            .map(|r| {
                format!(
                    "({}, {})",
                    quote_literal(&r.green.schema),
                    quote_literal(&r.green.name)
                )
            })
            .collect();
        rec.push_str(&format!(
            ", o AS (DELETE FROM pgflip.operations WHERE (green_schema, green_name) IN ({}))",
            greens.join(", ")
        ));
    }
    if let Some(of) = opts.rollback_of {
        rec.push_str(&format!(
            ", b AS (UPDATE pgflip.generations SET status = 'rolled_back', rolled_back_by = \
               (SELECT id FROM g) WHERE id = {of})"
        ));
    }
    rec.push_str(" SELECT id FROM g");
    Step::new(
        format!("record generation {label} in pgflip.generations (visible once the flip commits)"),
        rec,
    )
}

/// Pushes the steps after the commit: validating what was added `NOT VALID` (`validate_later`),
/// then the retired side's row counts and checksums.
pub fn push_after_commit(c: &Ctx, plan: &mut Plan, validate_later: &[(QuotedName, String)]) {
    let (one, opts, relations) = (c.one, c.opts, c.relations);
    let (label, backup_schema) = (c.label, c.backup_schema.to_string());
    for (t, c) in validate_later {
        plan.push(
            Step::new(
                format!("validate constraint {} on {t}", quote_ident(c)),
                format!("ALTER TABLE {t} VALIDATE CONSTRAINT {}", quote_ident(c)),
            )
            .lock(LockMode::ShareUpdateExclusive, t.clone())
            .hazard(Hazard::Validates)
            .outside_transaction(),
        );
    }
    if opts.checksums == super::Checksums::None {
        return;
    }
    for (i, r) in relations.iter().enumerate() {
        plan.push(
            Step::new(
                format!("record the row count and checksum of retired {}", r.retired),
                format!(
                    "UPDATE pgflip.generation_relations gr SET retired_rows = s.n, retired_checksum = s.h::numeric \
                     FROM ({}) AS s(n, h) \
                     WHERE gr.position = {i} AND gr.generation_id = (SELECT id FROM pgflip.generations WHERE label = {})",
                    generation::checksum_sql(&r.retired.quoted(), r.checksum_method),
                    quote_literal(label)
                ),
            )
            .lock(LockMode::AccessShare, r.retired.quoted())
            .outside_transaction(),
        );
    }

    for (i, (q, _)) in one.retire.iter().enumerate() {
        let retired = QualifiedName::new(backup_schema.clone(), q.name.clone());
        plan.push(
            Step::new(
                format!("record the row count and checksum of retired {retired}"),
                format!(
                    "UPDATE pgflip.generation_relations gr SET retired_rows = s.n, retired_checksum = s.h::numeric \
                     FROM ({}) AS s(n, h) \
                     WHERE gr.position = {} AND gr.generation_id = (SELECT id FROM pgflip.generations WHERE label = {})",
                    generation::checksum_sql(&retired.quoted(), generation::ChecksumMethod::Md5),
                    relations.len() + i,
                    quote_literal(label)
                ),
            )
            .lock(LockMode::AccessShare, retired.quoted())
            .outside_transaction(),
        );
    }
}
