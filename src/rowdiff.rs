//! Row-level differences by primary key: new, updated and deleted rows.
//!
//! Two ways, for the two places the rows can be:
//!
//! - **In one database** (staging beside live): a single `FULL JOIN` on the key with
//!   `count(*) FILTER (…)` for each kind, one scan of each table, instead of three queries (new,
//!   deleted, updated) that each scan both. "Updated" compares the shared columns as a row with
//!   `IS DISTINCT FROM`, so NULL on both sides counts as equal. A large table's key range is
//!   split over idle connections (sync's spare `--jobs`), one part each, in one snapshot: the
//!   `FULL JOIN` is a merge join the server does not parallelize, the three queries' anti
//!   joins are.
//! - **Across two servers** (source and target), without copying the table: each side hashes
//!   its rows into buckets by a hash of the key and returns, per bucket, a row count and the XOR
//!   of the rows' 64-bit hashes (order-independent, so no sort). Only buckets whose figures differ
//!   are drilled into: both sides send key and row hash for those buckets, and those are
//!   compared here. Bytes moved are about 20 per chunk plus key + 16 per row of the finest
//!   differing chunks,
//!   instead of the whole table. Rows are rendered to text with the same session settings on
//!   both sides (UTC, ISO dates, hex bytea, shortest exact floats), so equal rows hash equally
//!   even between servers configured differently.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tokio_postgres::Client;

use crate::error::{DbResultExt, Result};
use crate::ident::quote_ident;

/// Counts (and optionally example keys) of the three kinds of differences.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DiffSummary {
    pub new: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Example keys (as text), when samples were asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<Samples>,
    /// `one_pass` (inside the target) or `chunk_checksums` (across servers).
    pub method: &'static str,
    /// Bytes received from the servers by a cross-server diff.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_moved: Option<u64>,
    /// Key ranges a one-pass diff was split into, each diffed at once on its own connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Samples {
    pub new: Vec<String>,
    pub updated: Vec<String>,
    pub deleted: Vec<String>,
}

/// How one side's rows are read: the relation, the key columns, and one SQL expression per
/// compared column (a column reference, or a masking rule's expression on the source).
#[derive(Debug, Clone)]
pub struct RowSource {
    /// Qualified, quoted relation.
    pub relation: String,
    /// Key columns (unquoted names).
    pub key: Vec<String>,
    /// Expressions of the compared (non-key and key) columns, same order on both sides.
    pub values: Vec<String>,
    /// Optional `WHERE` condition (without the keyword).
    pub filter: Option<String>,
}

/// Column types whose values have no equality operator (or one that is not "same value"):
/// compared through their text form.
pub fn compare_as_text(type_name: &str) -> bool {
    let base = type_name.trim_end_matches("[]");
    matches!(
        base,
        "json" | "xml" | "point" | "line" | "lseg" | "box" | "path" | "polygon" | "circle"
    )
}

fn key_text(alias: &str, key: &[String]) -> String {
    if key.len() == 1 {
        format!("{alias}.{}::text", quote_ident(&key[0]))
    } else {
        let cols: Vec<String> = key
            .iter()
            .map(|k| format!("{alias}.{}", quote_ident(k)))
            .collect();
        format!("ROW({})::text", cols.join(", "))
    }
}

/// The one-pass diff of `new` (e.g. staging) against `old` (live) in one database. `columns`
/// are the shared non-key columns with whether to compare them as text.
pub fn one_pass_sql(new: &str, old: &str, key: &[String], columns: &[(String, bool)]) -> String {
    let on = join_on(key);
    let k0 = quote_ident(&key[0]);
    let updated = if columns.is_empty() {
        "0::bigint".to_string()
    } else {
        let (n, o) = row_pair(columns);
        format!("count(*) FILTER (WHERE n.{k0} IS NOT NULL AND o.{k0} IS NOT NULL AND {n} IS DISTINCT FROM {o})")
    };
    format!(
        "SELECT count(*) FILTER (WHERE o.{k0} IS NULL), {updated}, \
                count(*) FILTER (WHERE n.{k0} IS NULL) \
         FROM {new} n FULL JOIN {old} o ON {on}"
    )
}

