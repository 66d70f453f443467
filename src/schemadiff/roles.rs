//! Production's roles are not the source's business.
//!
//! Roles are global to a server, so a development source and a production target rarely have
//! the same ones: the application's login role, its owner role, the read-only role of the
//! reporting tool exist only in production. Aligning the target's privileges with the source's
//! would revoke what those roles hold and lock the application out; granting to a role only
//! the source has cannot even run. So before the comparison the source's side is rewritten:
//!
//! - an owner is aligned only when both the source's and the target's owner exist on both
//!   servers; otherwise the target's owner is kept (and the source owner's own privileges are
//!   read as the kept owner's). A new object whose owner the target lacks is left to the role
//!   that runs the script;
//! - a grant (or default privilege, or user mapping) naming a role the target lacks is not
//!   applied; one naming a role the source lacks is kept;
//! - with `--no-privileges` owners, grants and default privileges are left as the target has
//!   them (new objects get none).
//!
//! Each decision that differs from a plain alignment is listed for the script's header.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::catalog::{Acl, AclItem, Column, Extra, Policy, Snapshot};
use crate::ddl::grantee_sql;
use crate::ident::quote_ident;

/// What was kept or left out because of roles, for the script's header.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RoleNotes {
    /// The target's owners, grants, default privileges and user mappings kept for roles the
    /// source does not have (or that the source does not own by a role of both servers).
    pub kept: Vec<String>,
    /// The source's owners, grants, default privileges and user mappings not applied because
    /// the target does not have the role.
    pub not_applied: Vec<String>,
    /// What cannot be aligned without widening access (a policy that names only roles the
    /// target lacks would apply to everyone): refused by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

impl RoleNotes {
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.not_applied.is_empty()
    }

    /// Comment lines for the script's header.
    pub fn header_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.kept.is_empty() {
            out.push(
                "kept on the target (roles the source does not have, or --no-privileges):".into(),
            );
            out.extend(self.kept.iter().map(|k| format!("  {k}")));
        }
        if !self.not_applied.is_empty() {
            out.push("not applied (roles the target does not have):".into());
            out.extend(self.not_applied.iter().map(|k| format!("  {k}")));
        }
        out
    }
}

struct Ctx<'a> {
    src_roles: HashSet<&'a str>,
    tgt_roles: HashSet<&'a str>,
    privileges: bool,
    notes: RoleNotes,
}

/// `(grantee) -> privileges` of a set of items, for one line per grantee.
fn by_grantee(items: &[&AclItem]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in items {
        let p = if i.grantable {
            format!("{} (with grant option)", i.privilege)
        } else {
            i.privilege.clone()
        };
        m.entry(grantee_sql(&i.grantee)).or_default().push(p);
    }
    m
}

fn rename(items: &mut Vec<AclItem>, from: &str, to: &str) {
    if to.is_empty() {
        // Owned by whoever runs the script: its own privileges are implicit.
        items.retain(|i| i.grantee.as_deref() != Some(from));
    }
    for i in items.iter_mut() {
        if i.grantee.as_deref() == Some(from) {
            i.grantee = Some(to.to_string());
        }
        if i.grantor == from {
            i.grantor = to.to_string();
        }
    }
}

fn same_priv(a: &AclItem, b: &AclItem) -> bool {
    a.grantee == b.grantee && a.privilege == b.privilege && a.grantable == b.grantable
}

