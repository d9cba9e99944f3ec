//! One file per detector: how it attaches (with fallbacks), how its records become events,
//! and whatever it must watch from userspace.

pub mod fd;
pub mod hung_task;
pub mod oom;
pub mod oops;

use serde::Serialize;

use crate::event::Source;

/// One hook a detector tried.
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub hook: Source,
    pub target: String,
    /// Why it was not used; `None` for the one in use.
    pub error: Option<String>,
}

/// How a detector is attached on this kernel, for `check`, logs and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct DetectorStatus {
    pub detector: &'static str,
    /// The hook in use; `None` when every attempt failed.
    pub active: Option<Source>,
    /// Every hook tried, in order of preference.
    pub attempts: Vec<Attempt>,
    /// Anything else worth knowing (e.g. syscalls this kernel lacks).
    pub notes: Vec<String>,
}

impl DetectorStatus {
    pub fn new(detector: &'static str) -> Self {
        Self {
            detector,
            active: None,
            attempts: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn tried(&mut self, hook: Source, target: impl Into<String>, result: Result<(), String>) {
        let error = result.err();
        if error.is_none() && self.active.is_none() {
            self.active = Some(hook);
        }
        self.attempts.push(Attempt {
            hook,
            target: target.into(),
            error,
        });
    }

    /// The active attempt's target.
    pub fn active_target(&self) -> Option<&str> {
        self.attempts
            .iter()
            .find(|a| a.error.is_none())
            .map(|a| a.target.as_str())
    }
}
