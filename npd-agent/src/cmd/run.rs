//! `npd-agent run`: the daemon.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use npd_agent::{probes, source::EventSource};

use crate::ProbeArgs;

#[derive(Clone, Debug, Parser)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    probes: ProbeArgs,
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let probes = probes::load(&args.probes.load_options())?;
    for status in &probes.statuses {
        match status.active {
            Some(hook) => tracing::info!(
                detector = status.detector,
                hook = hook.as_str(),
                "attached {}",
                status.active_target().unwrap_or_default()
            ),
            None => tracing::warn!(detector = status.detector, "no hook could attach"),
        }
    }
    let mut source = EventSource::new(probes).context("watching the ring buffer")?;
    tracing::info!("no cluster configured: running standalone, problems are logged");
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let events = tokio::select! {
            events = source.next() => events.context("reading the ring buffer")?,
            () = &mut shutdown => break,
        };
        for event in events {
            tracing::warn!(
                kind = event.kind,
                pid = event.task.pid,
                comm = %event.task.comm,
                cgroup_id = event.task.cgroup_id,
                source = event.source.as_str(),
                "{}",
                event.summary()
            );
        }
    }
    tracing::info!("stopping: detaching kernel programs");
    Ok(ExitCode::SUCCESS)
}
