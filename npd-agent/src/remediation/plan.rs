//! What to do with this node's taints, given which remediated conditions are True: pure, no
//! IO, tested by tables.
//!
//! npd's own taints are told apart from everyone else's by their value alone: a taint whose
//! key starts with `npd.io/` and whose value is [`OWN_TAINT_VALUE`] is npd's, anything else
//! is not. The mark is on the Node itself, so an agent that restarts (or replaces another)
//! recognizes what an earlier run added, and an operator takes a taint over by changing its
//! value (`kubectl taint node N npd.io/KernelDeadlock=mine:NoSchedule --overwrite`).

use std::fmt;

use k8s_openapi::api::core::v1::Taint;
use serde::Deserialize;

/// Prefix of every taint key npd uses: `npd.io/<condition>`.
pub const TAINT_KEY_PREFIX: &str = "npd.io/";
/// The value that marks a taint as npd's.
pub const OWN_TAINT_VALUE: &str = "added-by-npd";

/// What a taint does to pods without a matching toleration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum TaintEffect {
    /// New pods are not scheduled here; running pods stay.
    NoSchedule,
    /// The scheduler avoids the node if it can.
    PreferNoSchedule,
    /// Running pods without a toleration are evicted too.
    NoExecute,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSchedule => "NoSchedule",
            Self::PreferNoSchedule => "PreferNoSchedule",
            Self::NoExecute => "NoExecute",
        }
    }
}

impl fmt::Display for TaintEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The taint key for a condition as written on the Node.
pub fn taint_key(condition_name: &str) -> String {
    format!("{TAINT_KEY_PREFIX}{condition_name}")
}

/// Why `name` cannot follow `npd.io/` in a taint key (a qualified name's name part: at most
/// 63 characters, alphanumerics, `-`, `_` and `.`, alphanumeric at both ends).
pub fn invalid_key_name(name: &str) -> Option<String> {
    let alphanumeric_ends = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    let allowed = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.len() > 63 {
        Some(format!("`{name}` is longer than 63 characters"))
    } else if !allowed || !alphanumeric_ends {
        Some(format!(
            "`{name}` may only hold letters, digits, `-`, `_` and `.`, and must start and end \
             with a letter or digit"
        ))
    } else {
        None
    }
}

/// Whether npd added this taint (see the module's documentation).
pub fn is_own(taint: &Taint) -> bool {
    taint.key.starts_with(TAINT_KEY_PREFIX) && taint.value.as_deref() == Some(OWN_TAINT_VALUE)
}

/// The taint npd puts on for `key`.
pub fn own_taint(key: &str, effect: TaintEffect) -> Taint {
    Taint {
        key: key.to_owned(),
        value: Some(OWN_TAINT_VALUE.to_owned()),
        effect: effect.as_str().to_owned(),
        time_added: None,
    }
}

/// `key=value:effect`, as kubectl writes taints.
pub fn describe(taint: &Taint) -> String {
    match taint.value.as_deref() {
        Some(value) if !value.is_empty() => format!("{}={value}:{}", taint.key, taint.effect),
        _ => format!("{}:{}", taint.key, taint.effect),
    }
}

/// One remediated condition as the engine wants it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedTaint {
    /// `npd.io/<condition>`.
    pub key: String,
    /// The condition's type as written on the Node.
    pub condition: String,
    /// The condition is True: the taint should be on.
    pub wanted: bool,
    /// `reason: message` of the condition, for Events.
    pub why: String,
}

/// The changes that bring the node's taints to what the conditions want.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaintPlan {
    /// npd taints to put on (each needs the node to hold a budget slot).
    pub add: Vec<Taint>,
    /// npd taints to take off: their condition is False, no longer remediated, or their
    /// effect is not the configured one any more.
    pub remove: Vec<Taint>,
    /// Someone else's taints with the key and effect npd would add: npd cannot add its own
    /// beside them (a key and effect occur once per node) and never touches them.
    pub left_alone: Vec<Taint>,
}

