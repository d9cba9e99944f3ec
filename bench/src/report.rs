//! The results as Markdown: the machine, one table of every figure against its target, and
//! the details behind each.

use std::fmt::Write;

use crate::blockstorm::BlockStormResult;
use crate::oomstorm::OomStormResult;
use crate::{
    Results, Settings,
    footprint::Footprint,
    hooks::HookOverhead,
    latency::Latency,
    procfs::{CpuTime, Machine, Memory},
    stats,
    storm::StormResult,
};

const IDLE_RSS_TARGET_MIB: f64 = 15.0;
const IDLE_CPU_TARGET_PERCENT: f64 = 0.1;
const STORM_CPU_TARGET_PERCENT: f64 = 5.0;
const HOOK_TARGET: f64 = 0.01;
const API_P99_TARGET_MS: f64 = 100.0;
/// "Memory flat": resident memory after both storms within this of before them.
const FLAT_KIB: u64 = 1024;
/// Agent CPU per OOM kill (issue 20: NPD spent 0.64 ms here).
const OOM_KILL_CPU_TARGET_MS: f64 = 0.1;

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn percent(fraction: f64) -> String {
    format!("{:+.2} %", fraction * 100.0)
}

/// 12345678 -> "12,345,678".
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M/s", per_second / 1e6)
    } else {
        format!("{:.0} k/s", per_second / 1e3)
    }
}

/// Both readings: the ticks of /proc/PID/stat and the nanoseconds of schedstat.
fn cpu_time(cpu: CpuTime) -> String {
    format!(
        "{:.2} s by /proc/PID/stat, {:.4} s by schedstat",
        cpu.stat_seconds, cpu.sched_seconds
    )
}

fn verdict(met: bool, miss: impl FnOnce() -> String) -> String {
    if met {
        "met".to_owned()
    } else {
        format!("**missed** ({})", miss())
    }
}

struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    fn row(&mut self, figure: impl Into<String>, measured: String, target: &str, verdict: String) {
        self.rows
            .push([figure.into(), measured, target.to_owned(), verdict]);
    }
}

pub(crate) fn markdown(machine: &Machine, settings: &Settings, results: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {}, Linux {}, {} ({} cores), {:.1} GiB RAM; load average {} at the start. \
         npd's hooks on this kernel: {}.{}\n",
        machine.os,
        machine.kernel,
        machine.cpu,
        machine.cores,
        machine.memory_gib,
        machine.load,
        machine.hooks,
        if settings.quick {
            " **Quick run: too short for the numbers to mean anything.**"
        } else {
            ""
        }
    );
    let mut table = Table { rows: Vec::new() };
    let mut details = String::new();
    if let Some(hooks) = &results.hooks {
        hook_rows(&mut table, &mut details, hooks);
    }
    if let Some(storms) = &results.storms {
        storm_rows(&mut table, &mut details, storms);
    }
    if let Some(block) = &results.block_storm {
        block_storm_rows(&mut table, block);
    }
    if let Some(oom) = &results.oom_storm {
        oom_storm_rows(&mut table, oom);
    }
    if let Some(footprint) = &results.footprint {
        footprint_rows(&mut table, &mut details, footprint);
    }
    if let Some(latency) = &results.latency {
        latency_rows(&mut table, &mut details, latency);
    }
    let _ = writeln!(out, "| figure | measured | target | |");
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    for [figure, measured, target, verdict] in &table.rows {
        let _ = writeln!(out, "| {figure} | {measured} | {target} | {verdict} |");
    }
    out.push('\n');
    out.push_str(&details);
    out
}

