//! `npd-agent event-dump`: the live decoded stream, for a person (table) or a script (JSON
//! lines). Exits 0 after `--count` events or `--timeout` seconds.

use std::{io::Write, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, ValueEnum};

use npd_agent::{event::Event, probes, source::EventSource};

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
        event.task.comm,
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
        for event in events {
            if args.count.is_some_and(|count| printed >= count) {
                break;
            }
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
