//! Connection strings: `postgres://` URLs and libpq `key=value` strings parsed into libpq keywords,
//! and [`redact`], which hides the password in either form.
//!
//! We parse both forms ourselves instead of handing them to `tokio_postgres::Config`: it does not
//! know `sslmode=verify-ca` / `verify-full`, and the layering in [`super`] needs to know which
//! keywords a string actually set (a URL without a port must not hide `SOURCE_DB_PORT`). The
//! parser records where each password sits in the input, so that redaction replaces exactly those
//! bytes rather than guessing with patterns.

use std::ops::Range;

use percent_encoding::percent_decode_str;

/// libpq keywords pgflip understands. Anything else is rejected, as libpq does, rather than
/// silently ignored (an ignored `sslcert` would fail later in a confusing way).
pub(crate) const KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "sslmode",
    "sslrootcert",
    "connect_timeout",
    "application_name",
    "fallback_application_name",
    "options",
    "target_session_attrs",
    "channel_binding",
    "keepalives",
    "keepalives_idle",
    "client_encoding",
    "load_balance_hosts",
];

const MASK: &str = "********";

/// A parsed connection string: keyword / value pairs in input order (later ones win), plus the
/// byte ranges of password values in the input.
#[derive(Default)]
pub(crate) struct Parsed {
    pub pairs: Vec<(String, String)>,
    pub password_spans: Vec<Range<usize>>,
}

impl std::fmt::Debug for Parsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keywords only: values may be passwords.
        f.debug_list()
            .entries(self.pairs.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Parsed {
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) fn is_url(s: &str) -> bool {
    s.starts_with("postgresql://") || s.starts_with("postgres://")
}

/// Parses a URL, a `key=value` string, or (like libpq) a bare database name.
pub(crate) fn parse(s: &str) -> Result<Parsed, String> {
    let s_trim = s.trim();
    if is_url(s_trim) {
        let offset = s.len() - s.trim_start().len();
        let mut p = parse_url(s_trim)?;
        for r in &mut p.password_spans {
            *r = r.start + offset..r.end + offset;
        }
        Ok(p)
    } else if s.contains('=') {
        parse_kv(s)
    } else if s_trim.is_empty() {
        Ok(Parsed::default())
    } else {
        Ok(Parsed {
            pairs: vec![("dbname".into(), s_trim.to_string())],
            password_spans: vec![],
        })
    }
}

fn decode(s: &str, what: &str) -> Result<String, String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("invalid percent-encoding in the URL's {what}"))
}

fn check_keyword(k: &str) -> Result<(), String> {
    if KEYWORDS.contains(&k) {
        Ok(())
    } else {
        Err(format!("invalid connection option \"{k}\""))
    }
}

/// What a URL whose user name or password holds unencoded `@ : / %` is told. The parse error
/// itself would quote a fragment of the password (`invalid port "w"`), so none is echoed.
const USERINFO_HINT: &str = "the URL could not be read: if the user name or password contains \
     @ : / ? # or %, percent-encode them (@ is %40, : is %3A, / is %2F, ? is %3F, # is %23, % is %25)";

fn parse_url(s: &str) -> Result<Parsed, String> {
    let scheme_len = s.find("://").expect("is_url checked") + 3;
    let rest = &s[scheme_len..];
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    // An '@' past the authority, or a second one, means the userinfo was cut in the wrong
    // place: any message about the pieces would show part of the password.
    if rest.matches('@').count() > 1 || (rest.contains('@') && !authority.contains('@')) {
        return Err(USERINFO_HINT.into());
    }
    parse_url_parts(s)
}

