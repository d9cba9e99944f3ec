//! The node's daemons asked whether they work: the container runtime over its CRI socket
//! (gRPC `RuntimeService/Version` and `Status`) and the kubelet's healthz endpoint. NPD's
//! health-checker conditions `ContainerRuntimeUnhealthy` (reason `ContainerdUnhealthy`,
//! `CrioUnhealthy`, `DockerUnhealthy`) and `KubeletUnhealthy`. A runtime that stops answering
//! is the commonest way a node goes bad while the kubelet still says Ready.
//!
//! The calls run on a thread of their own with a timeout each, so a daemon that accepts and
//! never answers delays nothing else; the agent's loop reads the last answers. Where no runtime
//! socket exists, or no kubelet runs and nothing listens at its address, the probe is not
//! applicable and raises nothing.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use aya::Ebpf;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{AttachContext, Attached, Detector, DetectorStatus, Runtime};
use crate::{
    event::{Event, Source, Task, escape_untrusted},
    finding,
    kernel::procfs,
    problem::{Assessment, Change, Clearing, ConditionSpec, ConditionType, EventReason},
};

/// NPD's health-checker condition for the runtime (`kubernetes.conditions.
/// containerRuntimeUnhealthy: ContainerdProblem` and `kubernetes.reasons.
/// ContainerRuntimeIsHealthy: ContainerdIsUp` give the seed's names).
pub const CONTAINER_RUNTIME_UNHEALTHY: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "containerRuntimeUnhealthy",
    type_name: "ContainerRuntimeUnhealthy",
    // When the runtime behind the socket is not known; otherwise one of RUNTIME_REASONS.
    problem_reason: "ContainerRuntimeUnhealthy",
    healthy_reason: "ContainerRuntimeIsHealthy",
    healthy_message: "the container runtime answers its CRI Version and Status calls, or \
                      this node has no runtime socket",
    detector: "daemon_health",
    clearing: Clearing::Keyed,
});

pub const KUBELET_UNHEALTHY: ConditionType = ConditionType::new(&ConditionSpec {
    config_key: "kubeletUnhealthy",
    type_name: "KubeletUnhealthy",
    problem_reason: "KubeletUnhealthy",
    healthy_reason: "KubeletIsHealthy",
    healthy_message: "the kubelet's healthz endpoint answers ok, no kubelet runs here, or npd \
                      cannot reach it (in a pod off the host's network; `npd-agent check` says)",
    detector: "daemon_health",
    clearing: Clearing::Keyed,
});

pub const CONTAINERD_UNHEALTHY: &str = "ContainerdUnhealthy";
pub const CRIO_UNHEALTHY: &str = "CrioUnhealthy";
pub const DOCKER_UNHEALTHY: &str = "DockerUnhealthy";

/// The runtime sockets looked for by default, in this order.
pub const DEFAULT_RUNTIME_ENDPOINTS: [&str; 2] =
    ["/run/containerd/containerd.sock", "/var/run/crio/crio.sock"];
pub const DEFAULT_KUBELET_HEALTHZ: &str = "http://127.0.0.1:10248/healthz";

/// Where and how often to ask (`daemons.*` in the config file).
#[derive(Clone, Debug, PartialEq)]
pub struct HealthOptions {
    /// The first that exists is the runtime's.
    pub runtime_endpoints: Vec<PathBuf>,
    pub kubelet_healthz: String,
    /// Each call's limit: a daemon slower than this is unhealthy.
    pub timeout: Duration,
    pub period: Duration,
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self {
            runtime_endpoints: DEFAULT_RUNTIME_ENDPOINTS
                .iter()
                .map(PathBuf::from)
                .collect(),
            kubelet_healthz: DEFAULT_KUBELET_HEALTHZ.to_owned(),
            timeout: Duration::from_secs(5),
            period: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
pub struct DaemonHealthDetector;

pub static DETECTOR: DaemonHealthDetector = DaemonHealthDetector;

impl Detector for DaemonHealthDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        None
    }

