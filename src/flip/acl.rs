//! GRANT / REVOKE statements that give a relation, a sequence or a column exactly the
//! privileges another one has, and literals for comments.
//!
//! The ACL model and the grantee renderer are the catalog's ([`AclItem`], [`grantee_sql`]):
//! PUBLIC is `None`, never a role name, since a role may be called `"PUBLIC"`.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::AclItem;
use crate::ddl::grantee_sql;
use crate::ident::{quote_ident, quote_literal};

pub fn literal_or_null(v: &Option<String>) -> String {
    v.as_deref()
        .map(quote_literal)
        .unwrap_or_else(|| "NULL".into())
}

/// What a flip can reproduce of an ACL: who holds which privilege, with or without grant
/// option. The grantor is left out: pgflip grants as the owner (as the server records a
/// superuser's grants), so an ACL that differs from another only in grantors is the same here.
fn privileges(items: &[AclItem]) -> BTreeSet<(&Option<String>, &str, bool)> {
    items
        .iter()
        .map(|a| (&a.grantee, a.privilege.as_str(), a.grantable))
        .collect()
}

fn same(a: &Option<Vec<AclItem>>, b: &Option<Vec<AclItem>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => privileges(a) == privileges(b),
        _ => false,
    }
}

/// GRANT / REVOKE statements that give `target` (currently `current` ACL, owned by `owner`;
/// `None` is the default ACL) exactly the privileges of `wanted`.
pub fn acl_sql(
    object_kind: &str,
    target: &str,
    owner: &str,
    current: &Option<Vec<AclItem>>,
    wanted: &Option<Vec<AclItem>>,
) -> Vec<String> {
    if same(current, wanted) {
        return Vec::new();
    }
    let mut revoke: BTreeSet<Option<String>> = BTreeSet::new();
    revoke.insert(None);
    revoke.insert(Some(owner.to_string()));
    for a in current.iter().flatten() {
        revoke.insert(a.grantee.clone());
    }
    let mut out = vec![format!(
        "REVOKE ALL ON {object_kind} {target} FROM {}",
        revoke
            .iter()
            .map(grantee_sql)
            .collect::<Vec<_>>()
            .join(", ")
    )];
    match wanted {
        None => out.push(format!(
            "GRANT ALL ON {object_kind} {target} TO {}",
            quote_ident(owner)
        )),
        Some(items) => {
            let mut by: BTreeMap<(&Option<String>, bool), BTreeSet<&str>> = BTreeMap::new();
            for (grantee, privilege, grantable) in privileges(items) {
                by.entry((grantee, grantable))
                    .or_default()
                    .insert(privilege);
            }
            for ((grantee, grantable), privs) in by {
                out.push(format!(
                    "GRANT {} ON {object_kind} {target} TO {}{}",
                    privs.into_iter().collect::<Vec<_>>().join(", "),
                    grantee_sql(grantee),
                    if grantable { " WITH GRANT OPTION" } else { "" }
                ));
            }
        }
    }
    out
}

/// GRANT / REVOKE statements that give `column` of `target` exactly the column privileges of
/// `wanted` (it has `current`).
pub fn column_acl_sql(
    target: &str,
    column: &str,
    current: &[AclItem],
    wanted: &[AclItem],
) -> Vec<String> {
    if privileges(current) == privileges(wanted) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let revoke: BTreeSet<&Option<String>> = current.iter().map(|a| &a.grantee).collect();
    if !revoke.is_empty() {
        out.push(format!(
            "REVOKE ALL ({}) ON TABLE {target} FROM {}",
            quote_ident(column),
            revoke
                .into_iter()
                .map(grantee_sql)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (grantee, privilege, grantable) in privileges(wanted) {
        out.push(format!(
            "GRANT {privilege} ({}) ON TABLE {target} TO {}{}",
            quote_ident(column),
            grantee_sql(grantee),
            if grantable { " WITH GRANT OPTION" } else { "" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(g: Option<&str>, p: &str, o: bool) -> AclItem {
        AclItem {
            grantee: g.map(str::to_string),
            grantor: "o".into(),
            privilege: p.into(),
            grantable: o,
        }
    }

    #[test]
    fn acl_statements_reproduce_the_wanted_acl() {
        assert!(acl_sql("TABLE", "t", "o", &None, &None).is_empty());
        let wanted = Some(vec![
            item(Some("o"), "SELECT", false),
            item(Some("Reader Role"), "SELECT", false),
            item(Some("w"), "INSERT", true),
            item(None, "SELECT", false),
            item(Some("PUBLIC"), "UPDATE", false),
        ]);
        let sql = acl_sql("TABLE", "t", "o", &None, &wanted);
        assert_eq!(sql[0], "REVOKE ALL ON TABLE t FROM PUBLIC, o");
        assert!(sql.contains(&"GRANT SELECT ON TABLE t TO \"Reader Role\"".to_string()));
        assert!(sql.contains(&"GRANT INSERT ON TABLE t TO w WITH GRANT OPTION".to_string()));
        assert!(sql.contains(&"GRANT SELECT ON TABLE t TO PUBLIC".to_string()));
        // The role called "PUBLIC" is quoted, never taken for everyone.
        assert!(sql.contains(&"GRANT UPDATE ON TABLE t TO \"PUBLIC\"".to_string()));
        let back = acl_sql("TABLE", "t", "o", &wanted, &None);
        assert!(back[0].contains("\"PUBLIC\""), "{back:?}");
        assert_eq!(back.last().unwrap(), "GRANT ALL ON TABLE t TO o");
        // Grantors aside, the same privileges need nothing.
        let mut other_grantor = wanted.clone().unwrap();
        other_grantor[1].grantor = "w".into();
        assert!(acl_sql("TABLE", "t", "o", &wanted, &Some(other_grantor)).is_empty());
    }

    #[test]
    fn column_statements_reproduce_the_wanted_column_acl() {
        let cur = vec![item(Some("PUBLIC"), "SELECT", false)];
        let want = vec![item(None, "UPDATE", true)];
        let sql = column_acl_sql("t", "c", &cur, &want);
        assert_eq!(
            sql,
            [
                "REVOKE ALL (c) ON TABLE t FROM \"PUBLIC\"",
                "GRANT UPDATE (c) ON TABLE t TO PUBLIC WITH GRANT OPTION"
            ]
        );
        assert!(column_acl_sql("t", "c", &want, &want).is_empty());
    }
}
