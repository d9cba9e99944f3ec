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
    let requests = client(timed).map_err(KubeError::Client)?;
    let watches = kube::Client::try_from(config).map_err(KubeError::Client)?;
    Ok(Some((Clients { requests, watches }, source)))
}

/// The longest wait a `Retry-After` can impose on its own; the reporter bounds it again by
/// its backoff ceiling.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);

/// The client for requests that expect an answer, without kube's own retries: they would
/// retry 429/503/504 inside one request up to 15 times, sleeping up to 1000 s between tries
/// and as long as any `Retry-After` says, out of the reporter's sight (no backoff ceiling, no
/// liveness). npd retries in its own loops instead. A `Retry-After` header, which kube drops
/// with the rest of the headers, is carried into the error's `details.retryAfterSeconds`
/// (where the API server's own JSON 429s put it), for [`ApiFailure::classify`].
pub(crate) fn client(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    config.default_retry = false;
    let layer = tower::util::MapResponseLayer::new(retry_after_into_status);
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&layer)
        .build())
}

/// A 429 or 503 with a `Retry-After` of seconds becomes a `Status` error that says so.
fn retry_after_into_status(
    response: hyper::Response<Box<kube::client::DynBody>>,
) -> hyper::Response<Box<kube::client::DynBody>> {
    use http_body_util::BodyExt;
    let code = response.status().as_u16();
    if !matches!(code, 429 | 503) {
        return response;
    }
    let Some(seconds) = response
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    let status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
        "reason": if code == 429 { "TooManyRequests" } else { "ServiceUnavailable" },
        "message": format!("the API server asks to retry after {seconds}s"),
        "details": { "retryAfterSeconds": seconds },
    });
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    let body = http_body_util::Full::new(bytes::Bytes::from(status.to_string()))
        .map_err(|never| match never {});
    hyper::Response::from_parts(parts, Box::new(body))
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
    /// 429, 5xx, timeouts, connection errors: retried with backoff, not sooner than the
    /// server's `Retry-After` when it sent one (bounded by [`RETRY_AFTER_MAX`]).
    Transient {
        code: Option<u16>,
        message: String,
        retry_after: Option<Duration>,
    },
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
                        retry_after: status
                            .details
                            .as_ref()
                            .map(|d| d.retry_after_seconds)
                            .filter(|&s| s > 0)
                            .map(|s| Duration::from_secs(s.into()).min(RETRY_AFTER_MAX)),
                    },
                }
            }
            other => Self::Transient {
                code: None,
                message: other.to_string(),
                retry_after: None,
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
                ..
            } => format!("{verb} {resource} failed (HTTP {code}: {message}); retrying"),
            Self::Transient {
                code: None,
                message,
                ..
            } => format!("{verb} {resource} failed ({message}); retrying"),
        }
    }

    /// How long the server asked to wait before the next request, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
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
