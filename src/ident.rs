//! Quoting of identifiers and literals, and the names pgflip derives from users' names.
//!
//! Every identifier pgflip puts into SQL goes through [`quote_ident`]; every value that cannot be
//! sent as a bind parameter goes through [`quote_literal`]. Derived names (staging tables,
//! tombstones, generation schemas) must fit PostgreSQL's 63-byte limit (NAMEDATALEN - 1): the
//! server silently truncates longer names, so two different derived names could otherwise become
//! the same object. When a name would be too long it is shortened on a UTF-8 character boundary
//! and a short hash of the full name is appended, so distinct inputs keep distinct outputs.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A schema-qualified name, its parts unquoted as the catalog holds them; quoted only when
/// rendered ([`QualifiedName::sql`], `Display`), so no caller ever quotes it twice or not at all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> QualifiedName {
        QualifiedName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The quoted SQL form: `schema.name`.
    pub fn sql(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql())
    }
}

impl QualifiedName {
    /// The quoted SQL form, typed: [`QuotedName`].
    pub fn quoted(&self) -> QuotedName {
        QuotedName::qualified(&self.schema, &self.name)
    }
}

/// The SQL text of an identifier or a qualified name, quoted by construction. It is made by
/// quoting ([`QuotedName::ident`], [`QuotedName::qualified`], [`QualifiedName::quoted`]) or by
/// listing names made so ([`QuotedName::list`]), so what takes one (a step's lock, a checksum
/// query) cannot be handed a raw name as if it were SQL.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct QuotedName(String);

impl QuotedName {
    /// One identifier, quoted when needed.
    pub fn ident(name: &str) -> QuotedName {
        QuotedName(quote_ident(name))
    }

    /// `schema.name`, each part quoted when needed.
    pub fn qualified(schema: &str, name: &str) -> QuotedName {
        QuotedName(qualified(schema, name))
    }

