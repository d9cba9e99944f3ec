//! The ABI between npd's eBPF programs and its agent.
//!
//! Every record in the ring buffer starts with a [`RecordHeader`]; its `kind` names the
//! payload struct that follows, one module per detector. All layouts are `#[repr(C)]`, sized
//! and aligned at compile time, and free of implicit padding, so both sides read the same bytes
//! whatever compiler produced them.
#![no_std]

pub mod cgroup;
pub mod config;
pub mod counters;
pub mod record;
mod registry;

pub use record::{Hook, RecordHeader, RecordKind};

// The detector registry: every detector, once. A new detector with kernel programs adds its
// line under `kernel` and its ABI file beside this one; one that runs in the agent alone adds
// its name under `agent`. The eBPF crate and the agent pick them up from here
// (docs/adding-a-detector.md).
registry::registry! {
    $
    kernel {
        /// fd exhaustion (EMFILE, ENFILE) from fd-creating syscalls.
        fd: Fd = 0 => [FdExhausted = 1],
        /// Tasks blocked in D state (khungtaskd).
        hung_task: HungTask = 1 => [HungTask = 2],
        /// OOM kills.
        oom: Oom = 2 => [OomKill = 3],
        /// Kernel oops and WARN.
        oops: Oops = 3 => [KernelOops = 4, KernelWarning = 5],
        /// Filesystem errors and shutdowns (ext4, XFS), block I/O errors.
        fs: Fs = 4 => [FsError = 6, BlockIoError = 7],
        /// Hardware errors from the RAS tracepoints: machine checks, EDAC memory errors,
        /// poisoned pages, PCIe AER and firmware (CPER) reports.
        hardware: Hardware = 5 => [
            MachineCheck = 8,
            MemoryError = 9,
            MemoryFailure = 10,
            PlatformError = 11,
        ],
        /// Node daemons (kubelet, container runtimes) starting and dying.
        daemons: Daemons = 6 => [DaemonStart = 12, DaemonExit = 13],
    }
    agent {
        /// Clock synchronisation (adjtimex).
        clock,
        /// Sustained PSI stalls of the node and of pods (/proc/pressure, *.pressure).
        pressure,
        /// Conntrack table fill and drops (nf_conntrack).
        conntrack,
        /// Unreaped zombie children per parent (/proc/<pid>/stat).
        zombies,
        /// Tasks vs kernel.pid_max and threads-max.
        pids,
        /// Pods' tasks vs their pids.max, and the forks it refused (pids.events).
        pod_pids,
        /// The container runtime (CRI) and the kubelet (healthz) asked whether they work.
        daemon_health,
    }
}

// After the registry: it uses `for_each_kernel_detector!`, which is in scope from here on.
pub mod names;

/// Size of `task_struct::comm` (TASK_COMM_LEN), fixed in the kernel's UAPI-visible ABI.
pub const TASK_COMM_LEN: usize = 16;

/// Frames captured for a kernel stack (hung task, OOM trigger, oops).
pub const MAX_STACK_DEPTH: usize = 32;

/// Asserts a layout at compile time: size, alignment, and that the size is a multiple of 8
/// so ring-buffer records stay naturally aligned.
macro_rules! assert_layout {
    ($ty:ty, $size:expr) => {
        const _: () = {
            assert!(core::mem::size_of::<$ty>() == $size);
            assert!(core::mem::align_of::<$ty>() == 8);
            assert!(core::mem::size_of::<$ty>() % 8 == 0);
        };
    };
}
pub(crate) use assert_layout;

/// `aya::Pod` for userspace; the kernel side never needs it.
macro_rules! impl_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is #[repr(C)], has no padding (checked by assert_layout!) and
            // every bit pattern is a valid value (integers and byte arrays only).
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
pub(crate) use impl_pod;
