//! OOM kills: `oom:mark_victim`, with the victim's cgroup read in the kernel at the kill, as
//! OOMKilling Events.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use aya::Ebpf;
use npd_common::{RecordKind, oom::flags};
use serde::Serialize;

use super::{
    AttachContext, Attached, Detector, DetectorStatus, Runtime, Trampoline, attach_btf_tracepoint,
    attach_tracepoint, attach_trampoline,
};
use crate::{
    decode::{DecodeError, payload},
    engine::describe_task,
    event::{Attribution, Event, Source, Task, comm_string, escape_untrusted},
    finding,
    kernel::{
        CgroupLayout,
        btf::ArgType,
        kallsyms::{Symbolizer, without_tracing_frames},
        procfs,
    },
    problem::{Assessment, EventReason, Report},
};

pub use npd_common::oom::{BTF_PROGRAM, FENTRY_PROGRAM, TRACEPOINT_PROGRAM};
/// The tracepoint whose typed arguments decide between tp_btf and the rest.
pub const MARK_VICTIM: &str = "mark_victim";

/// NPD's reason for an OOM kill.
pub const OOM_KILLING: EventReason = EventReason::warning("OOMKilling");

#[derive(Debug)]
pub struct OomDetector;

pub static DETECTOR: OomDetector = OomDetector;

impl Detector for OomDetector {
    fn kernel(&self) -> Option<npd_common::counters::Detector> {
        Some(npd_common::counters::Detector::Oom)
    }

    fn name(&self) -> &'static str {
        "oom"
    }

    fn about(&self) -> &'static str {
        "OOM kills (oom:mark_victim), attributed to the victim's pod -> OOMKilling"
    }

    fn reasons(&self) -> &'static [EventReason] {
        &[OOM_KILLING]
    }

    fn attach(&self, ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> Attached {
        let host = ctx.host;
        Attached {
            status: attach(ebpf, ctx),
            runtime: Box::new(OomDecoder::new(
                &host.proc_root,
                host.layout,
                &host.cgroup_root,
            )),
        }
    }
}

/// Whether the OOM killer acted for a memory cgroup at its limit or for the whole system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OomScope {
    Memcg,
    Global,
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OomKill {
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub pgtables_kb: Option<u64>,
    pub uid: Option<u32>,
    pub oom_score_adj: Option<i16>,
    pub scope: OomScope,
    /// The memory cgroup that hit its limit (memcg scope), as a path in its hierarchy.
    pub memcg: Option<String>,
    /// Its limit, read from its page counter in the kernel at the kill.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memcg_limit_kb: Option<u64>,
    /// Where the victim's `cgroup_id` came from: `kernel` (read from the victim at the kill)
    /// or `procfs` (read afterwards, when the hook cannot reach the victim; may be lost).
    pub cgroup_source: &'static str,
    /// The task whose allocation ran the OOM killer.
    pub trigger: Task,
    pub trigger_stack: Vec<String>,
    /// The victim's cgroup path as the kernel named it at the kill (the index may never have
    /// seen a cgroup that lived for a second); shown as the attribution's `cgroup`.
    #[serde(skip)]
    pub kernel_cgroup_path: Option<String>,
    /// The limited memory cgroup the kernel found at the kill, as a path; `memcg` is this
    /// when present, else found by reading the limit files.
    #[serde(skip)]
    pub kernel_memcg: Option<String>,
}

