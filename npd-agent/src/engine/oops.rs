//! Conditions that stay True until reboot (KernelOops: the kernel stays tainted;
//! CperHardwareErrorFatal: the hardware stays broken).

use super::{condition::NodeCondition, time::Timestamp};
use crate::problem::Clearing;

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
        let tainted = match taint_flags {
            Some("") => "the kernel is tainted and ".to_owned(),
            Some(flags) => format!("the kernel is tainted ({flags}) and "),
            None => String::new(),
        };
        let problems = match condition.condition_type.spec().clearing {
            Clearing::Reboot { problems, .. } => problems,
            _ => "problems",
        };
        // Name the tally only when earlier ones were seen too.
        let count = if self.seen > occurrences.max(1) {
            format!("{} {problems} seen this boot, the last: ", self.seen)
        } else {
            String::new()
        };
        let message = format!("{count}{description}; {tainted}the node needs a reboot");
        condition.set_problem(message, now.wall);
    }
}
