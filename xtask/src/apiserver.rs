//! A real kube-apiserver (with etcd) for npd's cluster tests, never a fake: kube-apiserver
//! v1.20.2 built from Debian bookworm's own `kubernetes` source package with Debian's Go 1.19,
//! and Debian's etcd-server (recipe: shared/notes/REAL-APISERVER.md).
//!
//! Everything fetched or built lives in `<repo>/.npd-cache/apiserver/`, including Go's build
//! cache. A build is keyed by the source version and a hash of the patch set, so changing
//! either builds again (quickly: `-trimpath` lets Go reuse its cache across build trees).

use std::{
    fs::{self, File},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use npd_tests::cluster::{ClusterBinaries, TestCluster};

use crate::{
    prereqs::install_missing,
    util::{self, output, sh_narrating, step},
};

/// The Debian source package the recipe was verified with. Only its orig tarball (the
/// upstream tree with its dependencies vendored) is used, pinned by version and hash; Debian's
/// revisions of the package change debian/ only, which this build does not apply.
const SOURCE_PACKAGE: &str = "kubernetes";
const ORIG_VERSION: &str = "1.20.5+really1.20.2";
const ORIG_SHA256: &str = "b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc";
/// The upstream release inside it: the name of its tree and the version the binary reports.
const UPSTREAM_VERSION: &str = "1.20.2";
const UPSTREAM_MAJOR: &str = "1";
const UPSTREAM_MINOR: &str = "20";

/// Bumped when the build steps change in a way the recipe text below does not capture.
const RECIPE_REVISION: u32 = 1;

/// Debian packages the build and the test clusters need.
const APT_PACKAGES: [&str; 4] = [
    "golang-go",
    "golang-github-modern-go-reflect2-dev",
    "etcd-server",
    "openssl",
];
const REFLECT2_PACKAGE: &str = "golang-github-modern-go-reflect2-dev";
/// Debian's Go, by path: a newer Go elsewhere on PATH would break the vendored dependencies.
const GO: &str = "/usr/bin/go";
const ETCD: &str = "/usr/bin/etcd";

/// The vendored reflect2 (v1.0.1) segfaults on Go >= 1.18; Debian's packaged copy does not.
const REFLECT2_DEBIAN_COPY: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";
const REFLECT2_VENDORED: &str = "vendor/github.com/modern-go/reflect2";

/// A one-line change to the upstream tree.
#[derive(Debug)]
struct SourceEdit {
    file: &'static str,
    find: &'static str,
    replace: &'static str,
}

/// 1.20 accepts an events.k8s.io/v1 Event about a cluster-scoped object (a Node) only in
/// `kube-system`; newer servers (1.22 on) also accept `default`, where the kubelet and
/// node-problem-detector put Node events. This gives 1.20 the newer rule, so that tests see
/// what a current cluster does.
const SOURCE_EDITS: &[SourceEdit] = &[SourceEdit {
    file: "pkg/apis/core/validation/events.go",
    find: "len(event.InvolvedObject.Namespace) == 0 && event.Namespace != metav1.NamespaceSystem {",
    replace: "len(event.InvolvedObject.Namespace) == 0 && event.Namespace != metav1.NamespaceDefault \
              && event.Namespace != metav1.NamespaceSystem {",
}];

/// The Go import path of the tree (GOPATH mode: vendored packages live below it).
const GO_PACKAGE: &str = "k8s.io/kubernetes";
/// Packages whose version variables `kube-apiserver --version` and `/version` report.
const VERSION_PACKAGES: [&str; 2] = [
    "k8s.io/kubernetes/vendor/k8s.io/component-base/version",
    "k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version",
];
/// Staging modules that carry `+k8s:openapi-gen=` tags but are not part of the server's API.
const OPENAPI_EXCLUDED: [&str; 2] = [
    "staging/src/k8s.io/code-generator",
    "staging/src/k8s.io/sample-apiserver",
];

#[derive(Debug, Args)]
pub(crate) struct ApiserverArgs {
    #[command(subcommand)]
    command: ApiserverCommand,
}

#[derive(Debug, Subcommand)]
enum ApiserverCommand {
    /// Build kube-apiserver from Debian's source package (cached: quick once built),
    /// installing the Debian packages it needs first.
    Build,
    /// Build if needed, then run etcd and kube-apiserver on free loopback ports until Ctrl-C.
    Start,
}

/// The API server's program, built from `./cmd/kube-apiserver` like the others.
const APISERVER: &str = "kube-apiserver";
/// What a one-node cluster adds to the API server, built from the same tree: the
/// controller-manager creates a DaemonSet's pods, the scheduler places them (1.20 schedules
/// DaemonSet pods like any other), the kubelet runs them.
pub(crate) const NODE_COMPONENTS: [&str; 3] =
    ["kube-controller-manager", "kube-scheduler", "kubelet"];

/// Where the control-plane binaries are.
#[derive(Debug)]
pub(crate) struct ApiserverBins {
    pub(crate) kube_apiserver: PathBuf,
    pub(crate) etcd: PathBuf,
    /// Every program built from the tree is here, by its upstream name.
    pub(crate) bin_dir: PathBuf,
}

impl ApiserverBins {
    /// A program built from the tree (one of [`NODE_COMPONENTS`] after [`ensure_node_built`]).
    pub(crate) fn component(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

pub(crate) fn run(args: &ApiserverArgs) -> anyhow::Result<()> {
    match args.command {
        ApiserverCommand::Build => {
            let bins = ensure_built()?;
            // On stdout, for `eval "$(cargo xtask apiserver build)"` before a bare `cargo test`.
            println!(
                "export NPD_KUBE_APISERVER='{}'",
                bins.kube_apiserver.display()
            );
            println!("export NPD_ETCD='{}'", bins.etcd.display());
            Ok(())
        }
        ApiserverCommand::Start => start(),
    }
}

/// Builds kube-apiserver unless the cache already holds this exact build, and returns the
/// paths of it and of etcd.
pub(crate) fn ensure_built() -> anyhow::Result<ApiserverBins> {
    ensure_components(&[APISERVER])
}

/// [`ensure_built`], and the node's programs too (each about 3 minutes cold on 2 cores, well
/// under one with Go's cache warm from the API server's build).
pub(crate) fn ensure_node_built() -> anyhow::Result<ApiserverBins> {
    let mut components = vec![APISERVER];
    components.extend(NODE_COMPONENTS);
    ensure_components(&components)
}

fn ensure_components(components: &[&str]) -> anyhow::Result<ApiserverBins> {
    let started = Instant::now();
    ensure_packages()?;
    let cache = cache_dir()?;
    let _lock = lock(&cache)?;
    let recipe = Recipe::read()?;
    let build = cache.join("builds").join(recipe.key());
    let bin_dir = build.join("bin");
    let bins = ApiserverBins {
        kube_apiserver: bin_dir.join(APISERVER),
        etcd: PathBuf::from(ETCD),
        bin_dir: bin_dir.clone(),
    };
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|name| !bin_dir.join(name).is_file())
        .collect();
    if missing.is_empty() {
        step(format!(
            "Kubernetes {UPSTREAM_VERSION} ({}) is cached in {}",
            components.join(", "),
            bin_dir.display()
        ));
        return Ok(bins);
    }
    let go_cache = cache.join("go-build");
    let expected = if go_cache.is_dir() {
        "with Go's cache warm: about a minute each"
    } else {
        "cold: about 5 minutes on 2 cores, 1.3 GB of RAM"
    };
    step(format!(
        "building {} {UPSTREAM_VERSION} from Debian's `{SOURCE_PACKAGE}` source \
         package (orig {ORIG_VERSION}) into {} ({expected})",
        missing.join(", "),
        build.display()
    ));
    let tarball = fetch_source(&cache)?;
    let tree = unpack_and_patch(&tarball, &build)?;
    fs::write(build.join("recipe.txt"), &recipe.text)?;
    let go = GoBuild {
        gopath: build.join("gopath"),
        go_cache,
        tree,
    };
    generate_openapi(&go, &build)?;
    for name in &missing {
        compile(&go, &recipe, name, &bin_dir.join(name))?;
    }
    prune_other_builds(&build)?;
    step(format!(
        "built {} in {:.0?}",
        missing.join(", "),
        started.elapsed()
    ));
    Ok(bins)
}

/// `<repo>/.npd-cache/apiserver`, without symlinks: Go's GOPATH mode needs the real path.
fn cache_dir() -> anyhow::Result<PathBuf> {
    Ok(fs::canonicalize(util::cache_dir("apiserver")?)?)
}

/// Serializes builds in one checkout: two at once would trample each other's partial files.
fn lock(cache: &Path) -> anyhow::Result<File> {
    let file = File::create(cache.join(".lock"))?;
    if file.try_lock().is_err() {
        step("another apiserver build is running in this checkout: waiting for it");
        file.lock()?;
    }
    Ok(file)
}

/// Whether Debian's `package` is installed (dpkg's own word).
pub(crate) fn is_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.trim() == "install ok installed")
}

