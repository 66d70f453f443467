//! The typed objects of a [`Snapshot`](super::Snapshot).
//!
//! Plain data, (de)serializable, so that a snapshot can be printed as JSON, compared, and
//! rendered. SQL fragments that the server can produce itself (index, constraint, view,
//! function and trigger definitions, defaults, types) are kept as the server printed them with
//! an empty `search_path`, so every name inside them is schema-qualified and they can be
//! replayed on another database unchanged. Object names are kept unquoted; quoting happens
//! when rendering (see [`crate::ddl`]).
//!
//! Every object keeps its `oid` so that dependency edges can point at it; oids differ between
//! databases and must never be compared across snapshots.

use serde::{Deserialize, Serialize};

pub use crate::ident::QualifiedName;
use crate::ident::QuotedName;

/// One privilege of an ACL, as `aclexplode` reports it. `grantee` is `None` for PUBLIC: a
/// role may be called `"PUBLIC"` (only lower-case `public` is reserved), so PUBLIC is never
/// spelled as a role name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AclItem {
    pub grantee: Option<String>,
    pub grantor: String,
    pub privilege: String,
    pub grantable: bool,
}

/// An object's explicit ACL next to the default its owner would have (`acldefault`): the
/// GRANT / REVOKE statements that recreate the ACL are the difference between the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    pub items: Vec<AclItem>,
    pub default: Vec<AclItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    pub oid: u32,
    pub name: String,
    pub owner: String,
    pub acl: Option<Acl>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extension {
    pub oid: u32,
    pub name: String,
    pub schema: String,
    pub version: String,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub owner: String,
    /// `c` libc, `i` icu, `d` default.
    pub provider: String,
    pub collate: Option<String>,
    pub ctype: Option<String>,
    pub icu_locale: Option<String>,
    pub deterministic: bool,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeDef {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub owner: String,
    pub acl: Option<Acl>,
    pub comment: Option<String>,
    #[serde(flatten)]
    pub kind: TypeKind,
}

impl TypeDef {
    pub fn qualname(&self) -> QualifiedName {
        QualifiedName {
            schema: self.schema.clone(),
            name: self.name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TypeKind {
    Enum {
        /// In sort order.
        labels: Vec<String>,
    },
    Domain {
        /// `format_type` of the base type.
        base: String,
        collation: Option<String>,
        default: Option<String>,
        not_null: bool,
        constraints: Vec<DomainConstraint>,
    },
    Composite {
        /// The `pg_class` row that holds the attributes (dependencies point at it).
        relid: u32,
        attributes: Vec<CompositeAttribute>,
    },
    Range {
        subtype: String,
        /// Only when not the subtype's default operator class.
        opclass: Option<String>,
        collation: Option<String>,
        canonical: Option<String>,
        subtype_diff: Option<String>,
        multirange: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainConstraint {
    pub oid: u32,
    pub name: String,
    /// `pg_get_constraintdef` (ends with ` NOT VALID` when not validated).
    pub definition: String,
    pub validated: bool,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompositeAttribute {
    pub name: String,
    pub type_name: String,
    pub collation: Option<String>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sequence {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub owner: String,
    pub acl: Option<Acl>,
    pub comment: Option<String>,
    #[serde(flatten)]
    pub options: SequenceOptions,
    /// `OWNED BY` (serial columns and explicit ownership).
    pub owned_by: Option<ColumnRef>,
    /// The sequence behind an identity column: created by the column, not on its own.
    pub identity: bool,
}

impl Sequence {
    pub fn qualname(&self) -> QualifiedName {
        QualifiedName {
            schema: self.schema.clone(),
            name: self.name.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceOptions {
    pub data_type: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnRef {
    pub schema: String,
    pub table: String,
    pub column: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    Ordinary,
    Partitioned,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub kind: TableKind,
    pub owner: String,
    pub acl: Option<Acl>,
    pub comment: Option<String>,
    pub unlogged: bool,
    /// Storage parameters, `name=value`.
    pub reloptions: Vec<String>,
    pub rls_enabled: bool,
    pub rls_forced: bool,
    /// `d` default, `n` nothing, `f` full, `i` index (see `replica_identity_index`).
    pub replica_identity: String,
    pub replica_identity_index: Option<String>,
    /// `pg_get_partkeydef`, e.g. `RANGE (created_at)`, for a partitioned table.
    pub partition_key: Option<String>,
    /// `FOR VALUES …` / `DEFAULT`, for a partition.
    pub partition_bound: Option<String>,
    /// Inheritance parents in order; for a partition, its one parent.
    pub parents: Vec<QualifiedName>,
    pub columns: Vec<Column>,
    /// Primary-key columns in key order.
    pub primary_key: Option<Vec<String>>,
    pub constraints: Vec<Constraint>,
    pub indexes: Vec<Index>,
    pub triggers: Vec<Trigger>,
    pub policies: Vec<Policy>,
}

impl Table {
    pub fn qualname(&self) -> QualifiedName {
        QualifiedName {
            schema: self.schema.clone(),
            name: self.name.clone(),
        }
    }

    /// Quoted `schema.name`.
    pub fn sql_name(&self) -> QuotedName {
        QuotedName::qualified(&self.schema, &self.name)
    }

    pub fn is_partition(&self) -> bool {
        self.partition_bound.is_some()
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Outgoing foreign keys.
    pub fn foreign_keys(&self) -> impl Iterator<Item = &Constraint> {
        self.constraints
            .iter()
            .filter(|c| c.kind == ConstraintKind::ForeignKey)
    }

    pub fn constraint(&self, name: &str) -> Option<&Constraint> {
        self.constraints.iter().find(|c| c.name == name)
    }

    pub fn index(&self, name: &str) -> Option<&Index> {
        self.indexes.iter().find(|i| i.name == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    Always,
    ByDefault,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub num: i16,
    pub name: String,
    /// `format_type(atttypid, atttypmod)`.
    pub type_name: String,
    pub type_oid: u32,
    /// Only when it differs from the type's default collation.
    pub collation: Option<String>,
    /// Default expression (not for generated columns).
    pub default: Option<String>,
    pub not_null: bool,
    /// Name of the NOT NULL constraint (PostgreSQL 18+; `None` before, where it has none).
    #[serde(default)]
    pub not_null_name: Option<String>,
    pub identity: Option<Identity>,
    /// Qualified name of the identity column's sequence.
    pub identity_sequence: Option<QualifiedName>,
    /// That sequence's options (filled in from the snapshot's sequences).
    #[serde(default)]
    pub identity_options: Option<SequenceOptions>,
    /// Generation expression of a `GENERATED ALWAYS AS (…) STORED` column.
    pub generated: Option<String>,
    /// The generated column is `VIRTUAL` (PostgreSQL 18+), not `STORED`.
    #[serde(default)]
    pub generated_virtual: bool,
    /// Defined in this table (not only inherited from a parent).
    pub is_local: bool,
    pub inherit_count: i32,
    /// Column-level grants.
    pub acl: Vec<AclItem>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintKind {
    PrimaryKey,
    Unique,
    Check,
    ForeignKey,
    Exclusion,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Constraint {
    pub oid: u32,
    pub name: String,
    pub kind: ConstraintKind,
    /// `pg_get_constraintdef`, e.g. `FOREIGN KEY (a) REFERENCES s.t(id) DEFERRABLE NOT VALID`.
    pub definition: String,
    pub deferrable: bool,
    pub deferred: bool,
    pub validated: bool,
    pub is_local: bool,
    pub inherit_count: i32,
    pub no_inherit: bool,
    /// Cloned from the constraint of a partitioned parent (created with it, never on its own).
    pub from_parent: bool,
    /// The index that enforces it (primary key, unique, exclusion).
    pub index: Option<String>,
    #[serde(default)]
    pub columns: Vec<String>,
    /// Foreign keys: the referenced table and columns.
    pub references: Option<ForeignKeyTarget>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForeignKeyTarget {
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    /// `a` no action, `r` restrict, `c` cascade, `n` set null, `d` set default.
    pub on_update: String,
    pub on_delete: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `pg_get_indexdef`; empty for an index that enforces a constraint (`constraint` is
    /// set): the constraint's definition stands for it and creates it.
    pub definition: String,
    pub unique: bool,
    pub primary: bool,
    pub valid: bool,
    /// The constraint this index enforces, if any (not created on its own).
    pub constraint: Option<String>,
    /// The partitioned index this one is attached to.
    pub parent_index: Option<QualifiedName>,
    /// Key columns; `None` for an expression.
    #[serde(default)]
    pub columns: Vec<Option<String>>,
    pub partial: bool,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub oid: u32,
    pub name: String,
    /// `pg_get_triggerdef`.
    pub definition: String,
    /// `O` enabled, `D` disabled, `R` replica only, `A` always.
    pub enabled: String,
    /// Cloned from a partitioned parent's trigger.
    pub from_parent: bool,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub oid: u32,
    pub name: String,
    pub permissive: bool,
    /// `ALL`, `SELECT`, `INSERT`, `UPDATE` or `DELETE`.
    pub command: String,
    /// Role names; `None` stands for PUBLIC.
    pub roles: Vec<Option<String>>,
    pub using: Option<String>,
    pub with_check: Option<String>,
    pub comment: Option<String>,
}

/// A view or a materialized view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub materialized: bool,
    /// `pg_get_viewdef` (ends with `;`).
    pub definition: String,
    pub owner: String,
    pub acl: Option<Acl>,
    pub comment: Option<String>,
    pub reloptions: Vec<String>,
    pub columns: Vec<Column>,
    /// Materialized views only.
    pub indexes: Vec<Index>,
    /// INSTEAD OF triggers and the like.
    pub triggers: Vec<Trigger>,
}

impl View {
    pub fn qualname(&self) -> QualifiedName {
        QualifiedName {
            schema: self.schema.clone(),
            name: self.name.clone(),
        }
    }

    pub fn sql_name(&self) -> QuotedName {
        QuotedName::qualified(&self.schema, &self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Function {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `f` function, `p` procedure, `w` window function.
    pub kind: String,
    /// `pg_get_function_identity_arguments`: what names the function in ALTER / GRANT.
    pub identity_args: String,
    pub result: Option<String>,
    pub language: String,
    /// `pg_get_functiondef`: a complete `CREATE OR REPLACE …` statement without the `;`.
    pub definition: String,
    pub owner: String,
    pub acl: Option<Acl>,
    pub comment: Option<String>,
}

impl Function {
    pub fn is_procedure(&self) -> bool {
        self.kind == "p"
    }

    /// `schema.name(identity args)`, quoted.
    pub fn signature(&self) -> String {
        format!(
            "{}({})",
            crate::ident::qualified(&self.schema, &self.name),
            self.identity_args
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publication {
    pub oid: u32,
    pub name: String,
    pub owner: String,
    pub all_tables: bool,
    pub insert: bool,
    pub update: bool,
    pub delete: bool,
    pub truncate: bool,
    pub via_root: bool,
    pub tables: Vec<PublicationTable>,
    /// `TABLES IN SCHEMA`.
    pub schemas: Vec<String>,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicationTable {
    pub schema: String,
    pub name: String,
    pub columns: Option<Vec<String>>,
    pub row_filter: Option<String>,
}

/// Kind of catalog row a dependency edge points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjClass {
    Namespace,
    Extension,
    Collation,
    Type,
    Class,
    Proc,
    Constraint,
    Trigger,
    Policy,
    Operator,
    OpClass,
    OpFamily,
    Cast,
    TsConfig,
    TsDict,
    TsParser,
    TsTemplate,
    Conversion,
    StatisticExt,
    /// A rule other than a view's `_RETURN` rule.
    Rule,
    EventTrigger,
    ForeignDataWrapper,
    ForeignServer,
    UserMapping,
    DefaultAcl,
    /// A setting with no catalog row of its own (numbered within one snapshot).
    Synthetic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjRef {
    pub class: ObjClass,
    pub oid: u32,
}

/// `from` depends on `to` (from `pg_depend`, with sub-objects such as column defaults, view
/// rules and array types folded into the object that owns them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dependency {
    pub from: ObjRef,
    pub to: ObjRef,
    /// `pg_depend.deptype`.
    pub deptype: char,
}
