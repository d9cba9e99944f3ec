//! One file per detector, named after its registry line (`npd_common`'s `lib.rs`): a new
//! detector's probe file is picked up from that line alone.

/// Programs only loaded by `npd-agent check`, never attached: not a detector.
mod feature;

macro_rules! probe_modules {
    ($($name:ident),* $(,)?) => {
        $(mod $name;)*
    };
}

npd_common::for_each_kernel_detector!(probe_modules);
