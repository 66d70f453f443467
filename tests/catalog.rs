//! The catalog snapshot: what it holds for a small schema, schema filters, extension objects
//! left out, and a number of queries that does not grow with the number of tables.

use pgflip::catalog::*;

use crate::util::*;

const SMALL: &str = r#"
CREATE EXTENSION pg_trgm;
CREATE SCHEMA app;
CREATE SCHEMA "Other Schema";
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
ALTER TYPE app.mood ADD VALUE 'meh' BEFORE 'ok';
CREATE TABLE app.users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL COLLATE "C",
    mood app.mood DEFAULT 'ok',
    name text,
    name_len int GENERATED ALWAYS AS (length(name)) STORED
);
CREATE TABLE app.orders (
    id serial,
    user_id bigint REFERENCES app.users(id) ON DELETE CASCADE,
    "Line No" int,
    amount numeric(10,2) CHECK (amount > 0),
    PRIMARY KEY (id, "Line No")
);
CREATE INDEX orders_big ON app.orders (user_id) INCLUDE (amount) WHERE amount > 100;
CREATE INDEX users_name_trgm ON app.users USING gin (name gin_trgm_ops);
CREATE TABLE "Other Schema".audit (id int PRIMARY KEY, order_id int, line int);
ALTER TABLE "Other Schema".audit ADD FOREIGN KEY (order_id, line) REFERENCES app.orders(id, "Line No") NOT VALID;
CREATE FUNCTION app.stamp() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER on_insert BEFORE INSERT ON app.orders FOR EACH ROW EXECUTE FUNCTION app.stamp();
CREATE TRIGGER off_one BEFORE UPDATE ON app.orders FOR EACH ROW EXECUTE FUNCTION app.stamp();
ALTER TABLE app.orders DISABLE TRIGGER off_one;
CREATE ROLE cat_reader;
GRANT SELECT ON app.users TO cat_reader;
GRANT UPDATE (name) ON app.users TO cat_reader WITH GRANT OPTION;
CREATE VIEW app.user_orders AS SELECT u.email, o.amount FROM app.users u JOIN app.orders o ON o.user_id = u.id;
COMMENT ON TABLE app.users IS 'people';
"#;

async fn load(db: &TestDb, filter: &Filter) -> Snapshot {
    Snapshot::load(&db.client().await, filter)
        .await
        .unwrap_or_else(|e| panic!("snapshot: {e}"))
}

