//! The programs the VM runs on, private to the cache: Debian's QEMU and busybox-static,
//! unpacked with `dpkg -x` under `.npd-cache/vm/` and never installed.
//!
//! Installing bookworm's qemu-system-x86 would conflict with the newer qemu-utils (from
//! bookworm-backports) that fresh machines of this kind carry, so apt would have to remove
//! it. The private copy is used even where a system QEMU exists, so every host runs the path
//! a fresh machine runs.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use super::debian;
use crate::util::{output, step};

/// Always private: the emulator, its helpers and data, and the BIOS. Debian's QEMU looks for
/// firmware in /usr/share/qemu and /usr/share/seabios; here `-L` points into the cache.
const QEMU_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "seabios",
];

/// Dependencies never fetched: network boot ROMs (the VM has no network card).
const NOT_NEEDED: &[&str] = &["ipxe-qemu"];

/// Where Debian's packages put shared libraries, relative to the unpacked root.
const LIBRARY_DIRS: &[&str] = &["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"];

/// A QEMU unpacked in the cache, with the libraries it needs that the host lacks.
#[derive(Debug)]
pub(crate) struct Qemu {
    root: PathBuf,
    /// `qemu-system-x86_64 -version`'s first line.
    pub(crate) version: String,
}

impl Qemu {
    fn binary(&self) -> PathBuf {
        self.root.join("usr/bin/qemu-system-x86_64")
    }

    fn library_path(&self) -> OsString {
        std::env::join_paths(LIBRARY_DIRS.iter().map(|dir| self.root.join(dir)))
            .expect("cache paths contain no ':'")
    }

    /// `qemu-system-x86_64` from the cache, with its libraries, modules (TCG is one) and
    /// firmware found there rather than on the host.
    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(self.binary());
        cmd.env("LD_LIBRARY_PATH", self.library_path())
            .env(
                "QEMU_MODULE_DIR",
                self.root.join("usr/lib/x86_64-linux-gnu/qemu"),
            )
            .arg("-L")
            .arg(self.root.join("usr/share/qemu"))
            .arg("-L")
            .arg(self.root.join("usr/share/seabios"));
        cmd
    }

    /// Libraries the binary or its TCG module cannot find, from `ldd`.
    fn unresolved(&self) -> anyhow::Result<BTreeSet<String>> {
        let tcg = self
            .root
            .join("usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so");
        let mut missing = BTreeSet::new();
        for object in [self.binary(), tcg] {
            let listing = output(
                Command::new("ldd")
                    .env("LD_LIBRARY_PATH", self.library_path())
                    .arg(&object),
            )?;
            missing.extend(
                listing
                    .lines()
                    .filter(|line| line.contains("not found"))
                    .filter_map(|line| line.split_whitespace().next())
                    .map(str::to_owned),
            );
        }
        Ok(missing)
    }
}

/// Packages qemu-system-x86 needs that the host lacks: its `Depends`, transitively, skipping
/// what is installed and the QEMU packages themselves (always private; the libraries
/// qemu-system-common depends on serve its display, audio and USB modules, which the VM
/// does not load).
fn libraries_the_host_lacks(qemu_stanza: &str) -> anyhow::Result<Vec<String>> {
    let mut lacking = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue = debian::dependency_groups(qemu_stanza);
    while let Some(group) = queue.pop() {
        let skip = group.iter().any(|name| {
            QEMU_PACKAGES.contains(&name.as_str())
                || NOT_NEEDED.contains(&name.as_str())
                || seen.contains(name)
                || debian::installed(name)
        });
        if skip {
            continue;
        }
        let name = group[0].clone();
        seen.insert(name.clone());
        queue.extend(debian::dependency_groups(&debian::show(&name)?));
        lacking.push(name);
    }
    lacking.sort();
    Ok(lacking)
}

/// A directory for `version` under `base`; other versions' directories are removed.
fn version_dir(base: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let dir = base.join(debian::version_dir(version));
    if !dir.exists() && base.exists() {
        fs::remove_dir_all(base)?;
    }
    Ok(dir)
}

/// Debian's QEMU, unpacked in `cache/qemu/VERSION/` (downloaded once).
pub(crate) fn qemu(cache: &Path) -> anyhow::Result<Qemu> {
    let stanza = debian::show("qemu-system-x86")?;
    let version = debian::version(&stanza)?;
    let dir = version_dir(&cache.join("qemu"), &version)?;
    let lacking = libraries_the_host_lacks(&stanza)?;
    if !lacking.is_empty() {
        step(format!(
            "this host lacks libraries QEMU needs: {} (unpacked next to it)",
            lacking.join(" ")
        ));
    }
    let packages: Vec<String> = QEMU_PACKAGES
        .iter()
        .map(|&p| p.to_owned())
        .chain(lacking)
        .collect();
    let (root, _) = debian::unpacked(&dir, &packages)?;
    let mut qemu = Qemu {
        root,
        version: String::new(),
    };
    let unresolved = qemu.unresolved()?;
    if !unresolved.is_empty() {
        bail!(
            "the private QEMU in {} cannot find {}: add the packages that provide them to \
             xtask/src/vm/tools.rs",
            dir.display(),
            unresolved.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let version_output =
        output(qemu.command().arg("-version")).context("the private QEMU does not start")?;
    qemu.version = version_output.lines().next().unwrap_or_default().to_owned();
    step(format!("using {} from {}", qemu.version, dir.display()));
    Ok(qemu)
}

/// Debian's busybox-static (the initramfs's shell and tools), unpacked in
/// `cache/busybox/VERSION/`. Debian's `busybox` package is linked dynamically.
pub(crate) fn busybox(cache: &Path) -> anyhow::Result<PathBuf> {
    let package = "busybox-static";
    let version = debian::version(&debian::show(package)?)?;
    let dir = version_dir(&cache.join("busybox"), &version)?;
    let (root, _) = debian::unpacked(&dir, &[package.to_owned()])?;
    let busybox = root.join("bin/busybox");
    if !busybox.is_file() {
        bail!("{package} has no bin/busybox ({})", busybox.display());
    }
    Ok(busybox)
}