fn ensure_packages() -> anyhow::Result<()> {
    let missing: Vec<String> = APT_PACKAGES
        .iter()
        .filter(|package| !is_installed(package))
        .map(|package| (*package).to_owned())
        .collect();
    install_missing(
        &missing,
        "Go 1.19 builds kube-apiserver, Debian's reflect2 replaces a vendored copy that crashes \
         on it, etcd stores the cluster, openssl makes its keys",
    )
}

/// Everything that decides what the build produces, and its key in the cache.
#[derive(Debug)]
struct Recipe {
    text: String,
    ldflags: String,
}

impl Recipe {
    fn read() -> anyhow::Result<Self> {
        let go_version = output(Command::new(GO).args(["env", "GOVERSION"]))?
            .trim()
            .to_owned();
        if !go_version.starts_with("go1.19") {
            step(format!(
                "warning: {GO} is {go_version}; the recipe was verified with Debian's Go 1.19"
            ));
        }
        let reflect2_version =
            output(Command::new("dpkg-query").args(["-W", "-f=${Version}", REFLECT2_PACKAGE]))?;
        let ldflags = ldflags();
        let text = format!(
            "source: {SOURCE_PACKAGE} orig {ORIG_VERSION} sha256 {ORIG_SHA256}\n\
             go: {go_version}\n\
             reflect2: {REFLECT2_PACKAGE} {reflect2_version}\n\
             edits: {SOURCE_EDITS:?}\n\
             openapi excluded: {OPENAPI_EXCLUDED:?}\n\
             ldflags: {ldflags}\n\
             revision: {RECIPE_REVISION}\n"
        );
        Ok(Self { text, ldflags })
    }