#[tokio::test]
async fn snapshot_holds_the_schema() {
    let db = fresh_db("cat_small");
    db.psql("DROP ROLE IF EXISTS cat_reader");
    db.psql(SMALL);
    let snap = load(&db, &Filter::default()).await;

    let users = snap.table("app", "users").expect("app.users");
    assert_eq!(users.primary_key.as_deref(), Some(&["id".to_string()][..]));
    assert_eq!(users.comment.as_deref(), Some("people"));
    let id = users.column("id").unwrap();
    assert_eq!(id.type_name, "bigint");
    assert_eq!(id.identity, Some(Identity::Always));
    assert!(id.not_null);
    let email = users.column("email").unwrap();
    assert_eq!(email.type_name, "text");
    assert_eq!(email.collation.as_deref(), Some("\"C\""));
    assert!(email.not_null);
    let mood = users.column("mood").unwrap();
    assert_eq!(mood.type_name, "app.mood");
    assert_eq!(mood.default.as_deref(), Some("'ok'::app.mood"));
    let len = users.column("name_len").unwrap();
    assert_eq!(len.generated.as_deref(), Some("length(name)"));
    assert_eq!(len.default, None);
    // Grants from the ACL, column grants with the grant option.
    let acl = users.acl.as_ref().expect("users has an ACL");
    assert!(acl
        .items
        .iter()
        .any(|i| i.grantee.as_deref() == Some("cat_reader")
            && i.privilege == "SELECT"
            && !i.grantable));
    let name = users.column("name").unwrap();
    assert_eq!(name.acl.len(), 1);
    assert_eq!(name.acl[0].privilege, "UPDATE");
    assert!(name.acl[0].grantable);

    let orders = snap.table("app", "orders").unwrap();
    assert_eq!(
        orders.primary_key,
        Some(vec!["id".to_string(), "Line No".to_string()])
    );
    assert_eq!(
        orders.column("id").unwrap().default.as_deref(),
        Some("nextval('app.orders_id_seq'::regclass)")
    );
    let fk = orders
        .foreign_keys()
        .next()
        .expect("orders has a foreign key");
    let target = fk.references.as_ref().unwrap();
    assert_eq!(
        (target.schema.as_str(), target.table.as_str()),
        ("app", "users")
    );
    assert_eq!(target.columns, vec!["id"]);
    assert_eq!(target.on_delete, "c");
    assert_eq!(fk.columns, vec!["user_id"]);
    let check = orders
        .constraints
        .iter()
        .find(|c| c.kind == ConstraintKind::Check)
        .unwrap();
    assert_eq!(check.definition, "CHECK ((amount > (0)::numeric))");
    let big = orders.index("orders_big").unwrap();
    assert_eq!(
        big.definition,
        "CREATE INDEX orders_big ON app.orders USING btree (user_id) INCLUDE (amount) WHERE (amount > (100)::numeric)"
    );
    assert!(big.partial && !big.unique && big.constraint.is_none());
    assert_eq!(big.columns, vec![Some("user_id".to_string())]);
    let pk_index = orders.index("orders_pkey").unwrap();
    assert_eq!(pk_index.constraint.as_deref(), Some("orders_pkey"));
    assert!(pk_index.primary);
    let on = |n: &str| orders.triggers.iter().find(|t| t.name == n).unwrap();
    assert_eq!(on("on_insert").enabled, "O");
    assert_eq!(on("off_one").enabled, "D");
    assert!(on("on_insert")
        .definition
        .contains("EXECUTE FUNCTION app.stamp()"));

    // Foreign keys in both directions, across schemas, NOT VALID kept.
    let into_orders: Vec<_> = snap.foreign_keys_to("app", "orders").collect();
    assert_eq!(into_orders.len(), 1);
    assert_eq!(into_orders[0].0.schema, "Other Schema");
    assert!(!into_orders[0].1.validated);
    assert!(into_orders[0].1.definition.ends_with("NOT VALID"));
    assert_eq!(
        into_orders[0].1.references.as_ref().unwrap().columns,
        vec!["id", "Line No"]
    );

    // Sequences: serial (OWNED BY) and identity.
    let owned: Vec<_> = snap.owned_sequences("app", "orders").collect();
    assert_eq!(owned.len(), 1);
    assert_eq!(owned[0].name, "orders_id_seq");
    assert!(!owned[0].identity);
    assert_eq!(owned[0].options.data_type, "integer");
    let ident: Vec<_> = snap.owned_sequences("app", "users").collect();
    assert_eq!(ident.len(), 1);
    assert!(ident[0].identity);

    // Enum labels in their sort order, not creation order.
    match &snap.type_def("app", "mood").unwrap().kind {
        TypeKind::Enum { labels } => assert_eq!(labels, &["sad", "meh", "ok", "happy"]),
        other => panic!("app.mood is {other:?}"),
    }
    let view = snap.view("app", "user_orders").unwrap();
    assert!(
        view.definition.contains("app.users u"),
        "{}",
        view.definition
    );
    assert_eq!(snap.dependent_views(users.oid).count(), 1);

    // Extension members are not part of the snapshot; the extension is.
    assert!(snap
        .extensions
        .iter()
        .any(|e| e.name == "pg_trgm" && !e.version.is_empty()));
    assert!(!snap
        .functions
        .iter()
        .any(|f| f.name.contains("trgm") || f.name == "similarity"));
    assert!(!snap.types.iter().any(|t| t.name == "gtrgm"));
    assert!(snap.functions.iter().any(|f| f.name == "stamp"));
    assert!(snap.roles.iter().any(|r| r == "cat_reader"));
    // Spread over two connections: the same snapshot.
    let (c1, c2) = (db.client().await, db.client().await);
    let mut two = Snapshot::load_on(&[&c1, &c2], &Filter::default())
        .await
        .unwrap();
    assert_eq!(two.queries, Snapshot::QUERY_COUNT + 2);
    two.queries = snap.queries;
    assert_eq!(two, snap);
    // The caller's search_path is left as it was.
    let c = db.client().await;
    c.batch_execute("SET search_path = app, public")
        .await
        .unwrap();
    Snapshot::load(&c, &Filter::default()).await.unwrap();
    let sp: String = c.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(sp, "app, public");
    db.psql("DROP OWNED BY cat_reader; DROP ROLE cat_reader");
}

