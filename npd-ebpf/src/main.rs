//! npd's kernel programs: one file per detector under `probes/`, records out through one
//! ring buffer (`RECORDS`), counters in `COUNTERS`.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod config;
mod emit;
mod maps;
mod probes;
mod ratelimit;
mod stack;
mod task;
mod tracepoint;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}

/// The GPL-only helpers (bpf_probe_read_kernel, bpf_get_task_stack) need a GPL-compatible
/// licence in the object.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
