//! Preserved tables: the capture trigger that forwards the application's writes into the
//! shadow table, and the copy of the live rows that runs after it is installed.
//!
//! The order is what makes it lossless. The trigger (AFTER, row level, `ENABLE ALWAYS` so that
//! `session_replication_role = replica` does not skip it) is committed first; from then on every
//! write is forwarded in the writer's own transaction, by key: INSERT and UPDATE as an upsert
//! (`ON CONFLICT (key) DO UPDATE`), a key change as a delete of the old key first, DELETE as a
//! delete by key, TRUNCATE as a truncate. Only then are the live rows copied, in key-ordered
//! chunks, each one statement in READ COMMITTED:
//!
//! ```sql
//! WITH src AS (SELECT … FROM ONLY live WHERE key > $lo AND key <= $hi FOR KEY SHARE)
//! INSERT INTO shadow SELECT … FROM src ON CONFLICT (key) DO NOTHING
//! ```
//!
//! `FOR KEY SHARE` makes each copied row the newest committed version (a row updated after the
//! statement's snapshot is followed to its new version, a deleted one is skipped, one being
//! deleted or re-keyed is waited for), and a delete or key change that comes after it waits for
//! the chunk to commit, so its forwarded delete finds the copied row. A row already forwarded
//! is never overwritten by the copy (`DO NOTHING`: the forward is as new or newer), and a
//! forward racing a copied row waits on the shadow's unique key and then updates it. Non-key
//! updates do not wait at all (`FOR KEY SHARE` does not conflict with them). Chunk bounds are
//! read beforehand without locks, so a row whose key changes can never move a bound.
//!
//! A write of the application never fails because of pgflip: the forward runs in a
//! subtransaction, and a row the shadow rejects (a constraint of the new version, say) is
//! recorded in the migration's rejected table with the error; `status` shows it and `swap`
//! refuses until it is resolved.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::catalog::Table;
use crate::error::{DbResultExt, Result};
use crate::ident::{qualified, quote_ident, quote_literal};

use super::record::{Preserved, Record, TableEntry};

/// Columns forwarded: those the live table and the shadow table both have (by name), minus the
/// shadow's generated columns; plus `--column-default` expressions for new columns.
#[derive(Debug, Clone)]
pub struct ColumnMap {
    /// `(shadow column, expression over the live row's column or a default)`.
    pub columns: Vec<(String, ColumnSource)>,
}

#[derive(Debug, Clone)]
pub enum ColumnSource {
    Live(String),
    Expr(String),
}

