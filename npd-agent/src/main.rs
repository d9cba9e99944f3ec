//! npd-agent: eBPF-backed kernel problem detector for Kubernetes nodes.

mod cmd;

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use npd_agent::{
    config::{FileConfig, ProbeFlags, duration},
    detectors, kernel, probes,
};
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

/// Options for loading the kernel programs, shared by every command. Unset flags fall back
/// to the config file (`run --config`), then to the defaults.
#[derive(Clone, Debug, Args)]
pub struct ProbeArgs {
    /// Detectors to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',', value_parser = detector_names())]
    detectors: Option<Vec<String>>,
    /// Ring-buffer size in bytes, a power of two of at least a page [default: 262144].
    #[arg(long, value_parser = parse_ring_size)]
    ring_buffer_bytes: Option<u32>,
    /// At most one fd-exhaustion record per process per this interval, in the kernel, e.g.
    /// 500ms (config `fdPressure.rateLimit`) [default: 1s].
    #[arg(long, value_parser = duration::parse)]
    fd_rate_limit: Option<Duration>,
    /// The same in milliseconds (deprecated spelling of --fd-rate-limit).
    #[arg(long, hide = true, conflicts_with = "fd_rate_limit",
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    fd_rate_limit_ms: Option<u64>,
    /// Forward the kernel programs' debug messages (aya-log) to the log.
    #[arg(long)]
    bpf_log: bool,
    /// Where the host's /proc and /sys/fs/cgroup are mounted [default: /]. npd's DaemonSet
    /// mounts them under /host, because a container's own are namespaced views.
    #[arg(long, env = "NPD_HOST_ROOT")]
    host_root: Option<std::path::PathBuf>,
    /// Attach only the fallback hooks (classic tracepoints, kernel counters), as on a kernel
    /// without tp_btf or fentry: for testing the fallbacks.
    #[arg(long, hide = true)]
    fallback_hooks_only: bool,
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

/// The registry's detector names, as clap's possible values (`--help` lists them).
fn detector_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(detectors::all().iter().map(|d| d.name()))
}

impl ProbeArgs {
    fn flags(&self) -> ProbeFlags {
        ProbeFlags {
            detectors: self.detectors.clone(),
            ring_buffer_bytes: self.ring_buffer_bytes,
            fd_rate_limit: self
                .fd_rate_limit
                .or(self.fd_rate_limit_ms.map(Duration::from_millis)),
            bpf_log: self.bpf_log,
            host_root: self.host_root.clone(),
            fallback_hooks_only: self.fallback_hooks_only,
        }
    }

    /// The load options from these flags over `file` (or the defaults).
    fn load_options(&self, file: Option<&FileConfig>) -> probes::LoadOptions {
        file.cloned()
            .unwrap_or_default()
            .load_options(&self.flags())
    }
}

fn init_logging(cli: &Cli) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&cli.log)
        .map_err(|err| anyhow::anyhow!("invalid --log filter `{}`: {err}", cli.log))?;
    let colour = colour_wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// ANSI colour only for a person at a terminal: `kubectl logs`, journald and log pipelines
/// get plain text, and a non-empty `NO_COLOR` (no-color.org) turns it off everywhere.
fn colour_wanted(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
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

#[cfg(test)]
mod tests {
    use super::colour_wanted;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let cases: [(bool, Option<&OsStr>, bool); 5] = [
            (true, None, true),
            (true, Some(OsStr::new("")), true),
            (true, Some(OsStr::new("1")), false),
            (false, None, false),
            (false, Some(OsStr::new("1")), false),
        ];
        for (terminal, no_color, want) in cases {
            assert_eq!(
                colour_wanted(terminal, no_color),
                want,
                "{terminal} {no_color:?}"
            );
        }
    }
}
