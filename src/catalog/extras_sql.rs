//! The catalog query of [`super::extras`]: every object kind that `pg_dump --schema-only`
//! emits and the main snapshot does not model as typed data, each rendered by the server into
//! its CREATE and DROP text, with the identity that pairs it across databases.
//!
//! One UNION ALL of one branch per kind, answered as one JSON array (set-based: one scan per
//! catalog). Every branch works on PostgreSQL 14 to 18: columns whose type changed
//! (`attstattarget`, `stxstattarget` became nullable in 17) are read through `COALESCE(…::int,
//! -1)`. Objects without a schema (casts, event triggers, foreign-data wrappers, servers, user
//! mappings, global default privileges) are in scope only when no `--schema` filter is given.
//! Names are printed under the empty `search_path` of the loader, so every `regproc`,
//! `regoperator` and `format_type` text is schema-qualified.

use super::queries::{acl, not_ext, SCOPE};

/// `OPTIONS (k 'v', …)` of an options array (`pg_options_to_table`), with a leading space; empty
/// without options. `filter` is a condition on `o.option_name`.
fn options(expr: &str, filter: &str) -> String {
    format!(
        "COALESCE((SELECT ' OPTIONS (' || pg_catalog.string_agg(pg_catalog.format('%I %L', o.option_name, o.option_value), ', ') || ')' \
         FROM pg_catalog.pg_options_to_table({expr}) o WHERE {filter}), '')"
    )
}

/// Option names that hold secrets (user mappings): never read into a snapshot.
const SECRET: &str =
    "(o.option_name ~* '(password|secret|token)' AND o.option_name <> 'password_required')";

const STORAGE_WORD: &str = "CASE {} WHEN 'p' THEN 'PLAIN' WHEN 'e' THEN 'EXTERNAL' WHEN 'x' THEN 'EXTENDED' WHEN 'm' THEN 'MAIN' END";

fn storage_word(x: &str) -> String {
    STORAGE_WORD.replace("{}", x)
}

