//! Rendering a [`Snapshot`] back to SQL.
//!
//! [`render`] writes the whole schema so that running it on an empty database recreates it:
//! the objects are ordered by the dependency edges the server records (`pg_depend`, see
//! [`order`]), not by a fixed list of sections, with ties broken by kind and name so that equal
//! schemas always give byte-identical output. The per-object functions are public because
//! schema diff and the flip recreate single objects with exactly the same text.
//!
//! The statements use the definitions the server printed (`pg_get_indexdef`, …) and quote
//! every other name with [`crate::ident`]. The script sets an empty `search_path` (every name
//! in it is qualified) and turns off `check_function_bodies` (a function may refer to tables
//! created after it), as `pg_dump` does. Materialized views are created `WITH NO DATA`:
//! populating them is a data step, and their queries may call functions that only work under
//! the application's `search_path`.
//!
//! Partitions are created with `PARTITION OF`. Indexes and key constraints of partitioned
//! tables are created after every partition exists, `ON ONLY` the parent, and the partitions'
//! own indexes are attached to them by name, so every index keeps the name it had.

mod order;

use std::fmt::Write;

use tokio_postgres::Client;

use crate::catalog::*;
use crate::ident::{quote_ident, quote_literal};
use crate::Result;

pub use order::{ordered, Item, Relation};

/// The first lines of a script: settings the statements rely on.
pub const PREAMBLE: &str = "SET check_function_bodies = false;\n\
SELECT pg_catalog.set_config('search_path', '', false);\n";

/// Loads the schema of `client`'s database and renders it ([`Snapshot::load`] + [`render`]).
pub async fn dump_database(client: &Client, filter: &Filter) -> Result<String> {
    let snap = Snapshot::load(client, filter).await?;
    Ok(render(&snap))
}

/// The whole schema as SQL, in dependency order, deterministic.
pub fn render(snap: &Snapshot) -> String {
    let mut out = String::from("-- Schema dump by pgflip\n\n");
    out.push_str(PREAMBLE);
    for item in ordered(snap) {
        let sql = render_item(snap, &item);
        if sql.is_empty() {
            continue;
        }
        let _ = write!(out, "\n-- {}\n{}", item.describe(), sql);
    }
    out
}

/// The SQL of one item of [`ordered`].
pub fn render_item(snap: &Snapshot, item: &Item) -> String {
    match *item {
        Item::Schema(s) => create_schema(s),
        Item::Extension(e) => create_extension(e),
        Item::Collation(c) => create_collation(c),
        Item::Type(t) => create_type(t),
        Item::Sequence(s) => create_sequence(s),
        Item::SequenceOwnedBy(s) => sequence_owned_by(s).unwrap_or_default(),
        Item::Function(f) => create_function(f),
        Item::Table(t) => {
            let parents: Vec<&Table> = t
                .parents
                .iter()
                .filter_map(|p| snap.table(&p.schema, &p.name))
                .collect();
            create_table_with_parents(t, &parents)
        }
        Item::View(v) => create_view(v),
        Item::Constraint(t, c) => create_constraint(t, c),
        Item::Index(_, i) => create_index(i),
        Item::ReplicaIdentity(t) => replica_identity(t),
        Item::Trigger(rel, t) => create_trigger(&rel.sql_name(), t),
        Item::Policy(t, p) => create_policy(t, p),
        Item::Publication(p) => create_publication(p),
        Item::Extra(e) => create_extra(e, &snap.roles),
    }
}

/// An object of [`crate::catalog::extras`]: its CREATE text, then owner, privileges, comment.
/// The owner is set only when the role exists on the server the script is for.
pub fn create_extra(e: &Extra, roles: &[String]) -> String {
    let mut out = e.create.trim_end().to_string();
    out.push('\n');
    if let (Some(kind), Some(name)) = (&e.meta_kind, &e.meta_name) {
        if let Some(owner) = &e.owner {
            out.push_str(&owner_to_existing(kind, name, owner, roles));
        }
        if let Some(obj) = &e.acl_object {
            out.push_str(&grants_for(
                obj,
                e.owner.as_deref().unwrap_or(""),
                e.acl.as_ref(),
            ));
        }
        out.push_str(&comment_on(kind, name, e.comment.as_deref()));
    }
    out
}

