//! The header every record starts with.

use crate::{TASK_COMM_LEN, assert_layout, impl_pod};

pub use crate::record_kinds::RecordKind;

/// Which kind of kernel hook produced a record. The numbers are ABI.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// A classic tracepoint (perf event), fields at offsets read from its format file.
    Tracepoint = 1,
    /// A BTF-typed raw tracepoint (tp_btf).
    BtfTracepoint = 2,
    /// An fentry program on a kernel function.
    Fentry = 3,
    /// An fexit program on a kernel function (sees its return value).
    Fexit = 4,
}

impl Hook {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Tracepoint),
            2 => Some(Self::BtfTracepoint),
            3 => Some(Self::Fentry),
            4 => Some(Self::Fexit),
            _ => None,
        }
    }
}

/// Starts every record.
///
/// `pid`/`tid`/`comm`/`cgroup_id` describe the task the record is about, which is not always
/// the task that was running: for a hung task it is the blocked task, for an OOM kill the victim.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    /// A [`RecordKind`].
    pub kind: u16,
    /// Layout version of the payload for this kind.
    pub version: u8,
    /// A [`Hook`].
    pub hook: u8,
    /// Size of the whole record, header included.
    pub size: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC when the hook fired.
    pub ts_ns: u64,
    /// Process id as userspace sees it (the kernel's tgid).
    pub pid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    /// Id (kernfs inode number) of the task's cgroup in the hierarchy npd attributes by: the
    /// unified hierarchy on cgroup v2, the memory controller's hierarchy on v1. 0 if unknown.
    pub cgroup_id: u64,
    /// Task name, NUL-padded.
    pub comm: [u8; TASK_COMM_LEN],
}

assert_layout!(RecordHeader, 48);
impl_pod!(RecordHeader);

impl RecordHeader {
    pub const SIZE: usize = size_of::<Self>();
}
