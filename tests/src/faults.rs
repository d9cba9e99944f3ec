//! Fault injection between the agent and the real API server: a plain-HTTP forwarding proxy
//! on loopback in front of `kubectl proxy` (which speaks TLS and the test user's token to the
//! kube-apiserver), answering chosen requests itself with an error, a Retry-After, a delay,
//! a connection reset or no answer at all. Every request it sees is recorded.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::cluster::TestCluster;

/// What the proxy does instead of forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers with this code and a JSON `Status`, as the API server does.
    Status { code: u16, retry_after: Option<u64> },
    /// Forwards after this delay.
    Slow(Duration),
    /// Resets the connection (RST) without answering.
    Reset,
    /// Reads the request and never answers, until the rule is cleared (at most a minute).
    Hang,
}

impl Fault {
    pub fn status(code: u16) -> Self {
        Self::Status {
            code,
            retry_after: None,
        }
    }
}

/// Which requests a fault applies to, and how often.
#[derive(Clone, Debug)]
pub struct Rule {
    pub fault: Fault,
    /// Only this method (`POST`, `PATCH`, ...).
    pub method: Option<&'static str>,
    /// Only paths containing this.
    pub path: Option<String>,
    /// Only requests whose body contains this (e.g. `(pid 1234`: one process's Event).
    pub body: Option<String>,
    /// A burst: only the next this many matching requests. `None`: every one.
    pub burst: Option<usize>,
    /// Only every n-th matching request (1: each).
    pub every: usize,
    matched: usize,
}

impl Rule {
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            method: None,
            path: None,
            body: None,
            burst: None,
            every: 1,
            matched: 0,
        }
    }

    /// Event writes only (creates and patches of core/v1 Events).
    pub fn events(mut self) -> Self {
        self.path = Some("/events".to_owned());
        self
    }

    pub fn method(mut self, method: &'static str) -> Self {
        self.method = Some(method);
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(path.to_owned());
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.body = Some(body.to_owned());
        self
    }

    pub fn burst(mut self, n: usize) -> Self {
        self.burst = Some(n);
        self
    }

    pub fn every(mut self, n: usize) -> Self {
        self.every = n.max(1);
        self
    }

    /// Whether this request gets the fault (and counts it).
    fn take(&mut self, method: &str, path: &str, body: &str) -> bool {
        if self.method.is_some_and(|m| m != method)
            || self.path.as_deref().is_some_and(|p| !path.contains(p))
            || self.body.as_deref().is_some_and(|b| !body.contains(b))
            || self.burst == Some(0)
        {
            return false;
        }
        self.matched += 1;
        if !(self.matched - 1).is_multiple_of(self.every) {
            return false;
        }
        if let Some(left) = self.burst.as_mut() {
            *left -= 1;
        }
        true
    }
}

/// One request the proxy saw and what became of it.
#[derive(Clone, Debug)]
pub struct Record {
    pub at: Instant,
    pub method: String,
    pub path: String,
    /// `forwarded 201`, `injected 503`, `reset`, `hung`, `slow then forwarded 200`.
    pub outcome: String,
}

#[derive(Debug, Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    records: Mutex<Vec<Record>>,
    stop: AtomicBool,
}

/// The proxy; stops on drop.
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (plain HTTP, loopback).
    pub fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(upstream.ip().is_loopback(), "loopback only");
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&accepting);
                std::thread::spawn(move || {
                    let _ = handle(stream, upstream, &shared);
                });
            }
        });
        Ok(Self { addr, shared })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn inject(&self, rule: Rule) {
        lock(&self.shared.rules).push(rule);
    }

    /// Ends every fault: from now on every request is forwarded.
    pub fn clear(&self) {
        lock(&self.shared.rules).clear();
    }

    pub fn records(&self) -> Vec<Record> {
        lock(&self.shared.records).clone()
    }

    /// A kubeconfig whose server is this proxy (no credentials: `kubectl proxy` adds them).
    pub fn kubeconfig(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("fault-proxy.kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: proxy, cluster: {{server: \"{}\"}}}}]\n\
                 users: [{{name: anonymous, user: {{}}}}]\n\
                 contexts: [{{name: proxy, context: {{cluster: proxy, user: anonymous}}}}]\n\
                 current-context: proxy\n",
                self.url()
            ),
        )?;
        Ok(path)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.clear();
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads up to the end of the head (`\r\n\r\n`); returns the head and what followed it.
fn read_head(stream: &mut impl Read) -> anyhow::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("closed before the end of the head");
        }
        buf.extend_from_slice(&chunk[..n]);
        anyhow::ensure!(buf.len() < 1 << 20, "head too large");
    }
}

