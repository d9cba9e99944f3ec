//! Hook overhead: tight loops of raw syscalls, timed with npd's programs attached and not, in
//! alternating rounds. Each loop runs in a child process (`npd-bench syscall-loop`) pinned to
//! one CPU, so nothing of the benchmark's own threads shares its caches.

use std::{process::Command, time::Duration};

use anyhow::{Context, bail};
use clap::ValueEnum;
use npd_tests::{
    agent::AgentProcess,
    bpf_objects::{BpfObject, bpf_objects},
};
use serde::Serialize;

use crate::{interrupt, stats};

/// One iteration of a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Op {
    /// openat("/dev/null") + close: npd watches openat's exit.
    OpenClose,
    /// socket(AF_UNIX, SOCK_DGRAM) + close: npd watches socket's exit.
    SocketClose,
    /// dup + close: npd watches dup's exit.
    DupClose,
    /// getppid: a syscall npd does not watch.
    Getppid,
    /// pread of 4 KiB with O_DIRECT from a file on the root filesystem: a real block I/O
    /// each, completed through the block layer (the fs detector's hooks are on its error
    /// path, or, on kernels without block_rq_error, on every completion).
    DirectRead,
    /// pwrite of 4 KiB + fdatasync: a write and a flush to the disk each.
    WriteFsync,
    /// fork + execve("/bin/true") + waitpid: the daemons detector's hooks
    /// (sched_process_exec, sched_process_exit) run on every one, filtered in the kernel.
    ForkExec,
}

impl Op {
    pub(crate) const ALL: [Self; 7] = [
        Self::OpenClose,
        Self::SocketClose,
        Self::DupClose,
        Self::Getppid,
        Self::DirectRead,
        Self::WriteFsync,
        Self::ForkExec,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::OpenClose => "openat + close",
            Self::SocketClose => "socket + close",
            Self::DupClose => "dup + close",
            Self::Getppid => "getppid (not watched)",
            Self::DirectRead => "4 KiB O_DIRECT read (block I/O)",
            Self::WriteFsync => "4 KiB write + fdatasync (block I/O)",
            Self::ForkExec => "fork + exec /bin/true + exit",
        }
    }

    /// npd's hook runs on every iteration (the fd syscalls); the other loops must show no
    /// cost beyond the noise.
    pub(crate) fn is_watched(self) -> bool {
        matches!(
            self,
            Self::OpenClose | Self::SocketClose | Self::DupClose | Self::ForkExec
        )
    }

    /// Block I/O waits for the disk: its cost (including completion interrupts on any CPU)
    /// is only seen by the wall clock, not by the loop's own CPU time.
    fn is_io(self) -> bool {
        matches!(self, Self::DirectRead | Self::WriteFsync)
    }

    /// Timed by the wall clock: block I/O, and fork + exec, whose cost is mostly the child's
    /// (pinned to the same CPU, it inherits the affinity).
    fn is_wall_clock(self) -> bool {
        self.is_io() || self == Self::ForkExec
    }
}

/// A 1 MiB file on the root filesystem for the I/O loops, removed on drop.
struct IoFile {
    path: std::path::PathBuf,
    fd: i32,
}

impl IoFile {
    fn create(op: Op) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("npd-bench-io-{}", std::process::id()));
        let data = vec![0x5au8; 1 << 20];
        std::fs::write(&path, &data).context("the I/O loop's file")?;
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
        let flags = if op == Op::DirectRead {
            libc::O_RDONLY | libc::O_DIRECT
        } else {
            libc::O_WRONLY
        };
        // SAFETY: a valid NUL-terminated path.
        let fd = unsafe { libc::open(c_path.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            bail!("cannot open {}: errno {}", path.display(), errno());
        }
        Ok(Self { path, fd })
    }
}

