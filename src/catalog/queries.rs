//! The catalog queries of a snapshot.
//!
//! Each query is set-based (one scan per catalog, whatever the number of tables). Most return a
//! single JSON document that deserializes straight into the types of [`super::types`]: one row
//! per query keeps the driver work small and lets the server do the joins. The two biggest
//! answers are plain rows ([`columns`]) and arrays ([`dependencies`]) instead, where building
//! JSON would cost the server more than the query itself. Newer-server
//! columns are read through `to_jsonb(row)` so that one text works on several major versions.
//! Every query but [`dependencies`] takes the schema filter as `$1` (schemas to include, empty
//! = all) and `$2` (schemas to exclude); edges that leave the filtered objects are harmless, as
//! their users only follow edges between objects they have.

/// Schemas in scope, and the catalog rows that belong to an extension.
pub(super) const SCOPE: &str = r#"
WITH ns AS (
  SELECT n.oid, n.nspname
  FROM pg_catalog.pg_namespace n
  WHERE n.nspname NOT LIKE 'pg\_%'
    AND n.nspname <> 'information_schema'
    AND n.nspname <> 'pgflip'
    AND (n.nspname NOT LIKE 'pgflip\_%' OR n.nspname = ANY($1::text[]))
    AND (pg_catalog.cardinality($1::text[]) = 0 OR n.nspname = ANY($1::text[]))
    AND NOT (n.nspname = ANY($2::text[]))
    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                    WHERE e.classid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
                      AND e.objid = n.oid AND e.deptype = 'e')
),
ext AS (
  SELECT e.classid, e.objid, e.refobjid FROM pg_catalog.pg_depend e WHERE e.deptype = 'e'
)
"#;

/// JSON of an ACL and of its owner's default (`kind` as for `acldefault`), NULL when the ACL
/// is NULL (the default applies).
pub(super) fn acl(acl: &str, kind: char, owner: &str) -> String {
    format!(
        "CASE WHEN {acl} IS NULL THEN NULL ELSE pg_catalog.json_build_object(\
         'items', {items}, 'default', {default}) END",
        items = acl_items(acl),
        default = acl_items(&format!("pg_catalog.acldefault('{kind}', {owner})")),
    )
}

/// JSON array of the privileges in an ACL, in ACL order: [`AclItem`](super::AclItem)s.
pub(crate) fn acl_items(acl: &str) -> String {
    format!(
        "(SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object(\
         'grantee', CASE WHEN a.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(a.grantee) END, \
         'grantor', pg_catalog.pg_get_userbyid(a.grantor), \
         'privilege', a.privilege_type, 'grantable', a.is_grantable) ORDER BY a.n), '[]') \
         FROM pg_catalog.aclexplode({acl}) WITH ORDINALITY AS a(grantor, grantee, privilege_type, is_grantable, n))"
    )
}

/// `NOT` an extension member (`class` is the catalog, `oid` the row).
pub(super) fn not_ext(class: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_catalog.{class}'::pg_catalog.regclass AND ext.objid = {oid})"
    )
}

