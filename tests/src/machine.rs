//! Global machine state a test may change, always through a guard that restores it on drop
//! (also when the test fails and unwinds).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Fails the test unless it runs as root, saying why root is needed.
pub fn require_root(why: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root ({why}); run it through `sudo -E cargo xtask test`"
    );
}

/// A sysctl (a file under /proc/sys) set for the guard's lifetime.
#[derive(Debug)]
pub struct Sysctl {
    path: PathBuf,
    original: String,
}

impl Sysctl {
    pub fn set(path: impl AsRef<Path>, value: &str) -> anyhow::Result<Self> {
        let path = path.as_ref().to_owned();
        let original = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned();
        std::fs::write(&path, value)
            .with_context(|| format!("writing {value} to {}", path.display()))?;
        Ok(Self { path, original })
    }

    pub fn original(&self) -> &str {
        &self.original
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(err) = std::fs::write(&self.path, &self.original) {
            eprintln!(
                "WARNING: could not restore {} to {}: {err}",
                self.path.display(),
                self.original
            );
        }
    }
}

/// The id npd reports for this process's cgroup: the inode of its cgroup directory in the
/// unified hierarchy (cgroup v2) or in the memory controller's (v1).
pub fn own_cgroup_id() -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")?;
    let unified = std::fs::read_to_string("/proc/self/mounts")?
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/cgroup") && l.contains(" cgroup2 "));
    let (root, path) = if unified {
        let path = cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 entry in /proc/self/cgroup")?;
        ("/sys/fs/cgroup".to_owned(), path.to_owned())
    } else {
        let path = cgroups
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let _id = parts.next()?;
                let controllers = parts.next()?;
                let path = parts.next()?;
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then(|| path.to_owned())
            })
            .context("no memory controller in /proc/self/cgroup")?;
        ("/sys/fs/cgroup/memory".to_owned(), path)
    };
    let dir = format!("{root}{path}");
    Ok(std::fs::metadata(&dir)
        .with_context(|| format!("stat {dir}"))?
        .ino())
}