fn parse_url_parts(s: &str) -> Result<Parsed, String> {
    let scheme_len = s.find("://").expect("is_url checked") + 3;
    let rest = &s[scheme_len..];
    let (main, query) = match rest.find('?') {
        Some(i) => (&rest[..i], Some((scheme_len + i + 1, &rest[i + 1..]))),
        None => (rest, None),
    };
    let (authority, path) = match main.find('/') {
        Some(i) => (&main[..i], Some(&main[i + 1..])),
        None => (main, None),
    };
    let mut out = Parsed::default();
    let hostspec = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let (user, password) = match userinfo.find(':') {
                Some(c) => (&userinfo[..c], Some((c, &userinfo[c + 1..]))),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.pairs.push(("user".into(), decode(user, "user name")?));
            }
            if let Some((c, pw)) = password {
                let start = scheme_len + c + 1;
                out.password_spans.push(start..start + pw.len());
                out.pairs.push(("password".into(), decode(pw, "password")?));
            }
            &authority[at + 1..]
        }
        None => authority,
    };
    if !hostspec.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for part in hostspec.split(',') {
            let (host, port) = if let Some(inner) = part.strip_prefix('[') {
                let close = inner
                    .find(']')
                    .ok_or_else(|| "unterminated [ in the URL's host".to_string())?;
                let after = &inner[close + 1..];
                let port = match after.strip_prefix(':') {
                    Some(p) => p,
                    None if after.is_empty() => "",
                    None => return Err("unexpected text after ] in the URL's host".into()),
                };
                (&inner[..close], port)
            } else {
                match part.rsplit_once(':') {
                    Some((h, p)) => (h, p),
                    None => (part, ""),
                }
            };
            if !port.is_empty() && port.parse::<u16>().is_err() {
                return Err(format!("invalid port \"{port}\" in the URL"));
            }
            hosts.push(decode(host, "host")?);
            ports.push(port.to_string());
        }
        if hosts.iter().any(|h| !h.is_empty()) {
            out.pairs.push(("host".into(), hosts.join(",")));
        }
        if ports.iter().any(|p| !p.is_empty()) {
            out.pairs.push(("port".into(), ports.join(",")));
        }
    }
    if let Some(db) = path {
        if !db.is_empty() {
            out.pairs
                .push(("dbname".into(), decode(db, "database name")?));
        }
    }
    if let Some((qstart, query)) = query {
        let mut pos = qstart;
        for item in query.split('&') {
            let item_start = pos;
            pos += item.len() + 1;
            if item.is_empty() {
                continue;
            }
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| "a URL parameter without '=' (write key=value)".to_string())?;
            let key = decode(k, "parameters")?;
            if key == "password" {
                let vstart = item_start + k.len() + 1;
                out.password_spans.push(vstart..vstart + v.len());
            }
            let value = decode(v, "parameters")?;
            // JDBC-style `ssl=true`, as libpq accepts it.
            if key == "ssl" {
                if value == "true" {
                    out.pairs.push(("sslmode".into(), "require".into()));
                    continue;
                }
                return Err(format!("invalid value for ssl: \"{value}\""));
            }
            check_keyword(&key)?;
            out.pairs.push((key, value));
        }
    }
    Ok(out)
}

fn parse_kv(s: &str) -> Result<Parsed, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Parsed::default();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let kstart = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &s[kstart..i];
        skip_ws(&mut i);
        if i >= b.len() || b[i] != b'=' {
            return Err(format!(
                "missing \"=\" after \"{key}\" in the connection string"
            ));
        }
        i += 1;
        skip_ws(&mut i);
        let vstart = i;
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                if i >= b.len() {
                    if key == "password" {
                        out.password_spans.push(vstart..b.len());
                    }
                    return Err("unterminated quoted string in the connection string".into());
                }
                match b[i] {
                    b'\\' if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    b'\'' => {
                        i += 1;
                        break;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    value.push(b[i + 1]);
                    i += 2;
                } else {
                    value.push(b[i]);
                    i += 1;
                }
            }
        }
        if key == "password" {
            out.password_spans.push(vstart..i);
        }
        check_keyword(key)?;
        let value = String::from_utf8(value).map_err(|_| "invalid UTF-8".to_string())?;
        out.pairs.push((key.to_string(), value));
    }
    Ok(out)
}

/// The connection string with every password replaced by `********`, for echoing a connection
/// back to the user. Works on URLs and `key=value` strings, and on malformed ones too (then it
/// masks generously: everything that could be the password).
pub fn redact(s: &str) -> String {
    let parsed = parse(s);
    let mut out = match &parsed {
        // `postgresql://u:12/x@h/db` parses (host u, port 12, database `x@h/db`) but is most
        // likely a password with a raw '/': mask it as a malformed URL.
        Ok(p) if is_url(s.trim()) && p.password_spans.is_empty() && url_main(s).contains('@') => {
            redact_malformed_url(s)
        }
        Ok(p) => mask_spans(s, &p.password_spans),
        Err(_) if is_url(s.trim()) => redact_malformed_url(s),
        Err(_) => redact_malformed_kv(s),
    };
    // Belt and braces: the decoded password must not survive anywhere else either (a URL that
    // repeats it in `options`, say).
    if let Ok(p) = &parsed {
        for (k, v) in &p.pairs {
            if k == "password" && !v.is_empty() {
                out = out.replace(v.as_str(), MASK);
            }
        }
    }
    out
}

fn mask_spans(s: &str, spans: &[Range<usize>]) -> String {
    let mut spans: Vec<_> = spans.to_vec();
    spans.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(s.len());
    let mut pos = 0;
    for r in spans {
        if r.start < pos {
            continue;
        }
        out.push_str(&s[pos..r.start]);
        out.push_str(MASK);
        pos = r.end;
    }
    out.push_str(&s[pos..]);
    out
}

