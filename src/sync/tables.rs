//! Which tables a sync touches: requested names matched against the catalog's list.
//!
//! Requested names are matched exactly first (so `"Line Items"` or `Order` are one name), then
//! as `*` patterns, always against the catalog and never by building SQL from them. What is
//! known about each table is read in [`crate::catalog::sync_tables`], re-exported here.

use std::collections::BTreeSet;

pub use crate::catalog::sync_tables::{
    index_definitions, list_tables, load, Column, ForeignKey, Index, OwnedSequence, SideCatalog,
    Table,
};
use crate::error::{Error, Result};

/// Which schemas unqualified names and "every table" refer to.
#[derive(Debug, Clone)]
pub enum SchemaScope {
    /// These schemas (default: `public`).
    Only(Vec<String>),
    All,
}

impl SchemaScope {
    pub fn contains(&self, schema: &str) -> bool {
        match self {
            SchemaScope::All => true,
            SchemaScope::Only(s) => s.iter().any(|x| x == schema),
        }
    }
}

/// `*` matches any run of characters (including none); everything else is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    glob(pattern, text, true)
}

/// A table pattern: `*` matches any run of characters except a dot, as in pgsync, so `p*` is
/// the tables whose name starts with `p` and never a whole schema `public`.
pub fn pattern_match(pattern: &str, text: &str) -> bool {
    glob(pattern, text, false)
}

