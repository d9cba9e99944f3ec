//! Hardware errors from the kernel's RAS tracepoints (never the log): x86 machine checks,
//! EDAC memory errors, poisoned pages, PCIe AER and firmware (CPER) reports, each hook
//! optional. NPD's names: MemoryReadError (corrected memory errors),
//! CperHardwareErrorCorrected / CperHardwareErrorRecoverable Events, and the
//! CperHardwareErrorFatal condition for errors the hardware could not correct and the kernel
//! could not contain.
//!
//! Two things no single record says, kept here: the rate of corrected errors of each DIMM over
//! the last hour (FrequentCorrectableMemoryErrors while above [`CORRECTED_PER_HOUR`]: a DIMM
//! that corrects errors often is likely to fail uncorrectably next), and the tail of a storm
//! the kernel folded after its last record (the sweep of the rate-limit map).

use std::collections::{BTreeMap, HashMap, VecDeque};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
};
use npd_common::{
    RecordKind,
    config::UNKNOWN,
    hardware::{
        self as abi, AER_EVENT_PROGRAM, ARM_EVENT_PROGRAM, CONFIG_GLOBAL, HwConfig, HwRateKey,
        HwRateState, HwTally, MC_EVENT_PROGRAM, MCE_RECORD_PROGRAM, MEMORY_FAILURE_PROGRAM,
        McEventOffsets, MceOffsets, MemoryFailureOffsets, NON_STANDARD_EVENT_PROGRAM,
        PlatformOffsets, RATE_LIMIT_MAP, cper_severity, mci_status, source,
    },
};
use serde::Serialize;

use super::{
    AttachContext, Attached, Detector, DetectorStatus, Runtime, Setup, attach_optional_tracepoints,
    config_global,
};
use crate::{
    decode::{DecodeError, payload},
    engine::describe_task,
    event::{Event, Finding, Source, Task, comm_string, escape_untrusted},
    finding,
    kernel::{kallsyms::Symbolizer, tracefs::TracepointFormat},
    problem::{Assessment, Change, Clearing, ConditionSpec, ConditionType, EventReason, Report},
};

/// NPD's CperHardwareErrorFatal: an error the hardware could not correct and the kernel could
/// not contain (or that corrupted the processor's context).
pub const CPER_HARDWARE_ERROR_FATAL: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "cperHardwareErrorFatal",
    type_name: "CperHardwareErrorFatal",
    problem_reason: "CperHardwareErrorFatal",
    healthy_reason: "CperHardwareHasNoFatalError",
    healthy_message: "no uncorrected hardware error this boot",
    detector: "hardware",
    // Nothing the node does repairs a DIMM, a CPU or a link that lost data, and the kernel
    // keeps what it did about it (offlined pages, a disabled device) until it restarts: the
    // node reboots when the part is replaced, so that is what clears it.
    clearing: Clearing::Reboot {
        after_reboot: "no uncorrected hardware error since the node rebooted",
        problems: "uncorrected hardware errors",
    },
});

/// A DIMM correcting errors often: above [`CORRECTED_PER_HOUR`] in the last hour.
pub const FREQUENT_CORRECTABLE_MEMORY_ERRORS: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "frequentCorrectableMemoryErrors",
    type_name: "FrequentCorrectableMemoryErrors",
    problem_reason: "FrequentCorrectableMemoryErrors",
    healthy_reason: "NoFrequentCorrectableMemoryErrors",
    healthy_message: "no DIMM corrected memory errors often in the last hour",
    detector: "hardware",
    clearing: Clearing::Keyed,
});

pub const MEMORY_READ_ERROR: EventReason = EventReason::warning("MemoryReadError");
pub const CPER_HARDWARE_ERROR_CORRECTED: EventReason =
    EventReason::warning("CperHardwareErrorCorrected");
pub const CPER_HARDWARE_ERROR_RECOVERABLE: EventReason =
    EventReason::warning("CperHardwareErrorRecoverable");
pub const CPER_HARDWARE_ERROR_FATAL_EVENT: EventReason =
    EventReason::warning("CperHardwareErrorFatal");
pub const MEMORY_PAGE_POISONED: EventReason = EventReason::warning("MemoryPagePoisoned");
pub const FREQUENT_CORRECTABLE_MEMORY_ERRORS_EVENT: EventReason =
    EventReason::warning("FrequentCorrectableMemoryErrors");

/// Corrected errors of one DIMM in an hour above which it is reported as failing (mcelog's
/// default trigger is 10 in 24 hours; an hour keeps a burst from a scrub from counting for a
/// day).
pub const CORRECTED_PER_HOUR: u64 = 10;
const RATE_WINDOW_NS: u64 = 3_600_000_000_000;

/// Rate-limit entries whose last record is older than this are swept for a storm's tail.
const SWEEP_AFTER_NS: u64 = 1_000_000_000;

/// The tracepoints, each optional: (program, category, name).
const HOOKS: [(&str, &str, &str); 6] = [
    (MCE_RECORD_PROGRAM, "mce", "mce_record"),
    (MC_EVENT_PROGRAM, "ras", "mc_event"),
    (MEMORY_FAILURE_PROGRAM, "ras", "memory_failure_event"),
    (AER_EVENT_PROGRAM, "ras", "aer_event"),
    (ARM_EVENT_PROGRAM, "ras", "arm_event"),
    (NON_STANDARD_EVENT_PROGRAM, "ras", "non_standard_event"),
];

#[derive(Debug)]
pub struct HardwareDetector;

pub static DETECTOR: HardwareDetector = HardwareDetector;

impl Detector for HardwareDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        Some(npd_common::counters::Detector::Hardware)
    }

    fn name(&self) -> &'static str {
        "hardware"
    }

    fn about(&self) -> &'static str {
        "machine checks, EDAC memory errors, poisoned pages, PCIe AER, CPER (RAS tracepoints) \
         -> CperHardwareErrorFatal, FrequentCorrectableMemoryErrors, MemoryReadError, \
         CperHardwareErrorCorrected, CperHardwareErrorRecoverable, MemoryPagePoisoned"
    }

    fn conditions(&self) -> &'static [ConditionType] {
        &[
            CPER_HARDWARE_ERROR_FATAL,
            FREQUENT_CORRECTABLE_MEMORY_ERRORS,
        ]
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[
            MEMORY_READ_ERROR,
            CPER_HARDWARE_ERROR_CORRECTED,
            CPER_HARDWARE_ERROR_RECOVERABLE,
            CPER_HARDWARE_ERROR_FATAL_EVENT,
            MEMORY_PAGE_POISONED,
            FREQUENT_CORRECTABLE_MEMORY_ERRORS_EVENT,
        ]
    }

    fn globals(&self, setup: &Setup<'_>) -> Vec<(&'static str, Vec<u8>)> {
        vec![config_global(CONFIG_GLOBAL, &hw_config(setup))]
    }

    fn attach(&self, ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> Attached {
        let mut status = DetectorStatus::new(self.name());
        let (attached, absent) = attach_optional_tracepoints(ebpf, ctx, &HOOKS);
        let result = if attached.is_empty() {
            Err("no RAS tracepoint attached".to_owned())
        } else {
            Ok(())
        };
        status.tried(Source::Tracepoint, attached.join(", "), result);
        if !absent.is_empty() {
            status
                .notes
                .push(format!("not attached: {}", absent.join("; ")));
        }
        let format = |name: &str| {
            std::fs::read_to_string(
                ctx.tracefs
                    .root()
                    .join("events/ras")
                    .join(name)
                    .join("format"),
            )
            .unwrap_or_default()
        };
        let failure_format = format("memory_failure_event");
        let map = ebpf
            .take_map(RATE_LIMIT_MAP)
            .and_then(|map| BpfHashMap::try_from(map).ok());
        Attached {
            status,
            runtime: Box::new(HwRuntime {
                rate_limits: map,
                page_types: symbols(&failure_format, "type"),
                results: symbols(&failure_format, "result"),
                ..HwRuntime::default()
            }),
        }
    }
}

