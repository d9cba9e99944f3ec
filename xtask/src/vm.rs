//! `cargo xtask vm-test`: boots other kernels (Debian's packages, under QEMU with TCG) with
//! the agent, a test module (tests/vm/module) and tests/vm/init.sh in an initramfs, provokes
//! real problems there (fd exhaustion, OOM kill, hung task, WARN, soft lockup, oops), and
//! checks which ones the agent saw and through which hook.

mod cpio;
mod debian;
mod tools;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use crate::{
    build::{self, BuildArgs},
    prereqs,
    util::{self, output, root, sh, step},
};

/// A kernel to boot: the newest package apt knows whose name matches `image`.
#[derive(Debug)]
struct Kernel {
    /// What `--kernel` selects.
    name: &'static str,
    /// A package name where `*` stands for a version (digits and dots).
    image: &'static str,
    /// Detectors that must see their problem on this kernel (once the agent has them).
    expect: &'static [&'static str],
}

/// Adding a kernel is one line. bookworm-backports (6.12) is not in this machine's apt
/// sources and the test adds no repositories; where it is configured, add
/// `Kernel { name: "6.12-bpo", image: "linux-image-*+bpo-amd64", expect: ALL }`.
const KERNELS: &[Kernel] = &[Kernel {
    name: "6.1",
    image: "linux-image-6.1.0-*-amd64",
    expect: ALL,
}];

const ALL: &[&str] = &["fd", "hung_task", "oom", "oops"];

/// One problem tests/vm/init.sh provokes.
#[derive(Debug)]
struct Scenario {
    /// The step's name in init.sh's `npd-vm: step NAME ...` lines.
    step: &'static str,
    problem: &'static str,
    /// The agent detector (`--detectors` name) that should report it.
    detector: &'static str,
    /// Event kinds that count as seeing it.
    kinds: &'static [&'static str],
    /// The provoking task's name (events of other tasks do not count, except from counters).
    comm: &'static str,
    /// The provoking process's exit status when the problem really happened.
    exit: i32,
    /// False for problems no detector promises yet: shown, never failing the run.
    required: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        step: "fd",
        problem: "fd exhaustion (EMFILE)",
        detector: "fd",
        kinds: &["fd_exhausted"],
        comm: "npd-fd",
        exit: 0,
        required: true,
    },
    Scenario {
        step: "oom",
        problem: "OOM kill (cgroup v2 memory.max)",
        detector: "oom",
        kinds: &["oom_kill"],
        comm: "npd-oom",
        exit: 128 + 9,
        required: true,
    },
    Scenario {
        step: "hang_module",
        problem: "hung task (module, D state)",
        detector: "hung_task",
        kinds: &["hung_task"],
        comm: "npd-hang",
        exit: 0,
        required: true,
    },
    Scenario {
        step: "hang_fsfreeze",
        problem: "hung task (fsfreeze, ext4)",
        detector: "hung_task",
        kinds: &["hung_task"],
        comm: "npd-frozen",
        exit: 0,
        required: true,
    },
    Scenario {
        step: "warn",
        problem: "WARN()",
        detector: "oops",
        kinds: &["kernel_warning"],
        comm: "npd-warn",
        exit: 0,
        required: true,
    },
    Scenario {
        step: "softlockup",
        problem: "soft lockup",
        detector: "oops",
        kinds: &["soft_lockup"],
        comm: "npd-softlockup",
        exit: 0,
        required: false,
    },
    Scenario {
        step: "oops",
        problem: "oops (BUG())",
        detector: "oops",
        kinds: &["kernel_oops"],
        comm: "npd-bug",
        exit: 128 + 11,
        required: true,
    },
];

/// Kernel modules the fsfreeze step needs (a loop-mounted ext4 with metadata checksums);
/// their dependencies are found from the modules' own `depends=`.
const FSFREEZE_MODULES: &[&str] = &["loop", "crc32c_generic", "ext4"];

