//! Generations: the record of each flip in `pgflip.generations` / `pgflip.generation_relations`,
//! and what `list`, `status`, `verify` and `cleanup` read from and do to them.
//!
//! Row counts and checksums: a generation records, for each relation, the rows and an
//! order-independent checksum of the side that became live (green, taken just before the locks:
//! green is not written by the application, and the guardrails check that nobody is writing it)
//! and of the side that was retired (taken right after the commit: once retired, nothing writes
//! the relation, because the flip moved every foreign key, trigger and publication off it). Both
//! are full scans, and neither runs while the flip holds its locks, so they cost time but never
//! a stall.
//!
//! The checksum is an order-independent sum, as `numeric`, of one 64-bit hash per row, so it
//! does not depend on row order or physical layout and survives dump / restore. Two ways of
//! hashing a row ([`ChecksumMethod`]): `hash`, the row type's own hash (`hash_record_extended`,
//! PostgreSQL 14+), several times cheaper because it never prints the row as text, used when
//! every column type has an extended hash function; otherwise `md5`, the first 64 bits of md5 of
//! the row's text form. The method is recorded with the relation so that `verify` recomputes the
//! same one. (`hash` follows the types' equality: `1.0` and `1.00` hash alike.)

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Result};
use crate::ident::QuotedName;
use crate::ident::{qualified, quote_ident, quote_literal};
use crate::plan::{LockMode, Plan, Step};

/// How a relation's rows are hashed for its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumMethod {
    /// First 64 bits of md5 of each row's text form (what generations recorded before there
    /// was a choice, so a missing method means this one).
    Md5,
    /// `hash_record_extended(row, 0)`.
    Hash,
}

impl ChecksumMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumMethod::Md5 => "md5",
            ChecksumMethod::Hash => "hash",
        }
    }

    /// The method recorded in the state (`None`: recorded before methods existed).
    pub fn recorded(s: Option<&str>) -> ChecksumMethod {
        match s {
            Some("hash") => ChecksumMethod::Hash,
            _ => ChecksumMethod::Md5,
        }
    }
}

/// SQL for `(count, checksum)` of the relation `rel`. `sum(bigint)` adds in 128-bit integers and
/// returns `numeric`: no overflow, no numeric arithmetic per row.
pub fn checksum_sql(rel: &QuotedName, method: ChecksumMethod) -> String {
    let hash = match method {
        ChecksumMethod::Md5 => "('x' || left(md5(t::text), 16))::bit(64)::bigint",
        ChecksumMethod::Hash => "pg_catalog.hash_record_extended(t, 0)",
    };
    format!("SELECT count(*)::bigint, coalesce(sum({hash}), 0)::text FROM {rel} AS t")
}

/// Computes `(rows, checksum)` of a relation.
pub async fn checksum(
    client: &Client,
    rel: &QuotedName,
    method: ChecksumMethod,
) -> Result<(i64, String)> {
    let row = client
        .query_one(&checksum_sql(rel, method), &[])
        .await
        .ctx(format!("computing the checksum of {rel}"))?;
    Ok((row.get(0), row.get(1)))
}

/// The cheapest method that works for every one of `relations` (oids): [`ChecksumMethod::Hash`]
/// when the server has it and every column type (through domains and arrays) is a base or enum
/// type with a default hash operator class that has an extended hash function; composite,
/// range and other types take [`ChecksumMethod::Md5`] (their hashing depends on their parts,
/// and md5 of the text never fails).
pub async fn checksum_method(client: &Client, relations: &[u32]) -> Result<ChecksumMethod> {
    let group = vec![0; relations.len()];
    Ok(checksum_methods(client, relations, &group)
        .await?
        .into_iter()
        .next()
        .unwrap_or(ChecksumMethod::Md5))
}

