//! Throwaway local PostgreSQL servers, for `pgflip demo`, the tests and the benchmarks.
//!
//! A [`LocalServer`] is `initdb` + `pg_ctl start` in a fresh temporary directory, listening on
//! 127.0.0.1 and a Unix socket inside that directory, with durability turned off. When running as
//! root the server runs as the `postgres` user (PostgreSQL refuses to run as root). The server is
//! stopped and its directory removed when the value is dropped, at process exit, and, through a
//! small watchdog process, even when the owning process is killed with SIGKILL.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Where PostgreSQL's server binaries are: `PGFLIP_PG_BINDIR` (how the tests run on another
/// version), then `PATH`, then `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<PathBuf> {
    let has_server = |dir: &Path| {
        dir.join("initdb").is_file()
            && dir.join("pg_ctl").is_file()
            && dir.join("postgres").is_file()
    };
    if let Some(dir) = std::env::var_os("PGFLIP_PG_BINDIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        // Set but wrong is an error, not a silent fall back to another version.
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(Error::Config(format!(
                "PGFLIP_PG_BINDIR={} holds no initdb, pg_ctl and postgres",
                dir.display()
            )))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_server(&dir) {
                // Resolve symlinks so that psql / pg_dump of the same version sit beside it.
                let real = std::fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf));
                return Ok(real.filter(|d| has_server(d)).unwrap_or(dir));
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).ok_or_else(|| {
        Error::Config(
            "no PostgreSQL server binaries found (initdb, pg_ctl, postgres): install the postgresql \
             package, or put its bin directory on PATH"
                .into(),
        )
    })
}

/// uid and gid to run the server as: ourselves, or `postgres` when we are root.
fn server_user() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd =
        std::fs::read_to_string("/etc/passwd").map_err(|e| Error::io("reading /etc/passwd", e))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .map(Some)
        .ok_or_else(|| {
            Error::Config(
                "running as root, but there is no 'postgres' user to run the server as".into(),
            )
        })
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}

/// Servers to stop at process exit (statics are never dropped).
/// (bindir, server directory, uid/gid to run pg_ctl as)
type LiveServer = (PathBuf, PathBuf, Option<(u32, u32)>);

static LIVE: Mutex<Vec<LiveServer>> = Mutex::new(Vec::new());

extern "C" fn stop_all_at_exit() {
    if let Ok(mut live) = LIVE.lock() {
        for (bindir, dir, user) in live.drain(..) {
            stop_and_remove(&bindir, &dir, user);
        }
    }
}

