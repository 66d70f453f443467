//! Connections: how endpoints are resolved (flags > environment > .env > libpq defaults), the
//! password file, redaction, and real connections with password authentication, TLS in every
//! sslmode, and the failures users hit (refused, timeout, wrong password, unknown database).
//!
//! Resolution tests pass an explicit [`Env`], so they neither read nor change the machine's
//! environment and can run in parallel.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgflip::conn::{redact, Endpoint, EndpointArgs, Env, SslMode};
use pgflip::localpg::{LocalServer, ServerOptions};
use pgflip::{Error, Side};
use proptest::prelude::*;

use crate::util::*;

/// An environment with nothing in it but a user name.
fn env() -> Env {
    Env::empty().os_user("osuser")
}

fn url(u: &str) -> EndpointArgs {
    EndpointArgs {
        url: Some(u.into()),
        ..Default::default()
    }
}

fn resolve(side: Side, args: &EndpointArgs, env: &Env) -> Endpoint {
    Endpoint::resolve_with(side, args, env).unwrap_or_else(|e| panic!("resolve: {e}"))
}

fn password(ep: &Endpoint) -> Option<String> {
    ep.config
        .get_password()
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
}

fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

// ---------------------------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------------------------

#[test]
fn each_setting_takes_the_first_layer_that_sets_it() {
    // Every layer sets every part; peel layers off from the top and watch the winner change.
    let all = [
        ("host", "HOST", "PGHOST"),
        ("port", "PORT", "PGPORT"),
        ("dbname", "NAME", "PGDATABASE"),
        ("user", "USER", "PGUSER"),
        ("password", "PASSWORD", "PGPASSWORD"),
    ];
    let value = |layer: &str, key: &str| match key {
        "port" => match layer {
            "flag" => "1001",
            "env" => "1002",
            "dotenv" => "1003",
            _ => "1004",
        }
        .to_string(),
        _ => format!("{layer}_{key}"),
    };
    let flags = EndpointArgs {
        url: None,
        host: Some(value("flag", "host")),
        port: Some(1001),
        database: Some(value("flag", "dbname")),
        username: Some(value("flag", "user")),
        password: Some(value("flag", "password")),
    };
    let mut full = env();
    let mut no_env = env();
    let mut only_libpq = env();
    for (key, suffix, pgvar) in all {
        let var = format!("TARGET_DB_{suffix}");
        full = full
            .var(&var, value("env", key))
            .dotenv_var(&var, value("dotenv", key))
            .var(pgvar, value("libpq", key));
        no_env = no_env
            .dotenv_var(&var, value("dotenv", key))
            .var(pgvar, value("libpq", key));
        only_libpq = only_libpq.var(pgvar, value("libpq", key));
    }
    let check = |ep: &Endpoint, layer: &str| {
        assert_eq!(ep.host(), value(layer, "host"), "host from {layer}");
        assert_eq!(
            ep.port().to_string(),
            value(layer, "port"),
            "port from {layer}"
        );
        assert_eq!(ep.database(), value(layer, "dbname"), "dbname from {layer}");
        assert_eq!(ep.user(), value(layer, "user"), "user from {layer}");
        assert_eq!(password(ep).unwrap(), value(layer, "password"));
    };
    check(&resolve(Side::Target, &flags, &full), "flag");
    check(
        &resolve(Side::Target, &EndpointArgs::default(), &full),
        "env",
    );
    check(
        &resolve(Side::Target, &EndpointArgs::default(), &no_env),
        "dotenv",
    );
    check(
        &resolve(Side::Target, &EndpointArgs::default(), &only_libpq),
        "libpq",
    );
    // The other side's variables are not ours.
    let src = resolve(Side::Source, &EndpointArgs::default(), &no_env);
    check(&src, "libpq");
}

#[test]
fn urls_per_layer_and_split_settings_override_their_parts() {
    let e = env()
        .var(
            "SOURCE_DATABASE_URL",
            "postgresql://envuser:envpw@envhost:2001/envdb?sslmode=require",
        )
        .var("SOURCE_DB_NAME", "env_name_wins_over_env_url")
        .dotenv_var("SOURCE_DATABASE_URL", "postgresql://dot@dothost:2002/dotdb")
        .var("PGSSLROOTCERT", "/ca.pem");
    let ep = resolve(Side::Source, &EndpointArgs::default(), &e);
    assert_eq!(ep.host(), "envhost");
    assert_eq!(ep.port(), 2001);
    assert_eq!(ep.database(), "env_name_wins_over_env_url");
    assert_eq!(ep.user(), "envuser");
    assert_eq!(ep.tls.mode, SslMode::Require);
    assert_eq!(ep.tls.root_cert.as_deref(), Some(Path::new("/ca.pem")));

    // A flag URL without a port: the port still comes from the environment's URL (per keyword).
    let args = EndpointArgs {
        url: Some("host=flaghost dbname=flagdb".into()),
        database: Some("split_flag_wins".into()),
        ..Default::default()
    };
    let ep = resolve(Side::Source, &args, &e);
    assert_eq!(ep.host(), "flaghost");
    assert_eq!(ep.database(), "split_flag_wins");
    assert_eq!(ep.port(), 2001);
    assert_eq!(password(&ep).as_deref(), Some("envpw"));
}

