//! What a source schema uses that the target's PostgreSQL major version cannot express.
//!
//! Schema diff across versions (a newer source, an older target) would otherwise send DDL the
//! target rejects half way through, or worse, DDL it accepts with another meaning. Any object
//! of the source that uses such a feature necessarily differs on the target (the target cannot
//! have it), so checking the whole source snapshot finds exactly the objects the diff would
//! have to create or change; the caller refuses before anything is applied.

use crate::catalog::{Constraint, Snapshot};
use crate::ident::quote_ident;

/// One object the target cannot express: the object, what it uses, and the first major
/// version that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub object: String,
    pub feature: &'static str,
    pub since: i32,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} uses {} (PostgreSQL {}+)",
            self.object, self.feature, self.since
        )
    }
}

/// Major version of a `server_version_num` (140012 -> 14).
pub fn major(server_version: i32) -> i32 {
    server_version / 10000
}

/// The objects of `source` that a server of `target_version` (`server_version_num`) cannot
/// express, in snapshot order. Empty when the target is as new as the source or the source
/// uses nothing newer.
pub fn unsupported(source: &Snapshot, target_version: i32) -> Vec<Unsupported> {
    let target = major(target_version);
    let mut out = Vec::new();
    let mut need = |object: String, feature: &'static str, since: i32| {
        if target < since {
            out.push(Unsupported {
                object,
                feature,
                since,
            });
        }
    };
    let qual = |schema: &str, name: &str| format!("{}.{}", quote_ident(schema), quote_ident(name));
    for c in &source.collations {
        // 'b': the builtin provider.
        if c.provider == "b" {
            need(
                format!("collation {}", qual(&c.schema, &c.name)),
                "the builtin collation provider",
                17,
            );
        }
    }
    for t in &source.tables {
        let table = qual(&t.schema, &t.name);
        for c in &t.columns {
            if c.generated.is_some() && c.generated_virtual {
                need(
                    format!("column {table}.{}", quote_ident(&c.name)),
                    "a virtual generated column",
                    18,
                );
            }
        }
        for c in &t.constraints {
            let object = || format!("constraint {} on table {table}", quote_ident(&c.name));
            for (feature, since) in constraint_features(c) {
                need(object(), feature, since);
            }
        }
        for i in t.indexes.iter().filter(|i| i.constraint.is_none()) {
            if i.definition.contains(" NULLS NOT DISTINCT") {
                need(
                    format!("index {}", qual(&i.schema, &i.name)),
                    "UNIQUE NULLS NOT DISTINCT",
                    15,
                );
            }
        }
    }
    let maintain = |acl: &Option<crate::catalog::Acl>| {
        acl.as_ref().is_some_and(|a| {
            a.items
                .iter()
                .any(|i| i.privilege == "MAINTAIN" && !a.default.contains(i))
        })
    };
    for (kind, schema, name, acl) in source
        .tables
        .iter()
        .map(|t| ("table", &t.schema, &t.name, &t.acl))
        .chain(
            source
                .views
                .iter()
                .map(|v| ("view", &v.schema, &v.name, &v.acl)),
        )
    {
        if maintain(acl) {
            need(
                format!("the privileges on {kind} {}", qual(schema, name)),
                "a grant of MAINTAIN",
                17,
            );
        }
    }
    for v in &source.views {
        if v.reloptions
            .iter()
            .any(|o| o.starts_with("security_invoker="))
        {
            need(
                format!("view {}", qual(&v.schema, &v.name)),
                "the security_invoker option",
                15,
            );
        }
    }
    for p in &source.publications {
        let publication = || format!("publication {}", quote_ident(&p.name));
        if !p.schemas.is_empty() {
            need(publication(), "TABLES IN SCHEMA", 15);
        }
        if p.tables.iter().any(|t| t.columns.is_some()) {
            need(publication(), "a column list", 15);
        }
        if p.tables.iter().any(|t| t.row_filter.is_some()) {
            need(publication(), "a row filter (WHERE)", 15);
        }
    }
    out
}

/// Makes what only differs because of the two servers' major versions compare equal, in both
/// snapshots, before they are compared (nothing changes when the majors are the same):
///
/// - the MAINTAIN privilege (17+) when one side is older: an owner holds it on 17+ by default
///   and cannot hold it before, so every table with an explicit ACL would differ (a grant of it
///   to another role is refused by [`unsupported`] when the target is older);
/// - schema `public` when each side has its own version's default owner and privileges
///   (owned by the bootstrap superuser with CREATE for everyone before 15, by
///   `pg_database_owner` with USAGE only from 15): an upgrade keeps the target's.
pub fn align_versions(source: &mut Snapshot, target: &mut Snapshot) {
    let (s, t) = (major(source.server_version), major(target.server_version));
    if s == t {
        return;
    }
    if s.min(t) < 17 && s.max(t) >= 17 {
        for snap in [&mut *source, &mut *target] {
            let acls = snap
                .tables
                .iter_mut()
                .map(|t| &mut t.acl)
                .chain(snap.views.iter_mut().map(|v| &mut v.acl));
            for acl in acls.flatten() {
                // Only the owner's default one: a grant to another role stays (and differs).
                let default = std::mem::take(&mut acl.default);
                acl.items
                    .retain(|i| i.privilege != "MAINTAIN" || !default.contains(i));
                acl.default = default
                    .into_iter()
                    .filter(|i| i.privilege != "MAINTAIN")
                    .collect();
            }
        }
    }
    if s.min(t) < 15 && s.max(t) >= 15 {
        let (src_public, tgt_public) = (
            source.schemas.iter_mut().find(|n| n.name == "public"),
            target.schemas.iter().find(|n| n.name == "public"),
        );
        if let (Some(sp), Some(tp)) = (src_public, tgt_public) {
            if default_public(sp, s) && default_public(tp, t) {
                sp.owner = tp.owner.clone();
                sp.acl = tp.acl.clone();
            }
        }
    }
}