fn stop_and_remove(bindir: &Path, dir: &Path, user: Option<(u32, u32)>) {
    let mut cmd = Command::new(bindir.join("pg_ctl"));
    cmd.args(["-D"])
        .arg(dir.join("data"))
        .args(["-m", "immediate", "-w", "stop"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let _ = cmd.status();
    let _ = std::fs::remove_dir_all(dir);
}

/// Options for a new server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

/// A running throwaway PostgreSQL server.
pub struct LocalServer {
    bindir: PathBuf,
    dir: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    opts: ServerOptions,
    db_counter: std::sync::atomic::AtomicU32,
}

impl LocalServer {
    /// Starts a new server with default options.
    pub fn start() -> Result<LocalServer> {
        LocalServer::start_with(ServerOptions::default())
    }

    pub fn start_with(opts: ServerOptions) -> Result<LocalServer> {
        LocalServer::start_in(find_bindir()?, opts)
    }

    /// Starts a server from the binaries in `bindir` (a given major version, say), whatever
    /// [`find_bindir`] would pick.
    pub fn start_in(bindir: PathBuf, opts: ServerOptions) -> Result<LocalServer> {
        let user = server_user()?;
        let dir = std::env::temp_dir().join(format!(
            "pgflip-pg-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("chmod", e))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| Error::io("chown to postgres", e))?;
        }
        let mut server = LocalServer {
            bindir,
            dir,
            port: 0,
            user,
            opts,
            db_counter: Default::default(),
        };
        LIVE.lock()
            .expect("server list")
            .push((server.bindir.clone(), server.dir.clone(), user));
        static REGISTER: std::sync::Once = std::sync::Once::new();
        // SAFETY: registering a plain extern "C" fn with atexit.
        REGISTER.call_once(|| unsafe {
            libc::atexit(stop_all_at_exit);
        });
        server.spawn_watchdog();
        server.run(
            Command::new(server.bindir.join("initdb"))
                .arg("-D")
                .arg(server.data_dir())
                .args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-N",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]),
            "initdb",
        )?;
        // A free port can be taken by someone else before the server binds it: retry.
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// A shell loop that stops the server once this process is gone, whatever killed it.
    fn spawn_watchdog(&self) {
        let pg_ctl = self.bindir.join("pg_ctl");
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             if [ -d '{dir}/data' ]; then {su}'{pg_ctl}' -D '{dir}/data' -m immediate stop >/dev/null 2>&1; fi; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.display(),
            pg_ctl = pg_ctl.display(),
            su = if self.user.is_some() { "runuser -u postgres -- " } else { "" },
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so a Ctrl-C to the foreground job does not kill it first.
        cmd.process_group(0);
        let _ = cmd.spawn();
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let mut o = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200 -c max_prepared_transactions=10 \
             -c wal_level=logical -c max_wal_senders=10 -c max_replication_slots=10",
            self.port,
            self.dir.display()
        );
        for (k, v) in &self.opts.settings {
            o.push_str(&format!(" -c {k}={v}"));
        }
        self.run(
            Command::new(self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-w", "-t", "60", "-o", &o, "start"]),
            "pg_ctl start",
        )
    }

    fn run(&self, cmd: &mut Command, what: &str) -> Result<()> {
        cmd.current_dir(&self.dir);
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd
            .output()
            .map_err(|e| Error::io(format!("running {what}"), e))?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            Err(Error::Config(format!(
                "{what} failed: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                log.lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            )))
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Directory of the server's binaries (psql, pg_dump of the same version are there).
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// Connection URL for `database` as the `postgres` superuser over TCP.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{}",
            self.port,
            percent_encoding::utf8_percent_encode(database, percent_encoding::NON_ALPHANUMERIC)
        )
    }

    /// A tokio-postgres config for `database` as `postgres`.
    pub fn config(&self, database: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname(database)
            .application_name("pgflip-test");
        c
    }

    /// Connects to `database`; the connection task is spawned on the current runtime.
    pub async fn connect(&self, database: &str) -> Result<tokio_postgres::Client> {
        let (client, conn) = self
            .config(database)
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| Error::db(format!("connecting to local server database {database}"), e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// A client program (`psql`, `pg_dump`, `pgbench`): from `PGFLIP_PG_CLIENT_BINDIR` (a newer
    /// client reads every older server, and some server packages ship none), else beside the
    /// server, else from `PATH`.
    pub fn client_tool(&self, name: &str) -> PathBuf {
        std::env::var_os("PGFLIP_PG_CLIENT_BINDIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .into_iter()
            .chain([self.bindir.clone()])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from(name))
    }

    /// Runs SQL with `psql` (ON_ERROR_STOP), outside any async runtime.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.client_tool("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql])
            .output()
            .map_err(|e| Error::io("running psql", e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::Config(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// Creates a new, empty database with a unique name built from `hint`; returns its name.
    pub fn create_database(&self, hint: &str) -> Result<String> {
        let n = self
            .db_counter
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let clean: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!("{}_{n}", &clean[..clean.len().min(50)]);
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", crate::ident::quote_ident(&name)),
        )?;
        Ok(name)
    }

    /// Stops the server (fast shutdown), keeping its data.
    pub fn stop(&self) -> Result<()> {
        self.run(
            Command::new(self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "fast", "-w", "stop"]),
            "pg_ctl stop",
        )
    }

    /// Stops the server as a crash would (immediate shutdown: no checkpoint, recovery from
    /// the WAL on the next start), keeping its data.
    pub fn stop_immediate(&self) -> Result<()> {
        self.run(
            Command::new(self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "stop"]),
            "pg_ctl stop -m immediate",
        )
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&self) -> Result<()> {
        self.pg_ctl_start()
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        stop_and_remove(&self.bindir, &self.dir, self.user);
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|(_, d, _)| d != &self.dir);
        }
    }
}
