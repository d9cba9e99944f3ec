//! `cargo xtask cluster`: a real one-node Kubernetes cluster on this machine, the way people
//! use kind: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and a kubelet on
//! Debian's containerd and runc, with npd's image imported, until Ctrl-C.

use anyhow::bail;
use clap::{Args, Subcommand};
use npd_tests::{
    cluster::ClusterBinaries,
    images,
    node::{self, NodeBinaries, TestNode},
};

use crate::{
    apiserver::{self, ApiserverBins, StopSignals},
    build::{self, BuildArgs},
    image,
    prereqs::install_missing,
    util::{self, root, sh, step},
};

#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Build the node's programs (cached) and install the Debian packages it runs on;
    /// prints the exports a bare `cargo test` of the node tests needs.
    Build,
    /// Build npd and its image, start the node with the image imported, and run until
    /// Ctrl-C; everything is removed on the way out.
    Start,
    /// Remove what a node killed before it could clean up left behind.
    Clean,
}

/// Debian packages a node runs on, and why.
const PACKAGES: [(&str, &str); 5] = [
    ("containerd", "the container runtime"),
    ("runc", "what containerd starts containers with"),
    (
        "containernetworking-plugins",
        "the pods' bridge network (CNI)",
    ),
    ("nftables", "the rule that routes the `kubernetes` Service"),
    (
        "busybox-static",
        "the shell and sleep of the sandbox and test images",
    ),
];

pub(crate) fn run(args: &ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Build => {
            let bins = ensure_ready()?;
            // On stdout, for `eval "$(cargo xtask cluster build)"`.
            for (var, path) in exports(&bins) {
                println!("export {var}='{}'", path.display());
            }
            Ok(())
        }
        ClusterCommand::Start => start(),
        ClusterCommand::Clean => {
            require_root()?;
            step("removing what earlier test nodes left (processes, mounts, links, cgroups)");
            node::clean_leftovers()
        }
    }
}

/// Installs the node's packages and builds its programs; quick when both are there.
pub(crate) fn ensure_ready() -> anyhow::Result<ApiserverBins> {
    let missing: Vec<String> = PACKAGES
        .iter()
        .filter(|(package, _)| !apiserver::is_installed(package))
        .map(|(package, _)| (*package).to_owned())
        .collect();
    let why: Vec<String> = PACKAGES
        .iter()
        .map(|(package, what)| format!("{package}: {what}"))
        .collect();
    install_missing(&missing, &why.join("; "))?;
    apiserver::ensure_node_built()
}

/// The environment the node tests read their programs from.
pub(crate) fn exports(bins: &ApiserverBins) -> Vec<(&'static str, std::path::PathBuf)> {
    vec![
        (node::KUBELET_ENV, bins.component("kubelet")),
        (
            node::CONTROLLER_MANAGER_ENV,
            bins.component("kube-controller-manager"),
        ),
        (node::SCHEDULER_ENV, bins.component("kube-scheduler")),
    ]
}

fn require_root() -> anyhow::Result<()> {
    if !util::is_root() {
        bail!(
            "a node runs containerd and a kubelet, makes network links and cgroups: it needs \
             root. Run `sudo -E cargo xtask cluster start`"
        );
    }
    Ok(())
}

fn start() -> anyhow::Result<()> {
    require_root()?;
    let bins = ensure_ready()?;
    let agent = build::build(&BuildArgs { debug: false })?.agent;
    step("building npd-provoke (the test workload's problem maker)");
    sh(util::cargo(None).current_dir(root()).args([
        "build",
        "--release",
        "--package",
        "npd-tests",
        "--bins",
    ]))?;
    let images_dir = root().join("target/images");
    step(format!("writing the images into {}", images_dir.display()));
    let (agent_image, agent_archive) = image::write_default(&agent)?;
    let pause_archive = images_dir.join("npd-pause.oci.tar");
    images::pause()?.write_archive(&pause_archive)?;
    let workload_archive = images_dir.join("npd-workload.oci.tar");
    images::workload(&root().join("target/release/npd-provoke"))?
        .write_archive(&workload_archive)?;

    let stop_signals = StopSignals::block()?;
    step("starting the node (about 30 s)");
    let node = TestNode::start(
        &NodeBinaries {
            cluster: ClusterBinaries {
                kube_apiserver: bins.kube_apiserver.clone(),
                etcd: bins.etcd.clone(),
            },
            kubelet: bins.component("kubelet"),
            controller_manager: bins.component("kube-controller-manager"),
            scheduler: bins.component("kube-scheduler"),
        },
        &pause_archive,
        &[&agent_archive, &workload_archive],
    )?;
    let overlay = node.dir().join("npd");
    let deploy = root().join("deploy");
    let (capabilities, withheld) = node::shipped_capabilities_here(&deploy)?;
    if !withheld.is_empty() {
        step(format!(
            "this machine withholds {} from every process (its bounding set), so no container \
             can have it: the overlay adds only {}",
            withheld.join(", "),
            capabilities.join(", ")
        ));
    }
    node::write_npd_overlay(
        &overlay,
        &deploy,
        &agent_image.reference,
        (!withheld.is_empty()).then_some(capabilities.as_slice()),
    )?;
    let kubeconfig = node.cluster().admin_kubeconfig().display().to_string();
    println!(
        "node:        {} ({}), Ready",
        node::NODE_NAME,
        node::NODE_IP
    );
    println!("kubeconfig:  export KUBECONFIG={kubeconfig}");
    println!(
        "images:      {}, {}",
        agent_image.reference,
        images::WORKLOAD_REFERENCE
    );
    println!("install npd: kubectl apply -k {}", overlay.display());
    println!(
        "   or helm:  helm install npd {} --namespace kube-system --set image.repository=localhost/npd --set image.tag={}",
        root().join("deploy/helm/npd").display(),
        image::TAG
    );
    println!("logs:        {}", node.dir().display());
    step("running until Ctrl-C");
    let signal = stop_signals.wait()?;
    step(format!(
        "signal {signal}: stopping the node and removing what it made"
    ));
    node.stop()
}
