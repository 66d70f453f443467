//! `pgflip.toml`: what pgsync users keep in `.pgsync.yml`, in TOML.
//!
//! ```toml
//! source = "postgres://prod-replica/app"
//! target = "postgres://localhost/app"
//! exclude = ["audit_*", "schema_migrations"]
//! preserved_tables = ["users", "sessions"]          # kept live by `pgflip migrate prepare`
//!
//! [groups]
//! reference = ["countries", "currencies"]          # a list of tables
//! product = { products = "id = {1}", reviews = "product_id = {1}" }   # tables with a where
//!
//! [data_rules]
//! email = "unique_email"                            # a built-in rule for every `email` column
//! "users.token" = { value = "secret" }              # a fixed value
//! "visits" = { statement = "(random() * 100)::int" } # an SQL expression
//! "encrypted_*" = "null"
//! ```
//!
//! `pgflip sync product:123` runs the `product` group with `{1}` replaced by the quoted literal
//! `'123'`, never spliced in as raw SQL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::ident::quote_literal;

/// The file's contents.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: Option<String>,
    pub target: Option<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    #[serde(default)]
    pub data_rules: BTreeMap<String, RuleSpec>,
    /// `pgflip migrate prepare`'s preserved tables when `--preserved-tables` is not given.
    #[serde(default)]
    pub preserved_tables: Vec<String>,
    /// Where the file was read from (not in the file).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// A named set of tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Group {
    Tables(Vec<String>),
    /// Table → where clause (may use `{1}`, `{2}`… for the variables after `group:`).
    Filtered(BTreeMap<String, String>),
}

/// A data rule as written: a built-in rule's name, or a table with `value`, `statement` or
/// `rule`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RuleSpec {
    Named(String),
    Detailed {
        value: Option<toml::Value>,
        statement: Option<String>,
        rule: Option<String>,
    },
}

impl Config {
    /// Reads `path`, or `./pgflip.toml` when present; no file is an empty configuration. A
    /// file named with `--config` must exist.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from("pgflip.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            // A usage error (exit 2), said once: the io error's text is the whole reason.
            Err(e) => {
                return Err(Error::Config(format!(
                    "cannot read the configuration file {}: {}",
                    path.display(),
                    io_reason(&e)
                )))
            }
        };
        let mut cfg =
            Config::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        cfg.path = Some(path);
        Ok(cfg)
    }

    /// The file `--db NAME` means: `pgflip.NAME.toml` (pgsync's `.pgsync-NAME.yml`).
    pub fn named_file(db: &str) -> Result<PathBuf> {
        if db.is_empty() || db.contains(['/', '\\']) || db.starts_with('.') {
            return Err(Error::InvalidInput(format!(
                "--db {db:?}: a name, not a path (it reads pgflip.NAME.toml)"
            )));
        }
        Ok(PathBuf::from(format!("pgflip.{db}.toml")))
    }

    pub fn parse(text: &str) -> std::result::Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Whether `arg` (`name` or `name:values`) names a group of this file.
    pub fn is_group(&self, arg: &str) -> bool {
        self.groups
            .contains_key(arg.split_once(':').map_or(arg, |(n, _)| n))
    }

    /// Expands one command-line argument: a group (`name` or `name:var1:var2`) gives its tables
    /// with their where clauses (variables substituted as quoted literals); anything else is a
    /// table name or pattern, returned as is.
    pub fn expand(&self, arg: &str) -> Result<Vec<(String, Option<String>)>> {
        let (name, vars) = match arg.split_once(':') {
            Some((n, v)) if self.groups.contains_key(n) => {
                (n, v.split(':').map(str::to_string).collect::<Vec<_>>())
            }
            _ => (arg, Vec::new()),
        };
        let Some(group) = self.groups.get(name) else {
            return Ok(vec![(arg.to_string(), None)]);
        };
        match group {
            Group::Tables(t) => {
                if !vars.is_empty() {
                    return Err(Error::InvalidInput(format!(
                        "group {name} takes no variables (it has no where clauses)"
                    )));
                }
                Ok(t.iter().map(|t| (t.clone(), None)).collect())
            }
            Group::Filtered(m) => {
                let mut used = vec![false; vars.len()];
                let out = m
                    .iter()
                    .map(|(t, w)| {
                        Ok((t.clone(), Some(substitute_into(name, w, &vars, &mut used)?)))
                    })
                    .collect::<Result<Vec<_>>>()?;
                all_used(name, &vars, &used)?;
                Ok(out)
            }
        }
    }
}

/// `No such file or directory`, without the `(os error 2)` suffix.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// A configuration value as written, or, for `$(command)`, what the command prints (pgsync's
/// way of keeping secrets out of the file: `target = "$(vault read -field=url db/staging)"`).
/// The command runs with `sh -c` only when the value is used; its output is never shown, and a
/// failure names the command and its exit status.
pub fn value(raw: &str, what: &str) -> Result<String> {
    let t = raw.trim();
    let Some(cmd) = t.strip_prefix("$(").and_then(|r| r.strip_suffix(')')) else {
        return Ok(raw.to_string());
    };
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Error::Config(format!("{what}: cannot run $({cmd}): {}", io_reason(&e))))?;
    if !out.status.success() {
        return Err(Error::Config(format!(
            "{what}: $({cmd}) failed ({})",
            out.status
        )));
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| Error::Config(format!("{what}: $({cmd}) printed something not UTF-8")))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::Config(format!("{what}: $({cmd}) printed nothing")));
    }
    Ok(text.to_string())
}