pub fn extras() -> String {
    let opt_plain = |e: &str| options(e, "true");
    let typ_storage_lower = format!("pg_catalog.lower({})", storage_word("t.typstorage"));
    format!(
        r#"{SCOPE}
SELECT COALESCE(pg_catalog.json_agg(x.j ORDER BY x.j ->> 'kind', x.j ->> 'identity'), '[]') FROM (
-- Per-column statistics targets, storage and compression.
SELECT pg_catalog.json_build_object('kind', s.kind, 'class', 'synthetic', 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I column %I', ns.nspname, c.relname, a.attname),
  'create', pg_catalog.format('ALTER %s%s%I.%I ALTER COLUMN %I SET %s %s;', k.kw, k.only, ns.nspname, c.relname, a.attname, s.what, s.val),
  'drop', pg_catalog.format('ALTER %sIF EXISTS %s%I.%I ALTER COLUMN %I SET %s %s;', k.kw, k.only, ns.nspname, c.relname, a.attname, s.what, s.dflt),
  'deps', pg_catalog.json_build_array(pg_catalog.json_build_object('class', 'class', 'oid', c.oid::int8)),
  'on', pg_catalog.json_build_object('kind', CASE c.relkind WHEN 'm' THEN 'matview' ELSE 'table' END, 'schema', ns.nspname, 'name', c.relname)) AS j
FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
CROSS JOIN LATERAL (SELECT CASE c.relkind WHEN 'm' THEN 'MATERIALIZED VIEW ' ELSE 'TABLE ' END AS kw,
                           CASE c.relkind WHEN 'm' THEN '' ELSE 'ONLY ' END AS only) k
CROSS JOIN LATERAL (VALUES
  ('column statistics', 'STATISTICS', CASE WHEN COALESCE(a.attstattarget::int, -1) <> -1 THEN a.attstattarget::int::text END, '-1'),
  ('column storage', 'STORAGE', CASE WHEN a.attstorage <> t.typstorage THEN {att_storage} END, {typ_storage}),
  ('column compression', 'COMPRESSION', CASE a.attcompression WHEN 'p' THEN 'pglz' WHEN 'l' THEN 'lz4' END, 'DEFAULT')
) s(kind, what, val, dflt)
WHERE c.relkind IN ('r', 'p', 'm') AND s.val IS NOT NULL AND {c_not_ext}
UNION ALL
-- Statistics targets of index columns (expression columns).
SELECT pg_catalog.json_build_object('kind', 'index column statistics', 'class', 'synthetic', 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I column %s', ns.nspname, c.relname, a.attnum),
  'create', pg_catalog.format('ALTER INDEX %I.%I ALTER COLUMN %s SET STATISTICS %s;', ns.nspname, c.relname, a.attnum, a.attstattarget::int),
  'drop', pg_catalog.format('ALTER INDEX IF EXISTS %I.%I ALTER COLUMN %s SET STATISTICS -1;', ns.nspname, c.relname, a.attnum),
  'deps', pg_catalog.json_build_array(pg_catalog.json_build_object('class', 'class', 'oid', c.oid::int8)),
  'on', pg_catalog.json_build_object('kind', 'index', 'schema', ns.nspname, 'name', c.relname))
FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
WHERE c.relkind IN ('i', 'I') AND COALESCE(a.attstattarget::int, -1) <> -1 AND {c_not_ext}
UNION ALL
-- Tablespaces of tables, materialized views and indexes (0: the database's default).
SELECT pg_catalog.json_build_object('kind', 'tablespace', 'class', 'synthetic', 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I', ns.nspname, c.relname),
  'create', pg_catalog.format('ALTER %s %I.%I SET TABLESPACE %I;', k.kw, ns.nspname, c.relname, ts.spcname),
  'drop', pg_catalog.format('ALTER %s IF EXISTS %I.%I SET TABLESPACE pg_default;', k.kw, ns.nspname, c.relname),
  'rewrites', c.relkind IN ('r', 'm', 'i'),
  'deps', pg_catalog.json_build_array(pg_catalog.json_build_object('class', 'class', 'oid', c.oid::int8)),
  'on', pg_catalog.json_build_object('kind', CASE c.relkind WHEN 'm' THEN 'matview' WHEN 'i' THEN 'index' WHEN 'I' THEN 'index' ELSE 'table' END,
                                     'schema', ns.nspname, 'name', c.relname))
FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
JOIN pg_catalog.pg_tablespace ts ON ts.oid = c.reltablespace
CROSS JOIN LATERAL (SELECT CASE c.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'i' THEN 'INDEX' WHEN 'I' THEN 'INDEX' ELSE 'TABLE' END AS kw) k
WHERE c.relkind IN ('r', 'p', 'm', 'i', 'I') AND c.reltablespace <> 0 AND {c_not_ext}
UNION ALL
-- Typed tables (CREATE TABLE … OF type): the link to the type.
SELECT pg_catalog.json_build_object('kind', 'typed table', 'class', 'synthetic', 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I', ns.nspname, c.relname),
  'create', pg_catalog.format('ALTER TABLE %I.%I OF %s;', ns.nspname, c.relname, pg_catalog.format_type(c.reloftype, NULL)),
  'drop', pg_catalog.format('ALTER TABLE IF EXISTS %I.%I NOT OF;', ns.nspname, c.relname),
  'deps', pg_catalog.json_build_array(pg_catalog.json_build_object('class', 'class', 'oid', c.oid::int8),
                                      pg_catalog.json_build_object('class', 'type', 'oid', c.reloftype::int8)),
  'on', pg_catalog.json_build_object('kind', 'table', 'schema', ns.nspname, 'name', c.relname))
FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.reloftype <> 0 AND {c_not_ext}
UNION ALL
-- Extended statistics.
SELECT pg_catalog.json_build_object('kind', 'statistics', 'class', 'statistic_ext', 'oid', s.oid::int8, 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I', ns.nspname, s.stxname),
  'create', pg_catalog.pg_get_statisticsobjdef(s.oid) || ';'
     || CASE WHEN COALESCE(s.stxstattarget::int, -1) <> -1
        THEN pg_catalog.format(E'\nALTER STATISTICS %I.%I SET STATISTICS %s;', ns.nspname, s.stxname, s.stxstattarget::int) ELSE '' END,
  'drop', pg_catalog.format('DROP STATISTICS IF EXISTS %I.%I;', ns.nspname, s.stxname),
  'meta_kind', 'STATISTICS', 'meta_name', pg_catalog.format('%I.%I', ns.nspname, s.stxname),
  'owner', pg_catalog.pg_get_userbyid(s.stxowner), 'comment', pg_catalog.obj_description(s.oid, 'pg_statistic_ext'),
  'on', (SELECT pg_catalog.json_build_object('kind', CASE rc.relkind WHEN 'm' THEN 'matview' ELSE 'table' END, 'schema', rn.nspname, 'name', rc.relname)
         FROM pg_catalog.pg_class rc JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace WHERE rc.oid = s.stxrelid))
FROM pg_catalog.pg_statistic_ext s JOIN ns ON ns.oid = s.stxnamespace
WHERE {stx_not_ext}
UNION ALL
-- Rules other than the _RETURN rules of views.
SELECT pg_catalog.json_build_object('kind', 'rule', 'class', 'rule', 'oid', r.oid::int8, 'schema', ns.nspname,
  'identity', pg_catalog.format('%I ON %I.%I', r.rulename, ns.nspname, c.relname),
  'create', pg_catalog.pg_get_ruledef(r.oid)
     || CASE r.ev_enabled WHEN 'D' THEN pg_catalog.format(E'\nALTER TABLE %I.%I DISABLE RULE %I;', ns.nspname, c.relname, r.rulename)
                          WHEN 'R' THEN pg_catalog.format(E'\nALTER TABLE %I.%I ENABLE REPLICA RULE %I;', ns.nspname, c.relname, r.rulename)
                          WHEN 'A' THEN pg_catalog.format(E'\nALTER TABLE %I.%I ENABLE ALWAYS RULE %I;', ns.nspname, c.relname, r.rulename)
                          ELSE '' END,
  'drop', pg_catalog.format('DROP RULE IF EXISTS %I ON %I.%I;', r.rulename, ns.nspname, c.relname),
  'meta_kind', 'RULE', 'meta_name', pg_catalog.format('%I ON %I.%I', r.rulename, ns.nspname, c.relname),
  'comment', pg_catalog.obj_description(r.oid, 'pg_rewrite'),
  'on', pg_catalog.json_build_object('kind', CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'matview' ELSE 'table' END,
                                     'schema', ns.nspname, 'name', c.relname))
FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class JOIN ns ON ns.oid = c.relnamespace
WHERE r.rulename <> '_RETURN' AND {c_not_ext}
UNION ALL
-- Event triggers.
SELECT pg_catalog.json_build_object('kind', 'event trigger', 'class', 'event_trigger', 'oid', e.oid::int8,
  'identity', pg_catalog.quote_ident(e.evtname),
  'create', pg_catalog.format('CREATE EVENT TRIGGER %I ON %I%s EXECUTE FUNCTION %s();', e.evtname, e.evtevent,
       CASE WHEN e.evttags IS NOT NULL THEN pg_catalog.format(' WHEN TAG IN (%s)',
         (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(t), ', ') FROM pg_catalog.unnest(e.evttags) t)) ELSE '' END,
       e.evtfoid::pg_catalog.regproc)
     || CASE e.evtenabled WHEN 'D' THEN pg_catalog.format(E'\nALTER EVENT TRIGGER %I DISABLE;', e.evtname)
                          WHEN 'R' THEN pg_catalog.format(E'\nALTER EVENT TRIGGER %I ENABLE REPLICA;', e.evtname)
                          WHEN 'A' THEN pg_catalog.format(E'\nALTER EVENT TRIGGER %I ENABLE ALWAYS;', e.evtname)
                          ELSE '' END,
  'drop', pg_catalog.format('DROP EVENT TRIGGER IF EXISTS %I;', e.evtname),
  'meta_kind', 'EVENT TRIGGER', 'meta_name', pg_catalog.quote_ident(e.evtname),
  'owner', pg_catalog.pg_get_userbyid(e.evtowner), 'comment', pg_catalog.obj_description(e.oid, 'pg_event_trigger'))
FROM pg_catalog.pg_event_trigger e
WHERE pg_catalog.cardinality($1::text[]) = 0 AND {evt_not_ext}
UNION ALL
-- Casts.
SELECT pg_catalog.json_build_object('kind', 'cast', 'class', 'cast', 'oid', c.oid::int8,
  'identity', pg_catalog.format('(%s AS %s)', pg_catalog.format_type(c.castsource, NULL), pg_catalog.format_type(c.casttarget, NULL)),
  'create', pg_catalog.format('CREATE CAST (%s AS %s) %s%s;', pg_catalog.format_type(c.castsource, NULL), pg_catalog.format_type(c.casttarget, NULL),
       CASE c.castmethod WHEN 'f' THEN 'WITH FUNCTION ' || c.castfunc::pg_catalog.regprocedure::text
                         WHEN 'i' THEN 'WITH INOUT' ELSE 'WITHOUT FUNCTION' END,
       CASE c.castcontext WHEN 'a' THEN ' AS ASSIGNMENT' WHEN 'i' THEN ' AS IMPLICIT' ELSE '' END),
  'drop', pg_catalog.format('DROP CAST IF EXISTS (%s AS %s);', pg_catalog.format_type(c.castsource, NULL), pg_catalog.format_type(c.casttarget, NULL)),
  'meta_kind', 'CAST', 'meta_name', pg_catalog.format('(%s AS %s)', pg_catalog.format_type(c.castsource, NULL), pg_catalog.format_type(c.casttarget, NULL)),
  'comment', pg_catalog.obj_description(c.oid, 'pg_cast'), 'deferred', true)
FROM pg_catalog.pg_cast c
WHERE c.oid >= 16384 AND pg_catalog.cardinality($1::text[]) = 0 AND {cast_not_ext}
  -- Made by the server with a range type (range to multirange): created by the type.
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_cast'::pg_catalog.regclass
                  AND d.objid = c.oid AND d.deptype = 'i')
UNION ALL
-- Operators (not the shells that a COMMUTATOR or NEGATOR left undefined).
SELECT pg_catalog.json_build_object('kind', 'operator', 'class', 'operator', 'oid', o.oid::int8, 'schema', ns.nspname,
  'identity', o.oid::pg_catalog.regoperator::text,
  'create', pg_catalog.format('CREATE OPERATOR %I.%s (%s);', ns.nspname, o.oprname, pg_catalog.concat_ws(', ',
       'FUNCTION = ' || o.oprcode::pg_catalog.regproc::text,
       CASE WHEN o.oprleft <> 0 THEN 'LEFTARG = ' || pg_catalog.format_type(o.oprleft, NULL) END,
       CASE WHEN o.oprright <> 0 THEN 'RIGHTARG = ' || pg_catalog.format_type(o.oprright, NULL) END,
       (SELECT pg_catalog.format('COMMUTATOR = OPERATOR(%I.%s)', cn.nspname, co.oprname) FROM pg_catalog.pg_operator co
          JOIN pg_catalog.pg_namespace cn ON cn.oid = co.oprnamespace WHERE co.oid = o.oprcom),
       (SELECT pg_catalog.format('NEGATOR = OPERATOR(%I.%s)', cn.nspname, co.oprname) FROM pg_catalog.pg_operator co
          JOIN pg_catalog.pg_namespace cn ON cn.oid = co.oprnamespace WHERE co.oid = o.oprnegate),
       CASE WHEN o.oprrest <> 0 THEN 'RESTRICT = ' || o.oprrest::pg_catalog.regproc::text END,
       CASE WHEN o.oprjoin <> 0 THEN 'JOIN = ' || o.oprjoin::pg_catalog.regproc::text END,
       CASE WHEN o.oprcanhash THEN 'HASHES' END,
       CASE WHEN o.oprcanmerge THEN 'MERGES' END)),
  'drop', pg_catalog.format('DROP OPERATOR IF EXISTS %s;', o.oid::pg_catalog.regoperator::text),
  'meta_kind', 'OPERATOR', 'meta_name', o.oid::pg_catalog.regoperator::text,
  'owner', pg_catalog.pg_get_userbyid(o.oprowner), 'comment', pg_catalog.obj_description(o.oid, 'pg_operator'), 'deferred', true)
FROM pg_catalog.pg_operator o JOIN ns ON ns.oid = o.oprnamespace
WHERE o.oprcode <> 0 AND {opr_not_ext}
UNION ALL
-- Operator families, with the members added to the family alone (ALTER OPERATOR FAMILY … ADD).
SELECT pg_catalog.json_build_object('kind', 'operator family', 'class', 'op_family', 'oid', f.oid::int8, 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I USING %I', ns.nspname, f.opfname, am.amname),
  'create', pg_catalog.format('CREATE OPERATOR FAMILY %I.%I USING %I;', ns.nspname, f.opfname, am.amname)
     || CASE WHEN m.items IS NOT NULL THEN pg_catalog.format(E'\nALTER OPERATOR FAMILY %I.%I USING %I ADD\n  %s;', ns.nspname, f.opfname, am.amname, m.items) ELSE '' END,
  'drop', pg_catalog.format('DROP OPERATOR FAMILY IF EXISTS %I.%I USING %I;', ns.nspname, f.opfname, am.amname),
  'meta_kind', 'OPERATOR FAMILY', 'meta_name', pg_catalog.format('%I.%I USING %I', ns.nspname, f.opfname, am.amname),
  'owner', pg_catalog.pg_get_userbyid(f.opfowner), 'comment', pg_catalog.obj_description(f.oid, 'pg_opfamily'),
  'deps', COALESCE(m.deps, '[]'), 'deferred', true)
FROM pg_catalog.pg_opfamily f JOIN ns ON ns.oid = f.opfnamespace JOIN pg_catalog.pg_am am ON am.oid = f.opfmethod
LEFT JOIN LATERAL (
  SELECT pg_catalog.string_agg(mm.item, E',\n  ' ORDER BY mm.o1, mm.o2, mm.o3, mm.o4) AS items, pg_catalog.json_agg(mm.dep) AS deps FROM (
    {fam_members}
  ) mm) m ON true
WHERE {opf_not_ext}
UNION ALL
-- Operator classes, with their own members.
SELECT pg_catalog.json_build_object('kind', 'operator class', 'class', 'op_class', 'oid', oc.oid::int8, 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I USING %I', ns.nspname, oc.opcname, am.amname),
  'create', pg_catalog.format(E'CREATE OPERATOR CLASS %I.%I %sFOR TYPE %s USING %I FAMILY %I.%I AS\n  %s;',
       ns.nspname, oc.opcname, CASE WHEN oc.opcdefault THEN 'DEFAULT ' ELSE '' END,
       pg_catalog.format_type(oc.opcintype, NULL), am.amname, fn.nspname, f.opfname,
       COALESCE(pg_catalog.concat_ws(E',\n  ', m.items, CASE WHEN oc.opckeytype <> 0 THEN 'STORAGE ' || pg_catalog.format_type(oc.opckeytype, NULL) END),
                'STORAGE ' || pg_catalog.format_type(oc.opcintype, NULL))),
  'drop', pg_catalog.format('DROP OPERATOR CLASS IF EXISTS %I.%I USING %I;', ns.nspname, oc.opcname, am.amname),
  'meta_kind', 'OPERATOR CLASS', 'meta_name', pg_catalog.format('%I.%I USING %I', ns.nspname, oc.opcname, am.amname),
  'owner', pg_catalog.pg_get_userbyid(oc.opcowner), 'comment', pg_catalog.obj_description(oc.oid, 'pg_opclass'),
  'deps', COALESCE(m.deps, '[]'), 'deferred', true)
FROM pg_catalog.pg_opclass oc JOIN ns ON ns.oid = oc.opcnamespace JOIN pg_catalog.pg_am am ON am.oid = oc.opcmethod
JOIN pg_catalog.pg_opfamily f ON f.oid = oc.opcfamily JOIN pg_catalog.pg_namespace fn ON fn.oid = f.opfnamespace
LEFT JOIN LATERAL (
  SELECT NULLIF(pg_catalog.string_agg(mm.item, E',\n  ' ORDER BY mm.o1, mm.o2, mm.o3, mm.o4), '') AS items, pg_catalog.json_agg(mm.dep) AS deps FROM (
    {class_members}
  ) mm) m ON true
WHERE {opc_not_ext}
UNION ALL
-- Aggregates, ordinary and ordered-set.
SELECT pg_catalog.json_build_object('kind', 'aggregate', 'class', 'proc', 'oid', p.oid::int8, 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I(%s)', ns.nspname, p.proname, sig.ident),
  'create', pg_catalog.format(E'CREATE AGGREGATE %I.%I(%s) (\n  %s\n);', ns.nspname, p.proname,
       CASE WHEN p.pronargs = 0 THEN '*' ELSE pg_catalog.pg_get_function_arguments(p.oid) END,
       pg_catalog.concat_ws(E',\n  ',
         'SFUNC = ' || a.aggtransfn::pg_catalog.regproc::text,
         'STYPE = ' || pg_catalog.format_type(a.aggtranstype, NULL),
         CASE WHEN a.aggtransspace <> 0 THEN 'SSPACE = ' || a.aggtransspace END,
         CASE WHEN a.aggfinalfn <> 0 THEN 'FINALFUNC = ' || a.aggfinalfn::pg_catalog.regproc::text END,
         CASE WHEN a.aggfinalextra THEN 'FINALFUNC_EXTRA' END,
         CASE WHEN a.aggfinalmodify <> CASE a.aggkind WHEN 'n' THEN 'r' ELSE 'w' END
              THEN 'FINALFUNC_MODIFY = ' || CASE a.aggfinalmodify WHEN 'r' THEN 'READ_ONLY' WHEN 's' THEN 'SHAREABLE' ELSE 'READ_WRITE' END END,
         CASE WHEN a.aggcombinefn <> 0 THEN 'COMBINEFUNC = ' || a.aggcombinefn::pg_catalog.regproc::text END,
         CASE WHEN a.aggserialfn <> 0 THEN 'SERIALFUNC = ' || a.aggserialfn::pg_catalog.regproc::text END,
         CASE WHEN a.aggdeserialfn <> 0 THEN 'DESERIALFUNC = ' || a.aggdeserialfn::pg_catalog.regproc::text END,
         CASE WHEN a.agginitval IS NOT NULL THEN 'INITCOND = ' || pg_catalog.quote_literal(a.agginitval) END,
         CASE WHEN a.aggmtransfn <> 0 THEN 'MSFUNC = ' || a.aggmtransfn::pg_catalog.regproc::text END,
         CASE WHEN a.aggminvtransfn <> 0 THEN 'MINVFUNC = ' || a.aggminvtransfn::pg_catalog.regproc::text END,
         CASE WHEN a.aggmtranstype <> 0 THEN 'MSTYPE = ' || pg_catalog.format_type(a.aggmtranstype, NULL) END,
         CASE WHEN a.aggmtransspace <> 0 THEN 'MSSPACE = ' || a.aggmtransspace END,
         CASE WHEN a.aggmfinalfn <> 0 THEN 'MFINALFUNC = ' || a.aggmfinalfn::pg_catalog.regproc::text END,
         CASE WHEN a.aggmfinalextra THEN 'MFINALFUNC_EXTRA' END,
         CASE WHEN a.aggmtransfn <> 0 AND a.aggmfinalmodify <> CASE a.aggkind WHEN 'n' THEN 'r' ELSE 'w' END
              THEN 'MFINALFUNC_MODIFY = ' || CASE a.aggmfinalmodify WHEN 'r' THEN 'READ_ONLY' WHEN 's' THEN 'SHAREABLE' ELSE 'READ_WRITE' END END,
         CASE WHEN a.aggminitval IS NOT NULL THEN 'MINITCOND = ' || pg_catalog.quote_literal(a.aggminitval) END,
         (SELECT pg_catalog.format('SORTOP = OPERATOR(%I.%s)', sn.nspname, so.oprname) FROM pg_catalog.pg_operator so
            JOIN pg_catalog.pg_namespace sn ON sn.oid = so.oprnamespace WHERE so.oid = a.aggsortop),
         CASE WHEN a.aggkind = 'h' THEN 'HYPOTHETICAL' END,
         CASE p.proparallel WHEN 's' THEN 'PARALLEL = SAFE' WHEN 'r' THEN 'PARALLEL = RESTRICTED' END)),
  'drop', pg_catalog.format('DROP AGGREGATE IF EXISTS %I.%I(%s);', ns.nspname, p.proname, sig.ident),
  'meta_kind', 'AGGREGATE', 'meta_name', pg_catalog.format('%I.%I(%s)', ns.nspname, p.proname, sig.ident),
  'acl_object', pg_catalog.format('FUNCTION %I.%I(%s)', ns.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)),
  'acl', {agg_acl},
  'owner', pg_catalog.pg_get_userbyid(p.proowner), 'comment', pg_catalog.obj_description(p.oid, 'pg_proc'), 'deferred', true)
FROM pg_catalog.pg_proc p JOIN ns ON ns.oid = p.pronamespace
JOIN pg_catalog.pg_aggregate a ON a.aggfnoid = p.oid
CROSS JOIN LATERAL (SELECT CASE WHEN p.pronargs = 0 THEN '*' ELSE pg_catalog.pg_get_function_identity_arguments(p.oid) END AS ident) sig
WHERE p.prokind = 'a' AND {p_not_ext}
UNION ALL
-- Text search parsers, templates, dictionaries and configurations.
SELECT pg_catalog.json_build_object('kind', 'text search parser', 'class', 'ts_parser', 'oid', t.oid::int8, 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I', ns.nspname, t.prsname),
  'create', pg_catalog.format('CREATE TEXT SEARCH PARSER %I.%I (START = %s, GETTOKEN = %s, END = %s, LEXTYPES = %s%s);',
       ns.nspname, t.prsname, t.prsstart::pg_catalog.regproc, t.prstoken::pg_catalog.regproc, t.prsend::pg_catalog.regproc,
       t.prslextype::pg_catalog.regproc, CASE WHEN t.prsheadline <> 0 THEN ', HEADLINE = ' || t.prsheadline::pg_catalog.regproc::text ELSE '' END),
  'drop', pg_catalog.format('DROP TEXT SEARCH PARSER IF EXISTS %I.%I;', ns.nspname, t.prsname),
  'meta_kind', 'TEXT SEARCH PARSER', 'meta_name', pg_catalog.format('%I.%I', ns.nspname, t.prsname),
  'comment', pg_catalog.obj_description(t.oid, 'pg_ts_parser'), 'deferred', true)
FROM pg_catalog.pg_ts_parser t JOIN ns ON ns.oid = t.prsnamespace WHERE {prs_not_ext}
UNION ALL
SELECT pg_catalog.json_build_object('kind', 'text search template', 'class', 'ts_template', 'oid', t.oid::int8, 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I', ns.nspname, t.tmplname),
  'create', pg_catalog.format('CREATE TEXT SEARCH TEMPLATE %I.%I (%sLEXIZE = %s);', ns.nspname, t.tmplname,
       CASE WHEN t.tmplinit <> 0 THEN 'INIT = ' || t.tmplinit::pg_catalog.regproc::text || ', ' ELSE '' END, t.tmpllexize::pg_catalog.regproc),
  'drop', pg_catalog.format('DROP TEXT SEARCH TEMPLATE IF EXISTS %I.%I;', ns.nspname, t.tmplname),
  'meta_kind', 'TEXT SEARCH TEMPLATE', 'meta_name', pg_catalog.format('%I.%I', ns.nspname, t.tmplname),
  'comment', pg_catalog.obj_description(t.oid, 'pg_ts_template'), 'deferred', true)
FROM pg_catalog.pg_ts_template t JOIN ns ON ns.oid = t.tmplnamespace WHERE {tmpl_not_ext}
UNION ALL
SELECT pg_catalog.json_build_object('kind', 'text search dictionary', 'class', 'ts_dict', 'oid', d.oid::int8, 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I', ns.nspname, d.dictname),
  'create', pg_catalog.format('CREATE TEXT SEARCH DICTIONARY %I.%I (TEMPLATE = %I.%I%s);', ns.nspname, d.dictname, tn.nspname, tt.tmplname,
       COALESCE(', ' || d.dictinitoption, '')),
  'drop', pg_catalog.format('DROP TEXT SEARCH DICTIONARY IF EXISTS %I.%I;', ns.nspname, d.dictname),
  'meta_kind', 'TEXT SEARCH DICTIONARY', 'meta_name', pg_catalog.format('%I.%I', ns.nspname, d.dictname),
  'owner', pg_catalog.pg_get_userbyid(d.dictowner), 'comment', pg_catalog.obj_description(d.oid, 'pg_ts_dict'), 'deferred', true)
FROM pg_catalog.pg_ts_dict d JOIN ns ON ns.oid = d.dictnamespace
JOIN pg_catalog.pg_ts_template tt ON tt.oid = d.dicttemplate JOIN pg_catalog.pg_namespace tn ON tn.oid = tt.tmplnamespace
WHERE {dict_not_ext}
UNION ALL
SELECT pg_catalog.json_build_object('kind', 'text search configuration', 'class', 'ts_config', 'oid', c.oid::int8, 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I', ns.nspname, c.cfgname),
  'create', pg_catalog.format('CREATE TEXT SEARCH CONFIGURATION %I.%I (PARSER = %I.%I);', ns.nspname, c.cfgname, pn.nspname, p.prsname)
     || COALESCE((SELECT pg_catalog.string_agg(pg_catalog.format(E'\nALTER TEXT SEARCH CONFIGURATION %I.%I ADD MAPPING FOR %s WITH %s;',
              ns.nspname, c.cfgname, tok.alias, mp.dicts), '' ORDER BY mp.maptokentype)
          FROM (SELECT m.maptokentype, pg_catalog.string_agg(m.mapdict::pg_catalog.regdictionary::text, ', ' ORDER BY m.mapseqno) AS dicts
                FROM pg_catalog.pg_ts_config_map m WHERE m.mapcfg = c.oid GROUP BY m.maptokentype) mp
          JOIN pg_catalog.ts_token_type(c.cfgparser) tok ON tok.tokid = mp.maptokentype), ''),
  'drop', pg_catalog.format('DROP TEXT SEARCH CONFIGURATION IF EXISTS %I.%I;', ns.nspname, c.cfgname),
  'meta_kind', 'TEXT SEARCH CONFIGURATION', 'meta_name', pg_catalog.format('%I.%I', ns.nspname, c.cfgname),
  'owner', pg_catalog.pg_get_userbyid(c.cfgowner), 'comment', pg_catalog.obj_description(c.oid, 'pg_ts_config'),
  'deps', (SELECT COALESCE(pg_catalog.json_agg(DISTINCT pg_catalog.jsonb_build_object('class', 'ts_dict', 'oid', m.mapdict::int8)), '[]')
           FROM pg_catalog.pg_ts_config_map m WHERE m.mapcfg = c.oid),
  'deferred', true)
FROM pg_catalog.pg_ts_config c JOIN ns ON ns.oid = c.cfgnamespace
JOIN pg_catalog.pg_ts_parser p ON p.oid = c.cfgparser JOIN pg_catalog.pg_namespace pn ON pn.oid = p.prsnamespace
WHERE {cfg_not_ext}
UNION ALL
-- Conversions.
SELECT pg_catalog.json_build_object('kind', 'conversion', 'class', 'conversion', 'oid', c.oid::int8, 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I', ns.nspname, c.conname),
  'create', pg_catalog.format('CREATE %sCONVERSION %I.%I FOR %L TO %L FROM %s;', CASE WHEN c.condefault THEN 'DEFAULT ' ELSE '' END,
       ns.nspname, c.conname, pg_catalog.pg_encoding_to_char(c.conforencoding), pg_catalog.pg_encoding_to_char(c.contoencoding),
       c.conproc::pg_catalog.regproc),
  'drop', pg_catalog.format('DROP CONVERSION IF EXISTS %I.%I;', ns.nspname, c.conname),
  'meta_kind', 'CONVERSION', 'meta_name', pg_catalog.format('%I.%I', ns.nspname, c.conname),
  'owner', pg_catalog.pg_get_userbyid(c.conowner), 'comment', pg_catalog.obj_description(c.oid, 'pg_conversion'), 'deferred', true)
FROM pg_catalog.pg_conversion c JOIN ns ON ns.oid = c.connamespace WHERE {conv_not_ext}
UNION ALL
-- Foreign-data wrappers, servers, user mappings (never their secret options), foreign tables.
SELECT pg_catalog.json_build_object('kind', 'foreign-data wrapper', 'class', 'foreign_data_wrapper', 'oid', w.oid::int8,
  'identity', pg_catalog.quote_ident(w.fdwname),
  'create', pg_catalog.format('CREATE FOREIGN DATA WRAPPER %I%s%s%s;', w.fdwname,
       CASE WHEN w.fdwhandler <> 0 THEN ' HANDLER ' || w.fdwhandler::pg_catalog.regproc::text ELSE '' END,
       CASE WHEN w.fdwvalidator <> 0 THEN ' VALIDATOR ' || w.fdwvalidator::pg_catalog.regproc::text ELSE '' END,
       {fdw_options}),
  'drop', pg_catalog.format('DROP FOREIGN DATA WRAPPER IF EXISTS %I;', w.fdwname),
  'meta_kind', 'FOREIGN DATA WRAPPER', 'meta_name', pg_catalog.quote_ident(w.fdwname),
  'acl_object', pg_catalog.format('FOREIGN DATA WRAPPER %I', w.fdwname), 'acl', {fdw_acl},
  'owner', pg_catalog.pg_get_userbyid(w.fdwowner), 'comment', pg_catalog.obj_description(w.oid, 'pg_foreign_data_wrapper'), 'deferred', true)
FROM pg_catalog.pg_foreign_data_wrapper w
WHERE pg_catalog.cardinality($1::text[]) = 0 AND {fdw_not_ext}
UNION ALL
SELECT pg_catalog.json_build_object('kind', 'server', 'class', 'foreign_server', 'oid', s.oid::int8,
  'identity', pg_catalog.quote_ident(s.srvname),
  'create', pg_catalog.format('CREATE SERVER %I%s%s FOREIGN DATA WRAPPER %I%s;', s.srvname,
       COALESCE(' TYPE ' || pg_catalog.quote_literal(s.srvtype), ''), COALESCE(' VERSION ' || pg_catalog.quote_literal(s.srvversion), ''),
       w.fdwname, {srv_options}),
  'drop', pg_catalog.format('DROP SERVER IF EXISTS %I;', s.srvname),
  'meta_kind', 'SERVER', 'meta_name', pg_catalog.quote_ident(s.srvname),
  'acl_object', pg_catalog.format('FOREIGN SERVER %I', s.srvname), 'acl', {srv_acl},
  'owner', pg_catalog.pg_get_userbyid(s.srvowner), 'comment', pg_catalog.obj_description(s.oid, 'pg_foreign_server'), 'deferred', true)
FROM pg_catalog.pg_foreign_server s JOIN pg_catalog.pg_foreign_data_wrapper w ON w.oid = s.srvfdw
WHERE pg_catalog.cardinality($1::text[]) = 0 AND {srv_not_ext}
UNION ALL
SELECT pg_catalog.json_build_object('kind', 'user mapping', 'class', 'user_mapping', 'oid', u.umid::int8,
  'identity', pg_catalog.format('FOR %s SERVER %I', CASE WHEN u.umuser = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(u.umuser)) END, s.srvname),
  'create', pg_catalog.format('CREATE USER MAPPING FOR %s SERVER %I%s;',
       CASE WHEN u.umuser = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(u.umuser)) END, s.srvname, {um_options}),
  'drop', pg_catalog.format('DROP USER MAPPING IF EXISTS FOR %s SERVER %I;',
       CASE WHEN u.umuser = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(u.umuser)) END, s.srvname),
  'role', CASE WHEN u.umuser <> 0 THEN pg_catalog.pg_get_userbyid(u.umuser) END,
  'deps', pg_catalog.json_build_array(pg_catalog.json_build_object('class', 'foreign_server', 'oid', s.oid::int8)))
