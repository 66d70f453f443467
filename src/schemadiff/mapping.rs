//! `--source-schema A --target-schema B`: the source's schema A is compared with the target's
//! schema B, so every reference to A in the source snapshot becomes B before comparing: the
//! schema fields of every object, and qualified names inside the SQL the server printed
//! (defaults such as `nextval('A.orders_id_seq')`, view bodies, foreign keys, function
//! bodies where `A.` appears as a plain qualified name).
//!
//! The snapshot is walked as JSON so that every field is covered, including ones added to the
//! catalog later: fields named `schema` (and the schema list) are renamed exactly; every other
//! string has `A.` replaced by `B.` where `A` stands alone as an identifier.

use serde_json::Value;

use crate::catalog::Snapshot;
use crate::ident::quote_ident;

/// The snapshot with schema `from` renamed to `to`.
pub fn remap(snap: &Snapshot, from: &str, to: &str) -> crate::Result<Snapshot> {
    if from == to {
        return Ok(snap.clone());
    }
    let mut v = serde_json::to_value(snap)
        .map_err(|e| crate::Error::Config(format!("mapping schema {from}: {e}")))?;
    walk(&mut v, None, from, to);
    let mut out: Snapshot = serde_json::from_value(v)
        .map_err(|e| crate::Error::Config(format!("mapping schema {from}: {e}")))?;
    for s in &mut out.schemas {
        if s.name == from {
            s.name = to.to_string();
        }
    }
    for s in out
        .filter
        .include_schemas
        .iter_mut()
        .chain(out.filter.exclude_schemas.iter_mut())
    {
        if s == from {
            *s = to.to_string();
        }
    }
    Ok(out)
}

fn walk(v: &mut Value, field: Option<&str>, from: &str, to: &str) {
    match v {
        Value::String(s) => {
            if matches!(field, Some("schema") | Some("schemas")) {
                if s == from {
                    *s = to.to_string();
                }
            } else {
                *s = replace_qualified(s, from, to);
            }
        }
        Value::Array(a) => {
            for x in a {
                walk(x, field, from, to);
            }
        }
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                walk(x, Some(k.as_str()), from, to);
            }
        }
        _ => {}
    }
}

fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$' || c == '"'
}

/// Replaces `from.` (as the server quotes it) with `to.` where it starts an identifier.
pub fn replace_qualified(text: &str, from: &str, to: &str) -> String {
    let pat = format!("{}.", quote_ident(from));
    let rep = format!("{}.", quote_ident(to));
    if !text.contains(&pat) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut prev: Option<char> = None;
    while let Some(i) = rest.find(&pat) {
        let before = rest[..i].chars().last().or(prev);
        out.push_str(&rest[..i]);
        if before.is_some_and(ident_char) {
            out.push_str(&pat);
        } else {
            out.push_str(&rep);
        }
        prev = pat.chars().last();
        rest = &rest[i + pat.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::replace_qualified;

    #[test]
    fn replaces_only_whole_schema_names() {
        assert_eq!(
            replace_qualified("nextval('app.orders_id_seq'::regclass)", "app", "app2"),
            "nextval('app2.orders_id_seq'::regclass)"
        );
        assert_eq!(
            replace_qualified("myapp.t, app.t", "app", "b"),
            "myapp.t, b.t"
        );
        assert_eq!(replace_qualified("\"My App\".t", "My App", "x"), "x.t");
    }
}
