//! The swap that ends a staging load (`sync --staging-table --swap`) or stands alone
//! (`sync --swap`, after a load whose diff the user read): the staging tables are flipped into
//! their live tables in one transaction under pgflip's target lock, and the rows the live
//! tables received since the load are counted in the retired tables.
//!
//! A swap on its own follows a diff the user read (`--show-diff`): when a live table changed
//! since, that diff no longer describes what the swap retires, and the swap is refused unless
//! forced. A swap right after its load has no such gap to check.

use std::sync::Arc;

use tokio_postgres::Client;

use super::drift::{self, Marked, Received};
use crate::error::{Error, Problem, Refusal, Result};
use crate::events::EventSink;
use crate::flip::{self, FlipKind, FlipOptions, FlipOutcome, FlipPair, FlipPlan};

/// When the swap runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Right after the staging load of the same run.
    AfterLoad,
    /// In a command of its own: the live tables may have changed since the load's diff.
    OnItsOwn { force: bool },
}

/// A swap done: the flip, and per live table what it received since the staging load (rows
/// that are now in the retired table).
#[derive(Debug)]
pub struct Swapped {
    pub outcome: FlipOutcome,
    pub received: Vec<Received>,
}

/// Plans the swap of loaded staging tables without changing anything; refuses as the swap
/// would.
pub async fn plan(
    client: &Client,
    pairs: &[FlipPair],
    when: When,
    opts: &FlipOptions,
) -> Result<FlipPlan> {
    let marked = markers(client, pairs).await?;
    if when == (When::OnItsOwn { force: false }) {
        refuse_stale_diffs(client, &marked).await?;
    }
    let mut opts = opts.clone();
    opts.checksums = opts.checksums.without_green();
    flip::plan_flip(client, pairs, FlipKind::Sync, &opts).await
}

/// Flips `pairs` (staging into live), holding pgflip's target lock on `client`.
pub async fn swap(
    client: Arc<Client>,
    pairs: &[FlipPair],
    when: When,
    opts: &FlipOptions,
    events: &dyn EventSink,
) -> Result<Swapped> {
    // Read before the flip, which forgets the staging tables' records.
    let marked = markers(&client, pairs).await?;
    if when == (When::OnItsOwn { force: false }) {
        refuse_stale_diffs(&client, &marked).await?;
    }
    let names: Vec<String> = pairs.iter().map(|p| p.live.to_string()).collect();
    let command = format!("sync --swap {}", names.join(" "));
    crate::failpoint::hit("sync.before_swap").await?;
    let marked = &marked;
    crate::state::with_target_lock(client, &command, |c| async move {
        let outcome = flip::flip(&c, pairs, FlipKind::Sync, opts, events).await?;
        // Counted once the flip committed, on the retired tables: a failure here is said, and
        // the swap stands.
        let received = match drift::after_swap(&c, &outcome.generation, marked).await {
            Ok(r) => r,
            Err(e) => {
                events.emit(crate::events::Event::Warning {
                    message: format!(
                        "could not count the rows the live tables received since the staging \
                         load: {e}"
                    ),
                });
                Vec::new()
            }
        };
        Ok(Swapped { outcome, received })
    })
    .await
}

/// What each live table held when its staging table was loaded (and diffed).
async fn markers(client: &Client, pairs: &[FlipPair]) -> Result<Vec<Marked>> {
    let mut marked = Vec::new();
    for p in pairs {
        let (load, diff) = drift::markers(client, (&p.green.schema, &p.green.name)).await?;
        marked.push(Marked {
            live: p.live.sql(),
            load,
            diff,
        });
    }
    Ok(marked)
}

async fn refuse_stale_diffs(client: &Client, marked: &[Marked]) -> Result<()> {
    let mut stale = Vec::new();
    for m in marked {
        if let Some(d) = &m.diff {
            let c = drift::changes_since(client, &m.live, d).await?;
            if c.any() {
                stale.push(Problem::new(
                    m.live.clone(),
                    format!("{}: {} since the diff", m.live, c.describe()),
                ));
            }
        }
    }
    if stale.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(Refusal::new(
        "the live table changed since the diff --show-diff showed, so that diff no longer \
         describes what the swap replaces; load and diff again (--staging-table --show-diff), \
         or swap anyway with --force (the rows written since stay in the retired table). \
         Nothing was changed",
        stale,
    )))
}
