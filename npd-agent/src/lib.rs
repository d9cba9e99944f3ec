//! npd's node agent as a library: the pipeline from kernel records to reported problems.
//! The binary (`main.rs`, `cmd/`) is a thin CLI over it; the integration tests use it too.

pub mod agent;
pub mod attribution;
pub mod clock;
pub mod config;
pub mod decode;
pub mod detectors;
pub mod engine;
pub mod event;
pub mod health;
pub mod http;
pub mod k8s;
pub mod kernel;
pub mod metrics;
pub mod probes;
pub mod problem;
pub mod remediation;
pub mod source;