impl Ctx<'_> {
    fn in_src(&self, r: &str) -> bool {
        self.src_roles.contains(r)
    }
    fn in_tgt(&self, r: &str) -> bool {
        self.tgt_roles.contains(r)
    }

    /// Decides the owner the source's side asks for; returns the renaming of the source's
    /// owner to apply to its ACL.
    fn owner(&mut self, what: &str, s: &mut String, t: Option<&str>) -> Option<(String, String)> {
        let want = if !self.privileges {
            t.unwrap_or("").to_string()
        } else if let Some(t) = t {
            if s == t || (self.in_tgt(s) && self.in_src(t)) {
                return None;
            }
            self.notes.kept.push(format!(
                "owner of {what}: {} (source's owner {})",
                quote_ident(t),
                quote_ident(s)
            ));
            t.to_string()
        } else if self.in_tgt(s) || s.is_empty() {
            return None;
        } else {
            self.notes.not_applied.push(format!(
                "owner of new {what}: {} (created owned by the role that runs the script)",
                quote_ident(s)
            ));
            String::new()
        };
        if want == *s {
            return None;
        }
        Some((std::mem::replace(s, want.clone()), want))
    }

    /// Filters the source's ACL items against the target's roles and adds the target's items
    /// of roles the source lacks.
    fn items(
        &mut self,
        what: &str,
        s: &mut Vec<AclItem>,
        t: Option<&[AclItem]>,
        rename_owner: &Option<(String, String)>,
    ) {
        if let Some((from, to)) = rename_owner {
            rename(s, from, to);
        }
        let missing = |i: &AclItem, roles: &HashSet<&str>| {
            i.grantee.as_deref().is_some_and(|g| !roles.contains(g))
                || (!i.grantor.is_empty() && !roles.contains(i.grantor.as_str()))
        };
        let dropped: Vec<AclItem> = s
            .iter()
            .filter(|i| missing(i, &self.tgt_roles))
            .cloned()
            .collect();
        if !dropped.is_empty() {
            s.retain(|i| !missing(i, &self.tgt_roles));
            for (g, p) in by_grantee(&dropped.iter().collect::<Vec<_>>()) {
                self.notes
                    .not_applied
                    .push(format!("GRANT {} ON {what} TO {g}", p.join(", ")));
            }
        }
        let Some(t) = t else { return };
        let kept: Vec<&AclItem> = t
            .iter()
            .filter(|i| i.grantee.as_deref().is_some_and(|g| !self.in_src(g)))
            .filter(|i| !s.iter().any(|x| same_priv(x, i)))
            .collect();
        for (g, p) in by_grantee(&kept) {
            self.notes
                .kept
                .push(format!("GRANT {} ON {what} TO {g}", p.join(", ")));
        }
        s.extend(kept.into_iter().cloned());
    }

    /// The ACL of one object: `s` is the source's (rewritten), `t` the target's counterpart's
    /// (`None` when the target has no such object).
    fn acl(
        &mut self,
        what: &str,
        owner: &str,
        s: &mut Option<Acl>,
        t: Option<(&Option<Acl>, &str)>,
        rename_owner: Option<(String, String)>,
    ) {
        if !self.privileges {
            *s = t.and_then(|(a, _)| a.clone());
            return;
        }
        let t_acl = t.and_then(|(a, o)| a.as_ref().map(|a| (a, o)));
        if s.is_none() {
            // The source has the built-in default: only a kept grant makes it explicit.
            let Some((ta, t_owner)) = t_acl else { return };
            if !ta
                .items
                .iter()
                .any(|i| i.grantee.as_deref().is_some_and(|g| !self.in_src(g)))
            {
                return;
            }
            let mut default = ta.default.clone();
            if t_owner != owner {
                rename(&mut default, t_owner, owner);
            }
            *s = Some(Acl {
                items: default.clone(),
                default,
            });
            let acl = s.as_mut().unwrap();
            self.items(what, &mut acl.items, Some(&ta.items), &None);
            return;
        }
        let acl = s.as_mut().unwrap();
        if let Some((from, to)) = &rename_owner {
            rename(&mut acl.default, from, to);
        }
        self.items(
            what,
            &mut acl.items,
            t_acl.map(|(a, _)| a.items.as_slice()),
            &rename_owner,
        );
    }

    fn columns(
        &mut self,
        rel: &str,
        s: &mut [Column],
        t: Option<&[Column]>,
        rename_owner: &Option<(String, String)>,
    ) {
        for c in s {
            let tc = t.and_then(|t| t.iter().find(|x| x.name == c.name));
            if !self.privileges {
                c.acl = tc.map(|x| x.acl.clone()).unwrap_or_default();
                continue;
            }
            let what = format!("TABLE {rel} column {}", quote_ident(&c.name));
            self.items(
                &what,
                &mut c.acl,
                tc.map(|x| x.acl.as_slice()),
                rename_owner,
            );
        }
    }

    /// A policy's roles (`TO …`): the target's roles that the source lacks are kept, the
    /// source's that the target lacks left out; a policy left with none would apply to
    /// everyone, so it is refused instead.
    fn policy(&mut self, table: &str, p: &mut Policy, t: Option<&Policy>) {
        let what = format!("policy {} on {table}", quote_ident(&p.name));
        let missing: Vec<String> = p
            .roles
            .iter()
            .flatten()
            .filter(|r| !self.in_tgt(r))
            .map(|r| quote_ident(r))
            .collect();
        if missing.is_empty() && t.is_none_or(|t| t.roles.iter().flatten().all(|r| self.in_src(r)))
        {
            return;
        }
        let had_roles = !p.roles.is_empty();
        p.roles
            .retain(|r| r.as_deref().is_none_or(|r| self.tgt_roles.contains(r)));
        if !missing.is_empty() {
            self.notes
                .not_applied
                .push(format!("{what} TO {}", missing.join(", ")));
        }
        if let Some(t) = t {
            let kept: Vec<&Option<String>> = t
                .roles
                .iter()
                .filter(|r| r.as_deref().is_some_and(|r| !self.in_src(r)))
                .filter(|r| !p.roles.contains(r))
                .collect();
            if !kept.is_empty() {
                self.notes.kept.push(format!(
                    "{what} TO {}",
                    kept.iter()
                        .map(|r| grantee_sql(r))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                p.roles.extend(kept.into_iter().cloned());
            }
            // The same roles in the target's order: no difference to recreate for.
            let set = |v: &[Option<String>]| v.iter().cloned().collect::<HashSet<_>>();
            if set(&p.roles) == set(&t.roles) {
                p.roles = t.roles.clone();
            }
        }
        if had_roles && p.roles.is_empty() {
            self.notes.refused.push(format!(
                "{what} names only roles the target does not have ({}): without them it would apply to every role",
                missing.join(", ")
            ));
        }
    }

    /// One object with an owner and maybe an ACL.
    #[allow(clippy::too_many_arguments)]
    fn object(
        &mut self,
        what: &str,
        s_owner: &mut String,
        s_acl: Option<&mut Option<Acl>>,
        t_owner: Option<&str>,
        t_acl: Option<&Option<Acl>>,
    ) -> Option<(String, String)> {
        let renamed = self.owner(what, s_owner, t_owner);
        if let Some(a) = s_acl {
            let t = t_owner.zip(t_acl).map(|(o, a)| (a, o));
            self.acl(what, s_owner, a, t, renamed.clone());
        }
        renamed
    }
}

fn is_role_extra(e: &Extra) -> bool {
    e.kind == "user mapping" || e.kind == "default privileges"
}

/// The source snapshot as the comparison should see it, with the notes; `None` when roles
/// change nothing (same roles on both servers and privileges compared).
pub(crate) fn reconcile(
    src: &Snapshot,
    tgt: &Snapshot,
    privileges: bool,
) -> Option<(Snapshot, RoleNotes)> {
    let src_roles: HashSet<&str> = src.roles.iter().map(String::as_str).collect();
    let tgt_roles: HashSet<&str> = tgt.roles.iter().map(String::as_str).collect();
    if privileges && src_roles == tgt_roles {
        return None;
    }
    let mut out = src.clone();
    let mut cx = Ctx {
        src_roles,
        tgt_roles,
        privileges,
        notes: RoleNotes::default(),
    };

    let t_schemas: HashMap<&str, _> = tgt.schemas.iter().map(|x| (x.name.as_str(), x)).collect();
    for x in &mut out.schemas {
        let t = t_schemas.get(x.name.as_str());
        cx.object(
            &format!("SCHEMA {}", quote_ident(&x.name)),
            &mut x.owner,
            Some(&mut x.acl),
            t.map(|t| t.owner.as_str()),
            t.map(|t| &t.acl),
        );
    }
    let t_colls: HashMap<(&str, &str), _> = tgt
        .collations
        .iter()
        .map(|x| ((x.schema.as_str(), x.name.as_str()), x))
        .collect();
    for x in &mut out.collations {
        let t = t_colls.get(&(x.schema.as_str(), x.name.as_str()));
        let what = format!("COLLATION {}", crate::ident::qualified(&x.schema, &x.name));
        cx.object(&what, &mut x.owner, None, t.map(|t| t.owner.as_str()), None);
    }
    let t_types: HashMap<(&str, &str), _> = tgt
        .types
        .iter()
        .map(|x| ((x.schema.as_str(), x.name.as_str()), x))
        .collect();
    for x in &mut out.types {
        let t = t_types.get(&(x.schema.as_str(), x.name.as_str()));
        let what = format!("TYPE {}", crate::ident::qualified(&x.schema, &x.name));
        cx.object(
            &what,
            &mut x.owner,
            Some(&mut x.acl),
            t.map(|t| t.owner.as_str()),
            t.map(|t| &t.acl),
        );
    }
    let t_seqs: HashMap<(&str, &str), _> = tgt
        .sequences
        .iter()
        .map(|x| ((x.schema.as_str(), x.name.as_str()), x))
        .collect();
    for x in &mut out.sequences {
        let t = t_seqs.get(&(x.schema.as_str(), x.name.as_str()));
        let what = format!("SEQUENCE {}", crate::ident::qualified(&x.schema, &x.name));
        cx.object(
            &what,
            &mut x.owner,
            Some(&mut x.acl),
            t.map(|t| t.owner.as_str()),
            t.map(|t| &t.acl),
        );
    }
    let t_tables: HashMap<(&str, &str), _> = tgt
        .tables
        .iter()
        .map(|x| ((x.schema.as_str(), x.name.as_str()), x))
        .collect();
    for x in &mut out.tables {
        let t = t_tables.get(&(x.schema.as_str(), x.name.as_str()));
        let name = x.sql_name();
        let renamed = cx.object(
            &format!("TABLE {name}"),
            &mut x.owner,
            Some(&mut x.acl),
            t.map(|t| t.owner.as_str()),
            t.map(|t| &t.acl),
        );
        cx.columns(
            &name,
            &mut x.columns,
            t.map(|t| t.columns.as_slice()),
            &renamed,
        );
        for p in &mut x.policies {
            let tp = t.and_then(|t| t.policies.iter().find(|tp| tp.name == p.name));
            cx.policy(&name, p, tp);
        }
    }
    let t_views: HashMap<(&str, &str), _> = tgt
        .views
        .iter()
        .map(|x| ((x.schema.as_str(), x.name.as_str()), x))
        .collect();
    for x in &mut out.views {
        let t = t_views.get(&(x.schema.as_str(), x.name.as_str()));
        let name = x.sql_name();
        let kind = if x.materialized {
            "MATERIALIZED VIEW"
        } else {
            "VIEW"
        };
        let renamed = cx.object(
            &format!("{kind} {name}"),
            &mut x.owner,
            Some(&mut x.acl),
            t.map(|t| t.owner.as_str()),
            t.map(|t| &t.acl),
        );
        cx.columns(
            &name,
            &mut x.columns,
            t.map(|t| t.columns.as_slice()),
            &renamed,
        );
    }
    let t_funcs: HashMap<String, _> = tgt.functions.iter().map(|x| (x.signature(), x)).collect();
    for x in &mut out.functions {
        let sig = x.signature();
        let t = t_funcs.get(&sig);
        let kind = if x.is_procedure() {
            "PROCEDURE"
        } else {
            "FUNCTION"
        };
        cx.object(
            &format!("{kind} {sig}"),
            &mut x.owner,
            Some(&mut x.acl),
            t.map(|t| t.owner.as_str()),
            t.map(|t| &t.acl),
        );
    }
    let t_pubs: HashMap<&str, _> = tgt
        .publications
        .iter()
        .map(|x| (x.name.as_str(), x))
        .collect();
    for x in &mut out.publications {
        let t = t_pubs.get(x.name.as_str());
        let what = format!("PUBLICATION {}", quote_ident(&x.name));
        cx.object(&what, &mut x.owner, None, t.map(|t| t.owner.as_str()), None);
    }

    // Extras: owners and ACLs like the rest; user mappings and default privileges by role.
    let t_extras: HashMap<(&str, &str), &Extra> = tgt
        .extras
        .iter()
        .map(|x| ((x.kind.as_str(), x.identity.as_str()), x))
        .collect();
    let mut extras = Vec::with_capacity(out.extras.len());
    for mut x in std::mem::take(&mut out.extras) {
        let t = t_extras
            .get(&(x.kind.as_str(), x.identity.as_str()))
            .copied();
        if is_role_extra(&x) {
            let privs = x.kind == "default privileges";
            if privs && !cx.privileges {
                continue; // the target's are put back below
            }
            let lacks = [&x.role, &x.grantee]
                .into_iter()
                .flatten()
                .any(|r| !cx.in_tgt(r));
            if lacks {
                cx.notes.not_applied.push(x.create.clone());
                continue;
            }
            extras.push(x);
            continue;
        }
        if x.owner.is_some() || x.acl.is_some() {
            let what = x
                .acl_object
                .clone()
                .or_else(|| {
                    x.meta_kind
                        .as_ref()
                        .zip(x.meta_name.as_ref())
                        .map(|(k, n)| format!("{k} {n}"))
                })
                .unwrap_or_else(|| format!("{} {}", x.kind, x.identity));
            let mut owner = x.owner.clone().unwrap_or_default();
            let t_owner = t.map(|t| t.owner.as_deref().unwrap_or(""));
            let has_acl = x.acl_object.is_some();
            let renamed = cx.owner(&what, &mut owner, t_owner);
            if has_acl {
                cx.acl(
                    &what,
                    &owner,
                    &mut x.acl,
                    t.map(|t| (&t.acl, t.owner.as_deref().unwrap_or(""))),
                    renamed,
                );
            }
            if x.owner.is_some() || !owner.is_empty() {
                x.owner = (!owner.is_empty()).then_some(owner);
            }
        }
        extras.push(x);
    }
    // The target's user mappings and default privileges of roles the source lacks (or all its
    // default privileges, with --no-privileges) stay.
    let have: HashSet<(String, String)> = extras
        .iter()
        .map(|x| (x.kind.clone(), x.identity.clone()))
        .collect();
    let mut synthetic = u32::MAX;
    for t in tgt.extras.iter().filter(|x| is_role_extra(x)) {
        if have.contains(&(t.kind.clone(), t.identity.clone())) {
            continue;
        }
        let all = !cx.privileges && t.kind == "default privileges";
        let foreign = [&t.role, &t.grantee]
            .into_iter()
            .flatten()
            .any(|r| !cx.in_src(r));
        if !(all || foreign) {
            continue;
        }
        cx.notes.kept.push(t.create.clone());
        let mut k = t.clone();
        // Its oid is the target's: keep it from meeting a source object's dependencies.
        k.oid = synthetic;
        synthetic -= 1;
        k.deps.clear();
        extras.push(k);
    }
    out.extras = extras;
    Some((out, cx.notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(grantee: Option<&str>, grantor: &str, p: &str) -> AclItem {
        AclItem {
            grantee: grantee.map(str::to_string),
            grantor: grantor.into(),
            privilege: p.into(),
            grantable: false,
        }
    }

    fn cx<'a>(src: &[&'a str], tgt: &[&'a str]) -> Ctx<'a> {
        Ctx {
            src_roles: src.iter().copied().collect(),
            tgt_roles: tgt.iter().copied().collect(),
            privileges: true,
            notes: RoleNotes::default(),
        }
    }

    #[test]
    fn a_production_grant_is_kept_and_a_development_grant_is_not_applied() {
        let mut c = cx(&["dev", "owner", "both"], &["app", "owner", "both"]);
        let mut s = vec![
            item(Some("owner"), "owner", "SELECT"),
            item(Some("dev"), "owner", "SELECT"),
            item(Some("both"), "owner", "UPDATE"),
        ];
        let t = vec![
            item(Some("owner"), "owner", "SELECT"),
            item(Some("app"), "owner", "SELECT"),
            item(Some("both"), "owner", "INSERT"),
        ];
        c.items("TABLE t", &mut s, Some(&t), &None);
        let names: Vec<_> = s
            .iter()
            .map(|i| (i.grantee.clone().unwrap(), i.privilege.clone()))
            .collect();
        assert_eq!(
            names,
            [
                ("owner".into(), "SELECT".into()),
                ("both".into(), "UPDATE".into()),
                ("app".into(), "SELECT".into())
            ]
        );
        assert_eq!(c.notes.kept, ["GRANT SELECT ON TABLE t TO app"]);
        assert_eq!(c.notes.not_applied, ["GRANT SELECT ON TABLE t TO dev"]);
    }

    #[test]
    fn an_owner_is_aligned_only_between_roles_of_both_servers() {
        let mut c = cx(&["dev", "both", "b2"], &["prod", "both", "b2"]);
        let mut o = "both".to_string();
        assert_eq!(
            c.owner("TABLE t", &mut o, Some("b2")),
            None,
            "both roles on both servers: aligned by the diff"
        );
        assert_eq!(o, "both");
        let mut o = "both".to_string();
        assert_eq!(
            c.owner("TABLE t", &mut o, Some("prod")),
            Some(("both".into(), "prod".into()))
        );
        assert_eq!(o, "prod");
        let mut o = "dev".to_string();
        assert_eq!(
            c.owner("TABLE t", &mut o, Some("both")),
            Some(("dev".into(), "both".into()))
        );
        let mut o = "dev".to_string();
        assert_eq!(
            c.owner("TABLE n", &mut o, None),
            Some(("dev".into(), String::new()))
        );
        assert_eq!(c.notes.kept.len(), 2);
        assert_eq!(c.notes.not_applied.len(), 1);
    }

    #[test]
    fn no_privileges_takes_the_targets_side() {
        let mut c = cx(&["a"], &["a"]);
        c.privileges = false;
        let mut o = "a".to_string();
        c.owner("TABLE t", &mut o, Some("b"));
        assert_eq!(o, "b");
        let mut acl = Some(Acl {
            items: vec![item(Some("a"), "a", "SELECT")],
            default: vec![],
        });
        c.acl("TABLE t", "b", &mut acl, Some((&None, "b")), None);
        assert_eq!(acl, None);
    }
}