#[test]
fn url_and_key_value_forms_resolve_alike() {
    let a = resolve(
        Side::Target,
        &url("postgresql://al%20ice:p%40ss@db.example:6543/my%20db?sslmode=verify-full&sslrootcert=/r.pem&connect_timeout=3&application_name=me"),
        &env(),
    );
    let b = resolve(
        Side::Target,
        &url(
            r"host=db.example port=6543 dbname='my db' user='al ice' password=p@ss sslmode=verify-full sslrootcert=/r.pem connect_timeout=3 application_name=me",
        ),
        &env(),
    );
    for ep in [&a, &b] {
        assert_eq!(ep.describe(), "db.example:6543, database my db");
        assert_eq!(ep.user(), "al ice");
        assert_eq!(password(ep).as_deref(), Some("p@ss"));
        assert_eq!(ep.tls.mode, SslMode::VerifyFull);
        assert_eq!(ep.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(ep.config.get_application_name(), Some("me"));
    }
    // `postgres://` works too, and a bare word is a database name, as in psql.
    let c = resolve(Side::Target, &url("postgres://h/x"), &env());
    assert_eq!(c.database(), "x");
    let d = resolve(Side::Target, &url("justadb"), &env());
    assert_eq!(d.database(), "justadb");
}

#[test]
fn defaults_are_libpq_s() {
    let ep = resolve(Side::Source, &EndpointArgs::default(), &env());
    assert_eq!(ep.user(), "osuser");
    assert_eq!(ep.database(), "osuser");
    assert_eq!(ep.host(), "localhost");
    assert_eq!(ep.port(), 5432);
    assert_eq!(ep.tls.mode, SslMode::Prefer);
    assert_eq!(ep.connect_timeout, Some(Duration::from_secs(10)));
    assert_eq!(ep.config.get_application_name(), Some("pgflip"));
    assert!(ep.schema.is_none());
    assert!(password(&ep).is_none());

    // A socket directory with a server's socket in it is the default host.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".s.PGSQL.5544"), "").unwrap();
    let e = env()
        .socket_dirs(vec![PathBuf::from("/nonexistent"), dir.path().into()])
        .var("PGPORT", "5544");
    let ep = resolve(Side::Source, &EndpointArgs::default(), &e);
    assert_eq!(ep.host(), dir.path().display().to_string());
    assert!(ep.is_local());
    // ... but not for another port.
    let ep = resolve(
        Side::Source,
        &EndpointArgs::default(),
        &e.var("PGPORT", "5545"),
    );
    assert_eq!(ep.host(), "localhost");

    // Without an OS user and without any user setting: a clear error naming the options.
    let err = Endpoint::resolve_with(Side::Target, &EndpointArgs::default(), &Env::empty())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--target-username") && err.contains("TARGET_DB_USER"),
        "{err}"
    );

    // connect_timeout: libpq's rules (0 = wait forever, minimum 2 s).
    let t = |v: &str| {
        resolve(
            Side::Source,
            &EndpointArgs::default(),
            &env().var("PGCONNECT_TIMEOUT", v),
        )
        .connect_timeout
    };
    assert_eq!(t("0"), None);
    assert_eq!(t("1"), Some(Duration::from_secs(2)));
    assert_eq!(t("30"), Some(Duration::from_secs(30)));
}

#[test]
fn schema_comes_from_the_environment_then_dotenv() {
    let e = env()
        .var("SOURCE_DB_SCHEMA", "env_schema")
        .dotenv_var("SOURCE_DB_SCHEMA", "dot_schema")
        .dotenv_var("TARGET_DB_SCHEMA", "dot_target");
    assert_eq!(
        resolve(Side::Source, &EndpointArgs::default(), &e)
            .schema
            .as_deref(),
        Some("env_schema")
    );
    assert_eq!(
        resolve(Side::Target, &EndpointArgs::default(), &e)
            .schema
            .as_deref(),
        Some("dot_target")
    );
}

