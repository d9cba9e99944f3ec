//! The daemon: kernel records -> events -> attribution -> the problem engine -> reporting
//! (the Node and Events through the API server, or the log when standalone), with metrics
//! and health on one HTTP listener. IO happens here and in the modules it drives; the engine
//! stays pure.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::Context;
use npd_common::counters::{Counter, Detector};

use crate::{
    attribution::{Attributor, CgroupIndex, PodDirectoryMap},
    clock, detectors,
    engine::{Engine, EngineConfig, FileTableSample, NodeCondition, ProblemEvent, Timestamp},
    event::Event,
    health::Health,
    k8s::{
        self,
        node::ConditionNames,
        reporter::{self, ReporterConfig, ReporterHandle},
    },
    metrics::{
        CauseLabels, ConditionLabels, DetectorLabels, HookLabels, KindLabels, Metrics, ReasonLabels,
    },
    probes::{self, LoadOptions},
    remediation::{self, TaintConfig},
    source::EventSource,
};

/// Everything the daemon is told.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub probes: LoadOptions,
    pub engine: EngineConfig,
    /// Where /metrics, /healthz and /readyz listen.
    pub listen: SocketAddr,
    /// How often /proc/sys/fs/file-nr is sampled.
    pub file_table_interval: Duration,
    pub cluster: ClusterConfig,
}

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `--kubeconfig`; else KUBECONFIG, else in-cluster, else standalone.
    pub kubeconfig: Option<PathBuf>,
    /// Forces standalone mode even where a cluster is configured.
    pub standalone: bool,
    pub node_name: String,
    pub heartbeat: Duration,
    pub node_event_namespace: String,
    pub names: ConditionNames,
    pub max_pending_events: usize,
    pub max_backoff: Duration,
    /// Opt-in taints (`remediation.taints`); `None` when not enabled.
    pub remediation: Option<TaintConfig>,
}

/// Where decisions go.
enum Sink {
    Cluster(ReporterHandle),
    /// Standalone: the log. Remembers the conditions last logged, to log only changes.
    Log(Vec<NodeCondition>),
}

impl Sink {
    fn conditions(&mut self, conditions: &[NodeCondition], names: &ConditionNames) {
        match self {
            Self::Cluster(reporter) => reporter.set_conditions(conditions),
            Self::Log(last) => {
                for condition in conditions {
                    let changed = last
                        .iter()
                        .find(|c| c.condition_type == condition.condition_type)
                        .is_none_or(|c| {
                            c.status != condition.status || c.reason != condition.reason
                        });
                    if changed && condition.is_true() {
                        tracing::warn!(
                            condition = names.name(condition.condition_type),
                            status = condition.status.as_str(),
                            reason = %condition.reason,
                            "{}",
                            condition.message
                        );
                    } else if changed {
                        tracing::info!(
                            condition = names.name(condition.condition_type),
                            status = condition.status.as_str(),
                            reason = %condition.reason,
                            "{}",
                            condition.message
                        );
                    }
                }
                *last = conditions.to_vec();
            }
        }
    }

    fn events(&mut self, events: Vec<ProblemEvent>) {
        match self {
            Self::Cluster(reporter) => reporter.push_events(events),
            Self::Log(_) => {
                for event in events {
                    tracing::warn!(
                        reason = event.reason.as_str(),
                        r#type = event.event_type.as_str(),
                        count = event.count,
                        "{}",
                        event.message
                    );
                }
            }
        }
    }
}

/// Kernel counters, decode errors and engine statistics turned into metric increments.
#[derive(Debug, Default)]
struct MetricDeltas {
    deltas: crate::metrics::Deltas,
    /// The kernel's counters cost a bpf(2) call per slot: read at most this often, not once
    /// per record batch.
    next_kernel_read: Option<Instant>,
}

/// How stale the kernel counters in /metrics may be.
const KERNEL_COUNTERS_PERIOD: Duration = Duration::from_secs(1);

