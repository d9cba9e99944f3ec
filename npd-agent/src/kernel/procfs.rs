//! What /proc says about a task, for the fallbacks where a hook cannot read it in the kernel.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::CgroupLayout;

/// State letter and start time (clock ticks since boot, field 22) of a task, which together
/// tell "still the same task, still blocked" from "recovered" or "gone / pid reused".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskState {
    pub state: char,
    pub start_time: u64,
}

/// Parses `/proc/<tid>/stat`. `comm` may contain spaces and parentheses, so the fields are
/// counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<TaskState> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3), start time is field 22: 18 fields further.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(TaskState { state, start_time })
}

pub fn task_state(proc_root: &Path, tid: u32) -> Option<TaskState> {
    parse_stat(&std::fs::read_to_string(proc_root.join(tid.to_string()).join("stat")).ok()?)
}

/// The process (thread group) a thread belongs to.
pub fn tgid_of(proc_root: &Path, tid: u32) -> Option<u32> {
    std::fs::read_to_string(proc_root.join(tid.to_string()).join("status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `/proc/<tid>/stack` as `function+0xoff` frames (root only; needs CONFIG_STACKTRACE).
pub fn kernel_stack(proc_root: &Path, tid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(proc_root.join(tid.to_string()).join("stack")).ok()?;
    let frames: Vec<String> = text
        .lines()
        .filter_map(|line| line.split_once("] ").map(|(_, frame)| frame))
        // Drop the `/0x1a0` function size the kernel appends.
        .map(|frame| frame.split('/').next().unwrap_or(frame).trim().to_owned())
        .filter(|frame| !frame.is_empty())
        .collect();
    (!frames.is_empty()).then_some(frames)
}

/// The cgroup path of a task in the hierarchy npd attributes by, from `/proc/<tid>/cgroup`.
pub fn cgroup_path(proc_root: &Path, tid: u32, layout: CgroupLayout) -> Option<String> {
    let text = std::fs::read_to_string(proc_root.join(tid.to_string()).join("cgroup")).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let wanted = match layout {
            CgroupLayout::Unified => id == "0" && controllers.is_empty(),
            CgroupLayout::Legacy => controllers.split(',').any(|c| c == "memory"),
        };
        wanted.then(|| path.to_owned())
    })
}

/// The cgroup id (directory inode) of a task, read from /proc: racy by nature, used only
/// where the kernel hook could not read it.
pub fn cgroup_id(
    proc_root: &Path,
    tid: u32,
    layout: CgroupLayout,
    cgroup_root: &Path,
) -> Option<u64> {
    let path = cgroup_path(proc_root, tid, layout)?;
    let dir = cgroup_dir(cgroup_root, &path)?;
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

/// A cgroup path from `/proc/<tid>/cgroup`, resolved lexically: how many levels it climbs
/// above the reader's cgroup-namespace root (`/../..` inside a pod, whose namespace root
/// is its own container's cgroup), and the components below that. `None` for a path that
/// is not absolute.
pub fn normalize_cgroup_path(path: &str) -> Option<(usize, Vec<&str>)> {
    let rest = path.strip_prefix('/')?;
    let mut ups = 0;
    let mut parts: Vec<&str> = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    ups += 1;
                }
            }
            part => parts.push(part),
        }
    }
    Some((ups, parts))
}

/// How deep below the cgroup root a suffix match looks for the namespace root's ancestor.
const SUFFIX_SEARCH_DEPTH: usize = 4;
/// How many directories a suffix match looks at, at most.
const SUFFIX_SEARCH_DIRS: usize = 4096;

/// The directory of a cgroup path under `cgroup_root`, never outside it. A path that climbs
/// above the reader's namespace root (`/../../kubepods/...`, read by an agent in a pod) names
/// its cgroup relative to an ancestor the reader cannot see: it is matched by suffix, the
/// components below the climb looked up under the root itself first, then under its
/// subdirectories (a bounded walk), and taken only when exactly one matches.
pub fn cgroup_dir(cgroup_root: &Path, path: &str) -> Option<PathBuf> {
    let (ups, parts) = normalize_cgroup_path(path)?;
    let relative: PathBuf = parts.iter().collect();
    let root = cgroup_root.canonicalize().ok()?;
    let inside = |dir: &Path| -> Option<PathBuf> {
        // Symlinks could lead out; cgroupfs has none, a bind-mounted tree might.
        let real = dir.canonicalize().ok()?;
        (real.starts_with(&root) && real.is_dir()).then_some(real)
    };
    if let Some(dir) = inside(&root.join(&relative)) {
        return Some(dir);
    }
    if ups == 0 || parts.is_empty() {
        return None;
    }
    let mut found = None;
    let mut level = vec![root.clone()];
    let mut looked = 0;
    for _ in 0..SUFFIX_SEARCH_DEPTH {
        let mut next = Vec::new();
        for dir in &level {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                looked += 1;
                if looked > SUFFIX_SEARCH_DIRS {
                    return found;
                }
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let candidate = entry.path();
                if let Some(dir) = inside(&candidate.join(&relative)) {
                    if found.is_some() {
                        // Ambiguous: attribute nothing rather than the wrong cgroup.
                        return None;
                    }
                    found = Some(dir);
                }
                next.push(candidate);
            }
        }
        level = next;
    }
    found
}

