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
//!    else `localhost`; port 5432; `sslmode=prefer`; plus pgflip's `application_name=pgflip` and
//!    a 10 s connect timeout.
//!
//! Merging per keyword rather than per layer is what libpq does with a URL and `PGPORT`, and what
//! lets `--target-database app2` reuse everything else of `TARGET_DATABASE_URL`. When no layer
//! gives a password, the password file is consulted (`passfile=`, `PGPASSFILE`, `~/.pgpass`;
//! see [`pgpass`]). `SOURCE_DB_SCHEMA` / `TARGET_DB_SCHEMA` (environment, then .env) become
//! [`Endpoint::schema`].
//!
//! Passwords never leave this module in text: [`Endpoint::describe`] says `host:port, database
//! name`, `Debug` prints the same, connection errors are rewritten into short sentences and then
//! scrubbed of the password in case the server or the driver echoed it, and [`redact`] hides it
//! in any connection string a caller wants to echo.

mod params;
mod pgpass;
mod tls;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::config::{ChannelBinding, Host, LoadBalanceHosts, TargetSessionAttrs};
use tokio_postgres::Client;

use crate::error::{Error, Result, Side};

pub use params::redact;
pub use tls::{SslMode, TlsSettings};

/// The connect timeout when nothing sets `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where libpq looks for a local server's socket.
const SOCKET_DIRS: &[&str] = &["/var/run/postgresql", "/tmp"];

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

/// The environment an endpoint is resolved in: process variables, the .env layer, the home
/// directory (for `~/.pgpass`), the operating-system user, and the socket directories to probe.
///
/// [`Env::process`] reads the real ones; tests build an explicit one with [`Env::empty`] and the
/// setters, so they neither depend on nor change the machine's environment.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    dotenv: HashMap<String, String>,
    dotenv_path: Option<PathBuf>,
    home: Option<PathBuf>,
    os_user: Option<String>,
    socket_dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values may be passwords.
        let mut vars: Vec<_> = self.vars.keys().collect();
        vars.sort();
        let mut dotenv: Vec<_> = self.dotenv.keys().collect();
        dotenv.sort();
        f.debug_struct("Env")
            .field("vars", &vars)
            .field("dotenv", &dotenv)
            .field("dotenv_path", &self.dotenv_path)
            .field("home", &self.home)
            .field("os_user", &self.os_user)
            .finish()
    }
}

impl Env {
    /// Nothing set: no variables, no .env, no home, no user, no socket directories.
    pub fn empty() -> Env {
        Env::default()
    }

    /// The process environment, home directory, user and libpq's socket directories. No .env
    /// file: add one with [`Env::with_dotenv_file`], or use [`Env::load`].
    pub fn process() -> Env {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            dotenv: HashMap::new(),
            dotenv_path: None,
            home: std::env::var_os("HOME")
                .map(PathBuf::from)
                .or_else(|| os_user_entry().map(|(_, h)| h)),
            os_user: os_user_entry().map(|(u, _)| u),
            socket_dirs: SOCKET_DIRS.iter().map(PathBuf::from).collect(),
        }
    }

    /// The process environment plus a .env layer: `env_file` when given (it must exist), else
    /// `./.env` when `read_dot_env` and the file exists.
    ///
    /// An explicit file replaces `./.env` rather than adding to it, so that settings of two
    /// different deployments never mix.
    pub fn load(env_file: Option<&Path>, read_dot_env: bool) -> Result<Env> {
        let env = Env::process();
        match env_file {
            Some(path) => env.with_dotenv_file(path),
            None if read_dot_env && Path::new(".env").is_file() => {
                env.with_dotenv_file(Path::new(".env"))
            }
            None => Ok(env),
        }
    }

    /// Sets a (process-level) variable.
    pub fn var(mut self, key: impl Into<String>, value: impl Into<String>) -> Env {
        self.vars.insert(key.into(), value.into());
        self
    }

    /// Sets a variable of the .env layer.
    pub fn dotenv_var(mut self, key: impl Into<String>, value: impl Into<String>) -> Env {
        self.dotenv.insert(key.into(), value.into());
        self
    }

    /// Reads a .env file into the .env layer (the process environment is not touched).
    pub fn with_dotenv_file(mut self, path: &Path) -> Result<Env> {
        let iter = dotenvy::from_path_iter(path).map_err(|e| dotenv_error(path, e))?;
        for item in iter {
            let (k, v) = item.map_err(|e| dotenv_error(path, e))?;
            self.dotenv.insert(k, v);
        }
        self.dotenv_path = Some(path.to_path_buf());
        Ok(self)
    }

    pub fn home(mut self, home: impl Into<PathBuf>) -> Env {
        self.home = Some(home.into());
        self
    }

    pub fn os_user(mut self, user: impl Into<String>) -> Env {
        self.os_user = Some(user.into());
        self
    }

    pub fn socket_dirs(mut self, dirs: Vec<PathBuf>) -> Env {
        self.socket_dirs = dirs;
        self
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn get_dotenv(&self, key: &str) -> Option<&str> {
        self.dotenv
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn dotenv_name(&self) -> String {
        match &self.dotenv_path {
            Some(p) => p.display().to_string(),
            None => ".env".into(),
        }
    }
}

/// A .env error without the offending line: it may hold a password.
fn dotenv_error(path: &Path, e: dotenvy::Error) -> Error {
    let why = match e {
        dotenvy::Error::LineParse(_, idx) => {
            format!("cannot parse it (at character {idx}; check quoting)")
        }
        dotenvy::Error::Io(io) => short_io(&io),
        dotenvy::Error::EnvVar(_) => "a variable it refers to is not valid".into(),
        _ => "cannot read it".into(),
    };
    Error::Config(format!("env file \"{}\": {why}", path.display()))
}

/// The effective user's name and home directory, as libpq finds them.
fn os_user_entry() -> Option<(String, PathBuf)> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: a zeroed passwd is a valid out-parameter; buf outlives the pointers read from it.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(pwd.pw_name)
            .to_string_lossy()
            .into_owned();
        let home = if pwd.pw_dir.is_null() {
            PathBuf::new()
        } else {
            PathBuf::from(
                std::ffi::CStr::from_ptr(pwd.pw_dir)
                    .to_string_lossy()
                    .into_owned(),
            )
        };
        Some((name, home))
    }
}

