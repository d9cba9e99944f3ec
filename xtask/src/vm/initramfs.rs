//! What the VM boots into: an initramfs with tests/vm/init.sh as PID 1, the test module and
//! the static helper built for the kernel, the agent with its shared libraries, and the
//! loop-mounted ext4 image (with its modules) the fsfreeze step freezes; and the host tools
//! building it needs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use super::{cpio, debian};
use crate::{
    prereqs,
    util::{self, output, root, sh, step},
};

/// Kernel modules the fsfreeze step needs (a loop-mounted ext4 with metadata checksums);
/// their dependencies are found from the modules' own `depends=`.
const FSFREEZE_MODULES: &[&str] = &["loop", "crc32c_generic", "ext4"];

/// Kernel modules the hardware steps need: mce-inject injects machine checks, hwpoison-inject
/// poisons a page by its pfn.
const HARDWARE_MODULES: &[&str] = &["mce_inject", "hwpoison_inject"];

/// Build tools the run needs on the host, and the Debian packages that provide them. These
/// install without conflicts; QEMU and busybox are fetched privately instead (vm/tools.rs).
pub(crate) fn ensure_host_tools(compiler: Option<&str>) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let mut need = |program: &str, package: &str| {
        if find_program(program).is_none() {
            missing.push(package.to_owned());
        }
    };
    need("make", "make");
    need("mkfs.ext4", "e2fsprogs");
    need("strip", "binutils");
    need("gzip", "gzip");
    need("gcc", "gcc");
    if let Some(compiler) = compiler {
        need(compiler, compiler);
    }
    // The helper is linked statically: the initramfs has only the agent's libraries.
    if !Path::new("/usr/lib/x86_64-linux-gnu/libc.a").is_file() {
        missing.push("libc6-dev".to_owned());
    }
    prereqs::install_missing(
        &missing,
        "to build the test module, the helper and the initramfs",
    )
}

/// A program on PATH, or in the sbin directories a non-root PATH may lack.
fn find_program(program: &str) -> Option<PathBuf> {
    util::which(program).or_else(|| {
        ["/usr/sbin", "/sbin"]
            .iter()
            .map(|dir| Path::new(dir).join(program))
            .find(|path| path.is_file())
    })
}

/// Builds the test module, the helper, the fsfreeze image and the initramfs in `work`;
/// `dmesg` and `hook_cost` tell init.sh to print dmesg and to time the hooks.
pub(crate) fn prepare(
    tree: &debian::KernelTree,
    agent: &Path,
    busybox: &Path,
    detectors: &[String],
    work: &Path,
    dmesg: bool,
    hook_cost: bool,
) -> anyhow::Result<PathBuf> {
    let sources = root().join("tests/vm");

    step("building the test module against the kernel's headers");
    let module_dir = work.join("module");
    fs::create_dir_all(&module_dir)?;
    for file in ["npd_test.c", "Kbuild", "Makefile"] {
        fs::copy(sources.join("module").join(file), module_dir.join(file))?;
    }
    sh(Command::new("make")
        .arg("-C")
        .arg(&tree.headers)
        .arg(format!("M={}", module_dir.display()))
        .arg("modules"))?;

    step("building the static helper (npd-provoke)");
    let helper = work.join("npd-provoke");
    sh(Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-Wextra", "-o"])
        .arg(&helper)
        .arg(sources.join("provoke.c")))?;

    let mut cpio = cpio::Cpio::default();
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "run", "mnt",
    ] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init before anything mounts devtmpfs.
    cpio.char_device("dev/console", 0o600, 5, 1);
    cpio.file("init", 0o755, &fs::read(sources.join("init.sh"))?);
    cpio.file("bin/busybox", 0o755, &fs::read(busybox)?);
    cpio.symlink("bin/sh", "busybox");
    cpio.file("usr/bin/npd-provoke", 0o755, &fs::read(&helper)?);
    cpio.file(
        "lib/modules/npd/npd_test.ko",
        0o644,
        &fs::read(module_dir.join("npd_test.ko"))?,
    );

    step("adding npd-agent (debug info stripped) and the shared libraries ldd names");
    let stripped = work.join("npd-agent");
    sh(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(agent))?;
    cpio.file("usr/bin/npd-agent", 0o755, &fs::read(&stripped)?);
    for library in shared_libraries(agent)? {
        let real = fs::canonicalize(&library)?;
        cpio.file(&library.to_string_lossy(), 0o755, &fs::read(real)?);
    }

    let fs_modules = match fsfreeze_parts(tree, work) {
        Ok((modules, image)) => {
            cpio.file("frozen.img", 0o644, &fs::read(image)?);
            add_modules(&mut cpio, &modules)
        }
        Err(err) => {
            step(format!("no fsfreeze step on this kernel: {err:#}"));
            String::new()
        }
    };
    let hw_modules = match debian::modules_for(tree, HARDWARE_MODULES) {
        Ok(modules) => add_modules(&mut cpio, &modules),
        Err(err) => {
            step(format!(
                "no machine-check injection on this kernel: {err:#}"
            ));
            String::new()
        }
    };
    let config = format!(
        "DETECTORS={}\nFS_MODULES=\"{fs_modules}\"\nHW_MODULES=\"{hw_modules}\"\nDMESG={}\n\
         HOOK_COST={}\n",
        detectors.join(","),
        u8::from(dmesg),
        u8::from(hook_cost)
    );
    cpio.file("etc/npd-vm.conf", 0o644, config.as_bytes());

    let archive = work.join("initramfs.cpio");
    fs::write(&archive, cpio.finish())?;
    sh(Command::new("gzip").args(["-f", "-n", "-6"]).arg(&archive))?;
    let initramfs = work.join("initramfs.cpio.gz");
    step(format!(
        "initramfs {} ({} MiB)",
        initramfs.display(),
        fs::metadata(&initramfs)?.len() >> 20
    ));
    Ok(initramfs)
}

/// Puts `modules` where init.sh loads them from; their names, in load order.
fn add_modules(cpio: &mut cpio::Cpio, modules: &[debian::KernelModule]) -> String {
    for module in modules {
        cpio.file(
            &format!("lib/modules/npd/{}.ko", module.name),
            0o644,
            &module.image,
        );
    }
    modules
        .iter()
        .map(|module| module.name.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The loop and ext4 modules (with their dependencies) and a small ext4 image to freeze.
fn fsfreeze_parts(
    tree: &debian::KernelTree,
    work: &Path,
) -> anyhow::Result<(Vec<debian::KernelModule>, PathBuf)> {
    let modules = debian::modules_for(tree, FSFREEZE_MODULES)?;
    let image = work.join("frozen.img");
    let mkfs = find_program("mkfs.ext4").context("mkfs.ext4 is missing")?;
    sh(Command::new(mkfs).args(["-q", "-F"]).arg(&image).arg("8M"))?;
    Ok((modules, image))
}

/// The libraries (and the dynamic loader) `ldd` says a binary needs.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let listing = output(Command::new("ldd").arg(binary))?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}
