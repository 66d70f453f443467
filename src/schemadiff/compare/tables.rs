//! Tables: dropping one (and what hangs off it), the changes made before the main pass
//! (detaching, renaming NOT NULL constraints, defaults that must go first), and altering a table
//! in place (columns, types, defaults, identity, partitions, storage, RLS).

use super::*;

impl<'a> Builder<'a> {
    pub(super) fn drop_table(&mut self, t: &'a Table) {
        let name = t.sql_name();
        // Sequences owned by the table that the source keeps must survive the drop.
        for s in self.tgt.owned_sequences(&t.schema, &t.name) {
            if !s.identity && self.src.sequence(&s.schema, &s.name).is_some() {
                self.main.push(Step::new(
                    format!("Detach sequence {} from {name}", s.qualname().sql()),
                    format!("ALTER SEQUENCE {} OWNED BY NONE;", s.qualname().sql()),
                ));
            }
        }
        // Partitions the source keeps leave the parent first.
        for p in &self.tgt.tables {
            if p.is_partition()
                && p.parents
                    .first()
                    .is_some_and(|q| q.schema == t.schema && q.name == t.name)
                && !self.redo.contains(&table_key(&p.schema, &p.name))
            {
                self.main.push(alter(
                    t,
                    format!("Detach partition {} from {name}", p.sql_name()),
                    format!("ALTER TABLE {name} DETACH PARTITION {};", p.sql_name()),
                ));
                self.drop_detached_subitems(p);
            }
        }
        if self.opts.drop {
            if let Some(s) = drop_step(&Item::Table(t)) {
                self.main.push(s);
            }
            return;
        }
        let stone = tombstone_name(&t.name, self.opts.at);
        if let Some(parent) = t.parents.first().filter(|_| t.is_partition()) {
            if !self.redo.contains(&table_key(&parent.schema, &parent.name)) {
                self.main.push(alter(
                    t,
                    format!("Detach partition {name} before keeping it as a tombstone"),
                    format!("ALTER TABLE {} DETACH PARTITION {name};", parent.sql()),
                ));
            }
        }
        self.main.push(alter(
            t,
            format!(
                "Keep table {name} (the source lacks it) as tombstone {}",
                quote_ident(&stone)
            ),
            format!("ALTER TABLE {name} RENAME TO {};", quote_ident(&stone)),
        ));
        self.footer
            .push(format!("DROP TABLE {};", qualified(&t.schema, &stone)));
    }

    /// A detached partition keeps the indexes and constraints it had through its parent;
    /// those that are recreated must go now (before the detach they could not be dropped).
    pub(super) fn drop_detached_subitems(&mut self, p: &'a Table) {
        for c in &p.constraints {
            let k = item_key(&Item::Constraint(p, c));
            let inherited = c.from_parent
                || c.index
                    .as_deref()
                    .and_then(|i| p.index(i))
                    .is_some_and(|i| i.parent_index.is_some());
            if inherited && self.redo.contains(&k) && !ddl::is_implied_constraint(c) {
                self.main.push(alter(
                    p,
                    format!(
                        "Drop constraint {} of detached {}",
                        quote_ident(&c.name),
                        p.sql_name()
                    ),
                    format!(
                        "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {};",
                        p.sql_name(),
                        quote_ident(&c.name)
                    ),
                ));
            }
        }
        for i in p
            .indexes
            .iter()
            .filter(|i| i.constraint.is_none() && i.parent_index.is_some())
        {
            let k = item_key(&Item::Index(Relation::Table(p), i));
            if self.redo.contains(&k) {
                self.main.push(alter(
                    p,
                    format!(
                        "Drop index {} of detached {}",
                        quote_ident(&i.name),
                        p.sql_name()
                    ),
                    format!("DROP INDEX IF EXISTS {};", qualified(&i.schema, &i.name)),
                ));
            }
        }
    }

