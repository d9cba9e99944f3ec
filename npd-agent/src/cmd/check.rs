//! `npd-agent check`: what this kernel supports and which hook each detector uses, found by
//! really loading and attaching the programs (then detaching them). Exits non-zero if a
//! required feature is missing.

use std::process::ExitCode;

use aya::maps::MapType;
use clap::{Args, ValueEnum};
use serde::Serialize;

use npd_agent::{
    detectors::DetectorStatus,
    kernel::{self, CgroupLayout, btf::Btf, tracefs::Tracefs},
    probes,
};

use crate::ProbeArgs;

#[derive(Clone, Debug, Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    probes: ProbeArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
    format: CheckFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CheckFormat {
    Text,
    Json,
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Item {
    name: &'static str,
    ok: bool,
    /// A missing required feature makes `check` fail; an optional one only degrades.
    required: bool,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Report {
    kernel: String,
    items: Vec<Item>,
    detectors: Vec<DetectorStatus>,
    missing_offsets: Vec<String>,
    ok: bool,
}

fn item(name: &'static str, required: bool, result: Result<String, String>) -> Item {
    match result {
        Ok(detail) => Item {
            name,
            ok: true,
            required,
            detail,
        },
        Err(detail) => Item {
            name,
            ok: false,
            required,
            detail,
        },
    }
}

fn gather(args: &CheckArgs) -> Report {
    let release = kernel::release();
    let mut items = Vec::new();
    items.push(item(
        "kernel",
        true,
        match kernel::version() {
            Some(v) if v >= (5, 8) => Ok(format!("{release} (5.8 or later needed)")),
            Some(_) => Err(format!(
                "{release}: npd needs 5.8 or later (BPF ring buffer)"
            )),
            None => Err(format!("{release}: cannot tell the version")),
        },
    ));
    items.push(item(
        "btf",
        true,
        Btf::from_sys_fs()
            .map(|_| kernel::btf::VMLINUX_BTF.to_owned())
            .map_err(|e| e.to_string()),
    ));
    items.push(item(
        "privileges",
        true,
        match kernel::missing_privileges() {
            None => Ok(format!(
                "effective capabilities {:#x}",
                kernel::effective_capabilities()
            )),
            Some(missing) => Err(missing),
        },
    ));
    items.push(item(
        "ring buffer",
        true,
        match aya::sys::is_map_supported(MapType::RingBuf) {
            Ok(true) => Ok("BPF_MAP_TYPE_RINGBUF supported".to_owned()),
            Ok(false) => Err("BPF_MAP_TYPE_RINGBUF not supported (needs 5.8)".to_owned()),
            Err(err) => Err(format!("cannot probe: {err}")),
        },
    ));
    let tracefs_before = Tracefs::find().is_some();
    items.push(item(
        "tracefs",
        true,
        Tracefs::find_or_mount()
            .map(|t| {
                if tracefs_before {
                    format!("{}", t.root().display())
                } else {
                    format!("{} (was not mounted; npd mounted it)", t.root().display())
                }
            })
            .map_err(|e| e.to_string()),
    ));
    let options = args.probes.load_options(None);
    let layout = CgroupLayout::detect(&options.host_root);
    items.push(item(
        "cgroups",
        false,
        Ok(match layout {
            CgroupLayout::Unified => "v2 (unified): cgroup ids from the unified hierarchy".into(),
            CgroupLayout::Legacy => "v1: cgroup ids from the memory controller's hierarchy".into(),
        }),
    ));

    let mut detectors = Vec::new();
    let mut missing_offsets = Vec::new();
    let prerequisites_ok = items.iter().all(|i| i.ok || !i.required);
    if prerequisites_ok {
        match probes::load(&options) {
            Ok(loaded) => {
                let features = probes::probe_program_types(&mut { loaded.ebpf });
                items.push(item("tp_btf", false, features.btf_tracepoint));
                items.push(item("fentry", false, features.fentry));
                detectors = loaded.statuses;
                missing_offsets = loaded
                    .missing_offsets
                    .iter()
                    .map(|(name, why)| format!("{name}: {why}"))
                    .collect();
            }
            Err(err) => items.push(item("load", true, Err(err.to_string()))),
        }
    }
    let ok =
        items.iter().all(|i| i.ok || !i.required) && detectors.iter().all(|d| d.active.is_some());
    Report {
        kernel: release,
        items,
        detectors,
        missing_offsets,
        ok,
    }
}

fn print_text(report: &Report) {
    println!("npd check on Linux {}", report.kernel);
    for item in &report.items {
        let mark = match (item.ok, item.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "no  ",
        };
        println!("  {mark} {:<12} {}", item.name, item.detail);
    }
    println!("detectors:");
    for detector in &report.detectors {
        match detector.active {
            Some(hook) => println!(
                "  ok   {:<12} {} {}",
                detector.detector,
                hook.as_str(),
                detector.active_target().unwrap_or_default()
            ),
            None => println!("  FAIL {:<12} no hook attached", detector.detector),
        }
        for attempt in &detector.attempts {
            if let Some(error) = &attempt.error {
                println!(
                    "         {:<12} not {} {}: {error}",
                    "",
                    attempt.hook.as_str(),
                    attempt.target
                );
            }
        }
        for note in &detector.notes {
            println!("         {:<12} {note}", "");
        }
    }
    if !report.missing_offsets.is_empty() {
        println!("kernel fields not found in BTF (the fields that need them are left out):");
        for missing in &report.missing_offsets {
            println!("  {missing}");
        }
    }
    println!(
        "{}",
        if report.ok {
            "result: ok"
        } else {
            "result: a required feature is missing"
        }
    );
}

pub(crate) fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let report = gather(args);
    match args.format {
        CheckFormat::Text => print_text(&report),
        CheckFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