/// Whether this process is in the network namespace of host process `pid` (under
/// `proc_root`); `None` when nothing tells. The namespace links need ptrace access, which an
/// agent in a pod lacks for host daemons; `net/tcp` does not, and lists each listening
/// socket's inode, which no two namespaces share.
pub fn shares_network_namespace(proc_root: &Path, pid: u32) -> Option<bool> {
    let host = proc_root.join(pid.to_string());
    if let (Ok(ours), Ok(theirs)) = (
        std::fs::read_link("/proc/self/ns/net"),
        std::fs::read_link(host.join("ns/net")),
    ) {
        return Some(ours == theirs);
    }
    let ours = listening_sockets_in(Path::new("/proc/self/net"))?;
    let theirs = listening_sockets_in(&host.join("net"))?;
    if ours.is_empty() && theirs.is_empty() {
        return None;
    }
    Some(!ours.is_disjoint(&theirs))
}

fn listening_sockets_in(net: &Path) -> Option<std::collections::BTreeSet<u64>> {
    let mut inodes = std::collections::BTreeSet::new();
    let mut read_any = false;
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(net.join(table)) {
            read_any = true;
            inodes.extend(listening_socket_inodes(&text));
        }
    }
    read_any.then_some(inodes)
}

/// The inodes of the LISTEN sockets (state `0A`) in a `/proc/net/tcp`-style table.
pub fn listening_socket_inodes(table: &str) -> impl Iterator<Item = u64> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let listening = fields.get(3) == Some(&"0A");
        fields
            .get(9)
            .filter(|_| listening)?
            .parse()
            .ok()
            .filter(|&inode| inode != 0)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn listening_sockets_are_told_by_state_and_inode() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:2838 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0\n\
           1: 0100007F:2838 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000     0        0 41414 1 0000000000000000 20 4 30 10 -1\n\
           2: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_socket_inodes(table).collect::<Vec<_>>(), [31337]);
    }

    #[test]
    fn this_process_shares_its_own_network_namespace() {
        assert_eq!(
            shares_network_namespace(Path::new("/proc"), std::process::id()),
            Some(true)
        );
    }

    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let stat = "4242 (a) b (c)) D 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 1 0 987654 \
                    1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(TaskState {
                state: 'D',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) R 1"), None);
    }

    #[test]
    fn reads_stack_and_cgroup_from_a_proc_tree() {
        let root = std::env::temp_dir().join(format!("npd-procfs-{}", std::process::id()));
        let task = root.join("77");
        std::fs::create_dir_all(&task).unwrap();
        std::fs::write(
            task.join("stack"),
            "[<0>] percpu_rwsem_wait+0x116/0x140\n[<0>] __sb_start_write+0x50/0x60\n",
        )
        .unwrap();
        std::fs::write(
            task.join("cgroup"),
            "12:memory:/kubepods/pod1/abc\n1:name=systemd:/x\n0::/system.slice/a.service\n",
        )
        .unwrap();
        std::fs::write(task.join("status"), "Name:\tx\nTgid:\t70\nPid:\t77\n").unwrap();
        assert_eq!(
            kernel_stack(&root, 77).unwrap(),
            vec!["percpu_rwsem_wait+0x116", "__sb_start_write+0x50"]
        );
        assert_eq!(
            cgroup_path(&root, 77, CgroupLayout::Legacy).as_deref(),
            Some("/kubepods/pod1/abc")
        );
        assert_eq!(
            cgroup_path(&root, 77, CgroupLayout::Unified).as_deref(),
            Some("/system.slice/a.service")
        );
        assert_eq!(tgid_of(&root, 77), Some(70));
        assert_eq!(kernel_stack(&root, 78), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn cgroup_paths_from_a_namespace_never_leave_the_root() {
        assert_eq!(
            normalize_cgroup_path("/../../kubepods/./pod1//c1"),
            Some((2, vec!["kubepods", "pod1", "c1"]))
        );
        assert_eq!(normalize_cgroup_path("/a/../../b"), Some((1, vec!["b"])));
        assert_eq!(normalize_cgroup_path("/"), Some((0, vec![])));
        assert_eq!(normalize_cgroup_path("relative"), None);

        let base = std::env::temp_dir().join(format!("npd-cgns-{}", std::process::id()));
        let root = base.join("cgroup");
        let proc_root = base.join("proc");
        // The pod's container sits under a runtime's slice; outside the root, a sibling.
        std::fs::create_dir_all(root.join("system.slice/runtime/kubepods/pod1/c1")).unwrap();
        std::fs::create_dir_all(root.join("kubepods/pod2/c2")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::create_dir_all(proc_root.join("5")).unwrap();
        let id_of = |path: &str| {
            std::fs::write(proc_root.join("5/cgroup"), format!("0::{path}\n")).unwrap();
            cgroup_id(&proc_root, 5, CgroupLayout::Unified, &root)
        };
        let ino = |dir: &str| std::fs::metadata(root.join(dir)).unwrap().ino();

        // Climbing to the host root: found from the root.
        assert_eq!(
            id_of("/../../kubepods/pod2/c2"),
            Some(ino("kubepods/pod2/c2"))
        );
        // Climbing to an ancestor below the root: found by suffix.
        assert_eq!(
            id_of("/../../kubepods/pod1/c1"),
            Some(ino("system.slice/runtime/kubepods/pod1/c1"))
        );
        // Never outside the root, however far it climbs.
        assert_eq!(id_of("/../outside"), None);
        assert_eq!(id_of("/../../../../../../../../../tmp"), None);
        assert_eq!(id_of("/kubepods/../../outside"), None);
        // A plain path as before.
        assert_eq!(id_of("/kubepods/pod2"), Some(ino("kubepods/pod2")));
        // Ambiguous suffixes attribute nothing.
        std::fs::create_dir_all(root.join("other/kubepods/pod1/c1")).unwrap();
        assert_eq!(id_of("/../kubepods/pod1/c1"), None);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