/// A `__data_loc` string field's offset, or [`UNKNOWN`].
fn data_loc(format: &TracepointFormat, name: &str) -> u32 {
    match format.field(name) {
        Some(f) if f.declaration.starts_with("__data_loc") => f.offset,
        _ => UNKNOWN,
    }
}

/// The tracepoints' field offsets on this kernel, from their format files; the rate limit.
fn hw_config(setup: &Setup<'_>) -> HwConfig {
    let mut config = HwConfig::new();
    config.rate_limit_ns = setup.options.fd_rate_limit.as_nanos() as u64;
    let tracefs = setup.tracefs;
    let offsets = &mut config.offsets;
    if let Ok(f) = tracefs.format("mce", "mce_record") {
        offsets.mce = MceOffsets {
            status: f.optional("status", 8),
            addr: f.optional("addr", 8),
            misc: f.optional("misc", 8),
            mcgstatus: f.optional("mcgstatus", 8),
            cpu: f.optional("cpu", 4),
            bank: f.optional("bank", 1),
        };
    }
    if let Ok(f) = tracefs.format("ras", "mc_event") {
        offsets.mc_event = McEventOffsets {
            error_type: f.optional("error_type", 4),
            error_count: f.optional("error_count", 2),
            mc_index: f.optional("mc_index", 1),
            top_layer: f.optional("top_layer", 1),
            middle_layer: f.optional("middle_layer", 1),
            lower_layer: f.optional("lower_layer", 1),
            address: f.optional("address", 8),
            grain_bits: f.optional("grain_bits", 1),
            label: data_loc(&f, "label"),
            msg: data_loc(&f, "msg"),
        };
    }
    if let Ok(f) = tracefs.format("ras", "memory_failure_event") {
        offsets.memory_failure = MemoryFailureOffsets {
            pfn: f.optional("pfn", 8),
            page_type: f.optional("type", 4),
            result: f.optional("result", 4),
        };
    }
    if let Ok(f) = tracefs.format("ras", "aer_event") {
        offsets.aer = PlatformOffsets {
            severity: f.optional("severity", 1),
            status: f.optional("status", 4),
            name: data_loc(&f, "dev_name"),
            ..PlatformOffsets::unknown()
        };
    }
    if let Ok(f) = tracefs.format("ras", "arm_event") {
        offsets.arm = PlatformOffsets {
            severity: f.optional("sev", 1),
            cpu: f.optional("cpu", 4),
            mpidr: f.optional("mpidr", 8),
            ..PlatformOffsets::unknown()
        };
    }
    if let Ok(f) = tracefs.format("ras", "non_standard_event") {
        offsets.non_standard = PlatformOffsets {
            severity: f.optional("sev", 1),
            name: data_loc(&f, "fru_text"),
            ..PlatformOffsets::unknown()
        };
    }
    config
}

/// The names a format file's `__print_symbolic(REC->field, { 0, "name" }, ...)` gives a
/// field's values: the kernel writes the numbers of its own enums there
/// (`TRACE_DEFINE_ENUM`), so they are right for the running kernel, unlike a table compiled
/// in (`enum mf_action_page_type` changed across versions).
fn symbols(format: &str, field: &str) -> BTreeMap<u64, String> {
    let mut names = BTreeMap::new();
    let marker = format!("__print_symbolic(REC->{field},");
    let Some((_, mut rest)) = format.split_once(&marker) else {
        return names;
    };
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        let Some(entry) = rest.strip_prefix('{') else {
            break;
        };
        let Some((value, after)) = entry.split_once(',') else {
            break;
        };
        let Some((_, quoted)) = after.split_once('"') else {
            break;
        };
        let Some((name, after)) = quoted.split_once('"') else {
            break;
        };
        let Some((_, after)) = after.split_once('}') else {
            break;
        };
        let value = value.trim();
        let number = match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => value.parse().ok(),
        };
        if let Some(number) = number {
            names.insert(number, name.to_owned());
        }
        rest = after;
    }
    names
}

/// `enum mf_result`, the same on every kernel since the tracepoint was added (4.4).
const MF_RESULTS: [&str; 4] = ["Ignored", "Failed", "Delayed", "Recovered"];

/// What an error means, whatever reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The hardware corrected it; nothing was lost.
    Corrected,
    /// Not corrected, but contained: the kernel recovers (a poisoned page offlined, a
    /// non-fatal AER error, a deferred memory error).
    Recoverable,
    /// Not corrected and not contained: data was lost.
    Uncorrected,
    /// The hardware or firmware says the system cannot go on reliably.
    Fatal,
    Informational,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Corrected => "corrected",
            Self::Recoverable => "uncorrected, recovered",
            Self::Uncorrected => "uncorrected",
            Self::Fatal => "fatal",
            Self::Informational => "informational",
        }
    }

    /// From `MCi_STATUS`: UC with PCC means the CPU cannot go on; UC alone is recoverable
    /// (SRAO/SRAR: the kernel poisons the page, and its memory_failure record says how
    /// that went).
    pub fn of_machine_check(status: u64) -> Self {
        match (status & mci_status::UC != 0, status & mci_status::PCC != 0) {
            (false, _) => Self::Corrected,
            (true, true) => Self::Fatal,
            (true, false) => Self::Recoverable,
        }
    }

    /// From EDAC's `HW_EVENT_ERR_*`.
    pub fn of_memory_error(error_type: u32) -> Self {
        match error_type {
            0 => Self::Corrected,
            1 => Self::Uncorrected,
            2 => Self::Recoverable,
            3 => Self::Fatal,
            _ => Self::Informational,
        }
    }

    /// From a poisoned page's recovery result (`enum mf_result` by name).
    pub fn of_memory_failure(result: &str) -> Self {
        match result {
            "Recovered" | "Delayed" => Self::Recoverable,
            _ => Self::Uncorrected,
        }
    }

    /// From AER's severity or a CPER severity (AER's 0 to 2 are CPER's).
    pub fn of_platform(severity: u16) -> Self {
        match severity {
            cper_severity::CORRECTED => Self::Corrected,
            cper_severity::RECOVERABLE => Self::Recoverable,
            cper_severity::FATAL => Self::Fatal,
            _ => Self::Informational,
        }
    }
}