/// `COMMENT ON <kind> <name> IS '…';`, or nothing without a comment.
pub fn comment_on(kind: &str, name: &str, comment: Option<&str>) -> String {
    match comment {
        Some(c) => format!("COMMENT ON {kind} {name} IS {};\n", quote_literal(c)),
        None => String::new(),
    }
}

/// `ALTER <kind> <name> OWNER TO <owner>;` Empty for an empty owner: the object stays with
/// the role that creates it (schema diff leaves owners the target lacks to that role).
pub fn owner_to(kind: &str, name: &str, owner: &str) -> String {
    if owner.is_empty() {
        return String::new();
    }
    format!("ALTER {kind} {name} OWNER TO {};\n", quote_ident(owner))
}

/// [`owner_to`] only when `owner` is one of `existing_roles` (the roles of the server the
/// script is for: roles are global and may be missing there). Empty otherwise.
pub fn owner_to_existing(kind: &str, name: &str, owner: &str, existing_roles: &[String]) -> String {
    if existing_roles.iter().any(|r| r == owner) {
        owner_to(kind, name, owner)
    } else {
        String::new()
    }
}

/// A grantee as GRANT and REVOKE take it: `PUBLIC` for `None`, a quoted role otherwise.
pub fn grantee_sql(g: &Option<String>) -> String {
    match g {
        Some(r) => quote_ident(r),
        None => "PUBLIC".to_string(),
    }
}

/// One ACL entry as the server stores it: a grantee's privileges from one grantor.
struct AclEntry<'a> {
    grantee: &'a Option<String>,
    grantor: &'a str,
    /// (privilege, with grant option)
    privileges: Vec<(&'a str, bool)>,
}

impl AclEntry<'_> {
    fn same(&self, other: &AclEntry) -> bool {
        let mut x = self.privileges.clone();
        let mut y = other.privileges.clone();
        x.sort();
        y.sort();
        self.grantee == other.grantee && self.grantor == other.grantor && x == y
    }
}

/// `aclexplode` rows grouped back into entries.
fn acl_entries(items: &[AclItem]) -> Vec<AclEntry<'_>> {
    let mut out: Vec<AclEntry> = Vec::new();
    for i in items {
        match out.last_mut() {
            Some(e) if e.grantee == &i.grantee && e.grantor == i.grantor => {
                e.privileges.push((&i.privilege, i.grantable))
            }
            _ => out.push(AclEntry {
                grantee: &i.grantee,
                grantor: &i.grantor,
                privileges: vec![(&i.privilege, i.grantable)],
            }),
        }
    }
    out
}

/// GRANT statements for privileges in ACL order, as `owner` (or as the recorded grantor when
/// it is someone else, which needs a superuser to replay).
fn grant_statements(
    object: &str,
    column: Option<&str>,
    owner: &str,
    entries: &[AclEntry],
) -> String {
    let mut out = String::new();
    let cols = column
        .map(|c| format!(" ({})", quote_ident(c)))
        .unwrap_or_default();
    for AclEntry {
        grantee,
        grantor,
        privileges: privs,
    } in entries
    {
        let plain: Vec<String> = privs
            .iter()
            .filter(|p| !p.1)
            .map(|p| format!("{}{cols}", p.0))
            .collect();
        let with_option: Vec<String> = privs
            .iter()
            .filter(|p| p.1)
            .map(|p| format!("{}{cols}", p.0))
            .collect();
        let as_other = *grantor != owner;
        if as_other {
            let _ = writeln!(out, "SET SESSION AUTHORIZATION {};", quote_ident(grantor));
        }
        if !with_option.is_empty() {
            let _ = writeln!(
                out,
                "GRANT {} ON {object} TO {} WITH GRANT OPTION;",
                with_option.join(", "),
                grantee_sql(grantee)
            );
        }
        if !plain.is_empty() {
            let _ = writeln!(
                out,
                "GRANT {} ON {object} TO {};",
                plain.join(", "),
                grantee_sql(grantee)
            );
        }
        if as_other {
            out.push_str("RESET SESSION AUTHORIZATION;\n");
        }
    }
    out
}

