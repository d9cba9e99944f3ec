//! The cluster-wide budget of nodes npd may taint at once, kept without a controller.
//!
//! The record is a ledger of the nodes holding a slot, in one annotation of one Lease, and
//! every change to it is a compare-and-swap: read the Lease (its resourceVersion), list the
//! Nodes, decide here, write the Lease back with that resourceVersion. The API server
//! refuses the write (409) if anyone changed the Lease in between, and the agent starts over
//! from a fresh read. An agent puts a taint on only after its node's entry is written, and
//! takes the entry out only after its node's last npd taint is off, so at every moment
//! `tainted nodes ⊆ ledger`, and no write lets the ledger grow beyond the limit. No clocks,
//! lease durations or leader are involved: a crashed agent's slot stays taken (the safe side)
//! until it comes back, and a deleted Node's entry is dropped by the next writer.
//!
//! This file is the pure part: the limit, the ledger's format and the decision.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use serde::{Deserialize, Serialize};

/// The annotation on the Lease that holds the ledger: a JSON object, node name -> when its
/// slot was taken (RFC 3339).
pub const LEDGER_ANNOTATION: &str = "npd.io/tainted-nodes";

/// `remediation.taints.maxUnhealthy`: how many nodes npd may keep tainted at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxUnhealthy {
    Nodes(u32),
    /// Of the Nodes in the cluster, rounded down but at least one (a percentage never
    /// forbids tainting altogether; `enabled: false` does).
    Percent(u32),
}

impl MaxUnhealthy {
    /// `3` or `10%`: a positive integer, or a percentage from 1% to 100%.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let problem = || format!("`{text}` is not a positive integer or a percentage 1-100%");
        if let Some(percent) = text.strip_suffix('%') {
            let percent: u32 = percent.trim().parse().map_err(|_| problem())?;
            if !(1..=100).contains(&percent) {
                return Err(problem());
            }
            return Ok(Self::Percent(percent));
        }
        match text.parse::<u32>() {
            Ok(0) | Err(_) => Err(problem()),
            Ok(nodes) => Ok(Self::Nodes(nodes)),
        }
    }

    /// The number of nodes that may be tainted in a cluster of `nodes` Nodes.
    pub fn limit(self, nodes: usize) -> usize {
        match self {
            Self::Nodes(n) => n as usize,
            Self::Percent(p) => (nodes * p as usize / 100).max(1),
        }
    }
}

