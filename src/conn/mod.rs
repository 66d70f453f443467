//! Endpoints: where the source and the target are, and how to connect to them.
//!
//! Every command finds its databases the same way. Each libpq keyword (host, hostaddr, port,
//! dbname, user, password, sslmode, sslrootcert, connect_timeout, ...) is taken from the first of
//! these layers that sets it:
//!
//! 1. **flags**: the split flags (`--source-host`, `--source-port`, `--source-database`,
//!    `--source-username`, `--source-password`), then what the `--source` URL / key=value string
//!    sets;
//! 2. **environment**: `SOURCE_DB_HOST`, `SOURCE_DB_PORT`, `SOURCE_DB_NAME`, `SOURCE_DB_USER`,
//!    `SOURCE_DB_PASSWORD`, then what `SOURCE_DATABASE_URL` sets (`TARGET_…` for the target);
//! 3. **.env file**: the same variables read from the file given with `--env FILE`, or else from
//!    `./.env` when present (`--no-env-file` skips it). The file is a layer of its own, never
//!    copied into the process environment, so a real environment variable always beats it;
//! 4. **libpq's variables**: `PGHOST`, `PGHOSTADDR`, `PGPORT`, `PGDATABASE`, `PGUSER`,
//!    `PGPASSWORD`, `PGPASSFILE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGCONNECT_TIMEOUT`, `PGAPPNAME`,
//!    `PGOPTIONS`, `PGTARGETSESSIONATTRS`, `PGCHANNELBINDING` (from the environment, then from
//!    the .env file), shared by both sides as in every libpq program;
//! 5. **defaults**, as libpq's: user = the operating-system user, database = the user name, host =
//!    the local socket directory (`/var/run/postgresql`, `/tmp`) when a server listens there,
//!    else `localhost`; port 5432; `sslmode=prefer`; `sslrootcert=~/.postgresql/root.crt` when
//!    that file exists (else the built-in Mozilla roots); plus pgflip's `application_name=pgflip` and
//!    a 10 s connect timeout.
//!
//! Merging per keyword rather than per layer is what libpq does with a URL and `PGPORT`, and what
//! lets `--target-database app2` reuse everything else of `TARGET_DATABASE_URL`. When no layer
//! gives a password, the password file is consulted (`passfile=`, `PGPASSFILE`, `~/.pgpass`;
//! see the `pgpass` submodule). `SOURCE_DB_SCHEMA` / `TARGET_DB_SCHEMA` (environment, then
//! .env) become [`Endpoint::schema`].
//!
//! Passwords never leave this module in text: [`Endpoint::describe`] says `host:port, database
//! name`, `Debug` prints the same, connection errors are rewritten into short sentences and then
//! scrubbed of the password in case the server or the driver echoed it, and [`redact`] hides it
//! in any connection string a caller wants to echo.

pub mod cancel;
mod env;
mod params;
mod pgpass;
mod pool;
mod resolve;
mod same;
mod tls;

use std::net::IpAddr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::Client;

use crate::error::{Error, Result, Side};

pub use env::Env;
pub use params::redact;
pub use pool::{Pool, Pooled};
pub use same::refuse_same_database;
pub use tls::{SslMode, TlsSettings};

/// The connect timeout when nothing sets `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the user gave on the command line for one side (all optional).
#[derive(Clone, Default)]
pub struct EndpointArgs {
    pub url: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub database: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for EndpointArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointArgs")
            .field("url", &self.url.as_deref().map(redact))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .finish()
    }
}

/// A resolved database endpoint.
#[derive(Clone)]
pub struct Endpoint {
    pub side: Side,
    /// Driver configuration, with `application_name`, connect timeout and the TLS negotiation
    /// mode set. It holds the password: never print it (its `Debug` redacts, ours too).
    pub config: tokio_postgres::Config,
    /// `SOURCE_DB_SCHEMA` / `TARGET_DB_SCHEMA`, when set.
    pub schema: Option<String>,
    pub tls: TlsSettings,
    /// `None`: wait as long as the operating system does (`connect_timeout=0`).
    pub connect_timeout: Option<Duration>,
    /// Things the user should know about how the endpoint was found (an ignored password file,
    /// say). Never contains a password; the binary logs them.
    pub warnings: Vec<String>,
    password_origin: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({}: {})", self.side, self.describe())
    }
}

