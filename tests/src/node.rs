//! A real one-node Kubernetes cluster on this machine, from real parts: etcd and
//! kube-apiserver ([`TestCluster`]), kube-controller-manager and kube-scheduler built from the
//! same source tree, and a kubelet running pods on Debian's containerd and runc with the CNI
//! bridge plugin (recipe: shared/notes/NODE-PROBLEMS.md). `cargo xtask cluster start` runs
//! one by hand; the end-to-end test runs npd's DaemonSet on one.
//!
//! Everything it creates is named here and removed by [`TestNode::stop`], on drop and by
//! [`clean_leftovers`] (`cargo xtask cluster clean`, after a crash): processes, mounts,
//! network devices and namespaces, the nftables table, the pods' cgroups, CNI state.
//!
//! The network: the node's address is on a link of its own (an empty bridge), so the API server can listen where
//! pods reach it without listening on the machine's real interfaces; pods sit on a bridge.
//! No kube-proxy runs (it would rewrite the machine's conntrack sysctls and iptables): one
//! nftables rule does its job for the only Service pods use, `kubernetes` (10.0.0.1:443 to
//! the API server), so the DaemonSet runs exactly as shipped.

use std::{
    collections::BTreeSet,
    env, fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::{
    cluster::{
        ClusterBinaries, ClusterOptions, KUBERNETES_SERVICE_IP, TestCluster, binary_from_env,
        log_tail, spawn_logged, stop_child,
    },
    machine::command,
};

pub const KUBELET_ENV: &str = "NPD_KUBELET";
pub const CONTROLLER_MANAGER_ENV: &str = "NPD_KUBE_CONTROLLER_MANAGER";
pub const SCHEDULER_ENV: &str = "NPD_KUBE_SCHEDULER";

/// The node's name in the API.
pub const NODE_NAME: &str = "npd-node";
/// The node's address, on [`NODE_LINK`]; the API server and the kubelet listen here.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const NODE_LINK: &str = "npd-node0";
/// The pods' bridge and subnet (its first address is the bridge's, the pods' gateway).
const BRIDGE: &str = "npd-cni0";
const POD_SUBNET: &str = "10.213.1.0/24";
const CNI_NETWORK: &str = "npd-node";
/// nftables table holding the stand-in for kube-proxy.
const NFT_TABLE: &str = "npd_test_node";
/// Prefix of the node's scratch directory (in the system's temporary directory).
const DIR_PREFIX: &str = "npd-node-";
/// containerd's namespace for the CRI (the kubelet's containers).
pub const CRI_NAMESPACE: &str = "k8s.io";
/// Shared directories the node writes to because nothing lets it write elsewhere: the pod
/// network namespaces containerd 1.6 pins, the kubelet 1.20's container logs, libcni's result
/// cache. Only what the node adds to them is removed (or each whole, if the node made it).
const SHARED_DIRS: [&str; 5] = [
    "/run/netns",
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/cni/results",
    "/var/lib/cni",
];
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The node's programs: the control plane's, and the three a node adds.
#[derive(Debug, Clone)]
pub struct NodeBinaries {
    pub cluster: ClusterBinaries,
    pub kubelet: PathBuf,
    pub controller_manager: PathBuf,
    pub scheduler: PathBuf,
}

impl NodeBinaries {
    /// From the environment `cargo xtask test` sets, failing with directions.
    pub fn from_env() -> anyhow::Result<Self> {
        let missing = format!(
            "The node tests run a real kubelet, kube-controller-manager and kube-scheduler, \
             which `cargo xtask test` builds and passes in {KUBELET_ENV}, \
             {CONTROLLER_MANAGER_ENV} and {SCHEDULER_ENV} (or set them with `eval \"$(cargo \
             xtask cluster build)\"`)"
        );
        let binary = |var: &str| binary_from_env(var, &missing);
        Ok(Self {
            cluster: ClusterBinaries::from_env()?,
            kubelet: binary(KUBELET_ENV)?,
            controller_manager: binary(CONTROLLER_MANAGER_ENV)?,
            scheduler: binary(SCHEDULER_ENV)?,
        })
    }
}

/// A running one-node cluster. [`TestNode::stop`] or drop takes it all down.
pub struct TestNode {
    cluster: Option<TestCluster>,
    dir: Option<TempDir>,
    containerd: Option<Child>,
    controller_manager: Option<Child>,
    scheduler: Option<Child>,
    kubelet: Option<Child>,
    /// What [`SHARED_DIRS`] held before the node.
    shared_before: SharedDirs,
}

/// Each shared directory's entries, `None` when it did not exist.
type SharedDirs = Vec<Option<BTreeSet<String>>>;

fn shared_dirs_now() -> SharedDirs {
    SHARED_DIRS
        .iter()
        .map(|dir| {
            let entries = fs::read_dir(dir).ok()?;
            Some(
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect(),
            )
        })
        .collect()
}

impl std::fmt::Debug for TestNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNode")
            .field("dir", &self.dir.as_ref().map(TempDir::path))
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl TestNode {
    /// Starts everything, imports `images` (OCI archives) beside the sandbox image, and waits
    /// until the node is Ready and pods can be admitted (about 30 s).
    pub fn start(
        binaries: &NodeBinaries,
        sandbox_image: &Path,
        images: &[&Path],
    ) -> anyhow::Result<Self> {
        preflight()?;
        if link_exists(NODE_LINK) {
            bail!(
                "{NODE_LINK} exists: another test node is running, or one was not cleaned up \
                 (`cargo xtask cluster clean` removes what is left)"
            );
        }
        let dir = tempfile::Builder::new().prefix(DIR_PREFIX).tempdir()?;
        let mut node = Self {
            cluster: None,
            dir: Some(dir),
            containerd: None,
            controller_manager: None,
            scheduler: None,
            kubelet: None,
            shared_before: shared_dirs_now(),
        };
        // From here on, drop undoes whatever has been done.
        // A bridge with no ports is a dummy link; the dummy driver may be absent (it is here).
        command("ip", &["link", "add", NODE_LINK, "type", "bridge"])?;
        command(
            "ip",
            &["addr", "add", &format!("{NODE_IP}/32"), "dev", NODE_LINK],
        )?;
        command("ip", &["link", "set", NODE_LINK, "up"])?;
        let cluster = TestCluster::start_with_options(
            &binaries.cluster,
            &ClusterOptions {
                address: NODE_IP,
                service_account_tokens: true,
            },
        )?;
        let port = cluster
            .server_url()
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .context("the API server's URL has no port")?;
        node.cluster = Some(cluster);
        route_kubernetes_service(port)?;
        node.start_containerd(sandbox_image)?;
        for image in images {
            node.import_image(image)?;
        }
        node.start_control_plane(binaries)?;
        node.start_kubelet(binaries)?;
        node.wait_until_ready()?;
        Ok(node)
    }

    pub fn cluster(&self) -> &TestCluster {
        self.cluster.as_ref().expect("the cluster runs until stop")
    }

    /// The scratch directory: configs, logs, containerd's and the kubelet's state.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), TempDir::path)
    }

    pub fn containerd_socket(&self) -> PathBuf {
        self.dir().join("containerd/containerd.sock")
    }

    /// `ctr` on this node's containerd, in the CRI's namespace.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.containerd_socket())
            .args(["--namespace", CRI_NAMESPACE]);
        cmd
    }

    /// Imports an OCI archive into the CRI's image store (for `imagePullPolicy: Never` or
    /// `IfNotPresent`).
    pub fn import_image(&self, archive: &Path) -> anyhow::Result<()> {
        let output = self
            .ctr()
            .args(["images", "import", "--no-unpack"])
            .arg(archive)
            .output()?;
        ensure_success(&output, &format!("ctr images import {}", archive.display()))
    }

    /// The last lines of each component's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for name in [
            "containerd",
            "kubelet",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            let log = self.dir().join(format!("{name}.log"));
            text.push_str(&format!(
                "--- {name} ({})\n{}\n",
                log.display(),
                log_tail(&log)
            ));
        }
        text
    }

    fn start_containerd(&mut self, sandbox_image: &Path) -> anyhow::Result<()> {
        let dir = self.dir().to_owned();
        let state = dir.join("containerd");
        let cni_conf = dir.join("cni");
        fs::create_dir_all(&state)?;
        fs::create_dir_all(&cni_conf)?;
        fs::write(
            cni_conf.join("10-npd-node.conflist"),
            cni_config(&dir.join("cni-ipam")),
        )?;
        let sandbox = crate::images::PAUSE_REFERENCE;
        let config = dir.join("containerd.toml");
        fs::write(
            &config,
            format!(
                "version = 2\n\
                 root = \"{root}\"\n\
                 state = \"{run}\"\n\
                 [grpc]\n  address = \"{socket}\"\n\
                 [ttrpc]\n  address = \"{socket}.ttrpc\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n\
                 \x20 sandbox_image = \"{sandbox}\"\n\
                 \x20 # This sandbox withholds CAP_SYS_RESOURCE: runc cannot lower\n\
                 \x20 # oom_score_adj for the sandbox without it.\n\
                 \x20 restrict_oom_score_adj = true\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
                 \x20 runtime_type = \"io.containerd.runc.v2\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
                 \x20 bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{cni}\"\n",
                root = state.join("root").display(),
                run = state.join("state").display(),
                socket = self.containerd_socket().display(),
                opt = state.join("opt").display(),
                cni = cni_conf.display(),
            ),
        )?;
        let mut containerd = Command::new("containerd");
        containerd.arg("--config").arg(&config);
        self.containerd = Some(spawn_logged(&mut containerd, &dir.join("containerd.log"))?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let version = self.ctr().arg("version").output()?;
            if version.status.success() {
                break;
            }
            self.check_running()?;
            if Instant::now() > deadline {
                bail!("containerd did not answer within 30 s\n{}", self.logs());
            }
            thread::sleep(Duration::from_millis(200));
        }
        self.import_image(sandbox_image)
    }

    fn start_control_plane(&mut self, binaries: &NodeBinaries) -> anyhow::Result<()> {
        let dir = self.dir().to_owned();
        let cluster = self.cluster();
        let kubeconfig = cluster.admin_kubeconfig().to_owned();
        let mut controller_manager = Command::new(&binaries.controller_manager);
        controller_manager
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--leader-elect=false")
            // No serving: nothing scrapes it, and the ports stay free.
            .args(["--port=0", "--secure-port=0"])
            // Mints the service-account tokens pods mount (npd's among them).
            .arg(format!(
                "--service-account-private-key-file={}",
                cluster.service_account_key().display()
            ))
            .arg(format!("--root-ca-file={}", cluster.ca_path().display()));
        self.controller_manager = Some(spawn_logged(
            &mut controller_manager,
            &dir.join("kube-controller-manager.log"),
        )?);
        let mut scheduler = Command::new(&binaries.scheduler);
        scheduler
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--leader-elect=false")
            .args(["--port=0", "--secure-port=0"]);
        self.scheduler = Some(spawn_logged(
            &mut scheduler,
            &dir.join("kube-scheduler.log"),
        )?);
        Ok(())
    }

    fn start_kubelet(&mut self, binaries: &NodeBinaries) -> anyhow::Result<()> {
        let dir = self.dir().to_owned();
        let kubeconfig = self.cluster().admin_kubeconfig().to_owned();
        let mut kubelet = Command::new(&binaries.kubelet);
        kubelet
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--container-runtime=remote")
            .arg(format!(
                "--container-runtime-endpoint=unix://{}",
                self.containerd_socket().display()
            ))
            .arg(format!(
                "--pod-infra-container-image={}",
                crate::images::PAUSE_REFERENCE
            ))
            .arg("--cgroup-driver=cgroupfs")
            .arg("--fail-swap-on=false")
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={NODE_IP}"))
            .arg(format!("--address={NODE_IP}"))
            .arg("--read-only-port=0")
            .arg(format!("--root-dir={}", dir.join("kubelet").display()))
            .arg(format!("--cert-dir={}", dir.join("kubelet-pki").display()))
            .arg(format!(
                "--volume-plugin-dir={}",
                dir.join("volume-plugins").display()
            ))
            .arg("--authentication-token-webhook=false")
            .arg("--authorization-mode=AlwaysAllow")
            // Nothing evicted or reserved on a machine shared with the tests.
            .arg("--eviction-hard=")
            .arg("--enforce-node-allocatable=")
            .arg("--image-gc-high-threshold=100");
        self.kubelet = Some(spawn_logged(&mut kubelet, &dir.join("kubelet.log"))?);
        Ok(())
    }

    fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_running()?;
            let ready = self.cluster().kubectl(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            // Pods need the `default` ServiceAccount, which the controller-manager creates.
            let account =
                self.cluster()
                    .kubectl(&["get", "serviceaccount", "default", "-o", "name"]);
            let state = format!(
                "Ready={} default ServiceAccount: {}",
                String::from_utf8_lossy(&ready.stdout),
                String::from_utf8_lossy(if account.status.success() {
                    &account.stdout
                } else {
                    &account.stderr
                })
                .trim()
            );
            if ready.stdout == b"True" && account.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the node was not ready within {READY_TIMEOUT:?} ({state})\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_secs(1));
        }
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        for (name, child) in [
            ("containerd", &mut self.containerd),
            ("kube-controller-manager", &mut self.controller_manager),
            ("kube-scheduler", &mut self.scheduler),
            ("kubelet", &mut self.kubelet),
        ] {
            if let Some(child) = child
                && let Some(status) = child.try_wait()?
            {
                let log = self
                    .dir
                    .as_ref()
                    .map_or(PathBuf::new(), |dir| dir.path().join(format!("{name}.log")));
                bail!("{name} exited ({status}):\n{}", log_tail(&log));
            }
        }
        Ok(())
    }

    /// Stops everything and removes what the node made; the first error is returned after
    /// every step has been tried.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        // The kubelet first, or it restarts what is taken down under it.
        if let Some(child) = self.kubelet.take()
            && let Err(error) = stop_child(child, "kubelet")
        {
            errors.push(error);
        }
        if self.containerd.is_some() {
            self.remove_containers();
        }
        for (name, child) in [
            ("containerd", self.containerd.take()),
            ("kube-scheduler", self.scheduler.take()),
            ("kube-controller-manager", self.controller_manager.take()),
        ] {
            if let Some(child) = child
                && let Err(error) = stop_child(child, name)
            {
                errors.push(error);
            }
        }
        if let Some(cluster) = self.cluster.take()
            && let Err(error) = cluster.stop()
        {
            errors.push(error);
        }
        let dir = self.dir.as_ref().map(|dir| dir.path().to_owned());
        if let Err(error) = sweep(dir.as_deref(), &self.shared_before) {
            errors.push(error);
        }
        if let Some(dir) = self.dir.take()
            && let Err(error) = dir.close()
        {
            errors.push(anyhow::Error::from(error).context("removing the node's directory"));
        }
        match errors.into_iter().next() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Kills and deletes every container through containerd, so that it unmounts their root
    /// filesystems and tears down their networks (CNI DEL) itself.
    fn remove_containers(&self) {
        let list = |what: &str| -> Vec<String> {
            self.ctr()
                .args([what, "list", "--quiet"])
                .output()
                .map(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        for task in list("tasks") {
            let _ = self
                .ctr()
                .args(["tasks", "delete", "--force", &task])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for container in list("containers") {
            let _ = self
                .ctr()
                .args(["containers", "delete", &container])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            eprintln!("cleaning up the test node: {error:#}");
        }
    }
}

/// Removes what a test node left behind (after a crash or a kill): every process in the
/// pods' cgroups and every containerd of a node directory, mounts under node directories,
/// CNI's network namespaces, the links, the nftables table, the pods' cgroups. Pod logs and
/// other shared entries cannot be told apart from others' after the fact and stay.
pub fn clean_leftovers() -> anyhow::Result<()> {
    refuse_on_a_real_node()?;
    let dirs: Vec<PathBuf> = fs::read_dir(env::temp_dir())?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(DIR_PREFIX))
        .map(|entry| entry.path())
        .collect();
    for dir in &dirs {
        kill_processes_mentioning(dir)?;
    }
    // Everything counts as there before, but CNI's namespaces (containerd's `cni-<uuid>`).
    let mut before = shared_dirs_now();
    if let Some(Some(netns)) = before.first_mut() {
        netns.retain(|name| !name.starts_with("cni-"));
    }
    for dir in &dirs {
        sweep(Some(dir), &before)?;
        fs::remove_dir_all(dir)?;
    }
    if dirs.is_empty() {
        sweep(None, &before)?;
    }
    Ok(())
}

/// Undoes the node's global changes, each step tried whatever the others did.
fn sweep(dir: Option<&Path>, shared_before: &SharedDirs) -> anyhow::Result<()> {
    let mut errors: Vec<anyhow::Error> = Vec::new();
    let mut note = |result: anyhow::Result<()>| {
        if let Err(error) = result {
            errors.push(error);
        }
    };
    note(kill_pod_processes());
    if let Some(dir) = dir {
        note(kill_processes_mentioning(dir));
        note(unmount_below(dir));
    }
    for (shared, before) in SHARED_DIRS.iter().zip(shared_before) {
        note(remove_added(Path::new(shared), before.as_ref()));
    }
    for link in [BRIDGE, NODE_LINK] {
        if link_exists(link) {
            note(command("ip", &["link", "del", link]).map(drop));
        }
    }
    let table = Command::new("nft")
        .args(["list", "table", "ip", NFT_TABLE])
        .output();
    if table.is_ok_and(|out| out.status.success()) {
        note(command("nft", &["delete", "table", "ip", NFT_TABLE]).map(drop));
    }
    note(remove_pod_cgroups());
    match errors.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Removes what `dir` holds beyond `before` (all of it, if it did not exist), unmounting
/// first (a pinned network namespace is a mount).
fn remove_added(dir: &Path, before: Option<&BTreeSet<String>>) -> anyhow::Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    let Some(before) = before else {
        unmount_below(dir)?;
        return fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()));
    };
    for entry in entries.filter_map(Result::ok) {
        if before.contains(&*entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        unmount_below(&path)?;
        let removed = if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Writes a kustomization of `deploy` (npd's deploy/ directory) to `dir` that sets npd's
/// image to `reference` and, when given, the container's added capabilities. kustomize
/// refuses absolute paths, and deploy/base has already renamed the image, so the overlay
/// refers to deploy/ relatively and renames what deploy/base names it.
pub fn write_npd_overlay(
    dir: &Path,
    deploy: &Path,
    reference: &str,
    capabilities: Option<&[String]>,
) -> anyhow::Result<()> {
    let (name, tag) = reference
        .rsplit_once(':')
        .with_context(|| format!("{reference} has no tag"))?;
    let base = deploy.join("base/kustomization.yaml");
    let shipped = fs::read_to_string(&base)?
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("newName:")
                .map(|n| n.trim().to_owned())
        })
        .with_context(|| format!("{} sets no image newName", base.display()))?;
    let dir = std::path::absolute(dir)?;
    let deploy = std::path::absolute(deploy)?;
    let up = "../".repeat(dir.components().count().saturating_sub(1));
    let mut text = format!(
        "# npd as shipped ({}), with the image built and imported here.\n\
         resources:\n  - {up}{}\n\
         images:\n  - name: {shipped}\n    newName: {name}\n    newTag: \"{tag}\"\n",
        deploy.display(),
        deploy.strip_prefix("/").unwrap_or(&deploy).display(),
    );
    if let Some(capabilities) = capabilities {
        text.push_str(&format!(
            "patches:\n  - patch: |\n      apiVersion: apps/v1\n      kind: DaemonSet\n      \
             metadata:\n        name: npd\n      spec:\n        template:\n          spec:\n            \
             containers:\n              - name: npd\n                securityContext:\n                  \
             capabilities:\n                    add: {}\n",
            serde_json::to_string(capabilities)?
        ));
    }
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("kustomization.yaml"), text)?;
    Ok(())
}

