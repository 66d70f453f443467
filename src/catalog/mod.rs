//! One typed snapshot of a database's schema.
//!
//! Every job of pgflip starts from the catalog: sync needs the columns and keys of the tables it
//! copies, the flip needs every object that hangs off a table, schema diff compares two
//! snapshots and `schema dump` renders one back to SQL ([`crate::ddl`]). So the snapshot is
//! plain data, loaded with a fixed number of set-based queries ([`Snapshot::QUERY_COUNT`])
//! whatever the number of tables, sent together on one connection (tokio-postgres pipelines
//! them), so that a database with thousands of tables loads in a fraction of a second.
//!
//! The SQL text the server prints for us (`pg_get_indexdef`, `pg_get_viewdef`, …) depends on
//! `search_path`: the loader runs with an empty `search_path` so that every name in it is
//! schema-qualified and can be replayed anywhere, then restores the caller's setting.
//!
//! Left out: system schemas, the `pgflip` state schema and `pgflip_*` schemas, objects that
//! belong to an extension (the extension stands for them), aggregates, foreign tables, rules
//! other than view definitions, and default privileges.

mod deps;
pub mod extras;
#[doc(hidden)]
pub mod extras_sql;
#[doc(hidden)]
pub mod queries;
pub mod scoped;
pub mod sync_tables;
pub mod types;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::types::Json;
use tokio_postgres::{Client, Row};

use crate::error::DbResultExt;
use crate::Result;

pub use extras::{Extra, OnRelation};
pub use types::*;

/// Which schemas a snapshot covers. The default is every user schema.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Only these schemas (empty: all).
    pub include_schemas: Vec<String>,
    /// Never these schemas.
    pub exclude_schemas: Vec<String>,
}

impl Filter {
    pub fn includes(&self, schema: &str) -> bool {
        (self.include_schemas.is_empty() || self.include_schemas.iter().any(|s| s == schema))
            && !self.exclude_schemas.iter().any(|s| s == schema)
    }
}

/// The schema of one database, as plain data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub filter: Filter,
    /// `server_version_num`.
    pub server_version: i32,
    pub schemas: Vec<Schema>,
    pub extensions: Vec<Extension>,
    pub collations: Vec<Collation>,
    pub types: Vec<TypeDef>,
    pub sequences: Vec<Sequence>,
    pub tables: Vec<Table>,
    /// Views and materialized views.
    pub views: Vec<View>,
    pub functions: Vec<Function>,
    pub publications: Vec<Publication>,
    /// Every role of the server (roles are global): an owner or grantee can only be set when
    /// it exists on the other side.
    pub roles: Vec<String>,
    pub dependencies: Vec<Dependency>,
    /// Every other kind `pg_dump --schema-only` emits (operators, aggregates, casts, rules,
    /// extended statistics, column settings, foreign tables, …): see [`extras`].
    #[serde(default)]
    pub extras: Vec<Extra>,
    /// Table columns used by each view, materialized view and policy (by its oid): `(table
    /// oid, attnum)`, attnum 0 for the table as a whole.
    #[serde(skip)]
    pub column_uses: std::collections::BTreeMap<u32, Vec<(u32, i16)>>,
    /// Statements this snapshot took to load.
    pub queries: usize,
}

#[derive(Deserialize)]
struct Globals {
    schemas: Vec<Schema>,
    extensions: Vec<Extension>,
    collations: Vec<Collation>,
    publications: Vec<Publication>,
    roles: Vec<String>,
    server_version: i32,
}

#[derive(Deserialize)]
struct RawRelation {
    oid: u32,
    schema: String,
    name: String,
    relkind: String,
    owner: String,
    acl: Option<Acl>,
    comment: Option<String>,
    unlogged: bool,
    reloptions: Vec<String>,
    rls_enabled: bool,
    rls_forced: bool,
    replica_identity: String,
    replica_identity_index: Option<String>,
    partition_key: Option<String>,
    partition_bound: Option<String>,
    parents: Vec<QualifiedName>,
    definition: Option<String>,
}