-- The view, not pg_user_mapping: any role may read it (options only where it may see them).
FROM pg_catalog.pg_user_mappings u JOIN pg_catalog.pg_foreign_server s ON s.oid = u.srvid
WHERE pg_catalog.cardinality($1::text[]) = 0 AND {um_srv_not_ext}
UNION ALL
SELECT pg_catalog.json_build_object('kind', 'foreign table', 'class', 'class', 'oid', c.oid::int8, 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I', ns.nspname, c.relname),
  'create', pg_catalog.format(E'CREATE FOREIGN TABLE %I.%I (\n%s\n) SERVER %I%s;', ns.nspname, c.relname,
       COALESCE((SELECT pg_catalog.string_agg(pg_catalog.format('    %I %s%s%s%s%s', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
              COALESCE((SELECT ' OPTIONS (' || pg_catalog.string_agg(pg_catalog.format('%I %L', o.option_name, o.option_value), ', ') || ')'
                        FROM pg_catalog.pg_options_to_table(a.attfdwoptions) o), ''),
              CASE WHEN a.attcollation <> 0 AND a.attcollation <> ty.typcollation
                   THEN (SELECT pg_catalog.format(' COLLATE %I.%I', cn.nspname, co.collname) FROM pg_catalog.pg_collation co
                         JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation) ELSE '' END,
              CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
              COALESCE((SELECT ' DEFAULT ' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) FROM pg_catalog.pg_attrdef ad
                        WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum), '')), E',\n' ORDER BY a.attnum)
         FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), ''),
       fs.srvname, {ft_options})
     || COALESCE((SELECT pg_catalog.string_agg(pg_catalog.format(E'\nALTER FOREIGN TABLE %I.%I ADD CONSTRAINT %I %s;', ns.nspname, c.relname,
              co.conname, pg_catalog.pg_get_constraintdef(co.oid)), '' ORDER BY co.conname)
          FROM pg_catalog.pg_constraint co WHERE co.conrelid = c.oid AND co.contype = 'c'), '')
     || COALESCE((SELECT pg_catalog.string_agg(pg_catalog.format(E'\nCOMMENT ON COLUMN %I.%I.%I IS %L;', ns.nspname, c.relname, a.attname,
              pg_catalog.col_description(c.oid, a.attnum)), '' ORDER BY a.attnum)
          FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            AND pg_catalog.col_description(c.oid, a.attnum) IS NOT NULL), ''),
  'drop', pg_catalog.format('DROP FOREIGN TABLE IF EXISTS %I.%I;', ns.nspname, c.relname),
  'meta_kind', 'FOREIGN TABLE', 'meta_name', pg_catalog.format('%I.%I', ns.nspname, c.relname),
  'acl_object', pg_catalog.format('TABLE %I.%I', ns.nspname, c.relname), 'acl', {ft_acl},
  'owner', pg_catalog.pg_get_userbyid(c.relowner), 'comment', pg_catalog.obj_description(c.oid, 'pg_class'))
