//! Which relations a green pipeline holds, and in which order they are built.
//!
//! PostgreSQL binds a view or materialized view to what it reads by OID, so a materialized view
//! downstream of a changed relation must be rebuilt over the *green* upstream, or promote would
//! have to rebuild it under the flip's locks (the application would wait for its query). The
//! graph here is read from `pg_depend` (through the view rules), once, for the whole database:
//! one query for the relations, one for the edges.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use crate::error::{DbResultExt, Result};
use crate::flip::QualifiedName;

#[derive(Debug, Clone)]
pub struct Node {
    pub oid: u32,
    pub name: QualifiedName,
    pub relkind: String,
}

/// Relations and "reads" edges between them.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub nodes: BTreeMap<u32, Node>,
    /// reader → the relations its definition names.
    pub reads: BTreeMap<u32, BTreeSet<u32>>,
}

impl Graph {
    pub async fn load(client: &Client) -> Result<Graph> {
        let nodes = client
            .query(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
                &[],
            )
            .await
            .ctx("reading relations")?;
        let edges = client
            .query(
                "SELECT DISTINCT rw.ev_class, d.refobjid FROM pg_catalog.pg_depend d \
                 JOIN pg_catalog.pg_rewrite rw ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = rw.oid \
                 WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid <> rw.ev_class",
                &[],
            )
            .await
            .ctx("reading what views read")?;
        let mut g = Graph::default();
        for r in nodes {
            let oid: u32 = r.get(0);
            g.nodes.insert(
                oid,
                Node {
                    oid,
                    name: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                    relkind: r.get(3),
                },
            );
        }
        for r in edges {
            let (reader, read): (u32, u32) = (r.get(0), r.get(1));
            if g.nodes.contains_key(&reader) && g.nodes.contains_key(&read) {
                g.reads.entry(reader).or_default().insert(read);
            }
        }
        Ok(g)
    }

