//! Conditions raised and cleared by their detector under a key (a device, a mount): True while
//! any key is raised. The message names the most recent problem and how many there are.

use std::collections::BTreeMap;

use super::{condition::NodeCondition, time::Timestamp};

/// The key a True condition restored from the Node stands under until its detector says what
/// is current ([`KeyedState::resync`]).
const RESTORED: &str = "restored";

#[derive(Debug, Default)]
pub(crate) struct KeyedState {
    /// Raised problems: key -> (message, raised at (monotonic ns), the reason if not the
    /// spec's).
    raised: BTreeMap<String, (String, u64, Option<&'static str>)>,
}

impl KeyedState {
    pub(crate) fn raise(
        &mut self,
        key: &str,
        message: String,
        reason: Option<&'static str>,
        condition: &mut NodeCondition,
        now: Timestamp,
    ) {
        self.raised
            .insert(key.to_owned(), (message, now.monotonic_ns, reason));
        self.publish(None, condition, now);
    }

    pub(crate) fn clear(
        &mut self,
        key: &str,
        message: String,
        condition: &mut NodeCondition,
        now: Timestamp,
    ) {
        if self.raised.remove(key).is_some() {
            self.publish(Some(message), condition, now);
        }
    }

    /// `current` is every problem there is now: the rest are cleared.
    pub(crate) fn resync(
        &mut self,
        current: &[(String, String)],
        reason: Option<&'static str>,
        condition: &mut NodeCondition,
        now: Timestamp,
    ) {
        let before = self.raised.len();
        self.raised
            .retain(|key, _| current.iter().any(|(k, _)| k == key));
        let mut changed = before != self.raised.len();
        for (key, message) in current {
            match self.raised.get_mut(key) {
                // Same problem, but its reason or message moved (another component, a new
                // error): published, with the time it was first raised.
                Some(entry) if entry.0 != *message || entry.2 != reason => {
                    (entry.0, entry.2) = (message.clone(), reason);
                    changed = true;
                }
                Some(_) => {}
                None => {
                    self.raised
                        .insert(key.clone(), (message.clone(), now.monotonic_ns, reason));
                    changed = true;
                }
            }
        }
        if changed {
            self.publish(None, condition, now);
        }
    }

    /// A True condition found on the Node stays True until its detector resyncs or clears.
    pub(crate) fn restore(&mut self, condition: &NodeCondition, now: Timestamp) {
        if condition.is_true() {
            self.raised.insert(
                RESTORED.to_owned(),
                (condition.message.clone(), now.monotonic_ns, None),
            );
        }
    }

    fn publish(&self, cleared: Option<String>, condition: &mut NodeCondition, now: Timestamp) {
        let latest = self
            .raised
            .values()
            .max_by_key(|(_, at, _)| *at)
            .map(|(message, _, reason)| (message.clone(), *reason));
        match latest {
            None => condition.set_healthy(cleared, now.wall),
            Some((message, reason)) if self.raised.len() == 1 => {
                condition.set_problem_as(reason, message, now.wall);
            }
            Some((message, reason)) => condition.set_problem_as(
                reason,
                format!("{} problems; the latest: {message}", self.raised.len()),
                now.wall,
            ),
        }
    }
}
