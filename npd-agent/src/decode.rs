//! Ring-buffer bytes to typed records. Every record is validated against the ABI before it is
//! read: a short, oversized, unknown or mis-versioned record is counted and skipped.

use std::sync::atomic::{AtomicU64, Ordering};

use aya::Pod;
use bytes::Buf;
use npd_common::{Hook, RecordHeader, RecordKind};
use thiserror::Error;

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than a header")]
    Short { len: usize },
    #[error("header says {header} bytes but the ring buffer gave {len}")]
    SizeMismatch { header: u32, len: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("unknown hook {0}")]
    UnknownHook(u8),
    #[error("{kind:?} record version {version} is not {expected}")]
    Version {
        kind: RecordKind,
        version: u8,
        expected: u8,
    },
    #[error("{kind:?} record of {len} bytes, expected {expected}")]
    Length {
        kind: RecordKind,
        len: usize,
        expected: usize,
    },
}

/// Decode failures by cause, for metrics and `event-dump` warnings.
#[derive(Debug, Default)]
pub struct DecodeStats {
    pub short: AtomicU64,
    pub size_mismatch: AtomicU64,
    pub unknown_kind: AtomicU64,
    pub bad_version: AtomicU64,
    pub bad_length: AtomicU64,
}

impl DecodeStats {
    pub fn count(&self, err: &DecodeError) {
        let counter = match err {
            DecodeError::Short { .. } => &self.short,
            DecodeError::SizeMismatch { .. } => &self.size_mismatch,
            DecodeError::UnknownKind(_) | DecodeError::UnknownHook(_) => &self.unknown_kind,
            DecodeError::Version { .. } => &self.bad_version,
            DecodeError::Length { .. } => &self.bad_length,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (cause, count) for metrics.
    pub fn by_cause(&self) -> [(&'static str, u64); 5] {
        [
            ("short", self.short.load(Ordering::Relaxed)),
            ("size_mismatch", self.size_mismatch.load(Ordering::Relaxed)),
            ("unknown_kind", self.unknown_kind.load(Ordering::Relaxed)),
            ("bad_version", self.bad_version.load(Ordering::Relaxed)),
            ("bad_length", self.bad_length.load(Ordering::Relaxed)),
        ]
    }

    pub fn total(&self) -> u64 {
        [
            &self.short,
            &self.size_mismatch,
            &self.unknown_kind,
            &self.bad_version,
            &self.bad_length,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// Checks a record's header against the ABI and says which kind it is; the kind's detector
/// decodes the rest with [`payload`].
pub fn check_header(data: &[u8]) -> Result<RecordKind, DecodeError> {
    if data.len() < RecordHeader::SIZE {
        return Err(DecodeError::Short { len: data.len() });
    }
    let mut header = data;
    let kind = header.get_u16_le();
    let _version = header.get_u8();
    let hook = header.get_u8();
    let size = header.get_u32_le();
    if size as usize != data.len() {
        return Err(DecodeError::SizeMismatch {
            header: size,
            len: data.len(),
        });
    }
    let kind = RecordKind::from_u16(kind).ok_or(DecodeError::UnknownKind(kind))?;
    Hook::from_u8(hook).ok_or(DecodeError::UnknownHook(hook))?;
    Ok(kind)
}

/// The whole record as the kind's `#[repr(C)]` struct `T`, whose layout version is `version`.
pub fn payload<T: Pod>(kind: RecordKind, version: u8, data: &[u8]) -> Result<T, DecodeError> {
    let found = data.get(2).copied().unwrap_or(0);
    if found != version {
        return Err(DecodeError::Version {
            kind,
            version: found,
            expected: version,
        });
    }
    let expected = size_of::<T>();
    if data.len() != expected {
        return Err(DecodeError::Length {
            kind,
            len: data.len(),
            expected,
        });
    }
    // SAFETY: `data` holds exactly size_of::<T>() bytes and T is Pod: any bytes are a valid T.
    // read_unaligned because ring-buffer samples are only 8-byte aligned by convention.
    Ok(unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use npd_common::fd;

    use super::*;

    /// The fd detector's path: header, then its payload.
    fn decode(data: &[u8]) -> Result<fd::FdExhausted, DecodeError> {
        let kind = check_header(data)?;
        payload(kind, fd::FD_EXHAUSTED_VERSION, data)
    }

    fn bytes_of<T: Pod>(value: &T) -> Vec<u8> {
        // SAFETY: T is Pod (no padding), so all its bytes are initialized.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn fd_record() -> fd::FdExhausted {
        fd::FdExhausted {
            header: RecordHeader {
                kind: RecordKind::FdExhausted as u16,
                version: fd::FD_EXHAUSTED_VERSION,
                hook: Hook::Tracepoint as u8,
                size: size_of::<fd::FdExhausted>() as u32,
                ts_ns: 42,
                pid: 7,
                tid: 8,
                cgroup_id: 99,
                comm: *b"leaky\0\0\0\0\0\0\0\0\0\0\0",
            },
            errno: fd::EMFILE,
            syscall_nr: 257,
            suppressed: 3,
            failures_total: 10,
            first_failure_ns: 1,
            nofile_limit: 64,
            cgroup: npd_common::cgroup::KernelCgroupPath::EMPTY,
        }
    }

    #[test]
    fn decodes_a_valid_record() {
        let rec = decode(&bytes_of(&fd_record())).unwrap();
        assert_eq!(rec.header.pid, 7);
        assert_eq!(rec.syscall_nr, 257);
        assert_eq!(rec.failures_total, 10);
    }

    #[test]
    fn rejects_every_malformed_shape() {
        let good = bytes_of(&fd_record());
        type Case = (&'static str, Vec<u8>, fn(&DecodeError) -> bool);
        let cases: Vec<Case> = vec![
            ("empty", vec![], |e| {
                matches!(e, DecodeError::Short { len: 0 })
            }),
            ("short", good[..20].to_vec(), |e| {
                matches!(e, DecodeError::Short { .. })
            }),
            ("truncated", good[..good.len() - 8].to_vec(), |e| {
                matches!(e, DecodeError::SizeMismatch { .. })
            }),
            ("oversized", [good.clone(), vec![0; 8]].concat(), |e| {
                matches!(e, DecodeError::SizeMismatch { .. })
            }),
            (
                "unknown kind",
                {
                    let mut b = good.clone();
                    b[0] = 0xee;
                    b
                },
                |e| matches!(e, DecodeError::UnknownKind(0xee)),
            ),
            (
                "unknown hook",
                {
                    let mut b = good.clone();
                    b[3] = 9;
                    b
                },
                |e| matches!(e, DecodeError::UnknownHook(9)),
            ),
            (
                "bad version",
                {
                    let mut b = good.clone();
                    b[2] = 77;
                    b
                },
                |e| matches!(e, DecodeError::Version { version: 77, .. }),
            ),
            (
                "consistent but wrong length",
                {
                    // A header whose size matches the sample but not the kind's layout.
                    let mut b = [good.clone(), vec![0; 8]].concat();
                    let len = b.len() as u32;
                    b[4..8].copy_from_slice(&len.to_le_bytes());
                    b
                },
                |e| matches!(e, DecodeError::Length { .. }),
            ),
        ];
        let stats = DecodeStats::default();
        for (name, bytes, expect) in cases {
            let err = decode(&bytes).expect_err(name);
            assert!(expect(&err), "{name}: {err:?}");
            stats.count(&err);
        }
        assert_eq!(stats.total(), 8);
    }

    /// What decoding `data` on the fd detector's path must give, from the ABI's rules
    /// alone: the oracle the fuzz test checks the decoder against.
    fn expected(data: &[u8]) -> Result<(), DecodeError> {
        if data.len() < RecordHeader::SIZE {
            return Err(DecodeError::Short { len: data.len() });
        }
        let kind = u16::from_le_bytes([data[0], data[1]]);
        let (version, hook) = (data[2], data[3]);
        let size = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
        if size as usize != data.len() {
            return Err(DecodeError::SizeMismatch {
                header: size,
                len: data.len(),
            });
        }
        let Some(kind) = RecordKind::from_u16(kind) else {
            return Err(DecodeError::UnknownKind(kind));
        };
        if Hook::from_u8(hook).is_none() {
            return Err(DecodeError::UnknownHook(hook));
        }
        if version != fd::FD_EXHAUSTED_VERSION {
            return Err(DecodeError::Version {
                kind,
                version,
                expected: fd::FD_EXHAUSTED_VERSION,
            });
        }
        if data.len() != size_of::<fd::FdExhausted>() {
            return Err(DecodeError::Length {
                kind,
                len: data.len(),
                expected: size_of::<fd::FdExhausted>(),
            });
        }
        Ok(())
    }

    #[test]
    fn fuzzed_records_with_valid_headers_decode_or_fail_as_the_abi_says() {
        // xorshift64: deterministic, so a failure names a reproducible case.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let record_len = size_of::<fd::FdExhausted>();
        let mut outcomes: std::collections::BTreeMap<&str, u32> = Default::default();
        for case in 0..20_000 {
            // Mostly the right size and a header that says so, sometimes anything.
            let len = match next() % 8 {
                0 => (next() % 600) as usize,
                1 => (next() % (RecordHeader::SIZE as u64 + 1)) as usize,
                2 => record_len + (next() % 16) as usize - 8,
                _ => record_len,
            };
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= RecordHeader::SIZE {
                let kinds = RecordKind::ALL;
                let kind = if next() % 8 == 0 {
                    next() as u16
                } else {
                    kinds[(next() % kinds.len() as u64) as usize] as u16
                };
                let version = if next() % 4 == 0 {
                    next() as u8
                } else {
                    fd::FD_EXHAUSTED_VERSION
                };
                let hook = if next() % 8 == 0 {
                    next() as u8
                } else {
                    1 + (next() % 4) as u8
                };
                let size = if next() % 8 == 0 {
                    next() as u32
                } else {
                    len as u32
                };
                data[0..2].copy_from_slice(&kind.to_le_bytes());
                data[2] = version;
                data[3] = hook;
                data[4..8].copy_from_slice(&size.to_le_bytes());
            }
            let got = decode(&data);
            let want = expected(&data);
            match (&got, want) {
                (Ok(record), Ok(())) => {
                    // A valid record is read whole: every body byte where the ABI puts it.
                    assert_eq!(bytes_of(record), data, "case {case}");
                    *outcomes.entry("ok").or_default() += 1;
                }
                (Err(err), Err(want)) => {
                    assert_eq!(*err, want, "case {case}: {data:02x?}");
                    let name = match err {
                        DecodeError::Short { .. } => "short",
                        DecodeError::SizeMismatch { .. } => "size_mismatch",
                        DecodeError::UnknownKind(_) => "unknown_kind",
                        DecodeError::UnknownHook(_) => "unknown_hook",
                        DecodeError::Version { .. } => "version",
                        DecodeError::Length { .. } => "length",
                    };
                    *outcomes.entry(name).or_default() += 1;
                }
                (got, want) => panic!("case {case}: got {got:?}, want {want:?}: {data:02x?}"),
            }
        }
        // Every outcome was reached often, the valid records included.
        for outcome in [
            "ok",
            "short",
            "size_mismatch",
            "unknown_kind",
            "unknown_hook",
            "version",
            "length",
        ] {
            let n = outcomes.get(outcome).copied().unwrap_or(0);
            assert!(n >= 100, "{outcome} reached {n} times: {outcomes:?}");
        }
    }
}