impl Drop for IoFile {
    fn drop(&mut self) {
        // SAFETY: the fd this struct opened.
        unsafe { libc::close(self.fd) };
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One block I/O of `op` at block `i` of the file.
fn io_iteration(op: Op, fd: i32, buffer: *mut libc::c_void, i: u64) -> anyhow::Result<()> {
    let offset = ((i % 256) * 4096) as libc::off_t;
    // SAFETY: `buffer` is 4 KiB, 4 KiB-aligned, and lives for the loop; `fd` is open.
    let done = unsafe {
        if op == Op::DirectRead {
            libc::pread(fd, buffer, 4096, offset)
        } else {
            let written = libc::pwrite(fd, buffer, 4096, offset);
            if written == 4096 && libc::fdatasync(fd) != 0 {
                -1
            } else {
                written
            }
        }
    };
    if done != 4096 {
        bail!("{} failed: errno {}", op.label(), errno());
    }
    Ok(())
}

/// One fork + execve("/bin/true") + waitpid.
fn fork_exec_true() -> anyhow::Result<()> {
    let path = c"/bin/true";
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: the loop process is single-threaded; the child only calls execve and _exit,
    // both async-signal-safe, with arguments built before the fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above; _exit if execve fails.
        unsafe {
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    if pid < 0 {
        bail!("fork failed: errno {}", errno());
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked; `status` is valid for writes.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid || status != 0 {
        bail!("/bin/true failed: status {status}, errno {}", errno());
    }
    Ok(())
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Runs `iterations` iterations of `op` with raw syscalls (no libc wrapper, no allocation).
fn run_op(op: Op, iterations: u64, dup_source: i32) -> anyhow::Result<()> {
    if op.is_io() {
        let file = IoFile::create(op)?;
        let layout = std::alloc::Layout::from_size_align(4096, 4096)?;
        // SAFETY: a non-zero size; freed below.
        let buffer = unsafe { std::alloc::alloc_zeroed(layout) };
        let result = (0..iterations).try_for_each(|i| io_iteration(op, file.fd, buffer.cast(), i));
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(buffer, layout) };
        return result;
    }
    if op == Op::ForkExec {
        return (0..iterations).try_for_each(|_| fork_exec_true());
    }
    let path = c"/dev/null";
    for _ in 0..iterations {
        // SAFETY: plain syscalls on valid arguments; every fd made is closed at once.
        let fd = unsafe {
            match op {
                Op::OpenClose => libc::syscall(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                ),
                Op::SocketClose => libc::syscall(
                    libc::SYS_socket,
                    libc::AF_UNIX,
                    libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                    0,
                ),
                Op::DupClose => libc::syscall(libc::SYS_dup, dup_source),
                Op::Getppid => {
                    std::hint::black_box(libc::syscall(libc::SYS_getppid));
                    continue;
                }
                Op::DirectRead | Op::WriteFsync | Op::ForkExec => {
                    unreachable!("handled above")
                }
            }
        };
        if fd < 0 {
            bail!("{} failed: errno {}", op.label(), errno());
        }
        // SAFETY: closing the fd just made.
        unsafe { libc::syscall(libc::SYS_close, fd) };
    }
    Ok(())
}

/// CPU time of the calling thread, in ns: unlike the wall clock it does not count the time
/// other processes on this shared machine held the CPU.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid for writes; the clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs `iterations` and returns the time they took, in ns: the thread's CPU time, or for
/// block I/O the wall clock.
fn timed(op: Op, iterations: u64, dup_source: i32) -> anyhow::Result<u64> {
    if op.is_wall_clock() {
        let started = std::time::Instant::now();
        run_op(op, iterations, dup_source)?;
        return Ok((started.elapsed().as_nanos() as u64).max(1));
    }
    let started = thread_cpu_ns();
    run_op(op, iterations, dup_source)?;
    Ok(thread_cpu_ns().saturating_sub(started).max(1))
}

fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within it for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("cannot pin to CPU {cpu}: errno {}", errno());
        }
    }
    Ok(())
}

/// The CPU the loops are pinned to: the last one this process may use.
fn loop_cpu() -> anyhow::Result<usize> {
    // SAFETY: a zeroed cpu_set_t is valid to fill in; CPU_ISSET reads within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("sched_getaffinity: errno {}", errno());
        }
        (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|cpu| libc::CPU_ISSET(*cpu, &set))
            .context("no CPU in this process's affinity mask")
    }
}

