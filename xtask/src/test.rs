//! `cargo xtask test`: unit tests (no root, no kernel programs), then the tests that load the
//! real programs into this kernel and provoke real problems (root, serially), and the tests
//! that talk to a real kube-apiserver; then the same agent on other kernels under QEMU
//! (`cargo xtask vm-test`: oops, WARN and fentry, which this kernel cannot give); last, a
//! quick run of the benchmarks, to prove they still run end to end.

use anyhow::bail;
use clap::Args;
use npd_tests::{cluster, helm::HELM_ENV, machine_lock::MachineLock};

use crate::{
    bench::{self, BenchArgs},
    build::{self, BuildArgs},
    cluster as node_cluster, helm,
    util::{self, root, sh, step},
    vm::{self, VmTestArgs},
};

#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    /// Only the unit tests.
    #[arg(long)]
    pub(crate) unit: bool,
    /// Only the kernel tests.
    #[arg(long, conflicts_with = "unit")]
    pub(crate) kernel: bool,
    /// Skip the VM test that ends the kernel tests (about a minute with its downloads
    /// cached, a minute and a half without).
    #[arg(long)]
    pub(crate) no_vm: bool,
    /// Skip the quick benchmark run that ends everything (about a minute).
    #[arg(long)]
    pub(crate) no_bench: bool,
    /// Passed to the test binaries (e.g. a test name filter); skips the VM test and the
    /// benchmarks.
    #[arg(last = true)]
    pub(crate) filter: Vec<String>,
}

pub(crate) fn run(args: &TestArgs) -> anyhow::Result<()> {
    if !args.kernel {
        step("unit tests");
        sh(util::cargo(None).current_dir(root()).args([
            "test",
            "--workspace",
            "--exclude",
            "npd-tests",
        ]))?;
    }
    if args.unit {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "the kernel tests load eBPF programs and change sysctls, mounts and cgroups: they \
             need root. Run `sudo -E cargo xtask test` (or `cargo xtask test --unit` for the \
             unit tests alone)"
        );
    }
    // The node tests run a kubelet, controller-manager and scheduler beside the apiserver.
    let control_plane = node_cluster::ensure_ready()?;
    // The chart tests lint and render deploy/helm/npd.
    let helm = helm::ensure_fetched()?;
    // The filesystem tests make real XFS images (ext4's tools are on every Debian).
    if which("mkfs.xfs").is_none() {
        step("installing xfsprogs (the filesystem tests shut down a real XFS)");
        crate::prereqs::apt_install(&["xfsprogs".to_owned()])?;
    }
    // The conntrack test makes the kernel track loopback flows with an nftables rule.
    if which("nft").is_none() {
        step("installing nftables (the conntrack test fills the table with tracked flows)");
        crate::prereqs::apt_install(&["nftables".to_owned()])?;
    }
    // The monitoring tests run a real Prometheus and promtool (Debian's 2.42). Debian
    // enables its own prometheus.service; the tests start theirs on loopback ports.
    if which("prometheus").is_none() || which("promtool").is_none() {
        step("installing prometheus (the monitoring tests run a real Prometheus and promtool)");
        crate::prereqs::apt_install(&["prometheus".to_owned()])?;
    }
    let artifacts = build::build(&BuildArgs { debug: false })?;
    step("the names the agent looks programs, maps and globals up by, against the object");
    sh(util::cargo(None)
        .current_dir(root())
        .env("NPD_BPF_OBJECT", &artifacts.ebpf_object)
        .args([
            "test",
            "--package",
            "npd-common",
            "--features",
            "user",
            "--",
        ])
        .args(["--ignored", "every_name_is_a_symbol_of_the_object"]))?;
    let machine = MachineLock::acquire("xtask", "kernel tests")?;
    step("kernel and cluster tests (root, one at a time: they share global kernel state)");
    sh(util::cargo(None)
        .current_dir(root())
        .env("NPD_AGENT_BIN", &artifacts.agent)
        .env(cluster::KUBE_APISERVER_ENV, &control_plane.kube_apiserver)
        .env(cluster::ETCD_ENV, &control_plane.etcd)
        .env(HELM_ENV, &helm)
        .envs(node_cluster::exports(&control_plane))
        .args(["test", "--package", "npd-tests", "--", "--test-threads=1"])
        .args(&args.filter))?;
    if !args.filter.is_empty() {
        step(
            "VM test and benchmarks skipped: a test filter was given (run `cargo xtask vm-test` \
             or `cargo xtask bench --quick` for them)",
        );
        return Ok(());
    }
    if args.no_vm {
        step("VM test skipped (--no-vm)");
    } else {
        step("VM test: the same agent on other kernels under QEMU (skip with --no-vm)");
        vm::test_agent(&artifacts.agent, &VmTestArgs::default())?;
    }
    // npd-bench takes the lock itself (it is also run by hand).
    drop(machine);
    if args.no_bench {
        step("benchmarks skipped (--no-bench)");
        return Ok(());
    }
    bench::bench_agent(
        &artifacts.agent,
        &control_plane,
        &BenchArgs {
            quick: true,
            ..BenchArgs::default()
        },
    )
}

/// The path of `program` on PATH, if any.
fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|path| path.is_file())
}