#[test]
fn dotenv_file_is_a_layer_and_does_not_touch_the_process_environment() {
    let dir = tempfile::tempdir().unwrap();
    let var = format!("PGFLIP_TEST_CANARY_{}", std::process::id());
    let file = write_file(
        dir.path(),
        "x.env",
        &format!(
            "# comment\nTARGET_DB_HOST=dothost\nexport TARGET_DB_PORT=7001\nTARGET_DB_PASSWORD=\"dot pw\"\n{var}=1\nPGUSER=dotpguser\n"
        ),
        0o600,
    );
    let e = env()
        .var("TARGET_DB_PORT", "7002")
        .with_dotenv_file(&file)
        .unwrap();
    assert!(
        std::env::var_os(&var).is_none(),
        ".env must not be exported"
    );
    let ep = resolve(Side::Target, &EndpointArgs::default(), &e);
    assert_eq!(ep.host(), "dothost");
    assert_eq!(ep.port(), 7002, "a real variable beats .env");
    assert_eq!(password(&ep).as_deref(), Some("dot pw"));
    assert_eq!(
        ep.user(),
        "dotpguser",
        "PG* variables may come from .env too"
    );
    // A real PG* variable beats the .env one.
    let ep = resolve(
        Side::Target,
        &EndpointArgs::default(),
        &e.clone().var("PGUSER", "real"),
    );
    assert_eq!(ep.user(), "real");

    // A file that does not parse: the error names the file, not the line (it may hold a
    // password).
    let bad = write_file(
        dir.path(),
        "bad.env",
        "TARGET_DB_PASSWORD='unterminated hunter2secret\n",
        0o600,
    );
    let err = env().with_dotenv_file(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.env"), "{err}");
    assert!(!err.contains("hunter2secret"), "{err}");
    let err = env()
        .with_dotenv_file(&dir.path().join("missing.env"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing.env") && err.contains("no such file"),
        "{err}"
    );
}

#[test]
fn invalid_settings_name_the_setting_and_where_it_came_from() {
    let cases: &[(Env, EndpointArgs, &[&str])] = &[
        (
            env().var("SOURCE_DB_PORT", "fivefour"),
            EndpointArgs::default(),
            &["port", "SOURCE_DB_PORT", "fivefour"],
        ),
        (
            env().var("PGSSLMODE", "maybe"),
            EndpointArgs::default(),
            &["sslmode", "PGSSLMODE", "verify-full"],
        ),
        (
            env(),
            url("postgresql://h/db?sslmode=verify"),
            &["sslmode", "--source"],
        ),
        (
            env(),
            url("host=h frobnicate=1"),
            &["frobnicate", "--source"],
        ),
        (env(), url("postgresql://h:99999/db"), &["port"]),
        (
            env().dotenv_var("SOURCE_DATABASE_URL", "host=h hostaddr=notanip"),
            EndpointArgs::default(),
            &["hostaddr", "SOURCE_DATABASE_URL in .env"],
        ),
    ];
    for (e, args, needles) in cases {
        let err = Endpoint::resolve_with(Side::Source, args, e)
            .unwrap_err()
            .to_string();
        assert!(err.contains("source"), "{err}");
        for n in *needles {
            assert!(err.contains(n), "{err:?} should mention {n}");
        }
    }
}

#[test]
fn a_malformed_string_never_echoes_its_password() {
    for s in [
        "host=h password=my secretword",
        "host=h password='secretword",
        "postgresql://u:secretword@h:port/db",
        "postgresql://u:secretword@h/db?nokey",
    ] {
        let err = Endpoint::resolve_with(Side::Target, &url(s), &env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid target connection string"), "{err}");
        assert!(!err.contains("secretword"), "{s}: {err}");
    }
}

#[test]
fn is_local_means_this_machine() {
    let local = [
        "postgresql://localhost/db",
        "postgresql://127.0.0.1/db",
        "postgresql://127.9.8.7/db",
        "postgresql://[::1]/db",
        "host=/var/run/postgresql",
        "host=db.example hostaddr=127.0.0.1",
        "host=localhost,127.0.0.2",
    ];
    let remote = [
        "postgresql://db.example/db",
        "postgresql://10.0.0.1/db",
        "postgresql://[2001:db8::1]/db",
        "host=localhost hostaddr=10.1.1.1",
        "host=localhost,db.example",
    ];
    for s in local {
        assert!(resolve(Side::Target, &url(s), &env()).is_local(), "{s}");
    }
    for s in remote {
        assert!(!resolve(Side::Target, &url(s), &env()).is_local(), "{s}");
    }
}

#[test]
fn libpq_env_points_child_programs_at_the_endpoint() {
    let ep = resolve(
        Side::Source,
        &url("postgresql://u:pw@h:5/d?sslmode=require"),
        &env(),
    );
    let v = ep.libpq_env();
    let get = |k: &str| v.iter().find(|(n, _)| n == k).map(|(_, x)| x.as_str());
    assert_eq!(get("PGHOST"), Some("h"));
    assert_eq!(get("PGPORT"), Some("5"));
    assert_eq!(get("PGDATABASE"), Some("d"));
    assert_eq!(get("PGUSER"), Some("u"));
    assert_eq!(get("PGPASSWORD"), Some("pw"));
    assert_eq!(get("PGSSLMODE"), Some("require"));
    let other = ep.with_database("postgres");
    assert_eq!(other.describe(), "h:5, database postgres");
    assert_eq!(password(&other).as_deref(), Some("pw"));
    assert_eq!(ep.database(), "d");
    let v = resolve(Side::Source, &url("host=h"), &env()).libpq_env();
    assert!(v.contains(&("PGPORT".into(), "5432".into())), "{v:?}");
    assert!(!v.iter().any(|(k, _)| k == "PGPASSWORD"));
}

// ---------------------------------------------------------------------------------------------
// Password file
// ---------------------------------------------------------------------------------------------

#[test]
fn password_file_follows_libpq_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "pgpass",
        "# comment\n\
         other:5432:*:app:not-this-one\n\
         db.example:5432:app:app:exact\n\
         db.example:*:*:app:any\\:port\n\
         localhost:5432:*:sock:via-socket\n\
         *:*:*:*:fallback\n",
        0o600,
    );
    let e = env().var("PGPASSFILE", file.display().to_string());
    let pw = |u: &str, e: &Env| password(&resolve(Side::Target, &url(u), e));
    assert_eq!(
        pw("postgresql://app@db.example/app", &e).as_deref(),
        Some("exact")
    );
    assert_eq!(
        pw("postgresql://app@db.example:6000/x", &e).as_deref(),
        Some("any:port")
    );
    assert_eq!(
        pw("postgresql://zed@elsewhere/x", &e).as_deref(),
        Some("fallback")
    );
    // The default socket directory is looked up as `localhost`.
    assert_eq!(
        pw("host=/var/run/postgresql user=sock", &e).as_deref(),
        Some("via-socket")
    );
    // A password given any other way wins; the file is not read.
    assert_eq!(
        pw("postgresql://app:given@db.example/app", &e).as_deref(),
        Some("given")
    );

    // ~/.pgpass when PGPASSFILE is not set; passfile= in the string beats both.
    let home = tempfile::tempdir().unwrap();
    write_file(home.path(), ".pgpass", "*:*:*:*:from-home\n", 0o600);
    let h = env().home(home.path());
    assert_eq!(pw("host=h", &h).as_deref(), Some("from-home"));
    assert_eq!(
        pw(
            &format!(
                "host=db.example user=app dbname=app passfile={}",
                file.display()
            ),
            &h
        )
        .as_deref(),
        Some("exact")
    );

    // Group- or world-readable: ignored with a warning, as libpq does.
    let loose = write_file(dir.path(), "loose", "*:*:*:*:leaky\n", 0o644);
    let ep = resolve(
        Side::Target,
        &url("host=h"),
        &env().var("PGPASSFILE", loose.display().to_string()),
    );
    assert!(password(&ep).is_none());
    assert_eq!(ep.warnings.len(), 1, "{:?}", ep.warnings);
    assert!(
        ep.warnings[0].contains("group or world access"),
        "{:?}",
        ep.warnings
    );
    assert!(!ep.warnings[0].contains("leaky"));
}

// ---------------------------------------------------------------------------------------------
// Redaction
// ---------------------------------------------------------------------------------------------

fn percent(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn kv_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn no_output_contains_the_password(pw in "[a-zA-Z0-9 !#$%&()*+,./:;<=>?@^_{|}~'\"\\\\-]{8,24}") {
        prop_assume!(!pw.contains("**") && pw.trim() == pw);
        let forms = [
            format!("postgresql://alice:{}@db.example:5432/app?sslmode=require", percent(&pw)),
            format!("postgres://alice@db.example/app?password={}&port=5", percent(&pw)),
            format!("host=db.example password={} user=alice", kv_quote(&pw)),
            format!("password={}", kv_quote(&pw)),
        ];
        for s in &forms {
            let r = redact(s);
            prop_assert!(!r.contains(&pw), "redact({s:?}) = {r:?}");
            prop_assert!(!r.contains(&percent(&pw)), "redact({s:?}) = {r:?}");
            let ep = Endpoint::resolve_with(Side::Target, &url(s), &env()).unwrap();
            prop_assert_eq!(password(&ep), Some(pw.clone()));
            for out in [ep.describe(), format!("{ep:?}"), format!("{:?}", url(s))] {
                prop_assert!(!out.contains(&pw), "{out}");
            }
        }
        let args = EndpointArgs { password: Some(pw.clone()), host: Some("h".into()), ..Default::default() };
        let shown = format!("{:?}", args);
        prop_assert!(!shown.contains(&pw), "{}", shown);
        // An invalid setting beside the password: the error does not show it.
        let bad = format!("host=h password={} sslmode=sometimes", kv_quote(&pw));
        let err = Endpoint::resolve_with(Side::Target, &url(&bad), &env()).unwrap_err().to_string();
        prop_assert!(!err.contains(&pw), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Real servers
// ---------------------------------------------------------------------------------------------

const APP_PASSWORD: &str = "Tr0ub4dor&3-horse";
/// Every character that needs care in a URL or a key=value string.
const ODD_PASSWORD: &str = "p@ss:w/rd ?#&='q\"\\%";

/// Certificates made with the `openssl` command line: a CA, a server certificate for
/// `localhost` only (so that connecting by IP address is a host-name mismatch), and an
/// unrelated CA.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.crt")
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command is needed for the TLS tests");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The server (running as `postgres` when we are root) must reach its files.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [("ca", "pgflip test CA"), ("other-ca", "unrelated CA")] {
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        let (key, crt, subj) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN={cn}"),
        );
        a.extend([
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "3",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(d, &a);
    }
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(d, &a);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "3",
            "-extfile",
            "ext.cnf",
        ],
    );
    let key = d.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // PostgreSQL wants its key owned by the user it runs as.
    if unsafe { libc::geteuid() } == 0 {
        let out = Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .unwrap();
        let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        std::os::unix::fs::chown(&key, Some(uid), None).unwrap();
    }
    Certs { dir }
}

/// A server with TLS on and scram-sha-256 passwords for every role but `postgres` (which the
/// harness's psql uses), and roles `pgflip_app` and `pgflip_odd` with passwords.
fn secure_server() -> &'static (LocalServer, Certs) {
    static S: OnceLock<(LocalServer, Certs)> = OnceLock::new();
    S.get_or_init(|| {
        let certs = make_certs();
        let d = certs.dir.path();
        let hba = write_file(
            d,
            "pg_hba.conf",
            "local all all trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all postgres ::1/128 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host all all ::1/128 scram-sha-256\n",
            0o644,
        );
        let p = |f: &str| d.join(f).display().to_string();
        let srv = LocalServer::start_with(ServerOptions {
            settings: vec![
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), p("server.crt")),
                ("ssl_key_file".into(), p("server.key")),
                ("hba_file".into(), hba.display().to_string()),
            ],
        })
        .unwrap_or_else(|e| panic!("cannot start the TLS test server: {e}"));
        srv.psql(
            "postgres",
            &format!(
                "CREATE ROLE pgflip_app LOGIN PASSWORD {}; CREATE ROLE pgflip_odd LOGIN PASSWORD {};",
                pgflip::ident::quote_literal(APP_PASSWORD),
                pgflip::ident::quote_literal(ODD_PASSWORD),
            ),
        )
        .unwrap();
        srv.psql("postgres", "CREATE DATABASE app OWNER pgflip_app")
            .unwrap();
        (srv, certs)
    })
}

