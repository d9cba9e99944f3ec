//! The names the agent finds the object's programs, maps and globals by.
//!
//! aya-ebpf's macros take only literal names, so the eBPF crate spells each one again; the
//! test below (run against a built object, see `NPD_BPF_OBJECT`) checks that every name listed
//! here is a symbol of the right kind in it. Each detector's own names are in its ABI module
//! (`PROGRAMS`, `MAPS`, `GLOBALS`), collected here through the registry.

/// The ring buffer every record goes through.
pub const RECORDS_MAP: &str = "RECORDS";
/// The per-CPU counters ([`crate::counters`]).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// aya-log's ring buffer (the programs' debug log).
pub const AYA_LOGS_MAP: &str = "AYA_LOGS";

/// The load-time configuration ([`crate::config::ProbeConfig`]), in .rodata.
pub const PROBE_CONFIG_GLOBAL: &str = "PROBE_CONFIG";
/// aya-log's level filter.
pub const AYA_LOG_LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

/// Programs `npd-agent check` only loads, to learn whether the kernel accepts tp_btf and
/// fentry programs at all.
pub const FEATURE_TP_BTF_PROGRAM: &str = "feature_tp_btf";
pub const FEATURE_FENTRY_PROGRAM: &str = "feature_fentry";

macro_rules! detector_names {
    ($($name:ident),* $(,)?) => {
        const PROGRAM_GROUPS: &[&[&str]] =
            &[&[FEATURE_TP_BTF_PROGRAM, FEATURE_FENTRY_PROGRAM], $(crate::$name::PROGRAMS),*];
        const MAP_GROUPS: &[&[&str]] =
            &[&[RECORDS_MAP, COUNTERS_MAP, AYA_LOGS_MAP], $(crate::$name::MAPS),*];
        const GLOBAL_GROUPS: &[&[&str]] =
            &[&[PROBE_CONFIG_GLOBAL, AYA_LOG_LEVEL_GLOBAL], $(crate::$name::GLOBALS),*];
    };
}
for_each_kernel_detector!(detector_names);

/// Every program the agent looks up by name.
pub const ALL_PROGRAMS: &[&str] = &concat::<{ total(PROGRAM_GROUPS) }>(PROGRAM_GROUPS);
/// Every map the agent looks up (or resizes) by name.
pub const ALL_MAPS: &[&str] = &concat::<{ total(MAP_GROUPS) }>(MAP_GROUPS);
/// Every global the agent overrides by name.
pub const ALL_GLOBALS: &[&str] = &concat::<{ total(GLOBAL_GROUPS) }>(GLOBAL_GROUPS);

/// How many names `groups` hold.
const fn total(groups: &[&[&str]]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < groups.len() {
        n += groups[i].len();
        i += 1;
    }
    n
}

