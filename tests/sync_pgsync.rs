//! `pgflip sync` as pgsync users run it: pgsync's habits and test expectations, translated to
//! pgflip, against two real servers (source on the shared server, target on the second).

use std::path::Path;
use std::process::{Command, Output};

use crate::util::*;

/// Runs `pgflip sync ARGS` in `dir` (so that no ./.env or ./pgflip.toml of the repository is
/// read), with `env` added and libpq's variables removed.
fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgflip"));
    cmd.args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("PGHOST")
        .env_remove("PGPASSWORD")
        .env_remove("PGUSER")
        .env_remove("PGDATABASE")
        .env_remove("PGPORT")
        .env_remove("SOURCE_DATABASE_URL")
        .env_remove("TARGET_DATABASE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pgflip")
}

fn sync(src: &TestDb, tgt: &TestDb, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (s, t) = (src.url(), tgt.url());
    let mut args = vec!["sync", "--source", &s, "--target", &t];
    args.extend_from_slice(extra);
    run_in(dir.path(), &args, &[])
}

fn usage_error(o: &Output, needle: &str) -> String {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout:\n{}\nstderr:\n{err}",
        stdout(o)
    );
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    err
}

fn write_config(dir: &Path, text: &str) -> String {
    let p = dir.join("pgflip.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn source_and_target_must_be_named_and_differ() {
    let (src, tgt) = server_pair("named");
    src.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'src')");
    tgt.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'tgt')");
    let before = (src.dump(), tgt.dump());
    let dir = tempfile::tempdir().unwrap();
    let port = src.srv.port().to_string();
    // libpq's variables point at the source database: they may complete a side, never name one.
    let pg = [
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", port.as_str()),
        ("PGUSER", "postgres"),
        ("PGDATABASE", src.name.as_str()),
    ];
    usage_error(&run_in(dir.path(), &["sync"], &pg), "no source given");
    let (s, t) = (src.url(), tgt.url());
    usage_error(
        &run_in(dir.path(), &["sync", "--source", &s], &pg),
        "no target given",
    );
    usage_error(
        &run_in(dir.path(), &["sync", "--target", &t], &pg),
        "no source given",
    );
    usage_error(
        &run_in(dir.path(), &["schema", "diff", "--target", &t], &pg),
        "no source given",
    );
    // The same database, spelled two ways (an address and libpq's variables; a socket), is
    // refused by asking the servers.
    let socket = format!(
        "host={} port={port} user=postgres dbname={}",
        src.srv.socket_dir().display(),
        src.name
    );
    for target in [s.as_str(), socket.as_str()] {
        usage_error(
            &run_in(
                dir.path(),
                &["sync", "--source", &s, "--target", target],
                &[],
            ),
            "the same database",
        );
    }
    usage_error(
        &run_in(
            dir.path(),
            &["sync", "--source", &s, "--target-database", &src.name],
            &pg,
        ),
        "the same database",
    );
    usage_error(
        &run_in(
            dir.path(),
            &["schema", "diff", "--source", &s, "--target", &socket],
            &[],
        ),
        "the same database",
    );
    assert_eq!((src.dump(), tgt.dump()), before, "nothing changed");
    // TARGET_DATABASE_URL names the target; PG* then completes nothing it needs.
    let o = run_in(
        dir.path(),
        &["sync", "--source", &s],
        &[("TARGET_DATABASE_URL", t.as_str())],
    );
    ok(&o);
    assert_eq!(q(&tgt, "SELECT v FROM t"), "src");
    // A command with one endpoint keeps libpq's defaults.
    let tport = tgt.srv.port().to_string();
    let o = run_in(
        dir.path(),
        &["status"],
        &[
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", tport.as_str()),
            ("PGUSER", "postgres"),
            ("PGDATABASE", tgt.name.as_str()),
        ],
    );
    ok(&o);
}

#[test]
fn patterns_stay_within_a_name_and_the_schemas_in_scope() {
    let (src, tgt) = server_pair("patterns");
    let ddl = "CREATE SCHEMA other; \
               CREATE TABLE posts (id int PRIMARY KEY); CREATE TABLE pets (id int PRIMARY KEY); \
               CREATE TABLE users (id int PRIMARY KEY); \
               CREATE TABLE other.pets (id int PRIMARY KEY); CREATE TABLE other.posts (id int PRIMARY KEY)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql(
        "INSERT INTO posts VALUES (1); INSERT INTO pets VALUES (1); INSERT INTO users VALUES (1); \
              INSERT INTO other.pets VALUES (1); INSERT INTO other.posts VALUES (1)",
    );
    let counts = || {
        q(&tgt, "SELECT concat((SELECT count(*) FROM posts), (SELECT count(*) FROM pets), (SELECT count(*) FROM users), \
                 (SELECT count(*) FROM other.pets), (SELECT count(*) FROM other.posts))")
    };
    let reset = || tgt.psql("TRUNCATE posts, pets, users, other.pets, other.posts");
    ok(&sync(&src, &tgt, &["p*"]));
    assert_eq!(
        counts(),
        "11000",
        "p* is public's tables starting with p, not schema public"
    );
    reset();
    ok(&sync(&src, &tgt, &["*s"]));
    assert_eq!(counts(), "11100", "other.pets is not in scope");
    reset();
    ok(&sync(&src, &tgt, &["*s", "--schemas", "other"]));
    assert_eq!(counts(), "00011");
    reset();
    ok(&sync(&src, &tgt, &["other.p*", "--all-schemas"]));
    assert_eq!(counts(), "00011");
    reset();
    // A pattern that matches nothing is said; the run goes on with the rest.
    let o = sync(&src, &tgt, &["users", "zz*"]);
    ok(&o);
    assert!(
        stderr(&o).contains("\"zz*\" matches no table"),
        "{}",
        stderr(&o)
    );
    assert_eq!(counts(), "00100");
}

