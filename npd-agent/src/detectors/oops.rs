//! Kernel oops (BUG, fatal fault) and WARN: fentry hooks where the kernel allows them,
//! otherwise the kernel's own counters (`/sys/kernel/{oops,warn,softlockup}_count`, taint).

use serde::Serialize;

/// An oops or warning (the event kind says which).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelProblem {
    /// Where it happened, symbolized (`__warn`'s caller; the faulting frame of an oops).
    pub caller: Option<String>,
    /// The taint mask after it, and its letters as the kernel prints them (e.g. `DW`).
    pub taint: Option<u64>,
    pub taint_flags: Option<String>,
    pub stack: Vec<String>,
    /// For the counters source: which counter moved (`oops_count`, `warn_count`,
    /// `softlockup_count`, `tainted`) and its new value.
    pub counter: Option<&'static str>,
    pub count: Option<u64>,
    /// How many problems this event stands for (a counter can move by more than one).
    pub occurrences: u64,
    /// Counted before npd started (reported once at start, like NPD's log lookback).
    pub since_boot: bool,
}

impl KernelProblem {
    pub fn summary(&self) -> String {
        let at = self
            .caller
            .as_deref()
            .map(|c| format!(" at {c}"))
            .unwrap_or_default();
        let taint = self
            .taint_flags
            .as_deref()
            .filter(|f| !f.is_empty())
            .map(|f| format!(", kernel tainted {f}"))
            .unwrap_or_default();
        let counted = match (self.counter, self.count) {
            (Some(counter), Some(count)) => format!(" ({counter} now {count})"),
            _ => String::new(),
        };
        let boot = if self.since_boot { " since boot" } else { "" };
        format!("{}x{boot}{at}{counted}{taint}", self.occurrences)
    }
}

/// The kernel's taint letters (`print_tainted`), bit by bit.
pub const TAINT_FLAGS: [(u32, char); 20] = [
    (0, 'P'),
    (1, 'F'),
    (2, 'S'),
    (3, 'R'),
    (4, 'M'),
    (5, 'B'),
    (6, 'U'),
    (7, 'D'),
    (8, 'A'),
    (9, 'W'),
    (10, 'C'),
    (11, 'I'),
    (12, 'O'),
    (13, 'E'),
    (14, 'L'),
    (15, 'K'),
    (16, 'X'),
    (17, 'T'),
    (18, 'N'),
    (19, 'J'),
];

/// Taint bit for "a kernel oops occurred" (TAINT_DIE).
pub const TAINT_DIE: u64 = 1 << 7;
/// Taint bit for "a WARN() fired" (TAINT_WARN).
pub const TAINT_WARN: u64 = 1 << 9;

/// Taint letters as the kernel prints them, in bit order, e.g. `DW`.
pub fn taint_letters(mask: u64) -> String {
    TAINT_FLAGS
        .iter()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .map(|(_, letter)| *letter)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taint_letters_follow_the_kernel() {
        assert_eq!(taint_letters(0), "");
        assert_eq!(taint_letters(TAINT_DIE | TAINT_WARN), "DW");
        assert_eq!(taint_letters(1 | (1 << 12) | (1 << 13)), "POE");
    }
}