fn secure_port() -> u16 {
    secure_server().0.port()
}

/// Connects and returns (current_user, whether the connection is encrypted, application_name).
async fn probe(ep: &Endpoint) -> Result<(String, bool, String), Error> {
    let c = ep.connect().await?;
    let row = c
        .query_one(
            "SELECT current_user::text, coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false), \
             current_setting('application_name')",
            &[],
        )
        .await
        .unwrap();
    Ok((row.get(0), row.get(1), row.get(2)))
}

async fn connect_err(ep: &Endpoint) -> String {
    match ep.connect().await {
        Ok(_) => panic!("{ep:?} should not connect"),
        Err(e) => {
            assert!(matches!(e, Error::Connect { .. }), "{e:?}");
            e.to_string()
        }
    }
}

fn app_args() -> EndpointArgs {
    EndpointArgs {
        url: Some(format!(
            "postgresql://pgflip_app@127.0.0.1:{}/app",
            secure_port()
        )),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_password_can_come_from_every_layer() {
    let pw = APP_PASSWORD;
    let dir = tempfile::tempdir().unwrap();
    let pgpass = write_file(
        dir.path(),
        "pgpass",
        &format!(
            "127.0.0.1:{}:app:pgflip_app:{}\n",
            secure_port(),
            pw.replace(':', "\\:")
        ),
        0o600,
    );
    let flag = EndpointArgs {
        password: Some(pw.into()),
        ..app_args()
    };
    let layers: Vec<(&str, EndpointArgs, Env)> = vec![
        ("flag", flag, env()),
        (
            "environment",
            app_args(),
            env().var("TARGET_DB_PASSWORD", pw),
        ),
        (
            ".env",
            app_args(),
            env().dotenv_var("TARGET_DB_PASSWORD", pw),
        ),
        ("PGPASSWORD", app_args(), env().var("PGPASSWORD", pw)),
        (
            "PGPASSFILE",
            app_args(),
            env().var("PGPASSFILE", pgpass.display().to_string()),
        ),
        (
            "environment URL",
            EndpointArgs::default(),
            env().var(
                "TARGET_DATABASE_URL",
                format!(
                    "postgresql://pgflip_app:{}@127.0.0.1:{}/app",
                    percent(pw),
                    secure_port()
                ),
            ),
        ),
    ];
    for (layer, args, e) in layers {
        let ep = resolve(Side::Target, &args, &e);
        let (user, _, app) = probe(&ep)
            .await
            .unwrap_or_else(|err| panic!("password from {layer}: {err}"));
        assert_eq!(user, "pgflip_app", "{layer}");
        assert_eq!(app, "pgflip", "{layer}");
    }
}

#[tokio::test]
async fn awkward_passwords_work_in_urls_and_key_value_strings() {
    let port = secure_port();
    for s in [
        format!(
            "postgresql://pgflip_odd:{}@127.0.0.1:{port}/app",
            percent(ODD_PASSWORD)
        ),
        format!(
            "host=127.0.0.1 port={port} dbname=app user=pgflip_odd password={}",
            kv_quote(ODD_PASSWORD)
        ),
    ] {
        let ep = resolve(Side::Source, &url(&s), &env());
        let (user, _, _) = probe(&ep)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", redact(&s)));
        assert_eq!(user, "pgflip_odd");
        assert!(!redact(&s).contains(ODD_PASSWORD));
    }
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_without_the_password() {
    let wrong = "wrong-Secret-42";
    let ep = resolve(
        Side::Target,
        &EndpointArgs {
            password: Some(wrong.into()),
            ..app_args()
        },
        &env(),
    );
    let started = Instant::now();
    let err = connect_err(&ep).await;
    assert_eq!(
        err,
        format!(
            "could not connect to target (127.0.0.1:{}, database app): password authentication \
             failed for user \"pgflip_app\" (password from --target-password)",
            secure_port()
        )
    );
    assert!(!err.contains(wrong));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no retry on auth errors"
    );

    // No password at all: say so, and say where one can come from.
    let ep = resolve(Side::Target, &app_args(), &env());
    let err = connect_err(&ep).await;
    assert!(
        err.contains("asks for a password and none was given"),
        "{err}"
    );
    assert!(err.contains("TARGET_DB_PASSWORD"), "{err}");
}

#[tokio::test]
async fn an_unknown_database_is_named() {
    let ep = resolve(
        Side::Source,
        &url(&format!(
            "{}/no_such_db",
            server().url("x").rsplit_once('/').unwrap().0
        )),
        &env(),
    );
    let err = connect_err(&ep).await;
    assert!(
        err.starts_with(&format!(
            "could not connect to source (127.0.0.1:{}, database no_such_db): ",
            server().port()
        )),
        "{err}"
    );
    assert!(
        err.ends_with("database \"no_such_db\" does not exist"),
        "{err}"
    );
    // The cause is kept as data: the server's SQLSTATE, in the error and in --json.
    let e = ep.connect().await.expect_err("no such database");
    assert_eq!(e.sqlstate(), Some("3D000"), "{e:?}");
    let bad = format!(
        "{}/no_such_db",
        server().url("x").rsplit_once('/').unwrap().0
    );
    let o = pgflip(&["--json", "status", "--target", &bad]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON error");
    assert_eq!(v["sqlstate"], "3D000", "{v}");
}

#[tokio::test]
async fn connection_refused_names_the_side_and_the_address() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ep = resolve(
        Side::Target,
        &url(&format!("postgresql://u:topsecretpw@127.0.0.1:{port}/app")),
        &env(),
    );
    let started = Instant::now();
    let err = connect_err(&ep).await;
    assert_eq!(
        err,
        format!("could not connect to target (127.0.0.1:{port}, database app): connection refused")
    );
    // A few quick retries (a server may be restarting), then give up.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_silent_server_times_out() {
    // Accepts TCP connections (the kernel does) but never answers the startup message.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let ep = resolve(
        Side::Source,
        &url(&format!(
            "host=127.0.0.1 port={port} dbname=d connect_timeout=2"
        )),
        &env(),
    );
    let started = Instant::now();
    let err = connect_err(&ep).await;
    assert_eq!(
        err,
        format!("could not connect to source (127.0.0.1:{port}, database d): timeout after 2s")
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    drop(l);
}

#[tokio::test]
async fn an_unknown_host_is_named() {
    let ep = resolve(
        Side::Source,
        &url("host=no-such-host.invalid dbname=d connect_timeout=5"),
        &env(),
    );
    let err = connect_err(&ep).await;
    assert!(
        err.ends_with("no such host \"no-such-host.invalid\""),
        "{err}"
    );
}

#[tokio::test]
async fn a_unix_socket_connects_and_never_uses_tls() {
    let srv = server();
    let db = fresh_db("conn_socket");
    let ep = resolve(
        Side::Target,
        &url(&format!(
            "host={} port={} user=postgres dbname={} sslmode=require",
            srv.socket_dir().display(),
            srv.port(),
            db.name
        )),
        &env(),
    );
    assert!(ep.is_local());
    let (user, ssl, _) = probe(&ep).await.unwrap();
    assert_eq!(user, "postgres");
    assert!(!ssl);

    // Nothing listening on that socket: said plainly.
    let ep = resolve(
        Side::Target,
        &url(&format!(
            "host={} port=1 user=postgres",
            srv.socket_dir().display()
        )),
        &env(),
    );
    let err = connect_err(&ep).await;
    assert!(err.contains("no server is listening on socket"), "{err}");
}

#[tokio::test]
async fn sslmode_on_a_server_without_tls() {
    let db = fresh_db("conn_plain");
    let with = |mode: &str| {
        resolve(
            Side::Source,
            &url(&format!("{}?sslmode={mode}", db.url())),
            &env(),
        )
    };
    assert!(!probe(&with("disable")).await.unwrap().1);
    assert!(
        !probe(&with("prefer")).await.unwrap().1,
        "prefer falls back to plain"
    );
    let err = connect_err(&with("require")).await;
    assert!(
        err.ends_with("the server does not support TLS (sslmode=require)"),
        "{err}"
    );
}

fn tls_args(host: &str, mode: &str, root: Option<&Path>) -> EndpointArgs {
    let mut s = format!(
        "host={host} port={} dbname=app user=pgflip_app password={} sslmode={mode}",
        secure_port(),
        kv_quote(APP_PASSWORD)
    );
    if host == "localhost" {
        // The certificate is for `localhost`; connect over IPv4 whatever localhost resolves to.
        s.push_str(" hostaddr=127.0.0.1");
    }
    if let Some(r) = root {
        s.push_str(&format!(" sslrootcert={}", r.display()));
    }
    url(&s)
}

#[tokio::test]
async fn sslmode_on_a_server_with_tls() {
    let certs = &secure_server().1;
    let ca = certs.ca();
    let other = certs.other_ca();
    let ok = |host: &'static str, mode: &'static str, root: Option<PathBuf>| async move {
        let ep = resolve(Side::Target, &tls_args(host, mode, root.as_deref()), &env());
        probe(&ep)
            .await
            .unwrap_or_else(|e| panic!("{host} {mode} {root:?}: {e}"))
    };
    let fails = |host: &'static str, mode: &'static str, root: Option<PathBuf>| async move {
        let ep = resolve(Side::Target, &tls_args(host, mode, root.as_deref()), &env());
        connect_err(&ep).await
    };

    // Encrypted without checking the certificate.
    assert!(ok("127.0.0.1", "prefer", None).await.1);
    assert!(ok("127.0.0.1", "require", None).await.1);
    assert!(!ok("127.0.0.1", "disable", None).await.1);

    // verify-full: chain and name.
    assert!(ok("localhost", "verify-full", Some(ca.clone())).await.1);
    let err = fails("127.0.0.1", "verify-full", Some(ca.clone())).await;
    assert!(
        err.ends_with("the server's TLS certificate is not valid for host name \"127.0.0.1\" (sslmode=verify-full)"),
        "{err}"
    );
    let err = fails("localhost", "verify-full", Some(other.clone())).await;
    assert!(err.contains("not signed by a trusted authority"), "{err}");
    assert!(err.contains("other-ca.crt"), "{err}");
    // Without sslrootcert the built-in public roots are used: a private CA is not among them.
    let err = fails("localhost", "verify-full", None).await;
    assert!(err.contains("not signed by a trusted authority"), "{err}");
    assert!(err.contains("Mozilla"), "{err}");

    // verify-ca: chain only, any name.
    assert!(ok("127.0.0.1", "verify-ca", Some(ca.clone())).await.1);
    let err = fails("127.0.0.1", "verify-ca", Some(other.clone())).await;
    assert!(err.contains("not signed by a trusted authority"), "{err}");

    // require with a root certificate checks the chain, as libpq does.
    assert!(ok("127.0.0.1", "require", Some(ca.clone())).await.1);
    let err = fails("127.0.0.1", "require", Some(other)).await;
    assert!(err.contains("not signed by a trusted authority"), "{err}");

    // A root certificate file that is not there.
    let err = fails(
        "localhost",
        "verify-full",
        Some(PathBuf::from("/nonexistent/ca.pem")),
    )
    .await;
    assert!(
        err.ends_with(
            "cannot read root certificate file \"/nonexistent/ca.pem\": no such file or directory"
        ),
        "{err}"
    );
    assert!(!err.contains(APP_PASSWORD));
}

#[tokio::test]
async fn the_default_root_certificate_is_libpq_s() {
    // ~/.postgresql/root.crt, when present, is the root file: require then checks the chain.
    let certs = &secure_server().1;
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".postgresql")).unwrap();
    let root = home.path().join(".postgresql/root.crt");
    std::fs::copy(certs.ca(), &root).unwrap();
    let ep = resolve(
        Side::Target,
        &tls_args("localhost", "verify-full", None),
        &env().home(home.path()),
    );
    assert_eq!(ep.tls.root_cert.as_deref(), Some(root.as_path()));
    assert!(probe(&ep).await.unwrap().1);
    std::fs::copy(certs.other_ca(), &root).unwrap();
    let ep = resolve(
        Side::Target,
        &tls_args("127.0.0.1", "require", None),
        &env().home(home.path()),
    );
    let err = connect_err(&ep).await;
    assert!(err.contains("not signed by a trusted authority"), "{err}");
    // Without the file: no root file, and require encrypts without checking.
    let ep = resolve(
        Side::Target,
        &tls_args("127.0.0.1", "require", None),
        &env(),
    );
    assert_eq!(ep.tls.root_cert, None);
}

