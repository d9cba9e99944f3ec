//! Shared harness of npd's integration tests.

pub mod cluster;