/// [`checksum_method`] for many groups of relations in one query: `groups[i]` (0, 1, 2, …) is
/// the group of `relations[i]`; returns one method per group, in group order. A flip of
/// hundreds of tables asks once instead of once per pair.
pub async fn checksum_methods(
    client: &Client,
    relations: &[u32],
    groups: &[i32],
) -> Result<Vec<ChecksumMethod>> {
    let n = groups.iter().copied().max().map(|m| m + 1).unwrap_or(0) as usize;
    let version: i32 = client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int",
            &[],
        )
        .await
        .ctx("reading the server version")?
        .get(0);
    if version < 140000 {
        return Ok(vec![ChecksumMethod::Md5; n]);
    }
    // JIT off (see dependents::load): compiling this catalog query cost seconds. Set for the
    // session and put back, not in a transaction of its own: the caller may have one open (a
    // dry run plans inside a transaction it rolls back), which a COMMIT here would end.
    let jit: String = client
        .query_one("SELECT pg_catalog.current_setting('jit')", &[])
        .await
        .ctx("choosing how to checksum rows")?
        .get(0);
    client
        .batch_execute("SET jit = off")
        .await
        .ctx("choosing how to checksum rows")?;
    let rows = client
        .query(
            "WITH RECURSIVE rels(g, oid) AS (SELECT * FROM unnest($2::int[], $1::pg_catalog.oid[])), \
             cols AS (SELECT DISTINCT r.g, a.atttypid AS root FROM rels r JOIN pg_catalog.pg_attribute a \
                        ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped), \
             ty(root, oid) AS ( \
               SELECT DISTINCT root, root FROM cols \
               UNION \
               SELECT ty.root, CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END \
               FROM ty JOIN pg_catalog.pg_type t ON t.oid = ty.oid \
               WHERE t.typtype = 'd' \
                  OR (t.typelem <> 0 AND t.typsubscript = 'pg_catalog.array_subscript_handler'::pg_catalog.regproc) \
             ), \
             unhashable AS MATERIALIZED ( \
               SELECT DISTINCT ty.root FROM ty JOIN pg_catalog.pg_type t ON t.oid = ty.oid \
               WHERE t.typtype <> 'd' \
                 AND NOT (t.typelem <> 0 AND t.typsubscript = 'pg_catalog.array_subscript_handler'::pg_catalog.regproc) \
                 AND NOT (t.typtype = 'e' OR (t.typtype = 'b' AND EXISTS ( \
                   SELECT 1 FROM pg_catalog.pg_opclass oc \
                   JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod AND am.amname = 'hash' \
                   JOIN pg_catalog.pg_amproc p ON p.amprocfamily = oc.opcfamily AND p.amprocnum = 2 \
                     AND p.amproclefttype = oc.opcintype AND p.amprocrighttype = oc.opcintype \
                   WHERE oc.opcdefault AND (oc.opcintype = t.oid OR EXISTS ( \
                     SELECT 1 FROM pg_catalog.pg_cast c WHERE c.castsource = t.oid \
                       AND c.casttarget = oc.opcintype AND c.castmethod = 'b')))))) \
             SELECT g.g, coalesce(bool_and(u.root IS NULL), true) \
             FROM generate_series(0, $3::int - 1) g(g) \
             LEFT JOIN cols c ON c.g = g.g LEFT JOIN unhashable u ON u.root = c.root \
             GROUP BY g.g ORDER BY g.g",
            &[&relations.to_vec(), &groups.to_vec(), &(n as i32)],
        )
        .await
        .ctx("choosing how to checksum rows");
    let _ = client
        .execute("SELECT pg_catalog.set_config('jit', $1, false)", &[&jit])
        .await;
    let rows = rows?;
    Ok(rows
        .iter()
        .map(|r| {
            if r.get::<_, bool>(1) {
                ChecksumMethod::Hash
            } else {
                ChecksumMethod::Md5
            }
        })
        .collect())
}

/// One relation of a generation.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationRelation {
    pub position: i32,
    pub live_schema: String,
    pub live_name: String,
    pub green_schema: String,
    pub green_name: String,
    pub retired_schema: String,
    pub retired_name: String,
    pub live_rows: Option<i64>,
    pub live_checksum: Option<String>,
    pub retired_rows: Option<i64>,
    pub retired_checksum: Option<String>,
    /// How both checksums hash rows.
    pub checksum_method: ChecksumMethod,
    /// `pg_total_relation_size` of the retired relation, when it is still there.
    pub retired_bytes: Option<i64>,
}

