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
    src.psql("INSERT INTO users SELECT g, 'real' || g || '@corp.com', '0123', 'Smith', '10.1.1.1', 'x', 'tok', 5000, 'abc', '1990-01-01', '2000-01-01' FROM generate_series(1, 50) g");
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
                 bool_and(born <> '1990-01-01'), bool_and(seen > '2000-01-01' AND seen <= now()), count(DISTINCT ip) > 1 FROM users"),
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

    // Once the source is fixed every table goes through and the run exits 0.
    src.psql("UPDATE a_bad SET v = 'new'; UPDATE ch SET v = 'new'");
    reset();
    ok(&sync(&src, &tgt, &["--fail-fast"]));
    assert_eq!(state(), "a_bad=new,b=new,c=new,ch=new,p=new");
}
