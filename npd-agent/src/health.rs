//! Health that tells the truth (NPD's /healthz always says ok): each part of the agent
//! stamps its progress here, and /healthz fails when one stops making it.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::clock;

#[derive(Debug)]
pub struct Health {
    /// When the ring-buffer consumer last came round its loop (it does at least every tick).
    consumer_progress_ns: AtomicU64,
    /// When the reporter last came round its loop (it does at least every heartbeat, also
    /// while backing off from a failing API server).
    reporter_progress_ns: AtomicU64,
    /// Whether there is a reporter (a cluster) at all.
    reporting: AtomicBool,
    hooks_attached: AtomicBool,
    /// With a cluster: the node was read, so conditions are restored.
    node_read: AtomicBool,
    /// Why a required hook is gone, if one is.
    detached: Mutex<Option<String>>,
    /// How long without progress counts as stuck.
    consumer_stall: Duration,
    reporter_stall: Duration,
}

/// A failed check, in words.
pub type Unhealthy = String;

impl Health {
    pub fn new(consumer_stall: Duration, reporter_stall: Duration) -> Self {
        let now = clock::monotonic_ns();
        Self {
            consumer_progress_ns: AtomicU64::new(now),
            reporter_progress_ns: AtomicU64::new(now),
            reporting: AtomicBool::new(false),
            hooks_attached: AtomicBool::new(false),
            node_read: AtomicBool::new(false),
            detached: Mutex::new(None),
            consumer_stall,
            reporter_stall,
        }
    }

    pub fn consumer_progressed(&self) {
        self.consumer_progress_ns
            .store(clock::monotonic_ns(), Ordering::Relaxed);
    }

    pub fn reporter_progressed(&self) {
        self.reporter_progress_ns
            .store(clock::monotonic_ns(), Ordering::Relaxed);
    }

    pub fn set_reporting(&self, reporting: bool) {
        self.reporting.store(reporting, Ordering::Relaxed);
        self.reporter_progressed();
    }

    pub fn set_hooks_attached(&self) {
        self.hooks_attached.store(true, Ordering::Relaxed);
    }

    pub fn set_node_read(&self) {
        self.node_read.store(true, Ordering::Relaxed);
    }

    pub fn set_detached(&self, why: Option<String>) {
        *self.detached.lock().unwrap_or_else(PoisonError::into_inner) = why;
    }

    fn stalled(&self, stamp: &AtomicU64, limit: Duration) -> Option<Duration> {
        let age = Duration::from_nanos(
            clock::monotonic_ns().saturating_sub(stamp.load(Ordering::Relaxed)),
        );
        (age > limit).then_some(age)
    }

    /// Liveness: every failing check.
    pub fn check_live(&self) -> Vec<Unhealthy> {
        let mut failures = Vec::new();
        if let Some(age) = self.stalled(&self.consumer_progress_ns, self.consumer_stall) {
            failures.push(format!(
                "the ring-buffer consumer has made no progress for {:.0}s",
                age.as_secs_f64()
            ));
        }
        if self.reporting.load(Ordering::Relaxed)
            && let Some(age) = self.stalled(&self.reporter_progress_ns, self.reporter_stall)
        {
            failures.push(format!(
                "the reporting loop has made no progress for {:.0}s",
                age.as_secs_f64()
            ));
        }
        if let Some(why) = self
            .detached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            failures.push(why);
        }
        failures
    }

    /// Readiness: hooks attached and, with a cluster, the node read.
    pub fn check_ready(&self) -> Vec<Unhealthy> {
        let mut failures = Vec::new();
        if !self.hooks_attached.load(Ordering::Relaxed) {
            failures.push("kernel hooks not attached yet".to_owned());
        }
        if self.reporting.load(Ordering::Relaxed) && !self.node_read.load(Ordering::Relaxed) {
            failures.push("the node has not been read from the API server yet".to_owned());
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_failure_it_sees() {
        let health = Health::new(Duration::ZERO, Duration::from_secs(3600));
        assert_eq!(health.check_ready().len(), 1, "no hooks yet");
        health.set_hooks_attached();
        assert!(
            health.check_ready().is_empty(),
            "standalone: ready once attached"
        );
        health.set_reporting(true);
        assert_eq!(health.check_ready().len(), 1, "waiting for the node");
        health.set_node_read();
        assert!(health.check_ready().is_empty());

        std::thread::sleep(Duration::from_millis(2));
        let live = health.check_live();
        assert_eq!(live.len(), 1, "{live:?}");
        assert!(live[0].contains("consumer"));
        health.set_detached(Some("hung_task: tp_btf link is gone".into()));
        assert_eq!(health.check_live().len(), 2);
    }
}
