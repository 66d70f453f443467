//! `pgflip.toml`: what pgsync users keep in `.pgsync.yml`, in TOML.
//!
//! ```toml
//! source = "postgres://prod-replica/app"
//! target = "postgres://localhost/app"
//! exclude = ["audit_*", "schema_migrations"]
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
    /// Reads `path`, or `./pgflip.toml` when present; no file is an empty configuration.
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
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let mut cfg =
            Config::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        cfg.path = Some(path);
        Ok(cfg)
    }

    pub fn parse(text: &str) -> std::result::Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
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
            Group::Filtered(m) => m
                .iter()
                .map(|(t, w)| Ok((t.clone(), Some(substitute(name, w, &vars)?))))
                .collect(),
        }
    }
}

/// Replaces `{1}`, `{2}`… by the quoted literals of `vars`; a leading `WHERE` is dropped.
pub fn substitute(group: &str, clause: &str, vars: &[String]) -> Result<String> {
    let clause = clause.trim();
    let clause = if clause.len() > 6 && clause[..6].eq_ignore_ascii_case("where ") {
        clause[6..].trim_start()
    } else {
        clause
    };
    let mut out = String::new();
    let mut rest = clause;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}');
        match close.and_then(|c| after[..c].parse::<usize>().ok().map(|n| (c, n))) {
            Some((c, n)) if n >= 1 => {
                let v = vars.get(n - 1).ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "group {group} needs a value for {{{n}}}: use {group}:VALUE"
                    ))
                })?;
                out.push_str(&quote_literal(v));
                rest = &after[c + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
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
product = { products = "where id = {1}", reviews = "product_id = {1} and x = '{a}'" }
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
            Some("product_id = '1''; drop table x; --' and x = '{a}'")
        );
        assert!(cfg.expand("product").is_err(), "missing variable");
        assert_eq!(cfg.expand("orders").unwrap(), vec![("orders".into(), None)]);
        assert_eq!(cfg.data_rules.len(), 3);
        assert!(Config::parse("bogus = 1").is_err());
    }
}