/// The GRANT / REVOKE statements that turn a new object's default privileges into `acl`.
/// `object` is what follows `ON`, e.g. `TABLE s.t`, `FUNCTION s.f(integer)`, `SCHEMA s`.
/// When the ACL extends the default, only the extra privileges are granted; otherwise the
/// defaults are revoked and the ACL granted whole, so the result has the same entries in the
/// same order.
pub fn grants_for(object: &str, owner: &str, acl: Option<&Acl>) -> String {
    let Some(acl) = acl else {
        return String::new();
    };
    let actual = acl_entries(&acl.items);
    let default = acl_entries(&acl.default);
    let prefix =
        default.len() <= actual.len() && default.iter().zip(&actual).all(|(d, a)| d.same(a));
    if prefix {
        return grant_statements(object, None, owner, &actual[default.len()..]);
    }
    reset_grants(object, owner, acl, &[])
}

/// Revokes every default privilege (and PUBLIC's, and those of `also`), then grants `acl`.
fn reset_grants(object: &str, owner: &str, acl: &Acl, also: &[Option<String>]) -> String {
    let mut out = String::new();
    let mut revoked: Vec<&Option<String>> = Vec::new();
    for g in std::iter::once(&None)
        .chain(acl.default.iter().map(|i| &i.grantee))
        .chain(also.iter())
    {
        if !revoked.contains(&g) {
            revoked.push(g);
            let _ = writeln!(out, "REVOKE ALL ON {object} FROM {};", grantee_sql(g));
        }
    }
    out.push_str(&grant_statements(
        object,
        None,
        owner,
        &acl_entries(&acl.items),
    ));
    out
}

/// Column-level GRANTs (`GRANT SELECT (c) ON TABLE t TO r`).
pub fn column_grants(table_sql: &str, owner: &str, column: &Column) -> String {
    grant_statements(
        &format!("TABLE {table_sql}"),
        Some(&column.name),
        owner,
        &acl_entries(&column.acl),
    )
}

/// `CREATE SCHEMA` with owner, privileges and comment. `public` exists in every new database:
/// it is created only if missing and its privileges and comment are set whole.
pub fn create_schema(s: &Schema) -> String {
    let name = quote_ident(&s.name);
    let mut out = String::new();
    let public = s.name == "public";
    if public {
        out.push_str("CREATE SCHEMA IF NOT EXISTS public;\n");
    } else {
        let _ = writeln!(out, "CREATE SCHEMA {name};");
    }
    out.push_str(&owner_to("SCHEMA", &name, &s.owner));
    let object = format!("SCHEMA {name}");
    match (&s.acl, public) {
        (Some(acl), true) => out.push_str(&reset_grants(&object, &s.owner, acl, &[])),
        _ => out.push_str(&grants_for(&object, &s.owner, s.acl.as_ref())),
    }
    if public && s.comment.is_none() {
        out.push_str("COMMENT ON SCHEMA public IS NULL;\n");
    }
    out.push_str(&comment_on("SCHEMA", &name, s.comment.as_deref()));
    out
}

pub fn create_extension(e: &Extension) -> String {
    let mut out = format!(
        "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {} VERSION {};\n",
        quote_ident(&e.name),
        quote_ident(&e.schema),
        quote_literal(&e.version)
    );
    out.push_str(&comment_on(
        "EXTENSION",
        &quote_ident(&e.name),
        e.comment.as_deref(),
    ));
    out
}

pub fn create_collation(c: &Collation) -> String {
    let name = crate::ident::qualified(&c.schema, &c.name);
    let mut opts = Vec::new();
    match c.provider.as_str() {
        "i" => {
            opts.push("provider = icu".to_string());
            let loc = c
                .icu_locale
                .as_deref()
                .or(c.collate.as_deref())
                .unwrap_or("");
            opts.push(format!("locale = {}", quote_literal(loc)));
        }
        _ => {
            opts.push("provider = libc".to_string());
            opts.push(format!(
                "lc_collate = {}",
                quote_literal(c.collate.as_deref().unwrap_or(""))
            ));
            opts.push(format!(
                "lc_ctype = {}",
                quote_literal(c.ctype.as_deref().unwrap_or(""))
            ));
        }
    }
    if !c.deterministic {
        opts.push("deterministic = false".to_string());
    }
    let mut out = format!("CREATE COLLATION {name} ({});\n", opts.join(", "));
    out.push_str(&owner_to("COLLATION", &name, &c.owner));
    out.push_str(&comment_on("COLLATION", &name, c.comment.as_deref()));
    out
}

