//! `cargo xtask vm-test`: boots other kernels (Debian's packages, under QEMU with TCG) with
//! the agent, a test module (tests/vm/module) and tests/vm/init.sh in an initramfs, provokes
//! real problems there (fd exhaustion, OOM kill, hung task, WARN, soft lockup, oops), and
//! checks which ones the agent saw and through which hook.

mod console;
mod cpio;
mod debian;
mod initramfs;
mod report;
mod scenarios;
mod tools;

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;

use self::{
    console::Console,
    scenarios::{KERNELS, Kernel},
};
use crate::{
    build::{self, BuildArgs},
    util::{self, output, step},
};

/// Guest settings: TCG (nested KVM hangs on this machine kind), as the notes verified.
const QEMU_MEMORY: &str = "512";
const QEMU_CPUS: &str = "2";

/// A VM that has not powered off by then is killed (a run takes about a minute).
const DEFAULT_TIMEOUT_SECS: u64 = 480;

#[derive(Debug, Args)]
pub(crate) struct VmTestArgs {
    /// Only this kernel (a name from KERNELS in xtask/src/vm/scenarios.rs, e.g. `6.1`).
    #[arg(long)]
    kernel: Option<String>,
    /// Keep the work directory (initramfs, module build, serial log) after a passing run;
    /// a failing run always keeps it.
    #[arg(long)]
    keep: bool,
    /// Kill a VM that has not powered off after this many seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout: u64,
    /// Stream the whole serial console, not only the test's narration, and print dmesg.
    #[arg(long)]
    verbose: bool,
    /// Also time getppid (not watched) and fd syscall loops in the VM with no agent, with
    /// the fd detector on fexit and on its tracepoint fallback, 3 rounds (about a minute).
    /// Emulated (TCG): the ratios say which hook taxes which syscalls, not hardware costs.
    #[arg(long)]
    hook_cost: bool,
}

impl Default for VmTestArgs {
    /// Every kernel, as `cargo xtask vm-test` with no options.
    fn default() -> Self {
        Self {
            kernel: None,
            keep: false,
            timeout: DEFAULT_TIMEOUT_SECS,
            verbose: false,
            hook_cost: false,
        }
    }
}