/// One keyword's value and where it came from (for messages; never the value itself).
#[derive(Clone)]
struct Value {
    value: String,
    origin: String,
}

/// Keyword → value, first layer wins.
#[derive(Default)]
struct Merged(HashMap<String, Value>);

impl Merged {
    fn offer(&mut self, key: &str, value: &str, origin: &str) {
        if value.is_empty() {
            return;
        }
        self.0.entry(key.to_string()).or_insert_with(|| Value {
            value: value.to_string(),
            origin: origin.to_string(),
        });
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.value.as_str())
    }

    fn origin(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.origin.as_str())
    }
}

/// Environment variable suffixes of the split settings, with their libpq keyword.
const SPLIT_VARS: &[(&str, &str)] = &[
    ("HOST", "host"),
    ("PORT", "port"),
    ("NAME", "dbname"),
    ("USER", "user"),
    ("PASSWORD", "password"),
];

/// libpq's environment variables.
const LIBPQ_VARS: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGDATABASE", "dbname"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGPASSFILE", "passfile"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGAPPNAME", "application_name"),
    ("PGOPTIONS", "options"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGCHANNELBINDING", "channel_binding"),
];

fn side_prefix(side: Side) -> &'static str {
    match side {
        Side::Source => "SOURCE",
        Side::Target => "TARGET",
    }
}

/// A parse error of a connection string, without any quoted fragment that the redacted string
/// does not show (so a mistyped password never appears in the message).
fn parse_error(side: Side, origin: &str, input: &str, msg: String) -> Error {
    let shown = redact(input);
    let mut clean = String::new();
    let mut parts = msg.split('"');
    if let Some(first) = parts.next() {
        clean.push_str(first);
    }
    let rest: Vec<&str> = parts.collect();
    for pair in rest.chunks(2) {
        let quoted = pair[0];
        if shown.contains(quoted) {
            clean.push_str(&format!("\"{quoted}\""));
        } else {
            clean.push_str("\"…\"");
        }
        if let Some(after) = pair.get(1) {
            clean.push_str(after);
        }
    }
    Error::Config(format!(
        "invalid {side} connection string ({origin}): {clean}"
    ))
}