/// Guest settings: TCG (nested KVM hangs on this machine kind), as the notes verified.
const QEMU_MEMORY: &str = "512";
const QEMU_CPUS: &str = "2";

#[derive(Debug, Args)]
pub(crate) struct VmTestArgs {
    /// Only this kernel (a name from KERNELS in xtask/src/vm.rs, e.g. `6.1`).
    #[arg(long)]
    kernel: Option<String>,
    /// Keep the work directory (initramfs, module build, serial log) after a passing run;
    /// a failing run always keeps it.
    #[arg(long)]
    keep: bool,
    /// Kill a VM that has not powered off after this many seconds.
    #[arg(long, default_value_t = 480)]
    timeout: u64,
    /// Stream the whole serial console, not only the test's narration, and print dmesg.
    #[arg(long)]
    verbose: bool,
}

pub(crate) fn run(args: &VmTestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
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
    let artifacts = build::build(&BuildArgs { debug: false })?;
    let detectors = agent_detectors(&artifacts.agent)?;
    step(format!(
        "this npd-agent offers the detectors: {}",
        detectors.join(", ")
    ));
    let cache = root().join(".npd-cache/vm");
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
        match test_kernel(
            kernel,
            &artifacts.agent,
            &detectors,
            &vm_tools,
            &cache,
            args,
        ) {
            Ok(true) => {}
            Ok(false) => failed.push(kernel.name),
            Err(err) => {
                step(format!("kernel {}: {err:#}", kernel.name));
                failed.push(kernel.name);
            }
        }
    }
    step(format!(
        "vm-test took {:.0}s in all (including the agent build)",
        started.elapsed().as_secs_f64()
    ));
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

/// The spelling used in this file and in the agent's reports (`hung-task` -> `hung_task`).
fn normalize(detector: &str) -> String {
    detector.replace('-', "_")
}

/// The private QEMU and busybox (see vm/tools.rs).
#[derive(Debug)]
struct VmTools {
    qemu: tools::Qemu,
    busybox: PathBuf,
}

/// Build tools the run needs on the host, and the Debian packages that provide them. These
/// install without conflicts; QEMU and busybox are fetched privately instead (vm/tools.rs).
fn ensure_host_tools(compiler: Option<&str>) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let mut need = |program: &str, package: &str| {
        if find_program(program).is_none() {
            missing.push(package.to_owned());
        }
    };
    need("make", "make");
    need("mkfs.ext4", "e2fsprogs");
    need("strip", "binutils");
    need("gzip", "gzip");
    need("gcc", "gcc");
    if let Some(compiler) = compiler {
        need(compiler, compiler);
    }
    // The helper is linked statically: the initramfs has only the agent's libraries.
    if !Path::new("/usr/lib/x86_64-linux-gnu/libc.a").is_file() {
        missing.push("libc6-dev".to_owned());
    }
    if missing.is_empty() {
        return Ok(());
    }
    step(format!(
        "installing {} (to build the test module, the helper and the initramfs)",
        missing.join(" ")
    ));
    if !util::is_root() {
        bail!(
            "installing packages needs root: run `sudo apt-get install -y {}` and retry",
            missing.join(" ")
        );
    }
    prereqs::apt_install(&missing)
}