    /// Pass 1 part of a table both sides have: removals.
    pub(super) fn table_pre(&mut self, s: &'a Table, t: &'a Table, key: &Key) {
        let name = t.sql_name();
        if (s.is_partition() || t.is_partition())
            && (s.parents != t.parents || s.partition_bound != t.partition_bound)
        {
            if let Some(p) = t.parents.first().filter(|_| t.is_partition()) {
                if !self.redo.contains(&table_key(&p.schema, &p.name))
                    && self.tgt.table(&p.schema, &p.name).is_some()
                {
                    self.main.push(alter(
                        t,
                        format!("Detach partition {}", t.sql_name()),
                        format!("ALTER TABLE {} DETACH PARTITION {};", p.sql(), t.sql_name()),
                    ));
                    self.drop_detached_subitems(t);
                }
            }
        }
        let reset = self.reset_defaults.contains(key);
        for c in t.constraints.iter().filter(|c| ddl::is_inline_check(c)) {
            let keep = s.constraints.iter().any(|x| {
                ddl::is_inline_check(x) && x.name == c.name && x.definition == c.definition
            });
            if !keep || reset {
                self.main.push(alter(
                    t,
                    format!("Drop check constraint {} on {name}", quote_ident(&c.name)),
                    format!(
                        "ALTER TABLE {name} DROP CONSTRAINT IF EXISTS {};",
                        quote_ident(&c.name)
                    ),
                ));
            }
        }
        for c in &t.columns {
            if crate::ident::is_tombstone(&c.name) {
                continue;
            }
            let col = quote_ident(&c.name);
            let sc = s.column(&c.name);
            let inherited = !c.is_local || t.is_partition();
            if reset && c.default.is_some() && c.identity.is_none() && c.generated.is_none() {
                self.main.push(alter(
                    t,
                    format!("Drop the default of {name}.{col} (it uses an object being replaced)"),
                    format!("ALTER TABLE {name} ALTER COLUMN {col} DROP DEFAULT;"),
                ));
            }
            let regenerated = sc.is_some_and(|sc| {
                sc.generated != c.generated || sc.generated_virtual != c.generated_virtual
            });
            if (sc.is_some() && !regenerated) || inherited {
                continue;
            }
            for q in &self.tgt.sequences {
                let owned = q.owned_by.as_ref().is_some_and(|o| {
                    o.schema == t.schema && o.table == t.name && o.column == c.name
                });
                if owned && !q.identity && self.src.sequence(&q.schema, &q.name).is_some() {
                    self.main.push(Step::new(
                        format!("Detach sequence {} from {name}.{col}", q.qualname().sql()),
                        format!("ALTER SEQUENCE {} OWNED BY NONE;", q.qualname().sql()),
                    ));
                }
            }
            if self.opts.drop || regenerated {
                self.main.push(
                    alter(
                        t,
                        format!("Drop column {col} of {name}"),
                        format!("ALTER TABLE {name} DROP COLUMN IF EXISTS {col};"),
                    )
                    .hazard(Hazard::DeletesData),
                );
            } else {
                let stone = tombstone_name(&c.name, self.opts.at);
                let mut sql = String::new();
                if c.identity.is_some() {
                    sql.push_str(&format!(
                        "ALTER TABLE {name} ALTER COLUMN {col} DROP IDENTITY;\n"
                    ));
                }
                if c.not_null {
                    sql.push_str(&format!(
                        "ALTER TABLE {name} ALTER COLUMN {col} DROP NOT NULL;\n"
                    ));
                }
                sql.push_str(&format!(
                    "ALTER TABLE {name} RENAME COLUMN {col} TO {};",
                    quote_ident(&stone)
                ));
                self.main.push(alter(
                    t,
                    format!(
                        "Keep column {col} of {name} (the source lacks it) as tombstone {}",
                        quote_ident(&stone)
                    ),
                    sql,
                ));
                self.footer.push(format!(
                    "ALTER TABLE {name} DROP COLUMN {};",
                    quote_ident(&stone)
                ));
            }
        }
    }