/// What one error record (or a sweep's tail) means: an Event by severity, and the
/// CperHardwareErrorFatal condition for what was not contained.
fn assess_error(
    severity: Severity,
    corrected_reason: EventReason,
    detail_key: &str,
    message: &str,
    errors: u64,
) -> Assessment {
    let report = |reason| Report {
        reason,
        detail_key: detail_key.to_owned(),
        message: message.to_owned(),
        count: errors.max(1),
        since_boot: false,
    };
    match severity {
        Severity::Corrected => Assessment::report(report(corrected_reason)),
        Severity::Recoverable => Assessment::report(report(CPER_HARDWARE_ERROR_RECOVERABLE)),
        Severity::Uncorrected | Severity::Fatal => {
            Assessment::report(report(CPER_HARDWARE_ERROR_FATAL_EVENT)).with_condition(
                CPER_HARDWARE_ERROR_FATAL,
                Change::Oops {
                    occurrences: errors.max(1),
                    description: message.to_owned(),
                    taint_flags: None,
                },
            )
        }
        Severity::Informational => Assessment::default(),
    }
}

/// ` (N errors)` when a record stands for more than one error.
fn more(errors: u64) -> String {
    if errors > 1 {
        format!(" ({errors} errors)")
    } else {
        String::new()
    }
}

/// An x86 machine check.
#[derive(Clone, Debug, Serialize)]
pub struct MachineCheck {
    pub severity: Severity,
    pub cpu: u32,
    pub bank: u8,
    pub status: String,
    /// `MCi_ADDR`, when the status says it is valid.
    pub addr: Option<String>,
    pub misc: String,
    pub mcgstatus: String,
    /// Another error overwrote an unread one (`OVER`).
    pub overflow: bool,
    pub processor_context_corrupt: bool,
    /// Errors this event stands for (folded by the kernel's rate limit, itself included).
    pub errors: u64,
    pub errors_total: u64,
    /// A storm's tail the agent's sweep accounted for (status bits from the key only).
    pub flushed: bool,
}

finding!(MachineCheck, "machine_check", {
    fn summary(&self) -> String {
        let addr = self
            .addr
            .as_ref()
            .map(|a| format!(", address {a}"))
            .unwrap_or_default();
        format!(
            "{} machine check on CPU {} bank {}: status {}{addr}{}",
            self.severity.as_str(),
            self.cpu,
            self.bank,
            self.status,
            more(self.errors)
        )
    }

    fn assess(&self, _event: &Event) -> Assessment {
        assess_error(
            self.severity,
            CPER_HARDWARE_ERROR_CORRECTED,
            &format!("mce:{}:{}", self.bank, self.cpu),
            &self.summary(),
            self.errors,
        )
    }
});

/// An EDAC memory controller error.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryError {
    pub severity: Severity,
    /// The DIMM's label as the driver names it (untrusted text: escaped in messages).
    pub dimm: String,
    /// Its place: `mc<index>/<top>.<middle>.<lower>` (-1 for a layer not used).
    pub location: String,
    pub address: u64,
    pub msg: String,
    pub errors: u64,
    pub errors_total: u64,
    pub flushed: bool,
}

impl MemoryError {
    /// The DIMM by label, else by place.
    fn dimm_name(&self) -> String {
        if self.dimm.is_empty() {
            format!("DIMM at {}", self.location)
        } else {
            format!("DIMM {}", escape_untrusted(&self.dimm))
        }
    }
}

finding!(MemoryError, "memory_error", {
    fn summary(&self) -> String {
        let msg = if self.msg.is_empty() {
            String::new()
        } else {
            format!(" ({})", escape_untrusted(&self.msg))
        };
        format!(
            "{} memory error on {} ({}), address {:#x}{msg}{}",
            self.severity.as_str(),
            self.dimm_name(),
            self.location,
            self.address,
            more(self.errors)
        )
    }

    fn assess(&self, _event: &Event) -> Assessment {
        assess_error(
            self.severity,
            MEMORY_READ_ERROR,
            &self.location,
            &self.summary(),
            self.errors,
        )
    }
});

/// The kernel handled a poisoned page.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryFailure {
    pub severity: Severity,
    pub pfn: u64,
    /// What the page was (`dirty LRU page`, `free buddy page`, ...), as this kernel names it.
    pub page_type: String,
    /// `Recovered`, `Delayed`, `Failed` or `Ignored`.
    pub result: String,
    pub errors: u64,
    pub errors_total: u64,
    pub flushed: bool,
}

finding!(MemoryFailure, "memory_failure", {
    fn summary(&self) -> String {
        format!(
            "memory page {:#x} ({}) poisoned: recovery {}{}",
            self.pfn,
            self.page_type,
            self.result,
            more(self.errors)
        )
    }

    /// On the pod of the task that ran into the page (the task running memory_failure is the
    /// one that touched it, or poisoned it with madvise; a kworker otherwise, then the Node).
    fn assess(&self, event: &Event) -> Assessment {
        let task = describe_task(&event.task, event.attribution.as_ref());
        let by = if task.is_empty() {
            String::new()
        } else {
            format!(" while {task} ran")
        };
        let consequence = if self.severity == Severity::Recoverable {
            "the page is offlined; a process using it gets SIGBUS"
        } else {
            "the kernel could not isolate it; processes mapping it were killed or may read \
             corrupt data"
        };
        let message = format!("{}{by}; {consequence}", self.summary());
        let mut assessment = assess_error(
            self.severity,
            MEMORY_PAGE_POISONED,
            &format!("pfn:{:#x}", self.pfn),
            &message,
            self.errors,
        );
        // Its own reason whatever the severity: the Event says what happened to the page and
        // the task; the severity still decides the condition.
        if let Some(report) = assessment.report.as_mut() {
            report.reason = MEMORY_PAGE_POISONED;
        }
        assessment
    }
});

/// A PCIe AER error or a firmware (CPER) report.
#[derive(Clone, Debug, Serialize)]
pub struct PlatformError {
    pub severity: Severity,
    /// `aer`, `arm` or `non_standard`.
    pub source: &'static str,
    /// AER: the PCI device; non-standard: the FRU text (untrusted: escaped in messages).
    pub device: String,
    /// AER: the error status bits.
    pub status: u32,
    /// ARM: the CPU and its MPIDR.
    pub cpu: Option<i32>,
    pub mpidr: u64,
    pub errors: u64,
    pub errors_total: u64,
    pub flushed: bool,
}

finding!(PlatformError, "platform_error", {
    fn summary(&self) -> String {
        let what = match self.source {
            "aer" => format!(
                "PCIe AER error on {} (status {:#x})",
                escape_untrusted(&self.device),
                self.status
            ),
            "arm" => format!(
                "ARM processor error on CPU {} (MPIDR {:#x})",
                self.cpu.unwrap_or(-1),
                self.mpidr
            ),
            _ if self.device.is_empty() => "firmware-reported hardware error".to_owned(),
            _ => format!(
                "firmware-reported hardware error on {}",
                escape_untrusted(&self.device)
            ),
        };
        format!("{} {what}{}", self.severity.as_str(), more(self.errors))
    }

    fn assess(&self, _event: &Event) -> Assessment {
        assess_error(
            self.severity,
            CPER_HARDWARE_ERROR_CORRECTED,
            &format!("{}:{}", self.source, self.device),
            &self.summary(),
            self.errors,
        )
    }
});

