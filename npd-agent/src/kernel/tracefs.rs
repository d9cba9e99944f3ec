//! tracefs: where classic tracepoints live, and their format files, which give field offsets
//! on the running kernel.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use thiserror::Error;

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0} \
         (needs CAP_SYS_ADMIN; or mount it on the host: mount -t tracefs nodev /sys/kernel/tracing)"
    )]
    Mount(std::io::Error),
    #[error("tracepoint {category}:{name} does not exist on this kernel")]
    NoTracepoint { category: String, name: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: field `{field}` is missing")]
    NoField { path: PathBuf, field: String },
}

/// A mounted tracefs.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
    /// True if npd mounted it (reported by `check`).
    pub mounted_by_us: bool,
}

fn is_tracefs(path: &Path) -> bool {
    path.join("events").is_dir()
}

impl Tracefs {
    /// Finds a mounted tracefs, mounting one at /sys/kernel/tracing if there is none.
    pub fn find_or_mount() -> Result<Self, TracefsError> {
        if let Some(found) = Self::find() {
            return Ok(found);
        }
        let target = c"/sys/kernel/tracing";
        // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
        let rc = unsafe {
            libc::mount(
                c"nodev".as_ptr(),
                target.as_ptr(),
                c"tracefs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(TracefsError::Mount(std::io::Error::last_os_error()));
        }
        Ok(Self {
            root: PathBuf::from(CANDIDATES[0]),
            mounted_by_us: true,
        })
    }

    pub fn find() -> Option<Self> {
        CANDIDATES
            .iter()
            .map(Path::new)
            .find(|path| is_tracefs(path))
            .map(|root| Self {
                root: root.to_owned(),
                mounted_by_us: false,
            })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn has_tracepoint(&self, category: &str, name: &str) -> bool {
        self.root.join("events").join(category).join(name).is_dir()
    }

    /// Parses `events/<category>/<name>/format`.
    pub fn format(&self, category: &str, name: &str) -> Result<TracepointFormat, TracefsError> {
        if !self.has_tracepoint(category, name) {
            return Err(TracefsError::NoTracepoint {
                category: category.to_owned(),
                name: name.to_owned(),
            });
        }
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(TracepointFormat::parse(path, &text))
    }
}

/// One field of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
    /// The C declaration, e.g. `__data_loc char[] comm`.
    pub declaration: String,
}

#[derive(Clone, Debug)]
pub struct TracepointFormat {
    path: PathBuf,
    fields: HashMap<String, Field>,
}

impl TracepointFormat {
    /// Parses lines like `field:unsigned long total_vm; offset:16; size:8; signed:0;` (the
    /// kernel separates the parts with tabs).
    pub fn parse(path: PathBuf, text: &str) -> Self {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let mut declaration = None;
            let mut offset = None;
            let mut size = None;
            for part in line.trim().split(';') {
                let part = part.trim();
                if let Some(rest) = part.strip_prefix("field:") {
                    declaration = Some(rest.trim().to_owned());
                } else if let Some(rest) = part.strip_prefix("offset:") {
                    offset = rest.trim().parse().ok();
                } else if let Some(rest) = part.strip_prefix("size:") {
                    size = rest.trim().parse().ok();
                }
            }
            if let (Some(declaration), Some(offset), Some(size)) = (declaration, offset, size) {
                // The name is the last word, minus any array suffix.
                let name = declaration
                    .rsplit(|c: char| c.is_whitespace() || c == '*')
                    .next()
                    .unwrap_or_default()
                    .split('[')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                fields.insert(
                    name,
                    Field {
                        offset,
                        size,
                        declaration,
                    },
                );
            }
        }
        Self { path, fields }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }

    /// The offset of a field that must exist with the given size.
    pub fn require(&self, name: &str, size: u32) -> Result<u32, TracefsError> {
        match self.fields.get(name) {
            Some(field) if field.size == size => Ok(field.offset),
            _ => Err(TracefsError::NoField {
                path: self.path.clone(),
                field: format!("{name} ({size} bytes)"),
            }),
        }
    }

    /// The offset of an optional field of the given size, or `UNKNOWN`.
    pub fn optional(&self, name: &str, size: u32) -> u32 {
        self.require(name, size)
            .unwrap_or(npd_common::config::UNKNOWN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK_VICTIM: &str = "name: mark_victim
ID: 609
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
\tfield:char buf[16];\toffset:24;\tsize:16;\tsigned:0;

print fmt: \"pid=%d\", REC->pid
";

    #[test]
    fn parses_fields_with_offsets_and_sizes() {
        let format = TracepointFormat::parse(PathBuf::from("x"), MARK_VICTIM);
        assert_eq!(format.require("pid", 4).unwrap(), 8);
        assert_eq!(format.require("comm", 4).unwrap(), 12);
        assert_eq!(format.require("total_vm", 8).unwrap(), 16);
        assert_eq!(format.require("buf", 16).unwrap(), 24);
        assert_eq!(
            format.field("comm").unwrap().declaration,
            "__data_loc char[] comm"
        );
        // Wrong size or missing: an error, never a guess.
        assert!(format.require("pid", 8).is_err());
        assert!(format.require("uid", 4).is_err());
        assert_eq!(format.optional("uid", 4), npd_common::config::UNKNOWN);
    }
}