    /// Relations whose definitions name `oid`.
    pub fn readers(&self, oid: u32) -> impl Iterator<Item = u32> + '_ {
        self.reads
            .iter()
            .filter(move |(_, r)| r.contains(&oid))
            .map(|(k, _)| *k)
    }

    pub fn name(&self, oid: u32) -> String {
        self.nodes
            .get(&oid)
            .map(|n| n.name.to_string())
            .unwrap_or_else(|| format!("relation {oid}"))
    }

    /// Everything that reads `roots`, directly or not: (materialized views, views).
    pub fn downstream(&self, roots: &[u32]) -> (BTreeSet<u32>, BTreeSet<u32>) {
        let mut mvs = BTreeSet::new();
        let mut views = BTreeSet::new();
        let mut todo: Vec<u32> = roots.to_vec();
        let mut seen: BTreeSet<u32> = roots.iter().copied().collect();
        while let Some(o) = todo.pop() {
            for r in self.readers(o).collect::<Vec<_>>() {
                if !seen.insert(r) {
                    continue;
                }
                match self.nodes[&r].relkind.as_str() {
                    "m" => {
                        mvs.insert(r);
                    }
                    _ => {
                        views.insert(r);
                    }
                }
                todo.push(r);
            }
        }
        (mvs, views)
    }

    /// The members of `members` that `oid` reads, directly or through views (not through other
    /// members: those are read in turn).
    pub fn upstream_members(&self, oid: u32, members: &BTreeSet<u32>) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<u32> = self
            .reads
            .get(&oid)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let mut seen = BTreeSet::new();
        while let Some(o) = todo.pop() {
            if !seen.insert(o) {
                continue;
            }
            if members.contains(&o) {
                out.insert(o);
            } else if self.nodes.get(&o).is_some_and(|n| n.relkind == "v") {
                todo.extend(self.reads.get(&o).into_iter().flatten().copied());
            }
        }
        out
    }

    /// Views (not members) through which a member reads another member: they must be rebuilt
    /// over the green upstream too, or the lower member's green would read the live upper one.
    pub fn views_to_include(&self, members: &BTreeSet<u32>) -> BTreeSet<u32> {
        let mut all = members.clone();
        let mut added = BTreeSet::new();
        loop {
            let mut more = Vec::new();
            for &m in &all {
                for &v in self.reads.get(&m).into_iter().flatten() {
                    if !all.contains(&v)
                        && self.nodes.get(&v).is_some_and(|n| n.relkind == "v")
                        && !self.upstream_members(v, &all).is_empty()
                    {
                        more.push(v);
                    }
                }
            }
            if more.is_empty() {
                return added;
            }
            for v in more {
                all.insert(v);
                added.insert(v);
            }
        }
    }

    /// Views that lie between two members (`upper` … view … `lower`): the lower one's green
    /// would read the live upper one through the view.
    pub fn views_between(&self, members: &BTreeSet<u32>) -> Vec<(u32, u32, u32)> {
        let mut out = Vec::new();
        for &m in members {
            for &v in self.reads.get(&m).into_iter().flatten() {
                if !members.contains(&v) && self.nodes.get(&v).is_some_and(|n| n.relkind == "v") {
                    for up in self.upstream_members(v, members) {
                        out.push((up, v, m));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// `members` upstream first (ties by name, so the order is stable).
    pub fn order(&self, members: &BTreeSet<u32>) -> Vec<u32> {
        let mut deps: BTreeMap<u32, BTreeSet<u32>> = members
            .iter()
            .map(|&m| (m, self.upstream_members(m, members)))
            .collect();
        let mut out = Vec::new();
        while !deps.is_empty() {
            let mut ready: Vec<u32> = deps
                .iter()
                .filter(|(_, d)| d.is_empty())
                .map(|(k, _)| *k)
                .collect();
            if ready.is_empty() {
                // A cycle cannot happen between views; take the rest as they are.
                ready = deps.keys().copied().collect();
            }
            ready.sort_by_key(|o| self.nodes[o].name.clone());
            for r in &ready {
                deps.remove(r);
            }
            for d in deps.values_mut() {
                for r in &ready {
                    d.remove(r);
                }
            }
            out.extend(ready);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(nodes: &[(u32, &str, &str)], edges: &[(u32, u32)]) -> Graph {
        let mut g = Graph::default();
        for &(oid, name, kind) in nodes {
            g.nodes.insert(
                oid,
                Node {
                    oid,
                    name: QualifiedName::new("public", name),
                    relkind: kind.into(),
                },
            );
        }
        for &(a, b) in edges {
            g.reads.entry(a).or_default().insert(b);
        }
        g
    }

    #[test]
    fn a_diamond_is_ordered_upstream_first_and_views_are_seen() {
        // t (table) → a → b, c → d; v is a view over d.
        let g = graph(
            &[
                (1, "t", "r"),
                (2, "a", "m"),
                (3, "b", "m"),
                (4, "c", "m"),
                (5, "d", "m"),
                (6, "v", "v"),
            ],
            &[(2, 1), (3, 2), (4, 2), (5, 3), (5, 4), (6, 5)],
        );
        let (mvs, views) = g.downstream(&[2]);
        assert_eq!(mvs, BTreeSet::from([3, 4, 5]));
        assert_eq!(views, BTreeSet::from([6]));
        let members = BTreeSet::from([2, 3, 4, 5]);
        assert_eq!(g.order(&members), vec![2, 3, 4, 5]);
        assert_eq!(g.upstream_members(5, &members), BTreeSet::from([3, 4]));
        assert!(g.views_between(&members).is_empty());
    }

    #[test]
    fn a_view_between_two_members_is_found() {
        let g = graph(
            &[(1, "a", "m"), (2, "v", "v"), (3, "d", "m")],
            &[(2, 1), (3, 2)],
        );
        let members = BTreeSet::from([1, 3]);
        assert_eq!(g.views_between(&members), vec![(1, 2, 3)]);
        let with = g.views_to_include(&members);
        assert_eq!(with, BTreeSet::from([2]));
        let all: BTreeSet<u32> = members.union(&with).copied().collect();
        assert!(g.views_between(&all).is_empty());
        assert_eq!(g.order(&all), vec![1, 2, 3]);
        assert_eq!(g.order(&members), vec![1, 3]);
    }
}
