//! npd-agent: eBPF-backed kernel problem detector for Kubernetes nodes.

mod cmd;

use std::{process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use npd_agent::{kernel, probes};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "npd-agent", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `npd_agent=debug`.
    #[arg(long, env = "NPD_LOG", default_value = "info", global = true)]
    log: String,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the detector daemon (the default). Without a cluster it runs standalone and logs
    /// every problem.
    Run(cmd::run::RunArgs),
    /// Print every decoded kernel record as it arrives.
    EventDump(cmd::dump::DumpArgs),
    /// Report what this kernel supports and which hook each detector would use.
    Check(cmd::check::CheckArgs),
}

/// Options for loading the kernel programs, shared by every command.
#[derive(Clone, Debug, Args)]
pub struct ProbeArgs {
    /// Detectors to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "fd,hung_task,oom,oops")]
    detectors: Vec<DetectorName>,
    /// Ring-buffer size in bytes (a power of two, a multiple of the page size).
    #[arg(long, default_value_t = 256 * 1024, value_parser = parse_ring_size)]
    ring_buffer_bytes: u32,
    /// Minimum time between two fd-exhaustion records of one process, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    fd_rate_limit_ms: u64,
    /// Forward the kernel programs' debug messages (aya-log) to the log.
    #[arg(long)]
    bpf_log: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DetectorName {
    Fd,
    #[value(name = "hung_task")]
    HungTask,
    Oom,
    Oops,
}

fn parse_ring_size(value: &str) -> Result<u32, String> {
    let size: u32 = value.parse().map_err(|e| format!("{e}"))?;
    let page = kernel::page_size() as u32;
    if !size.is_power_of_two() || size < page {
        return Err(format!(
            "{size} is not a power of two of at least the page size ({page})"
        ));
    }
    Ok(size)
}

impl ProbeArgs {
    fn load_options(&self) -> probes::LoadOptions {
        probes::LoadOptions {
            fd: self.detectors.contains(&DetectorName::Fd),
            hung_task: self.detectors.contains(&DetectorName::HungTask),
            oom: self.detectors.contains(&DetectorName::Oom),
            oops: self.detectors.contains(&DetectorName::Oops),
            ring_buffer_bytes: self.ring_buffer_bytes,
            fd_rate_limit: Duration::from_millis(self.fd_rate_limit_ms),
            bpf_log: self.bpf_log,
        }
    }
}

fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&cli.log)
        .map_err(|err| anyhow::anyhow!("invalid --log filter `{}`: {err}", cli.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = init_logging(&cli) {
        eprintln!("npd-agent: {err:#}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("npd-agent: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => cmd::run::run(Parser::parse_from(["run"])).await,
            Some(Command::Run(args)) => cmd::run::run(args).await,
            Some(Command::EventDump(args)) => cmd::dump::run(args).await,
            Some(Command::Check(args)) => cmd::check::run(&args),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("npd-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}
