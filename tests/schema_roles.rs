//! Production's roles are not the source's business: between a development source and a
//! production target (two servers, each with roles the other lacks), `schema diff` aligns
//! owners and grants only for roles both servers have, keeps (and lists) what production's own
//! roles hold, leaves out (and lists) what only development's roles hold, and with
//! `--no-privileges` leaves owners, grants and default privileges alone.

use crate::util::*;

/// Roles are global to a server: names of this module only, created once per server.
fn roles(db: &TestDb, names: &[&str]) {
    for r in names {
        db.psql(&format!(
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{r}') THEN CREATE ROLE \"{r}\"; END IF; END$$;"
        ));
    }
}

const DEV: &[&str] = &[
    "r14 dev reader",
    "r14_dev_owner",
    "r14_both_reader",
    "r14_both_owner",
];
const PROD: &[&str] = &[
    "r14 app user",
    "r14_app_owner",
    "r14_both_reader",
    "r14_both_owner",
];

const SOURCE: &str = r#"
CREATE SCHEMA app;
CREATE TABLE app.t (id int PRIMARY KEY, v text);
GRANT SELECT ON app.t TO "r14 dev reader";
GRANT SELECT (v) ON app.t TO "r14 dev reader";
GRANT SELECT, UPDATE ON app.t TO r14_both_reader;
CREATE TABLE app.owned (id int);
ALTER TABLE app.owned OWNER TO r14_both_owner;
CREATE TABLE app.prod_owned (id int);
GRANT SELECT ON app.prod_owned TO r14_both_reader;
CREATE VIEW app.v AS SELECT id FROM app.t;
CREATE SEQUENCE app.s;
CREATE FUNCTION app.f() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE TABLE app.new_t (id int);
ALTER TABLE app.new_t OWNER TO r14_dev_owner;
GRANT SELECT ON app.new_t TO "r14 dev reader", r14_both_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO "r14 dev reader";
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO r14_both_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE r14_dev_owner GRANT SELECT ON SEQUENCES TO r14_both_reader;
ALTER TABLE app.t ENABLE ROW LEVEL SECURITY;
CREATE POLICY p_read ON app.t FOR SELECT TO r14_both_reader USING (true);
CREATE POLICY p_dev ON app.t FOR SELECT TO "r14 dev reader", r14_both_reader USING (id > 0);
"#;

const TARGET: &str = r#"
CREATE SCHEMA app;
GRANT USAGE ON SCHEMA app TO "r14 app user";
CREATE TABLE app.t (id int PRIMARY KEY, v text);
GRANT SELECT, INSERT ON app.t TO "r14 app user";
GRANT SELECT (v) ON app.t TO "r14 app user";
GRANT SELECT, INSERT ON app.t TO r14_both_reader;
CREATE TABLE app.owned (id int);
CREATE TABLE app.prod_owned (id int);
ALTER TABLE app.prod_owned OWNER TO r14_app_owner;
GRANT SELECT ON app.prod_owned TO "r14 app user";
CREATE VIEW app.v AS SELECT id, v FROM app.t;
GRANT SELECT ON app.v TO "r14 app user";
CREATE SEQUENCE app.s;
GRANT USAGE ON SEQUENCE app.s TO "r14 app user";
CREATE FUNCTION app.f() RETURNS int LANGUAGE sql AS 'SELECT 1';
GRANT EXECUTE ON FUNCTION app.f() TO "r14 app user";
ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO "r14 app user";
ALTER DEFAULT PRIVILEGES FOR ROLE r14_app_owner IN SCHEMA app GRANT SELECT ON TABLES TO "r14 app user";
ALTER TABLE app.t ENABLE ROW LEVEL SECURITY;
CREATE POLICY p_read ON app.t FOR SELECT TO "r14 app user", r14_both_reader USING (true);
"#;

fn pair(hint: &str) -> (TestDb, TestDb) {
    let src = TestDb::new(server(), &format!("{hint}_dev"));
    let tgt = TestDb::new(second_server(), &format!("{hint}_prod"));
    roles(&src, DEV);
    roles(&tgt, PROD);
    (src, tgt)
}

fn diff(src: &TestDb, tgt: &TestDb, extra: &[&str]) -> std::process::Output {
    let (s, t) = (src.url(), tgt.url());
    let mut args = vec!["schema", "diff", "--source", &s, "--target", &t];
    args.extend_from_slice(extra);
    pgflip(&args)
}

