//! The BPF maps and programs a process holds, as the kernel accounts for them: what the
//! benchmarks report as npd's footprint, and the kernel's own count of a program's runs (a
//! witness the tests compare npd's accounting with).

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::Context;
use serde::Serialize;

/// A BPF map or program a process holds, as the kernel describes it in fdinfo.
#[derive(Clone, Debug, Serialize)]
pub struct BpfObject {
    pub kind: &'static str,
    pub id: u64,
    pub name: String,
    /// `map_type` or `prog_type` (numeric, as in fdinfo).
    pub object_type: u64,
    /// What the kernel charges for it (`memlock`; on 6.4+ the map's real memory usage).
    pub memlock_bytes: u64,
    pub key_size: u64,
    pub value_size: u64,
    pub max_entries: u64,
    /// Only with kernel.bpf_stats_enabled=1.
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl BpfObject {
    pub fn type_name(&self) -> String {
        let name = match (self.kind, self.object_type) {
            ("map", 1) => "hash",
            ("map", 2) => "array",
            ("map", 5) => "percpu_hash",
            ("map", 6) => "percpu_array",
            ("map", 9) => "lru_hash",
            ("map", 10) => "lru_percpu_hash",
            ("map", 27) => "ringbuf",
            ("prog", 5) => "tracepoint",
            ("prog", 17) => "raw_tracepoint",
            ("prog", 26) => "tracing",
            _ => return format!("{} type {}", self.kind, self.object_type),
        };
        name.to_owned()
    }
}

/// Every BPF map and program `pid` holds an fd to, each once.
pub fn bpf_objects(pid: u32) -> anyhow::Result<Vec<BpfObject>> {
    let dir = format!("/proc/{pid}/fd");
    let mut found = BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry?;
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let kind = match target.to_string_lossy().as_ref() {
            "anon_inode:bpf-map" => "map",
            "anon_inode:bpf-prog" => "prog",
            _ => continue,
        };
        let info_path = Path::new("/proc")
            .join(pid.to_string())
            .join("fdinfo")
            .join(entry.file_name());
        let Ok(info) = fs::read_to_string(&info_path) else {
            continue;
        };
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let id = field(if kind == "map" { "map_id" } else { "prog_id" });
        found.entry((kind, id)).or_insert_with(|| BpfObject {
            kind,
            id,
            name: object_name(kind, id).unwrap_or_default(),
            object_type: field(if kind == "map" {
                "map_type"
            } else {
                "prog_type"
            }),
            memlock_bytes: field("memlock"),
            key_size: field("key_size"),
            value_size: field("value_size"),
            max_entries: field("max_entries"),
            run_time_ns: field("run_time_ns"),
            run_cnt: field("run_cnt"),
        });
    }
    Ok(found.into_values().collect())
}

/// The name a map or program was loaded with, through bpf(2) by its id (fdinfo lacks it).
fn object_name(kind: &str, id: u64) -> Option<String> {
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // Offsets of `name` in struct bpf_map_info and struct bpf_prog_info (uapi, stable).
    let (get_fd, name_offset) = match kind {
        "map" => (BPF_MAP_GET_FD_BY_ID, 24),
        _ => (BPF_PROG_GET_FD_BY_ID, 64),
    };
    let mut attr = [0u32; 32];
    attr[0] = u32::try_from(id).ok()?;
    // SAFETY: bpf(2) reads `size_of_val(&attr)` bytes of a zeroed union bpf_attr whose first
    // member is the id; it returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            get_fd,
            attr.as_mut_ptr(),
            size_of_val(&attr) as u32,
        )
    };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    let mut info = [0u8; 256];
    let mut attr = [0u32; 32];
    attr[0] = fd as u32;
    attr[1] = info.len() as u32;
    let address = info.as_mut_ptr() as u64;
    attr[2] = address as u32;
    attr[3] = (address >> 32) as u32;
    // SAFETY: the kernel writes at most `info_len` bytes to `info`, which lives until after
    // the call; `fd` is ours and closed right after.
    let ret = unsafe {
        let ret = libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            size_of_val(&attr) as u32,
        );
        libc::close(fd);
        ret
    };
    if ret != 0 {
        return None;
    }
    let name = &info[name_offset..name_offset + 16];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// How many times the kernel ran `pid`'s program whose name starts with `name_prefix` (names
/// are cut to 15 bytes), counted only while `kernel.bpf_stats_enabled` is 1.
pub fn program_runs(pid: u32, name_prefix: &str) -> anyhow::Result<u64> {
    bpf_objects(pid)?
        .into_iter()
        .find(|o| o.kind == "prog" && o.name.starts_with(name_prefix))
        .map(|o| o.run_cnt)
        .with_context(|| format!("process {pid} holds no BPF program named {name_prefix}*"))
}