FROM pg_catalog.pg_class c JOIN ns ON ns.oid = c.relnamespace
JOIN pg_catalog.pg_foreign_table ft ON ft.ftrelid = c.oid JOIN pg_catalog.pg_foreign_server fs ON fs.oid = ft.ftserver
WHERE c.relkind = 'f' AND {c_not_ext}
UNION ALL
-- Default privileges (ALTER DEFAULT PRIVILEGES): what turns the built-in default into the
-- stored one, and back; one object per grantee (and grant option), so that a grantee the other
-- server lacks can be left out on its own.
SELECT pg_catalog.json_build_object('kind', 'default privileges', 'class', 'default_acl', 'oid', d.oid::int8, 'schema', dn.nspname,
  'identity', pg_catalog.format('FOR ROLE %I%s ON %s %s %s%s', pg_catalog.pg_get_userbyid(d.defaclrole),
       COALESCE(' IN SCHEMA ' || pg_catalog.quote_ident(dn.nspname), ''), w.word,
       CASE WHEN e.have THEN 'GRANT TO' ELSE 'REVOKE FROM' END, e.grantee,
       CASE WHEN e.grantable THEN ' WITH GRANT OPTION' ELSE '' END),
  'create', CASE WHEN e.have THEN e.grant_sql ELSE e.revoke_sql END,
  'drop', CASE WHEN e.have THEN e.revoke_sql ELSE e.grant_sql END,
  'role', pg_catalog.pg_get_userbyid(d.defaclrole), 'grantee', e.grantee_name)
