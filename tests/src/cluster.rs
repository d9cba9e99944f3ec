//! A real Kubernetes control plane for tests: etcd and kube-apiserver as child processes on
//! free loopback ports, with an admin user and an unprivileged one. The binaries come from
//! `cargo xtask test` (`NPD_KUBE_APISERVER`, `NPD_ETCD`), which builds kube-apiserver from
//! Debian's source package; there is deliberately no fallback to a fake server.
//!
//! Only the API server runs (no kubelet, scheduler or controllers): objects are stored,
//! validated, patched and authorized exactly as in a cluster, but nothing acts on them.

use std::{
    env, fmt,
    fs::{self, File},
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tempfile::TempDir;

/// Path of the kube-apiserver binary, set by `cargo xtask test`.
pub const KUBE_APISERVER_ENV: &str = "NPD_KUBE_APISERVER";
/// Path of the etcd binary, set by `cargo xtask test`.
pub const ETCD_ENV: &str = "NPD_ETCD";
/// The admin: member of `system:masters`, allowed everything.
pub const ADMIN_USER: &str = "npd-admin";
/// A user with no groups and no roles, for proving what RBAC rules grant.
pub const UNPRIVILEGED_USER: &str = "npd-agent-test";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a component may take to exit on SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
const LOG_TAIL_LINES: usize = 30;
/// A port picked free may be taken again before etcd or the apiserver binds it.
const START_ATTEMPTS: usize = 3;
/// Service ClusterIPs; the first is the `kubernetes` Service's.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// The control-plane binaries a [`TestCluster`] runs.
#[derive(Debug, Clone)]
pub struct ClusterBinaries {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
}

impl ClusterBinaries {
    /// From `NPD_KUBE_APISERVER` and `NPD_ETCD`, failing with directions when they are unset
    /// (a test that needs a cluster must fail without one, never pass quietly).
    pub fn from_env() -> anyhow::Result<Self> {
        let missing = format!(
            "The cluster tests run a real kube-apiserver and etcd, which `cargo xtask test` \
             builds and passes in {KUBE_APISERVER_ENV} and {ETCD_ENV}: run the tests through \
             `cargo xtask test` (or set both with `eval \"$(cargo xtask apiserver build)\"`)"
        );
        Ok(Self {
            kube_apiserver: binary_from_env(KUBE_APISERVER_ENV, &missing)?,
            etcd: binary_from_env(ETCD_ENV, &missing)?,
        })
    }
}

/// How a [`TestCluster`] is set up beyond the defaults every test shares.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Where the apiserver listens and what it advertises (the `kubernetes` Service's
    /// endpoint). Loopback unless pods must reach it.
    pub address: Ipv4Addr,
    /// Pods get service-account tokens (the admission plugin on; a controller-manager given
    /// [`TestCluster::service_account_key`] mints them). Off when no controller runs.
    pub service_account_tokens: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            address: Ipv4Addr::LOCALHOST,
            service_account_tokens: false,
        }
    }
}

/// The program whose path `var` holds, failing with `missing` (what sets it) when it is
/// unset, and when it names no file.
pub(crate) fn binary_from_env(var: &str, missing: &str) -> anyhow::Result<PathBuf> {
    let path = env::var_os(var)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .with_context(|| format!("{var} is not set. {missing}"))?;
    if !path.is_file() {
        bail!("{var}={} is not a file", path.display());
    }
    Ok(path)
}

/// A running etcd + kube-apiserver pair, stopped (and its directory removed) by
/// [`TestCluster::stop`] or on drop.
pub struct TestCluster {
    dir: Option<TempDir>,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    /// How the apiserver was started, to start it again after [`TestCluster::stop_apiserver`].
    apiserver_command: Vec<std::ffi::OsString>,
    server_url: String,
    admin_token: String,
    paths: ClusterPaths,
    service_account_key: PathBuf,
}

/// Files inside the cluster's temporary directory.
#[derive(Debug, Clone)]
struct ClusterPaths {
    ca: PathBuf,
    admin_kubeconfig: PathBuf,
    user_kubeconfig: PathBuf,
    kubectl_cache: PathBuf,
    etcd_log: PathBuf,
    apiserver_log: PathBuf,
}

impl ClusterPaths {
    fn new(dir: &Path) -> Self {
        Self {
            // The apiserver writes its self-signed serving certificate (with the CA that
            // signed it) here when it starts.
            ca: dir.join("certs/apiserver.crt"),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            user_kubeconfig: dir.join(format!("{UNPRIVILEGED_USER}.kubeconfig")),
            kubectl_cache: dir.join("kubectl-cache"),
            etcd_log: dir.join("etcd.log"),
            apiserver_log: dir.join("kube-apiserver.log"),
        }
    }
}

