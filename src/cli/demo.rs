//! `pgflip demo`: the README's first command. It starts two throwaway PostgreSQL servers (a
//! source and a target, the same way the tests do), loads a small shop into each (the target a
//! slightly older version of it), and walks through what pgflip does, one act at a time, each
//! explained in a sentence before it is shown.
//!
//! Shaped as a list of acts, one small async function each, called in order from
//! [`Demo::play`]: each later job (sync with a diff, swap, rollback, schema diff) adds its act
//! there without touching the others. The servers belong to the [`Demo`] value, so they are
//! stopped and their directories removed when it is dropped: at the end, on an error, and on
//! Ctrl-C (the command's future is dropped). The local servers' atexit hook and watchdog cover
//! the rest (a broken pipe's `exit`, a SIGKILL).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use pgflip::localpg::LocalServer;
use serde_json::{json, Value};
use tokio_postgres::Client;

use super::exit;
use super::output::{Output, BOLD, CYAN, DIM};

/// Options of `pgflip demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Keep both servers running after the last act (their URLs are printed) until Enter is
    /// pressed, to look around with psql.
    #[arg(long)]
    pub keep: bool,
    /// Do not wait for Enter between acts (the default on a terminal is to wait).
    #[arg(long)]
    pub no_pause: bool,
}

/// The database the demo creates on each server.
const DB: &str = "shop";

/// The sample in the source: related tables with foreign keys, a mixed-case name, an identity
/// column, a serial, a standalone sequence, a view, a check constraint, a comment.
const SOURCE_SQL: &str = r#"
CREATE TABLE customers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);
CREATE TABLE products (
    id    serial PRIMARY KEY,
    sku   text NOT NULL UNIQUE,
    title text NOT NULL,
    price numeric(10,2) NOT NULL CHECK (price >= 0)
);
CREATE SEQUENCE order_number_seq START 1000;
CREATE TABLE "Orders" (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number      bigint NOT NULL DEFAULT nextval('order_number_seq'),
    customer_id bigint NOT NULL REFERENCES customers (id),
    placed_at   timestamptz NOT NULL,
    status      text NOT NULL DEFAULT 'new'
);
ALTER SEQUENCE order_number_seq OWNED BY "Orders".number;
CREATE INDEX orders_customer_idx ON "Orders" (customer_id);
COMMENT ON TABLE "Orders" IS 'One row per checkout.';
CREATE TABLE order_lines (
    order_id   bigint NOT NULL REFERENCES "Orders" (id) ON DELETE CASCADE,
    product_id int NOT NULL REFERENCES products (id),
    quantity   int NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);
CREATE VIEW customer_totals AS
    SELECT c.id, c.name, count(DISTINCT o.id) AS orders,
           coalesce(sum(l.quantity * p.price), 0) AS spent
      FROM customers c
      LEFT JOIN "Orders" o ON o.customer_id = c.id
      LEFT JOIN order_lines l ON l.order_id = o.id
      LEFT JOIN products p ON p.id = l.product_id
     GROUP BY c.id, c.name;

INSERT INTO customers (id, name, email, created_at) OVERRIDING SYSTEM VALUE VALUES
    (1, 'Ada Lovelace', 'ada@example.com', '2026-01-02 09:00+00'),
    (2, 'Grace Hopper', 'grace@example.com', '2026-01-03 10:30+00'),
    (3, 'Edsger Dijkstra', 'edsger@example.com', '2026-01-05 14:00+00'),
    (4, 'Barbara Liskov', 'barbara@example.com', '2026-01-08 08:15+00'),
    (5, 'Donald Knuth', 'don@example.com', '2026-01-13 17:45+00');
SELECT setval(pg_get_serial_sequence('customers', 'id'), 5);
INSERT INTO products (sku, title, price) VALUES
    ('KB-01', 'Keyboard', 49.00),
    ('MS-02', 'Mouse', 19.50),
    ('MN-27', 'Monitor 27"', 289.00),
    ('CB-10', 'USB-C cable', 9.90);