FROM pg_catalog.pg_default_acl d
LEFT JOIN pg_catalog.pg_namespace dn ON dn.oid = d.defaclnamespace
CROSS JOIN LATERAL (SELECT CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES' WHEN 'f' THEN 'FUNCTIONS'
                           WHEN 'T' THEN 'TYPES' WHEN 'n' THEN 'SCHEMAS' END AS word,
                           CASE d.defaclobjtype WHEN 'S' THEN 's' ELSE d.defaclobjtype END AS akind) w
CROSS JOIN LATERAL (
    SELECT x.have, x.grantee, x.grantable, CASE WHEN x.grantee_oid <> 0 THEN pg_catalog.pg_get_userbyid(x.grantee_oid) END AS grantee_name,
      pg_catalog.format('ALTER DEFAULT PRIVILEGES FOR ROLE %I%s GRANT %s ON %s TO %s%s;', pg_catalog.pg_get_userbyid(d.defaclrole),
          COALESCE(' IN SCHEMA ' || pg_catalog.quote_ident(dn.nspname), ''), pg_catalog.string_agg(x.privilege_type, ', ' ORDER BY x.privilege_type),
          w.word, x.grantee, CASE WHEN x.grantable THEN ' WITH GRANT OPTION' ELSE '' END) AS grant_sql,
      pg_catalog.format('ALTER DEFAULT PRIVILEGES FOR ROLE %I%s REVOKE %s ON %s FROM %s;', pg_catalog.pg_get_userbyid(d.defaclrole),
          COALESCE(' IN SCHEMA ' || pg_catalog.quote_ident(dn.nspname), ''), pg_catalog.string_agg(x.privilege_type, ', ' ORDER BY x.privilege_type),
          w.word, x.grantee) AS revoke_sql
    FROM (
      SELECT true AS have, * FROM (
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END AS grantee,
               a.grantee AS grantee_oid, a.privilege_type, a.is_grantable AS grantable FROM pg_catalog.aclexplode(d.defaclacl) a
        EXCEPT
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END,
               a.grantee, a.privilege_type, a.is_grantable FROM pg_catalog.aclexplode(pg_catalog.acldefault(w.akind::"char", d.defaclrole)) a
        WHERE d.defaclnamespace = 0) p
      UNION ALL
      SELECT false, * FROM (
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END AS grantee,
               a.grantee AS grantee_oid, a.privilege_type, a.is_grantable FROM pg_catalog.aclexplode(pg_catalog.acldefault(w.akind::"char", d.defaclrole)) a
        WHERE d.defaclnamespace = 0
        EXCEPT
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END,
               a.grantee, a.privilege_type, a.is_grantable FROM pg_catalog.aclexplode(d.defaclacl) a) m
    ) x GROUP BY x.have, x.grantee, x.grantee_oid, x.grantable
  ) e
