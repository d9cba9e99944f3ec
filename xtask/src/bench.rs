//! `cargo xtask bench`: builds the agent, npd-bench and npd-provoke, then runs the benchmarks
//! (bench/): hook overhead, storms, the idle footprint and the reporting latency against the
//! real test API server. They print numbers and assert nothing about speed; npd-bench takes
//! the machine lock itself while it uses the kernel.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::bail;
use clap::Args;
use npd_tests::cluster;

use crate::{
    apiserver::{self, ApiserverBins},
    build::{self, BuildArgs},
    util::{self, root, sh, step},
};

#[derive(Debug, Default, Args)]
pub(crate) struct BenchArgs {
    /// A smoke run of every benchmark (about a minute): proves they run end to end; its
    /// numbers mean little. Part of `cargo xtask test`.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Only these benchmarks, comma-separated: hooks, storm, block-storm, idle, latency.
    #[arg(long)]
    pub(crate) only: Option<String>,
    /// Also write every measurement as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!(
            "the benchmarks load eBPF programs, change sysctls and provoke kernel problems: \
             they need root. Run `sudo -E cargo xtask bench`"
        );
    }
    let control_plane = apiserver::ensure_built()?;
    let artifacts = build::build(&BuildArgs { debug: false })?;
    bench_agent(&artifacts.agent, &control_plane, args)
}

/// Benchmarks an agent already built (the last step of `cargo xtask test`).
pub(crate) fn bench_agent(
    agent: &Path,
    control_plane: &ApiserverBins,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    step("building npd-bench and npd-provoke (release: the loops must not time debug code)");
    sh(util::cargo(None).current_dir(root()).args([
        "build",
        "--release",
        "--package",
        "npd-bench",
        "--package",
        "npd-tests",
        "--bins",
    ]))?;
    let release = root().join("target/release");
    let mut cmd = Command::new(release.join("npd-bench"));
    cmd.env("NPD_AGENT_BIN", agent)
        .env(cluster::KUBE_APISERVER_ENV, &control_plane.kube_apiserver)
        .env(cluster::ETCD_ENV, &control_plane.etcd)
        .arg("--provoke")
        .arg(release.join("npd-provoke"));
    if args.quick {
        cmd.arg("--quick");
    }
    if let Some(only) = &args.only {
        cmd.args(["--only", only]);
    }
    if let Some(json) = &args.json {
        cmd.arg("--json").arg(json);
    }
    step(if args.quick {
        "benchmarks, quick smoke run (the full run is `cargo xtask bench`)"
    } else {
        "benchmarks (about 10 minutes; results as Markdown on stdout)"
    });
    sh(&mut cmd)
}
