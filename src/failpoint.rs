//! Named failpoints at phase boundaries, for fault tests.
//!
//! Fault tests must hit exact moments (the copy is done but the swap has not begun; the flip
//! committed but its counts are not recorded) instead of sleeping and hoping. Every job calls
//! [`hit`] with a stable name at each phase boundary. In a normal build `hit` does nothing and
//! compiles to nothing; with the `failpoints` cargo feature (which the test suite enables
//! through its dev-dependency on this package) it reads `PGFLIP_FAILPOINTS`:
//!
//! ```text
//! PGFLIP_FAILPOINTS="sync.before_swap=pause;flip.after_commit=exit"
//! ```
//!
//! Actions:
//! - `exit`: the process kills itself with SIGKILL, as `kill -9` would: no destructor, no
//!   rollback sent, connections simply vanish.
//! - `error`: the call returns [`Error::Failpoint`], so the job fails there as on any error.
//! - `sleep(MS)`: waits that many milliseconds, then goes on.
//! - `pause`: creates `$PGFLIP_FAILPOINT_DIR/NAME.paused` and waits until the test removes it,
//!   so a test knows exactly when pgflip stands at the point and decides when it goes on.
//!
//! Names are `job.boundary` (`sync.after_copy`, `flip.before_commit`, `migrate.after_prepare`);
//! [`hit`] records every name it is called with when `PGFLIP_FAILPOINT_DIR` is set (in
//! `NAME.reached`), so a test can assert a point was passed.

use crate::error::{Error, Result};

/// Runs the action configured for failpoint `name`, if any.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hit(_name: &'static str) -> Result<()> {
    Ok(())
}

/// Runs the action configured for failpoint `name`, if any.
#[cfg(feature = "failpoints")]
pub async fn hit(name: &'static str) -> Result<()> {
    enabled::hit(name).await
}

/// Whether this build has failpoints compiled in.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Whether an action is configured for `name`: for a job that must change how it works to
/// give the point a moment to exist at all (the flip sends its locked transaction in two parts
/// only then). Always false in a normal build.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn armed(_name: &str) -> bool {
    false
}

/// Whether an action is configured for `name` (see the other `armed`).
#[cfg(feature = "failpoints")]
pub fn armed(name: &str) -> bool {
    enabled::armed(name)
}

/// The action configured for a failpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Exit,
    Error,
    Sleep(u64),
    Pause,
}

/// Parses `name=action;name=action` (also `,`-separated). Unknown actions are an error so that
/// a typo in a test fails loudly instead of silently testing nothing.
pub fn parse(spec: &str) -> Result<Vec<(String, Action)>> {
    let mut out = Vec::new();
    for item in spec
        .split([';', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (name, action) = item
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("failpoint {item:?}: expected NAME=ACTION")))?;
        let action = match action.trim() {
            "exit" => Action::Exit,
            "error" => Action::Error,
            "pause" => Action::Pause,
            other => match other
                .strip_prefix("sleep(")
                .and_then(|s| s.strip_suffix(')'))
                .and_then(|ms| ms.parse().ok())
            {
                Some(ms) => Action::Sleep(ms),
                None => {
                    return Err(Error::Config(format!(
                    "failpoint {name:?}: unknown action {other:?} (exit, error, pause, sleep(MS))"
                )))
                }
            },
        };
        out.push((name.trim().to_string(), action));
    }
    Ok(out)
}

#[cfg(feature = "failpoints")]
mod enabled {
    use super::{parse, Action};
    use crate::error::{Error, Result};
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::Duration;

    fn config() -> &'static Vec<(String, Action)> {
        static CONFIG: OnceLock<Vec<(String, Action)>> = OnceLock::new();
        CONFIG.get_or_init(|| match std::env::var("PGFLIP_FAILPOINTS") {
            Ok(spec) => parse(&spec).unwrap_or_else(|e| panic!("PGFLIP_FAILPOINTS: {e}")),
            Err(_) => Vec::new(),
        })
    }

    fn dir() -> Option<PathBuf> {
        std::env::var_os("PGFLIP_FAILPOINT_DIR").map(PathBuf::from)
    }

    pub(super) fn armed(name: &str) -> bool {
        config().iter().any(|(n, _)| n == name)
    }

    pub(super) async fn hit(name: &'static str) -> Result<()> {
        if let Some(dir) = dir() {
            let _ = std::fs::write(dir.join(format!("{name}.reached")), b"");
        }
        let Some(action) = config()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
        else {
            return Ok(());
        };
        tracing::warn!(failpoint = name, ?action, "failpoint hit");
        match action {
            Action::Exit => {
                // SAFETY: kill(2) on our own pid with a valid signal has no memory effects.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                std::process::abort()
            }
            Action::Error => Err(Error::Failpoint(name)),
            Action::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            }
            Action::Pause => {
                let dir = dir().ok_or_else(|| {
                    Error::Config(format!(
                        "failpoint {name}=pause needs PGFLIP_FAILPOINT_DIR to be set"
                    ))
                })?;
                let flag = dir.join(format!("{name}.paused"));
                std::fs::write(&flag, b"").map_err(|e| Error::io(flag.display().to_string(), e))?;
                while flag.exists() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_action_and_rejects_typos() {
        let got = parse("a.b=exit; c=error,d=sleep(250);e=pause").unwrap();
        assert_eq!(
            got,
            vec![
                ("a.b".to_string(), Action::Exit),
                ("c".to_string(), Action::Error),
                ("d".to_string(), Action::Sleep(250)),
                ("e".to_string(), Action::Pause),
            ]
        );
        assert!(parse("a=explode").is_err());
        assert!(parse("a").is_err());
        assert!(parse("a=sleep(x)").is_err());
    }
}