/// Schemas, extensions, collations, publications and the server's role names, as read from a
/// server of `server_version` (`server_version_num`).
pub fn globals(server_version: i32) -> String {
    format!(
        r#"{SCOPE}
SELECT pg_catalog.json_build_object(
 'schemas', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object(
     'oid', n.oid::int8, 'name', n.nspname, 'owner', pg_catalog.pg_get_userbyid(n.nspowner),
     'acl', {nacl}, 'comment', pg_catalog.obj_description(n.oid, 'pg_namespace'))
     ORDER BY n.nspname), '[]')
   FROM ns JOIN pg_catalog.pg_namespace n ON n.oid = ns.oid),
 'extensions', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object(
     'oid', e.oid::int8, 'name', e.extname, 'schema', n.nspname, 'version', e.extversion,
     'comment', pg_catalog.obj_description(e.oid, 'pg_extension')) ORDER BY e.extname), '[]')
   FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
   WHERE n.oid IN (SELECT oid FROM ns)
      OR (n.nspname = 'pg_catalog' AND pg_catalog.cardinality($1::text[]) = 0)),
 'collations', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object(
     'oid', c.oid::int8, 'schema', ns.nspname, 'name', c.collname,
     'owner', pg_catalog.pg_get_userbyid(c.collowner), 'provider', c.collprovider,
     'collate', pg_catalog.to_jsonb(c) ->> 'collcollate', 'ctype', pg_catalog.to_jsonb(c) ->> 'collctype',
     'icu_locale', COALESCE(pg_catalog.to_jsonb(c) ->> 'colliculocale', pg_catalog.to_jsonb(c) ->> 'colllocale'),
     'deterministic', c.collisdeterministic,
     'comment', pg_catalog.obj_description(c.oid, 'pg_collation')) ORDER BY ns.nspname, c.collname), '[]')
   FROM pg_catalog.pg_collation c JOIN ns ON ns.oid = c.collnamespace
   WHERE {coll_not_ext}),
 'publications', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object(
     'oid', p.oid::int8, 'name', p.pubname, 'owner', pg_catalog.pg_get_userbyid(p.pubowner),
     'all_tables', p.puballtables, 'insert', p.pubinsert, 'update', p.pubupdate,
     'delete', p.pubdelete, 'truncate', p.pubtruncate, 'via_root', p.pubviaroot,
{pub_tables}
     'comment', pg_catalog.obj_description(p.oid, 'pg_publication')) ORDER BY p.pubname), '[]')
   FROM pg_catalog.pg_publication p),
 'roles', (SELECT COALESCE(pg_catalog.json_agg(r.rolname ORDER BY r.rolname), '[]') FROM pg_catalog.pg_roles r),
 'server_version', pg_catalog.current_setting('server_version_num')::int
)"#,
        nacl = acl("n.nspacl", 'n', "n.nspowner"),
        coll_not_ext = not_ext("pg_collation", "c.oid"),
        pub_tables = publication_tables(server_version),
    )
}

/// The `tables` and `schemas` of a publication `p`. Column lists, row filters
/// (`pg_publication_rel.prattrs`, `prqual`) and whole-schema publications
/// (`pg_publication_namespace`) are PostgreSQL 15's: before it a publication has none of them,
/// and naming them is an error.
fn publication_tables(server_version: i32) -> String {
    if server_version >= 150000 {
        return r#"     'tables', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object(
          'schema', n.nspname, 'name', c.relname,
          'columns', CASE WHEN pr.prattrs IS NOT NULL THEN
             (SELECT pg_catalog.json_agg(a.attname ORDER BY k.n)
              FROM pg_catalog.unnest(pr.prattrs::pg_catalog.int2[]) WITH ORDINALITY k(attnum, n)
              JOIN pg_catalog.pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = k.attnum) END,
          'row_filter', pg_catalog.pg_get_expr(pr.prqual, pr.prrelid)) ORDER BY n.nspname, c.relname), '[]')
        FROM pg_catalog.pg_publication_rel pr
        JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE pr.prpubid = p.oid AND n.oid IN (SELECT oid FROM ns)),
     'schemas', (SELECT COALESCE(pg_catalog.json_agg(n.nspname ORDER BY n.nspname), '[]')
        FROM pg_catalog.pg_publication_namespace pn
        JOIN pg_catalog.pg_namespace n ON n.oid = pn.pnnspid
        WHERE pn.pnpubid = p.oid AND n.oid IN (SELECT oid FROM ns)),"#
            .to_string();
    }
    r#"     'tables', (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object(
          'schema', n.nspname, 'name', c.relname, 'columns', NULL, 'row_filter', NULL)
          ORDER BY n.nspname, c.relname), '[]')
        FROM pg_catalog.pg_publication_rel pr
        JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE pr.prpubid = p.oid AND n.oid IN (SELECT oid FROM ns)),
     'schemas', '[]'::pg_catalog.json,"#
        .to_string()
}