/// Adds a connection string's keywords to `merged`.
fn offer_string(merged: &mut Merged, side: Side, input: &str, origin: &str) -> Result<()> {
    let parsed = params::parse(input).map_err(|m| parse_error(side, origin, input, m))?;
    // Later duplicates win inside one string, as in libpq.
    let mut seen = HashMap::new();
    for (k, v) in parsed.pairs.iter().rev() {
        if seen.insert(k.as_str(), ()).is_none() {
            merged.offer(k, v, origin);
        }
    }
    Ok(())
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
        let prefix = side_prefix(side);
        let mut m = Merged::default();

        // 1. Flags.
        let flag_parts: [(&str, Option<String>, String); 5] = [
            ("host", args.host.clone(), format!("--{side}-host")),
            (
                "port",
                args.port.map(|p| p.to_string()),
                format!("--{side}-port"),
            ),
            (
                "dbname",
                args.database.clone(),
                format!("--{side}-database"),
            ),
            ("user", args.username.clone(), format!("--{side}-username")),
            (
                "password",
                args.password.clone(),
                format!("--{side}-password"),
            ),
        ];
        for (k, v, origin) in &flag_parts {
            if let Some(v) = v {
                m.offer(k, v, origin);
            }
        }
        if let Some(url) = args.url.as_deref().filter(|u| !u.trim().is_empty()) {
            offer_string(&mut m, side, url, &format!("--{side}"))?;
        }

        // 2. Environment, 3. .env: the same variables.
        let url_var = format!("{prefix}_DATABASE_URL");
        for layer in [false, true] {
            let get = |k: &str| {
                if layer {
                    env.get_dotenv(k)
                } else {
                    env.get(k)
                }
            };
            let origin = |var: &str| {
                if layer {
                    format!("{var} in {}", env.dotenv_name())
                } else {
                    var.to_string()
                }
            };
            for (suffix, key) in SPLIT_VARS {
                let var = format!("{prefix}_DB_{suffix}");
                if let Some(v) = get(&var) {
                    m.offer(key, v, &origin(&var));
                }
            }
            if let Some(url) = get(&url_var) {
                offer_string(&mut m, side, url, &origin(&url_var))?;
            }
        }

        // 4. libpq's variables.
        for (var, key) in LIBPQ_VARS {
            if let Some(v) = env.get(var) {
                m.offer(key, v, var);
            } else if let Some(v) = env.get_dotenv(var) {
                m.offer(key, v, &format!("{var} in {}", env.dotenv_name()));
            }
        }

        let schema_var = format!("{prefix}_DB_SCHEMA");
        let schema = env
            .get(&schema_var)
            .or_else(|| env.get_dotenv(&schema_var))
            .map(str::to_string);

        build(side, m, env, schema)
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
                self.config
                    .get_ports()
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
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
        let tls_config =
            tls::client_config(&self.tls).map_err(|reason| self.connect_error(reason))?;
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
                        return Err(self.connect_error(format!("timeout after {}", humanize(t))));
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
                    return Err(self.connect_error(self.reason(&e)));
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
                let (client, conn) = self.config.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(client)
            }
            Some(c) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(c);
                let (client, conn) = self.config.connect(tls).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
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
    fn connect_error(&self, reason: String) -> Error {
        Error::Connect {
            side: self.side,
            endpoint: self.describe(),
            reason: self.scrub(reason),
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
        let text = e.to_string();
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
                side_prefix(side)
            );
        }
        let mut chain = text;
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        chain
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

