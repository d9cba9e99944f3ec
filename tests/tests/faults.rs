//! The agent under faults: slow and hoarding HTTP clients on its listener, and an API server
//! that refuses, throttles, fails, dawdles, resets and hangs (injected by a proxy in this
//! process between the agent and the real kube-apiserver) while real problems are provoked.
//! Every figure these tests print is in README "Under faults".

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use npd_tests::{agent::AgentProcess, faults::rss_kib, machine::require_root};

/// GET /healthz on a fresh connection: the status code (0: no answer within 5 s).
fn healthz(addr: SocketAddr) -> u16 {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return 0;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Probes /healthz every 500 ms in the background; the failures, with when they happened.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<(Instant, u16)>>>,
    probes: Arc<Mutex<u32>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthWatch {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let probes = Arc::new(Mutex::new(0));
        let (s, f, p) = (
            Arc::clone(&stop),
            Arc::clone(&failures),
            Arc::clone(&probes),
        );
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let code = healthz(addr);
                *p.lock().unwrap() += 1;
                if code != 200 {
                    f.lock().unwrap().push((Instant::now(), code));
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Self {
            stop,
            failures,
            probes,
            thread: Some(thread),
        }
    }

    /// (probes, failures)
    fn finish(mut self) -> (u32, Vec<(Instant, u16)>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let probes = *self.probes.lock().unwrap();
        (probes, self.failures.lock().unwrap().clone())
    }
}

/// Many connections that send a request head a little at a time and never finish it, kept
/// at `count` (a closed one is opened again), for `duration`; meanwhile /healthz is asked
/// every 500 ms on a fresh connection and the agent's RSS sampled. Returns (probes, failed
/// probes, peak RSS KiB, connections opened).
fn slowloris(agent: &AgentProcess, count: usize, duration: Duration) -> (u32, u32, u64, usize) {
    let addr = agent.http;
    let open = || {
        let stream = TcpStream::connect(addr).ok()?;
        stream.set_nonblocking(true).ok()?;
        let mut stream = stream;
        let _ = stream.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        Some(stream)
    };
    let mut conns: Vec<Option<TcpStream>> = (0..count).map(|_| open()).collect();
    let mut opened = count;
    let watch = HealthWatch::start(addr);
    let mut peak = 0;
    let until = Instant::now() + duration;
    // A header line of 1 KiB per connection every 100 ms: 10 KiB/s each, which an unbounded
    // server buffers until the request head is done (never).
    let trickle = format!("X-Slow: {}\r\n", "a".repeat(1014));
    while Instant::now() < until {
        for slot in &mut conns {
            let alive = slot.as_mut().is_some_and(|s| {
                let mut buf = [0u8; 512];
                match s.read(&mut buf) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        s.write(trickle.as_bytes()).is_ok()
                            || std::io::Error::last_os_error().kind()
                                == std::io::ErrorKind::WouldBlock
                    }
                    Err(_) => false,
                }
            });
            if !alive {
                *slot = open();
                opened += 1;
            }
        }
        peak = peak.max(rss_kib(agent.pid()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (probes, failures) = watch.finish();
    (probes, failures.len() as u32, peak, opened)
}

#[test]
fn slow_clients_neither_fail_healthz_nor_grow_memory() {
    require_root("loads eBPF programs");
    let mut agent = AgentProcess::start(&["--standalone"]).expect("agent starts");
    agent.wait_ready(Duration::from_secs(60)).expect("ready");
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(agent.pid()).expect("rss");
    let (probes, failed, peak, opened) = slowloris(&agent, 400, Duration::from_secs(20));
    let after = rss_kib(agent.pid()).expect("rss");
    println!(
        "slowloris: 400 connections for 20 s ({opened} opened in all): /healthz {}/{probes} ok; \
         agent RSS idle {idle} KiB, peak {peak} KiB, after {after} KiB",
        probes - failed
    );
    assert_eq!(failed, 0, "/healthz failed {failed} of {probes} times");
    assert!(
        peak <= idle + 24 * 1024,
        "RSS grew from {idle} KiB to {peak} KiB under 400 slow connections"
    );
    assert!(
        opened > 400,
        "the slow connections were closed and reopened (header timeout / limit)"
    );
}
