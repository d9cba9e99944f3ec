//! One HTTP listener for /metrics, /healthz and /readyz.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Notify};

use crate::{clock, health::Health, metrics::Metrics};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn check(failures: &[String]) -> Response<Full<Bytes>> {
    if failures.is_empty() {
        respond(StatusCode::OK, "text/plain", "ok\n".to_owned())
    } else {
        respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            failures.join("\n") + "\n",
        )
    }
}

fn route(request: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => match request.headers().get(hyper::header::ACCEPT) {
            accept if crate::metrics::wants_openmetrics(accept.and_then(|v| v.to_str().ok())) => {
                respond(StatusCode::OK, OPENMETRICS, metrics.encode())
            }
            _ => respond(
                StatusCode::OK,
                crate::metrics::CLASSIC_TEXT,
                metrics.encode_classic(),
            ),
        },
        "/healthz" | "/livez" => check(&health.check_live()),
        "/readyz" => check(&health.check_ready()),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}

/// Bounds of the listener. It serves the kubelet's probes and a scraper, and the DaemonSet
/// binds it on every address of the pod, so a client that connects and then dawdles
/// (slowloris), or thousands of them, must neither hold memory nor crowd out the probes.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A request's headers must have arrived this long after the connection (or its
    /// previous response) is ready to read them: it bounds slow headers and idle keep-alive.
    pub header_read: Duration,
    /// A connection is closed after this long whatever it does (a client that never reads
    /// its response, a keep-alive that never ends); scrapers reconnect.
    pub lifetime: Duration,
    /// Connections open at once. One more closes the oldest: every response here is
    /// immediate, so the oldest is the idlest or slowest, and a new client (the kubelet's
    /// probe) always gets its answer, however many dawdlers hold connections.
    pub max_connections: usize,
}

impl Limits {
    pub const DEFAULT: Self = Self {
        header_read: Duration::from_secs(10),
        lifetime: Duration::from_secs(60),
        max_connections: 256,
    };
}

/// The largest read buffer of a connection: a probe's or scraper's request is a few hundred
/// bytes; 8 KiB is hyper's minimum.
const MAX_BUF: usize = 8192;

/// The open connections, oldest first, each with the means to close it.
#[derive(Debug, Default)]
struct Connections {
    open: Mutex<VecDeque<(u64, Arc<Notify>)>>,
    next_id: AtomicU64,
    evicted: AtomicU64,
    last_logged_ns: AtomicU64,
}

impl Connections {
    /// Registers a new connection, closing the oldest when at the limit.
    fn admit(&self, max: usize) -> (u64, Arc<Notify>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        while open.len() >= max.max(1) {
            let Some((_, oldest)) = open.pop_front() else {
                break;
            };
            // Stored as a permit if the connection is not waiting yet.
            oldest.notify_one();
            let evicted = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
            self.log_eviction(evicted, max);
        }
        open.push_back((id, Arc::clone(&close)));
        (id, close)
    }

    fn leave(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(open, _)| *open != id);
    }

    /// At most one line every 10 s, with the running count.
    fn log_eviction(&self, evicted: u64, max: usize) {
        let now = clock::monotonic_ns();
        let last = self.last_logged_ns.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 10_000_000_000)
            && self
                .last_logged_ns
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                "HTTP listener: {max} connections open, closed the oldest to admit a new one \
                 ({evicted} closed so far); a client is holding connections open"
            );
        }
    }
}

/// Binds the listener (so a bad address fails at start) and serves it in the background.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<SocketAddr> {
    serve_with(addr, metrics, health, Limits::DEFAULT).await
}

pub async fn serve_with(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: Limits,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let connections = Arc::new(Connections::default());
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(MAX_BUF);
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("accepting an HTTP connection: {err}");
                    // Out of fds, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (id, close) = connections.admit(limits.max_connections);
            let metrics = Arc::clone(&metrics);
            let health = Arc::clone(&health);
            let connections = Arc::clone(&connections);
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = route(&request, &metrics, &health);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(err) = result {
                            tracing::debug!("HTTP connection: {err}");
                        }
                    }
                    // Evicted: dropping the connection closes it.
                    () = close.notified() => {}
                    () = tokio::time::sleep(limits.lifetime) => {
                        connection.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                    }
                }
                connections.leave(id);
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    async fn start(limits: Limits) -> SocketAddr {
        let health = Arc::new(Health::new(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        ));
        serve_with(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Metrics::new()),
            health,
            limits,
        )
        .await
        .unwrap()
    }

    async fn healthz(addr: SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .expect("answered in time")
            .unwrap();
        answer
    }

    /// A client that sends the start of a request and then nothing.
    async fn dawdler(addr: SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        stream
    }

    /// Whether the server closed the connection within `within`.
    async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(within, stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                // A 408 or the response to a whole request: read on to the close.
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn slow_headers_and_idle_keep_alives_are_closed() {
        let addr = start(Limits {
            header_read: Duration::from_millis(300),
            ..Limits::DEFAULT
        })
        .await;
        let mut slow = dawdler(addr).await;
        assert!(
            closed(&mut slow, Duration::from_secs(3)).await,
            "slow headers"
        );
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert!(
            closed(&mut idle, Duration::from_secs(3)).await,
            "idle keep-alive"
        );
    }

    #[tokio::test]
    async fn a_new_client_is_answered_however_many_connections_dawdle() {
        let addr = start(Limits {
            max_connections: 8,
            ..Limits::DEFAULT
        })
        .await;
        let mut dawdlers = Vec::new();
        for _ in 0..20 {
            dawdlers.push(dawdler(addr).await);
        }
        let answer = healthz(addr).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
            "{answer}"
        );
        let mut closed_count = 0;
        for stream in &mut dawdlers {
            if closed(stream, Duration::from_millis(100)).await {
                closed_count += 1;
            }
        }
        // The oldest went to make room; at most 8 are open.
        assert!(closed_count >= 12, "{closed_count} of 20 closed");
    }
}