/// The securityContext of npd's container in `deploy`'s DaemonSet, as JSON.
pub fn shipped_security_context(deploy: &Path) -> anyhow::Result<serde_json::Value> {
    let path = deploy.join("base/daemonset.yaml");
    let text = fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let daemonset: serde_json::Value = serde_yaml_ng::from_str(&text)?;
    let context = &daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    if !context.is_object() {
        bail!("{} has no container securityContext", path.display());
    }
    Ok(context.clone())
}

/// The capabilities `deploy`'s DaemonSet adds, split into those a container on this machine
/// can have and those its bounding set withholds (the overlay and the tests leave those out,
/// and say so).
pub fn shipped_capabilities_here(deploy: &Path) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let added: Vec<String> =
        serde_json::from_value(shipped_security_context(deploy)?["capabilities"]["add"].clone())
            .context("the securityContext's capabilities.add is not a list of names")?;
    let withheld = withheld_capabilities(&added)?;
    let kept = added
        .into_iter()
        .filter(|cap| !withheld.contains(cap))
        .collect();
    Ok((kept, withheld))
}

/// The capabilities (Kubernetes names: `SYS_RESOURCE`) of `wanted` that this machine's
/// bounding set withholds, so that no container here can have them.
pub fn withheld_capabilities(wanted: &[String]) -> anyhow::Result<Vec<String>> {
    let status = fs::read_to_string("/proc/self/status")?;
    let bounding = status
        .lines()
        .find_map(|line| line.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .context("/proc/self/status has no CapBnd")?;
    let mut withheld = Vec::new();
    for name in wanted {
        let bit = CAPABILITIES
            .iter()
            .position(|known| known == name)
            .with_context(|| format!("unknown capability {name}"))?;
        if bounding & (1 << bit) == 0 {
            withheld.push(name.clone());
        }
    }
    Ok(withheld)
}

/// Capability names by number (linux/capability.h), as Kubernetes spells them.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Routes the `kubernetes` Service to the API server, as kube-proxy would, for pods only
/// (traffic entering from the bridge).
fn route_kubernetes_service(port: u16) -> anyhow::Result<()> {
    let rules = format!(
        "table ip {NFT_TABLE} {{\n\
         \x20 chain prerouting {{\n\
         \x20   type nat hook prerouting priority dstnat; policy accept;\n\
         \x20   iifname \"{BRIDGE}\" ip daddr {KUBERNETES_SERVICE_IP} tcp dport 443 \
         dnat to {NODE_IP}:{port}\n\
         \x20 }}\n\
         }}\n"
    );
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft")?;
    std::io::Write::write_all(
        &mut child.stdin.take().context("nft's stdin")?,
        rules.as_bytes(),
    )?;
    let output = child.wait_with_output()?;
    ensure_success(&output, "nft -f - (the kubernetes Service rule)")
}

/// A bridge network with host-local addresses kept in the node's directory.
fn cni_config(ipam_dir: &Path) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "isDefaultGateway": true,
            // No masquerading: it would need iptables rules, and pods only talk to the node.
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "subnet": POD_SUBNET,
                "dataDir": ipam_dir,
            },
        }],
    }))
    .expect("a JSON value serializes")
}

