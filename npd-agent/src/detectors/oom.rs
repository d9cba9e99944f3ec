//! OOM kills: `oom:mark_victim`, with the victim's cgroup read in the kernel at the kill.

use serde::Serialize;

use crate::event::Task;

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
    /// Where the victim's `cgroup_id` came from: `kernel` (read from the victim at the kill)
    /// or `procfs` (read afterwards, when the hook cannot reach the victim; may be lost).
    pub cgroup_source: &'static str,
    /// The task whose allocation ran the OOM killer.
    pub trigger: Task,
    pub trigger_stack: Vec<String>,
}

impl OomKill {
    pub fn summary(&self) -> String {
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
}