#[test]
fn a_table_with_no_shared_columns_is_skipped_and_the_run_goes_on() {
    let (src, tgt) = server_pair("nocols");
    src.psql(
        "CREATE TABLE odd (a int); CREATE TABLE fine (id int PRIMARY KEY, v text); \
              INSERT INTO odd VALUES (1); INSERT INTO fine VALUES (1, 'x'), (2, 'y')",
    );
    tgt.psql("CREATE TABLE odd (b int); CREATE TABLE fine (id int PRIMARY KEY, v text); INSERT INTO odd VALUES (7)");
    let o = sync(&src, &tgt, &[]);
    ok(&o);
    assert!(
        stderr(&o).contains("public.odd: no columns in common with the target; skipped"),
        "{}",
        stderr(&o)
    );
    assert_eq!(q(&tgt, "SELECT count(*) FROM fine"), "2");
    assert_eq!(
        q(&tgt, "SELECT b FROM odd"),
        "7",
        "the skipped table is untouched"
    );
}

#[test]
fn excludes_replace_the_config_and_spare_named_tables_and_groups() {
    let (src, tgt) = server_pair("excl");
    let ddl = "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE audit_log (id int); CREATE TABLE b (id int); CREATE TABLE c (id int)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO a VALUES (1); INSERT INTO audit_log VALUES (1); INSERT INTO b VALUES (1); INSERT INTO c VALUES (1)");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "exclude = [\"audit_*\"]\n[groups]\naudit = [\"audit_log\"]\n",
    );
    let counts = || {
        q(&tgt, "SELECT concat((SELECT count(*) FROM a), (SELECT count(*) FROM audit_log), (SELECT count(*) FROM b), (SELECT count(*) FROM c))")
    };
    let reset = || tgt.psql("TRUNCATE a, audit_log, b, c");
    ok(&sync(&src, &tgt, &["--config", &cfg, "audit"]));
    assert_eq!(counts(), "0100", "a group's table is never excluded");
    reset();
    ok(&sync(&src, &tgt, &["--config", &cfg, "audit_log"]));
    assert_eq!(counts(), "0100", "nor a table named exactly");
    reset();
    ok(&sync(&src, &tgt, &["--config", &cfg, "*"]));
    assert_eq!(counts(), "1011", "patterns are");
    reset();
    ok(&sync(&src, &tgt, &["--config", &cfg, "--exclude", "b"]));
    assert_eq!(counts(), "1101", "--exclude replaces the file's list");
    reset();
    // Commas as pgsync takes them, and an exclude that matches nothing is said.
    let o = sync(
        &src,
        &tgt,
        &[
            "--config",
            &cfg,
            "--exclude",
            "a*,b",
            "--exclude",
            "nothing*",
        ],
    );
    ok(&o);
    assert_eq!(counts(), "0001");
    assert!(
        stderr(&o).contains("--exclude \"nothing*\" matches no table"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn group_variables_as_pgsync_writes_them() {
    let (src, tgt) = server_pair("groupvars");
    let ddl = "CREATE TABLE products (id int PRIMARY KEY, store int, name text); \
               CREATE TABLE reviews (id int PRIMARY KEY, product_id int, body text)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql(
        "INSERT INTO products VALUES (1, 7, 'p1'), (2, 7, 'p2'), (3, 8, 'p3'); \
              INSERT INTO reviews VALUES (1, 1, 'good'), (2, 2, 'bad'), (3, 3, 'ok')",
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        r#"
[groups]
product = { products = "WHERE id = {id}", reviews = "where product_id = {1}" }
store = { products = "store = {1} AND id <= {2}" }
typo = { products = "id = {product_id}" }
"#,
    );
    ok(&sync(&src, &tgt, &["--config", &cfg, "product:2"]));
    assert_eq!(
        q(
            &tgt,
            "SELECT string_agg(name, ',' ORDER BY id) FROM products"
        ),
        "p2"
    );
    assert_eq!(
        q(
            &tgt,
            "SELECT string_agg(body, ',' ORDER BY id) FROM reviews"
        ),
        "bad"
    );
    ok(&sync(&src, &tgt, &["--config", &cfg, "-g", "store:7:1"]));
    assert_eq!(
        q(
            &tgt,
            "SELECT string_agg(name, ',' ORDER BY id) FROM products"
        ),
        "p1,p2"
    );
    let before = tgt.dump();
    usage_error(
        &sync(&src, &tgt, &["--config", &cfg, "typo:1"]),
        "unknown variable {product_id}",
    );
    usage_error(
        &sync(&src, &tgt, &["--config", &cfg, "store:7"]),
        "needs a value for {2}",
    );
    usage_error(
        &sync(&src, &tgt, &["--config", &cfg, "-g", "nogroup"]),
        "no group \"nogroup\"",
    );
    assert_eq!(tgt.dump(), before, "nothing ran");
}

#[test]
fn where_and_lists_as_pgsync_takes_them() {
    let (src, tgt) = server_pair("sqllists");
    let ddl = "CREATE TABLE posts (id int PRIMARY KEY, v text); CREATE TABLE tags (id int PRIMARY KEY); CREATE TABLE other (id int)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO posts SELECT g, 'new' FROM generate_series(1, 5) g; INSERT INTO tags VALUES (1); INSERT INTO other VALUES (1)");
    tgt.psql("INSERT INTO posts SELECT g, 'old' FROM generate_series(1, 5) g");
    ok(&sync(&src, &tgt, &["posts", "WHERE id < 3"]));
    assert_eq!(
        q(&tgt, "SELECT string_agg(v, ',' ORDER BY id) FROM posts"),
        "new,new,old,old,old"
    );
    ok(&sync(&src, &tgt, &["posts", "--where", "where id = 4"]));
    assert_eq!(
        q(&tgt, "SELECT string_agg(v, ',' ORDER BY id) FROM posts"),
        "new,new,old,new,old"
    );
    ok(&sync(&src, &tgt, &["posts,tags"]));
    assert_eq!(q(&tgt, "SELECT (SELECT count(*) FROM posts WHERE v = 'new') || '/' || (SELECT count(*) FROM tags) || '/' || (SELECT count(*) FROM other)"), "5/1/0");
    ok(&sync(&src, &tgt, &["-t", "other"]));
    assert_eq!(q(&tgt, "SELECT count(*) FROM other"), "1");
}