finding!(OomKill, "oom_kill", {
    fn summary(&self) -> String {
        let rss = self
            .anon_rss_kb
            .zip(self.file_rss_kb)
            .zip(self.shmem_rss_kb)
            .map(|((anon, file), shmem)| format!(", rss {} KiB", anon + file + shmem))
            .unwrap_or_default();
        let scope = match (&self.scope, &self.memcg) {
            (OomScope::Memcg, Some(memcg)) => format!("memory cgroup {memcg} at its limit"),
            (OomScope::Memcg, None) => "memory cgroup at its limit".to_owned(),
            (OomScope::Global, _) => "system out of memory".to_owned(),
            (OomScope::Unknown, _) => "out of memory".to_owned(),
        };
        format!("killed by the OOM killer ({scope}{rss})")
    }

    fn assess(&self, event: &Event) -> Assessment {
        let trigger = if self.trigger.pid != 0 && self.trigger.pid != event.task.pid {
            format!(
                "; the allocation that ran it was by {} (pid {})",
                escape_untrusted(&self.trigger.comm),
                self.trigger.pid
            )
        } else {
            String::new()
        };
        let message = format!(
            "process {} {}{trigger}",
            describe_task(&event.task, event.attribution.as_ref()),
            self.summary()
        );
        Assessment::report(Report {
            reason: OOM_KILLING,
            detail_key: event.task.comm.clone(),
            message,
            count: 1,
            since_boot: false,
        })
    }

    fn cgroup_path(&self) -> Option<&str> {
        self.kernel_cgroup_path.as_deref()
    }

    /// For a memory-cgroup OOM: which cgroup hit its limit (the victim's or an ancestor).
    fn attributed(&mut self, attribution: Option<&Attribution>, cgroup_root: &Path) {
        if self.scope != OomScope::Memcg {
            return;
        }
        if self.kernel_memcg.is_some() {
            self.memcg.clone_from(&self.kernel_memcg);
        } else if let Some(path) = attribution.and_then(|a| a.cgroup.as_deref()) {
            self.memcg = limiting_memcg(cgroup_root, path);
        }
    }
});

/// tp_btf where `mark_victim` passes the victim's `task_struct *` (6.5+); fentry on
/// `mark_oom_victim` where the tracepoint passes only a pid and fentry is allowed; the
/// classic tracepoint otherwise.
fn attach(ebpf: &mut Ebpf, ctx: &AttachContext<'_>) -> DetectorStatus {
    let mut status = DetectorStatus::new("oom");
    let typed = match ctx.btf.tracepoint_args(MARK_VICTIM) {
        Ok(args) if args.first() == Some(&ArgType::StructPtr("task_struct".into())) => Ok(()),
        Ok(args) => Err(format!(
            "this kernel's mark_victim passes {args:?}, not the victim task"
        )),
        Err(err) => Err(err),
    };
    let btf = typed.and_then(|()| attach_btf_tracepoint(ebpf, ctx, BTF_PROGRAM, "mark_victim"));
    let done = btf.is_ok();
    status.tried(Source::BtfTracepoint, "mark_victim", btf);
    if done {
        return status;
    }
    let fentry = attach_trampoline(
        ebpf,
        ctx,
        Trampoline::Fentry,
        FENTRY_PROGRAM,
        "mark_oom_victim",
    );
    let done = fentry.is_ok();
    status.tried(Source::Fentry, "mark_oom_victim", fentry);
    if done {
        return status;
    }
    status.tried(
        Source::Tracepoint,
        "oom:mark_victim",
        attach_tracepoint(ebpf, ctx, TRACEPOINT_PROGRAM, "oom", "mark_victim"),
    );
    if status.active.is_some() {
        status.notes.push(
            "victim cgroup read from /proc after the kill (may be lost to the reaper)".to_owned(),
        );
    }
    status
}

/// A memory-cgroup OOM runs the OOM killer from the memory controller
/// (`mem_cgroup_out_of_memory`, called when a charge fails at the limit); a system-wide one
/// from the page allocator or the page-fault path.
pub fn scope_from_stack(stack: &[String]) -> OomScope {
    let function = |frame: &String| frame.split('+').next().unwrap_or_default().to_owned();
    let functions: Vec<String> = stack.iter().map(function).collect();
    if functions
        .iter()
        .any(|f| f.starts_with("mem_cgroup_") || f.contains("memcg") || f == "try_charge")
    {
        OomScope::Memcg
    } else if functions.iter().any(|f| {
        f == "out_of_memory" || f.starts_with("__alloc_pages") || f == "pagefault_out_of_memory"
    }) {
        OomScope::Global
    } else {
        OomScope::Unknown
    }
}

/// Turns OOM records into events.
#[derive(Debug)]
pub struct OomDecoder {
    proc_root: PathBuf,
    page_size: u64,
    layout: CgroupLayout,
    cgroup_root: PathBuf,
}