#[tokio::test]
async fn sslmode_from_the_environment_applies() {
    let ca = secure_server().1.ca();
    let e = env()
        .var("PGSSLMODE", "verify-full")
        .var("PGSSLROOTCERT", ca.display().to_string())
        .var("TARGET_DB_PASSWORD", APP_PASSWORD);
    let args = url(&format!(
        "host=localhost hostaddr=127.0.0.1 port={} dbname=app user=pgflip_app",
        secure_port()
    ));
    let ep = resolve(Side::Target, &args, &e);
    assert_eq!(ep.tls.mode, SslMode::VerifyFull);
    assert!(probe(&ep).await.unwrap().1);
}

#[tokio::test]
async fn a_refused_connection_is_retried_briefly() {
    // Nothing listens on `port` at first; 150 ms later a one-connection TCP relay to the real
    // server appears there, as a restarting server would. The connect must get through.
    let db = fresh_db("conn_retry");
    let upstream = server().port();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let relay = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let (client, _) = l.accept().unwrap();
        let server = std::net::TcpStream::connect(("127.0.0.1", upstream)).unwrap();
        let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let up = std::thread::spawn(move || {
            let _ = std::io::copy(&mut c2, &mut s2);
            let _ = s2.shutdown(std::net::Shutdown::Write);
        });
        let (mut c, mut s) = (client, server);
        let _ = std::io::copy(&mut s, &mut c);
        let _ = c.shutdown(std::net::Shutdown::Write);
        let _ = up.join();
    });
    let ep = resolve(
        Side::Target,
        &url(&format!(
            "postgresql://postgres@127.0.0.1:{port}/{}?sslmode=disable",
            db.name
        )),
        &env(),
    );
    let (user, _, _) = probe(&ep).await.unwrap();
    assert_eq!(user, "postgres");
    // The relay ends when the connection closes; the runtime must keep running meanwhile.
    tokio::task::spawn_blocking(move || relay.join().unwrap())
        .await
        .unwrap();
}

