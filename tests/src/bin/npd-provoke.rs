//! Provokes real kernel problems for npd's tests, one process per problem so the tests can
//! match events by pid. Prints one JSON line with what it did.

use std::{
    ffi::CString,
    io::{BufRead, Write},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn set_nofile(limit: u64) -> anyhow::Result<()> {
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) } != 0 {
        bail!("setrlimit(RLIMIT_NOFILE, {limit}): errno {}", errno());
    }
    Ok(())
}

/// Fills every fd slot below the limit without a single failure (each open takes the lowest
/// free slot, so getting `limit - 1` means all are taken).
fn fill_fd_table(limit: u64) -> anyhow::Result<()> {
    let dev_null = c"/dev/null";
    loop {
        // SAFETY: a valid path.
        let fd = unsafe { libc::open(dev_null.as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            bail!("filling the fd table failed early: errno {}", errno());
        }
        if fd as u64 >= limit - 1 {
            return Ok(());
        }
    }
}

/// Calls one fd-creating syscall directly (not through a libc wrapper, which may pick
/// another syscall) and returns its raw result.
fn call(syscall: &str, listener: i32) -> anyhow::Result<i64> {
    let path = c"/dev/null";
    let name = c"npd";
    let mut pair = [0i32; 2];
    // SAFETY: every argument is valid for the syscall it is passed to; results are only
    // inspected, never used as fds.
    let ret = unsafe {
        match syscall {
            "openat" => libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDONLY,
            ),
            "socket" => libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0),
            "socketpair" => libc::syscall(
                libc::SYS_socketpair,
                libc::AF_UNIX,
                libc::SOCK_STREAM,
                0,
                pair.as_mut_ptr(),
            ),
            "accept4" => libc::syscall(libc::SYS_accept4, listener, 0, 0, libc::SOCK_NONBLOCK),
            "dup" => libc::syscall(libc::SYS_dup, 0),
            "fcntl" => libc::syscall(libc::SYS_fcntl, 0, libc::F_DUPFD_CLOEXEC, 0),
            "pipe2" => libc::syscall(libc::SYS_pipe2, pair.as_mut_ptr(), 0),
            "eventfd2" => libc::syscall(libc::SYS_eventfd2, 0, 0),
            "epoll_create1" => libc::syscall(libc::SYS_epoll_create1, 0),
            "memfd_create" => libc::syscall(libc::SYS_memfd_create, name.as_ptr(), 0),
            "inotify_init1" => libc::syscall(libc::SYS_inotify_init1, 0),
            "timerfd_create" => libc::syscall(libc::SYS_timerfd_create, libc::CLOCK_MONOTONIC, 0),
            "pidfd_open" => libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0),
            #[cfg(target_arch = "x86_64")]
            "open" => libc::syscall(libc::SYS_open, path.as_ptr(), libc::O_RDONLY),
            #[cfg(target_arch = "x86_64")]
            "creat" => libc::syscall(libc::SYS_creat, c"/tmp/npd-provoke-creat".as_ptr(), 0o600),
            #[cfg(target_arch = "x86_64")]
            "pipe" => libc::syscall(libc::SYS_pipe, pair.as_mut_ptr()),
            #[cfg(target_arch = "x86_64")]
            "epoll_create" => libc::syscall(libc::SYS_epoll_create, 1),
            other => bail!("npd-provoke does not know syscall {other}"),
        }
    };
    Ok(if ret < 0 { -i64::from(errno()) } else { ret })
}

/// A listening unix socket, made before the fd table is full, for accept4.
fn listener() -> anyhow::Result<i32> {
    // SAFETY: plain socket calls on a fresh abstract address.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let name = format!("npd-provoke-{}", libc::getpid());
        for (dst, src) in addr.sun_path[1..].iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        let len = (size_of::<libc::sa_family_t>() + 1 + name.len()) as u32;
        if libc::bind(fd, (&raw const addr).cast(), len) != 0 || libc::listen(fd, 4) != 0 {
            bail!("cannot make a listening socket: errno {}", errno());
        }
        Ok(fd)
    }
}

/// Fails one `syscall` with EMFILE, after joining the cgroup whose `cgroup.procs` is `procs`
/// (if not empty).
fn emfile(limit: u64, syscall: &str, procs: &str) -> anyhow::Result<()> {
    if !procs.is_empty() {
        std::fs::write(procs, std::process::id().to_string())
            .with_context(|| format!("joining {procs}"))?;
    }
    let listener = listener()?;
    set_nofile(limit)?;
    fill_fd_table(limit)?;
    let ret = call(syscall, listener)?;
    println!(
        "{}",
        serde_json::json!({ "pid": std::process::id(), "syscall": syscall, "ret": ret })
    );
    Ok(())
}