/// Enum, domain, composite and range types.
pub fn types() -> String {
    format!(
        r#"{SCOPE}
SELECT COALESCE(pg_catalog.json_agg(x ORDER BY x.schema, x.name), '[]') FROM (
SELECT t.oid::int8 AS oid, ns.nspname AS schema, t.typname AS name,
  pg_catalog.pg_get_userbyid(t.typowner) AS owner,
  {tacl} AS acl,
  pg_catalog.obj_description(t.oid, 'pg_type') AS comment,
  CASE t.typtype WHEN 'e' THEN 'enum' WHEN 'd' THEN 'domain' WHEN 'c' THEN 'composite' ELSE 'range' END AS kind,
  (SELECT pg_catalog.json_agg(e.enumlabel ORDER BY e.enumsortorder)
     FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid) AS labels,
  CASE WHEN t.typtype = 'd' THEN pg_catalog.format_type(t.typbasetype, t.typtypmod) END AS base,
  CASE
    WHEN t.typtype = 'd' AND t.typcollation <> 0 AND t.typcollation <> bt.typcollation
      THEN t.typcollation::pg_catalog.regcollation::text
    WHEN t.typtype = 'r' AND r.rngcollation <> 0 AND r.rngcollation <> st.typcollation
      THEN r.rngcollation::pg_catalog.regcollation::text
  END AS collation,
  pg_catalog.pg_get_expr(t.typdefaultbin, 0) AS "default",
  t.typnotnull AS not_null,
  (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object(
      'oid', co.oid::int8, 'name', co.conname, 'definition', pg_catalog.pg_get_constraintdef(co.oid),
      'validated', co.convalidated, 'comment', pg_catalog.obj_description(co.oid, 'pg_constraint'))
      ORDER BY co.conname), '[]')
   FROM pg_catalog.pg_constraint co WHERE co.contypid = t.oid AND co.contype = 'c') AS constraints,
  t.typrelid::int8 AS relid,
  (SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
      'name', a.attname, 'type_name', pg_catalog.format_type(a.atttypid, a.atttypmod),
      'collation', CASE WHEN a.attcollation <> 0 AND a.attcollation <> at.typcollation
                        THEN a.attcollation::pg_catalog.regcollation::text END,
      'comment', pg_catalog.col_description(t.typrelid, a.attnum)) ORDER BY a.attnum)
   FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type at ON at.oid = a.atttypid
   WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) AS attributes,
  pg_catalog.format_type(r.rngsubtype, NULL) AS subtype,
  CASE WHEN NOT opc.opcdefault
       THEN pg_catalog.quote_ident(opcn.nspname) || '.' || pg_catalog.quote_ident(opc.opcname) END AS opclass,
  CASE WHEN r.rngcanonical <> 0 THEN r.rngcanonical::pg_catalog.regproc::text END AS canonical,
  CASE WHEN r.rngsubdiff <> 0 THEN r.rngsubdiff::pg_catalog.regproc::text END AS subtype_diff,
  pg_catalog.format_type(r.rngmultitypid, NULL) AS multirange
FROM pg_catalog.pg_type t
JOIN ns ON ns.oid = t.typnamespace
LEFT JOIN pg_catalog.pg_class c ON c.oid = t.typrelid
LEFT JOIN pg_catalog.pg_type bt ON bt.oid = t.typbasetype
LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid
LEFT JOIN pg_catalog.pg_type st ON st.oid = r.rngsubtype
LEFT JOIN pg_catalog.pg_opclass opc ON opc.oid = r.rngsubopc
LEFT JOIN pg_catalog.pg_namespace opcn ON opcn.oid = opc.opcnamespace
WHERE (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND c.relkind = 'c'))
  AND {t_not_ext}
) x"#,
        tacl = acl("t.typacl", 'T', "t.typowner"),
        t_not_ext = not_ext("pg_type", "t.oid"),
    )
}

/// Sequences with their options and ownership.
pub fn sequences() -> String {
    format!(
        r#"{SCOPE}
SELECT COALESCE(pg_catalog.json_agg(x ORDER BY x.schema, x.name), '[]') FROM (
SELECT c.oid::int8 AS oid, ns.nspname AS schema, c.relname AS name,
  pg_catalog.pg_get_userbyid(c.relowner) AS owner,
  {sacl} AS acl,
  ds.description AS comment,
  pg_catalog.format_type(s.seqtypid, NULL) AS data_type,
  s.seqstart AS start, s.seqincrement AS increment, s.seqmin AS min, s.seqmax AS max,
  s.seqcache AS cache, s.seqcycle AS cycle,
  CASE WHEN d.refobjid IS NOT NULL THEN pg_catalog.json_build_object(
    'schema', tn.nspname, 'table', tc.relname, 'column', ta.attname) END AS owned_by,
  COALESCE(d.deptype = 'i', false) AS identity
FROM pg_catalog.pg_class c
JOIN ns ON ns.oid = c.relnamespace
JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid
LEFT JOIN pg_catalog.pg_description ds ON ds.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND ds.objoid = c.oid AND ds.objsubid = 0
LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i')
LEFT JOIN pg_catalog.pg_class tc ON tc.oid = d.refobjid
LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid = tc.relnamespace
LEFT JOIN pg_catalog.pg_attribute ta ON ta.attrelid = d.refobjid AND ta.attnum = d.refobjsubid
WHERE c.relkind = 'S' AND {c_not_ext}
) x"#,
        sacl = acl("c.relacl", 's', "c.relowner"),
        c_not_ext = not_ext("pg_class", "c.oid"),
    )
}

