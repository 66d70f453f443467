//! What a sync needs to know about its tables on each side, read from the catalog.
//!
//! The full snapshot ([`crate::catalog::Snapshot`]) describes everything; a sync needs only a
//! few facts per table (columns with their exact types, the primary key, foreign keys in and
//! out, owned sequences, indexes), so they are read here with a few set-based queries per side,
//! whatever the number of tables. Names come back typed: qualified names as [`QuotedName`],
//! made here, where the catalog's names come in. Matching requested names against the list is
//! sync's business (`sync::tables`).

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::error::{DbResultExt, Result};
use crate::ident::QuotedName;

/// A column as the catalog describes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Column {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`: the type as SQL spells it.
    pub type_name: String,
    pub type_oid: u32,
    pub not_null: bool,
    /// A `GENERATED ALWAYS AS (…) STORED` column: never written.
    pub generated: bool,
    /// `a` (ALWAYS), `d` (BY DEFAULT) or empty.
    pub identity: String,
    pub default: Option<String>,
}

/// A foreign key (from the referencing table's point of view).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ForeignKey {
    pub name: String,
    pub from_oid: u32,
    pub from: QuotedName,
    pub from_columns: Vec<String>,
    pub to_oid: u32,
    pub to: QuotedName,
    pub to_columns: Vec<String>,
    pub deferrable: bool,
    pub initially_deferred: bool,
    /// `confdeltype`: a (no action), r (restrict), c (cascade), n (set null), d (set default).
    pub on_delete: String,
}

/// A sequence owned by a column (serial or identity).
#[derive(Debug, Clone, serde::Serialize)]
pub struct OwnedSequence {
    pub column: String,
    pub sequence: QuotedName,
}

/// An index of a table, and the constraint it backs (if any).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Index {
    pub name: String,
    /// `pg_get_indexdef`; `None` until [`index_definitions`] read it (only for the tables whose
    /// indexes a sync rebuilds: deparsing every index was most of the planning of 2 000 small
    /// tables).
    pub definition: Option<String>,
    /// Name and kind (`p`, `u`, `x`) of the constraint the index implements.
    pub constraint: Option<(String, String)>,
    /// `pg_get_constraintdef` of that constraint, read with `definition`.
    pub constraint_definition: Option<String>,
    /// Neither the replica identity, the clustering index, nor an index a foreign key uses
    /// (dropping it would lose that or fail).
    pub plain: bool,
    pub comment: Option<String>,
    /// `relpages`: the size as of the last VACUUM, ANALYZE or build (no lock needed to read).
    pub pages: i64,
}

/// One table on one side.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Table {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `r` (plain) or `p` (partitioned).
    pub kind: String,
    pub estimated_rows: f64,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
    pub sequences: Vec<OwnedSequence>,
    pub indexes: Vec<Index>,
}

impl Table {
    /// `schema.name`, quoted where needed.
    pub fn qualified(&self) -> QuotedName {
        QuotedName::qualified(&self.schema, &self.name)
    }

    /// `schema.name` for messages, JSON and run labels: quoted where SQL needs it, as every
    /// part of pgflip names relations (so `public."Line Items"` reads one way everywhere and
    /// can be pasted into SQL).
    pub fn display(&self) -> String {
        self.qualified().into()
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The tables of one side that a sync looks at, and the foreign keys touching them.
#[derive(Debug, Clone, Default)]
pub struct SideCatalog {
    pub tables: Vec<Table>,
    /// Foreign keys whose referencing or referenced table is one of `tables`.
    pub foreign_keys: Vec<ForeignKey>,
}

impl SideCatalog {
    pub fn find(&self, schema: &str, name: &str) -> Option<&Table> {
        self.tables
            .iter()
            .find(|t| t.schema == schema && t.name == name)
    }
}

/// Schemas that belong to PostgreSQL or to pgflip's own bookkeeping.
const SYSTEM_SCHEMA_FILTER: &str =
    "n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgflip') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
     AND n.nspname NOT LIKE 'pgflip\\_backup\\_%' AND n.nspname NOT LIKE 'pgflip\\_shadow\\_%'";

/// Every user table (name only): what requested names are matched against.
pub async fn list_tables(client: &Client) -> Result<Vec<(u32, String, String)>> {
    let sql = format!(
        "SELECT c.oid, n.nspname::text, c.relname::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {SYSTEM_SCHEMA_FILTER} \
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                           AND d.objid = c.oid AND d.deptype = 'e') \
         ORDER BY 2, 3"
    );
    let rows = client.query(&sql, &[]).await.ctx("listing tables")?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, u32>(0), r.get(1), r.get(2)))
        .collect())
}

