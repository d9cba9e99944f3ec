//! npd-bench: what npd costs a node and what it gives back, measured on this machine in one
//! run. It loads the real agent into the running kernel and provokes real problems, so it
//! needs root and holds the machine lock the kernel tests take. It reports numbers and
//! asserts nothing about speed; it fails only when a benchmark cannot run end to end.
//!
//! Run it through `cargo xtask bench [--quick]`, which builds the agent, this binary and
//! npd-provoke, and passes where they and the test API server are.

mod blockstorm;
mod footprint;
mod hooks;
mod interrupt;
mod latency;
mod metrics;
mod oomstorm;
mod procfs;
mod report;
mod stats;
mod storm;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use npd_tests::{
    agent::agent_bin, cluster::ClusterBinaries, machine::require_root, machine_lock::MachineLock,
};

#[derive(Debug, Parser)]
#[command(
    name = "npd-bench",
    about = "Measure what npd costs and how fast it reports"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// A smoke run of every benchmark in well under a minute; its numbers mean little.
    #[arg(long)]
    quick: bool,
    /// Only these benchmarks [default: all].
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<Benchmark>>,
    /// Also write every measurement as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// npd-provoke [default: next to this binary].
    #[arg(long)]
    provoke: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Benchmark {
    Hooks,
    Storm,
    /// Block I/O errors from a failing disk, thousands a second.
    BlockStorm,
    /// Real memory-cgroup OOM kills one after another: the agent's CPU per kill.
    OomStorm,
    Idle,
    Latency,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// (internal) One timed syscall loop, pinned to a CPU.
    #[command(hide = true)]
    SyscallLoop {
        #[arg(long, value_enum)]
        op: hooks::Op,
        #[arg(long)]
        cpu: usize,
        #[arg(long)]
        batches: usize,
        #[arg(long)]
        batch_ms: u64,
    },
}

/// How long each benchmark runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) quick: bool,
    pub(crate) hooks: hooks::HookSettings,
    pub(crate) storm_seconds: f64,
    pub(crate) oom_kills: u64,
    pub(crate) idle_seconds: f64,
    pub(crate) provocations: usize,
    pub(crate) cluster_idle_seconds: f64,
}

impl Settings {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                hooks: hooks::HookSettings {
                    rounds: 1,
                    batches: 2,
                    batch_ms: 20,
                },
                storm_seconds: 1.0,
                oom_kills: 5,
                idle_seconds: 2.0,
                provocations: 3,
                cluster_idle_seconds: 1.0,
            }
        } else {
            Self {
                quick,
                hooks: hooks::HookSettings {
                    rounds: 8,
                    batches: 7,
                    batch_ms: 150,
                },
                storm_seconds: 10.0,
                oom_kills: 200,
                idle_seconds: 60.0,
                provocations: 50,
                cluster_idle_seconds: 60.0,
            }
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Results {
    pub(crate) hooks: Option<hooks::HookOverhead>,
    pub(crate) storms: Option<Vec<storm::StormResult>>,
    pub(crate) block_storm: Option<blockstorm::BlockStormResult>,
    pub(crate) oom_storm: Option<oomstorm::OomStormResult>,
    pub(crate) footprint: Option<footprint::Footprint>,
    pub(crate) latency: Option<latency::Latency>,
}

fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    require_root("it loads eBPF programs, changes sysctls and provokes kernel problems");
    interrupt::install()?;
    let selected = |b: Benchmark| args.only.as_ref().is_none_or(|only| only.contains(&b));
    // Fail before the long parts if a piece is missing.
    let agent = agent_bin();
    let provoke = match &args.provoke {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("own directory")?
            .join("npd-provoke"),
    };
    if (selected(Benchmark::Storm) || selected(Benchmark::OomStorm) || selected(Benchmark::Latency))
        && !provoke.is_file()
    {
        bail!(
            "{} is missing: build it (`cargo build --release -p npd-tests --bins`) or pass \
             --provoke",
            provoke.display()
        );
    }
    if selected(Benchmark::Latency) {
        ClusterBinaries::from_env()?;
    }
    let settings = Settings::new(args.quick);
    let _machine_lock = MachineLock::acquire("npd-bench", "benchmarks")?;
    let machine = procfs::machine(&agent);
    eprintln!(
        "npd-bench: {} run of {} on {} ({} cores, {})",
        if args.quick { "quick" } else { "full" },
        agent.display(),
        machine.kernel,
        machine.cores,
        machine.cpu
    );
    let mut results = Results::default();
    if selected(Benchmark::Hooks) {
        eprintln!("npd-bench: hook overhead");
        results.hooks = Some(hooks::run(settings.hooks)?);
    }
    if selected(Benchmark::Storm) {
        results.storms = Some(storm::run(&provoke, settings.storm_seconds)?);
    }
    if selected(Benchmark::BlockStorm) {
        results.block_storm = Some(blockstorm::run(settings.storm_seconds)?);
    }
    if selected(Benchmark::OomStorm) {
        results.oom_storm = Some(oomstorm::run(&provoke, settings.oom_kills)?);
    }
    if selected(Benchmark::Idle) {
        eprintln!("npd-bench: idle footprint ({} s)", settings.idle_seconds);
        results.footprint = Some(footprint::run(settings.idle_seconds)?);
    }
    if selected(Benchmark::Latency) {
        results.latency = Some(latency::run(
            &provoke,
            settings.provocations,
            settings.cluster_idle_seconds,
        )?);
    }
    print!("{}", report::markdown(&machine, &settings, &results));
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "machine": machine,
            "quick": args.quick,
            "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("npd-bench: wrote {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::SyscallLoop {
            op,
            cpu,
            batches,
            batch_ms,
        }) => hooks::syscall_loop(op, cpu, batches, batch_ms),
        None => bench(&cli.bench),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("npd-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