/// Tables, partitioned tables, views and materialized views (without their sub-objects).
pub fn relations() -> String {
    format!(
        r#"{SCOPE}
SELECT COALESCE(pg_catalog.json_agg(x ORDER BY x.schema, x.name), '[]') FROM (
SELECT c.oid::int8 AS oid, ns.nspname AS schema, c.relname AS name, c.relkind AS relkind,
  pg_catalog.pg_get_userbyid(c.relowner) AS owner,
  {racl} AS acl,
  ds.description AS comment,
  c.relpersistence = 'u' AS unlogged,
  COALESCE(c.reloptions, '{{}}') AS reloptions,
  c.relrowsecurity AS rls_enabled, c.relforcerowsecurity AS rls_forced,
  c.relreplident AS replica_identity,
  (SELECT i.relname FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
    WHERE x.indrelid = c.oid AND x.indisreplident LIMIT 1) AS replica_identity_index,
  CASE WHEN c.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(c.oid) END AS partition_key,
  CASE WHEN c.relispartition THEN pg_catalog.pg_get_expr(c.relpartbound, c.oid) END AS partition_bound,
  (SELECT COALESCE(pg_catalog.json_agg(pg_catalog.json_build_object('schema', pn.nspname, 'name', p.relname)
          ORDER BY h.inhseqno), '[]')
     FROM pg_catalog.pg_inherits h JOIN pg_catalog.pg_class p ON p.oid = h.inhparent
     JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
    WHERE h.inhrelid = c.oid) AS parents,
  CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END AS definition
FROM pg_catalog.pg_class c
JOIN ns ON ns.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_description ds ON ds.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND ds.objoid = c.oid AND ds.objsubid = 0
WHERE c.relkind IN ('r', 'p', 'v', 'm') AND {c_not_ext}
) x"#,
        racl = acl("c.relacl", 'r', "c.relowner"),
        c_not_ext = not_ext("pg_class", "c.oid"),
    )
}

/// Columns of every relation in scope, one row each (in no particular order).
///
/// Rows rather than one JSON document: with tens of thousands of columns, turning each row
/// into JSON costs the server more than finding them (215 ms against 115 for 40,000).
/// From PostgreSQL 18 a NOT NULL is a named constraint (`pg_constraint.contype = 'n'`); before,
/// it has no name and `not_null_name` is NULL.
pub fn columns(server_version: i32) -> String {
    format!(
        r#"{SCOPE}
SELECT a.attrelid::int8 AS rel, a.attnum AS num, a.attname AS name,
  pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_name, a.atttypid::int8 AS type_oid,
  CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
       THEN a.attcollation::pg_catalog.regcollation::text END AS collation,
  CASE WHEN a.attgenerated = '' THEN pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) END AS "default",
  a.attnotnull AS not_null,
  {not_null_name} AS not_null_name,
  CASE a.attidentity WHEN 'a' THEN 'always' WHEN 'd' THEN 'by_default' END AS identity,
  CASE WHEN a.attidentity <> '' THEN
    (SELECT pg_catalog.json_build_object('schema', sn.nspname, 'name', s.relname)
       FROM pg_catalog.pg_depend dd
       JOIN pg_catalog.pg_class s ON s.oid = dd.objid AND s.relkind = 'S'
       JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
      WHERE dd.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
        AND dd.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
        AND dd.refobjid = a.attrelid AND dd.refobjsubid = a.attnum AND dd.deptype = 'i'
      LIMIT 1) END AS identity_sequence,
  CASE WHEN a.attgenerated <> '' THEN pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) END AS generated,
  -- 'v' (virtual, computed when read) is PostgreSQL 18's; before it every one is 's'.
  a.attgenerated = 'v' AS generated_virtual,
  a.attislocal AS is_local, a.attinhcount::int4 AS inherit_count,
  CASE WHEN a.attacl IS NOT NULL THEN {colacl} END AS acl,
  ds.description AS comment
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN ns ON ns.oid = c.relnamespace
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
LEFT JOIN pg_catalog.pg_description ds ON ds.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND ds.objoid = a.attrelid AND ds.objsubid = a.attnum
WHERE c.relkind IN ('r', 'p', 'v', 'm') AND a.attnum > 0 AND NOT a.attisdropped AND {c_not_ext}
"#,
        colacl = acl_items("a.attacl"),
        c_not_ext = not_ext("pg_class", "c.oid"),
        not_null_name = if server_version >= 180000 {
            "(SELECT nn.conname::text FROM pg_catalog.pg_constraint nn WHERE nn.conrelid = a.attrelid \
               AND nn.contype = 'n' AND nn.conkey[1] = a.attnum)"
        } else {
            "NULL::text"
        },
    )
}