/// A DIMM's corrected errors over the last hour crossed [`CORRECTED_PER_HOUR`], either way,
/// or (`resync`) the set of DIMMs above it after the agent watched a whole hour.
#[derive(Clone, Debug, Serialize)]
pub struct CorrectedErrorRate {
    /// The DIMM's location key (`mc0/0.1.-1`), empty for a resync.
    pub location: String,
    /// Its label, escaped.
    pub dimm: String,
    pub errors_last_hour: u64,
    pub threshold: u64,
    /// `above`, `below` or `resync`.
    pub state: &'static str,
    #[serde(skip)]
    pub current: Vec<(String, String)>,
}

finding!(CorrectedErrorRate, "corrected_error_rate", {
    fn summary(&self) -> String {
        format!(
            "{}: {} corrected memory errors in the last hour ({} the threshold of {})",
            self.dimm, self.errors_last_hour, self.state, self.threshold
        )
    }

    fn assess(&self, _event: &Event) -> Assessment {
        let key = self.location.clone();
        match self.state {
            "above" => {
                let message = format!(
                    "{} corrected {} memory errors in the last hour (threshold {}): it is \
                     likely to fail uncorrectably; plan to replace it",
                    self.dimm, self.errors_last_hour, self.threshold
                );
                Assessment::report(Report {
                    reason: FREQUENT_CORRECTABLE_MEMORY_ERRORS_EVENT,
                    detail_key: key.clone(),
                    message: message.clone(),
                    count: 1,
                    since_boot: false,
                })
                .with_condition(
                    FREQUENT_CORRECTABLE_MEMORY_ERRORS,
                    Change::Raise { key, message },
                )
            }
            "resync" => Assessment::default().with_condition(
                FREQUENT_CORRECTABLE_MEMORY_ERRORS,
                Change::Resync {
                    current: self.current.clone(),
                },
            ),
            _ => Assessment::default().with_condition(
                FREQUENT_CORRECTABLE_MEMORY_ERRORS,
                Change::Clear {
                    message: format!(
                        "{} corrected {} memory errors in the last hour, at most the threshold \
                         of {}",
                        self.dimm, self.errors_last_hour, self.threshold
                    ),
                    key,
                },
            ),
        }
    }
});

/// Corrected errors per DIMM over a sliding window, and which DIMMs are above the threshold.
#[derive(Debug)]
struct CorrectedRates {
    window_ns: u64,
    threshold: u64,
    /// By location key.
    dimms: BTreeMap<String, DimmErrors>,
}

#[derive(Debug, Default)]
struct DimmErrors {
    name: String,
    /// (monotonic ns, errors), oldest first.
    errors: VecDeque<(u64, u64)>,
    above: bool,
}

impl Default for CorrectedRates {
    fn default() -> Self {
        Self {
            window_ns: RATE_WINDOW_NS,
            threshold: CORRECTED_PER_HOUR,
            dimms: BTreeMap::new(),
        }
    }
}

impl CorrectedRates {
    fn add(&mut self, location: &str, name: String, at_ns: u64, errors: u64) {
        let dimm = self.dimms.entry(location.to_owned()).or_default();
        dimm.name = name;
        dimm.errors.push_back((at_ns, errors));
    }

    /// The DIMMs that crossed the threshold since the last call, either way.
    fn crossings(&mut self, now_ns: u64) -> Vec<CorrectedErrorRate> {
        let mut crossed = Vec::new();
        for (location, dimm) in &mut self.dimms {
            while dimm
                .errors
                .front()
                .is_some_and(|(at, _)| at.saturating_add(self.window_ns) <= now_ns)
            {
                dimm.errors.pop_front();
            }
            let total: u64 = dimm.errors.iter().map(|(_, n)| n).sum();
            let above = total > self.threshold;
            if above != dimm.above {
                dimm.above = above;
                crossed.push(CorrectedErrorRate {
                    location: location.clone(),
                    dimm: dimm.name.clone(),
                    errors_last_hour: total,
                    threshold: self.threshold,
                    state: if above { "above" } else { "below" },
                    current: Vec::new(),
                });
            }
        }
        self.dimms.retain(|_, d| d.above || !d.errors.is_empty());
        crossed
    }

    /// The DIMMs above the threshold now, as (key, message).
    fn current(&self) -> Vec<(String, String)> {
        self.dimms
            .iter()
            .filter(|(_, d)| d.above)
            .map(|(location, d)| {
                (
                    location.clone(),
                    format!("{} corrects memory errors often", d.name),
                )
            })
            .collect()
    }
}

/// Records, the per-DIMM rate, and the sweep of the rate-limit map.
#[derive(Debug, Default)]
struct HwRuntime {
    rate_limits: Option<BpfHashMap<MapData, HwRateKey, HwRateState>>,
    /// (key, first_failure_ns) -> errors accounted for.
    accounted: HashMap<(HwRateKey, u64), u64>,
    /// Names seen in records (DIMM labels, device names), for the sweep's events.
    names: HashMap<HwRateKey, String>,
    page_types: BTreeMap<u64, String>,
    results: BTreeMap<u64, String>,
    rates: CorrectedRates,
    /// When the first poll ran; the rate condition resyncs a window later.
    started_ns: Option<u64>,
    resynced: bool,
}

fn hex(value: u64) -> String {
    format!("{value:#x}")
}

fn dimm_location_name(unit: u64) -> String {
    let layer = |shift: u32| i32::from((unit >> shift) as u8 as i8);
    format!(
        "mc{}/{}.{}.{}",
        (unit >> 24) as u8,
        layer(16),
        layer(8),
        layer(0)
    )
}

impl HwRuntime {
    /// Errors a record brings that were not accounted yet (its own included).
    fn account(&mut self, key: HwRateKey, tally: &HwTally) -> u64 {
        let accounted = self
            .accounted
            .entry((key, tally.first_failure_ns))
            .or_default();
        let new = tally.errors_total.saturating_sub(*accounted);
        *accounted = (*accounted).max(tally.errors_total);
        new
    }

    fn result_name(&self, result: u32) -> String {
        self.results
            .get(&u64::from(result))
            .cloned()
            .or_else(|| MF_RESULTS.get(result as usize).map(|s| (*s).to_owned()))
            .unwrap_or_else(|| result.to_string())
    }

    fn page_type_name(&self, page_type: u32) -> String {
        self.page_types
            .get(&u64::from(page_type))
            .cloned()
            .unwrap_or_else(|| format!("page type {page_type}"))
    }

