//! Facts about the running kernel: release, BTF, tracefs, cgroup layout, privileges.

pub mod btf;
pub mod kallsyms;
pub mod mountinfo;
pub mod offsets;
pub mod procfs;
pub mod tracefs;

use std::path::{Path, PathBuf};

/// `uname -r`.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// (major, minor) of the running kernel, if the release string parses.
pub fn version() -> Option<(u32, u32)> {
    let release = release();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Returns freed heap memory to the kernel (glibc keeps it otherwise).
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: no preconditions; it only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How the node's cgroups are laid out, which decides what `cgroup_id` in a record means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupLayout {
    /// cgroup v2 only, mounted at /sys/fs/cgroup.
    Unified,
    /// cgroup v1 controllers (possibly with a v2 hierarchy beside them): the kubelet places
    /// pods in the v1 hierarchies, so npd attributes by the memory controller's.
    Legacy,
}

impl CgroupLayout {
    /// The layout of the host's cgroups, mounted under `host_root` (`/` on a node, `/host`
    /// in npd's DaemonSet, whose own /sys/fs/cgroup is a namespaced view).
    pub fn detect(host_root: &Path) -> Self {
        if is_cgroup2(&host_root.join("sys/fs/cgroup")) {
            Self::Unified
        } else {
            Self::Legacy
        }
    }

    /// Where cgroup ids of records can be looked up as directory inode numbers.
    pub fn attribution_root(self, host_root: &Path) -> PathBuf {
        match self {
            Self::Unified => host_root.join("sys/fs/cgroup"),
            Self::Legacy => host_root.join("sys/fs/cgroup/memory"),
        }
    }
}

fn is_cgroup2(path: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: c_path is NUL-terminated; stat is valid for writes.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    // f_type's width differs between targets.
    #[allow(clippy::unnecessary_cast)]
    // SAFETY: zero-initialized, so valid even if statfs failed (then rc says so).
    let f_type = unsafe { stat.assume_init() }.f_type as i64;
    rc == 0 && f_type == CGROUP2_SUPER_MAGIC
}

/// The effective capabilities of this process, from /proc/self/status.
pub fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

pub fn has_capability(cap: u32) -> bool {
    effective_capabilities() & (1 << cap) != 0
}

/// What is missing to load and attach tracing programs, in words; `None` if nothing is.
pub fn missing_privileges() -> Option<String> {
    let bpf = has_capability(CAP_BPF) || has_capability(CAP_SYS_ADMIN);
    let perfmon = has_capability(CAP_PERFMON) || has_capability(CAP_SYS_ADMIN);
    let mut missing = Vec::new();
    if !bpf {
        missing.push("CAP_BPF");
    }
    if !perfmon {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "npd needs {} to load its kernel programs (or CAP_SYS_ADMIN on kernels before 5.8); \
             run it as root (sudo) or grant the capabilities",
            missing.join(" and ")
        ))
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so loading cannot fail
/// on a small default. Later kernels account to the memory cgroup and ignore it.
pub fn raise_memlock_limit() -> std::io::Result<()> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}