/// Table constraints (primary key, unique, check, foreign key, exclusion).
pub fn constraints() -> String {
    format!(
        r#"{SCOPE}
SELECT COALESCE(pg_catalog.json_agg(x ORDER BY x.rel, x.name), '[]') FROM (
SELECT co.oid::int8 AS oid, co.conrelid::int8 AS rel, co.conname AS name,
  CASE co.contype WHEN 'p' THEN 'primary_key' WHEN 'u' THEN 'unique' WHEN 'c' THEN 'check'
                  WHEN 'f' THEN 'foreign_key' ELSE 'exclusion' END AS kind,
  pg_catalog.pg_get_constraintdef(co.oid) AS definition,
  co.condeferrable AS deferrable, co.condeferred AS deferred, co.convalidated AS validated,
  co.conislocal AS is_local, co.coninhcount AS inherit_count, co.connoinherit AS no_inherit,
  co.conparentid <> 0 AS from_parent,
  CASE WHEN co.contype IN ('p', 'u', 'x') THEN i.relname END AS "index",
  -- Column numbers: the loader names them from the table's columns (a lookup in SQL per
  -- constraint is half of this query), except system columns (a CHECK may use tableoid).
  co.conkey AS "key",
  CASE WHEN 0 >= ANY (co.conkey) THEN
    (SELECT COALESCE(pg_catalog.json_agg(a.attname ORDER BY k.n), '[]')
       FROM pg_catalog.unnest(co.conkey) WITH ORDINALITY k(attnum, n)
       JOIN pg_catalog.pg_attribute a ON a.attrelid = co.conrelid AND a.attnum = k.attnum) END AS named_columns,
  CASE WHEN co.contype = 'f' THEN pg_catalog.json_build_object(
    'schema', fn.nspname, 'table', fc.relname,
    'columns', (SELECT COALESCE(pg_catalog.json_agg(a.attname ORDER BY k.n), '[]')
                  FROM pg_catalog.unnest(co.confkey) WITH ORDINALITY k(attnum, n)
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = co.confrelid AND a.attnum = k.attnum),
    'on_update', co.confupdtype, 'on_delete', co.confdeltype) END AS "references",
  ds.description AS comment
FROM pg_catalog.pg_constraint co
JOIN pg_catalog.pg_class c ON c.oid = co.conrelid
JOIN ns ON ns.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_description ds ON ds.classoid = 'pg_catalog.pg_constraint'::pg_catalog.regclass
   AND ds.objoid = co.oid AND ds.objsubid = 0
LEFT JOIN pg_catalog.pg_class i ON i.oid = co.conindid
LEFT JOIN pg_catalog.pg_class fc ON fc.oid = co.confrelid
LEFT JOIN pg_catalog.pg_namespace fn ON fn.oid = fc.relnamespace
WHERE co.contype IN ('p', 'u', 'c', 'f', 'x') AND c.relkind IN ('r', 'p') AND {c_not_ext}
) x"#,
        c_not_ext = not_ext("pg_class", "c.oid"),
    )
}

