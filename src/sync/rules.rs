//! Data rules: mask columns while copying (pgsync's `data_rules`).
//!
//! A rule never touches the target after the fact: it changes the source side of the COPY, so
//! the real values never leave the source server. `COPY (SELECT id, 'user' || id ||
//! '@example.org' AS email, … FROM t) TO STDOUT`. Every expression is cast to the column's
//! type, so binary COPY still works and a rule that yields the wrong type fails on the source
//! before anything is written.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::ident::{quote_ident, quote_literal};
use crate::sync::config::RuleSpec;
use crate::sync::tables::glob_match;

/// What to put in a masked column.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Null,
    /// A fixed value (already an SQL literal).
    Value(String),
    /// An SQL expression evaluated on the source for each row (may use the row's columns).
    Statement(String),
    UniqueEmail,
    RandomEmail,
    UniquePhone,
    RandomPhone,
    UniqueString,
    RandomString,
    RandomLetter,
    RandomIp,
    RandomNumber,
    RandomDate,
    RandomTime,
    /// Leave the column as it is (overrides a broader rule).
    Untouched,
}

impl Rule {
    fn named(name: &str) -> Result<Rule> {
        Ok(match name {
            "null" => Rule::Null,
            "unique_email" => Rule::UniqueEmail,
            "random_email" => Rule::RandomEmail,
            "unique_phone" => Rule::UniquePhone,
            "random_phone" => Rule::RandomPhone,
            "unique_secret" | "unique_string" => Rule::UniqueString,
            "random_string" => Rule::RandomString,
            "random_letter" => Rule::RandomLetter,
            "random_ip" => Rule::RandomIp,
            "random_int" | "random_number" => Rule::RandomNumber,
            "random_date" => Rule::RandomDate,
            "random_time" => Rule::RandomTime,
            "untouched" => Rule::Untouched,
            other => {
                return Err(Error::Config(format!(
                    "unknown data rule {other:?} (known: null, unique_email, random_email, \
                     unique_phone, random_phone, unique_secret, unique_string, random_string, \
                     random_letter, random_int, random_number, random_ip, random_date, \
                     random_time, untouched, {{ value = … }}, {{ statement = … }})"
                )))
            }
        })
    }

    /// The SQL expression for a column whose primary key columns are `pk` (may be empty).
    pub fn expression(&self, column: &str, type_name: &str, pk: &[String]) -> String {
        let key = if pk.is_empty() {
            // No key to derive a unique value from: the row's ctid is unique within the copy.
            "replace(replace(ctid::text, '(', ''), ')', '')".to_string()
        } else {
            let parts: Vec<String> = pk
                .iter()
                .map(|c| format!("{}::text", quote_ident(c)))
                .collect();
            format!("concat_ws('_', {})", parts.join(", "))
        };
        let e = match self {
            Rule::Null => "NULL".to_string(),
            Rule::Value(v) => v.clone(),
            Rule::Statement(s) => format!("({s})"),
            // pgsync's outputs, so that masked data looks the same after a move to pgflip.
            Rule::UniqueEmail => format!("'email' || {key} || '@example.org'"),
            Rule::RandomEmail => {
                "'email' || floor(random() * 1e9)::bigint || '@example.org'".to_string()
            }
            // pgsync: the key plus 1000000000 (ten digits for keys below 9e9); keys that are
            // not numbers get a ten-digit number of their own.
            Rule::UniquePhone => format!(
                "CASE WHEN {key} ~ '^[0-9]{{1,15}}$' THEN ({key}::numeric + 1000000000)::text \
                 ELSE '1' || lpad((abs(hashtext({key})) % 1000000000)::text, 9, '0') END"
            ),
            Rule::RandomPhone => "(1000000000 + floor(random() * 9e9))::bigint::text".to_string(),
            Rule::UniqueString => format!("'secret' || {key}"),
            Rule::RandomString => "right(md5(random()::text), 10)".to_string(),
            Rule::RandomLetter => "chr(65 + floor(random() * 26)::int)".to_string(),
            Rule::RandomIp => {
                "(1 + floor(random() * 254))::int || '.' || floor(random() * 256)::int \
                 || '.' || floor(random() * 256)::int || '.' || (1 + floor(random() * 254))::int"
                    .to_string()
            }
            Rule::RandomNumber => "floor(random() * 100)::int".to_string(),
            Rule::RandomDate => "date '1970-01-01' + floor(random() * 10000)::int".to_string(),
            Rule::RandomTime => {
                "now() - floor(random() * 100000000)::int * interval '1 second'".to_string()
            }
            Rule::Untouched => return quote_ident(column),
        };
        format!("({e})::{type_name}")
    }
}

