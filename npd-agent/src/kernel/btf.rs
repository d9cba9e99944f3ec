//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find struct
//! member offsets, enum values, functions and tracepoint prototypes on the running kernel.
//!
//! Written here rather than taken from a crate: aya's own BTF types keep their lookups private,
//! and the only full parser on crates.io (btf-rs) is LGPL, which a statically linked agent
//! should not take on. The format is small and stable (include/uapi/linux/btf.h).

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use thiserror::Error;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF data: {0}")]
    Malformed(&'static str),
    #[error("BTF has no {kind} named `{name}`")]
    NotFound { kind: &'static str, name: String },
    #[error("`{owner}` has no member `{member}`")]
    NoMember { owner: String, member: String },
    #[error("`{0}` is not what npd expects here: {1}")]
    Unexpected(String, &'static str),
}

const MAGIC: u16 = 0xeb9f;

/// BTF kinds (`BTF_KIND_*`).
mod kind {
    pub(super) const INT: u32 = 1;
    pub(super) const PTR: u32 = 2;
    pub(super) const ARRAY: u32 = 3;
    pub(super) const STRUCT: u32 = 4;
    pub(super) const UNION: u32 = 5;
    pub(super) const ENUM: u32 = 6;
    pub(super) const FWD: u32 = 7;
    pub(super) const TYPEDEF: u32 = 8;
    pub(super) const VOLATILE: u32 = 9;
    pub(super) const CONST: u32 = 10;
    pub(super) const RESTRICT: u32 = 11;
    pub(super) const FUNC: u32 = 12;
    pub(super) const FUNC_PROTO: u32 = 13;
    pub(super) const VAR: u32 = 14;
    pub(super) const DATASEC: u32 = 15;
    pub(super) const FLOAT: u32 = 16;
    pub(super) const DECL_TAG: u32 = 17;
    pub(super) const TYPE_TAG: u32 = 18;
    pub(super) const ENUM64: u32 = 19;
}

#[derive(Clone, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    /// In bits.
    offset: u32,
}

#[derive(Clone, Debug)]
enum Type {
    Int {
        size: u32,
    },
    Ptr {
        target: u32,
    },
    Array {
        elem: u32,
        len: u32,
    },
    Composite {
        name: u32,
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        size: u32,
        values: Vec<(u32, i64)>,
    },
    /// Typedef, const, volatile, restrict, type tag: transparent for layout.
    Alias {
        name: u32,
        target: u32,
        is_typedef: bool,
    },
    Func {
        name: u32,
    },
    FuncProto {
        params: Vec<u32>,
    },
    Float {
        size: u32,
    },
    Other,
}

/// The target of a tracepoint argument, as far as npd needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgType {
    /// A pointer to a struct with this name.
    StructPtr(String),
    /// An integer (or enum) of this many bytes.
    Int(u32),
    Other,
}