/// Loads columns, primary keys, owned sequences, the foreign keys touching `oids` and (with
/// `indexes`) their indexes without their definitions, in five or six queries whatever the
/// number of tables, sent at once (the client pipelines them).
pub async fn load(client: &Client, oids: &[u32], indexes: bool) -> Result<SideCatalog> {
    let oid_list: Vec<u32> = oids.to_vec();
    let rels = async {
        client
            .query(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, \
                        greatest(c.reltuples, 0)::float8 \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = ANY($1::oid[])",
                &[&oid_list],
            )
            .await
            .ctx("reading tables")
    };
    let cols = async {
        client
            .query(
                "SELECT a.attrelid, a.attname::text, format_type(a.atttypid, a.atttypmod), \
                        a.atttypid, a.attnotnull, a.attgenerated <> '', a.attidentity::text, \
                        pg_get_expr(d.adbin, d.adrelid) \
                 FROM pg_attribute a \
                 LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attrelid, a.attnum",
                &[&oid_list],
            )
            .await
            .ctx("reading columns")
    };
    let pks = async {
        client
            .query(
                "SELECT con.conrelid, a.attname::text \
                 FROM pg_constraint con \
                 CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum \
                 WHERE con.contype = 'p' AND con.conrelid = ANY($1::oid[]) \
                 ORDER BY con.conrelid, k.ord",
                &[&oid_list],
            )
            .await
            .ctx("reading primary keys")
    };
    let seqs = async {
        client
            .query(
                "SELECT d.refobjid, a.attname::text, n.nspname::text, s.relname::text \
                 FROM pg_depend d \
                 JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
                 JOIN pg_namespace n ON n.oid = s.relnamespace \
                 JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
                 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
                   AND d.deptype IN ('a', 'i') AND d.refobjid = ANY($1::oid[])",
                &[&oid_list],
            )
            .await
            .ctx("reading owned sequences")
    };
    let fks = async {
        client
            .query(
                "SELECT con.conname::text, con.conrelid, fn.nspname::text, fc.relname::text, \
                        ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o) \
                              JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n \
                              ORDER BY k.o), \
                        con.confrelid, tn.nspname::text, tc.relname::text, \
                        ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o) \
                              JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n \
                              ORDER BY k.o), \
                        con.condeferrable, con.condeferred, con.confdeltype::text \
                 FROM pg_constraint con \
                 JOIN pg_class fc ON fc.oid = con.conrelid \
                 JOIN pg_namespace fn ON fn.oid = fc.relnamespace \
                 JOIN pg_class tc ON tc.oid = con.confrelid \
                 JOIN pg_namespace tn ON tn.oid = tc.relnamespace \
                 WHERE con.contype = 'f' AND con.conparentid = 0 \
                   AND (con.conrelid = ANY($1::oid[]) OR con.confrelid = ANY($1::oid[])) \
                 ORDER BY 1, 2",
                &[&oid_list],
            )
            .await
            .ctx("reading foreign keys")
    };
    let idx = async {
        if !indexes {
            return Ok(Vec::new());
        }
        client
            .query(
                // NOT IN, not a correlated NOT EXISTS: hashed once rather than costed per index,
                // which pushed 2 000 indexes over jit_above_cost (20 ms of JIT compilation).
                "SELECT i.indrelid, c.relname::text, con.conname::text, con.contype::text, \
                        NOT i.indisreplident AND NOT i.indisclustered AND i.indexrelid NOT IN \
                            (SELECT f.conindid FROM pg_constraint f WHERE f.contype = 'f'), \
                        obj_description(i.indexrelid, 'pg_class'), c.relpages::bigint \
                 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid \
                      AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x') \
                 WHERE i.indrelid = ANY($1::oid[]) ORDER BY i.indrelid, c.relname",
                &[&oid_list],
            )
            .await
            .ctx("reading indexes")
    };
    let (rels, cols, pks, seqs, fks, idx) =
        futures_util::try_join!(rels, cols, pks, seqs, fks, idx)?;
    let mut indexes: BTreeMap<u32, Vec<Index>> = BTreeMap::new();
    for r in &idx {
        let conname: Option<String> = r.get(2);
        let contype: Option<String> = r.get(3);
        indexes.entry(r.get(0)).or_default().push(Index {
            name: r.get(1),
            definition: None,
            constraint: conname.zip(contype),
            constraint_definition: None,
            plain: r.get(4),
            comment: r.get(5),
            pages: r.get(6),
        });
    }
    let mut columns: BTreeMap<u32, Vec<Column>> = BTreeMap::new();
    for r in &cols {
        columns.entry(r.get(0)).or_default().push(Column {
            name: r.get(1),
            type_name: r.get(2),
            type_oid: r.get(3),
            not_null: r.get(4),
            generated: r.get(5),
            identity: r.get(6),
            default: r.get(7),
        });
    }
    let mut pk: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for r in &pks {
        pk.entry(r.get(0)).or_default().push(r.get(1));
    }
    let mut sequences: BTreeMap<u32, Vec<OwnedSequence>> = BTreeMap::new();
    for r in &seqs {
        sequences.entry(r.get(0)).or_default().push(OwnedSequence {
            column: r.get(1),
            sequence: QuotedName::qualified(r.get(2), r.get(3)),
        });
    }
    let mut tables: Vec<Table> = rels
        .iter()
        .map(|r| {
            let oid: u32 = r.get(0);
            Table {
                oid,
                schema: r.get(1),
                name: r.get(2),
                kind: r.get(3),
                estimated_rows: r.get(4),
                columns: columns.remove(&oid).unwrap_or_default(),
                primary_key: pk.remove(&oid).unwrap_or_default(),
                sequences: sequences.remove(&oid).unwrap_or_default(),
                indexes: indexes.remove(&oid).unwrap_or_default(),
            }
        })
        .collect();
    tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    let foreign_keys = fks
        .iter()
        .map(|r| ForeignKey {
            name: r.get(0),
            from_oid: r.get(1),
            from: QuotedName::qualified(r.get(2), r.get(3)),
            from_columns: r.get(4),
            to_oid: r.get(5),
            to: QuotedName::qualified(r.get(6), r.get(7)),
            to_columns: r.get(8),
            deferrable: r.get(9),
            initially_deferred: r.get(10),
            on_delete: r.get(11),
        })
        .collect();
    Ok(SideCatalog {
        tables,
        foreign_keys,
    })
}

/// Reads the definitions of the indexes of `tables` (and of the constraints they back), in one
/// query whatever the number of tables.
pub async fn index_definitions(client: &Client, tables: &mut [&mut Table]) -> Result<()> {
    if tables.is_empty() {
        return Ok(());
    }
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    let rows = client
        .query(
            "SELECT i.indrelid, c.relname::text, pg_get_indexdef(i.indexrelid), \
                    pg_get_constraintdef(con.oid) \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid \
                  AND con.conrelid = i.indrelid AND con.contype IN ('p', 'u', 'x') \
             WHERE i.indrelid = ANY($1::oid[])",
            &[&oids],
        )
        .await
        .ctx("reading index definitions")?;
    let mut defs: BTreeMap<(u32, String), (String, Option<String>)> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect();
    for t in tables.iter_mut() {
        for i in &mut t.indexes {
            if let Some((def, con)) = defs.remove(&(t.oid, i.name.clone())) {
                i.definition = Some(def);
                i.constraint_definition = con;
            }
        }
    }
    Ok(())
}