    pub(super) fn alter_table(&mut self, s: &'a Table, t: &'a Table, key: &Key) {
        let name = s.sql_name();
        let reset = self.reset_defaults.contains(key);
        self.alter_inheritance(s, t, &name);
        let attach = self.attach_step(s, t, &name);
        // Columns follow the parent only when the table already was its partition.
        let partition = s.is_partition() && t.is_partition();
        let cx = ColumnCx {
            name: &name,
            reset,
            partition,
            plain: s.kind == TableKind::Ordinary && !partition && s.parents.is_empty(),
            children: self.parents.contains(key),
            attaching: attach.is_some(),
        };
        for c in &s.columns {
            if !crate::ident::is_tombstone(&c.name) {
                self.alter_column(s, t, c, &cx);
            }
        }
        if let Some(a) = attach {
            self.attach_partition(s, t, key, a);
        }
        self.alter_inline_checks(s, t, &name, reset, cx.plain);
        self.alter_table_options(s, t, &name);
        self.main.extend(meta_steps(
            Meta {
                kind: "TABLE",
                name: name.to_string(),
                acl_object: Some(format!("TABLE {name}")),
                owner: (&s.owner, &t.owner),
                acl: (s.acl.as_ref(), t.acl.as_ref()),
                comment: (s.comment.as_deref(), t.comment.as_deref()),
            },
            &self.tgt.roles,
            Some(&name),
        ));
    }

    /// `INHERIT` / `NO INHERIT` for a table that is not a partition on either side.
    fn alter_inheritance(&mut self, s: &Table, t: &Table, name: &QuotedName) {
        if !(s.is_partition() || t.is_partition()) && s.parents != t.parents {
            for p in &t.parents {
                if !s.parents.contains(p) {
                    self.main.push(alter(
                        s,
                        format!("Stop inheriting from {}", p.sql()),
                        format!("ALTER TABLE {name} NO INHERIT {};", p.sql()),
                    ));
                }
            }
            for p in &s.parents {
                if !t.parents.contains(p) {
                    self.main.push(alter(
                        s,
                        format!("Inherit from {}", p.sql()),
                        format!("ALTER TABLE {name} INHERIT {};", p.sql()),
                    ));
                }
            }
        }
    }

    /// The `ATTACH PARTITION` of a table that becomes a partition or changes bound; it runs
    /// after the rest of the pass ([`Self::attach_partition`]).
    fn attach_step(&mut self, s: &Table, t: &Table, name: &QuotedName) -> Option<Step> {
        if s.is_partition() && (s.parents != t.parents || s.partition_bound != t.partition_bound) {
            if let Some(p) = s.parents.first().filter(|_| s.is_partition()) {
                return Some(
                    alter(
                        s,
                        format!("Attach partition {name}"),
                        format!(
                            "ALTER TABLE {} ATTACH PARTITION {name} {};",
                            p.sql(),
                            s.partition_bound.as_deref().unwrap_or("DEFAULT")
                        ),
                    )
                    .hazard(Hazard::Validates),
                );
            }
        }
        None
    }