#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Struct/union, typedef and func names to type ids; a name may have several.
    by_name: HashMap<String, Vec<u32>>,
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, BtfError> {
    data.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(BtfError::Malformed("truncated"))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses little-endian BTF (every architecture npd builds for).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if u16_at(data, 0)? != MAGIC {
            return Err(BtfError::Malformed("bad magic (big-endian or not BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        // Type id 0 is void.
        let mut types = vec![Type::Other];
        let mut at = 0;
        while at < types_data.len() {
            let name = u32_at(types_data, at)?;
            let info = u32_at(types_data, at + 4)?;
            let size_or_type = u32_at(types_data, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let ty = match (info >> 24) & 0x1f {
                kind::INT => {
                    at += 4;
                    Type::Int { size: size_or_type }
                }
                kind::PTR => Type::Ptr {
                    target: size_or_type,
                },
                kind::ARRAY => {
                    let elem = u32_at(types_data, at)?;
                    let len = u32_at(types_data, at + 8)?;
                    at += 12;
                    Type::Array { elem, len }
                }
                kind::STRUCT | kind::UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let raw_offset = u32_at(types_data, at + 8)?;
                        members.push(Member {
                            name: u32_at(types_data, at)?,
                            type_id: u32_at(types_data, at + 4)?,
                            // With kind_flag the top byte holds a bitfield size.
                            offset: if kind_flag {
                                raw_offset & 0x00ff_ffff
                            } else {
                                raw_offset
                            },
                        });
                        at += 12;
                    }
                    Type::Composite {
                        name,
                        size: size_or_type,
                        members,
                    }
                }
                kind::ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let value = u32_at(types_data, at + 4)?;
                        let value = if kind_flag {
                            i64::from(value as i32)
                        } else {
                            i64::from(value)
                        };
                        values.push((u32_at(types_data, at)?, value));
                        at += 8;
                    }
                    Type::Enum {
                        size: size_or_type,
                        values,
                    }
                }
                kind::ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let low = u64::from(u32_at(types_data, at + 4)?);
                        let high = u64::from(u32_at(types_data, at + 8)?);
                        values.push((u32_at(types_data, at)?, ((high << 32) | low) as i64));
                        at += 12;
                    }
                    Type::Enum {
                        size: size_or_type,
                        values,
                    }
                }
                kind::FWD => Type::Other,
                kind::TYPEDEF => Type::Alias {
                    name,
                    target: size_or_type,
                    is_typedef: true,
                },
                kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => Type::Alias {
                    name,
                    target: size_or_type,
                    is_typedef: false,
                },
                kind::FUNC => Type::Func { name },
                kind::FUNC_PROTO => {
                    let mut params = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        params.push(u32_at(types_data, at + 4)?);
                        at += 8;
                    }
                    Type::FuncProto { params }
                }
                kind::VAR => {
                    at += 4;
                    Type::Other
                }
                kind::DATASEC => {
                    at += 12 * vlen;
                    Type::Other
                }
                kind::FLOAT => Type::Float { size: size_or_type },
                kind::DECL_TAG => {
                    at += 4;
                    Type::Other
                }
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            if at > types_data.len() {
                return Err(BtfError::Malformed("type cut short"));
            }
            types.push(ty);
        }

        let mut btf = Self {
            types,
            strings,
            by_name: HashMap::new(),
        };
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (id, ty) in btf.types.iter().enumerate() {
            let name = match ty {
                Type::Composite { name, .. } | Type::Func { name } => *name,
                Type::Alias {
                    name,
                    is_typedef: true,
                    ..
                } => *name,
                _ => continue,
            };
            if name != 0 {
                by_name
                    .entry(btf.string(name).to_owned())
                    .or_default()
                    .push(id as u32);
            }
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    fn ty(&self, id: u32) -> &Type {
        self.types.get(id as usize).unwrap_or(&Type::Other)
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Type::Alias { target, .. } => id = *target,
                _ => break,
            }
        }
        id
    }

    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .copied()
            // A name can also be a forward declaration or a typedef; take the definition with
            // the most members (a struct and a same-named union do not occur in vmlinux).
            .filter(|&id| matches!(self.ty(id), Type::Composite { .. }))
            .max_by_key(|&id| match self.ty(id) {
                Type::Composite { members, .. } => members.len(),
                _ => 0,
            })
            .ok_or_else(|| BtfError::NotFound {
                kind: "struct",
                name: name.to_owned(),
            })
    }

    pub fn has_struct(&self, name: &str) -> bool {
        self.struct_id(name).is_ok()
    }

    /// Size in bytes of a type.
    fn size_of(&self, id: u32) -> Option<u32> {
        match self.ty(self.resolve(id)) {
            Type::Int { size }
            | Type::Composite { size, .. }
            | Type::Enum { size, .. }
            | Type::Float { size } => Some(*size),
            Type::Ptr { .. } => Some(8),
            Type::Array { elem, len } => self.size_of(*elem).map(|s| s * len),
            _ => None,
        }
    }

    /// Finds `member` in a composite type, looking through anonymous structs and unions.
    /// Returns its byte offset and type id.
    fn find_member(&self, composite: u32, member: &str) -> Option<(u32, u32)> {
        let Type::Composite { members, .. } = self.ty(self.resolve(composite)) else {
            return None;
        };
        for m in members {
            if m.name != 0 && self.string(m.name) == member {
                return Some((m.offset / 8, m.type_id));
            }
        }
        for m in members.iter().filter(|m| m.name == 0) {
            if let Some((offset, type_id)) = self.find_member(m.type_id, member) {
                return Some((m.offset / 8 + offset, type_id));
            }
        }
        None
    }

    /// The byte offset of `path` (members separated by dots) in `struct_name`, and the type of
    /// the last member. Every step but the last must be an embedded struct, not a pointer.
    fn member(&self, struct_name: &str, path: &str) -> Result<(u32, u32), BtfError> {
        let mut type_id = self.struct_id(struct_name)?;
        let mut offset = 0;
        for step in path.split('.') {
            let (step_offset, step_type) =
                self.find_member(type_id, step)
                    .ok_or_else(|| BtfError::NoMember {
                        owner: struct_name.to_owned(),
                        member: path.to_owned(),
                    })?;
            offset += step_offset;
            type_id = step_type;
        }
        Ok((offset, type_id))
    }

    /// Byte offset of `path` (e.g. `"rlim"` or `"css.cgroup"`) in `struct struct_name`.
    pub fn offset_of(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        self.member(struct_name, path).map(|(offset, _)| offset)
    }

    /// Byte offset of element `index` of the array member `path` in `struct struct_name`.
    pub fn offset_of_element(
        &self,
        struct_name: &str,
        path: &str,
        index: u32,
    ) -> Result<u32, BtfError> {
        let (offset, type_id) = self.member(struct_name, path)?;
        match self.ty(self.resolve(type_id)) {
            Type::Array { elem, len } if index < *len => {
                let elem_size = self
                    .size_of(*elem)
                    .ok_or_else(|| BtfError::Unexpected(path.to_owned(), "unsized element"))?;
                Ok(offset + index * elem_size)
            }
            Type::Array { .. } => Err(BtfError::Unexpected(
                path.to_owned(),
                "index past the end of the array",
            )),
            _ => Err(BtfError::Unexpected(path.to_owned(), "not an array")),
        }
    }

    /// Name of the struct a member's type is (through typedefs and one array level), if any.
    pub fn member_struct_name(&self, struct_name: &str, path: &str) -> Result<String, BtfError> {
        let (_, type_id) = self.member(struct_name, path)?;
        let mut id = self.resolve(type_id);
        if let Type::Array { elem, .. } = self.ty(id) {
            id = self.resolve(*elem);
        }
        match self.ty(id) {
            Type::Composite { name, .. } => Ok(self.string(*name).to_owned()),
            _ => Err(BtfError::Unexpected(path.to_owned(), "not a struct")),
        }
    }

    /// Whether `member` is an array (as opposed to a struct wrapping one).
    pub fn member_is_array(&self, struct_name: &str, path: &str) -> Result<bool, BtfError> {
        let (_, type_id) = self.member(struct_name, path)?;
        Ok(matches!(self.ty(self.resolve(type_id)), Type::Array { .. }))
    }

    /// Value of an enumerator, searching every enum.
    pub fn enum_value(&self, enumerator: &str) -> Result<i64, BtfError> {
        self.types
            .iter()
            .find_map(|ty| match ty {
                Type::Enum { values, .. } => values
                    .iter()
                    .find(|(name, _)| self.string(*name) == enumerator)
                    .map(|(_, value)| *value),
                _ => None,
            })
            .ok_or_else(|| BtfError::NotFound {
                kind: "enumerator",
                name: enumerator.to_owned(),
            })
    }

    /// Every function name the BTF has (the functions fentry/fexit can hook).
    pub fn function_names(&self) -> HashSet<String> {
        self.by_name
            .iter()
            .filter(|(_, ids)| {
                ids.iter()
                    .any(|&id| matches!(self.ty(id), Type::Func { .. }))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.by_name.get(name).is_some_and(|ids| {
            ids.iter()
                .any(|&id| matches!(self.ty(id), Type::Func { .. }))
        })
    }

    /// The argument types of a tracepoint as tp_btf programs see it (`btf_trace_<name>`),
    /// without the leading `void *__data`.
    pub fn tracepoint_args(&self, tracepoint: &str) -> Result<Vec<ArgType>, BtfError> {
        let typedef = format!("btf_trace_{tracepoint}");
        let not_found = || BtfError::NotFound {
            kind: "tracepoint typedef",
            name: typedef.clone(),
        };
        let id = self
            .by_name
            .get(&typedef)
            .and_then(|ids| ids.first().copied())
            .ok_or_else(not_found)?;
        let Type::Ptr { target } = self.ty(self.resolve(id)) else {
            return Err(BtfError::Unexpected(typedef, "not a function pointer"));
        };
        let Type::FuncProto { params } = self.ty(self.resolve(*target)) else {
            return Err(BtfError::Unexpected(typedef, "not a function pointer"));
        };
        Ok(params
            .iter()
            .skip(1)
            .map(|&param| match self.ty(self.resolve(param)) {
                Type::Ptr { target } => match self.ty(self.resolve(*target)) {
                    Type::Composite { name, .. } => ArgType::StructPtr(self.string(*name).into()),
                    _ => ArgType::Other,
                },
                Type::Int { size } | Type::Enum { size, .. } => ArgType::Int(*size),
                _ => ArgType::Other,
            })
            .collect())
    }
}

/// What choosing hooks asks of the BTF, gathered so that the parsed BTF can be dropped
/// before aya parses its own copy: both at once made start-up peak at 63 MiB.
#[derive(Debug, Default)]
pub struct BtfFacts {
    functions: HashSet<String>,
    tracepoint_args: HashMap<String, Result<Vec<ArgType>, String>>,
    /// `task_struct::exit_code` (the daemons detector's exit codes).
    task_exit_code: Option<u32>,
}

impl BtfFacts {
    /// The function names of `btf`, and the arguments of the given tracepoints.
    pub fn gather(btf: &Btf, tracepoints: &[&str]) -> Self {
        Self {
            functions: btf.function_names(),
            tracepoint_args: tracepoints
                .iter()
                .map(|&tp| {
                    (
                        tp.to_owned(),
                        btf.tracepoint_args(tp).map_err(|e| e.to_string()),
                    )
                })
                .collect(),
            task_exit_code: btf.offset_of("task_struct", "exit_code").ok(),
        }
    }

    pub fn task_exit_code(&self) -> Option<u32> {
        self.task_exit_code
    }

    pub fn has_function(&self, name: &str) -> bool {
        self.functions.contains(name)
    }

    /// [`Btf::tracepoint_args`] of a tracepoint named to [`BtfFacts::gather`].
    pub fn tracepoint_args(&self, tracepoint: &str) -> Result<&[ArgType], String> {
        match self.tracepoint_args.get(tracepoint) {
            Some(Ok(args)) => Ok(args),
            Some(Err(err)) => Err(err.clone()),
            None => Err(format!("tracepoint {tracepoint} was not looked up in BTF")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF bytes from a type section and a string section.
    fn blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for word in [
            24u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data.extend_from_slice(&type_bytes);
        data.extend_from_slice(strings);
        data
    }

    fn info(kind: u32, vlen: u32) -> u32 {
        (kind << 24) | vlen
    }

    // Strings: 1 "int", 5 "outer", 11 "a", 13 "b", 15 "arr", 19 "E_ONE", 25 "f",
    // 27 "btf_trace_t", 39 "inner".
    const STRINGS: &[u8] = b"\0int\0outer\0a\0b\0arr\0E_ONE\0f\0btf_trace_t\0inner\0";

    fn sample() -> Btf {
        #[rustfmt::skip]
        let types = [
            // 1: int, 4 bytes
            1, info(kind::INT, 0), 4, 32,
            // 2: array of 3 ints
            0, info(kind::ARRAY, 0), 0, 1, 1, 3,
            // 3: anonymous union { int b; } at 32 bits
            0, info(kind::UNION, 1), 4, 13, 1, 0,
            // 4: struct outer { int a; <anon union>; int arr[3]; } 
            5, info(kind::STRUCT, 3), 20, 11, 1, 0, 0, 3, 32, 15, 2, 64,
            // 5: enum { E_ONE = 1 }
            0, info(kind::ENUM, 1), 4, 19, 1,
            // 6: pointer to struct outer
            0, info(kind::PTR, 0), 4,
            // 7: func proto (void *, struct outer *, int)
            0, info(kind::FUNC_PROTO, 3), 0, 0, 6, 0, 6, 0, 1,
            // 8: pointer to the proto, 9: typedef btf_trace_t
            0, info(kind::PTR, 0), 7,
            27, info(kind::TYPEDEF, 0), 8,
            // 10: func f
            25, info(kind::FUNC, 0), 7,
        ];
        Btf::parse(&blob(&types, STRINGS)).expect("valid sample")
    }

    #[test]
    fn member_offsets_look_through_anonymous_members() {
        let btf = sample();
        assert_eq!(btf.offset_of("outer", "a").unwrap(), 0);
        assert_eq!(btf.offset_of("outer", "b").unwrap(), 4);
        assert_eq!(btf.offset_of("outer", "arr").unwrap(), 8);
        assert_eq!(btf.offset_of_element("outer", "arr", 2).unwrap(), 16);
        assert!(btf.offset_of_element("outer", "arr", 3).is_err());
        assert!(matches!(
            btf.offset_of("outer", "missing"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.offset_of("inner", "a"),
            Err(BtfError::NotFound { .. })
        ));
    }

    #[test]
    fn enums_functions_and_tracepoint_prototypes() {
        let btf = sample();
        assert_eq!(btf.enum_value("E_ONE").unwrap(), 1);
        assert!(btf.has_function("f"));
        assert!(!btf.has_function("outer"));
        assert_eq!(
            btf.tracepoint_args("t").unwrap(),
            vec![ArgType::StructPtr("outer".into()), ArgType::Int(4)]
        );
    }

    #[test]
    fn facts_answer_like_the_btf_they_came_from() {
        let facts = BtfFacts::gather(&sample(), &["t", "absent"]);
        assert!(facts.has_function("f"));
        assert!(!facts.has_function("outer"));
        assert_eq!(
            facts.tracepoint_args("t").unwrap(),
            [ArgType::StructPtr("outer".into()), ArgType::Int(4)]
        );
        assert!(facts.tracepoint_args("absent").is_err());
        assert!(facts.tracepoint_args("not_gathered").is_err());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_err());
        let mut data = blob(&[1, info(kind::INT, 0), 4], STRINGS);
        // A type cut short.
        assert!(Btf::parse(&data).is_err());
        data[0] = 0;
        assert!(Btf::parse(&data).is_err());
    }
}