impl TaintPlan {
    /// Nothing to change on the node.
    pub fn is_noop(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Whether npd taints stay on the node after the removals (before any addition).
    pub fn keeps_own(&self, current: &[Taint]) -> bool {
        current
            .iter()
            .any(|t| is_own(t) && !self.remove.contains(t))
    }

    /// The node's taints after the plan, with or without the additions (the budget may
    /// refuse them). Everyone else's taints keep their place and their fields.
    pub fn apply(&self, current: &[Taint], with_additions: bool) -> Vec<Taint> {
        let mut taints: Vec<Taint> = current
            .iter()
            .filter(|t| !self.remove.contains(t))
            .cloned()
            .collect();
        if with_additions {
            taints.extend(self.add.iter().cloned());
        }
        taints
    }
}

fn same_slot(taint: &Taint, key: &str, effect: TaintEffect) -> bool {
    taint.key == key && taint.effect == effect.as_str()
}

/// The plan for `current` taints when the remediated conditions are `wanted`, with npd's
/// taints carrying `effect`.
pub fn plan(current: &[Taint], wanted: &[WantedTaint], effect: TaintEffect) -> TaintPlan {
    let mut plan = TaintPlan::default();
    let desired = |taint: &Taint| {
        wanted
            .iter()
            .any(|w| w.wanted && same_slot(taint, &w.key, effect))
    };
    for taint in current.iter().filter(|t| is_own(t)) {
        if !desired(taint) {
            plan.remove.push(taint.clone());
        }
    }
    for w in wanted.iter().filter(|w| w.wanted) {
        let in_slot: Vec<&Taint> = current
            .iter()
            .filter(|t| same_slot(t, &w.key, effect))
            .collect();
        if in_slot.iter().any(|t| is_own(t)) {
            continue;
        }
        match in_slot.first() {
            Some(foreign) => plan.left_alone.push((*foreign).clone()),
            None => plan.add.push(own_taint(&w.key, effect)),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.to_owned(),
            value: value.map(str::to_owned),
            effect: effect.to_owned(),
            time_added: None,
        }
    }

    fn own(key: &str, effect: &str) -> Taint {
        taint(key, Some(OWN_TAINT_VALUE), effect)
    }

    fn wanted(condition: &str, is_true: bool) -> WantedTaint {
        WantedTaint {
            key: taint_key(condition),
            condition: condition.to_owned(),
            wanted: is_true,
            why: String::new(),
        }
    }

    const DEADLOCK: &str = "npd.io/KernelDeadlock";
    const OOPS: &str = "npd.io/KernelOops";

    #[test]
    fn plans_by_table() {
        let cordon = taint("node.kubernetes.io/unschedulable", None, "NoSchedule");
        let manual_same_slot = taint(DEADLOCK, Some("manual"), "NoSchedule");
        let manual_no_value = taint(DEADLOCK, None, "NoSchedule");
        let manual_other_effect = taint(DEADLOCK, Some("ops"), "PreferNoSchedule");
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, Vec<Taint>, Vec<WantedTaint>, TaintPlan)> = vec![
            (
                "True and absent: add",
                vec![cordon.clone()],
                vec![wanted("KernelDeadlock", true), wanted("KernelOops", false)],
                TaintPlan {
                    add: vec![own(DEADLOCK, "NoSchedule")],
                    ..TaintPlan::default()
                },
            ),
            (
                "True and present: nothing",
                vec![own(DEADLOCK, "NoSchedule")],
                vec![wanted("KernelDeadlock", true)],
                TaintPlan::default(),
            ),
            (
                "False and present: remove only npd's",
                vec![cordon.clone(), own(DEADLOCK, "NoSchedule")],
                vec![wanted("KernelDeadlock", false)],
                TaintPlan {
                    remove: vec![own(DEADLOCK, "NoSchedule")],
                    ..TaintPlan::default()
                },
            ),
            (
                "False and someone else's with the key: untouched",
                vec![manual_same_slot.clone(), manual_no_value.clone()],
                vec![wanted("KernelDeadlock", false)],
                TaintPlan::default(),
            ),
            (
                "True and someone else's in the same slot: left alone, nothing added",
                vec![manual_same_slot.clone()],
                vec![wanted("KernelDeadlock", true)],
                TaintPlan {
                    left_alone: vec![manual_same_slot.clone()],
                    ..TaintPlan::default()
                },
            ),
            (
                "an empty value is someone else's too",
                vec![manual_no_value.clone()],
                vec![wanted("KernelDeadlock", true)],
                TaintPlan {
                    left_alone: vec![manual_no_value.clone()],
                    ..TaintPlan::default()
                },
            ),
            (
                "True and someone else's with another effect: npd's goes beside it",
                vec![manual_other_effect.clone()],
                vec![wanted("KernelDeadlock", true)],
                TaintPlan {
                    add: vec![own(DEADLOCK, "NoSchedule")],
                    ..TaintPlan::default()
                },
            ),
            (
                "the configured effect changed: replace npd's",
                vec![own(DEADLOCK, "NoExecute")],
                vec![wanted("KernelDeadlock", true)],
                TaintPlan {
                    add: vec![own(DEADLOCK, "NoSchedule")],
                    remove: vec![own(DEADLOCK, "NoExecute")],
                    ..TaintPlan::default()
                },
            ),
            (
                "an npd taint of a condition no longer remediated: removed",
                vec![own("npd.io/FDPressure", "NoSchedule")],
                vec![wanted("KernelDeadlock", false)],
                TaintPlan {
                    remove: vec![own("npd.io/FDPressure", "NoSchedule")],
                    ..TaintPlan::default()
                },
            ),
            (
                "npd's value on a key outside npd.io/ is not npd's",
                vec![taint("example.com/x", Some(OWN_TAINT_VALUE), "NoSchedule")],
                vec![wanted("KernelDeadlock", false)],
                TaintPlan::default(),
            ),
            (
                "two conditions: one on, one off",
                vec![own(OOPS, "NoSchedule")],
                vec![wanted("KernelDeadlock", true), wanted("KernelOops", false)],
                TaintPlan {
                    add: vec![own(DEADLOCK, "NoSchedule")],
                    remove: vec![own(OOPS, "NoSchedule")],
                    ..TaintPlan::default()
                },
            ),
        ];
        for (name, current, wanted, expected) in cases {
            assert_eq!(
                plan(&current, &wanted, TaintEffect::NoSchedule),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn applying_keeps_everyone_elses_taints_in_place() {
        let cordon = taint("node.kubernetes.io/unschedulable", None, "NoSchedule");
        let manual = taint(DEADLOCK, Some("manual"), "NoExecute");
        let current = vec![cordon.clone(), own(OOPS, "NoSchedule"), manual.clone()];
        let wanted = [wanted("KernelDeadlock", true), wanted("KernelOops", false)];
        let plan = plan(&current, &wanted, TaintEffect::NoSchedule);
        assert!(!plan.keeps_own(&current));
        assert_eq!(
            plan.apply(&current, true),
            vec![cordon.clone(), manual.clone(), own(DEADLOCK, "NoSchedule")]
        );
        assert_eq!(
            plan.apply(&current, false),
            vec![cordon, manual],
            "refused by the budget: only the removals"
        );
    }

    #[test]
    fn key_names() {
        assert_eq!(invalid_key_name("KernelDeadlock"), None);
        assert_eq!(invalid_key_name("FD.Pressure_2"), None);
        for bad in ["", "-x", "x-", "has space", "a/b", &"x".repeat(64)] {
            assert!(invalid_key_name(bad).is_some(), "{bad:?}");
        }
        assert_eq!(
            describe(&own(DEADLOCK, "NoSchedule")),
            "npd.io/KernelDeadlock=added-by-npd:NoSchedule"
        );
        assert_eq!(
            describe(&taint(DEADLOCK, None, "NoExecute")),
            "npd.io/KernelDeadlock:NoExecute"
        );
    }
}
