//! The VM's serial console, read as tests/vm/init.sh narrates it: its `npd-vm:` lines (steps,
//! counters, the agent's exit, timing marks) and the blocks it prints between
//! `===npd-vm:begin NAME===` and `===npd-vm:end NAME===`.

use std::{collections::BTreeMap, time::Duration};

/// What came out of the serial console.
#[derive(Debug, Default)]
pub(crate) struct Console {
    pub(crate) blocks: BTreeMap<String, Vec<String>>,
    /// Step name -> `exit=N` or `skipped: why`.
    pub(crate) steps: BTreeMap<String, String>,
    /// The kernel's problem counters at the end (`tainted=N oops_count=N ...`).
    pub(crate) counters: Option<String>,
    /// `hook cost MODE loop=NS ...` lines: (mode, loop, ns per iteration).
    pub(crate) hook_cost: Vec<(String, String, f64)>,
    /// `npd-agent event-dump`'s exit status after SIGTERM (`early` if it died on its own).
    pub(crate) agent_exit: Option<String>,
    pub(crate) done: bool,
    pub(crate) timed_out: bool,
    pub(crate) marks: Vec<(&'static str, Duration)>,
}

/// Narration lines whose time the report shows, with their labels.
const MARKS: &[(&str, &str)] = &[
    ("npd-vm: init started", "init started"),
    ("npd-vm: starting npd-agent event-dump", "check done"),
    ("npd-vm: agent ready", "agent ready"),
    ("npd-vm: tests done", "tests done"),
    ("npd-vm: done", "results printed"),
];

fn is_kernel_line(line: &str) -> bool {
    // `[   12.345678] message`, the console's printk format.
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(stamp, _)| {
            let stamp = stamp.trim();
            !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
}

impl Console {
    pub(crate) fn parse_line(&mut self, line: &str, at: Duration, open_block: &mut Option<String>) {
        if let Some(name) = line
            .strip_prefix("===npd-vm:begin ")
            .and_then(|l| l.strip_suffix("==="))
        {
            *open_block = Some(name.to_owned());
            self.blocks.entry(name.to_owned()).or_default();
            return;
        }
        if line.starts_with("===npd-vm:end ") {
            *open_block = None;
            return;
        }
        if let Some(name) = open_block {
            if !is_kernel_line(line) {
                self.blocks
                    .entry(name.clone())
                    .or_default()
                    .push(line.to_owned());
            }
            return;
        }
        if let Some(rest) = line.strip_prefix("npd-vm: step ")
            && let Some((name, outcome)) = rest.split_once(' ')
        {
            self.steps.insert(name.to_owned(), outcome.to_owned());
        }
        if let Some(rest) = line.strip_prefix("npd-vm: hook cost ") {
            let mut words = rest.split_whitespace();
            let mode = words.next().unwrap_or_default();
            for (name, ns) in words.filter_map(|w| w.split_once('=')) {
                if let Ok(ns) = ns.parse() {
                    self.hook_cost.push((mode.to_owned(), name.to_owned(), ns));
                }
            }
        }
        if let Some(counters) = line.strip_prefix("npd-vm: kernel counters: ") {
            self.counters = Some(counters.to_owned());
        }
        if let Some(status) = line.strip_prefix("npd-vm: npd-agent event-dump exit=") {
            self.agent_exit = Some(status.to_owned());
        } else if line.starts_with("npd-vm: npd-agent event-dump exited early") {
            self.agent_exit = Some("early".to_owned());
        }
        if line == "npd-vm: done" {
            self.done = true;
        }
        for (prefix, label) in MARKS {
            if line.starts_with(prefix) && !self.marks.iter().any(|(l, _)| l == label) {
                self.marks.push((label, at));
            }
        }
    }
}