INSERT INTO products (id, sku, title, price) VALUES (6, 'HS-06', 'Headset', 59.00);
SELECT setval(pg_get_serial_sequence('products', 'id'), 6);
INSERT INTO "Orders" (id, customer_id, placed_at, status) OVERRIDING SYSTEM VALUE
    SELECT g, 1 + (g * 7) % 5, timestamptz '2026-02-01 12:00+00' + g * interval '9 hours',
           CASE WHEN g <= 6 THEN 'shipped' ELSE 'new' END
      FROM generate_series(1, 8) g;
SELECT setval(pg_get_serial_sequence('"Orders"', 'id'), 8);
INSERT INTO order_lines (order_id, product_id, quantity)
    SELECT o, p, 1 + (o + p) % 3
      FROM generate_series(1, 8) o, generate_series(1, 4) p
     WHERE (o + p) % 3 <> 0;
"#;

/// The target: the same shop a little behind the source. One customer is missing and one
/// exists only here, a price and an email differ, a column and a check are not there yet.
const TARGET_SQL: &str = r#"
CREATE TABLE customers (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL
);
CREATE TABLE products (
    id    serial PRIMARY KEY,
    sku   text NOT NULL UNIQUE,
    title varchar(100) NOT NULL,
    price numeric(10,2) NOT NULL
);
CREATE SEQUENCE order_number_seq START 1000;
CREATE TABLE "Orders" (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number      bigint NOT NULL DEFAULT nextval('order_number_seq'),
    customer_id bigint NOT NULL REFERENCES customers (id),
    placed_at   timestamptz NOT NULL
);
ALTER SEQUENCE order_number_seq OWNED BY "Orders".number;
CREATE INDEX orders_customer_idx ON "Orders" (customer_id);
CREATE TABLE order_lines (
    order_id   bigint NOT NULL REFERENCES "Orders" (id) ON DELETE CASCADE,
    product_id int NOT NULL REFERENCES products (id),
    quantity   int NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);
CREATE VIEW customer_totals AS
    SELECT c.id, c.name, count(DISTINCT o.id) AS orders,
           coalesce(sum(l.quantity * p.price), 0) AS spent
      FROM customers c
      LEFT JOIN "Orders" o ON o.customer_id = c.id
      LEFT JOIN order_lines l ON l.order_id = o.id
      LEFT JOIN products p ON p.id = l.product_id
     GROUP BY c.id, c.name;

INSERT INTO customers (id, name, email, created_at) OVERRIDING SYSTEM VALUE VALUES
    (1, 'Ada Lovelace', 'ada@old.example.com', '2026-01-02 09:00+00'),
    (2, 'Grace Hopper', 'grace@example.com', '2026-01-03 10:30+00'),
    (3, 'Edsger Dijkstra', 'edsger@example.com', '2026-01-05 14:00+00'),
    (4, 'Barbara Liskov', 'barbara@example.com', '2026-01-08 08:15+00'),
    (6, 'Alan Turing', 'alan@example.com', '2026-01-09 11:00+00');
SELECT setval(pg_get_serial_sequence('customers', 'id'), 6);
INSERT INTO products (sku, title, price) VALUES
    ('KB-01', 'Keyboard', 45.00),
    ('MS-02', 'Mouse', 19.50),
    ('MN-27', 'Monitor 27"', 289.00),
    ('CB-10', 'USB-C cable', 9.90),
    ('FD-05', 'Floppy disk', 1.00);
INSERT INTO "Orders" (id, customer_id, placed_at) OVERRIDING SYSTEM VALUE
    SELECT g, CASE WHEN 1 + (g * 7) % 5 = 5 THEN 6 ELSE 1 + (g * 7) % 5 END,
           timestamptz '2026-02-01 12:00+00' + g * interval '9 hours'
      FROM generate_series(1, 6) g;
SELECT setval(pg_get_serial_sequence('"Orders"', 'id'), 6);
INSERT INTO order_lines (order_id, product_id, quantity)
    SELECT o, p, 1 + (o + p) % 3
      FROM generate_series(1, 6) o, generate_series(1, 4) p
     WHERE (o + p) % 3 <> 0;