WHERE (d.defaclnamespace = 0 AND pg_catalog.cardinality($1::text[]) = 0) OR d.defaclnamespace IN (SELECT oid FROM ns)
UNION ALL
-- Base types (shell, I/O functions, then the type) .
SELECT pg_catalog.json_build_object('kind', 'base type', 'class', 'type', 'oid', t.oid::int8, 'schema', ns.nspname,
  'identity', pg_catalog.format('%I.%I', ns.nspname, t.typname),
  'create', pg_catalog.format(E'CREATE TYPE %I.%I (\n  %s\n);', ns.nspname, t.typname, pg_catalog.concat_ws(E',\n  ',
       'INPUT = ' || t.typinput::pg_catalog.regproc::text,
       'OUTPUT = ' || t.typoutput::pg_catalog.regproc::text,
       CASE WHEN t.typreceive <> 0 THEN 'RECEIVE = ' || t.typreceive::pg_catalog.regproc::text END,
       CASE WHEN t.typsend <> 0 THEN 'SEND = ' || t.typsend::pg_catalog.regproc::text END,
       CASE WHEN t.typmodin <> 0 THEN 'TYPMOD_IN = ' || t.typmodin::pg_catalog.regproc::text END,
       CASE WHEN t.typmodout <> 0 THEN 'TYPMOD_OUT = ' || t.typmodout::pg_catalog.regproc::text END,
       CASE WHEN t.typanalyze <> 0 THEN 'ANALYZE = ' || t.typanalyze::pg_catalog.regproc::text END,
       CASE WHEN t.typsubscript <> 0 AND t.typsubscript <> 'pg_catalog.array_subscript_handler'::pg_catalog.regproc
            THEN 'SUBSCRIPT = ' || t.typsubscript::pg_catalog.regproc::text END,
       'INTERNALLENGTH = ' || CASE WHEN t.typlen = -1 THEN 'VARIABLE' ELSE t.typlen::text END,
       CASE WHEN t.typbyval THEN 'PASSEDBYVALUE' END,
       'ALIGNMENT = ' || CASE t.typalign WHEN 'c' THEN 'char' WHEN 's' THEN 'int2' WHEN 'i' THEN 'int4' ELSE 'double' END,
       'STORAGE = ' || {typ_storage_lower},
       'CATEGORY = ' || pg_catalog.quote_literal(t.typcategory::text),
       CASE WHEN t.typispreferred THEN 'PREFERRED = true' END,
       CASE WHEN t.typdefault IS NOT NULL THEN 'DEFAULT = ' || pg_catalog.quote_literal(t.typdefault) END,
       CASE WHEN t.typelem <> 0 THEN 'ELEMENT = ' || pg_catalog.format_type(t.typelem, NULL) END,
       'DELIMITER = ' || pg_catalog.quote_literal(t.typdelim::text),
       CASE WHEN t.typcollation <> 0 THEN 'COLLATABLE = true' END)),
  'shell', pg_catalog.format('CREATE TYPE %I.%I;', ns.nspname, t.typname),
  'meta_kind', 'TYPE', 'meta_name', pg_catalog.format('%I.%I', ns.nspname, t.typname),
  'acl_object', pg_catalog.format('TYPE %I.%I', ns.nspname, t.typname), 'acl', {typ_acl},
  'owner', pg_catalog.pg_get_userbyid(t.typowner), 'comment', pg_catalog.obj_description(t.oid, 'pg_type'), 'deferred', true)