#[test]
fn data_rules_with_pgsyncs_names_and_outputs() {
    let (src, tgt) = server_pair("rules");
    let ddl = "CREATE TABLE users (id int PRIMARY KEY, email text, phone text, last_name text, \
               ip inet, ip_text text, token text, n int, code text, born date, seen timestamptz)";
    src.psql(ddl);
    tgt.psql(ddl);
    // `born` lies outside random_date's range (1970-01-01 and the 10,000 days after): inside
    // it, one of the 50 random dates matched the source's once in CI.
    src.psql("INSERT INTO users SELECT g, 'real' || g || '@corp.com', '0123', 'Smith', '10.1.1.1', 'x', 'tok', 5000, 'abc', '1960-01-01', '2000-01-01' FROM generate_series(1, 50) g");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        r#"
[data_rules]
email = "unique_email"
phone = "unique_phone"
last_name = "random_letter"
ip = "random_ip"
ip_text = "random_ip"
token = "unique_secret"
n = "random_int"
code = "random_string"
born = "random_date"
seen = "random_time"
"#,
    );
    ok(&sync(&src, &tgt, &["--config", &cfg, "users"]));
    assert_eq!(
        q(&tgt, "SELECT bool_and(email = 'email' || id || '@example.org'), bool_and(phone = (1000000000 + id)::text), \
                 bool_and(last_name ~ '^[A-Z]$'), bool_and(ip_text::inet IS NOT NULL AND ip_text ~ '^\\d+\\.\\d+\\.\\d+\\.\\d+$'), \
                 bool_and(token = 'secret' || id), bool_and(n BETWEEN 0 AND 100), bool_and(length(code) = 10 AND code <> 'abc'), \
                 bool_and(born >= '1970-01-01' AND born < date '1970-01-01' + 10000), bool_and(seen > '2000-01-01' AND seen <= now()), count(DISTINCT ip) > 1 FROM users"),
        "t|t|t|t|t|t|t|t|t|t"
    );
}

#[test]
fn a_missing_config_file_is_a_usage_error_said_once() {
    let (src, tgt) = server_pair("nocfg");
    let o = sync(&src, &tgt, &["--config", "/nonexistent/pgflip.toml"]);
    let err = usage_error(&o, "/nonexistent/pgflip.toml");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn db_names_command_values_and_from_to_lines() {
    let (src, tgt) = server_pair("dbname");
    src.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)");
    tgt.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let dir = tempfile::tempdir().unwrap();
    // The target's URL comes from a command (pgsync's `$(…)`), as a secret would.
    std::fs::write(
        dir.path().join("pgflip.staging.toml"),
        format!(
            "source = {:?}\ntarget = \"$(printf '%s' {})\"\n",
            src.url(),
            tgt.url()
        ),
    )
    .unwrap();
    let o = run_in(dir.path(), &["sync", "--db", "staging", "t"], &[]);
    ok(&o);
    assert_eq!(q(&tgt, "SELECT count(*) FROM t"), "2");
    let err = stderr(&o);
    let (sp, tp) = (src.srv.port(), tgt.srv.port());
    assert!(
        err.starts_with(&format!(
            "From: 127.0.0.1:{sp}/{}\nTo: 127.0.0.1:{tp}/{}\n",
            src.name, tgt.name
        )),
        "{err}"
    );
    std::fs::write(
        dir.path().join("pgflip.broken.toml"),
        format!("source = {:?}\ntarget = \"$(exit 3)\"\n", src.url()),
    )
    .unwrap();
    usage_error(
        &run_in(dir.path(), &["sync", "--db", "broken"], &[]),
        "$(exit 3) failed",
    );
    usage_error(
        &run_in(dir.path(), &["sync", "--db", "missing"], &[]),
        "pgflip.missing.toml",
    );
}

