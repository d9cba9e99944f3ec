//! Global state put back also when the benchmark is interrupted. The guards of npd-tests
//! restore on drop, which a Ctrl-C never reaches; a full run lasts minutes and sets
//! fs.file-max to 1, kernel.bpf_stats_enabled to 1 and an ftrace event on for a while, and
//! runs agents whose programs would stay attached. So a thread waits for SIGINT, SIGTERM and
//! SIGHUP (and SIGHUP comes when the parent, e.g. `cargo xtask`, dies), writes back every value
//! changed, stops every process the benchmark started (its own process group), and exits.

use std::{
    path::{Path, PathBuf},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicI32, Ordering},
    },
};

use anyhow::bail;
use npd_tests::machine::Sysctl;

/// Files changed so far and their values before the change.
static CHANGED: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The write end of the pipe the signal handler wakes the restoring thread through.
static WAKE: AtomicI32 = AtomicI32::new(-1);
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
    let byte = 1u8;
    // SAFETY: write(2) is async-signal-safe; the fd stays open for the process's life.
    unsafe { libc::write(WAKE.load(Ordering::SeqCst), (&raw const byte).cast(), 1) };
}

/// Installs the handlers and the thread that acts on them. (Not by blocking the signals and
/// sigwait: processes started later would inherit the blocked mask and ignore SIGTERM.)
pub(crate) fn install() -> anyhow::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds in.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("cannot make a pipe for the signal handler");
    }
    let [read_end, write_end] = fds;
    WAKE.store(write_end, Ordering::SeqCst);
    // SAFETY: plain process-attribute calls. Leading a process group of its own lets the
    // benchmark stop everything it started; the parent's death must then be signalled, since
    // a Ctrl-C reaches only the terminal's foreground group.
    let own_group = unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP);
        libc::setpgid(0, 0) == 0 && libc::getpgrp() == libc::getpid()
    };
    std::thread::spawn(move || {
        let mut byte = 0u8;
        // SAFETY: reads one byte into `byte` from our own pipe; blocks until a signal.
        if unsafe { libc::read(read_end, (&raw mut byte).cast(), 1) } != 1 {
            return;
        }
        let signal = SIGNAL.load(Ordering::SeqCst);
        let changed = CHANGED.lock().unwrap_or_else(PoisonError::into_inner);
        for (path, original) in changed.iter().rev() {
            match std::fs::write(path, original) {
                Ok(()) => eprintln!(
                    "npd-bench: interrupted: restored {} to {original}",
                    path.display()
                ),
                Err(err) => eprintln!(
                    "npd-bench: interrupted: WARNING: could not restore {} to {original}: {err}",
                    path.display()
                ),
            }
        }
        drop(changed);
        if own_group {
            eprintln!("npd-bench: interrupted: stopping the agents and servers it started");
            // The main thread goes on meanwhile and may start one more process: signal twice.
            for _ in 0..2 {
                // SAFETY: signals this process group, this process included (handled above).
                unsafe { libc::kill(0, libc::SIGTERM) };
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        }
        std::process::exit(128 + signal);
    });
    for signal in SIGNALS {
        // SAFETY: installs a handler that only does async-signal-safe work; SA_RESTART keeps
        // the main thread's interrupted reads and waits going until the process exits.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                bail!("cannot handle signal {signal}");
            }
        }
    }
    Ok(())
}

/// [`Sysctl::set`], remembered so that an interruption puts it back too.
pub(crate) fn set(path: impl AsRef<Path>, value: &str) -> anyhow::Result<Sysctl> {
    let path = path.as_ref();
    let original = std::fs::read_to_string(path)?.trim().to_owned();
    let mut changed = CHANGED.lock().unwrap_or_else(PoisonError::into_inner);
    // The first value seen is the one from before the benchmark.
    if !changed.iter().any(|(p, _)| p == path) {
        changed.push((path.to_owned(), original));
    }
    drop(changed);
    Sysctl::set(path, value)
}