    /// The finding a rate-limit key stands for, `errors` of them (`flushed` from a sweep; the
    /// record's own fields are left at what the key holds).
    fn finding_of_key(
        &self,
        key: &HwRateKey,
        errors: u64,
        errors_total: u64,
    ) -> Option<Box<dyn Finding>> {
        let name = self.names.get(key).cloned().unwrap_or_default();
        let finding: Box<dyn Finding> = match RecordKind::from_u16(key.kind)? {
            RecordKind::MachineCheck => {
                // The key's severity is `UC | PCC << 1`.
                let bit = |set: bool, bit: u64| if set { bit } else { 0 };
                let status = mci_status::VAL
                    | bit(key.severity & 1 != 0, mci_status::UC)
                    | bit(key.severity & 2 != 0, mci_status::PCC);
                Box::new(MachineCheck {
                    severity: Severity::of_machine_check(status),
                    cpu: key.unit as u32,
                    bank: (key.unit >> 32) as u8,
                    status: hex(status),
                    addr: None,
                    misc: hex(0),
                    mcgstatus: hex(0),
                    overflow: false,
                    processor_context_corrupt: status & mci_status::PCC != 0,
                    errors,
                    errors_total,
                    flushed: true,
                })
            }
            RecordKind::MemoryError => Box::new(MemoryError {
                severity: Severity::of_memory_error(key.severity),
                dimm: name,
                location: dimm_location_name(key.unit),
                address: 0,
                msg: String::new(),
                errors,
                errors_total,
                flushed: true,
            }),
            RecordKind::MemoryFailure => {
                let result = self.result_name(key.severity);
                Box::new(MemoryFailure {
                    severity: Severity::of_memory_failure(&result),
                    pfn: key.unit,
                    page_type: name,
                    result,
                    errors,
                    errors_total,
                    flushed: true,
                })
            }
            RecordKind::PlatformError => Box::new(PlatformError {
                severity: Severity::of_platform(key.severity as u16),
                source: source_name(key.source),
                device: name,
                status: 0,
                cpu: (key.source == source::ARM).then_some(key.unit as u32 as i32),
                mpidr: 0,
                errors,
                errors_total,
                flushed: true,
            }),
            _ => return None,
        };
        Some(finding)
    }

    /// Errors the kernel folded after a storm's last record.
    fn sweep(&mut self, now_ns: u64) -> Vec<Event> {
        let Some(map) = self.rate_limits.as_ref() else {
            return Vec::new();
        };
        let entries: Vec<(HwRateKey, HwRateState)> = map.iter().filter_map(Result::ok).collect();
        let mut events = Vec::new();
        for (key, state) in entries {
            if now_ns.saturating_sub(state.last_record_ns) < SWEEP_AFTER_NS {
                continue;
            }
            // A key no record was decoded for (lost to a full ring buffer): all its errors.
            let accounted = self
                .accounted
                .entry((key, state.first_failure_ns))
                .or_insert(0);
            if state.errors <= *accounted {
                continue;
            }
            let new = state.errors - *accounted;
            *accounted = state.errors;
            if let Some(detail) = self.finding_of_key(&key, new, state.errors) {
                if let Some(error) = detail.as_any().downcast_ref::<MemoryError>()
                    && error.severity == Severity::Corrected
                {
                    let name = error.dimm_name();
                    self.rates.add(&error.location, name, now_ns, new);
                }
                events.push(Event::boxed(now_ns, Task::default(), Source::Sweep, detail));
            }
        }
        events
    }
}

fn source_name(source: u16) -> &'static str {
    match source {
        source::AER => "aer",
        source::ARM => "arm",
        _ => "non_standard",
    }
}

impl Runtime for HwRuntime {
    fn decode(
        &mut self,
        kind: RecordKind,
        data: &[u8],
        _symbolizer: &mut Symbolizer,
    ) -> Result<Event, DecodeError> {
        let hook = Source::Tracepoint;
        match kind {
            RecordKind::MachineCheck => {
                let r: abi::MachineCheck = payload(kind, abi::MACHINE_CHECK_VERSION, data)?;
                let uc = u32::from(r.status & mci_status::UC != 0);
                let pcc = u32::from(r.status & mci_status::PCC != 0);
                let key = rate_key(
                    kind,
                    0,
                    uc | pcc << 1,
                    u64::from(r.bank) << 32 | u64::from(r.cpu),
                );
                let errors = self.account(key, &r.tally);
                let detail = MachineCheck {
                    severity: Severity::of_machine_check(r.status),
                    cpu: r.cpu,
                    bank: r.bank,
                    status: hex(r.status),
                    addr: (r.status & mci_status::ADDRV != 0).then(|| hex(r.addr)),
                    misc: hex(r.misc),
                    mcgstatus: hex(r.mcgstatus),
                    overflow: r.status & mci_status::OVER != 0,
                    processor_context_corrupt: pcc != 0,
                    errors,
                    errors_total: r.tally.errors_total,
                    flushed: false,
                };
                Ok(Event::new(
                    r.header.ts_ns,
                    Task::from_header(&r.header),
                    hook,
                    detail,
                ))
            }
            RecordKind::MemoryError => {
                let r: abi::MemoryError = payload(kind, abi::MEMORY_ERROR_VERSION, data)?;
                let unit =
                    abi::dimm_location(r.mc_index, r.top_layer, r.middle_layer, r.lower_layer);
                let key = rate_key(kind, 0, r.error_type, unit);
                let errors = self.account(key, &r.tally);
                let label = comm_string(&r.label);
                self.names.insert(key, label.clone());
                let detail = MemoryError {
                    severity: Severity::of_memory_error(r.error_type),
                    dimm: label,
                    location: dimm_location_name(unit),
                    address: r.address,
                    msg: comm_string(&r.msg),
                    errors,
                    errors_total: r.tally.errors_total,
                    flushed: false,
                };
                if detail.severity == Severity::Corrected {
                    self.rates
                        .add(&detail.location, detail.dimm_name(), r.header.ts_ns, errors);
                }
                Ok(Event::new(
                    r.header.ts_ns,
                    Task::from_header(&r.header),
                    hook,
                    detail,
                ))
            }
            RecordKind::MemoryFailure => {
                let r: abi::MemoryFailure = payload(kind, abi::MEMORY_FAILURE_VERSION, data)?;
                let key = rate_key(kind, 0, r.result, r.pfn);
                let errors = self.account(key, &r.tally);
                let page_type = self.page_type_name(r.page_type);
                self.names.insert(key, page_type.clone());
                let result = self.result_name(r.result);
                let detail = MemoryFailure {
                    severity: Severity::of_memory_failure(&result),
                    pfn: r.pfn,
                    page_type,
                    result,
                    errors,
                    errors_total: r.tally.errors_total,
                    flushed: false,
                };
                Ok(Event::new(
                    r.header.ts_ns,
                    Task::from_header(&r.header),
                    hook,
                    detail,
                ))
            }
            RecordKind::PlatformError => {
                let r: abi::PlatformError = payload(kind, abi::PLATFORM_ERROR_VERSION, data)?;
                let device = comm_string(&r.name);
                let unit = u64::from(r.cpu as u32);
                let mut key = rate_key(kind, r.source, u32::from(r.severity), unit);
                if r.source == source::AER {
                    let len = key.name.len().min(r.name.len());
                    key.name.copy_from_slice(&r.name[..len]);
                    // The kernel keys by the name's first bytes, NUL-terminated within them.
                    if let Some(last) = key.name.last_mut() {
                        *last = 0;
                    }
                }
                let errors = self.account(key, &r.tally);
                self.names.insert(key, device.clone());
                let detail = PlatformError {
                    severity: Severity::of_platform(r.severity),
                    source: source_name(r.source),
                    device,
                    status: r.status,
                    cpu: (r.source == source::ARM).then_some(r.cpu),
                    mpidr: r.mpidr,
                    errors,
                    errors_total: r.tally.errors_total,
                    flushed: false,
                };
                Ok(Event::new(
                    r.header.ts_ns,
                    Task::from_header(&r.header),
                    hook,
                    detail,
                ))
            }
            other => Err(DecodeError::UnknownKind(other as u16)),
        }
    }

