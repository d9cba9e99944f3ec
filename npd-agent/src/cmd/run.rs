//! `npd-agent run`: the daemon. With a cluster (in-cluster, `--kubeconfig` or `KUBECONFIG`)
//! it reports NodeConditions and Events; without one it runs standalone and logs them.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Parser;
use npd_agent::{
    agent,
    config::{FileConfig, RunFlags, duration},
};

use crate::ProbeArgs;

#[derive(Clone, Debug, Parser)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    probes: ProbeArgs,
    /// Configuration file (YAML; see deploy/base/config.yaml). Flags win over it.
    #[arg(long, env = "NPD_CONFIG")]
    config: Option<PathBuf>,
    /// Address for /metrics, /healthz and /readyz [default: 127.0.0.1:20257].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// This node's name [default: $NODE_NAME, else the hostname].
    #[arg(long)]
    node_name: Option<String>,
    /// Kubeconfig to report with [default: $KUBECONFIG, else in-cluster, else standalone].
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Only log problems, even where a cluster is configured.
    #[arg(long)]
    standalone: bool,
    /// How often lastHeartbeatTime is refreshed, e.g. 30s or 1m [default: 1m].
    #[arg(long, value_parser = duration::parse)]
    heartbeat: Option<Duration>,
    /// Namespace of Events about the Node [default: default].
    #[arg(long)]
    event_namespace: Option<String>,
    /// KernelDeadlock clears once no task has been hung this long [default: 5m].
    #[arg(long, value_parser = duration::parse)]
    hung_task_recovery_window: Option<Duration>,
    /// Remediation dry run: log and emit Events about the taints npd would add or remove,
    /// change nothing (needs remediation.taints.enabled in the config).
    #[arg(long)]
    dry_run: bool,
}

pub(crate) async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let flags = RunFlags {
        probes: args.probes.flags(),
        listen: args.listen,
        node_name: args.node_name,
        kubeconfig: args.kubeconfig,
        standalone: args.standalone,
        heartbeat: args.heartbeat,
        event_namespace: args.event_namespace,
        hung_task_recovery_window: args.hung_task_recovery_window,
        dry_run: args.dry_run,
    };
    let config = file.resolve(flags)?;
    if args.dry_run && config.cluster.remediation.is_none() {
        tracing::warn!("--dry-run does nothing: remediation.taints is not enabled in the config");
    }
    agent::run(config, super::shutdown_signal())
        .await
        .context("npd-agent run")?;
    Ok(ExitCode::SUCCESS)
}
