//! What /proc says about a task, for the fallbacks where a hook cannot read it in the kernel.

use std::{os::unix::fs::MetadataExt, path::Path};

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
    let dir = cgroup_root.join(path.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
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
}