/// A program on PATH, or in the sbin directories a non-root PATH may lack.
fn find_program(program: &str) -> Option<PathBuf> {
    util::which(program).or_else(|| {
        ["/usr/sbin", "/sbin"]
            .iter()
            .map(|dir| Path::new(dir).join(program))
            .find(|path| path.is_file())
    })
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
    ensure_host_tools(packages.compiler.as_deref())?;
    let (tree, downloaded) = debian::fetch(&packages, &cache.join("kernels"))?;
    timings.packages = clock.elapsed();
    timings.downloaded = downloaded;

    let work = cache.join("work").join(kernel.name);
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    let clock = Instant::now();
    let initramfs = prepare(
        &tree,
        agent,
        &vm_tools.busybox,
        detectors,
        &work,
        args.verbose,
    )?;
    timings.prepare = clock.elapsed();

    let clock = Instant::now();
    let console = boot(&vm_tools.qemu, &tree.vmlinuz, &initramfs, &work, args)?;
    timings.vm = clock.elapsed();
    timings.marks = console.marks.clone();

    let report = Report::new(kernel, detectors, &console);
    println!();
    println!(
        "== kernel {}: {} {} (Linux {}) ==",
        kernel.name, packages.image, packages.version, packages.release
    );
    report.print();
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

/// Builds the test module, the helper, the fsfreeze image and the initramfs in `work`.
fn prepare(
    tree: &debian::KernelTree,
    agent: &Path,
    busybox: &Path,
    detectors: &[String],
    work: &Path,
    verbose: bool,
) -> anyhow::Result<PathBuf> {
    let sources = root().join("tests/vm");

    step("building the test module against the kernel's headers");
    let module_dir = work.join("module");
    fs::create_dir_all(&module_dir)?;
    for file in ["npd_test.c", "Kbuild", "Makefile"] {
        fs::copy(sources.join("module").join(file), module_dir.join(file))?;
    }
    sh(Command::new("make")
        .arg("-C")
        .arg(&tree.headers)
        .arg(format!("M={}", module_dir.display()))
        .arg("modules"))?;

    step("building the static helper (npd-provoke)");
    let helper = work.join("npd-provoke");
    sh(Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Wextra", "-o"])
        .arg(&helper)
        .arg(sources.join("provoke.c")))?;

    let mut cpio = cpio::Cpio::default();
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "mnt",
    ] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init before anything mounts devtmpfs.
    cpio.char_device("dev/console", 0o600, 5, 1);
    cpio.file("init", 0o755, &fs::read(sources.join("init.sh"))?);
    cpio.file("bin/busybox", 0o755, &fs::read(busybox)?);
    cpio.symlink("bin/sh", "busybox");
    cpio.file("usr/bin/npd-provoke", 0o755, &fs::read(&helper)?);
    cpio.file(
        "lib/modules/npd/npd_test.ko",
        0o644,
        &fs::read(module_dir.join("npd_test.ko"))?,
    );

    step("adding npd-agent (debug info stripped) and the shared libraries ldd names");
    let stripped = work.join("npd-agent");
    sh(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(agent))?;
    cpio.file("usr/bin/npd-agent", 0o755, &fs::read(&stripped)?);
    for library in shared_libraries(agent)? {
        let real = fs::canonicalize(&library)?;
        cpio.file(&library.to_string_lossy(), 0o755, &fs::read(real)?);
    }

    let fs_modules = match fsfreeze_parts(tree, work) {
        Ok((modules, image)) => {
            for module in &modules {
                cpio.file(
                    &format!("lib/modules/npd/{}.ko", module.name),
                    0o644,
                    &module.image,
                );
            }
            cpio.file("frozen.img", 0o644, &fs::read(image)?);
            modules
                .iter()
                .map(|module| module.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        }
        Err(err) => {
            step(format!("no fsfreeze step on this kernel: {err:#}"));
            String::new()
        }
    };
    let config = format!(
        "DETECTORS={}\nFS_MODULES=\"{fs_modules}\"\nDMESG={}\n",
        detectors.join(","),
        u8::from(verbose)
    );
    cpio.file("etc/npd-vm.conf", 0o644, config.as_bytes());

    let archive = work.join("initramfs.cpio");
    fs::write(&archive, cpio.finish())?;
    sh(Command::new("gzip").args(["-f", "-n", "-6"]).arg(&archive))?;
    let initramfs = work.join("initramfs.cpio.gz");
    step(format!(
        "initramfs {} ({} MiB)",
        initramfs.display(),
        fs::metadata(&initramfs)?.len() >> 20
    ));
    Ok(initramfs)
}

/// The loop and ext4 modules (with their dependencies) and a small ext4 image to freeze.
fn fsfreeze_parts(
    tree: &debian::KernelTree,
    work: &Path,
) -> anyhow::Result<(Vec<debian::KernelModule>, PathBuf)> {
    let modules = debian::modules_for(tree, FSFREEZE_MODULES)?;
    let image = work.join("frozen.img");
    let mkfs = find_program("mkfs.ext4").context("mkfs.ext4 is missing")?;
    sh(Command::new(mkfs).args(["-q", "-F"]).arg(&image).arg("8M"))?;
    Ok((modules, image))
}

/// The libraries (and the dynamic loader) `ldd` says a binary needs.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let listing = output(Command::new("ldd").arg(binary))?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
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

/// What came out of the serial console.
#[derive(Debug, Default)]
struct Console {
    blocks: BTreeMap<String, Vec<String>>,
    /// Step name -> `exit=N` or `skipped: why`.
    steps: BTreeMap<String, String>,
    /// The kernel's problem counters at the end (`tainted=N oops_count=N ...`).
    counters: Option<String>,
    /// `npd-agent event-dump`'s exit status after SIGTERM (`early` if it died on its own).
    agent_exit: Option<String>,
    done: bool,
    timed_out: bool,
    marks: Vec<(&'static str, Duration)>,
}

/// Narration lines whose time the report shows, with their labels.
const MARKS: &[(&str, &str)] = &[
    ("npd-vm: init started", "init started"),
    ("npd-vm: starting npd-agent event-dump", "check done"),
    ("npd-vm: agent ready", "agent ready"),
    ("npd-vm: tests done", "tests done"),
    ("npd-vm: done", "results printed"),
];

fn is_kernel_line(line: &str) -> bool {
    // `[   12.345678] message`, the console's printk format.
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(stamp, _)| {
            let stamp = stamp.trim();
            !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
}

impl Console {
    fn parse_line(&mut self, line: &str, at: Duration, open_block: &mut Option<String>) {
        if let Some(name) = line
            .strip_prefix("===npd-vm:begin ")
            .and_then(|l| l.strip_suffix("==="))
        {
            *open_block = Some(name.to_owned());
            self.blocks.entry(name.to_owned()).or_default();
            return;
        }
        if line.starts_with("===npd-vm:end ") {
            *open_block = None;
            return;
        }
        if let Some(name) = open_block {
            if !is_kernel_line(line) {
                self.blocks
                    .entry(name.clone())
                    .or_default()
                    .push(line.to_owned());
            }
            return;
        }
        if let Some(rest) = line.strip_prefix("npd-vm: step ")
            && let Some((name, outcome)) = rest.split_once(' ')
        {
            self.steps.insert(name.to_owned(), outcome.to_owned());
        }
        if let Some(counters) = line.strip_prefix("npd-vm: kernel counters: ") {
            self.counters = Some(counters.to_owned());
        }
        if let Some(status) = line.strip_prefix("npd-vm: npd-agent event-dump exit=") {
            self.agent_exit = Some(status.to_owned());
        } else if line.starts_with("npd-vm: npd-agent event-dump exited early") {
            self.agent_exit = Some("early".to_owned());
        }
        if line == "npd-vm: done" {
            self.done = true;
        }
        for (prefix, label) in MARKS {
            if line.starts_with(prefix) && !self.marks.iter().any(|(l, _)| l == label) {
                self.marks.push((label, at));
            }
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

/// One row of the results table.
#[derive(Debug)]
struct Row {
    problem: &'static str,
    detector: &'static str,
    hook: String,
    provoked: String,
    seen: &'static str,
    details: String,
}

#[derive(Debug)]
struct Report {
    check: Vec<String>,
    agent_log: Vec<String>,
    counters: Option<String>,
    rows: Vec<Row>,
    failures: Vec<String>,
}

/// How a detector attached, from `check --format json`: `hook target`.
fn check_hook(check: Option<&Value>, detector: &str) -> Option<String> {
    let entry = check?.get("detectors")?.as_array()?.iter().find(|d| {
        d.get("detector")
            .and_then(Value::as_str)
            .map(normalize)
            .as_deref()
            == Some(detector)
    })?;
    let Some(hook) = entry.get("active").and_then(Value::as_str) else {
        return Some("none attached".to_owned());
    };
    let target = entry
        .get("attempts")
        .and_then(Value::as_array)
        .and_then(|attempts| {
            attempts
                .iter()
                .find(|a| a.get("error").is_none_or(Value::is_null))
        })
        .and_then(|a| a.get("target"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    Some(format!("{hook} {target}").trim().to_owned())
}

fn text(event: &Value, key: &str) -> String {
    match event.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// `kind pid/comm via source`, for the details column.
fn describe_event(event: &Value) -> String {
    format!(
        "{} {}/{} via {}",
        text(event, "kind"),
        text(event, "pid"),
        text(event, "comm"),
        text(event, "source")
    )
}

impl Report {
    fn new(kernel: &Kernel, detectors: &[String], console: &Console) -> Self {
        let mut failures = Vec::new();
        if console.timed_out {
            failures.push("the VM timed out before init.sh finished".to_owned());
        } else if !console.done {
            failures.push(
                "init.sh did not finish (the kernel panicked or init died; see serial.log)"
                    .to_owned(),
            );
        }
        if console.done {
            match console.agent_exit.as_deref() {
                Some("0") => {}
                Some("early") => failures.push("npd-agent event-dump exited by itself".to_owned()),
                Some(status) => failures.push(format!(
                    "npd-agent event-dump exited {status} on SIGTERM (a clean stop exits 0)"
                )),
                None => failures.push("init.sh printed no npd-agent event-dump exit".to_owned()),
            }
        }
        let check_json = console
            .blocks
            .get("check-json")
            .map(|lines| lines.join("\n"))
            .unwrap_or_default();
        let check: Option<Value> = serde_json::from_str(&check_json).ok();
        if check.is_none() {
            failures.push("`npd-agent check --format json` printed no report".to_owned());
        }
        let mut unparsed = 0;
        let events: Vec<Value> = console
            .blocks
            .get("events")
            .into_iter()
            .flatten()
            .filter(|line| !line.trim().is_empty())
            .filter_map(|line| {
                let parsed = serde_json::from_str(line).ok();
                if parsed.is_none() {
                    unparsed += 1;
                }
                parsed
            })
            .collect();
        if unparsed > 0 {
            failures.push(format!("{unparsed} event lines were not JSON"));
        }
        let offered: BTreeSet<String> = detectors.iter().map(|d| normalize(d)).collect();

        let rows = SCENARIOS
            .iter()
            .map(|scenario| {
                let row = Row::new(scenario, kernel, &offered, check.as_ref(), &events, console);
                if let Some(failure) = row.failure(scenario, console) {
                    failures.push(failure);
                }
                row
            })
            .collect();
        Self {
            check: console.blocks.get("check").cloned().unwrap_or_default(),
            counters: console.counters.clone(),
            agent_log: console.blocks.get("agent-log").cloned().unwrap_or_default(),
            rows,
            failures,
        }
    }

    fn print(&self) {
        println!("npd-agent check in the VM:");
        for line in &self.check {
            println!("  {line}");
        }
        println!("npd-agent event-dump log in the VM:");
        for line in &self.agent_log {
            println!("  {line}");
        }
        let header = Row {
            problem: "PROBLEM",
            detector: "DETECTOR",
            hook: "HOOK (check)".to_owned(),
            provoked: "PROVOKED".to_owned(),
            seen: "SEEN",
            details: "DETAILS".to_owned(),
        };
        let rows: Vec<&Row> = std::iter::once(&header).chain(&self.rows).collect();
        let width = |f: fn(&Row) -> usize| rows.iter().map(|r| f(r)).max().unwrap_or(0);
        let w = [
            width(|r| r.problem.len()),
            width(|r| r.detector.len()),
            width(|r| r.hook.len()),
            width(|r| r.provoked.len()),
            width(|r| r.seen.len()),
        ];
        println!();
        for row in rows {
            println!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {}",
                row.problem,
                row.detector,
                row.hook,
                row.provoked,
                row.seen,
                row.details,
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3],
                w4 = w[4],
            );
        }
        if let Some(counters) = &self.counters {
            println!("kernel counters after the steps: {counters}");
        }
    }
}

impl Row {
    fn new(
        scenario: &Scenario,
        kernel: &Kernel,
        offered: &BTreeSet<String>,
        check: Option<&Value>,
        events: &[Value],
        console: &Console,
    ) -> Self {
        let is_offered = offered.contains(scenario.detector);
        let hook = check_hook(check, scenario.detector)
            .unwrap_or_else(|| if is_offered { "not in check" } else { "-" }.to_owned());
        let provoked = match console.steps.get(scenario.step) {
            None => "not run".to_owned(),
            Some(outcome) if outcome == &format!("exit={}", scenario.exit) => {
                format!("yes ({outcome})")
            }
            Some(outcome) => match outcome.strip_prefix("exit=") {
                Some(code) => format!("NO (exit {code}, want {})", scenario.exit),
                None => outcome.clone(),
            },
        };
        let matching: Vec<&Value> = events
            .iter()
            .filter(|e| {
                scenario.kinds.contains(&text(e, "kind").as_str())
                    && (text(e, "comm") == scenario.comm || text(e, "source") == "counters")
            })
            .collect();
        let seen = if !matching.is_empty() {
            "yes"
        } else if scenario.required
            && is_offered
            && kernel.expect.contains(&scenario.detector)
            && provoked.starts_with("yes")
        {
            "NO"
        } else {
            "no"
        };
        let mut details = Vec::new();
        if let Some(first) = matching.first() {
            details.push(describe_event(first));
            if matching.len() > 1 {
                details.push(format!("{} events", matching.len()));
            }
        } else if !is_offered {
            details.push(format!("agent has no `{}` detector yet", scenario.detector));
        } else if !scenario.required {
            details.push(format!(
                "informational: no detector promises it (kinds looked for: {})",
                scenario.kinds.join(", ")
            ));
        } else if !kernel.expect.contains(&scenario.detector) {
            details.push("not expected on this kernel".to_owned());
        }
        let others: BTreeSet<String> = events
            .iter()
            .filter(|e| text(e, "comm") == scenario.comm)
            .map(|e| text(e, "kind"))
            .filter(|kind| !scenario.kinds.contains(&kind.as_str()))
            .collect();
        if !others.is_empty() {
            details.push(format!(
                "also from {}: {}",
                scenario.comm,
                others.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        Self {
            problem: scenario.problem,
            detector: scenario.detector,
            hook,
            provoked,
            seen,
            details: details.join("; "),
        }
    }

    /// Why this row fails the run, if it does.
    fn failure(&self, scenario: &Scenario, console: &Console) -> Option<String> {
        if self.seen == "NO" {
            return Some(format!(
                "{}: the {} detector should report it on this kernel and did not",
                scenario.problem, scenario.detector
            ));
        }
        // A provocation that did not happen proves nothing either way: the test is broken.
        let step_failed = console
            .steps
            .get(scenario.step)
            .is_some_and(|o| o.starts_with("exit=") && o != &format!("exit={}", scenario.exit));
        let must_run =
            scenario.required && console.done && !console.steps.contains_key(scenario.step);
        if scenario.required && (step_failed || must_run) {
            return Some(format!(
                "{}: the provocation did not work ({})",
                scenario.problem, self.provoked
            ));
        }
        None
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

    fn console(events: &[&str]) -> Console {
        let mut serial = vec!["npd-vm: init started on Linux 6.1.0-56-amd64".to_owned()];
        serial.push("===npd-vm:begin check-json===".to_owned());
        serial.push(
            r#"{"detectors":[{"detector":"fd","active":"tracepoint","attempts":[{"hook":"tracepoint","target":"syscalls:sys_exit_*","error":null}]}]}"#
                .to_owned(),
        );
        serial.push("===npd-vm:end check-json===".to_owned());
        for scenario in SCENARIOS {
            serial.push(format!(
                "npd-vm: step {} exit={}",
                scenario.step, scenario.exit
            ));
        }
        serial.push("npd-vm: npd-agent event-dump exit=0".to_owned());
        serial.push("===npd-vm:begin events===".to_owned());
        // A kernel message that slipped into a block is not part of it.
        serial.push("[   12.345678] npd_test: BUG requested".to_owned());
        serial.extend(events.iter().map(|e| (*e).to_owned()));
        serial.push("===npd-vm:end events===".to_owned());
        serial.push("npd-vm: done".to_owned());
        let mut console = Console::default();
        let mut block = None;
        for line in &serial {
            console.parse_line(line, Duration::ZERO, &mut block);
        }
        console
    }

    const FD_EVENT: &str =
        r#"{"kind":"fd_exhausted","pid":115,"comm":"npd-fd","source":"tracepoint"}"#;

    fn detectors(names: &[&str]) -> Vec<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    #[test]
    fn missing_detectors_are_shown_not_failed() {
        let report = Report::new(&KERNELS[0], &detectors(&["fd"]), &console(&[FD_EVENT]));
        assert_eq!(report.failures, Vec::<String>::new());
        assert_eq!(report.rows[0].seen, "yes");
        assert_eq!(report.rows[0].hook, "tracepoint syscalls:sys_exit_*");
        assert!(report.rows[1..].iter().all(|row| row.seen == "no"));
    }

    #[test]
    fn offered_detectors_must_see_their_problem() {
        let offered = detectors(&["fd", "hung-task", "oom", "oops"]);
        let report = Report::new(&KERNELS[0], &offered, &console(&[FD_EVENT]));
        // oom, two hung tasks, WARN and oops; the soft lockup is informational.
        assert_eq!(report.failures.len(), 5, "{:?}", report.failures);
        let events = [
            FD_EVENT,
            r#"{"kind":"oom_kill","pid":117,"comm":"npd-oom","source":"tp_btf"}"#,
            r#"{"kind":"hung_task","pid":118,"comm":"npd-hang","source":"tp_btf"}"#,
            r#"{"kind":"hung_task","pid":126,"comm":"npd-frozen","source":"tp_btf"}"#,
            r#"{"kind":"kernel_warning","pid":130,"comm":"npd-warn","source":"fentry"}"#,
            // From the counters fallback, the agent itself is the task.
            r#"{"kind":"kernel_oops","pid":99,"comm":"npd-agent","source":"counters"}"#,
        ];
        let report = Report::new(&KERNELS[0], &offered, &console(&events));
        assert_eq!(report.failures, Vec::<String>::new());
        assert_eq!(report.rows[2].details, "hung_task 118/npd-hang via tp_btf");
    }

    #[test]
    fn a_failed_provocation_fails_the_run() {
        let mut console = console(&[FD_EVENT]);
        console.steps.insert("oom".to_owned(), "exit=0".to_owned());
        let report = Report::new(&KERNELS[0], &detectors(&["fd"]), &console);
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        assert_eq!(report.rows[1].provoked, "NO (exit 0, want 137)");
    }
}