pub fn create_type(t: &TypeDef) -> String {
    let name = crate::ident::qualified(&t.schema, &t.name);
    let mut out = String::new();
    let mut kind = "TYPE";
    match &t.kind {
        TypeKind::Enum { labels } => {
            let labels: Vec<String> = labels.iter().map(|l| quote_literal(l)).collect();
            let _ = writeln!(out, "CREATE TYPE {name} AS ENUM ({});", labels.join(", "));
        }
        TypeKind::Domain {
            base,
            collation,
            default,
            not_null,
            constraints,
        } => {
            kind = "DOMAIN";
            let _ = write!(out, "CREATE DOMAIN {name} AS {base}");
            if let Some(c) = collation {
                let _ = write!(out, " COLLATE {c}");
            }
            if let Some(d) = default {
                let _ = write!(out, " DEFAULT {d}");
            }
            if *not_null {
                out.push_str(" NOT NULL");
            }
            for c in constraints.iter().filter(|c| c.validated) {
                let _ = write!(out, " CONSTRAINT {} {}", quote_ident(&c.name), c.definition);
            }
            out.push_str(";\n");
            for c in constraints.iter().filter(|c| !c.validated) {
                let _ = writeln!(
                    out,
                    "ALTER DOMAIN {name} ADD CONSTRAINT {} {};",
                    quote_ident(&c.name),
                    c.definition
                );
            }
            for c in constraints {
                out.push_str(&comment_on(
                    "CONSTRAINT",
                    &format!("{} ON DOMAIN {name}", quote_ident(&c.name)),
                    c.comment.as_deref(),
                ));
            }
        }
        TypeKind::Composite { attributes, .. } => {
            let attrs: Vec<String> = attributes
                .iter()
                .map(|a| {
                    let mut s = format!("    {} {}", quote_ident(&a.name), a.type_name);
                    if let Some(c) = &a.collation {
                        let _ = write!(s, " COLLATE {c}");
                    }
                    s
                })
                .collect();
            let _ = writeln!(out, "CREATE TYPE {name} AS (\n{}\n);", attrs.join(",\n"));
            for a in attributes {
                out.push_str(&comment_on(
                    "COLUMN",
                    &format!("{name}.{}", quote_ident(&a.name)),
                    a.comment.as_deref(),
                ));
            }
        }
        TypeKind::Range {
            subtype,
            opclass,
            collation,
            canonical,
            subtype_diff,
            multirange,
        } => {
            let mut opts = vec![format!("SUBTYPE = {subtype}")];
            if let Some(o) = opclass {
                opts.push(format!("SUBTYPE_OPCLASS = {o}"));
            }
            if let Some(c) = collation {
                opts.push(format!("COLLATION = {c}"));
            }
            if let Some(c) = canonical {
                opts.push(format!("CANONICAL = {c}"));
            }
            if let Some(d) = subtype_diff {
                opts.push(format!("SUBTYPE_DIFF = {d}"));
            }
            opts.push(format!("MULTIRANGE_TYPE_NAME = {multirange}"));
            let _ = writeln!(out, "CREATE TYPE {name} AS RANGE ({});", opts.join(", "));
        }
    }
    out.push_str(&owner_to(kind, &name, &t.owner));
    out.push_str(&grants_for(
        &format!("{kind} {name}"),
        &t.owner,
        t.acl.as_ref(),
    ));
    out.push_str(&comment_on(kind, &name, t.comment.as_deref()));
    out
}

/// `START WITH … CYCLE` options of a sequence (shared by identity columns).
pub fn sequence_options(o: &SequenceOptions) -> String {
    format!(
        "START WITH {} INCREMENT BY {} MINVALUE {} MAXVALUE {} CACHE {}{}",
        o.start,
        o.increment,
        o.min,
        o.max,
        o.cache,
        if o.cycle { " CYCLE" } else { " NO CYCLE" }
    )
}

/// `CREATE SEQUENCE` with owner, privileges and comment (OWNED BY comes after the table, see
/// [`sequence_owned_by`]). Identity sequences are created by their column: nothing here.
pub fn create_sequence(s: &Sequence) -> String {
    if s.identity {
        return String::new();
    }
    let name = s.qualname().sql();
    let mut out = format!(
        "CREATE SEQUENCE {name} AS {} {};\n",
        s.options.data_type,
        sequence_options(&s.options)
    );
    out.push_str(&owner_to("SEQUENCE", &name, &s.owner));
    out.push_str(&grants_for(
        &format!("SEQUENCE {name}"),
        &s.owner,
        s.acl.as_ref(),
    ));
    out.push_str(&comment_on("SEQUENCE", &name, s.comment.as_deref()));
    out
}

