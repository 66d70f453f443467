//! `pgflip init`: a commented pgflip.toml to start from, as `pgsync --init` writes
//! `.pgsync.yml`, with the bookkeeping tables of the framework in the current directory
//! excluded.

use std::io::Write;
use std::path::Path;

use clap::Args;

use pgflip::sync::config::Config;

use super::{exit, Output};

/// Write a commented pgflip.toml (or pgflip.NAME.toml) to start from; never overwrites.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Write pgflip.NAME.toml, read by `pgflip sync --db NAME`.
    #[arg(long, value_name = "NAME")]
    pub db: Option<String>,
}

/// A framework pgflip recognises, and the tables it keeps its own records in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framework {
    Rails,
    Django,
    Laravel,
}

impl Framework {
    fn name(self) -> &'static str {
        match self {
            Framework::Rails => "Rails",
            Framework::Django => "Django",
            Framework::Laravel => "Laravel",
        }
    }

    /// Tables that record the framework's migrations: copying them from the source would tell
    /// the target's framework that migrations ran which did not.
    fn bookkeeping(self) -> &'static [&'static str] {
        match self {
            Framework::Rails => &["ar_internal_metadata", "schema_migrations"],
            Framework::Django => &["django_migrations"],
            Framework::Laravel => &["migrations"],
        }
    }
}

/// The framework of the project in `dir`, by the files each one always has.
pub fn detect(dir: &Path) -> Option<Framework> {
    let contains = |file: &str, needle: &str| {
        std::fs::read_to_string(dir.join(file))
            .map(|t| t.to_ascii_lowercase().contains(needle))
            .unwrap_or(false)
    };
    if dir.join("bin/rails").is_file() || dir.join("config/application.rb").is_file() {
        Some(Framework::Rails)
    } else if contains("manage.py", "django") {
        Some(Framework::Django)
    } else if dir.join("artisan").is_file() {
        Some(Framework::Laravel)
    } else {
        None
    }
}

/// Whether the project deploys to Heroku (a git remote there).
pub fn heroku(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(".git/config"))
        .map(|t| t.contains("heroku.com"))
        .unwrap_or(false)
}

/// The file's text for a project in `dir`.
pub fn template(dir: &Path) -> String {
    let app = dir
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| {
            n.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "app".into());
    let source = if heroku(dir) {
        "source = \"$(heroku config:get DATABASE_URL)\"".to_string()
    } else {
        format!("source = \"postgres://localhost:5432/{app}_production\"")
    };
    let exclude = match detect(dir) {
        Some(f) => format!(
            "# {}'s own records of its migrations stay as the target has them.\nexclude = [{}]\n",
            f.name(),
            f.bookkeeping()
                .iter()
                .map(|t| format!("{t:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "# exclude = [\"schema_migrations\", \"audit_*\"]\n".to_string(),
    };
    format!(
        r#"# pgflip sync configuration (pgsync's .pgsync.yml, in TOML). `pgflip sync` reads
# ./pgflip.toml; `pgflip sync --db NAME` reads ./pgflip.NAME.toml.

# The database pgflip only reads. Flags, SOURCE_DATABASE_URL and .env win over this line.
# A value "$(command)" is what the command prints, so secrets need not be in this file.
{source}

# The database pgflip changes.
target = "postgres://localhost:5432/{app}_development"

# Tables left out of "every table" and of patterns (never of tables named exactly or through
# a group). `--exclude` on the command line replaces this list.
{exclude}
# Groups: `pgflip sync reference`, `pgflip sync product:123` ({{1}} or {{id}} is the value
# after the colon, {{2}} the next one; each is passed as a quoted literal).
[groups]
# reference = ["countries", "currencies"]
# product = {{ products = "WHERE id = {{1}}", reviews = "WHERE product_id = {{1}}" }}

# Data rules: mask columns while copying (the real values never leave the source).
# Built in: unique_email, unique_phone, unique_secret, random_letter, random_int, random_date,
# random_time, random_ip, random_string, null, untouched; or {{ value = … }}, {{ statement = … }}.
[data_rules]
# email = "unique_email"
# "users.auth_token" = {{ value = "secret" }}
# visits_count = {{ statement = "(random() * 10)::int" }}
# "encrypted_*" = "null"
"#
    )
}

pub fn run(args: &InitArgs, out: &Output) -> anyhow::Result<u8> {
    let path = match &args.db {
        Some(db) => Config::named_file(db)?,
        None => "pgflip.toml".into(),
    };
    let dir = std::env::current_dir()?;
    let text = template(&dir);
    // The template must stay a valid configuration.
    Config::parse(&text).map_err(|e| anyhow::anyhow!("internal: template does not parse: {e}"))?;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(pgflip::Error::InvalidInput(format!(
                "{} exists; pgflip init never overwrites it",
                path.display()
            ))
            .into())
        }
        Err(e) => return Err(pgflip::Error::io(format!("creating {}", path.display()), e).into()),
    };
    file.write_all(text.as_bytes())
        .map_err(|e| pgflip::Error::io(format!("writing {}", path.display()), e))?;
    if out.json {
        out.println(&serde_json::to_string_pretty(&serde_json::json!({
            "created": path.display().to_string(),
            "framework": detect(&dir).map(|f| f.name()),
        }))?);
    } else if !out.quiet {
        let note = match detect(&dir) {
            Some(f) => format!(" ({} project: its migration tables are excluded)", f.name()),
            None => String::new(),
        };
        out.println(&format!("Created {}{note}", path.display()));
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_exclude_each_frameworks_tables() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cfg = Config::parse(&template(d)).unwrap();
        assert!(cfg.exclude.is_empty());
        assert!(cfg.source.unwrap().ends_with("_production"));
        std::fs::write(d.join("artisan"), "#!/usr/bin/env php").unwrap();
        assert_eq!(Config::parse(&template(d)).unwrap().exclude, ["migrations"]);
        std::fs::write(d.join("manage.py"), "import django").unwrap();
        assert_eq!(
            Config::parse(&template(d)).unwrap().exclude,
            ["django_migrations"]
        );
        std::fs::create_dir_all(d.join("bin")).unwrap();
        std::fs::write(d.join("bin/rails"), "").unwrap();
        assert_eq!(
            Config::parse(&template(d)).unwrap().exclude,
            ["ar_internal_metadata", "schema_migrations"]
        );
        std::fs::create_dir_all(d.join(".git")).unwrap();
        std::fs::write(
            d.join(".git/config"),
            "[remote \"heroku\"]\n\turl = https://git.heroku.com/app.git\n",
        )
        .unwrap();
        assert_eq!(
            Config::parse(&template(d)).unwrap().source.as_deref(),
            Some("$(heroku config:get DATABASE_URL)")
        );
    }
}
