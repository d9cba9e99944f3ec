//! A scripted API server on loopback for the reporter's unit tests: it answers node reads,
//! node status patches and Event creates/patches like kube-apiserver does, records every
//! request, and lets a test answer any request otherwise (an error code, a Retry-After, a
//! delay). The cluster tests (tests/tests/faults.rs) do the same against the real server.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One request as the server saw it, and what it answered.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) body: Value,
    pub(super) status: u16,
    pub(super) at: Instant,
}

/// A scripted answer instead of the default one.
#[derive(Clone, Debug, Default)]
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) retry_after: Option<u64>,
    /// Wait this long before answering (the default answer when `status` is 0).
    pub(super) delay: Duration,
}

impl Reply {
    pub(super) fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }
}

type Script = Box<dyn FnMut(&str, &str) -> Option<Reply> + Send>;

struct State {
    seen: Vec<Seen>,
    node_uid: String,
    script: Script,
}

#[derive(Clone)]
pub(super) struct FakeApi {
    state: Arc<Mutex<State>>,
    pub(super) url: String,
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApi").field("url", &self.url).finish()
    }
}

fn status_body(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "message": format!("injected {code}"), "reason": "Injected", "code": code})
}

impl FakeApi {
    pub(super) async fn start(node_uid: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let api = Self {
            state: Arc::new(Mutex::new(State {
                seen: Vec::new(),
                node_uid: node_uid.to_owned(),
                script: Box::new(|_, _| None),
            })),
            url,
        };
        let served = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let api = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.answer(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        api
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers (method, path) with the script's reply when it gives one.
    pub(super) fn script(&self, script: impl FnMut(&str, &str) -> Option<Reply> + Send + 'static) {
        self.lock().script = Box::new(script);
    }

    pub(super) fn set_node_uid(&self, uid: &str) {
        uid.clone_into(&mut self.lock().node_uid);
    }

    pub(super) fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Event objects created or patched successfully, as (namespace, body).
    pub(super) fn events_written(&self) -> Vec<(String, Value)> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.contains("/events") && s.status < 300)
            .map(|s| {
                let namespace = s.path.split('/').nth(4).unwrap_or_default().to_owned();
                (namespace, s.body)
            })
            .collect()
    }

    pub(super) fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url.parse().unwrap());
        config.read_timeout = Some(Duration::from_secs(5));
        crate::k8s::client(config).unwrap()
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let body = request
            .into_body()
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let reply = (self.lock().script)(&method, &path).unwrap_or_default();
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let node_uid = self.lock().node_uid.clone();
        let (status, answer) = if reply.status != 0 {
            (reply.status, status_body(reply.status))
        } else if path.starts_with("/api/v1/nodes/") {
            let name = path.split('/').nth(4).unwrap_or_default();
            (
                200,
                json!({"apiVersion": "v1", "kind": "Node",
                       "metadata": {"name": name, "uid": node_uid}}),
            )
        } else if method == "POST" && path.ends_with("/events") {
            (201, body.clone())
        } else if method == "PATCH" && path.contains("/events/") {
            let name = path.rsplit('/').next().unwrap_or_default();
            (
                200,
                json!({"apiVersion": "v1", "kind": "Event",
                       "metadata": {"name": name}, "involvedObject": {}}),
            )
        } else {
            (404, status_body(404))
        };
        self.lock().seen.push(Seen {
            method,
            path,
            body,
            status,
            at: Instant::now(),
        });
        let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
        let headers = response.headers_mut();
        headers.insert("content-type", "application/json".parse().unwrap());
        if let Some(secs) = reply.retry_after {
            headers.insert("retry-after", secs.to_string().parse().unwrap());
        }
        response
    }
}