/// `cargo xtask vm-test`: builds the agent, then tests it on the kernels.
pub(crate) fn run(args: &VmTestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let artifacts = build::build(&BuildArgs { debug: false })?;
    test_agent(&artifacts.agent, args)?;
    step(format!(
        "vm-test took {:.0}s in all (including the agent build)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Boots each selected kernel with `agent` and fails if any kernel's run fails.
pub(crate) fn test_agent(agent: &Path, args: &VmTestArgs) -> anyhow::Result<()> {
    let kernels: Vec<&Kernel> = match &args.kernel {
        None => KERNELS.iter().collect(),
        Some(name) => {
            let Some(kernel) = KERNELS.iter().find(|k| k.name == name) else {
                let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
                bail!("no kernel named {name}; known: {}", names.join(", "));
            };
            vec![kernel]
        }
    };
    let detectors = agent_detectors(agent)?;
    step(format!(
        "this npd-agent offers the detectors: {}",
        detectors.join(", ")
    ));
    let cache = util::cache_dir("vm")?;
    let clock = Instant::now();
    step("fetching QEMU and busybox-static into the cache (private copies: nothing is installed)");
    let vm_tools = VmTools {
        qemu: tools::qemu(&cache)?,
        busybox: tools::busybox(&cache)?,
    };
    step(format!(
        "QEMU and busybox ready in {:.1}s",
        clock.elapsed().as_secs_f64()
    ));
    let mut failed = Vec::new();
    for kernel in kernels {
        match test_kernel(kernel, agent, &detectors, &vm_tools, &cache, args) {
            Ok(true) => {}
            Ok(false) => failed.push(kernel.name),
            Err(err) => {
                step(format!("kernel {}: {err:#}", kernel.name));
                failed.push(kernel.name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("vm-test failed on kernel {}", failed.join(", "));
    }
    Ok(())
}

/// The `--detectors` values the agent accepts, from `event-dump -h`'s
/// `[possible values: ...]`, so the run follows the agent as detectors land.
fn agent_detectors(agent: &Path) -> anyhow::Result<Vec<String>> {
    let help = output(Command::new(agent).args(["event-dump", "-h"]))?;
    detector_values(&help)
        .context("`npd-agent event-dump -h` lists no possible values for --detectors")
}

fn detector_values(help: &str) -> Option<Vec<String>> {
    // The option's text runs from its name to the next option (clap may wrap it).
    let (_, rest) = help.split_once("--detectors")?;
    let option = rest.split("\n  -").next()?.split("\n      --").next()?;
    let values = option
        .split("[possible values: ")
        .nth(1)?
        .split(']')
        .next()?;
    Some(values.split(", ").map(str::to_owned).collect())
}

/// The private QEMU and busybox (see vm/tools.rs).
#[derive(Debug)]
struct VmTools {
    qemu: tools::Qemu,
    busybox: PathBuf,
}

/// Timings of one kernel's run, for the report.
#[derive(Debug, Default)]
struct Timings {
    packages: Duration,
    downloaded: bool,
    prepare: Duration,
    vm: Duration,
    /// Seconds after QEMU started, by init.sh narration mark.
    marks: Vec<(&'static str, Duration)>,
}

fn test_kernel(
    kernel: &Kernel,
    agent: &Path,
    detectors: &[String],
    vm_tools: &VmTools,
    cache: &Path,
    args: &VmTestArgs,
) -> anyhow::Result<bool> {
    let mut timings = Timings::default();
    step(format!(
        "kernel {}: finding the newest {} apt knows",
        kernel.name, kernel.image
    ));
    let clock = Instant::now();
    let packages = debian::resolve(kernel.image)?;
    initramfs::ensure_host_tools(packages.compiler.as_deref())?;
    let (tree, downloaded) = debian::fetch(&packages, &cache.join("kernels"))?;
    timings.packages = clock.elapsed();
    timings.downloaded = downloaded;

    let work = cache.join("work").join(kernel.name);
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    let clock = Instant::now();
    let initramfs = initramfs::prepare(
        &tree,
        agent,
        &vm_tools.busybox,
        detectors,
        &work,
        args.verbose,
        args.hook_cost,
    )?;
    timings.prepare = clock.elapsed();

    let clock = Instant::now();
    let console = boot(&vm_tools.qemu, &tree.vmlinuz, &initramfs, &work, args)?;
    timings.vm = clock.elapsed();
    timings.marks = console.marks.clone();

    let report = report::Report::new(kernel, detectors, &console);
    println!();
    println!(
        "== kernel {}: {} {} (Linux {}) ==",
        kernel.name, packages.image, packages.version, packages.release
    );
    report.print();
    print_hook_cost(&console.hook_cost);
    print_timings(&timings);
    let passed = report.failures.is_empty();
    if passed {
        println!("result: ok");
    } else {
        println!("result: FAILED");
        for failure in &report.failures {
            println!("  - {failure}");
        }
    }
    if passed && !args.keep {
        fs::remove_dir_all(&work)?;
    } else {
        step(format!(
            "work directory kept: {} (serial log: serial.log)",
            work.display()
        ));
    }
    Ok(passed)
}

/// Kills QEMU if the run ends early (timeout, error, panic).
#[derive(Debug)]
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Boots the kernel with the initramfs, streams the console into `work/serial.log` (and the
/// narration to the terminal), and kills the VM at the timeout.
fn boot(
    qemu: &tools::Qemu,
    vmlinuz: &Path,
    initramfs: &Path,
    work: &Path,
    args: &VmTestArgs,
) -> anyhow::Result<Console> {
    let mut cmd = qemu.command();
    cmd.args([
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        QEMU_MEMORY,
        "-smp",
        QEMU_CPUS,
    ])
    .args([
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
    ])
    .arg("-no-reboot")
    .arg("-kernel")
    .arg(vmlinuz)
    .arg("-initrd")
    .arg(initramfs)
    // panic=1: a panic reboots, and -no-reboot turns that into QEMU exiting.
    .args(["-append", "console=ttyS0 panic=1 quiet"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    step(format!(
        "booting the VM (TCG; killed after {}s; console in {})",
        args.timeout,
        work.join("serial.log").display()
    ));
    eprintln!("  $ {}", util::describe(&cmd));
    eprintln!("    (LD_LIBRARY_PATH and QEMU_MODULE_DIR point into the same cache)");
    let started = Instant::now();
    let mut vm = Vm(cmd
        .spawn()
        .context("cannot start the private qemu-system-x86_64")?);
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = vm.0.stdout.take().context("no QEMU stdout")?;
    let stderr = vm.0.stderr.take().context("no QEMU stderr")?;
    let readers = [
        forward_lines(stdout, "", tx.clone()),
        forward_lines(stderr, "qemu: ", tx),
    ];

    let mut log = fs::File::create(work.join("serial.log"))?;
    let mut console = Console::default();
    let mut open_block = None;
    let deadline = started + Duration::from_secs(args.timeout);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                writeln!(log, "{line}")?;
                if args.verbose || line.starts_with("npd-vm: ") || line.starts_with("qemu: ") {
                    eprintln!("  vm| {line}");
                }
                console.parse_line(&line, started.elapsed(), &mut open_block);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                step(format!(
                    "the VM is still running after {}s: killing it",
                    args.timeout
                ));
                console.timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(vm);
    for reader in readers {
        let _ = reader.join();
    }
    step(format!(
        "the VM ran {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(console)
}

fn forward_lines(
    stream: impl Read + Send + 'static,
    prefix: &'static str,
    tx: mpsc::Sender<String>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']);
            if tx.send(format!("{prefix}{line}")).is_err() {
                return;
            }
            buf.clear();
        }
    })
}

/// Medians of the hook-cost rounds and their ratio to the runs without an agent.
fn print_hook_cost(samples: &[(String, String, f64)]) {
    if samples.is_empty() {
        return;
    }
    let median = |mode: &str, name: &str| {
        let mut values: Vec<f64> = samples
            .iter()
            .filter(|(m, n, _)| m == mode && n == name)
            .map(|(_, _, ns)| *ns)
            .collect();
        values.sort_by(f64::total_cmp);
        (!values.is_empty()).then(|| values[values.len() / 2])
    };
    let rounds = samples
        .iter()
        .filter(|(m, n, _)| m == "off" && n == "getppid")
        .count();
    println!();
    println!("hook cost in the VM (TCG-emulated; median ns per iteration of {rounds} rounds):");
    println!(
        "  {:<10} {:>10} {:>22} {:>22}",
        "loop", "no agent", "fd on fexit", "fd on tracepoints"
    );
    for (name, label) in [
        ("getppid", "getppid"),
        ("openat", "open+close"),
        ("dup", "dup+close"),
    ] {
        let Some(off) = median("off", name) else {
            continue;
        };
        let cell = |mode: &str| {
            median(mode, name).map_or_else(
                || "-".to_owned(),
                |ns| format!("{ns:.0} ({:+.1} %)", (ns / off - 1.0) * 100.0),
            )
        };
        println!(
            "  {label:<10} {off:>10.0} {:>22} {:>22}",
            cell("fexit"),
            cell("tracepoint")
        );
    }
}

fn print_timings(timings: &Timings) {
    let secs = |d: Duration| format!("{:.1}s", d.as_secs_f64());
    println!();
    println!(
        "timing: packages {} ({}), module + helper + initramfs {}, VM {}",
        secs(timings.packages),
        if timings.downloaded {
            "downloaded and unpacked"
        } else {
            "cached"
        },
        secs(timings.prepare),
        secs(timings.vm)
    );
    if !timings.marks.is_empty() {
        let marks: Vec<String> = timings
            .marks
            .iter()
            .map(|(label, at)| format!("{label} {}", secs(*at)))
            .collect();
        println!("  in the VM (since QEMU started): {}", marks.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP: &str = "Options:
      --detectors <DETECTORS>
          Detectors to run, comma-separated [default: fd] [possible values: fd, hung-task, oom]
      --log <LOG>
          Log line format [default: text] [possible values: text, json]
";

    #[test]
    fn detectors_come_from_the_help() {
        assert_eq!(
            detector_values(HELP),
            Some(vec![
                "fd".to_owned(),
                "hung-task".to_owned(),
                "oom".to_owned()
            ])
        );
        let one_line = "  --detectors <D>  Detectors [possible values: fd]\n  -h, --help";
        assert_eq!(detector_values(one_line), Some(vec!["fd".to_owned()]));
        let none = "      --detectors <D>  Detectors\n      --log <LOG> [possible values: a]";
        assert_eq!(detector_values(none), None);
    }
}
