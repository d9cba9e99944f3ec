//! `npd-agent run`: the daemon. With a cluster (in-cluster, `--kubeconfig` or `KUBECONFIG`)
//! it reports NodeConditions and Events; without one it runs standalone and logs them.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Parser;
use npd_agent::{
    agent::{self, AgentConfig, ClusterConfig},
    config::{FileConfig, duration},
    k8s::{self, node::ConditionNames},
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
    let mut file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    // Flags win: fold the ones the file also knows into it, then validate once.
    if let Some(window) = args.hung_task_recovery_window {
        file.hung_task.recovery_window = Some(window);
    }
    if let Some(heartbeat) = args.heartbeat {
        file.kubernetes.heartbeat = Some(heartbeat);
    }
    if args.dry_run {
        file.remediation.taints.dry_run = Some(true);
    }
    file.validate()?;
    let remediation = file.remediation();
    if args.dry_run && remediation.is_none() {
        tracing::warn!("--dry-run does nothing: remediation.taints is not enabled in the config");
    }
    let kubernetes = &file.kubernetes;
    let config = AgentConfig {
        probes: args.probes.load_options(Some(&file)),
        engine: file.engine()?,
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 20257))),
        file_table_interval: file
            .fd_pressure
            .sample_interval
            .unwrap_or(Duration::from_secs(10)),
        cluster: ClusterConfig {
            kubeconfig: args
                .kubeconfig
                .clone()
                .or_else(|| kubernetes.kubeconfig.clone()),
            standalone: args.standalone || kubernetes.enabled == Some(false),
            node_name: k8s::node_name(
                args.node_name
                    .as_deref()
                    .or(kubernetes.node_name.as_deref()),
            ),
            heartbeat: kubernetes.heartbeat.unwrap_or(Duration::from_secs(60)),
            node_event_namespace: args
                .event_namespace
                .clone()
                .or_else(|| kubernetes.event_namespace.clone())
                .unwrap_or_else(|| "default".to_owned()),
            names: {
                let defaults = ConditionNames::default();
                let conditions = &kubernetes.conditions;
                ConditionNames {
                    kernel_deadlock: conditions
                        .kernel_deadlock
                        .clone()
                        .unwrap_or(defaults.kernel_deadlock),
                    kernel_oops: conditions
                        .kernel_oops
                        .clone()
                        .unwrap_or(defaults.kernel_oops),
                    fd_pressure: conditions
                        .fd_pressure
                        .clone()
                        .unwrap_or(defaults.fd_pressure),
                    reasons: kubernetes.reasons.clone(),
                }
            },
            max_pending_events: kubernetes.max_pending_events.unwrap_or(512),
            max_backoff: kubernetes
                .retry_backoff_max
                .unwrap_or(Duration::from_secs(60)),
            remediation,
        },
    };
    agent::run(config, super::shutdown_signal())
        .await
        .context("npd-agent run")?;
    Ok(ExitCode::SUCCESS)
}
