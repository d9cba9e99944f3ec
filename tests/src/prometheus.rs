//! A real Prometheus for the monitoring tests: Debian's `prometheus` package (the server and
//! `promtool`, installed by `cargo xtask test`), run on loopback with its own storage.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

/// deploy/monitoring in this checkout.
pub fn monitoring_dir() -> PathBuf {
    crate::reporting::repo_root().join("deploy/monitoring")
}

/// `prometheus` or `promtool` from PATH.
pub fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: `cargo xtask test` installs Debian's prometheus \
                 package (or run `apt-get install prometheus`)"
            )
        })
}

/// Runs `promtool ARGS` in deploy/monitoring; its output, or an error with it.
pub fn promtool(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .context("running promtool")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("promtool {args:?} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// An HTTP response: status, header block, body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// GET over HTTP/1.0 (no chunked bodies), with extra request headers.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no HTTP status in {status_line:?}"))?;
    Ok(HttpResponse {
        status,
        headers: headers.replace("\r\n", "\n"),
        body: body.to_owned(),
    })
}

/// Percent-encodes a query parameter value.
fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// A loopback port nobody listens on right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running `prometheus` scraping `targets` every second as job `npd` (with the `node`
/// label the shipped ServiceMonitor and PodMonitor add), evaluating `rule_files` every second;
/// stopped on drop.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl Prometheus {
    pub fn start(targets: &[SocketAddr], rule_files: &[PathBuf]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let quoted = |items: Vec<String>| {
            items
                .iter()
                .map(|item| format!("{item:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{}]\n\
             scrape_configs:\n  - job_name: npd\n    static_configs:\n      - targets: [{}]\n        \
             labels: {{node: test-node}}\n",
            quoted(rule_files.iter().map(|p| p.display().to_string()).collect()),
            quoted(targets.iter().map(ToString::to_string).collect()),
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let mut prometheus = Self { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(http_get(addr, "/-/ready", &[]), Ok(r) if r.status == 200) {
                return Ok(prometheus);
            }
            if let Some(status) = prometheus.child.try_wait()? {
                bail!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready within 30 s:\n{}", prometheus.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; its `data`, or an error with Prometheus's own.
    pub fn api(&self, path: &str) -> anyhow::Result<Value> {
        let response = http_get(self.addr, path, &[])?;
        let json: Value = serde_json::from_str(&response.body).with_context(|| {
            format!("{path}: not JSON ({}): {}", response.status, response.body)
        })?;
        if json["status"] != "success" {
            bail!("{path}: {json}");
        }
        Ok(json["data"].clone())
    }

    /// The instant vector (or scalar) PromQL `expr` gives now: `data.result`.
    pub fn query(&self, expr: &str) -> anyhow::Result<Value> {
        Ok(self
            .api(&format!("/api/v1/query?query={}", url_encode(expr)))
            .with_context(|| format!("query {expr}"))?["result"]
            .clone())
    }

    /// The alerts active now (pending or firing).
    pub fn alerts(&self) -> anyhow::Result<Vec<Value>> {
        let data = self.api("/api/v1/alerts")?;
        Ok(data["alerts"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_promql_intact() {
        assert_eq!(
            url_encode(r#"sum(x{a="b"}[1m]) > 0"#),
            "sum%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%20%3E%200"
        );
    }
}
