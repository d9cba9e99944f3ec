//! Conditions that stay True until reboot (KernelOops: the kernel stays tainted).

use super::{condition::NodeCondition, time::Timestamp};

#[derive(Debug, Default)]
pub(crate) struct OopsState {
    /// Oopses seen by this engine (a record may stand for several).
    seen: u64,
}

impl OopsState {
    /// `description` says what happened and where (the detector's words).
    pub(crate) fn on_oops(
        &mut self,
        occurrences: u64,
        description: &str,
        taint_flags: Option<&str>,
        condition: &mut NodeCondition,
        now: Timestamp,
    ) {
        self.seen += occurrences.max(1);
        let taint = taint_flags
            .filter(|flags| !flags.is_empty())
            .map(|flags| format!(" ({flags})"))
            .unwrap_or_default();
        // Name the tally only when earlier oopses were seen too.
        let count = if self.seen > occurrences.max(1) {
            format!("{} kernel oopses seen this boot, the last: ", self.seen)
        } else {
            String::new()
        };
        let message = format!(
            "{count}{description}; the kernel is tainted{taint} and the node needs a reboot"
        );
        condition.set_problem(message, now.wall);
    }
}
