//! Loop devices for real filesystem and disk failures: a loop-mounted image, and a disk
//! whose every read fails with EIO in the block layer (a loop device whose backing file lives
//! on a shut-down XFS). Drop undoes each, whatever state a test left it in.

use std::path::{Path, PathBuf};

use crate::machine::command;

/// A loop-mounted filesystem image. Drop unmounts it, detaches the loop device and removes
/// the image, whatever state the test left them in.
#[derive(Debug)]
pub struct LoopFs {
    dir: PathBuf,
    pub device: String,
    pub mountpoint: PathBuf,
    mounted: bool,
}

impl LoopFs {
    pub fn create(fs_type: &str, megabytes: u32, options: &str) -> anyhow::Result<Self> {
        Self::create_at(fs_type, megabytes, options, None)
    }

    /// Mounted at `at` instead of a fresh directory (which must exist).
    pub fn create_at(
        fs_type: &str,
        megabytes: u32,
        options: &str,
        at: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("npd-fs-").tempdir()?.keep();
        let image = dir.join("image");
        command("truncate", &["-s", &format!("{megabytes}M"), path(&image)])?;
        command(&format!("mkfs.{fs_type}"), &["-q", path(&image)])?;
        let device = command("losetup", &["-f", "--show", path(&image)])?
            .trim()
            .to_owned();
        let mountpoint = match at {
            Some(at) => at.to_owned(),
            None => {
                let mountpoint = dir.join("mnt");
                std::fs::create_dir(&mountpoint)?;
                mountpoint
            }
        };
        let mut fs = Self {
            dir,
            device,
            mountpoint,
            mounted: false,
        };
        command("mount", &["-o", options, &fs.device, path(&fs.mountpoint)])?;
        fs.mounted = true;
        Ok(fs)
    }

    /// `major:minor` of the loop device.
    pub fn dev(&self) -> (u64, u64) {
        loop_dev(&self.device)
    }

    pub fn unmount(&mut self) -> anyhow::Result<()> {
        if self.mounted {
            command("umount", &[path(&self.mountpoint)])?;
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = command("umount", &["-l", path(&self.mountpoint)]);
        }
        let _ = command("losetup", &["-d", &self.device]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loop device over a file; Drop detaches it.
#[derive(Debug)]
pub struct LoopDevice(pub String);

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = command("losetup", &["-d", &self.0]);
    }
}

/// A test path as `&str` (the tests make only UTF-8 paths).
pub fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test paths")
}

/// `major:minor` of a loop device such as `/dev/loop3`.
pub fn loop_dev(device: &str) -> (u64, u64) {
    let name = device.trim_start_matches("/dev/");
    let text = std::fs::read_to_string(format!("/sys/block/{name}/dev")).expect("loop dev");
    let (major, minor) = text.trim().split_once(':').expect("major:minor");
    (major.parse().unwrap(), minor.parse().unwrap())
}

/// Failures a `block_io_error` record stands for: itself and those folded into it, or for a
/// sweep only the folded ones.
pub fn block_failures(event: &serde_json::Value) -> u64 {
    let folded = event["suppressed"].as_u64().unwrap_or(0);
    if event["flushed"] == true {
        folded
    } else {
        folded + 1
    }
}

/// A block device whose reads all fail with EIO: a loop device over a file on an XFS that
/// was shut down after the file was written. Needs xfsprogs (`mkfs.xfs`, `xfs_io`).
#[derive(Debug)]
pub struct FailingDisk {
    // Field order is drop order: the inner device goes before the XFS under it.
    pub inner: LoopDevice,
    pub xfs: LoopFs,
}

impl FailingDisk {
    pub fn create() -> anyhow::Result<Self> {
        let xfs = LoopFs::create("xfs", 320, "rw")?;
        let backing = xfs.mountpoint.join("inner.img");
        command(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={}", path(&backing)),
                "bs=1M",
                "count=16",
                "status=none",
            ],
        )?;
        command("sync", &[])?;
        let inner = LoopDevice(
            command("losetup", &["-f", "--show", path(&backing)])?
                .trim()
                .to_owned(),
        );
        command("xfs_io", &["-x", "-c", "shutdown", path(&xfs.mountpoint)])?;
        Ok(Self { inner, xfs })
    }

    /// `major:minor` of the failing device.
    pub fn dev(&self) -> (u64, u64) {
        loop_dev(&self.inner.0)
    }

    /// Detaches the failing device and unmounts the shut-down XFS under it (Drop would do
    /// both too, lazily and ignoring errors).
    pub fn unmount(mut self) -> anyhow::Result<()> {
        command("losetup", &["-d", &self.inner.0])?;
        self.xfs.unmount()
    }
}