    fn name(&self) -> &'static str {
        "daemon_health"
    }

    fn about(&self) -> &'static str {
        "the container runtime (CRI Version/Status) and the kubelet (healthz) asked -> \
         ContainerRuntimeUnhealthy, KubeletUnhealthy"
    }

    fn conditions(&self) -> &'static [ConditionType] {
        &[CONTAINER_RUNTIME_UNHEALTHY, KUBELET_UNHEALTHY]
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[]
    }

    fn condition_reasons(&self) -> &'static [&'static str] {
        &[CONTAINERD_UNHEALTHY, CRIO_UNHEALTHY, DOCKER_UNHEALTHY]
    }

    fn attach(&self, _ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> Attached {
        let options = ctx.options.health.clone();
        let mut status = DetectorStatus::new(self.name());
        let every = format!("every {} s", options.period.as_secs());
        let endpoint = find_endpoint(&options.runtime_endpoints);
        status.tried(
            Source::Sampled,
            match &endpoint {
                Some((path, _)) => format!("CRI {} {every}", escape_untrusted(&path_text(path))),
                None => format!("CRI socket {every}"),
            },
            Ok(()),
        );
        if endpoint.is_none() {
            status.notes.push(format!(
                "container runtime: not applicable, no socket at {} (npd looks again every \
                 period)",
                endpoint_list(&options.runtime_endpoints)
            ));
        }
        let url = HealthzUrl::parse(&options.kubelet_healthz).and_then(|url| {
            if url.is_loopback() && !in_host_network(&ctx.host.proc_root) {
                Err(format!(
                    "kubelet: not probed: {url} is the pod's own loopback, not the node's (the \
                     agent is not in the host's network namespace: hostNetwork, or set \
                     daemons.kubeletHealthz to an address it reaches)"
                ))
            } else {
                Ok(url)
            }
        });
        match &url {
            Ok(url) => status.tried(Source::Sampled, format!("{url} {every}"), Ok(())),
            Err(err) => status.notes.push(err.clone()),
        }
        if !kubelet_process_runs(&ctx.host.proc_root) {
            status.notes.push(
                "kubelet: no kubelet process runs; until one does or its healthz answers, \
                 nothing listening there is not a problem"
                    .to_owned(),
            );
        }
        Attached {
            status,
            runtime: Box::new(HealthRuntime {
                options,
                url: url.ok(),
                proc_root: ctx.host.proc_root.clone(),
                answers: None,
                runtime_last: None,
                kubelet_last: None,
                kubelet_seen_healthy: false,
            }),
        }
    }
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

fn endpoint_list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| escape_untrusted(&path_text(p)).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What is at a runtime endpoint's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathKind {
    Socket,
    /// Something else: `a regular file`, `a directory`, ...
    Other(&'static str),
}

/// The first configured endpoint that exists, and what it is.
fn find_endpoint(paths: &[PathBuf]) -> Option<(PathBuf, PathKind)> {
    use std::os::unix::fs::FileTypeExt;
    paths.iter().find_map(|path| {
        let kind = std::fs::metadata(path).ok()?.file_type();
        let kind = if kind.is_socket() {
            PathKind::Socket
        } else if kind.is_file() {
            PathKind::Other("a regular file")
        } else if kind.is_dir() {
            PathKind::Other("a directory")
        } else {
            PathKind::Other("not a socket")
        };
        Some((path.clone(), kind))
    })
}

/// Which runtime a socket belongs to, from its path (the Version call may say better).
fn runtime_of(path: &Path, runtime_name: Option<&str>) -> Option<&'static str> {
    let name = runtime_name.map_or_else(|| path_text(path), str::to_owned);
    let name = name.to_ascii_lowercase();
    if name.contains("crio") || name.contains("cri-o") {
        Some(CRIO_UNHEALTHY)
    } else if name.contains("docker") {
        Some(DOCKER_UNHEALTHY)
    } else if name.contains("containerd") {
        Some(CONTAINERD_UNHEALTHY)
    } else {
        None
    }
}

/// One round of asking the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeProbe {
    NoEndpoint,
    NotASocket {
        path: PathBuf,
        what: &'static str,
    },
    /// A call failed: cannot connect, timed out, an error status, bytes that are not gRPC
    /// (`error` has what the runtime said escaped already).
    Failed {
        path: PathBuf,
        call: &'static str,
        error: String,
    },
    Answered {
        path: PathBuf,
        version: cri::VersionResponse,
        /// `RuntimeReady`: (status, reason, message); `None` if the runtime did not say.
        runtime_ready: Option<(bool, String, String)>,
    },
}

/// What a probe means for a condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Verdict {
    NotApplicable {
        why: String,
    },
    Healthy {
        what: String,
    },
    Unhealthy {
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        message: String,
    },
}

