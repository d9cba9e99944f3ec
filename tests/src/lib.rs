//! Shared harness for npd's integration tests: running the real agent, provoking real
//! problems, changing global machine state only through guards that restore it, and a real
//! Kubernetes control plane to report to.

pub mod agent;
pub mod bpf_objects;
pub mod cluster;
pub mod faults;
pub mod helm;
pub mod images;
pub mod loopfs;
pub mod machine;
pub mod machine_lock;
pub mod node;
pub mod oci;
pub mod prometheus;
pub mod remediation;
pub mod reporting;
