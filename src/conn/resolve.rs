//! Resolution: the layers of the module comment merged per keyword, then turned into a driver
//! configuration with libpq's defaults and checks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::config::{ChannelBinding, LoadBalanceHosts, TargetSessionAttrs};

use crate::error::{Error, Result, Side};

use super::env::{Env, SOCKET_DIRS};
use super::{
    params, pgpass, redact, Endpoint, EndpointArgs, SslMode, TlsSettings, DEFAULT_CONNECT_TIMEOUT,
};

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

pub(super) fn side_prefix(side: Side) -> &'static str {
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

/// Whether anything pgflip reads for this side alone names it: a flag, the side's variables
/// (`SOURCE_DATABASE_URL`, `SOURCE_DB_*`) in the environment or the .env file. libpq's `PG*`
/// variables and defaults are shared by both sides, so they can complete an endpoint but never
/// name one.
pub(super) fn is_named(side: Side, args: &EndpointArgs, env: &Env) -> bool {
    let prefix = side_prefix(side);
    let flag = args.url.as_deref().is_some_and(|u| !u.trim().is_empty())
        || args.host.is_some()
        || args.port.is_some()
        || args.database.is_some()
        || args.username.is_some();
    let var = |k: &str| env.get(k).is_some() || env.get_dotenv(k).is_some();
    flag || var(&format!("{prefix}_DATABASE_URL"))
        || SPLIT_VARS
            .iter()
            .filter(|(suffix, _)| *suffix != "PASSWORD")
            .any(|(suffix, _)| var(&format!("{prefix}_DB_{suffix}")))
}

/// Resolves one side (see the module comment for the precedence).
pub(super) fn resolve(side: Side, args: &EndpointArgs, env: &Env) -> Result<Endpoint> {
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
    // libpq's default root certificate file counts only when it exists (then `require` checks
    // the chain against it, as in libpq); otherwise verification uses the built-in roots.
    let root_cert = m.get("sslrootcert").map(PathBuf::from).or_else(|| {
        env.home
            .as_ref()
            .map(|h| h.join(".postgresql/root.crt"))
            .filter(|p| p.is_file())
    });
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