impl Endpoint {
    /// Resolves one side from flags and the process environment (no .env file; the binary uses
    /// [`Endpoint::resolve_with`] and [`Env::load`] for that).
    pub fn resolve(side: Side, args: &EndpointArgs) -> Result<Endpoint> {
        Endpoint::resolve_with(side, args, &Env::process())
    }

    /// Resolves one side from flags and an explicit environment (see the module comment for
    /// the precedence).
    pub fn resolve_with(side: Side, args: &EndpointArgs, env: &Env) -> Result<Endpoint> {
        resolve::resolve(side, args, env)
    }

    /// Whether the flags, the side's environment variables or the .env file name this side
    /// (libpq's shared `PG*` variables and defaults do not: see [`Endpoint::resolve_with`]).
    /// Commands with both a source and a target need both named.
    pub fn is_named(side: Side, args: &EndpointArgs, env: &Env) -> bool {
        resolve::is_named(side, args, env)
    }

    /// `host:port, database name` — never the password.
    pub fn describe(&self) -> String {
        let host = self.host();
        let host = if host.contains(':') && !host.starts_with('/') {
            format!("[{host}]")
        } else {
            host
        };
        format!("{host}:{}, database {}", self.port(), self.database())
    }

    /// The same server and credentials, another database (e.g. `postgres`, to create one).
    pub fn with_database(&self, database: &str) -> Endpoint {
        let mut e = self.clone();
        e.config.dbname(database);
        e
    }