impl GenerationRelation {
    pub fn live(&self) -> String {
        qualified(&self.live_schema, &self.live_name)
    }
    pub fn retired(&self) -> String {
        self.retired_quoted().to_string()
    }
    pub fn retired_quoted(&self) -> QuotedName {
        QuotedName::qualified(&self.retired_schema, &self.retired_name)
    }
}

/// The record of one flip.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub id: i64,
    /// The generation's timestamp label, e.g. `20261121t104500123456z`; `--timestamp` takes it.
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub kind: String,
    pub backup_schema: String,
    /// `active` (retired relations kept), `rolled_back`, or `cleaned`.
    pub status: String,
    pub rollback_of: Option<i64>,
    pub rolled_back_by: Option<i64>,
    /// Which row counts and checksums the flip took (chosen with `--checksums`).
    pub checksums: super::Checksums,
    pub relations: Vec<GenerationRelation>,
}

impl Generation {
    pub fn total_retired_bytes(&self) -> i64 {
        self.relations.iter().filter_map(|r| r.retired_bytes).sum()
    }
}

/// Every generation, newest first (empty when there is no pgflip state). Reads only.
pub async fn list(client: &Client) -> Result<Vec<Generation>> {
    if !crate::state::exists(client).await? {
        return Ok(Vec::new());
    }
    let gens = client
        .query(
            "SELECT id, label, created_at, kind, backup_schema, status, rollback_of, rolled_back_by, \
                    details ->> 'checksums' \
             FROM pgflip.generations ORDER BY created_at DESC, id DESC",
            &[],
        )
        .await
        .ctx("reading generations")?;
    let rels = client
        .query(
            "SELECT generation_id, position, live_schema, live_name, green_schema, green_name, \
                    retired_schema, retired_name, live_rows, live_checksum::text, retired_rows, \
                    retired_checksum::text, \
                    pg_catalog.to_jsonb(gr) ->> 'checksum_method', \
                    (SELECT pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                      WHERE n.nspname = retired_schema AND c.relname = retired_name) \
             FROM pgflip.generation_relations gr ORDER BY generation_id, position",
            &[],
        )
        .await
        .ctx("reading generation relations")?;
    let mut out: Vec<Generation> = gens
        .iter()
        .map(|r| Generation {
            id: r.get(0),
            label: r.get(1),
            created_at: r.get(2),
            kind: r.get(3),
            backup_schema: r.get(4),
            status: r.get(5),
            rollback_of: r.get(6),
            rolled_back_by: r.get(7),
            checksums: super::Checksums::recorded(r.get(8)),
            relations: Vec::new(),
        })
        .collect();
    for r in &rels {
        let gid: i64 = r.get(0);
        if let Some(g) = out.iter_mut().find(|g| g.id == gid) {
            g.relations.push(GenerationRelation {
                position: r.get(1),
                live_schema: r.get(2),
                live_name: r.get(3),
                green_schema: r.get(4),
                green_name: r.get(5),
                retired_schema: r.get(6),
                retired_name: r.get(7),
                live_rows: r.get(8),
                live_checksum: r.get(9),
                retired_rows: r.get(10),
                retired_checksum: r.get(11),
                checksum_method: ChecksumMethod::recorded(r.get(12)),
                retired_bytes: r.get(13),
            });
        }
    }
    Ok(out)
}

/// Finds a generation by its label (or backup schema name); `None` selects the latest one
/// whose relations are still retired (`active`).
pub async fn find(client: &Client, label: Option<&str>) -> Result<Generation> {
    let all = list(client).await?;
    match label {
        Some(l) => {
            let l = l.trim();
            all.into_iter()
                .find(|g| g.label == l || g.backup_schema == l)
                .ok_or_else(|| Error::InvalidInput(format!("no generation {l} on this target")))
        }
        None => all
            .into_iter()
            .find(|g| g.status == "active")
            .ok_or_else(|| {
                Error::InvalidInput("no active generation on this target to roll back".into())
            }),
    }
}