/// The URL before its query string.
fn url_main(s: &str) -> &str {
    s.split('?').next().unwrap_or(s)
}

fn redact_malformed_url(s: &str) -> String {
    let scheme_len = s.find("://").map(|i| i + 3).unwrap_or(0);
    let mut out = s.to_string();
    // Whatever sits between the first ':' of the user info and the last '@' may be a password.
    if let Some(at) = s.rfind('@').filter(|&at| at > scheme_len) {
        if let Some(colon) = s[scheme_len..at].find(':') {
            out = format!("{}{MASK}{}", &s[..scheme_len + colon + 1], &s[at..]);
        }
    }
    if let Some(i) = out.find("password=") {
        out = format!("{}{MASK}", &out[..i + "password=".len()]);
    }
    out
}

fn redact_malformed_kv(s: &str) -> String {
    match s.find("password") {
        Some(i) => format!("{}{MASK}", &s[..i + "password".len()]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &str) -> Vec<(String, String)> {
        parse(s).unwrap().pairs
    }

    #[test]
    fn unencoded_userinfo_never_echoes_the_password() {
        for pw in [
            "p@ss:w/rd%",
            "se@cret",
            "sec/ret@x",
            "a:b@c",
            "q?uery@w",
            "s3cr/et",
        ] {
            let url = format!("postgresql://alice:{pw}@127.0.0.1:5432/db");
            match parse(&url) {
                Ok(p) => assert_eq!(p.get("password"), Some(pw), "{url}"),
                // Nothing but the hint: no piece of the URL is quoted.
                Err(e) => assert_eq!(e, USERINFO_HINT, "{url}"),
            }
        }
    }

    #[test]
    fn url_parts() {
        let p = parse("postgresql://al%40ice:p%3Ass@db.example:6543/my%20db?sslmode=verify-full&application_name=x").unwrap();
        assert_eq!(p.get("user"), Some("al@ice"));
        assert_eq!(p.get("password"), Some("p:ss"));
        assert_eq!(p.get("host"), Some("db.example"));
        assert_eq!(p.get("port"), Some("6543"));
        assert_eq!(p.get("dbname"), Some("my db"));
        assert_eq!(p.get("sslmode"), Some("verify-full"));
    }

    #[test]
    fn url_ipv6_socket_and_multi_host() {
        let p = parse("postgres://[::1]:5433/app").unwrap();
        assert_eq!(p.get("host"), Some("::1"));
        assert_eq!(p.get("port"), Some("5433"));
        let p = parse("postgresql://%2Fvar%2Frun%2Fpostgresql/app").unwrap();
        assert_eq!(p.get("host"), Some("/var/run/postgresql"));
        let p = parse("postgresql:///app?host=/tmp&port=5999").unwrap();
        assert_eq!(p.get("host"), Some("/tmp"));
        assert_eq!(p.get("dbname"), Some("app"));
        let p = parse("postgresql://a:1,b/app").unwrap();
        assert_eq!(p.get("host"), Some("a,b"));
        assert_eq!(p.get("port"), Some("1,"));
        assert_eq!(
            parse("postgresql://h/?ssl=true").unwrap().get("sslmode"),
            Some("require")
        );
    }

    #[test]
    fn kv_quoting() {
        assert_eq!(
            pairs(r"host=h  port = 5 password='it\'s a secret' user=a\ b"),
            vec![
                ("host".into(), "h".into()),
                ("port".into(), "5".into()),
                ("password".into(), "it's a secret".into()),
                ("user".into(), "a b".into()),
            ]
        );
        assert_eq!(pairs("mydb"), vec![("dbname".into(), "mydb".into())]);
    }

    #[test]
    fn bad_strings_are_rejected() {
        assert!(parse("host=h nonsense=1").unwrap_err().contains("nonsense"));
        assert!(parse("host=h user").is_err());
        assert!(parse("password='open").is_err());
        assert!(parse("postgresql://h:port/db").is_err());
        assert!(parse("postgresql://h/db?foo=1").is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("postgresql://u:s3cret@h:5/db?sslmode=require"),
            "postgresql://u:********@h:5/db?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://u@h/db?password=s3cret&port=5"),
            "postgresql://u@h/db?password=********&port=5"
        );
        assert_eq!(
            redact("host=h password='s e c' user=u"),
            "host=h password=******** user=u"
        );
        assert_eq!(redact("postgresql://u@h/db"), "postgresql://u@h/db");
        // Malformed: masked generously.
        assert!(!redact("postgresql://u:pa/ss@h/db").contains("pa/ss"));
        assert!(!redact("postgresql://u:pa?ss@h/db").contains("pa?ss"));
        assert!(!redact("postgresql://u:12/ss@h/db").contains("12/ss"));
        assert!(!redact("host=h password='open").contains("open"));
    }
}
