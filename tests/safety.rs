//! Safety defects found by trying pgflip as a user would (issue 15): each test here failed on
//! the code before its fix.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

fn sync(src: &TestDb, tgt: &TestDb, extra: &[&str]) -> std::process::Output {
    sync_env(src, tgt, extra, &[])
}

fn sync_env(
    src: &TestDb,
    tgt: &TestDb,
    extra: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let (s, t) = (src.url(), tgt.url());
    let mut args = vec!["sync", "--source", &s, "--target", &t];
    args.extend_from_slice(extra);
    pgflip_env(&args, env)
}

/// Waits (up to 60 s) for a failpoint's marker file.
fn wait_file(p: &Path) {
    let t = Instant::now();
    while !p.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{p:?} never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fk_validated(db: &TestDb, name: &str) -> String {
    q(
        db,
        &format!("SELECT convalidated FROM pg_constraint WHERE conname = '{name}'"),
    )
}

/// Item 1: a swap (and a rollback) that would orphan rows of a table outside it is refused
/// before any lock, naming the constraint and the count; when rows are orphaned anyway (written
/// between the check and the flip), the run fails after the commit and `verify` names it.
#[test]
fn a_swap_that_would_orphan_referencing_rows_is_refused() {
    let (src, tgt) = server_pair("orphan");
    let ddl = "CREATE TABLE products (id int PRIMARY KEY, name text); \
               CREATE TABLE orders (id int PRIMARY KEY, product_id int REFERENCES products); \
               CREATE VIEW order_lines AS SELECT o.id, p.name FROM orders o JOIN products p ON p.id = o.product_id";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO products VALUES (1, 'one'), (2, 'two')");
    tgt.psql("INSERT INTO products VALUES (1, 'uno'), (2, 'dos'), (3, 'tres'); INSERT INTO orders VALUES (10, 3), (11, 1)");

    let o = sync(&src, &tgt, &["products", "--staging-table", "--swap"]);
    assert_eq!(o.status.code(), Some(2), "{}\n{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("orders_product_id_fkey") && err.contains("1 row(s) of public.orders"),
        "{err}"
    );
    assert_eq!(
        q(
            &tgt,
            "SELECT string_agg(name, ',' ORDER BY id) FROM products"
        ),
        "uno,dos,tres"
    );
    assert_eq!(q(&tgt, "SELECT count(*) FROM order_lines"), "2");
    assert_eq!(fk_validated(&tgt, "orders_product_id_fkey"), "t");
    // The staging table stays (it is what the user reviews); swapping it alone is refused too.
    let o = sync(&src, &tgt, &["products", "--swap"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // The dry run says the same.
    let o = sync(&src, &tgt, &["products", "--swap", "--dry-run"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // With product 3 in the source the swap goes through.
    src.psql("INSERT INTO products VALUES (3, 'three'), (4, 'four')");
    ok(&sync(
        &src,
        &tgt,
        &["products", "--staging-table", "--swap"],
    ));
    assert_eq!(fk_validated(&tgt, "orders_product_id_fkey"), "t");
    assert_eq!(q(&tgt, "SELECT count(*) FROM order_lines"), "2");

    // Rollback: an order of product 4, which the retired table lacks, refuses it.
    tgt.psql("INSERT INTO orders VALUES (12, 4)");
    let o = pgflip(&["rollback", "--target", &tgt.url(), "--latest"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("orders_product_id_fkey") && stderr(&o).contains("1 row(s)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(q(&tgt, "SELECT count(*) FROM products"), "4");
    tgt.psql("DELETE FROM orders WHERE id = 12");
    ok(&pgflip(&["rollback", "--target", &tgt.url(), "--latest"]));
    assert_eq!(q(&tgt, "SELECT count(*) FROM products"), "3");
    assert_eq!(fk_validated(&tgt, "orders_product_id_fkey"), "t");

    // The race: product 3 is in live but not in green; an order of it arrives after the check,
    // before the flip. The flip commits, the validation fails: exit 4, a failed run, and verify
    // names the constraint.
    src.psql("DELETE FROM products WHERE id = 3");
    tgt.psql("DELETE FROM orders WHERE product_id = 3");
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            sync_env(
                &src,
                &tgt,
                &["products", "--staging-table", "--swap"],
                &[
                    ("PGFLIP_FAILPOINTS", "flip.before_lock=pause"),
                    ("PGFLIP_FAILPOINT_DIR", &dir_s),
                ],
            )
        });
        let paused = dir.path().join("flip.before_lock.paused");
        wait_file(&paused);
        tgt.psql("INSERT INTO orders VALUES (13, 3)");
        std::fs::remove_file(&paused).unwrap();
        let o = h.join().unwrap();
        assert_eq!(o.status.code(), Some(4), "{}\n{}", stdout(&o), stderr(&o));
        assert!(
            stderr(&o).contains("the flip committed")
                && stderr(&o).contains("orders_product_id_fkey"),
            "{}",
            stderr(&o)
        );
    });
    let status = ok(&pgflip(&["status", "--target", &tgt.url()]));
    assert!(status.contains("failed"), "{status}");
    let o = pgflip(&["verify", "--target", &tgt.url(), "--latest"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("orders_product_id_fkey") && stdout(&o).contains("NOT VALID"),
        "{}",
        stdout(&o)
    );
}

/// Item 2: a staging load replaces only a staging table pgflip created; a user's table under
/// the staging name (given or default) is refused, named, and kept; replacing pgflip's own
/// staging table is labelled "deletes data"; index names never collide with leftovers.
#[test]
fn a_staging_load_never_replaces_a_table_pgflip_did_not_create() {
    let (src, tgt) = server_pair("victim");
    let ddl = r#"CREATE TABLE "MixedCase" (id int PRIMARY KEY, v text UNIQUE);
                 CREATE TABLE customers (id int PRIMARY KEY, name text)"#;
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql(r#"INSERT INTO "MixedCase" SELECT g, 'v' || g FROM generate_series(1, 50) g; INSERT INTO customers VALUES (1, 'a')"#);
    tgt.psql(
        "CREATE TABLE victim (id int PRIMARY KEY, secret text); \
         INSERT INTO victim SELECT g, 's' FROM generate_series(1, 1000) g; \
         CREATE TABLE customers_staging (id int, note text); INSERT INTO customers_staging VALUES (7, 'mine')",
    );
    let before = tgt.dump();
    for args in [
        &["MixedCase", "--staging-table", "--staging-name", "victim"][..],
        &[
            "MixedCase",
            "--staging-table",
            "--staging-name",
            "victim",
            "--swap",
        ],
        &[
            "MixedCase",
            "--staging-table",
            "--staging-name",
            "victim",
            "--dry-run",
        ],
    ] {
        let o = sync(&src, &tgt, args);
        assert_eq!(
            o.status.code(),
            Some(5),
            "{args:?}: {}\n{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(
            stderr(&o).contains("public.victim") && stderr(&o).contains("did not create"),
            "{}",
            stderr(&o)
        );
    }
    let o = sync(&src, &tgt, &["customers", "--staging-table"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("public.customers_staging"),
        "{}",
        stderr(&o)
    );
    assert_eq!(tgt.dump(), before, "nothing changed");
    assert_eq!(q(&tgt, "SELECT count(*) FROM victim"), "1000");

    // pgflip's own staging tables: two of the same live table, with indexes named apart.
    ok(&sync(&src, &tgt, &["MixedCase", "--staging-table"]));
    ok(&sync(
        &src,
        &tgt,
        &["MixedCase", "--staging-table", "--staging-name", "other"],
    ));
    assert_eq!(q(&tgt, r#"SELECT count(*) FROM "MixedCase_staging""#), "50");
    assert_eq!(q(&tgt, "SELECT count(*) FROM other"), "50");
    // Replacing a staging table it made is allowed, and the plan says it deletes data.
    let o = ok(&sync(
        &src,
        &tgt,
        &["MixedCase", "--staging-table", "--dry-run"],
    ));
    assert!(o.contains("deletes data"), "{o}");
    ok(&sync(&src, &tgt, &["MixedCase", "--staging-table"]));
    ok(&sync(
        &src,
        &tgt,
        &[
            "MixedCase",
            "--staging-table",
            "--staging-name",
            "other",
            "--swap",
        ],
    ));
    assert_eq!(q(&tgt, r#"SELECT count(*) FROM "MixedCase""#), "50");
    // The swapped table has live's index names; nothing half-made is left.
    assert_eq!(
        q(
            &tgt,
            r#"SELECT string_agg(indexrelid::regclass::text, ',' ORDER BY indexrelid::regclass::text) FROM pg_index WHERE indrelid = '"MixedCase"'::regclass"#
        ),
        r#""MixedCase_pkey","MixedCase_v_key""#
    );
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '%pgflip_loading%'"
        ),
        "0"
    );
    // Rollback brings the old table back; the user's tables were never touched.
    ok(&pgflip(&["rollback", "--target", &tgt.url(), "--latest"]));
    assert_eq!(q(&tgt, r#"SELECT count(*) FROM "MixedCase""#), "0");
    assert_eq!(q(&tgt, "SELECT count(*) FROM victim"), "1000");
    assert_eq!(q(&tgt, "SELECT note FROM customers_staging"), "mine");
}

fn seq_shape(db: &TestDb, table: &str) -> String {
    q(
        db,
        &format!(
            "SELECT string_agg(format('%s:%s:%s:%s:%s:%s:%s:%s', a.attname, s.data_type, s.increment_by, \
                    s.min_value, s.max_value, s.start_value, s.cache_size, s.cycle), ',' ORDER BY a.attname) \
             FROM pg_attribute a JOIN pg_sequences s \
               ON format('%I.%I', s.schemaname, s.sequencename)::regclass = pg_get_serial_sequence('{table}', a.attname)::regclass \
             WHERE a.attrelid = '{table}'::regclass AND a.attnum > 0"
        ),
    )
}

/// Item 3: a swap keeps the live table's sequences (identity type and options, serial options),
/// and `schema diff --apply` converges when an identity sequence's type differs.
#[test]
fn a_swap_keeps_identity_and_serial_sequence_types_and_options() {
    let (src, tgt) = server_pair("identity");
    let ddl = "CREATE TABLE t (id int GENERATED ALWAYS AS IDENTITY (START WITH 100 INCREMENT BY 5 CACHE 3) PRIMARY KEY, \
                               n smallserial, v text)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("ALTER SEQUENCE t_n_seq INCREMENT BY 2 MAXVALUE 30000");
    tgt.psql("ALTER SEQUENCE t_n_seq INCREMENT BY 2 MAXVALUE 30000");
    src.psql("INSERT INTO t (v) SELECT 'v' || g FROM generate_series(1, 20) g");
    tgt.psql("INSERT INTO t (v) VALUES ('old')");
    let before = seq_shape(&tgt, "t");
    assert!(
        before.contains("id:integer:5:1:2147483647:100:3:f"),
        "{before}"
    );
    ok(&sync(&src, &tgt, &["t", "--staging-table"]));
    assert_eq!(
        seq_shape(&tgt, "t_staging"),
        before,
        "staging has live's sequences"
    );
    ok(&sync(&src, &tgt, &["t", "--swap"]));
    assert_eq!(seq_shape(&tgt, "t"), before, "after the swap");
    // Inserts go on after the largest id in use.
    tgt.psql("INSERT INTO t (v) VALUES ('new')");
    assert_eq!(q(&tgt, "SELECT count(*) FROM t"), "21");
    // The schema diff of the two databases is clean.
    let (s, t) = (src.url(), tgt.url());
    let o = pgflip(&["schema", "diff", "--source", &s, "--target", &t, "--check"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    ok(&pgflip(&["rollback", "--target", &t, "--latest"]));
    assert_eq!(seq_shape(&tgt, "t"), before, "after the rollback");

    // A target whose identity sequence became bigint (as an older pgflip left it) converges.
    let (src2, tgt2) = server_pair("identity_diff");
    src2.psql("CREATE TABLE t (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY)");
    tgt2.psql("CREATE TABLE t (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY); ALTER SEQUENCE t_id_seq AS bigint MAXVALUE 9223372036854775807");
    let (s, t) = (src2.url(), tgt2.url());
    let o = pgflip(&["schema", "diff", "--source", &s, "--target", &t, "--check"]);
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stdout(&o), stderr(&o));
    ok(&pgflip(&[
        "schema", "diff", "--source", &s, "--target", &t, "--apply",
    ]));
    let o = pgflip(&["schema", "diff", "--source", &s, "--target", &t, "--check"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(seq_shape(&tgt2, "t"), seq_shape(&src2, "t"));
}

/// Item 5: Ctrl-C (or SIGTERM) during an in-place sync cancels the statement on the server:
/// pgflip exits 130 and, right after, nothing of pgflip runs on the target and the
/// application's UPDATE of the table does not wait.
#[test]
fn an_interrupt_cancels_the_statements_on_the_server() {
    let (src, tgt) = server_pair("interrupt");
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO t SELECT g, 'new' FROM generate_series(1, 20000) g");
    // Every row written takes a millisecond: the merge runs for about 20 s on the server.
    tgt.psql(
        "INSERT INTO t SELECT g, 'old' FROM generate_series(1, 100) g; \
         CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END$$; \
         CREATE TRIGGER slow BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION slow()",
    );
    let before = q(&tgt, "SELECT string_agg(id || v, ',' ORDER BY id) FROM t");
    for sig in ["-INT", "-TERM"] {
        let (s, t) = (src.url(), tgt.url());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgflip"))
            .args(["sync", "--source", &s, "--target", &t, "t", "--overwrite"])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while q(&tgt, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgflip' AND state = 'active' AND query LIKE '%ON CONFLICT%'") == "0" {
            assert!(Instant::now() < deadline, "the merge never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        let sent = Instant::now();
        let k = std::process::Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(k.success());
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(130), "{sig}: {}", stderr(&o));
        assert!(
            sent.elapsed() < Duration::from_secs(8),
            "{:?}",
            sent.elapsed()
        );
        // Right away: no pgflip statement runs on the target, and the application's UPDATE
        // gets its lock well within its lock_timeout.
        assert_eq!(
            q(&tgt, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgflip' AND state = 'active'"),
            "0",
            "{sig}"
        );
        let app = Instant::now();
        tgt.psql("SET lock_timeout = '2s'; UPDATE t SET v = v WHERE id = 1");
        assert!(
            app.elapsed() < Duration::from_secs(2),
            "{:?}",
            app.elapsed()
        );
        assert_eq!(
            q(&tgt, "SELECT string_agg(id || v, ',' ORDER BY id) FROM t"),
            before,
            "rolled back"
        );
    }
}

/// After an interrupt no table that had not begun begins: with one job, the tables queued
/// behind the one being merged stay as they were, though pgflip drives the merge until the
/// server has cancelled it.
#[test]
fn an_interrupt_begins_no_further_table() {
    let (src, tgt) = server_pair("interrupt_queue");
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE u1 (id int PRIMARY KEY, v text); \
               CREATE TABLE u2 (id int PRIMARY KEY, v text)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql(
        "INSERT INTO t SELECT g, 'new' FROM generate_series(1, 20000) g; \
         INSERT INTO u1 VALUES (1, 'new'); INSERT INTO u2 VALUES (1, 'new');",
    );
    tgt.psql(
        "INSERT INTO u1 VALUES (1, 'old'); INSERT INTO u2 VALUES (1, 'old'); \
         CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END$$; \
         CREATE TRIGGER slow BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION slow()",
    );
    let (s, t) = (src.url(), tgt.url());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgflip"))
        .args([
            "sync",
            "--source",
            &s,
            "--target",
            &t,
            "t,u1,u2",
            "--overwrite",
            "--jobs",
            "1",
        ])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while q(&tgt, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgflip' AND state = 'active' AND query LIKE '%ON CONFLICT%'") == "0" {
        assert!(Instant::now() < deadline, "the merge never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let queued = "SELECT (SELECT v FROM u1) || '/' || (SELECT v FROM u2)";
    // (The test means something only if the small tables come after t.)
    assert_eq!(q(&tgt, queued), "old/old", "u1 and u2 were synced before t");
    std::thread::sleep(Duration::from_millis(300));
    let k = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert_eq!(q(&tgt, queued), "old/old", "{}", stderr(&o));
    assert_eq!(q(&tgt, "SELECT count(*) FROM t"), "0");
}

/// Item 6: pgflip killed (-9) right after the flip committed, before the retired side's counts
/// were recorded: `status` says the flip committed, and `verify --record` completes the record.
#[test]
fn a_run_killed_after_its_flip_committed_is_known_to_have_flipped() {
    let (src, tgt) = server_pair("killed_commit");
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO t SELECT g, 'new' FROM generate_series(1, 100) g");
    tgt.psql("INSERT INTO t SELECT g, 'old' FROM generate_series(1, 30) g");
    // State first, so that the run is on record from its start.
    ok(&pgflip(&["list", "--target", &tgt.url()]));
    ok(&sync(&src, &tgt, &["t", "--staging-table"]));
    ok(&sync(&src, &tgt, &["t", "--swap"]));
    ok(&pgflip(&["rollback", "--target", &tgt.url(), "--latest"]));
    let dir = tempfile::tempdir().unwrap();
    let o = sync_env(
        &src,
        &tgt,
        &["t", "--staging-table", "--swap"],
        &[
            ("PGFLIP_FAILPOINTS", "flip.after_commit=exit"),
            ("PGFLIP_FAILPOINT_DIR", dir.path().to_str().unwrap()),
        ],
    );
    assert_eq!(o.status.code(), None, "killed: {}", stderr(&o));
    assert!(dir.path().join("flip.after_commit.reached").exists());
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM t"),
        "100",
        "the flip committed"
    );
    let label = q(
        &tgt,
        "SELECT label FROM pgflip.generations ORDER BY id DESC LIMIT 1",
    );
    // Its session may take a moment to end on the server.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let s = ok(&pgflip(&["status", "--target", &tgt.url()]));
        if s.contains("interrupted") || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.contains("interrupted")
            && status.contains(&format!("its flip committed (generation {label})")),
        "{status}"
    );
    let o = pgflip(&["verify", "--target", &tgt.url(), "--timestamp", &label]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let o = pgflip(&[
        "verify",
        "--target",
        &tgt.url(),
        "--timestamp",
        &label,
        "--record",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("30 rows"), "{}", stdout(&o));
    ok(&pgflip(&[
        "verify",
        "--target",
        &tgt.url(),
        "--timestamp",
        &label,
    ]));
    // And it rolls back like any other.
    ok(&pgflip(&[
        "rollback",
        "--target",
        &tgt.url(),
        "--timestamp",
        &label,
    ]));
    assert_eq!(q(&tgt, "SELECT count(*) FROM t"), "30");
}

/// Item 8: every command that replaces or drops data on a target that is not on this machine
/// asks (or, without a terminal, refuses naming --yes), as in-place sync does.
#[test]
fn swap_rollback_and_cleanup_ask_before_acting_on_a_remote_target() {
    let (src, tgt) = server_pair("remote_all");
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO t VALUES (1, 'new'), (2, 'new')");
    tgt.psql("INSERT INTO t VALUES (1, 'old')");
    // 0.0.0.0 reaches this machine but is not one of the names pgflip treats as local.
    let remote = tgt.url().replace("127.0.0.1", "0.0.0.0");
    let s = src.url();
    let refused = |o: &std::process::Output| {
        assert_eq!(o.status.code(), Some(5), "{}\n{}", stdout(o), stderr(o));
        assert!(stderr(o).contains("--yes"), "{}", stderr(o));
    };
    // The staging load does not touch live data: no question.
    ok(&pgflip(&[
        "sync",
        "--source",
        &s,
        "--target",
        &remote,
        "t",
        "--staging-table",
    ]));
    let before = tgt.dump();
    refused(&pgflip(&[
        "sync", "--source", &s, "--target", &remote, "t", "--swap",
    ]));
    refused(&pgflip(&[
        "sync",
        "--source",
        &s,
        "--target",
        &remote,
        "t",
        "--staging-table",
        "--swap",
    ]));
    assert_eq!(tgt.dump(), before);
    ok(&pgflip(&[
        "sync", "--source", &s, "--target", &remote, "t", "--swap", "--yes",
    ]));
    assert_eq!(q(&tgt, "SELECT count(*) FROM t"), "2");

    let before = tgt.dump();
    refused(&pgflip(&["rollback", "--target", &remote, "--latest"]));
    assert_eq!(tgt.dump(), before);
    ok(&pgflip(&[
        "rollback", "--target", &remote, "--latest", "--yes",
    ]));
    assert_eq!(q(&tgt, "SELECT count(*) FROM t"), "1");

    let schemas = "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgflip\\_backup\\_%'";
    assert_eq!(q(&tgt, schemas), "2");
    refused(&pgflip(&["cleanup", "--target", &remote, "--keep", "0"]));
    assert_eq!(q(&tgt, schemas), "2");
    // A dry run asks nothing and changes nothing.
    ok(&pgflip(&[
        "cleanup",
        "--target",
        &remote,
        "--keep",
        "0",
        "--dry-run",
    ]));
    ok(&pgflip(&[
        "cleanup", "--target", &remote, "--keep", "0", "--yes",
    ]));
    assert_eq!(q(&tgt, schemas), "0");
}

/// Item 9 (and 10's `cleanup` message): flags that would mean nothing are refused, flags that are
/// offered are honoured.
#[test]
fn flags_that_mean_nothing_are_refused_and_offered_ones_honoured() {
    let (src, tgt) = server_pair("flags");
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO t VALUES (1, 'new')");
    let usage = |o: &std::process::Output, needle: &str| {
        assert_eq!(o.status.code(), Some(2), "{}\n{}", stdout(o), stderr(o));
        assert!(stderr(o).contains(needle), "{needle}: {}", stderr(o));
    };
    let before = tgt.dump();
    usage(
        &sync(&src, &tgt, &["t", "--overwrite", "--swap"]),
        "--overwrite",
    );
    usage(
        &sync(&src, &tgt, &["t", "--preserve", "--staging-table"]),
        "--preserve",
    );
    usage(
        &sync(&src, &tgt, &["t", "--swap", "--where", "id > 0"]),
        "--where",
    );
    usage(&sync(&src, &tgt, &["t", "--jobs", "0"]), "at least 1");
    let t = tgt.url();
    usage(
        &pgflip(&["status", "--target", &t, "--dry-run"]),
        "--dry-run does not apply",
    );
    usage(
        &pgflip(&["list", "--target", &t, "--dry-run"]),
        "--dry-run does not apply",
    );
    usage(
        &pgflip(&["completions", "bash", "--dry-run"]),
        "--dry-run does not apply",
    );
    usage(&pgflip(&["demo", "--dry-run"]), "do not apply");
    usage(&pgflip(&["demo", "-q"]), "do not apply");
    let o = pgflip(&["cleanup", "--target", &t]);
    usage(&o, "--keep");
    assert!(stderr(&o).contains("--before"), "{}", stderr(&o));
    assert_eq!(tgt.dump(), before);
    // -q: cleanup prints nothing on success.
    ok(&sync(&src, &tgt, &["t", "--staging-table", "--swap"]));
    let o = ok(&pgflip(&["cleanup", "--target", &t, "--keep", "0", "-q"]));
    assert_eq!(o, "");
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgflip\\_backup\\_%'"
        ),
        "0"
    );
    // status does not call a cleaned generation "kept".
    let s = ok(&pgflip(&["status", "--target", &t]));
    assert!(s.contains("cleaned") && !s.contains("kept in"), "{s}");
}

fn live_changes(db: &TestDb, field: &str) -> String {
    q(
        db,
        &format!(
            "SELECT details -> 'live_changes' -> 0 -> {field} FROM pgflip.generations ORDER BY id DESC LIMIT 1"
        ),
    )
}

/// Item 4: the swap says (and records in the generation) what the live table received since
/// the staging load began; a `--swap` of its own after `--show-diff` refuses when the live
/// table changed since that diff, naming it and the counts, unless `--force`.
#[test]
fn a_swap_says_what_the_live_table_received_and_refuses_after_a_stale_diff() {
    let (src, tgt) = server_pair("drift");
    let ddl = "CREATE TABLE items (id int PRIMARY KEY, v text)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO items SELECT g, 'src' FROM generate_series(1, 100) g");
    tgt.psql("INSERT INTO items SELECT g, 'tgt' FROM generate_series(1, 100) g");

    // Loaded and diffed; then the application writes: 5 inserts, 2 updates, 1 delete.
    let o = ok(&sync(
        &src,
        &tgt,
        &["items", "--staging-table", "--show-diff"],
    ));
    assert!(o.contains("100"), "{o}");
    tgt.psql(
        "INSERT INTO items SELECT g, 'app' FROM generate_series(1001, 1005) g; \
         UPDATE items SET v = 'app' WHERE id IN (1, 2); DELETE FROM items WHERE id = 3",
    );
    let before = tgt.dump();
    for extra in [&["items", "--swap"][..], &["items", "--swap", "--dry-run"]] {
        let o = sync(&src, &tgt, extra);
        assert_eq!(o.status.code(), Some(5), "{}\n{}", stdout(&o), stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("public.items")
                && err.contains("7 rows written (inserted or updated)")
                && err.contains("3 rows gone (updated or deleted)")
                && err.contains("--force"),
            "{err}"
        );
    }
    assert_eq!(tgt.dump(), before, "a refused swap changed the target");
    // --force means something only for a swap of its own.
    let o = sync(
        &src,
        &tgt,
        &["items", "--staging-table", "--swap", "--force"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    let out = ok(&sync(&src, &tgt, &["items", "--swap", "--force"]));
    assert!(
        out.contains("items received 7 rows written (inserted or updated) and 3 rows gone (updated or deleted) since the staging load began"),
        "{out}"
    );
    assert_eq!(live_changes(&tgt, "'since_load' ->> 'written'"), "7");
    assert_eq!(live_changes(&tgt, "'since_load' ->> 'gone'"), "3");
    assert_eq!(live_changes(&tgt, "'since_diff' ->> 'written'"), "7");
    assert_eq!(q(&tgt, "SELECT count(*) FROM items WHERE v = 'app'"), "0");
    // The rows are in the retired table, and a rollback brings them back.
    ok(&pgflip(&["rollback", "--target", &tgt.url(), "--latest"]));
    assert_eq!(q(&tgt, "SELECT count(*) FROM items WHERE v = 'app'"), "7");

    // Diffed and unchanged since: the swap goes through without --force and says so.
    ok(&sync(
        &src,
        &tgt,
        &["items", "--staging-table", "--show-diff"],
    ));
    let out = ok(&sync(&src, &tgt, &["items", "--swap"]));
    assert!(
        out.contains("items received no writes since the staging load began"),
        "{out}"
    );
    assert_eq!(live_changes(&tgt, "'since_load' ->> 'written'"), "0");

    // One command, writes while the staging table loads (paused before its commit): counted
    // and said, in the text and in JSON.
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            sync_env(
                &src,
                &tgt,
                &["items", "--staging-table", "--swap", "--json"],
                &[
                    ("PGFLIP_FAILPOINTS", "sync.before_commit=pause"),
                    ("PGFLIP_FAILPOINT_DIR", &dir_s),
                ],
            )
        });
        let paused = dir.path().join("sync.before_commit.paused");
        wait_file(&paused);
        tgt.psql("INSERT INTO items SELECT g, 'late' FROM generate_series(2001, 2004) g");
        std::fs::remove_file(&paused).unwrap();
        let o = h.join().unwrap();
        let out = ok(&o);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let c = &v["swap"]["live_changes"][0];
        assert_eq!(c["table"], "public.items", "{out}");
        assert_eq!(c["since_load"]["written"], 4, "{out}");
        assert_eq!(c["since_load"]["gone"], 0, "{out}");
    });
    assert_eq!(live_changes(&tgt, "'since_load' ->> 'written'"), "4");
    assert_eq!(q(&tgt, "SELECT count(*) FROM items WHERE v = 'late'"), "0");
}

/// Item 7: a sync of many tables holds at most `--jobs` + 2 connections to each server, on a
/// server that allows only a few more than that; nothing is left loading.
#[test]
fn connections_per_server_stay_within_jobs_whatever_the_number_of_tables() {
    const JOBS: usize = 2;
    const TABLES: usize = 150;
    let srv: &'static pgflip::localpg::LocalServer = Box::leak(Box::new(
        pgflip::localpg::LocalServer::start_with(pgflip::localpg::ServerOptions {
            settings: vec![
                // Both sides' bound (2 x (jobs + 2)), this test's watcher, and a little room
                // for backends still exiting after pgflip closed them.
                ("max_connections".into(), "14".into()),
                ("superuser_reserved_connections".into(), "0".into()),
            ],
        })
        .expect("start a server with few connections"),
    ));
    let src = TestDb::new(srv, "conns_src");
    let tgt = TestDb::new(srv, "conns_tgt");
    let ddl = format!(
        "DO $$ BEGIN FOR i IN 1..{TABLES} LOOP \
           EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', i); END LOOP; END $$"
    );
    src.psql(&ddl);
    tgt.psql(&ddl);
    src.psql(&format!(
        "DO $$ BEGIN FOR i IN 1..{TABLES} LOOP \
           EXECUTE format('INSERT INTO t%s SELECT g, ''s'' FROM generate_series(1, 10) g', i); END LOOP; END $$"
    ));

    // A watcher counts pgflip's backends per database while it runs, and keeps what each of
    // them was doing at the busiest moment, so that a failure says which connection was extra.
    let done = std::sync::atomic::AtomicBool::new(false);
    let (most, out) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut most: std::collections::BTreeMap<String, (usize, Vec<String>)> =
                Default::default();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let rows = srv
                    .psql(
                        "postgres",
                        "SELECT datname, pid, backend_start::time, xact_start::time, state, \
                                coalesce(wait_event, ''), left(query, 70) \
                         FROM pg_stat_activity WHERE application_name LIKE 'pgflip%' \
                         ORDER BY datname, backend_start",
                    )
                    .unwrap_or_default();
                let mut now: std::collections::BTreeMap<String, Vec<String>> = Default::default();
                for l in rows.lines() {
                    if let Some((db, rest)) = l.split_once('|') {
                        now.entry(db.to_string())
                            .or_default()
                            .push(rest.to_string());
                    }
                }
                for (db, backends) in now {
                    let e = most.entry(db).or_default();
                    if backends.len() > e.0 {
                        *e = (backends.len(), backends);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            most
        });
        let jobs = JOBS.to_string();
        let out = sync(
            &src,
            &tgt,
            &["--staging-table", "--show-diff", "--swap", "-j", &jobs],
        );
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (watcher.join().unwrap(), out)
    });
    let text = ok(&out);
    assert!(
        text.contains("Successfully swapped t150_staging to t150"),
        "{text}"
    );
    eprintln!("most pgflip backends seen per database: {most:#?}");
    // pgflip holds at most --jobs + 2. Its connections are pooled for the whole copy, but a
    // backend whose connection pgflip closed at the end of the copies is still counted until
    // it has exited, which on a loaded machine can overlap the swap's: so up to one exiting
    // backend per slot. (Before the pool, each staging step closed its own connection, and 7
    // were seen at once on a loaded machine.) Without the bound this count follows
    // the number of tables (150), and max_connections = 14 fails the run.
    for (db, (n, backends)) in &most {
        assert!(
            *n <= 2 * JOBS + 2,
            "{n} pgflip connections to {db} at once (bound: --jobs + 2, + one exiting per slot): \
             pid | backend_start | xact_start | state | wait | query\n{}",
            backends.join("\n")
        );
    }
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '%staging%'"
        ),
        "0"
    );
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM pgflip.generation_relations"),
        TABLES.to_string()
    );
    assert_eq!(q(&tgt, "SELECT count(*) FROM t77 WHERE v = 's'"), "10");
    // The rollback of all of them, on the same server.
    ok(&pgflip(&["rollback", "--target", &tgt.url(), "--latest"]));
    assert_eq!(q(&tgt, "SELECT count(*) FROM t77"), "0");
    srv.stop().unwrap();
}

/// Item 1, the other direction: green's own rows must have the parent rows that live's foreign
/// keys (which move to green) reference; a swap (and a rollback) that would break one is
/// refused before any lock, named, with the count, instead of failing after its commit.
#[test]
fn a_swap_whose_rows_lack_their_parent_is_refused_before_the_flip() {
    let (src, tgt) = server_pair("outbound");
    let ddl = "CREATE TABLE categories (id int PRIMARY KEY); \
               CREATE TABLE products (id int PRIMARY KEY, category_id int REFERENCES categories)";
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql("INSERT INTO categories VALUES (1), (9); INSERT INTO products VALUES (1, 1), (2, 9), (3, 9), (4, NULL)");
    tgt.psql("INSERT INTO categories VALUES (1), (2); INSERT INTO products VALUES (1, 1), (5, 2)");
    let before = tgt.pg_dump(&["--exclude-schema=pgflip"]);
    let o = sync(&src, &tgt, &["products", "--staging-table", "--swap"]);
    assert_eq!(o.status.code(), Some(2), "{}\n{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("products_category_id_fkey")
            && err.contains("2 row(s) of public.products_staging")
            && err.contains("public.categories"),
        "{err}"
    );
    // Nothing moved: the staging table stays for review, live and its key as they were.
    let o = sync(&src, &tgt, &["products", "--swap", "--dry-run"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    tgt.psql("DROP TABLE products_staging; DELETE FROM pgflip.operations");
    assert_eq!(tgt.pg_dump(&["--exclude-schema=pgflip"]), before);

    // With category 9 on the target the swap goes through; the key stays validated.
    tgt.psql("INSERT INTO categories VALUES (9)");
    ok(&sync(
        &src,
        &tgt,
        &["products", "--staging-table", "--swap"],
    ));
    assert_eq!(fk_validated(&tgt, "products_category_id_fkey"), "t");
    // The retired rows reference category 2; once it is gone, rolling back is refused too.
    tgt.psql("DELETE FROM categories WHERE id = 2");
    let o = pgflip(&["rollback", "--target", &tgt.url(), "--latest"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("products_category_id_fkey") && stderr(&o).contains("1 row(s)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(q(&tgt, "SELECT count(*) FROM products"), "4");
    assert_eq!(fk_validated(&tgt, "products_category_id_fkey"), "t");
    tgt.psql("INSERT INTO categories VALUES (2)");
    ok(&pgflip(&["rollback", "--target", &tgt.url(), "--latest"]));
    assert_eq!(
        q(
            &tgt,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM products"
        ),
        "1,5"
    );
    assert_eq!(fk_validated(&tgt, "products_category_id_fkey"), "t");
}

/// Item 10: a server that is not PostgreSQL (an HTTP server, a listener that closes at once)
/// is named as such, with its host and port; relations are named one way (quoted where SQL
/// needs it) in messages, JSON and run labels.
#[test]
fn a_server_that_is_not_postgres_is_named_and_identifiers_are_quoted_one_way() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    for (answer, what) in [
        (
            &b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..],
            "answers HTTP",
        ),
        (&b"SSH-2.0-OpenSSH_9.2\r\n"[..], "answers SSH"),
        (&b""[..], "closes at once"),
    ] {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        stop.store(false, Ordering::Relaxed);
        let o = std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut c, _)) => {
                            c.set_nonblocking(false).unwrap();
                            c.set_read_timeout(Some(Duration::from_millis(200)))
                                .unwrap();
                            let mut buf = [0u8; 512];
                            let _ = c.read(&mut buf);
                            let _ = c.write_all(answer);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
            let url = format!("postgres://app@127.0.0.1:{port}/app");
            let o = pgflip(&["status", "--target", &url]);
            stop.store(true, Ordering::Relaxed);
            o
        });
        assert_eq!(o.status.code(), Some(3), "{what}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("127.0.0.1:{port}")) && err.contains("not a PostgreSQL server"),
            "{what}: {err}"
        );
        assert!(!err.contains("bytes remaining"), "{what}: {err}");
    }

    // One relation, one name: the sync report, its JSON, the swap and the run label.
    let (src, tgt) = server_pair("quoting");
    let ddl = r#"CREATE TABLE "Line Items" (id int PRIMARY KEY, v text)"#;
    src.psql(ddl);
    tgt.psql(ddl);
    src.psql(r#"INSERT INTO "Line Items" VALUES (1, 'a')"#);
    let out = ok(&sync(
        &src,
        &tgt,
        &["Line Items", "--staging-table", "--swap", "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["tables"][0]["table"], r#"public."Line Items""#, "{out}");
    assert_eq!(
        v["swap"]["swapped"][0]["table"], r#"public."Line Items""#,
        "{out}"
    );
    let labels = q(
        &tgt,
        "SELECT string_agg(command, ' | ' ORDER BY id) FROM pgflip.runs",
    );
    assert!(
        labels.contains(r#"public."Line Items""#) && !labels.contains("public.Line Items"),
        "{labels}"
    );
    let text = ok(&sync(
        &src,
        &tgt,
        &["Line Items", "--staging-table", "--swap"],
    ));
    assert!(
        text.contains(r#"Successfully swapped "Line Items_staging" to "Line Items""#),
        "{text}"
    );
}