impl ColumnMap {
    /// Matches the shadow's columns with the live table's, by name. Errors name every new
    /// NOT NULL column without a default that no `--column-default` covers.
    pub fn new(
        live: &Table,
        shadow: &Table,
        defaults: &[(String, String, String)],
    ) -> std::result::Result<ColumnMap, String> {
        let mut columns = Vec::new();
        let mut missing = Vec::new();
        for c in &shadow.columns {
            if c.generated.is_some() {
                continue;
            }
            let given = defaults.iter().find(|(t, col, _)| {
                col == &c.name
                    && (t == &live.name || *t == format!("{}.{}", live.schema, live.name))
            });
            if let Some((_, _, expr)) = given {
                columns.push((c.name.clone(), ColumnSource::Expr(expr.clone())));
            } else if live
                .column(&c.name)
                .is_some_and(|lc| lc.generated.is_none())
            {
                columns.push((c.name.clone(), ColumnSource::Live(c.name.clone())));
            } else if live.column(&c.name).is_none()
                && c.not_null
                && c.default.is_none()
                && c.identity.is_none()
            {
                missing.push(format!("{}.{}", live.sql_name(), quote_ident(&c.name)));
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "the new version adds NOT NULL columns without a default to preserved tables: {} \
                 (give one with --column-default table.column=EXPR)",
                missing.join(", ")
            ));
        }
        Ok(ColumnMap { columns })
    }

    fn names(&self) -> String {
        self.columns
            .iter()
            .map(|(c, _)| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The values, from row variable `row` (`NEW`, or a table alias).
    fn values(&self, row: &str) -> String {
        self.columns
            .iter()
            .map(|(_, s)| match s {
                ColumnSource::Live(c) => format!("{row}.{}", quote_ident(c)),
                ColumnSource::Expr(e) => format!("({e})"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The key writes are forwarded by: the live table's primary key, else its replica identity
/// index; it must be a unique key of the shadow table too (for `ON CONFLICT`).
pub fn forwarding_key(live: &Table, shadow: &Table) -> std::result::Result<Vec<String>, String> {
    let key = live.primary_key.clone().or_else(|| {
        let idx = live.replica_identity_index.as_ref()?;
        let i = live.index(idx)?;
        i.columns.iter().cloned().collect::<Option<Vec<String>>>()
    });
    let Some(key) = key else {
        return Err(format!(
            "preserved table {} has no primary key or unique replica identity: its writes cannot \
             be forwarded by key",
            live.sql_name()
        ));
    };
    let want: BTreeSet<&String> = key.iter().collect();
    let shadow_has = shadow
        .primary_key
        .as_ref()
        .is_some_and(|k| k.iter().collect::<BTreeSet<_>>() == want)
        || shadow.indexes.iter().any(|i| {
            i.unique
                && !i.partial
                && i.columns.iter().all(|c| c.is_some())
                && i.columns.iter().flatten().collect::<BTreeSet<_>>() == want
        });
    if !shadow_has {
        return Err(format!(
            "preserved table {}: the new version has no unique key on ({}), the key its writes \
             are forwarded by",
            live.sql_name(),
            key.iter()
                .map(|k| quote_ident(k))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for k in &key {
        if !shadow.columns.iter().any(|c| &c.name == k) {
            return Err(format!(
                "preserved table {}: key column {} is not in the new version",
                live.sql_name(),
                quote_ident(k)
            ));
        }
    }
    Ok(key)
}

fn key_list(key: &[String]) -> String {
    key.iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ")
}

fn key_match(key: &[String], row: &str) -> String {
    key.iter()
        .map(|k| format!("{0} = {row}.{0}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn upsert(shadow: &str, map: &ColumnMap, key: &[String], row: &str) -> String {
    let set: Vec<String> = map
        .columns
        .iter()
        .filter(|(c, _)| !key.contains(c))
        .map(|(c, _)| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
        .collect();
    let action = if set.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", set.join(", "))
    };
    format!(
        "INSERT INTO {shadow} ({}) OVERRIDING SYSTEM VALUE VALUES ({}) ON CONFLICT ({}) {action}",
        map.names(),
        map.values(row),
        key_list(key)
    )
}

/// The capture function and triggers of one preserved table: `CREATE FUNCTION`, `CREATE
/// TRIGGER` (row level and TRUNCATE), `ENABLE ALWAYS`. Run in one transaction.
pub fn install_sql(rec: &Record, t: &TableEntry, p: &Preserved, map: &ColumnMap) -> String {
    let shadow = t.shadow_sql();
    let live = t.live_sql();
    let func = qualified(crate::state::SCHEMA, &p.function);
    let rejected = rec.rejected_sql();
    let forwarded = quote_literal(&rec.forwarded_sql());
    let key = &p.key;
    let key_changed = key
        .iter()
        .map(|k| format!("OLD.{0} IS DISTINCT FROM NEW.{0}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(" OR ");
    let what = quote_literal(&live);
    let body = format!(
        r#"
BEGIN
  BEGIN
    IF TG_OP = 'TRUNCATE' THEN
      TRUNCATE {shadow};
    ELSIF TG_OP = 'INSERT' THEN
      {ins_new};
    ELSIF TG_OP = 'UPDATE' THEN
      IF {key_changed} THEN
        DELETE FROM {shadow} WHERE {match_old};
      END IF;
      {ins_new};
    ELSE
      DELETE FROM {shadow} WHERE {match_old};
    END IF;
    PERFORM pg_catalog.nextval({forwarded});
  EXCEPTION WHEN OTHERS THEN
    INSERT INTO {rejected} (table_name, operation, row_data, sqlstate, message)
    VALUES ({what}, TG_OP,
            CASE WHEN TG_OP = 'TRUNCATE' THEN NULL
                 WHEN TG_OP = 'DELETE' THEN pg_catalog.to_jsonb(OLD)
                 ELSE pg_catalog.to_jsonb(NEW) END,
            SQLSTATE, SQLERRM);
  END;
  RETURN NULL;
END
"#,
        ins_new = upsert(&shadow, map, key, "NEW"),
        match_old = key_match(key, "OLD"),
    );
    let trig = quote_ident(&p.trigger);
    let ttrig = quote_ident(&p.truncate_trigger);
    format!(
        "CREATE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER \
         SET search_path = pg_catalog, pg_temp AS {body_lit};\n\
         REVOKE ALL ON FUNCTION {func}() FROM PUBLIC;\n\
         COMMENT ON FUNCTION {func}() IS {comment};\n\
         CREATE TRIGGER {trig} AFTER INSERT OR UPDATE OR DELETE ON {live} \
         FOR EACH ROW EXECUTE FUNCTION {func}();\n\
         CREATE TRIGGER {ttrig} AFTER TRUNCATE ON {live} \
         FOR EACH STATEMENT EXECUTE FUNCTION {func}();\n\
         ALTER TABLE {live} ENABLE ALWAYS TRIGGER {trig};\n\
         ALTER TABLE {live} ENABLE ALWAYS TRIGGER {ttrig}",
        body_lit = dollar_quote(&body),
        comment = quote_literal(&format!(
            "pgflip migrate {}: forwards writes of {live} into {shadow}",
            rec.id
        )),
    )
}

/// Drops a preserved table's triggers (on the live table) and function; `IF EXISTS` throughout.
pub fn remove_sql(t: &TableEntry, p: &Preserved) -> String {
    format!(
        "DROP TRIGGER IF EXISTS {} ON {live}; DROP TRIGGER IF EXISTS {} ON {live}; \
         DROP FUNCTION IF EXISTS {}()",
        quote_ident(&p.trigger),
        quote_ident(&p.truncate_trigger),
        qualified(crate::state::SCHEMA, &p.function),
        live = t.live_sql(),
    )
}

/// Only the triggers (for inside the flip, where the live table is locked already).
pub fn drop_triggers_sql(t: &TableEntry, p: &Preserved) -> Vec<String> {
    vec![
        format!(
            "DROP TRIGGER {} ON {}",
            quote_ident(&p.trigger),
            t.live_sql()
        ),
        format!(
            "DROP TRIGGER {} ON {}",
            quote_ident(&p.truncate_trigger),
            t.live_sql()
        ),
    ]
}

fn dollar_quote(body: &str) -> String {
    let mut tag = String::from("$pgflip$");
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$pgflip{n}$");
    }
    format!("{tag}{body}{tag}")
}

/// Rows per chunk of the live-row copy: small enough that a delete of a copied row waits
/// briefly, large enough that the per-statement cost is amortised.
pub const CHUNK_ROWS: i64 = 5000;

/// Copies the live rows of a preserved table into its shadow table, in key-ordered chunks
/// (see the module comment). Returns the number of rows the live table had in the chunks'
/// scans. `key_types` are the key columns' types on the live table.
pub async fn copy_live_rows(
    client: &Client,
    t: &TableEntry,
    key: &[String],
    key_types: &[String],
    map: &ColumnMap,
) -> Result<i64> {
    client
        .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await
        .ctx("setting READ COMMITTED for the preserved-table copy")?;
    let live = t.live_sql();
    let shadow = t.shadow_sql();
    let keys = key_list(key);
    let key_text = key
        .iter()
        .map(|k| format!("{}::text", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let bound = |offset: usize| -> String {
        key_types
            .iter()
            .enumerate()
            .map(|(i, ty)| format!("${}::text::{ty}", offset + i + 1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let n = key.len();
    let mut lo: Option<Vec<String>> = None;
    let mut total = 0i64;
    loop {
        // The upper bound of this chunk, read without locks.
        let lo_cond = if lo.is_some() {
            format!("WHERE ({keys}) > ({})", bound(0))
        } else {
            String::new()
        };
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = lo
            .as_ref()
            .map(|v| {
                v.iter()
                    .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect()
            })
            .unwrap_or_default();
        let hi_row = client
            .query_opt(
                &format!(
                    "SELECT {key_text} FROM ONLY {live} {lo_cond} ORDER BY {keys} \
                     OFFSET {} LIMIT 1",
                    CHUNK_ROWS - 1
                ),
                &params,
            )
            .await
            .ctx(format!("reading the next chunk bound of {live}"))?;
        let hi: Option<Vec<String>> =
            hi_row.map(|r| (0..n).map(|i| r.get::<_, String>(i)).collect());
        let mut conds = Vec::new();
        let mut args: Vec<String> = Vec::new();
        if let Some(l) = &lo {
            conds.push(format!("({keys}) > ({})", bound(args.len())));
            args.extend(l.iter().cloned());
        }
        if let Some(h) = &hi {
            conds.push(format!("({keys}) <= ({})", bound(args.len())));
            args.extend(h.iter().cloned());
        }
        let where_ = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "WITH src AS (SELECT * FROM ONLY {live} {where_} FOR KEY SHARE), \
             ins AS (INSERT INTO {shadow} ({cols}) OVERRIDING SYSTEM VALUE \
                     SELECT {vals} FROM src ON CONFLICT ({keys}) DO NOTHING RETURNING 1) \
             SELECT (SELECT count(*) FROM src), (SELECT count(*) FROM ins)",
            cols = map.names(),
            vals = map.values("src"),
        );
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args
            .iter()
            .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let row = loop {
            match client
                .query_one(&sql, &params)
                .await
                .ctx(format!("copying the live rows of {live} into {shadow}"))
            {
                // A deadlock with a writer: pgflip's statement is the one to give way.
                Err(e) if e.sqlstate() == Some("40P01") => continue,
                other => break other?,
            }
        };
        total += row.get::<_, i64>(0);
        match hi {
            Some(h) => lo = Some(h),
            None => break,
        }
    }
    Ok(total)
}