    /// Several, as `LOCK TABLE` and `TRUNCATE` name them: `a, b`.
    pub fn list<'a>(names: impl IntoIterator<Item = &'a QuotedName>) -> QuotedName {
        let parts: Vec<&str> = names.into_iter().map(|n| n.0.as_str()).collect();
        QuotedName(parts.join(", "))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for QuotedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Read as SQL text anywhere a `&str` is taken: reading cannot unquote it, and only the
/// constructors above make one.
impl std::ops::Deref for QuotedName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<QuotedName> for String {
    fn from(q: QuotedName) -> String {
        q.0
    }
}

impl PartialEq<str> for QuotedName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<QuotedName> for &str {
    fn eq(&self, other: &QuotedName) -> bool {
        *self == other.0
    }
}

impl PartialEq<QuotedName> for String {
    fn eq(&self, other: &QuotedName) -> bool {
        *self == other.0
    }
}

/// PostgreSQL's identifier length limit in bytes (NAMEDATALEN - 1).
pub const MAX_IDENT_BYTES: usize = 63;

/// Keywords that cannot be used as a bare identifier everywhere (every category except
/// UNRESERVED, as listed by `pg_get_keywords()` on PostgreSQL 15). Same rule as the server's own
/// `quote_ident()`.
const NON_UNRESERVED_KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// True when `name` can be written without quotes and still mean exactly `name`.
pub fn is_bare_ident(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_lowercase() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && NON_UNRESERVED_KEYWORDS.binary_search(&name).is_err()
}

/// Quotes an identifier when needed, like the server's `quote_ident()`.
pub fn quote_ident(name: &str) -> String {
    if is_bare_ident(name) {
        name.to_string()
    } else {
        quote_ident_always(name)
    }
}

/// Quotes an identifier unconditionally.
pub fn quote_ident_always(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.name`, each part quoted when needed.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// A string literal, safe whatever `standard_conforming_strings` is: backslashes switch the
/// literal to the `E''` form, as the server's `quote_literal()` does.
pub fn quote_literal(value: &str) -> String {
    let body = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// Short, stable hash of a name: 8 hex digits of SHA-256.
fn short_hash(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    hex::encode(&digest[..4])
}

/// Longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `base` followed by `suffix`, within 63 bytes. When it does not fit, `base` is shortened and
/// `_<hash of base>` inserted before the suffix, so that different bases never give the same
/// name. The suffix is always kept whole (it says what the object is).
pub fn derived_name(base: &str, suffix: &str) -> String {
    assert!(
        suffix.len() + 9 < MAX_IDENT_BYTES,
        "suffix too long for a derived name: {suffix}"
    );
    if base.len() + suffix.len() <= MAX_IDENT_BYTES {
        return format!("{base}{suffix}");
    }
    let hash = short_hash(base);
    let room = MAX_IDENT_BYTES - suffix.len() - hash.len() - 1;
    format!("{}_{hash}{suffix}", truncate_bytes(base, room))
}

/// The staging table of `table`: `<table>_staging`.
pub fn staging_name(table: &str) -> String {
    derived_name(table, "_staging")
}

/// The tombstone of an object the source lacks: `<name>_dropped_<YYYYMMDDTHHMMSSZ>`.
pub fn tombstone_name(name: &str, at: chrono::DateTime<chrono::Utc>) -> String {
    derived_name(name, &format!("_dropped_{}", at.format("%Y%m%dt%H%M%Sz")))
}

/// True when `name` is a tombstone made by [`tombstone_name`].
pub fn is_tombstone(name: &str) -> bool {
    match name.rfind("_dropped_") {
        Some(i) => {
            let ts = &name[i + "_dropped_".len()..];
            ts.len() == 16
                && ts.as_bytes()[8] == b't'
                && ts.ends_with('z')
                && ts[..8].bytes().all(|b| b.is_ascii_digit())
                && ts[9..15].bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// Schema that keeps the relations retired by one generation: `pgflip_backup_<ts>`.
pub fn backup_schema(at: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "pgflip_backup_{}",
        at.format("%Y%m%dt%H%M%S%.6fz").to_string().replace('.', "")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keywords_sorted_for_binary_search() {
        let mut sorted = NON_UNRESERVED_KEYWORDS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, NON_UNRESERVED_KEYWORDS);
    }

    #[test]
    fn quoting_matches_server_rules() {
        assert_eq!(quote_ident("orders"), "orders");
        assert_eq!(quote_ident("Orders"), "\"Orders\"");
        assert_eq!(quote_ident("order"), "\"order\"");
        assert_eq!(quote_ident("user"), "\"user\"");
        assert_eq!(quote_ident("name"), "name"); // unreserved keyword
        assert_eq!(quote_ident("line items"), "\"line items\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("1abc"), "\"1abc\"");
        assert_eq!(quote_ident("café"), "\"café\"");
        assert_eq!(quote_ident(""), "\"\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }

    #[test]
    fn short_names_are_kept() {
        assert_eq!(staging_name("orders"), "orders_staging");
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:45:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            tombstone_name("orders", at),
            "orders_dropped_20261121t104500z"
        );
        assert!(is_tombstone("orders_dropped_20261121t104500z"));
        assert!(!is_tombstone("orders_dropped_yesterday"));
    }

    proptest! {
        #[test]
        fn derived_names_fit_and_do_not_collide(a in "\\PC{1,80}", b in "\\PC{1,80}", suffix in "_[a-z]{1,20}") {
            let (da, db) = (derived_name(&a, &suffix), derived_name(&b, &suffix));
            prop_assert!(da.len() <= MAX_IDENT_BYTES);
            prop_assert!(da.ends_with(&suffix));
            if a != b {
                prop_assert_ne!(da, db);
            }
        }

        #[test]
        fn tombstones_fit_and_are_recognised(a in "\\PC{1,80}", secs in 0i64..4_000_000_000) {
            let at = chrono::DateTime::from_timestamp(secs, 0).unwrap();
            let t = tombstone_name(&a, at);
            prop_assert!(t.len() <= MAX_IDENT_BYTES);
            prop_assert!(is_tombstone(&t));
        }

        #[test]
        fn quoted_ident_round_trips(a in "\\PC{0,40}") {
            let q = quote_ident_always(&a);
            let inner = &q[1..q.len() - 1];
            prop_assert_eq!(inner.replace("\"\"", "\""), a);
        }
    }
}