/// Fails EMFILE as fast as it can from `threads` threads, until `max_failures` failures in
/// all (0: no limit) or `seconds` have passed; prints how many and how long it took.
fn storm(limit: u64, seconds: f64, threads: usize, max_failures: u64) -> anyhow::Result<()> {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    set_nofile(limit)?;
    fill_fd_table(limit)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let total = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let total = Arc::clone(&total);
            std::thread::spawn(move || {
                let mut failures = 0u64;
                while Instant::now() < deadline {
                    // Claim a batch of failures to make, so the total stops exactly.
                    let batch = if max_failures == 0 {
                        256
                    } else {
                        let taken = total.fetch_add(256, Ordering::Relaxed);
                        if taken >= max_failures {
                            break;
                        }
                        256.min(max_failures - taken)
                    };
                    for _ in 0..batch {
                        // SAFETY: a valid path; the fd table is full, so this fails.
                        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
                        if fd < 0 && errno() == libc::EMFILE {
                            failures += 1;
                        } else if fd >= 0 {
                            // SAFETY: closing the fd just opened.
                            unsafe { libc::close(fd) };
                        }
                    }
                }
                failures
            })
        })
        .collect();
    let failures: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    println!(
        "{}",
        serde_json::json!({
            "pid": std::process::id(),
            "failures": failures,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// Drops to an unprivileged user (root bypasses the system file limit), says `ready`, waits
/// for `go` on stdin (the test lowers fs.file-max in between), then opens one file and prints
/// its pid, when it made the call (CLOCK_MONOTONIC ns) and the result.
fn enfile(uid: u32) -> anyhow::Result<()> {
    // SAFETY: plain credential changes; setuid from root to another uid drops every capability.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(uid) != 0
            || libc::setuid(uid) != 0
        {
            bail!("cannot drop to uid {uid}: errno {}", errno());
        }
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let path = CString::new("/dev/null")?;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is valid for writes; CLOCK_MONOTONIC (the clock of the kernel's record
    // timestamps) always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let started_ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    // SAFETY: a valid path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    let ret = if fd < 0 {
        -i64::from(errno())
    } else {
        i64::from(fd)
    };
    println!(
        "{}",
        serde_json::json!({ "pid": std::process::id(), "started_ns": started_ns, "ret": ret })
    );
    Ok(())
}

/// Writes a file (blocking in D state while its filesystem is frozen), then stays alive
/// sleeping, so a test can see the task leave D state rather than exit.
fn write(path: &str, then_sleep: f64) -> anyhow::Result<()> {
    println!("{}", serde_json::json!({ "pid": std::process::id() }));
    std::io::stdout().flush()?;
    std::fs::write(path, b"npd")?;
    println!("{}", serde_json::json!({ "written": true }));
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs_f64(then_sleep));
    Ok(())
}

/// Joins a cgroup (by writing its own pid to `procs`), then allocates and touches memory
/// 1 MiB at a time until it has `mb` MiB or is killed.
fn oom(procs: &str, mb: usize) -> anyhow::Result<()> {
    std::fs::write(procs, std::process::id().to_string())
        .with_context(|| format!("joining {procs}"))?;
    println!("{}", serde_json::json!({ "pid": std::process::id() }));
    std::io::stdout().flush()?;
    let mut chunks = Vec::with_capacity(mb);
    for _ in 0..mb {
        // Touch every page so it is really charged.
        chunks.push(vec![0x5au8; 1 << 20]);
    }
    println!("{}", serde_json::json!({ "survived_mb": chunks.len() }));
    Ok(())
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> anyhow::Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .context(format!("{name} needs a value"))?
            .parse()
            .map_err(|_| anyhow::anyhow!("bad value for {name}")),
        None => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("emfile") => emfile(
            arg(&args, "--limit", 16)?,
            &arg(&args, "--syscall", "openat".to_owned())?,
            &arg(&args, "--cgroup-procs", String::new())?,
        ),
        Some("storm") => storm(
            arg(&args, "--limit", 16)?,
            arg(&args, "--seconds", 3.0)?,
            arg(&args, "--threads", 1)?,
            arg(&args, "--failures", 0)?,
        ),
        Some("enfile") => enfile(arg(&args, "--uid", 65534)?),
        Some("write") => write(
            &arg(&args, "--path", String::new())?,
            arg(&args, "--then-sleep", 5.0)?,
        ),
        Some("oom") => oom(
            &arg(&args, "--cgroup-procs", String::new())?,
            arg(&args, "--mb", 512)?,
        ),
        _ => bail!(
            "usage: npd-provoke emfile [--limit N] [--syscall NAME] [--cgroup-procs FILE] | storm [--limit N] \
             [--seconds S] [--threads T] [--failures N] | enfile [--uid UID] | write --path P \
             [--then-sleep S] | oom --cgroup-procs FILE [--mb N]"
        ),
    }
}
