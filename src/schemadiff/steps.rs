//! What one change becomes: SQL, the sentence a human reads, the lock and the hazards.
//!
//! Small builders shared by [`super::compare`]: drops of single items, owner / privilege /
//! comment differences (which PostgreSQL can always ALTER in place), sequence options.

use std::collections::BTreeSet;

use crate::catalog::*;
use crate::ddl::{grantee_sql, Item, Relation};
use crate::ident::QuotedName;
use crate::ident::{qualified, quote_ident, quote_literal};
use crate::plan::{Hazard, LockMode, Step};

/// The SQL name of a relation a lock is on.
pub(crate) fn rel_sql(r: &Relation) -> QuotedName {
    r.sql_name()
}

/// `DROP …` of one item; `None` for items that have no drop of their own.
pub(crate) fn drop_step(item: &Item) -> Option<Step> {
    Some(match item {
        Item::Schema(s) => Step::new(
            format!("Drop schema {}", quote_ident(&s.name)),
            format!("DROP SCHEMA IF EXISTS {};", quote_ident(&s.name)),
        ),
        Item::Extension(e) => Step::new(
            format!("Drop extension {}", quote_ident(&e.name)),
            format!("DROP EXTENSION IF EXISTS {};", quote_ident(&e.name)),
        ),
        Item::Collation(c) => Step::new(
            format!("Drop collation {}", qualified(&c.schema, &c.name)),
            format!(
                "DROP COLLATION IF EXISTS {};",
                qualified(&c.schema, &c.name)
            ),
        ),
        Item::Type(t) => {
            let kind = if matches!(t.kind, TypeKind::Domain { .. }) {
                "DOMAIN"
            } else {
                "TYPE"
            };
            Step::new(
                format!("Drop {} {}", kind.to_lowercase(), t.qualname().sql()),
                format!("DROP {kind} IF EXISTS {};", t.qualname().sql()),
            )
        }
        Item::Function(f) => {
            let kind = if f.is_procedure() {
                "PROCEDURE"
            } else {
                "FUNCTION"
            };
            Step::new(
                format!("Drop {} {}", kind.to_lowercase(), f.signature()),
                format!("DROP {kind} IF EXISTS {};", f.signature()),
            )
        }
        Item::Sequence(s) => Step::new(
            format!("Drop sequence {}", s.qualname().sql()),
            format!("DROP SEQUENCE IF EXISTS {};", s.qualname().sql()),
        )
        .lock(LockMode::AccessExclusive, s.qualname().quoted()),
        Item::Table(t) => Step::new(
            format!("Drop table {}", t.sql_name()),
            format!("DROP TABLE IF EXISTS {};", t.sql_name()),
        )
        .lock(LockMode::AccessExclusive, t.sql_name())
        .hazard(Hazard::DeletesData),
        Item::View(v) => {
            let kind = if v.materialized {
                "MATERIALIZED VIEW"
            } else {
                "VIEW"
            };
            Step::new(
                format!("Drop {} {}", kind.to_lowercase(), v.sql_name()),
                format!("DROP {kind} IF EXISTS {};", v.sql_name()),
            )
            .lock(LockMode::AccessExclusive, v.sql_name())
        }
        Item::SequenceOwnedBy(_) | Item::ReplicaIdentity(_) => return None,
        Item::Extra(e) => {
            let sql = e.drop.as_deref().filter(|d| !d.trim().is_empty())?;
            let mut s = Step::new(format!("Drop {}", e.describe()), sql);
            if let Some(on) = &e.on {
                s = s.lock(
                    LockMode::AccessExclusive,
                    QuotedName::qualified(&on.schema, &on.name),
                );
            }
            s
        }
        Item::Constraint(t, c) => {
            if c.from_parent {
                return None;
            }
            Step::new(
                format!(
                    "Drop constraint {} on {}",
                    quote_ident(&c.name),
                    t.sql_name()
                ),
                format!(
                    "ALTER TABLE IF EXISTS {} DROP CONSTRAINT IF EXISTS {};",
                    t.sql_name(),
                    quote_ident(&c.name)
                ),
            )
            .lock(LockMode::AccessExclusive, t.sql_name())
        }
        Item::Index(r, i) => {
            if i.constraint.is_some() || i.parent_index.is_some() {
                return None;
            }
            Step::new(
                format!("Drop index {}", qualified(&i.schema, &i.name)),
                format!("DROP INDEX IF EXISTS {};", qualified(&i.schema, &i.name)),
            )
            .lock(LockMode::AccessExclusive, rel_sql(r))
        }
        Item::Trigger(r, t) => {
            if t.from_parent {
                return None;
            }
            Step::new(
                format!("Drop trigger {} on {}", quote_ident(&t.name), rel_sql(r)),
                format!(
                    "DROP TRIGGER IF EXISTS {} ON {};",
                    quote_ident(&t.name),
                    rel_sql(r)
                ),
            )
            .lock(LockMode::AccessExclusive, rel_sql(r))
        }
        Item::Policy(t, p) => Step::new(
            format!("Drop policy {} on {}", quote_ident(&p.name), t.sql_name()),
            format!(
                "DROP POLICY IF EXISTS {} ON {};",
                quote_ident(&p.name),
                t.sql_name()
            ),
        )
        .lock(LockMode::AccessExclusive, t.sql_name()),
        Item::Publication(p) => Step::new(
            format!("Drop publication {}", quote_ident(&p.name)),
            format!("DROP PUBLICATION IF EXISTS {};", quote_ident(&p.name)),
        ),
    })
}