/// The runtime's verdict. Only `RuntimeReady` counts: `NetworkReady` false (no CNI config
/// yet) is the kubelet's to report, as the node's Ready condition.
pub fn runtime_verdict(probe: &RuntimeProbe) -> Verdict {
    match probe {
        RuntimeProbe::NoEndpoint => Verdict::NotApplicable {
            why: "no container runtime socket".to_owned(),
        },
        RuntimeProbe::NotASocket { path, what } => Verdict::Unhealthy {
            reason: runtime_of(path, None),
            message: format!(
                "the runtime endpoint {} is {what}, not a socket",
                escape_untrusted(&path_text(path))
            ),
        },
        RuntimeProbe::Failed { path, call, error } => Verdict::Unhealthy {
            reason: runtime_of(path, None),
            message: format!(
                "the container runtime at {} did not answer {call}: {error}",
                escape_untrusted(&path_text(path)),
            ),
        },
        RuntimeProbe::Answered {
            path,
            version,
            runtime_ready,
        } => {
            let name = format!(
                "{} {}",
                escape_untrusted(&version.runtime_name),
                escape_untrusted(&version.runtime_version)
            );
            let reason =
                runtime_of(path, Some(&version.runtime_name)).or_else(|| runtime_of(path, None));
            match runtime_ready {
                Some((true, _, _)) => Verdict::Healthy {
                    what: format!("{name} at {} is ready", escape_untrusted(&path_text(path))),
                },
                Some((false, why, message)) => Verdict::Unhealthy {
                    reason,
                    message: format!(
                        "{name} says it is not ready (RuntimeReady false: {} {})",
                        escape_untrusted(why),
                        escape_untrusted(message)
                    ),
                },
                None => Verdict::Unhealthy {
                    reason,
                    message: format!("{name} reports no RuntimeReady condition in its Status"),
                },
            }
        }
    }
}

/// One round of asking the kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeletProbe {
    /// Connection refused: nothing listens.
    NotListening,
    /// Timed out, reset, or not HTTP.
    Failed(String),
    Answered {
        status: u16,
        body: String,
    },
}

/// The kubelet's verdict. Nothing listening is "no kubelet" (not applicable) unless a kubelet
/// process runs or its healthz answered ok before: then the kubelet is down.
pub fn kubelet_verdict(
    probe: &KubeletProbe,
    url: &HealthzUrl,
    kubelet_runs: bool,
    seen_healthy: bool,
) -> Verdict {
    match probe {
        KubeletProbe::Answered { status: 200, body } if body.trim() == "ok" => Verdict::Healthy {
            what: format!("{url} answered ok"),
        },
        KubeletProbe::Answered { status, body } => Verdict::Unhealthy {
            reason: None,
            message: format!(
                "the kubelet's {url} answered {status}: {}",
                escape_untrusted(truncate(body.trim(), 200))
            ),
        },
        KubeletProbe::NotListening if !kubelet_runs && !seen_healthy => Verdict::NotApplicable {
            why: format!("no kubelet runs and nothing listens at {url}"),
        },
        KubeletProbe::NotListening => Verdict::Unhealthy {
            reason: None,
            message: format!(
                "nothing listens at {url}, but {}",
                if kubelet_runs {
                    "a kubelet process runs"
                } else {
                    "the kubelet answered there before"
                }
            ),
        },
        KubeletProbe::Failed(error) => Verdict::Unhealthy {
            reason: None,
            message: format!(
                "the kubelet's {url} did not answer: {}",
                escape_untrusted(error)
            ),
        },
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// `http://HOST:PORT/PATH`: the kubelet's healthz is plain HTTP on the loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthzUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HealthzUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("kubelet healthz URL {url:?}: only http:// is supported"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse()
                    .map_err(|_| format!("kubelet healthz URL {url:?}: bad port {port:?}"))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("kubelet healthz URL {url:?}: no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            path: if path.is_empty() { "/" } else { path }.to_owned(),
        })
    }
}

impl HealthzUrl {
    fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// Whether the agent shares the network namespace of the host's pid 1 (unknown: assumed).
/// Whether the agent is in the kubelet's network namespace (the host's, pid 1's, when no
/// kubelet runs); unknown counts as yes, the probe's own answer then decides.
fn in_host_network(proc_root: &Path) -> bool {
    let pid = kubelet_pid(proc_root).unwrap_or(1);
    procfs::shares_network_namespace(proc_root, pid).unwrap_or(true)
}

impl std::fmt::Display for HealthzUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// Parses an HTTP/1 response: (status, body).
pub fn parse_http_response(bytes: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status_line = head.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Whether a process named `kubelet` runs (by `/proc/PID/comm`).
fn kubelet_process_runs(proc_root: &Path) -> bool {
    kubelet_pid(proc_root).is_some()
}

fn kubelet_pid(proc_root: &Path) -> Option<u32> {
    std::fs::read_dir(proc_root)
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            std::fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == "kubelet")
                .then_some(pid)
        })
}

/// A daemon's health changed (or was first seen).
#[derive(Clone, Debug, Serialize)]
pub struct DaemonHealth {
    /// `container runtime` or `kubelet`.
    pub component: &'static str,
    #[serde(flatten)]
    pub verdict: Verdict,
}

impl DaemonHealth {
    fn condition(&self) -> ConditionType {
        if self.component == KUBELET {
            KUBELET_UNHEALTHY
        } else {
            CONTAINER_RUNTIME_UNHEALTHY
        }
    }
}