    fn key(&self) -> String {
        format!("{ORIG_VERSION}-{:016x}", fnv1a(self.text.as_bytes()))
    }
}

/// A stable hash (std's DefaultHasher may change between Rust releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn ldflags() -> String {
    // -s -w: no symbol table or DWARF; nobody debugs this binary.
    let mut flags = vec!["-s".to_owned(), "-w".to_owned()];
    for package in VERSION_PACKAGES {
        for (variable, value) in [
            ("gitVersion", format!("v{UPSTREAM_VERSION}").as_str()),
            ("gitMajor", UPSTREAM_MAJOR),
            ("gitMinor", UPSTREAM_MINOR),
            ("gitTreeState", "archive"),
        ] {
            flags.push(format!("-X {package}.{variable}={value}"));
        }
    }
    flags.join(" ")
}

/// The machine's own Debian entries turned into source entries, as (file name, contents):
/// apt reads a `.sources` file as deb822 and a `.list` file as one-line entries.
fn deb_src_entries() -> anyhow::Result<(&'static str, String)> {
    let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
    if let Ok(text) = fs::read_to_string(deb822) {
        let entries: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .map(|line| {
                if line.starts_with("Types:") {
                    "Types: deb-src"
                } else {
                    line
                }
            })
            .collect();
        return Ok(("deb-src.sources", entries.join("\n") + "\n"));
    }
    let one_line = Path::new("/etc/apt/sources.list");
    let text = fs::read_to_string(one_line).with_context(|| {
        format!(
            "neither {} nor {} exists: cannot tell where Debian's packages come from",
            deb822.display(),
            one_line.display()
        )
    })?;
    let entries: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("deb "))
        .map(|rest| format!("deb-src {rest}"))
        .collect();
    if entries.is_empty() {
        bail!("{} has no `deb` entries", one_line.display());
    }
    Ok(("deb-src.list", entries.join("\n") + "\n"))
}

