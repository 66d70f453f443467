//! Creating an item that is new, or recreating one dropped in the first pass, with its lock
//! and hazards, and whether an index still needs building.

use super::*;
use crate::ident::QuotedName;

impl<'a> Builder<'a> {
    pub(super) fn create(&mut self, item: Item<'a>, key: &Key, recreated: bool) {
        let what = item.describe();
        let verb = if recreated { "Recreate" } else { "Create" };
        match item {
            Item::Table(t) if t.is_partition() && !recreated => {
                let parent = &t.parents[0];
                if self.existing(&table_key(&parent.schema, &parent.name)) {
                    self.standalone.insert(key.clone());
                    let mut alone = t.clone();
                    alone.partition_bound = None;
                    alone.parents.clear();
                    for c in &mut alone.columns {
                        c.is_local = true;
                    }
                    // ATTACH wants the parent's CHECK constraints already there.
                    for c in &mut alone.constraints {
                        if c.kind == ConstraintKind::Check {
                            c.is_local = true;
                            c.from_parent = false;
                        }
                    }
                    alone
                        .constraints
                        .retain(|c| c.kind == ConstraintKind::Check);
                    let parent_table = self.src.table(&parent.schema, &parent.name);
                    for c in &mut alone.columns {
                        if let Some(pc) = parent_table.and_then(|p| p.column(&c.name)) {
                            if c.default.is_none() {
                                c.default = pc.default.clone();
                            }
                        }
                    }
                    self.main.push(Step::new(
                        format!("{verb} {what} on its own (attached below)"),
                        ddl::create_table(&alone),
                    ));
                    self.after.push(
                        alter(
                            t,
                            format!("Attach partition {} to {}", t.sql_name(), parent.sql()),
                            format!(
                                "ALTER TABLE {} ATTACH PARTITION {} {};",
                                parent.sql(),
                                t.sql_name(),
                                t.partition_bound.as_deref().unwrap_or("DEFAULT")
                            ),
                        )
                        .hazard(Hazard::Validates),
                    );
                    return;
                }
            }
            Item::Index(Relation::Table(t), i)
                if self.standalone.contains(&table_key(&t.schema, &t.name)) =>
            {
                let mut i = i.clone();
                let attached = i.parent_index.take().is_some();
                let sql = ddl::create_index(&i);
                if !sql.is_empty() {
                    // Only the indexes the attach must adopt exist before it: an unattached one
                    // that matches a parent's index would be adopted instead.
                    if attached {
                        self.main.push(Step::new(format!("{verb} {what}"), sql));
                    } else {
                        self.after.push(Step::new(format!("{verb} {what}"), sql));
                    }
                }
                return;
            }
            Item::Constraint(t, c) if self.standalone.contains(&table_key(&t.schema, &t.name)) => {
                let mut t = t.clone();
                for i in &mut t.indexes {
                    i.parent_index = None;
                }
                let sql = ddl::create_constraint(&t, c);
                if !sql.is_empty() {
                    self.main.push(Step::new(format!("{verb} {what}"), sql));
                }
                return;
            }
            Item::Type(t) if recreated && matches!(t.kind, TypeKind::Enum { .. }) => {
                self.main
                    .push(Step::new(format!("{verb} {what}"), ddl::create_type(t)));
                self.enum_move_columns(t);
                return;
            }
            Item::View(v) if v.materialized => {
                self.main.push(
                    Step::new(
                        format!("{verb} {what}"),
                        ddl::create_view_with_data(v, true),
                    )
                    .hazard(Hazard::ReplacesData),
                );
                return;
            }
            Item::Index(r, i) => {
                let sql = ddl::create_index(i);
                if sql.is_empty() {
                    return;
                }
                let rk = relation_key(&r);
                let partitioned =
                    matches!(r, Relation::Table(t) if t.kind == TableKind::Partitioned);
                let needed = self.index_needed(i);
                if self.opts.online
                    && self.existing(&rk)
                    && !partitioned
                    && i.parent_index.is_none()
                    && !needed
                {
                    let def = i.definition.replacen(" INDEX ", " INDEX CONCURRENTLY ", 1);
                    self.concurrent_indexes.insert(item_key(&Item::Index(r, i)));
                    self.concurrent.push(
                        Step::new(
                            format!(
                                "Build index {} without blocking writes",
                                qualified(&i.schema, &i.name)
                            ),
                            format!("{def};"),
                        )
                        .lock(LockMode::ShareUpdateExclusive, r.sql_name())
                        .hazard(Hazard::BuildsIndex)
                        .outside_transaction(),
                    );
                    if let Some(c) = &i.comment {
                        self.after.push(comment_step(
                            "INDEX",
                            &qualified(&i.schema, &i.name),
                            Some(c),
                        ));
                    }
                } else {
                    let lock = if self.existing(&rk) {
                        LockMode::Share
                    } else {
                        LockMode::None
                    };
                    self.main.push(
                        Step::new(format!("{verb} {what}"), sql)
                            .lock(lock, r.sql_name())
                            .hazard(Hazard::BuildsIndex),
                    );
                }
                return;
            }
            Item::Constraint(t, c) => {
                let sql = ddl::create_constraint(t, c);
                if sql.is_empty() {
                    return;
                }
                let tk = table_key(&t.schema, &t.name);
                let online_kind =
                    matches!(c.kind, ConstraintKind::ForeignKey | ConstraintKind::Check);
                if self.opts.online
                    && online_kind
                    && c.validated
                    && self.existing(&tk)
                    && t.kind == TableKind::Ordinary
                    && !t.is_partition()
                {
                    let def = format!("{} NOT VALID", c.definition);
                    let cn = quote_ident(&c.name);
                    let name = t.sql_name();
                    let only = if c.kind == ConstraintKind::Check && c.no_inherit {
                        "ONLY "
                    } else {
                        ""
                    };
                    let mut sql = format!("ALTER TABLE {only}{name} ADD CONSTRAINT {cn} {def};\n");
                    sql.push_str(&ddl::comment_on(
                        "CONSTRAINT",
                        &format!("{cn} ON {name}"),
                        c.comment.as_deref(),
                    ));
                    let lock = if c.kind == ConstraintKind::ForeignKey {
                        LockMode::ShareRowExclusive
                    } else {
                        LockMode::AccessExclusive
                    };
                    self.main.push(
                        Step::new(format!("{verb} {what} without checking existing rows"), sql)
                            .lock(lock, name.clone()),
                    );
                    self.validate.push(
                        Step::new(
                            format!("Validate constraint {cn} on {name}"),
                            format!("ALTER TABLE {name} VALIDATE CONSTRAINT {cn};"),
                        )
                        .lock(LockMode::ShareUpdateExclusive, name)
                        .hazard(Hazard::Validates),
                    );
                } else {
                    let lock = if self.existing(&tk) {
                        LockMode::AccessExclusive
                    } else {
                        LockMode::None
                    };
                    let mut s = Step::new(format!("{verb} {what}"), sql).lock(lock, t.sql_name());
                    if self.existing(&tk) {
                        s = s.hazard(Hazard::Validates);
                    }
                    self.main.push(s);
                }
                return;
            }
            _ => {}
        }
        let sql = match item {
            // Owners that exist on the target, which the script is for.
            Item::Extra(e) => ddl::create_extra(e, &self.tgt.roles),
            _ => ddl::render_item(self.src, &item),
        };
        if sql.trim().is_empty() {
            return;
        }
        let mut step = Step::new(format!("{verb} {what}"), sql);
        if let Item::Extra(e) = item {
            if owner_key(&item).is_some_and(|o| self.concurrent_indexes.contains(&o)) {
                self.concurrent.push(step.outside_transaction());
                return;
            }
            if e.rewrites
                && e.on
                    .as_ref()
                    .is_some_and(|_| owner_key(&item).is_some_and(|o| self.existing(&o)))
            {
                step = step.hazard(Hazard::Rewrite);
            }
        }
        if let Some(o) = owner_key(&item) {
            if self.existing(&o) {
                if let Some(r) = o.schema_and_name() {
                    step = step.lock(LockMode::AccessExclusive, QuotedName::qualified(r.0, r.1));
                }
            }
        }
        let _ = key;
        self.main.push(step);
    }

    /// Unique indexes that a foreign key or replica identity needs are built in the
    /// transaction (so that what needs them can follow).
    pub(super) fn index_needed(&self, i: &Index) -> bool {
        if !i.unique {
            return false;
        }
        let oid = i.oid;
        let r = ObjRef {
            class: ObjClass::Class,
            oid,
        };
        self.src
            .dependencies
            .iter()
            .any(|d| d.to == r && d.from.class == ObjClass::Constraint)
            || self.src.tables.iter().any(|t| {
                t.replica_identity_index.as_deref() == Some(&i.name) && t.schema == i.schema
            })
    }
}
