//! Debian packages fetched with apt's ordinary client and unpacked privately
//! (`apt-get download` + `dpkg -x`, nothing installed on the host): the kernel image, its
//! headers to build the test module, the modules the fsfreeze step needs, and the tools the
//! VM runs on (QEMU, busybox).

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::util::{self, output, sh, step};

/// The packages of one kernel at one version.
#[derive(Debug)]
pub(crate) struct Packages {
    pub(crate) image: String,
    pub(crate) version: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub(crate) release: String,
    /// Everything to download, as `name=version`.
    downloads: Vec<String>,
    /// The compiler the headers were made for (e.g. `gcc-12`), from linux-compiler-gcc-N-*.
    pub(crate) compiler: Option<String>,
}

/// A kernel unpacked in the cache.
#[derive(Debug)]
pub(crate) struct KernelTree {
    pub(crate) vmlinuz: PathBuf,
    pub(crate) headers: PathBuf,
    pub(crate) modules: PathBuf,
}

/// Does `name` match `pattern`, where each `*` stands for a version: digits and dots?
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            let run = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            (1..=run).any(|n| matches(tail, &rest[n..]))
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Chunk {
    Number(u64),
    Text(String),
}

/// Orders `6.1.0-9` before `6.1.0-56`.
fn natural_key(name: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut rest = name;
    while let Some(first) = rest.chars().next() {
        let digits = first.is_ascii_digit();
        let len = rest
            .find(|c: char| c.is_ascii_digit() != digits)
            .unwrap_or(rest.len());
        let (chunk, tail) = rest.split_at(len);
        chunks.push(match chunk.parse() {
            Ok(n) if digits => Chunk::Number(n),
            _ => Chunk::Text(chunk.to_owned()),
        });
        rest = tail;
    }
    chunks
}

fn apt_cache(args: &[&str]) -> anyhow::Result<String> {
    output(Command::new("apt-cache").args(args))
}

/// The newest package apt knows whose name matches `pattern`.
fn newest_matching(pattern: &str) -> anyhow::Result<Option<String>> {
    let prefix = pattern.split('*').next().unwrap_or(pattern);
    let names = apt_cache(&["pkgnames", prefix])?;
    Ok(names
        .lines()
        .map(str::trim)
        .filter(|name| matches(pattern, name))
        .max_by_key(|name| natural_key(name))
        .map(str::to_owned))
}

/// A field of `apt-cache show` output (the candidate version's stanza).
fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// `Depends:` as (package, version in its constraint), first alternatives only.
fn depends(stanza: &str) -> Vec<(String, Option<String>)> {
    field(stanza, "Depends")
        .unwrap_or_default()
        .split(',')
        .filter_map(|dep| {
            let first = dep.split('|').next()?.trim();
            let (name, constraint) = match first.split_once('(') {
                Some((name, constraint)) => (name.trim(), Some(constraint)),
                None => (first, None),
            };
            let version = constraint
                .and_then(|c| c.trim_end_matches(')').split_whitespace().nth(1))
                .map(str::to_owned);
            Some((name.to_owned(), version))
        })
        .collect()
}

/// The candidate version's `apt-cache show` stanza; refreshes the package lists once (as
/// root) when apt does not know the package, as on a machine that never ran `apt-get update`.
pub(crate) fn show(package: &str) -> anyhow::Result<String> {
    let show = || apt_cache(&["show", "--no-all-versions", package]);
    match show() {
        Ok(stanza) if !stanza.trim().is_empty() => Ok(stanza),
        _ if util::is_root() => {
            step(format!(
                "apt knows no {package}: refreshing the package lists"
            ));
            sh(Command::new("apt-get").args(["update", "-q"]))?;
            show().with_context(|| format!("apt knows no package {package}"))
        }
        result => result.with_context(|| {
            format!("apt knows no package {package} (run `apt-get update` as root)")
        }),
    }
}

/// The `Version:` of a stanza.
pub(crate) fn version(stanza: &str) -> anyhow::Result<String> {
    field(stanza, "Version")
        .map(str::to_owned)
        .context("`apt-cache show` printed no Version")
}

