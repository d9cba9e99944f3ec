//! Building the eBPF object and the agent, running the agent, and linting.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use clap::Args;

use crate::{
    prereqs::{self, nightly},
    util::{self, root, sh, step},
};

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// Build the agent in debug mode (the eBPF object is always optimized: the verifier
    /// rejects unoptimized code).
    #[arg(long)]
    pub(crate) debug: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) build: BuildArgs,
    /// Arguments for npd-agent (after `--`); default: `run`.
    #[arg(last = true)]
    pub(crate) args: Vec<String>,
}

/// Where the built pieces are.
#[derive(Debug)]
pub(crate) struct Artifacts {
    pub(crate) agent: PathBuf,
    /// The eBPF object embedded in the agent.
    pub(crate) ebpf_object: PathBuf,
}

pub(crate) fn build_ebpf() -> anyhow::Result<PathBuf> {
    step("building the eBPF object (npd-ebpf, nightly, bpfel-unknown-none)");
    let dir = root().join("npd-ebpf");
    sh(util::cargo(Some(&nightly()))
        .current_dir(&dir)
        .args(["build", "--release"]))?;
    let object = dir.join("target/bpfel-unknown-none/release/npd");
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    Ok(object)
}

pub(crate) fn build(args: &BuildArgs) -> anyhow::Result<Artifacts> {
    prereqs::ensure()?;
    let ebpf_object = build_ebpf()?;
    let profile = if args.debug { "debug" } else { "release" };
    step(format!(
        "building npd-agent ({profile}) with the eBPF object embedded"
    ));
    let mut cmd = util::cargo(None);
    cmd.current_dir(root())
        .env("NPD_EBPF_OBJECT", &ebpf_object)
        .args(["build", "--package", "npd-agent"]);
    if !args.debug {
        cmd.arg("--release");
    }
    sh(&mut cmd)?;
    let agent = root().join("target").join(profile).join("npd-agent");
    step(format!("built {}", agent.display()));
    Ok(Artifacts { agent, ebpf_object })
}

pub(crate) fn run(args: &RunArgs) -> anyhow::Result<()> {
    let artifacts = build(&args.build)?;
    let agent_args: Vec<String> = if args.args.is_empty() {
        vec!["run".to_owned()]
    } else {
        args.args.clone()
    };
    let mut cmd = if util::is_root() {
        Command::new(&artifacts.agent)
    } else {
        step("npd-agent needs root to load eBPF programs: running it with sudo");
        let mut sudo = Command::new("sudo");
        sudo.arg(&artifacts.agent);
        sudo
    };
    cmd.args(&agent_args);
    step(format!("running npd-agent {}", agent_args.join(" ")));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", artifacts.agent.display()))?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

pub(crate) fn lint() -> anyhow::Result<()> {
    prereqs::ensure()?;
    step("rustfmt (check)");
    sh(util::cargo(None)
        .current_dir(root())
        .args(["fmt", "--all", "--", "--check"]))?;
    sh(util::cargo(Some(&nightly()))
        .current_dir(root().join("npd-ebpf"))
        .args(["fmt", "--", "--check"]))?;
    // `cargo fmt` follows `mod` items, and the detector registry declares its modules inside
    // a macro: rustfmt never reaches those files unless named.
    step("rustfmt (check, every Rust file, also those declared in macros)");
    for (dir, toolchain) in [(root(), None), (root().join("npd-ebpf"), Some(nightly()))] {
        let files = rust_files(&dir)?;
        sh(util::cargo(toolchain.as_deref())
            .current_dir(&dir)
            .args(["fmt", "--", "--check"])
            .args(&files))?;
    }
    step("clippy (userspace, -D warnings)");
    sh(util::cargo(None).current_dir(root()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("clippy (eBPF, -D warnings)");
    sh(util::cargo(Some(&nightly()))
        .current_dir(root().join("npd-ebpf"))
        .args(["clippy", "--release", "--", "-D", "warnings"]))?;
    Ok(())
}

/// Every `.rs` file under `dir`, relative to it, but for hidden directories, build output and
/// the nested eBPF workspace (it has its own toolchain and pass).
fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(base: &Path, dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                let nested_workspace = dir == base && name == "npd-ebpf";
                if !(name.starts_with('.') || name == "target" || nested_workspace) {
                    walk(base, &path, found)?;
                }
            } else if name.ends_with(".rs")
                && let Ok(relative) = path.strip_prefix(base)
            {
                found.push(relative.to_owned());
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(dir, dir, &mut found)?;
    found.sort();
    Ok(found)
}
