//! Kernel oops (BUG, fatal fault) and WARN, from fentry hooks where the kernel allows them.
//! Where it does not, the agent watches the kernel's own counters instead and produces the
//! same problems without a kernel record.

use crate::{MAX_STACK_DEPTH, RecordHeader, assert_layout, impl_pod};

pub const KERNEL_PROBLEM_VERSION: u8 = 1;

/// Shared by [`crate::RecordKind::KernelOops`] and [`crate::RecordKind::KernelWarning`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelProblem {
    /// The task that hit the oops or warning.
    pub header: RecordHeader,
    /// Where it happened: `__warn`'s caller, or the first frame past the exception entry for
    /// an oops; 0 if unknown.
    pub caller: u64,
    /// The kernel's taint mask when the hook fired; `u64::MAX` if unknown.
    pub taint: u64,
    pub stack_len: u32,
    pub _pad: u32,
    pub stack: [u64; MAX_STACK_DEPTH],
}

assert_layout!(KernelProblem, 48 + 8 + 8 + 8 + 8 * MAX_STACK_DEPTH);
impl_pod!(KernelProblem);

/// fentry `oops_enter`.
pub const OOPS_FENTRY_PROGRAM: &str = "oops_fentry";
/// fentry `__warn`.
pub const WARN_FENTRY_PROGRAM: &str = "warn_fentry";

/// The names the agent looks this detector's pieces up by (see [`crate::names`]).
pub const PROGRAMS: &[&str] = &[OOPS_FENTRY_PROGRAM, WARN_FENTRY_PROGRAM];
pub const MAPS: &[&str] = &[];
pub const GLOBALS: &[&str] = &[];