/// Indexes of tables and materialized views.
pub fn indexes() -> String {
    format!(
        r#"{SCOPE}
SELECT COALESCE(pg_catalog.json_agg(x ORDER BY x.rel, x.name), '[]') FROM (
SELECT i.oid::int8 AS oid, x.indrelid::int8 AS rel, ns.nspname AS schema, i.relname AS name,
  -- The constraint stands for an index that enforces one (and is what recreates it), and
  -- pg_get_indexdef costs a relation open per call: a third of this query's time.
  CASE WHEN co.conname IS NULL THEN pg_catalog.pg_get_indexdef(i.oid) ELSE '' END AS definition,
  x.indisunique AS "unique", x.indisprimary AS "primary", x.indisvalid AS valid,
  co.conname AS "constraint",
  (SELECT pg_catalog.json_build_object('schema', pn.nspname, 'name', p.relname)
     FROM pg_catalog.pg_inherits h JOIN pg_catalog.pg_class p ON p.oid = h.inhparent
     JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
    WHERE h.inhrelid = i.oid LIMIT 1) AS parent_index,
  -- Key and INCLUDE column numbers (0: an expression): named by the loader from the table's
  -- columns, as for constraints.
  x.indkey::pg_catalog.int2[] AS "key", x.indnkeyatts AS key_count,
  x.indpred IS NOT NULL AS partial,
  ds.description AS comment
FROM pg_catalog.pg_index x
JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
JOIN pg_catalog.pg_class c ON c.oid = x.indrelid
JOIN ns ON ns.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_constraint co ON co.conindid = x.indexrelid AND co.conrelid = x.indrelid
   AND co.contype IN ('p', 'u', 'x')
LEFT JOIN pg_catalog.pg_description ds ON ds.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass
   AND ds.objoid = i.oid AND ds.objsubid = 0
WHERE c.relkind IN ('r', 'p', 'm') AND {c_not_ext}
) x"#,
        c_not_ext = not_ext("pg_class", "c.oid"),
    )
}

/// Triggers (not the internal ones behind foreign keys) and row-level security policies.
pub fn triggers_and_policies() -> String {
    format!(
        r#"{SCOPE}
SELECT pg_catalog.json_build_object(
 'triggers', (SELECT COALESCE(pg_catalog.json_agg(x ORDER BY x.rel, x.name), '[]') FROM (
   SELECT t.oid::int8 AS oid, t.tgrelid::int8 AS rel, t.tgname AS name,
     pg_catalog.pg_get_triggerdef(t.oid) AS definition, t.tgenabled AS enabled,
     t.tgparentid <> 0 AS from_parent,
     pg_catalog.obj_description(t.oid, 'pg_trigger') AS comment
   FROM pg_catalog.pg_trigger t
   JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
   JOIN ns ON ns.oid = c.relnamespace
   WHERE NOT t.tgisinternal AND {c_not_ext}) x),
 'policies', (SELECT COALESCE(pg_catalog.json_agg(x ORDER BY x.rel, x.name), '[]') FROM (
   SELECT p.oid::int8 AS oid, p.polrelid::int8 AS rel, p.polname AS name, p.polpermissive AS permissive,
     CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                   WHEN 'd' THEN 'DELETE' ELSE 'ALL' END AS command,
     (SELECT pg_catalog.json_agg(CASE WHEN u.r = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(u.r) END ORDER BY u.n)
        FROM pg_catalog.unnest(p.polroles) WITH ORDINALITY u(r, n)) AS roles,
     pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS "using",
     pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS with_check,
     pg_catalog.obj_description(p.oid, 'pg_policy') AS comment
   FROM pg_catalog.pg_policy p
   JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
   JOIN ns ON ns.oid = c.relnamespace
   WHERE {c_not_ext}) x)
)"#,
        c_not_ext = not_ext("pg_class", "c.oid"),
    )
}

/// Functions and procedures (aggregates are not rendered by `pg_get_functiondef`).
pub fn functions() -> String {
    format!(
        r#"{SCOPE}
SELECT COALESCE(pg_catalog.json_agg(x ORDER BY x.schema, x.name, x.identity_args), '[]') FROM (
SELECT p.oid::int8 AS oid, ns.nspname AS schema, p.proname AS name, p.prokind AS kind,
  pg_catalog.pg_get_function_identity_arguments(p.oid) AS identity_args,
  pg_catalog.pg_get_function_result(p.oid) AS result,
  l.lanname AS language,
  pg_catalog.pg_get_functiondef(p.oid) AS definition,
  pg_catalog.pg_get_userbyid(p.proowner) AS owner,
  {facl} AS acl,
  pg_catalog.obj_description(p.oid, 'pg_proc') AS comment
FROM pg_catalog.pg_proc p
JOIN ns ON ns.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
WHERE p.prokind <> 'a' AND {p_not_ext}
  -- Made by the server along with a type (range constructors): created by the type.
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
                    AND d.deptype = 'i')
) x"#,
        facl = acl("p.proacl", 'f', "p.proowner"),
        p_not_ext = not_ext("pg_proc", "p.oid"),
    )
}