fn hook_rows(table: &mut Table, details: &mut String, hooks: &HookOverhead) {
    for op in &hooks.ops {
        let overheads = op.overheads();
        let measured = format!(
            "{} ({:.0} -> {:.0} ns/iteration; rounds {} .. {})",
            percent(op.overhead()),
            stats::median(&op.without_ns),
            stats::median(&op.with_ns),
            percent(stats::min(&overheads)),
            percent(stats::max(&overheads)),
        );
        if op.op.is_watched() {
            table.row(
                format!("hook overhead, {}", op.label),
                measured,
                "< 1 %",
                verdict(op.overhead() < HOOK_TARGET, || {
                    format!("by {:.2} points", (op.overhead() - HOOK_TARGET) * 100.0)
                }),
            );
        } else {
            table.row(
                format!("hook overhead, {}", op.label),
                format!("{measured}; noise ±{:.2} %", op.noise() * 100.0),
                "within noise",
                verdict(op.overhead().abs() <= op.noise(), || {
                    format!(
                        "{} against a noise of ±{:.2} %",
                        percent(op.overhead()),
                        op.noise() * 100.0
                    )
                }),
            );
        }
    }
    for control in &hooks.controls {
        let each: Vec<String> = control
            .ops
            .iter()
            .map(|op| format!("{} {}", op.label, percent(op.overhead())))
            .collect();
        table.row(
            format!("control: {}", control.label),
            each.join(", "),
            "",
            String::new(),
        );
    }
    if let Some(program) = &hooks.fd_program {
        table.row(
            "fd program run time",
            format!(
                "{:.0} ns per run ({} runs; kernel.bpf_stats_enabled)",
                program.ns_per_run,
                count(program.runs)
            ),
            "",
            String::new(),
        );
    }
    let _ = writeln!(
        details,
        "Hook overhead: {} rounds, each timing every loop without npd and with `npd-agent run \
         --standalone` (all detectors) attached, in alternating order; a timing is the median \
         of {} batches of ~{} ms in a fresh process pinned to CPU {}. Per round (ns/iteration, \
         without -> with):\n",
        hooks.rounds, hooks.batches, hooks.batch_ms, hooks.cpu
    );
    let _ = writeln!(details, "| loop | {} |", {
        (1..=hooks.rounds)
            .map(|r| format!("round {r}"))
            .collect::<Vec<_>>()
            .join(" | ")
    });
    let _ = writeln!(details, "|---{}|", "|---".repeat(hooks.rounds));
    for op in &hooks.ops {
        let cells: Vec<String> = op
            .without_ns
            .iter()
            .zip(&op.with_ns)
            .map(|(without, with)| format!("{without:.0} -> {with:.0}"))
            .collect();
        let _ = writeln!(details, "| {} | {} |", op.label, cells.join(" | "));
    }
    details.push('\n');
}

fn oom_storm_rows(table: &mut Table, oom: &OomStormResult) {
    table.row(
        "OOM-kill storm: agent CPU per kill",
        format!(
            "{:.3} ms ({} kills in fresh memory cgroups in {:.1} s: {} during them, {} idle \
             over as long)",
            oom.cpu_ms_per_kill(),
            count(oom.kills),
            oom.wall_seconds,
            cpu_time(oom.cpu),
            cpu_time(oom.idle_cpu)
        ),
        "< 0.1 ms",
        verdict(oom.cpu_ms_per_kill() < OOM_KILL_CPU_TARGET_MS, || {
            format!(
                "{:.2} ms over",
                oom.cpu_ms_per_kill() - OOM_KILL_CPU_TARGET_MS
            )
        }),
    );
    table.row(
        "OOM-kill storm: every kill counted",
        format!(
            "{} kills, problem_counter{{reason=\"OOMKilling\"}} +{}, {} oom_kill records, {} \
             ring-buffer drops",
            count(oom.kills),
            oom.counted,
            oom.records,
            oom.ring_buffer_drops
        ),
        "all, no drops",
        verdict(
            oom.counted == oom.kills as f64 && oom.ring_buffer_drops == 0.0,
            || "some missing".to_owned(),
        ),
    );
}

fn block_storm_rows(table: &mut Table, block: &BlockStormResult) {
    let daemon = &block.daemon;
    table.row(
        "block I/O error storm: agent CPU",
        format!(
            "{:.3} % of one core ({} in {:.1} s, {} failed reads at {})",
            daemon.cpu.percent_of_core(daemon.wall_seconds),
            cpu_time(daemon.cpu),
            daemon.wall_seconds,
            count(daemon.failures),
            rate(daemon.failures_per_second)
        ),
        "< 5 % of a core",
        verdict(
            daemon.cpu.percent_of_core(daemon.wall_seconds) < STORM_CPU_TARGET_PERCENT,
            || "over".to_owned(),
        ),
    );
    table.row(
        "block I/O error storm: its failure rate",
        format!(
            "{} / {} without npd (before, after), {} with ({})",
            rate(block.without_npd[0]),
            rate(block.without_npd[1]),
            rate(daemon.failures_per_second),
            percent(block.rate_change())
        ),
        "(reported)",
        String::new(),
    );
    table.row(
        "block I/O error storm: every failure accounted",
        format!(
            "{} failed reads, {} accounted by {} block_io_error records (event-dump); daemon: \
             {} hook hits, {} records, {} rate-limited, {} ring-buffer drops",
            count(block.failures),
            count(block.accounted),
            count(block.records),
            count(daemon.hook_hits as u64),
            count(daemon.records as u64),
            count(daemon.rate_limited as u64),
            count(daemon.ring_buffer_drops as u64)
        ),
        "all, no drops",
        verdict(
            block.accounted == block.failures && daemon.ring_buffer_drops == 0.0,
            || {
                format!(
                    "{} unaccounted, {} drops",
                    block.failures as i64 - block.accounted as i64,
                    daemon.ring_buffer_drops
                )
            },
        ),
    );
}