#[derive(Deserialize)]
struct Rel<T> {
    rel: u32,
    #[serde(flatten)]
    item: T,
}

#[derive(Deserialize)]
struct RawConstraint {
    #[serde(flatten)]
    constraint: Constraint,
    /// `conkey`.
    key: Option<Vec<i16>>,
    /// The column names, when the server had to name them (system columns).
    named_columns: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(flatten)]
    index: Index,
    /// `indkey`: key columns, then INCLUDE columns.
    key: Vec<i16>,
    key_count: usize,
}

/// The name of column `num` (`columns` by number, as loaded).
fn column_name(columns: &[Column], num: i16) -> Option<String> {
    columns
        .binary_search_by_key(&num, |c| c.num)
        .ok()
        .map(|i| columns[i].name.clone())
}

/// The rows of [`queries::columns`], by relation and position.
fn column_rows(rows: &[Row]) -> std::result::Result<Vec<Rel<Column>>, tokio_postgres::Error> {
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(Rel {
            rel: r.try_get::<_, i64>("rel")? as u32,
            item: Column {
                num: r.try_get("num")?,
                name: r.try_get("name")?,
                type_name: r.try_get("type_name")?,
                type_oid: r.try_get::<_, i64>("type_oid")? as u32,
                collation: r.try_get("collation")?,
                default: r.try_get("default")?,
                not_null: r.try_get("not_null")?,
                not_null_name: r.try_get("not_null_name")?,
                identity: match r.try_get::<_, Option<&str>>("identity")? {
                    Some("always") => Some(Identity::Always),
                    Some(_) => Some(Identity::ByDefault),
                    None => None,
                },
                identity_sequence: r
                    .try_get::<_, Option<Json<QualifiedName>>>("identity_sequence")?
                    .map(|j| j.0),
                identity_options: None,
                generated: r.try_get("generated")?,
                generated_virtual: r.try_get("generated_virtual")?,
                is_local: r.try_get("is_local")?,
                inherit_count: r.try_get("inherit_count")?,
                acl: r
                    .try_get::<_, Option<Json<Vec<AclItem>>>>("acl")?
                    .map(|j| j.0)
                    .unwrap_or_default(),
                comment: r.try_get("comment")?,
            },
        });
    }
    out.sort_by_key(|c| (c.rel, c.item.num));
    Ok(out)
}

#[derive(Deserialize)]
struct TriggersPolicies {
    triggers: Vec<Rel<Trigger>>,
    policies: Vec<Rel<Policy>>,
}

impl Snapshot {
    /// Statements sent by [`Snapshot::load`]: one to save and clear `search_path`, the catalog
    /// queries, one to restore `search_path`. The same for 1 table or 10,000.
    pub const QUERY_COUNT: usize = 2 + 11;

    /// Loads the schema of the database `client` is connected to.
    ///
    /// The catalog queries are sent together and answered in one pass; each sees the catalog
    /// as of its own start, so run it when no DDL is in flight (or inside a REPEATABLE READ
    /// transaction of the caller's) for a consistent picture.
    pub async fn load(client: &Client, filter: &Filter) -> Result<Snapshot> {
        Self::load_on(&[client], filter).await
    }