impl fmt::Display for MaxUnhealthy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nodes(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The nodes holding a slot, as stored in [`LEDGER_ANNOTATION`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ledger {
    /// Node name -> when it took its slot.
    pub holders: BTreeMap<String, String>,
}

impl Ledger {
    pub fn parse(annotation: Option<&str>) -> Result<Self, serde_json::Error> {
        match annotation {
            None => Ok(Self::default()),
            Some(text) if text.trim().is_empty() => Ok(Self::default()),
            Some(text) => serde_json::from_str(text),
        }
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    pub fn holds(&self, node: &str) -> bool {
        self.holders.contains_key(node)
    }

    /// The ledger without `node`, or `None` if it holds no slot.
    pub fn without(&self, node: &str) -> Option<Self> {
        self.holds(node).then(|| {
            let mut ledger = self.clone();
            ledger.holders.remove(node);
            ledger
        })
    }
}

/// The Nodes as listed after the ledger was read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: BTreeSet<String>,
    /// Nodes carrying an npd taint. Normally all in the ledger; counted anyway, so a ledger
    /// lost or reset by hand cannot let the budget be overrun.
    pub tainted: BTreeSet<String>,
}

/// The budget's answer to one node asking for a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// It holds one already: nothing to write.
    AlreadyHeld,
    /// Write this ledger (with the node in it, entries of deleted Nodes dropped), then taint.
    Granted {
        ledger: Ledger,
        /// Nodes holding a slot with this one.
        used: usize,
        limit: usize,
    },
    /// The budget is spent by these nodes: do not taint, ask again later.
    Refused { holders: Vec<String>, limit: usize },
}

/// Whether `node` may take a slot. `already_tainted`: its npd taint is on already (a ledger
/// lost and found again), so the slot is recorded whatever the count: refusing would not
/// take the taint off.
pub fn reserve(
    ledger: &Ledger,
    view: &ClusterView,
    node: &str,
    max: MaxUnhealthy,
    already_tainted: bool,
    now: &str,
) -> Reservation {
    if ledger.holds(node) {
        return Reservation::AlreadyHeld;
    }
    // Entries of Nodes that no longer exist hold nothing: a deleted Node carries no taint.
    let mut live: BTreeMap<String, String> = ledger
        .holders
        .iter()
        .filter(|(name, _)| view.nodes.contains(*name))
        .map(|(name, since)| (name.clone(), since.clone()))
        .collect();
    let holders: BTreeSet<&String> = live
        .keys()
        .chain(view.tainted.iter())
        .filter(|name| *name != node)
        .collect();
    let limit = max.limit(view.nodes.len());
    if !already_tainted && holders.len() >= limit {
        return Reservation::Refused {
            holders: holders.into_iter().cloned().collect(),
            limit,
        };
    }
    let used = holders.len() + 1;
    live.insert(node.to_owned(), now.to_owned());
    Reservation::Granted {
        ledger: Ledger { holders: live },
        used,
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn ledger(list: &[&str]) -> Ledger {
        Ledger {
            holders: list
                .iter()
                .map(|s| ((*s).to_owned(), "t0".to_owned()))
                .collect(),
        }
    }

    #[test]
    fn limits() {
        let cases = [
            ("1", 10, 1),
            ("3", 2, 3),
            ("10%", 100, 10),
            ("10%", 15, 1),
            ("10%", 5, 1),
            ("25%", 5, 1),
            ("50%", 5, 2),
            ("100%", 7, 7),
            ("10 %", 30, 3),
        ];
        for (text, nodes, limit) in cases {
            let max = MaxUnhealthy::parse(text).unwrap();
            assert_eq!(max.limit(nodes), limit, "{text} of {nodes}");
        }
        for bad in ["0", "-1", "0%", "101%", "x", "1.5", "%", ""] {
            assert!(MaxUnhealthy::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(MaxUnhealthy::parse("25%").unwrap().to_string(), "25%");
    }

    #[test]
    fn reservations_by_table() {
        let five = names(&["a", "b", "c", "d", "e"]);
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, Ledger, ClusterView, MaxUnhealthy, bool, Reservation)> = vec![
            (
                "a free slot",
                ledger(&[]),
                ClusterView {
                    nodes: five.clone(),
                    tainted: names(&[]),
                },
                MaxUnhealthy::Nodes(1),
                false,
                Reservation::Granted {
                    ledger: Ledger {
                        holders: [("a".to_owned(), "now".to_owned())].into(),
                    },
                    used: 1,
                    limit: 1,
                },
            ),
            (
                "held already",
                ledger(&["a", "b"]),
                ClusterView {
                    nodes: five.clone(),
                    tainted: names(&["b"]),
                },
                MaxUnhealthy::Nodes(1),
                false,
                Reservation::AlreadyHeld,
            ),
            (
                "spent by the ledger (reserved, taint not on yet)",
                ledger(&["b"]),
                ClusterView {
                    nodes: five.clone(),
                    tainted: names(&[]),
                },
                MaxUnhealthy::Nodes(1),
                false,
                Reservation::Refused {
                    holders: vec!["b".into()],
                    limit: 1,
                },
            ),
            (
                "spent by a taint the ledger lost",
                ledger(&[]),
                ClusterView {
                    nodes: five.clone(),
                    tainted: names(&["c"]),
                },
                MaxUnhealthy::Percent(25),
                false,
                Reservation::Refused {
                    holders: vec!["c".into()],
                    limit: 1,
                },
            ),
            (
                "a deleted node's entry frees its slot and is dropped",
                ledger(&["gone"]),
                ClusterView {
                    nodes: five.clone(),
                    tainted: names(&[]),
                },
                MaxUnhealthy::Nodes(1),
                false,
                Reservation::Granted {
                    ledger: Ledger {
                        holders: [("a".to_owned(), "now".to_owned())].into(),
                    },
                    used: 1,
                    limit: 1,
                },
            ),
            (
                "a percentage of the listed nodes",
                ledger(&["b"]),
                ClusterView {
                    nodes: five.clone(),
                    tainted: names(&["b", "c"]),
                },
                MaxUnhealthy::Percent(60),
                false,
                Reservation::Granted {
                    ledger: Ledger {
                        holders: [
                            ("a".to_owned(), "now".to_owned()),
                            ("b".to_owned(), "t0".to_owned()),
                        ]
                        .into(),
                    },
                    used: 3,
                    limit: 3,
                },
            ),
            (
                "already tainted: recorded even over the budget",
                ledger(&["b"]),
                ClusterView {
                    nodes: five.clone(),
                    tainted: names(&["a", "b"]),
                },
                MaxUnhealthy::Nodes(1),
                true,
                Reservation::Granted {
                    ledger: Ledger {
                        holders: [
                            ("a".to_owned(), "now".to_owned()),
                            ("b".to_owned(), "t0".to_owned()),
                        ]
                        .into(),
                    },
                    used: 2,
                    limit: 1,
                },
            ),
        ];
        for (name, ledger, view, max, tainted, expected) in cases {
            assert_eq!(
                reserve(&ledger, &view, "a", max, tainted, "now"),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn the_ledger_round_trips_and_releases() {
        let ledger = ledger(&["a", "b"]);
        let text = ledger.to_annotation();
        assert_eq!(text, r#"{"a":"t0","b":"t0"}"#);
        assert_eq!(Ledger::parse(Some(&text)).unwrap(), ledger);
        assert_eq!(Ledger::parse(None).unwrap(), Ledger::default());
        assert!(Ledger::parse(Some("[1,2]")).is_err());
        assert_eq!(ledger.without("a").unwrap().holders.len(), 1);
        assert_eq!(ledger.without("z"), None);
    }

    /// Many agents deciding from interleaved reads: with compare-and-swap, a decision made on
    /// a stale read is never written, so the ledger never exceeds the limit.
    #[test]
    fn compare_and_swap_keeps_racing_agents_within_the_budget() {
        let nodes: BTreeSet<String> = (0..8).map(|i| format!("n{i}")).collect();
        let view = ClusterView {
            nodes: nodes.clone(),
            tainted: BTreeSet::new(),
        };
        let max = MaxUnhealthy::Nodes(3);
        // The stored object: (version, ledger).
        let mut stored = (0u64, Ledger::default());
        // Every agent reads first, then all try to write in turn: the classic lost update.
        let reads: Vec<(String, (u64, Ledger))> =
            nodes.iter().map(|n| (n.clone(), stored.clone())).collect();
        let mut pending = reads;
        while !pending.is_empty() {
            let mut retry = Vec::new();
            for (node, (version, read)) in pending {
                match reserve(&read, &view, &node, max, false, "now") {
                    Reservation::Granted { ledger, .. } => {
                        if stored.0 == version {
                            stored = (version + 1, ledger);
                        } else {
                            // 409: read again.
                            retry.push((node, stored.clone()));
                        }
                    }
                    Reservation::AlreadyHeld | Reservation::Refused { .. } => {}
                }
            }
            assert!(stored.1.holders.len() <= 3, "{:?}", stored.1);
            pending = retry;
        }
        assert_eq!(stored.1.holders.len(), 3, "the budget is used, not wasted");
    }
}
