//! Reading a pipeline file: `CREATE MATERIALIZED VIEW name AS …;` statements, one per relation.
//!
//! The file is split into statements by a small lexer that knows PostgreSQL's quoting (single
//! quotes, `E''` strings, double-quoted identifiers, dollar quotes, `--` and nested `/* */`
//! comments), so a `;` inside a string or a function body never splits a statement. Only the
//! head of each statement is interpreted here (which relation, and where its query starts);
//! the query itself is handed to the server as written, which parses it.

use crate::error::{Error, Result};

/// One definition read from a pipeline file or given with `--query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// The relation's name as written (possibly schema-qualified, possibly quoted).
    pub name: String,
    /// The query, without a trailing `WITH [NO] DATA` or `;`.
    pub query: String,
    /// What the statement creates (`None`: given with `--query`, the live relation decides).
    pub kind: Option<super::RelKind>,
}

/// Splits SQL text into statements (comments kept inside, empty statements dropped).
pub fn split_statements(sql: &str) -> Result<Vec<String>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => {
                // E'…' strings take backslash escapes.
                let escapes = i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e');
                i += 1;
                loop {
                    if i >= b.len() {
                        return Err(Error::InvalidInput("unterminated string literal".into()));
                    }
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if i + 1 < b.len() && b[i + 1] == b'\'' {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'"' => {
                i += 1;
                loop {
                    if i >= b.len() {
                        return Err(Error::InvalidInput("unterminated quoted identifier".into()));
                    }
                    if b[i] == b'"' {
                        if i + 1 < b.len() && b[i + 1] == b'"' {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                if depth != 0 {
                    return Err(Error::InvalidInput("unterminated /* comment".into()));
                }
            }
            b'$' => {
                // $tag$ … $tag$, where tag is empty or an identifier (not a $1 parameter).
                let prev_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
                let mut j = i + 1;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80)
                {
                    j += 1;
                }
                let tag_ok = !prev_ident
                    && j < b.len()
                    && b[j] == b'$'
                    && !b.get(i + 1).is_some_and(|c| c.is_ascii_digit());
                if tag_ok {
                    let tag = &sql[i..=j];
                    match sql[j + 1..].find(tag) {
                        Some(k) => i = j + 1 + k + tag.len(),
                        None => {
                            return Err(Error::InvalidInput(format!(
                                "unterminated dollar-quoted string {tag}"
                            )))
                        }
                    }
                } else {
                    i += 1;
                }
            }
            b';' => {
                push_statement(&mut out, &sql[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push_statement(&mut out, &sql[start..]);
    Ok(out)
}

fn push_statement(out: &mut Vec<String>, s: &str) {
    if !strip_comments(s).trim().is_empty() {
        out.push(s.trim().to_string());
    }
}

/// `s` without leading comments and whitespace.
fn strip_comments(s: &str) -> &str {
    let mut s = s.trim_start();
    loop {
        if let Some(rest) = s.strip_prefix("--") {
            s = rest
                .find('\n')
                .map(|i| &rest[i..])
                .unwrap_or("")
                .trim_start();
        } else if s.starts_with("/*") {
            let mut depth = 0;
            let b = s.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            s = s[i..].trim_start();
        } else {
            return s;
        }
    }
}

/// Takes the next keyword (case-insensitive) off `s`.
fn keyword<'a>(s: &'a str, kw: &str) -> Option<&'a str> {
    let s = strip_comments(s);
    if s.len() >= kw.len()
        && s[..kw.len()].eq_ignore_ascii_case(kw)
        && !s[kw.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
    {
        Some(&s[kw.len()..])
    } else {
        None
    }
}

/// Takes a possibly qualified, possibly quoted name off `s`: (name as written, rest).
fn name(s: &str) -> Option<(String, &str)> {
    let s = strip_comments(s);
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match b.get(i) {
                    None => return None,
                    Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                    Some(b'"') => break,
                    _ => i += 1,
                }
            }
            i += 1;
        } else {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            if i == st {
                return None;
            }
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            continue;
        }
        return Some((s[..i].to_string(), &s[i..]));
    }
}

/// Reads `CREATE MATERIALIZED VIEW name AS query [WITH [NO] DATA]`, `CREATE [OR REPLACE]
/// VIEW name AS query` or `CREATE TABLE name AS query` (the statements a pipeline file may
/// hold). Column lists, `USING`, `WITH (…)` and `TABLESPACE` are refused: the green relation
/// takes the live one's storage parameters.
pub fn parse_definition(stmt: &str) -> Result<Definition> {
    use super::RelKind;
    let bad = |why: &str| {
        let head: String = strip_comments(stmt).chars().take(80).collect();
        Error::InvalidInput(format!(
            "{why}: a pipeline file holds only `CREATE MATERIALIZED VIEW name AS query;` statements \
             (or CREATE VIEW / CREATE TABLE … AS for views and query-defined tables; got `{head}…`)"
        ))
    };
    let s = keyword(stmt, "CREATE").ok_or_else(|| bad("not a CREATE statement"))?;
    let s = keyword(s, "OR")
        .and_then(|s| keyword(s, "REPLACE"))
        .unwrap_or(s);
    let (kind, s) = if let Some(s) = keyword(s, "MATERIALIZED").and_then(|s| keyword(s, "VIEW")) {
        (RelKind::MaterializedView, s)
    } else if let Some(s) = keyword(s, "VIEW") {
        (RelKind::View, s)
    } else if let Some(s) = keyword(s, "TABLE") {
        (RelKind::Table, s)
    } else {
        return Err(bad("not a materialized view, view or table"));
    };
    let s = keyword(s, "IF")
        .and_then(|s| keyword(s, "NOT"))
        .and_then(|s| keyword(s, "EXISTS"))
        .unwrap_or(s);
    let (n, s) = name(s).ok_or_else(|| bad("no relation name"))?;
    let s = keyword(s, "AS").ok_or_else(|| {
        bad("expected AS after the name (column lists, USING, WITH (...) and TABLESPACE are not taken)")
    })?;
    let mut query = s.trim().trim_end_matches(';').trim_end().to_string();
    // A trailing WITH [NO] DATA belongs to the statement, not to the query.
    let upper = query.to_ascii_uppercase();
    for tail in ["WITH NO DATA", "WITH DATA"] {
        if upper.ends_with(tail) {
            let cut = query.len() - tail.len();
            let before = &query[..cut];
            if before.ends_with(char::is_whitespace) || before.ends_with(')') {
                query = before.trim_end().to_string();
            }
            break;
        }
    }
    if query.is_empty() {
        return Err(bad("empty query"));
    }
    Ok(Definition {
        name: n,
        query,
        kind: Some(kind),
    })
}

/// Every definition of a pipeline file.
pub fn parse_file(sql: &str) -> Result<Vec<Definition>> {
    let defs: Vec<Definition> = split_statements(sql)?
        .iter()
        .map(|s| parse_definition(s))
        .collect::<Result<_>>()?;
    if defs.is_empty() {
        return Err(Error::InvalidInput(
            "the file holds no CREATE MATERIALIZED VIEW statement".into(),
        ));
    }
    Ok(defs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_outside_quotes_comments_and_dollar_quotes() {
        let sql = "CREATE MATERIALIZED VIEW a AS SELECT ';' AS x; -- a ; comment\n\
                   /* one /* nested ; */ ; */ CREATE MATERIALIZED VIEW \"b;c\" AS SELECT $$;$$ AS y, $t$ ; $t$, E'\\';' AS z WITH DATA;\n\
                   ;  -- nothing\n";
        let st = split_statements(sql).unwrap();
        assert_eq!(st.len(), 2, "{st:?}");
        let defs = parse_file(sql).unwrap();
        assert_eq!(defs[0].name, "a");
        assert_eq!(defs[0].query, "SELECT ';' AS x");
        assert_eq!(defs[1].name, "\"b;c\"");
        assert_eq!(defs[1].query, "SELECT $$;$$ AS y, $t$ ; $t$, E'\\';' AS z");
    }

    #[test]
    fn reads_qualified_and_quoted_names_and_refuses_other_statements() {
        let d = parse_definition(
            "create materialized view if not exists \"My Schema\".\"Odd \"\"x\"\"\" as\n select 1 with no data",
        )
        .unwrap();
        assert_eq!(d.name, "\"My Schema\".\"Odd \"\"x\"\"\"");
        assert_eq!(d.query, "select 1");
        let v = parse_definition("CREATE OR REPLACE VIEW v AS SELECT 1").unwrap();
        assert_eq!(v.kind, Some(super::super::RelKind::View));
        assert!(parse_definition("CREATE INDEX i ON t (a)").is_err());
        assert!(parse_definition("DROP TABLE t").is_err());
        assert!(parse_definition("CREATE MATERIALIZED VIEW m (a) AS SELECT 1").is_err());
        assert!(parse_file("-- only a comment\n").is_err());
        assert!(split_statements("SELECT 'open").is_err());
        // A data column named with_data is not a WITH DATA clause.
        let d = parse_definition("CREATE MATERIALIZED VIEW m AS SELECT x AS with_data").unwrap();
        assert_eq!(d.query, "SELECT x AS with_data");
    }
}