/// `npd-bench syscall-loop`: pins itself, calibrates, then times `batches` batches of about
/// `batch_ms` of CPU time each; prints their ns per iteration as one JSON line.
pub(crate) fn syscall_loop(
    op: Op,
    cpu: usize,
    batches: usize,
    batch_ms: u64,
) -> anyhow::Result<()> {
    pin_to_cpu(cpu)?;
    // SAFETY: a valid path; the fd lives until the process exits.
    let dup_source = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
    if dup_source < 0 {
        bail!("cannot open /dev/null: errno {}", errno());
    }
    // Warm up (page faults, caches, the CPU's clock), and learn how many iterations fill a batch.
    let mut iterations = 1_000u64;
    let target_ns = Duration::from_millis(batch_ms).as_nanos() as f64;
    loop {
        let took_ns = timed(op, iterations, dup_source)? as f64;
        if took_ns >= target_ns / 2.0 {
            iterations = (iterations as f64 * target_ns / took_ns) as u64;
            break;
        }
        iterations *= 4;
    }
    let mut ns_per_iteration = Vec::with_capacity(batches);
    for _ in 0..batches {
        ns_per_iteration.push(timed(op, iterations, dup_source)? as f64 / iterations as f64);
    }
    println!(
        "{}",
        serde_json::json!({ "iterations": iterations, "ns_per_iteration": ns_per_iteration })
    );
    Ok(())
}