FROM pg_catalog.pg_type t JOIN ns ON ns.oid = t.typnamespace
WHERE t.typtype = 'b' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid) AND {typ_not_ext}
UNION ALL
-- Security labels: seen (so that a difference is never silent), not diffed.
SELECT pg_catalog.json_build_object('kind', 'security label', 'class', 'synthetic',
  'identity', pg_catalog.format('%s FOR %I', pg_catalog.pg_describe_object(l.classoid, l.objoid, l.objsubid), l.provider),
  'create', pg_catalog.format('SECURITY LABEL FOR %I ON %s %s IS %L;', l.provider, pg_catalog.upper(i.type), i.identity, l.label),
  'diffable', false)
FROM pg_catalog.pg_seclabel l
CROSS JOIN LATERAL pg_catalog.pg_identify_object(l.classoid, l.objoid, l.objsubid) i
WHERE l.objoid >= 16384 AND (i.schema IS NULL OR i.schema IN (SELECT nspname FROM ns))
UNION ALL
-- Large objects: out of scope (schema diff covers databases without them), seen so that
-- schema diff can say so instead of passing over them.
SELECT pg_catalog.json_build_object('kind', 'large objects', 'class', 'synthetic',
  'identity', pg_catalog.format('%s large objects', pg_catalog.count(*)),
  'create', pg_catalog.format('-- %s large objects: not part of a schema dump', pg_catalog.count(*)),
  'diffable', false)