fn preflight() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("a test node needs root: it runs containerd and a kubelet, and makes links");
    }
    for (path, package) in [
        ("/usr/bin/containerd", "containerd"),
        ("/usr/sbin/runc", "runc"),
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        ("/usr/sbin/nft", "nftables"),
        (crate::images::BUSYBOX, "busybox-static"),
    ] {
        if !Path::new(path).exists() {
            bail!("{path} is missing: install Debian's {package} (`cargo xtask test` does)");
        }
    }
    refuse_on_a_real_node()?;
    if let Some(left) = pod_cgroup_roots().first() {
        bail!(
            "{} exists: a test node was not cleaned up (`cargo xtask cluster clean` removes \
             what is left)",
            left.display()
        );
    }
    Ok(())
}

/// A test node shares the `kubepods` cgroups with any other kubelet here, and its cleanup
/// kills every process in them: on a machine where a real kubelet runs, that would be its
/// pods. So neither a node nor `clean` starts there.
fn refuse_on_a_real_node() -> anyhow::Result<()> {
    let foreign = foreign_kubelets();
    if !foreign.is_empty() {
        bail!(
            "a kubelet that is not a test node's runs here (pid {}): a test node would share \
             its pods' cgroups, and cleaning up would kill its pods. Use a machine without one",
            foreign
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Processes named `kubelet` whose command line names no test node directory.
fn foreign_kubelets() -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, comm, cmdline)| {
            comm == "kubelet" && !cmdline.contains(&format!("/{DIR_PREFIX}"))
        })
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Every process: pid, comm and command line (arguments joined by NULs).
fn processes() -> Vec<(u32, String, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            Some((
                pid,
                comm.trim_end().to_owned(),
                String::from_utf8_lossy(&cmdline).into_owned(),
            ))
        })
        .collect()
}