/// Runs a command, failing with its stderr.
pub fn command(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A small ext4 filesystem on a loop device, mounted and frozen (`fsfreeze -f`): anything that
/// writes to it blocks in D state until it is thawed. Drop thaws, unmounts, detaches the loop
/// device and removes the image, whatever state the test left it in.
#[derive(Debug)]
pub struct FrozenFilesystem {
    dir: PathBuf,
    image: PathBuf,
    mountpoint: PathBuf,
    frozen: bool,
    mounted: bool,
}

impl FrozenFilesystem {
    pub fn create() -> anyhow::Result<Self> {
        // Unique per instance: tests in one binary share a pid.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "npd-freeze-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let image = dir.join("fs.img");
        let mountpoint = dir.join("mnt");
        std::fs::create_dir_all(&mountpoint)?;
        let mut fs = Self {
            dir,
            image,
            mountpoint,
            frozen: false,
            mounted: false,
        };
        std::fs::File::create(&fs.image)?.set_len(64 << 20)?;
        command("mkfs.ext4", &["-q", "-F", path_str(&fs.image)?])?;
        command(
            "mount",
            &[
                "-o",
                "loop",
                path_str(&fs.image)?,
                path_str(&fs.mountpoint)?,
            ],
        )?;
        fs.mounted = true;
        command("fsfreeze", &["-f", path_str(&fs.mountpoint)?])?;
        fs.frozen = true;
        Ok(fs)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn thaw(&mut self) -> anyhow::Result<()> {
        if self.frozen {
            command("fsfreeze", &["-u", path_str(&self.mountpoint)?])?;
            self.frozen = false;
        }
        Ok(())
    }
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("non-UTF-8 path")
}

impl Drop for FrozenFilesystem {
    fn drop(&mut self) {
        if let Err(err) = self.thaw() {
            eprintln!("WARNING: thawing {}: {err}", self.mountpoint.display());
        }
        if self.mounted {
            // A writer that was blocked may still be closing its file just after the thaw.
            let mountpoint = self.mountpoint.to_string_lossy().into_owned();
            let mut unmounted = false;
            for _ in 0..50 {
                if command("umount", &[&mountpoint]).is_ok() {
                    unmounted = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if !unmounted {
                // Detach it now; the kernel finishes once the last user lets go.
                if let Err(err) = command("umount", &["-l", &mountpoint]) {
                    eprintln!("WARNING: unmounting {mountpoint}: {err}");
                }
            }
        }
        // `mount -o loop` sets autoclear; detach explicitly in case the unmount failed.
        if let Ok(devices) = command("losetup", &["-j", &self.image.to_string_lossy()]) {
            for device in devices.lines().filter_map(|l| l.split(':').next()) {
                let _ = command("losetup", &["-d", device]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The memory controller's layout on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryController {
    /// cgroup v1: its own hierarchy at /sys/fs/cgroup/memory, limit in memory.limit_in_bytes.
    V1,
    /// cgroup v2: /sys/fs/cgroup, limit in memory.max.
    V2,
}

impl MemoryController {
    pub fn detect() -> anyhow::Result<Self> {
        let mounts = std::fs::read_to_string("/proc/self/mounts")?;
        if mounts.lines().any(|l| {
            l.split_whitespace().nth(1) == Some("/sys/fs/cgroup") && l.contains(" cgroup2 ")
        }) {
            return Ok(Self::V2);
        }
        anyhow::ensure!(
            Path::new("/sys/fs/cgroup/memory/cgroup.procs").is_file(),
            "no memory controller: neither cgroup v2 at /sys/fs/cgroup nor v1 at /sys/fs/cgroup/memory"
        );
        Ok(Self::V1)
    }

    pub fn root(self) -> &'static Path {
        match self {
            Self::V1 => Path::new("/sys/fs/cgroup/memory"),
            Self::V2 => Path::new("/sys/fs/cgroup"),
        }
    }
}

/// A memory cgroup created for a test (with every missing parent), limited, and removed on
/// drop with everything below it once its processes are gone.
#[derive(Debug)]
pub struct MemoryCgroup {
    controller: MemoryController,
    /// The directories created, outermost first.
    created: Vec<PathBuf>,
    path: PathBuf,
}

impl MemoryCgroup {
    /// Creates `relative` (e.g. `npd-test-123` or `kubepods/burstable/pod<uid>/<id>`) below
    /// the memory hierarchy's root and limits it to `limit_bytes`.
    pub fn create(relative: &str, limit_bytes: u64) -> anyhow::Result<Self> {
        let controller = MemoryController::detect()?;
        let mut cgroup = Self {
            controller,
            created: Vec::new(),
            path: controller.root().join(relative),
        };
        let mut dir = controller.root().to_owned();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            if controller == MemoryController::V2 {
                // Let the child use the memory controller (the root may hold processes).
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory");
            }
            dir.push(part);
            if !dir.is_dir() {
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                cgroup.created.push(dir.clone());
            }
        }
        let limit_file = match controller {
            MemoryController::V1 => "memory.limit_in_bytes",
            MemoryController::V2 => "memory.max",
        };
        std::fs::write(cgroup.path.join(limit_file), limit_bytes.to_string())
            .with_context(|| format!("setting {limit_file}"))?;
        if controller == MemoryController::V1 {
            // No swap to escape to, where the kernel accounts it.
            let _ = std::fs::write(
                cgroup.path.join("memory.memsw.limit_in_bytes"),
                limit_bytes.to_string(),
            );
        }
        Ok(cgroup)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// The id npd reports for it: the directory's inode number.
    pub fn id(&self) -> anyhow::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(&self.path)?.ino())
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Move stragglers to the root so the directories can go.
        if let Ok(procs) = std::fs::read_to_string(self.procs_file()) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.controller.root().join("cgroup.procs"), pid);
            }
        }
        for dir in self.created.iter().rev() {
            // A cgroup is removable only once its last task is fully gone; retry briefly.
            let mut removed = false;
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    removed = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if !removed {
                eprintln!("WARNING: could not remove cgroup {}", dir.display());
            }
        }
    }
}
