//! The environment endpoints are resolved in: process variables, the `.env` layer, the home
//! directory and the operating-system user.
//!
//! It is a value rather than reads of `std::env` scattered through the resolver so that tests
//! can pass an explicit one (and run in parallel without touching the process environment), and
//! so that a `.env` file stays a layer of its own below real variables instead of being exported
//! into the process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use super::short_io;

/// Where libpq looks for a local server's socket.
pub(super) const SOCKET_DIRS: &[&str] = &["/var/run/postgresql", "/tmp"];

/// The environment an endpoint is resolved in: process variables, the .env layer, the home
/// directory (for `~/.pgpass`), the operating-system user, and the socket directories to probe.
///
/// [`Env::process`] reads the real ones; tests build an explicit one with [`Env::empty`] and the
/// setters, so they neither depend on nor change the machine's environment.
#[derive(Clone, Default)]
pub struct Env {
    pub(super) vars: HashMap<String, String>,
    pub(super) dotenv: HashMap<String, String>,
    pub(super) dotenv_path: Option<PathBuf>,
    pub(super) home: Option<PathBuf>,
    pub(super) os_user: Option<String>,
    pub(super) socket_dirs: Vec<PathBuf>,
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

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub(super) fn get_dotenv(&self, key: &str) -> Option<&str> {
        self.dotenv
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub(super) fn dotenv_name(&self) -> String {
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