#[tokio::test]
async fn filters_choose_schemas() {
    let db = fresh_db("cat_filter");
    db.psql(
        "CREATE SCHEMA a; CREATE SCHEMA b; CREATE SCHEMA pgflip; CREATE SCHEMA pgflip_backup_x; \
         CREATE TABLE a.t (id int); CREATE TABLE b.t (id int); CREATE TABLE public.t (id int); \
         CREATE TABLE pgflip.state (id int); CREATE TABLE pgflip_backup_x.t (id int);",
    );
    let names = |s: &Snapshot| {
        let mut v: Vec<String> = s
            .tables
            .iter()
            .map(|t| format!("{}.{}", t.schema, t.name))
            .collect();
        v.sort();
        v
    };
    let all = load(&db, &Filter::default()).await;
    assert_eq!(names(&all), ["a.t", "b.t", "public.t"]);
    assert!(!all
        .schemas
        .iter()
        .any(|s| s.name.starts_with("pg") || s.name == "information_schema"));
    let only_a = load(
        &db,
        &Filter {
            include_schemas: vec!["a".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&only_a), ["a.t"]);
    assert_eq!(only_a.schemas.len(), 1);
    let not_a = load(
        &db,
        &Filter {
            exclude_schemas: vec!["a".into(), "public".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(names(&not_a), ["b.t"]);
}

async fn make_tables(db: &TestDb, n: usize) {
    db.psql(&format!(
        "DO $$ BEGIN FOR i IN 1..{n} LOOP \
           EXECUTE format('CREATE TABLE t%s (id serial PRIMARY KEY, a int, b text, c timestamptz DEFAULT now())', i); \
           EXECUTE format('CREATE INDEX ON t%s (a)', i); \
         END LOOP; END $$"
    ));
}

/// Counts the statements the server ran for this database, with pg_stat_statements on a
/// server of its own: an independent check of [`Snapshot::QUERY_COUNT`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_count_does_not_grow_with_tables() {
    let srv: &'static pgflip::localpg::LocalServer = Box::leak(Box::new(
        pgflip::localpg::LocalServer::start_with(pgflip::localpg::ServerOptions {
            settings: vec![
                (
                    "shared_preload_libraries".into(),
                    "pg_stat_statements".into(),
                ),
                ("pg_stat_statements.track_utility".into(), "on".into()),
            ],
        })
        .expect("server with pg_stat_statements"),
    ));
    let mut counts = Vec::new();
    for n in [5, 200] {
        let db = TestDb::new(srv, &format!("cat_count_{n}"));
        make_tables(&db, n).await;
        db.psql("CREATE EXTENSION pg_stat_statements");
        let c = db.client().await;
        c.batch_execute("SELECT pg_stat_statements_reset()")
            .await
            .unwrap();
        let snap = Snapshot::load(&c, &Filter::default()).await.unwrap();
        assert_eq!(snap.tables.len(), n);
        assert!(
            !snap
                .functions
                .iter()
                .any(|f| f.name.starts_with("pg_stat_statements")),
            "extension functions are left out"
        );
        let ran: i64 = c
            .query_one(
                "SELECT COALESCE(sum(calls), 0)::int8 FROM pg_stat_statements s \
                 JOIN pg_database d ON d.oid = s.dbid \
                 WHERE d.datname = current_database() AND s.query NOT LIKE '%pg_stat_statements%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(snap.queries, Snapshot::QUERY_COUNT);
        counts.push(ran);
    }
    assert_eq!(counts[0], counts[1], "queries for 5 and for 200 tables");
    assert_eq!(counts[0] as usize, Snapshot::QUERY_COUNT);
    srv.stop().unwrap();
}
