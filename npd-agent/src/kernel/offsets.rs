//! Kernel struct offsets for the programs, resolved from this kernel's BTF at load time.

use npd_common::config::{KernelOffsets, UNKNOWN};

use super::btf::{Btf, BtfError};

/// RLIMIT_NOFILE's index; libc types it differently per target.
#[allow(clippy::unnecessary_cast)]
const RLIMIT_NOFILE: u32 = libc::RLIMIT_NOFILE as u32;

/// Kernel fields that could not be resolved, and why.
pub type MissingOffsets = Vec<(&'static str, String)>;

/// The offsets, and for each one that could not be resolved, why.
#[derive(Debug)]
pub struct ResolvedOffsets {
    pub offsets: KernelOffsets,
    pub missing: MissingOffsets,
}

/// Resolves every offset npd uses; a missing one is recorded, not fatal: the programs leave
/// out what depends on it.
pub fn resolve(btf: &Btf) -> ResolvedOffsets {
    let mut missing = Vec::new();
    let mut get = |name: &'static str, result: Result<u32, BtfError>| match result {
        Ok(offset) => offset,
        Err(err) => {
            missing.push((name, err.to_string()));
            UNKNOWN
        }
    };

    let offsets = KernelOffsets {
        task_pid: get("task_struct.pid", btf.offset_of("task_struct", "pid")),
        task_tgid: get("task_struct.tgid", btf.offset_of("task_struct", "tgid")),
        task_comm: get("task_struct.comm", btf.offset_of("task_struct", "comm")),
        task_cgroups: get(
            "task_struct.cgroups",
            btf.offset_of("task_struct", "cgroups"),
        ),
        task_signal: get("task_struct.signal", btf.offset_of("task_struct", "signal")),
        task_mm: get("task_struct.mm", btf.offset_of("task_struct", "mm")),
        task_real_cred: get(
            "task_struct.real_cred",
            btf.offset_of("task_struct", "real_cred"),
        ),
        css_set_dfl_cgrp: get("css_set.dfl_cgrp", btf.offset_of("css_set", "dfl_cgrp")),
        css_set_memory_subsys: get(
            "css_set.subsys[memory_cgrp_id]",
            btf.enum_value("memory_cgrp_id")
                .and_then(|index| btf.offset_of_element("css_set", "subsys", index as u32)),
        ),
        css_cgroup: get(
            "cgroup_subsys_state.cgroup",
            btf.offset_of("cgroup_subsys_state", "cgroup"),
        ),
        cgroup_kn: get("cgroup.kn", btf.offset_of("cgroup", "kn")),
        kernfs_node_id: get("kernfs_node.id", btf.offset_of("kernfs_node", "id")),
        kernfs_node_name: get("kernfs_node.name", btf.offset_of("kernfs_node", "name")),
        kernfs_node_parent: get(
            "kernfs_node.parent",
            btf.offset_of("kernfs_node", "__parent")
                .or_else(|_| btf.offset_of("kernfs_node", "parent")),
        ),
        css_parent: get(
            "cgroup_subsys_state.parent",
            btf.offset_of("cgroup_subsys_state", "parent"),
        ),
        css_memcg_max: get(
            "mem_cgroup.memory.max",
            btf.offset_of("mem_cgroup", "memory").and_then(|memory| {
                let max = btf.offset_of("page_counter", "max")?;
                let css = btf.offset_of("mem_cgroup", "css")?;
                Ok((memory + max).saturating_sub(css))
            }),
        ),
        signal_nofile_cur: get(
            "signal_struct.rlim[RLIMIT_NOFILE].rlim_cur",
            btf.offset_of_element("signal_struct", "rlim", RLIMIT_NOFILE)
                .and_then(|rlim| Ok(rlim + btf.offset_of("rlimit", "rlim_cur")?)),
        ),
        signal_oom_score_adj: get(
            "signal_struct.oom_score_adj",
            btf.offset_of("signal_struct", "oom_score_adj"),
        ),
        mm_total_vm: get("mm_struct.total_vm", btf.offset_of("mm_struct", "total_vm")),
        mm_pgtables_bytes: get(
            "mm_struct.pgtables_bytes",
            btf.offset_of("mm_struct", "pgtables_bytes"),
        ),
        mm_rss_file: get(
            "mm_struct.rss_stat[MM_FILEPAGES]",
            rss_offset(btf, "MM_FILEPAGES"),
        ),
        mm_rss_anon: get(
            "mm_struct.rss_stat[MM_ANONPAGES]",
            rss_offset(btf, "MM_ANONPAGES"),
        ),
        mm_rss_shmem: get(
            "mm_struct.rss_stat[MM_SHMEMPAGES]",
            rss_offset(btf, "MM_SHMEMPAGES"),
        ),
        cred_uid: get("cred.uid", btf.offset_of("cred", "uid")),
    };
    ResolvedOffsets { offsets, missing }
}

/// Offset from an `mm_struct` of one RSS page count. Since 6.2 `rss_stat` is an array of
/// `percpu_counter` whose `count` holds the folded value (what the OOM tracepoint prints);
/// before, a `struct mm_rss_stat` wrapping an array of `atomic_long_t`.
fn rss_offset(btf: &Btf, counter: &str) -> Result<u32, BtfError> {
    let index = btf.enum_value(counter)? as u32;
    if btf.member_is_array("mm_struct", "rss_stat")? {
        let element = btf.offset_of_element("mm_struct", "rss_stat", index)?;
        let element_type = btf.member_struct_name("mm_struct", "rss_stat")?;
        Ok(element + btf.offset_of(&element_type, "count")?)
    } else {
        let wrapper = btf.offset_of("mm_struct", "rss_stat")?;
        Ok(wrapper + btf.offset_of_element("mm_rss_stat", "count", index)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every offset resolves on the kernel the tests run on (BTF kernels only: npd needs it).
    #[test]
    fn all_offsets_resolve_on_this_kernel() {
        let btf = Btf::from_sys_fs()
            .expect("/sys/kernel/btf/vmlinux is readable (npd requires a kernel built with BTF)");
        let resolved = resolve(&btf);
        assert!(resolved.missing.is_empty(), "{:?}", resolved.missing);
        let o = resolved.offsets;
        // Cross-checks that hold on every kernel layout.
        assert_eq!(
            o.task_tgid,
            o.task_pid + 4,
            "pid and tgid are adjacent in task_struct"
        );
        assert!(o.mm_rss_anon > o.mm_rss_file);
        assert_ne!(o.css_set_memory_subsys, o.css_set_dfl_cgrp);
    }
}