/// The proposal's three queries (new, deleted, updated), kept to benchmark against.
pub fn three_queries_sql(
    new: &str,
    old: &str,
    key: &[String],
    columns: &[(String, bool)],
) -> [String; 3] {
    let on = join_on(key);
    let (n, o) = row_pair(columns);
    [
        format!("SELECT count(*) FROM {new} n WHERE NOT EXISTS (SELECT 1 FROM {old} o WHERE {on})"),
        format!("SELECT count(*) FROM {old} o WHERE NOT EXISTS (SELECT 1 FROM {new} n WHERE {on})"),
        format!("SELECT count(*) FROM {new} n JOIN {old} o ON {on} WHERE {n} IS DISTINCT FROM {o}"),
    ]
}

fn join_on(key: &[String]) -> String {
    key.iter()
        .map(|k| {
            let q = quote_ident(k);
            format!("n.{q} = o.{q}")
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn row_pair(columns: &[(String, bool)]) -> (String, String) {
    let side = |alias: &str| {
        let cols: Vec<String> = columns
            .iter()
            .map(|(c, as_text)| {
                let q = format!("{alias}.{}", quote_ident(c));
                if *as_text {
                    format!("{q}::text")
                } else {
                    q
                }
            })
            .collect();
        format!("ROW({})", cols.join(", "))
    };
    (side("n"), side("o"))
}

/// Tables with fewer rows than this are diffed on one connection: below it, starting the other
/// connections' transactions costs more than the scan they would share.
pub const SPLIT_MIN_ROWS: f64 = 200_000.0;

/// How many sampled key values [`in_database`] sorts to find where to split the key range.
const SPLIT_SAMPLE_ROWS: f64 = 30_000.0;

/// Diffs `new` against `old` inside one database in one pass; with `sample > 0`, also fetches
/// up to `sample` example keys of each kind (ordered by key).
///
/// With `helpers` (idle connections to the same database), a large table's key range is split
/// into one part per connection and the parts are diffed at once, each on its own connection
/// in the snapshot `client` exports, and the counts summed: the one-pass `FULL JOIN` is a merge
/// join that the server does not run in parallel before PostgreSQL 16, while the anti joins of
/// the three-query way do go parallel. The split is on the first key column at quantiles of a
/// sample of `old`, so every key falls in exactly one part and each part is an exact
/// comparison; a first key column without an ordering, or a small table, is diffed on `client`
/// alone. `key` is a primary key (its columns are never null). `client` must be inside a
/// `REPEATABLE READ` transaction (the snapshot it exports is the one every part reads); the
/// helpers' transactions are begun and ended here.
pub async fn in_database(
    client: &Client,
    helpers: &[&Client],
    new: &str,
    old: &str,
    key: &[String],
    columns: &[(String, bool)],
    sample: usize,
) -> Result<DiffSummary> {
    let (counts, parts) = match split_parts(client, helpers, old, &key[0]).await? {
        Some(parts) => {
            let result = diff_parts(client, helpers, new, old, key, columns, &parts).await;
            end_helpers(helpers).await;
            (result?, Some(parts.len()))
        }
        None => {
            let row = client
                .query_one(&one_pass_sql(new, old, key, columns), &[])
                .await
                .ctx(format!("comparing {new} with {old}"))?;
            ([row.get::<_, i64>(0), row.get(1), row.get(2)], None)
        }
    };
    let mut d = DiffSummary {
        new: counts[0] as u64,
        updated: counts[1] as u64,
        deleted: counts[2] as u64,
        method: "one_pass",
        parts,
        ..Default::default()
    };
    if sample > 0 {
        let on = join_on(key);
        let k0 = quote_ident(&key[0]);
        let order: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
        let order_n = order
            .iter()
            .map(|k| format!("n.{k}"))
            .collect::<Vec<_>>()
            .join(", ");
        let order_o = order
            .iter()
            .map(|k| format!("o.{k}"))
            .collect::<Vec<_>>()
            .join(", ");
        let (rn, ro) = row_pair(columns);
        let upd_cond = if columns.is_empty() {
            "false".to_string()
        } else {
            format!("{rn} IS DISTINCT FROM {ro}")
        };
        let queries = [
            format!("SELECT {} FROM {new} n LEFT JOIN {old} o ON {on} WHERE o.{k0} IS NULL ORDER BY {order_n} LIMIT {sample}", key_text("n", key)),
            format!("SELECT {} FROM {new} n JOIN {old} o ON {on} WHERE {upd_cond} ORDER BY {order_n} LIMIT {sample}", key_text("n", key)),
            format!("SELECT {} FROM {old} o LEFT JOIN {new} n ON {on} WHERE n.{k0} IS NULL ORDER BY {order_o} LIMIT {sample}", key_text("o", key)),
        ];
        let mut out = Vec::new();
        for q in &queries {
            let rows = client.query(q, &[]).await.ctx("sampling differences")?;
            out.push(rows.iter().map(|r| r.get::<_, String>(0)).collect());
        }
        let deleted = out.pop().unwrap_or_default();
        let updated = out.pop().unwrap_or_default();
        let new_ = out.pop().unwrap_or_default();
        d.samples = Some(Samples {
            new: new_,
            updated,
            deleted,
        });
    }
    Ok(d)
}

/// Where to split the key range of `old` for [`in_database`]: the conditions of the parts on
/// the first key column, or `None` to diff on one connection. On success every helper is inside
/// a transaction reading `client`'s snapshot.
async fn split_parts(
    client: &Client,
    helpers: &[&Client],
    old: &str,
    first_key: &str,
) -> Result<Option<Vec<String>>> {
    if helpers.is_empty() {
        return Ok(None);
    }
    let row = client
        .query_one(
            "SELECT pg_catalog.pg_export_snapshot(), c.reltuples::float8, \
                    pg_catalog.format_type(a.atttypid, a.atttypmod) \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 \
             WHERE c.oid = $1::text::regclass",
            &[&old, &first_key],
        )
        .await
        .ctx(format!("planning the diff of {old}"))?;
    let (snapshot, rows, key_type): (String, f64, String) = (row.get(0), row.get(1), row.get(2));
    if rows < SPLIT_MIN_ROWS {
        return Ok(None);
    }
    let share = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        crate::ident::quote_literal(&snapshot)
    );
    for h in helpers {
        if let Err(e) = h.batch_execute(&share).await {
            end_helpers(helpers).await;
            return Err(e).ctx("sharing the diff's snapshot");
        }
    }
    let parts = helpers.len() + 1;
    let fractions: Vec<String> = (1..parts)
        .map(|i| format!("{}", i as f64 / parts as f64))
        .collect();
    let k = quote_ident(first_key);
    let percent = (100.0 * SPLIT_SAMPLE_ROWS / rows).min(100.0);
    // On a helper: a key type without an ordering fails there, not in `client`'s transaction.
    let bounds = helpers[0]
        .query(
            &format!(
                "SELECT b::text FROM unnest((SELECT percentile_disc(ARRAY[{}]::float8[]) \
                 WITHIN GROUP (ORDER BY {k}) FROM {old} TABLESAMPLE SYSTEM ({percent}))) \
                 WITH ORDINALITY u(b, i) WHERE b IS NOT NULL ORDER BY i",
                fractions.join(", ")
            ),
            &[],
        )
        .await;
    // Ascending (the fractions are); a repeated bound would only make an empty part.
    let mut bounds: Vec<String> = match bounds {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(_) => Vec::new(),
    };
    bounds.dedup();
    if bounds.is_empty() {
        end_helpers(helpers).await;
        return Ok(None);
    }
    let lit = |b: &String| format!("{}::{key_type}", crate::ident::quote_literal(b));
    // Plain ranges, so that each part reads only its range of the key's index (an `OR k IS
    // NULL` in the first made that part scan the whole index: no faster than one pass). The key
    // is a primary key: never null.
    let mut conds = vec![format!("{k} < {}", lit(&bounds[0]))];
    for w in bounds.windows(2) {
        conds.push(format!("{k} >= {} AND {k} < {}", lit(&w[0]), lit(&w[1])));
    }
    conds.push(format!("{k} >= {}", lit(&bounds[bounds.len() - 1])));
    Ok(Some(conds))
}

/// Ends the helpers' transactions (read-only: ending them cannot lose anything; one that never
/// began only gets a warning).
async fn end_helpers(helpers: &[&Client]) {
    for h in helpers {
        let _ = h.batch_execute("ROLLBACK").await;
    }
}

/// Runs the one-pass diff of each part (one per connection, `client` first) and sums the
/// counts: new, updated, deleted.
async fn diff_parts(
    client: &Client,
    helpers: &[&Client],
    new: &str,
    old: &str,
    key: &[String],
    columns: &[(String, bool)],
    parts: &[String],
) -> Result<[i64; 3]> {
    let conns: Vec<&Client> = std::iter::once(client)
        .chain(helpers.iter().copied())
        .collect();
    let rows = futures_util::future::try_join_all(parts.iter().zip(conns).map(|(cond, c)| {
        let sql = one_pass_sql(
            &format!("(SELECT * FROM {new} WHERE {cond})"),
            &format!("(SELECT * FROM {old} WHERE {cond})"),
            key,
            columns,
        );
        async move {
            c.query_one(&sql, &[])
                .await
                .ctx(format!("comparing {new} with {old}"))
        }
    }))
    .await?;
    let mut sum = [0i64; 3];
    for r in rows {
        for (i, s) in sum.iter_mut().enumerate() {
            *s += r.get::<_, i64>(i);
        }
    }
    Ok(sum)
}

/// Session settings that make a row's text form the same on any server.
pub const CANONICAL_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; SET bytea_output = 'hex'; SET extra_float_digits = 1";

/// A 32-bit hash of the row's key. `hashtext` / `hashtextextended` are the server's own hash
/// functions: stable across major versions (hash partitioning depends on that) and across
/// machines of the same byte order, and several times cheaper than md5.
fn key_hash(rs: &RowSource) -> String {
    format!("hashtext({})", key_text_expr(&rs.key))
}

/// Level-one chunk of a row, from its key hash `h`: the low bits.
fn level1(buckets: u32) -> String {
    format!("(h & {})", buckets - 1)
}

/// Level-two chunk: the level-one chunk times 16 plus four high bits of the key hash (16 is
/// where the cost of more chunk sums and the cost of more keys to fetch balance, for ~256
/// rows per level-one chunk and changes of about 1%).
fn level2(buckets: u32) -> String {
    format!("((h & {}) * 16 + ((h >> 24) & 15))", buckets - 1)
}

/// The rows of one side with their key text `k` and key hash `h` computed once per row
/// (`OFFSET 0` keeps the planner from inlining them into every use), and the compared values
/// as `v0…vn`, so that the row hash is computed only for the rows that survive a filter on `h`.
fn hashed_rows(rs: &RowSource) -> String {
    let values: Vec<String> = rs
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{v} AS v{i}"))
        .collect();
    format!(
        "(SELECT {k} AS k, {h} AS h, {vals} FROM {rel}{w} OFFSET 0) s",
        k = key_text_expr(&rs.key),
        h = key_hash(rs),
        vals = values.join(", "),
        rel = rs.relation,
        w = where_clause(rs, None),
    )
}

/// The 64-bit hash of a row of [`hashed_rows`].
fn row_hash(rs: &RowSource) -> String {
    let vals: Vec<String> = (0..rs.values.len()).map(|i| format!("v{i}")).collect();
    format!("hashtextextended(ROW({})::text, 0)", vals.join(", "))
}

fn key_text_expr(key: &[String]) -> String {
    if key.len() == 1 {
        format!("{}::text", quote_ident(&key[0]))
    } else {
        let cols: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
        format!("ROW({})::text", cols.join(", "))
    }
}

fn where_clause(rs: &RowSource, extra: Option<String>) -> String {
    let mut conds: Vec<String> = Vec::new();
    if let Some(f) = &rs.filter {
        conds.push(format!("({f})"));
    }
    if let Some(e) = extra {
        conds.push(e);
    }
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

/// Number of level-one chunks for about `rows` rows: ~256 rows per chunk, a power of two.
pub fn bucket_count(rows: f64) -> u32 {
    let want = (rows / 256.0).ceil().max(1.0) as u32;
    want.next_power_of_two().clamp(1, 1 << 16)
}

type BucketMap = BTreeMap<i32, (i64, i64)>;

/// Per chunk (`chunk` expression over `h`): row count and XOR of row hashes, only over the
/// rows whose `within` expression is in the given list (all rows when None). Lists are joined
/// as a hashed set, never scanned per row.
async fn chunk_sums(
    client: &Client,
    rs: &RowSource,
    chunk: &str,
    within: Option<(&str, &[i32])>,
) -> Result<(BucketMap, u64)> {
    let filter = match within {
        Some((e, _)) => format!(" WHERE {e} IN (SELECT unnest($1::int[]))"),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {chunk}, count(*), bit_xor({r}) FROM {rows}{filter} GROUP BY 1",
        r = row_hash(rs),
        rows = hashed_rows(rs),
    );
    let rows = match within {
        Some((_, ids)) => client.query(&sql, &[&ids]).await,
        None => client.query(&sql, &[]).await,
    }
    .ctx(format!("checksumming {}", rs.relation))?;
    let map: BucketMap = rows
        .iter()
        .map(|r| (r.get::<_, i32>(0), (r.get::<_, i64>(1), r.get::<_, i64>(2))))
        .collect();
    Ok((map, rows.len() as u64 * 20))
}

fn differing(a: &BucketMap, b: &BucketMap) -> Vec<i32> {
    let mut d: Vec<i32> = a
        .iter()
        .filter(|(k, v)| b.get(k) != Some(v))
        .map(|(k, _)| *k)
        .collect();
    d.extend(b.keys().filter(|k| !a.contains_key(k)));
    d.sort_unstable();
    d
}

async fn keys_and_hashes(
    client: &Client,
    rs: &RowSource,
    chunk: &str,
    which: &[i32],
) -> Result<(Vec<(String, i64)>, u64)> {
    let sql = format!(
        "SELECT k, {r} FROM {rows} WHERE {chunk} IN (SELECT unnest($1::int[])) \
         ORDER BY k COLLATE \"C\"",
        r = row_hash(rs),
        rows = hashed_rows(rs),
    );
    let rows = client.query(&sql, &[&which]).await.ctx(format!(
        "reading keys of differing chunks of {}",
        rs.relation
    ))?;
    let mut bytes = 0u64;
    let out = rows
        .iter()
        .map(|r| {
            let k: String = r.get(0);
            let h: i64 = r.get(1);
            bytes += (k.len() + 8 + 8) as u64;
            (k, h)
        })
        .collect();
    Ok((out, bytes))
}

/// Diffs `source` (new) against `target` (old) across two servers: chunk checksums, then
/// finer chunks inside the chunks that differ, then keys and row hashes of the fine chunks
/// that still differ. `estimated_rows` sizes the chunks. Both clients get
/// [`CANONICAL_SETTINGS`] for the session.
pub async fn cross_server(
    source: &Client,
    src: &RowSource,
    target: &Client,
    tgt: &RowSource,
    estimated_rows: f64,
    sample: usize,
) -> Result<DiffSummary> {
    source
        .batch_execute(CANONICAL_SETTINGS)
        .await
        .ctx("setting canonical output settings on the source")?;
    target
        .batch_execute(CANONICAL_SETTINGS)
        .await
        .ctx("setting canonical output settings on the target")?;
    let buckets = bucket_count(estimated_rows);
    let l1 = level1(buckets);
    let (a, b) = tokio::try_join!(
        chunk_sums(source, src, &l1, None),
        chunk_sums(target, tgt, &l1, None)
    )?;
    let mut bytes = a.1 + b.1;
    let d1 = differing(&a.0, &b.0);
    // Drill into the differing chunks when they hold more than a few thousand rows.
    let rows_in_d1: i64 = d1
        .iter()
        .map(|k| {
            a.0.get(k)
                .map_or(0, |v| v.0)
                .max(b.0.get(k).map_or(0, |v| v.0))
        })
        .sum();
    let (chunk, which) = if d1.is_empty() || rows_in_d1 <= 4096 {
        (l1, d1)
    } else {
        let l2 = level2(buckets);
        // When every chunk differs, the filter would select everything: leave it out.
        let all = d1.len() >= a.0.len().max(b.0.len());
        let within = (!all).then_some((l1.as_str(), d1.as_slice()));
        let (a, b) = tokio::try_join!(
            chunk_sums(source, src, &l2, within),
            chunk_sums(target, tgt, &l2, within)
        )?;
        bytes += a.1 + b.1;
        (l2, differing(&a.0, &b.0))
    };
    let mut d = DiffSummary {
        method: "chunk_checksums",
        ..Default::default()
    };
    let mut samples = Samples::default();
    if !which.is_empty() {
        let (na, nb) = tokio::try_join!(
            keys_and_hashes(source, src, &chunk, &which),
            keys_and_hashes(target, tgt, &chunk, &which)
        )?;
        bytes += na.1 + nb.1;
        let (new_rows, old_rows) = (na.0, nb.0);
        // Both lists are sorted by key in byte order: merge them.
        let (mut i, mut j) = (0, 0);
        while i < new_rows.len() || j < old_rows.len() {
            let ord = match (new_rows.get(i), old_rows.get(j)) {
                (Some(a), Some(b)) => a.0.as_bytes().cmp(b.0.as_bytes()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    d.new += 1;
                    push_sample(&mut samples.new, &new_rows[i].0, sample);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    d.deleted += 1;
                    push_sample(&mut samples.deleted, &old_rows[j].0, sample);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if new_rows[i].1 != old_rows[j].1 {
                        d.updated += 1;
                        push_sample(&mut samples.updated, &new_rows[i].0, sample);
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
    }
    if sample > 0 {
        d.samples = Some(samples);
    }
    d.bytes_moved = Some(bytes);
    Ok(d)
}

fn push_sample(v: &mut Vec<String>, k: &str, max: usize) {
    if v.len() < max {
        v.push(k.to_string());
    }
}

/// The human block for one table.
pub fn render_summary(d: &DiffSummary) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Diff Summary:");
    let _ = writeln!(s, "  New rows:     {}", d.new);
    let _ = writeln!(s, "  Updated rows: {}", d.updated);
    let _ = writeln!(s, "  Deleted rows: {}", d.deleted);
    if let Some(sm) = &d.samples {
        for (label, v) in [
            ("New", &sm.new),
            ("Updated", &sm.updated),
            ("Deleted", &sm.deleted),
        ] {
            if !v.is_empty() {
                let _ = writeln!(s, "  {label} keys (sample): {}", v.join(", "));
            }
        }
    }
    s
}
