//! The operation record of a migration: one row of `pgflip.operations` (kind `migrate`) whose
//! `details` hold everything prepare creates, named before it is created.
//!
//! The names are decided up front and written in the same transaction as the shadow schemas,
//! so that a crash at any later point leaves a record from which [`super::abort`] can remove
//! every piece (each drop is `IF EXISTS`: a piece not yet made is simply skipped). The phase is
//! updated at each boundary of prepare, in the transaction of the work it describes when there
//! is one.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Result};
use crate::ident::{qualified, quote_literal};

/// Where a migration stands: `Preparing` → `Capturing` → `Copying` → `Indexing` →
/// `Validating` → `Prepared` (the phases of every operation kind are one enum in `state`).
pub use crate::state::Phase;

/// A migrated user schema and the shadow schema its new tables are built in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaMap {
    pub live: String,
    pub shadow: String,
    /// The target lacked the live schema: prepare created it (abort drops it when empty).
    pub created_live: bool,
}

/// How a preserved table's writes are forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preserved {
    /// The key writes are forwarded by (primary key or unique replica identity).
    pub key: Vec<String>,
    /// Capture function, in the `pgflip` schema.
    pub function: String,
    /// Capture trigger on the live table (row level), and its TRUNCATE companion.
    pub trigger: String,
    pub truncate_trigger: String,
    /// Rows copied from the live table when prepare began.
    pub copied_rows: Option<i64>,
}

/// One table of the source's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    pub schema: String,
    pub name: String,
    pub shadow_schema: String,
    /// The target has a table of that name (the swap retires it).
    pub on_target: bool,
    /// A partition (its rows are copied through its parent).
    pub partition: bool,
    /// For a partition: the table at the top of its partition tree (same schema mapping).
    #[serde(default)]
    pub root: Option<(String, String)>,
    pub preserved: Option<Preserved>,
    pub rows: Option<i64>,
    pub bytes: Option<i64>,
}

impl TableEntry {
    pub fn live_sql(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    pub fn shadow_sql(&self) -> String {
        qualified(&self.shadow_schema, &self.name)
    }
}

/// A migration in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub id: i64,
    #[serde(default = "default_phase")]
    pub phase: Phase,
    /// The source, described without its password.
    pub source: String,
    pub schemas: Vec<SchemaMap>,
    pub tables: Vec<TableEntry>,
    /// Sequence in `pgflip` counting forwarded writes (cheap: no row contention).
    pub forwarded_sequence: String,
    /// Table in `pgflip` holding the writes a shadow table rejected.
    pub rejected_table: String,
    /// Backend pid of the prepare that made the record (to tell a dead prepare from a live one).
    pub prepare_pid: i32,
    /// What abort runs to remove the objects prepare added for the new tables (types,
    /// functions, extensions, ...), dependents first ([`super::objects::drops`]).
    #[serde(default)]
    pub added_drops: Vec<String>,
    /// Materialized views the source has and the target lacks, built in the shadow schemas
    /// over the shadow tables; the swap moves them into place.
    #[serde(default)]
    pub matviews: Vec<MatviewEntry>,
    /// What the swap runs after the moves so that the target's schema is the source's
    /// ([`super::objects::after_swap`]).
    #[serde(default)]
    pub after_swap: Vec<String>,
    /// Target tables the source lacks (in the migrated schemas): the swap retires them with
    /// the generation (a rollback brings them back). Empty with `--keep-extra-tables`.
    #[serde(default)]
    pub extra_tables: Vec<(String, String)>,
    /// Schemas prepare created (the live schemas the target lacked, and those of the objects
    /// it added): a rollback drops them when they are empty.
    #[serde(default)]
    pub created_schemas: Vec<String>,
    /// Objects prepare added for the new tables, as `(kind, schema, name)` (a function's name
    /// with its arguments): not the old version's, so its rollback keeps them and says so.
    #[serde(default)]
    pub added_objects: Vec<(String, String, String)>,
}

/// A materialized view built beside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatviewEntry {
    pub schema: String,
    pub name: String,
    /// The target has a materialized view of that name: the swap flips the two.
    #[serde(default)]
    pub on_target: bool,
    pub shadow_schema: String,
}

fn default_phase() -> Phase {
    Phase::Preparing
}

impl Record {
    pub fn forwarded_sql(&self) -> String {
        qualified(crate::state::SCHEMA, &self.forwarded_sequence)
    }

    pub fn rejected_sql(&self) -> String {
        qualified(crate::state::SCHEMA, &self.rejected_table)
    }

    pub fn preserved(&self) -> impl Iterator<Item = (&TableEntry, &Preserved)> {
        self.tables
            .iter()
            .filter_map(|t| t.preserved.as_ref().map(|p| (t, p)))
    }

    fn details(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| Error::Config(format!("encoding the migration record: {e}")))
    }

    /// SQL that saves the record (phase and details).
    pub fn save_sql(&self) -> Result<String> {
        Ok(format!(
            // The schema step (large, written once by prepare, read by the swap) is kept.
            "UPDATE pgflip.operations SET phase = {}, details = {}::jsonb \
               || jsonb_strip_nulls(jsonb_build_object('schema_step', details -> 'schema_step')), \
             updated_at = clock_timestamp() WHERE id = {}",
            quote_literal(self.phase.as_str()),
            quote_literal(&self.details()?),
            self.id
        ))
    }

    pub async fn save(&self, client: &Client) -> Result<()> {
        client
            .batch_execute(&self.save_sql()?)
            .await
            .ctx("saving the migration record")
    }

    /// SQL that removes the record.
    pub fn delete_sql(&self) -> String {
        format!("DELETE FROM pgflip.operations WHERE id = {}", self.id)
    }
}

/// The migrations in flight on the target (at most one, unless something went wrong). Reads
/// only; empty without pgflip state.
pub async fn load(client: &Client) -> Result<Vec<Record>> {
    if !crate::state::exists(client).await? {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT id, phase, details FROM pgflip.operations WHERE kind = $1 ORDER BY id",
            &[&super::OPERATION_KIND],
        )
        .await
        .ctx("reading the migration record")?;
    let mut out = Vec::new();
    for r in rows {
        let id: i64 = r.get(0);
        let phase: String = r.get(1);
        let details: serde_json::Value = r.get(2);
        let mut rec: Record = serde_json::from_value(details).map_err(|e| {
            Error::Config(format!("the record of migration {id} cannot be read: {e}"))
        })?;
        rec.id = id;
        rec.phase = Phase::parse(&phase).unwrap_or(Phase::Preparing);
        out.push(rec);
    }
    Ok(out)
}

/// The one migration in flight, or an error saying there is none.
pub async fn load_one(client: &Client) -> Result<Record> {
    let mut all = load(client).await?;
    match all.len() {
        0 => Err(Error::InvalidInput(
            "no migration is in flight on this target (run `pgflip migrate prepare` first)".into(),
        )),
        1 => Ok(all.remove(0)),
        n => Err(Error::Refused(
            format!(
            "{n} migrations are recorded on this target; abort them with `pgflip migrate abort`"
        )
            .into(),
        )),
    }
}

/// Whether the backend that wrote a record is still running (a prepare in progress).
pub async fn backend_alive(client: &Client, pid: i32) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
            &[&pid],
        )
        .await
        .ctx("looking for the preparing session")?;
    Ok(row.get(0))
}