impl OomDecoder {
    pub fn new(proc_root: &Path, layout: CgroupLayout, cgroup_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_owned(),
            // SAFETY: sysconf has no preconditions.
            page_size: u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096),
            layout,
            cgroup_root: cgroup_root.to_owned(),
        }
    }

    pub fn on_record(
        &self,
        record: &npd_common::oom::OomKill,
        symbolizer: &mut Symbolizer,
    ) -> Event {
        let mut task = Task::from_header(&record.header);
        if task.pid == 0 {
            task.pid = procfs::tgid_of(&self.proc_root, task.tid).unwrap_or(task.tid);
        }
        let cgroup_source = if record.flags & flags::VICTIM_CGROUP != 0 {
            "kernel"
        } else if let Some(id) =
            procfs::cgroup_id(&self.proc_root, task.tid, self.layout, &self.cgroup_root)
        {
            task.cgroup_id = id;
            "procfs"
        } else {
            "unknown"
        };
        let frames = (record.trigger_stack_len as usize).min(record.trigger_stack.len());
        let trigger_stack =
            without_tracing_frames(symbolizer.symbolize(&record.trigger_stack[..frames]));
        let memory = record.flags & flags::MEMORY != 0;
        let kb = |value: u64| memory.then_some(value);
        let kernel_path = kernel_cgroup_path(record);
        let detail = OomKill {
            total_vm_kb: kb(record.total_vm_kb),
            anon_rss_kb: kb(record.anon_rss_kb),
            file_rss_kb: kb(record.file_rss_kb),
            shmem_rss_kb: kb(record.shmem_rss_kb),
            pgtables_kb: kb(record.pgtables_kb),
            uid: (record.flags & flags::UID != 0).then_some(record.uid),
            oom_score_adj: (record.flags & flags::OOM_SCORE_ADJ != 0)
                .then_some(record.oom_score_adj),
            scope: scope_from_stack(&trigger_stack),
            memcg: None,
            cgroup_source,
            trigger: Task {
                pid: record.trigger_pid,
                tid: record.trigger_tid,
                comm: comm_string(&record.trigger_comm),
                cgroup_id: record.trigger_cgroup_id,
            },
            trigger_stack,
            kernel_memcg: kernel_path
                .as_deref()
                .and_then(|path| kernel_memcg(record, path)),
            kernel_cgroup_path: kernel_path,
            memcg_limit_kb: (record.flags & flags::LIMIT != 0)
                .then(|| record.limit_pages.saturating_mul(self.page_size) / 1024),
        };
        let source = Source::from_hook(
            npd_common::Hook::from_u8(record.header.hook).unwrap_or(npd_common::Hook::Tracepoint),
        );
        Event::new(record.header.ts_ns, task, source, detail)
    }
}

/// The victim's cgroup path from the names the kernel wrote (leaf first), when it wrote all
/// of them.
fn kernel_cgroup_path(record: &npd_common::oom::OomKill) -> Option<String> {
    if record.flags & flags::VICTIM_CGROUP_PATH == 0 {
        return None;
    }
    crate::attribution::from_kernel_names(&record.victim_cgroup_names, record.victim_cgroup_depth)
}

/// The limited memory cgroup the kernel found, as a path: `victim` (the victim's path from
/// the same record) up to the directory whose id it names (`None` if it is not on that path,
/// e.g. the root).
fn kernel_memcg(record: &npd_common::oom::OomKill, victim: &str) -> Option<String> {
    if record.flags & flags::LIMIT == 0 {
        return None;
    }
    let depth = (record.victim_cgroup_depth as usize).min(record.victim_cgroup_ids.len());
    let above = record.victim_cgroup_ids[..depth]
        .iter()
        .position(|&id| id == record.limit_cgroup_id)?;
    // `above` levels above the leaf: drop that many components.
    let mut path = victim;
    for _ in 0..above {
        path = &path[..path.rfind('/')?];
    }
    Some(if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    })
}