fn glob(pattern: &str, text: &str, star_crosses_dots: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star.filter(|_| star_crosses_dots || t[mark] != '.') {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// True when `pattern` names the table `schema.name`: exactly (`name` in scope, or
/// `schema.name` in any schema), or as a `*` pattern over either form, among the schemas in
/// scope only (`--schemas` limits what patterns see).
pub fn matches(pattern: &str, schema: &str, name: &str, scope: &SchemaScope) -> bool {
    if pattern == name && scope.contains(schema) {
        return true;
    }
    if pattern.len() == schema.len() + 1 + name.len()
        && pattern.starts_with(schema)
        && pattern[schema.len()..].starts_with('.')
        && pattern.ends_with(name)
    {
        return true;
    }
    pattern.contains('*')
        && scope.contains(schema)
        && (pattern_match(pattern, name) || pattern_match(pattern, &format!("{schema}.{name}")))
}

/// Splits command-line lists as pgsync does: `a,b` is two names (commas never occur in the
/// names pgsync users pass; a table whose name has one is matched by a pattern).
pub fn split_list<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    items
        .iter()
        .flat_map(|i| i.as_ref().split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The patterns among `patterns` that match no table of the listing (said as warnings).
pub fn unmatched<'a>(
    patterns: &'a [String],
    scope: &SchemaScope,
    listing: &[(u32, String, String)],
) -> Vec<&'a str> {
    patterns
        .iter()
        .filter(|p| !listing.iter().any(|(_, s, n)| matches(p, s, n, scope)))
        .map(String::as_str)
        .collect()
}

/// Resolves requested names (or, with none, every table in scope) against the listing; exact
/// matches win over patterns, so a table literally named `a*` can still be asked for. Unknown
/// names are an error naming each of them.
pub fn resolve(
    requested: &[String],
    exclude: &[String],
    scope: &SchemaScope,
    listing: &[(u32, String, String)],
) -> Result<Vec<(u32, String, String)>> {
    let mut chosen: BTreeSet<usize> = BTreeSet::new();
    let mut unknown = Vec::new();
    if requested.is_empty() {
        for (i, (_, s, _)) in listing.iter().enumerate() {
            if scope.contains(s) {
                chosen.insert(i);
            }
        }
    }
    for req in requested {
        // Exact first: `name` in scope, then `schema.name` split at any dot.
        let exact: Vec<usize> = listing
            .iter()
            .enumerate()
            .filter(|(_, (_, s, n))| {
                (n == req && scope.contains(s))
                    || (req.len() == s.len() + 1 + n.len()
                        && req.starts_with(s.as_str())
                        && req[s.len()..].starts_with('.')
                        && req.ends_with(n.as_str()))
            })
            .map(|(i, _)| i)
            .collect();
        let found: Vec<usize> = if !exact.is_empty() {
            exact
        } else if req.contains('*') {
            listing
                .iter()
                .enumerate()
                .filter(|(_, (_, s, n))| matches(req, s, n, scope))
                .map(|(i, _)| i)
                .collect()
        } else {
            Vec::new()
        };
        // A pattern that matches nothing is the caller's warning; a name is an error.
        if found.is_empty() && !req.contains('*') {
            unknown.push(req.clone());
        }
        chosen.extend(found);
    }
    if !unknown.is_empty() {
        let list = unknown
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::InvalidInput(format!(
            "unknown table{} on the source: {list}",
            if unknown.len() > 1 { "s" } else { "" }
        )));
    }
    Ok(chosen
        .into_iter()
        .map(|i| listing[i].clone())
        .filter(|(_, s, n)| !exclude.iter().any(|p| matches(p, s, n, &SchemaScope::All)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing() -> Vec<(u32, String, String)> {
        [
            ("public", "orders"),
            ("public", "Order"),
            ("public", "Line Items"),
            ("public", "a*"),
            ("public", "abc"),
            ("sales", "orders"),
            ("sales", "x.y"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (s, n))| (i as u32, s.to_string(), n.to_string()))
        .collect()
    }

    fn names(r: &[(u32, String, String)]) -> Vec<String> {
        r.iter().map(|(_, s, n)| format!("{s}.{n}")).collect()
    }

    #[test]
    fn exact_names_then_patterns() {
        let scope = SchemaScope::Only(vec!["public".into()]);
        let l = listing();
        let r = resolve(&["Line Items".into(), "Order".into()], &[], &scope, &l).unwrap();
        assert_eq!(names(&r), ["public.Order", "public.Line Items"]);
        let r = resolve(&["a*".into()], &[], &scope, &l).unwrap();
        assert_eq!(
            names(&r),
            ["public.a*"],
            "exact match wins over the pattern"
        );
        let r = resolve(&["ab*".into()], &[], &scope, &l).unwrap();
        assert_eq!(names(&r), ["public.abc"]);
        let r = resolve(&["sales.x.y".into()], &[], &scope, &l).unwrap();
        assert_eq!(names(&r), ["sales.x.y"]);
        let r = resolve(&["*.orders".into()], &[], &scope, &l).unwrap();
        assert_eq!(
            names(&r),
            ["public.orders"],
            "patterns see the schemas in scope"
        );
        let r = resolve(&["*.orders".into()], &[], &SchemaScope::All, &l).unwrap();
        assert_eq!(names(&r), ["public.orders", "sales.orders"]);
        let r = resolve(&["*s".into()], &[], &scope, &l).unwrap();
        assert_eq!(names(&r), ["public.orders", "public.Line Items"]);
        let r = resolve(&["p*".into()], &[], &SchemaScope::All, &l).unwrap();
        assert!(r.is_empty(), "* never crosses the dot: {:?}", names(&r));
        let r = resolve(&["sales.x*".into()], &[], &SchemaScope::All, &l).unwrap();
        assert!(r.is_empty(), "{:?}", names(&r));
        assert_eq!(unmatched(&["p*".into(), "o*".into()], &scope, &l), ["p*"]);
        assert_eq!(split_list(&["a, b", "c*"]), ["a", "b", "c*"]);
        let r = resolve(&[], &["a*".into(), "L*".into()], &scope, &l).unwrap();
        assert_eq!(names(&r), ["public.orders", "public.Order"]);
        let e = resolve(&["nope".into(), "order".into()], &[], &scope, &l).unwrap_err();
        assert!(e.to_string().contains("\"nope\", \"order\""), "{e}");
    }

    #[test]
    fn globbing() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*c", "abbc"));
        assert!(!glob_match("a*c", "abcd"));
        assert!(glob_match("*_log*", "x_log_2024"));
        assert!(glob_match("p*", "public.posts"));
        assert!(!pattern_match("p*", "public.posts"));
        assert!(pattern_match("public.p*", "public.posts"));
        assert!(pattern_match("*.*", "a.b"));
    }
}
