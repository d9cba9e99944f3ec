//! The macro behind npd's one detector registry (the table itself is in `lib.rs`).
//!
//! One line per detector declares its config name, its row in the counters array and the
//! record kinds its programs emit (`kernel { ... }`), or just its name for a detector that
//! runs in the agent alone (`agent { ... }`). From it come the ABI enums ([`Detector`], [`RecordKind`])
//! with `ALL`, `name` and `from_*`, the detectors' ABI modules, and
//! `for_each_kernel_detector!`, which the eBPF crate and the agent use to declare their own
//! per-detector modules, so a new detector is registered in exactly one place.
//!
//! [`Detector`]: crate::counters::Detector
//! [`RecordKind`]: crate::record::RecordKind

/// Expands the registry table. `$d` is a literal `$`, for the nested `macro_rules!`.
macro_rules! registry {
    (
        $d:tt
        kernel {
            $(
                $(#[$meta:meta])*
                $name:ident: $Detector:ident = $row:literal => [$($Kind:ident = $number:literal),+ $(,)?]
            ),+ $(,)?
        }
        agent {
            $(
                $(#[$agent_meta:meta])*
                $agent:ident
            ),* $(,)?
        }
    ) => {
        $( $(#[$meta])* pub mod $name; )+

        /// Per-detector rows of the counters array, and the config name of each detector
        /// that has kernel programs.
        pub mod counters_registry {
            /// A detector with kernel programs. The numbers are ABI (counter rows).
            #[repr(u32)]
            #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
            pub enum Detector {
                $( $Detector = $row, )+
            }

            impl Detector {
                pub const ALL: &'static [Self] = &[$(Self::$Detector),+];

                /// The detector's name in config, flags and metric labels.
                pub const fn name(self) -> &'static str {
                    match self {
                        $( Self::$Detector => stringify!($name), )+
                    }
                }

                pub fn from_name(name: &str) -> Option<Self> {
                    Self::ALL.iter().copied().find(|d| d.name() == name)
                }
            }

            // Rows are dense from 0, so the counters array has no holes.
            const _: () = {
                let mut i = 0;
                while i < Detector::ALL.len() {
                    assert!(Detector::ALL[i] as usize == i);
                    i += 1;
                }
            };
        }

        /// Record kinds, from the registry.
        pub mod record_kinds {
            use super::counters_registry::Detector;

            /// What follows the header. The numbers are ABI: never reuse one.
            #[repr(u16)]
            #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
            pub enum RecordKind {
                $( $( $Kind = $number, )+ )+
            }

            impl RecordKind {
                pub const ALL: &'static [Self] = &[$( $( Self::$Kind, )+ )+];

                pub const fn from_u16(value: u16) -> Option<Self> {
                    match value {
                        $( $( $number => Some(Self::$Kind), )+ )+
                        _ => None,
                    }
                }

                /// The variant's name, e.g. `FdExhausted`.
                pub const fn name(self) -> &'static str {
                    match self {
                        $( $( Self::$Kind => stringify!($Kind), )+ )+
                    }
                }

                /// The detector whose programs emit this kind.
                pub const fn detector(self) -> Detector {
                    match self {
                        $( $( Self::$Kind => Detector::$Detector, )+ )+
                    }
                }
            }
        }

        /// Calls `$callback!(name, name, ...)` with every detector that has kernel programs,
        /// in registry order: how the eBPF crate and the agent declare their per-detector
        /// modules without listing them again.
        #[macro_export]
        macro_rules! for_each_kernel_detector {
            ($d callback:ident) => {
                $d callback!($($name),+);
            };
        }

        /// Calls `$callback!(name, ...)` with every detector that runs in the agent alone
        /// (it samples kernel state or asks a daemon; no programs, no records).
        #[macro_export]
        macro_rules! for_each_agent_detector {
            ($d callback:ident) => {
                $d callback!($($agent),*);
            };
        }

        /// The agent-only detectors' names, in registry order.
        pub const AGENT_DETECTORS: &[&str] = &[$(stringify!($agent)),*];
    };
}
pub(crate) use registry;