    /// One column that both sides have (or that the source adds): type, identity, default,
    /// NOT NULL, comment and column privileges.
    fn alter_column(&mut self, s: &'a Table, t: &'a Table, c: &'a Column, cx: &ColumnCx) {
        let name = cx.name;
        let partition = cx.partition;
        let reset = cx.reset;
        let col = quote_ident(&c.name);
        // A column only inherited in the target disappears with its parent's (not a
        // partition's: detached, it keeps its columns).
        let parent_drops = |tc: &Column| {
            !tc.is_local
                && !t.is_partition()
                && t.parents.iter().all(|p| {
                    self.src
                        .table(&p.schema, &p.name)
                        .is_none_or(|pt| pt.column(&c.name).is_none())
                })
        };
        let tc = t.column(&c.name).filter(|tc| {
            tc.generated == c.generated
                && tc.generated_virtual == c.generated_virtual
                && !parent_drops(tc)
        });
        let Some(tc) = tc else {
            if (c.is_local || s.is_partition()) && !partition {
                let mut st = alter(
                    s,
                    format!("Add column {col} to {name}"),
                    format!(
                        "ALTER TABLE {name} ADD COLUMN {};",
                        ddl::column_definition(c)
                    ),
                );
                if c.generated.is_some() || c.identity.is_some() {
                    st = st.hazard(Hazard::Rewrite);
                }
                self.main.push(st);
                if let Some(cm) = &c.comment {
                    self.main
                        .push(comment_step("COLUMN", &format!("{name}.{col}"), Some(cm)));
                }
                if !c.acl.is_empty() {
                    self.main.push(Step::new(
                        format!("Grant on column {col} of {name}"),
                        ddl::column_grants(name, &s.owner, c),
                    ));
                }
            }
            return;
        };
        let mut have_default = if reset { None } else { tc.default.clone() };
        let inherited = (!c.is_local && !s.is_partition()) || partition;
        if (c.type_name != tc.type_name || c.collation != tc.collation) && !inherited {
            let mut sql = String::new();
            if have_default.is_some() {
                sql.push_str(&format!(
                    "ALTER TABLE {name} ALTER COLUMN {col} DROP DEFAULT;\n"
                ));
                have_default = None;
            }
            let coll = c
                .collation
                .as_ref()
                .map(|x| format!(" COLLATE {x}"))
                .unwrap_or_default();
            sql.push_str(&format!(
                "ALTER TABLE {name} ALTER COLUMN {col} TYPE {}{coll} USING {};",
                c.type_name,
                cast_expr(&col, &tc.type_name, &c.type_name)
            ));
            self.main.push(
                alter(
                    s,
                    format!("Change the type of {name}.{col} to {}", c.type_name),
                    sql,
                )
                .hazard(Hazard::Rewrite),
            );
        }
        if self.alter_identity(s, c, tc, name, have_default.is_some()) {
            return;
        }
        if c.identity.is_none() && c.generated.is_none() && c.default != have_default {
            match &c.default {
                Some(d) => self.main.push(alter(
                    s,
                    format!("Set the default of {name}.{col}"),
                    format!("ALTER TABLE {name} ALTER COLUMN {col} SET DEFAULT {d};"),
                )),
                None => self.main.push(alter(
                    s,
                    format!("Drop the default of {name}.{col}"),
                    format!("ALTER TABLE {name} ALTER COLUMN {col} DROP DEFAULT;"),
                )),
            }
        }
        self.alter_not_null(s, t, c, tc, cx);
        // Both sides name their NOT NULL constraints (18+): the same name.
        if let (true, true, Some(sn), Some(tn)) =
            (c.not_null, tc.not_null, &c.not_null_name, &tc.not_null_name)
        {
            // Renamed while the target's constraint is its own (an inherited one cannot
            // be renamed): a table attached below (detached first if it was a partition)
            // is renamed before the attach.
            let own = cx.attaching || !inherited_not_null(t, tc);
            if sn != tn && (own || !inherited_not_null(s, c)) {
                self.main.push(alter(
                    s,
                    format!(
                        "Rename the NOT NULL constraint of {name}.{col} to {}",
                        quote_ident(sn)
                    ),
                    format!(
                        "ALTER TABLE {name} RENAME CONSTRAINT {} TO {};",
                        quote_ident(tn),
                        quote_ident(sn)
                    ),
                ));
            }
        }
        if c.comment != tc.comment {
            self.main.push(comment_step(
                "COLUMN",
                &format!("{name}.{col}"),
                c.comment.as_deref(),
            ));
        }
        if let Some(st) = column_acl_steps(name, c, tc, &self.tgt.roles) {
            self.main.push(st);
        }
    }