impl MetricDeltas {
    fn update(&mut self, metrics: &Metrics, source: &EventSource, engine: &Engine) {
        let now = Instant::now();
        if self.next_kernel_read.is_none_or(|next| now >= next) {
            self.next_kernel_read = Some(now + KERNEL_COUNTERS_PERIOD);
            self.kernel_counters(metrics, source);
        }
        self.agent_counters(metrics, source, engine);
    }

    fn kernel_counters(&mut self, metrics: &Metrics, source: &EventSource) {
        let kernel = source.kernel_counters();
        for &detector in Detector::ALL {
            let labels = DetectorLabels {
                detector: detector.name().to_owned(),
            };
            for (counter, family) in [
                (Counter::Hits, &metrics.hook_hits),
                (Counter::RingFull, &metrics.ring_buffer_drops),
                (Counter::RateLimited, &metrics.rate_limited),
            ] {
                let key = format!("{}/{}", detector.name(), counter.name());
                let delta = self.deltas.delta(&key, kernel.get(detector, counter));
                if delta > 0 {
                    family.get_or_create(&labels).inc_by(delta);
                }
            }
        }
    }

    fn agent_counters(&mut self, metrics: &Metrics, source: &EventSource, engine: &Engine) {
        let stats = &source.decoder.stats;
        for (cause, total) in stats.by_cause() {
            let delta = self.deltas.delta(&format!("decode/{cause}"), total);
            if delta > 0 {
                metrics
                    .decode_errors
                    .get_or_create(&CauseLabels {
                        cause: cause.to_owned(),
                    })
                    .inc_by(delta);
            }
        }
        // NPD's problem_counter: problems seen per reason.
        for &reason in &detectors::catalog().reasons {
            let occurrences = engine.event_stats(reason).occurrences;
            let delta = self
                .deltas
                .delta(&format!("problem/{}", reason.as_str()), occurrences);
            if delta > 0 {
                metrics
                    .problem_counter
                    .get_or_create(&ReasonLabels {
                        reason: reason.as_str().to_owned(),
                    })
                    .inc_by(delta);
            }
        }
    }
}

/// NPD's problem_gauge: 1 while a condition is True with its problem reason.
fn condition_gauges(metrics: &Metrics, conditions: &[NodeCondition], names: &ConditionNames) {
    for condition in conditions {
        let problem_reason = condition.condition_type.spec().problem_reason;
        metrics
            .problem_gauge
            .get_or_create(&ConditionLabels {
                reason: ReasonLabels {
                    reason: problem_reason.to_owned(),
                },
                r#type: names.name(condition.condition_type).to_owned(),
            })
            .set(i64::from(condition.is_true()));
    }
}

/// Fills in who an event belongs to, then what the event's kind reads from that (e.g. which
/// memory cgroup hit its limit).
pub fn enrich(attributor: &mut Attributor, event: &mut Event) {
    attributor.attribute_event(event, Instant::now());
    let root = attributor.index().root();
    event.detail.attributed(event.attribution.as_ref(), root);
    event.affected_pods = event
        .detail
        .affected_pod_uids()
        .iter()
        .map(|uid| attributor.pod_by_uid(uid))
        .collect();
}

fn read_file_table() -> Option<FileTableSample> {
    std::fs::read_to_string("/proc/sys/fs/file-nr")
        .ok()
        .and_then(|text| FileTableSample::parse_file_nr(&text))
}