/// The head without hop-by-hop connection headers, asking to close after this message.
fn closing(head: &str) -> String {
    let mut out = String::new();
    for line in head.trim_end().split("\r\n") {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if name != "connection" && name != "keep-alive" {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn header(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// One request per connection: every answer says `Connection: close`, so the client never
/// reuses a connection the proxy closes.
fn handle(mut client: TcpStream, upstream: SocketAddr, shared: &Shared) -> anyhow::Result<()> {
    let (head, mut body) = read_head(&mut client)?;
    let length: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = client.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let mut parts = head.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let text = String::from_utf8_lossy(&body).into_owned();
    let fault = lock(&shared.rules)
        .iter_mut()
        .find_map(|rule| rule.take(&method, &path, &text).then(|| rule.fault.clone()));
    let record = |outcome: String| {
        lock(&shared.records).push(Record {
            at: Instant::now(),
            method: method.clone(),
            path: path.clone(),
            outcome,
        });
    };
    match fault {
        Some(Fault::Status { code, retry_after }) => {
            record(format!("injected {code}"));
            let status = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("injected by the test's fault proxy ({code})"),
                "reason": "Injected", "code": code,
            })
            .to_string();
            let retry = retry_after.map_or(String::new(), |s| format!("Retry-After: {s}\r\n"));
            write!(
                client,
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n{retry}Connection: close\r\n\r\n{status}",
                status.len()
            )?;
            return Ok(());
        }
        Some(Fault::Reset) => {
            record("reset".to_owned());
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid socket and option of the right size; closing then sends RST.
            unsafe {
                libc::setsockopt(
                    client.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            return Ok(());
        }
        Some(Fault::Hang) => {
            record("hung".to_owned());
            let until = Instant::now() + Duration::from_secs(60);
            while Instant::now() < until
                && !shared.stop.load(Ordering::Relaxed)
                && lock(&shared.rules).iter().any(|r| r.fault == Fault::Hang)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            return Ok(());
        }
        Some(Fault::Slow(delay)) => std::thread::sleep(delay),
        None => {}
    }
    let mut server = TcpStream::connect(upstream).context("kubectl proxy")?;
    server.write_all(closing(&head).as_bytes())?;
    server.write_all(&body)?;
    let (answer, rest) = read_head(&mut server)?;
    let code = answer.split_whitespace().nth(1).unwrap_or("?").to_owned();
    record(match fault {
        Some(Fault::Slow(_)) => format!("slow then forwarded {code}"),
        _ => format!("forwarded {code}"),
    });
    client.write_all(closing(&answer).as_bytes())?;
    client.write_all(&rest)?;
    // The rest of the body (a watch streams until either side closes).
    std::io::copy(&mut server, &mut client)?;
    Ok(())
}

/// `kubectl proxy` as the test user (npd's ClusterRole): plain HTTP on loopback to the real
/// API server. Killed on drop.
#[derive(Debug)]
pub struct KubectlProxy {
    child: Child,
    pub addr: SocketAddr,
}

impl KubectlProxy {
    pub fn start(cluster: &TestCluster) -> anyhow::Result<Self> {
        let mut child = cluster
            .kubectl_command(cluster.user_kubeconfig())
            .args(["proxy", "--address=127.0.0.1", "--port=0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("kubectl proxy")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        // "Starting to serve on 127.0.0.1:PORT"
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("kubectl proxy said {line:?}"))?;
        Ok(Self { child, addr })
    }
}

impl Drop for KubectlProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's resident memory, from /proc/PID/status, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
