//! `npd-agent event-dump`: the live decoded stream, for a person (table) or a script (JSON
//! lines). Exits 0 after `--count` events or `--timeout` seconds.

use std::{io::Write, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, ValueEnum};

use npd_agent::{
    agent,
    attribution::{Attributor, CgroupIndex},
    event::{Event, escape_untrusted},
    probes,
    source::EventSource,
};

use crate::ProbeArgs;

#[derive(Clone, Debug, Args)]
pub(crate) struct DumpArgs {
    #[command(flatten)]
    probes: ProbeArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DumpFormat::Json)]
    format: DumpFormat,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long)]
    timeout: Option<f64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DumpFormat {
    /// One JSON object per line.
    Json,
    /// Aligned columns for people.
    Table,
}

const TABLE_HEADER: &str = "TIME                      KIND             PID      TID      COMM             CGROUP   SOURCE      DETAILS";

fn table_row(event: &Event) -> String {
    format!(
        "{:<25} {:<16} {:<8} {:<8} {:<16} {:<8} {:<11} {}",
        event.time,
        event.kind,
        event.task.pid,
        event.task.tid,
        escape_untrusted(&event.task.comm),
        event.task.cgroup_id,
        event.source.as_str(),
        event.summary()
    )
}

pub(crate) async fn run(args: DumpArgs) -> anyhow::Result<ExitCode> {
    let timeout = args
        .timeout
        .map(|secs| {
            Duration::try_from_secs_f64(secs)
                .map_err(|_| anyhow::anyhow!("--timeout {secs}: not a valid number of seconds"))
        })
        .transpose()?;
    let probes = probes::load(&args.probes.load_options(None))?;
    for status in &probes.statuses {
        match status.active {
            Some(hook) => tracing::info!(
                "{}: {} {}",
                status.detector,
                hook.as_str(),
                status.active_target().unwrap_or_default()
            ),
            None => tracing::warn!("{}: no hook could attach", status.detector),
        }
    }
    // Standalone attribution: cgroup path, pod uid and container id, or systemd unit.
    let mut attributor = Attributor::new(CgroupIndex::new(
        probes.cgroup_layout.attribution_root(&probes.host_root),
    ));
    let mut source = EventSource::new(probes).context("watching the ring buffer")?;
    tracing::info!("streaming records");
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut stdout = std::io::stdout().lock();
    if matches!(args.format, DumpFormat::Table) {
        writeln!(stdout, "{TABLE_HEADER}")?;
        stdout.flush()?;
    }
    let mut printed = 0u64;
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        if args.count.is_some_and(|count| printed >= count) {
            break;
        }
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let events = tokio::select! {
            events = source.next() => events.context("reading the ring buffer")?,
            () = sleep => break,
            () = &mut shutdown => break,
        };
        for mut event in events {
            if args.count.is_some_and(|count| printed >= count) {
                break;
            }
            agent::enrich(&mut attributor, &mut event);
            let line = match args.format {
                DumpFormat::Json => serde_json::to_string(&event)?,
                DumpFormat::Table => table_row(&event),
            };
            // A closed pipe (`| head`) ends the dump quietly.
            if writeln!(stdout, "{line}")
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return Ok(ExitCode::SUCCESS);
            }
            printed += 1;
        }
    }
    let decode_errors = source.decoder.stats.total();
    if decode_errors > 0 {
        tracing::warn!("{decode_errors} malformed records were skipped");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use npd_agent::{
        detectors::{
            fd::{Errno, FdExhausted},
            hung_task::{HungTask, HungTaskRecovered},
            oom::{OomKill, OomScope},
            oops::{KernelOops, KernelProblem, KernelWarning},
        },
        event::{Event, Finding, Source, Task},
    };

    use super::*;

    fn task() -> Task {
        Task {
            pid: 4242,
            tid: 4243,
            comm: "worker".into(),
            cgroup_id: 77,
        }
    }

    fn problem() -> KernelProblem {
        KernelProblem {
            caller: Some("npd_test_write+0x10".into()),
            taint: Some(640),
            taint_flags: Some("DW".into()),
            stack: vec!["npd_test_write+0x10".into()],
            counter: None,
            count: None,
            occurrences: 1,
            since_boot: false,
        }
    }

    /// One event of every kind, as a person and a script see it.
    #[test]
    fn every_kind_prints_readably_as_a_table_row_and_as_json() {
        let details: Vec<Box<dyn Finding>> = vec![
            Box::new(FdExhausted {
                errno: Errno::Emfile,
                syscall: "socket".into(),
                syscall_nr: 41,
                suppressed: 12,
                failures_total: 13,
                nofile_limit: Some(1024),
                flushed: false,
                kernel_cgroup_path: None,
            }),
            Box::new(HungTask {
                stack: vec!["percpu_rwsem_wait+0x15f".into()],
                stack_source: "kernel",
                first_seen: true,
                repeat: 1,
                first_seen_ns: 1,
            }),
            Box::new(HungTaskRecovered {
                how: "running",
                hung_for_ms: 4100,
                reports: 2,
            }),
            Box::new(OomKill {
                total_vm_kb: Some(75160),
                anon_rss_kb: Some(65280),
                file_rss_kb: Some(6604),
                shmem_rss_kb: Some(0),
                pgtables_kb: Some(188),
                uid: Some(0),
                oom_score_adj: Some(0),
                scope: OomScope::Memcg,
                memcg: Some("/kubepods/burstable/podx".into()),
                cgroup_source: "kernel",
                trigger: task(),
                trigger_stack: vec![],
                kernel_cgroup_path: None,
                kernel_memcg: None,
                memcg_limit_kb: None,
            }),
            Box::new(KernelOops(problem())),
            Box::new(KernelWarning(problem())),
        ];
        let expected = [
            (
                "fd_exhausted",
                "out of file descriptors (RLIMIT_NOFILE 1024): socket failed (+12 suppressed)",
            ),
            (
                "hung_task",
                "task blocked in D state (top frame percpu_rwsem_wait+0x15f)",
            ),
            (
                "hung_task_recovered",
                "no longer blocked (running) after 4.1s and 2 reports",
            ),
            (
                "oom_kill",
                "memory cgroup /kubepods/burstable/podx at its limit, rss 71884 KiB",
            ),
            (
                "kernel_oops",
                "kernel oops 1x at npd_test_write+0x10, kernel tainted DW",
            ),
            ("kernel_warning", "kernel warning 1x at npd_test_write+0x10"),
        ];
        for (detail, (kind, summary)) in details.into_iter().zip(expected) {
            let event = Event::boxed(1_000, task(), Source::Tracepoint, detail);
            let row = table_row(&event);
            assert!(row.contains(kind), "{row}");
            assert!(row.contains("4242") && row.contains("worker"), "{row}");
            assert!(row.contains(summary), "{kind}: `{row}` lacks `{summary}`");
            let json: serde_json::Value = serde_json::to_value(&event).unwrap();
            assert_eq!(json["kind"], kind);
            assert_eq!(json["pid"], 4242);
            assert_eq!(json["tid"], 4243);
            assert_eq!(json["cgroup_id"], 77);
            assert_eq!(json["source"], "tracepoint");
        }
        // The header lines up with the rows' first columns.
        assert!(TABLE_HEADER.starts_with("TIME"));
    }
}