impl Runtime for OomDecoder {
    fn decode(
        &mut self,
        kind: RecordKind,
        data: &[u8],
        symbolizer: &mut Symbolizer,
    ) -> Result<Event, DecodeError> {
        let record = payload(kind, npd_common::oom::OOM_KILL_VERSION, data)?;
        Ok(self.on_record(&record, symbolizer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(frames: &[&str]) -> Vec<String> {
        frames.iter().map(|f| (*f).to_owned()).collect()
    }

    #[test]
    fn scope_comes_from_who_ran_the_oom_killer() {
        // 6.x memory-cgroup OOM (charge at the limit).
        let memcg = stack(&[
            "mark_oom_victim+0x1a",
            "oom_kill_process+0x1f0",
            "out_of_memory+0x200",
            "mem_cgroup_out_of_memory+0x13c",
            "try_charge_memcg+0x7ba",
            "charge_memcg+0x2e",
            "__mem_cgroup_charge+0x2c",
            "do_anonymous_page+0x140",
        ]);
        assert_eq!(scope_from_stack(&memcg), OomScope::Memcg);
        // System-wide: the page allocator ran out.
        let global = stack(&[
            "oom_kill_process+0x1f0",
            "out_of_memory+0x200",
            "__alloc_pages_slowpath.constprop.0+0xbd1",
            "__alloc_pages_noprof+0x2f5",
        ]);
        assert_eq!(scope_from_stack(&global), OomScope::Global);
        assert_eq!(scope_from_stack(&[]), OomScope::Unknown);
    }

    fn with_names(names: &[&str], whole: bool) -> npd_common::oom::OomKill {
        // SAFETY: a plain-old-data record: integers and byte arrays, all zero valid.
        let mut record: npd_common::oom::OomKill = unsafe { std::mem::zeroed() };
        for (level, (slot, name)) in record.victim_cgroup_names.iter_mut().zip(names).enumerate() {
            slot[..name.len()].copy_from_slice(name.as_bytes());
            record.victim_cgroup_ids[level] = 100 + level as u64;
        }
        record.victim_cgroup_depth = names.len() as u32;
        if whole {
            record.flags |= flags::VICTIM_CGROUP_PATH;
        }
        record
    }

    /// A container that lived a second: its cgroup is gone before the index could see it,
    /// and the path the kernel read at the kill still names its pod.
    #[test]
    fn a_cgroup_the_index_never_saw_is_attributed_by_the_kernels_path() {
        use crate::attribution::{Attributor, CgroupIndex};
        let uid = "11111111-2222-3333-4444-555555555555";
        let container = "ab".repeat(32);
        let path = format!("/kubepods/burstable/pod{uid}/{container}");
        let mut record = with_names(
            &[&container, &format!("pod{uid}"), "burstable", "kubepods"],
            true,
        );
        record.header.tid = 42;
        record.header.cgroup_id = 7777;
        record.flags |= flags::VICTIM_CGROUP;
        let decoder = OomDecoder::new(
            Path::new("/nonexistent"),
            CgroupLayout::Unified,
            Path::new("/nonexistent"),
        );
        let mut event = decoder.on_record(&record, &mut Symbolizer::new(Path::new("/nonexistent")));
        let mut attributor = Attributor::new(CgroupIndex::new("/nonexistent-npd-cgroup-root"));
        attributor.attribute_event(&mut event, std::time::Instant::now());
        let attribution = event.attribution.expect("attributed");
        assert_eq!(attribution.cgroup.as_deref(), Some(path.as_str()));
        let pod = attribution.pod.expect("a pod");
        assert_eq!(pod.uid, uid);
        assert_eq!(pod.container_id.as_deref(), Some(container.as_str()));
    }

    #[test]
    fn the_limited_memcg_is_the_victims_path_up_to_the_id_the_kernel_found() {
        let names = ["ctr", "pod1", "burstable", "kubepods"];
        // Ids are 100 + level (leaf 100); `None`: not on the path.
        let cases = [
            (Some(100), Some("/kubepods/burstable/pod1/ctr")),
            (Some(101), Some("/kubepods/burstable/pod1")),
            (Some(103), Some("/kubepods")),
            (Some(7), None),
            (None, None),
        ];
        for (limit_id, expected) in cases {
            let mut record = with_names(&names, true);
            if let Some(id) = limit_id {
                record.flags |= flags::LIMIT;
                record.limit_cgroup_id = id;
            }
            let victim = kernel_cgroup_path(&record).expect("a whole path");
            assert_eq!(
                kernel_memcg(&record, &victim).as_deref(),
                expected,
                "{limit_id:?}"
            );
        }
    }

    #[test]
    fn the_kernel_names_a_cgroup_leaf_first() {
        let cases: &[(&[&str], bool, Option<&str>)] = &[
            (
                &[
                    "cri-containerd-ab12.scope",
                    "kubepods-pod1.slice",
                    "kubepods.slice",
                ],
                true,
                Some("/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab12.scope"),
            ),
            // The root cgroup itself.
            (&[], true, Some("/")),
            // The walk stopped short of the root: no path to attribute by.
            (&["ab12", "pod1"], false, None),
            (&["ab12", ""], true, None),
            // Cut to its slot: not a path to attribute by.
            (&[&"x".repeat(127)], true, None),
        ];
        for (names, whole, expected) in cases {
            assert_eq!(
                kernel_cgroup_path(&with_names(names, *whole)).as_deref(),
                *expected,
                "{names:?} whole={whole}"
            );
        }
    }
}

/// The limit file of the memory hierarchy at `root`: a v1 root has the v1 file, a v2 root
/// none. Remembered for the last root asked (one per agent): a stat of kernfs per OOM kill
/// was a tenth of the agent's time in an OOM storm.
fn limit_file(root: &Path) -> &'static str {
    static LAST: Mutex<Option<(PathBuf, &'static str)>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    match last.as_ref() {
        Some((cached, file)) if cached == root => file,
        _ => {
            let file = if root.join("memory.limit_in_bytes").exists() {
                "memory.limit_in_bytes"
            } else {
                "memory.max"
            };
            *last = Some((root.to_owned(), file));
            file
        }
    }
}

/// The memory cgroup that hit its limit: the nearest ancestor (the cgroup itself included)
/// of `cgroup_path` below `root` with a finite memory limit.
pub fn limiting_memcg(root: &Path, cgroup_path: &str) -> Option<String> {
    // v1 reports "no limit" as a huge page-aligned number.
    const V1_UNLIMITED: u64 = 1 << 62;
    let file = limit_file(root);
    let mut path = cgroup_path.trim_end_matches('/').to_owned();
    while !path.is_empty() && path != "/" {
        let dir = root.join(path.trim_start_matches('/'));
        let limited = std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|limit| limit < V1_UNLIMITED);
        if limited {
            return Some(path);
        }
        path.truncate(path.rfind('/').unwrap_or(0));
    }
    None
}

#[cfg(test)]
mod memcg_tests {
    use super::*;