#[test]
fn connecting_can_happen_on_any_task() {
    fn assert_send<T: Send>(_: &T) {}
    let ep = resolve(Side::Source, &url("host=h"), &env());
    let fut = ep.connect();
    assert_send(&fut);
}

#[test]
fn libpq_programs_reach_the_endpoint_through_libpq_env() {
    // psql, given only libpq_env(), must reach the same server with the same TLS checks: the
    // variables mean to libpq what they mean to pgflip.
    let (srv, certs) = secure_server();
    let ep = resolve(
        Side::Target,
        &tls_args("localhost", "verify-full", Some(&certs.ca())),
        &env(),
    );
    // The psql beside the server, else PATH's: the wheel's newest client (PGFLIP_PG_CLIENT_BINDIR)
    // is built without TLS, and this test is about TLS.
    let beside = srv.bindir().join("psql");
    let mut cmd = Command::new(if beside.is_file() {
        beside
    } else {
        "psql".into()
    });
    cmd.args(["-X", "-A", "-t", "-c"])
        .arg("SELECT current_user || ' ' || (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PGPASSFILE", "/nonexistent");
    for (k, v) in ep.libpq_env() {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "pgflip_app true"
    );
}

// ---------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------

/// Commands that connect, with the flags that name the side. While a command is still a
/// placeholder (exit 6) it is skipped; once built, this checks its connection errors.
#[test]
fn the_binary_names_the_side_and_never_prints_the_password() {
    let wrong = "Wr0ng-Pa55word-xyzzy";
    let port = secure_port();
    let url = format!("postgresql://pgflip_app:{wrong}@127.0.0.1:{port}/app");
    let cases: [(&[&str], &str); 3] = [
        (&["schema", "dump", "--source"], "source"),
        (&["status", "--target"], "target"),
        (&["list", "--to"], "target"),
    ];
    let mut checked = 0;
    for (args, side) in cases {
        let mut all: Vec<&str> = args.to_vec();
        all.push(&url);
        for json in [false, true] {
            let mut a = all.clone();
            if json {
                a.push("--json");
            }
            let o = pgflip_env(&a, &[("PGCONNECT_TIMEOUT", "5")]);
            if o.status.code() == Some(6) {
                continue; // not built yet
            }
            checked += 1;
            let (out, err) = (stdout(&o), stderr(&o));
            assert_eq!(o.status.code(), Some(3), "{a:?}: {err}");
            assert!(
                err.contains(&format!(
                    "could not connect to {side} (127.0.0.1:{port}, database app): password \
                     authentication failed for user \"pgflip_app\""
                )),
                "{a:?}: {err}"
            );
            assert!(
                !err.contains(wrong) && !out.contains(wrong),
                "{a:?}: {err}{out}"
            );
        }
    }
    eprintln!("binary connection-error checks run: {checked}");
}