    /// Identity added, dropped or changed. True when the column becomes an identity column
    /// (which also settles its default and NOT NULL).
    fn alter_identity(
        &mut self,
        s: &Table,
        c: &Column,
        tc: &Column,
        name: &QuotedName,
        has_default: bool,
    ) -> bool {
        let col = quote_ident(&c.name);
        match (c.identity, tc.identity) {
            (Some(si), None) => {
                let mut opts = Vec::new();
                if let Some(q) = &c.identity_sequence {
                    opts.push(format!("SEQUENCE NAME {}", q.sql()));
                }
                if let Some(o) = &c.identity_options {
                    opts.push(ddl::sequence_options(o));
                }
                if has_default {
                    self.main.push(alter(
                        s,
                        format!("Drop the default of {name}.{col}"),
                        format!("ALTER TABLE {name} ALTER COLUMN {col} DROP DEFAULT;"),
                    ));
                }
                if !tc.not_null {
                    self.main.push(
                        alter(
                            s,
                            format!("Set {name}.{col} NOT NULL"),
                            format!("ALTER TABLE {name} ALTER COLUMN {col} SET NOT NULL;"),
                        )
                        .hazard(Hazard::Validates),
                    );
                }
                self.main.push(alter(
                    s,
                    format!("Make {name}.{col} an identity column"),
                    format!(
                        "ALTER TABLE {name} ALTER COLUMN {col} ADD GENERATED {} AS IDENTITY ({});",
                        identity_sql(si),
                        opts.join(" ")
                    ),
                ));
                return true;
            }
            (None, Some(_)) => {
                self.main.push(alter(
                    s,
                    format!("Drop identity of {name}.{col}"),
                    format!("ALTER TABLE {name} ALTER COLUMN {col} DROP IDENTITY;"),
                ));
            }
            (Some(si), Some(ti)) => {
                let mut parts = Vec::new();
                if si != ti {
                    parts.push(format!("SET GENERATED {}", identity_sql(si)));
                }
                if let (Some(so), Some(to)) = (&c.identity_options, &tc.identity_options) {
                    let changes = sequence_option_changes(so, to);
                    match &tc.identity_sequence {
                        // `ALTER COLUMN … SET` cannot change the sequence's type (`LIKE …
                        // INCLUDING ALL` makes it bigint): the sequence itself can.
                        Some(seq) if so.data_type != to.data_type => {
                            self.main.push(alter(
                                s,
                                format!("Change the identity sequence of {name}.{col}"),
                                format!("ALTER SEQUENCE {} {};", seq.sql(), changes.join(" ")),
                            ));
                        }
                        _ => {
                            for o in changes {
                                if !o.starts_with("AS ") {
                                    parts.push(format!("SET {o}"));
                                }
                            }
                        }
                    }
                }
                if !parts.is_empty() {
                    self.main.push(alter(
                        s,
                        format!("Change identity of {name}.{col}"),
                        format!("ALTER TABLE {name} ALTER COLUMN {col} {};", parts.join(" ")),
                    ));
                }
            }
            (None, None) => {}
        }
        false
    }