/// `ALTER SEQUENCE … OWNED BY table.column` (not for identity sequences).
pub fn sequence_owned_by(s: &Sequence) -> Option<String> {
    let o = s.owned_by.as_ref().filter(|_| !s.identity)?;
    Some(format!(
        "ALTER SEQUENCE {} OWNED BY {}.{};\n",
        s.qualname().sql(),
        crate::ident::qualified(&o.schema, &o.table),
        quote_ident(&o.column)
    ))
}

pub fn create_function(f: &Function) -> String {
    let kind = if f.is_procedure() {
        "PROCEDURE"
    } else {
        "FUNCTION"
    };
    let sig = f.signature();
    let mut out = f.definition.trim_end().to_string();
    out.push_str(";\n");
    out.push_str(&owner_to(kind, &sig, &f.owner));
    out.push_str(&grants_for(
        &format!("{kind} {sig}"),
        &f.owner,
        f.acl.as_ref(),
    ));
    out.push_str(&comment_on(kind, &sig, f.comment.as_deref()));
    out
}

/// Whether a CHECK constraint is written inside `CREATE TABLE` (valid, defined on this table)
/// rather than added afterwards.
pub fn is_inline_check(c: &Constraint) -> bool {
    c.kind == ConstraintKind::Check && c.validated && c.is_local && !c.from_parent
}

/// Whether a constraint exists only because of a parent (inherited or cloned for a partition)
/// and so is never created on its own.
pub fn is_implied_constraint(c: &Constraint) -> bool {
    match c.kind {
        ConstraintKind::Check => !c.is_local || c.from_parent,
        ConstraintKind::ForeignKey => c.from_parent,
        _ => false,
    }
}

/// The column as written in `CREATE TABLE`.
pub fn column_definition(c: &Column) -> String {
    let mut s = format!("{} {}", quote_ident(&c.name), c.type_name);
    if let Some(coll) = &c.collation {
        let _ = write!(s, " COLLATE {coll}");
    }
    if let Some(g) = &c.generated {
        let kind = if c.generated_virtual {
            "VIRTUAL"
        } else {
            "STORED"
        };
        let _ = write!(s, " GENERATED ALWAYS AS ({g}) {kind}");
    } else if let Some(d) = &c.default {
        let _ = write!(s, " DEFAULT {d}");
    }
    if c.not_null {
        // Named as on the source (18+); older servers take the name and ignore it. Inherited
        // ones too: a table that is attached or inherits later keeps the name it was created
        // with, and an inherited constraint cannot be renamed afterwards.
        if let Some(n) = &c.not_null_name {
            let _ = write!(s, " CONSTRAINT {}", quote_ident(n));
        }
        s.push_str(" NOT NULL");
    }
    if let Some(id) = c.identity {
        let _ = write!(
            s,
            " GENERATED {} AS IDENTITY",
            match id {
                Identity::Always => "ALWAYS",
                Identity::ByDefault => "BY DEFAULT",
            }
        );
        let mut opts = Vec::new();
        if let Some(q) = &c.identity_sequence {
            opts.push(format!("SEQUENCE NAME {}", q.sql()));
        }
        if let Some(o) = &c.identity_options {
            opts.push(sequence_options(o));
        }
        if !opts.is_empty() {
            let _ = write!(s, " ({})", opts.join(" "));
        }
    }
    s
}

/// [`create_table_with_parents`] without knowledge of the parents: inherited columns get
/// their default and NOT NULL restated (harmless: the server copies them anyway).
pub fn create_table(t: &Table) -> String {
    create_table_with_parents(t, &[])
}