/// `Pre-Depends:` and `Depends:` as groups of alternatives (names only, `:any` dropped).
pub(crate) fn dependency_groups(stanza: &str) -> Vec<Vec<String>> {
    ["Pre-Depends", "Depends"]
        .iter()
        .filter_map(|name| field(stanza, name))
        .flat_map(|list| list.split(','))
        .map(|group| {
            group
                .split('|')
                .filter_map(|alternative| {
                    let name = alternative.split_whitespace().next()?;
                    Some(name.split(':').next().unwrap_or(name).to_owned())
                })
                .collect::<Vec<_>>()
        })
        .filter(|group| !group.is_empty())
        .collect()
}

/// Is `package` installed (and configured) on the host?
pub(crate) fn installed(package: &str) -> bool {
    // dpkg-query fails for packages it has never heard of; that is "not installed" too.
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", package])
        .output()
        .is_ok_and(|out| out.stdout.get(1) == Some(&b'i'))
}

/// A directory name for a version (`1:7.2+dfsg-7` -> `1_7.2+dfsg-7`).
pub(crate) fn version_dir(version: &str) -> String {
    version.replace([':', '~'], "_")
}

/// `apt-get download`s `packages` and unpacks them with `dpkg -x` into `root`, through
/// `scratch` (removed afterwards). Refreshes the package lists once (as root) if a download
/// fails, as it does when the lists are older than the archive.
pub(crate) fn download_and_unpack(
    packages: &[String],
    scratch: &Path,
    root: &Path,
) -> anyhow::Result<()> {
    let debs = scratch.join("debs");
    let download = || -> anyhow::Result<()> {
        if debs.exists() {
            fs::remove_dir_all(&debs)?;
        }
        fs::create_dir_all(&debs)?;
        let mut cmd = Command::new("apt-get");
        cmd.current_dir(&debs);
        if util::is_root() {
            // apt's _apt sandbox user cannot write into the cache; the download is the same.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        sh(cmd.arg("download").args(packages))
    };
    if let Err(err) = download() {
        if !util::is_root() {
            return Err(err);
        }
        step("the download failed: refreshing the package lists and trying again");
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        download()?;
    }
    fs::create_dir_all(root)?;
    let mut files: Vec<PathBuf> = fs::read_dir(&debs)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for deb in files {
        sh(Command::new("dpkg").arg("-x").arg(deb).arg(root))?;
    }
    fs::remove_dir_all(&debs)?;
    Ok(())
}

/// Finds the newest kernel image matching `pattern` and the packages its headers need.
pub(crate) fn resolve(pattern: &str) -> anyhow::Result<Packages> {
    let mut image = newest_matching(pattern)?;
    if image.is_none() && util::is_root() {
        step("apt knows no such kernel package: refreshing the package lists");
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        image = newest_matching(pattern)?;
    }
    let Some(image) = image else {
        bail!(
            "apt knows no package matching {pattern} (run `apt-get update`, or check that the \
             suite providing it is in the apt sources)"
        );
    };
    let stanza = show(&image)?;
    let version = field(&stanza, "Version")
        .with_context(|| format!("`apt-cache show {image}` printed no version"))?
        .to_owned();
    let release = image
        .strip_prefix("linux-image-")
        .context("a kernel image package is named linux-image-RELEASE")?
        .to_owned();
    let headers = format!("linux-headers-{release}");
    let headers_stanza = show(&headers)?;
    let mut downloads = vec![format!("{image}={version}"), format!("{headers}={version}")];
    let mut compiler = None;
    for (name, dep_version) in depends(&headers_stanza) {
        if name.starts_with("linux-headers-") || name.starts_with("linux-kbuild-") {
            downloads.push(match dep_version {
                Some(v) => format!("{name}={v}"),
                None => name,
            });
        } else if let Some(rest) = name.strip_prefix("linux-compiler-gcc-") {
            let major = rest.split('-').next().unwrap_or_default();
            compiler = Some(format!("gcc-{major}"));
        }
    }
    Ok(Packages {
        image,
        version,
        release,
        downloads,
        compiler,
    })
}

/// Downloads and unpacks the packages into `cache` unless already there. Returns the tree
/// and whether it had to download.
pub(crate) fn fetch(packages: &Packages, cache: &Path) -> anyhow::Result<(KernelTree, bool)> {
    let dir = cache.join(format!(
        "{}_{}",
        packages.image,
        version_dir(&packages.version)
    ));
    let root = dir.join("root");
    let tree = KernelTree {
        vmlinuz: root.join(format!("boot/vmlinuz-{}", packages.release)),
        headers: root.join(format!("usr/src/linux-headers-{}", packages.release)),
        modules: root.join(format!("lib/modules/{}", packages.release)),
    };
    let stamp = dir.join("complete");
    if stamp.is_file() {
        step(format!(
            "{} {} is in the cache ({})",
            packages.image,
            packages.version,
            dir.display()
        ));
        return Ok((tree, false));
    }
    step(format!(
        "downloading {} (apt-get download, unpacked with dpkg -x into {}; nothing is installed)",
        packages.downloads.join(" "),
        dir.display()
    ));
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    download_and_unpack(&packages.downloads, &dir, &root)?;
    fix_headers(&root)?;
    for path in [&tree.vmlinuz, &tree.headers, &tree.modules] {
        if !path.exists() {
            bail!("{} is missing from the unpacked packages", path.display());
        }
    }
    fs::write(&stamp, format!("{}\n", packages.downloads.join("\n")))?;
    Ok((tree, true))
}

/// Makes sure `packages` are unpacked in `dir/root`, downloading only those an earlier run
/// did not unpack (`dir/packages` lists them). Returns the root and whether it downloaded.
pub(crate) fn unpacked(dir: &Path, packages: &[String]) -> anyhow::Result<(PathBuf, bool)> {
    let root = dir.join("root");
    let stamp = dir.join("packages");
    let mut have: BTreeSet<String> = fs::read_to_string(&stamp)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let missing: Vec<String> = packages
        .iter()
        .filter(|p| !have.contains(*p))
        .cloned()
        .collect();
    if missing.is_empty() {
        step(format!(
            "{} in the cache ({})",
            packages.join(" "),
            dir.display()
        ));
        return Ok((root, false));
    }
    step(format!(
        "downloading {} (apt-get download, unpacked with dpkg -x into {}; nothing is installed)",
        missing.join(" "),
        dir.display()
    ));
    download_and_unpack(&missing, dir, &root)?;
    have.extend(missing);
    let list: Vec<&str> = have.iter().map(String::as_str).collect();
    fs::write(&stamp, format!("{}\n", list.join("\n")))?;
    Ok((root, true))
}

/// Makes headers unpacked outside / usable: Debian's linux-headers-*-ARCH/Makefile includes
/// the -common tree by its absolute /usr/src path, and absolute symlinks point at /usr/src
/// or /usr/lib/linux-kbuild-*. Both are pointed into `root` instead.
fn fix_headers(root: &Path) -> anyhow::Result<()> {
    let src = root.join("usr/src");
    for tree in fs::read_dir(&src)? {
        let tree = tree?.path();
        if !tree.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&tree)? {
            let path = entry?.path();
            if let Ok(target) = fs::read_link(&path)
                && let Ok(inside) = target.strip_prefix("/")
            {
                fs::remove_file(&path)?;
                std::os::unix::fs::symlink(root.join(inside), &path)?;
            }
        }
        let makefile = tree.join("Makefile");
        let Ok(text) = fs::read_to_string(&makefile) else {
            continue;
        };
        let fixed = text.replace("include /usr/", &format!("include {}/usr/", root.display()));
        if fixed != text {
            fs::write(&makefile, fixed)?;
        }
    }
    Ok(())
}