const RUNTIME: &str = "container runtime";
const KUBELET: &str = "kubelet";

finding!(DaemonHealth, "daemon_health", {
    fn summary(&self) -> String {
        match &self.verdict {
            Verdict::NotApplicable { why } => format!("{}: not applicable ({why})", self.component),
            Verdict::Healthy { what } => format!("{} healthy: {what}", self.component),
            Verdict::Unhealthy { message, .. } => {
                format!("{} unhealthy: {message}", self.component)
            }
        }
    }

    /// The whole current state each time (Resync): healthy and not applicable clear, also a
    /// True condition restored from the Node.
    fn assess(&self, _event: &Event) -> Assessment {
        match &self.verdict {
            Verdict::Unhealthy { reason, message } => Assessment::default()
                .with_condition(
                    self.condition(),
                    Change::Resync {
                        current: vec![(self.component.to_owned(), message.clone())],
                    },
                )
                .with_condition_reason(*reason),
            Verdict::Healthy { .. } | Verdict::NotApplicable { .. } => Assessment::default()
                .with_condition(
                    self.condition(),
                    Change::Resync {
                        current: Vec::new(),
                    },
                ),
        }
    }
});

/// One round's answers, from the probe thread.
#[derive(Debug)]
struct Answers {
    runtime: RuntimeProbe,
    kubelet: Option<KubeletProbe>,
    kubelet_runs: bool,
}

#[derive(Debug)]
struct HealthRuntime {
    options: HealthOptions,
    url: Option<HealthzUrl>,
    proc_root: PathBuf,
    /// Started at the first poll (not by `check`, which only attaches).
    answers: Option<mpsc::Receiver<Answers>>,
    runtime_last: Option<Verdict>,
    kubelet_last: Option<Verdict>,
    kubelet_seen_healthy: bool,
}

impl HealthRuntime {
    fn start(&mut self) -> Result<mpsc::Receiver<Answers>, std::io::Error> {
        let (tx, rx) = mpsc::sync_channel(1);
        let options = self.options.clone();
        let url = self.url.clone();
        let proc_root = self.proc_root.clone();
        std::thread::Builder::new()
            .name("npd-daemon-health".to_owned())
            .spawn(move || probe_loop(&options, url.as_ref(), &proc_root, &tx))?;
        Ok(rx)
    }

    fn on_answers(&mut self, answers: &Answers, now_ns: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let runtime = runtime_verdict(&answers.runtime);
        if self.runtime_last.as_ref() != Some(&runtime) {
            self.runtime_last = Some(runtime.clone());
            events.push(health_event(now_ns, RUNTIME, runtime));
        }
        if let (Some(probe), Some(url)) = (&answers.kubelet, &self.url) {
            let kubelet =
                kubelet_verdict(probe, url, answers.kubelet_runs, self.kubelet_seen_healthy);
            self.kubelet_seen_healthy |= matches!(kubelet, Verdict::Healthy { .. });
            if self.kubelet_last.as_ref() != Some(&kubelet) {
                self.kubelet_last = Some(kubelet.clone());
                events.push(health_event(now_ns, KUBELET, kubelet));
            }
        }
        events
    }
}

fn health_event(now_ns: u64, component: &'static str, verdict: Verdict) -> Event {
    Event::new(
        now_ns,
        Task::default(),
        Source::Sampled,
        DaemonHealth { component, verdict },
    )
}

impl Runtime for HealthRuntime {
    fn poll(&mut self, now_ns: u64) -> Vec<Event> {
        if self.answers.is_none() {
            match self.start() {
                Ok(rx) => self.answers = Some(rx),
                Err(err) => {
                    tracing::error!("daemon_health: cannot start its probe thread: {err}");
                    // Not again every second: the detector stays silent.
                    self.answers = Some(mpsc::sync_channel(0).1);
                }
            }
        }
        let latest = self.answers.as_ref().and_then(|rx| rx.try_iter().last());
        latest.map_or_else(Vec::new, |answers| self.on_answers(&answers, now_ns))
    }
}

/// The probe thread: one round per period until the runtime is dropped.
fn probe_loop(
    options: &HealthOptions,
    url: Option<&HealthzUrl>,
    proc_root: &Path,
    tx: &mpsc::SyncSender<Answers>,
) {
    let executor = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(executor) => executor,
        Err(err) => {
            tracing::error!("daemon_health: no async runtime for its probes: {err}");
            return;
        }
    };
    loop {
        let runtime = executor.block_on(probe_runtime(&options.runtime_endpoints, options.timeout));
        let kubelet = url.map(|url| executor.block_on(probe_kubelet(url, options.timeout)));
        let answers = Answers {
            runtime,
            kubelet,
            kubelet_runs: kubelet_process_runs(proc_root),
        };
        match tx.try_send(answers) {
            Ok(()) | Err(mpsc::TrySendError::Full(_)) => {}
            Err(mpsc::TrySendError::Disconnected(_)) => return,
        }
        std::thread::sleep(options.period);
    }
}