/// `CREATE TABLE` with columns, inline CHECK constraints, partitioning, inheritance, storage
/// parameters, row-level security, replica identity (not by index), owner, privileges and
/// comments. Constraints with an index, foreign keys, indexes, triggers and policies are
/// separate items.
pub fn create_table_with_parents(t: &Table, parents: &[&Table]) -> String {
    let name = t.sql_name();
    let mut out = String::new();
    let mut elems: Vec<String> = Vec::new();
    let partition = t.is_partition();
    for c in &t.columns {
        if c.is_local && !partition {
            elems.push(format!("    {}", column_definition(c)));
        } else if partition {
            if let Some(n) = partition_not_null_name(c, parents) {
                elems.push(format!(
                    "    {} WITH OPTIONS CONSTRAINT {} NOT NULL",
                    quote_ident(&c.name),
                    quote_ident(n)
                ));
            }
        }
    }
    for c in t.constraints.iter().filter(|c| is_inline_check(c)) {
        elems.push(format!(
            "    CONSTRAINT {} {}",
            quote_ident(&c.name),
            c.definition
        ));
    }
    let _ = write!(
        out,
        "CREATE {}TABLE {name}",
        if t.unlogged { "UNLOGGED " } else { "" }
    );
    if partition {
        let parent = t.parents.first().map(|p| p.sql()).unwrap_or_default();
        let _ = write!(out, " PARTITION OF {parent}");
        if !elems.is_empty() {
            let _ = write!(out, " (\n{}\n)", elems.join(",\n"));
        }
        let _ = write!(
            out,
            " {}",
            t.partition_bound.as_deref().unwrap_or("DEFAULT")
        );
    } else {
        let _ = write!(out, " (\n{}\n)", elems.join(",\n"));
        if !t.parents.is_empty() {
            let ps: Vec<String> = t.parents.iter().map(|p| p.sql()).collect();
            let _ = write!(out, " INHERITS ({})", ps.join(", "));
        }
    }
    if let Some(k) = &t.partition_key {
        let _ = write!(out, " PARTITION BY {k}");
    }
    if !t.reloptions.is_empty() {
        let _ = write!(out, " WITH ({})", t.reloptions.join(", "));
    }
    out.push_str(";\n");
    // Inherited columns: restate what differs from the parents.
    for c in t.columns.iter().filter(|c| !c.is_local || partition) {
        let parent_col = parents.iter().find_map(|p| p.column(&c.name));
        let col = quote_ident(&c.name);
        if c.generated.is_none() && c.identity.is_none() {
            if let Some(d) = &c.default {
                if parent_col.and_then(|p| p.default.as_ref()) != Some(d) {
                    let _ = writeln!(
                        out,
                        "ALTER TABLE ONLY {name} ALTER COLUMN {col} SET DEFAULT {d};"
                    );
                }
            }
        }
        if c.not_null
            && !parent_col.is_some_and(|p| p.not_null)
            && !(partition && partition_not_null_name(c, parents).is_some())
        {
            let _ = writeln!(
                out,
                "ALTER TABLE ONLY {name} ALTER COLUMN {col} SET NOT NULL;"
            );
        }
    }
    if t.rls_enabled {
        let _ = writeln!(out, "ALTER TABLE {name} ENABLE ROW LEVEL SECURITY;");
    }
    if t.rls_forced {
        let _ = writeln!(out, "ALTER TABLE {name} FORCE ROW LEVEL SECURITY;");
    }
    match t.replica_identity.as_str() {
        "f" => {
            let _ = writeln!(out, "ALTER TABLE ONLY {name} REPLICA IDENTITY FULL;");
        }
        "n" => {
            let _ = writeln!(out, "ALTER TABLE ONLY {name} REPLICA IDENTITY NOTHING;");
        }
        _ => {}
    }
    out.push_str(&owner_to("TABLE", &name, &t.owner));
    out.push_str(&grants_for(
        &format!("TABLE {name}"),
        &t.owner,
        t.acl.as_ref(),
    ));
    for c in &t.columns {
        out.push_str(&column_grants(&name, &t.owner, c));
    }
    out.push_str(&comment_on("TABLE", &name, t.comment.as_deref()));
    for c in &t.columns {
        out.push_str(&comment_on(
            "COLUMN",
            &format!("{name}.{}", quote_ident(&c.name)),
            c.comment.as_deref(),
        ));
    }
    out
}

