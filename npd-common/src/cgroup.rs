//! A cgroup's path as the kernel names it at an event, for records whose subject may be gone,
//! and its cgroup with it, before the agent could look the cgroup's id up (a container that
//! fails in its first second).

use crate::{assert_layout, impl_pod};

/// Bytes kept of each cgroup directory name; a kubelet's longest
/// (`cri-containerd-<64 hex>.scope`) is 86.
pub const CGROUP_NAME_LEN: usize = 128;
/// Cgroup levels read above the task; a pod's container is four below the root.
pub const CGROUP_PATH_DEPTH: usize = 8;

/// The names and ids of a cgroup directory and its ancestors below the hierarchy's root.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelCgroupPath {
    /// Directory names, leaf first, each NUL-terminated in its slot.
    pub names: [[u8; CGROUP_NAME_LEN]; CGROUP_PATH_DEPTH],
    /// The kernfs id of each directory in `names`, leaf first.
    pub ids: [u64; CGROUP_PATH_DEPTH],
    /// Slots of `names` filled.
    pub depth: u32,
    /// Non-zero when the walk reached the hierarchy's root: `names` is the whole path.
    pub whole: u32,
}

impl KernelCgroupPath {
    /// Nothing read (`depth` 0).
    pub const EMPTY: Self = Self {
        names: [[0; CGROUP_NAME_LEN]; CGROUP_PATH_DEPTH],
        ids: [0; CGROUP_PATH_DEPTH],
        depth: 0,
        whole: 0,
    };
}

assert_layout!(
    KernelCgroupPath,
    CGROUP_NAME_LEN * CGROUP_PATH_DEPTH + 8 * CGROUP_PATH_DEPTH + 8
);
impl_pod!(KernelCgroupPath);