/// Replaces `{1}`, `{2}`… by the quoted literals of `vars`, and `{id}` (pgsync's older name)
/// by the first; a leading `WHERE` is dropped. Any other `{name}` is an error naming it, as is a
/// placeholder without a value or a value without a placeholder, so a typo never reaches the
/// server. Braces that cannot be a placeholder (`'{}'`, `'{"a": 1}'`) are left alone.
pub fn substitute(group: &str, clause: &str, vars: &[String]) -> Result<String> {
    let mut used = vec![false; vars.len()];
    let out = substitute_into(group, clause, vars, &mut used)?;
    all_used(group, vars, &used)?;
    Ok(out)
}

fn all_used(group: &str, vars: &[String], used: &[bool]) -> Result<()> {
    match used.iter().position(|u| !u) {
        Some(i) => Err(Error::InvalidInput(format!(
            "group {group}: value {} ({:?}) is not used by any of its where clauses",
            i + 1,
            vars[i]
        ))),
        None => Ok(()),
    }
}

fn substitute_into(
    group: &str,
    clause: &str,
    vars: &[String],
    used: &mut [bool],
) -> Result<String> {
    let clause = strip_where(clause);
    let mut out = String::new();
    let mut rest = clause;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name = after.find('}').map(|c| (c, &after[..c])).filter(|(_, n)| {
            let mut chars = n.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        let Some((c, name)) = name else {
            out.push('{');
            rest = after;
            continue;
        };
        let n = if name == "id" {
            1
        } else {
            match name.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => {
                    return Err(Error::InvalidInput(format!(
                        "group {group}: unknown variable {{{name}}} (use {{1}}, {{2}}… or {{id}} \
                         for the values after {group}:)"
                    )))
                }
            }
        };
        let v = vars.get(n - 1).ok_or_else(|| {
            Error::InvalidInput(format!(
                "group {group} needs a value for {{{name}}}: use {group}:{}",
                (1..=n.max(vars.len()))
                    .map(|i| format!("VALUE{i}"))
                    .collect::<Vec<_>>()
                    .join(":")
            ))
        })?;
        used[n - 1] = true;
        out.push_str(&quote_literal(v));
        rest = &after[c + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A condition as pgsync users write it, `WHERE id < 100` or `id < 100`: the condition alone.
pub fn strip_where(clause: &str) -> &str {
    let clause = clause.trim();
    match (
        clause.get(..5),
        clause.get(5..).and_then(|r| r.chars().next()),
    ) {
        (Some(w), Some(c)) if w.eq_ignore_ascii_case("where") && c.is_whitespace() => {
            clause[5..].trim_start()
        }
        _ => clause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_variables() {
        let cfg = Config::parse(
            r#"
exclude = ["audit_*"]
[groups]
reference = ["countries", "currencies"]
product = { products = "where id = {1}", reviews = "product_id = {id} and x = '{}'" }
named = { a = "WHERE\tx = {2} and y = {1}", b = "z = '{\"k\": 1}'" }
typo = { a = "id = {ID}" }
[data_rules]
email = "unique_email"
"users.token" = { value = "secret" }
visits = { statement = "(random() * 100)::int" }
"#,
        )
        .unwrap();
        assert_eq!(cfg.expand("reference").unwrap().len(), 2);
        let p = cfg.expand("product:1'; drop table x; --").unwrap();
        assert_eq!(p[0].0, "products");
        assert_eq!(
            p[0].1.as_deref(),
            Some("id = '1''; drop table x; --'"),
            "variables are quoted literals"
        );
        assert_eq!(
            p[1].1.as_deref(),
            Some("product_id = '1''; drop table x; --' and x = '{}'")
        );
        let n = cfg.expand("named:1:2").unwrap();
        assert_eq!(n[0].1.as_deref(), Some("x = '2' and y = '1'"));
        assert_eq!(n[1].1.as_deref(), Some("z = '{\"k\": 1}'"));
        let e = cfg.expand("named:1").unwrap_err().to_string();
        assert!(
            e.contains("{2}") && e.contains("named:VALUE1:VALUE2"),
            "{e}"
        );
        let e = cfg.expand("product:1:2").unwrap_err().to_string();
        assert!(e.contains("value 2"), "{e}");
        let e = cfg.expand("typo:1").unwrap_err().to_string();
        assert!(e.contains("unknown variable {ID}"), "{e}");
        assert_eq!(strip_where("WHERE id < 3"), "id < 3");
        assert_eq!(strip_where("  where\nid < 3"), "id < 3");
        assert_eq!(strip_where("whereabouts = 1"), "whereabouts = 1");
        assert_eq!(strip_where("wheré"), "wheré");
        assert!(cfg.expand("product").is_err(), "missing variable");
        assert_eq!(cfg.expand("orders").unwrap(), vec![("orders".into(), None)]);
        assert_eq!(cfg.data_rules.len(), 3);
        assert!(Config::parse("bogus = 1").is_err());
    }
}
