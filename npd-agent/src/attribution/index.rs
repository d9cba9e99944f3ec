//! Cgroup id -> path: the id in a record is the kernfs inode number of the cgroup's directory,
//! so walking the hierarchy and indexing directories by inode resolves it.

use std::{
    collections::HashMap,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupIndexOptions {
    /// A miss rescans the hierarchy at most this often (a storm of unknown ids must not turn
    /// into a storm of directory walks).
    pub min_rescan_interval: Duration,
    /// Cgroups indexed at most (memory bound); a node has a few thousand.
    pub max_entries: usize,
    /// A cgroup gone from the hierarchy stays resolvable this long: a container's cgroup is
    /// removed right after an OOM kill ends it, often before its record is attributed.
    pub keep_removed_for: Duration,
    /// Directory levels walked at most below the root.
    pub max_depth: usize,
}

impl Default for CgroupIndexOptions {
    fn default() -> Self {
        Self {
            min_rescan_interval: Duration::from_secs(2),
            max_entries: 65_536,
            keep_removed_for: Duration::from_secs(10 * 60),
            max_depth: 32,
        }
    }
}

#[derive(Debug)]
struct Entry {
    path: String,
    /// When a scan last failed to find it; `None` while it exists.
    removed_at: Option<Instant>,
}

/// What one walk of the hierarchy found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanSummary {
    pub cgroups: usize,
    /// Directories that could not be read (e.g. removed during the walk).
    pub unreadable: usize,
    /// The walk stopped at `max_entries` or `max_depth`: some cgroups are not indexed.
    pub truncated: bool,
}

#[derive(Debug)]
pub struct CgroupIndex {
    root: PathBuf,
    options: CgroupIndexOptions,
    entries: HashMap<u64, Entry>,
    last_scan: Option<Instant>,
    last_summary: Option<ScanSummary>,
    scans: u64,
}