async fn probe_runtime(endpoints: &[PathBuf], timeout: Duration) -> RuntimeProbe {
    let Some((path, kind)) = find_endpoint(endpoints) else {
        return RuntimeProbe::NoEndpoint;
    };
    if let PathKind::Other(what) = kind {
        return RuntimeProbe::NotASocket { path, what };
    }
    let failed = |call: &'static str, error: String| RuntimeProbe::Failed {
        path: path.clone(),
        call,
        error,
    };
    let within = |what: &'static str| move |_| format!("no answer within {timeout:?} ({what})");
    let mut client = match tokio::time::timeout(timeout, cri::Client::connect(&path)).await {
        Ok(Ok(client)) => client,
        Ok(Err(err)) => return failed("a connection", err),
        Err(elapsed) => return failed("a connection", within("HTTP/2 handshake")(elapsed)),
    };
    let version = match tokio::time::timeout(timeout, client.version()).await {
        Ok(Ok(version)) => version,
        Ok(Err(err)) => return failed("Version", err),
        Err(elapsed) => return failed("Version", within("Version")(elapsed)),
    };
    let status = match tokio::time::timeout(timeout, client.status()).await {
        Ok(Ok(status)) => status,
        Ok(Err(err)) => return failed("Status", err),
        Err(elapsed) => return failed("Status", within("Status")(elapsed)),
    };
    let runtime_ready = status
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "RuntimeReady")
        .map(|c| (c.status, c.reason, c.message));
    RuntimeProbe::Answered {
        path,
        version,
        runtime_ready,
    }
}

async fn probe_kubelet(url: &HealthzUrl, timeout: Duration) -> KubeletProbe {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port)).await?;
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: npd\r\n\r\n",
            url.path, url.host
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // healthz says `ok`; a page of detail at most is read.
        stream.take(64 * 1024).read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    match tokio::time::timeout(timeout, ask).await {
        Err(_) => KubeletProbe::Failed(format!("no answer within {timeout:?}")),
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            KubeletProbe::NotListening
        }
        Ok(Err(err)) => KubeletProbe::Failed(err.to_string()),
        Ok(Ok(bytes)) => match parse_http_response(&bytes) {
            Some((status, body)) => KubeletProbe::Answered { status, body },
            None => KubeletProbe::Failed(format!("not an HTTP response ({} bytes)", bytes.len())),
        },
    }
}

/// The CRI's Version and Status calls: the four messages and their fields as in the CRI's
/// `api.proto` (identical in `runtime.v1` and `runtime.v1alpha2`), on a tonic channel over the
/// runtime's unix socket. Declared here instead of generated: two calls need no protoc at build
/// time nor the whole CRI's generated code.
pub mod cri {
    use std::path::Path;

    use hyper_util::rt::TokioIo;
    use tonic::{
        Code,
        client::Grpc,
        codegen::http::uri::PathAndQuery,
        transport::{Channel, Endpoint, Uri},
    };
    use tonic_prost::ProstCodec;

