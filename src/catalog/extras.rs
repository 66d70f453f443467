//! The object kinds that pgflip does not model field by field: operators, operator classes and
//! families, aggregates, casts, text search objects, conversions, extended statistics, rules,
//! event triggers, foreign-data wrappers, servers, user mappings, foreign tables, default
//! privileges, base types, per-column and per-index-column settings, tablespaces of relations,
//! typed tables and security labels.
//!
//! The server renders each into its CREATE and DROP text ([`super::extras_sql`]); pgflip
//! compares those texts and recreates what differs, which is correct for every kind here
//! because none of them holds data. Owner, privileges and comment are kept apart so that they
//! are ALTERed in place. A kind that cannot be dropped or recreated safely (a base type: its
//! columns would go with it; a security label: it needs its provider) has no `drop` or is not
//! `diffable`, and a difference in it is reported by name rather than applied.

use serde::{Deserialize, Serialize};

use super::{Acl, Dependency, ObjClass, ObjRef, Snapshot};

/// One object of a kind listed in the module documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Extra {
    /// `operator`, `aggregate`, `column statistics`, … (what a human reads).
    pub kind: String,
    /// The catalog row (`synthetic` for settings that have none: numbered at load).
    pub class: ObjClass,
    pub oid: u32,
    pub schema: Option<String>,
    /// Pairs the object across databases: qualified, quoted, without oids.
    pub identity: String,
    /// SQL that creates it (or applies the setting), without owner, privileges and comment.
    pub create: String,
    /// SQL that drops it (or resets the setting); `None` when it cannot be dropped safely.
    pub drop: Option<String>,
    /// `ALTER <meta_kind> <meta_name> OWNER TO …` / `COMMENT ON <meta_kind> <meta_name>`.
    pub meta_kind: Option<String>,
    pub meta_name: Option<String>,
    /// What follows `ON` in GRANT, for kinds with privileges.
    pub acl_object: Option<String>,
    pub acl: Option<Acl>,
    pub owner: Option<String>,
    pub comment: Option<String>,
    /// Catalog rows it needs that `pg_depend` does not record against it (members of operator
    /// classes, the relation of a column setting).
    pub deps: Vec<ObjRef>,
    /// The relation (or index) it belongs to: it goes with it when that is dropped.
    pub on: Option<OnRelation>,
    /// Dropped after the tables have been altered (other objects may still use it until then).
    pub deferred: bool,
    /// Whether schema diff may create, drop or recreate it at all.
    pub diffable: bool,
    /// Applying it rewrites the relation (moving it to another tablespace).
    pub rewrites: bool,
    /// The role it is for (user mappings, default privileges): a role the other server lacks
    /// cannot be named there.
    pub role: Option<String>,
    /// The role a default privilege is granted to (`None`: PUBLIC, or not a default privilege).
    pub grantee: Option<String>,
    /// For a base type: the shell that its I/O functions need before the type exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
}

impl Default for Extra {
    fn default() -> Self {
        Extra {
            kind: String::new(),
            class: ObjClass::Synthetic,
            oid: 0,
            schema: None,
            identity: String::new(),
            create: String::new(),
            drop: None,
            meta_kind: None,
            meta_name: None,
            acl_object: None,
            acl: None,
            owner: None,
            comment: None,
            deps: Vec::new(),
            on: None,
            deferred: false,
            diffable: true,
            rewrites: false,
            role: None,
            grantee: None,
            shell: None,
        }
    }
}

/// The relation an [`Extra`] hangs off: `kind` is `table`, `view`, `matview` or `index`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnRelation {
    pub kind: String,
    pub schema: String,
    pub name: String,
}

impl Extra {
    pub fn own_ref(&self) -> ObjRef {
        ObjRef {
            class: self.class,
            oid: self.oid,
        }
    }

    /// `Kind identity`, for messages and script comments.
    pub fn describe(&self) -> String {
        let mut k = self.kind.clone();
        if let Some(first) = k.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        format!("{k} {}", self.identity)
    }
}

/// Numbers the synthetic items, adds the shells of base types, and adds the edges that
/// `pg_depend` does not hold to the snapshot's dependencies.
pub(super) fn attach(snap: &mut Snapshot, mut extras: Vec<Extra>) {
    let mut next = 1u32;
    let mut shells = Vec::new();
    for e in &mut extras {
        if e.class == ObjClass::Synthetic {
            e.oid = next;
            next += 1;
        }
        if let Some(sql) = e.shell.take() {
            shells.push((
                e.own_ref(),
                Extra {
                    kind: "shell type".into(),
                    class: ObjClass::Synthetic,
                    oid: next,
                    schema: e.schema.clone(),
                    identity: e.identity.clone(),
                    create: sql,
                    drop: None,
                    deferred: true,
                    ..Extra::default()
                },
            ));
            next += 1;
        }
    }
    for e in &extras {
        for d in &e.deps {
            snap.dependencies.push(Dependency {
                from: e.own_ref(),
                to: *d,
                deptype: 'n',
            });
        }
    }
    // A base type needs its I/O functions, which need the type: they are created over its
    // shell instead (as pg_dump does).
    for (ty, shell) in &shells {
        let needs: Vec<ObjRef> = snap
            .dependencies
            .iter()
            .filter(|d| d.from == *ty && d.to.class == ObjClass::Proc)
            .map(|d| d.to)
            .collect();
        for d in &mut snap.dependencies {
            if d.to == *ty && needs.contains(&d.from) {
                d.to = shell.own_ref();
            }
        }
    }
    extras.extend(shells.into_iter().map(|(_, s)| s));
    snap.dependencies
        .sort_unstable_by_key(|d| (d.from, d.to, d.deptype));
    snap.dependencies.dedup();
    snap.extras = extras;
}
