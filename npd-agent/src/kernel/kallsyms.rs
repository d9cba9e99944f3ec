//! Kernel addresses to `function+0xoff`, from /proc/kallsyms.
//!
//! The table is not kept in memory (it is ~120k symbols, several MiB): problems that carry
//! stacks are rare, so each batch of addresses is resolved in one streaming pass (~50 ms),
//! and results are cached.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

const KALLSYMS: &str = "/proc/kallsyms";
const CACHE_LIMIT: usize = 4096;

#[derive(Debug)]
pub struct Symbolizer {
    path: PathBuf,
    cache: HashMap<u64, String>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new(Path::new(KALLSYMS))
    }
}

impl Symbolizer {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            cache: HashMap::new(),
        }
    }

    /// Symbolizes `addresses` in order. Unknown addresses (or hidden ones, when kallsyms
    /// shows zeros to an unprivileged reader) come out as `0x<hex>`.
    pub fn symbolize(&mut self, addresses: &[u64]) -> Vec<String> {
        let wanted: Vec<u64> = addresses
            .iter()
            .copied()
            .filter(|addr| !self.cache.contains_key(addr))
            .collect();
        if !wanted.is_empty() {
            if self.cache.len() + wanted.len() > CACHE_LIMIT {
                self.cache.clear();
            }
            let resolved = self.resolve(&wanted);
            self.cache.extend(resolved);
        }
        addresses
            .iter()
            .map(|addr| {
                self.cache
                    .get(addr)
                    .cloned()
                    .unwrap_or_else(|| format!("0x{addr:x}"))
            })
            .collect()
    }

    fn resolve(&self, wanted: &[u64]) -> HashMap<u64, String> {
        // For each wanted address, the text symbol with the greatest address not above it.
        let mut best: HashMap<u64, (u64, String)> = HashMap::new();
        let Ok(file) = std::fs::File::open(&self.path) else {
            return HashMap::new();
        };
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            let mut parts = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 {
                continue;
            }
            for &want in wanted {
                if addr <= want && best.get(&want).is_none_or(|(found, _)| addr > *found) {
                    best.insert(want, (addr, name.to_owned()));
                }
            }
        }
        best.into_iter()
            .map(|(want, (addr, name))| (want, format!("{name}+0x{:x}", want - addr)))
            .collect()
    }

    /// The address of a symbol, or `None` (absent, or hidden by kptr_restrict).
    pub fn address_of(&self, symbol: &str) -> Option<u64> {
        let file = std::fs::File::open(&self.path).ok()?;
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| {
                let mut parts = line.split_ascii_whitespace();
                let addr = parts.next()?;
                let _kind = parts.next()?;
                (parts.next()? == symbol)
                    .then(|| u64::from_str_radix(addr, 16).ok())
                    .flatten()
            })
            .filter(|&addr| addr != 0)
    }
}

/// Drops the frames of npd's own hook (the BPF program, its trampoline or tracepoint glue)
/// from the top of a stack captured in the current context: they say where npd looked, not
/// where the problem is.
pub fn without_tracing_frames(mut stack: Vec<String>) -> Vec<String> {
    const TRACING: [&str; 8] = [
        "bpf_prog_",
        "bpf_trampoline_",
        "bpf_trace_run",
        "__bpf_trace_",
        "__bpf_prog_enter",
        "trace_call_bpf",
        "perf_trace_",
        "perf_syscall_",
    ];
    let hook_frames = stack
        .iter()
        .take_while(|frame| TRACING.iter().any(|prefix| frame.starts_with(prefix)))
        .count();
    stack.drain(..hook_frames);
    stack
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolizes_to_the_nearest_text_symbol_below() {
        let dir = std::env::temp_dir().join(format!("npd-kallsyms-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kallsyms");
        std::fs::write(
            &path,
            "ffffffff81000000 T _text\n\
             ffffffff81000100 t helper\n\
             ffffffff81000180 d some_data\n\
             ffffffff81000200 T percpu_rwsem_wait\n\
             ffffffffc0000000 t mod_fn\t[some_module]\n",
        )
        .unwrap();
        let mut symbolizer = Symbolizer::new(&path);
        let out = symbolizer.symbolize(&[
            0xffffffff81000210,
            0xffffffff81000190,
            0xffffffffc0000004,
            0x10,
        ]);
        assert_eq!(
            out,
            vec![
                "percpu_rwsem_wait+0x10",
                "helper+0x90",
                "mod_fn+0x4",
                "0x10",
            ]
        );
        assert_eq!(symbolizer.address_of("helper"), Some(0xffffffff81000100));
        assert_eq!(symbolizer.address_of("absent"), None);
        assert_eq!(
            without_tracing_frames(
                [
                    "bpf_prog_9fe8_oom_btf+0xc41",
                    "bpf_trace_run2+0xf2",
                    "mark_oom_victim+0xba"
                ]
                .map(String::from)
                .to_vec()
            ),
            vec!["mark_oom_victim+0xba"]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