    /// The first host: a name, an address, or a socket directory.
    pub fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(s)) => s.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => self
                .config
                .get_hostaddrs()
                .first()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "localhost".into()),
        }
    }

    pub fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    pub fn database(&self) -> &str {
        self.config.get_dbname().unwrap_or("")
    }

    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("")
    }

    /// Whether the server is on this machine: every host is a Unix socket, `localhost`, or a
    /// loopback address (127.0.0.0/8, ::1). `hostaddr`, when given, is what decides: that is
    /// where the connection really goes.
    pub fn is_local(&self) -> bool {
        let addrs = self.config.get_hostaddrs();
        if !addrs.is_empty() {
            return addrs.iter().all(IpAddr::is_loopback);
        }
        let hosts = self.config.get_hosts();
        !hosts.is_empty()
            && hosts.iter().all(|h| match h {
                Host::Unix(_) => true,
                Host::Tcp(name) => {
                    name.eq_ignore_ascii_case("localhost")
                        || name
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .parse::<IpAddr>()
                            .is_ok_and(|a| a.is_loopback())
                }
            })
    }

    /// Variables that point a libpq program (`psql`, `pg_dump`) at this endpoint, password
    /// included: pass them in the child's environment, never on its command line.
    pub fn libpq_env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            (
                "PGHOST".to_string(),
                self.config
                    .get_hosts()
                    .iter()
                    .map(|h| match h {
                        Host::Tcp(s) => s.clone(),
                        Host::Unix(p) => p.display().to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "PGPORT".into(),
                match self.config.get_ports() {
                    [] => "5432".to_string(),
                    ports => ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                },
            ),
            ("PGDATABASE".into(), self.database().to_string()),
            ("PGUSER".into(), self.user().to_string()),
            ("PGSSLMODE".into(), self.tls.mode.to_string()),
            ("PGAPPNAME".into(), "pgflip".into()),
        ];
        let addrs = self.config.get_hostaddrs();
        if !addrs.is_empty() {
            v.push((
                "PGHOSTADDR".into(),
                addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ));
        }
        if let Some(pw) = self.password() {
            v.push(("PGPASSWORD".into(), pw));
        }
        if let Some(root) = &self.tls.root_cert {
            v.push(("PGSSLROOTCERT".into(), root.display().to_string()));
        }
        if let Some(t) = self.connect_timeout {
            v.push(("PGCONNECT_TIMEOUT".into(), t.as_secs().max(1).to_string()));
        }
        v
    }

    fn password(&self) -> Option<String> {
        self.config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty())
    }

    /// Opens a connection; the connection task runs on the current runtime.
    ///
    /// Retries, with a short doubling backoff, only what may clear up by itself within the
    /// connect timeout: a refused connection (a server restarting) and "the database system is
    /// starting up". Authentication and configuration errors fail at once.
    pub async fn connect(&self) -> Result<Client> {
        cancel::check()?;
        let tls_config =
            tls::client_config(&self.tls).map_err(|reason| self.connect_error(reason, None))?;
        // A socket connection never uses TLS (as in libpq), and rustls cannot even be set up
        // without a host name.
        let tls_config = tls_config.filter(|_| !self.all_sockets());
        let started = tokio::time::Instant::now();
        let deadline = self.connect_timeout.map(|t| started + t);
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let once = self.connect_once(tls_config.clone());
            let result = match deadline {
                Some(d) => match tokio::time::timeout_at(d, once).await {
                    Ok(r) => r,
                    Err(_) => {
                        let t = self.connect_timeout.unwrap_or_default();
                        return Err(
                            self.connect_error(format!("timeout after {}", humanize(t)), None)
                        );
                    }
                },
                None => once.await,
            };
            match result {
                Ok(client) => return Ok(client),
                Err(e) => {
                    let next = tokio::time::Instant::now() + delay;
                    if attempt < 4 && is_transient(&e) && deadline.is_none_or(|d| next < d) {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                        continue;
                    }
                    let sqlstate = e.as_db_error().map(|d| d.code().code().to_string());
                    return Err(self.connect_error(self.reason(&e), sqlstate));
                }
            }
        }
    }

    async fn connect_once(
        &self,
        tls_config: Option<rustls::ClientConfig>,
    ) -> std::result::Result<Client, tokio_postgres::Error> {
        match tls_config {
            None => {
                // Without TLS the driver must not even ask for it (sockets under `require`).
                let mut config = self.config.clone();
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                let id = cancel::opened(client.cancel_token(), cancel::Via::Plain);
                tokio::spawn(async move {
                    let _ = conn.await;
                    cancel::closed(id);
                });
                Ok(client)
            }
            Some(c) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(c.clone());
                let (client, conn) = self.config.connect(tls).await?;
                let id = cancel::opened(client.cancel_token(), cancel::Via::Tls(Box::new(c)));
                tokio::spawn(async move {
                    let _ = conn.await;
                    cancel::closed(id);
                });
                Ok(client)
            }
        }
    }

    fn all_sockets(&self) -> bool {
        self.config.get_hostaddrs().is_empty()
            && self
                .config
                .get_hosts()
                .iter()
                .all(|h| matches!(h, Host::Unix(_)))
    }

    /// The error for this endpoint, with the password scrubbed from the reason.
    fn connect_error(&self, reason: String, sqlstate: Option<String>) -> Error {
        Error::Connect {
            side: self.side,
            endpoint: self.describe(),
            reason: self.scrub(reason),
            sqlstate,
        }
    }

    /// Removes the password from text that may echo it.
    pub fn scrub(&self, text: String) -> String {
        match self.password() {
            Some(pw) => text.replace(&pw, "********"),
            None => text,
        }
    }

    /// A short, human reason for a failed connection.
    fn reason(&self, e: &tokio_postgres::Error) -> String {
        if let Some(db) = e.as_db_error() {
            let msg = db.message().to_string();
            if *db.code() == tokio_postgres::error::SqlState::INVALID_PASSWORD {
                return match &self.password_origin {
                    Some(origin) => format!("{msg} (password from {origin})"),
                    None => msg,
                };
            }
            return msg;
        }
        match not_postgres(e) {
            Some(NotPostgres::Garbled) => {
                return format!(
                    "the server at {}:{} is not a PostgreSQL server (it answered in another \
                     protocol)",
                    self.host(),
                    self.port()
                )
            }
            Some(NotPostgres::HungUp) => {
                return format!(
                    "the server at {}:{} closed the connection without a PostgreSQL answer (not \
                     a PostgreSQL server, or something in between refused pgflip)",
                    self.host(),
                    self.port()
                )
            }
            None => {}
        }
        let side = self.side;
        let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    return tls::describe_tls_error(tls, &self.tls, &self.host());
                }
                return match io.kind() {
                    std::io::ErrorKind::NotFound if self.all_sockets() => format!(
                        "no server is listening on socket \"{}/.s.PGSQL.{}\"",
                        self.host(),
                        self.port()
                    ),
                    _ => short_io_with_host(io, &self.host()),
                };
            }
            if let Some(tls) = s.downcast_ref::<rustls::Error>() {
                return tls::describe_tls_error(tls, &self.tls, &self.host());
            }
            source = s.source();
        }
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        if text.contains("server does not support TLS") {
            return format!(
                "the server does not support TLS (sslmode={})",
                self.tls.mode
            );
        }
        if text.contains("password missing") {
            return format!(
                "the server asks for a password and none was given (use --{side}-password, \
                 {}_DB_PASSWORD, PGPASSWORD or a ~/.pgpass entry)",
                resolve::side_prefix(side)
            );
        }
        text
    }
}