/// Turns the merged keywords into an endpoint.
fn build(side: Side, m: Merged, env: &Env, schema: Option<String>) -> Result<Endpoint> {
    let bad = |key: &str, what: &str| {
        let origin = m.origin(key).unwrap_or("?");
        Error::Config(format!("invalid {key} for the {side} ({origin}): {what}"))
    };
    let mut config = tokio_postgres::Config::new();
    let mut warnings = Vec::new();

    // Ports first: the default host probes for the socket of the chosen port.
    let mut ports = Vec::new();
    if let Some(p) = m.get("port") {
        for part in p.split(',') {
            let part = part.trim();
            if part.is_empty() {
                ports.push(5432);
            } else {
                ports.push(
                    part.parse::<u16>()
                        .ok()
                        .filter(|&n| n != 0)
                        .ok_or_else(|| bad("port", &format!("\"{part}\" is not a port number")))?,
                );
            }
        }
    }
    let first_port = ports.first().copied().unwrap_or(5432);

    let mut addrs = Vec::new();
    if let Some(a) = m.get("hostaddr") {
        for part in a.split(',') {
            addrs.push(
                part.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| bad("hostaddr", &format!("\"{part}\" is not an IP address")))?,
            );
        }
    }
    let mut hosts: Vec<String> = match m.get("host") {
        Some(h) => h.split(',').map(|s| s.trim().to_string()).collect(),
        None => vec![],
    };
    if hosts.is_empty() {
        if !addrs.is_empty() {
            // TLS needs a name to send; libpq uses the address when only hostaddr is given.
            hosts = addrs.iter().map(IpAddr::to_string).collect();
        } else {
            let socket = env
                .socket_dirs
                .iter()
                .find(|d| d.join(format!(".s.PGSQL.{first_port}")).exists());
            hosts.push(match socket {
                Some(d) => d.display().to_string(),
                None => "localhost".into(),
            });
        }
    }
    if !addrs.is_empty() && addrs.len() != hosts.len() {
        return Err(bad(
            "hostaddr",
            &format!(
                "{} addresses for {} hosts (give one per host)",
                addrs.len(),
                hosts.len()
            ),
        ));
    }
    if ports.len() > 1 && ports.len() != hosts.len() {
        return Err(bad(
            "port",
            &format!("{} ports for {} hosts", ports.len(), hosts.len()),
        ));
    }
    for h in &hosts {
        if h.is_empty() {
            return Err(bad("host", "an empty host name in the list"));
        }
        config.host(h);
    }
    for a in &addrs {
        config.hostaddr(*a);
    }
    for p in &ports {
        config.port(*p);
    }

    let user = match m.get("user") {
        Some(u) => u.to_string(),
        None => env.os_user.clone().ok_or_else(|| {
            Error::Config(format!(
                "no user name for the {side}: give --{side}-username, {}_DB_USER or PGUSER",
                side_prefix(side)
            ))
        })?,
    };
    let dbname = m
        .get("dbname")
        .map(str::to_string)
        .unwrap_or_else(|| user.clone());
    config.user(&user);
    config.dbname(&dbname);

    let mut password_origin = None;
    if let Some(pw) = m.get("password") {
        config.password(pw);
        password_origin = m.origin("password").map(str::to_string);
    } else {
        let (file, origin) = match m.get("passfile") {
            Some(f) => (
                Some(PathBuf::from(f)),
                m.origin("passfile").unwrap_or("passfile").to_string(),
            ),
            None => (
                env.home.as_ref().map(|h| h.join(".pgpass")),
                "~/.pgpass".to_string(),
            ),
        };
        if let Some(file) = file {
            // libpq looks a socket connection up as `localhost`.
            let first = &hosts[0];
            let lookup_host = if first.starts_with('/')
                && (env.socket_dirs.iter().any(|d| d == Path::new(first))
                    || SOCKET_DIRS.contains(&first.as_str()))
            {
                "localhost".to_string()
            } else {
                first.clone()
            };
            let (pw, warn) =
                pgpass::lookup(&file, &lookup_host, &first_port.to_string(), &dbname, &user);
            warnings.extend(warn);
            if let Some(pw) = pw {
                config.password(pw);
                password_origin = Some(format!("{origin} {}", file.display()));
            }
        }
    }

    let mode = match m.get("sslmode") {
        Some(s) => SslMode::parse(s).ok_or_else(|| {
            bad(
                "sslmode",
                &format!("\"{s}\" (use disable, allow, prefer, require, verify-ca or verify-full)"),
            )
        })?,
        None => SslMode::Prefer,
    };
    let root_cert = m.get("sslrootcert").map(PathBuf::from);
    config.ssl_mode(mode.driver_mode());

    let connect_timeout = match m.get("connect_timeout") {
        None => Some(DEFAULT_CONNECT_TIMEOUT),
        Some(t) => {
            let secs: i64 = t.trim().parse().map_err(|_| {
                bad(
                    "connect_timeout",
                    &format!("\"{t}\" is not a whole number of seconds"),
                )
            })?;
            // libpq: zero or less waits forever, and anything below 2 s is 2 s.
            (secs > 0).then(|| Duration::from_secs(secs.max(2) as u64))
        }
    };
    if let Some(t) = connect_timeout {
        config.connect_timeout(t);
    }

    config.application_name(
        m.get("application_name")
            .or(m.get("fallback_application_name"))
            .unwrap_or("pgflip"),
    );
    if let Some(o) = m.get("options") {
        config.options(o);
    }
    if let Some(t) = m.get("target_session_attrs") {
        config.target_session_attrs(match t {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            _ => {
                return Err(bad(
                    "target_session_attrs",
                    &format!("\"{t}\" (use any, read-write or read-only)"),
                ))
            }
        });
    }
    if let Some(c) = m.get("channel_binding") {
        config.channel_binding(match c {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            _ => {
                return Err(bad(
                    "channel_binding",
                    &format!("\"{c}\" (use disable, prefer or require)"),
                ))
            }
        });
    }
    if let Some(k) = m.get("keepalives") {
        config.keepalives(k != "0");
    }
    if let Some(k) = m.get("keepalives_idle") {
        let secs: u64 = k.parse().map_err(|_| {
            bad(
                "keepalives_idle",
                &format!("\"{k}\" is not a number of seconds"),
            )
        })?;
        config.keepalives_idle(Duration::from_secs(secs));
    }
    if let Some(l) = m.get("load_balance_hosts") {
        config.load_balance_hosts(match l {
            "disable" => LoadBalanceHosts::Disable,
            "random" => LoadBalanceHosts::Random,
            _ => {
                return Err(bad(
                    "load_balance_hosts",
                    &format!("\"{l}\" (use disable or random)"),
                ))
            }
        });
    }
    if let Some(e) = m.get("client_encoding") {
        if !e.eq_ignore_ascii_case("utf8") && !e.eq_ignore_ascii_case("utf-8") {
            return Err(bad("client_encoding", "pgflip always uses UTF8"));
        }
    }

    Ok(Endpoint {
        side,
        config,
        schema,
        tls: TlsSettings { mode, root_cert },
        connect_timeout,
        warnings,
        password_origin,
    })
}
