//! `schema dump` round trips: dump a database, apply the dump to an empty database, and the two
//! must be the same for `pg_dump --schema-only`, and dumping the copy must give the same bytes.
//! Over a schema with every object kind and awkward names, then over every loadable schema of
//! the shared schema-diff fixtures.

use std::path::{Path, PathBuf};
use std::process::Command;

use pgflip::catalog::Filter;

use crate::util::*;

/// Runs a SQL file with psql (stop on the first error); the error text on failure.
fn psql_file(db: &TestDb, path: &Path) -> Result<(), String> {
    let out = Command::new(db.srv.client_tool("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &db.srv.port().to_string(), "-d", &db.name, "-f"])
        .arg(path)
        .env("PGOPTIONS", "-c client_min_messages=error")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn psql_text(db: &TestDb, sql: &str) -> Result<(), String> {
    let f = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::fs::write(f.path(), sql).map_err(|e| e.to_string())?;
    psql_file(db, f.path())
}

/// First differing line of two texts, for messages.
fn first_difference(a: &str, b: &str) -> String {
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("line {}: {x:?} vs {y:?}", i + 1);
        }
    }
    format!(
        "one is a prefix of the other ({} vs {} lines)",
        a.lines().count(),
        b.lines().count()
    )
}

/// Dumps `src` with pgflip, applies the dump to a new database, and checks both equalities.
/// Returns the dump.
async fn round_trip(src: &TestDb) -> Result<String, String> {
    let copy = fresh_db("rt_copy");
    let result = round_trip_into(src, &copy).await;
    drop_db(&copy);
    result
}

fn drop_db(db: &TestDb) {
    let _ = db.srv.psql(
        "postgres",
        &format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            pgflip::ident::quote_ident(&db.name)
        ),
    );
}

async fn round_trip_into(src: &TestDb, copy: &TestDb) -> Result<String, String> {
    let dump1 = pgflip::ddl::dump_database(&src.client().await, &Filter::default())
        .await
        .map_err(|e| format!("dump: {e}"))?;
    psql_text(copy, &dump1).map_err(|e| format!("applying the dump: {e}"))?;
    let (a, b) = (src.schema_dump(), copy.schema_dump());
    if a != b {
        let base = std::env::temp_dir().join(&src.name);
        let _ = std::fs::write(base.with_extension("source.sql"), &a);
        let _ = std::fs::write(base.with_extension("copy.sql"), &b);
        let _ = std::fs::write(base.with_extension("pgflip.sql"), &dump1);
        return Err(format!(
            "pg_dump --schema-only differs: {}",
            first_difference(&a, &b)
        ));
    }
    let dump2 = pgflip::ddl::dump_database(&copy.client().await, &Filter::default())
        .await
        .map_err(|e| format!("dump of the copy: {e}"))?;
    if dump1 != dump2 {
        return Err(format!(
            "dump of the copy differs: {}",
            first_difference(&dump1, &dump2)
        ));
    }
    Ok(dump1)
}