/// The result of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub generation: String,
    pub ok: bool,
    pub problems: Vec<String>,
    pub relations: Vec<VerifiedRelation>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifiedRelation {
    pub retired: String,
    pub present: bool,
    pub recorded_rows: Option<i64>,
    pub rows: Option<i64>,
    pub recorded_checksum: Option<String>,
    pub checksum: Option<String>,
    /// Whether the relation was compared with a checksum recorded at the flip (not when the
    /// flip was told to take none: then only its presence is checked).
    pub compared: bool,
}

/// Checks that a generation's retired relations are all there with the rows and checksums
/// recorded at the flip.
pub async fn verify(client: &Client, gen: &Generation) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        generation: gen.label.clone(),
        ok: true,
        problems: Vec::new(),
        relations: Vec::new(),
    };
    if gen.status != "active" {
        report.ok = false;
        report.problems.push(format!(
            "generation {} is {}: its retired relations are no longer kept",
            gen.label,
            gen.status.replace('_', " ")
        ));
        return Ok(report);
    }
    report
        .problems
        .extend(after_commit_problems(client, gen).await?);
    // A table brought in alone retired nothing.
    for r in gen.relations.iter().filter(|r| !r.retired_name.is_empty()) {
        let name = r.retired();
        let present = r.retired_bytes.is_some();
        let mut v = VerifiedRelation {
            retired: name.clone(),
            present,
            recorded_rows: r.retired_rows,
            rows: None,
            recorded_checksum: r.retired_checksum.clone(),
            checksum: None,
            compared: false,
        };
        if !present {
            report
                .problems
                .push(format!("{name} is missing (retired from {})", r.live()));
        } else {
            let (rows, sum) = checksum(client, &r.retired_quoted(), r.checksum_method).await?;
            let unrecorded = r.retired_rows.is_none() || r.retired_checksum.is_none();
            v.compared = !unrecorded;
            if unrecorded && gen.checksums == super::Checksums::None {
                // Taken by choice: nothing to compare with, and nothing missing.
            } else if unrecorded {
                report.problems.push(format!(
                    "{name}: no row count / checksum was recorded at the flip (interrupted before it was taken)"
                ));
            } else if r.retired_rows != Some(rows) || r.retired_checksum.as_deref() != Some(&sum) {
                report.problems.push(format!(
                    "{name}: {rows} rows, checksum {sum}; recorded at the flip: {} rows, checksum {}",
                    r.retired_rows.unwrap_or_default(),
                    r.retired_checksum.clone().unwrap_or_default()
                ));
            }
            v.rows = Some(rows);
            v.checksum = Some(sum);
        }
        report.relations.push(v);
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

/// Records, in the generation's details, the steps after its commit that failed.
pub async fn record_after_commit_failures(
    client: &Client,
    label: &str,
    failed: &[String],
) -> Result<()> {
    let failed = serde_json::json!(failed);
    client
        .execute(
            "UPDATE pgflip.generations SET details = details || jsonb_build_object('after_commit_failures', $2::text::jsonb) \
             WHERE label = $1",
            &[&label, &failed.to_string()],
        )
        .await
        .ctx("recording the failed steps after the flip")?;
    Ok(())
}

/// What the steps after a generation's commit left undone: failures recorded then, and foreign
/// keys the flip re-attached `NOT VALID` that are still not validated.
async fn after_commit_problems(client: &Client, gen: &Generation) -> Result<Vec<String>> {
    let row = client
        .query_one(
            "SELECT coalesce(details -> 'after_commit_failures', '[]'), \
                    coalesce(details -> 'validate_after', '[]') \
             FROM pgflip.generations WHERE id = $1",
            &[&gen.id],
        )
        .await
        .ctx("reading the generation's record")?;
    let failures: serde_json::Value = row.get(0);
    let validate: serde_json::Value = row.get(1);
    let mut problems: Vec<String> = failures
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str())
        .map(|f| format!("after the flip: {f}"))
        .collect();
    for v in validate.as_array().into_iter().flatten() {
        let (Some(t), Some(c)) = (v["table"].as_str(), v["constraint"].as_str()) else {
            continue;
        };
        let valid: Option<bool> = client
            .query_opt(
                "SELECT convalidated FROM pg_catalog.pg_constraint \
                 WHERE conrelid = pg_catalog.to_regclass($1) AND conname = $2",
                &[&t, &c],
            )
            .await
            .ctx("reading a foreign key's state")?
            .map(|r| r.get(0));
        if valid == Some(false) {
            problems.push(format!(
                "constraint {} of {t} is NOT VALID: it was re-attached by the flip and its \
                 validation has not succeeded (rows may reference keys that are gone)",
                quote_ident(c)
            ));
        }
    }
    Ok(problems)
}

