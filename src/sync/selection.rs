//! What the user asked for, checked against the source's tables before anything is read: the
//! patterns (requested and excluded) that match nothing are said, since a typo in a pattern
//! otherwise silently syncs or keeps the wrong tables.

use crate::events::{Event, EventSink};

use super::tables;
use super::SyncOptions;

/// Warns about every requested or excluded pattern that matches no table of the source (in the
/// schemas in scope; excludes in any schema).
pub(super) fn warn_unmatched(
    opts: &SyncOptions,
    listing: &[(u32, String, String)],
    events: &dyn EventSink,
) {
    let requested: Vec<String> = opts
        .requests
        .iter()
        .filter(|r| r.pattern.contains('*'))
        .map(|r| r.pattern.clone())
        .collect();
    for p in tables::unmatched(&requested, &opts.scope, listing) {
        events.emit(Event::Warning {
            message: format!("{p:?} matches no table on the source{}", scope_note(opts)),
        });
    }
    for p in tables::unmatched(&opts.exclude, &tables::SchemaScope::All, listing) {
        events.emit(Event::Warning {
            message: format!("--exclude {p:?} matches no table on the source"),
        });
    }
}

fn scope_note(opts: &SyncOptions) -> String {
    match &opts.scope {
        tables::SchemaScope::All => String::new(),
        tables::SchemaScope::Only(s) => format!(
            " (in schema{} {})",
            if s.len() > 1 { "s" } else { "" },
            s.join(", ")
        ),
    }
}