#[test]
fn init_writes_a_config_for_the_framework_and_never_overwrites() {
    let (src, tgt) = server_pair("init");
    let ddl =
        "CREATE TABLE posts (id int PRIMARY KEY); CREATE TABLE schema_migrations (version text); \
               CREATE TABLE ar_internal_metadata (key text)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO posts VALUES (1); INSERT INTO schema_migrations VALUES ('2024'); INSERT INTO ar_internal_metadata VALUES ('env')");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    std::fs::write(dir.path().join("bin/rails"), "#!/usr/bin/env ruby\n").unwrap();
    let o = run_in(dir.path(), &["init"], &[]);
    assert!(ok(&o).contains("Rails"), "{}", stdout(&o));
    let text = std::fs::read_to_string(dir.path().join("pgflip.toml")).unwrap();
    assert!(
        text.contains("exclude = [\"ar_internal_metadata\", \"schema_migrations\"]"),
        "{text}"
    );
    // Never overwritten: a second init fails and leaves the file as it was.
    std::fs::write(dir.path().join("pgflip.toml"), "# mine\n").unwrap();
    usage_error(&run_in(dir.path(), &["init"], &[]), "never overwrites");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("pgflip.toml")).unwrap(),
        "# mine\n"
    );
    // --db NAME writes pgflip.NAME.toml, which `sync --db NAME` reads (endpoints from flags).
    ok(&run_in(dir.path(), &["init", "--db", "dev"], &[]));
    let (s, t) = (src.url(), tgt.url());
    ok(&run_in(
        dir.path(),
        &["sync", "--db", "dev", "--source", &s, "--target", &t],
        &[],
    ));
    assert_eq!(
        q(&tgt, "SELECT (SELECT count(*) FROM posts) || '/' || (SELECT count(*) FROM schema_migrations) || '/' || (SELECT count(*) FROM ar_internal_metadata)"),
        "1/0/0",
        "the framework's bookkeeping tables are excluded"
    );
}

#[test]
fn disable_user_triggers_during_the_load_and_restore_them_as_they_were() {
    let (src, tgt) = server_pair("triggers");
    src.psql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'new' FROM generate_series(1, 10) g");
    tgt.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text CHECK (v <> 'bad')); CREATE TABLE log (what text); \
         CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS \
           $$BEGIN INSERT INTO log VALUES (TG_NAME); RETURN NULL; END$$; \
         CREATE TRIGGER on_row AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION note(); \
         CREATE TRIGGER always_row AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION note(); \
         ALTER TABLE t ENABLE ALWAYS TRIGGER always_row; \
         CREATE TRIGGER off_row AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION note(); \
         ALTER TABLE t DISABLE TRIGGER off_row; \
         INSERT INTO t VALUES (1, 'old'); TRUNCATE log",
    );
    let states = || {
        q(
            &tgt,
            "SELECT string_agg(tgname || '=' || tgenabled::text, ',' ORDER BY tgname) FROM pg_trigger \
             WHERE tgrelid = 't'::regclass AND NOT tgisinternal",
        )
    };
    let before = states();
    assert_eq!(before, "always_row=A,off_row=D,on_row=O");
    ok(&sync(&src, &tgt, &["t", "--disable-user-triggers"]));
    assert_eq!(q(&tgt, "SELECT count(*) FROM log"), "0", "no trigger fired");
    assert_eq!(q(&tgt, "SELECT count(*) FROM t WHERE v = 'new'"), "10");
    assert_eq!(states(), before, "restored as they were");
    // A failing load rolls the disabling back with the rows.
    src.psql("UPDATE t SET v = 'bad' WHERE id = 7");
    tgt.psql("UPDATE t SET v = 'old'");
    let o = sync(&src, &tgt, &["t", "--disable-user-triggers"]);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert_eq!(states(), before);
    assert_eq!(q(&tgt, "SELECT count(*) FROM t WHERE v = 'old'"), "10");
    // Without the flag they fire (the test's trigger is real).
    src.psql("UPDATE t SET v = 'new'");
    ok(&sync(&src, &tgt, &["t"]));
    assert_eq!(q(&tgt, "SELECT count(*) FROM log"), "20");
}

