//! The mount table (`/proc/PID/mountinfo`): which mounts a block device has, and whether the
//! kernel made them read-only.

use serde::Serialize;

/// One mount of a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// As the kernel prints it: space, tab, newline and backslash octal-escaped, so a path a
    /// pod chose cannot break a message's line.
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
    /// `ro` in the mount or superblock options, or `emergency_ro` (the kernel's mark after
    /// an error on current kernels, where the mount options still say `rw`).
    pub read_only: bool,
    /// `emergency_ro` among the superblock options: read-only because of an error.
    pub after_error: bool,
}

/// `major:minor` of a mountinfo line.
fn device(line: &str) -> Option<(u32, u32)> {
    let (major, minor) = line.split(' ').nth(2)?.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn parse(line: &str) -> Option<((u32, u32), Mount)> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let right: Vec<&str> = right.split(' ').collect();
    let mount_options: Vec<&str> = left
        .get(5)
        .map(|s| s.split(',').collect())
        .unwrap_or_default();
    let super_options: Vec<&str> = right
        .get(2)
        .map(|s| s.split(',').collect())
        .unwrap_or_default();
    let after_error = super_options.contains(&"emergency_ro");
    let read_only = after_error || mount_options.contains(&"ro") || super_options.contains(&"ro");
    Some((
        device(line)?,
        Mount {
            mount_point: (*left.get(4)?).to_owned(),
            fs_type: (*right.first()?).to_owned(),
            source: (*right.get(1)?).to_owned(),
            read_only,
            after_error,
        },
    ))
}

/// The mounts of device `major:minor` in a mountinfo text; a malformed line is skipped.
pub fn mounts_of(mountinfo: &str, major: u32, minor: u32) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(parse)
        .filter(|(dev, _)| *dev == (major, minor))
        .map(|(_, mount)| mount)
        .collect()
}

/// Every device with a mount the kernel made read-only after an error (`emergency_ro`).
pub fn read_only_after_error(mountinfo: &str) -> Vec<(u32, u32)> {
    let mut devices: Vec<(u32, u32)> = mountinfo
        .lines()
        .filter_map(parse)
        .filter(|(_, mount)| mount.after_error)
        .map(|(dev, _)| dev)
        .collect();
    devices.sort_unstable();
    devices.dedup();
    devices
}

/// Every device with a filesystem of `fs_type` mounted.
pub fn devices_of_type(mountinfo: &str, fs_type: &str) -> Vec<(u32, u32)> {
    let mut devices: Vec<(u32, u32)> = mountinfo
        .lines()
        .filter_map(parse)
        .filter(|(_, mount)| mount.fs_type == fs_type)
        .map(|(dev, _)| dev)
        .collect();
    devices.sort_unstable();
    devices.dedup();
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 24 7:3 / /var/lib/kubelet/pods/1234/volumes/kubernetes.io~empty-dir/data rw,relatime - ext4 /dev/loop3 rw,emergency_ro,errors=remount-ro
41 24 7:4 / /mnt/x\\040y rw,relatime - xfs /dev/loop4 rw,attr2
42 24 7:5 / /mnt/plain ro,relatime - ext4 /dev/loop5 ro
garbage line
";

    #[test]
    fn mounts_of_a_device_and_whether_the_kernel_made_them_read_only() {
        let loop3 = mounts_of(MOUNTINFO, 7, 3);
        assert_eq!(loop3.len(), 1);
        assert!(loop3[0].read_only && loop3[0].after_error);
        assert_eq!(
            (loop3[0].fs_type.as_str(), loop3[0].source.as_str()),
            ("ext4", "/dev/loop3")
        );
        let loop4 = mounts_of(MOUNTINFO, 7, 4);
        assert!(!loop4[0].read_only);
        assert_eq!(loop4[0].mount_point, "/mnt/x\\040y", "escapes stay escaped");
        let loop5 = mounts_of(MOUNTINFO, 7, 5);
        assert!(loop5[0].read_only && !loop5[0].after_error, "ro by choice");
        assert!(mounts_of(MOUNTINFO, 8, 0).is_empty());
        assert_eq!(read_only_after_error(MOUNTINFO), vec![(7, 3)]);
        assert_eq!(devices_of_type(MOUNTINFO, "xfs"), vec![(7, 4)]);
    }
}