fn ensure_success(output: &Output, what: &str) -> anyhow::Result<()> {
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Each v1 controller hierarchy (and the v2 one, if mounted) has a `kubepods` tree.
fn pod_cgroup_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let candidates = fs::read_dir(base)
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_else(|_| Vec::new());
        for hierarchy in std::iter::once(PathBuf::from(base)).chain(candidates) {
            let is_link = fs::symlink_metadata(&hierarchy).is_ok_and(|m| m.is_symlink());
            let kubepods = hierarchy.join("kubepods");
            if !is_link && kubepods.join("cgroup.procs").exists() && !roots.contains(&kubepods) {
                roots.push(kubepods);
            }
        }
    }
    roots
}

/// Every cgroup below `root`, deepest first.
fn cgroups_below(root: &Path) -> Vec<PathBuf> {
    let mut all = vec![root.to_owned()];
    let mut index = 0;
    while index < all.len() {
        if let Ok(entries) = fs::read_dir(&all[index]) {
            for entry in entries.filter_map(Result::ok) {
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    all.push(entry.path());
                }
            }
        }
        index += 1;
    }
    all.reverse();
    all
}

fn kill_pod_processes() -> anyhow::Result<()> {
    for root in pod_cgroup_roots() {
        for cgroup in cgroups_below(&root) {
            let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|line| line.parse::<i32>().ok()) {
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    Ok(())
}

/// Kills processes whose command line names `dir` (containerd, its shims, the kubelet).
fn kill_processes_mentioning(dir: &Path) -> anyhow::Result<()> {
    let needle = dir.to_string_lossy().into_owned();
    for (pid, _, cmdline) in processes() {
        if pid != std::process::id() && cmdline.contains(&needle) {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    Ok(())
}

/// Unmounts every mount at or below `path`, deepest first (lazily: a mount still busy goes
/// when its last user does).
fn unmount_below(path: &Path) -> anyhow::Result<()> {
    // mountinfo names mounts by their real path (/run, not /var/run).
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let prefix = path.to_string_lossy().into_owned();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mut mounts: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| point.replace("\\040", " "))
        .filter(|point| {
            point == &prefix
                || point
                    .strip_prefix(&prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in mounts {
        let c_point = std::ffi::CString::new(point.clone())?;
        // SAFETY: a valid C string.
        if unsafe { libc::umount2(c_point.as_ptr(), libc::MNT_DETACH) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINVAL) {
                bail!("umount {point}: {error}");
            }
        }
    }
    Ok(())
}

/// Removes the pods' cgroups, deepest first; a cgroup whose processes are still exiting is
/// retried for a few seconds.
fn remove_pod_cgroups() -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        for root in pod_cgroup_roots() {
            for cgroup in cgroups_below(&root) {
                if let Err(error) = fs::remove_dir(&cgroup)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    left.push(format!("{}: {error}", cgroup.display()));
                }
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("cannot remove the pods' cgroups: {}", left.join("; "));
        }
        kill_pod_processes()?;
        thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cni_config_keeps_its_state_in_the_node_directory_and_does_not_masquerade() {
        let config: serde_json::Value =
            serde_json::from_str(&cni_config(Path::new("/tmp/npd-node-x/cni-ipam"))).unwrap();
        let bridge = &config["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], BRIDGE);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["dataDir"], "/tmp/npd-node-x/cni-ipam");
        assert_eq!(bridge["ipam"]["subnet"], POD_SUBNET);
    }

    #[test]
    fn the_shipped_capabilities_are_read_from_deploy() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let context = shipped_security_context(&deploy).unwrap();
        assert_eq!(context["privileged"], false);
        let (kept, withheld) = shipped_capabilities_here(&deploy).unwrap();
        let mut all = [kept, withheld].concat();
        all.sort();
        assert_eq!(all, ["BPF", "PERFMON", "SYSLOG", "SYS_RESOURCE"]);
        assert!(shipped_security_context(Path::new("/nonexistent")).is_err());
    }

    #[test]
    fn capabilities_are_numbered_as_the_kernel_numbers_them() {
        let bit = |name: &str| CAPABILITIES.iter().position(|known| *known == name);
        assert_eq!(bit("SYS_RESOURCE"), Some(24));
        assert_eq!(bit("SYSLOG"), Some(34));
        assert_eq!(bit("PERFMON"), Some(38));
        assert_eq!(bit("BPF"), Some(39));
        assert!(withheld_capabilities(&["NO_SUCH".to_owned()]).is_err());
    }

    #[test]
    fn the_overlay_renames_the_shipped_image_and_replaces_only_the_capabilities() {
        let dir = tempfile::tempdir().unwrap();
        let deploy = dir.path().join("repo/deploy");
        fs::create_dir_all(deploy.join("base")).unwrap();
        fs::write(
            deploy.join("base/kustomization.yaml"),
            "images:\n  - name: npd\n    newName: ghcr.io/x/npd\n    newTag: \"1\"\n",
        )
        .unwrap();
        let overlay = dir.path().join("a/b");
        let caps = ["BPF".to_owned(), "PERFMON".to_owned()];
        write_npd_overlay(&overlay, &deploy, "localhost/npd:0.1.0", Some(&caps)).unwrap();
        let text = fs::read_to_string(overlay.join("kustomization.yaml")).unwrap();
        let up = "../".repeat(overlay.components().count() - 1);
        let relative = format!("  - {up}{}\n", deploy.strip_prefix("/").unwrap().display());
        assert!(text.contains(&relative), "{text}");
        assert!(
            text.contains(
                "  - name: ghcr.io/x/npd\n    newName: localhost/npd\n    newTag: \"0.1.0\"\n"
            ),
            "{text}"
        );
        assert!(text.contains("add: [\"BPF\",\"PERFMON\"]"), "{text}");
    }

    #[test]
    fn cgroups_are_listed_deepest_first() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("kubepods/burstable/pod1/c1");
        fs::create_dir_all(&deep).unwrap();
        let listed = cgroups_below(&dir.path().join("kubepods"));
        assert_eq!(listed.first(), Some(&deep));
        assert_eq!(listed.last(), Some(&dir.path().join("kubepods")));
    }
}