/// pgsync's default: a failing table is reported and the others go on; `--fail-fast` stops at
/// the first one. A failing unit (tables tied by a foreign key load together) leaves all of its
/// tables as they were.
#[test]
fn a_failing_table_is_listed_and_the_others_go_on_unless_fail_fast() {
    let (src, tgt) = server_pair("failfast");
    let tables = "CREATE TABLE a_bad (id int PRIMARY KEY, v text); \
                  CREATE TABLE b (id int PRIMARY KEY, v text); \
                  CREATE TABLE c (id int PRIMARY KEY, v text); \
                  CREATE TABLE p (id int PRIMARY KEY, v text); \
                  CREATE TABLE ch (id int PRIMARY KEY, p int REFERENCES p, v text";
    src.psql(&format!(
        "{tables}); \
         INSERT INTO a_bad SELECT g, 'new' FROM generate_series(1, 5) g; \
         INSERT INTO b SELECT g, 'new' FROM generate_series(1, 5) g; \
         INSERT INTO c SELECT g, 'new' FROM generate_series(1, 5) g; \
         INSERT INTO p SELECT g, 'new' FROM generate_series(1, 5) g; \
         INSERT INTO ch SELECT g, g, 'new' FROM generate_series(1, 5) g; \
         UPDATE a_bad SET v = 'bad' WHERE id = 3; UPDATE ch SET v = 'bad' WHERE id = 2"
    ));
    // The target refuses 'bad' in a_bad and ch.
    tgt.psql(&format!(
        "{tables}); ALTER TABLE a_bad ADD CHECK (v <> 'bad'); ALTER TABLE ch ADD CHECK (v <> 'bad')"
    ));
    let reset = || {
        tgt.psql(
            "TRUNCATE a_bad, b, c, ch, p; \
             INSERT INTO a_bad SELECT g, 'old' FROM generate_series(1, 5) g; \
             INSERT INTO b SELECT g, 'old' FROM generate_series(1, 5) g; \
             INSERT INTO c SELECT g, 'old' FROM generate_series(1, 5) g; \
             INSERT INTO p SELECT g, 'old' FROM generate_series(1, 5) g; \
             INSERT INTO ch SELECT g, g, 'old' FROM generate_series(1, 5) g",
        )
    };
    let state = || {
        q(
            &tgt,
            "SELECT string_agg(t || '=' || v, ',' ORDER BY t) FROM ( \
               SELECT 'a_bad' t, string_agg(DISTINCT v, '/') v FROM a_bad UNION ALL \
               SELECT 'b', string_agg(DISTINCT v, '/') FROM b UNION ALL \
               SELECT 'c', string_agg(DISTINCT v, '/') FROM c UNION ALL \
               SELECT 'ch', string_agg(DISTINCT v, '/') FROM ch UNION ALL \
               SELECT 'p', string_agg(DISTINCT v, '/') FROM p) s",
        )
    };
    let leftovers = || {
        q(
            &tgt,
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind = 'r' \
               AND c.relname NOT IN ('a_bad', 'b', 'c', 'p', 'ch')",
        )
    };

    // Default: b and c are synced; a_bad and the unit p + ch stay as they were; exit 4.
    reset();
    let o = sync(&src, &tgt, &["--jobs", "1"]);
    assert_eq!(o.status.code(), Some(4), "stderr:\n{}", stderr(&o));
    assert_eq!(state(), "a_bad=old,b=new,c=new,ch=old,p=old");
    let out = stdout(&o);
    assert!(out.contains("✔ b - "), "{out}");
    assert!(out.contains("✔ c - "), "{out}");
    assert!(out.contains("✘ a_bad - "), "{out}");
    assert!(out.contains("✘ p, ch - "), "{out}");
    assert!(out.contains("with 2 failures"), "{out}");
    let err = stderr(&o);
    assert!(
        err.contains("pgflip: error: a_bad: ") && err.contains("a_bad_v_check"),
        "{err}"
    );
    assert!(
        err.contains("pgflip: error: p, ch: ") && err.contains("ch_v_check"),
        "{err}"
    );
    assert_eq!(leftovers(), "0");

    // --json: the failures as data, stdout one JSON document.
    reset();
    let o = sync(&src, &tgt, &["--jobs", "1", "--json"]);
    assert_eq!(o.status.code(), Some(4), "stderr:\n{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON document");
    let failed: Vec<Vec<String>> = v["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert!(f["error"].as_str().unwrap().contains("check"), "{f}");
            serde_json::from_value(f["tables"].clone()).unwrap()
        })
        .collect();
    assert_eq!(
        failed,
        vec![
            vec!["public.a_bad".to_string()],
            vec!["public.p".to_string(), "public.ch".to_string()]
        ]
    );
    let done: Vec<&str> = v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(done, ["public.b", "public.c"]);
    assert_eq!(state(), "a_bad=old,b=new,c=new,ch=old,p=old");

    // --fail-fast: a_bad comes first with one job; nothing after it runs.
    reset();
    let o = sync(&src, &tgt, &["--jobs", "1", "--fail-fast"]);
    assert_eq!(o.status.code(), Some(4), "stderr:\n{}", stderr(&o));
    assert!(stderr(&o).contains("a_bad_v_check"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("✔"), "{}", stdout(&o));
    assert_eq!(state(), "a_bad=old,b=old,c=old,ch=old,p=old");
    assert_eq!(leftovers(), "0");

    // With --staging-table --swap a failed load means no swap at all.
    reset();
    let o = sync(&src, &tgt, &["--staging-table", "--swap", "--jobs", "1"]);
    assert_eq!(o.status.code(), Some(4), "stderr:\n{}", stderr(&o));
    assert!(stderr(&o).contains("nothing was swapped"), "{}", stderr(&o));
    assert_eq!(state(), "a_bad=old,b=old,c=old,ch=old,p=old");
    // The target has pgflip's state now: a run in which some tables failed is recorded as
    // failed, naming them, even though the others went through.
    reset();
    let o = sync(&src, &tgt, &["--jobs", "1"]);
    assert_eq!(o.status.code(), Some(4), "stderr:\n{}", stderr(&o));
    assert_eq!(state(), "a_bad=old,b=new,c=new,ch=old,p=old");
    let run = q(
        &tgt,
        "SELECT status || ' ' || error FROM pgflip.runs ORDER BY id DESC LIMIT 1",
    );
    assert!(
        run.starts_with("failed ")
            && run.contains("public.a_bad")
            && run.contains("public.p, public.ch"),
        "{run}"
    );

    // These small tables share one transaction (one job), each unit behind a savepoint; the
    // unit p + ch comes last. With a_bad fixed, --fail-fast fails at ch after a_bad, b and c
    // were loaded in that transaction: they roll back with it, nothing is half done.
    src.psql("UPDATE a_bad SET v = 'new'");
    reset();
    let plan = stdout(&sync(&src, &tgt, &["--jobs", "1", "--dry-run"]));
    assert_eq!(plan.matches("BEGIN;").count(), 1, "{plan}");
    assert_eq!(
        plan.matches("\nSAVEPOINT pgflip_unit;").count(),
        4,
        "{plan}"
    );
    let at = |s: &str| plan.find(s).unwrap_or_else(|| panic!("{s} in {plan}"));
    assert!(at("COPY public.c ") < at("COPY public.ch "), "{plan}");
    let o = sync(&src, &tgt, &["--jobs", "1", "--fail-fast"]);
    assert_eq!(o.status.code(), Some(4), "stderr:\n{}", stderr(&o));
    assert!(stderr(&o).contains("ch_v_check"), "{}", stderr(&o));
    assert_eq!(state(), "a_bad=old,b=old,c=old,ch=old,p=old");
    // Without it the failing unit alone rolls back to its savepoint; the others commit.
    reset();
    let o = sync(&src, &tgt, &["--jobs", "1"]);
    assert_eq!(o.status.code(), Some(4), "stderr:\n{}", stderr(&o));
    assert!(stdout(&o).contains("✘ p, ch - "), "{}", stdout(&o));
    assert_eq!(state(), "a_bad=new,b=new,c=new,ch=old,p=old");

    // Once the source is fixed every table goes through and the run exits 0.
    src.psql("UPDATE ch SET v = 'new'");
    reset();
    ok(&sync(&src, &tgt, &["--fail-fast"]));
    assert_eq!(state(), "a_bad=new,b=new,c=new,ch=new,p=new");
}