/// `groups` one after another; `N` must be their [`total`] (checked at compile time).
pub(crate) const fn concat<const N: usize>(groups: &[&[&'static str]]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut n = 0;
    let mut i = 0;
    while i < groups.len() {
        let mut j = 0;
        while j < groups[i].len() {
            out[n] = groups[i][j];
            n += 1;
            j += 1;
        }
        i += 1;
    }
    assert!(n == N, "N is not the number of names");
    out
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{collections::HashMap, format, string::String, vec::Vec};

    use super::{ALL_GLOBALS, ALL_MAPS, ALL_PROGRAMS};

    /// What a symbol of the object is, as far as the agent's lookups care.
    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    enum Kind {
        /// A function in an executable section: a program.
        Program,
        /// An object in the `maps` (legacy) or `.maps` (BTF) section.
        Map,
        /// An object in .rodata, .data or .bss: a global aya can override.
        Global,
        Other,
    }

    /// The global symbols of a little-endian ELF64 object, by name: just enough ELF to read
    /// the section headers, `.symtab` and its string table.
    fn symbols(elf: &[u8]) -> Result<HashMap<String, Kind>, String> {
        const SHT_SYMTAB: u32 = 2;
        const SHF_EXECINSTR: u64 = 4;
        const STT_OBJECT: u8 = 1;
        const STT_FUNC: u8 = 2;
        let bytes = |at: usize, len: usize| {
            elf.get(at..at + len)
                .ok_or_else(|| format!("truncated ELF: {len} bytes at {at}"))
        };
        let u16_at = |at| bytes(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |at| bytes(at, 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
        let u64_at = |at| bytes(at, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
        let usize_at = |at| u64_at(at).map(|v| v as usize);
        if bytes(0, 6)? != b"\x7fELF\x02\x01" {
            return Err("not a little-endian ELF64 file".into());
        }
        let (shoff, shentsize, shnum) = (usize_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?);
        let shstrndx = usize::from(u16_at(0x3e)?);
        // One section header: (name, type, flags, offset, size, link).
        let section = |index: usize| -> Result<(u32, u32, u64, usize, usize, usize), String> {
            let at = shoff + index * usize::from(shentsize);
            Ok((
                u32_at(at)?,
                u32_at(at + 4)?,
                u64_at(at + 8)?,
                usize_at(at + 24)?,
                usize_at(at + 32)?,
                u32_at(at + 40)? as usize,
            ))
        };
        let string = |table: usize, offset: usize| -> Result<String, String> {
            let (_, _, _, start, size, _) = section(table)?;
            let text = bytes(start, size)?;
            let tail = text.get(offset..).ok_or("string offset out of its table")?;
            let end = tail
                .iter()
                .position(|&b| b == 0)
                .ok_or("unterminated string")?;
            Ok(String::from_utf8_lossy(&tail[..end]).into_owned())
        };
        let mut sections = Vec::new();
        for index in 0..usize::from(shnum) {
            let header = section(index)?;
            sections.push((string(shstrndx, header.0 as usize)?, header));
        }
        let (_, (_, _, _, symtab, size, strtab)) = sections
            .iter()
            .find(|(_, header)| header.1 == SHT_SYMTAB)
            .ok_or("the object has no .symtab")?;
        let mut found = HashMap::new();
        for at in (*symtab..symtab + size).step_by(24) {
            let (info, shndx) = (bytes(at + 4, 1)?[0], usize::from(u16_at(at + 6)?));
            let Some((section_name, (_, _, flags, ..))) = sections.get(shndx) else {
                continue; // undefined, absolute or common
            };
            let kind = match info & 0xf {
                STT_FUNC if flags & SHF_EXECINSTR != 0 => Kind::Program,
                STT_OBJECT if matches!(section_name.as_str(), "maps" | ".maps") => Kind::Map,
                STT_OBJECT
                    if [".rodata", ".data", ".bss"]
                        .iter()
                        .any(|prefix| section_name.starts_with(prefix)) =>
                {
                    Kind::Global
                }
                _ => Kind::Other,
            };
            found.insert(string(*strtab, u32_at(at)? as usize)?, kind);
        }
        Ok(found)
    }

    #[test]
    #[ignore = "needs the built eBPF object in NPD_BPF_OBJECT; `cargo xtask test` runs it"]
    fn every_name_is_a_symbol_of_the_object() {
        let Some(path) = std::env::var_os("NPD_BPF_OBJECT") else {
            panic!(
                "NPD_BPF_OBJECT is not set: this test checks the names in npd_common::names \
                 against a built eBPF object. Build it (`cargo xtask build`, or in npd-ebpf \
                 `cargo +nightly build --release`) and run e.g. \
                 `NPD_BPF_OBJECT=npd-ebpf/target/bpfel-unknown-none/release/npd \
                 cargo test -p npd-common --features user names`"
            );
        };
        // cargo runs tests in the package's directory: a relative path is from the workspace
        // root, where the commands above are typed.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path);
        let elf = std::fs::read(&path)
            .unwrap_or_else(|err| panic!("cannot read NPD_BPF_OBJECT={path:?}: {err}"));
        let symbols = symbols(&elf).unwrap_or_else(|err| panic!("{path:?}: {err}"));
        let mut wrong = Vec::new();
        for (names, kind) in [
            (ALL_PROGRAMS, Kind::Program),
            (ALL_MAPS, Kind::Map),
            (ALL_GLOBALS, Kind::Global),
        ] {
            for name in names {
                match symbols.get(*name) {
                    Some(found) if *found == kind => {}
                    Some(found) => wrong.push(format!("{name}: a {found:?}, not a {kind:?}")),
                    None => wrong.push(format!("{name}: no such {kind:?} in the object")),
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "names in npd_common that {path:?} does not have (rename the literal in npd-ebpf \
             or the constant):\n  {}",
            wrong.join("\n  ")
        );
    }

    #[test]
    fn names_are_unique() {
        for names in [ALL_PROGRAMS, ALL_MAPS, ALL_GLOBALS] {
            for (i, name) in names.iter().enumerate() {
                assert!(!names[..i].contains(name), "{name} is listed twice");
            }
        }
    }
}
