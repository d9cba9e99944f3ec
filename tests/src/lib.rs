//! Shared harness for npd's kernel tests: running the real agent, provoking real problems,
//! and changing global machine state only through guards that restore it.

pub mod agent;
pub mod machine;