/// The name a partition's NOT NULL must be given in `PARTITION OF … (col WITH OPTIONS
/// CONSTRAINT name NOT NULL)`: on 18+ a partition created without it takes the parent's
/// constraint name (or a default one), and an inherited constraint cannot be renamed later.
/// `None` when the source's name is what `PARTITION OF` gives anyway (the parent's), or
/// before 18 (no names).
fn partition_not_null_name<'c>(c: &'c Column, parents: &[&Table]) -> Option<&'c String> {
    let n = c.not_null_name.as_ref().filter(|_| c.not_null)?;
    let parent_name = parents
        .iter()
        .find_map(|p| p.column(&c.name))
        .filter(|p| p.not_null)
        .and_then(|p| p.not_null_name.as_ref());
    (parent_name != Some(n)).then_some(n)
}

/// `REPLICA IDENTITY USING INDEX` (after the index exists).
pub fn replica_identity(t: &Table) -> String {
    match (&t.replica_identity[..], &t.replica_identity_index) {
        ("i", Some(i)) => format!(
            "ALTER TABLE ONLY {} REPLICA IDENTITY USING INDEX {};\n",
            t.sql_name(),
            quote_ident(i)
        ),
        _ => String::new(),
    }
}

/// `CREATE VIEW` / `CREATE MATERIALIZED VIEW … WITH NO DATA` with column defaults, owner,
/// privileges and comments (a materialized view's indexes are separate items).
pub fn create_view(v: &View) -> String {
    create_view_with_data(v, false)
}

/// Like [`create_view`]; `with_data` populates a materialized view at creation.
pub fn create_view_with_data(v: &View, with_data: bool) -> String {
    let name = v.sql_name();
    let kind = if v.materialized {
        "MATERIALIZED VIEW"
    } else {
        "VIEW"
    };
    let mut out = format!("CREATE {kind} {name}");
    if !v.reloptions.is_empty() {
        let _ = write!(out, " WITH ({})", v.reloptions.join(", "));
    }
    let body = v.definition.trim().trim_end_matches(';');
    let _ = write!(out, " AS\n{body}");
    if v.materialized {
        out.push_str(if with_data {
            "\n  WITH DATA"
        } else {
            "\n  WITH NO DATA"
        });
    }
    out.push_str(";\n");
    for c in &v.columns {
        if let Some(d) = &c.default {
            let _ = writeln!(
                out,
                "ALTER {kind} {name} ALTER COLUMN {} SET DEFAULT {d};",
                quote_ident(&c.name)
            );
        }
    }
    out.push_str(&owner_to(kind, &name, &v.owner));
    out.push_str(&grants_for(
        &format!("TABLE {name}"),
        &v.owner,
        v.acl.as_ref(),
    ));
    for c in &v.columns {
        out.push_str(&column_grants(&name, &v.owner, c));
    }
    out.push_str(&comment_on(kind, &name, v.comment.as_deref()));
    for c in &v.columns {
        out.push_str(&comment_on(
            "COLUMN",
            &format!("{name}.{}", quote_ident(&c.name)),
            c.comment.as_deref(),
        ));
    }
    out
}

/// `ALTER TABLE … ADD CONSTRAINT` for a constraint that is not written inside CREATE TABLE;
/// a partition's key constraint is attached to its parent's. Empty for constraints that only
/// exist because of a parent.
pub fn create_constraint(t: &Table, c: &Constraint) -> String {
    if is_inline_check(c) || is_implied_constraint(c) {
        return String::new();
    }
    let name = t.sql_name();
    // ONLY: key constraints are per table (partitions get theirs attached); a foreign key or
    // CHECK must reach a partitioned table's partitions and an inheritable CHECK the children.
    let only = match c.kind {
        ConstraintKind::PrimaryKey | ConstraintKind::Unique | ConstraintKind::Exclusion => true,
        ConstraintKind::ForeignKey => t.kind != TableKind::Partitioned,
        ConstraintKind::Check => c.no_inherit,
    };
    let mut out = format!(
        "ALTER TABLE {}{name} ADD CONSTRAINT {} {};\n",
        if only { "ONLY " } else { "" },
        quote_ident(&c.name),
        c.definition
    );
    if let Some(idx) = c.index.as_deref().and_then(|i| t.index(i)) {
        if let Some(parent) = &idx.parent_index {
            let _ = writeln!(
                out,
                "ALTER INDEX {} ATTACH PARTITION {};",
                parent.sql(),
                crate::ident::qualified(&idx.schema, &idx.name)
            );
        }
        out.push_str(&comment_on(
            "INDEX",
            &crate::ident::qualified(&idx.schema, &idx.name),
            idx.comment.as_deref(),
        ));
    }
    out.push_str(&comment_on(
        "CONSTRAINT",
        &format!("{} ON {name}", quote_ident(&c.name)),
        c.comment.as_deref(),
    ));
    out
}