/// Downloads the source package with apt's ordinary client, configured to use private
/// state so /etc and the system's package lists are left alone. Returns the orig tarball.
fn fetch_source(cache: &Path) -> anyhow::Result<PathBuf> {
    let orig_name = format!("{SOURCE_PACKAGE}_{ORIG_VERSION}.orig.tar.gz");
    let source_dir = cache.join("source").join(ORIG_VERSION);
    let tarball = source_dir.join(&orig_name);
    if tarball.is_file() {
        return Ok(tarball);
    }
    step(format!(
        "downloading the `{SOURCE_PACKAGE}` source package with apt-get, using private \
         package lists (the machine's Debian entries as deb-src)"
    ));
    let apt = cache.join("apt");
    let (list_name, entries) = deb_src_entries()?;
    let sources = apt.join(list_name);
    let lists = apt.join("lists");
    let apt_cache = apt.join("cache");
    for dir in [lists.join("partial"), apt_cache.join("archives/partial")] {
        fs::create_dir_all(&dir)?;
    }
    fs::write(&sources, entries)?;
    let apt_get = || {
        let mut cmd = Command::new("apt-get");
        cmd.arg("-q")
            // apt would fall back to root anyway (its `_apt` user cannot write to the
            // cache), with a warning that suggests something is wrong.
            .args(["-o", "APT::Sandbox::User=root"])
            .arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", sources.display()))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", lists.display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt_cache.display()));
        cmd
    };
    sh_narrating(apt_get().arg("update"))?;
    let partial = cache.join("source/partial");
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(&partial)?;
    sh_narrating(apt_get().current_dir(&partial).args([
        "source",
        "--download-only",
        SOURCE_PACKAGE,
    ]))?;
    let downloaded = partial.join(&orig_name);
    if !downloaded.is_file() {
        let names: Vec<String> = fs::read_dir(&partial)?
            .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        bail!(
            "Debian's `{SOURCE_PACKAGE}` source package no longer has {orig_name} (it has {}): \
             ORIG_VERSION and ORIG_SHA256 in xtask/src/apiserver.rs, and the recipe, need \
             checking against the new version",
            names.join(", ")
        );
    }
    let sha256 = output(Command::new("sha256sum").arg(&downloaded))?;
    if sha256.split_whitespace().next() != Some(ORIG_SHA256) {
        bail!("{orig_name} has sha256 {sha256}, not the pinned {ORIG_SHA256}");
    }
    fs::create_dir_all(&source_dir)?;
    fs::rename(&downloaded, &tarball)?;
    fs::remove_dir_all(&partial)?;
    Ok(tarball)
}

/// Unpacks the upstream tree to `<build>/gopath/src/k8s.io/kubernetes` (a real directory, no
/// symlink, so that GOPATH mode resolves it) and applies the patch set, all or nothing.
fn unpack_and_patch(tarball: &Path, build: &Path) -> anyhow::Result<PathBuf> {
    let tree = build.join("gopath/src").join(GO_PACKAGE);
    if tree.is_dir() {
        return Ok(tree);
    }
    step("unpacking and patching the source tree");
    let partial = build.join("unpack.partial");
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(&partial)?;
    sh_narrating(
        Command::new("tar")
            .arg("-xzf")
            .arg(tarball)
            .arg("-C")
            .arg(&partial),
    )?;
    let unpacked = partial.join(format!("{SOURCE_PACKAGE}-{UPSTREAM_VERSION}"));
    if !unpacked.is_dir() {
        bail!(
            "{} did not unpack to {}",
            tarball.display(),
            unpacked.display()
        );
    }
    replace_reflect2(&unpacked)?;
    for edit in SOURCE_EDITS {
        apply_edit(&unpacked, edit)?;
    }
    fs::create_dir_all(tree.parent().context("the tree has a parent")?)?;
    fs::rename(&unpacked, &tree)?;
    fs::remove_dir_all(&partial)?;
    Ok(tree)
}