    fn poll(&mut self, now_ns: u64) -> Vec<Event> {
        let mut events = self.sweep(now_ns);
        let rate_event =
            |detail: CorrectedErrorRate| Event::new(now_ns, Task::default(), Source::Sweep, detail);
        events.extend(self.rates.crossings(now_ns).into_iter().map(rate_event));
        let started = *self.started_ns.get_or_insert(now_ns);
        // A FrequentCorrectableMemoryErrors restored from the Node stays until the agent has
        // watched a whole window itself.
        if !self.resynced && now_ns.saturating_sub(started) >= self.rates.window_ns {
            self.resynced = true;
            events.push(rate_event(CorrectedErrorRate {
                location: String::new(),
                dimm: String::new(),
                errors_last_hour: 0,
                threshold: self.rates.threshold,
                state: "resync",
                current: self.rates.current(),
            }));
        }
        events
    }
}

/// A rate-limit key as the kernel builds it.
fn rate_key(kind: RecordKind, source: u16, severity: u32, unit: u64) -> HwRateKey {
    HwRateKey {
        kind: kind as u16,
        source,
        severity,
        unit,
        name: [0; abi::RATE_KEY_NAME_LEN],
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use npd_common::{Hook, RecordHeader};

    use super::*;

    /// The print fmt of `ras:memory_failure_event` as a 6.1 kernel writes it (enums resolved
    /// to numbers), shortened.
    const MEMORY_FAILURE_FORMAT: &str = r#"name: memory_failure_event
format:
	field:unsigned long pfn;	offset:8;	size:8;	signed:0;
	field:int type;	offset:16;	size:4;	signed:1;
	field:int result;	offset:20;	size:4;	signed:1;

print fmt: "pfn %#lx: recovery action for %s: %s", REC->pfn, __print_symbolic(REC->type, { 0, "reserved kernel page" }, { 0x1, "high-order kernel page" }, { 11, "dirty LRU page" }), __print_symbolic(REC->result, { 0, "Ignored" }, { 1, "Failed" }, { 2, "Delayed" }, { 3, "Recovered" })
"#;

    #[test]
    fn names_enum_values_from_the_format_file() {
        let types = symbols(MEMORY_FAILURE_FORMAT, "type");
        assert_eq!(
            types.get(&0).map(String::as_str),
            Some("reserved kernel page")
        );
        assert_eq!(
            types.get(&1).map(String::as_str),
            Some("high-order kernel page")
        );
        assert_eq!(types.get(&11).map(String::as_str), Some("dirty LRU page"));
        assert_eq!(types.len(), 3);
        let results = symbols(MEMORY_FAILURE_FORMAT, "result");
        assert_eq!(
            results.values().collect::<Vec<_>>(),
            ["Ignored", "Failed", "Delayed", "Recovered"]
        );
        assert!(symbols("no print fmt", "type").is_empty());
    }

    #[test]
    fn severity_of_each_source() {
        let uc = mci_status::VAL | mci_status::UC;
        let cases = [
            (
                Severity::of_machine_check(mci_status::VAL),
                Severity::Corrected,
            ),
            (Severity::of_machine_check(uc), Severity::Recoverable),
            (
                Severity::of_machine_check(uc | mci_status::PCC),
                Severity::Fatal,
            ),
            (Severity::of_memory_error(0), Severity::Corrected),
            (Severity::of_memory_error(1), Severity::Uncorrected),
            (Severity::of_memory_error(2), Severity::Recoverable),
            (Severity::of_memory_error(3), Severity::Fatal),
            (Severity::of_memory_error(4), Severity::Informational),
            (
                Severity::of_memory_failure("Recovered"),
                Severity::Recoverable,
            ),
            (
                Severity::of_memory_failure("Delayed"),
                Severity::Recoverable,
            ),
            (Severity::of_memory_failure("Failed"), Severity::Uncorrected),
            (
                Severity::of_memory_failure("Ignored"),
                Severity::Uncorrected,
            ),
            (Severity::of_platform(2), Severity::Corrected),
            (Severity::of_platform(0), Severity::Recoverable),
            (Severity::of_platform(1), Severity::Fatal),
            (Severity::of_platform(3), Severity::Informational),
        ];
        for (i, (found, expected)) in cases.into_iter().enumerate() {
            assert_eq!(found, expected, "case {i}");
        }
    }

    fn header(kind: RecordKind, version: u8, size: usize) -> RecordHeader {
        RecordHeader {
            kind: kind as u16,
            version,
            hook: Hook::Tracepoint as u8,
            size: size as u32,
            ts_ns: 5_000,
            pid: 0,
            tid: 0,
            cgroup_id: 0,
            comm: [0; 16],
        }
    }

    fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
        // SAFETY: T is Pod (no padding), so all its bytes are initialized.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn tally(errors_total: u64) -> HwTally {
        HwTally {
            suppressed: 0,
            failures_total: 1,
            errors_total,
            first_failure_ns: 1,
        }
    }

    fn padded<const N: usize>(text: &str) -> [u8; N] {
        let mut out = [0; N];
        out[..text.len()].copy_from_slice(text.as_bytes());
        out
    }

    fn memory_error(error_type: u32, count: u32, errors_total: u64) -> Vec<u8> {
        bytes_of(&abi::MemoryError {
            header: header(
                RecordKind::MemoryError,
                abi::MEMORY_ERROR_VERSION,
                size_of::<abi::MemoryError>(),
            ),
            address: 0x1234_5000,
            error_type,
            error_count: count,
            mc_index: 0,
            top_layer: 1,
            middle_layer: 0,
            lower_layer: -1,
            grain_bits: 6,
            _pad: [0; 3],
            label: padded("CPU_SrcID#0_Chan#1\nDIMM#0"),
            msg: padded("read error"),
            tally: tally(errors_total),
        })
    }

    fn runtime() -> HwRuntime {
        HwRuntime {
            results: symbols(MEMORY_FAILURE_FORMAT, "result"),
            page_types: symbols(MEMORY_FAILURE_FORMAT, "type"),
            ..HwRuntime::default()
        }
    }

    fn decode(runtime: &mut HwRuntime, kind: RecordKind, data: &[u8]) -> Event {
        let mut symbolizer = Symbolizer::new(Path::new("/nonexistent/kallsyms"));
        runtime.decode(kind, data, &mut symbolizer).unwrap()
    }

    #[test]
    fn decodes_each_record_kind() {
        let mut hw = runtime();
        let mce = bytes_of(&abi::MachineCheck {
            header: header(
                RecordKind::MachineCheck,
                abi::MACHINE_CHECK_VERSION,
                size_of::<abi::MachineCheck>(),
            ),
            status: mci_status::VAL | mci_status::UC | mci_status::ADDRV | 0x9f,
            addr: 0xabc000,
            misc: 0x86,
            mcgstatus: 0x5,
            cpu: 1,
            bank: 4,
            _pad: [0; 3],
            tally: tally(1),
        });
        let event = decode(&mut hw, RecordKind::MachineCheck, &mce);
        let check = event.detail_as::<MachineCheck>().unwrap();
        assert_eq!(check.severity, Severity::Recoverable);
        assert_eq!((check.cpu, check.bank), (1, 4));
        assert_eq!(check.addr.as_deref(), Some("0xabc000"));
        assert!(!check.processor_context_corrupt);

        let event = decode(&mut hw, RecordKind::MemoryError, &memory_error(0, 3, 3));
        let error = event.detail_as::<MemoryError>().unwrap();
        assert_eq!(error.severity, Severity::Corrected);
        assert_eq!(error.location, "mc0/1.0.-1");
        assert_eq!(error.dimm, "CPU_SrcID#0_Chan#1\nDIMM#0");
        assert_eq!((error.errors, error.errors_total), (3, 3));
        // The label is the driver's text: escaped wherever it reaches a message.
        assert!(
            event
                .summary()
                .contains("DIMM \"CPU_SrcID#0_Chan#1\\nDIMM#0\""),
            "{}",
            event.summary()
        );

        let failure = bytes_of(&abi::MemoryFailure {
            header: RecordHeader {
                pid: 42,
                tid: 42,
                cgroup_id: 7,
                comm: padded("npd-poison"),
                ..header(
                    RecordKind::MemoryFailure,
                    abi::MEMORY_FAILURE_VERSION,
                    size_of::<abi::MemoryFailure>(),
                )
            },
            pfn: 0x1_2345,
            page_type: 11,
            result: 3,
            tally: tally(1),
        });
        let event = decode(&mut hw, RecordKind::MemoryFailure, &failure);
        let poisoned = event.detail_as::<MemoryFailure>().unwrap();
        assert_eq!(
            (poisoned.page_type.as_str(), poisoned.result.as_str()),
            ("dirty LRU page", "Recovered")
        );
        assert_eq!(poisoned.severity, Severity::Recoverable);
        assert_eq!((event.task.pid, event.task.cgroup_id), (42, 7));

        let aer = bytes_of(&abi::PlatformError {
            header: header(
                RecordKind::PlatformError,
                abi::PLATFORM_ERROR_VERSION,
                size_of::<abi::PlatformError>(),
            ),
            source: source::AER,
            severity: 1,
            status: 0x20,
            cpu: -1,
            _pad: 0,
            mpidr: 0,
            name: padded("0000:3b:00.0"),
            tally: tally(1),
        });
        let event = decode(&mut hw, RecordKind::PlatformError, &aer);
        let platform = event.detail_as::<PlatformError>().unwrap();
        assert_eq!(
            (platform.source, platform.device.as_str()),
            ("aer", "0000:3b:00.0")
        );
        assert_eq!((platform.severity, platform.cpu), (Severity::Fatal, None));

        // A record of another detector's kind is refused.
        let mut symbolizer = Symbolizer::new(Path::new("/nonexistent/kallsyms"));
        assert!(
            hw.decode(RecordKind::FsError, &aer, &mut symbolizer)
                .is_err()
        );
    }

    #[test]
    fn a_record_counts_only_errors_no_earlier_record_carried() {
        let mut hw = runtime();
        let errors = |event: Event| event.detail_as::<MemoryError>().unwrap().errors;
        assert_eq!(
            errors(decode(
                &mut hw,
                RecordKind::MemoryError,
                &memory_error(0, 2, 2)
            )),
            2
        );
        // The kernel folded 40 more into the next record (its count 1 included).
        assert_eq!(
            errors(decode(
                &mut hw,
                RecordKind::MemoryError,
                &memory_error(0, 1, 42)
            )),
            40
        );
        // The uncorrected ones of the DIMM count apart.
        assert_eq!(
            errors(decode(
                &mut hw,
                RecordKind::MemoryError,
                &memory_error(1, 1, 1)
            )),
            1
        );
    }

    fn event(detail: impl Finding) -> Event {
        Event::new(1, Task::default(), Source::Tracepoint, detail)
    }

    fn memory(severity: Severity, errors: u64) -> MemoryError {
        MemoryError {
            severity,
            dimm: "DIMM_A1".into(),
            location: "mc0/0.0.-1".into(),
            address: 0,
            msg: String::new(),
            errors,
            errors_total: errors,
            flushed: false,
        }
    }

    fn platform(source: &'static str, severity: Severity) -> PlatformError {
        PlatformError {
            severity,
            source,
            device: "0000:3b:00.0".into(),
            status: 1,
            cpu: None,
            mpidr: 0,
            errors: 1,
            errors_total: 1,
            flushed: false,
        }
    }

    fn failure(result: &str) -> MemoryFailure {
        MemoryFailure {
            severity: Severity::of_memory_failure(result),
            pfn: 0x42,
            page_type: "dirty LRU page".into(),
            result: result.into(),
            errors: 1,
            errors_total: 1,
            flushed: false,
        }
    }

    #[test]
    fn what_each_error_means() {
        // (event, Event reason and count, whether CperHardwareErrorFatal is raised)
        type Case = (Event, Option<(EventReason, u64)>, bool);
        let cases: Vec<Case> = vec![
            (
                event(memory(Severity::Corrected, 5)),
                Some((MEMORY_READ_ERROR, 5)),
                false,
            ),
            (
                event(memory(Severity::Recoverable, 1)),
                Some((CPER_HARDWARE_ERROR_RECOVERABLE, 1)),
                false,
            ),
            (
                event(memory(Severity::Uncorrected, 1)),
                Some((CPER_HARDWARE_ERROR_FATAL_EVENT, 1)),
                true,
            ),
            (event(memory(Severity::Informational, 1)), None, false),
            (
                event(platform("aer", Severity::Corrected)),
                Some((CPER_HARDWARE_ERROR_CORRECTED, 1)),
                false,
            ),
            (
                event(platform("aer", Severity::Recoverable)),
                Some((CPER_HARDWARE_ERROR_RECOVERABLE, 1)),
                false,
            ),
            (
                event(platform("non_standard", Severity::Fatal)),
                Some((CPER_HARDWARE_ERROR_FATAL_EVENT, 1)),
                true,
            ),
            (
                event(failure("Recovered")),
                Some((MEMORY_PAGE_POISONED, 1)),
                false,
            ),
            (
                event(failure("Failed")),
                Some((MEMORY_PAGE_POISONED, 1)),
                true,
            ),
        ];
        for (i, (event, report, fatal)) in cases.into_iter().enumerate() {
            let assessment = event.assess();
            assert_eq!(
                assessment.report.as_ref().map(|r| (r.reason, r.count)),
                report,
                "case {i}: {}",
                event.summary()
            );
            let raised = matches!(
                assessment.condition,
                Some((c, Change::Oops { .. })) if c == CPER_HARDWARE_ERROR_FATAL
            );
            assert_eq!(raised, fatal, "case {i}: {}", event.summary());
        }
    }

    #[test]
    fn a_fatal_error_holds_the_condition_until_a_reboot() {
        use std::time::{Duration, UNIX_EPOCH};

        use crate::engine::{Boot, ConditionStatus, Engine, EngineConfig, Timestamp};

        let at = |secs: u64| {
            Timestamp::new(secs * 1_000_000_000, UNIX_EPOCH + Duration::from_secs(secs))
        };
        let catalog = crate::detectors::catalog();
        let mut engine = Engine::new(EngineConfig::default(), catalog, at(0)).unwrap();
        let mce = MachineCheck {
            severity: Severity::Fatal,
            cpu: 0,
            bank: 2,
            status: hex(0xb200_0000_0000_009f),
            addr: None,
            misc: hex(0),
            mcgstatus: hex(0),
            overflow: false,
            processor_context_corrupt: true,
            errors: 1,
            errors_total: 1,
            flushed: false,
        };
        let sent = engine.observe(&event(mce.clone()), at(1));
        assert_eq!(sent[0].reason, CPER_HARDWARE_ERROR_FATAL_EVENT);
        engine.observe(&event(mce), at(2));
        let fatal = engine.condition(CPER_HARDWARE_ERROR_FATAL).clone();
        assert_eq!(fatal.status, ConditionStatus::True);
        assert_eq!(
            fatal.message,
            "2 uncorrected hardware errors seen this boot, the last: fatal machine check on CPU 0 \
             bank 2: status 0xb20000000000009f; the node needs a reboot"
        );
        // Time does not clear it; a restart on the same boot keeps it, a new boot clears it.
        engine.tick(at(100_000));
        assert_eq!(
            engine.condition(CPER_HARDWARE_ERROR_FATAL).status,
            ConditionStatus::True
        );
        for (boot, status) in [
            (Boot::Same, ConditionStatus::True),
            (Boot::New, ConditionStatus::False),
        ] {
            let mut restarted = Engine::new(EngineConfig::default(), catalog, at(0)).unwrap();
            restarted.restore([fatal.clone()], boot, at(200_000));
            assert_eq!(
                restarted.condition(CPER_HARDWARE_ERROR_FATAL).status,
                status,
                "{boot:?}"
            );
        }
    }

    #[test]
    fn a_poisoned_page_names_the_task_that_ran_into_it() {
        let mut poisoned = event(failure("Recovered"));
        poisoned.task = Task {
            pid: 42,
            tid: 42,
            comm: "npd-poison".into(),
            cgroup_id: 7,
        };
        let message = poisoned.assess().report.unwrap().message;
        assert!(
            message.contains("while npd-poison (pid 42) ran"),
            "{message}"
        );
        assert!(message.contains("SIGBUS"), "{message}");
    }

    #[test]
    fn corrected_error_rate_per_dimm_crosses_both_ways() {
        const MIN: u64 = 60_000_000_000;
        let mut rates = CorrectedRates::default();
        let states = |rates: &mut CorrectedRates, now: u64| -> Vec<(String, &'static str, u64)> {
            rates
                .crossings(now)
                .into_iter()
                .map(|c| (c.location, c.state, c.errors_last_hour))
                .collect()
        };
        // (at minute, DIMM, errors added, crossings expected then)
        type Step = (
            u64,
            Option<(&'static str, u64)>,
            Vec<(&'static str, &'static str, u64)>,
        );
        let steps: Vec<Step> = vec![
            (0, Some(("mc0/0.0.-1", 6)), vec![]),
            (10, Some(("mc0/0.1.-1", 9)), vec![]),
            // 11 in the hour on the first DIMM: above; the other stays at 9.
            (
                20,
                Some(("mc0/0.0.-1", 5)),
                vec![("mc0/0.0.-1", "above", 11)],
            ),
            (30, None, vec![]),
            // The first 6 leave the window: 5 left, below again.
            (61, None, vec![("mc0/0.0.-1", "below", 5)]),
            // The other DIMM's 9 leave too: nothing to say.
            (71, None, vec![]),
        ];
        for (minute, add, expected) in steps {
            let now = minute * MIN;
            if let Some((dimm, errors)) = add {
                rates.add(dimm, format!("DIMM {dimm}"), now, errors);
            }
            let expected: Vec<(String, &str, u64)> = expected
                .into_iter()
                .map(|(d, s, n)| (d.to_owned(), s, n))
                .collect();
            assert_eq!(states(&mut rates, now), expected, "minute {minute}");
        }
        assert!(rates.current().is_empty());
        assert!(
            rates
                .dimms
                .values()
                .all(|d| !d.errors.is_empty() || d.above)
        );
    }

    #[test]
    fn the_rate_condition_resyncs_after_a_whole_window() {
        let mut hw = runtime();
        let resyncs = |events: Vec<Event>| {
            events
                .iter()
                .filter_map(|e| e.detail_as::<CorrectedErrorRate>())
                .filter(|r| r.state == "resync")
                .count()
        };
        assert_eq!(resyncs(hw.poll(1_000)), 0);
        assert_eq!(resyncs(hw.poll(1_000 + RATE_WINDOW_NS - 1)), 0);
        assert_eq!(resyncs(hw.poll(1_000 + RATE_WINDOW_NS)), 1);
        assert_eq!(resyncs(hw.poll(2_000 + RATE_WINDOW_NS)), 0);
        let raised = event(CorrectedErrorRate {
            location: "mc0/0.0.-1".into(),
            dimm: "DIMM A1".into(),
            errors_last_hour: 11,
            threshold: CORRECTED_PER_HOUR,
            state: "above",
            current: Vec::new(),
        })
        .assess();
        assert_eq!(
            raised.report.map(|r| r.reason),
            Some(FREQUENT_CORRECTABLE_MEMORY_ERRORS_EVENT)
        );
        assert!(matches!(
            raised.condition,
            Some((c, Change::Raise { ref key, .. })) if c == FREQUENT_CORRECTABLE_MEMORY_ERRORS && key == "mc0/0.0.-1"
        ));
    }

    #[test]
    fn a_swept_tail_keeps_what_the_key_says() {
        let hw = runtime();
        let key = rate_key(RecordKind::MachineCheck, 0, 0b11, 4 << 32 | 2);
        let detail = hw.finding_of_key(&key, 7, 9).unwrap();
        let check = detail.as_any().downcast_ref::<MachineCheck>().unwrap();
        assert_eq!(
            (check.bank, check.cpu, check.severity),
            (4, 2, Severity::Fatal)
        );
        assert_eq!((check.errors, check.flushed), (7, true));
        let key = rate_key(RecordKind::MemoryFailure, 0, 1, 0x42);
        let detail = hw.finding_of_key(&key, 1, 1).unwrap();
        let poisoned = detail.as_any().downcast_ref::<MemoryFailure>().unwrap();
        assert_eq!(
            (poisoned.result.as_str(), poisoned.severity),
            ("Failed", Severity::Uncorrected)
        );
    }
}
