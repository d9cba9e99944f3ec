//! A cpio archive in the `newc` format, the one the kernel unpacks as an initramfs. Written
//! here rather than with cpio(1) so that the archive can hold /dev/console and root-owned
//! files without root on the host, and comes out the same on every run.

use std::collections::BTreeSet;

#[derive(Debug, Default)]
pub(crate) struct Cpio {
    data: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl Cpio {
    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, dev major/minor,
        // rdev major/minor, namesize (with its NUL), check
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.next_ino,
            mode,
            0,
            0,
            nlink,
            0,
            body.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    /// Adds the directories above `path` that are not in the archive yet.
    fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.dir(&prefix.clone());
        }
    }

    pub(crate) fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if self.dirs.contains(path) {
            return;
        }
        self.parents(path);
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | 0o755, (0, 0), &[]);
    }

    pub(crate) fn file(&mut self, path: &str, perm: u32, body: &[u8]) {
        let path = path.trim_start_matches('/');
        self.parents(path);
        self.entry(path, S_IFREG | perm, (0, 0), body);
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        let path = path.trim_start_matches('/');
        self.parents(path);
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    pub(crate) fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        let path = path.trim_start_matches('/');
        self.parents(path);
        self.entry(path, S_IFCHR | perm, (major, minor), &[]);
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_parents_come_first() {
        let mut cpio = Cpio::default();
        cpio.file("/a/b/c", 0o644, b"hello");
        let data = cpio.finish();
        assert_eq!(data.len() % 4, 0);
        let text = String::from_utf8_lossy(&data);
        let a = text.find("a\0").expect("a");
        let ab = text.find("a/b\0").expect("a/b");
        let abc = text.find("a/b/c\0").expect("a/b/c");
        assert!(a < ab && ab < abc);
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!"));
        // The file's header: regular file 0644, 5 bytes.
        let header = &text[abc - 110..abc];
        assert_eq!(&header[14..22], "000081A4");
        assert_eq!(&header[54..62], "00000005");
    }
}
