//! The question before replacing or dropping data on a target that is not on this machine:
//! one rule for every command that does so (`sync`, `sync --swap`, `rollback`, `cleanup`).

use std::io::{BufRead, IsTerminal, Write};

use pgflip::conn::Endpoint;

/// Asks on the terminal before `what` (e.g. "swap 2 table(s)") happens on `target`, unless the
/// target is local or `yes` was given. Without a terminal to ask on, refuses naming `--yes`.
pub fn confirm(target: &Endpoint, what: &str, yes: bool) -> anyhow::Result<()> {
    if yes || pgflip::sync::is_local(target) {
        return Ok(());
    }
    let what = format!("{what} on {}", target.describe());
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        super::output::write_stderr(&format!("pgflip: about to {what}. Continue? [y/N] "));
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes" | "YES") {
            return Err(pgflip::Error::Refused("not confirmed; nothing was changed".into()).into());
        }
        return Ok(());
    }
    Err(pgflip::Error::Refused(
        format!("the target is not on this machine; pass --yes to {what} (no terminal to ask on)")
            .into(),
    )
    .into())
}
