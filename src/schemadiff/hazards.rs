//! Which hazards of a plan the user must allow before `schema diff --apply` runs it.
//!
//! Every step already carries its [`Hazard`]s. Here they are named for the command line and
//! split into those that are online-safe (allowed unless the user says otherwise: a brief
//! ACCESS EXCLUSIVE for a catalog change under `lock_timeout`, an index built CONCURRENTLY, a
//! constraint validated under SHARE UPDATE EXCLUSIVE) and those that need `--allow-hazards`:
//! deleting data (also allowed by `--drop`), rewriting a table, holding ACCESS EXCLUSIVE for
//! longer than a catalog change (an index built or a constraint validated or a table rewritten
//! under it), replacing a table's rows.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::plan::{Hazard, LockMode, Plan, Step};

/// A hazard kind as the user names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HazardKind {
    DeletesData,
    RewritesTable,
    LongLock,
    ReplacesData,
    BuildsIndex,
    Validates,
    AccessExclusive,
}

impl HazardKind {
    pub const ALL: [HazardKind; 7] = [
        HazardKind::DeletesData,
        HazardKind::RewritesTable,
        HazardKind::LongLock,
        HazardKind::ReplacesData,
        HazardKind::BuildsIndex,
        HazardKind::Validates,
        HazardKind::AccessExclusive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HazardKind::DeletesData => "deletes-data",
            HazardKind::RewritesTable => "rewrites-table",
            HazardKind::LongLock => "long-lock",
            HazardKind::ReplacesData => "replaces-data",
            HazardKind::BuildsIndex => "builds-index",
            HazardKind::Validates => "validates",
            HazardKind::AccessExclusive => "access-exclusive",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            HazardKind::DeletesData => "deletes data",
            HazardKind::RewritesTable => "rewrites a table",
            HazardKind::LongLock => {
                "holds ACCESS EXCLUSIVE for longer than a catalog change (reads and writes wait)"
            }
            HazardKind::ReplacesData => "replaces a table's rows",
            HazardKind::BuildsIndex => "builds an index",
            HazardKind::Validates => "validates a constraint (scans the table)",
            HazardKind::AccessExclusive => "takes ACCESS EXCLUSIVE briefly for a catalog change",
        }
    }

    /// Allowed unless the user lists what to allow themselves.
    pub fn online_safe(self) -> bool {
        matches!(
            self,
            HazardKind::BuildsIndex | HazardKind::Validates | HazardKind::AccessExclusive
        )
    }

    pub fn parse(s: &str) -> Option<HazardKind> {
        HazardKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// The hazard kinds the user allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed(BTreeSet<HazardKind>);

impl Allowed {
    /// From `--allow-hazards` values (`all` or kind names) and `--drop` (which allows data
    /// deletion). Online-safe kinds are always allowed.
    pub fn from_args(values: &[String], drop: bool) -> Result<Allowed, String> {
        let mut set: BTreeSet<HazardKind> = HazardKind::ALL
            .into_iter()
            .filter(|k| k.online_safe())
            .collect();
        if drop {
            set.insert(HazardKind::DeletesData);
        }
        for v in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
            if v == "all" {
                set.extend(HazardKind::ALL);
            } else if let Some(k) = HazardKind::parse(v) {
                set.insert(k);
            } else {
                let names: Vec<&str> = HazardKind::ALL.iter().map(|k| k.name()).collect();
                return Err(format!(
                    "unknown hazard kind {v:?}: expected all or one of {}",
                    names.join(", ")
                ));
            }
        }
        Ok(Allowed(set))
    }

    pub fn allows(&self, k: HazardKind) -> bool {
        self.0.contains(&k)
    }
}

/// The hazard kinds of one step.
pub fn step_kinds(step: &Step) -> Vec<HazardKind> {
    let mut out = BTreeSet::new();
    let exclusive = step.lock.mode == LockMode::AccessExclusive;
    for h in &step.hazards {
        out.insert(match h {
            Hazard::AccessExclusive => HazardKind::AccessExclusive,
            Hazard::Rewrite => HazardKind::RewritesTable,
            Hazard::BuildsIndex => HazardKind::BuildsIndex,
            Hazard::Validates => HazardKind::Validates,
            Hazard::DeletesData => HazardKind::DeletesData,
            Hazard::ReplacesData => HazardKind::ReplacesData,
        });
        if exclusive && matches!(h, Hazard::Rewrite | Hazard::BuildsIndex | Hazard::Validates) {
            out.insert(HazardKind::LongLock);
        }
    }
    out.into_iter().collect()
}

/// A step refused, with the kinds the user did not allow.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    /// 1-based, as the progress lines number steps.
    pub step: usize,
    pub description: String,
    pub hazards: Vec<HazardKind>,
}

/// Every step with a hazard kind `allowed` does not allow.
pub fn refused(plan: &Plan, allowed: &Allowed) -> Vec<Refused> {
    plan.steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let hazards: Vec<HazardKind> = step_kinds(s)
                .into_iter()
                .filter(|k| !allowed.allows(*k))
                .collect();
            (!hazards.is_empty()).then(|| Refused {
                step: i + 1,
                description: s.description.clone(),
                hazards,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::QuotedName;

    #[test]
    fn online_safe_kinds_are_allowed_by_default_and_drop_allows_deletion() {
        let a = Allowed::from_args(&[], false).unwrap();
        assert!(a.allows(HazardKind::BuildsIndex) && a.allows(HazardKind::AccessExclusive));
        assert!(!a.allows(HazardKind::DeletesData) && !a.allows(HazardKind::RewritesTable));
        assert!(Allowed::from_args(&[], true)
            .unwrap()
            .allows(HazardKind::DeletesData));
        let all = Allowed::from_args(&["all".into()], false).unwrap();
        assert!(HazardKind::ALL.iter().all(|k| all.allows(*k)));
        assert!(Allowed::from_args(&["rewrites".into()], false).is_err());
    }

    #[test]
    fn an_index_built_under_access_exclusive_is_a_long_lock() {
        let s = Step::new("x", "CREATE INDEX i ON t (a);")
            .lock(LockMode::AccessExclusive, QuotedName::ident("t"))
            .hazard(Hazard::BuildsIndex);
        assert_eq!(
            step_kinds(&s),
            vec![
                HazardKind::LongLock,
                HazardKind::BuildsIndex,
                HazardKind::AccessExclusive
            ]
        );
        let c = Step::new("x", "CREATE INDEX CONCURRENTLY i ON t (a);")
            .lock(LockMode::ShareUpdateExclusive, QuotedName::ident("t"))
            .hazard(Hazard::BuildsIndex);
        assert_eq!(step_kinds(&c), vec![HazardKind::BuildsIndex]);
    }
}
