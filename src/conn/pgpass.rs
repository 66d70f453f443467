//! The libpq password file (`~/.pgpass`, or `PGPASSFILE` / `passfile=`), with libpq's rules, so
//! that a file that works for `psql` works for pgflip and one that psql would ignore is ignored.
//!
//! Lines are `host:port:database:username:password`; `#` starts a comment line; each of the first
//! four fields is matched literally or by `*`; `\:` and `\\` escape; the first matching line wins.
//! A host that is empty or the default socket directory is looked up as `localhost`. A file with
//! any group or world permission bits is ignored with a warning, as libpq does, because a
//! readable password file is a leak the user should fix rather than one we should paper over.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

/// Looks up the password for one connection. Returns the password (if a line matched) and
/// warnings to show the user (never containing a password).
pub(crate) fn lookup(
    path: &Path,
    host: &str,
    port: &str,
    database: &str,
    user: &str,
) -> (Option<String>, Vec<String>) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => return (None, vec![]),
    };
    if !meta.is_file() {
        let what = if meta.file_type().is_fifo() {
            "a pipe"
        } else {
            "not a plain file"
        };
        return (
            None,
            vec![format!("password file \"{}\" is {what}", path.display())],
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return (
            None,
            vec![format!(
                "password file \"{}\" has group or world access; permissions should be u=rw (0600) \
                 or less (ignored)",
                path.display()
            )],
        );
    }
    let text = match std::fs::read(path) {
        Ok(t) => String::from_utf8_lossy(&t).into_owned(),
        Err(e) => {
            return (
                None,
                vec![format!(
                    "cannot read password file \"{}\": {e}",
                    path.display()
                )],
            )
        }
    };
    (find(&text, host, port, database, user), vec![])
}

/// The first matching line's password in the text of a password file.
pub(crate) fn find(
    text: &str,
    host: &str,
    port: &str,
    database: &str,
    user: &str,
) -> Option<String> {
    let wanted = [host, port, database, user];
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(fields) = split_fields(line) else {
            continue;
        };
        let matches = fields[..4]
            .iter()
            .zip(wanted)
            .all(|((raw, value), want)| raw == "*" || value == want);
        if matches {
            return Some(fields[4].1.clone());
        }
    }
    None
}

/// Splits a line into (raw, unescaped) fields; `None` when it has fewer than five. As in libpq, an
/// unescaped colon ends the password too (anything after it is ignored).
fn split_fields(line: &str) -> Option<Vec<(String, String)>> {
    let mut fields = Vec::with_capacity(5);
    let mut raw = String::new();
    let mut value = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            raw.push(c);
            if let Some(n) = chars.next() {
                raw.push(n);
                value.push(n);
            }
        } else if c == ':' {
            fields.push((std::mem::take(&mut raw), std::mem::take(&mut value)));
        } else {
            raw.push(c);
            value.push(c);
        }
    }
    fields.push((raw, value));
    (fields.len() >= 5).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::find;

    #[test]
    fn libpq_matching_rules() {
        let file = "\
# comment
db.example:5432:app:alice:first
*:5432:*:bob:wild\\:card\\\\
h\\:colon:*:*:*:escaped
*:*:*:*:fallback:with:colons
";
        assert_eq!(
            find(file, "db.example", "5432", "app", "alice").as_deref(),
            Some("first")
        );
        assert_eq!(
            find(file, "other", "5432", "x", "bob").as_deref(),
            Some("wild:card\\")
        );
        assert_eq!(
            find(file, "h:colon", "1", "d", "u").as_deref(),
            Some("escaped")
        );
        assert_eq!(
            find(file, "db.example", "5433", "app", "alice").as_deref(),
            Some("fallback")
        );
        assert_eq!(find("a:1:d:u\n", "a", "1", "d", "u"), None);
        // A literal `\*` is not a wildcard.
        assert_eq!(find("\\*:*:*:*:p\n", "x", "1", "d", "u"), None);
    }
}