/// Runs one measurement in a fresh child: the median ns/iteration of its batches.
fn measure(op: Op, cpu: usize, settings: &HookSettings) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("own path")?;
    let out = Command::new(&exe)
        .arg("syscall-loop")
        .arg("--op")
        .arg(op.to_possible_value().context("op name")?.get_name())
        .args(["--cpu", &cpu.to_string()])
        .args(["--batches", &settings.batches.to_string()])
        .args(["--batch-ms", &settings.batch_ms.to_string()])
        .output()
        .context("running the syscall loop")?;
    if !out.status.success() {
        bail!(
            "syscall loop {} failed ({}): {}",
            op.label(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let batches: Vec<f64> = result["ns_per_iteration"]
        .as_array()
        .context("ns_per_iteration")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    Ok(stats::median(&batches))
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct HookSettings {
    pub(crate) rounds: usize,
    pub(crate) batches: usize,
    pub(crate) batch_ms: u64,
}

/// One loop's results: per round, the median ns/iteration without and with npd.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct OpOverhead {
    pub(crate) op: Op,
    pub(crate) label: &'static str,
    pub(crate) without_ns: Vec<f64>,
    pub(crate) with_ns: Vec<f64>,
}

impl OpOverhead {
    /// Per round, with / without - 1.
    pub(crate) fn overheads(&self) -> Vec<f64> {
        self.with_ns
            .iter()
            .zip(&self.without_ns)
            .map(|(with, without)| with / without - 1.0)
            .collect()
    }

    /// The median of the per-round overheads.
    pub(crate) fn overhead(&self) -> f64 {
        stats::median(&self.overheads())
    }

    /// How far apart the rounds without npd land: the noise a difference must beat.
    pub(crate) fn noise(&self) -> f64 {
        stats::relative_range(&self.without_ns)
    }
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct HookOverhead {
    pub(crate) cpu: usize,
    pub(crate) rounds: usize,
    pub(crate) batches: usize,
    pub(crate) batch_ms: u64,
    pub(crate) ops: Vec<OpOverhead>,
    /// The same loops under something less than npd, to tell where the cost comes from.
    pub(crate) controls: Vec<Control>,
    /// The fd program's own average run time per invocation (kernel.bpf_stats_enabled).
    pub(crate) fd_program: Option<ProgramCost>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProgramCost {
    pub(crate) name: String,
    pub(crate) runs: u64,
    pub(crate) ns_per_run: f64,
}

fn start_agent(args: &[&str]) -> anyhow::Result<AgentProcess> {
    let mut agent = AgentProcess::start(&[&["--standalone"], args].concat())?;
    agent.wait_ready(Duration::from_secs(60))?;
    Ok(agent)
}

/// Something that changes what the loops pay while it lives.
type Attached = Box<dyn std::any::Any>;

/// Times every loop without and with `attach` (alternating which goes first, so a drift of
/// the shared machine favours neither), `rounds` times.
fn alternate(
    what: &str,
    rounds: usize,
    cpu: usize,
    settings: &HookSettings,
    attach: &dyn Fn() -> anyhow::Result<Attached>,
) -> anyhow::Result<Vec<OpOverhead>> {
    let mut ops: Vec<OpOverhead> = Op::ALL
        .iter()
        .map(|&op| OpOverhead {
            op,
            label: op.label(),
            without_ns: Vec::new(),
            with_ns: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        for attached in [round % 2 == 1, round % 2 == 0] {
            let guard = if attached { Some(attach()?) } else { None };
            for result in &mut ops {
                let ns = measure(result.op, cpu, settings)?;
                if attached {
                    result.with_ns.push(ns);
                } else {
                    result.without_ns.push(ns);
                }
            }
            drop(guard);
        }
        eprintln!(
            "npd-bench: {what}, round {}/{rounds}: {}",
            round + 1,
            ops.iter()
                .map(|o| format!(
                    "{} {:.0} -> {:.0} ns",
                    o.label,
                    o.without_ns.last().copied().unwrap_or_default(),
                    o.with_ns.last().copied().unwrap_or_default()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(ops)
}

/// A control: where the cost comes from.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Control {
    pub(crate) label: &'static str,
    pub(crate) ops: Vec<OpOverhead>,
}

/// Any `syscalls:sys_exit_*` tracepoint, enabled through tracefs with no BPF at all.
const FTRACE_SYS_EXIT: &str = "/sys/kernel/tracing/events/syscalls/sys_exit_openat/enable";

pub(crate) fn run(settings: HookSettings) -> anyhow::Result<HookOverhead> {
    let cpu = loop_cpu()?;
    let ops = alternate("hook overhead", settings.rounds, cpu, &settings, &|| {
        Ok(Box::new(start_agent(&[])?))
    })?;
    let control_rounds = settings.rounds.div_ceil(2);
    let mut controls = vec![Control {
        label: "the agent without the fd detector (--detectors hung_task,oom,oops)",
        ops: alternate(
            "control: no fd detector",
            control_rounds,
            cpu,
            &settings,
            &|| {
                Ok(Box::new(start_agent(&[
                    "--detectors",
                    "hung_task,oom,oops",
                ])?))
            },
        )?,
    }];
    controls.push(Control {
        label: "the fs detector alone on its fallback hooks (block_rq_complete on every I/O, \
                filtered to errors in the kernel)",
        ops: alternate(
            "control: fs on block_rq_complete",
            control_rounds,
            cpu,
            &settings,
            &|| {
                Ok(Box::new(start_agent(&[
                    "--detectors",
                    "fs",
                    "--fallback-hooks-only",
                ])?))
            },
        )?,
    });
    controls.push(Control {
        label: "the daemons detector alone (--detectors daemons: exec and exit hooks)",
        ops: alternate(
            "control: daemons alone",
            control_rounds,
            cpu,
            &settings,
            &|| Ok(Box::new(start_agent(&["--detectors", "daemons"])?)),
        )?,
    });
    // tracefs is mounted by now: the agent mounts it when it is not.
    if std::path::Path::new(FTRACE_SYS_EXIT).exists() {
        controls.push(Control {
            label: "no npd; one syscall tracepoint enabled through ftrace (sys_exit_openat)",
            ops: alternate(
                "control: ftrace sys_exit_openat",
                control_rounds,
                cpu,
                &settings,
                &|| Ok(Box::new(interrupt::set(FTRACE_SYS_EXIT, "1")?)),
            )?,
        });
    }
    let fd_program = program_cost(cpu, settings)?;
    Ok(HookOverhead {
        cpu,
        rounds: settings.rounds,
        batches: settings.batches,
        batch_ms: settings.batch_ms,
        ops,
        controls,
        fd_program,
    })
}

/// With the kernel's BPF statistics on (they add their own clock reads, so never during the
/// timed rounds), the fd program's average run time over the watched loops.
fn program_cost(cpu: usize, settings: HookSettings) -> anyhow::Result<Option<ProgramCost>> {
    let _stats = interrupt::set("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let agent = start_agent(&[])?;
    let fd_program = |objects: &[BpfObject]| {
        objects
            .iter()
            .find(|o| o.kind == "prog" && o.name.starts_with("fd_sys_exit"))
            .cloned()
    };
    let before = fd_program(&bpf_objects(agent.pid())?);
    for op in Op::ALL.into_iter().filter(|op| op.is_watched()) {
        measure(op, cpu, &settings)?;
    }
    let after = fd_program(&bpf_objects(agent.pid())?);
    agent.stop()?;
    Ok(before.zip(after).and_then(|(before, after)| {
        let runs = after.run_cnt.saturating_sub(before.run_cnt);
        (runs > 0).then(|| ProgramCost {
            name: after.name.clone(),
            runs,
            ns_per_run: after.run_time_ns.saturating_sub(before.run_time_ns) as f64 / runs as f64,
        })
    }))
}
