//! `cargo xtask`: builds npd (the eBPF object on nightly, the agent with it embedded), runs it,
//! and runs every test, installing whatever this machine lacks first.

mod apiserver;
mod bench;
mod build;
mod cluster;
mod helm;
mod image;
mod prereqs;
mod test;
mod util;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build, run and test npd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what is missing to build npd (rust-src, LLVM, bpf-linker); quick when present.
    Setup,
    /// Build the eBPF object and the agent (release) with the object embedded.
    Build(build::BuildArgs),
    /// Build, then run `npd-agent ARGS` as root (default: `run`).
    Run(build::RunArgs),
    /// Run everything: unit tests, the root-only kernel and cluster tests serially, vm-test.
    Test(test::TestArgs),
    /// rustfmt and clippy (-D warnings) over both workspaces.
    Lint,
    /// Boot other kernels (Debian's, under QEMU/TCG) and provoke real oops, WARN, hung task,
    /// OOM kill and fd exhaustion there; print what the agent saw per kernel.
    VmTest(vm::VmTestArgs),
    /// The real kube-apiserver the cluster tests use: build it, or start one by hand.
    Apiserver(apiserver::ApiserverArgs),
    /// A real one-node cluster (kubelet on containerd) with npd's image, like kind: build it,
    /// start one until Ctrl-C, or clean up after a crashed one.
    Cluster(cluster::ClusterArgs),
    /// npd's container image, built here without Docker or a registry (an OCI archive).
    Image(image::ImageArgs),
    /// Fetch helm for the chart tests into .npd-cache (quick once cached); prints its export.
    Helm,
    /// Measure what npd costs (hook overhead, storms, idle footprint) and how fast it
    /// reports (to the decoded record, to a watch on the API server); root.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => prereqs::ensure(),
        Command::Build(args) => build::build(&args).map(|_| ()),
        Command::Run(args) => build::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Lint => build::lint(),
        Command::VmTest(args) => vm::run(&args),
        Command::Apiserver(args) => apiserver::run(&args),
        Command::Cluster(args) => cluster::run(&args),
        Command::Image(args) => image::run(&args),
        Command::Helm => helm::run(),
        Command::Bench(args) => bench::run(&args),
    }
}