fn ensure_roles(roles: &[&str]) {
    for r in roles {
        let unquoted;
        let r: &str = if r.len() > 1 && r.starts_with('"') && r.ends_with('"') {
            unquoted = r[1..r.len() - 1].replace("\"\"", "\"");
            &unquoted
        } else {
            r
        };
        let lit = pgflip::ident::quote_literal(r);
        let id = pgflip::ident::quote_ident(r);
        server()
            .psql(
                "postgres",
                &format!(
                    "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit}) THEN \
                     CREATE ROLE {id}; END IF; EXCEPTION WHEN unique_violation OR duplicate_object \
                     THEN NULL; END $$"
                ),
            )
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Every object kind the snapshot covers, with names chosen to break naive quoting.
const EVERYTHING: &str = r#"
CREATE EXTENSION citext;
CREATE EXTENSION btree_gist;
CREATE SCHEMA "Sales Dept";
CREATE SCHEMA "user";
COMMENT ON SCHEMA "Sales Dept" IS 'where the money is';
GRANT USAGE ON SCHEMA "Sales Dept" TO "rt app";
CREATE TYPE "Sales Dept"."Status" AS ENUM ('new', 'paid', 'shipped', 'it''s "done"');
COMMENT ON TYPE "Sales Dept"."Status" IS 'order status';
CREATE DOMAIN public.positive_int AS integer DEFAULT 1 NOT NULL CONSTRAINT "positive!" CHECK (VALUE > 0);
ALTER DOMAIN public.positive_int ADD CONSTRAINT small CHECK (VALUE < 1000000) NOT VALID;
CREATE TYPE public.address AS (street text, "zip code" varchar(10) COLLATE "C");
CREATE TYPE public.floatrange AS RANGE (subtype = float8, subtype_diff = float8mi);
CREATE SEQUENCE "user"."select" AS integer START WITH 100 INCREMENT BY 5 MINVALUE 10 MAXVALUE 100000 CACHE 3 CYCLE;
GRANT USAGE, SELECT ON SEQUENCE "user"."select" TO "rt app";
CREATE TABLE "Sales Dept"."Customers" (
    id bigint GENERATED ALWAYS AS IDENTITY (START WITH 7 INCREMENT BY 2) PRIMARY KEY,
    "e-mail" citext NOT NULL UNIQUE,
    "order" integer DEFAULT nextval('"user"."select"'),
    first text, last text,
    full_name text GENERATED ALWAYS AS (first || ' ' || last) STORED,
    addr public.address,
    qty public.positive_int,
    status "Sales Dept"."Status" DEFAULT 'new',
    "Ünïcödé ☃" text COLLATE "C",
    CONSTRAINT "name ""quoted"" check" CHECK (length(first) < 100)
) WITH (fillfactor = 80);
COMMENT ON TABLE "Sales Dept"."Customers" IS 'people who pay';
COMMENT ON COLUMN "Sales Dept"."Customers"."e-mail" IS 'login';
GRANT SELECT, INSERT ON "Sales Dept"."Customers" TO "rt app";
GRANT UPDATE ("e-mail", first) ON "Sales Dept"."Customers" TO "rt app" WITH GRANT OPTION;
ALTER TABLE "Sales Dept"."Customers" OWNER TO "rt owner";
CREATE TABLE public."order" (
    id serial PRIMARY KEY,
    customer_id bigint NOT NULL,
    total numeric(12,2) CHECK (total >= 0),
    during tstzrange,
    room int,
    note text,
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" int
);
ALTER TABLE public."order" ADD CONSTRAINT order_customer_fk FOREIGN KEY (customer_id)
    REFERENCES "Sales Dept"."Customers"(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE public."order" ADD CONSTRAINT no_overlap EXCLUDE USING gist (room WITH =, during WITH &&);
ALTER TABLE public."order" ADD CONSTRAINT note_len CHECK (length(note) < 500) NOT VALID;
ALTER TABLE public."order" ADD CONSTRAINT "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" UNIQUE ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa") DEFERRABLE;
CREATE INDEX order_partial ON public."order" (customer_id) WHERE total > 100;
CREATE INDEX order_expr ON public."order" (lower(note)) INCLUDE (total);
CREATE UNIQUE INDEX "Order Hash" ON public."order" USING btree (id DESC NULLS LAST);
CREATE INDEX order_note_pattern ON public."order" (note text_pattern_ops, id);
COMMENT ON INDEX public.order_expr IS 'lower-case notes';
COMMENT ON CONSTRAINT order_customer_fk ON public."order" IS 'who ordered';
ALTER TABLE public."order" REPLICA IDENTITY USING INDEX "Order Hash";
CREATE UNLOGGED TABLE public.scratch (k text PRIMARY KEY, v jsonb);
ALTER TABLE public.scratch REPLICA IDENTITY FULL;
CREATE TABLE public.measurements (
    id bigint GENERATED BY DEFAULT AS IDENTITY,
    at date NOT NULL,
    value double precision DEFAULT 0,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE public.measurements_2024 PARTITION OF public.measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE public.measurements_rest PARTITION OF public.measurements DEFAULT;
ALTER TABLE public.measurements_rest ALTER COLUMN value SET DEFAULT 42;
CREATE INDEX measurements_at ON public.measurements (at);
CREATE TABLE public.base (id int, created timestamptz DEFAULT now(), CHECK (id > 0));
CREATE TABLE public.child (extra text) INHERITS (public.base);
CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.note := coalesce(NEW.note, 'touched'); RETURN NEW; END $$;
CREATE FUNCTION "user"."Add"(a integer, b integer DEFAULT 1) RETURNS integer
    LANGUAGE sql IMMUTABLE AS 'SELECT a + b';
REVOKE ALL ON FUNCTION "user"."Add"(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "user"."Add"(integer, integer) TO "rt app";
COMMENT ON FUNCTION "user"."Add"(integer, integer) IS 'adds';
CREATE PROCEDURE public.reset_scratch() LANGUAGE sql AS 'DELETE FROM public.scratch';
CREATE TRIGGER order_touch BEFORE INSERT OR UPDATE ON public."order" FOR EACH ROW EXECUTE FUNCTION public.touch();
CREATE TRIGGER "order off" BEFORE DELETE ON public."order" FOR EACH ROW EXECUTE FUNCTION public.touch();
ALTER TABLE public."order" DISABLE TRIGGER "order off";
COMMENT ON TRIGGER order_touch ON public."order" IS 'fills notes';
CREATE VIEW "Sales Dept".big_orders AS SELECT o.id, o.total, c."e-mail" FROM public."order" o JOIN "Sales Dept"."Customers" c ON c.id = o.customer_id WHERE o.total > 100;
CREATE VIEW "user".biggest AS SELECT * FROM "Sales Dept".big_orders WHERE total > 1000 WITH LOCAL CHECK OPTION;
GRANT SELECT ON "user".biggest TO "rt app";
COMMENT ON VIEW "user".biggest IS 'views over views';
CREATE MATERIALIZED VIEW public.order_totals AS SELECT customer_id, sum(total) AS total FROM public."order" GROUP BY customer_id;
CREATE UNIQUE INDEX order_totals_customer ON public.order_totals (customer_id);
COMMENT ON MATERIALIZED VIEW public.order_totals IS 'per customer';
ALTER TABLE public."order" ENABLE ROW LEVEL SECURITY;
ALTER TABLE public."order" FORCE ROW LEVEL SECURITY;
CREATE POLICY "own orders" ON public."order" FOR SELECT TO "rt app" USING (customer_id > 0);
CREATE POLICY restrictive_one ON public."order" AS RESTRICTIVE FOR UPDATE USING (true) WITH CHECK (total < 1e6);
COMMENT ON POLICY "own orders" ON public."order" IS 'rls';
CREATE PUBLICATION "rt pub" FOR TABLE public."order", "Sales Dept"."Customers" WITH (publish = 'insert, update');
COMMENT ON PUBLICATION "rt pub" IS 'to the warehouse';
GRANT SELECT ON public.scratch TO "rt app" WITH GRANT OPTION;
SET SESSION AUTHORIZATION "rt app";
GRANT SELECT ON public.scratch TO "rt owner";
RESET SESSION AUTHORIZATION;
CREATE COLLATION public."natural ci" (provider = icu, locale = 'en-u-kn-true', deterministic = false);
CREATE TABLE "user"."Bücher ☃" (titel text COLLATE public."natural ci" PRIMARY KEY, "select" int);
COMMENT ON COLUMN "user".biggest.total IS 'a view column';
"#;

#[tokio::test]
async fn every_object_kind_round_trips() {
    ensure_roles(&["rt app", "rt owner"]);
    let src = fresh_db("rt_everything");
    src.psql(EVERYTHING);
    let dump = round_trip(&src).await.unwrap_or_else(|e| panic!("{e}"));
    // The order follows dependencies: a few spot checks.
    let pos = |needle: &str| {
        dump.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from the dump:\n{dump}"))
    };
    assert!(pos("CREATE SCHEMA \"Sales Dept\"") < pos("CREATE TABLE \"Sales Dept\".\"Customers\""));
    assert!(
        pos("CREATE EXTENSION IF NOT EXISTS citext")
            < pos("CREATE TABLE \"Sales Dept\".\"Customers\"")
    );
    assert!(pos("CREATE VIEW \"Sales Dept\".big_orders") < pos("CREATE VIEW \"user\".biggest"));
    assert!(pos("CREATE SEQUENCE public.order_id_seq") < pos("CREATE TABLE public.\"order\""));
    assert!(
        pos("CREATE TABLE public.\"order\"") < pos("ALTER SEQUENCE public.order_id_seq OWNED BY")
    );
    assert!(
        pos("CREATE TABLE public.measurements_2024") < pos("CREATE INDEX measurements_at ON ONLY")
    );
    assert!(
        !dump.contains("CREATE SEQUENCE \"Sales Dept\".\"Customers_id_seq\""),
        "identity sequences come with their column"
    );
    assert!(
        !dump.contains("CREATE INDEX order_totals_customer")
            || dump.contains("CREATE UNIQUE INDEX order_totals_customer")
    );
    // A grant made by a grantee with the grant option is replayed as that grantee.
    assert!(dump.contains(
        "SET SESSION AUTHORIZATION \"rt app\";\nGRANT SELECT ON TABLE public.scratch TO \"rt owner\";"
    ));
    assert!(
        pos("CREATE COLLATION public.\"natural ci\"") < pos("CREATE TABLE \"user\".\"Bücher ☃\"")
    );
    // Objects of the extensions are not dumped, the extensions are.
    assert!(!dump.contains("FUNCTION public.citext"));
}

#[tokio::test]
async fn schema_dump_command_writes_the_same_dump() {
    ensure_roles(&["rt app", "rt owner"]);
    let src = fresh_db("rt_cli");
    src.psql(
        "CREATE SCHEMA a; CREATE SCHEMA b; CREATE TABLE a.t (id int PRIMARY KEY); \
         CREATE TABLE b.u (id int REFERENCES a.t); CREATE VIEW b.v AS SELECT * FROM b.u;",
    );
    let lib = pgflip::ddl::dump_database(&src.client().await, &Filter::default())
        .await
        .unwrap();
    let out = pgflip(&["schema", "dump", "--source", &src.url()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), lib);

    // --schema / --exclude-schema, and --output.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.sql");
    let out = pgflip(&[
        "schema",
        "dump",
        "--source",
        &src.url(),
        "--schema",
        "a",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    let only_a = std::fs::read_to_string(&file).unwrap();
    assert!(only_a.contains("CREATE TABLE a.t"));
    assert!(!only_a.contains("b.u"));
    let out = pgflip(&[
        "schema",
        "dump",
        "--source",
        &src.url(),
        "--exclude-schema",
        "a",
    ]);
    assert!(out.status.success());
    assert!(!stdout(&out).contains("CREATE TABLE a.t"));
    assert!(stdout(&out).contains("CREATE TABLE b.u"));

    // --json gives the snapshot.
    let out = pgflip(&["--json", "schema", "dump", "--source", &src.url()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["tables"].as_array().unwrap().len(), 2);

    // A schema that does not exist is an input error naming it.
    let out = pgflip(&[
        "schema",
        "dump",
        "--source",
        &src.url(),
        "--schema",
        "No Such",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("\"No Such\""), "{}", stderr(&out));
    // An unreachable server is a connection error.
    let out = pgflip(&[
        "schema",
        "dump",
        "--source",
        "postgresql://postgres@127.0.0.1:1/x",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/schemadiff")
}

/// Every `*.sql` schema of the fixtures: (case directory, file).
fn fixture_files(root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some("a.sql" | "b.sql" | "old.sql" | "new.sql")
            ) {
                out.push((dir.clone(), p));
            }
        }
    }
    out.sort();
    out
}

/// One fixture file: `Err(None)` when it does not load on this server.
async fn fixture_round_trip(file: &Path) -> Result<(), Option<String>> {
    let src = fresh_db("fx");
    let result = match psql_file(&src, file) {
        Err(e) => {
            eprintln!(
                "  did not load: {}: {}",
                file.display(),
                e.lines().next().unwrap_or("")
            );
            Err(None)
        }
        Ok(()) => round_trip(&src).await.map(|_| ()).map_err(Some),
    };
    drop_db(&src);
    result
}

#[test]
fn shared_fixture_schemas_round_trip() {
    let root = fixtures_dir();
    if !root.is_dir() {
        eprintln!(
            "note: {} is absent; skipping the fixture round trips",
            root.display()
        );
        return;
    }
    let mut files = fixture_files(&root);
    // PGFLIP_FIXTURE_FILTER=<part of a path>: only those (to look into one case quickly).
    if let Ok(f) = std::env::var("PGFLIP_FIXTURE_FILTER") {
        files.retain(|(_, p)| p.to_string_lossy().contains(&f));
    }
    let mut roles = vec!["schemainspect_test_role".to_string()];
    for (dir, _) in &files {
        let Ok(meta) = std::fs::read_to_string(dir.join("meta.json")) else {
            continue;
        };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&meta) {
            for r in v["roles"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str() {
                    roles.push(r.to_string());
                }
            }
        }
    }
    roles.sort();
    roles.dedup();
    ensure_roles(&roles.iter().map(|s| s.as_str()).collect::<Vec<_>>());

    // A few workers: most of the time goes to CREATE DATABASE, psql and pg_dump.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((_, file)) = files.get(i) else { break };
                    let r = rt.block_on(fixture_round_trip(file));
                    let label = file
                        .strip_prefix(&root)
                        .unwrap_or(file)
                        .display()
                        .to_string();
                    results.lock().unwrap().push((label, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let loaded = results.iter().filter(|r| !matches!(r.1, Err(None))).count();
    let ok = results.iter().filter(|r| r.1.is_ok()).count();
    println!(
        "round-trip: {} fixture files, {loaded} loaded, {ok} round-tripped",
        files.len()
    );
    let mut failures = 0;
    for (label, r) in &results {
        match r {
            Err(None) => println!("  did not load: {label}"),
            Err(Some(e)) => {
                failures += 1;
                println!("  FAILED: {label}: {e}");
            }
            Ok(()) => {}
        }
    }
    assert_eq!(failures, 0, "{failures} fixture schemas did not round-trip");
}