/// Completes what a flip's run left unrecorded after the commit (killed, or a step failed):
/// the retired relations' row counts and checksums, and the validation of the foreign keys the
/// flip re-attached `NOT VALID`. The caller holds the target lock.
pub async fn complete_record(client: &Client, gen: &Generation) -> Result<()> {
    if gen.status != "active" {
        return Err(Error::InvalidInput(format!(
            "generation {} is {}: its retired relations are no longer kept",
            gen.label,
            gen.status.replace('_', " ")
        )));
    }
    for r in &gen.relations {
        if r.retired_bytes.is_none() || (r.retired_rows.is_some() && r.retired_checksum.is_some()) {
            continue;
        }
        let (rows, sum) = checksum(client, &r.retired_quoted(), r.checksum_method).await?;
        client
            .execute(
                "UPDATE pgflip.generation_relations SET retired_rows = $3, retired_checksum = $4::text::numeric \
                 WHERE generation_id = $1 AND position = $2",
                &[&gen.id, &r.position, &rows, &sum],
            )
            .await
            .ctx("recording the retired side's row count and checksum")?;
    }
    let validate: serde_json::Value = client
        .query_one(
            "SELECT coalesce(details -> 'validate_after', '[]') FROM pgflip.generations WHERE id = $1",
            &[&gen.id],
        )
        .await
        .ctx("reading the generation's record")?
        .get(0);
    for v in validate.as_array().into_iter().flatten() {
        let (Some(t), Some(c)) = (v["table"].as_str(), v["constraint"].as_str()) else {
            continue;
        };
        let valid: Option<bool> = client
            .query_opt(
                "SELECT convalidated FROM pg_catalog.pg_constraint \
                 WHERE conrelid = pg_catalog.to_regclass($1) AND conname = $2",
                &[&t, &c],
            )
            .await
            .ctx("reading a foreign key's state")?
            .map(|r| r.get(0));
        if valid == Some(false) {
            // Built by the server from the relation's oid: the record is data, not SQL.
            let sql: String = client
                .query_one(
                    "SELECT format('ALTER TABLE %s VALIDATE CONSTRAINT %I', pg_catalog.to_regclass($1), $2::text)",
                    &[&t, &c],
                )
                .await
                .ctx("reading a foreign key's table")?
                .get(0);
            client
                .batch_execute(&format!(
                    "SET lock_timeout = '5s'; {sql}; RESET lock_timeout"
                ))
                .await
                .ctx(format!("validating constraint {} of {t}", quote_ident(c)))?;
        }
    }
    client
        .execute(
            "UPDATE pgflip.generations SET details = details - 'after_commit_failures' WHERE id = $1",
            &[&gen.id],
        )
        .await
        .ctx("updating the generation's record")?;
    Ok(())
}

/// Which generations `cleanup` drops.
#[derive(Debug, Clone)]
pub enum CleanupSelect {
    Before(DateTime<Utc>),
    KeepNewest(usize),
}

/// The generations a cleanup would drop (those not cleaned yet), oldest first.
pub fn select_for_cleanup(all: &[Generation], select: &CleanupSelect) -> Vec<Generation> {
    let mut candidates: Vec<&Generation> = all.iter().filter(|g| g.status != "cleaned").collect();
    candidates.sort_by_key(|g| std::cmp::Reverse((g.created_at, g.id)));
    let chosen: Vec<&Generation> = match select {
        CleanupSelect::Before(t) => candidates
            .into_iter()
            .filter(|g| g.created_at < *t)
            .collect(),
        CleanupSelect::KeepNewest(n) => candidates.into_iter().skip(*n).collect(),
    };
    let mut out: Vec<Generation> = chosen.into_iter().cloned().collect();
    out.reverse();
    out
}