fn storm_rows(table: &mut Table, details: &mut String, storms: &[StormResult]) {
    for storm in storms {
        let who = if storm.processes == 1 {
            "1 process".to_owned()
        } else {
            format!("{} processes", storm.processes)
        };
        let daemon = &storm.daemon;
        table.row(
            format!("storm, {who}: agent CPU"),
            format!(
                "{:.3} % of one core ({} in {:.1} s)",
                daemon.cpu_percent(),
                cpu_time(daemon.cpu),
                daemon.wall_seconds
            ),
            "< 5 % of a core",
            verdict(daemon.cpu_percent() < STORM_CPU_TARGET_PERCENT, || {
                format!(
                    "by {:.2} points",
                    daemon.cpu_percent() - STORM_CPU_TARGET_PERCENT
                )
            }),
        );
        table.row(
            format!("storm, {who}: its failure rate"),
            format!(
                "{} without npd ({} before, {} after), {} with ({})",
                rate(storm.without_npd_mean()),
                rate(storm.without_npd[0]),
                rate(storm.without_npd[1]),
                rate(daemon.failures_per_second),
                percent(storm.rate_change())
            ),
            "(reported)",
            String::new(),
        );
        let acc = &storm.accounting;
        let exact = acc.accounted() == acc.failures;
        table.row(
            format!("storm, {who}: every failure accounted"),
            format!(
                "{} failures = {} records + {} suppressed + {} flushed by {} sweeps \
                 (event-dump); daemon: {} records, {} rate-limited, {} ring-buffer drops",
                count(acc.failures),
                count(acc.records),
                count(acc.suppressed),
                count(acc.flushed),
                count(acc.sweeps),
                count(daemon.records as u64),
                count(daemon.rate_limited as u64),
                count(daemon.ring_buffer_drops as u64),
            ),
            "all, no drops",
            verdict(exact && daemon.ring_buffer_drops == 0.0, || {
                format!(
                    "{} unaccounted, {} drops",
                    acc.failures as i64 - acc.accounted() as i64,
                    daemon.ring_buffer_drops
                )
            }),
        );
    }
    if let (Some(first), Some(last)) = (storms.first(), storms.last()) {
        let before = first.daemon.memory_before;
        let after = last.daemon.memory_after;
        table.row(
            "storms: agent memory",
            format!(
                "RSS {} before, {} after both storms; peak (VmHWM) {}",
                mib(before.rss_kib),
                mib(after.rss_kib),
                mib(after.hwm_kib)
            ),
            "flat (within 1 MiB)",
            verdict(after.rss_kib <= before.rss_kib + FLAT_KIB, || {
                format!("grew {}", mib(after.rss_kib.saturating_sub(before.rss_kib)))
            }),
        );
        let _ = writeln!(
            details,
            "Storms: each storm process fills its fd table (RLIMIT_NOFILE 16) and fails openat \
             with EMFILE in a loop for {:.0} s; the rate without npd is measured before and after \
             the runs with it. Agent memory per storm (RSS / anon / peak):\n",
            first.seconds
        );
        for storm in storms {
            let m = |m: &Memory| {
                format!(
                    "{} / {} / {}",
                    mib(m.rss_kib),
                    mib(m.anon_kib),
                    mib(m.hwm_kib)
                )
            };
            let _ = writeln!(
                details,
                "- {} process(es): before {}, after {}; {} hook hits for {} failures",
                storm.processes,
                m(&storm.daemon.memory_before),
                m(&storm.daemon.memory_after),
                count(storm.daemon.hook_hits as u64),
                count(storm.daemon.failures),
            );
        }
        details.push('\n');
    }
}