"#;

/// Relations of a database with their kind and, for tables, the exact row count: one statement
/// whatever the number of tables (`query_to_xml` runs each count inside the server).
const RELATIONS_SQL: &str = r#"
SELECT n.nspname::text, c.relname::text,
       CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                      WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' END,
       CASE WHEN c.relkind IN ('r', 'p') THEN
            (xpath('/row/n/text()',
                   query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname),
                                false, true, '')))[1]::text::bigint
       END
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_%'
   AND NOT c.relispartition
 ORDER BY 1, 2
"#;

pub async fn run(args: &DemoArgs, out: &Output) -> Result<u8> {
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let pause = !args.no_pause && !out.json && interactive;
    let demo = Demo::start(out, pause).await?;
    demo.play().await?;
    if args.keep {
        demo.keep().await;
    }
    let dirs = demo.dirs();
    drop(demo);
    let left: Vec<&PathBuf> = dirs.iter().filter(|d| d.exists()).collect();
    if out.json {
        out.json_line(&json!({
            "act": "cleanup",
            "removed": left.is_empty(),
            "dirs": dirs,
        }));
    } else {
        out.println("");
        out.println(&format!(
            "Stopped both servers and removed {}.",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }
    anyhow::ensure!(
        left.is_empty(),
        "could not remove the demo servers' directories: {left:?}"
    );
    Ok(exit::OK)
}

/// Two servers, a connection to the demo database on each, and how to narrate.
struct Demo<'a> {
    out: &'a Output,
    pause: bool,
    act_no: std::sync::atomic::AtomicUsize,
    // Connections are declared before the servers so that they close first.
    src: Client,
    tgt: Client,
    source: LocalServer,
    target: LocalServer,
}

impl<'a> Demo<'a> {
    /// Starts both servers, creates the demo database on each and loads the sample.
    async fn start(out: &'a Output, pause: bool) -> Result<Demo<'a>> {
        let intro = "pgflip demo starts two throwaway PostgreSQL servers (initdb + pg_ctl in \
                     temporary directories, the way the tests do): a source, which pgflip only \
                     reads, and a target, which it changes. Both are removed when the demo ends.";
        if !out.json {
            out.println(&out.style(BOLD, "pgflip demo"));
            out.println(&wrap(intro));
            out.println("");
        }
        // initdb and pg_ctl block: run them off the async threads, both servers at once.
        let (source, target) = tokio::join!(
            tokio::task::spawn_blocking(LocalServer::start),
            tokio::task::spawn_blocking(LocalServer::start)
        );
        let source = source.context("starting the source server")??;
        let target = target.context("starting the target server")??;
        let src = create_and_connect(&source).await?;
        let tgt = create_and_connect(&target).await?;
        src.batch_execute(SOURCE_SQL)
            .await
            .context("loading the sample into the source")?;
        tgt.batch_execute(TARGET_SQL)
            .await
            .context("loading the sample into the target")?;
        let demo = Demo {
            out,
            pause,
            act_no: Default::default(),
            src,
            tgt,
            source,
            target,
        };
        let server = |s: &LocalServer| {
            json!({
                "url": s.url(DB),
                "dir": s.socket_dir(),
                "bindir": s.bindir(),
            })
        };
        if out.json {
            out.json_line(&json!({
                "act": "servers",
                "explanation": intro,
                "source": server(&demo.source),
                "target": server(&demo.target),
            }));
        } else {
            for (label, s) in [("source", &demo.source), ("target", &demo.target)] {
                out.println(&format!(
                    "    {label}: {}  {}",
                    out.style(CYAN, &s.url(DB)),
                    out.style(DIM, &format!("(files in {})", s.socket_dir().display()))
                ));
            }
        }
        Ok(demo)
    }

    /// The acts, in order. A later job adds its act here: one line, one function below.
    async fn play(&self) -> Result<()> {
        act_sample(self).await?;
        act_schema_dump(self).await?;
        act_schema_diff(self).await?;
        act_staging_sync(self).await?;
        act_swap(self).await?;
        act_rollback(self).await?;
        act_migrate(self).await?;
        act_green(self).await?;
        act_cleanup(self).await?;
        Ok(())
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![
            self.source.socket_dir().to_path_buf(),
            self.target.socket_dir().to_path_buf(),
        ]
    }

    /// Opens an act: its title and the sentence that explains it, then (on a terminal) waits
    /// for Enter before showing it.
    async fn begin(&self, name: &'static str, title: &str, explanation: &str) -> Act {
        let n = 1 + self
            .act_no
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !self.out.json {
            self.out.println("");
            self.out
                .println(&self.out.style(BOLD, &format!("{n}. {title}")));
            self.out.println(&wrap(explanation));
            if self.pause {
                self.out.println(&self.out.style(DIM, "   (press Enter)"));
                wait_for_enter().await;
            }
            self.out.println("");
        }
        Act {
            n,
            name,
            title: title.to_string(),
            explanation: explanation.to_string(),
        }
    }

    /// Shows an act's result: `text` for people, `result` as one JSON line with --json.
    fn show(&self, act: Act, text: &str, result: Value) {
        if self.out.json {
            self.out.json_line(&json!({
                "act": act.name,
                "step": act.n,
                "title": act.title,
                "explanation": act.explanation,
                "result": result,
            }));
        } else {
            for line in text.lines() {
                self.out.println(format!("    {line}").trim_end());
            }
        }
    }

    /// `--keep`: leave the servers up until Enter (or Ctrl-C, or end of input).
    async fn keep(&self) {
        if self.out.json {
            self.out.json_line(&json!({
                "act": "keep",
                "source_url": self.source.url(DB),
                "target_url": self.target.url(DB),
            }));
        } else {
            self.out.println("");
            self.out
                .println("The servers keep running; connect with psql, for example:");
            for s in [&self.source, &self.target] {
                self.out.println(&format!(
                    "    {} '{}'",
                    s.client_tool("psql").display(),
                    s.url(DB)
                ));
            }
            self.out
                .println("Press Enter to stop them and remove their files.");
        }
        wait_for_enter().await;
    }
}

struct Act {
    n: usize,
    name: &'static str,
    title: String,
    explanation: String,
}

async fn create_and_connect(server: &LocalServer) -> Result<Client> {
    let admin = server.connect("postgres").await?;
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {}",
            pgflip::ident::quote_ident(DB)
        ))
        .await
        .context("creating the demo database")?;
    Ok(server.connect(DB).await?)
}