    /// SET / DROP NOT NULL, online (a NOT VALID check validated apart) where it can be.
    fn alter_not_null(
        &mut self,
        s: &'a Table,
        t: &'a Table,
        c: &Column,
        tc: &Column,
        cx: &ColumnCx,
    ) {
        let (name, partition) = (cx.name, cx.partition);
        let col = quote_ident(&c.name);
        let parent_same = partition
            && s.parents
                .first()
                .and_then(|p| self.src.table(&p.schema, &p.name))
                .and_then(|p| p.column(&c.name))
                .is_some_and(|p| p.not_null == c.not_null)
            && t.parents
                .first()
                .and_then(|p| self.tgt.table(&p.schema, &p.name))
                .and_then(|p| p.column(&c.name))
                .is_some_and(|p| p.not_null == tc.not_null);
        if c.not_null != tc.not_null
            && !parent_same
            && !(c.identity.is_some() && tc.identity.is_none())
        {
            // On 18+ a NOT NULL is a named constraint: name it as the source does (a plain
            // SET NOT NULL would take a default name, or a suffixed one if taken).
            let set_not_null = match (&c.not_null_name, self.tgt.server_version >= 180000) {
                (Some(nn), true) => format!(
                    "ALTER TABLE {name} ADD CONSTRAINT {} NOT NULL {col};",
                    quote_ident(nn)
                ),
                _ => format!("ALTER TABLE {name} ALTER COLUMN {col} SET NOT NULL;"),
            };
            if c.not_null {
                if self.opts.online && cx.plain && !cx.children {
                    // Not "_not_null": 18 names a column's NOT NULL constraint that way.
                    let check =
                        crate::ident::derived_name(&s.name, &format!("_{}_not_null_check", c.name));
                    let ck = quote_ident(&check);
                    self.main.push(alter(s, format!("Check {name}.{col} IS NOT NULL for new rows (existing rows are validated next)"), format!("ALTER TABLE {name} ADD CONSTRAINT {ck} CHECK ({col} IS NOT NULL) NOT VALID;")));
                    self.validate.push(
                        Step::new(
                            format!("Validate that {name}.{col} has no NULL"),
                            format!("ALTER TABLE {name} VALIDATE CONSTRAINT {ck};"),
                        )
                        .lock(LockMode::ShareUpdateExclusive, name.clone())
                        .hazard(Hazard::Validates),
                    );
                    self.post.push(alter(
                        s,
                        format!("Set {name}.{col} NOT NULL (the validated check spares the scan) and drop the check"),
                        format!("{set_not_null}\nALTER TABLE {name} DROP CONSTRAINT {ck};"),
                    ));
                } else {
                    self.main.push(
                        alter(s, format!("Set {name}.{col} NOT NULL"), set_not_null)
                            .hazard(Hazard::Validates),
                    );
                }
            } else if !(s
                .primary_key
                .as_ref()
                .is_some_and(|pk| pk.contains(&c.name)))
            {
                self.main.push(alter(
                    s,
                    format!("Drop NOT NULL of {name}.{col}"),
                    format!("ALTER TABLE {name} ALTER COLUMN {col} DROP NOT NULL;"),
                ));
            }
        }
    }

    /// Attaches a table as a partition, after everything else of this pass: the new parent and
    /// the partition's own indexes (which the attach adopts) exist by then.
    fn attach_partition(&mut self, s: &'a Table, t: &'a Table, key: &Key, a: Step) {
        self.standalone.insert(key.clone());
        // ATTACH adopts, for each index of the parent, the first matching index of the
        // partition (by oid). An index of the target that must stay unattached but matches
        // one would be adopted in place of the one the source attaches: it is dropped
        // before the attach and built again after it.
        let parent = s
            .parents
            .first()
            .and_then(|p| self.src.table(&p.schema, &p.name));
        let mut rebuild = Vec::new();
        for ti in t.indexes.iter().filter(|i| i.constraint.is_none()) {
            let Some(si) = s.index(&ti.name) else {
                continue;
            };
            if si.parent_index.is_some() || si.definition != ti.definition {
                continue;
            }
            if parent.is_some_and(|p| p.indexes.iter().any(|pi| same_index_shape(pi, si))) {
                let qn = qualified(&ti.schema, &ti.name);
                self.main.push(alter(
                    s,
                    format!("Drop index {qn} before the attach (it would be adopted)"),
                    format!("DROP INDEX {qn};"),
                ));
                rebuild.push(si);
            }
        }
        self.after.push(a);
        for si in rebuild {
            self.after.push(
                alter(
                    s,
                    format!(
                        "Build index {} again, unattached",
                        qualified(&si.schema, &si.name)
                    ),
                    ddl::create_index(si),
                )
                .hazard(Hazard::BuildsIndex),
            );
        }
    }