/// The raw material of the dependency edges between user objects, as one row of arrays (not
/// JSON), each from a plain scan of one catalog: the `pg_depend` rows between user objects
/// (oid >= 16384: system objects never matter for ordering), extension memberships, and the
/// sub-objects that the loader folds into their owner (module `catalog::deps`): column
/// defaults and rules into their relation, array and multirange types into their element and
/// range type, row types into their relation.
///
/// No joins on purpose: after bulk DDL the catalog's statistics are stale (autovacuum has not
/// analyzed it yet; the histogram says no `pg_depend` row has an oid >= 16384), and the joins
/// this once did in SQL were then planned as nested loops over tens of thousands of rows,
/// which took a minute. A scan per catalog is linear whatever the statistics say.
pub fn dependencies() -> String {
    r#"
SELECT d.classid, d.objid, d.refclassid, d.refobjid, d.deptype,
  e.classid, e.objid, e.refobjid,
  ad.oid, ad.rel, rw.oid, rw.rel,
  ty.oid, ty.elem, ty.arr, ty.rel,
  rg.multi, rg.rng,
  cat.oid, cat.name, d.refobjsubid
FROM (SELECT pg_catalog.array_agg(d.classid) AS classid, pg_catalog.array_agg(d.objid) AS objid,
        pg_catalog.array_agg(d.refclassid) AS refclassid, pg_catalog.array_agg(d.refobjid) AS refobjid,
        pg_catalog.array_agg(d.deptype) AS deptype, pg_catalog.array_agg(d.refobjsubid) AS refobjsubid
      FROM pg_catalog.pg_depend d
      WHERE d.objid >= 16384 AND d.refobjid >= 16384 AND d.deptype IN ('n', 'a', 'i', 'P', 'S')) d,
     (SELECT pg_catalog.array_agg(e.classid) AS classid, pg_catalog.array_agg(e.objid) AS objid,
        pg_catalog.array_agg(e.refobjid) AS refobjid
      FROM pg_catalog.pg_depend e WHERE e.deptype = 'e') e,
     (SELECT pg_catalog.array_agg(a.oid) AS oid, pg_catalog.array_agg(a.adrelid) AS rel
      FROM pg_catalog.pg_attrdef a WHERE a.oid >= 16384) ad,
     (SELECT pg_catalog.array_agg(r.oid) AS oid, pg_catalog.array_agg(r.ev_class) AS rel
      FROM pg_catalog.pg_rewrite r WHERE r.oid >= 16384 AND r.rulename = '_RETURN') rw,
     (SELECT pg_catalog.array_agg(t.oid) AS oid, pg_catalog.array_agg(t.typelem) AS elem,
        pg_catalog.array_agg(t.typarray) AS arr, pg_catalog.array_agg(t.typrelid) AS rel
      FROM pg_catalog.pg_type t WHERE t.oid >= 16384) ty,
     (SELECT pg_catalog.array_agg(r.rngmultitypid) AS multi, pg_catalog.array_agg(r.rngtypid) AS rng
      FROM pg_catalog.pg_range r WHERE r.rngtypid >= 16384) rg,
     (SELECT pg_catalog.array_agg(c.oid) AS oid, pg_catalog.array_agg(c.relname::text) AS name
      FROM pg_catalog.pg_class c
      WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace
        AND c.relname IN ('pg_namespace', 'pg_extension', 'pg_collation', 'pg_type', 'pg_class',
                          'pg_proc', 'pg_constraint', 'pg_trigger', 'pg_policy', 'pg_attrdef',
                          'pg_rewrite', 'pg_operator', 'pg_opclass', 'pg_opfamily', 'pg_cast',
                          'pg_ts_config', 'pg_ts_dict', 'pg_ts_parser', 'pg_ts_template',
                          'pg_conversion', 'pg_statistic_ext', 'pg_event_trigger',
                          'pg_foreign_data_wrapper', 'pg_foreign_server', 'pg_user_mapping',
                          'pg_default_acl')) cat
"#
    .to_string()
}