    use crate::probes::error_chain;

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct VersionRequest {
        #[prost(string, tag = "1")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct VersionResponse {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(string, tag = "2")]
        pub runtime_name: String,
        #[prost(string, tag = "3")]
        pub runtime_version: String,
        #[prost(string, tag = "4")]
        pub runtime_api_version: String,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct StatusRequest {
        #[prost(bool, tag = "1")]
        pub verbose: bool,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub status: Option<RuntimeStatus>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct RuntimeStatus {
        #[prost(message, repeated, tag = "1")]
        pub conditions: Vec<RuntimeCondition>,
    }

    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub struct RuntimeCondition {
        #[prost(string, tag = "1")]
        pub r#type: String,
        #[prost(bool, tag = "2")]
        pub status: bool,
        #[prost(string, tag = "3")]
        pub reason: String,
        #[prost(string, tag = "4")]
        pub message: String,
    }

    /// The CRI versions asked, newest first: containerd 1.6 serves both, CRI-O and
    /// containerd 2 only v1, older runtimes only v1alpha2.
    const SERVICES: [&str; 2] = [
        "runtime.v1.RuntimeService",
        "runtime.v1alpha2.RuntimeService",
    ];

    #[derive(Debug)]
    pub struct Client {
        grpc: Grpc<Channel>,
        /// The service that answered (an index into SERVICES).
        service: usize,
    }

    impl Client {
        pub async fn connect(path: &Path) -> Result<Self, String> {
            let path = path.to_owned();
            // The URI is not used: the connector always dials the socket.
            let channel = Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        tokio::net::UnixStream::connect(path)
                            .await
                            .map(TokioIo::new)
                    }
                }))
                .await
                .map_err(|e| error_chain(&e))?;
            Ok(Self {
                grpc: Grpc::new(channel),
                service: 0,
            })
        }

        async fn call<Req, Resp>(&mut self, method: &str, request: Req) -> Result<Resp, String>
        where
            Req: prost::Message + Clone + Send + Sync + 'static,
            Resp: prost::Message + Default + Send + Sync + 'static,
        {
            loop {
                self.grpc.ready().await.map_err(|e| error_chain(&e))?;
                let path = PathAndQuery::try_from(format!("/{}/{method}", SERVICES[self.service]))
                    .map_err(|e| e.to_string())?;
                let codec = ProstCodec::<Req, Resp>::default();
                match self
                    .grpc
                    .unary(tonic::Request::new(request.clone()), path, codec)
                    .await
                {
                    Ok(response) => return Ok(response.into_inner()),
                    Err(status)
                        if status.code() == Code::Unimplemented
                            && self.service + 1 < SERVICES.len() =>
                    {
                        self.service += 1;
                    }
                    Err(status) => {
                        return Err(format!(
                            "{:?}: {}",
                            status.code(),
                            match status.message() {
                                "" => std::error::Error::source(&status)
                                    .map_or_else(String::new, ToString::to_string),
                                // The runtime's words.
                                message => crate::event::escape_untrusted(message).into_owned(),
                            }
                        ));
                    }
                }
            }
        }

        pub async fn version(&mut self) -> Result<VersionResponse, String> {
            let request = VersionRequest {
                version: "v1".to_owned(),
            };
            self.call("Version", request).await
        }

        pub async fn status(&mut self) -> Result<StatusResponse, String> {
            self.call("Status", StatusRequest { verbose: false }).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> HealthzUrl {
        HealthzUrl::parse(DEFAULT_KUBELET_HEALTHZ).unwrap()
    }

    #[test]
    fn parses_healthz_urls() {
        assert_eq!(
            url(),
            HealthzUrl {
                host: "127.0.0.1".to_owned(),
                port: 10248,
                path: "/healthz".to_owned(),
            }
        );
        assert_eq!(
            HealthzUrl::parse("http://node").unwrap().to_string(),
            "http://node:80/"
        );
        assert!(HealthzUrl::parse("https://127.0.0.1:10250/healthz").is_err());
        assert!(HealthzUrl::parse("http://:1/").is_err());
        assert!(HealthzUrl::parse("http://h:99999/").is_err());
        assert!(url().is_loopback());
        assert!(HealthzUrl::parse("http://[::1]:1/").unwrap().is_loopback());
        assert!(
            !HealthzUrl::parse("http://10.0.0.1:1/")
                .unwrap()
                .is_loopback()
        );
        assert!(
            in_host_network(Path::new("/proc")),
            "the tests run in one namespace"
        );
    }

    #[test]
    fn parses_http_responses() {
        assert_eq!(
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            Some((200, "ok".to_owned()))
        );
        assert_eq!(
            parse_http_response(b"HTTP/1.0 500 Internal\r\n\r\n[-]syncloop failed"),
            Some((500, "[-]syncloop failed".to_owned()))
        );
        assert_eq!(parse_http_response(b"garbage\r\n\r\n"), None);
        assert_eq!(
            parse_http_response(b"HTTP/1.1 200 OK\r\n"),
            None,
            "no end of head"
        );
    }

    #[test]
    fn kubelet_verdicts() {
        use KubeletProbe::*;
        let answered = |status: u16, body: &str| Answered {
            status,
            body: body.to_owned(),
        };
        let state = |v: &Verdict| match v {
            Verdict::NotApplicable { .. } => "n/a",
            Verdict::Healthy { .. } => "healthy",
            Verdict::Unhealthy { .. } => "unhealthy",
        };
        // (probe, a kubelet process runs, healthz answered ok before, verdict)
        let cases = [
            (answered(200, "ok"), false, false, "healthy"),
            (answered(200, "ok\n"), true, true, "healthy"),
            (answered(200, "not ok"), true, false, "unhealthy"),
            (answered(500, "[-]ping failed"), true, true, "unhealthy"),
            (NotListening, false, false, "n/a"),
            (NotListening, true, false, "unhealthy"),
            (NotListening, false, true, "unhealthy"),
            (
                Failed("no answer within 5s".to_owned()),
                false,
                false,
                "unhealthy",
            ),
        ];
        for (probe, runs, seen, expected) in cases {
            let verdict = kubelet_verdict(&probe, &url(), runs, seen);
            assert_eq!(
                state(&verdict),
                expected,
                "{probe:?} runs {runs} seen {seen}"
            );
        }
        let Verdict::Unhealthy { message, reason } =
            kubelet_verdict(&answered(500, "bad\x1b[31m"), &url(), true, false)
        else {
            panic!()
        };
        assert_eq!(reason, None, "KubeletUnhealthy: the spec's reason");
        assert!(
            message.contains("answered 500") && !message.contains('\x1b'),
            "{message}"
        );
    }

    fn answered(path: &str, name: &str, ready: Option<bool>) -> RuntimeProbe {
        RuntimeProbe::Answered {
            path: PathBuf::from(path),
            version: cri::VersionResponse {
                version: "0.1.0".to_owned(),
                runtime_name: name.to_owned(),
                runtime_version: "1.6.20".to_owned(),
                runtime_api_version: "v1".to_owned(),
            },
            runtime_ready: ready.map(|r| (r, "Why".to_owned(), "said".to_owned())),
        }
    }

    #[test]
    fn runtime_verdicts_name_the_runtime() {
        let containerd = "/run/containerd/containerd.sock";
        let unhealthy = |probe: &RuntimeProbe| match runtime_verdict(probe) {
            Verdict::Unhealthy { reason, message } => (reason, message),
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            runtime_verdict(&RuntimeProbe::NoEndpoint),
            Verdict::NotApplicable { .. }
        ));
        assert!(matches!(
            runtime_verdict(&answered(containerd, "containerd", Some(true))),
            Verdict::Healthy { .. }
        ));
        let (reason, message) = unhealthy(&answered(containerd, "containerd", Some(false)));
        assert_eq!(reason, Some(CONTAINERD_UNHEALTHY));
        assert!(
            message.contains("RuntimeReady false: Why said"),
            "{message}"
        );
        // The runtime's own name wins over the path's.
        let (reason, _) = unhealthy(&answered("/tmp/x.sock", "cri-o", None));
        assert_eq!(reason, Some(CRIO_UNHEALTHY));
        let (reason, message) = unhealthy(&RuntimeProbe::Failed {
            path: PathBuf::from("/var/run/crio/crio.sock"),
            call: "Version",
            error: "no answer within 5s".to_owned(),
        });
        assert_eq!(reason, Some(CRIO_UNHEALTHY));
        assert!(
            message.contains("did not answer Version: no answer"),
            "{message}"
        );
        let (reason, message) = unhealthy(&RuntimeProbe::NotASocket {
            path: PathBuf::from("/run/my runtime.sock"),
            what: "a regular file",
        });
        assert_eq!(reason, None, "unknown runtime: the spec's reason");
        assert!(
            message.contains("\"/run/my runtime.sock\" is a regular file"),
            "{message}"
        );
    }

    #[test]
    fn unhealthy_raises_with_the_runtimes_reason_and_healthy_clears() {
        let assess = |verdict: Verdict| health_event(1, RUNTIME, verdict).assess();
        let down = assess(Verdict::Unhealthy {
            reason: Some(CONTAINERD_UNHEALTHY),
            message: "m".to_owned(),
        });
        assert_eq!(down.condition_reason, Some(CONTAINERD_UNHEALTHY));
        assert_eq!(
            down.condition,
            Some((
                CONTAINER_RUNTIME_UNHEALTHY,
                Change::Resync {
                    current: vec![(RUNTIME.to_owned(), "m".to_owned())]
                }
            ))
        );
        for verdict in [
            Verdict::Healthy {
                what: String::new(),
            },
            Verdict::NotApplicable { why: String::new() },
        ] {
            assert_eq!(
                assess(verdict).condition,
                Some((
                    CONTAINER_RUNTIME_UNHEALTHY,
                    Change::Resync { current: vec![] }
                ))
            );
        }
        let kubelet = health_event(1, KUBELET, Verdict::NotApplicable { why: String::new() });
        assert_eq!(kubelet.assess().condition.unwrap().0, KUBELET_UNHEALTHY);
    }

    #[test]
    fn reports_changes_only() {
        let mut runtime = HealthRuntime {
            options: HealthOptions::default(),
            url: Some(url()),
            proc_root: PathBuf::from("/nonexistent"),
            answers: None,
            runtime_last: None,
            kubelet_last: None,
            kubelet_seen_healthy: false,
        };
        let round = |kubelet: KubeletProbe| Answers {
            runtime: RuntimeProbe::NoEndpoint,
            kubelet: Some(kubelet),
            kubelet_runs: false,
        };
        let ok = || KubeletProbe::Answered {
            status: 200,
            body: "ok".to_owned(),
        };
        assert_eq!(
            runtime
                .on_answers(&round(KubeletProbe::NotListening), 1)
                .len(),
            2
        );
        assert!(
            runtime
                .on_answers(&round(KubeletProbe::NotListening), 2)
                .is_empty()
        );
        assert_eq!(runtime.on_answers(&round(ok()), 3).len(), 1);
        // Seen healthy: gone now is down, not "no kubelet".
        let down = runtime.on_answers(&round(KubeletProbe::NotListening), 4);
        let health = down[0].detail_as::<DaemonHealth>().unwrap();
        assert!(
            matches!(health.verdict, Verdict::Unhealthy { .. }),
            "{health:?}"
        );
    }

    /// A unix socket whose peer writes `reply` to every connection and closes it.
    fn garbage_socket(path: &Path, reply: &'static [u8]) {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                use std::io::Write;
                let _ = stream.write_all(reply);
            }
        });
    }

    #[tokio::test]
    async fn bad_runtime_sockets_are_unhealthy_with_a_clear_message_and_no_hang() {
        let dir = tempfile::tempdir().unwrap();
        let timeout = Duration::from_millis(500);
        let within = |probe: &RuntimeProbe, started: std::time::Instant| {
            // Connection, Version and Status each have the timeout.
            assert!(
                started.elapsed() < 4 * timeout,
                "{probe:?} took {:?}",
                started.elapsed()
            );
        };

        // Accepts (the kernel's backlog) and never answers.
        let stuck = dir.path().join("stuck.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&stuck).unwrap();
        let started = std::time::Instant::now();
        let probe = probe_runtime(std::slice::from_ref(&stuck), timeout).await;
        within(&probe, started);
        let RuntimeProbe::Failed { error, .. } = &probe else {
            panic!("{probe:?}")
        };
        assert!(error.starts_with("no answer within 500ms"), "{error}");

        // Answers, but not gRPC.
        let garbage = dir.path().join("garbage.sock");
        garbage_socket(&garbage, b"HTTP/1.1 400 Bad Request\r\n\r\nnot a runtime");
        let started = std::time::Instant::now();
        let probe = probe_runtime(std::slice::from_ref(&garbage), timeout).await;
        within(&probe, started);
        assert!(matches!(probe, RuntimeProbe::Failed { .. }), "{probe:?}");
        let Verdict::Unhealthy { message, .. } = runtime_verdict(&probe) else {
            panic!()
        };
        assert!(message.contains("garbage.sock did not answer"), "{message}");

        // A regular file where the socket should be.
        let file = dir.path().join("containerd.sock");
        std::fs::write(&file, "").unwrap();
        let probe = probe_runtime(std::slice::from_ref(&file), timeout).await;
        let Verdict::Unhealthy { reason, message } = runtime_verdict(&probe) else {
            panic!("{probe:?}")
        };
        assert_eq!(reason, Some(CONTAINERD_UNHEALTHY));
        assert!(
            message.ends_with("is a regular file, not a socket"),
            "{message}"
        );

        // Nothing there.
        let missing = dir.path().join("none.sock");
        assert_eq!(
            probe_runtime(&[missing], timeout).await,
            RuntimeProbe::NoEndpoint
        );
    }

    #[tokio::test]
    async fn bad_kubelet_endpoints() {
        let timeout = Duration::from_millis(500);
        let url_of = |port: u16| HealthzUrl::parse(&format!("http://127.0.0.1:{port}/healthz"));
        // A port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert_eq!(
            probe_kubelet(&url_of(port).unwrap(), timeout).await,
            KubeletProbe::NotListening
        );
        // Accepts and never answers.
        let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = url_of(stuck.local_addr().unwrap().port()).unwrap();
        let probe = probe_kubelet(&url, timeout).await;
        assert_eq!(
            probe,
            KubeletProbe::Failed("no answer within 500ms".to_owned())
        );
        // Answers garbage.
        let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = url_of(garbage.local_addr().unwrap().port()).unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for mut stream in garbage.incoming().flatten() {
                // The request read first: closing with unread data would reset the
                // connection instead of ending it.
                let _ = stream.read(&mut [0; 1024]);
                let _ = stream.write_all(b"\x00\x01garbage");
            }
        });
        let probe = probe_kubelet(&url, timeout).await;
        assert!(
            matches!(&probe, KubeletProbe::Failed(e) if e.starts_with("not an HTTP response")),
            "{probe:?}"
        );
    }

    #[test]
    fn finds_the_first_endpoint_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file.sock");
        std::fs::write(&file, "").unwrap();
        let missing = dir.path().join("missing.sock");
        assert_eq!(find_endpoint(std::slice::from_ref(&missing)), None);
        assert_eq!(
            find_endpoint(&[missing, file.clone()]),
            Some((file, PathKind::Other("a regular file")))
        );
        let socket = dir.path().join("real.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert_eq!(
            find_endpoint(std::slice::from_ref(&socket)),
            Some((socket, PathKind::Socket))
        );
    }
}
