//! Types: enum values added or renamed in place, and the columns an enum change must move
//! through text; other type changes.

use super::*;

impl<'a> Builder<'a> {
    /// An enum losing or reordering values: renamed away, recreated in pass 2, columns moved
    /// over, the old type dropped in pass 3.
    pub(super) fn enum_rename(&mut self, t: &'a TypeDef) {
        let old = format!("{}_pgflip_old", t.name);
        self.main.push(Step::new(
            format!(
                "Rename enum {} out of the way to recreate it",
                t.qualname().sql()
            ),
            format!(
                "ALTER TYPE {} RENAME TO {};",
                t.qualname().sql(),
                quote_ident(&old)
            ),
        ));
    }

    pub(super) fn enum_move_columns(&mut self, e: &'a TypeDef) {
        let ty = e.qualname().sql();
        for t in &self.tgt.tables {
            for c in &t.columns {
                let uses = c.type_name == ty || c.type_name == format!("{ty}[]");
                if !uses || !c.is_local || t.is_partition() {
                    continue;
                }
                let name = t.sql_name();
                let col = quote_ident(&c.name);
                let mut sql = String::new();
                if c.default.is_some() {
                    sql.push_str(&format!(
                        "ALTER TABLE {name} ALTER COLUMN {col} DROP DEFAULT;\n"
                    ));
                }
                sql.push_str(&format!(
                    "ALTER TABLE {name} ALTER COLUMN {col} TYPE {} USING {col}::text::{};\n",
                    c.type_name, c.type_name
                ));
                let default = self
                    .src
                    .table(&t.schema, &t.name)
                    .and_then(|s| s.column(&c.name))
                    .and_then(|s| s.default.clone())
                    .or_else(|| c.default.clone());
                if let Some(d) = default {
                    sql.push_str(&format!(
                        "ALTER TABLE {name} ALTER COLUMN {col} SET DEFAULT {d};\n"
                    ));
                }
                self.main.push(
                    alter(
                        t,
                        format!("Move column {col} of {name} to the recreated enum {ty}"),
                        sql,
                    )
                    .hazard(Hazard::Rewrite),
                );
            }
        }
        let old = qualified(&e.schema, &format!("{}_pgflip_old", e.name));
        self.after.push(Step::new(
            format!("Drop the replaced enum {old}"),
            format!("DROP TYPE IF EXISTS {old};"),
        ));
    }

    pub(super) fn alter_type(&mut self, s: &'a TypeDef, t: &'a TypeDef) {
        let name = s.qualname().sql();
        let mut kind = "TYPE";
        match (&s.kind, &t.kind) {
            (TypeKind::Enum { labels: sl }, TypeKind::Enum { labels: tl }) => {
                let mut present: Vec<&String> = tl.iter().collect();
                for (i, l) in sl.iter().enumerate() {
                    if present.contains(&l) {
                        continue;
                    }
                    let pos = if i > 0 {
                        format!(" AFTER {}", quote_literal(&sl[i - 1]))
                    } else if let Some(next) = sl.iter().find(|x| present.contains(x)) {
                        format!(" BEFORE {}", quote_literal(next))
                    } else {
                        String::new()
                    };
                    self.pre.push(
                        Step::new(
                            format!("Add value {} to enum {name}", quote_literal(l)),
                            format!("ALTER TYPE {name} ADD VALUE {}{pos};", quote_literal(l)),
                        )
                        .outside_transaction(),
                    );
                    present.push(l);
                }
            }
            (
                TypeKind::Domain {
                    default: sd,
                    not_null: sn,
                    constraints: sc,
                    ..
                },
                TypeKind::Domain {
                    default: td,
                    not_null: tn,
                    constraints: tc,
                    ..
                },
            ) => {
                kind = "DOMAIN";
                if sd != td {
                    self.main.push(Step::new(
                        format!("Change the default of domain {name}"),
                        match sd {
                            Some(d) => format!("ALTER DOMAIN {name} SET DEFAULT {d};"),
                            None => format!("ALTER DOMAIN {name} DROP DEFAULT;"),
                        },
                    ));
                }
                if sn != tn {
                    self.main.push(
                        Step::new(
                            format!("Change NOT NULL of domain {name}"),
                            format!(
                                "ALTER DOMAIN {name} {} NOT NULL;",
                                if *sn { "SET" } else { "DROP" }
                            ),
                        )
                        .hazard(Hazard::Validates),
                    );
                }
                for c in tc {
                    if !sc
                        .iter()
                        .any(|x| x.name == c.name && x.definition == c.definition)
                    {
                        self.main.push(Step::new(
                            format!("Drop constraint {} of domain {name}", quote_ident(&c.name)),
                            format!(
                                "ALTER DOMAIN {name} DROP CONSTRAINT IF EXISTS {};",
                                quote_ident(&c.name)
                            ),
                        ));
                    }
                }
                for c in sc {
                    let cn = quote_ident(&c.name);
                    match tc
                        .iter()
                        .find(|x| x.name == c.name && x.definition == c.definition)
                    {
                        None => self.main.push(
                            Step::new(
                                format!("Add constraint {cn} to domain {name}"),
                                format!(
                                    "ALTER DOMAIN {name} ADD CONSTRAINT {cn} {};",
                                    c.definition
                                ),
                            )
                            .hazard(Hazard::Validates),
                        ),
                        Some(x) => {
                            if x.comment != c.comment {
                                self.main.push(comment_step(
                                    "CONSTRAINT",
                                    &format!("{cn} ON DOMAIN {name}"),
                                    c.comment.as_deref(),
                                ));
                            }
                        }
                    }
                }
            }
            (
                TypeKind::Composite { attributes: sa, .. },
                TypeKind::Composite { attributes: ta, .. },
            ) => {
                for a in ta {
                    if !sa.iter().any(|x| x.name == a.name) {
                        self.main.push(Step::new(
                            format!("Drop attribute {} of type {name}", quote_ident(&a.name)),
                            format!("ALTER TYPE {name} DROP ATTRIBUTE {};", quote_ident(&a.name)),
                        ));
                    }
                }
                for a in sa {
                    let an = quote_ident(&a.name);
                    let coll = a
                        .collation
                        .as_ref()
                        .map(|c| format!(" COLLATE {c}"))
                        .unwrap_or_default();
                    match ta.iter().find(|x| x.name == a.name) {
                        None => self.main.push(Step::new(
                            format!("Add attribute {an} to type {name}"),
                            format!(
                                "ALTER TYPE {name} ADD ATTRIBUTE {an} {}{coll};",
                                a.type_name
                            ),
                        )),
                        Some(x) => {
                            if x.type_name != a.type_name || x.collation != a.collation {
                                self.main.push(Step::new(
                                    format!("Change the type of attribute {an} of type {name}"),
                                    format!(
                                        "ALTER TYPE {name} ALTER ATTRIBUTE {an} TYPE {}{coll};",
                                        a.type_name
                                    ),
                                ));
                            }
                            if x.comment != a.comment {
                                self.main.push(comment_step(
                                    "COLUMN",
                                    &format!("{name}.{an}"),
                                    a.comment.as_deref(),
                                ));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        self.main.extend(meta_steps(
            Meta {
                kind,
                name: name.clone(),
                acl_object: Some(format!("{kind} {name}")),
                owner: (&s.owner, &t.owner),
                acl: (s.acl.as_ref(), t.acl.as_ref()),
                comment: (s.comment.as_deref(), t.comment.as_deref()),
            },
            &self.tgt.roles,
            None,
        ));
    }
}
