//! npd's node agent as a library: the pipeline from kernel records to reported problems.
//! The binary (`main.rs`, `cmd/`) is a thin CLI over it; the integration tests use it too.

pub mod attribution;
pub mod clock;
pub mod decode;
pub mod detectors;
pub mod engine;
pub mod event;
pub mod kernel;
pub mod probes;
pub mod source;