/// Waits for a line on stdin; returns at once at end of input. The read runs on a blocking
/// thread that the runtime abandons at exit, so Ctrl-C is not held up by it.
async fn wait_for_enter() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)
    })
    .await;
}

/// Wraps narration to 92 columns, indented by three spaces.
fn wrap(text: &str) -> String {
    let mut lines = vec![];
    let mut line = String::from("  ");
    for word in text.split_whitespace() {
        if line.len() + word.len() + 1 > 92 && !line.trim().is_empty() {
            lines.push(std::mem::replace(&mut line, String::from("  ")));
        }
        line.push(' ');
        line.push_str(word);
    }
    lines.push(line);
    lines.join("\n")
}

/// (schema, name, kind, rows)
type Relation = (String, String, String, Option<i64>);

async fn relations(client: &Client) -> Result<Vec<Relation>> {
    let rows = client
        .query(RELATIONS_SQL, &[])
        .await
        .context("listing relations")?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// The acts. Each one: `begin` (title + one sentence), do the work, `show` the result.

/// Act: the sample, side by side.
async fn act_sample(d: &Demo<'_>) -> Result<()> {
    let act = d
        .begin(
            "sample",
            "The sample",
            "Both servers hold a small shop: customers, products, \"Orders\" (a mixed-case name) \
             and order_lines, tied together by foreign keys, with an identity column, a serial, \
             a sequence and a view. The target is a little behind the source: a column, a check \
             and some rows differ.",
        )
        .await;
    let src = relations(&d.src).await?;
    let tgt = relations(&d.tgt).await?;
    let mut names: Vec<(String, String, String)> = src
        .iter()
        .chain(tgt.iter())
        .map(|(s, n, k, _)| (s.clone(), n.clone(), k.clone()))
        .collect();
    names.sort();
    names.dedup();
    let find = |list: &[Relation], s: &str, n: &str| {
        list.iter()
            .find(|r| r.0 == s && r.1 == n)
            .map(|r| r.3.map_or(String::new(), |c| c.to_string()))
            .unwrap_or_else(|| "—".to_string())
    };
    let mut text = format!(
        "{:<32} {:<10} {:>12} {:>12}\n",
        "relation", "kind", "source rows", "target rows"
    );
    let mut rows_json = vec![];
    for (s, n, k) in &names {
        let q = pgflip::ident::qualified(s, n);
        text.push_str(&format!(
            "{:<32} {:<10} {:>12} {:>12}\n",
            q,
            k,
            find(&src, s, n),
            find(&tgt, s, n)
        ));
        let count = |list: &[Relation]| {
            list.iter()
                .find(|r| &r.0 == s && &r.1 == n)
                .and_then(|r| r.3)
        };
        rows_json.push(json!({
            "schema": s, "name": n, "kind": k,
            "source_rows": count(&src), "target_rows": count(&tgt),
        }));
    }
    d.show(act, &text, json!({ "relations": rows_json }));
    Ok(())
}

/// Act: `pgflip schema dump` of the source.
async fn act_schema_dump(d: &Demo<'_>) -> Result<()> {
    let act = d
        .begin(
            "schema-dump",
            "pgflip schema dump --source …",
            "pgflip reads a database's whole schema with a handful of catalog queries and \
             prints it as SQL in dependency order; the same snapshot is what schema diff and the \
             flip work from.",
        )
        .await;
    let sql = schema_dump(&d.src).await?;
    d.show(act, &sql, json!({ "sql": sql }));
    Ok(())
}

/// The source's schema as `pgflip schema dump` prints it.
async fn schema_dump(client: &Client) -> Result<String> {
    Ok(pgflip::ddl::dump_database(client, &pgflip::catalog::Filter::default()).await?)
}

/// Runs this pgflip binary with `args` (`$SOURCE` / `$TARGET` stand for the demo databases) and
/// returns the command line as shown to the reader, its exit code and what it printed. The acts
/// run the real commands so that what the demo shows is exactly what a user gets.
async fn pgflip_command(d: &Demo<'_>, args: &[&str]) -> Result<(String, i32, String)> {
    let (source, target) = (d.source.url(DB), d.target.url(DB));
    let real: Vec<String> = args
        .iter()
        .map(|a| a.replace("$SOURCE", &source).replace("$TARGET", &target))
        .collect();
    let exe = std::env::current_exe().context("finding the pgflip binary")?;
    let output = tokio::process::Command::new(exe)
        .args(&real)
        .arg("--no-env-file")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running pgflip")?;
    // Progress lines (stderr) happen while the command runs, its result (stdout) at the end.
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    let shown = format!("$ pgflip {}", args.join(" "));
    Ok((shown, output.status.code().unwrap_or(-1), text))
}

/// Runs the commands of one act in order and shows each with its output; stops the demo when
/// one exits with a code other than the expected one.
async fn show_commands(d: &Demo<'_>, act: Act, commands: &[(&[&str], i32)]) -> Result<()> {
    let mut text = String::new();
    let mut results = vec![];
    for (args, expected) in commands {
        let (shown, code, output) = pgflip_command(d, args).await?;
        text.push_str(&format!("{shown}\n{}\n", output.trim_end()));
        results.push(json!({ "command": shown, "exit_code": code, "output": output }));
        anyhow::ensure!(
            code == *expected,
            "demo step `{shown}` exited {code} (expected {expected}):\n{output}"
        );
    }
    d.show(act, &text, json!({ "commands": results }));
    Ok(())
}

/// Act: `pgflip schema diff`, dry run, then applied, then checked.
async fn act_schema_diff(d: &Demo<'_>) -> Result<()> {
    let act = d
        .begin(
            "schema-diff",
            "pgflip schema diff --source … --target …",
            "schema diff compares the two live databases and writes the ALTER script that makes \
             the target's schema match the source's, in dependency order, each statement with \
             the lock it takes; --dry-run prints it, --apply runs it, --check exits 0 once \
             nothing differs.",
        )
        .await;
    show_commands(
        d,
        act,
        &[
            (
                &[
                    "schema",
                    "diff",
                    "--source",
                    "$SOURCE",
                    "--target",
                    "$TARGET",
                    "--dry-run",
                ],
                0,
            ),
            (
                &[
                    "schema",
                    "diff",
                    "--source",
                    "$SOURCE",
                    "--target",
                    "$TARGET",
                    "--apply",
                    "--allow-hazards",
                    "rewrites-table,long-lock",
                    "-q",
                ],
                0,
            ),
            (
                &[
                    "schema", "diff", "--source", "$SOURCE", "--target", "$TARGET", "--check",
                ],
                0,
            ),
        ],
    )
    .await
}

/// Act: `pgflip sync --staging-table --show-diff`.
async fn act_staging_sync(d: &Demo<'_>) -> Result<()> {
    let act = d
        .begin(
            "staging-sync",
            "pgflip sync products --staging-table --show-diff",
            "sync copies the source's rows into products_staging beside the live table (the \
             application keeps using products, untouched), then counts the rows that are new, \
             updated and deleted by primary key, in one pass.",
        )
        .await;
    show_commands(
        d,
        act,
        &[(
            &[
                "sync",
                "products",
                "--source",
                "$SOURCE",
                "--target",
                "$TARGET",
                "--staging-table",
                "--show-diff",
                "--diff-sample",
                "3",
            ],
            0,
        )],
    )
    .await
}

/// Act: `pgflip sync --swap` and `pgflip status`.
async fn act_swap(d: &Demo<'_>) -> Result<()> {
    let act = d
        .begin(
            "swap",
            "pgflip sync products --swap",
            "The flip: one short transaction, under a 100 ms lock_timeout with retries, moves \
             the live products into a backup schema, renames products_staging into its place, \
             and re-points what PostgreSQL binds by table OID (the view, the foreign key from \
             order_lines, grants, sequence ownership). The old table is kept for rollback.",
        )
        .await;
    show_commands(
        d,
        act,
        &[
            (
                &[
                    "sync", "products", "--source", "$SOURCE", "--target", "$TARGET", "--swap",
                ],
                0,
            ),
            (&["status", "--target", "$TARGET"], 0),
        ],
    )
    .await
}

/// Act: `pgflip rollback --latest`.
async fn act_rollback(d: &Demo<'_>) -> Result<()> {
    let act = d
        .begin(
            "rollback",
            "pgflip rollback --latest",
            "Rollback is the same flip run the other way: the retired table comes back in \
             milliseconds, with its dependents re-pointed again, and the table it replaces is \
             kept as a generation of its own, so the rollback can be undone too.",
        )
        .await;
    show_commands(
        d,
        act,
        &[
            (&["rollback", "--latest", "--target", "$TARGET"], 0),
            (&["list", "--target", "$TARGET"], 0),
        ],
    )
    .await
}

/// Act: `pgflip migrate prepare / status / swap`, then `rollback`.
async fn act_migrate(d: &Demo<'_>) -> Result<()> {
    let act = d
        .begin(
            "migrate",
            "pgflip migrate prepare --preserved-tables products; migrate swap",
            "migrate replaces every table of the target with the source's version: prepare \
             builds them in a pgflip_shadow_… schema beside the live ones (rows copied under one \
             snapshot of the source, indexes after), while products, a preserved table, keeps \
             the target's rows: a trigger installed before its copy forwards every write the \
             application makes until the swap, which switches all tables in one short \
             transaction. Rollback brings the previous tables back.",
        )
        .await;
    let mut text = String::new();
    let mut results = vec![];
    let mut run = |shown: String, code: i32, output: String, expected: i32| -> Result<()> {
        text.push_str(&format!("{shown}\n{}\n", output.trim_end()));
        results.push(json!({ "command": shown, "exit_code": code, "output": output }));
        anyhow::ensure!(
            code == expected,
            "demo step `{shown}` exited {code} (expected {expected}):\n{output}"
        );
        Ok(())
    };
    let (shown, code, output) = pgflip_command(
        d,
        &[
            "migrate",
            "prepare",
            "--source",
            "$SOURCE",
            "--target",
            "$TARGET",
            "--preserved-tables",
            "products",
        ],
    )
    .await?;
    run(shown, code, output, 0)?;
    let write = "INSERT INTO products (sku, title, price) VALUES ('WC-07', 'Webcam', 39.00)";
    d.tgt
        .batch_execute(write)
        .await
        .context("writing to the preserved table")?;
    run(
        format!("-- meanwhile the application writes: {write}"),
        0,
        String::new(),
        0,
    )?;
    for args in [
        &["migrate", "status", "--target", "$TARGET"][..],
        &["migrate", "swap", "--target", "$TARGET"][..],
        &["rollback", "--latest", "--target", "$TARGET"][..],
    ] {
        let (shown, code, output) = pgflip_command(d, args).await?;
        run(shown, code, output, 0)?;
    }
    d.show(act, &text, json!({ "commands": results }));
    Ok(())
}

/// Act: `pgflip green`: a materialized view rebuilt from a new query beside the live one,
/// compared, promoted and rolled back.
async fn act_green(d: &Demo<'_>) -> Result<()> {
    d.tgt
        .batch_execute(
            "CREATE TABLE demo_sales (id int PRIMARY KEY, region text NOT NULL, amount numeric NOT NULL);
             INSERT INTO demo_sales SELECT g, (ARRAY['north', 'south', 'east', 'west'])[1 + g % 4], g FROM generate_series(1, 400) g;
             CREATE MATERIALIZED VIEW sales_by_region AS SELECT region, sum(amount) AS total FROM demo_sales GROUP BY region;
             CREATE UNIQUE INDEX sales_by_region_key ON sales_by_region (region);
             COMMENT ON MATERIALIZED VIEW sales_by_region IS 'refreshed nightly';
             CREATE VIEW top_regions AS SELECT region, total FROM sales_by_region ORDER BY total DESC;",
        )
        .await
        .context("creating the green act's materialized view")?;
    let act = d
        .begin(
            "green",
            "pgflip green create / status / promote",
            "There is no CREATE OR REPLACE MATERIALIZED VIEW: green builds the new definition in \
             a pgflip_green_ schema beside the live one (same index names, grants, comments), \
             without locking it; status compares the two under one snapshot and says whether \
             green has converged (refreshed after the base tables' last change); promote \
             switches it in with one short flip, re-pointing the view that reads it, and \
             rollback brings the old one back.",
        )
        .await;
    show_commands(
        d,
        act,
        &[
            (
                &[
                    "green",
                    "create",
                    "sales_by_region",
                    "--query",
                    "SELECT region, sum(amount) AS total, count(*) AS sales FROM demo_sales GROUP BY region",
                    "--target",
                    "$TARGET",
                ],
                0,
            ),
            (&["green", "status", "--target", "$TARGET"], 0),
            (&["green", "promote", "sales_by_region", "--target", "$TARGET"], 0),
            (&["rollback", "--latest", "--target", "$TARGET"], 0),
        ],
    )
    .await
}

/// Act: `pgflip cleanup`.
async fn act_cleanup(d: &Demo<'_>) -> Result<()> {
    let act = d
        .begin(
            "generation-cleanup",
            "pgflip cleanup --keep 0",
            "Retired generations stay until you drop them; cleanup removes each one with a \
             single DROP SCHEMA of its backup schema.",
        )
        .await;
    show_commands(
        d,
        act,
        &[
            (&["cleanup", "--keep", "0", "--target", "$TARGET"], 0),
            (&["list", "--target", "$TARGET"], 0),
        ],
    )
    .await
}