FROM pg_catalog.pg_largeobject_metadata
HAVING pg_catalog.count(*) > 0 AND pg_catalog.cardinality($1::text[]) = 0
) x"#,
        att_storage = storage_word("a.attstorage"),
        typ_storage = storage_word("t.typstorage"),
        c_not_ext = not_ext("pg_class", "c.oid"),
        stx_not_ext = not_ext("pg_statistic_ext", "s.oid"),
        evt_not_ext = not_ext("pg_event_trigger", "e.oid"),
        cast_not_ext = not_ext("pg_cast", "c.oid"),
        opr_not_ext = not_ext("pg_operator", "o.oid"),
        opf_not_ext = not_ext("pg_opfamily", "f.oid"),
        opc_not_ext = not_ext("pg_opclass", "oc.oid"),
        p_not_ext = not_ext("pg_proc", "p.oid"),
        prs_not_ext = not_ext("pg_ts_parser", "t.oid"),
        tmpl_not_ext = not_ext("pg_ts_template", "t.oid"),
        dict_not_ext = not_ext("pg_ts_dict", "d.oid"),
        cfg_not_ext = not_ext("pg_ts_config", "c.oid"),
        conv_not_ext = not_ext("pg_conversion", "c.oid"),
        fdw_not_ext = not_ext("pg_foreign_data_wrapper", "w.oid"),
        srv_not_ext = not_ext("pg_foreign_server", "s.oid"),
        um_srv_not_ext = not_ext("pg_foreign_server", "s.oid"),
        typ_not_ext = not_ext("pg_type", "t.oid"),
        fdw_options = opt_plain("w.fdwoptions"),
        srv_options = opt_plain("s.srvoptions"),
        um_options = options("u.umoptions", &format!("NOT {SECRET}")),
        ft_options = opt_plain("ft.ftoptions"),
        agg_acl = acl("p.proacl", 'f', "p.proowner"),
        fdw_acl = acl("w.fdwacl", 'F', "w.fdwowner"),
        srv_acl = acl("s.srvacl", 'S', "s.srvowner"),
        ft_acl = acl("c.relacl", 'r', "c.relowner"),
        typ_acl = acl("t.typacl", 'T', "t.typowner"),
        fam_members = members("f.oid", "pg_opfamily", "a"),
        class_members = members("oc.oid", "pg_opclass", "i"),
    )
}

/// The operators and support functions that belong to an operator family (`deptype` 'a': added
/// to the family alone) or to an operator class ('i'), as `OPERATOR n op(types)` / `FUNCTION n
/// (types) f(args)` items with sort keys and the dependency each adds.
fn members(owner: &str, catalog: &str, deptype: &str) -> String {
    format!(
        r#"SELECT 1 AS o1, ao.amopstrategy::int AS o2, ao.amoplefttype::int8 AS o3, ao.amoprighttype::int8 AS o4,
      pg_catalog.format('OPERATOR %s %s(%s, %s)%s', ao.amopstrategy, pg_catalog.split_part(ao.amopopr::pg_catalog.regoperator::text, '(', 1),
        pg_catalog.format_type(ao.amoplefttype, NULL), pg_catalog.format_type(ao.amoprighttype, NULL),
        CASE WHEN ao.amoppurpose = 'o' THEN (SELECT pg_catalog.format(' FOR ORDER BY %I.%I', sn.nspname, sf.opfname)
          FROM pg_catalog.pg_opfamily sf JOIN pg_catalog.pg_namespace sn ON sn.oid = sf.opfnamespace WHERE sf.oid = ao.amopsortfamily) ELSE '' END) AS item,
      pg_catalog.json_build_object('class', 'operator', 'oid', ao.amopopr::int8) AS dep
    FROM pg_catalog.pg_amop ao JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_amop'::pg_catalog.regclass AND d.objid = ao.oid
      AND d.refclassid = 'pg_catalog.{catalog}'::pg_catalog.regclass AND d.refobjid = {owner} AND d.deptype = '{deptype}'
    UNION ALL
    SELECT 2, ap.amprocnum::int, ap.amproclefttype::int8, ap.amprocrighttype::int8,
      pg_catalog.format('FUNCTION %s (%s, %s) %s', ap.amprocnum, pg_catalog.format_type(ap.amproclefttype, NULL),
        pg_catalog.format_type(ap.amprocrighttype, NULL), ap.amproc::pg_catalog.regprocedure),
      pg_catalog.json_build_object('class', 'proc', 'oid', ap.amproc::int8)
    FROM pg_catalog.pg_amproc ap JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_amproc'::pg_catalog.regclass AND d.objid = ap.oid
      AND d.refclassid = 'pg_catalog.{catalog}'::pg_catalog.regclass AND d.refobjid = {owner} AND d.deptype = '{deptype}'"#
    )
}
