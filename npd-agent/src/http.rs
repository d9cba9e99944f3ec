//! One HTTP listener for /metrics, /healthz and /readyz.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{health::Health, metrics::Metrics};

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

/// Binds the listener (so a bad address fails at start) and serves it in the background.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("accepting an HTTP connection: {err}");
                    continue;
                }
            };
            let metrics = Arc::clone(&metrics);
            let health = Arc::clone(&health);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = route(&request, &metrics, &health);
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(err) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!("HTTP connection: {err}");
                }
            });
        }
    });
    Ok(bound)
}