/// A kernel module's file and its dependencies' names, from the `.modinfo` section.
fn module_depends(image: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    image
        .windows(KEY.len())
        .position(|w| w == KEY)
        .map(|at| {
            let value = &image[at + KEY.len()..];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            String::from_utf8_lossy(&value[..end])
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

fn module_name(file_name: &str) -> Option<String> {
    file_name
        .split_once(".ko")
        .map(|(stem, _)| stem.replace('-', "_"))
}

fn index_modules(dir: &Path, index: &mut HashMap<String, PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(module_name)
        {
            index.insert(name, path);
        }
    }
    Ok(())
}

/// A module file's contents, decompressed (busybox insmod takes plain .ko files).
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        return Ok(fs::read(path)?);
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {tool} to decompress {name}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {name} failed");
    }
    Ok(out.stdout)
}

/// A kernel module to load with insmod.
#[derive(Debug)]
pub(crate) struct KernelModule {
    pub(crate) name: String,
    /// The plain (decompressed) .ko file.
    pub(crate) image: Vec<u8>,
}

/// The module files of one kernel, by name.
struct ModuleIndex {
    files: HashMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    fn new(modules: &Path) -> anyhow::Result<Self> {
        let mut files = HashMap::new();
        index_modules(&modules.join("kernel"), &mut files)?;
        let builtin = fs::read_to_string(modules.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| module_name(line.rsplit('/').next()?))
            .collect();
        Ok(Self { files, builtin })
    }