fn replace_reflect2(tree: &Path) -> anyhow::Result<()> {
    step(format!(
        "replacing the vendored reflect2 with Debian's ({REFLECT2_DEBIAN_COPY})"
    ));
    let vendored = tree.join(REFLECT2_VENDORED);
    fs::remove_dir_all(&vendored)
        .with_context(|| format!("the tree has no {}", vendored.display()))?;
    sh_narrating(
        Command::new("cp")
            .arg("-rL")
            .arg(REFLECT2_DEBIAN_COPY)
            .arg(&vendored),
    )?;
    // A go.mod would make it a module of its own; tests are not built.
    for entry in fs::read_dir(&vendored)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name == "go.mod" || name == "go.sum" || name.ends_with("_test.go") {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn apply_edit(tree: &Path, edit: &SourceEdit) -> anyhow::Result<()> {
    let path = tree.join(edit.file);
    let text = fs::read_to_string(&path)?;
    if text.matches(edit.find).count() != 1 {
        bail!(
            "{} does not contain `{}` exactly once: the patch set no longer fits the source",
            path.display(),
            edit.find
        );
    }
    step(format!("patching {}", edit.file));
    fs::write(&path, text.replacen(edit.find, edit.replace, 1))?;
    Ok(())
}

/// How to run Debian's Go on the tree in GOPATH mode.
#[derive(Debug)]
struct GoBuild {
    gopath: PathBuf,
    go_cache: PathBuf,
    tree: PathBuf,
}

impl GoBuild {
    fn go(&self) -> Command {
        let mut cmd = Command::new(GO);
        cmd.current_dir(&self.tree)
            .env("GOPATH", &self.gopath)
            .env("GOCACHE", &self.go_cache)
            .env("GO111MODULE", "off")
            .env("CGO_ENABLED", "0")
            // No user go env file, flags or network: the build is the recipe alone.
            .env("GOENV", "off")
            .env("GOFLAGS", "")
            .env("GOPROXY", "off")
            .env("PWD", &self.tree);
        cmd
    }
}

/// kube-apiserver serves OpenAPI definitions that upstream generates at build time.
fn generate_openapi(go: &GoBuild, build: &Path) -> anyhow::Result<()> {
    let done = build.join("openapi.done");
    if done.is_file() {
        return Ok(());
    }
    let started = Instant::now();
    step("building openapi-gen");
    let openapi_gen = build.join("bin/openapi-gen");
    sh_narrating(
        go.go()
            .args(["build", "-trimpath", "-o"])
            .arg(&openapi_gen)
            .arg("./vendor/k8s.io/kube-openapi/cmd/openapi-gen"),
    )?;
    let inputs = openapi_input_packages(&go.tree)?;
    // A -trimpath binary does not know GOROOT, and without the standard library every type
    // built on it (metav1.Duration) comes out "invalid".
    let goroot = output(go.go().args(["env", "GOROOT"]))?;
    step(format!(
        "generating pkg/generated/openapi from {} tagged packages",
        inputs.len()
    ));
    sh_narrating(
        Command::new(&openapi_gen)
            .current_dir(&go.tree)
            .env("GOROOT", goroot.trim())
            .env("GOPATH", &go.gopath)
            .env("GO111MODULE", "off")
            .env("PWD", &go.tree)
            .arg("--input-dirs")
            .arg(inputs.join(","))
            .args([
                "--output-package",
                "k8s.io/kubernetes/pkg/generated/openapi",
            ])
            .args(["--output-file-base", "zz_generated.openapi"])
            .args([
                "--go-header-file",
                "vendor/k8s.io/code-generator/hack/boilerplate.go.txt",
            ])
            .arg("--output-base")
            .arg(go.gopath.join("src"))
            // API rule violations are upstream's to fix; keep them out of the way.
            .arg("--report-filename")
            .arg(build.join("openapi-api-violations.txt")),
    )?;
    fs::write(&done, "")?;
    step(format!(
        "OpenAPI definitions generated in {:.0?}",
        started.elapsed()
    ));
    Ok(())
}

/// Every package (as a Go import path) in the tree, outside vendor/ and tests, whose sources
/// ask for OpenAPI definitions; staging modules are reached through vendor/ in GOPATH mode.
fn openapi_input_packages(tree: &Path) -> anyhow::Result<Vec<String>> {
    let mut packages = Vec::new();
    let mut pending = vec![tree.to_owned()];
    while let Some(dir) = pending.pop() {
        let relative = dir.strip_prefix(tree)?.to_string_lossy().into_owned();
        if OPENAPI_EXCLUDED.contains(&relative.as_str()) {
            continue;
        }
        let mut tagged = false;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Symlinks are skipped: vendor/k8s.io/* point back into staging/.
            let kind = entry.file_type()?;
            if kind.is_dir() {
                let hidden = name.starts_with('.') || name.starts_with('_');
                let top_vendor = relative.is_empty() && name == "vendor";
                if !hidden && !top_vendor {
                    pending.push(entry.path());
                }
            } else if kind.is_file()
                && !tagged
                && name.ends_with(".go")
                && !name.ends_with("_test.go")
            {
                tagged = fs::read_to_string(entry.path())?.contains("+k8s:openapi-gen=");
            }
        }
        if tagged {
            let package = match relative.strip_prefix("staging/src/") {
                Some(staged) => format!("{GO_PACKAGE}/vendor/{staged}"),
                None => format!("{GO_PACKAGE}/{relative}"),
            };
            packages.push(package);
        }
    }
    packages.sort();
    Ok(packages)
}

/// Compiles `./cmd/<name>`. `go build -v` names each package as it compiles it: count them
/// as progress and pass everything else (errors) through.
fn compile(go: &GoBuild, recipe: &Recipe, name: &str, binary: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    step(format!("compiling {name} (progress every 15 s)"));
    let partial = binary.with_extension("partial");
    let mut cmd = go.go();
    cmd.args([
        "build",
        "-v",
        "-trimpath",
        "-ldflags",
        &recipe.ldflags,
        "-o",
    ])
    .arg(&partial)
    .arg(format!("./cmd/{name}"))
    .stdout(Stdio::inherit())
    .stderr(Stdio::piped());
    eprintln!(
        "  $ go build -v -trimpath -ldflags '{}' -o {} ./cmd/{name}  (in {})",
        recipe.ldflags,
        partial.display(),
        go.tree.display()
    );
    let mut child = cmd.spawn().context("cannot start go")?;
    let stderr = child.stderr.take().context("go's stderr is piped")?;
    let mut compiled = 0_usize;
    let mut last_report = Instant::now();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        let is_package = !line.is_empty() && !line.contains(char::is_whitespace);
        if !is_package {
            eprintln!("  {line}");
            continue;
        }
        compiled += 1;
        if last_report.elapsed() >= Duration::from_secs(15) {
            step(format!(
                "  {compiled} packages compiled, {:.0?} so far (now {line})",
                started.elapsed()
            ));
            last_report = Instant::now();
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("compiling {name} failed ({status}); the errors are above");
    }
    fs::rename(&partial, binary)?;
    step(format!(
        "compiled {name} ({compiled} packages) in {:.0?}",
        started.elapsed()
    ));
    Ok(())
}

/// Each build tree is about a gigabyte; only the current one is worth keeping.
fn prune_other_builds(current: &Path) -> anyhow::Result<()> {
    let builds = current.parent().context("a build has a parent")?;
    for entry in fs::read_dir(builds)? {
        let path = entry?.path();
        if path != current && path.is_dir() {
            step(format!("removing an outdated build: {}", path.display()));
            fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

/// A cluster for manual use: the same one the tests get, until Ctrl-C.
fn start() -> anyhow::Result<()> {
    let bins = ensure_built()?;
    // Blocked before the children start so that a Ctrl-C waits for sigwait below; the
    // children start with a clean signal mask (std resets it).
    let stop_signals = StopSignals::block()?;
    step("starting etcd and kube-apiserver on free loopback ports");
    let started = Instant::now();
    let cluster = TestCluster::start_with(&ClusterBinaries {
        kube_apiserver: bins.kube_apiserver,
        etcd: bins.etcd,
    })?;
    step(format!("ready in {:.1?}", started.elapsed()));
    println!("server:            {}", cluster.server_url());
    println!(
        "admin kubeconfig:  {}",
        cluster.admin_kubeconfig().display()
    );
    println!(
        "user kubeconfig:   {} (user `{}`, no groups, no roles)",
        cluster.user_kubeconfig().display(),
        npd_tests::cluster::UNPRIVILEGED_USER
    );
    println!("logs:              {}", cluster.dir().display());
    println!(
        "try:               KUBECONFIG={} kubectl get --raw /version",
        cluster.admin_kubeconfig().display()
    );
    step("running until Ctrl-C");
    let signal = stop_signals.wait()?;
    step(format!("signal {signal}: stopping kube-apiserver and etcd"));
    cluster.stop()
}

/// SIGINT and SIGTERM, blocked so that they can be waited for.
#[derive(Debug)]
pub(crate) struct StopSignals {
    set: libc::sigset_t,
}

impl StopSignals {
    pub(crate) fn block() -> anyhow::Result<Self> {
        // SAFETY: an all-zero sigset_t is valid storage; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t for each call.
        let status = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
        };
        if status != 0 {
            bail!("cannot block SIGINT and SIGTERM (error {status})");
        }
        Ok(Self { set })
    }

    pub(crate) fn wait(&self) -> anyhow::Result<i32> {
        let mut signal = 0;
        // SAFETY: `self.set` was initialised by `block`; `signal` is a valid out-pointer.
        let status = unsafe { libc::sigwait(&self.set, &mut signal) };
        if status != 0 {
            bail!("sigwait failed (error {status})");
        }
        Ok(signal)
    }
}