/// The configured rules, by key: `column`, `table.column` or `schema.table.column`, each part
/// possibly with `*`.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    entries: Vec<(String, Rule)>,
}

impl Rules {
    pub fn from_config(spec: &BTreeMap<String, RuleSpec>) -> Result<Rules> {
        let mut entries = Vec::new();
        for (key, s) in spec {
            let rule = match s {
                RuleSpec::Named(n) => Rule::named(n)?,
                RuleSpec::Detailed {
                    value: Some(v),
                    statement: None,
                    rule: None,
                } => Rule::Value(match v {
                    toml::Value::String(s) => quote_literal(s),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => quote_literal(&other.to_string()),
                }),
                RuleSpec::Detailed {
                    value: None,
                    statement: Some(st),
                    rule: None,
                } => Rule::Statement(st.clone()),
                RuleSpec::Detailed {
                    value: None,
                    statement: None,
                    rule: Some(n),
                } => Rule::named(n)?,
                RuleSpec::Detailed { .. } => {
                    return Err(Error::Config(format!(
                        "data rule {key:?}: give exactly one of value, statement or rule"
                    )))
                }
            };
            entries.push((key.clone(), rule));
        }
        Ok(Rules { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The rule for a column: the most specific key wins (`schema.table.column` over
    /// `table.column` over `column`), exact keys over patterns.
    pub fn for_column(&self, schema: &str, table: &str, column: &str) -> Option<&Rule> {
        let forms = [
            format!("{schema}.{table}.{column}"),
            format!("{table}.{column}"),
            column.to_string(),
        ];
        for form in &forms {
            if let Some((_, r)) = self.entries.iter().find(|(k, _)| k == form) {
                return Some(r);
            }
        }
        for (depth, form) in forms.iter().enumerate() {
            let dots = 2 - depth;
            if let Some((_, r)) = self
                .entries
                .iter()
                .find(|(k, _)| k.matches('.').count() == dots && glob_match(k, form))
            {
                return Some(r);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_rule_wins() {
        let cfg = crate::sync::config::Config::parse(
            r#"
[data_rules]
email = "unique_email"
"users.email" = "null"
"encrypted_*" = { value = "x'y" }
"public.users.token" = { statement = "md5(token)" }
"#,
        )
        .unwrap();
        let r = Rules::from_config(&cfg.data_rules).unwrap();
        assert_eq!(r.for_column("public", "users", "email"), Some(&Rule::Null));
        assert_eq!(
            r.for_column("public", "admins", "email"),
            Some(&Rule::UniqueEmail)
        );
        assert_eq!(
            r.for_column("s", "t", "encrypted_pw"),
            Some(&Rule::Value("'x''y'".into()))
        );
        assert!(r.for_column("public", "users", "name").is_none());
        assert_eq!(
            Rule::UniqueEmail.expression("email", "text", &["id".into()]),
            "('email' || concat_ws('_', id::text) || '@example.org')::text"
        );
        assert!(Rules::from_config(
            &crate::sync::config::Config::parse("[data_rules]\nx = \"bogus\"")
                .unwrap()
                .data_rules
        )
        .is_err());
    }
}