impl fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCluster")
            .field("server_url", &self.server_url)
            .field("dir", &self.dir.as_ref().map(TempDir::path))
            .field("etcd_pid", &self.etcd.as_ref().map(Child::id))
            .field("apiserver_pid", &self.apiserver.as_ref().map(Child::id))
            .finish_non_exhaustive()
    }
}

impl TestCluster {
    /// Starts a cluster with the binaries `cargo xtask test` passes in the environment.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&ClusterBinaries::from_env()?)
    }

    /// Starts a cluster and waits until the apiserver reports ready (5-10 s).
    pub fn start_with(binaries: &ClusterBinaries) -> anyhow::Result<Self> {
        Self::start_with_options(binaries, &ClusterOptions::default())
    }

    /// [`TestCluster::start_with`], set up as `options` says.
    pub fn start_with_options(
        binaries: &ClusterBinaries,
        options: &ClusterOptions,
    ) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::try_start(binaries, options) {
                Err(error)
                    if attempt < START_ATTEMPTS
                        && format!("{error:#}").contains("address already in use") =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn try_start(binaries: &ClusterBinaries, options: &ClusterOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("npd-cluster-")
            .tempdir()
            .context("cannot create the cluster's temporary directory")?;
        let root = dir.path().to_owned();
        let paths = ClusterPaths::new(&root);
        let [etcd_client_port, etcd_peer_port, apiserver_port] = free_ports()?;
        let address = options.address;
        let server_url = format!("https://{address}:{apiserver_port}");
        let admin_token = random_token()?;
        let user_token = random_token()?;

        let tokens = root.join("tokens.csv");
        fs::write(
            &tokens,
            format!(
                "{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n\
                 {user_token},{UNPRIVILEGED_USER},{UNPRIVILEGED_USER}\n"
            ),
        )?;
        let service_account_key = root.join("sa.key");
        let service_account_pub = root.join("sa.pub");
        openssl(&[
            "genrsa".as_ref(),
            "-out".as_ref(),
            service_account_key.as_os_str(),
            "2048".as_ref(),
        ])?;
        openssl(&[
            "rsa".as_ref(),
            "-in".as_ref(),
            service_account_key.as_os_str(),
            "-pubout".as_ref(),
            "-out".as_ref(),
            service_account_pub.as_os_str(),
        ])?;
        write_kubeconfig(
            &paths.admin_kubeconfig,
            &server_url,
            &paths.ca,
            ADMIN_USER,
            &admin_token,
        )?;
        write_kubeconfig(
            &paths.user_kubeconfig,
            &server_url,
            &paths.ca,
            UNPRIVILEGED_USER,
            &user_token,
        )?;

        // From here on, dropping `cluster` stops whatever has started.
        let mut cluster = Self {
            dir: Some(dir),
            etcd: None,
            apiserver: None,
            apiserver_command: Vec::new(),
            server_url,
            admin_token,
            paths,
            service_account_key: service_account_key.clone(),
        };

        let etcd_client_url = format!("http://127.0.0.1:{etcd_client_port}");
        let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let mut etcd = Command::new(&binaries.etcd);
        etcd.arg("--name=npd-test")
            .arg(format!("--data-dir={}", root.join("etcd-data").display()))
            .arg(format!("--listen-client-urls={etcd_client_url}"))
            .arg(format!("--advertise-client-urls={etcd_client_url}"))
            .arg(format!("--listen-peer-urls={etcd_peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={etcd_peer_url}"))
            .arg(format!("--initial-cluster=npd-test={etcd_peer_url}"));
        cluster.etcd = Some(spawn_logged(&mut etcd, &cluster.paths.etcd_log)?);
        cluster.wait_for_etcd(etcd_client_port)?;

        let mut apiserver = Command::new(&binaries.kube_apiserver);
        apiserver
            .arg(format!("--etcd-servers={etcd_client_url}"))
            .arg(format!("--secure-port={apiserver_port}"))
            .arg(format!("--bind-address={address}"))
            .arg(format!("--advertise-address={address}"))
            .arg(format!("--cert-dir={}", root.join("certs").display()))
            .arg(format!("--token-auth-file={}", tokens.display()))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                service_account_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                service_account_key.display()
            ))
            // No kube-proxy runs: routed, if at all, by the test node's stand-in.
            .arg(format!(
                "--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"
            ))
            .arg("--allow-privileged=true")
            // `kubectl logs` reaches a test node's kubelet by address: nothing resolves names.
            .arg("--kubelet-preferred-address-types=InternalIP");
        if !options.service_account_tokens {
            // It would demand service-account tokens that no controller creates.
            apiserver.arg("--disable-admission-plugins=ServiceAccount");
        }
        cluster.apiserver_command = std::iter::once(apiserver.get_program())
            .chain(apiserver.get_args())
            .map(ToOwned::to_owned)
            .collect();
        cluster.apiserver = Some(spawn_logged(&mut apiserver, &cluster.paths.apiserver_log)?);
        cluster.wait_until_ready()?;
        Ok(cluster)
    }

    /// Stops only kube-apiserver (etcd and the data stay), as in an API-server outage.
    pub fn stop_apiserver(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.apiserver.take() {
            stop_child(child, "kube-apiserver")?;
        }
        Ok(())
    }

    /// Starts kube-apiserver again, same ports and certificates, and waits until ready.
    pub fn start_apiserver(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.apiserver.is_none(),
            "kube-apiserver is already running"
        );
        let (program, args) = self
            .apiserver_command
            .split_first()
            .context("the apiserver was never started")?;
        let mut command = Command::new(program);
        command.args(args);
        let log = self.paths.apiserver_log.with_extension("restarted.log");
        self.apiserver = Some(spawn_logged(&mut command, &log)?);
        self.wait_until_ready()
    }

    /// Freezes kube-apiserver (SIGSTOP) until the guard is dropped: the kernel still accepts
    /// connections, but nothing is answered, as with a hung or overloaded server.
    pub fn pause_apiserver(&self) -> anyhow::Result<PausedApiserver> {
        let pid = self
            .apiserver
            .as_ref()
            .context("kube-apiserver is not running")?
            .id();
        let pid = libc::pid_t::try_from(pid)?;
        // SAFETY: signals a child this harness started and has not reaped.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            bail!(
                "SIGSTOP kube-apiserver: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(PausedApiserver { pid })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The private key service-account tokens are signed with (for a controller-manager).
    pub fn service_account_key(&self) -> &Path {
        &self.service_account_key
    }

    /// The CA that signed the apiserver's serving certificate (PEM).
    pub fn ca_path(&self) -> &Path {
        &self.paths.ca
    }

    /// Bearer token of [`ADMIN_USER`] (group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A kubeconfig for [`ADMIN_USER`].
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.paths.admin_kubeconfig
    }

    /// A kubeconfig for [`UNPRIVILEGED_USER`], who may do nothing until a test binds a role.
    pub fn user_kubeconfig(&self) -> &Path {
        &self.paths.user_kubeconfig
    }

    /// The cluster's directory: kubeconfigs, keys and the logs of etcd and kube-apiserver.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or_else(|| Path::new(""), TempDir::path)
    }

    /// Process ids of etcd and kube-apiserver (while running).
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.etcd.as_ref().map(Child::id),
            self.apiserver.as_ref().map(Child::id),
        )
    }

    /// A kubectl command for the given kubeconfig, with its discovery cache inside the
    /// cluster's directory (not in ~/.kube, where it would outlive the cluster).
    pub fn kubectl_command(&self, kubeconfig: &Path) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(&self.paths.kubectl_cache);
        cmd
    }

    /// Runs kubectl as the admin and returns what it did; panics only if kubectl cannot run.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        run_kubectl(
            self.kubectl_command(self.admin_kubeconfig()).args(args),
            None,
        )
    }

    /// Runs kubectl as the admin with `input` on its stdin (e.g. `create -f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: &str) -> Output {
        run_kubectl(
            self.kubectl_command(self.admin_kubeconfig()).args(args),
            Some(input),
        )
    }

    /// Runs kubectl as [`UNPRIVILEGED_USER`].
    pub fn kubectl_as_user(&self, args: &[&str]) -> Output {
        run_kubectl(
            self.kubectl_command(self.user_kubeconfig()).args(args),
            None,
        )
    }

    /// Stops kube-apiserver, then etcd (SIGTERM, SIGKILL after a grace period), waits for
    /// both and removes the cluster's directory.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        // The apiserver first: etcd leaving under it only makes it log errors.
        let apiserver = self
            .apiserver
            .take()
            .map(|child| stop_child(child, "kube-apiserver"));
        let etcd = self.etcd.take().map(|child| stop_child(child, "etcd"));
        let dir = self.dir.take().map(TempDir::close);
        for result in [apiserver, etcd].into_iter().flatten() {
            result?;
        }
        if let Some(result) = dir {
            result.context("cannot remove the cluster's directory")?;
        }
        Ok(())
    }

    fn wait_for_etcd(&mut self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            self.check_running()?;
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not listen on 127.0.0.1:{port} within {STARTUP_TIMEOUT:?}\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut last_answer = String::from("the apiserver has not written its certificate yet");
        loop {
            self.check_running()?;
            if self.paths.ca.is_file() {
                let readyz = self
                    .kubectl_command(self.admin_kubeconfig())
                    .args(["get", "--raw", "/readyz", "--request-timeout=5s"])
                    .output()
                    .context("cannot run kubectl (it polls the apiserver's /readyz)")?;
                if readyz.status.success() {
                    return Ok(());
                }
                last_answer = format!(
                    "{}{}",
                    String::from_utf8_lossy(&readyz.stdout),
                    String::from_utf8_lossy(&readyz.stderr)
                )
                .trim()
                .to_owned();
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver was not ready within {STARTUP_TIMEOUT:?}; /readyz last \
                     said: {last_answer}\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Fails, with the logs, if etcd or the apiserver has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        self.exited_component()
            .map_err(|error| anyhow::anyhow!("{error:#}\n{}", self.logs()))
    }

    fn exited_component(&mut self) -> anyhow::Result<()> {
        for (name, child) in [
            ("etcd", &mut self.etcd),
            ("kube-apiserver", &mut self.apiserver),
        ] {
            if let Some(child) = child
                && let Some(status) = child.try_wait()?
            {
                return Err(anyhow::anyhow!("{name} exited during startup ({status})"));
            }
        }
        Ok(())
    }

    fn logs(&self) -> String {
        format!(
            "--- last lines of {} ---\n{}\n--- last lines of {} ---\n{}",
            self.paths.etcd_log.display(),
            log_tail(&self.paths.etcd_log),
            self.paths.apiserver_log.display(),
            log_tail(&self.paths.apiserver_log)
        )
    }
}

/// A frozen kube-apiserver; dropping the guard lets it run again (also when a test fails).
#[derive(Debug)]
pub struct PausedApiserver {
    pid: libc::pid_t,
}

impl Drop for PausedApiserver {
    fn drop(&mut self) {
        // SAFETY: as in `pause_apiserver`; a stopped child is still unreaped.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            eprintln!("stopping the test cluster: {error:#}");
        }
    }
}

