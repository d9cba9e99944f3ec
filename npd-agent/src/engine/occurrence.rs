//! A detector's [`Report`] as an Event occurrence: aggregation key and targets.
//!
//! Aggregation keys are `Reason|subject|detail`, the subject being the pod's container (by
//! name when known, so a crash-looping container stays one series), the unit, the cgroup or
//! `node`, and the detail what the detector says tells problems of one subject apart (the
//! process, the stack's top function, the kernel's call site, the device).

use super::{
    events::Occurrence,
    subject::{budget_key, subject_key, targets},
    time::Timestamp,
};
use crate::{event::Event, problem::Report};

pub(crate) fn occurrence(report: Report, event: &Event, now: Timestamp) -> Occurrence {
    let attribution = event.attribution.as_ref();
    Occurrence {
        reason: report.reason,
        key: format!(
            "{}|{}|{}",
            report.reason,
            subject_key(attribution),
            report.detail_key
        ),
        message: report.message,
        targets: targets(attribution, &event.affected_pods),
        count: report.count.max(1),
        at: now.wall_at(event.ts_ns),
        budget: budget_key(attribution),
    }
}