/// "10s", "1.5s".
fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

enum NotPostgres {
    /// It answered, not in PostgreSQL's framing.
    Garbled,
    /// It hung up before any answer.
    HungUp,
}

/// Whether a failed connection attempt met something that does not speak PostgreSQL's
/// protocol, and how: a PostgreSQL server answers every startup message (with an
/// authentication request, or an error such as "too many clients"), in its own framing. The
/// driver's own words for this ("bytes remaining on stream", "unexpected message") would name
/// neither the server nor the problem.
fn not_postgres(e: &tokio_postgres::Error) -> Option<NotPostgres> {
    if e.as_db_error().is_some() {
        return None;
    }
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    const GARBLED: [&str; 6] = [
        "bytes remaining on stream",
        "unexpected message from server",
        "error parsing response from server",
        "unknown message tag",
        "unknown authentication tag",
        "invalid message length",
    ];
    if GARBLED.iter().any(|g| chain.contains(g)) {
        return Some(NotPostgres::Garbled);
    }
    // The driver's "connection closed": the peer hung up before answering the startup message.
    if chain == "connection closed" {
        return Some(NotPostgres::HungUp);
    }
    // It said yes to TLS (a first byte 'S', as in "SSH-2.0"), then sent no TLS records: a
    // PostgreSQL server that accepts TLS speaks it.
    let garbled_tls = |t: &rustls::Error| matches!(t, rustls::Error::InvalidMessage(_));
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<rustls::Error>() {
            return garbled_tls(t).then_some(NotPostgres::Garbled);
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return garbled_tls(t).then_some(NotPostgres::Garbled);
            }
            if matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ) {
                return Some(NotPostgres::HungUp);
            }
            return None;
        }
        source = s.source();
    }
    None
}

fn is_transient(e: &tokio_postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        return *db.code() == tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = s.source();
    }
    false
}

/// An io error as a few words, without the "(os error 111)" noise.
pub(crate) fn short_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::TimedOut => "timeout".into(),
        K::NotFound => "no such file or directory".into(),
        K::PermissionDenied => "permission denied".into(),
        K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe => {
            "the server closed the connection".into()
        }
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            }
        }
    }
}

fn short_io_with_host(e: &std::io::Error, host: &str) -> String {
    let s = e.to_string();
    let lookup = [
        "failed to lookup address",
        "Name or service not known",
        "No address associated",
        "nodename nor servname",
        "Temporary failure in name resolution",
        "could not resolve",
    ];
    if lookup.iter().any(|p| s.contains(p)) {
        return format!("no such host \"{host}\"");
    }
    short_io(e)
}
