//! Dependency edges between the objects of a snapshot, folded from the raw catalog rows of
//! [`super::queries::dependencies`].
//!
//! The folding is done here rather than in SQL so that the server only scans (see the query's
//! comment: joined in SQL, it went quadratic on stale statistics). The rules are those of
//! `pg_depend` read by an owner: a column default or a view rule stands for its relation, an
//! array or multirange type for its element or range type, a row type for its relation, and
//! a reference to an extension member for the extension.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Row;

use super::{Dependency, ObjClass, ObjRef};

/// The catalog rows, column-wise as the query returns them.
pub(super) struct RawDeps {
    classid: Vec<u32>,
    objid: Vec<u32>,
    refclassid: Vec<u32>,
    refobjid: Vec<u32>,
    deptype: Vec<i8>,
    refobjsubid: Vec<i32>,
    ext_classid: Vec<u32>,
    ext_objid: Vec<u32>,
    ext_refobjid: Vec<u32>,
    attrdef_oid: Vec<u32>,
    attrdef_rel: Vec<u32>,
    rule_oid: Vec<u32>,
    rule_rel: Vec<u32>,
    type_oid: Vec<u32>,
    type_elem: Vec<u32>,
    type_array: Vec<u32>,
    type_rel: Vec<u32>,
    multirange: Vec<u32>,
    range: Vec<u32>,
    catalog_oid: Vec<u32>,
    catalog_name: Vec<String>,
}

impl RawDeps {
    pub(super) fn from_row(row: &Row) -> Result<RawDeps, tokio_postgres::Error> {
        // array_agg over no rows is NULL.
        fn oids(row: &Row, i: usize) -> Result<Vec<u32>, tokio_postgres::Error> {
            Ok(row.try_get::<_, Option<Vec<u32>>>(i)?.unwrap_or_default())
        }
        Ok(RawDeps {
            classid: oids(row, 0)?,
            objid: oids(row, 1)?,
            refclassid: oids(row, 2)?,
            refobjid: oids(row, 3)?,
            deptype: row.try_get::<_, Option<Vec<i8>>>(4)?.unwrap_or_default(),
            ext_classid: oids(row, 5)?,
            ext_objid: oids(row, 6)?,
            ext_refobjid: oids(row, 7)?,
            attrdef_oid: oids(row, 8)?,
            attrdef_rel: oids(row, 9)?,
            rule_oid: oids(row, 10)?,
            rule_rel: oids(row, 11)?,
            type_oid: oids(row, 12)?,
            type_elem: oids(row, 13)?,
            type_array: oids(row, 14)?,
            type_rel: oids(row, 15)?,
            multirange: oids(row, 16)?,
            range: oids(row, 17)?,
            catalog_oid: oids(row, 18)?,
            catalog_name: row
                .try_get::<_, Option<Vec<String>>>(19)?
                .unwrap_or_default(),
            refobjsubid: row.try_get::<_, Option<Vec<i32>>>(20)?.unwrap_or_default(),
        })
    }
}

impl RawDeps {
    /// The oids of the catalogs the answer names, by name.
    fn catalogs(&self) -> HashMap<&str, u32> {
        self.catalog_name
            .iter()
            .map(String::as_str)
            .zip(self.catalog_oid.iter().copied())
            .collect()
    }

    /// 0 never is a catalog's oid: a catalog missing from the answer matches nothing.
    fn catalog_oid(catalogs: &HashMap<&str, u32>, name: &str) -> u32 {
        catalogs.get(name).copied().unwrap_or(0)
    }
}

fn obj_class(catalog: &str) -> Option<ObjClass> {
    Some(match catalog {
        "pg_namespace" => ObjClass::Namespace,
        "pg_extension" => ObjClass::Extension,
        "pg_collation" => ObjClass::Collation,
        "pg_type" => ObjClass::Type,
        "pg_class" => ObjClass::Class,
        "pg_proc" => ObjClass::Proc,
        "pg_constraint" => ObjClass::Constraint,
        "pg_trigger" => ObjClass::Trigger,
        "pg_policy" => ObjClass::Policy,
        "pg_operator" => ObjClass::Operator,
        "pg_opclass" => ObjClass::OpClass,
        "pg_opfamily" => ObjClass::OpFamily,
        "pg_cast" => ObjClass::Cast,
        "pg_ts_config" => ObjClass::TsConfig,
        "pg_ts_dict" => ObjClass::TsDict,
        "pg_ts_parser" => ObjClass::TsParser,
        "pg_ts_template" => ObjClass::TsTemplate,
        "pg_conversion" => ObjClass::Conversion,
        "pg_statistic_ext" => ObjClass::StatisticExt,
        "pg_rewrite" => ObjClass::Rule,
        "pg_event_trigger" => ObjClass::EventTrigger,
        "pg_foreign_data_wrapper" => ObjClass::ForeignDataWrapper,
        "pg_foreign_server" => ObjClass::ForeignServer,
        "pg_user_mapping" => ObjClass::UserMapping,
        "pg_default_acl" => ObjClass::DefaultAcl,
        _ => return None,
    })
}