    /// Inline checks that are new or changed (online: added NOT VALID, validated apart).
    fn alter_inline_checks(
        &mut self,
        s: &'a Table,
        t: &'a Table,
        name: &QuotedName,
        reset: bool,
        plain: bool,
    ) {
        for c in s.constraints.iter().filter(|c| ddl::is_inline_check(c)) {
            let keep = t.constraints.iter().any(|x| {
                ddl::is_inline_check(x) && x.name == c.name && x.definition == c.definition
            });
            if keep && !reset {
                if let Some(x) = t.constraint(&c.name) {
                    if x.comment != c.comment {
                        self.main.push(comment_step(
                            "CONSTRAINT",
                            &format!("{} ON {name}", quote_ident(&c.name)),
                            c.comment.as_deref(),
                        ));
                    }
                }
                continue;
            }
            let cn = quote_ident(&c.name);
            if self.opts.online && plain {
                self.main.push(alter(
                    s,
                    format!("Add check {cn} on {name} without checking existing rows"),
                    format!(
                        "ALTER TABLE {name} ADD CONSTRAINT {cn} {} NOT VALID;",
                        c.definition
                    ),
                ));
                self.validate.push(
                    Step::new(
                        format!("Validate constraint {cn} on {name}"),
                        format!("ALTER TABLE {name} VALIDATE CONSTRAINT {cn};"),
                    )
                    .lock(LockMode::ShareUpdateExclusive, name.clone())
                    .hazard(Hazard::Validates),
                );
            } else {
                self.main.push(
                    alter(
                        s,
                        format!("Add check {cn} on {name}"),
                        format!("ALTER TABLE {name} ADD CONSTRAINT {cn} {};", c.definition),
                    )
                    .hazard(Hazard::Validates),
                );
            }
            if let Some(cm) = &c.comment {
                self.main.push(comment_step(
                    "CONSTRAINT",
                    &format!("{cn} ON {name}"),
                    Some(cm),
                ));
            }
        }
    }

    /// Storage parameters, logging, row-level security and replica identity.
    fn alter_table_options(&mut self, s: &'a Table, t: &'a Table, name: &QuotedName) {
        if s.reloptions != t.reloptions {
            let gone: Vec<String> = t
                .reloptions
                .iter()
                .filter_map(|o| o.split('=').next())
                .filter(|k| !s.reloptions.iter().any(|x| x.split('=').next() == Some(k)))
                .map(|k| k.to_string())
                .collect();
            if !gone.is_empty() {
                self.main.push(alter(
                    s,
                    format!("Reset storage parameters of {name}"),
                    format!("ALTER TABLE {name} RESET ({});", gone.join(", ")),
                ));
            }
            if !s.reloptions.is_empty() {
                self.main.push(alter(
                    s,
                    format!("Set storage parameters of {name}"),
                    format!("ALTER TABLE {name} SET ({});", s.reloptions.join(", ")),
                ));
            }
        }
        if s.unlogged != t.unlogged {
            self.main.push(
                alter(
                    s,
                    format!(
                        "Make {name} {}",
                        if s.unlogged { "unlogged" } else { "logged" }
                    ),
                    format!(
                        "ALTER TABLE {name} SET {};",
                        if s.unlogged { "UNLOGGED" } else { "LOGGED" }
                    ),
                )
                .hazard(Hazard::Rewrite),
            );
        }
        if s.rls_enabled != t.rls_enabled {
            let v = if s.rls_enabled { "ENABLE" } else { "DISABLE" };
            self.main.push(alter(
                s,
                format!("{} row-level security on {name}", v.to_lowercase()),
                format!("ALTER TABLE {name} {v} ROW LEVEL SECURITY;"),
            ));
        }
        if s.rls_forced != t.rls_forced {
            let v = if s.rls_forced { "FORCE" } else { "NO FORCE" };
            self.main.push(alter(
                s,
                format!("{} row-level security on {name}", v.to_lowercase()),
                format!("ALTER TABLE {name} {v} ROW LEVEL SECURITY;"),
            ));
        }
        if s.replica_identity != t.replica_identity && s.replica_identity != "i" {
            let v = match s.replica_identity.as_str() {
                "f" => "FULL",
                "n" => "NOTHING",
                _ => "DEFAULT",
            };
            self.main.push(alter(
                s,
                format!("Set replica identity of {name} to {v}"),
                format!("ALTER TABLE ONLY {name} REPLICA IDENTITY {v};"),
            ));
        }
    }
}