/// The statements of a script (comment lines left out).
fn statements(script: &str) -> String {
    script
        .lines()
        .filter(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn production_only_roles_keep_their_grants_and_shared_roles_are_aligned() {
    let (src, tgt) = pair("roles_prod");
    src.psql(SOURCE);
    tgt.psql(TARGET);

    let dry = diff(&src, &tgt, &["--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let script = stdout(&dry);
    let sql = statements(&script);
    // Production's roles are never revoked from or re-owned; the one statement naming one
    // gives the recreated view its production grant back.
    let prod: Vec<&str> = sql
        .lines()
        .filter(|l| l.contains("r14 app user") || l.contains("r14_app_owner"))
        .collect();
    assert_eq!(
        prod,
        ["GRANT SELECT ON TABLE app.v TO \"r14 app user\";"],
        "production's roles must not be touched:\n{script}"
    );
    assert!(
        !sql.contains("r14 dev reader") && !sql.contains("r14_dev_owner"),
        "roles the target lacks cannot be named:\n{script}"
    );
    for kept in [
        "GRANT INSERT, SELECT ON TABLE app.t TO \"r14 app user\"",
        "GRANT SELECT ON TABLE app.t column v TO \"r14 app user\"",
        "GRANT USAGE ON SCHEMA app TO \"r14 app user\"",
        "GRANT EXECUTE ON FUNCTION app.f() TO \"r14 app user\"",
        "owner of TABLE app.prod_owned: r14_app_owner",
        "ALTER DEFAULT PRIVILEGES FOR ROLE r14_app_owner IN SCHEMA app GRANT SELECT ON TABLES TO \"r14 app user\";",
        "policy p_read on app.t TO \"r14 app user\"",
    ] {
        assert!(script.contains(kept), "header lacks kept {kept:?}:\n{script}");
    }
    for left in [
        "GRANT SELECT ON TABLE app.t TO \"r14 dev reader\"",
        "owner of new TABLE app.new_t: r14_dev_owner",
        "IN SCHEMA app GRANT SELECT ON TABLES TO \"r14 dev reader\";",
        "FOR ROLE r14_dev_owner GRANT SELECT ON SEQUENCES TO r14_both_reader;",
        "policy p_dev on app.t TO \"r14 dev reader\"",
    ] {
        assert!(
            script.contains(left),
            "header lacks not-applied {left:?}:\n{script}"
        );
    }
    // Shared roles are aligned both ways.
    assert!(
        sql.contains("GRANT UPDATE ON TABLE app.t TO r14_both_reader"),
        "{script}"
    );
    assert!(
        sql.contains("REVOKE INSERT ON TABLE app.t FROM r14_both_reader"),
        "{script}"
    );
    assert!(
        sql.contains("ALTER TABLE app.owned OWNER TO r14_both_owner"),
        "{script}"
    );

    let o = diff(&src, &tgt, &["--apply", "--allow-hazards", "all"]);
    assert!(o.status.success(), "apply failed: {}", stderr(&o));
    let c = diff(&src, &tgt, &["--check"]);
    assert_eq!(c.status.code(), Some(0), "left after apply: {}", stdout(&c));

    // Production's application still reads and writes what it did, the recreated view too.
    let app = "'r14 app user'";
    for (what, want) in [
        (
            format!("has_table_privilege({app}, 'app.t', 'SELECT')"),
            "t",
        ),
        (
            format!("has_table_privilege({app}, 'app.t', 'INSERT')"),
            "t",
        ),
        (
            format!("has_column_privilege({app}, 'app.t', 'v', 'SELECT')"),
            "t",
        ),
        (
            format!("has_table_privilege({app}, 'app.v', 'SELECT')"),
            "t",
        ),
        (
            format!("has_table_privilege({app}, 'app.prod_owned', 'SELECT')"),
            "t",
        ),
        (format!("has_schema_privilege({app}, 'app', 'USAGE')"), "t"),
        (
            format!("has_sequence_privilege({app}, 'app.s', 'USAGE')"),
            "t",
        ),
        (
            format!("has_function_privilege({app}, 'app.f()', 'EXECUTE')"),
            "t",
        ),
        (
            "has_table_privilege('r14_both_reader', 'app.t', 'UPDATE')".into(),
            "t",
        ),
        (
            "has_table_privilege('r14_both_reader', 'app.t', 'INSERT')".into(),
            "f",
        ),
        (
            "has_table_privilege('r14_both_reader', 'app.new_t', 'SELECT')".into(),
            "t",
        ),
        (
            "has_table_privilege('r14_both_reader', 'app.prod_owned', 'SELECT')".into(),
            "t",
        ),
        (
            "(SELECT relowner::regrole::text FROM pg_class WHERE oid = 'app.owned'::regclass)"
                .into(),
            "r14_both_owner",
        ),
        (
            "(SELECT relowner::regrole::text FROM pg_class WHERE oid = 'app.prod_owned'::regclass)"
                .into(),
            "r14_app_owner",
        ),
        (
            "(SELECT relowner::regrole::text FROM pg_class WHERE oid = 'app.new_t'::regclass)"
                .into(),
            "postgres",
        ),
    ] {
        assert_eq!(q(&tgt, &format!("SELECT {what}")), want, "{what}");
    }
    // Policies: production's role stays in p_read; p_dev is created for the shared role only.
    assert_eq!(
        q(
            &tgt,
            "SELECT string_agg(polname || ':' || array_to_string(ARRAY(SELECT rolname FROM pg_roles WHERE oid = ANY(polroles) ORDER BY 1), ','), ' ' ORDER BY polname) FROM pg_policy"
        ),
        "p_dev:r14_both_reader p_read:r14 app user,r14_both_reader"
    );
    // Default privileges: production's kept, the shared role's added.
    let defaults = q(
        &tgt,
        "SELECT string_agg(pg_get_userbyid(d.defaclrole) || ':' || pg_get_userbyid(a.grantee) || ':' || a.privilege_type, ' ' ORDER BY 1) \
         FROM pg_default_acl d, aclexplode(d.defaclacl) a",
    );
    assert!(
        defaults.contains("postgres:r14 app user:SELECT"),
        "{defaults}"
    );
    assert!(
        defaults.contains("r14_app_owner:r14 app user:SELECT"),
        "{defaults}"
    );
    assert!(
        defaults.contains("postgres:r14_both_reader:SELECT"),
        "{defaults}"
    );
    assert!(!defaults.contains("r14_dev"), "{defaults}");
}

#[test]
fn no_privileges_leaves_owners_grants_and_default_privileges_alone() {
    let (src, tgt) = pair("roles_nopriv");
    src.psql(SOURCE);
    tgt.psql(TARGET);
    // Two more differences only in privileges and owners between roles of both servers.
    src.psql(
        "GRANT DELETE ON app.prod_owned TO r14_both_reader;
         CREATE TABLE app.np (id int); ALTER TABLE app.np OWNER TO r14_both_owner;
         GRANT SELECT ON app.np TO r14_both_reader;
         ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT UPDATE ON TABLES TO r14_both_reader;",
    );
    let before_defaults = q(&tgt, "SELECT defaclacl FROM pg_default_acl ORDER BY oid");

    let dry = diff(&src, &tgt, &["--dry-run", "--no-privileges"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let sql = statements(&stdout(&dry));
    let aligned = sql.lines().any(|l| {
        l.contains("DEFAULT PRIVILEGES")
            || l.contains("REVOKE")
            || ((l.contains("GRANT") || l.contains("OWNER TO")) && l.contains("r14_both"))
    });
    assert!(!aligned, "privileges aligned with --no-privileges:\n{sql}");
    // A recreated view keeps the target's owner and grants.
    assert!(
        sql.contains("GRANT SELECT ON TABLE app.v TO \"r14 app user\";"),
        "{sql}"
    );
    assert!(sql.contains("CREATE TABLE app.np"), "{sql}");

    let o = diff(
        &src,
        &tgt,
        &["--apply", "--no-privileges", "--allow-hazards", "all"],
    );
    assert!(o.status.success(), "apply failed: {}", stderr(&o));
    let c = diff(&src, &tgt, &["--check", "--no-privileges"]);
    assert_eq!(c.status.code(), Some(0), "left after apply: {}", stdout(&c));
    // Without the flag the privileges still differ: the flag is what left them alone.
    let c = diff(&src, &tgt, &["--check"]);
    assert_eq!(c.status.code(), Some(1), "{}", stdout(&c));
    for (sql, want) in [
        (
            "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'app.np'::regclass",
            "postgres",
        ),
        (
            "SELECT has_table_privilege('r14_both_reader', 'app.np', 'SELECT')",
            "f",
        ),
        (
            "SELECT has_table_privilege('r14_both_reader', 'app.t', 'UPDATE')",
            "f",
        ),
        (
            "SELECT has_table_privilege('r14_both_reader', 'app.prod_owned', 'DELETE')",
            "f",
        ),
        (
            "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'app.owned'::regclass",
            "postgres",
        ),
    ] {
        assert_eq!(q(&tgt, sql), want, "{sql}");
    }
    assert_eq!(
        q(&tgt, "SELECT defaclacl FROM pg_default_acl ORDER BY oid"),
        before_defaults
    );
}

#[test]
fn a_policy_only_for_roles_the_target_lacks_is_refused_by_name() {
    let (src, tgt) = pair("roles_policy");
    let ddl = "CREATE TABLE t (id int); ALTER TABLE t ENABLE ROW LEVEL SECURITY;";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("CREATE POLICY only_dev ON t FOR SELECT TO \"r14 dev reader\" USING (true)");
    let before = tgt.dump();
    for mode in ["--check", "--apply", "--dry-run"] {
        let o = diff(&src, &tgt, &[mode]);
        assert_eq!(o.status.code(), Some(2), "{mode}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("policy only_dev on public.t names only roles the target does not have (\"r14 dev reader\")"),
            "{}",
            stderr(&o)
        );
    }
    assert_eq!(before, tgt.dump(), "something was applied");
}