/// Whether schema `public` has the owner and privileges `initdb` gives it on `major`.
fn default_public(n: &crate::catalog::Schema, major: i32) -> bool {
    let Some(acl) = &n.acl else {
        return false;
    };
    let owner = if major >= 15 {
        "pg_database_owner"
    } else {
        n.owner.as_str()
    };
    let public_privileges: &[&str] = if major >= 15 {
        &["USAGE"]
    } else {
        &["USAGE", "CREATE"]
    };
    let mut want: Vec<(Option<&str>, &str)> = ["USAGE", "CREATE"]
        .iter()
        .map(|p| (Some(owner), *p))
        .chain(public_privileges.iter().map(|p| (None, *p)))
        .collect();
    let mut have: Vec<(Option<&str>, &str)> = acl
        .items
        .iter()
        .filter(|i| i.grantor == owner && !i.grantable)
        .map(|i| (i.grantee.as_deref(), i.privilege.as_str()))
        .collect();
    want.sort();
    have.sort();
    n.owner == owner && acl.items.len() == have.len() && have == want
}

/// Newer syntax in a table constraint's definition (`pg_get_constraintdef`).
fn constraint_features(c: &Constraint) -> Vec<(&'static str, i32)> {
    let d = &c.definition;
    let mut f = Vec::new();
    if d.contains(" NULLS NOT DISTINCT") {
        f.push(("UNIQUE NULLS NOT DISTINCT", 15));
    }
    // ON DELETE SET NULL (col, …): a column list on the referential action.
    if d.contains("SET NULL (") || d.contains("SET DEFAULT (") {
        f.push(("a column list on ON DELETE SET NULL / SET DEFAULT", 15));
    }
    if d.contains(" WITHOUT OVERLAPS") || d.contains("PERIOD ") {
        f.push(("a temporal key (WITHOUT OVERLAPS / PERIOD)", 18));
    }
    if d.contains(" NOT ENFORCED") {
        f.push(("NOT ENFORCED", 18));
    }
    f
}

/// Rewrites the definitions of `source`'s views (and materialized views) in the form the
/// target's server prints them, where the two servers' major versions differ.
///
/// `pg_get_viewdef` output changes between versions (16 stopped qualifying the columns of a
/// single-relation query, for one), so the same view reads differently on 14 and on 18 and a
/// text comparison would recreate every view at each run. For each view present on both sides
/// whose text differs, the target deparses the source's query: a temporary view of it, made and
/// read inside a transaction that is rolled back, so nothing is left on the target. A query the
/// target cannot take (an object it lacks) keeps the source's text: it differs, and the view is
/// recreated, as it must be.
pub async fn deparse_views_on_target(
    source: &mut Snapshot,
    target: &Snapshot,
    target_client: &tokio_postgres::Client,
) -> crate::error::Result<()> {
    use crate::error::DbResultExt;
    if major(source.server_version) == major(target.server_version) {
        return Ok(());
    }
    let differing: Vec<usize> = source
        .views
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            target
                .view(&v.schema, &v.name)
                .is_some_and(|t| t.definition != v.definition)
        })
        .map(|(i, _)| i)
        .collect();
    if differing.is_empty() {
        return Ok(());
    }
    // search_path '' as when the snapshots were loaded: names print schema-qualified alike.
    target_client
        .batch_execute(
            "BEGIN; SET LOCAL search_path = ''; SET LOCAL lock_timeout = '2s'; \
             SET LOCAL statement_timeout = '30s'",
        )
        .await
        .ctx("deparsing the source's views on the target")?;
    let mut result = Ok(());
    for i in differing {
        let query = source.views[i].definition.trim_end().trim_end_matches(';');
        let probe =
            format!("SAVEPOINT pgflip_probe; CREATE TEMPORARY VIEW pgflip_probe_view AS {query}");
        match target_client.batch_execute(&probe).await {
            Ok(()) => {
                let r = target_client
                    .query_one(
                        "SELECT pg_catalog.pg_get_viewdef('pg_temp.pgflip_probe_view'::pg_catalog.regclass)",
                        &[],
                    )
                    .await
                    .ctx("deparsing the source's views on the target");
                match r {
                    Ok(row) => source.views[i].definition = row.get(0),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            // The target cannot take this query as it stands: keep the source's text.
            Err(e) if e.as_db_error().is_some() => {}
            Err(e) => {
                result = Err(e).ctx("deparsing the source's views on the target");
                break;
            }
        }
        if let Err(e) = target_client
            .batch_execute("ROLLBACK TO SAVEPOINT pgflip_probe")
            .await
        {
            result = Err(e).ctx("deparsing the source's views on the target");
            break;
        }
    }
    let rollback = target_client
        .batch_execute("ROLLBACK")
        .await
        .ctx("deparsing the source's views on the target");
    result.and(rollback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_of_server_version_num() {
        assert_eq!(major(140012), 14);
        assert_eq!(major(180004), 18);
    }
}
