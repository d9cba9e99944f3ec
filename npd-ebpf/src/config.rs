//! The load-time configuration the agent writes into .rodata (see `npd_common::config`).

use npd_common::config::ProbeConfig;

/// Filled in by the agent before loading; the verifier then sees every field as a constant,
/// so branches on it cost nothing and dead ones are pruned.
#[unsafe(no_mangle)]
pub(crate) static PROBE_CONFIG: ProbeConfig = ProbeConfig::new();

/// Reads one field of [`PROBE_CONFIG`]. Volatile, or the compiler would fold in the defaults
/// the object was built with instead of what the agent wrote.
macro_rules! config {
    ($($field:ident).+) => {
        $crate::config::read_volatile(&raw const $crate::config::PROBE_CONFIG.$($field).+)
    };
}
pub(crate) use config;

#[inline(always)]
pub(crate) fn read_volatile<T: Copy>(field: *const T) -> T {
    // SAFETY: only called on fields of PROBE_CONFIG, a plain static that is always valid.
    unsafe { core::ptr::read_volatile(field) }
}