    #[test]
    fn finds_the_nearest_limited_ancestor() {
        // (hierarchy, its limit file, "no limit" in it)
        for (version, file, unlimited) in [
            ("v2", "memory.max", "max"),
            ("v1", "memory.limit_in_bytes", "9223372036854771712"),
        ] {
            let root =
                std::env::temp_dir().join(format!("npd-memcg-{version}-{}", std::process::id()));
            let leaf = root.join("kubepods/burstable/podx/ctr");
            std::fs::create_dir_all(&leaf).unwrap();
            if version == "v1" {
                // Only a v1 root has a limit file.
                std::fs::write(root.join(file), unlimited).unwrap();
            }
            std::fs::write(leaf.join(file), format!("{unlimited}\n")).unwrap();
            std::fs::write(
                root.join("kubepods/burstable/podx").join(file),
                "67108864\n",
            )
            .unwrap();
            std::fs::write(root.join("kubepods").join(file), format!("{unlimited}\n")).unwrap();
            assert_eq!(
                limiting_memcg(&root, "/kubepods/burstable/podx/ctr").as_deref(),
                Some("/kubepods/burstable/podx"),
                "{version}"
            );
            assert_eq!(limiting_memcg(&root, "/kubepods"), None, "{version}");
            std::fs::remove_dir_all(&root).unwrap();
        }
    }
}