/// Ports the OS reports free, all distinct (each listener is held until all are picked).
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find a free loopback port")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0_u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn openssl(args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .context("cannot run openssl (it makes the service-account keys)")?;
    if !output.status.success() {
        bail!(
            "openssl {:?} failed ({}): {}",
            args,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    ca: &Path,
    user: &str,
    token: &str,
) -> anyhow::Result<()> {
    let config = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: npd-test\n  \
           cluster:\n    \
             server: {server_url}\n    \
             certificate-authority: {ca}\n\
         users:\n\
         - name: {user}\n  \
           user:\n    \
             token: {token}\n\
         contexts:\n\
         - name: {user}@npd-test\n  \
           context:\n    \
             cluster: npd-test\n    \
             user: {user}\n\
         current-context: {user}@npd-test\n",
        ca = ca.display()
    );
    fs::write(path, config).with_context(|| format!("cannot write {}", path.display()))
}

pub(crate) fn spawn_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("cannot start {program}"))
}

/// SIGTERM, then SIGKILL if it has not exited after [`STOP_GRACE`]; always reaped.
pub(crate) fn stop_child(mut child: Child, name: &str) -> anyhow::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // SAFETY: kill has no memory effects; `pid` is our unreaped child, so it names no other
    // process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("{name} (pid {pid}) ignored SIGTERM for {STOP_GRACE:?}: killing it");
    child.kill()?;
    Ok(child.wait()?)
}

fn run_kubectl(cmd: &mut Command, input: Option<&str>) -> Output {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run kubectl: {error}"));
    if let Some(input) = input
        && let Some(mut stdin) = child.stdin.take()
    {
        stdin
            .write_all(input.as_bytes())
            .unwrap_or_else(|error| panic!("cannot write kubectl's input: {error}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|error| panic!("kubectl did not finish: {error}"))
}

pub(crate) fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(error) => format!("(cannot read it: {error})"),
    }
}