    /// Like [`Snapshot::load`], with the catalog queries spread over several connections to
    /// the same database, so that the server answers them in parallel (each connection runs
    /// its share in one pipeline). The statement count is [`Snapshot::QUERY_COUNT`] plus two
    /// per extra connection.
    pub async fn load_on(clients: &[&Client], filter: &Filter) -> Result<Snapshot> {
        assert!(!clients.is_empty(), "Snapshot::load_on needs a connection");
        let mut saved = Vec::with_capacity(clients.len());
        // The queries differ by major version (what the catalog has): read it first.
        let mut server_version = 0;
        for c in clients {
            let row = c
                .query_one(
                    "SELECT pg_catalog.current_setting('search_path'), \
                     pg_catalog.set_config('search_path', '', false), \
                     pg_catalog.current_setting('server_version_num')::int",
                    &[],
                )
                .await
                .ctx("reading the catalog: setting search_path")?;
            saved.push(row.get::<_, String>(0));
            server_version = row.get(2);
        }
        let result = Self::load_inner(clients, filter, server_version).await;
        let mut restore = Ok(());
        for (c, s) in clients.iter().zip(&saved) {
            let r = c
                .query_one(
                    "SELECT pg_catalog.set_config('search_path', $1, false)",
                    &[s],
                )
                .await
                .ctx("reading the catalog: restoring search_path");
            if restore.is_ok() {
                restore = r.map(|_| ());
            }
        }
        let mut snap = result?;
        restore?;
        snap.queries = Self::QUERY_COUNT + 2 * (clients.len() - 1);
        Ok(snap)
    }

    async fn load_inner(
        clients: &[&Client],
        filter: &Filter,
        server_version: i32,
    ) -> Result<Snapshot> {
        // Round-robin, biggest queries first, so that they land on different connections.
        let c = |i: usize| clients[i % clients.len()];
        let inc = &filter.include_schemas;
        let exc = &filter.exclude_schemas;
        let q_extras = extras_sql::extras();
        let (q_globals, q_types, q_seqs, q_rels, q_cols, q_cons, q_idx, q_trg, q_fun, q_dep) = (
            queries::globals(server_version),
            queries::types(),
            queries::sequences(),
            queries::relations(),
            queries::columns(server_version),
            queries::constraints(),
            queries::indexes(),
            queries::triggers_and_policies(),
            queries::functions(),
            queries::dependencies(),
        );
        async fn one<T: serde::de::DeserializeOwned>(
            client: &Client,
            what: &str,
            sql: &str,
            inc: &Vec<String>,
            exc: &Vec<String>,
        ) -> Result<T> {
            // As text: serde_json's errors then say which field did not fit.
            let row = client
                .query_one(&format!("SELECT ({sql})::text"), &[inc, exc])
                .await
                .ctx(format!("reading the catalog ({what})"))?;
            let text: &str = row.get(0);
            serde_json::from_str(text)
                .map_err(|e| crate::Error::Config(format!("decoding the catalog ({what}): {e}")))
        }
        let (globals, types, sequences, rels, cols, cons, idx, trg, functions, deps, extras) = futures_util::try_join!(
            one::<Globals>(c(5), "schemas", &q_globals, inc, exc),
            one::<Vec<TypeDef>>(c(6), "types", &q_types, inc, exc),
            one::<Vec<Sequence>>(c(7), "sequences", &q_seqs, inc, exc),
            one::<Vec<RawRelation>>(c(4), "relations", &q_rels, inc, exc),
            async {
                let rows = c(0)
                    .query(q_cols.as_str(), &[inc, exc])
                    .await
                    .ctx("reading the catalog (columns)")?;
                column_rows(&rows).ctx("decoding the catalog (columns)")
            },
            one::<Vec<Rel<RawConstraint>>>(c(3), "constraints", &q_cons, inc, exc),
            one::<Vec<Rel<RawIndex>>>(c(1), "indexes", &q_idx, inc, exc),
            one::<TriggersPolicies>(c(8), "triggers", &q_trg, inc, exc),
            one::<Vec<Function>>(c(9), "functions", &q_fun, inc, exc),
            async {
                let row = c(2)
                    .query_one(q_dep.as_str(), &[])
                    .await
                    .ctx("reading the catalog (dependencies)")?;
                deps::RawDeps::from_row(&row).ctx("decoding the catalog (dependencies)")
            },
            one::<Vec<Extra>>(c(10), "other objects", &q_extras, inc, exc),
        )?;
        let mut snap = Snapshot {
            filter: filter.clone(),
            server_version: globals.server_version,
            schemas: globals.schemas,
            extensions: globals.extensions,
            collations: globals.collations,
            types,
            sequences,
            tables: Vec::new(),
            views: Vec::new(),
            functions,
            publications: globals.publications,
            roles: globals.roles,
            dependencies: Vec::new(),
            extras: Vec::new(),
            column_uses: Default::default(),
            queries: 0,
        };
        snap.assemble(rels, cols, cons, idx, trg);
        snap.dependencies = deps::fold(&deps);
        snap.column_uses = deps::column_uses(&deps);
        extras::attach(&mut snap, extras);
        Ok(snap)
    }

