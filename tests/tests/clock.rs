//! Clock synchronisation, end to end on a real kube-apiserver: the test sets the kernel's own
//! clock state with adjtimex(2) — unsynchronized, then synchronized — and npd's NTPProblem
//! follows it; the original state is put back afterwards, also on failure.

use std::time::Duration;

use npd_tests::{
    agent::wait_for,
    machine::require_root,
    reporting::{cluster_with_node, condition, events, start_reporting_agent},
};

const NODE: &str = "npd-clock-test-node";

/// The kernel's clock state as the test found it; Drop puts it back.
#[derive(Debug)]
struct ClockStateGuard {
    status: i32,
    maxerror: i64,
    esterror: i64,
}

fn adjtimex(timex: &mut libc::timex) -> i32 {
    // SAFETY: a valid, exclusively borrowed timex for the duration of the call.
    unsafe { libc::adjtimex(timex) }
}

fn read() -> libc::timex {
    // SAFETY: all-zero is a valid timex; modes 0 only reads.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    assert!(
        adjtimex(&mut timex) >= 0,
        "adjtimex: {}",
        std::io::Error::last_os_error()
    );
    timex
}

impl ClockStateGuard {
    fn save() -> Self {
        let now = read();
        Self {
            status: now.status,
            maxerror: now.maxerror,
            esterror: now.esterror,
        }
    }

    /// Sets STA_UNSYNC and the errors: what a node with no working time daemon looks like,
    /// or, with `synchronized`, what one whose daemon just disciplined the clock looks like.
    fn set(&self, synchronized: bool) {
        // SAFETY: as in `read`.
        let mut timex: libc::timex = unsafe { std::mem::zeroed() };
        timex.modes = libc::ADJ_STATUS | libc::ADJ_MAXERROR | libc::ADJ_ESTERROR;
        if synchronized {
            timex.status = self.status & !libc::STA_UNSYNC;
            timex.maxerror = 1_000;
            timex.esterror = 100;
        } else {
            timex.status = self.status | libc::STA_UNSYNC;
            timex.maxerror = 16_000_000;
            timex.esterror = 16_000_000;
        }
        let state = adjtimex(&mut timex);
        assert!(
            state >= 0,
            "adjtimex needs CAP_SYS_TIME: {}",
            std::io::Error::last_os_error()
        );
        let expected = if synchronized {
            libc::TIME_OK
        } else {
            libc::TIME_ERROR
        };
        let now = read();
        assert_eq!(
            now.status & libc::STA_UNSYNC == 0,
            synchronized,
            "the kernel took the state (adjtimex returned {state}, expected {expected})"
        );
    }
}

impl Drop for ClockStateGuard {
    fn drop(&mut self) {
        // SAFETY: as in `read`.
        let mut timex: libc::timex = unsafe { std::mem::zeroed() };
        timex.modes = libc::ADJ_STATUS | libc::ADJ_MAXERROR | libc::ADJ_ESTERROR;
        timex.status = self.status;
        timex.maxerror = self.maxerror;
        timex.esterror = self.esterror;
        adjtimex(&mut timex);
    }
}

#[test]
fn ntp_problem_follows_the_kernels_clock_state() {
    require_root("sets the kernel's clock synchronisation state with adjtimex(2)");
    let clock = ClockStateGuard::save();
    let cluster = cluster_with_node(NODE);
    clock.set(false);
    let agent = start_reporting_agent(&cluster, NODE, &["--detectors", "clock"]);

    let down = wait_for(Duration::from_secs(20), "NTPProblem True", || {
        condition(&cluster, NODE, "NTPProblem").filter(|c| c["status"] == "True")
    })
    .unwrap();
    assert_eq!(down["reason"], "NTPIsDown");
    let message = down["message"].as_str().unwrap();
    assert!(message.contains("STA_UNSYNC"), "says why: {message}");
    wait_for(Duration::from_secs(15), "ClockUnsynchronized Event", || {
        events(&cluster)
            .ok()?
            .into_iter()
            .find(|e| e["reason"] == "ClockUnsynchronized")
    })
    .unwrap();

    // A time daemon disciplines the clock: the kernel says synchronized, npd follows within
    // one sampling period (10 s) and a heartbeat.
    clock.set(true);
    let up = wait_for(Duration::from_secs(25), "NTPProblem False", || {
        condition(&cluster, NODE, "NTPProblem").filter(|c| c["status"] == "False")
    })
    .unwrap();
    assert_eq!(up["reason"], "NTPIsUp");
    let _ = agent.stop();
    drop(clock);
}
