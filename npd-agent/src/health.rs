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
    /// When the reporter last made progress: it comes round its loop at least every
    /// heartbeat (also while backing off from a failing API server) and stamps after every
    /// request, so a long drain of queued Events (512 x 2 requests of up to 20 s) is progress,
    /// not a stall; only one request hung past the stall limit is.
    reporter_progress_ns: AtomicU64,
    /// Whether there is a reporter (a cluster) at all.
    reporting: AtomicBool,
    hooks_attached: AtomicBool,
    /// With a cluster: the node was read, so conditions are restored.
    node_read: AtomicBool,
    /// Why a required hook is gone, if one is.
    detached: Mutex<Option<String>>,
    /// When the remediation pass in flight started (0: none). A pass waits on the API server
    /// only; idle between passes, the task stamps nothing and is not stuck.
    remediation_pass_ns: AtomicU64,
    /// Background tasks that ended while the agent runs, and why.
    ended_tasks: Mutex<Vec<String>>,
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
            remediation_pass_ns: AtomicU64::new(0),
            ended_tasks: Mutex::new(Vec::new()),
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

    /// A remediation pass starts (`true`) or ends (`false`).
    pub fn remediation_pass(&self, in_flight: bool) {
        let stamp = if in_flight {
            clock::monotonic_ns().max(1)
        } else {
            0
        };
        self.remediation_pass_ns.store(stamp, Ordering::Relaxed);
    }

    /// A task that should run as long as the agent ended (it panicked, or returned early).
    pub fn task_ended(&self, why: String) {
        self.ended_tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(why);
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
        if self.remediation_pass_ns.load(Ordering::Relaxed) != 0
            && let Some(age) = self.stalled(&self.remediation_pass_ns, self.reporter_stall)
        {
            failures.push(format!(
                "a remediation pass has been waiting on the API server for {:.0}s",
                age.as_secs_f64()
            ));
        }
        failures.extend(
            self.ended_tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
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
        health.task_ended("the remediation task panicked".into());
        assert_eq!(health.check_live().len(), 3);
    }

    #[test]
    fn only_a_remediation_pass_in_flight_can_be_stuck() {
        let health = Health::new(Duration::from_secs(3600), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert!(health.check_live().is_empty(), "idle between passes");
        health.remediation_pass(true);
        std::thread::sleep(Duration::from_millis(2));
        let live = health.check_live();
        assert_eq!(live.len(), 1, "{live:?}");
        assert!(live[0].contains("remediation pass"));
        health.remediation_pass(false);
        assert!(health.check_live().is_empty());
    }
}