    /// Hangs columns, constraints, indexes, triggers and policies onto their relations.
    fn assemble(
        &mut self,
        rels: Vec<RawRelation>,
        cols: Vec<Rel<Column>>,
        cons: Vec<Rel<RawConstraint>>,
        idx: Vec<Rel<RawIndex>>,
        trg: TriggersPolicies,
    ) {
        let seq_options: HashMap<(&str, &str), &SequenceOptions> = self
            .sequences
            .iter()
            .map(|s| ((s.schema.as_str(), s.name.as_str()), &s.options))
            .collect();
        let mut columns: HashMap<u32, Vec<Column>> = HashMap::new();
        for mut c in cols {
            if let Some(q) = &c.item.identity_sequence {
                c.item.identity_options = seq_options
                    .get(&(q.schema.as_str(), q.name.as_str()))
                    .map(|o| (*o).clone());
            }
            columns.entry(c.rel).or_default().push(c.item);
        }
        let no_columns = Vec::new();
        let mut constraints: HashMap<u32, Vec<Constraint>> = HashMap::new();
        for c in cons {
            let RawConstraint {
                mut constraint,
                key,
                named_columns,
            } = c.item;
            constraint.columns = match named_columns {
                Some(names) => names,
                None => {
                    let cols = columns.get(&c.rel).unwrap_or(&no_columns);
                    key.unwrap_or_default()
                        .into_iter()
                        .filter_map(|n| column_name(cols, n))
                        .collect()
                }
            };
            constraints.entry(c.rel).or_default().push(constraint);
        }
        let mut indexes: HashMap<u32, Vec<Index>> = HashMap::new();
        for i in idx {
            let RawIndex {
                mut index,
                key,
                key_count,
            } = i.item;
            let cols = columns.get(&i.rel).unwrap_or(&no_columns);
            index.columns = key
                .into_iter()
                .take(key_count)
                .map(|n| column_name(cols, n))
                .collect();
            indexes.entry(i.rel).or_default().push(index);
        }
        let mut triggers: HashMap<u32, Vec<Trigger>> = HashMap::new();
        for t in trg.triggers {
            triggers.entry(t.rel).or_default().push(t.item);
        }
        let mut policies: HashMap<u32, Vec<Policy>> = HashMap::new();
        for p in trg.policies {
            policies.entry(p.rel).or_default().push(p.item);
        }
        for r in rels {
            let cols = columns.remove(&r.oid).unwrap_or_default();
            let idx = indexes.remove(&r.oid).unwrap_or_default();
            let trg = triggers.remove(&r.oid).unwrap_or_default();
            match r.relkind.as_str() {
                "v" | "m" => self.views.push(View {
                    oid: r.oid,
                    schema: r.schema,
                    name: r.name,
                    materialized: r.relkind == "m",
                    definition: r.definition.unwrap_or_default(),
                    owner: r.owner,
                    acl: r.acl,
                    comment: r.comment,
                    reloptions: r.reloptions,
                    columns: cols,
                    indexes: idx,
                    triggers: trg,
                }),
                _ => {
                    let cons = constraints.remove(&r.oid).unwrap_or_default();
                    let primary_key = cons
                        .iter()
                        .find(|c| c.kind == ConstraintKind::PrimaryKey)
                        .map(|c| c.columns.clone());
                    self.tables.push(Table {
                        oid: r.oid,
                        schema: r.schema,
                        name: r.name,
                        kind: if r.relkind == "p" {
                            TableKind::Partitioned
                        } else {
                            TableKind::Ordinary
                        },
                        owner: r.owner,
                        acl: r.acl,
                        comment: r.comment,
                        unlogged: r.unlogged,
                        reloptions: r.reloptions,
                        rls_enabled: r.rls_enabled,
                        rls_forced: r.rls_forced,
                        replica_identity: r.replica_identity,
                        replica_identity_index: r.replica_identity_index,
                        partition_key: r.partition_key,
                        partition_bound: r.partition_bound,
                        parents: r.parents,
                        columns: cols,
                        primary_key,
                        constraints: cons,
                        indexes: idx,
                        triggers: trg,
                        policies: policies.remove(&r.oid).unwrap_or_default(),
                    })
                }
            }
        }
    }