/// Runs until `shutdown` resolves.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    // NPD's problem_counter starts at 0 for every reason npd knows, so an alert on its
    // increase sees the first problem too.
    for reason in &detectors::catalog().reasons {
        metrics
            .problem_counter
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().to_owned(),
            })
            .inc_by(0);
    }
    // Stalls: the consumer comes round at least every second; the reporter at least every
    // heartbeat (also while backing off, whose ceiling is a minute), plus the requests it
    // may be waiting on (an event can take two).
    let health = Arc::new(Health::new(
        Duration::from_secs(30),
        config.cluster.heartbeat.max(config.cluster.max_backoff) * 3 + k8s::REQUEST_TIMEOUT * 2,
    ));
    let bound = crate::http::serve(config.listen, Arc::clone(&metrics), Arc::clone(&health))
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    tracing::info!("metrics and health on http://{bound}/metrics, /healthz, /readyz");

    let probes = probes::load(&config.probes)?;
    // (detector, hook) of every attached detector, for npd_hook_attached.
    let mut attached_hooks = Vec::new();
    for status in &probes.statuses {
        match status.active {
            Some(hook) => {
                tracing::info!(
                    detector = status.detector,
                    hook = hook.as_str(),
                    "attached {}",
                    status.active_target().unwrap_or_default()
                );
                metrics
                    .hooks_attached
                    .get_or_create(&HookLabels {
                        detector: status.detector.to_owned(),
                        hook: hook.as_str().to_owned(),
                    })
                    .set(1);
                attached_hooks.push((status.detector, hook.as_str()));
            }
            None => tracing::warn!(detector = status.detector, "no hook could attach"),
        }
        for note in &status.notes {
            tracing::info!(detector = status.detector, "{note}");
        }
    }
    for (field, why) in &probes.missing_offsets {
        tracing::warn!("kernel field {field} not found ({why}); records leave it out");
    }
    let layout = probes.cgroup_layout;
    let cgroup_root = layout.attribution_root(&probes.host_root);
    let mut source = EventSource::new(probes).context("watching the ring buffer")?;
    let linked = probes::linked_programs(source.ebpf());
    health.set_hooks_attached();

    let pods = Arc::new(RwLock::new(PodDirectoryMap::default()));
    let mut attributor = Attributor::new(CgroupIndex::new(cgroup_root));
    let names = config.cluster.names.clone();
    let mut engine = Engine::new(
        config.engine.clone(),
        detectors::catalog(),
        Timestamp::now(),
    )?;

    let cluster = if config.cluster.standalone {
        None
    } else {
        k8s::connect(config.cluster.kubeconfig.as_deref()).await?
    };
    let mut sink = match cluster {
        Some((clients, source_of_config)) => {
            tracing::info!(
                node = %config.cluster.node_name,
                "reporting to the cluster ({source_of_config:?})"
            );
            attributor = attributor.with_pod_directory(pods.clone());
            tokio::spawn(k8s::pods::watch(
                clients.watches,
                config.cluster.node_name.clone(),
                Arc::clone(&pods),
                Arc::new(std::sync::atomic::AtomicBool::new(false)),
            ));
            let reporter = reporter::spawn(
                clients.requests.clone(),
                ReporterConfig {
                    node_name: config.cluster.node_name.clone(),
                    names: names.clone(),
                    heartbeat: config.cluster.heartbeat,
                    node_event_namespace: config.cluster.node_event_namespace.clone(),
                    max_pending_events: config.cluster.max_pending_events,
                    initial_backoff: Duration::from_secs(1).min(config.cluster.max_backoff),
                    max_backoff: config.cluster.max_backoff,
                },
                Arc::clone(&metrics),
                Arc::clone(&health),
            );
            // Remediation follows the same desired conditions as the reporter.
            if let Some(taints) = &config.cluster.remediation {
                remediation::spawn(
                    clients.requests,
                    taints.clone(),
                    remediation::NodeTarget {
                        node_name: config.cluster.node_name.clone(),
                        names: names.clone(),
                        event_namespace: config.cluster.node_event_namespace.clone(),
                        max_backoff: config.cluster.max_backoff,
                    },
                    reporter.subscribe(),
                    Arc::clone(&metrics),
                    Arc::clone(&health),
                );
            }
            Sink::Cluster(reporter)
        }
        None => {
            tracing::info!("no cluster configured: running standalone, problems are logged");
            if config.cluster.remediation.is_some() {
                tracing::warn!(
                    "remediation.taints is enabled, but standalone there is no Node to taint"
                );
            }
            Sink::Log(Vec::new())
        }
    };
    let mut node_state = match &mut sink {
        Sink::Cluster(reporter) => reporter.node_state.take(),
        Sink::Log(_) => None,
    };
    // Standalone there is nothing to restore: publish the conditions at once.
    if node_state.is_none() {
        sink.conditions(engine.conditions(), &names);
    }

    let mut deltas = MetricDeltas::default();
    let mut last_record = None::<u64>;
    let mut next_sample = Instant::now();
    let mut next_link_check = Instant::now() + Duration::from_secs(10);
    tracing::info!("npd is running");
    tokio::pin!(shutdown);
    loop {
        let mut out = Vec::new();
        tokio::select! {
            events = source.next() => {
                let events = events.context("reading the ring buffer")?;
                let decoded_ns = clock::monotonic_ns();
                let now = Timestamp::now();
                for mut event in events {
                    if event.source != crate::event::Source::Sweep
                        && event.source != crate::event::Source::Counters
                    {
                        last_record = Some(decoded_ns);
                        metrics
                            .record_latency_seconds
                            .observe(decoded_ns.saturating_sub(event.ts_ns) as f64 / 1e9);
                    }
                    enrich(&mut attributor, &mut event);
                    metrics
                        .records
                        .get_or_create(&KindLabels { kind: event.kind.to_owned() })
                        .inc();
                    tracing::debug!(kind = event.kind, pid = event.task.pid, "{}", event.summary());
                    out.extend(engine.observe(&event, now));
                }
            }
            state = async {
                match node_state.as_mut() {
                    Some(rx) => rx.await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                node_state = None;
                if let Some(state) = state {
                    engine.restore(state.conditions, state.boot, Timestamp::now());
                }
            }
            () = &mut shutdown => break,
        }
        health.consumer_progressed();
        let now = Timestamp::now();
        if Instant::now() >= next_sample {
            next_sample = Instant::now() + config.file_table_interval;
            if let Some(sample) = read_file_table() {
                out.extend(engine.sample_file_table(sample, now));
            }
        }
        if Instant::now() >= next_link_check {
            next_link_check = Instant::now() + Duration::from_secs(10);
            let detached = probes::detached_programs(&linked);
            // npd_hook_attached goes to 0 for the detector a detached program belongs to.
            for program in &detached {
                let owner = detectors::owner_of_program(program);
                for (detector, hook) in attached_hooks.iter().filter(|(d, _)| Some(*d) == owner) {
                    metrics
                        .hooks_attached
                        .get_or_create(&HookLabels {
                            detector: (*detector).to_owned(),
                            hook: (*hook).to_owned(),
                        })
                        .set(0);
                }
            }
            health.set_detached(
                (!detached.is_empty())
                    .then(|| format!("kernel hook(s) detached: {}", detached.join(", "))),
            );
        }
        out.extend(engine.tick(now));
        // Only once restored (or standalone) do the conditions go out.
        if node_state.is_none() {
            sink.conditions(engine.conditions(), &names);
        }
        condition_gauges(&metrics, engine.conditions(), &names);
        sink.events(out);
        deltas.update(&metrics, &source, &engine);
        for (publisher, levels) in source.decoder.take_levels() {
            metrics.levels.publish(publisher, levels);
        }
        if let Some(at) = last_record {
            metrics
                .last_record_age_seconds
                .set((clock::monotonic_ns().saturating_sub(at)) as f64 / 1e9);
        }
    }
    tracing::info!("stopping: writing what is pending, then detaching the kernel programs");
    if let Sink::Cluster(reporter) = sink {
        reporter.shutdown(Duration::from_secs(5)).await;
    }
    Ok(())
}
