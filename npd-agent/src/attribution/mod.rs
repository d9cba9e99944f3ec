//! Who a problem belongs to: cgroup path -> pod and container, or systemd unit
//! ([`parse_cgroup_path`]).

mod cgroup_path;

pub use cgroup_path::{CgroupOwner, PodCgroup, Qos, parse_cgroup_path};
