//! Altering an item that both sides have: owners, privileges, comments, and what PostgreSQL
//! can change in place for views, functions, sequences, indexes, constraints and the rest.

use super::*;

impl<'a> Builder<'a> {
    #[allow(clippy::collapsible_match)] // one arm per kind reads better than guards
    pub(super) fn alter_item(&mut self, s_item: Item<'a>, t_item: Item<'a>, key: &Key) {
        let roles = &self.tgt.roles;
        match (s_item, t_item) {
            (Item::Schema(s), Item::Schema(t)) => {
                let name = quote_ident(&s.name);
                self.main.extend(meta_steps(
                    Meta {
                        kind: "SCHEMA",
                        name: name.clone(),
                        acl_object: Some(format!("SCHEMA {name}")),
                        owner: (&s.owner, &t.owner),
                        acl: (s.acl.as_ref(), t.acl.as_ref()),
                        comment: (s.comment.as_deref(), t.comment.as_deref()),
                    },
                    roles,
                    None,
                ));
            }
            (Item::Extension(s), Item::Extension(t)) => {
                let name = quote_ident(&s.name);
                if s.schema != t.schema {
                    self.main.push(Step::new(
                        format!("Move extension {name} to schema {}", quote_ident(&s.schema)),
                        format!(
                            "ALTER EXTENSION {name} SET SCHEMA {};",
                            quote_ident(&s.schema)
                        ),
                    ));
                }
                if s.version != t.version {
                    self.main.push(Step::new(
                        format!("Update extension {name} to version {}", s.version),
                        format!(
                            "ALTER EXTENSION {name} UPDATE TO {};",
                            quote_literal(&s.version)
                        ),
                    ));
                }
                if s.comment != t.comment {
                    self.main
                        .push(comment_step("EXTENSION", &name, s.comment.as_deref()));
                }
            }
            (Item::Collation(s), Item::Collation(t)) => {
                let name = qualified(&s.schema, &s.name);
                self.main.extend(meta_steps(
                    Meta {
                        kind: "COLLATION",
                        name,
                        acl_object: None,
                        owner: (&s.owner, &t.owner),
                        acl: (None, None),
                        comment: (s.comment.as_deref(), t.comment.as_deref()),
                    },
                    roles,
                    None,
                ));
            }
            (Item::Type(s), Item::Type(t)) => self.alter_type(s, t),
            (Item::Function(s), Item::Function(t)) => {
                let kind = if s.is_procedure() {
                    "PROCEDURE"
                } else {
                    "FUNCTION"
                };
                if s.definition != t.definition {
                    self.main.push(Step::new(
                        format!("Replace {} {}", kind.to_lowercase(), s.signature()),
                        format!("{};", s.definition.trim_end()),
                    ));
                }
                self.main.extend(meta_steps(
                    Meta {
                        kind,
                        name: s.signature(),
                        acl_object: Some(format!("{kind} {}", s.signature())),
                        owner: (&s.owner, &t.owner),
                        acl: (s.acl.as_ref(), t.acl.as_ref()),
                        comment: (s.comment.as_deref(), t.comment.as_deref()),
                    },
                    roles,
                    None,
                ));
            }
            (Item::Sequence(s), Item::Sequence(t)) => {
                let name = s.qualname().quoted();
                let changes = sequence_option_changes(&s.options, &t.options);
                if !changes.is_empty() {
                    if s.options.min > t.options.min {
                        // The current value must stay within the new bounds.
                        self.main.push(Step::new(
                            format!("Move sequence {name} up to its new MINVALUE if below it"),
                            format!(
                                "SELECT pg_catalog.setval({}, {}, false) FROM {name} WHERE last_value < {};",
                                quote_literal(&name),
                                s.options.min,
                                s.options.min
                            ),
                        ));
                    }
                    self.main.push(
                        Step::new(
                            format!("Change the options of sequence {name}"),
                            format!("ALTER SEQUENCE {name} {};", changes.join(" ")),
                        )
                        .lock(LockMode::AccessExclusive, name.clone()),
                    );
                }
                if s.owned_by.is_none() && t.owned_by.is_some() {
                    self.main.push(Step::new(
                        format!("Detach sequence {name} from its column"),
                        format!("ALTER SEQUENCE {name} OWNED BY NONE;"),
                    ));
                }
                self.main.extend(meta_steps(
                    Meta {
                        kind: "SEQUENCE",
                        name: name.to_string(),
                        acl_object: Some(format!("SEQUENCE {name}")),
                        owner: (&s.owner, &t.owner),
                        acl: (s.acl.as_ref(), t.acl.as_ref()),
                        comment: (s.comment.as_deref(), t.comment.as_deref()),
                    },
                    roles,
                    None,
                ));
            }
            (Item::SequenceOwnedBy(s), Item::SequenceOwnedBy(t)) => {
                if ddl::sequence_owned_by(s) != ddl::sequence_owned_by(t) {
                    if let Some(sql) = ddl::sequence_owned_by(s) {
                        self.main.push(Step::new(
                            format!("Set the owner column of sequence {}", s.qualname().sql()),
                            sql,
                        ));
                    }
                }
            }
            (Item::Table(s), Item::Table(t)) => self.alter_table(s, t, key),
            (Item::View(s), Item::View(t)) => {
                let name = s.sql_name();
                let kind = if s.materialized {
                    "MATERIALIZED VIEW"
                } else {
                    "VIEW"
                };
                if core(self.src, &s_item) != core(self.tgt, &t_item) {
                    // Only new columns at the end: CREATE OR REPLACE keeps dependents.
                    let body = s.definition.trim().trim_end_matches(';');
                    self.main.push(Step::new(
                        format!("Replace view {name} (columns appended)"),
                        format!("CREATE OR REPLACE VIEW {name} AS\n{body};"),
                    ));
                }
                self.main.extend(meta_steps(
                    Meta {
                        kind,
                        name: name.to_string(),
                        acl_object: Some(format!("TABLE {name}")),
                        owner: (&s.owner, &t.owner),
                        acl: (s.acl.as_ref(), t.acl.as_ref()),
                        comment: (s.comment.as_deref(), t.comment.as_deref()),
                    },
                    roles,
                    None,
                ));
                for c in &s.columns {
                    let tc = t.columns.iter().find(|x| x.name == c.name);
                    if c.comment.as_deref() != tc.and_then(|x| x.comment.as_deref()) {
                        self.main.push(comment_step(
                            "COLUMN",
                            &format!("{name}.{}", quote_ident(&c.name)),
                            c.comment.as_deref(),
                        ));
                    }
                    if let Some(tc) = tc {
                        if let Some(st) = column_acl_steps(&name, c, tc, roles) {
                            self.main.push(st);
                        }
                    }
                }
            }
            (Item::Constraint(st, s), Item::Constraint(tt, t)) => {
                let cn = quote_ident(&s.name);
                let name = st.sql_name();
                let si = s.index.as_deref().and_then(|i| st.index(i));
                let ti = t.index.as_deref().and_then(|i| tt.index(i));
                if let (Some(si), Some(ti)) = (si, ti) {
                    if let (Some(p), None) = (&si.parent_index, &ti.parent_index) {
                        self.after.push(Step::new(
                            format!(
                                "Attach index {} to {}",
                                qualified(&si.schema, &si.name),
                                p.sql()
                            ),
                            format!(
                                "ALTER INDEX {} ATTACH PARTITION {};",
                                p.sql(),
                                qualified(&si.schema, &si.name)
                            ),
                        ));
                    }
                }
                if s.validated && !t.validated {
                    self.validate.push(
                        Step::new(
                            format!("Validate constraint {cn} on {name}"),
                            format!("ALTER TABLE {name} VALIDATE CONSTRAINT {cn};"),
                        )
                        .lock(LockMode::ShareUpdateExclusive, name.clone())
                        .hazard(Hazard::Validates),
                    );
                }
                if s.comment != t.comment {
                    self.main.push(comment_step(
                        "CONSTRAINT",
                        &format!("{cn} ON {name}"),
                        s.comment.as_deref(),
                    ));
                }
                if let (Some(si), Some(ti)) = (
                    s.index.as_deref().and_then(|i| st.index(i)),
                    t.index
                        .as_deref()
                        .and_then(|i| st.index(i).and(Some(i)))
                        .and_then(|i| {
                            self.tgt
                                .table(&st.schema, &st.name)
                                .and_then(|tt| tt.index(i))
                        }),
                ) {
                    if si.comment != ti.comment {
                        self.main.push(comment_step(
                            "INDEX",
                            &qualified(&si.schema, &si.name),
                            si.comment.as_deref(),
                        ));
                    }
                }
            }
            (Item::Index(_, s), Item::Index(_, t)) => {
                if let (Some(p), None) = (&s.parent_index, &t.parent_index) {
                    self.after.push(Step::new(
                        format!(
                            "Attach index {} to {}",
                            qualified(&s.schema, &s.name),
                            p.sql()
                        ),
                        format!(
                            "ALTER INDEX {} ATTACH PARTITION {};",
                            p.sql(),
                            qualified(&s.schema, &s.name)
                        ),
                    ));
                }
                if s.comment != t.comment && s.constraint.is_none() {
                    self.main.push(comment_step(
                        "INDEX",
                        &qualified(&s.schema, &s.name),
                        s.comment.as_deref(),
                    ));
                }
            }
            (Item::Trigger(r, s), Item::Trigger(_, t)) => {
                let rel = r.sql_name();
                let tn = quote_ident(&s.name);
                if s.enabled != t.enabled && !s.from_parent {
                    let state = match s.enabled.as_str() {
                        "D" => "DISABLE TRIGGER",
                        "R" => "ENABLE REPLICA TRIGGER",
                        "A" => "ENABLE ALWAYS TRIGGER",
                        _ => "ENABLE TRIGGER",
                    };
                    self.main.push(
                        Step::new(
                            format!("Set trigger {tn} on {rel}: {}", state.to_lowercase()),
                            format!("ALTER TABLE {rel} {state} {tn};"),
                        )
                        .lock(LockMode::ShareRowExclusive, rel.clone()),
                    );
                }
                if s.comment != t.comment {
                    self.main.push(comment_step(
                        "TRIGGER",
                        &format!("{tn} ON {rel}"),
                        s.comment.as_deref(),
                    ));
                }
            }
            (Item::Policy(st, s), Item::Policy(_, t)) => {
                if s.comment != t.comment {
                    self.main.push(comment_step(
                        "POLICY",
                        &format!("{} ON {}", quote_ident(&s.name), st.sql_name()),
                        s.comment.as_deref(),
                    ));
                }
            }
            (Item::ReplicaIdentity(s), Item::ReplicaIdentity(t)) => {
                let sql = ddl::replica_identity(s);
                if sql != ddl::replica_identity(t) && !sql.is_empty() {
                    self.main.push(alter(
                        s,
                        format!("Set the replica identity of {}", s.sql_name()),
                        sql,
                    ));
                }
            }
            (Item::Extra(s), Item::Extra(t)) => {
                if let (Some(kind), Some(name)) = (&s.meta_kind, &s.meta_name) {
                    self.main.extend(meta_steps(
                        Meta {
                            kind,
                            name: name.clone(),
                            acl_object: s.acl_object.clone(),
                            owner: (
                                s.owner.as_deref().unwrap_or(""),
                                t.owner.as_deref().unwrap_or(""),
                            ),
                            acl: (s.acl.as_ref(), t.acl.as_ref()),
                            comment: (s.comment.as_deref(), t.comment.as_deref()),
                        },
                        roles,
                        None,
                    ));
                }
            }
            _ => {}
        }
    }
}

/// A plain view whose new definition only appends columns (CREATE OR REPLACE works).
pub(super) fn view_appends(s: &View, t: &View) -> bool {
    !s.materialized
        && !t.materialized
        && s.reloptions == t.reloptions
        && t.columns.len() <= s.columns.len()
        && t.columns.iter().zip(&s.columns).all(|(a, b)| {
            a.name == b.name && a.type_name == b.type_name && a.collation == b.collation
        })
        && s.columns
            .iter()
            .map(|c| &c.default)
            .eq(t
                .columns
                .iter()
                .map(|c| &c.default)
                .chain(std::iter::repeat_n(
                    &None,
                    s.columns.len() - t.columns.len(),
                )))
}