type Priv = (Option<String>, String, bool);

fn effective(acl: Option<&Acl>, other: Option<&Acl>) -> BTreeSet<Priv> {
    let items = match (acl, other) {
        (Some(a), _) => &a.items,
        (None, Some(o)) => &o.default,
        (None, None) => return BTreeSet::new(),
    };
    items
        .iter()
        .map(|i| (i.grantee.clone(), i.privilege.clone(), i.grantable))
        .collect()
}

/// GRANT / REVOKE statements that turn privileges `have` into `want` on `object` (what
/// follows `ON`), for grantees that exist (`roles`). `column` for column privileges.
fn acl_sql(
    object: &str,
    column: Option<&str>,
    want: &BTreeSet<Priv>,
    have: &BTreeSet<Priv>,
    roles: &[String],
) -> String {
    let cols = column
        .map(|c| format!(" ({})", quote_ident(c)))
        .unwrap_or_default();
    let exists = |g: &Option<String>| g.as_ref().is_none_or(|r| roles.contains(r));
    let mut out = String::new();
    for (g, p, grantable) in have.difference(want) {
        if !exists(g) {
            continue;
        }
        // Only the grant option differs: revoke just the option.
        if !grantable && want.contains(&(g.clone(), p.clone(), true)) {
            continue;
        }
        let still = want.contains(&(g.clone(), p.clone(), false));
        if *grantable && still {
            out.push_str(&format!(
                "REVOKE GRANT OPTION FOR {p}{cols} ON {object} FROM {} CASCADE;\n",
                grantee_sql(g)
            ));
        } else {
            out.push_str(&format!(
                "REVOKE {p}{cols} ON {object} FROM {} CASCADE;\n",
                grantee_sql(g)
            ));
        }
    }
    for (g, p, grantable) in want.difference(have) {
        if !exists(g) {
            continue;
        }
        out.push_str(&format!(
            "GRANT {p}{cols} ON {object} TO {}{};\n",
            grantee_sql(g),
            if *grantable { " WITH GRANT OPTION" } else { "" }
        ));
    }
    out
}

