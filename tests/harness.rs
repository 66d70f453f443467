//! The test harness itself, and identifier quoting checked against the server's own rules.

use crate::util::*;

/// Fault tests stop pgflip at named failpoints; they are compiled into the test build only.
#[test]
fn failpoints_are_compiled_into_the_test_build() {
    const { assert!(pgflip::failpoint::ENABLED) };
}

#[tokio::test]
async fn fresh_databases_are_separate_and_empty() {
    let a = fresh_db("harness_a");
    let b = fresh_db("harness_b");
    assert_ne!(a.name, b.name);
    a.psql("CREATE TABLE t (id int)");
    let c = b.client().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM pg_class WHERE relname = 't'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn quote_ident_agrees_with_the_server() {
    let db = fresh_db("quote");
    let c = db.client().await;
    let long = "x".repeat(63);
    let names = [
        "orders",
        "Orders",
        "order",
        "user",
        "name",
        "line items",
        "a\"b",
        "1abc",
        "café",
        "_x$1",
        "select",
        "ÄÖ",
        long.as_str(),
    ];
    for n in names {
        let server: String = c
            .query_one("SELECT quote_ident($1)", &[&n])
            .await
            .unwrap()
            .get(0);
        assert_eq!(pgflip::ident::quote_ident(n), server, "quoting {n:?}");
        let lit = pgflip::ident::quote_literal(&format!("{n}'\\"));
        let back: String = c
            .query_one(&format!("SELECT {lit}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(back, format!("{n}'\\"));
    }
}

#[test]
fn second_server_is_another_server() {
    assert_ne!(server().port(), second_server().port());
    assert_eq!(
        second_server().psql("postgres", "SELECT 1").unwrap().trim(),
        "1"
    );
}

#[test]
fn dump_sees_schema_and_data_changes() {
    let db = fresh_db("dump");
    db.psql("CREATE TABLE t (id int primary key, v text); INSERT INTO t VALUES (1, 'a')");
    let before = db.dump();
    assert_eq!(
        before,
        db.dump(),
        "two dumps of an unchanged database are equal"
    );
    db.psql("UPDATE t SET v = 'b'");
    assert_ne!(before, db.dump());
    let schema = db.schema_dump();
    db.psql("ALTER TABLE t ADD COLUMN w int");
    assert_ne!(schema, db.schema_dump());
}