/// The user tables of a database, `schema.table`, sorted (pgsync's schema tests compare this).
fn user_tables(db: &TestDb) -> String {
    q(
        db,
        "SELECT coalesce(string_agg(table_schema || '.' || table_name, ',' ORDER BY table_schema, table_name), '') \
         FROM information_schema.tables \
         WHERE table_schema NOT IN ('information_schema', 'pg_catalog', 'pgflip')",
    )
}

/// pgsync's `--schema-only` / `--schema-first` (its schema tests, translated), and where pgflip
/// parts from pg_restore --clean: a table the target has is aligned online and keeps its rows
/// and dependents, never dropped; a step with a hazard the user did not allow refuses the whole
/// run before anything is applied or copied.
#[test]
fn schema_first_and_schema_only_create_or_align_the_synced_tables_and_never_drop_one() {
    let (src, tgt) = server_pair("schemafirst");
    src.psql(
        "CREATE SCHEMA other; CREATE TYPE mood AS ENUM ('ok', 'sad'); \
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$; \
         CREATE TABLE posts (id serial PRIMARY KEY, title text NOT NULL, m mood, \
           created timestamptz DEFAULT now()); \
         CREATE INDEX posts_title ON posts (title); \
         CREATE TRIGGER posts_touch BEFORE UPDATE ON posts FOR EACH ROW EXECUTE FUNCTION touch(); \
         CREATE TABLE comments (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
           post_id int REFERENCES posts, body text); \
         CREATE TABLE other.pets (id int PRIMARY KEY, name text); \
         CREATE TABLE unrelated (id int); \
         INSERT INTO posts (title, m) VALUES ('a', 'ok'), ('b', 'sad'); \
         INSERT INTO comments (post_id, body) VALUES (1, 'x')",
    );
    assert_eq!(user_tables(&tgt), "");

    // Schema only, two tables: created with what they need, no rows, nothing else.
    let out = ok(&sync(&src, &tgt, &["posts,comments", "--schema-only"]));
    assert_eq!(user_tables(&tgt), "public.comments,public.posts", "{out}");
    assert_eq!(q(&tgt, "SELECT count(*) FROM posts"), "0");
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'posts_touch'"
        ),
        "1",
        "the trigger and its function came along"
    );
    assert_eq!(q(&tgt, "SELECT 'sad'::mood"), "sad");
    assert_eq!(
        q(&tgt, "INSERT INTO posts (title) VALUES ('z') RETURNING id"),
        "1",
        "the serial column has a sequence of its own on the target"
    );
    tgt.psql("DELETE FROM posts; SELECT setval('posts_id_seq', 1, false)");
    // Aligned already: nothing to apply.
    let o = sync(&src, &tgt, &["posts,comments", "--schema-only"]);
    assert!(stderr(&o).contains("already aligned"), "{}", stderr(&o));

    // Schema first: then the rows.
    ok(&sync(&src, &tgt, &["posts,comments", "--schema-first"]));
    assert_eq!(
        q(&tgt, "SELECT string_agg(title, ',' ORDER BY id) FROM posts"),
        "a,b"
    );
    assert_eq!(q(&tgt, "SELECT count(*) FROM comments"), "1");

    // A table the target has: a new source column is added online; the target's own column is
    // kept (renamed to a tombstone, never dropped) and a view on the table survives.
    src.psql("ALTER TABLE posts ADD COLUMN score int NOT NULL DEFAULT 0");
    tgt.psql(
        "ALTER TABLE posts ADD COLUMN local_note text; UPDATE posts SET local_note = 'keep'; \
         CREATE VIEW post_titles AS SELECT id, title FROM posts",
    );
    let posts_oid = q(&tgt, "SELECT 'posts'::regclass::oid");
    ok(&sync(&src, &tgt, &["posts", "--schema-only"]));
    assert_eq!(
        q(&tgt, "SELECT 'posts'::regclass::oid"),
        posts_oid,
        "not recreated"
    );
    assert_eq!(q(&tgt, "SELECT sum(score) FROM posts"), "0");
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'posts'::regclass \
             AND attname LIKE 'local_note_dropped_%' AND NOT attisdropped"
        ),
        "1",
        "the target-only column is kept as a tombstone"
    );
    assert_eq!(
        q(
            &tgt,
            "SELECT string_agg(title, ',' ORDER BY id) FROM post_titles"
        ),
        "a,b"
    );

    // A rewrite is a hazard: refused, nothing applied, no rows copied; the plan is shown by
    // --dry-run, which changes nothing either; --allow-hazards lets it run.
    src.psql("ALTER TABLE posts ALTER COLUMN score TYPE bigint; UPDATE posts SET title = 'new'");
    let before = tgt.dump();
    let rows_before = q(&tgt, "SELECT string_agg(title, ',' ORDER BY id) FROM posts");
    let o = sync(&src, &tgt, &["posts", "--schema-first"]);
    assert!(!o.status.success(), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("hazards not allowed")
            && err.contains("--allow-hazards")
            && err.contains("rewrites-table"),
        "{err}"
    );
    assert_eq!(tgt.dump(), before, "nothing applied");
    assert_eq!(
        q(&tgt, "SELECT string_agg(title, ',' ORDER BY id) FROM posts"),
        rows_before
    );
    let o = sync(&src, &tgt, &["posts", "--schema-first", "--dry-run"]);
    assert!(stdout(&o).contains("TYPE bigint"), "{}", stdout(&o));
    assert_eq!(tgt.dump(), before, "a dry run changes nothing");
    ok(&sync(
        &src,
        &tgt,
        &[
            "posts",
            "--schema-first",
            "--allow-hazards",
            "rewrites-table,long-lock",
        ],
    ));
    assert_eq!(
        q(&tgt, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'posts'::regclass AND attname = 'score'"),
        "bigint"
    );
    assert_eq!(
        q(&tgt, "SELECT string_agg(title, ',' ORDER BY id) FROM posts"),
        "new,new"
    );

    // pgsync's "every table of every schema": the schema comes along; --preserve is refused
    // (as pgsync refuses it).
    ok(&sync(&src, &tgt, &["--schema-only", "--all-schemas"]));
    assert_eq!(
        user_tables(&tgt),
        "other.pets,public.comments,public.post_titles,public.posts,public.unrelated"
    );
    usage_error(
        &sync(&src, &tgt, &["posts", "--schema-first", "--preserve"]),
        "--preserve",
    );
}

