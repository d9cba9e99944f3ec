//! The Kubernetes side: NodeConditions on this node's status, Events on the Node and the Pod,
//! and a watch of this node's pods for names. Its own error type; it never reaches into
//! decoding, it only sees the engine's decisions.

pub mod backoff;
pub mod events;
#[cfg(test)]
mod fake;
pub mod node;
pub mod pods;
pub mod reporter;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KubeError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Where the cluster configuration came from, for the start-up log.
#[derive(Clone, Debug)]
pub enum ClusterSource {
    Kubeconfig(PathBuf),
    InCluster,
}

/// How long a request may wait for the API server's answer. kube sets no read timeout, so a
/// server that accepts connections but never answers (stopped, overloaded, a half-open
/// connection after a failover) would hold the reporter forever instead of letting it retry.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The agent's clients of one cluster.
#[derive(Clone)]
#[allow(missing_debug_implementations, reason = "kube::Client is not Debug")]
pub struct Clients {
    /// For requests that expect an answer (node status, events, taints, leases): each gives
    /// up after [`REQUEST_TIMEOUT`] and counts as a transient failure.
    pub requests: kube::Client,
    /// For the pod watch, a long poll that stays quiet while nothing changes (kube-runtime's
    /// watcher restarts it on its own).
    pub watches: kube::Client,
}

/// Clients from `--kubeconfig`, else `KUBECONFIG`, else the in-cluster service account;
/// `None` when there is none of them (standalone mode).
pub async fn connect(
    kubeconfig: Option<&Path>,
) -> Result<Option<(Clients, ClusterSource)>, KubeError> {
    let from_env = std::env::var_os("KUBECONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let config = match kubeconfig.map(Path::to_owned).or(from_env) {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(&path).map_err(|source| {
                KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                }
            })?;
            let config = kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|source| KubeError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
            (config, ClusterSource::Kubeconfig(path))
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            (kube::Config::incluster()?, ClusterSource::InCluster)
        }
        None => return Ok(None),
    };
    let (config, source) = config;
    let mut timed = config.clone();
    timed.read_timeout = Some(REQUEST_TIMEOUT);
    // Time each request from when it is sent, not from when its pooled connection idled.
    timed.reset_reader_on_write = true;
    let requests = kube::Client::try_from(timed).map_err(KubeError::Client)?;
    let watches = kube::Client::try_from(config).map_err(KubeError::Client)?;
    Ok(Some((Clients { requests, watches }, source)))
}

/// This node's name: `--node-name`, else `NODE_NAME` (the DaemonSet sets it from the downward
/// API), else the hostname.
pub fn node_name(flag: Option<&str>) -> String {
    if let Some(name) = flag.filter(|n| !n.is_empty()) {
        return name.to_owned();
    }
    if let Some(name) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
        return name;
    }
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates within it on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".to_owned()
    }
}

/// An API failure, classified for retry and for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiFailure {
    /// 401/403: retrying will not help until RBAC changes; said loudly.
    Forbidden { code: u16, message: String },
    /// 404 of the object itself (the Node is gone, the Pod deleted).
    NotFound,
    /// 409 AlreadyExists / Conflict.
    Conflict,
    /// 422/400: the request itself is wrong (a bug); not retried.
    Invalid { code: u16, message: String },
    /// 429, 5xx, timeouts, connection errors: retried with backoff.
    Transient { code: Option<u16>, message: String },
}

impl ApiFailure {
    pub fn classify(err: &kube::Error) -> Self {
        match err {
            kube::Error::Api(status) => {
                let message = status.message.clone();
                match status.code {
                    401 | 403 => Self::Forbidden {
                        code: status.code,
                        message,
                    },
                    404 => Self::NotFound,
                    409 => Self::Conflict,
                    400 | 422 => Self::Invalid {
                        code: status.code,
                        message,
                    },
                    code => Self::Transient {
                        code: Some(code),
                        message,
                    },
                }
            }
            other => Self::Transient {
                code: None,
                message: other.to_string(),
            },
        }
    }

    /// The HTTP code, or `none` for errors below HTTP, for metrics.
    pub fn code_label(&self) -> String {
        match self {
            Self::Forbidden { code, .. } | Self::Invalid { code, .. } => code.to_string(),
            Self::NotFound => "404".to_owned(),
            Self::Conflict => "409".to_owned(),
            Self::Transient { code, .. } => {
                code.map_or_else(|| "none".to_owned(), |c| c.to_string())
            }
        }
    }

    /// A sentence for the operator, naming what npd tried.
    pub fn describe(&self, verb: &str, resource: &str) -> String {
        match self {
            Self::Forbidden { code, message } => format!(
                "the API server forbids npd to {verb} {resource} (HTTP {code}: {message}); \
                 grant it with npd's ClusterRole (deploy/base/rbac.yaml)"
            ),
            Self::NotFound => format!("{verb} {resource}: not found"),
            Self::Conflict => format!("{verb} {resource}: conflict"),
            Self::Invalid { code, message } => {
                format!("{verb} {resource} was rejected (HTTP {code}): {message}")
            }
            Self::Transient {
                code: Some(code),
                message,
            } => format!("{verb} {resource} failed (HTTP {code}: {message}); retrying"),
            Self::Transient {
                code: None,
                message,
            } => format!("{verb} {resource} failed ({message}); retrying"),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Transient { .. } | Self::Forbidden { .. })
    }
}

/// Kubernetes times from system times.
pub(crate) fn k8s_time(
    time: std::time::SystemTime,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::try_from(time)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

pub(crate) fn system_time(
    time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> std::time::SystemTime {
    std::time::SystemTime::from(time.0)
}