/// What differs in owner, privileges and comment of one object.
pub(crate) struct Meta<'a> {
    /// `TABLE`, `VIEW`, `FUNCTION`, … as in `ALTER <kind>` and `COMMENT ON <kind>`.
    pub kind: &'a str,
    /// The object's SQL name (with the argument list for functions).
    pub name: String,
    /// What follows `ON` in GRANT (`TABLE s.t`, `SCHEMA s`); `None` when it has no ACL.
    pub acl_object: Option<String>,
    pub owner: (&'a str, &'a str),
    pub acl: (Option<&'a Acl>, Option<&'a Acl>),
    pub comment: (Option<&'a str>, Option<&'a str>),
}

/// Steps that bring owner, privileges and comment of an object from target to source.
pub(crate) fn meta_steps(m: Meta, roles: &[String], lock_on: Option<&QuotedName>) -> Vec<Step> {
    let mut out = Vec::new();
    let (want_owner, have_owner) = m.owner;
    if want_owner != have_owner && !want_owner.is_empty() && roles.iter().any(|r| r == want_owner) {
        let mut s = Step::new(
            format!(
                "Change the owner of {} {} to {want_owner}",
                m.kind.to_lowercase(),
                m.name
            ),
            format!(
                "ALTER {} {} OWNER TO {};",
                m.kind,
                m.name,
                quote_ident(want_owner)
            ),
        );
        if let Some(l) = lock_on {
            s = s.lock(LockMode::AccessExclusive, l.clone());
        }
        out.push(s);
    }
    if let Some(obj) = &m.acl_object {
        let want = effective(m.acl.0, m.acl.1);
        let have = effective(m.acl.1, m.acl.0);
        if want != have {
            let sql = acl_sql(obj, None, &want, &have, roles);
            if !sql.is_empty() {
                out.push(Step::new(
                    format!(
                        "Change the privileges on {} {}",
                        m.kind.to_lowercase(),
                        m.name
                    ),
                    sql,
                ));
            }
        }
    }
    if m.comment.0 != m.comment.1 {
        out.push(comment_step(m.kind, &m.name, m.comment.0));
    }
    out
}

pub(crate) fn comment_step(kind: &str, name: &str, comment: Option<&str>) -> Step {
    Step::new(
        format!("Set the comment on {} {}", kind.to_lowercase(), name),
        format!(
            "COMMENT ON {kind} {name} IS {};",
            comment.map(quote_literal).unwrap_or_else(|| "NULL".into())
        ),
    )
}

/// Column privilege differences.
pub(crate) fn column_acl_steps(
    table_sql: &str,
    want: &Column,
    have: &Column,
    roles: &[String],
) -> Option<Step> {
    let set = |c: &Column| -> BTreeSet<Priv> {
        c.acl
            .iter()
            .map(|i| (i.grantee.clone(), i.privilege.clone(), i.grantable))
            .collect()
    };
    let (w, h) = (set(want), set(have));
    if w == h {
        return None;
    }
    let sql = acl_sql(
        &format!("TABLE {table_sql}"),
        Some(&want.name),
        &w,
        &h,
        roles,
    );
    (!sql.is_empty()).then(|| {
        Step::new(
            format!(
                "Change the privileges on column {} of {table_sql}",
                quote_ident(&want.name)
            ),
            sql,
        )
    })
}

/// `ALTER SEQUENCE` options that differ.
pub(crate) fn sequence_option_changes(
    want: &SequenceOptions,
    have: &SequenceOptions,
) -> Vec<String> {
    let mut o = Vec::new();
    if want.data_type != have.data_type {
        o.push(format!("AS {}", want.data_type));
    }
    if want.increment != have.increment {
        o.push(format!("INCREMENT BY {}", want.increment));
    }
    if want.min != have.min || want.data_type != have.data_type {
        o.push(format!("MINVALUE {}", want.min));
    }
    if want.max != have.max || want.data_type != have.data_type {
        o.push(format!("MAXVALUE {}", want.max));
    }
    if want.start != have.start {
        o.push(format!("START WITH {}", want.start));
    }
    if want.cache != have.cache {
        o.push(format!("CACHE {}", want.cache));
    }
    if want.cycle != have.cycle {
        o.push(if want.cycle { "CYCLE" } else { "NO CYCLE" }.into());
    }
    o
}
