//! GRANT / REVOKE statements that give a relation, a sequence or a column exactly the
//! privileges another one has, and literals for comments.

use std::collections::{BTreeMap, BTreeSet};

use crate::ident::{quote_ident, quote_literal};

use super::dependents::AclItem;

pub fn role_sql(r: &str) -> String {
    if r == "PUBLIC" {
        "PUBLIC".into()
    } else {
        quote_ident(r)
    }
}

pub fn literal_or_null(v: &Option<String>) -> String {
    v.as_deref()
        .map(quote_literal)
        .unwrap_or_else(|| "NULL".into())
}

/// GRANT / REVOKE statements that give `target` (currently `current` ACL, owned by `owner`)
/// exactly the ACL `wanted`.
pub fn acl_sql(
    object_kind: &str,
    target: &str,
    owner: &str,
    current: &Option<Vec<AclItem>>,
    wanted: &Option<Vec<AclItem>>,
) -> Vec<String> {
    if current == wanted {
        return Vec::new();
    }
    let mut revoke: BTreeSet<String> = BTreeSet::new();
    revoke.insert("PUBLIC".into());
    revoke.insert(owner.to_string());
    for a in current.iter().flatten() {
        revoke.insert(a.grantee.clone());
    }
    let mut out = vec![format!(
        "REVOKE ALL ON {object_kind} {target} FROM {}",
        revoke
            .iter()
            .map(|r| role_sql(r))
            .collect::<Vec<_>>()
            .join(", ")
    )];
    match wanted {
        None => out.push(format!(
            "GRANT ALL ON {object_kind} {target} TO {}",
            role_sql(owner)
        )),
        Some(items) => {
            let mut by: BTreeMap<(String, bool), Vec<String>> = BTreeMap::new();
            for a in items {
                by.entry((a.grantee.clone(), a.grantable))
                    .or_default()
                    .push(a.privilege.clone());
            }
            for ((grantee, grantable), privs) in by {
                out.push(format!(
                    "GRANT {} ON {object_kind} {target} TO {}{}",
                    privs.join(", "),
                    role_sql(&grantee),
                    if grantable { " WITH GRANT OPTION" } else { "" }
                ));
            }
        }
    }
    out
}

pub fn column_acl_sql(
    target: &str,
    column: &str,
    current: &[AclItem],
    wanted: &[AclItem],
) -> Vec<String> {
    if current == wanted {
        return Vec::new();
    }
    let mut out = Vec::new();
    let revoke: BTreeSet<&str> = current.iter().map(|a| a.grantee.as_str()).collect();
    if !revoke.is_empty() {
        out.push(format!(
            "REVOKE ALL ({}) ON TABLE {target} FROM {}",
            quote_ident(column),
            revoke
                .iter()
                .map(|r| role_sql(r))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for a in wanted {
        out.push(format!(
            "GRANT {} ({}) ON TABLE {target} TO {}{}",
            a.privilege,
            quote_ident(column),
            role_sql(&a.grantee),
            if a.grantable {
                " WITH GRANT OPTION"
            } else {
                ""
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_statements_reproduce_the_wanted_acl() {
        let item = |g: &str, p: &str, o: bool| AclItem {
            grantee: g.into(),
            privilege: p.into(),
            grantable: o,
        };
        assert!(acl_sql("TABLE", "t", "o", &None, &None).is_empty());
        let wanted = Some(vec![
            item("o", "SELECT", false),
            item("Reader Role", "SELECT", false),
            item("w", "INSERT", true),
            item("PUBLIC", "SELECT", false),
        ]);
        let sql = acl_sql("TABLE", "t", "o", &None, &wanted);
        assert_eq!(sql[0], "REVOKE ALL ON TABLE t FROM PUBLIC, o");
        assert!(sql.contains(&"GRANT SELECT ON TABLE t TO \"Reader Role\"".to_string()));
        assert!(sql.contains(&"GRANT INSERT ON TABLE t TO w WITH GRANT OPTION".to_string()));
        assert!(sql.contains(&"GRANT SELECT ON TABLE t TO PUBLIC".to_string()));
        let back = acl_sql("TABLE", "t", "o", &wanted, &None);
        assert_eq!(back.last().unwrap(), "GRANT ALL ON TABLE t TO o");
    }
}
