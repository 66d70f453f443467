//! Safety defects found by trying pgflip as a user would (issue 15): each test here failed on
//! the code before its fix.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

fn pair(hint: &str) -> (TestDb, TestDb) {
    (
        TestDb::new(server(), &format!("{hint}_src")),
        TestDb::new(second_server(), &format!("{hint}_tgt")),
    )
}

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

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "pgflip failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

fn q(db: &TestDb, sql: &str) -> String {
    db.psql(sql).trim().to_string()
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
    let (src, tgt) = pair("orphan");
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