/// Objects outside a backup schema that still depend on something inside it: `DROP SCHEMA …
/// CASCADE` would take them along, so cleanup refuses.
pub async fn outside_dependents(client: &Client, schema: &str) -> Result<Vec<String>> {
    let rows = client
        .query(
            "WITH inside AS ( \
               SELECT 'pg_class'::regclass AS cls, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 \
               UNION ALL SELECT 'pg_type'::regclass, t.oid FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = $1 \
               UNION ALL SELECT 'pg_proc'::regclass, p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1) \
             SELECT DISTINCT pg_describe_object(d.classid, d.objid, d.objsubid) || ' uses ' || \
                    pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) \
             FROM pg_depend d JOIN inside i ON i.cls = d.refclassid AND i.oid = d.refobjid \
             WHERE d.deptype = 'n' \
               AND NOT EXISTS (SELECT 1 FROM inside i2 WHERE i2.cls = d.classid AND i2.oid = d.objid) \
               AND NOT (d.classid = 'pg_class'::regclass AND EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = d.objid AND n.nspname = $1)) \
               AND NOT (d.classid IN ('pg_attrdef'::regclass, 'pg_constraint'::regclass, 'pg_trigger'::regclass, 'pg_rewrite'::regclass, 'pg_policy'::regclass) \
                        AND EXISTS (SELECT 1 FROM pg_attrdef ad JOIN pg_class c ON c.oid = ad.adrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE d.classid = 'pg_attrdef'::regclass AND ad.oid = d.objid AND n.nspname = $1 \
                                    UNION ALL SELECT 1 FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE d.classid = 'pg_constraint'::regclass AND co.oid = d.objid AND n.nspname = $1 \
                                    UNION ALL SELECT 1 FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE d.classid = 'pg_trigger'::regclass AND tg.oid = d.objid AND n.nspname = $1 \
                                    UNION ALL SELECT 1 FROM pg_rewrite rw JOIN pg_class c ON c.oid = rw.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace WHERE d.classid = 'pg_rewrite'::regclass AND rw.oid = d.objid AND n.nspname = $1 \
                                    UNION ALL SELECT 1 FROM pg_policy po JOIN pg_class c ON c.oid = po.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE d.classid = 'pg_policy'::regclass AND po.oid = d.objid AND n.nspname = $1)) \
             ORDER BY 1",
            &[&schema],
        )
        .await
        .ctx("checking what depends on the retired relations")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The cleanup plan: one transaction per generation (drop its schema, mark it cleaned).
pub fn cleanup_plan(gens: &[Generation], schema_exists: &dyn Fn(&str) -> bool) -> Plan {
    let mut plan = Plan::new("pgflip cleanup");
    for (i, g) in gens.iter().enumerate() {
        let group = i as u32;
        if schema_exists(&g.backup_schema) {
            plan.push(
                Step::new(
                    format!(
                        "drop generation {} ({}, {} relation(s)) kept in schema {}",
                        g.label,
                        g.kind,
                        g.relations.len(),
                        g.backup_schema
                    ),
                    format!("DROP SCHEMA {} CASCADE", quote_ident(&g.backup_schema)),
                )
                .lock(
                    LockMode::AccessExclusive,
                    QuotedName::ident(&g.backup_schema),
                )
                .hazard(crate::plan::Hazard::DeletesData)
                .in_transaction(group),
            );
        }
        plan.push(
            Step::new(
                format!("mark generation {} cleaned", g.label),
                format!(
                    "UPDATE pgflip.generations SET status = 'cleaned', cleaned_at = clock_timestamp() WHERE label = {}",
                    quote_literal(&g.label)
                ),
            )
            .in_transaction(group),
        );
    }
    plan
}