    /// The table `schema.name`.
    pub fn table(&self, schema: &str, name: &str) -> Option<&Table> {
        self.tables
            .iter()
            .find(|t| t.schema == schema && t.name == name)
    }

    /// The view or materialized view `schema.name`.
    pub fn view(&self, schema: &str, name: &str) -> Option<&View> {
        self.views
            .iter()
            .find(|v| v.schema == schema && v.name == name)
    }

    pub fn sequence(&self, schema: &str, name: &str) -> Option<&Sequence> {
        self.sequences
            .iter()
            .find(|s| s.schema == schema && s.name == name)
    }

    pub fn type_def(&self, schema: &str, name: &str) -> Option<&TypeDef> {
        self.types
            .iter()
            .find(|t| t.schema == schema && t.name == name)
    }

    pub fn schema(&self, name: &str) -> Option<&Schema> {
        self.schemas.iter().find(|s| s.name == name)
    }

    /// Functions and procedures called `schema.name` (all overloads).
    pub fn functions_named<'a>(
        &'a self,
        schema: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Function> + 'a {
        self.functions
            .iter()
            .filter(move |f| f.schema == schema && f.name == name)
    }

    pub fn table_by_oid(&self, oid: u32) -> Option<&Table> {
        self.tables.iter().find(|t| t.oid == oid)
    }

    /// Foreign keys of other tables (or of the table itself) that reference `schema.name`, with
    /// the table that holds each.
    pub fn foreign_keys_to<'a>(
        &'a self,
        schema: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a Table, &'a Constraint)> + 'a {
        self.tables.iter().flat_map(move |t| {
            t.foreign_keys()
                .filter(move |c| {
                    c.references
                        .as_ref()
                        .is_some_and(|r| r.schema == schema && r.table == name)
                })
                .map(move |c| (t, c))
        })
    }

    /// Sequences owned by columns of `schema.name` (serial and identity columns).
    pub fn owned_sequences<'a>(
        &'a self,
        schema: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Sequence> + 'a {
        self.sequences.iter().filter(move |s| {
            s.owned_by
                .as_ref()
                .is_some_and(|o| o.schema == schema && o.table == name)
        })
    }

    /// Views and materialized views that depend directly on the relation with `oid`.
    pub fn dependent_views(&self, oid: u32) -> impl Iterator<Item = &View> + '_ {
        let target = ObjRef {
            class: ObjClass::Class,
            oid,
        };
        self.views.iter().filter(move |v| {
            self.dependencies.iter().any(|d| {
                d.to == target
                    && d.from
                        == ObjRef {
                            class: ObjClass::Class,
                            oid: v.oid,
                        }
            })
        })
    }

    /// Publications that publish `schema.name` explicitly.
    pub fn publications_of<'a>(
        &'a self,
        schema: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Publication> + 'a {
        self.publications.iter().filter(move |p| {
            p.tables
                .iter()
                .any(|t| t.schema == schema && t.name == name)
        })
    }
}