fn footprint_rows(table: &mut Table, details: &mut String, footprint: &Footprint) {
    let idle = &footprint.idle;
    let rss_mib = idle.memory_end.rss_kib as f64 / 1024.0;
    table.row(
        "idle: agent RSS",
        format!(
            "{} (anon {}; peak VmHWM {}, during start)",
            mib(idle.memory_end.rss_kib),
            mib(idle.memory_end.anon_kib),
            mib(idle.memory_end.hwm_kib)
        ),
        "< 15 MiB",
        verdict(rss_mib < IDLE_RSS_TARGET_MIB, || {
            format!("by {:.1} MiB", rss_mib - IDLE_RSS_TARGET_MIB)
        }),
    );
    table.row(
        "idle: agent CPU",
        format!(
            "{:.3} % of one core ({} in {:.0} s)",
            idle.cpu_percent(),
            cpu_time(idle.cpu),
            idle.seconds
        ),
        "< 0.1 % of a core",
        verdict(idle.cpu_percent() < IDLE_CPU_TARGET_PERCENT, || {
            format!(
                "by {:.3} points",
                idle.cpu_percent() - IDLE_CPU_TARGET_PERCENT
            )
        }),
    );
    table.row(
        "idle: agent wakeups",
        format!(
            "{:.0} a minute (its threads put on a CPU {} times in {:.0} s)",
            idle.wakeups_per_minute(),
            idle.wakeups,
            idle.seconds
        ),
        "(reported; issue 20: only when something is pending)",
        String::new(),
    );
    table.row(
        "start-up: agent CPU until ready",
        cpu_time(footprint.start_cpu),
        "(reported)",
        String::new(),
    );
    let charged = &footprint.cgroup;
    table.row(
        "idle: agent's memory cgroup (what a pod limit sees)",
        format!(
            "peak {} over its life, {} at the end{}",
            mib(charged.peak_bytes / 1024),
            mib(charged.now_bytes / 1024),
            charged
                .kernel_peak_bytes
                .map(|kernel| format!("; kernel memory peak {}", mib(kernel / 1024)))
                .unwrap_or_default()
        ),
        "(reported)",
        String::new(),
    );
    table.row(
        "kernel memory of maps + programs",
        format!(
            "{} maps + {:.0} KiB programs (memlock, charged to the agent's cgroup on 5.11+)",
            mib(footprint.kernel_bytes("map") / 1024),
            footprint.kernel_bytes("prog") as f64 / 1024.0
        ),
        "(reported)",
        String::new(),
    );
    let _ = writeln!(
        details,
        "Kernel objects of the idle agent, from /proc/PID/fdinfo (`memlock`) and bpf(2) for \
         the names:\n\n| kind | name | type | key / value / entries | memlock |\n\
         |---|---|---|---|---|"
    );
    for object in &footprint.bpf {
        let shape = if object.kind == "map" {
            format!(
                "{} / {} / {}",
                object.key_size, object.value_size, object.max_entries
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            details,
            "| {} | {} | {} | {} | {:.1} KiB |",
            object.kind,
            object.name,
            object.type_name(),
            shape,
            object.memlock_bytes as f64 / 1024.0
        );
    }
    details.push('\n');
}

fn latency_rows(table: &mut Table, details: &mut String, latency: &Latency) {
    let p = |samples: &[f64], q: f64| stats::percentile(samples, q);
    let decoded = &latency.to_decoded.ms;
    table.row(
        "latency, kernel -> record decoded (event-dump)",
        format!(
            "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} ENFILE)",
            p(decoded, 50.0),
            p(decoded, 99.0),
            stats::max(decoded),
            decoded.len()
        ),
        "(reported)",
        String::new(),
    );
    let histogram = &latency.daemon_record_latency;
    table.row(
        "latency, kernel -> record decoded (daemon, npd_record_latency_seconds)",
        format!(
            "mean {:.3} ms, p50 <= {} ms, p99 <= {} ms ({} records)",
            histogram.mean() * 1e3,
            histogram.percentile_bound(50.0) * 1e3,
            histogram.percentile_bound(99.0) * 1e3,
            histogram.count
        ),
        "(reported)",
        String::new(),
    );
    let api = &latency.to_api_watch.ms;
    let p99 = p(api, 99.0);
    table.row(
        "latency, failing call -> FDPressure seen through a watch on kube-apiserver",
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} ENFILE)",
            p(api, 50.0),
            p99,
            stats::max(api),
            api.len()
        ),
        "p99 < 100 ms",
        verdict(p99 < API_P99_TARGET_MS, || {
            format!("by {:.1} ms", p99 - API_P99_TARGET_MS)
        }),
    );
    let patch = &latency.daemon_patch_latency;
    let idle = &latency.cluster_idle;
    table.row(
        "reporting to the API server: agent footprint",
        format!(
            "idle {:.3} % of a core over {:.0} s; RSS {} idle, {} after the provocations, \
             peak {}",
            idle.cpu_percent(),
            idle.seconds,
            mib(idle.memory_end.rss_kib),
            mib(latency.cluster_memory_end.rss_kib),
            mib(latency.cluster_memory_end.hwm_kib)
        ),
        "(reported)",
        String::new(),
    );
    let _ = writeln!(
        details,
        "Latency: {} times, an unprivileged child opens a file while fs.file-max is 1 (restored \
         right after). The failing call to the kernel's timestamp took p50 {:.3} ms. With the \
         agent reporting to a real kube-apiserver (npd's ClusterRole), its node-status patches \
         took mean {:.1} ms (p99 <= {} ms, npd_condition_patch_seconds, {} patches).\n",
        latency.provocations,
        p(&latency.call_to_kernel.ms, 50.0),
        patch.mean() * 1e3,
        patch.percentile_bound(99.0) * 1e3,
        patch.count
    );
}
