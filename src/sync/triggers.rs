//! `--disable-user-triggers`: the target's own triggers do not fire while pgflip loads rows, and
//! are back as they were when the transaction commits.
//!
//! Only the triggers that would fire (enabled, `O`, or `ALWAYS`, `A`) are disabled, each by name,
//! and each is restored with the mode it had, in the unit's transaction: a failure or an
//! interruption rolls the disabling back with everything else, so a trigger can never be left
//! off. Internal triggers (foreign keys) are not touched: `--defer-constraints` and
//! `--disable-integrity` are for those. `ALTER TABLE … DISABLE TRIGGER` takes a SHARE ROW
//! EXCLUSIVE lock until COMMIT (under the unit's lock_timeout and retries, like its other locks).

use std::collections::BTreeMap;

use tokio_postgres::Client;

use crate::error::{DbResultExt, Result};
use crate::ident::quote_ident;
use crate::ident::QuotedName;
use crate::plan::{LockMode, Step};

use super::{Action, TablePlan, Unit};

/// Enabled user triggers by target table: (name, `tgenabled`).
async fn enabled(tgt: &Client, oids: &[u32]) -> Result<BTreeMap<u32, Vec<(String, String)>>> {
    let rows = tgt
        .query(
            "SELECT tgrelid, tgname::text, tgenabled::text FROM pg_trigger \
             WHERE tgrelid = ANY($1::oid[]) AND NOT tgisinternal AND tgenabled IN ('O', 'A') \
             ORDER BY tgrelid, tgname",
            &[&oids],
        )
        .await
        .ctx("reading the target's triggers")?;
    let mut out: BTreeMap<u32, Vec<(String, String)>> = BTreeMap::new();
    for r in &rows {
        out.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
    }
    Ok(out)
}

/// Wraps every unit's actions: the user triggers of its tables off first, back on last.
pub(super) async fn wrap_units(
    tgt: &Client,
    plans: &[TablePlan],
    units: &mut [Unit],
) -> Result<()> {
    let oids: Vec<u32> = plans.iter().map(|p| p.target.oid).collect();
    let triggers = enabled(tgt, &oids).await?;
    for unit in units.iter_mut() {
        let mut off = Vec::new();
        let mut on = Vec::new();
        for &i in &unit.tables {
            let p = &plans[i];
            let table = p.target.qualified();
            for (name, mode) in triggers.get(&p.target.oid).into_iter().flatten() {
                let t = quote_ident(name);
                off.push(format!("ALTER TABLE {table} DISABLE TRIGGER {t}"));
                let again = if mode == "A" {
                    "ENABLE ALWAYS"
                } else {
                    "ENABLE"
                };
                on.push(format!("ALTER TABLE {table} {again} TRIGGER {t}"));
            }
        }
        if off.is_empty() {
            continue;
        }
        let names: Vec<QuotedName> = unit
            .tables
            .iter()
            .map(|&i| plans[i].target.qualified())
            .collect();
        let lock_on = QuotedName::list(&names);
        unit.actions.insert(
            0,
            Action::Sql(
                Step::new(
                    format!("disable the user triggers of {lock_on} for this transaction"),
                    off.join("; "),
                )
                .lock(LockMode::ShareRowExclusive, lock_on.clone()),
            ),
        );
        unit.actions.push(Action::Sql(
            Step::new(
                format!("enable the user triggers of {lock_on} again, as they were"),
                on.join("; "),
            )
            .lock(LockMode::ShareRowExclusive, lock_on),
        ));
    }
    Ok(())
}