/// `CREATE INDEX` (attached to its partitioned parent index when it has one) and comment.
/// Empty for an index that enforces a constraint (the constraint creates it).
pub fn create_index(i: &Index) -> String {
    if i.constraint.is_some() {
        return String::new();
    }
    let name = crate::ident::qualified(&i.schema, &i.name);
    let mut out = format!("{};\n", i.definition);
    if let Some(parent) = &i.parent_index {
        let _ = writeln!(out, "ALTER INDEX {} ATTACH PARTITION {name};", parent.sql());
    }
    out.push_str(&comment_on("INDEX", &name, i.comment.as_deref()));
    out
}

/// `CREATE TRIGGER`, its enabled state when not the default, and its comment. Empty for a
/// partition's copy of its parent's trigger.
pub fn create_trigger(relation_sql: &str, t: &Trigger) -> String {
    if t.from_parent {
        return String::new();
    }
    let mut out = format!("{};\n", t.definition);
    let name = quote_ident(&t.name);
    let state = match t.enabled.as_str() {
        "D" => Some("DISABLE TRIGGER"),
        "R" => Some("ENABLE REPLICA TRIGGER"),
        "A" => Some("ENABLE ALWAYS TRIGGER"),
        _ => None,
    };
    if let Some(state) = state {
        let _ = writeln!(out, "ALTER TABLE {relation_sql} {state} {name};");
    }
    out.push_str(&comment_on(
        "TRIGGER",
        &format!("{name} ON {relation_sql}"),
        t.comment.as_deref(),
    ));
    out
}

pub fn create_policy(t: &Table, p: &Policy) -> String {
    let name = quote_ident(&p.name);
    let table = t.sql_name();
    let roles: Vec<String> = p.roles.iter().map(grantee_sql).collect();
    let mut out = format!(
        "CREATE POLICY {name} ON {table} AS {} FOR {} TO {}",
        if p.permissive {
            "PERMISSIVE"
        } else {
            "RESTRICTIVE"
        },
        p.command,
        if roles.is_empty() {
            "PUBLIC".to_string()
        } else {
            roles.join(", ")
        }
    );
    if let Some(u) = &p.using {
        let _ = write!(out, " USING ({u})");
    }
    if let Some(w) = &p.with_check {
        let _ = write!(out, " WITH CHECK ({w})");
    }
    out.push_str(";\n");
    out.push_str(&comment_on(
        "POLICY",
        &format!("{name} ON {table}"),
        p.comment.as_deref(),
    ));
    out
}

pub fn create_publication(p: &Publication) -> String {
    let name = quote_ident(&p.name);
    let mut publish = Vec::new();
    for (on, what) in [
        (p.insert, "insert"),
        (p.update, "update"),
        (p.delete, "delete"),
        (p.truncate, "truncate"),
    ] {
        if on {
            publish.push(what);
        }
    }
    let mut out = format!(
        "CREATE PUBLICATION {name}{} WITH (publish = {}, publish_via_partition_root = {});\n",
        if p.all_tables { " FOR ALL TABLES" } else { "" },
        quote_literal(&publish.join(", ")),
        p.via_root
    );
    for t in &p.tables {
        let _ = write!(
            out,
            "ALTER PUBLICATION {name} ADD TABLE ONLY {}",
            crate::ident::qualified(&t.schema, &t.name)
        );
        if let Some(cols) = &t.columns {
            let cols: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
            let _ = write!(out, " ({})", cols.join(", "));
        }
        if let Some(f) = &t.row_filter {
            let _ = write!(out, " WHERE ({f})");
        }
        out.push_str(";\n");
    }
    for s in &p.schemas {
        let _ = writeln!(
            out,
            "ALTER PUBLICATION {name} ADD TABLES IN SCHEMA {};",
            quote_ident(s)
        );
    }
    out.push_str(&owner_to("PUBLICATION", &name, &p.owner));
    out.push_str(&comment_on("PUBLICATION", &name, p.comment.as_deref()));
    out
}