fn zip(a: &[u32], b: &[u32]) -> HashMap<u32, u32> {
    a.iter().copied().zip(b.iter().copied()).collect()
}

/// The edges, sorted and without duplicates; only those between the classes of [`ObjClass`].
pub(super) fn fold(raw: &RawDeps) -> Vec<Dependency> {
    let catalog = raw.catalogs();
    let cat = |name: &str| RawDeps::catalog_oid(&catalog, name);
    let (pg_class, pg_type, pg_attrdef, pg_rewrite, pg_extension) = (
        cat("pg_class"),
        cat("pg_type"),
        cat("pg_attrdef"),
        cat("pg_rewrite"),
        cat("pg_extension"),
    );
    let class_of: HashMap<u32, ObjClass> = catalog
        .iter()
        .filter_map(|(name, oid)| Some((*oid, obj_class(name)?)))
        .collect();
    let attrdef = zip(&raw.attrdef_oid, &raw.attrdef_rel);
    let rule = zip(&raw.rule_oid, &raw.rule_rel);
    let range_of_multirange = zip(&raw.multirange, &raw.range);
    let types: HashMap<u32, (u32, u32, u32)> = (0..raw.type_oid.len())
        .map(|i| {
            (
                raw.type_oid[i],
                (raw.type_elem[i], raw.type_array[i], raw.type_rel[i]),
            )
        })
        .collect();
    let ext: HashMap<(u32, u32), u32> = (0..raw.ext_classid.len())
        .map(|i| ((raw.ext_classid[i], raw.ext_objid[i]), raw.ext_refobjid[i]))
        .collect();

    // (catalog oid, object oid) of the object that stands for `(classid, objid)`.
    let owner = |classid: u32, objid: u32| -> Option<(u32, u32)> {
        if classid == pg_attrdef {
            Some((pg_class, *attrdef.get(&objid)?))
        } else if classid == pg_rewrite {
            // A view's rule stands for the view; other rules are objects of their own.
            Some(match rule.get(&objid) {
                Some(&rel) => (pg_class, rel),
                None => (classid, objid),
            })
        } else if classid == pg_type {
            let &(elem, _, _) = types.get(&objid)?;
            let base = match types.get(&elem) {
                Some(&(_, array, _)) if array == objid => elem,
                _ => range_of_multirange.get(&objid).copied().unwrap_or(objid),
            };
            let &(_, _, rel) = types.get(&base)?;
            Some(if rel != 0 {
                (pg_class, rel)
            } else {
                (pg_type, base)
            })
        } else {
            Some((classid, objid))
        }
    };

    let mut edges: Vec<Dependency> = (0..raw.classid.len())
        .filter_map(|i| {
            let from = owner(raw.classid[i], raw.objid[i])?;
            let to = owner(raw.refclassid[i], raw.refobjid[i])?;
            let to = match ext.get(&to) {
                Some(&e) => (pg_extension, e),
                None => to,
            };
            if from == to {
                return None;
            }
            Some(Dependency {
                from: ObjRef {
                    class: *class_of.get(&from.0)?,
                    oid: from.1,
                },
                to: ObjRef {
                    class: *class_of.get(&to.0)?,
                    oid: to.1,
                },
                deptype: raw.deptype[i] as u8 as char,
            })
        })
        .collect();
    edges.sort_unstable_by_key(|d| (d.from, d.to, d.deptype));
    edges.dedup();
    edges
}

/// The table columns that views, materialized views and policies use, by the oid of the view
/// (or policy): `(table oid, attnum)`, where attnum 0 is the table as a whole (every view has
/// that edge to each table it reads, and a whole-row reference records nothing more). This is
/// what PostgreSQL itself checks before it retypes or drops a column.
pub(super) fn column_uses(raw: &RawDeps) -> BTreeMap<u32, Vec<(u32, i16)>> {
    let catalog = raw.catalogs();
    let cat = |name: &str| RawDeps::catalog_oid(&catalog, name);
    let (pg_class, pg_rewrite, pg_policy) = (cat("pg_class"), cat("pg_rewrite"), cat("pg_policy"));
    let rule = zip(&raw.rule_oid, &raw.rule_rel);
    let mut uses: BTreeMap<u32, Vec<(u32, i16)>> = BTreeMap::new();
    for i in 0..raw.classid.len().min(raw.refobjsubid.len()) {
        if raw.refclassid[i] != pg_class {
            continue;
        }
        let user = if raw.classid[i] == pg_rewrite {
            match rule.get(&raw.objid[i]) {
                Some(&view) => view,
                None => continue,
            }
        } else if raw.classid[i] == pg_policy {
            raw.objid[i]
        } else {
            continue;
        };
        if user == raw.refobjid[i] {
            continue;
        }
        uses.entry(user)
            .or_default()
            .push((raw.refobjid[i], raw.refobjsubid[i] as i16));
    }
    for v in uses.values_mut() {
        v.sort_unstable();
        v.dedup();
    }
    uses
}