/// pgsync's `--in-batches`: one table in primary-key ranges, one transaction each, resumable.
/// Killed between two batches and inside one, a rerun continues after the last batch committed,
/// and the target ends with exactly the source's rows (none lost, none twice) plus its own.
#[test]
fn in_batches_resumes_after_a_kill_and_loses_or_repeats_no_row() {
    let (src, tgt) = server_pair("batches");
    src.psql(
        "CREATE TABLE events (id bigint PRIMARY KEY, v text); \
         INSERT INTO events SELECT g, 'e' || g FROM generate_series(1, 1000) g",
    );
    tgt.psql(
        "CREATE TABLE events (id bigint PRIMARY KEY, v text); \
         INSERT INTO events VALUES (5, 'old'), (2000, 'target only')",
    );
    let dir = tempfile::tempdir().unwrap();
    let (s, t) = (src.url(), tgt.url());
    let args = |extra: &[&'static str]| {
        let mut a: Vec<String> = [
            "sync",
            "--source",
            &s,
            "--target",
            &t,
            "events",
            "--in-batches",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let run = |extra: &[&'static str], env: &[(&str, &str)]| {
        let a = args(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run_in(dir.path(), &a, env)
    };
    let progress = || {
        q(
            &tgt,
            "SELECT coalesce((SELECT details->>'last_key' FROM pgflip.operations \
             WHERE kind = 'sync_batches'), 'none')",
        )
    };
    // Killed after the first batch committed, before the second began.
    let o = run(
        &["--batch-size", "300"],
        &[("PGFLIP_FAILPOINTS", "sync.between_batches=exit")],
    );
    assert_eq!(o.status.code(), None, "killed: {}", stderr(&o));
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM events WHERE id <= 1000"),
        "300",
        "{}",
        stderr(&o)
    );
    assert_eq!(
        q(&tgt, "SELECT v FROM events WHERE id = 5"),
        "e5",
        "upserted"
    );
    assert_eq!(progress(), r#"["300"]"#);
    let st = ok(&run_in(dir.path(), &["status", "--target", &t], &[]));
    assert!(st.contains("sync_batches (copying): public.events"), "{st}");
    let o = run(&["--batch-size", "300", "--dry-run"], &[]);
    assert!(
        stdout(&o).contains("in batches of 300 rows"),
        "{}",
        stdout(&o)
    );
    assert_eq!(progress(), r#"["300"]"#, "a dry run changes nothing");
    // Killed inside the next batch, before its commit: none of it is in.
    let o = run(
        &["--batch-size", "300"],
        &[("PGFLIP_FAILPOINTS", "sync.before_batch_commit=exit")],
    );
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resuming after key (300)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM events WHERE id <= 1000"),
        "300"
    );
    assert_eq!(progress(), r#"["300"]"#);
    // A rerun continues after 300 and finishes; the record goes with the last batch.
    let o = run(&["--batch-size", "300", "--sleep", "0.01"], &[]);
    ok(&o);
    let err = stderr(&o);
    assert!(err.contains("resuming after key (300)"), "{err}");
    assert!(
        err.contains("batch 3 done") && !err.contains("batch 4 done"),
        "{err}"
    );
    assert_eq!(progress(), "none");
    let rows = |db: &TestDb| {
        q(
            db,
            "SELECT count(*) || ' ' || md5(string_agg(id || ':' || v, ',' ORDER BY id)) \
             FROM events WHERE id <= 1000",
        )
    };
    assert_eq!(
        rows(&tgt),
        rows(&src),
        "every source row once, as the source has it"
    );
    assert_eq!(
        q(&tgt, "SELECT v FROM events WHERE id = 2000"),
        "target only"
    );
    // A composite key and a condition, from the start: only the matching rows.
    src.psql(
        "CREATE TABLE pairs (a int, b text, n int, PRIMARY KEY (a, b)); \
         INSERT INTO pairs SELECT g % 7, 'k' || g, g FROM generate_series(1, 100) g",
    );
    tgt.psql("CREATE TABLE pairs (a int, b text, n int, PRIMARY KEY (a, b))");
    ok(&run_in(
        dir.path(),
        &[
            "sync",
            "--source",
            &s,
            "--target",
            &t,
            "pairs",
            "WHERE n > 10",
            "--in-batches",
            "--batch-size",
            "7",
        ],
        &[],
    ));
    assert_eq!(
        q(&tgt, "SELECT count(*) || ' ' || sum(n) FROM pairs"),
        q(
            &src,
            "SELECT count(*) || ' ' || sum(n) FROM pairs WHERE n > 10"
        )
    );
    // pgsync's refusals: several tables; options that do not apply.
    usage_error(
        &run_in(
            dir.path(),
            &[
                "sync",
                "--source",
                &s,
                "--target",
                &t,
                "events,pairs",
                "--in-batches",
            ],
            &[],
        ),
        "one table at a time",
    );
    usage_error(&run(&["--staging-table"], &[]), "--staging-table");
}

/// `--in-batches`: a batch whose locks are not granted in time (here a row the application
/// holds) is rolled back and tried again with backoff, instead of failing the run; once the
/// row is free the run completes and every row is there once.
#[tokio::test]
async fn in_batches_retries_a_batch_whose_lock_is_not_granted() {
    let (src, tgt) = server_pair("batches_lock");
    src.psql(
        "CREATE TABLE events (id bigint PRIMARY KEY, v text); \
         INSERT INTO events SELECT g, 'e' || g FROM generate_series(1, 300) g",
    );
    tgt.psql("CREATE TABLE events (id bigint PRIMARY KEY, v text); INSERT INTO events VALUES (150, 'old')");
    let app = tgt.client().await;
    app.batch_execute("BEGIN; SELECT FROM events WHERE id = 150 FOR UPDATE")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (s, t) = (src.url(), tgt.url());
    let child = Command::new(env!("CARGO_BIN_EXE_pgflip"))
        .args([
            "sync",
            "--source",
            &s,
            "--target",
            &t,
            "events",
            "--in-batches",
            "--batch-size",
            "100",
            "--max-wait",
            "60s",
        ])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The second batch (ids 101 to 200) waits for row 150; its lock_timeout rolls it back,
    // after which nobody waits on the row until the next attempt.
    let waiting = || {
        q(
            &tgt,
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'",
        ) != "0"
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for want in [true, false] {
        while waiting() != want {
            assert!(std::time::Instant::now() < deadline, "never {want}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    // Only the first batch is in meanwhile.
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM events WHERE v <> 'old'"),
        "100"
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    let out = child.wait_with_output().unwrap();
    ok(&out);
    assert!(
        stderr(&out).contains("lock not granted (attempt 1), retrying"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        q(&tgt, "SELECT count(*) || ':' || count(DISTINCT id) || ':' || md5(string_agg(id || v, ',' ORDER BY id)) FROM events"),
        q(&src, "SELECT count(*) || ':' || count(DISTINCT id) || ':' || md5(string_agg(id || v, ',' ORDER BY id)) FROM events"),
    );
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pgflip.operations WHERE kind = 'sync_batches'"
        ),
        "0",
        "the finished run leaves no progress record"
    );
}