/// The pool's backend pid of a connection.
async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_pool_reuses_what_is_given_back_and_closes_what_is_not() {
    let db = TestDb::new(server(), "pool");
    let ep = resolve(Side::Target, &url(&db.url()), &env());
    let pool = pgflip::conn::Pool::new(ep.clone());

    // Given back clean: the next step gets the same backend.
    let c = pool.get().await.unwrap();
    let first = backend_pid(&c).await;
    c.reuse();
    assert_eq!(pool.idle(), 1);
    let c = pool.get().await.unwrap();
    assert_eq!(
        backend_pid(&c).await,
        first,
        "the idle connection is reused"
    );

    // Dropped without `reuse` (an error path): closed, never handed to the next step.
    drop(c);
    assert_eq!(pool.idle(), 0);
    let c = pool.get().await.unwrap();
    let second = backend_pid(&c).await;
    assert_ne!(second, first);
    let gone = db.psql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = {first}"
    ));
    // The server notices the closed socket a little later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = gone;
    while left.trim() != "0" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        left = db.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {first}"
        ));
    }
    assert_eq!(left.trim(), "0", "the dropped connection's backend exited");

    // One the server ended while it waited is skipped once the client has seen it close (the
    // driver reads the server's goodbye in the background), not handed out dead.
    c.reuse();
    db.psql(&format!("SELECT pg_terminate_backend({second})"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = pool.get().await.unwrap();
    let third = backend_pid_or_dead(&c)
        .await
        .expect("a live connection, not the terminated one");
    assert_ne!(third, second);
    assert_ne!(third, first);
}

/// `None` when the connection turns out dead (so the next `get` skips it).
async fn backend_pid_or_dead(c: &tokio_postgres::Client) -> Option<i32> {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

#[tokio::test]
async fn a_pool_with_setup_runs_it_once_per_new_connection() {
    let db = TestDb::new(server(), "pool_setup");
    let ep = resolve(Side::Target, &url(&db.url()), &env());
    let pool = pgflip::conn::Pool::with_setup(
        ep,
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY".into(),
        "opening the reader's transaction",
    );
    let c = pool.get().await.unwrap();
    let xid: String = c
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .unwrap()
        .get(0);
    let iso: String = c
        .query_one("SHOW transaction_isolation", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(iso, "repeatable read");
    c.reuse();
    // Reused as left: still inside the same transaction (same snapshot), not set up again.
    let c = pool.get().await.unwrap();
    let again: String = c
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, xid);
    // A setup that fails is the pool's error, with its description.
    let bad = pgflip::conn::Pool::with_setup(
        resolve(Side::Target, &url(&db.url()), &env()),
        "SELECT no_such_function()".into(),
        "opening the reader's transaction",
    );
    let err = bad.get().await.err().expect("setup fails").to_string();
    assert!(err.contains("opening the reader's transaction"), "{err}");
}
