//! The machine lock: the same flock on `$TMPDIR/npd-machine.lock` that `cargo xtask test`
//! takes (xtask/src/util.rs, `lock_machine`), so a benchmark never overlaps a kernel test run
//! or another benchmark on this machine's kernel.

use std::os::fd::AsRawFd;

use anyhow::{Context, bail};

/// Held until dropped (or the process ends).
#[derive(Debug)]
pub(crate) struct MachineLock {
    _file: std::fs::File,
}

impl MachineLock {
    pub(crate) fn acquire(purpose: &str) -> anyhow::Result<Self> {
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
                "npd-bench: another npd test or benchmark is using this machine's kernel ({}): \
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