    /// Appends `name` to `ordered` after its dependencies, unless built in or already there.
    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        ordered: &mut Vec<KernelModule>,
    ) -> anyhow::Result<()> {
        if self.builtin.contains(name) || !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let path = self
            .files
            .get(name)
            .with_context(|| format!("module {name} is neither built in nor shipped"))?;
        let image = read_module(path)?;
        for dep in module_depends(&image) {
            self.visit(&dep, seen, ordered)?;
        }
        ordered.push(KernelModule {
            name: name.to_owned(),
            image,
        });
        Ok(())
    }
}

/// The modules `wanted` needs, in load order (dependencies first).
/// Modules built into the kernel are left out.
pub(crate) fn modules_for(tree: &KernelTree, wanted: &[&str]) -> anyhow::Result<Vec<KernelModule>> {
    let index = ModuleIndex::new(&tree.modules)?;
    let mut ordered = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        index.visit(name, &mut seen, &mut ordered)?;
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_stands_for_a_version() {
        let pattern = "linux-image-6.1.0-*-amd64";
        assert!(matches(pattern, "linux-image-6.1.0-56-amd64"));
        assert!(!matches(pattern, "linux-image-6.1.0-56-cloud-amd64"));
        assert!(!matches(pattern, "linux-image-6.1.0-56-amd64-dbg"));
        assert!(!matches(pattern, "linux-image-6.1.0--amd64"));
        assert!(matches(
            "linux-image-*+bpo-amd64",
            "linux-image-6.12.12+bpo-amd64"
        ));
        assert!(!matches(
            "linux-image-*+bpo-amd64",
            "linux-image-6.12.12+bpo-rt-amd64"
        ));
    }

    #[test]
    fn newest_is_numeric() {
        let names = ["linux-image-6.1.0-9-amd64", "linux-image-6.1.0-56-amd64"];
        let newest = names.iter().max_by_key(|n| natural_key(n));
        assert_eq!(newest, Some(&"linux-image-6.1.0-56-amd64"));
    }

    #[test]
    fn depends_keeps_versions_and_first_alternatives() {
        let stanza = "Package: linux-headers-6.1.0-56-amd64\nDepends: \
            linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2), \
            linux-compiler-gcc-12-x86, a | b\nSize: 1\n";
        assert_eq!(
            depends(stanza),
            vec![
                (
                    "linux-headers-6.1.0-56-common".to_owned(),
                    Some("6.1.192-2".to_owned())
                ),
                ("linux-kbuild-6.1".to_owned(), Some("6.1.192-2".to_owned())),
                ("linux-compiler-gcc-12-x86".to_owned(), None),
                ("a".to_owned(), None),
            ]
        );
    }

    #[test]
    fn dependency_groups_keep_alternatives() {
        let stanza = "Package: x\nPre-Depends: libc6 (>= 2.34)\nDepends: libfoo1:any (>= 2), \
            a | b (>= 1), qemu-system-common (= 1:7.2)\nSize: 1\n";
        assert_eq!(
            dependency_groups(stanza),
            vec![
                vec!["libc6".to_owned()],
                vec!["libfoo1".to_owned()],
                vec!["a".to_owned(), "b".to_owned()],
                vec!["qemu-system-common".to_owned()],
            ]
        );
    }

    #[test]
    fn modinfo_depends() {
        let image = b"junk\0license=GPL\0depends=jbd2,mbcache,crc-16\0vermagic=6.1\0";
        assert_eq!(module_depends(image), ["jbd2", "mbcache", "crc_16"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
    }
}
