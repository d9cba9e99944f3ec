//! Embeds the eBPF object `cargo xtask build` produced (path in NPD_EBPF_OBJECT), or an empty
//! placeholder so that `cargo build`, `clippy` and `test` work without the eBPF toolchain.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=NPD_EBPF_OBJECT");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("npd.bpf.o");
    match env::var_os("NPD_EBPF_OBJECT") {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo::rerun-if-changed={}", path.display());
            fs::copy(&path, &out)
                .unwrap_or_else(|err| panic!("cannot copy {}: {err}", path.display()));
        }
        None => fs::write(&out, []).expect("write the placeholder object"),
    }
}
