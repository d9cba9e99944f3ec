//! The machine lock: an flock on `$TMPDIR/npd-machine.lock`, held while kernel tests or
//! benchmarks use this machine's kernel. They load programs, change sysctls and provoke
//! problems, so two runs at once (two checkouts, a bench and a test) would disturb each
//! other. `cargo xtask test` takes it around the kernel tests, npd-bench around its
//! benchmarks.

use std::os::fd::AsRawFd;

use anyhow::{Context, bail};

/// Held until dropped (or the process ends).
#[derive(Debug)]
pub struct MachineLock {
    _file: std::fs::File,
}

impl MachineLock {
    /// Takes the lock, waiting for whoever holds it; `program` (`xtask`, `npd-bench`) and
    /// `purpose` (`kernel tests`) name the waiter in the message printed while it waits.
    pub fn acquire(program: &str, purpose: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join("npd-machine.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: a valid fd owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            eprintln!(
                "{program}: another npd test or benchmark is using this machine's kernel ({}): \
                 waiting for it before the {purpose}",
                path.display()
            );
            // SAFETY: as above; blocks until the other run ends.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                bail!("cannot lock {}", path.display());
            }
        }
        Ok(Self { _file: file })
    }
}