/// What every column of one table's alteration needs to know about the table.
struct ColumnCx<'n> {
    name: &'n QuotedName,
    /// The target's defaults are dropped first (a type change needs it).
    reset: bool,
    /// A partition on both sides: its columns follow the parent.
    partition: bool,
    /// An ordinary table with no parents: NOT NULL can be added online.
    plain: bool,
    /// Other tables inherit from it.
    children: bool,
    /// It becomes a partition (or changes bound) in this pass.
    attaching: bool,
}

pub(super) fn identity_sql(i: Identity) -> &'static str {
    match i {
        Identity::Always => "ALWAYS",
        Identity::ByDefault => "BY DEFAULT",
    }
}

/// Whether the target's columns of a table change in a way that views over it cannot survive.
/// The target's columns (attnums) that the change retypes, re-collates, regenerates or drops
/// (a tombstone rename keeps its dependents working, so tombstones do not count).
pub(super) fn columns_rewritten(s: &Table, t: &Table) -> Vec<i16> {
    t.columns
        .iter()
        .filter(|tc| match s.column(&tc.name) {
            None => !crate::ident::is_tombstone(&tc.name),
            Some(sc) => {
                sc.type_name != tc.type_name
                    || sc.collation != tc.collation
                    || sc.generated != tc.generated
                    || sc.generated_virtual != tc.generated_virtual
            }
        })
        .map(|tc| tc.num)
        .collect()
}

/// Type family for choosing a conversion: within a family (or from / to text) a direct cast
/// exists; across families the value goes through its text form.
pub(super) fn family(t: &str) -> &'static str {
    let t = t.trim_end_matches("[]");
    let base = t.split('(').next().unwrap_or(t).trim();
    match base {
        "smallint" | "integer" | "bigint" | "numeric" | "real" | "double precision" | "money" => {
            "num"
        }
        "text" | "character varying" | "character" | "\"char\"" | "name" | "citext" => "text",
        "timestamp without time zone"
        | "timestamp with time zone"
        | "date"
        | "interval"
        | "time without time zone"
        | "time with time zone" => "time",
        "json" | "jsonb" => "json",
        "boolean" => "bool",
        "uuid" => "uuid",
        "bytea" => "bytea",
        _ if t.contains('.') => "user",
        _ => "other",
    }
}

/// `USING` expression that converts `col` from `from` to `to`.
pub(super) fn cast_expr(col: &str, from: &str, to: &str) -> String {
    let (f, t) = (family(from), family(to));
    let arrays = from.ends_with("[]") || to.ends_with("[]");
    if !arrays && f != "user" && t != "user" && (f == t || f == "text" || t == "text") {
        format!("{col}::{to}")
    } else {
        format!("{col}::text::{to}")
    }
}

pub(super) fn is_subsequence(small: &[String], big: &[String]) -> bool {
    let mut it = big.iter();
    small.iter().all(|x| it.any(|y| y == x))
}

/// A column whose NOT NULL comes from a parent (a partition's, an inherited column's): its
/// constraint is renamed on the parent, not here.
pub(super) fn inherited_not_null(t: &Table, c: &Column) -> bool {
    !c.is_local || c.inherit_count > 0 || t.is_partition()
}

/// Whether a partition's index matches a partitioned index closely enough for ATTACH
/// PARTITION to adopt it: the same access method, keys, opclasses and predicate (what follows
/// the table name in `pg_get_indexdef`) and the same uniqueness.
pub(super) fn same_index_shape(parent: &Index, part: &Index) -> bool {
    let shape = |d: &str| d.split_once(" USING ").map(|(_, r)| r.to_string());
    parent.unique == part.unique
        && shape(&parent.definition).is_some()
        && shape(&parent.definition) == shape(&part.definition)
}
