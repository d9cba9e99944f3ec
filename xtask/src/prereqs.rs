//! Makes sure the eBPF toolchain exists, installing what is missing and saying so:
//! rust-src for the nightly, the LLVM dev packages of the nightly's LLVM major, and
//! bpf-linker built against that LLVM (recipe: shared/notes/KERNEL-AND-TOOLCHAIN.md).

use std::{path::Path, process::Command};

use anyhow::{Context, bail};

use crate::util::{self, output, sh, step};

/// The toolchain that builds npd-ebpf: the machine's `nightly`, or `NPD_EBPF_TOOLCHAIN`
/// (e.g. a dated nightly whose LLVM major the distribution packages).
pub(crate) fn nightly() -> String {
    std::env::var("NPD_EBPF_TOOLCHAIN")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "nightly".to_owned())
}
const BPF_LINKER_VERSION: &str = "0.13.0";

pub(crate) fn ensure() -> anyhow::Result<()> {
    ensure_nightly()?;
    ensure_rust_src()?;
    let llvm_major = nightly_llvm_major()?;
    ensure_llvm_dev(llvm_major)?;
    ensure_bpf_linker(llvm_major)
}

fn ensure_nightly() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to find the nightly toolchain")?;
    let nightly = nightly();
    if toolchains.lines().any(|l| l.starts_with(nightly.as_str())) {
        return Ok(());
    }
    step("no nightly toolchain: installing one (the eBPF crate needs -Z build-std)");
    sh(Command::new("rustup").args([
        "toolchain",
        "install",
        &nightly,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
    .context("installing the nightly toolchain failed; install it by hand and retry")
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let sysroot =
        output(Command::new("rustc").args([&format!("+{}", nightly()), "--print", "sysroot"]))?;
    let core = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if core.is_dir() {
        return Ok(());
    }
    let nightly = nightly();
    step(format!("rust-src is missing for {nightly}: adding it"));
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &nightly]))
}

/// The LLVM major of the nightly, from `rustc +nightly -vV`.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let version = output(Command::new("rustc").args([&format!("+{}", nightly()), "-vV"]))?;
    version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.trim().parse().ok())
        .context("`rustc +nightly -vV` printed no LLVM version")
}

fn llvm_prefix(major: u32) -> String {
    format!("/usr/lib/llvm-{major}")
}

fn ensure_llvm_dev(major: u32) -> anyhow::Result<()> {
    let prefix = llvm_prefix(major);
    if Path::new(&prefix).join("bin/llvm-config").is_file()
        && Path::new(&prefix).join("include/llvm").is_dir()
    {
        return Ok(());
    }
    let packages = [
        format!("llvm-{major}-dev"),
        format!("libpolly-{major}-dev"),
        "libzstd-dev".to_owned(),
        "zlib1g-dev".to_owned(),
    ];
    step(format!(
        "LLVM {major} development files are missing (bpf-linker must be built against the \
         nightly's LLVM): installing {}",
        packages.join(" ")
    ));
    if !util::is_root() {
        bail!(
            "installing packages needs root: run `sudo apt-get install -y {}` and retry",
            packages.join(" ")
        );
    }
    apt_install(&packages)
}

/// Installs the Debian packages in `missing`, if any, saying why (`what_for`); without root,
/// fails with the command that would.
pub(crate) fn install_missing(missing: &[String], what_for: &str) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    step(format!("installing {} ({what_for})", missing.join(" ")));
    if !util::is_root() {
        bail!(
            "installing packages needs root: run `sudo apt-get install -y {}` and retry",
            missing.join(" ")
        );
    }
    apt_install(missing)
}

/// Installs Debian packages; never removes any (apt would otherwise remove what conflicts,
/// e.g. a newer qemu-utils from backports when installing qemu-system-x86): that is left to
/// a person.
pub(crate) fn apt_install(packages: &[String]) -> anyhow::Result<()> {
    let install = |cmd: &mut Command| {
        util::sh_narrating(
            cmd.env("DEBIAN_FRONTEND", "noninteractive")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "--no-remove",
                ])
                .args(packages),
        )
    };
    if install(&mut Command::new("apt-get")).is_ok() {
        return Ok(());
    }
    step("refreshing the package lists and trying again");
    util::sh_narrating(Command::new("apt-get").args(["update", "-q"]))?;
    install(&mut Command::new("apt-get")).with_context(|| {
        format!(
            "cannot install {0} (if apt would have to remove packages for them, run \
                 `apt-get install {0}` yourself to accept that)",
            packages.join(" ")
        )
    })
}

/// The LLVM major bpf-linker links against, from its shared-library dependencies.
fn bpf_linker_llvm_major(path: &Path) -> Option<u32> {
    let libs = output(Command::new("ldd").arg(path)).ok()?;
    libs.split_whitespace()
        .find_map(|word| word.strip_prefix("libLLVM.so."))
        .or_else(|| {
            libs.split_whitespace()
                .find_map(|word| word.strip_prefix("libLLVM-"))
                .map(|rest| rest.trim_end_matches(".so"))
        })
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse().ok())
}

fn ensure_bpf_linker(llvm_major: u32) -> anyhow::Result<()> {
    if let Some(path) = util::which("bpf-linker") {
        match bpf_linker_llvm_major(&path) {
            Some(major) if major >= llvm_major => return Ok(()),
            Some(major) => step(format!(
                "bpf-linker at {} uses LLVM {major}, older than the nightly's LLVM {llvm_major} \
                 (it could not read the nightly's bitcode): rebuilding it",
                path.display()
            )),
            // Statically linked: trust it; the build fails loudly if it cannot read the bitcode.
            None => return Ok(()),
        }
    } else {
        step(format!(
            "bpf-linker is missing: building {BPF_LINKER_VERSION} against LLVM {llvm_major} (about 1-4 minutes)"
        ));
    }
    sh(util::cargo(None)
        .env("LLVM_PREFIX", llvm_prefix(llvm_major))
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ]))
    .context("building bpf-linker failed")
}