impl CgroupIndex {
    /// An index of the hierarchy at `root` (see `kernel::CgroupLayout::attribution_root`).
    /// Nothing is read until the first lookup or [`CgroupIndex::rescan`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_options(root, CgroupIndexOptions::default())
    }

    pub fn with_options(root: impl Into<PathBuf>, options: CgroupIndexOptions) -> Self {
        Self {
            root: root.into(),
            options,
            entries: HashMap::new(),
            last_scan: None,
            last_summary: None,
            scans: 0,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The cgroup's path below the root (`/` for the root itself), rescanning on a miss
    /// unless the last scan was less than `min_rescan_interval` ago.
    pub fn lookup(&mut self, cgroup_id: u64, now: Instant) -> Option<&str> {
        if cgroup_id == 0 {
            return None;
        }
        let rescan_allowed = self.last_scan.is_none_or(|last| {
            now.saturating_duration_since(last) >= self.options.min_rescan_interval
        });
        if !self.entries.contains_key(&cgroup_id)
            && rescan_allowed
            && let Err(err) = self.rescan(now)
        {
            tracing::debug!(root = %self.root.display(), "cgroup rescan failed: {err}");
        }
        self.entries
            .get(&cgroup_id)
            .map(|entry| entry.path.as_str())
    }

    /// Walks the hierarchy again: adds new cgroups, marks vanished ones, forgets those gone
    /// for longer than `keep_removed_for`.
    pub fn rescan(&mut self, now: Instant) -> io::Result<ScanSummary> {
        self.last_scan = Some(now);
        self.scans += 1;
        let (found, summary) = walk(&self.root, &self.options)?;
        for entry in self.entries.values_mut() {
            entry.removed_at.get_or_insert(now);
        }
        for (ino, path) in found {
            self.entries.insert(
                ino,
                Entry {
                    path,
                    removed_at: None,
                },
            );
        }
        let keep = self.options.keep_removed_for;
        self.entries.retain(|_, entry| {
            entry
                .removed_at
                .is_none_or(|removed| now.saturating_duration_since(removed) < keep)
        });
        // Over the bound only through vanished entries (the walk itself stops at it): drop
        // those gone longest first.
        if self.entries.len() > self.options.max_entries {
            let mut removed: Vec<(Instant, u64)> = self
                .entries
                .iter()
                .filter_map(|(ino, entry)| entry.removed_at.map(|at| (at, *ino)))
                .collect();
            removed.sort_unstable();
            let excess = self.entries.len() - self.options.max_entries;
            for (_, ino) in removed.into_iter().take(excess) {
                self.entries.remove(&ino);
            }
        }
        self.last_summary = Some(summary);
        Ok(summary)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Walks done so far, for metrics.
    pub fn scans(&self) -> u64 {
        self.scans
    }

    pub fn last_summary(&self) -> Option<ScanSummary> {
        self.last_summary
    }
}

/// Every directory below `root` (itself included) by inode number, with its path relative to
/// `root`. Symlinks are not followed (cgroupfs has none; a test tree might).
fn walk(
    root: &Path,
    options: &CgroupIndexOptions,
) -> io::Result<(Vec<(u64, String)>, ScanSummary)> {
    let root_ino = std::fs::metadata(root)?.ino();
    let mut found = vec![(root_ino, "/".to_owned())];
    let mut summary = ScanSummary::default();
    let mut pending = vec![(root.to_path_buf(), String::new(), 0_usize)];
    while let Some((dir, relative, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            summary.unreadable += 1;
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_dir() {
                continue;
            }
            if found.len() >= options.max_entries || depth >= options.max_depth {
                summary.truncated = true;
                continue;
            }
            let path = format!("{relative}/{}", entry.file_name().to_string_lossy());
            found.push((metadata.ino(), path.clone()));
            pending.push((entry.path(), path, depth + 1));
        }
    }
    summary.cgroups = found.len();
    Ok((found, summary))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::attribution::tests::TempDir;

    fn ino(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn resolves_ids_to_paths_and_rescans_on_a_miss() {
        let tmp = TempDir::new("index");
        let container = tmp.path().join("kubepods/burstable/podabc/ctr");
        fs::create_dir_all(&container).unwrap();
        fs::write(tmp.path().join("kubepods/cgroup.procs"), "").unwrap();
        let t0 = Instant::now();
        let mut index = CgroupIndex::new(tmp.path());
        assert!(index.is_empty(), "nothing read before the first lookup");

        assert_eq!(
            index.lookup(ino(&container), t0),
            Some("/kubepods/burstable/podabc/ctr")
        );
        assert_eq!(index.lookup(ino(tmp.path()), t0), Some("/"));
        assert_eq!(index.lookup(0, t0), None);
        assert_eq!(
            index.len(),
            5,
            "root, kubepods, burstable, podabc, ctr; files skipped"
        );
        assert_eq!(index.scans(), 1);

        // A cgroup created later: the miss within the rescan interval does not walk again...
        let late = tmp.path().join("kubepods/besteffort");
        fs::create_dir(&late).unwrap();
        assert_eq!(
            index.lookup(ino(&late), t0 + Duration::from_millis(500)),
            None
        );
        assert_eq!(index.scans(), 1);
        // ...a hit never does, and a miss after the interval does.
        assert!(
            index
                .lookup(ino(&container), t0 + Duration::from_secs(1))
                .is_some()
        );
        assert_eq!(index.scans(), 1);
        assert_eq!(
            index.lookup(ino(&late), t0 + Duration::from_secs(3)),
            Some("/kubepods/besteffort")
        );
        assert_eq!(index.scans(), 2);
    }

    #[test]
    fn removed_cgroups_stay_resolvable_for_a_while() {
        let tmp = TempDir::new("removed");
        let container = tmp.path().join("kubepods/podabc/ctr");
        fs::create_dir_all(&container).unwrap();
        let id = ino(&container);
        let t0 = Instant::now();
        let mut index = CgroupIndex::with_options(
            tmp.path(),
            CgroupIndexOptions {
                keep_removed_for: Duration::from_secs(60),
                ..CgroupIndexOptions::default()
            },
        );
        index.rescan(t0).unwrap();
        fs::remove_dir(&container).unwrap();
        index.rescan(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(
            index.lookup(id, t0 + Duration::from_secs(11)),
            Some("/kubepods/podabc/ctr")
        );
        index.rescan(t0 + Duration::from_secs(80)).unwrap();
        assert_eq!(index.lookup(id, t0 + Duration::from_secs(81)), None);
    }

    #[test]
    fn memory_is_bounded() {
        let tmp = TempDir::new("bounded");
        for i in 0..10 {
            fs::create_dir_all(tmp.path().join(format!("a{i}/b"))).unwrap();
        }
        let options = CgroupIndexOptions {
            max_entries: 8,
            ..CgroupIndexOptions::default()
        };
        let mut index = CgroupIndex::with_options(tmp.path(), options);
        let summary = index.rescan(Instant::now()).unwrap();
        assert!(summary.truncated);
        assert_eq!(summary.cgroups, 8);
        assert_eq!(index.len(), 8);

        let shallow = CgroupIndexOptions {
            max_depth: 1,
            ..CgroupIndexOptions::default()
        };
        let mut index = CgroupIndex::with_options(tmp.path(), shallow);
        let summary = index.rescan(Instant::now()).unwrap();
        assert!(summary.truncated);
        assert_eq!(
            summary.cgroups, 11,
            "the root and a0..a9, not their children"
        );
    }

    #[test]
    fn a_missing_root_is_an_error_not_a_panic() {
        let tmp = TempDir::new("missing");
        let mut index = CgroupIndex::new(tmp.path().join("nope"));
        assert!(index.rescan(Instant::now()).is_err());
        assert_eq!(index.lookup(42, Instant::now()), None);
    }
}
